//! The async client on a minimal executor, against the same scripted peer as the blocking
//! tests (recorded QEMU 7.2.22 sessions; see `common/mod.rs`), over an async link whose every
//! call suspends once.
#![cfg(feature = "async")]

mod common;

use core::future::Future;
use core::task::{Context, Poll};
use core::time::Duration;

use common::{AsyncFakeQemu, Behavior, FakeClock, FakeQemu, LARGE, QUIT, SESSION, Transcript};
use embedded_io::ErrorKind;
use qmp_embedded::asynch::Client;
use qmp_embedded::{Error, ErrorClass, Expired, Instant, State};
use serde::Deserialize;

type Qmp<const RX: usize = 1024, const TX: usize = 256, const EV: usize = 256, const N: usize = 2> =
    Client<AsyncFakeQemu, FakeClock, RX, TX, EV, N>;

impl qmp_embedded::Clock for FakeClock {
    fn now(&self) -> Instant {
        FakeClock::now(self)
    }
}

fn client(link: FakeQemu) -> Qmp {
    let clock = link.clock.clone();
    Client::new(AsyncFakeQemu(link), clock)
}

#[derive(Debug, Deserialize, PartialEq)]
struct Status<'a> {
    status: &'a str,
    running: bool,
}

#[derive(serde::Serialize)]
struct Hmp<'a> {
    #[serde(rename = "command-line")]
    command_line: &'a str,
}

async fn run_session(c: &mut Qmp) -> Result<(), Error<ErrorKind>> {
    let info = c.handshake(false).await?;
    assert_eq!(
        (info.version.major, info.version.minor, info.version.micro),
        (7, 2, 22)
    );
    let s: Status<'_> = c.execute("query-status", &()).await?;
    assert_eq!(
        s,
        Status {
            status: "running",
            running: true
        }
    );
    c.execute_raw("stop", &()).await?;
    assert!(c.next_event(Duration::ZERO).await.unwrap().name == "STOP");
    let s: Status<'_> = c.execute("query-status", &()).await?;
    assert_eq!(
        s,
        Status {
            status: "paused",
            running: false
        }
    );
    c.execute_raw("cont", &()).await?;
    assert!(c.next_event(Duration::ZERO).await.unwrap().name == "RESUME");
    match c.execute_raw("no-such-command", &()).await {
        Err(Error::Qmp(e)) => assert_eq!(e.class(), ErrorClass::CommandNotFound),
        Err(e) => return Err(e),
        Ok(v) => panic!("{v:?}"),
    }
    let hmp: heapless::String<32> = c
        .execute(
            "human-monitor-command",
            &Hmp {
                command_line: "info status",
            },
        )
        .await?;
    assert_eq!(hmp, "VM status: running\r\n");
    c.execute_raw("system_reset", &()).await?;
    let reset = c.next_event(Duration::ZERO).await.unwrap();
    assert!(reset.name == "RESET" && reset.data.is_some());
    c.execute_raw("query-version", &()).await?;
    Ok(())
}

#[test]
fn full_session_with_random_chunks_and_stalls() {
    for seed in 0..200 {
        let link = FakeQemu::new(SESSION, Behavior::chaotic(seed));
        let observed = link.observed.clone();
        let mut c = client(link);
        common::block_on(run_session(&mut c)).unwrap_or_else(|e| panic!("seed {seed}: {e:?}"));
        assert_eq!(observed.borrow().mismatch, None);
        assert_eq!(observed.borrow().commands.len(), 9);
    }
}

#[test]
fn events_between_a_command_and_its_reply() {
    let mut t = Transcript::parse(SESSION);
    let extra = [t.line(7, "RESET"), t.line(2, "STOP")].concat();
    t.steps[1].response.splice(0..0, extra);
    let mut c = client(FakeQemu::from_transcript(t, Behavior::chaotic(5)));
    common::block_on(async {
        c.handshake(false).await.unwrap();
        let s: Status<'_> = c.execute("query-status", &()).await.unwrap();
        assert_eq!(s.status, "running");
        assert!(c.next_event(Duration::ZERO).await.unwrap().name == "RESET");
        assert!(c.next_event(Duration::ZERO).await.unwrap().name == "STOP");
        assert_eq!(
            c.next_event(Duration::ZERO).await.unwrap_err(),
            Error::Timeout(Expired::Event)
        );
    });
}

#[test]
fn timeout_then_late_reply_dropped() {
    let mut behavior = Behavior::chaotic(11);
    behavior.hold_step = Some(1);
    let link = FakeQemu::new(SESSION, behavior);
    let clock = link.clock.clone();
    let mut c = client(link);
    common::block_on(async {
        c.handshake(false).await.unwrap();
        c.set_timeout(Some(Duration::from_millis(500)));
        let start = clock.now();
        assert_eq!(
            c.execute_raw("query-status", &()).await.unwrap_err(),
            Error::Timeout(Expired::Command)
        );
        assert!(clock.now().saturating_duration_since(start) >= Duration::from_millis(500));
        c.set_timeout(Some(Duration::from_secs(300)));
        c.execute_raw("stop", &()).await.unwrap();
        let s: Status<'_> = c.execute("query-status", &()).await.unwrap();
        assert_eq!(s.status, "paused");
    });
}

