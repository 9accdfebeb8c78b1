//! A chaos proxy: a Unix socket that sits between a QMP client and a real QEMU monitor and,
//! from a seed, mistreats the bytes in between, while keeping an exact record of what QEMU
//! sent and what reached the client.
//!
//! ```no_run
//! use qmp_e2e::chaos::{ChaosProxy, Knobs, Plan};
//! use qmp_e2e::{Monitor, Qemu};
//!
//! let qemu = Qemu::start(Monitor::Unix)?;
//! let plan = Plan::generate(7, &Knobs::default());
//! let proxy = ChaosProxy::start(qemu.address().clone(), plan)?;
//! let stream = proxy.connect()?; // talk QMP over this, as if to QEMU
//! # drop(stream);
//! let records = proxy.finish(std::time::Duration::from_secs(5))?;
//! println!("{}", records[0].summary());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Faults
//! A [`Plan`] is drawn from a `u64` seed ([`Plan::generate`]) with a small PRNG of its own
//! ([`Rng`], splitmix64), and says:
//! - **Chunking** ([`Chunks`], [`Delays`]), both directions: data is written in pieces of
//!   random size (from 1 byte up), some pieces after a short sleep.
//! - **Stalls** ([`Stall`]): at a [`Point`] of the server's stream, hold every server→client
//!   byte for a while; long stalls last longer than the client's command deadline.
//! - **A cut** ([`Cut`]): at a [`Point`] of the server's stream (often in the middle of a
//!   message) or at a byte offset of the client's stream, shut both connections down (both
//!   directions).
//! - **Garbage** ([`Garbage`]), towards the client only, and only between server messages
//!   (after a message's `\r\n`); never towards QEMU.
//!
//! # Which garbage, and why
//! The client's framer (`qmp_proto::Framer`, see qmp-proto's `framing.rs`) resynchronises
//! in three ways: a byte between messages that cannot start an object is reported once and
//! everything up to the next `{` is skipped; an error inside an object (a raw control
//! character in a string, nesting too deep) skips to the end of the line; and a `{` at the
//! very start of a line inside an unfinished object means that object was cut short
//! (`Truncated`), and framing restarts at that `{`. QEMU starts every message at the start
//! of a line (the previous one ended in `\r\n`). So the garbage injected is whatever one of
//! those paths brings back to the next real message, and always ends in `\r\n`:
//! - [`Garbage::Noise`]: random bytes (printable, control and non-ASCII) without any `{`,
//!   so skipping to the next `{` lands exactly on the next message;
//! - [`Garbage::StrayClose`]: a lone `}` or `]`;
//! - [`Garbage::Scalar`]: a complete JSON value that is not an object (array of numbers,
//!   string, number, literal), without `{`;
//! - [`Garbage::Truncated`]: the first bytes of a plausible message (an event, a reply),
//!   cut anywhere: either the `\r\n` ends up inside a string (control character: skip the
//!   line) or the next message's `{` opens a line inside the unfinished object (`Truncated`);
//! - [`Garbage::UnknownObject`]: a complete object that is not a QMP message and has no
//!   `id` (`{"chaos": …}`): a well-formed message a client must ignore (forward
//!   compatibility), not blame on a command;
//! - [`Garbage::Blank`]: extra line ends and spaces.
//!
//! Not used, because no client can tell it from the real thing or recover from it: a
//! well-formed reply or event (with an id or an event name), garbage that opens an object
//! or a string and is *not* followed by a line end (it would swallow the next message), and
//! garbage inside a message.
//!
//! # The record
//! For each connection the proxy keeps a [`Record`]: every complete message QEMU sent on it
//! (byte for byte, without its `\r\n`), how many of them were fully delivered to the client
//! (the closing `}` written to the client's socket) before the connection ended, the bytes
//! the client sent that reached QEMU, the garbage injected, the stalls done and how the
//! connection ended. Messages are forwarded in order and only once, so the delivered ones
//! are a prefix of the received ones. A message counts as delivered once its last byte was
//! accepted by the client's socket: a Unix socket keeps such bytes for the reader even after
//! the proxy shuts the connection down, and the reader sees them before the end of the
//! stream.
//!
//! The proxy frames QEMU's output on `\r\n`, which is exact for a monitor without
//! `pretty=on` (QEMU escapes line ends inside strings). It forwards only complete messages
//! (whatever follows the last `\r\n` when QEMU closes is forwarded as is), so that points
//! in the plan are positions inside whole messages.
//!
//! # Determinism
//! Everything the proxy decides about bytes is a function of the seed and of the byte
//! streams: chunk sizes, delays, garbage and its content come from PRNG streams consumed in
//! stream order, and stalls and cuts sit at message indices and per-mille offsets inside
//! messages (QEMU's messages differ between runs only in their timestamps). Timing (how
//! the kernel splits reads, how long QEMU takes) varies, and may add splits between the
//! planned ones. [`Plan`]'s `Display` is a one-line summary to print with a failure, and
//! [`Record::summary`] tells what actually happened.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{Address, Stream, make_temp_dir};

