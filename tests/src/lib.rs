//! Test harness that starts a real, throwaway `qemu-system-x86_64` with a QMP monitor.
//!
//! Every QEMU this crate starts runs as
//! `qemu-system-x86_64 -machine none -nodefaults -display none` plus one QMP monitor (see
//! [`Monitor`]) and any extra arguments given to the [`Builder`]. It has no guest, no disks and no
//! network, starts in about 0.1 s, and lives in a fresh temporary directory (its working
//! directory, which also holds its Unix sockets) that is removed when the [`Qemu`] is dropped.
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//! use qmp_e2e::{Monitor, Qemu};
//!
//! let qemu = Qemu::start(Monitor::Unix)?;
//! let mut stream = qemu.address().connect()?;
//! let mut greeting = String::new();
//! BufReader::new(stream.try_clone()?).read_line(&mut greeting)?;
//! assert!(greeting.starts_with(r#"{"QMP": "#));
//! stream.write_all(br#"{"execute": "qmp_capabilities"}"#)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Readiness
//!
//! [`Qemu::start`] returns only once QEMU has finished starting up, and then a socket monitor
//! accepts a connection (a probe connection is made and closed at once) or a pty monitor has been
//! announced on QEMU's standard output. "Finished starting up" is read from
//! `/proc/PID/task/*/syscall`: the main thread is blocked in `ppoll` (idle in its main loop) and
//! every other thread is blocked too, twice in a row 5 ms apart. (If another thread keeps
//! running, say a vCPU of a guest given in extra arguments, 2 s of idle main loop have to do; if
//! `/proc` tells nothing, the monitor being reachable has to do.) This matters: QEMU 7.2 attaches
//! a QMP monitor to its chardev in a bottom half on the monitor I/O thread, after the main thread
//! has moved on, and a client that opens the pty before that gets the greeting twice (seen on the
//! real binary under load; clients connecting to a socket during start-up have hit races in
//! QEMU itself). Everything is bounded (10 s by default, see [`Builder::timeout`]), and failures
//! carry QEMU's own output.
//!
//! # Pty monitors
//!
//! QEMU creates the pty itself and prints `char device redirected to /dev/pts/N (label ser0)` on
//! its standard *output* (QEMU 7.2 uses `qemu_printf`; older versions wrote to stderr, and both
//! are read). QEMU switches the pty to raw mode itself (`cfmakeraw` on the slave side, which
//! keeps while QEMU holds the master), so nothing needs to be set on the client side: bytes pass
//! unchanged both ways, without echo. QEMU looks for a client on a pty once a second, so the
//! greeting can take up to a second to arrive after [`open_pty`].
//!
//! # Chaos
//!
//! [`chaos::ChaosProxy`] sits between a client and a QEMU monitor and, from a seed, splits,
//! delays and stalls the bytes, cuts connections and injects garbage between server
//! messages, keeping an exact record of what was delivered (used by `tests/chaos.rs`).
//!
//! # A real guest
//!
//! [`guest::Guest`] boots a small Linux guest (Debian's kernel, busybox and the host's
//! `qemu-ga`, fetched with apt and cached) in such a QEMU, adding `-machine pc,accel=tcg`
//! (which overrides `-machine none`) and its devices to the extra arguments: for the events and
//! the agent that only a running OS produces. See the [`guest`] module.
//!
//! # Missing QEMU
//!
//! There is no silent skip: if `qemu-system-x86_64` is not installed, [`Qemu::start`] fails with
//! an error that says to install the Debian package `qemu-system-x86`.

#![deny(missing_docs)]

pub mod agent;
pub mod chaos;
pub mod daemon;
pub mod embedded;
pub mod guest;
pub mod qsd;
pub mod tls;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The QEMU binary that [`Qemu::start`] runs unless [`Builder::program`] names another one.
pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// The Debian package that provides [`QEMU_PROGRAM`], named in the error when it is missing.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// How long [`Qemu::start`] waits for QEMU to become ready unless [`Builder::timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The chardev id of the pty monitor; QEMU's announcement names it as `(label ser0)`.
pub const PTY_LABEL: &str = "ser0";