#[test]
fn reply_larger_than_the_buffer() {
    let mut c = client(FakeQemu::new(LARGE, Behavior::calm()));
    common::block_on(async {
        c.handshake(false).await.unwrap();
        assert!(matches!(
            c.execute_raw("query-commands", &()).await,
            Err(Error::TooLarge { size: 6500 })
        ));
        let s: Status<'_> = c.execute("query-status", &()).await.unwrap();
        assert_eq!(s.status, "running");
    });
}

#[test]
fn eof_at_every_byte() {
    let t = Transcript::parse(SESSION);
    let total = t.greeting.len() + t.steps.iter().map(|s| s.response.len()).sum::<usize>();
    for cut in 0..=total {
        let mut behavior = Behavior::chaotic(cut as u64);
        behavior.cut_after = Some(cut);
        let mut c = client(FakeQemu::new(SESSION, behavior));
        match common::block_on(run_session(&mut c)) {
            Ok(()) => assert!(cut >= total - 2),
            Err(Error::Eof) => {
                assert_eq!(c.state(), State::Closed);
                let next = common::block_on(c.execute_raw("query-status", &()));
                assert_eq!(next.unwrap_err(), Error::Disconnected);
            }
            Err(e) => panic!("cut {cut}: {e:?}"),
        }
    }
}

#[test]
fn quit_then_eof() {
    let mut c = client(FakeQemu::new(QUIT, Behavior::chaotic(2)));
    common::block_on(async {
        c.handshake(false).await.unwrap();
        c.execute_raw("quit", &()).await.unwrap();
        assert!(c.next_event(Duration::ZERO).await.unwrap().name == "SHUTDOWN");
        assert_eq!(c.next_event(Duration::from_secs(1)).await, Err(Error::Eof));
    });
}

/// Polls `fut` `n` times, then drops it (a cancelled command, e.g. by a select or a timer).
fn poll_then_drop<F: Future>(fut: F, n: usize) -> Option<F::Output> {
    let mut fut = core::pin::pin!(fut);
    let mut cx = Context::from_waker(core::task::Waker::noop());
    for _ in 0..n {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}

/// Dropped before a byte was written: the next command goes out clean, with no resync byte.
#[test]
fn a_command_dropped_before_writing_leaves_no_trace_on_the_wire() {
    let link = FakeQemu::new(SESSION, Behavior::calm());
    let observed = link.observed.clone();
    let mut c = client(link);
    common::block_on(c.handshake(false)).unwrap();
    // First poll: encoded (id 2), then the write suspends.
    assert!(poll_then_drop(c.execute_raw("query-status", &()), 1).is_none());
    c.set_timeout(Some(Duration::from_millis(100)));
    // The peer only knows the recorded id 2, so id 3 is not answered; what matters is what
    // reached the wire.
    let _ = common::block_on(c.execute_raw("stop", &()));
    let observed = observed.borrow();
    assert_eq!(
        observed.mismatch.as_deref(),
        Some(&br#"{"execute":"stop","id":3}"#[..])
    );
    assert_eq!(observed.resyncs, 0);
}

/// Dropped mid-write: the next command is preceded by the resync byte, and real QEMU
/// (recorded in `resync.txt`) drops the fragment and answers the next command.
#[test]
fn a_command_dropped_mid_write_is_resynchronised() {
    let mut behavior = Behavior::calm();
    let caps = br#"{"execute":"qmp_capabilities","id":1}"#.len();
    behavior.block_writes = Some((caps + 20, 1_000_000));
    let link = FakeQemu::new(common::RESYNC, behavior);
    let observed = link.observed.clone();
    let mut c = client(link);
    common::block_on(c.handshake(false)).unwrap();
    // 20 bytes go out, then writes stall; the future is dropped while it retries.
    assert!(poll_then_drop(c.execute_raw("query-status", &()), 50).is_none());
    let s: Status<'_> = common::block_on(c.execute("query-status", &())).unwrap();
    assert_eq!(s.status, "running");
    let observed = observed.borrow();
    assert_eq!(observed.mismatch, None);
    assert_eq!(observed.resyncs, 1);
}

/// Dropped while waiting for its reply: the command is abandoned when the next one starts,
/// and its reply, when it comes, is dropped.
#[test]
fn a_command_dropped_while_waiting_is_abandoned() {
    let mut behavior = Behavior::calm();
    behavior.hold_step = Some(1);
    let link = FakeQemu::new(SESSION, behavior);
    let observed = link.observed.clone();
    let mut c = client(link);
    common::block_on(c.handshake(false)).unwrap();
    assert!(poll_then_drop(c.execute_raw("query-status", &()), 20).is_none());
    // The command reached the peer (after the negotiation).
    assert_eq!(observed.borrow().commands.len(), 2);
    // `stop` releases the held reply (id 2) first, which is dropped; then STOP and its own.
    common::block_on(async {
        c.execute_raw("stop", &()).await.unwrap();
        assert!(c.next_event(Duration::ZERO).await.unwrap().name == "STOP");
        let s: Status<'_> = c.execute("query-status", &()).await.unwrap();
        assert_eq!(s.status, "paused");
    });
    assert_eq!(observed.borrow().mismatch, None);
}