/// A small seeded PRNG (splitmix64): deterministic, fast, good enough for test plans.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// An independent generator for stream `stream` of this seed.
    pub fn fork(seed: u64, stream: u64) -> Self {
        let mut mixer = Rng::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Rng::new(mixer.next_u64())
    }
}

/// How data is split into writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// As much as is available up to the next planned point.
    Whole,
    /// 1 to 3 bytes per write.
    Tiny,
    /// 1 to 32 bytes per write.
    Small,
    /// Mostly small, sometimes up to 512 bytes per write.
    Mixed,
}

impl Chunks {
    fn draw(self, rng: &mut Rng) -> usize {
        match self {
            Chunks::Whole => usize::MAX,
            Chunks::Tiny => rng.range(1, 3) as usize,
            Chunks::Small => rng.range(1, 32) as usize,
            Chunks::Mixed => {
                if rng.chance(20) {
                    rng.range(1, 512) as usize
                } else {
                    rng.range(1, 16) as usize
                }
            }
        }
    }
}

/// Short sleeps before some writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    /// One write in this many sleeps first (0: never).
    pub one_in: u32,
    /// The longest sleep.
    pub max: Duration,
}

/// A position in the server's stream: message `message` (0 is the greeting), at
/// `per_mille`/1000 of its bytes, `\r\n` included (0: before its first byte; 1000: after
/// its `\r\n`, before any garbage that follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Index of the message among those QEMU sent on the connection.
    pub message: usize,
    /// Where in it, in thousandths of its length.
    pub per_mille: u32,
}

impl Point {
    /// The byte offset inside a message of `len` bytes (with its `\r\n`).
    pub fn offset(&self, len: usize) -> usize {
        (len * self.per_mille.min(1000) as usize) / 1000
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "msg {} @{}‰", self.message, self.per_mille)
    }
}

/// Holding the server's bytes back for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// Where in the server's stream.
    pub at: Point,
    /// For how long.
    pub duration: Duration,
}

/// Where the connection is shut down (both sockets, both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// When the server's stream reaches this point.
    Server(Point),
    /// When this many of the client's bytes have been forwarded to QEMU.
    Client {
        /// The byte offset in the client's stream.
        byte: u64,
    },
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Server(p) => write!(f, "server {p}"),
            Cut::Client { byte } => write!(f, "client byte {byte}"),
        }
    }
}

/// Garbage injected towards the client between two server messages; see the module
/// documentation for why each kind is fair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garbage {
    /// Random bytes without `{`, then `\r\n`.
    Noise(Vec<u8>),
    /// A lone `}` or `]`, then `\r\n`.
    StrayClose(u8),
    /// A JSON value that is not an object, then `\r\n`.
    Scalar(&'static str),
    /// The start of a message, cut short, then `\r\n`.
    Truncated(Vec<u8>),
    /// A complete object that is no QMP message, then `\r\n`.
    UnknownObject,
    /// Only line ends and spaces.
    Blank,
}

