//! The driver against a scripted QEMU on a virtual clock: the rules every client shares.

use std::time::Duration;

use qmp_proto::{
    CloseReason, Config, Deadline, Done, Driver, DriverConfig, EventBuffer, Failure, Instant, Io,
    Lagged, LinkError, Outcome, SendError, SendOptions, Wait,
};

/// QEMU 7.2.22's greeting (recorded).
const GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n";

type Small = Driver<[u8; 1024], [u8; 256], EventBuffer<128>, 4>;

/// The far end: what it has sent and not yet been read, and what it received.
#[derive(Default)]
struct Peer {
    unread: Vec<u8>,
    received: Vec<u8>,
    /// Each write takes at most this many bytes (0: all).
    write_chunk: usize,
    /// Writes fail with this from now on.
    write_error: Option<LinkError>,
    /// Reads see the end of the stream once `unread` is empty.
    eof: bool,
    /// Reads fail fatally.
    read_fatal: bool,
    /// What the peer sends after each whole command it receives, in order.
    answers: std::collections::VecDeque<Vec<u8>>,
    /// Nesting depth of what it received (commands hold no braces in strings here).
    depth: i32,
}

impl Peer {
    /// Sends `bytes` once the next command has arrived.
    fn answer(&mut self, bytes: &[u8]) {
        self.answers.push_back(bytes.to_vec());
    }
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// Runs the I/O loop to the end of `wait`; time jumps to each wake-up when nothing is
/// there to read. Panics where a real client would block forever.
#[track_caller]
fn run(
    d: &mut Small,
    peer: &mut Peer,
    now: &mut Instant,
    wait: Wait<'_>,
    deadline: Option<Instant>,
) -> Done {
    for _ in 0..10_000 {
        match d.poll_io(*now, wait, deadline) {
            Io::Write { bytes, .. } => {
                if let Some(e) = peer.write_error {
                    d.handle_write_error(e, *now);
                    continue;
                }
                let n = if peer.write_chunk == 0 {
                    bytes.len()
                } else {
                    bytes.len().min(peer.write_chunk)
                };
                peer.received.extend_from_slice(&bytes[..n]);
                for &b in &bytes[..n] {
                    match b {
                        b'{' => peer.depth += 1,
                        b'}' => {
                            peer.depth -= 1;
                            if peer.depth == 0
                                && let Some(answer) = peer.answers.pop_front()
                            {
                                peer.unread.extend_from_slice(&answer);
                            }
                        }
                        _ => {}
                    }
                }
                d.handle_written(n, *now);
            }
            Io::Read { buf, until } => {
                if peer.read_fatal {
                    d.handle_read_error(LinkError::Fatal, *now);
                    continue;
                }
                if peer.unread.is_empty() {
                    if peer.eof {
                        d.handle_read(0, *now);
                        continue;
                    }
                    let until = until.expect("would block forever");
                    assert!(until >= *now, "woken in the past");
                    *now = until;
                    d.handle_read_error(LinkError::Transient, *now);
                    continue;
                }
                let n = buf.len().min(peer.unread.len());
                buf[..n].copy_from_slice(&peer.unread[..n]);
                peer.unread.drain(..n);
                d.handle_read(n, *now);
            }
            Io::Done(done) => return done,
        }
    }
    panic!("the loop did not end");
}

fn config() -> DriverConfig {
    DriverConfig {
        oob: true,
        handshake_timeout: Some(Duration::from_secs(1)),
        command_timeout: Some(Duration::from_millis(100)),
        ..DriverConfig::default()
    }
}

fn new_driver(config: DriverConfig) -> Small {
    Driver::new([0; 1024], [0; 256], EventBuffer::new(), config, ms(0))
}

/// A driver past its handshake with oob negotiated; the peer's received bytes cleared.
fn ready(config: DriverConfig) -> (Small, Peer, Instant) {
    let mut d = new_driver(config);
    let mut peer = Peer {
        unread: GREETING.to_vec(),
        ..Peer::default()
    };
    peer.answer(b"{\"return\": {}, \"id\": 1}\r\n");
    let mut now = ms(0);
    // The greeting comes, qmp_capabilities goes out by itself, then its reply.
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Handshake, None),
        Done::Ready
    );
    assert_eq!(
        peer.received,
        br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#
    );
    peer.received.clear();
    (d, peer, now)
}

