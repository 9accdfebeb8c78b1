//! Round trips against a real QEMU, in one run: qmp-std (sequential and pipelined),
//! qmp-embedded's blocking client, the peers (QEMU's Python `qemu.qmp`, the `qapi` crate),
//! and raw socket loops as the limit. Run it through `bash bench/roundtrip.sh`.
//!
//! One `qemu-system-x86_64 -machine none` with a QMP Unix socket serves every client in
//! turn, each on a fresh connection: a warm-up, then `query-status` round trips for a fixed
//! time. The clients take turns in many short rounds (in a new order every round) so that
//! load from elsewhere on the machine spreads over all of them. Per client: round trips per
//! second (the median round), ratios between clients (the median over rounds of the ratio
//! within a round), and CPU time per round trip of the client and of QEMU (utime + stime
//! deltas from `/proc/thread-self/stat` for the Rust clients, which run on this thread,
//! from `/proc/self/stat` of the Python process, which runs the Python clients, and from
//! `/proc/QEMU_PID/stat`), summed over the rounds.
//!
//! Then memory: the peak heap of the qmp-std client while it fetches `query-qmp-schema`
//! (a counting global allocator: peak live bytes), and the size of the embedded client.
//!
//! ```text
//! roundtrip [--seconds S] [--rounds N] [--python PATH] [--peers PATH] [--only a,b,...]
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::commands::{QueryStatus, RunState, StatusInfo};

type BoxError = Box<dyn std::error::Error>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

// ---- a counting allocator ----------------------------------------------------------------

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    /// Counted as allocating the new block before freeing the old one (an upper bound: the
    /// peak includes both, as when the block has to move).
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        shrank(if p.is_null() { new_size } else { layout.size() });
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap bytes now, and resets the peak to them.
fn heap_mark() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

// ---- CPU time ----------------------------------------------------------------------------

/// (utime, stime), in clock ticks, from a `/proc/.../stat` file.
fn cpu_ticks(stat: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(stat)?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command name: state is field 3 (index 0 here), utime 14, stime 15.
    let utime: u64 = fields.get(11).ok_or("malformed stat")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("malformed stat")?.parse()?;
    Ok((utime, stime))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux for `/proc`).
const TICK_SECS: f64 = 0.01;

/// What one client did in one timed stretch.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    count: u64,
    seconds: f64,
    /// The client's user and system CPU time.
    client_ticks: (u64, u64),
    /// QEMU's user + system CPU time.
    qemu_ticks: u64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.count as f64 / self.seconds
    }
}