/// Non-object JSON values used by [`Garbage::Scalar`].
const SCALARS: [&str; 7] = [
    "[1, 2, 3]",
    "[]",
    "\"chaos\"",
    "42",
    "-7.5e3",
    "null",
    "true",
];

/// Messages whose prefixes make [`Garbage::Truncated`].
const TRUNCATED_FROM: [&str; 3] = [
    r#"{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "CHAOS"}"#,
    r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 4242}"#,
    r#"{"error": {"class": "GenericError", "desc": "chaos"}}"#,
];

impl Garbage {
    fn draw(rng: &mut Rng) -> Self {
        match rng.below(6) {
            0 => {
                let len = rng.range(1, 40) as usize;
                let bytes = (0..len)
                    .map(|_| {
                        loop {
                            let b = rng.below(256) as u8;
                            if b != b'{' {
                                break b;
                            }
                        }
                    })
                    .collect();
                Garbage::Noise(bytes)
            }
            1 => Garbage::StrayClose(if rng.chance(50) { b'}' } else { b']' }),
            2 => Garbage::Scalar(SCALARS[rng.below(SCALARS.len() as u64) as usize]),
            3 => {
                let from = TRUNCATED_FROM[rng.below(TRUNCATED_FROM.len() as u64) as usize];
                // A proper prefix of an object never closes it.
                let len = rng.range(1, from.len() as u64 - 1) as usize;
                Garbage::Truncated(from.as_bytes()[..len].to_vec())
            }
            4 => Garbage::UnknownObject,
            _ => Garbage::Blank,
        }
    }

    /// The bytes written to the client.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = match self {
            Garbage::Noise(bytes) | Garbage::Truncated(bytes) => bytes.clone(),
            Garbage::StrayClose(b) => vec![*b],
            Garbage::Scalar(s) => s.as_bytes().to_vec(),
            Garbage::UnknownObject => br#"{"chaos": {"garbage": [1, "}", {}]}}"#.to_vec(),
            Garbage::Blank => b"\r\n  \t".to_vec(),
        };
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// What [`Plan::generate`] needs to know about the session it will disturb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    /// About how many messages QEMU sends in the session (greeting included): stalls and
    /// cuts are placed among the first `messages + 2`.
    pub messages: usize,
    /// About how many bytes the client sends: client-side cuts are placed among them.
    pub client_bytes: u64,
    /// The client's command deadline: long stalls exceed it.
    pub deadline: Duration,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            messages: 16,
            client_bytes: 600,
            deadline: Duration::from_secs(1),
        }
    }
}

/// What the proxy does to the connections, drawn from a seed; see the module
/// documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The seed everything is drawn from (also the seed of the per-connection PRNG streams
    /// for chunk sizes, delays and garbage).
    pub seed: u64,
    /// Chunking of server→client data.
    pub server_chunks: Chunks,
    /// Chunking of client→server data.
    pub client_chunks: Chunks,
    /// Sleeps before writes, both directions.
    pub delays: Delays,
    /// The chance (percent) of garbage after each server message.
    pub garbage_percent: u32,
    /// Stalls of server→client data, in stream order.
    pub stalls: Vec<Stall>,
    /// Where to cut, if anywhere.
    pub cut: Option<Cut>,
}

