//! qmp-embedded's blocking client against qmp-std's fake QEMU over an in-memory link, on a
//! virtual clock: the fake answers in the caller's thread, delays and deadlines pass on the
//! virtual clock, and no test waits in real time.

use std::time::{Duration, Instant as WallClock};

use qmp_embedded::{Client, Config, Error};
use qmp_proto::Expired;
use qmp_std::fake::{FakeQemu, MemoryLink, VirtualClock};
use qmp_std::serde_json::json;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Status<'a> {
    status: &'a str,
    running: bool,
}

/// A fake that answers `query-status` and `stop` (with its STOP event), on `clock`.
fn fake(clock: &VirtualClock) -> MemoryLink {
    FakeQemu::builder()
        .on("query-status", |_| {
            Ok(json!({"status": "running", "singlestep": false, "running": true}))
        })
        .on_with("stop", |_, qemu| {
            qemu.event("STOP", None);
            Ok(json!({}))
        })
        .in_memory(clock.clone())
        .expect("fake")
}

fn client(link: MemoryLink, clock: &VirtualClock) -> Client<MemoryLink, impl qmp_embedded::Clock> {
    let clock = clock.clone();
    let config = Config::default().timeout(Some(Duration::from_secs(5)));
    Client::with_config(link, move || clock.now(), config)
}

#[test]
fn a_whole_session_with_the_embedded_client_in_memory() {
    let clock = VirtualClock::new();
    let link = fake(&clock);
    let qemu = link.control();
    let mut qmp = client(link, &clock);
    let server = qmp.handshake(true).expect("handshake");
    assert_eq!(server.version.to_string(), "7.2.22");
    assert!(server.oob_enabled);

    let status: Status<'_> = qmp.execute("query-status", &()).expect("query-status");
    assert_eq!((status.status, status.running), ("running", true));
    let _: serde::de::IgnoredAny = qmp.execute("stop", &()).expect("stop");
    let stop = qmp
        .wait_event("STOP", Duration::from_secs(1))
        .expect("STOP");
    assert!(stop.data.is_none());

    // An event the test pushes is there at the next read.
    assert!(qemu.event("RESUME", None));
    let resume = qmp.next_event(Duration::from_secs(1)).expect("RESUME");
    assert!(resume.name == "RESUME");
    let err = qmp.execute_raw("nope", &()).unwrap_err();
    assert!(matches!(err, Error::Qmp { .. }), "{err:?}");

    let names: Vec<String> = qemu.requests().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["query-status", "stop", "nope"]);
    assert!(
        clock.elapsed() < Duration::from_millis(1),
        "nothing waited: {:?}",
        clock.elapsed()
    );
}

#[test]
fn a_delay_passes_on_the_virtual_clock_and_a_dropped_reply_times_out_there() {
    let clock = VirtualClock::new();
    let link = fake(&clock);
    let qemu = link.control();
    let mut qmp = client(link, &clock);
    qmp.handshake(false).expect("handshake");
    let wall = WallClock::now();

    // Three seconds late, within the five-second deadline: it comes, three virtual
    // seconds later.
    qemu.delay("query-status", Duration::from_secs(3));
    let status: Status<'_> = qmp.execute("query-status", &()).expect("late reply");
    assert!(status.running);
    assert_eq!(clock.elapsed(), Duration::from_secs(3));

    // Never answered: the client's deadline passes, five virtual seconds later.
    qemu.drop_reply("stop");
    let before = clock.elapsed();
    let err = qmp.execute_raw("stop", &()).unwrap_err();
    assert!(matches!(err, Error::Timeout(Expired::Command)), "{err:?}");
    let waited = clock.elapsed() - before;
    assert!(
        (Duration::from_secs(5)..Duration::from_millis(5050)).contains(&waited),
        "{waited:?}"
    );
    // And the session goes on.
    qemu.delay("query-status", Duration::ZERO);
    let status: Status<'_> = qmp.execute("query-status", &()).expect("after the timeout");
    assert_eq!(status.status, "running");
    assert!(
        wall.elapsed() < Duration::from_secs(2),
        "real time: {:?}",
        wall.elapsed()
    );
}

#[test]
fn a_cut_connection_is_the_end_of_the_link() {
    let clock = VirtualClock::new();
    let link = fake(&clock);
    let qemu = link.control();
    let mut qmp = client(link, &clock);
    qmp.handshake(false).expect("handshake");
    qemu.cut_after("stop");
    // The reply before the cut still comes.
    let _: serde::de::IgnoredAny = qmp.execute("stop", &()).expect("stop");
    let err = qmp.execute_raw("query-status", &()).unwrap_err();
    assert!(
        matches!(err, Error::Eof | Error::Disconnected | Error::Io(_)),
        "{err:?}"
    );
    assert!(!qemu.is_connected());
}