/// How many times [`Monitor::Tcp`] picks a new port when QEMU cannot bind the one it was given.
const TCP_ATTEMPTS: usize = 5;

/// The kind of QMP monitor the QEMU under test gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Monitor {
    /// `-qmp unix:DIR/qmp.sock,server=on,wait=off`: a Unix socket in the temporary directory.
    Unix,
    /// `-qmp tcp:127.0.0.1:PORT,server=on,wait=off` on a free port (found by binding
    /// `127.0.0.1:0` and releasing it; another port is tried if QEMU then fails to bind it).
    Tcp,
    /// `-chardev socket,id=mon0,path=DIR/mon.sock,server=on,wait=off
    /// -mon chardev=mon0,mode=control`.
    ChardevSocket,
    /// Like [`Monitor::ChardevSocket`], with `-mon ...,pretty=on`: every message spans many
    /// lines (4-space indents, `\r\n` line ends; an empty object is `{\r\n    }`).
    ChardevSocketPretty,
    /// `-chardev pty,id=ser0 -mon chardev=ser0,mode=control`: QEMU creates a pty and announces
    /// its path; open it with [`open_pty`] (or [`Address::connect`]).
    Pty,
}

impl Monitor {
    /// Every kind of monitor, for tests that run once per kind.
    pub const ALL: [Monitor; 5] = [
        Monitor::Unix,
        Monitor::Tcp,
        Monitor::ChardevSocket,
        Monitor::ChardevSocketPretty,
        Monitor::Pty,
    ];

    /// Whether QEMU pretty-prints this monitor's output (only [`Monitor::ChardevSocketPretty`]).
    pub fn is_pretty(self) -> bool {
        self == Monitor::ChardevSocketPretty
    }
}

/// Where a client reaches the monitor of a running [`Qemu`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix stream socket at this path ([`Monitor::Unix`], [`Monitor::ChardevSocket`],
    /// [`Monitor::ChardevSocketPretty`]).
    Unix(PathBuf),
    /// A TCP socket on the loopback interface ([`Monitor::Tcp`]).
    Tcp(SocketAddr),
    /// The slave side of a pty, such as `/dev/pts/3` ([`Monitor::Pty`]).
    Pty(PathBuf),
}

impl Address {
    /// Connects to the monitor: a new socket connection, or the pty opened with [`open_pty`].
    ///
    /// QEMU serves one client per monitor at a time; a second socket connection is accepted by
    /// the kernel but gets no greeting until the first one is closed.
    pub fn connect(&self) -> io::Result<Stream> {
        Ok(match self {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            Address::Tcp(addr) => Stream::Tcp(TcpStream::connect(addr)?),
            Address::Pty(path) => Stream::Pty(open_pty(path)?),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(addr) => write!(f, "tcp:{addr}"),
            Address::Pty(path) => write!(f, "pty:{}", path.display()),
        }
    }
}

/// A plain, blocking connection to a monitor, as made by [`Address::connect`].
#[derive(Debug)]
pub enum Stream {
    /// A connected Unix stream socket.
    Unix(UnixStream),
    /// A connected TCP socket.
    Tcp(TcpStream),
    /// The opened pty slave.
    Pty(File),
}

impl Stream {
    /// Another handle to the same connection (for example one to read on another thread).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Pty(f) => Stream::Pty(f.try_clone()?),
        })
    }

    /// Sets a read timeout on a socket; a pty has none and returns `Unsupported`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Pty(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a pty has no read timeout; read it on another thread",
            )),
        }
    }

    /// Shuts down both directions of a socket, which also wakes a reader blocked on another
    /// handle; a pty has no such call and returns `Unsupported`.
    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Pty(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a pty cannot be shut down; drop it instead",
            )),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Pty(f) => f.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Pty(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
            Stream::Pty(f) => f.flush(),
        }
    }
}

/// `O_NOCTTY` for Linux: opening a pty must not make it the test process's controlling
/// terminal. Its value is 0o400 on the common architectures; elsewhere no flag is passed (a test
/// process is not a session leader, so the open would not take a controlling terminal anyway).
#[cfg(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64"
))]
const O_NOCTTY: i32 = 0o400;
#[cfg(not(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64"
)))]
const O_NOCTTY: i32 = 0;

