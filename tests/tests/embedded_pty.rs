//! End to end: `qmp-embedded`'s clients, blocking and async, from std over a real QEMU pty: the
//! serial link they were made for, as seen by firmware whose UART is wired to QEMU's
//! `-chardev pty` monitor.
//!
//! - The **blocking** client over [`PtyLink`]: `embedded_io::Read` as `poll(2)` with a short
//!   timeout, then `read(2)` (nothing ready → `ErrorKind::TimedOut`, so the client gets to check
//!   its deadlines; `EIO` or 0 bytes, when QEMU closes its side → the end of the link);
//!   `embedded_io::Write` as `write(2)`. Run with the default configuration, with the smallest
//!   one the freestanding `qmp-firmware` would need for this session, and on a pty opened
//!   early enough to get QEMU's double greeting.
//! - The **async** client over [`AsyncPty`]: the pty in non-blocking mode, whose reads and
//!   writes suspend on `EAGAIN` until a tiny single-future executor ([`block_on`]) has waited
//!   in `poll(2)` for the fd, so the client's futures really return `Pending` and are woken.
//!
//! Both run the same session as the firmware: greeting, negotiation, `query-version`
//! (deserialized with serde), `query-status` (running), `stop` with its `STOP` event,
//! `query-status` (paused), `cont` with its `RESUME` event, an unknown command
//! (`CommandNotFound`), and a final `query-status`. System calls go through `rustix`.

mod support;

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use embedded_io::ErrorKind;
use qmp_e2e::embedded::HostClock;
use qmp_e2e::{Address, Monitor, Qemu, open_pty};
use qmp_embedded::{ErrorClass, State};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use serde::Deserialize;

/// How long one `read`/`write` of a link may wait before it reports `TimedOut`, giving the
/// client a chance to check its deadlines.
const INTERVAL: Duration = Duration::from_millis(50);

/// How long to wait for an event that a command's reply said has happened.
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// A link's error: the failed system call's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkError(Errno);

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pty: {}", self.0)
    }
}

impl std::error::Error for LinkError {}

impl embedded_io::Error for LinkError {
    fn kind(&self) -> ErrorKind {
        match self.0 {
            Errno::TIMEDOUT | Errno::AGAIN => ErrorKind::TimedOut,
            Errno::INTR => ErrorKind::Interrupted,
            _ => ErrorKind::Other,
        }
    }
}

/// `read(2)` with a pty's hang-up (`EIO` once QEMU closed its side) as the end of the link.
fn read_pty(file: &File, buf: &mut [u8]) -> Result<usize, Errno> {
    match rustix::io::read(file, buf) {
        Err(Errno::IO) => Ok(0),
        other => other,
    }
}

/// Waits up to `timeout` for `events` on `file`; returns whether any (or a hang-up or error)
/// came.
fn wait_for(file: &File, events: PollFlags, timeout: Duration) -> Result<bool, Errno> {
    let timeout = Timespec::try_from(timeout).map_err(|_| Errno::INVAL)?;
    let mut fds = [PollFd::new(file, events)];
    Ok(rustix::event::poll(&mut fds, Some(&timeout))? > 0)
}

/// The blocking link: the pty as `embedded_io::Read + Write`, keeping a copy of everything
/// it read.
#[derive(Debug)]
struct PtyLink {
    file: File,
    received: Vec<u8>,
}

impl PtyLink {
    fn new(file: File) -> Self {
        Self {
            file,
            received: Vec::new(),
        }
    }
}

impl embedded_io::ErrorType for PtyLink {
    type Error = LinkError;
}

impl embedded_io::Read for PtyLink {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !wait_for(&self.file, PollFlags::IN, INTERVAL).map_err(LinkError)? {
            return Err(LinkError(Errno::TIMEDOUT));
        }
        let n = read_pty(&self.file, buf).map_err(LinkError)?;
        self.received.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl embedded_io::Write for PtyLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, LinkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !wait_for(&self.file, PollFlags::OUT, INTERVAL).map_err(LinkError)? {
            return Err(LinkError(Errno::TIMEDOUT));
        }
        rustix::io::write(&self.file, buf).map_err(LinkError)
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

/// What [`block_on`]'s loop waits for next: an fd to become ready (or the deadline), then it
/// wakes the waker.
struct Interest {
    file: Rc<File>,
    events: PollFlags,
    deadline: std::time::Instant,
    waker: Waker,
}

thread_local! {
    /// The interest of the future that [`block_on`] runs on this thread; set by [`Readiness`].
    static INTEREST: Cell<Option<Interest>> = const { Cell::new(None) };
}

/// Resolves once [`block_on`] has waited for `events` on `file` (or for `deadline`).
struct Readiness {
    file: Rc<File>,
    events: PollFlags,
    deadline: std::time::Instant,
    registered: bool,
}

impl Future for Readiness {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        self.registered = true;
        INTEREST.set(Some(Interest {
            file: Rc::clone(&self.file),
            events: self.events,
            deadline: self.deadline,
            waker: cx.waker().clone(),
        }));
        Poll::Pending
    }
}

