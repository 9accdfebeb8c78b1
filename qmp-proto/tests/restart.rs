//! A second greeting mid-session (QEMU restarted at the far end of a serial line) resets the
//! session: the commands in flight fail with `Failure::ServerRestarted`, the handshake is
//! done again, and the session goes on with the new server. The server's bytes are
//! `data/restart.jsonl`, recorded from two real QEMUs in turn on one pty by
//! `data/record_restart.py` (the ids there are the ones this driver gives).

use std::time::Duration;

use qmp_proto::{
    Config, Done, Driver, DriverConfig, EventBuffer, Failure, Instant, Outcome, SendOptions, State,
};

type Small = Driver<[u8; 2048], [u8; 512], EventBuffer<256>, 8>;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// The recorded stream, one message (with its `\r\n`) per item.
fn recorded() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/restart.jsonl");
    let bytes = std::fs::read(path).expect("read restart.jsonl");
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Takes everything the driver queued to write, as text.
fn written(d: &mut Small, now: Instant) -> String {
    let mut out = Vec::new();
    while let Some(bytes) = d.poll_transmit() {
        let bytes = bytes.to_vec();
        d.handle_written(bytes.len(), now);
        out.extend_from_slice(&bytes);
    }
    String::from_utf8(out).unwrap()
}

/// Feeds `bytes` and polls until nothing more is done: what completed, in order.
fn feed(d: &mut Small, bytes: &[u8], now: Instant) -> Vec<(u64, Option<Failure>)> {
    let mut rest = bytes;
    let mut done = Vec::new();
    loop {
        let n = d.feed(rest, now);
        rest = &rest[n..];
        while let Some(item) = d.poll() {
            if let Done::Completed(id) = item {
                let failure = match d.outcome(id) {
                    Some(Outcome::Failed(f)) => Some(f),
                    _ => None,
                };
                done.push((id.get(), failure));
            }
        }
        if rest.is_empty() {
            return done;
        }
    }
}

fn driver() -> Small {
    let config = DriverConfig {
        session: Config::default().untagged_when_alone(false),
        handshake_timeout: Some(Duration::from_secs(1)),
        ..DriverConfig::default()
    };
    Driver::new([0; 2048], [0; 512], EventBuffer::new(), config, ms(0))
}

#[test]
fn a_second_greeting_restarts_the_session() {
    let m = recorded();
    assert_eq!(m.len(), 6, "greeting, 2 replies, greeting, 2 replies");
    let mut d = driver();
    // QEMU A: greeting, negotiation (id 1), query-status (id 2).
    assert!(feed(&mut d, &m[0], ms(1)).is_empty());
    assert!(written(&mut d, ms(1)).contains(r#""qmp_capabilities","id":1"#));
    assert_eq!(feed(&mut d, &m[1], ms(2)), [(1, None)]);
    assert!(d.is_ready());
    let status = d
        .execute("query-status", &(), SendOptions::default(), ms(3))
        .unwrap();
    assert_eq!(status.get(), 2);
    written(&mut d, ms(3));
    assert_eq!(feed(&mut d, &m[2], ms(4)), [(2, None)]);
    // Command 3 goes out; then QEMU B greets instead of answering it.
    let lost = d
        .execute("query-status", &(), SendOptions::default(), ms(5))
        .unwrap();
    assert_eq!(lost.get(), 3);
    written(&mut d, ms(5));
    assert_eq!(
        feed(&mut d, &m[3], ms(6)),
        [(3, Some(Failure::ServerRestarted))]
    );
    assert_eq!(d.restarts(), 1);
    assert_eq!(d.dropped_messages(), 0);
    assert!(!d.is_ready());
    assert_eq!(d.state(), State::Negotiating);
    assert!(!d.is_pending(lost));
    // The handshake again, by itself (id 4), then commands as before (id 5).
    assert!(written(&mut d, ms(6)).contains(r#""qmp_capabilities","id":4"#));
    assert_eq!(feed(&mut d, &m[4], ms(7)), [(4, None)]);
    assert!(d.is_ready());
    assert_eq!(d.server().unwrap().version.major, 7);
    let again = d
        .execute("query-status", &(), SendOptions::default(), ms(8))
        .unwrap();
    assert_eq!(again.get(), 5);
    written(&mut d, ms(8));
    assert_eq!(feed(&mut d, &m[5], ms(9)), [(5, None)]);
}

#[test]
fn the_greeting_may_come_in_pieces_and_abandoned_commands_go_quietly() {
    let m = recorded();
    let mut d = driver();
    feed(&mut d, &m[0], ms(1));
    written(&mut d, ms(1));
    feed(&mut d, &m[1], ms(2));
    let abandoned = d
        .execute("query-status", &(), SendOptions::default(), ms(3))
        .unwrap();
    let waiting = d
        .execute("query-status", &(), SendOptions::default(), ms(3))
        .unwrap();
    written(&mut d, ms(3));
    assert!(d.abandon(abandoned));
    // The new greeting, a byte at a time.
    let mut done = Vec::new();
    for b in &m[3] {
        done.extend(feed(&mut d, std::slice::from_ref(b), ms(4)));
    }
    assert_eq!(done, [(waiting.get(), Some(Failure::ServerRestarted))]);
    assert_eq!(d.in_flight(), 1, "only the new negotiation");
    assert_eq!(d.restarts(), 1);
}

#[test]
fn the_new_handshake_has_its_own_deadline() {
    let m = recorded();
    let mut d = driver();
    feed(&mut d, &m[0], ms(1));
    written(&mut d, ms(1));
    feed(&mut d, &m[1], ms(2));
    // Long after the first handshake's deadline (1 s), QEMU restarts.
    feed(&mut d, &m[3], ms(60_000));
    written(&mut d, ms(60_000));
    assert!(!d.is_ready());
    assert_eq!(
        d.poll_wait(ms(60_500), qmp_proto::Wait::Handshake, None),
        None
    );
    assert_eq!(
        d.poll_wait(ms(61_001), qmp_proto::Wait::Handshake, None),
        Some(Done::TimedOut)
    );
}