/// Runs `step` (one round trip, or one completion when pipelining) `WARMUP` times, then for
/// `seconds`, measuring this thread's CPU time and QEMU's.
fn timed(qemu_pid: u32, seconds: f64, mut step: impl FnMut() -> Result<()>) -> Result<Sample> {
    const WARMUP: usize = 100;
    const BATCH: u64 = 32;
    for _ in 0..WARMUP {
        step()?;
    }
    let qemu_stat = format!("/proc/{qemu_pid}/stat");
    let client0 = cpu_ticks("/proc/thread-self/stat")?;
    let qemu0 = cpu_ticks(&qemu_stat)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut count = 0;
    while Instant::now() < end {
        for _ in 0..BATCH {
            step()?;
        }
        count += BATCH;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let client1 = cpu_ticks("/proc/thread-self/stat")?;
    let qemu1 = cpu_ticks(&qemu_stat)?;
    Ok(Sample {
        count,
        seconds: elapsed,
        client_ticks: (client1.0 - client0.0, client1.1 - client0.1),
        qemu_ticks: qemu1.0 + qemu1.1 - qemu0.0 - qemu0.1,
    })
}

// ---- the clients -------------------------------------------------------------------------

struct Target<'a> {
    socket: &'a Path,
    /// The same QEMU's plain TCP monitor on 127.0.0.1, and its TLS monitor
    /// (`verify-peer=on`) with the client's configuration.
    tcp: std::net::SocketAddr,
    tls: (std::net::SocketAddr, &'a qmp_std::tls::TlsConfig),
    qemu_pid: u32,
    seconds: f64,
    /// The Python process that runs the Python clients, started on first use.
    python: RefCell<Option<Python>>,
    python_program: &'a Path,
    peers_script: &'a Path,
}

fn check_status(status: &StatusInfo) -> Result<()> {
    if status.status != RunState::Running {
        return Err(format!("unexpected status {status:?}").into());
    }
    Ok(())
}

/// Sequential over plain TCP on loopback: the baseline of the TLS row.
fn qmp_std_tcp(t: &Target<'_>) -> Result<Sample> {
    let mut qmp = qmp_std::Client::connect_tcp(t.tcp)?;
    timed(t.qemu_pid, t.seconds, || {
        check_status(&qmp.execute(&QueryStatus)?)
    })
}

/// Sequential over TLS (rustls, `ring`; QEMU's GnuTLS with `verify-peer=on` and a client
/// certificate), on loopback.
fn qmp_std_tls(t: &Target<'_>) -> Result<Sample> {
    let mut qmp = qmp_std::Client::connect_tls(&t.tls.0.to_string(), t.tls.1)?;
    timed(t.qemu_pid, t.seconds, || {
        check_status(&qmp.execute(&QueryStatus)?)
    })
}

fn qmp_std_sequential(t: &Target<'_>) -> Result<Sample> {
    let mut qmp = qmp_std::Client::connect_unix(t.socket)?;
    timed(t.qemu_pid, t.seconds, || {
        check_status(&qmp.execute(&QueryStatus)?)
    })
}

/// Sequential, with an id on every command (`untagged_when_alone(false)`; by default a
/// command alone in flight goes without one): the longer command QEMU has to read.
fn qmp_std_tagged(t: &Target<'_>) -> Result<Sample> {
    let mut qmp = qmp_std::ClientBuilder::new()
        .untagged_when_alone(false)
        .connect_unix(t.socket)?;
    timed(t.qemu_pid, t.seconds, || {
        check_status(&qmp.execute(&QueryStatus)?)
    })
}

/// Pipelined with the defaults, which negotiate `oob`: QEMU's monitor I/O thread then reads
/// and queues the next commands while its main thread runs one.
fn qmp_std_pipelined(t: &Target<'_>) -> Result<Sample> {
    pipelined(t, qmp_std::ClientBuilder::new())
}

/// Pipelined without `oob`: QEMU reads nothing while it runs a command.
fn qmp_std_pipelined_no_oob(t: &Target<'_>) -> Result<Sample> {
    pipelined(t, qmp_std::ClientBuilder::new().oob(false))
}

fn pipelined(t: &Target<'_>, builder: qmp_std::ClientBuilder) -> Result<Sample> {
    const WINDOW: usize = 8;
    let mut qmp = builder.connect_unix(t.socket)?;
    let mut handles = VecDeque::with_capacity(WINDOW);
    for _ in 0..WINDOW {
        handles.push_back(qmp.send(&QueryStatus)?);
    }
    let sample = timed(t.qemu_pid, t.seconds, || {
        let oldest = handles.pop_front().ok_or("no command in flight")?;
        check_status(&qmp.wait(oldest)?)?;
        handles.push_back(qmp.send(&QueryStatus)?);
        Ok(())
    })?;
    for handle in handles {
        check_status(&qmp.wait(handle)?)?;
    }
    Ok(sample)
}

/// An `embedded_io` link over a Unix socket: what a hosted user of qmp-embedded writes.
struct UnixLink(UnixStream);

impl embedded_io::ErrorType for UnixLink {
    type Error = embedded_io::ErrorKind;
}

fn link_error(e: &io::Error) -> embedded_io::ErrorKind {
    use embedded_io::ErrorKind as K;
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => K::TimedOut,
        io::ErrorKind::Interrupted => K::Interrupted,
        io::ErrorKind::BrokenPipe => K::BrokenPipe,
        io::ErrorKind::ConnectionReset => K::ConnectionReset,
        _ => K::Other,
    }
}

impl embedded_io::Read for UnixLink {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.0.read(buf).map_err(|e| link_error(&e))
    }
}

impl embedded_io::Write for UnixLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.write(buf).map_err(|e| link_error(&e))
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Microseconds since a `std::time::Instant`.
struct StdClock(Instant);

impl qmp_embedded::Clock for StdClock {
    fn now(&self) -> qmp_embedded::Instant {
        let micros = u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX);
        qmp_embedded::Instant::from_micros(micros)
    }
}

