//! The guest agent dialect of the driver, on output recorded from the real `qemu-ga`
//! (tests/data/qga/, recorded by record.py there): the sync, the sentinel, stale replies,
//! commands without a success reply, timeouts and resyncs, split at every byte.
#![cfg(feature = "agent")]

mod common;

use std::time::Duration;

use qmp_proto::{
    AGENT_SENTINEL, CommandId, Deadline, Done, Driver, DriverConfig, EventBuffer, Failure, Instant,
    Io, NO_REPLY_TIMEOUT, NO_SUCCESS_RESPONSE, Outcome, SendOptions, Wait,
};

type Agent = Driver<[u8; 8192], [u8; 1024], EventBuffer<64>, 8>;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn agent(sync_id: u64) -> Agent {
    Driver::new_agent(
        [0; 8192],
        [0; 1024],
        EventBuffer::new(),
        DriverConfig::default(),
        sync_id,
        ms(0),
    )
}

/// Everything queued for writing, written.
fn transmit(d: &mut Agent) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(bytes) = d.poll_transmit() {
        out.extend_from_slice(bytes);
        let n = bytes.len();
        d.handle_written(n, ms(0));
    }
    out
}

/// What completed, as text: `(id, "return VALUE" | "error CLASS: DESC" | "failed …")`.
fn outcome_text(d: &mut Agent, id: CommandId) -> String {
    match d.outcome(id).expect("held") {
        Outcome::Return(v) => format!("return {}", v.as_json()),
        Outcome::Error(e) => format!("error {}: {}", e.class.as_escaped(), e.desc.as_escaped()),
        Outcome::Failed(f) => format!("failed {f:?}"),
    }
}

/// Feeds `bytes` at `now` and collects what completes.
fn feed(d: &mut Agent, mut bytes: &[u8], now: Instant) -> Vec<(CommandId, String)> {
    let mut got = Vec::new();
    loop {
        while let Some(done) = d.poll() {
            if let Done::Completed(id) = done {
                let text = outcome_text(d, id);
                got.push((id, text));
            }
        }
        if bytes.is_empty() {
            return got;
        }
        let n = d.feed(bytes, now);
        assert!(n > 0, "the receive buffer is full");
        bytes = &bytes[n..];
    }
}