#[test]
fn handshake_negotiates_oob_by_itself_and_reports_the_server() {
    let mut d = new_driver(config());
    let mut peer = Peer {
        unread: GREETING.to_vec(),
        ..Peer::default()
    };
    let mut now = ms(0);
    // No negotiation reply yet: the handshake deadline ends the wait.
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Handshake, None),
        Done::TimedOut
    );
    assert_eq!(now, ms(1000));
    assert_eq!(
        peer.received,
        br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#
    );
    let server = d.server().unwrap();
    assert_eq!(server.version.to_string(), "7.2.22");
    assert_eq!(server.package.as_str(), "Debian 1:7.2+dfsg-7+deb12u18+b3");
    assert!(server.oob_offered);
    assert!(!server.oob_enabled);
}

#[test]
fn handshake_completes_with_oob_enabled() {
    let (d, _, _) = ready(config());
    assert!(d.is_ready());
    assert!(d.server().unwrap().oob_enabled);
}

#[test]
fn a_silent_server_times_the_greeting_out() {
    let mut d = new_driver(config());
    let mut peer = Peer::default();
    let mut now = ms(0);
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Handshake, None),
        Done::TimedOut
    );
    assert_eq!(now, ms(1000));
    assert!(d.server().is_none());
}

#[test]
fn a_refused_negotiation_is_the_negotiation_commands_outcome() {
    let mut d = new_driver(config());
    let mut peer = Peer {
        unread: GREETING.to_vec(),
        ..Peer::default()
    };
    peer.answer(b"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\r\n");
    let mut now = ms(0);
    let Done::Completed(id) = run(&mut d, &mut peer, &mut now, Wait::Handshake, None) else {
        panic!()
    };
    let Some(Outcome::Error(e)) = d.outcome(id) else {
        panic!()
    };
    assert!(e.class == "GenericError" && e.desc == "no");
    assert!(!d.is_ready());
}

#[test]
fn boot_noise_before_the_greeting_is_skipped() {
    let mut d = new_driver(DriverConfig {
        negotiate: false,
        ..config()
    });
    let mut peer = Peer::default();
    peer.unread
        .extend_from_slice(b"SeaBIOS (version 1.16)\r\nbooting...\r\n");
    peer.unread.extend_from_slice(GREETING);
    let mut now = ms(0);
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Handshake, None),
        Done::Ready
    );
    assert!(peer.received.is_empty());
}

#[test]
fn a_command_gets_its_reply_and_events_before_it_are_queued() {
    let (mut d, mut peer, mut now) = ready(config());
    let id = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    peer.answer(
        b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n{\"return\": {}, \"id\": 2}\r\n",
    );
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(id), None),
        Done::Completed(id)
    );
    assert_eq!(peer.received, br#"{"execute":"stop","id":2}"#);
    let Some(Outcome::Return(value)) = d.outcome(id) else {
        panic!()
    };
    assert_eq!(value.as_json(), "{}");
    let event = d.take_event(Some("STOP")).unwrap().unwrap();
    assert_eq!(event.timestamp.seconds, 1);
    assert!(d.take_event(None).is_none());
    // Taken once; then it is not pending.
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(id), None),
        Done::NotPending
    );
}

#[test]
fn the_reply_value_is_decoded_from_the_receive_buffer() {
    let (mut d, mut peer, mut now) = ready(config());
    let id = d
        .execute("query-status", &(), SendOptions::new(), now)
        .unwrap();
    peer.answer(
        b"{\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}, \"id\": 2}\r\n",
    );
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(id), None),
        Done::Completed(id)
    );
    #[derive(serde::Deserialize)]
    struct Status<'a> {
        status: &'a str,
        running: bool,
    }
    let Some(Outcome::Return(value)) = d.outcome(id) else {
        panic!()
    };
    let status: Status<'_> = value.deserialize().unwrap();
    assert_eq!((status.status, status.running), ("paused", false));
}