/// Opens a pty slave (such as the one QEMU announced) for reading and writing, without making
/// it the controlling terminal. No termios change is needed: QEMU already made it raw.
pub fn open_pty(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOCTTY)
        .open(path)
}

/// Options for starting a [`Qemu`]; made by [`Qemu::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    monitor: Monitor,
    program: OsString,
    paused: bool,
    args: Vec<OsString>,
    timeout: Duration,
}

impl Builder {
    /// Adds one argument after the harness's own (for example `-name`, then `test-vm`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several arguments after the harness's own.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Passes `-S`: QEMU starts with its (nonexistent) CPUs stopped, and `query-status` reports
    /// `prelaunch` until `cont`. Off by default.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Runs this program instead of [`QEMU_PROGRAM`] (looked up on `PATH` unless it is a path).
    pub fn program(mut self, program: impl AsRef<OsStr>) -> Self {
        self.program = program.as_ref().to_owned();
        self
    }

    /// How long to wait for QEMU to become ready (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts QEMU and waits until its monitor is ready (see the crate documentation).
    pub fn start(self) -> io::Result<Qemu> {
        let dir = make_temp_dir()?;
        // From here on, `Qemu`'s Drop (or this guard) removes the directory.
        let guard = DirGuard(Some(dir.clone()));
        let attempts = if self.monitor == Monitor::Tcp {
            TCP_ATTEMPTS
        } else {
            1
        };
        let mut last_error = None;
        for _ in 0..attempts {
            match self.try_start(&dir) {
                Ok(mut qemu) => {
                    qemu.dir = guard.take();
                    return Ok(qemu);
                }
                Err(Failure::PortTaken(e)) => last_error = Some(e),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("QEMU could not bind a TCP port")))
    }

    fn try_start(&self, dir: &Path) -> Result<Qemu, Failure> {
        let (monitor_args, address) = self.monitor_args(dir).map_err(Failure::Other)?;
        let mut command = Command::new(&self.program);
        command
            .args(["-machine", "none", "-nodefaults", "-display", "none"])
            .args(&monitor_args);
        if self.paused {
            command.arg("-S");
        }
        command
            .args(&self.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| {
            Failure::Other(if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "cannot run {:?}: not found. The end-to-end tests need a real QEMU: \
                         install the Debian package {QEMU_PACKAGE} \
                         (apt-get install {QEMU_PACKAGE})",
                        self.program
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("cannot run {:?}: {e}", self.program))
            })
        })?;
        let output = Arc::new(Mutex::new(Output::default()));
        let readers = vec![
            spawn_reader(child.stdout.take(), Arc::clone(&output), Pipe::Stdout),
            spawn_reader(child.stderr.take(), Arc::clone(&output), Pipe::Stderr),
        ];
        let mut qemu = Qemu {
            child,
            status: None,
            monitor: self.monitor,
            address: address.unwrap_or_else(|| Address::Pty(PathBuf::new())),
            dir: None,
            output,
            readers,
        };
        match qemu.wait_ready(Instant::now() + self.timeout) {
            Ok(()) => Ok(qemu),
            Err(e) => {
                // Drop kills and reaps this QEMU; the directory stays for the next attempt.
                let port_taken = self.monitor == Monitor::Tcp
                    && qemu.status.is_some()
                    && qemu.output().contains("Address already in use");
                Err(if port_taken {
                    Failure::PortTaken(e)
                } else {
                    Failure::Other(e)
                })
            }
        }
    }

    /// The `-qmp`/`-chardev`/`-mon` arguments, and the address (unknown for a pty until QEMU
    /// announces it).
    fn monitor_args(&self, dir: &Path) -> io::Result<(Vec<OsString>, Option<Address>)> {
        let socket = |name: &str| -> io::Result<PathBuf> {
            let path = dir.join(name);
            // sun_path holds 108 bytes including the terminating NUL.
            if path.as_os_str().len() > 107 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("socket path too long for a Unix socket: {}", path.display()),
                ));
            }
            Ok(path)
        };
        Ok(match self.monitor {
            Monitor::Unix => {
                let path = socket("qmp.sock")?;
                let spec = opt_value("unix:", &path, ",server=on,wait=off");
                (vec!["-qmp".into(), spec], Some(Address::Unix(path)))
            }
            Monitor::Tcp => {
                let port = free_port()?;
                let spec = format!("tcp:127.0.0.1:{port},server=on,wait=off");
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                (vec!["-qmp".into(), spec.into()], Some(Address::Tcp(addr)))
            }
            Monitor::ChardevSocket | Monitor::ChardevSocketPretty => {
                let path = socket("mon.sock")?;
                let chardev = opt_value("socket,id=mon0,path=", &path, ",server=on,wait=off");
                let mon = if self.monitor.is_pretty() {
                    "chardev=mon0,mode=control,pretty=on"
                } else {
                    "chardev=mon0,mode=control"
                };
                let args = vec!["-chardev".into(), chardev, "-mon".into(), mon.into()];
                (args, Some(Address::Unix(path)))
            }
            Monitor::Pty => {
                let chardev = format!("pty,id={PTY_LABEL}");
                let mon = format!("chardev={PTY_LABEL},mode=control");
                let args = vec!["-chardev".into(), chardev.into(), "-mon".into(), mon.into()];
                (args, None)
            }
        })
    }
}

