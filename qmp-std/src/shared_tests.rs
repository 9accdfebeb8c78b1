//! [`SharedClient`] against the fake QEMU.

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake::{FakeQemu, FakeQemuBuilder};
use crate::{ClientBuilder, Error, SharedClient};

/// The fake the tests share: `echo` returns its arguments; `emit` sends `arguments.n` `TICK`
/// events numbered from the fake's count, then returns `{}`; `sleep` waits `arguments.ms`
/// milliseconds before its reply; anything else returns `{}`.
pub(crate) fn echo() -> FakeQemuBuilder {
    FakeQemu::builder()
        .on("echo", |args| Ok(args.clone()))
        .on_with("emit", |args, fake| {
            for _ in 0..args["n"].as_u64().unwrap_or(1) {
                fake.event("TICK", Some(json!({"seq": fake.events_sent()})));
            }
            Ok(json!({}))
        })
        .on("sleep", |args| {
            thread::sleep(Duration::from_millis(args["ms"].as_u64().unwrap_or(10)));
            Ok(json!({}))
        })
        .fallback(|_, _, _| Ok(json!({})))
}

fn connect(fake: FakeQemuBuilder) -> (SharedClient, FakeQemu) {
    let (client_side, server) = fake.spawn_unix().unwrap();
    // Every command carries an id, as the tests were written.
    let client = ClientBuilder::new()
        .untagged_when_alone(false)
        .connect_timeout(Some(Duration::from_secs(5)))
        .command_timeout(Some(Duration::from_secs(10)))
        .handshake(client_side)
        .unwrap()
        .into_shared()
        .unwrap();
    (client, server)
}