#[test]
fn escaped_strings_are_unescaped_through_the_transmit_buffer() {
    let (mut d, mut peer, mut now) = ready(config());
    let id = d
        .execute("human-monitor-command", &(), SendOptions::new(), now)
        .unwrap();
    peer.answer(b"{\"return\": \"VM status: running\\r\\n\", \"id\": 2}\r\n");
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(id), None),
        Done::Completed(id)
    );
    let Some((Outcome::Return(value), scratch)) = d.outcome_with_scratch(id) else {
        panic!()
    };
    // Nothing waits to be written: the whole transmit buffer is scratch space.
    assert_eq!(scratch.len(), 256);
    let text: heapless::String<32> = value.deserialize_unescaped(scratch).unwrap();
    assert_eq!(text, "VM status: running\r\n");
    assert!(d.outcome(id).is_none(), "taken");
}

#[test]
fn oob_can_be_chosen_for_an_explicit_negotiation() {
    for oob in [false, true] {
        let mut d = new_driver(DriverConfig {
            negotiate: false,
            ..config()
        });
        d.set_oob(oob);
        let mut peer = Peer {
            unread: GREETING.to_vec(),
            ..Peer::default()
        };
        let mut now = ms(0);
        // Without negotiating by itself, the handshake ends at the greeting.
        assert_eq!(
            run(&mut d, &mut peer, &mut now, Wait::Handshake, None),
            Done::Ready
        );
        assert!(peer.received.is_empty());
        d.negotiate(SendOptions::new(), now).unwrap();
        peer.answer(b"{\"return\": {}, \"id\": 1}\r\n");
        assert_eq!(
            run(&mut d, &mut peer, &mut now, Wait::Handshake, None),
            Done::Ready
        );
        assert_eq!(d.server().unwrap().oob_enabled, oob);
        let asked = peer.received.windows(3).any(|w| w == b"oob");
        assert_eq!(asked, oob);
    }
}

#[test]
fn other_completions_come_out_on_the_way_to_the_awaited_one() {
    let (mut d, mut peer, mut now) = ready(config());
    let a = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    let b = d.execute("cont", &(), SendOptions::new(), now).unwrap();
    peer.answer(b"");
    peer.answer(b"{\"return\": {}, \"id\": 2}\r\n{\"return\": {}, \"id\": 3}\r\n");
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(b), None),
        Done::Completed(a)
    );
    assert!(matches!(d.outcome(a), Some(Outcome::Return(_))));
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(b), None),
        Done::Completed(b)
    );
}

#[test]
fn a_command_fails_at_its_deadline_and_its_late_reply_is_dropped() {
    let (mut d, mut peer, mut now) = ready(config());
    let start = now;
    let id = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(id), None),
        Done::Completed(id)
    );
    assert_eq!(d.outcome(id), Some(Outcome::Failed(Failure::TimedOut)));
    assert_eq!(now, start + Duration::from_millis(100));
    let next = d.execute("cont", &(), SendOptions::new(), now).unwrap();
    peer.answer(b"{\"return\": {}, \"id\": 2}\r\n{\"return\": {}, \"id\": 3}\r\n");
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(next), None),
        Done::Completed(next)
    );
    assert_eq!(d.dropped_messages(), 1);
}

#[test]
fn waiting_for_room_behind_abandoned_commands_ends_at_the_deadline() {
    // The defect: every slot held by an abandoned command whose reply never comes.
    let (mut d, mut peer, mut now) = ready(config());
    let mut abandoned = 0;
    while d.has_room(false) {
        let id = d.execute("stop", &(), SendOptions::new(), now).unwrap();
        assert_eq!(
            run(&mut d, &mut peer, &mut now, Wait::Flush, None),
            Done::Flushed
        );
        assert!(d.abandon(id));
        abandoned += 1;
    }
    assert_eq!(abandoned, 4);
    assert_eq!(
        d.execute("stop", &(), SendOptions::new(), now),
        Err(SendError::TableFull)
    );
    let deadline = now + Duration::from_millis(250);
    assert_eq!(
        run(
            &mut d,
            &mut peer,
            &mut now,
            Wait::Room { oob: false },
            Some(deadline)
        ),
        Done::TimedOut
    );
    assert_eq!(now, deadline);
    // A late reply frees a slot.
    peer.unread
        .extend_from_slice(b"{\"return\": {}, \"id\": 2}\r\n");
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Room { oob: false }, None),
        Done::Room
    );
    assert_eq!(d.discarded_replies(), 1);
}