/// Why one attempt to start QEMU failed.
enum Failure {
    /// QEMU exited because the TCP port was taken meanwhile: try another port.
    PortTaken(io::Error),
    /// Anything else: give up.
    Other(io::Error),
}

/// A running `qemu-system-x86_64` with one QMP monitor; killed, reaped and cleaned up on drop.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    status: Option<ExitStatus>,
    monitor: Monitor,
    address: Address,
    dir: Option<PathBuf>,
    output: Arc<Mutex<Output>>,
    readers: Vec<JoinHandle<()>>,
}

impl Qemu {
    /// Starts QEMU with this monitor and default options; see [`Builder::start`].
    pub fn start(monitor: Monitor) -> io::Result<Qemu> {
        Qemu::builder(monitor).start()
    }

    /// Options for starting QEMU with this monitor.
    pub fn builder(monitor: Monitor) -> Builder {
        Builder {
            monitor,
            program: QEMU_PROGRAM.into(),
            paused: false,
            args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Where to connect to the monitor.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The kind of monitor this QEMU has.
    pub fn monitor(&self) -> Monitor {
        self.monitor
    }

    /// QEMU's process id (for `/proc/PID/...`; see also [`Qemu::cpu_time`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// QEMU's working directory: a fresh temporary directory, removed on drop. Relative paths
    /// given to QEMU (in extra arguments or in commands) land here.
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or_else(|| Path::new(""))
    }

    /// The CPU time QEMU has used so far (user + system, from `/proc/PID/stat`, in the
    /// kernel's fixed 1/100 s clock ticks), for tests that check that a client does not make
    /// QEMU spin. Fails once QEMU has been reaped.
    pub fn cpu_time(&self) -> io::Result<Duration> {
        if self.status.is_some() {
            return Err(io::Error::other("QEMU has exited"));
        }
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which is in parentheses and may contain spaces:
        // state is field 3, utime field 14, stime field 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> io::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
        };
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_millis(total * 10))
    }

    /// Sends SIGKILL (unless QEMU has already exited) and reaps it; returns its exit status.
    /// Connections to the monitor then see EOF (or a reset).
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if let Some(status) = self.child.try_wait()? {
            self.status = Some(status);
            return Ok(status);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits up to `timeout` for QEMU to exit by itself (after `quit`, say) and reaps it; `None`
    /// if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether QEMU is still running (it is reaped if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Everything QEMU wrote on its standard output and standard error so far, for assertion
    /// messages (QEMU prints warnings and errors there, never QMP traffic).
    pub fn output(&self) -> String {
        let output = lock(&self.output);
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // An error here means the child cannot be waited for; treat it as gone.
            self.status = match self.child.try_wait() {
                Ok(status) => status,
                Err(_) => self.child.wait().ok(),
            };
        }
        self.status
    }

    /// Waits until QEMU is in its main loop and the monitor is reachable.
    fn wait_ready(&mut self, deadline: Instant) -> io::Result<()> {
        // How long a main loop that never settles (a busy vCPU, a client already at work on
        // another monitor) must have been running before QEMU counts as ready.
        const MAIN_LOOP_GRACE: Duration = Duration::from_secs(2);
        // Consecutive polls (5 ms apart) that found QEMU settled, and when its main loop was
        // first seen idle.
        let mut settled = 0;
        let mut main_loop_since = None;
        loop {
            if let Some(status) = self.try_status() {
                // Let the readers collect QEMU's last words before quoting them.
                self.join_readers();
                return Err(io::Error::other(format!(
                    "QEMU exited during start-up ({status}) with a {:?} monitor; its output:\n{}",
                    self.monitor,
                    self.output()
                )));
            }
            let now = Instant::now();
            let ready = match progress(self.pid()) {
                Progress::Starting => {
                    // Before the main loop, the main thread runs QEMU's set-up. In the main
                    // loop it also runs, between waits: serving a client that found the
                    // monitor already (a reconnecting client does), so once the main loop has
                    // been seen, a running main thread does not start the clock again.
                    settled = 0;
                    main_loop_since.is_some_and(|since| now - since >= MAIN_LOOP_GRACE)
                }
                Progress::MainLoop => {
                    // A busy vCPU (a guest given in extra arguments) never lets QEMU settle:
                    // then a main loop seen 2 s ago has to do.
                    settled = 0;
                    now - *main_loop_since.get_or_insert(now) >= MAIN_LOOP_GRACE
                }
                Progress::Settled => {
                    main_loop_since.get_or_insert(now);
                    settled += 1;
                    settled >= 2
                }
                // /proc gives nothing away here: rely on the monitor being reachable.
                Progress::Unknown => true,
            };
            if ready && self.monitor_reachable() {
                return Ok(());
            }
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "QEMU's {:?} monitor ({}) was not ready within the time limit; \
                         QEMU's output so far:\n{}",
                        self.monitor,
                        self.address,
                        self.output()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Socket monitors: a probe connection succeeds. Pty: QEMU has announced the pty path.
    fn monitor_reachable(&mut self) -> bool {
        match &self.address {
            Address::Unix(path) => UnixStream::connect(path).is_ok(),
            Address::Tcp(addr) => TcpStream::connect_timeout(addr, Duration::from_secs(1)).is_ok(),
            Address::Pty(_) => match lock(&self.output).pty.clone() {
                Some(path) => {
                    self.address = Address::Pty(path);
                    true
                }
                None => false,
            },
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.kill();
        self.join_readers();
        if let Some(dir) = self.dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// What QEMU printed, and the pty path once announced.
#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pty: Option<PathBuf>,
}

#[derive(Clone, Copy)]
enum Pipe {
    Stdout,
    Stderr,
}

/// Copies one of QEMU's output pipes into `output` (so QEMU never blocks on a full pipe),
/// line by line, noting the pty announcement.
fn spawn_reader<R>(pipe: Option<R>, output: Arc<Mutex<Output>>, which: Pipe) -> JoinHandle<()>
where
    R: Read + Send + 'static,
{
    thread::spawn(move || {
        let Some(pipe) = pipe else { return };
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut output = lock(&output);
            if output.pty.is_none() {
                output.pty = pty_announcement(&line);
            }
            match which {
                Pipe::Stdout => output.stdout.extend_from_slice(&line),
                Pipe::Stderr => output.stderr.extend_from_slice(&line),
            }
        }
    })
}

/// The path in `char device redirected to /dev/pts/N (label ser0)`, if `line` is that line.
fn pty_announcement(line: &[u8]) -> Option<PathBuf> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let rest = line.strip_prefix("char device redirected to ")?;
    let path = rest.strip_suffix(&format!(" (label {PTY_LABEL})"))?;
    Some(PathBuf::from(path))
}

/// How far QEMU has got after start-up, as far as `/proc` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The main thread is not yet idle in its main loop.
    Starting,
    /// The main thread is idle in its main loop (blocked in `ppoll`), but another thread is
    /// running: the monitor I/O thread may not have attached the monitors yet, or (with extra
    /// arguments that give QEMU a running guest) a vCPU is busy.
    MainLoop,
    /// Every thread is blocked: QEMU has nothing left to do.
    Settled,
    /// `/proc` does not tell.
    Unknown,
}