/// The waker [`block_on`] hands out: it only raises a flag.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `future` to completion on this thread; the only reactor is `poll(2)` on the one fd the
/// future waits for. Returns the output and how many times the future was `Pending`.
fn block_on<F: Future>(future: F) -> (F::Output, usize) {
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = Waker::from(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut pending = 0;
    loop {
        if flag.0.swap(false, Ordering::SeqCst) {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return (output, pending);
            }
            pending += 1;
        }
        let interest = INTEREST
            .take()
            .expect("the future is pending but waits for nothing");
        let left = interest
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        // An error here (EINTR) just means: poll the future again.
        let _ = wait_for(&interest.file, interest.events, left);
        interest.waker.wake();
    }
}

/// The async link: the pty in non-blocking mode as `embedded_io_async::Read + Write`.
#[derive(Debug)]
struct AsyncPty {
    file: Rc<File>,
}

impl AsyncPty {
    fn new(file: File) -> Self {
        let flags = rustix::fs::fcntl_getfl(&file).expect("F_GETFL");
        rustix::fs::fcntl_setfl(&file, flags | rustix::fs::OFlags::NONBLOCK).expect("F_SETFL");
        Self {
            file: Rc::new(file),
        }
    }

    /// Runs `op` until it does not fail with `EAGAIN`, suspending until the fd is ready for
    /// `events` in between; `TimedOut` after [`INTERVAL`].
    async fn retry<T>(
        &mut self,
        events: PollFlags,
        mut op: impl FnMut(&File) -> Result<T, Errno>,
    ) -> Result<T, LinkError> {
        let deadline = std::time::Instant::now() + INTERVAL;
        loop {
            match op(&self.file) {
                Err(Errno::AGAIN) => {}
                other => return other.map_err(LinkError),
            }
            if std::time::Instant::now() >= deadline {
                return Err(LinkError(Errno::TIMEDOUT));
            }
            Readiness {
                file: Rc::clone(&self.file),
                events,
                deadline,
                registered: false,
            }
            .await;
        }
    }
}

impl embedded_io_async::ErrorType for AsyncPty {
    type Error = LinkError;
}

impl embedded_io_async::Read for AsyncPty {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.retry(PollFlags::IN, |file| read_pty(file, buf)).await
    }
}

impl embedded_io_async::Write for AsyncPty {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, LinkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.retry(PollFlags::OUT, |file| rustix::io::write(file, buf))
            .await
    }

    async fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

/// `query-version`'s return value.
#[derive(Debug, Deserialize)]
struct Version<'a> {
    qemu: Triple,
    package: &'a str,
}

#[derive(Debug, Deserialize)]
struct Triple {
    major: u64,
    minor: u64,
    micro: u64,
}

/// `query-status`'s return value (`singlestep` ignored).
#[derive(Debug, Deserialize)]
struct Status<'a> {
    status: &'a str,
    running: bool,
}

/// The whole session on `$qmp`, a blocking client, or an async one with `await` as second
/// argument (the methods have the same names).
macro_rules! session {
    ($qmp:expr $(, $aw:tt)?) => {{
        let qmp = &mut $qmp;
        let (_, package) = support::qemu_version();
        let version = support::qemu_version_triple();

        let greeting = qmp.wait_greeting() $(.$aw)? .expect("greeting");
        let v = greeting.version;
        assert_eq!((v.major, v.minor, v.micro), version);
        assert!(greeting.oob_offered, "a pty monitor offers oob");
        let info = qmp.negotiate(false) $(.$aw)? .expect("qmp_capabilities");
        assert!(!info.oob_enabled);
        assert_eq!(qmp.state(), State::Ready);

        {
            let v: Version<'_> = qmp.execute("query-version", &()) $(.$aw)? .expect("query-version");
            assert_eq!((v.qemu.major, v.qemu.minor, v.qemu.micro), version);
            assert_eq!(v.package, package);
        }
        let s: Status<'_> = qmp.execute("query-status", &()) $(.$aw)? .expect("query-status");
        assert_eq!((s.status, s.running), ("running", true));

        qmp.execute_raw("stop", &()) $(.$aw)? .expect("stop");
        let event = qmp.next_event(EVENT_WAIT) $(.$aw)? .expect("wait for STOP");
        assert!(event.name == "STOP", "{event:?}");
        let s: Status<'_> = qmp.execute("query-status", &()) $(.$aw)? .expect("query-status");
        assert_eq!((s.status, s.running), ("paused", false));

        qmp.execute_raw("cont", &()) $(.$aw)? .expect("cont");
        let event = qmp.next_event(EVENT_WAIT) $(.$aw)? .expect("wait for RESUME");
        assert!(event.name == "RESUME", "{event:?}");

        match qmp.execute_raw("no-such-command", &()) $(.$aw)? {
            Err(qmp_embedded::Error::Qmp(e)) => {
                assert_eq!(e.class(), ErrorClass::CommandNotFound);
                assert_eq!(e.desc(), "The command no-such-command has not been found");
            }
            Err(e) => panic!("expected CommandNotFound, got {e:?}"),
            Ok(value) => panic!("the unknown command succeeded: {value:?}"),
        }

        let s: Status<'_> = qmp.execute("query-status", &()) $(.$aw)? .expect("query-status");
        assert_eq!((s.status, s.running), ("running", true));
        let left = qmp.next_event(Duration::ZERO) $(.$aw)?;
        assert!(
            matches!(left, Err(qmp_embedded::Error::Timeout(_))),
            "no event left over: {left:?}"
        );
    }};
}