#[test]
fn a_command_cut_off_midway_is_dropped_and_qemu_told_to_resync() {
    let (mut d, mut peer, mut now) = ready(config());
    peer.write_chunk = 5;
    let id = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    // Five bytes go out, then the link takes nothing more until the deadline.
    match d.poll_io(now, Wait::Command(id), None) {
        Io::Write { bytes, .. } => {
            peer.received.extend_from_slice(&bytes[..5]);
            d.handle_written(5, now);
        }
        other => panic!("{other:?}"),
    }
    now = now + Duration::from_millis(100);
    d.handle_write_error(LinkError::Transient, now);
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(id), None),
        Done::Completed(id)
    );
    assert_eq!(d.outcome(id), Some(Outcome::Failed(Failure::TimedOut)));
    assert_eq!(d.queued_bytes(), 0);
    peer.write_chunk = 0;
    let next = d.execute("cont", &(), SendOptions::new(), now).unwrap();
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Flush, None),
        Done::Flushed
    );
    assert_eq!(peer.received, b"{\"exe\x01{\"execute\":\"cont\",\"id\":3}");
    assert!(d.is_pending(next));
}

#[test]
fn a_peer_gone_while_writing_still_has_its_last_words_read() {
    let (mut d, mut peer, mut now) = ready(config());
    let a = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Flush, None),
        Done::Flushed
    );
    let b = d.execute("cont", &(), SendOptions::new(), now).unwrap();
    peer.write_error = Some(LinkError::Closed);
    peer.unread
        .extend_from_slice(b"{\"return\": {}, \"id\": 2}\r\n");
    peer.eof = true;
    // b never went out: it fails first; a's reply was on its way and still arrives.
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(a), None),
        Done::Completed(b)
    );
    assert_eq!(d.outcome(b), Some(Outcome::Failed(Failure::Disconnected)));
    assert_eq!(
        d.execute("cont", &(), SendOptions::new(), now),
        Err(SendError::Closed)
    );
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(a), None),
        Done::Completed(a)
    );
    assert!(matches!(d.outcome(a), Some(Outcome::Return(_))));
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Event(None), None),
        Done::Closed(CloseReason::Eof)
    );
}

#[test]
fn a_command_dropped_unwritten_is_still_awaited_until_its_failure_is_taken() {
    let (mut d, mut peer, mut now) = ready(config());
    let a = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    peer.write_error = Some(LinkError::Closed);
    peer.eof = true;
    // Flushing drops it unwritten; waiting for it then yields its failure, not NotPending.
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Flush, None),
        Done::Flushed
    );
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(a), None),
        Done::Completed(a)
    );
    assert_eq!(d.outcome(a), Some(Outcome::Failed(Failure::Disconnected)));
}

#[test]
fn a_fatal_read_error_fails_everything_waiting() {
    let (mut d, mut peer, mut now) = ready(config());
    let a = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    peer.read_fatal = true;
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(a), None),
        Done::Completed(a)
    );
    assert_eq!(d.outcome(a), Some(Outcome::Failed(Failure::Disconnected)));
    assert_eq!(d.close_reason(), Some(CloseReason::Io));
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Idle, None),
        Done::Closed(CloseReason::Io)
    );
}

#[test]
fn a_stalled_peer_ends_the_connection() {
    let (mut d, mut peer, mut now) = ready(DriverConfig {
        stall_timeout: Some(Duration::from_millis(40)),
        ..config()
    });
    let start = now;
    let a = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(a), None),
        Done::Completed(a)
    );
    assert_eq!(d.outcome(a), Some(Outcome::Failed(Failure::Disconnected)));
    assert_eq!(d.close_reason(), Some(CloseReason::Stalled));
    assert_eq!(now, start + Duration::from_millis(40));
}