/// Reads how far QEMU has got. The monitor I/O thread matters: QEMU 7.2 attaches a QMP
/// monitor to its chardev in a bottom half on that thread, after the main thread has moved on,
/// and a client that opens a pty before that gets two greetings. A thread that was woken to run
/// the bottom half shows as running until it has, and blocks again only after.
fn progress(pid: u32) -> Progress {
    // ppoll's syscall number; QEMU's main loop waits in ppoll (qemu_poll_ns).
    #[cfg(target_arch = "x86_64")]
    const PPOLL: Option<u64> = Some(271);
    #[cfg(any(
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64"
    ))]
    const PPOLL: Option<u64> = Some(73);
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64"
    )))]
    const PPOLL: Option<u64> = None;

    let task = PathBuf::from(format!("/proc/{pid}/task"));
    let main = task.join(pid.to_string());
    let main_idle = match (PPOLL, blocked_in(&main)) {
        (Some(ppoll), Some(Blocked::In(nr))) => nr == ppoll,
        (_, Some(Blocked::No)) => false,
        // Blocked, but the syscall is not known here: wchan must name a poll function.
        (_, Some(Blocked::In(_) | Blocked::Unknown)) => {
            match fs::read_to_string(main.join("wchan")) {
                Ok(wchan) => wchan.contains("poll"),
                Err(_) => return Progress::Unknown,
            }
        }
        (_, None) => return Progress::Unknown,
    };
    if !main_idle {
        return Progress::Starting;
    }
    let Ok(threads) = fs::read_dir(&task) else {
        return Progress::Unknown;
    };
    for thread in threads.flatten() {
        // A thread that has exited meanwhile (None) does not count.
        if let Some(Blocked::No) = blocked_in(&thread.path()) {
            return Progress::MainLoop;
        }
    }
    Progress::Settled
}

