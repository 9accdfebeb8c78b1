//! A scripted serial peer that plays recorded QEMU 7.2 sessions, on a fake clock.
//!
//! The transcripts in `tests/data/*.txt` are real server output, recorded byte for byte from
//! `qemu-system-x86_64` 7.2.22 by `tests/data/record.py` (lines `> …` are what the client
//! sent; every other line is what QEMU wrote back, `\r\n` and all). The peer checks that the
//! client writes exactly the recorded commands and answers each with the recorded bytes,
//! delivered in random chunk sizes (a seeded PRNG), with stalls that return
//! `ErrorKind::TimedOut` while the fake clock advances, and optionally a cut of the link at a
//! given byte.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec::Vec;

use embedded_io::ErrorKind;
use qmp_embedded::Instant;

pub const SESSION: &[u8] = include_bytes!("../data/session.txt");
pub const OOB: &[u8] = include_bytes!("../data/oob.txt");
pub const QUIT: &[u8] = include_bytes!("../data/quit.txt");
pub const LARGE: &[u8] = include_bytes!("../data/large.txt");
pub const RESYNC: &[u8] = include_bytes!("../data/resync.txt");

/// One exchange of a transcript: what the client sends, and the server's bytes in answer.
#[derive(Debug, Clone)]
pub struct Step {
    pub command: Vec<u8>,
    pub response: Vec<u8>,
}

/// A recorded session.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// Bytes the server sends unprompted (the greeting).
    pub greeting: Vec<u8>,
    pub steps: Vec<Step>,
    /// The server closed the connection after the last step.
    pub eof: bool,
}

impl Transcript {
    pub fn parse(text: &[u8]) -> Self {
        let mut t = Transcript {
            greeting: Vec::new(),
            steps: Vec::new(),
            eof: false,
        };
        for line in text.split_inclusive(|&b| b == b'\n') {
            if let Some(cmd) = line.strip_prefix(b"> ") {
                t.steps.push(Step {
                    command: cmd.strip_suffix(b"\n").unwrap().to_vec(),
                    response: Vec::new(),
                });
            } else if line == b"<EOF>\n" {
                t.eof = true;
            } else {
                match t.steps.last_mut() {
                    Some(step) => step.response.extend_from_slice(line),
                    None => t.greeting.extend_from_slice(line),
                }
            }
        }
        t
    }

    /// The recorded server line of step `i` that contains `needle`.
    pub fn line(&self, i: usize, needle: &str) -> Vec<u8> {
        self.steps[i]
            .response
            .split_inclusive(|&b| b == b'\n')
            .find(|l| l.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap()
            .to_vec()
    }
}

/// The fake clock, in microseconds, shared by the peer (which advances it while stalling)
/// and the client (which reads it).
#[derive(Debug, Clone, Default)]
pub struct FakeClock(pub Rc<Cell<u64>>);

impl FakeClock {
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.0.get())
    }

    pub fn advance_ms(&self, ms: u64) {
        self.0.set(self.0.get() + ms * 1000);
    }

    /// A closure clock for the client.
    pub fn clock(&self) -> impl Fn() -> Instant + use<> {
        let t = self.0.clone();
        move || Instant::from_micros(t.get())
    }
}

/// xorshift64*: a tiny seeded PRNG.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `1..=max`.
    pub fn upto(&mut self, max: usize) -> usize {
        1 + (self.next() % max.max(1) as u64) as usize
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// How the peer misbehaves.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub seed: u64,
    /// Largest chunk a read delivers.
    pub max_chunk: usize,
    /// Largest chunk a write accepts.
    pub max_write: usize,
    /// Percent of reads that stall (return `TimedOut`) even with bytes ready.
    pub stall_percent: u64,
    /// Percent of writes that stall.
    pub write_stall_percent: u64,
    /// Fake time one stall takes.
    pub stall_ms: u64,
    /// After this many server bytes, the link is cut.
    pub cut_after: Option<usize>,
    /// What the cut looks like: `None` is EOF (`Ok(0)`), `Some(kind)` an error of that kind.
    pub cut_error: Option<ErrorKind>,
    /// The reply to the command of step `i` is held back until the next command arrives.
    pub hold_step: Option<usize>,
    /// Writes always stall (the peer stopped reading).
    pub write_blocked: bool,
    /// Once this many client bytes were taken, writes stall until the fake clock reaches the
    /// given microsecond.
    pub block_writes: Option<(usize, u64)>,
    /// Once this many server bytes were delivered, one read fails with this error kind.
    pub glitch: Option<(usize, ErrorKind)>,
    /// Stalls are reported as `Ok(0)` instead of `TimedOut`.
    pub stall_as_zero: bool,
}