impl Plan {
    /// Draws a plan from `seed`.
    pub fn generate(seed: u64, knobs: &Knobs) -> Self {
        let mut rng = Rng::fork(seed, 0);
        let chunks = |rng: &mut Rng| match rng.below(4) {
            0 => Chunks::Whole,
            1 => Chunks::Tiny,
            2 => Chunks::Small,
            _ => Chunks::Mixed,
        };
        let server_chunks = chunks(&mut rng);
        let client_chunks = chunks(&mut rng);
        // Fewer sleeps the smaller the chunks, so a 6.5 KB reply still takes milliseconds.
        let delays = if rng.chance(30) {
            Delays {
                one_in: 0,
                max: Duration::ZERO,
            }
        } else {
            Delays {
                one_in: match server_chunks.min_size_class() {
                    0 => 256,
                    1 => 32,
                    _ => 4,
                },
                max: Duration::from_micros(rng.range(100, 2000)),
            }
        };
        let garbage_percent = [0, 10, 30, 60][rng.below(4) as usize];
        let span = knobs.messages as u64 + 2;
        let point = |rng: &mut Rng| Point {
            message: rng.below(span) as usize,
            per_mille: if rng.chance(25) {
                [0, 1000][rng.below(2) as usize]
            } else {
                rng.range(1, 999) as u32
            },
        };
        let deadline = u64::try_from(knobs.deadline.as_millis()).unwrap_or(u64::MAX);
        let mut stalls: Vec<Stall> = (0..rng.below(3))
            .map(|_| {
                let at = point(&mut rng);
                let ms = if rng.chance(35) {
                    deadline + rng.range(100, 400)
                } else {
                    rng.range(5, (deadline / 8).max(6))
                };
                Stall {
                    at,
                    duration: Duration::from_millis(ms),
                }
            })
            .collect();
        stalls.sort_by_key(|s| (s.at.message, s.at.per_mille));
        let cut = match rng.below(100) {
            0..35 => Some(Cut::Server(point(&mut rng))),
            35..55 => Some(Cut::Client {
                byte: rng.below(knobs.client_bytes + 1),
            }),
            _ => None,
        };
        Plan {
            seed,
            server_chunks,
            client_chunks,
            delays,
            garbage_percent,
            stalls,
            cut,
        }
    }

    /// A plan that forwards everything untouched, in whole writes.
    pub fn transparent(seed: u64) -> Self {
        Plan {
            seed,
            server_chunks: Chunks::Whole,
            client_chunks: Chunks::Whole,
            delays: Delays {
                one_in: 0,
                max: Duration::ZERO,
            },
            garbage_percent: 0,
            stalls: Vec::new(),
            cut: None,
        }
    }

    /// Whether some stall lasts at least `at_least`.
    pub fn has_stall_of(&self, at_least: Duration) -> bool {
        self.stalls.iter().any(|s| s.duration >= at_least)
    }
}

impl Chunks {
    /// 0 for tiny writes, 1 for small ones, 2 for large ones.
    fn min_size_class(self) -> u8 {
        match self {
            Chunks::Tiny => 0,
            Chunks::Small | Chunks::Mixed => 1,
            Chunks::Whole => 2,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} (QMP_CHAOS_SEED={}): chunks s→c {:?} c→s {:?}, delays ",
            self.seed, self.seed, self.server_chunks, self.client_chunks
        )?;
        if self.delays.one_in == 0 {
            f.write_str("none")?;
        } else {
            write!(f, "1 in {} up to {:?}", self.delays.one_in, self.delays.max)?;
        }
        write!(f, ", garbage {}%, stalls [", self.garbage_percent)?;
        for (i, s) in self.stalls.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            write!(f, "{sep}{} for {:?}", s.at, s.duration)?;
        }
        f.write_str("], cut ")?;
        match &self.cut {
            Some(cut) => write!(f, "{cut}"),
            None => f.write_str("none"),
        }
    }
}

/// Garbage that was written (or started to be) towards the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The garbage came right after this server message.
    pub after: usize,
    /// What it was.
    pub garbage: Garbage,
    /// Whether all of its bytes reached the client's socket.
    pub complete: bool,
}

/// How a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The plan's cut.
    PlannedCut(Cut),
    /// [`ChaosProxy::cut_now`] or [`ChaosProxy::finish`].
    Shutdown,
    /// The client closed its side (the proxy then half-closed towards QEMU).
    ClientClosed,
    /// QEMU closed its side.
    ServerClosed,
    /// Reading or writing failed otherwise.
    Failed(io::ErrorKind),
}