/// The embedded client as the bench runs it: default buffers (RX 1024, TX 256, EV 256,
/// 2 slots), the link and clock above.
type EmbeddedClient = qmp_embedded::Client<UnixLink, StdClock, 1024, 256, 256, 2>;

fn qmp_embedded_blocking(t: &Target<'_>) -> Result<Sample> {
    let stream = UnixStream::connect(t.socket)?;
    // Reads return now and then so that deadlines are checked (see qmp-embedded's docs).
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut qmp: EmbeddedClient =
        qmp_embedded::Client::new(UnixLink(stream), StdClock(Instant::now()));
    qmp.handshake(false).map_err(|e| format!("{e:?}"))?;
    timed(t.qemu_pid, t.seconds, || {
        let status: StatusInfo = qmp
            .execute("query-status", &())
            .map_err(|e| format!("{e:?}"))?;
        check_status(&status)
    })
}

fn qmp_embedded_untagged(t: &Target<'_>) -> Result<Sample> {
    let stream = UnixStream::connect(t.socket)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let config =
        qmp_embedded::Config::new().session(qmp_proto::Config::default().untagged_when_alone(true));
    let mut qmp: EmbeddedClient =
        qmp_embedded::Client::with_config(UnixLink(stream), StdClock(Instant::now()), config);
    qmp.handshake(false).map_err(|e| format!("{e:?}"))?;
    timed(t.qemu_pid, t.seconds, || {
        let status: StatusInfo = qmp
            .execute("query-status", &())
            .map_err(|e| format!("{e:?}"))?;
        check_status(&status)
    })
}

fn qapi_sync(t: &Target<'_>) -> Result<Sample> {
    let stream = UnixStream::connect(t.socket)?;
    let mut qmp = qapi::Qmp::from_stream(&stream);
    qmp.handshake()?;
    timed(t.qemu_pid, t.seconds, || {
        let status = qmp.execute(&qapi::qmp::query_status {})?;
        if !status.running {
            return Err(format!("unexpected status {:?}", status.status).into());
        }
        Ok(())
    })
}

/// A raw socket, past the greeting and negotiation, that reads one line per command.
struct Raw {
    stream: UnixStream,
    buf: [u8; 512],
}