impl Behavior {
    /// Random chunking and stalls from `seed`, nothing broken.
    pub fn chaotic(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        Behavior {
            seed,
            max_chunk: rng.upto(64),
            max_write: rng.upto(16),
            stall_percent: rng.next() % 30,
            write_stall_percent: rng.next() % 20,
            stall_ms: rng.upto(50) as u64,
            cut_after: None,
            cut_error: None,
            hold_step: None,
            write_blocked: false,
            block_writes: None,
            glitch: None,
            stall_as_zero: false,
        }
    }

    /// Whole reads and writes, no stalls.
    pub fn calm() -> Self {
        Behavior {
            seed: 1,
            max_chunk: usize::MAX,
            max_write: usize::MAX,
            stall_percent: 0,
            write_stall_percent: 0,
            stall_ms: 10,
            cut_after: None,
            cut_error: None,
            hold_step: None,
            write_blocked: false,
            block_writes: None,
            glitch: None,
            stall_as_zero: false,
        }
    }
}

/// What the peer saw, for assertions after the client is done with it.
#[derive(Debug, Default)]
pub struct Observed {
    /// Commands received, in order.
    pub commands: Vec<Vec<u8>>,
    /// Resync bytes (`\x01`) received.
    pub resyncs: usize,
    /// Bytes the client wrote that matched no recorded command.
    pub mismatch: Option<Vec<u8>>,
    /// Reads served (a runaway-loop guard).
    pub reads: usize,
}

/// The scripted serial peer: `embedded_io::Read + Write` with `ErrorKind` as its error type.
#[derive(Debug)]
pub struct FakeQemu {
    transcript: Transcript,
    behavior: Behavior,
    rng: Rng,
    pub clock: FakeClock,
    /// Next step whose command is expected.
    next: usize,
    /// Client bytes not yet matched to a command.
    input: Vec<u8>,
    /// Server bytes ready to be read.
    output: VecDeque<u8>,
    /// Held-back response.
    held: Option<Vec<u8>>,
    /// Server bytes delivered so far.
    delivered: usize,
    /// Client bytes taken so far.
    taken: usize,
    cut: bool,
    pub observed: Rc<RefCell<Observed>>,
}

/// Fake time after which the peer declares the client hung (10 minutes).
const HANG_LIMIT_US: u64 = 600 * 1_000_000;

impl FakeQemu {
    pub fn new(transcript: &[u8], behavior: Behavior) -> Self {
        Self::from_transcript(Transcript::parse(transcript), behavior)
    }

    pub fn from_transcript(transcript: Transcript, behavior: Behavior) -> Self {
        let output = transcript.greeting.iter().copied().collect();
        FakeQemu {
            rng: Rng::new(behavior.seed),
            transcript,
            behavior,
            clock: FakeClock::default(),
            next: 0,
            input: Vec::new(),
            output,
            held: None,
            delivered: 0,
            taken: 0,
            cut: false,
            observed: Rc::default(),
        }
    }

    /// Extra server bytes sent now, as if QEMU wrote them unprompted.
    pub fn push_output(&mut self, bytes: &[u8]) {
        self.output.extend(bytes);
    }

    fn stall(&mut self) -> Result<usize, ErrorKind> {
        self.clock.advance_ms(self.behavior.stall_ms);
        assert!(
            self.clock.0.get() < HANG_LIMIT_US,
            "the client kept reading a silent link for 10 minutes of fake time: hung"
        );
        if self.behavior.stall_as_zero {
            Ok(0)
        } else {
            Err(ErrorKind::TimedOut)
        }
    }

    fn take_commands(&mut self) {
        loop {
            let Some(step) = self.transcript.steps.get(self.next) else {
                if !self.input.is_empty() {
                    self.observed.borrow_mut().mismatch = Some(self.input.clone());
                }
                return;
            };
            let cmd = &step.command;
            if self.input.len() < cmd.len() {
                if !cmd.starts_with(&self.input) {
                    self.observed.borrow_mut().mismatch = Some(self.input.clone());
                    self.input.clear();
                }
                return;
            }
            if !self.input.starts_with(cmd) {
                self.observed.borrow_mut().mismatch = Some(self.input.clone());
                self.input.clear();
                return;
            }
            self.input.drain(..cmd.len());
            let mut obs = self.observed.borrow_mut();
            obs.resyncs += cmd.iter().filter(|&&b| b == 0x01).count();
            obs.commands.push(cmd.clone());
            drop(obs);
            let response = step.response.clone();
            if let Some(held) = self.held.take() {
                self.output.extend(held);
            }
            if self.behavior.hold_step == Some(self.next) {
                self.held = Some(response);
            } else {
                self.output.extend(response);
            }
            self.next += 1;
        }
    }