/// The exact record of one proxied connection; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Every complete message QEMU sent, in order, byte for byte without its `\r\n`.
    pub received: Vec<Vec<u8>>,
    /// How many of [`received`](Self::received) (a prefix) reached the client whole.
    pub delivered: usize,
    /// Server bytes written to the client (garbage not counted).
    pub server_bytes: u64,
    /// Client bytes written to QEMU.
    pub client_bytes: u64,
    /// Those bytes, in order: what QEMU got from the client (the commands, and part of the
    /// last one if the connection was cut in the middle of it).
    pub sent: Vec<u8>,
    /// Garbage injected, in order.
    pub garbage: Vec<Injected>,
    /// Stalls done: the message they started in, and how long they lasted.
    pub stalls: Vec<(usize, Duration)>,
    /// How the connection ended (`None` while it is open).
    pub end: Option<End>,
}

impl Record {
    /// The messages that reached the client whole, in order.
    pub fn delivered_messages(&self) -> &[Vec<u8>] {
        &self.received[..self.delivered]
    }

    /// One line for a failure message.
    pub fn summary(&self) -> String {
        format!(
            "received {} messages, delivered {} ({} server bytes), client sent {} bytes, \
             {} garbage ({} complete), stalls {:?}, end {:?}",
            self.received.len(),
            self.delivered,
            self.server_bytes,
            self.client_bytes,
            self.garbage.len(),
            self.garbage.iter().filter(|g| g.complete).count(),
            self.stalls,
            self.end
        )
    }
}