/// The recorded replies' ids (1, 2, 3 …, as recorded) put in the driver's own place.
fn renumber(bytes: &[u8], first: u64, count: u64) -> Vec<u8> {
    let mut text = bytes.to_vec();
    for n in (1..=count).rev() {
        for (from, to) in [
            (
                format!("\"id\": {n}}}"),
                format!("\"id\": {}}}", first + n - 1),
            ),
            (
                format!("\"id\": {n},"),
                format!("\"id\": {},", first + n - 1),
            ),
            (
                format!("\"id\":{n}}}"),
                format!("\"id\":{}}}", first + n - 1),
            ),
        ] {
            text = replace(&text, from.as_bytes(), to.as_bytes());
        }
    }
    text
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Bytes a new client may find in the channel before anything it caused: the end of a
/// reply a previous client read half of, half a reply, binary noise, an open string.
const GARBAGE: &[&[u8]] = &[
    b"",
    b"ame\": \"vm\"}, \"id\": 2}\n",
    b"\x00\x17\xfe junk",
    b"{\"return\": {\"a\": [1, {\"b\"",
    b"{\"return\": {\"unfinished\": \"str",
    b"1}, {\"name\": \"x\"}]}\n{\"return\": 5, \"id\": 1}\n",
    b"\xff{\"return\": 77}\n",
    // An escape left open: the sentinel must not be taken for the escaped character.
    b"{\"return\": \"x\\",
    b"{\"return\": {\"x\\",
    b"\"\\",
    // A `{` right before the sentinel, a `}` and `]` imbalance, a lone surrogate escape.
    b"{\"a\": {",
    b"]]]}}}",
    b"{\"a\": \"\\ud800",
];

#[test]
fn the_sync_and_commands_over_recorded_output_at_every_split_after_garbage() {
    let input = common::data("qga/sync.in");
    let output = common::data("qga/sync.out");
    for garbage in GARBAGE {
        for split in 0..=garbage.len() + output.len() {
            let mut d = agent(4242424242);
            assert!(!d.is_ready());
            let ping = d
                .execute("guest-ping", &(), SendOptions::new(), ms(0))
                .unwrap();
            let host = d
                .execute("guest-get-host-name", &(), SendOptions::new(), ms(0))
                .unwrap();
            let nope = d.execute("nope", &(), SendOptions::new(), ms(0)).unwrap();
            assert_eq!((host.get(), nope.get()), (ping.get() + 1, ping.get() + 2));
            let sent = transmit(&mut d);
            // What went out is exactly what the real agent was sent, ids aside.
            assert_eq!(sent, renumber(&input, ping.get(), 3));
            assert_eq!(sent[0], AGENT_SENTINEL);

            // Only our own replies carry our ids; the garbage's stay as they are.
            let mut stream = garbage.to_vec();
            stream.extend_from_slice(&renumber(&output, ping.get(), 3));
            let split = split.min(stream.len());
            let mut got = feed(&mut d, &stream[..split], ms(1));
            got.extend(feed(&mut d, &stream[split..], ms(2)));
            assert!(d.is_ready(), "garbage {garbage:?}, split {split}");
            assert_eq!(d.agent_syncs(), 1);
            assert_eq!(
                got,
                [
                    (ping, "return {}".to_owned()),
                    (host, "return {\"host-name\": \"vm\"}".to_owned()),
                    (
                        nope,
                        "error CommandNotFound: The command nope has not been found".to_owned()
                    ),
                ],
                "garbage {garbage:?}, split {split}"
            );
            // At least the parse error our own 0xFF caused was dropped.
            assert!(d.dropped_messages() >= 1);
            assert!(d.agent_sentinels() >= 1);
        }
    }
}

#[test]
fn stale_replies_and_a_stale_sync_in_a_dirty_channel_are_dropped_at_every_split() {
    // A previous client left: a reply with id 1, its own sync (77), guest-info's reply,
    // half a command (the agent's error for it). Then comes our sync's reply, then the
    // reply to a command with id 1 that is not ours either.
    let output = common::data("qga/dirty.out");
    let ours = output
        .windows(11)
        .position(|w| w == b"\xff{\"return\":")
        .map(|first| {
            first
                + 1
                + output[first + 1..]
                    .windows(11)
                    .position(|w| w == b"\xff{\"return\":")
                    .unwrap()
        })
        .unwrap();
    for garbage in GARBAGE {
        let mut stream = garbage.to_vec();
        stream.extend_from_slice(&output);
        let ours = ours + garbage.len();
        for split in 0..=stream.len() {
            let mut d = agent(987654321);
            transmit(&mut d);
            let mut got = feed(&mut d, &stream[..split], ms(1));
            // Not before our own sync's reply: neither the stale sync nor the garbage.
            if split <= ours + 21 {
                assert!(!d.is_ready(), "garbage {garbage:?}, split {split}");
            }
            got.extend(feed(&mut d, &stream[split..], ms(2)));
            assert!(d.is_ready(), "garbage {garbage:?}, split {split}");
            assert!(got.is_empty(), "{got:?}");
            // osinfo, the parse error, the stale sync, guest-info, the parse error, the
            // reply with id 1: all dropped (and whatever the garbage framed).
            assert!(d.dropped_messages() >= 6, "{}", d.dropped_messages());
            assert_eq!(d.agent_sentinels(), 2 + garbage.contains(&0xFF) as u64);
        }
    }
}

#[test]
fn guest_sync_without_sentinel_and_string_ids_work_too() {
    // Recorded: guest-sync (no sentinel), garbage that makes two id-less parse errors, and
    // a reply with a string id; the driver only needs its integer back.
    let output = common::data("qga/plain.out");
    let mut d = agent(5);
    transmit(&mut d);
    assert!(feed(&mut d, &output, ms(1)).is_empty());
    assert!(d.is_ready());
    assert_eq!(d.agent_sentinels(), 0);
    assert_eq!(d.dropped_messages(), 3);
}

#[test]
fn a_timeout_queues_a_resync_and_the_late_reply_is_dropped() {
    let mut d = agent(1);
    transmit(&mut d);
    feed(&mut d, b"\xff{\"return\": 1}\n", ms(1));
    assert!(d.is_ready());
    let opts = SendOptions::new().deadline(Deadline::After(Duration::from_secs(1)));
    let ping = d.execute("guest-ping", &(), opts, ms(10)).unwrap();
    transmit(&mut d);
    d.handle_timeout(ms(1010));
    assert_eq!(d.poll(), Some(Done::Completed(ping)));
    assert_eq!(outcome_text(&mut d, ping), "failed TimedOut");
    // A new sync went out, with a new id.
    let sync = d.agent_pending_sync().expect("a resync");
    assert_ne!(sync, 1);
    assert!(!d.is_ready());
    let sent = transmit(&mut d);
    assert_eq!(
        sent,
        format!("\u{0}{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{sync}}}}}")
            .replace('\u{0}', "\u{ff}")
            .chars()
            .map(|c| c as u32 as u8)
            .collect::<Vec<u8>>()
    );
    // The agent wakes up: the late reply, then the sync's.
    let late = format!(
        "{{\"return\": {{}}, \"id\": {}}}\n\u{ff}{{\"return\": {sync}}}\n",
        ping.get()
    );
    let late: Vec<u8> = late.chars().map(|c| c as u32 as u8).collect();
    let dropped = d.dropped_messages();
    assert!(feed(&mut d, &late, ms(2000)).is_empty());
    assert!(d.is_ready());
    assert_eq!(d.agent_syncs(), 2);
    assert_eq!(d.dropped_messages(), dropped + 1);
    // Commands work again.
    let ping = d
        .execute("guest-ping", &(), SendOptions::new(), ms(2000))
        .unwrap();
    transmit(&mut d);
    let reply = format!("{{\"return\": {{}}, \"id\": {}}}\n", ping.get());
    assert_eq!(
        feed(&mut d, reply.as_bytes(), ms(2001)),
        [(ping, "return {}".to_owned())]
    );
}

#[test]
fn the_sync_times_out_as_a_handshake_and_a_late_reply_still_completes_it() {
    let mut d = agent(99);
    assert!(matches!(
        d.poll_io(ms(0), Wait::Handshake, None),
        Io::Write { .. }
    ));
    transmit(&mut d);
    assert!(
        matches!(d.poll_io(ms(5000), Wait::Handshake, None), Io::Read { until: Some(t), .. } if t == ms(10_000))
    );
    assert_eq!(
        d.poll_io(ms(10_000), Wait::Handshake, None).done(),
        Some(Done::TimedOut)
    );
    // No busy wake-up at the passed deadline.
    assert_eq!(d.poll_timeout(), None);
    feed(&mut d, b"\xff{\"return\": 99}\n", ms(11_000));
    assert_eq!(
        d.poll_io(ms(11_000), Wait::Handshake, None).done(),
        Some(Done::Ready)
    );
}

#[test]
fn a_command_without_a_success_reply_succeeds_in_silence_and_fails_on_an_error() {
    let mut d = agent(3);
    transmit(&mut d);
    feed(&mut d, b"\xff{\"return\": 3}\n", ms(0));
    let opts = SendOptions::new().deadline(Deadline::After(Duration::from_millis(500)));
    let shutdown = d
        .execute_no_reply("guest-shutdown", &(), opts, ms(0))
        .unwrap();
    assert!(transmit(&mut d).starts_with(b"{\"execute\":\"guest-shutdown\""));
    d.handle_timeout(ms(499));
    assert_eq!(d.poll(), None);
    d.handle_timeout(ms(500));
    assert_eq!(d.poll(), Some(Done::Completed(shutdown)));
    assert_eq!(outcome_text(&mut d, shutdown), "return {}");
    // Silence is not a timeout: no resync.
    assert_eq!(d.agent_pending_sync(), None);

    // Refused: the error comes back by id.
    let suspend = d
        .execute_no_reply("guest-suspend-ram", &(), opts, ms(600))
        .unwrap();
    transmit(&mut d);
    let error = format!(
        "{{\"id\": {}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"suspend: not supported\"}}}}\n",
        suspend.get()
    );
    assert_eq!(
        feed(&mut d, error.as_bytes(), ms(700)),
        [(
            suspend,
            "error GenericError: suspend: not supported".to_owned()
        )]
    );

    // The channel closes after it (the guest went down): success too.
    let halt = d
        .execute_no_reply("guest-shutdown", &(), opts, ms(800))
        .unwrap();
    transmit(&mut d);
    d.handle_eof();
    assert_eq!(d.poll(), Some(Done::Completed(halt)));
    assert_eq!(outcome_text(&mut d, halt), "return {}");
    // An ordinary command does time out.
    assert!(matches!(d.poll(), Some(Done::Closed(_))));
}

#[test]
fn execute_sends_the_agents_silent_commands_as_no_reply_ones() {
    // The default config's command timeout is 30 s: silence is success after
    // NO_REPLY_TIMEOUT (3 s) for a command with no deadline of its own, or none at all.
    assert_eq!(NO_REPLY_TIMEOUT, Duration::from_secs(3));
    for deadline in [Deadline::Default, Deadline::Never] {
        let mut d = agent(5);
        transmit(&mut d);
        feed(&mut d, b"\xff{\"return\": 5}\n", ms(0));
        let opts = SendOptions::new().deadline(deadline);
        let ping = d.execute("guest-ping", &(), opts, ms(0)).unwrap();
        let shutdown = d.execute("guest-shutdown", &(), opts, ms(0)).unwrap();
        transmit(&mut d);
        d.handle_timeout(ms(2_999));
        assert_eq!(d.poll(), None, "{deadline:?}");
        d.handle_timeout(ms(3_000));
        assert_eq!(d.poll(), Some(Done::Completed(shutdown)), "{deadline:?}");
        assert_eq!(outcome_text(&mut d, shutdown), "return {}");
        // guest-ping is no such command: it still waits for its reply.
        assert_eq!(d.poll(), None);
        let reply = format!("{{\"return\": {{}}, \"id\": {}}}\n", ping.get());
        assert_eq!(
            feed(&mut d, reply.as_bytes(), ms(3_100)),
            [(ping, "return {}".to_owned())]
        );
    }

    // A command timeout shorter than NO_REPLY_TIMEOUT bounds the silence; an explicit
    // deadline is the command's own, longer or not.
    let config = DriverConfig {
        command_timeout: Some(Duration::from_millis(800)),
        ..DriverConfig::default()
    };
    let mut d = Driver::new_agent([0; 8192], [0; 1024], EventBuffer::new(), config, 6, ms(0));
    transmit(&mut d);
    feed(&mut d, b"\xff{\"return\": 6}\n", ms(0));
    let short = d
        .execute("guest-suspend-ram", &(), SendOptions::new(), ms(0))
        .unwrap();
    let long = SendOptions::new().deadline(Deadline::After(Duration::from_secs(5)));
    let own = d.execute("guest-shutdown", &(), long, ms(0)).unwrap();
    transmit(&mut d);
    d.handle_timeout(ms(800));
    assert_eq!(d.poll(), Some(Done::Completed(short)));
    d.handle_timeout(ms(4_999));
    assert_eq!(d.poll(), None);
    d.handle_timeout(ms(5_000));
    assert_eq!(d.poll(), Some(Done::Completed(own)));
    assert!(NO_SUCCESS_RESPONSE.contains(&"guest-suspend-ram"));
}

#[test]
fn silent_commands_hold_their_places_only_while_they_may_still_fail() {
    let mut d = agent(7);
    transmit(&mut d);
    feed(&mut d, b"\xff{\"return\": 7}\n", ms(0));
    let opts = SendOptions::new();
    let a = d.execute("guest-shutdown", &(), opts, ms(0)).unwrap();
    assert!(d.has_room(false));
    let b = d.execute("guest-suspend-ram", &(), opts, ms(0)).unwrap();
    transmit(&mut d);
    // Two in flight: no room (for a third, or anything) until one ends; no busy loop on
    // `Wait::Room` meanwhile.
    assert!(!d.has_room(false));
    assert_eq!(
        d.execute("guest-suspend-disk", &(), opts, ms(0)),
        Err(qmp_proto::SendError::QueueFull)
    );
    assert_eq!(
        d.poll_io(ms(1), Wait::Room { oob: false }, None).done(),
        None
    );
    // Abandoned, a silent command frees both its places at once: no reply is owed for it.
    assert!(d.abandon(a));
    assert!(d.has_room(false));
    assert_eq!(d.in_flight(), 1);
    // Its error, should one still come, is dropped as unmatched.
    let dropped = d.dropped_messages();
    let late = format!(
        "{{\"id\": {}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"late\"}}}}\n",
        a.get()
    );
    assert_eq!(feed(&mut d, late.as_bytes(), ms(10)), []);
    assert_eq!(d.dropped_messages(), dropped + 1);
    d.handle_timeout(ms(3_000));
    assert_eq!(d.poll(), Some(Done::Completed(b)));
    assert_eq!(outcome_text(&mut d, b), "return {}");
    assert_eq!(d.in_flight(), 0);

    // One that never wholly left the transmit buffer is not a success when its deadline
    // passes: the agent never got it.
    let short = SendOptions::new().deadline(Deadline::After(Duration::from_millis(100)));
    let cut = d.execute("guest-shutdown", &(), short, ms(3_000)).unwrap();
    let n = d.poll_transmit().unwrap().len();
    d.handle_written(n / 2, ms(3_001));
    d.handle_timeout(ms(3_100));
    assert_eq!(d.poll(), Some(Done::Completed(cut)));
    assert_eq!(outcome_text(&mut d, cut), "failed TimedOut");
    // ... and, like any command cut off by its deadline, it is followed by a new sync.
    let sync = d.agent_pending_sync().expect("a new sync");
    transmit(&mut d);
    let mut reply = vec![AGENT_SENTINEL];
    reply.extend_from_slice(format!("{{\"return\": {sync}}}\n").as_bytes());
    feed(&mut d, &reply, ms(3_200));
    assert_eq!(d.agent_pending_sync(), None);

    // Cut off by the end of the channel: a failure too, not the silence of a shutdown.
    let cut = d.execute("guest-shutdown", &(), short, ms(3_300)).unwrap();
    let n = d.poll_transmit().unwrap().len();
    d.handle_written(n / 2, ms(3_301));
    d.handle_eof();
    assert_eq!(d.poll(), Some(Done::Completed(cut)));
    assert_eq!(outcome_text(&mut d, cut), "failed Disconnected");
}

#[test]
fn a_cut_off_command_is_followed_by_the_sentinel_not_qmps_resync_byte() {
    let mut d = agent(8);
    transmit(&mut d);
    feed(&mut d, b"\xff{\"return\": 8}\n", ms(0));
    let opts = SendOptions::new().deadline(Deadline::After(Duration::from_millis(100)));
    let cut = d.execute("guest-ping", &(), opts, ms(0)).unwrap();
    let first = d.poll_transmit().unwrap().len();
    d.handle_written(first / 2, ms(1));
    d.handle_timeout(ms(200));
    assert_eq!(d.poll(), Some(Done::Completed(cut)));
    assert_eq!(
        d.outcome(cut)
            .map(|o| matches!(o, Outcome::Failed(Failure::TimedOut))),
        Some(true)
    );
    // The resync that follows the timeout starts with the sentinel.
    let sent = transmit(&mut d);
    assert_eq!(sent[0], AGENT_SENTINEL);
    assert!(sent[1..].starts_with(b"{\"execute\":\"guest-sync-delimited\""));
}

trait DoneExt {
    fn done(self) -> Option<Done>;
}

impl DoneExt for Io<'_> {
    fn done(self) -> Option<Done> {
        match self {
            Io::Done(done) => Some(done),
            _ => None,
        }
    }
}

#[test]
fn the_sentinel_ends_any_fragment_right_before_it() {
    // The sync reply right after a fragment, whatever state the fragment leaves the framer
    // in: inside a string, right after a backslash, inside nested objects, skimming one too
    // large for the buffer.
    let big = format!("{{\"return\": \"{}", "a".repeat(20_000));
    let fragments: Vec<&[u8]> = vec![
        b"{\"return\": \"x\\",
        b"{\"return\": \"x",
        b"{\"a\": {\"b\": [1, 2",
        b"{\"a\": \"\\u00",
        b"{\"a\" \\",
        b"\\",
        big.as_bytes(),
    ];
    for fragment in fragments {
        let mut stream = fragment.to_vec();
        stream.extend_from_slice(b"\xff{\"return\": 31337}\n");
        for split in 0..=stream.len() {
            let mut d = agent(31337);
            transmit(&mut d);
            feed(&mut d, &stream[..split], ms(1));
            feed(&mut d, &stream[split..], ms(2));
            assert!(
                d.is_ready(),
                "after {:?}, split {split}",
                String::from_utf8_lossy(&fragment[..fragment.len().min(40)])
            );
        }
    }
}