    /// Whether every recorded command was received.
    pub fn finished(&self) -> bool {
        self.next == self.transcript.steps.len()
    }
}

impl embedded_io::ErrorType for FakeQemu {
    type Error = ErrorKind;
}

impl embedded_io::Read for FakeQemu {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        {
            let mut obs = self.observed.borrow_mut();
            obs.reads += 1;
            assert!(obs.reads < 10_000_000, "runaway read loop");
        }
        assert!(!buf.is_empty(), "the client read into an empty buffer");
        if self.cut {
            return match self.behavior.cut_error {
                Some(kind) => Err(kind),
                None => Ok(0),
            };
        }
        if self.output.is_empty() {
            if self.transcript.eof && self.finished() {
                return Ok(0);
            }
            return self.stall();
        }
        if self.rng.chance(self.behavior.stall_percent) {
            return self.stall();
        }
        let mut n = self
            .rng
            .upto(self.behavior.max_chunk)
            .min(buf.len())
            .min(self.output.len());
        if let Some((at, kind)) = self.behavior.glitch
            && self.delivered >= at
        {
            self.behavior.glitch = None;
            return Err(kind);
        }
        if let Some((at, _)) = self.behavior.glitch {
            n = n.min(at - self.delivered);
        }
        if let Some(cut) = self.behavior.cut_after {
            if self.delivered >= cut {
                self.cut = true;
                return self.read(buf);
            }
            n = n.min(cut - self.delivered);
        }
        for b in &mut buf[..n] {
            *b = self.output.pop_front().unwrap();
        }
        self.delivered += n;
        Ok(n)
    }
}

impl embedded_io::Write for FakeQemu {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        if buf.is_empty() {
            return Ok(0);
        }
        let blocked = self
            .behavior
            .block_writes
            .is_some_and(|(after, until)| self.taken >= after && self.clock.0.get() < until);
        if blocked
            || self.behavior.write_blocked
            || self.rng.chance(self.behavior.write_stall_percent)
        {
            self.clock.advance_ms(self.behavior.stall_ms);
            assert!(self.clock.0.get() < HANG_LIMIT_US, "write loop hung");
            return Err(ErrorKind::TimedOut);
        }
        let mut n = self.rng.upto(self.behavior.max_write).min(buf.len());
        if let Some((after, _)) = self.behavior.block_writes
            && self.taken < after
        {
            n = n.min(after - self.taken);
        }
        self.taken += n;
        self.input.extend_from_slice(&buf[..n]);
        self.take_commands();
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

/// The same peer as an async link: every call first returns `Pending` once (waking itself),
/// so the executor really suspends the client.
#[derive(Debug)]
pub struct AsyncFakeQemu(pub FakeQemu);

#[cfg(feature = "async")]
mod asynch {
    use core::future::Future;
    use core::pin::Pin;
    use core::task::{Context, Poll};

    use super::*;

    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    impl embedded_io_async::ErrorType for AsyncFakeQemu {
        type Error = ErrorKind;
    }

    impl embedded_io_async::Read for AsyncFakeQemu {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            YieldOnce(false).await;
            embedded_io::Read::read(&mut self.0, buf)
        }
    }

    impl embedded_io_async::Write for AsyncFakeQemu {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            YieldOnce(false).await;
            embedded_io::Write::write(&mut self.0, buf)
        }

        async fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }

    /// A minimal executor: polls `fut` with a no-op waker until it is ready.
    pub fn block_on<F: Future>(fut: F) -> F::Output {
        let mut fut = core::pin::pin!(fut);
        let mut cx = Context::from_waker(core::task::Waker::noop());
        for _ in 0..100_000_000u64 {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
        }
        panic!("future never completed");
    }
}

#[cfg(feature = "async")]
#[allow(unused_imports)]
pub use asynch::block_on;

/// With `--features defmt`, tests link the client's defmt calls: a host logger that counts
/// the bytes it is given (so a test can check that protocol steps were logged).
#[cfg(feature = "defmt")]
pub mod host_logger {
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub static BYTES: AtomicUsize = AtomicUsize::new(0);

    #[defmt::global_logger]
    struct Logger;

    // SAFETY: the methods do nothing but count; there is no state to protect.
    unsafe impl defmt::Logger for Logger {
        fn acquire() {}
        unsafe fn flush() {}
        unsafe fn release() {}
        unsafe fn write(bytes: &[u8]) {
            BYTES.fetch_add(bytes.len(), Ordering::Relaxed);
        }
    }

    defmt::timestamp!("{=u64}", 0);
}