/// What `/proc/PID/task/TID` says a thread is doing.
enum Blocked {
    /// Running or runnable.
    No,
    /// Blocked in this system call.
    In(u64),
    /// Sleeping, in a system call this process may not see.
    Unknown,
}

fn blocked_in(task: &Path) -> Option<Blocked> {
    if let Ok(syscall) = fs::read_to_string(task.join("syscall")) {
        // "NR args..." while blocked in a syscall; "running"; or "-1 ..." if blocked outside one.
        return Some(match syscall.split_whitespace().next() {
            Some("running") | None => Blocked::No,
            Some(nr) => match nr.parse() {
                Ok(nr) => Blocked::In(nr),
                Err(_) => Blocked::Unknown,
            },
        });
    }
    // wchan is "0" for a running thread, else the kernel function it sleeps in.
    let wchan = fs::read_to_string(task.join("wchan")).ok()?;
    Some(match wchan.trim() {
        "" | "0" => Blocked::No,
        _ => Blocked::Unknown,
    })
}

/// `prefix` + `path` (with commas doubled, as QEMU's option syntax wants) + `suffix`.
fn opt_value(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut value = OsString::from(prefix);
    if path.as_os_str().as_encoded_bytes().contains(&b',') {
        value.push(path.to_string_lossy().replace(',', ",,"));
    } else {
        value.push(path.as_os_str());
    }
    value.push(suffix);
    value
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A new, empty directory under the system temporary directory, named after this process,
/// a counter and the time.
fn make_temp_dir() -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "qmp-e2e-{}-{n}-{:x}",
            std::process::id(),
            nanos & 0xffff_ffff
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", dir.display()),
                ));
            }
        }
    }
}

/// Removes the temporary directory unless ownership moved on to a [`Qemu`].
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn take(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn lock(output: &Mutex<Output>) -> std::sync::MutexGuard<'_, Output> {
    output
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