#[test]
fn events_past_the_queue_are_counted_and_reported_where_they_were_lost() {
    let (mut d, _peer, now) = ready(config());
    let resume =
        b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RESUME\"}\r\n";
    for _ in 0..8 {
        assert_eq!(d.feed(resume, now), resume.len());
        while d.poll().is_some() {}
    }
    // 128 bytes hold five 25-byte RESUME records.
    for _ in 0..5 {
        assert!(d.take_event(None).unwrap().is_ok());
    }
    assert_eq!(
        d.take_event(None).unwrap().unwrap_err(),
        Lagged { missed: 3 }
    );
    assert!(d.take_event(None).is_none());
    assert_eq!(d.events().lost_total(), 3);
}

#[test]
fn waiting_for_an_event_ends_at_its_deadline() {
    let (mut d, mut peer, mut now) = ready(config());
    let deadline = now + Duration::from_millis(70);
    assert_eq!(
        run(
            &mut d,
            &mut peer,
            &mut now,
            Wait::Event(Some("STOP")),
            Some(deadline)
        ),
        Done::TimedOut
    );
    assert_eq!(now, deadline);
}

#[test]
fn an_event_too_large_to_receive_is_counted_lost() {
    let (mut d, mut peer, mut now) = ready(config());
    let mut big = b"{\"event\": \"X\", \"data\": {\"s\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 3000));
    big.extend_from_slice(b"\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n");
    peer.unread.extend_from_slice(&big);
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Event(None), None),
        Done::Event
    );
    assert_eq!(d.take_event(None), Some(Err(Lagged { missed: 1 })));
}

#[test]
fn an_attached_command_goes_out_on_its_own() {
    let (mut d, _peer, now) = ready(config());
    let a = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    assert_eq!(
        d.execute("getfd", &(), SendOptions::new().attach(true), now),
        Err(SendError::Busy)
    );
    let Io::Write { bytes, attach } = d.poll_io(now, Wait::Flush, None) else {
        panic!()
    };
    assert!(!attach);
    let n = bytes.len();
    d.handle_written(n, now);
    let b = d
        .execute(
            "getfd",
            &serde_json::json!({"fdname": "x"}),
            SendOptions::new().attach(true),
            now,
        )
        .unwrap();
    let c = d.execute("cont", &(), SendOptions::new(), now).unwrap();
    let Io::Write { bytes, attach } = d.poll_io(now, Wait::Flush, None) else {
        panic!()
    };
    assert!(attach);
    assert_eq!(
        bytes,
        br#"{"execute":"getfd","arguments":{"fdname":"x"},"id":3}"#
    );
    d.handle_written(1, now);
    let Io::Write { bytes, attach } = d.poll_io(now, Wait::Flush, None) else {
        panic!()
    };
    assert!(!attach, "only the first byte carries it");
    assert!(bytes.ends_with(br#"{"execute":"cont","id":4}"#));
    assert!(d.is_pending(a) && d.is_pending(b) && d.is_pending(c));
}

#[test]
fn a_message_of_ones_own_gets_its_reply_as_untracked() {
    let (mut d, mut peer, mut now) = ready(config());
    d.send_message(&serde_json::json!({"execute": "query-status", "id": "mine"}))
        .unwrap();
    peer.answer(b"{\"return\": {}, \"id\": \"mine\"}\r\n");
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Untracked, None),
        Done::Untracked
    );
    assert_eq!(peer.received, br#"{"execute":"query-status","id":"mine"}"#);
    let message = d.untracked().unwrap();
    assert_eq!(message.id().unwrap().as_json(), "\"mine\"");
}

#[test]
fn untagged_commands_are_matched_by_order() {
    let (mut d, mut peer, mut now) = ready(DriverConfig {
        session: Config::default().untagged_when_alone(true),
        ..config()
    });
    let id = d
        .execute(
            "query-status",
            &(),
            SendOptions::new().deadline(Deadline::Never),
            now,
        )
        .unwrap();
    peer.answer(b"{\"return\": {\"running\": true}}\r\n");
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(id), None),
        Done::Completed(id)
    );
    assert_eq!(peer.received, br#"{"execute":"query-status"}"#);
}

