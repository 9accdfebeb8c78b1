//! The reconnecting clients' subscribers keep the one overflow rule of every client (the
//! newest events are dropped, the loss reported once where it is), and a reconnection is
//! reported even when a subscriber's queue is full: right after the loss it fell in.
//!
//! Against the fake QEMU: events are sent, the connection is cut, the client connects again;
//! once its reconnect hook has run and it is up again, everything (the events and the gap) is
//! in each subscriber's queue before the test reads it, so what it reads does not depend on
//! timing.
#![cfg(feature = "tokio")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qmp_std::fake::FakeQemu;
use qmp_std::reconnect::{ReconnectPolicy, SharedReconnecting, WhileDown};
use qmp_std::{ClientBuilder, Error, Event, Result};

const TIMEOUT: Duration = Duration::from_secs(10);

fn policy() -> ReconnectPolicy {
    ReconnectPolicy {
        first_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        while_down: WhileDown::Wait,
        ..ReconnectPolicy::default()
    }
}

fn socket(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "qmp-reconnect-events-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits until `up()` holds, or fails the test.
fn wait_until(what: &str, mut up: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !up() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An item as a short string: the event's name, `lagged N`, or `reconnected`.
fn show(item: Result<Event>) -> String {
    match item {
        Ok(event) => event.name,
        Err(Error::Lagged { missed }) => format!("lagged {missed}"),
        Err(Error::Reconnected { .. }) => "reconnected".into(),
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn the_tokio_reconnecting_client_drops_the_newest_and_keeps_the_reconnection() {
    let path = socket("tokio");
    let fake = FakeQemu::builder().listen_unix(&path).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let connect_path = path.clone();
    let hooked = Arc::new(AtomicU64::new(0));
    let hook_count = Arc::clone(&hooked);
    let qmp = runtime
        .block_on(
            qmp_std::reconnect::tokio::Reconnecting::builder(move || {
                qmp_std::tokio::Client::connect_unix(connect_path.clone())
            })
            .policy(policy())
            .event_capacity(2)
            .on_reconnect(move |_| {
                let hooked = Arc::clone(&hook_count);
                async move {
                    hooked.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .start(),
        )
        .unwrap();
    let mut events = qmp.subscribe();
    wait_until("the fake's client", || fake.is_connected());
    for name in ["A", "B", "C", "D"] {
        assert!(fake.event(name, None));
    }
    fake.cut();
    // Up again on a new connection (its hook ran, and the gap is queued before the new
    // connection is in use): not timing, so a down time too short to see cannot be missed.
    wait_until("the reconnection", || {
        hooked.load(Ordering::SeqCst) == 1 && qmp.is_connected()
    });
    let mut seen = Vec::new();
    runtime.block_on(async {
        for _ in 0..4 {
            seen.push(show(events.next_event(TIMEOUT).await));
        }
        // Then nothing more.
        let more = events.next_event(Duration::from_millis(50)).await;
        assert!(matches!(more, Err(Error::Timeout(_))), "{more:?}");
    });
    // tokio's broadcast channel (used here before) kept the newest: "lagged 2", C, D.
    assert_eq!(seen, ["A", "B", "lagged 2", "reconnected"]);
    // Storing goes on after the loss was reported.
    assert!(fake.event("E", None));
    let e = runtime.block_on(events.next_event(TIMEOUT));
    assert_eq!(show(e), "E");
}

#[test]
fn the_shared_reconnecting_client_drops_the_newest_and_keeps_the_reconnection() {
    let path = socket("shared");
    let fake = FakeQemu::builder().listen_unix(&path).unwrap();
    let connect_path = path.clone();
    let hooked = Arc::new(AtomicU64::new(0));
    let hook_count = Arc::clone(&hooked);
    let qmp = SharedReconnecting::new(
        move || {
            // The connection's own queue unbounded: every loss is the subscriber's.
            ClientBuilder::new()
                .max_queued_events(None)
                .connect_unix(&connect_path)?
                .into_shared()
        },
        policy(),
        Some(Box::new(move |_| {
            hook_count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })),
    )
    .unwrap();
    let events = qmp.subscribe();
    wait_until("the fake's client", || fake.is_connected());
    let capacity = qmp_std::reconnect::DEFAULT_EVENT_CAPACITY;
    for i in 0..capacity + 3 {
        assert!(fake.event(&format!("E{i}"), None));
    }
    fake.cut();
    wait_until("the reconnection", || {
        hooked.load(Ordering::SeqCst) == 1 && qmp.is_connected()
    });
    for i in 0..capacity {
        assert_eq!(show(events.next_event(TIMEOUT)), format!("E{i}"));
    }
    assert_eq!(show(events.next_event(TIMEOUT)), "lagged 3");
    assert_eq!(show(events.next_event(TIMEOUT)), "reconnected");
    let more = events.next_event(Duration::from_millis(50));
    assert!(matches!(more, Err(Error::Timeout(_))), "{more:?}");
}