/// One connection through the proxy.
#[derive(Debug)]
struct Conn {
    client: UnixStream,
    /// `None` if connecting to QEMU failed.
    upstream: Option<Stream>,
    state: Mutex<ConnState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct ConnState {
    cut: bool,
    record: Record,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_cut(&self) -> bool {
        self.lock().cut
    }

    /// Shuts both sockets down (both directions), once; wakes every sleep.
    fn cut(&self, why: End) {
        {
            let mut st = self.lock();
            st.cut = true;
            st.record.end.get_or_insert(why);
        }
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(upstream) = &self.upstream {
            let _ = upstream.shutdown();
        }
        self.wake.notify_all();
    }

    /// Notes how the connection ended without cutting (a half-close was passed on).
    fn ended(&self, why: End) {
        self.lock().record.end.get_or_insert(why);
    }

    /// Sleeps for `d` unless cut first; returns whether it was not cut.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut st = self.lock();
        loop {
            if st.cut {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            st = self
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn record(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.lock().record);
    }
}

/// Splits a stream into planned pieces, with planned sleeps.
#[derive(Debug)]
struct Chunker {
    chunks: Chunks,
    delays: Delays,
    rng: Rng,
    left: usize,
}

impl Chunker {
    fn new(chunks: Chunks, delays: Delays, rng: Rng) -> Self {
        Self {
            chunks,
            delays,
            rng,
            left: 0,
        }
    }

    /// The size of the next write (at most `max`, at least 1), after the planned sleep;
    /// `None` if the connection was cut meanwhile.
    fn next(&mut self, conn: &Conn, max: usize) -> Option<usize> {
        if self.left == 0 {
            self.left = self.chunks.draw(&mut self.rng);
            if self.delays.one_in > 0 && self.rng.below(u64::from(self.delays.one_in)) == 0 {
                let max = u64::try_from(self.delays.max.as_micros()).unwrap_or(u64::MAX);
                let d = Duration::from_micros(self.rng.range(0, max));
                if !conn.sleep(d) {
                    return None;
                }
            }
        }
        let n = self.left.min(max).max(1);
        self.left -= n.min(self.left);
        Some(n)
    }
}

/// `write` until all of `bytes` went, calling `progress` with each count written.
fn write_counted(
    out: &mut impl Write,
    bytes: &[u8],
    mut progress: impl FnMut(usize),
) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        match out.write(&bytes[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                at += n;
                progress(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Shuts down the write side of a socket stream.
fn shutdown_write(stream: &Stream) {
    let _ = match stream {
        Stream::Unix(s) => s.shutdown(Shutdown::Write),
        Stream::Tcp(s) => s.shutdown(Shutdown::Write),
        Stream::Pty(_) => Ok(()),
    };
}

/// Per-connection PRNG streams.
const STREAM_S2C_CHUNKS: u64 = 1;
const STREAM_C2S_CHUNKS: u64 = 2;
const STREAM_GARBAGE: u64 = 3;

/// Server → client: frame QEMU's output into messages and deliver them with the plan's
/// chunks, stalls, cut and garbage.
fn server_to_client(conn: Arc<Conn>, plan: Plan, index: u64, mut upstream: Stream) {
    let seed = plan.seed ^ index.wrapping_mul(0x9E37_79B9);
    let mut client = match conn.client.try_clone() {
        Ok(c) => c,
        Err(e) => return conn.cut(End::Failed(e.kind())),
    };
    let mut chunker = Chunker::new(
        plan.server_chunks,
        plan.delays,
        Rng::fork(seed, STREAM_S2C_CHUNKS),
    );
    let mut garbage_rng = Rng::fork(seed, STREAM_GARBAGE);
    let mut buf = vec![0; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut next = 0; // index of the next message to deliver
    loop {
        let Some(message) = queue.pop_front() else {
            match upstream.read(&mut buf) {
                Ok(0) | Err(_) if conn.is_cut() => return,
                Ok(0) => {
                    // QEMU closed: pass on what is left, then the end of the stream.
                    let _ = client.write_all(&pending);
                    let _ = client.shutdown(Shutdown::Write);
                    return conn.ended(End::ServerClosed);
                }
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(pos) = pending[scanned..].windows(2).position(|w| w == b"\r\n") {
                        let end = scanned + pos + 2;
                        let message: Vec<u8> = pending.drain(..end).collect();
                        scanned = 0;
                        conn.record(|r| r.received.push(message[..message.len() - 2].to_vec()));
                        queue.push_back(message);
                    }
                    scanned = pending.len().saturating_sub(1);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return conn.cut(End::Failed(e.kind())),
            }
            continue;
        };
        let index = next;
        next += 1;
        if !deliver(&conn, &plan, &mut chunker, &mut client, index, &message) {
            return;
        }
        if plan.garbage_percent > 0 && garbage_rng.chance(plan.garbage_percent) {
            let garbage = Garbage::draw(&mut garbage_rng);
            let bytes = garbage.bytes();
            conn.record(|r| {
                r.garbage.push(Injected {
                    after: index,
                    garbage,
                    complete: false,
                })
            });
            let mut at = 0;
            while at < bytes.len() {
                let Some(n) = chunker.next(&conn, bytes.len() - at) else {
                    return;
                };
                if let Err(e) = write_counted(&mut client, &bytes[at..at + n], |_| {}) {
                    return conn.cut(End::Failed(e.kind()));
                }
                at += n;
            }
            conn.record(|r| {
                if let Some(g) = r.garbage.last_mut() {
                    g.complete = true;
                }
            });
        }
    }
}

/// Delivers message `index` (with its `\r\n`); returns false once the connection is cut.
fn deliver(
    conn: &Conn,
    plan: &Plan,
    chunker: &mut Chunker,
    client: &mut UnixStream,
    index: usize,
    message: &[u8],
) -> bool {
    let total = message.len();
    let body = total - 2; // up to and including the closing `}`
    let cut_at = match plan.cut {
        Some(Cut::Server(p)) if p.message == index => Some(p.offset(total)),
        _ => None,
    };
    let stalls: Vec<(usize, Duration)> = plan
        .stalls
        .iter()
        .filter(|s| s.at.message == index)
        .map(|s| (s.at.offset(total), s.duration))
        .collect();
    let mut stalled = 0;
    let mut off = 0;
    loop {
        if cut_at == Some(off) {
            conn.cut(End::PlannedCut(plan.cut.expect("a planned cut")));
            return false;
        }
        while let Some(&(at, duration)) = stalls.get(stalled) {
            if at != off {
                break;
            }
            stalled += 1;
            conn.record(|r| r.stalls.push((index, duration)));
            if !conn.sleep(duration) {
                return false;
            }
        }
        if off == total {
            return true;
        }
        let stop = stalls
            .iter()
            .map(|s| s.0)
            .chain(cut_at)
            .filter(|&at| at > off)
            .min()
            .unwrap_or(total);
        let Some(n) = chunker.next(conn, stop - off) else {
            return false;
        };
        let mut written = off;
        let result = write_counted(client, &message[off..off + n], |k| {
            let before = written;
            written += k;
            conn.record(|r| {
                r.server_bytes += k as u64;
                if before < body && written >= body {
                    r.delivered = index + 1;
                }
            });
        });
        if let Err(e) = result {
            conn.cut(End::Failed(e.kind()));
            return false;
        }
        off += n;
    }
}

/// Client → server: forward with the plan's chunks, up to the client-side cut.
fn client_to_server(conn: Arc<Conn>, plan: Plan, index: u64, mut upstream: Stream) {
    let seed = plan.seed ^ index.wrapping_mul(0x9E37_79B9);
    let mut client = match conn.client.try_clone() {
        Ok(c) => c,
        Err(e) => return conn.cut(End::Failed(e.kind())),
    };
    let mut chunker = Chunker::new(
        plan.client_chunks,
        plan.delays,
        Rng::fork(seed, STREAM_C2S_CHUNKS),
    );
    let cut_at = match plan.cut {
        Some(Cut::Client { byte }) => Some(byte),
        _ => None,
    };
    let mut forwarded = 0u64;
    let mut buf = vec![0; 16 << 10];
    loop {
        if cut_at == Some(forwarded) {
            return conn.cut(End::PlannedCut(plan.cut.expect("a planned cut")));
        }
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) if conn.is_cut() => return,
            Ok(0) => {
                shutdown_write(&upstream);
                return conn.ended(End::ClientClosed);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                shutdown_write(&upstream);
                return conn.ended(End::ClientClosed);
            }
            Err(e) => return conn.cut(End::Failed(e.kind())),
        };
        let mut off = 0;
        while off < n {
            let room = match cut_at {
                Some(at) => usize::try_from(at - forwarded).unwrap_or(usize::MAX),
                None => usize::MAX,
            };
            if room == 0 {
                return conn.cut(End::PlannedCut(plan.cut.expect("a planned cut")));
            }
            let Some(k) = chunker.next(&conn, (n - off).min(room)) else {
                return;
            };
            let mut at = off;
            let result = write_counted(&mut upstream, &buf[off..off + k], |k| {
                conn.record(|r| {
                    r.client_bytes += k as u64;
                    r.sent.extend_from_slice(&buf[at..at + k]);
                });
                at += k;
            });
            if let Err(e) = result {
                return conn.cut(End::Failed(e.kind()));
            }
            off += k;
            forwarded += k as u64;
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    conns: Mutex<Vec<Arc<Conn>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The proxy: a listening Unix socket whose every connection is forwarded to the QEMU
/// monitor at `upstream`, mistreated as the [`Plan`] says, and recorded.
///
/// Every connection gets the same fault points; its chunk sizes, delays and garbage come from
/// PRNG streams seeded by the plan's seed and the connection's index. Threads: one accepts,
/// two per connection (one per direction). [`finish`](Self::finish) (or dropping the proxy)
/// shuts everything down.
#[derive(Debug)]
pub struct ChaosProxy {
    path: PathBuf,
    plan: Plan,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    /// The temporary directory holding the socket, removed on drop.
    dir: PathBuf,
}

impl ChaosProxy {
    /// Listens on a socket in a fresh temporary directory (removed on drop) and forwards to
    /// `upstream` (a Unix or TCP monitor without `pretty=on`).
    pub fn start(upstream: Address, plan: Plan) -> io::Result<Self> {
        if matches!(upstream, Address::Pty(_)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the chaos proxy forwards to socket monitors only",
            ));
        }
        let dir = make_temp_dir()?;
        let path = dir.join("chaos.sock");
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            let plan = plan.clone();
            thread::Builder::new()
                .name(format!("chaos-accept-{}", plan.seed))
                .spawn(move || accept_loop(listener, upstream, plan, shared))?
        };
        Ok(Self {
            path,
            plan,
            shared,
            acceptor: Some(acceptor),
            dir,
        })
    }

    /// Where clients connect.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plan in force.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Connects a new client to the proxy.
    pub fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.path)
    }

    /// Cuts every open connection now (both sockets, both directions), without waiting.
    pub fn cut_now(&self) {
        for conn in lock(&self.shared.conns).iter() {
            conn.cut(End::Shutdown);
        }
    }

    /// A snapshot of the connections' records so far (a connection's threads may still be
    /// updating it; [`finish`](Self::finish) gives the final ones).
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.conns)
            .iter()
            .map(|c| c.lock().record.clone())
            .collect()
    }