/// The bar: 8 threads × 1,000 commands over one connection, every reply reaching
/// its own caller, and every event (one per command) reaching every subscriber exactly
/// once, in order.
#[test]
fn eight_threads_by_a_thousand_commands_lose_nothing() {
    const THREADS: u64 = 8;
    const COMMANDS: u64 = 1000;
    let (qmp, server) = connect(echo());
    let events = THREADS * COMMANDS / 2;
    // Three subscribers read as events come, one only at the end (it holds them all).
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let subscription = qmp.subscribe();
            thread::spawn(move || {
                for seq in 0..events {
                    let event = subscription.recv_timeout(Duration::from_secs(10)).unwrap();
                    assert_eq!(event.name, "TICK");
                    assert_eq!(event.data.unwrap()["seq"], seq);
                }
                subscription
            })
        })
        .collect();
    let late = qmp.subscribe_with_capacity(events as usize);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let qmp = qmp.clone();
            thread::spawn(move || {
                for n in 0..COMMANDS {
                    // Half echo (the reply names its caller), half emit (one event each).
                    if n % 2 == 0 {
                        let args = json!({"thread": t, "n": n});
                        assert_eq!(qmp.execute_raw("echo", &args).unwrap(), args);
                    } else {
                        qmp.execute_raw("emit", &json!({"n": 1})).unwrap();
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    for reader in readers {
        let subscription = reader.join().unwrap();
        assert!(subscription.try_recv().is_none());
    }
    assert_eq!(late.queued() as u64, events);
    for seq in 0..events {
        assert_eq!(late.try_recv().unwrap().unwrap().data.unwrap()["seq"], seq);
    }
    assert!(late.try_recv().is_none());
    assert_eq!(qmp.in_flight(), 0);
    assert_eq!(qmp.dropped_messages(), 0);
    drop(qmp);
    let server_events = server.events_sent();
    server.join();
    assert_eq!(server_events, events);
}

#[test]
fn a_timed_out_command_fails_and_its_late_reply_is_dropped() {
    let (qmp, server) = connect(echo());
    let slow = qmp.execute_raw_timeout(
        "sleep",
        &json!({"ms": 200}),
        Some(Duration::from_millis(20)),
    );
    assert!(matches!(slow, Err(Error::Timeout(_))), "{slow:?}");
    // The late reply comes first (QEMU answers in order), and is dropped: the driver freed
    // the command's slot when its deadline passed (as every client of the crate does).
    let args = json!({"after": "timeout"});
    assert_eq!(qmp.execute_raw("echo", &args).unwrap(), args);
    assert_eq!(qmp.dropped_messages(), 1);
    assert_eq!(qmp.in_flight(), 0);
    drop(qmp);
    server.join();
}

#[test]
fn more_than_eight_callers_wait_for_room() {
    let (qmp, server) = connect(echo());
    let workers: Vec<_> = (0..32)
        .map(|i| {
            let qmp = qmp.clone();
            thread::spawn(move || {
                qmp.execute_raw("sleep", &json!({"ms": 1})).unwrap();
                assert!(qmp.in_flight() <= 8);
                qmp.execute_raw("echo", &json!({"i": i})).unwrap()
            })
        })
        .collect();
    let got: HashSet<_> = workers
        .into_iter()
        .map(|w| w.join().unwrap()["i"].as_u64().unwrap())
        .collect();
    assert_eq!(got.len(), 32);
    drop(qmp);
    server.join();
}

#[test]
fn a_hang_up_fails_waiting_commands_and_ends_subscriptions() {
    let (qmp, server) = connect(echo());
    // Left unanswered; the next command hangs up.
    server.drop_reply("hang-up-later");
    server.drop_reply("hang-up");
    server.cut_after("hang-up");
    let mut events = qmp.subscribe();
    qmp.execute_raw("emit", &json!({"n": 2})).unwrap();
    let waiting = {
        let qmp = qmp.clone();
        thread::spawn(move || qmp.execute_raw("hang-up-later", &Value::Null))
    };
    while qmp.in_flight() == 0 {
        thread::sleep(Duration::from_millis(1));
    }
    let hung_up = qmp.execute_raw("hang-up", &Value::Null);
    assert!(matches!(hung_up, Err(Error::Disconnected)), "{hung_up:?}");
    let waited = waiting.join().unwrap();
    assert!(matches!(waited, Err(Error::Disconnected)), "{waited:?}");
    assert!(qmp.is_closed());
    assert!(matches!(
        qmp.execute_raw("echo", &json!({})),
        Err(Error::Disconnected)
    ));
    // The events that came before the end, then the end, then nothing.
    assert_eq!(events.next().unwrap().unwrap().name, "TICK");
    assert_eq!(events.next().unwrap().unwrap().name, "TICK");
    assert!(matches!(events.next(), Some(Err(Error::Disconnected))));
    assert!(events.next().is_none());
    server.join();
}

#[test]
fn a_slow_subscriber_is_told_what_it_missed() {
    let (qmp, server) = connect(echo());
    let slow = qmp.subscribe_with_capacity(4);
    qmp.execute_raw("emit", &json!({"n": 10})).unwrap();
    qmp.execute_raw("echo", &json!({})).unwrap();
    // The one overflow rule: the newest are dropped, and the gap is reported where it is.
    let seqs: Vec<_> = (0..4)
        .map(|_| slow.recv().unwrap().data.unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    match slow.recv() {
        Err(Error::Lagged { missed: 6 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(slow.try_recv().is_none());
    // Past the gap, events are queued again.
    qmp.execute_raw("emit", &json!({"n": 1})).unwrap();
    qmp.execute_raw("echo", &json!({})).unwrap();
    assert_eq!(slow.recv().unwrap().data.unwrap()["seq"], 10);
    drop(qmp);
    server.join();
}

#[test]
fn dropping_the_last_handle_closes_the_connection() {
    let (qmp, server) = connect(echo());
    let events = qmp.subscribe();
    let other = qmp.clone();
    drop(qmp);
    assert!(!other.is_closed());
    other.execute_raw("echo", &json!({})).unwrap();
    drop(other);
    // The fake sees the end of the stream and returns.
    server.join();
    assert!(matches!(events.recv(), Err(Error::Disconnected)));
}