#[test]
fn closing_fails_what_waits_then_reports_the_close() {
    let (mut d, mut peer, mut now) = ready(config());
    let a = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    d.close();
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Command(a), None),
        Done::Completed(a)
    );
    assert_eq!(d.outcome(a), Some(Outcome::Failed(Failure::Disconnected)));
    assert_eq!(
        run(&mut d, &mut peer, &mut now, Wait::Event(None), None),
        Done::Closed(CloseReason::Local)
    );
    assert!(peer.received.is_empty());
}

/// A store that holds at most two names, owned: what an adapter with owned events fans out
/// to its subscribers through [`qmp_proto::EventQueue::push_with`].
#[derive(Default)]
struct Names(Vec<String>);

impl qmp_proto::EventStore for Names {
    type Item<'a> = String;
    fn push(&mut self, _: &qmp_proto::Event<'_>) -> bool {
        unreachable!("only push_with is used")
    }
    fn take(&mut self, name: Option<&str>) -> Option<String> {
        let at = match name {
            None => 0,
            Some(name) => self.0.iter().position(|n| n == name)?,
        };
        Some(self.0.remove(at))
    }
    fn contains(&self, name: Option<&str>) -> bool {
        name.map_or(!self.0.is_empty(), |name| self.0.iter().any(|n| n == name))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[test]
fn push_with_applies_the_one_overflow_rule_to_events_stored_by_the_caller() {
    let mut queue = qmp_proto::EventQueue::new(Names::default());
    let push = |queue: &mut qmp_proto::EventQueue<Names>, name: &str| {
        queue.push_with(|names| {
            names.0.len() < 2 && {
                names.0.push(name.to_owned());
                true
            }
        })
    };
    assert!(push(&mut queue, "A"));
    assert!(push(&mut queue, "B"));
    // Full: the newest is dropped, and so is every later one while the gap is open.
    assert!(!push(&mut queue, "C"));
    assert_eq!(queue.take(None), Some(Ok("A".to_owned())));
    assert!(!push(&mut queue, "D"));
    assert_eq!(queue.take(None), Some(Ok("B".to_owned())));
    assert_eq!(queue.take(None), Some(Err(Lagged { missed: 2 })));
    assert!(push(&mut queue, "E"));
    assert_eq!(queue.take(None), Some(Ok("E".to_owned())));
    assert_eq!(queue.lost_total(), 2);
}

#[test]
fn feeding_nothing_is_not_the_end_of_the_stream() {
    let (mut d, _peer, now) = ready(config());
    let id = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    assert_eq!(d.feed(b"", now), 0);
    assert!(d.poll().is_none());
    assert!(d.is_pending(id) && !d.is_closed());
    assert_eq!(d.dropped_messages(), 0, "no byte was made up");
    let reply = b"{\"return\": {}, \"id\": 2}\r\n";
    assert_eq!(d.feed(reply, now), reply.len());
    assert_eq!(d.poll(), Some(Done::Completed(id)));
}

/// What a [`Releasable`] buffer went through: (grows, releases, current length).
type Stats = std::rc::Rc<std::cell::Cell<(usize, usize, usize)>>;

/// A heap buffer that gives its bytes back when released, and reports what it was asked.
#[derive(Default)]
struct Releasable {
    bytes: Vec<u8>,
    stats: Stats,
}

impl Releasable {
    fn record(&self, grew: usize, released: usize) {
        let (g, r, _) = self.stats.get();
        self.stats.set((g + grew, r + released, self.bytes.len()));
    }
}

impl AsRef<[u8]> for Releasable {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for Releasable {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl qmp_proto::Buffer for Releasable {
    fn grow_to(&mut self, len: usize) -> bool {
        let len = len.max(512);
        if len <= self.bytes.len() {
            return false;
        }
        self.bytes.resize(len, 0);
        self.record(1, 0);
        true
    }

    fn release(&mut self) {
        self.bytes = Vec::new();
        self.record(0, 1);
    }
}

type Releasing = Driver<Releasable, Releasable, EventBuffer<128>, 4>;

/// Writes everything the driver has to send; returns it.
fn drain_writes(d: &mut Releasing, now: Instant) -> Vec<u8> {
    let mut sent = Vec::new();
    while let Io::Write { bytes, .. } = d.poll_io(now, Wait::Idle, None) {
        let n = bytes.len();
        sent.extend_from_slice(bytes);
        d.handle_written(n, now);
    }
    sent
}

#[test]
fn buffers_are_released_only_while_they_hold_nothing_and_come_back_when_needed() {
    let now = ms(0);
    let (rx, tx) = (Releasable::default(), Releasable::default());
    let (rxs, txs) = (rx.stats.clone(), tx.stats.clone());
    let mut d: Releasing = Driver::new(rx, tx, EventBuffer::new(), config(), now);
    // An empty receive buffer is grown before the first read: the greeting goes in.
    assert_eq!(d.feed(GREETING, now), GREETING.len());
    assert!(d.poll().is_none());
    let negotiation = drain_writes(&mut d, now);
    assert!(negotiation.starts_with(br#"{"execute":"qmp_capabilities""#));
    let ok = b"{\"return\": {}, \"id\": 1}\r\n";
    assert_eq!(d.feed(ok, now), ok.len());
    while d.poll().is_some() {}
    assert!(d.is_ready());

    // Idle: both buffers go.
    d.release_buffers();
    assert_eq!((rxs.get().1, rxs.get().2), (1, 0));
    assert_eq!((txs.get().1, txs.get().2), (1, 0));
    let id = d.execute("stop", &(), SendOptions::new(), now).unwrap();
    // The transmit buffer came back once, before encoding (so the command was encoded once,
    // into it), and stays while its bytes are unwritten.
    assert_eq!(txs.get().0, 2);
    d.release_buffers();
    assert_eq!(
        (rxs.get().1, txs.get().1),
        (1, 1),
        "released once, not again while empty"
    );
    assert_eq!(drain_writes(&mut d, now), br#"{"execute":"stop","id":2}"#);

    // Half a reply is kept across a release; the rest completes it.
    let reply = b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n{\"return\": {\"a\": 1}, \"id\": 2}\r\n";
    let (head, tail) = reply.split_at(reply.len() - 10);
    assert_eq!(d.feed(head, now), head.len());
    while d.poll().is_some() {}
    d.release_buffers();
    assert_eq!(rxs.get().1, 1, "half a message is never released");
    assert_eq!(txs.get().1, 2, "the written transmit buffer is");
    assert_eq!(d.feed(tail, now), tail.len());
    assert_eq!(d.poll(), Some(Done::Completed(id)));
    // The outcome lives in the receive buffer until it is taken: no release before.
    d.release_buffers();
    assert_eq!(rxs.get().1, 1);
    let Some(Outcome::Return(value)) = d.outcome(id) else {
        panic!("no outcome")
    };
    assert_eq!(value.as_json(), r#"{"a": 1}"#);
    let event = d.take_event(Some("STOP")).unwrap().unwrap();
    assert_eq!(event.timestamp.microseconds, 2);
    assert!(d.poll().is_none());
    d.release_buffers();
    assert_eq!((rxs.get().1, rxs.get().2), (2, 0));

    // And the connection goes on from empty buffers.
    let id = d.execute("cont", &(), SendOptions::new(), now).unwrap();
    assert_eq!(drain_writes(&mut d, now), br#"{"execute":"cont","id":3}"#);
    let reply = b"{\"return\": {}, \"id\": 3}\r\n";
    assert_eq!(d.feed(reply, now), reply.len());
    assert_eq!(d.poll(), Some(Done::Completed(id)));
    assert_eq!(d.dropped_messages(), 0);
}