    /// Stops accepting, cuts every open connection, waits (up to `timeout`) for every proxy
    /// thread to end, and returns the final records, one per connection in accept order.
    pub fn finish(mut self, timeout: Duration) -> io::Result<Vec<Record>> {
        self.stop(timeout)?;
        Ok(self.records())
    }

    fn stop(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        let mut threads: Vec<JoinHandle<()>> = self.acceptor.take().into_iter().collect();
        join_all(&mut threads, deadline)?;
        self.cut_now();
        let mut threads = std::mem::take(&mut *lock(&self.shared.threads));
        join_all(&mut threads, deadline)
    }
}

/// Joins every thread, failing if one is still running at `deadline`.
fn join_all(threads: &mut Vec<JoinHandle<()>>, deadline: Instant) -> io::Result<()> {
    while !threads.is_empty() {
        if let Some(i) = threads.iter().position(|t| t.is_finished()) {
            let thread = threads.swap_remove(i);
            if thread.join().is_err() {
                return Err(io::Error::other("a chaos proxy thread panicked"));
            }
            continue;
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} chaos proxy threads did not end in time", threads.len()),
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            let _ = self.stop(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn accept_loop(listener: UnixListener, upstream: Address, plan: Plan, shared: Arc<Shared>) {
    let mut index = 0u64;
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let conn_index = index;
        index += 1;
        let (upstream, reader, writer) = match upstream
            .connect()
            .and_then(|s| Ok((s.try_clone()?, s.try_clone()?, s)))
        {
            Ok(streams) => streams,
            Err(e) => {
                let conn = Conn {
                    client,
                    upstream: None,
                    state: Mutex::default(),
                    wake: Condvar::new(),
                };
                conn.cut(End::Failed(e.kind()));
                lock(&shared.conns).push(Arc::new(conn));
                continue;
            }
        };
        let conn = Arc::new(Conn {
            client,
            upstream: Some(upstream),
            state: Mutex::default(),
            wake: Condvar::new(),
        });
        lock(&shared.conns).push(Arc::clone(&conn));
        let spawn =
            |name: String, f: Box<dyn FnOnce() + Send>| thread::Builder::new().name(name).spawn(f);
        let threads = [
            {
                let (conn, plan) = (Arc::clone(&conn), plan.clone());
                spawn(
                    format!("chaos-s2c-{}", plan.seed),
                    Box::new(move || server_to_client(conn, plan, conn_index, reader)),
                )
            },
            {
                let (conn, plan) = (Arc::clone(&conn), plan.clone());
                spawn(
                    format!("chaos-c2s-{}", plan.seed),
                    Box::new(move || client_to_server(conn, plan, conn_index, writer)),
                )
            },
        ];
        for thread in threads {
            match thread {
                Ok(t) => lock(&shared.threads).push(t),
                Err(e) => conn.cut(End::Failed(e.kind())),
            }
        }
    }
}