impl Raw {
    fn connect(socket: &Path) -> Result<Self> {
        let mut raw = Raw {
            stream: UnixStream::connect(socket)?,
            buf: [0; 512],
        };
        raw.read_line()?;
        raw.stream.write_all(br#"{"execute":"qmp_capabilities"}"#)?;
        raw.read_line()?;
        Ok(raw)
    }

    /// Reads until a read ends a line (QEMU writes each message, `\r\n` included, at once).
    fn read_line(&mut self) -> Result<()> {
        let mut at = 0;
        loop {
            let n = self.stream.read(&mut self.buf[at..])?;
            if n == 0 {
                return Err("EOF".into());
            }
            at += n;
            if self.buf[at - 1] == b'\n' {
                return Ok(());
            }
            if at == self.buf.len() {
                at = 0;
            }
        }
    }
}

/// The limit: one fixed command written, one line read, nothing parsed.
fn raw_rust(t: &Target<'_>) -> Result<Sample> {
    let mut raw = Raw::connect(t.socket)?;
    timed(t.qemu_pid, t.seconds, || {
        raw.stream.write_all(br#"{"execute":"query-status"}"#)?;
        raw.read_line()
    })
}

/// The same, with the bytes qmp-std sends: an `id` counting up from 2.
fn raw_rust_id(t: &Target<'_>) -> Result<Sample> {
    let mut raw = Raw::connect(t.socket)?;
    let mut id = 1u64;
    let mut command = Vec::with_capacity(64);
    timed(t.qemu_pid, t.seconds, || {
        id += 1;
        command.clear();
        write!(command, r#"{{"execute":"query-status","id":{id}}}"#)?;
        raw.stream.write_all(&command)?;
        raw.read_line()
    })
}

/// `roundtrip_peers.py`, kept running: one line in (`CLIENT SECONDS`), one JSON line out.
struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    fn start(t: &Target<'_>) -> Result<Self> {
        let mut child = std::process::Command::new(t.python_program)
            .arg(t.peers_script)
            .arg(t.socket)
            .arg(t.qemu_pid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", t.python_program.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Python {
            child,
            stdin,
            stdout,
        })
    }

    fn run(&mut self, client: &str, seconds: f64) -> Result<Sample> {
        writeln!(self.stdin, "{client} {seconds}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("the Python process exited (its error is above)".into());
        }
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let int = |k: &str| v[k].as_u64().ok_or_else(|| format!("no {k} in {v}"));
        if int("threads")? != 1 {
            return Err(format!("the Python client ran {} threads", int("threads")?).into());
        }
        Ok(Sample {
            count: int("count")?,
            seconds: v["seconds"].as_f64().ok_or("no seconds")?,
            client_ticks: (int("client_utime")?, int("client_stime")?),
            qemu_ticks: int("qemu_ticks")?,
        })
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        // End of input ends the script.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(t: &Target<'_>, client: &str) -> Result<Sample> {
    let mut python = t.python.borrow_mut();
    if python.is_none() {
        *python = Some(Python::start(t)?);
    }
    python
        .as_mut()
        .expect("started above")
        .run(client, t.seconds)
}

fn qemu_qmp(t: &Target<'_>) -> Result<Sample> {
    python(t, "qemu.qmp")
}

fn raw_python(t: &Target<'_>) -> Result<Sample> {
    python(t, "raw")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Ours,
    Peer,
    Limit,
    Reference,
}

struct Client {
    key: &'static str,
    name: &'static str,
    /// The `query-status` command on the wire, as this client writes it.
    wire: &'static str,
    role: Role,
    run: fn(&Target<'_>) -> Result<Sample>,
}

const CLIENTS: &[Client] = &[
    Client {
        key: "std",
        name: "qmp-std, sequential (defaults)",
        wire: r#"{"execute":"query-status"}"#,
        role: Role::Ours,
        run: qmp_std_sequential,
    },
    Client {
        key: "std-tcp",
        name: "qmp-std, sequential, TCP on 127.0.0.1",
        wire: r#"{"execute":"query-status"}"#,
        role: Role::Ours,
        run: qmp_std_tcp,
    },
    Client {
        key: "std-tls",
        name: "qmp-std, sequential, TLS on 127.0.0.1 (client cert)",
        wire: r#"{"execute":"query-status"}"#,
        role: Role::Ours,
        run: qmp_std_tls,
    },
    Client {
        key: "std-tagged",
        name: "qmp-std, sequential, `untagged_when_alone(false)`",
        wire: r#"{"execute":"query-status","id":N}"#,
        role: Role::Ours,
        run: qmp_std_tagged,
    },
    Client {
        key: "std-pipelined",
        name: "qmp-std, pipelined (8 in flight; defaults: oob negotiated)",
        wire: r#"{"execute":"query-status","id":N}"#,
        role: Role::Ours,
        run: qmp_std_pipelined,
    },
    Client {
        key: "std-pipelined-no-oob",
        name: "qmp-std, pipelined (8 in flight), `oob(false)`",
        wire: r#"{"execute":"query-status","id":N}"#,
        role: Role::Ours,
        run: qmp_std_pipelined_no_oob,
    },
    Client {
        key: "embedded",
        name: "qmp-embedded, blocking (UnixStream link)",
        wire: r#"{"execute":"query-status","id":N}"#,
        role: Role::Ours,
        run: qmp_embedded_blocking,
    },
    Client {
        key: "embedded-untagged",
        name: "qmp-embedded, blocking, `untagged_when_alone`",
        wire: r#"{"execute":"query-status"}"#,
        role: Role::Ours,
        run: qmp_embedded_untagged,
    },
    Client {
        key: "qemu.qmp",
        name: "qemu.qmp 0.0.6 (Python), sequential",
        wire: r#"{"execute":"query-status","id":"__qmp#NNNNN"}"#,
        role: Role::Peer,
        run: qemu_qmp,
    },
    Client {
        key: "qapi",
        name: "qapi 0.15 crate, sync, sequential",
        wire: "{\"execute\":\"query-status\",\"arguments\":{}}\\n",
        role: Role::Peer,
        run: qapi_sync,
    },
    Client {
        key: "raw",
        name: "raw Rust loop (limit)",
        wire: r#"{"execute":"query-status"}"#,
        role: Role::Limit,
        run: raw_rust,
    },
    Client {
        key: "raw-id",
        name: "raw Rust loop, with qmp-std's ids",
        wire: r#"{"execute":"query-status","id":N}"#,
        role: Role::Reference,
        run: raw_rust_id,
    },
    Client {
        key: "raw-python",
        name: "raw Python loop",
        wire: r#"{"execute":"query-status"}"#,
        role: Role::Reference,
        run: raw_python,
    },
];

// ---- memory ------------------------------------------------------------------------------

/// A command whose result is skipped, not kept: what the client itself needs.
#[derive(serde::Serialize)]
struct SchemaIgnored;

impl qmp_std::Command for SchemaIgnored {
    const NAME: &'static str = "query-qmp-schema";
    type Output<'de> = serde::de::IgnoredAny;
}

fn memory(socket: &Path) -> Result<String> {
    let mut out = String::new();
    let base = heap_mark();
    let mut qmp = qmp_std::Client::connect_unix(socket)?;
    let handshake_peak = PEAK.load(Ordering::Relaxed) - base;
    let connected = LIVE.load(Ordering::Relaxed) - base;

    let before = heap_mark();
    let schema = qmp.execute_raw("query-qmp-schema", &serde_json::Value::Null)?;
    let value_peak = PEAK.load(Ordering::Relaxed) - base;
    let value_kept = LIVE.load(Ordering::Relaxed) - before;
    let entries = schema.as_array().map_or(0, Vec::len);
    let reply_bytes = serde_json::to_string(&schema)?.len();
    drop(schema);

    heap_mark();
    qmp.execute(&SchemaIgnored)?;
    let ignored_peak = PEAK.load(Ordering::Relaxed) - base;
    let capacity = qmp.buffer_capacity();
    drop(qmp);

    // A fresh client, skipping the result from the start.
    let base = heap_mark();
    let mut qmp = qmp_std::Client::connect_unix(socket)?;
    qmp.execute(&SchemaIgnored)?;
    let fresh_peak = PEAK.load(Ordering::Relaxed) - base;
    drop(qmp);

    let kib = |b: usize| b as f64 / 1024.0;
    writeln!(out, "Memory")?;
    writeln!(
        out,
        "  qmp-std heap (counting global allocator; realloc counted as new block + old block):"
    )?;
    writeln!(
        out,
        "    connected and negotiated: {:.1} KiB live (peak {:.1} KiB)",
        kib(connected),
        kib(handshake_peak)
    )?;
    writeln!(
        out,
        "    query-qmp-schema ({entries} entries; {:.0} KiB as compact JSON, QEMU sends ~207 KB with its spacing):",
        kib(reply_bytes)
    )?;
    writeln!(
        out,
        "      into serde_json::Value (execute_raw): peak {:.1} KiB, of which the Value kept {:.1} KiB",
        kib(value_peak),
        kib(value_kept)
    )?;
    writeln!(
        out,
        "      result skipped (IgnoredAny), same client: peak {:.1} KiB",
        kib(ignored_peak)
    )?;
    writeln!(
        out,
        "      result skipped, fresh client (connect + handshake + fetch): peak {:.1} KiB; receive buffer grew to {:.0} KiB",
        kib(fresh_peak),
        kib(capacity)
    )?;
    writeln!(
        out,
        "  qmp-embedded static RAM (size_of, no heap): {} bytes as benched (RX 1024, TX 256, EV 256, \
         N 2, UnixStream link, std clock); {} bytes with a zero-sized link and clock",
        std::mem::size_of::<EmbeddedClient>(),
        std::mem::size_of::<qmp_embedded::Client<(), (), 1024, 256, 256, 2>>(),
    )?;
    Ok(out)
}

// ---- the run -----------------------------------------------------------------------------

struct Args {
    seconds: f64,
    rounds: usize,
    python: PathBuf,
    peers: PathBuf,
    only: Option<Vec<String>>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        seconds: 0.4,
        rounds: 15,
        python: "python3".into(),
        peers: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("roundtrip_peers.py"),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--python" => args.python = value()?.into(),
            "--peers" => args.peers = value()?.into(),
            "--only" => args.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "-h" | "--help" => {
                println!(
                    "roundtrip [--seconds S (0.4)] [--rounds N (15)] [--python PATH] [--peers PATH] [--only {}]",
                    CLIENTS.iter().map(|c| c.key).collect::<Vec<_>>().join(",")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// The clients' order in a round: shuffled (deterministically, per round) so that each one
/// runs after different ones and at different points of a round.
fn order(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (round as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    for i in (1..n).rev() {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    client: &'static Client,
    rate: f64,
    rates: Vec<f64>,
    client_us: f64,
    client_user_us: f64,
    qemu_us: f64,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let clients: Vec<&Client> = CLIENTS
        .iter()
        .filter(|c| {
            args.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|k| k == c.key))
        })
        .collect();
    // Besides its Unix socket, the QEMU serves a plain TCP monitor and a TLS one, for the
    // TCP and TLS rows (certificates made with `openssl`, see qmp_e2e::tls).
    let pki_dir = std::env::temp_dir().join(format!("qmp-bench-tls-{}", std::process::id()));
    let pki = qmp_e2e::tls::Pki::create(&pki_dir)?;
    let (tcp_port, tls_port) = (qmp_e2e::free_port()?, qmp_e2e::free_port()?);
    let qemu = Qemu::builder(Monitor::Unix)
        .args([
            "-chardev".to_owned(),
            format!("socket,id=tcpmon,host=127.0.0.1,port={tcp_port},server=on,wait=off"),
            "-mon".to_owned(),
            "chardev=tcpmon,mode=control".to_owned(),
            "-object".to_owned(),
            format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=on",
                pki.dir().display()
            ),
            "-chardev".to_owned(),
            format!(
                "socket,id=tlsmon,host=127.0.0.1,port={tls_port},server=on,wait=off,tls-creds=tls0"
            ),
            "-mon".to_owned(),
            "chardev=tlsmon,mode=control".to_owned(),
        ])
        .start()?;
    let Address::Unix(socket) = qemu.address().clone() else {
        return Err("not a Unix socket".into());
    };
    let tls_config = qmp_std::tls::TlsConfig::new()
        .ca_file(pki.file("ca-cert.pem"))
        .client_auth(pki.file("client-cert.pem"), pki.file("client-key.pem"));
    let loopback = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let target = Target {
        socket: &socket,
        tcp: loopback(tcp_port),
        tls: (loopback(tls_port), &tls_config),
        qemu_pid: qemu.pid(),
        seconds: args.seconds,
        python: RefCell::new(None),
        python_program: &args.python,
        peers_script: &args.peers,
    };
    let load_before = loadavg();
    eprintln!(
        "QEMU pid {} on {}; {} round(s) of {} s per client; load average {load_before}",
        qemu.pid(),
        socket.display(),
        args.rounds,
        args.seconds
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); clients.len()];
    for round in 0..args.rounds {
        let mut line = format!("  round {:>2}:", round + 1);
        for i in order(clients.len(), round) {
            let sample =
                (clients[i].run)(&target).map_err(|e| format!("{}: {e}", clients[i].name))?;
            write!(line, " {} {:.0}", clients[i].key, sample.rate())?;
            samples[i].push(sample);
        }
        eprintln!("{line}");
    }
    drop(target.python.take());
    let load_after = loadavg();

    let rows: Vec<Row> = clients
        .iter()
        .zip(&samples)
        .map(|(&client, s)| {
            let count: u64 = s.iter().map(|s| s.count).sum();
            let per_rt = |ticks: u64| ticks as f64 * TICK_SECS * 1e6 / count as f64;
            let rates: Vec<f64> = s.iter().map(Sample::rate).collect();
            Row {
                client,
                rate: median(rates.clone()),
                rates,
                client_us: per_rt(s.iter().map(|s| s.client_ticks.0 + s.client_ticks.1).sum()),
                client_user_us: per_rt(s.iter().map(|s| s.client_ticks.0).sum()),
                qemu_us: per_rt(s.iter().map(|s| s.qemu_ticks).sum()),
            }
        })
        .collect();
    let find = |key: &str| rows.iter().find(|r| r.client.key == key);
    // The median over rounds of a/b within each round, where both ran seconds apart under
    // about the same load.
    let paired =
        |a: &Row, b: &Row| median(a.rates.iter().zip(&b.rates).map(|(a, b)| a / b).collect());
    let raw = find("raw");

    let mut out = String::new();
    writeln!(
        out,
        "Round trips against one qemu-system-x86_64 {} -machine none, QMP over a Unix socket, query-status",
        qemu_version()
    )?;
    writeln!(
        out,
        "{} rounds x {} s per client, interleaved (order shuffled every round); load average {load_before} before, {load_after} after",
        args.rounds, args.seconds
    )?;
    writeln!(
        out,
        "round trips/s: median round (slowest-fastest); ratios: median over rounds of the ratio within a round; \
         CPU: utime+stime over all rounds / round trips"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| client | round trips/s | vs raw loop | client CPU µs/rt (user) | QEMU CPU µs/rt | command on the wire |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---|")?;
    for r in &rows {
        let (lo, hi) = r
            .rates
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        writeln!(
            out,
            "| {} | {:.0} ({lo:.0}-{hi:.0}) | {} | {:.1} ({:.1}) | {:.1} | `{}` |",
            r.client.name,
            r.rate,
            raw.map_or("-".into(), |raw| format!("{:.2}", paired(r, raw))),
            r.client_us,
            r.client_user_us,
            r.qemu_us,
            r.client.wire
        )?;
    }
    writeln!(out)?;
    let best_peer = rows
        .iter()
        .filter(|r| r.client.role == Role::Peer)
        .max_by(|a, b| a.rate.total_cmp(&b.rate));
    let verdict = |ok: bool| if ok { "holds" } else { "MISSED" };
    // qmp-std sequential, with its defaults and with an id on every command.
    for (key, label) in [
        ("std", "qmp-std sequential"),
        ("std-tagged", "qmp-std sequential, ids on every command"),
    ] {
        let Some(std) = find(key) else { continue };
        if let Some(peer) = best_peer {
            let x = paired(std, peer);
            writeln!(
                out,
                "{label} / best peer ({}): {x:.2}x  (target >= 1.2x: {})",
                peer.client.name,
                verdict(x >= 1.2)
            )?;
        }
        if let Some(raw) = raw {
            let x = paired(std, raw);
            writeln!(
                out,
                "{label} / raw Rust loop: {x:.2}x  (target >= 0.95x: {})",
                verdict(x >= 0.95)
            )?;
        }
        if let Some(raw_id) = find("raw-id").filter(|_| key == "std-tagged") {
            let x = paired(std, raw_id);
            writeln!(
                out,
                "{label} / raw Rust loop sending the same bytes (ids): {x:.2}x  (0.95x: {})",
                verdict(x >= 0.95)
            )?;
        }
        writeln!(
            out,
            "{label} client CPU: {:.1} µs per round trip  (target <= 8 µs: {}){}",
            std.client_us,
            verdict(std.client_us <= 8.0),
            raw.map_or(String::new(), |raw| format!(
                "; the raw Rust loop's: {:.1} µs",
                raw.client_us
            ))
        )?;
    }
    if let (Some(std), Some(pipe)) = (find("std"), find("std-pipelined")) {
        let x = paired(pipe, std);
        writeln!(
            out,
            "qmp-std pipelined / sequential: {x:.2}x  (target >= 1.0x: {}); pipelined client CPU {:.1} µs",
            verdict(x >= 1.0),
            pipe.client_us
        )?;
    }
    if let (Some(std), Some(pipe)) = (find("std"), find("std-pipelined-no-oob")) {
        writeln!(
            out,
            "qmp-std pipelined without oob / sequential: {:.2}x  (QEMU reads nothing while it runs a command)",
            paired(pipe, std)
        )?;
    }
    if let (Some(emb), Some(raw)) = (find("embedded"), raw) {
        writeln!(
            out,
            "qmp-embedded / raw Rust loop: {:.2}x; client CPU {:.1} µs",
            paired(emb, raw),
            emb.client_us
        )?;
    }
    writeln!(out)?;
    out.push_str(&memory(&socket)?);
    print!("{out}");
    drop(qemu);
    let _ = std::fs::remove_dir_all(&pki_dir);
    Ok(())
}

fn qemu_version() -> String {
    std::process::Command::new(qmp_e2e::QEMU_PROGRAM)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split_whitespace().nth(3).map(str::to_owned)
        })
        .unwrap_or_default()
}