/// A QEMU started by the harness (settled: one greeting) and its pty, opened.
fn qemu_and_pty() -> (Qemu, File) {
    let qemu = Qemu::start(Monitor::Pty).expect("start QEMU with a pty monitor");
    let Address::Pty(path) = qemu.address().clone() else {
        panic!("not a pty: {}", qemu.address());
    };
    let pty = open_pty(&path).expect("open the pty");
    (qemu, pty)
}

/// How many greetings the bytes read contain.
fn greetings(received: &[u8]) -> usize {
    received.windows(7).filter(|w| w == b"{\"QMP\":").count()
}

#[test]
fn blocking_client_runs_a_whole_session_over_the_pty() {
    let (mut qemu, pty) = qemu_and_pty();
    let mut qmp: qmp_embedded::Client<_, _> =
        qmp_embedded::Client::new(PtyLink::new(pty), HostClock::new());
    session!(qmp);
    assert_eq!(greetings(&qmp.link().received), 1);
    assert!(qemu.is_running(), "{}", qemu.output());
}

/// The smallest buffers that run the firmware's session against QEMU 7.2.22 (RX 140 for the
/// 140-byte greeting, TX 37 for `qmp_capabilities`, EV 25 for one RESUME, one slot): the same
/// as the smallest configuration qmp-embedded documents for query-status/stop/cont, since
/// `query-version`'s reply and the CommandNotFound error are shorter than the greeting.
#[test]
fn blocking_client_smallest_configuration_over_the_pty() {
    let (_qemu, pty) = qemu_and_pty();
    let mut qmp: qmp_embedded::Client<_, _, 140, 37, 25, 1> =
        qmp_embedded::Client::new(PtyLink::new(pty), HostClock::new());
    session!(qmp);
}

/// The pty opened before QEMU has attached its monitor: QEMU greets twice. The client takes
/// the first greeting and drops the second (the core's `Notice::SecondGreeting`), whether it
/// comes before or while `qmp_capabilities` is on its way.
#[test]
fn blocking_client_tolerates_the_double_greeting_of_an_early_opened_pty() {
    let early = support::start_early().expect("start QEMU");
    let pty = early.pty.try_clone().expect("dup the pty");
    let mut qmp: qmp_embedded::Client<_, _, 140, 37, 25, 1> =
        qmp_embedded::Client::new(PtyLink::new(pty), HostClock::new());
    session!(qmp);
    let seen = greetings(&qmp.link().received);
    eprintln!("greetings received: {seen}");
    assert!((1..=2).contains(&seen), "{seen} greetings");
}

#[test]
fn async_client_runs_a_whole_session_over_the_pty() {
    let (mut qemu, pty) = qemu_and_pty();
    let mut qmp: qmp_embedded::asynch::Client<_, _> =
        qmp_embedded::asynch::Client::new(AsyncPty::new(pty), HostClock::new());
    let ((), pending) = block_on(async { session!(qmp, await) });
    // The greeting alone takes up to a second to come: the client must have been suspended.
    assert!(pending > 0, "the client's future never returned Pending");
    eprintln!("the async session was Pending {pending} times");
    assert!(qemu.is_running(), "{}", qemu.output());
}

#[test]
fn async_client_smallest_configuration_over_the_pty() {
    let (_qemu, pty) = qemu_and_pty();
    let mut qmp: qmp_embedded::asynch::Client<_, _, 140, 37, 25, 1> =
        qmp_embedded::asynch::Client::new(AsyncPty::new(pty), HostClock::new());
    let ((), pending) = block_on(async { session!(qmp, await) });
    assert!(pending > 0);
}
