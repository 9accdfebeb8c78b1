//! Shared code for the example programs `qmp-shell` and `vm-info`.
//!
//! - [`Address`]: where the QMP server is, parsed from a command-line argument (a Unix socket
//!   path or `HOST:PORT`), and [`connect`] to reach it with the client's [`qmp_std::Options`].
//! - [`ThrowawayQemu`]: a `qemu-system-x86_64 -machine none` started on a temporary Unix
//!   socket when the user names no address, stopped (and its directory removed) when it is
//!   dropped, when [`ThrowawayQemu::stop`] is called, or on Ctrl-C ([`exit_on_signal`]). It
//!   is deliberately small; the end-to-end test harness in `tests/` is the full-featured
//!   one.
//! - JSON output in the style QEMU's own tools print it: [`json_line`] (one line, with
//!   QEMU's `", "` and `": "` separators and the QMP envelope members in wire order) and
//!   [`json_pretty`] (4-space indents, sorted keys), plus [`reply_json`], [`event_json`] and
//!   [`error_json`] to turn client results back into QMP messages.
//! - [`Table`] for aligned text columns; [`describe_error`] and [`io_message`] for one-line
//!   error messages, and [`print_error`] and [`print_out`], which never panic (with the
//!   workspace's `panic = "abort"`, a panic skips every cleanup).
//! - [`exit_on_signal`] and [`wait_if_exiting`] to clean up on Ctrl-C.
//! - [`shell_schema`]: `qmp-shell`'s completion and `help` from the server's schema.
//!
//! ```no_run
//! use qmp_examples::{Address, ThrowawayQemu, connect};
//! use qmp_std::Options;
//!
//! // Either the user's address, or a QEMU of our own that goes away with `qemu`.
//! let (address, qemu) = match std::env::args().nth(1) {
//!     Some(arg) => (Address::parse(&arg)?, None),
//!     None => {
//!         let qemu = ThrowawayQemu::start()?;
//!         (qemu.address(), Some(qemu))
//!     }
//! };
//! let mut client = match &qemu {
//!     Some(qemu) => qemu.connect(Options::default())?,
//!     None => connect(&address, Options::default())?,
//! };
//! println!("{}", client.hmp("info status")?.trim_end());
//! drop(qemu);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::{OsStr, OsString};
use std::fmt::{self, Write as _};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qmp_std::serde_json::{Map, Value};
use qmp_std::{Client, ClientBuilder, Event, QmpError};

mod tls;
pub use tls::{TLS_USAGE, TlsArgs, parse_with_tls};
pub mod agent_shell;
pub mod args;
pub mod shell_schema;

// ---- addresses ---------------------------------------------------------------------------

/// Where a QMP server listens: a Unix socket or a TCP address.
///
/// Parsed from the forms QEMU's own `qmp-shell` takes, plus QEMU's `unix:` and `tcp:`
/// prefixes: see [`Address::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix socket at this path (`-qmp unix:PATH,server=on,wait=off`).
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT` (`-qmp tcp:HOST:PORT,server=on,wait=off`); `HOST` may be a
    /// name, an IPv4 address or a bracketed IPv6 address.
    Tcp {
        /// The host name or address (IPv6 without the brackets).
        host: String,
        /// The port.
        port: u16,
    },
    /// A TLS monitor, `tls:HOST:PORT` or `HOST:PORT` with TLS options (see [`TlsArgs`]).
    Tls {
        /// The host name or address (IPv6 without the brackets).
        host: String,
        /// The port.
        port: u16,
        /// How to check the server and present the client.
        tls: TlsArgs,
    },
}

/// Why a command-line address is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError(String);

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressError {}

impl Address {
    /// Parses a command-line address:
    ///
    /// - `unix:PATH` or anything containing a `/` is a Unix socket path;
    /// - `tcp:HOST:PORT`, or `HOST:PORT` where `PORT` is a number, is a TCP address (`HOST` may
    ///   be `[IPv6]`);
    /// - `tls:HOST:PORT` is a TLS monitor ([`TlsArgs::apply`] adds the `--tls-*` options);
    /// - anything else is a Unix socket path relative to the current directory.
    ///
    /// ```
    /// use qmp_examples::Address;
    /// assert_eq!(Address::parse("/tmp/qmp.sock")?, Address::Unix("/tmp/qmp.sock".into()));
    /// assert_eq!(Address::parse("qmp.sock")?, Address::Unix("qmp.sock".into()));
    /// assert_eq!(
    ///     Address::parse("localhost:4444")?,
    ///     Address::Tcp { host: "localhost".into(), port: 4444 }
    /// );
    /// assert_eq!(Address::parse("[::1]:4444")?.to_string(), "[::1]:4444");
    /// assert!(Address::parse("localhost:99999").is_err());
    /// # Ok::<(), qmp_examples::AddressError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() {
            return Err(AddressError("empty address".into()));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError("unix: needs a socket path".into()));
            }
            return Ok(Address::Unix(path.into()));
        }
        if let Some(rest) = text.strip_prefix("tls:") {
            return match Self::parse_tcp(rest)? {
                Some(Address::Tcp { host, port }) => Ok(Address::Tls {
                    host,
                    port,
                    tls: TlsArgs::default(),
                }),
                _ => Err(AddressError("expected tls:HOST:PORT".into())),
            };
        }
        if let Some(rest) = text.strip_prefix("tcp:") {
            return Self::parse_tcp(rest)?
                .ok_or_else(|| AddressError("expected tcp:HOST:PORT".into()));
        }
        if text.contains('/') {
            return Ok(Address::Unix(text.into()));
        }
        check_port(text)?;
        Ok(Self::parse_tcp(text)?.unwrap_or_else(|| Address::Unix(text.into())))
    }

    /// `HOST:PORT` with a numeric port; `Ok(None)` if `text` does not have that shape.
    fn parse_tcp(text: &str) -> Result<Option<Address>, AddressError> {
        let Some((host, port)) = text.rsplit_once(':') else {
            return Ok(None);
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| AddressError("unbalanced [".into()))?,
            None => host,
        };
        if host.is_empty() {
            return Err(AddressError("no host name".into()));
        }
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Some(Address::Tcp {
                host: host.to_owned(),
                port,
            })),
            _ => Err(AddressError(format!("bad port {port:?} (1 to 65535)"))),
        }
    }
}

/// `HOST:PORT` whose `PORT` is no number (`localhost:abc`) is a mistyped TCP address, not a
/// Unix socket path (write `./NAME:X` or `unix:NAME:X` for such a path).
fn check_port(text: &str) -> Result<(), AddressError> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Ok(());
    };
    if host.is_empty() || port.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    Err(AddressError(format!(
        "bad port {port:?} in HOST:PORT (a Unix socket path with a colon: ./{text} or unix:{text})"
    )))
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Tls { host, port, .. } if host.contains(':') => {
                write!(f, "tls:[{host}]:{port}")
            }
            Address::Tls { host, port, .. } => write!(f, "tls:{host}:{port}"),
        }
    }
}

// ---- connecting --------------------------------------------------------------------------

/// A connected Unix or TCP socket, as a [`qmp_std::Stream`] (with timeouts and
/// `SIGPIPE`-free writes) whose descriptor can be polled.
#[derive(Debug)]
pub enum Connection {
    /// A Unix stream socket.
    Unix(UnixStream),
    /// A TCP socket.
    Tcp(TcpStream),
    /// A TLS connection over TCP.
    Tls(qmp_std::tls::TlsStream),
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(s) => s.read(buf),
            Connection::Tcp(s) => s.read(buf),
            Connection::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(s) => s.write(buf),
            Connection::Tcp(s) => s.write(buf),
            Connection::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

impl qmp_std::Stream for Connection {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        match self {
            Connection::Unix(s) => qmp_std::Stream::set_read_timeout(s, timeout),
            Connection::Tcp(s) => qmp_std::Stream::set_read_timeout(s, timeout),
            Connection::Tls(s) => qmp_std::Stream::set_read_timeout(s, timeout),
        }
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        match self {
            Connection::Unix(s) => qmp_std::Stream::set_write_timeout(s, timeout),
            Connection::Tcp(s) => qmp_std::Stream::set_write_timeout(s, timeout),
            Connection::Tls(s) => qmp_std::Stream::set_write_timeout(s, timeout),
        }
    }

    fn write_message(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Connection::Unix(s) => qmp_std::Stream::write_message(s, bytes),
            Connection::Tcp(s) => qmp_std::Stream::write_message(s, bytes),
            Connection::Tls(s) => qmp_std::Stream::write_message(s, bytes),
        }
    }

    fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(s) => qmp_std::Stream::write_some(s, bytes),
            Connection::Tcp(s) => qmp_std::Stream::write_some(s, bytes),
            Connection::Tls(s) => qmp_std::Stream::write_some(s, bytes),
        }
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Connection::Unix(s) => s.as_fd(),
            Connection::Tcp(s) => s.as_fd(),
            Connection::Tls(s) => s.tcp().as_fd(),
        }
    }
}

/// Why [`connect`] failed: says which address and why, in one line
/// (`cannot connect to /tmp/x.sock: No such file or directory`).
#[derive(Debug)]
pub struct ConnectError {
    /// The address, as the user wrote it (or as [`Address`] displays it).
    pub address: String,
    /// What went wrong, for people.
    pub reason: String,
    /// The underlying client error, when there is one.
    pub source: Option<qmp_std::Error>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect to {}: {}", self.address, self.reason)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl ConnectError {
    fn new(address: &Address, options: &qmp_std::Options, error: qmp_std::Error) -> Self {
        let reason = match &error {
            qmp_std::Error::Io(e) => io_message(e),
            qmp_std::Error::Timeout(_) => match options.connect_timeout {
                Some(t) => format!(
                    "no QMP greeting within {} s (is another client connected?)",
                    t.as_secs_f64()
                ),
                None => "no QMP greeting".to_owned(),
            },
            qmp_std::Error::Disconnected => {
                "the server closed the connection during the handshake".to_owned()
            }
            qmp_std::Error::Qmp(e) => format!("capabilities negotiation failed: {e}"),
            other => describe_error(other),
        };
        ConnectError {
            address: address.to_string(),
            reason,
            source: Some(error),
        }
    }
}

/// Connects to `address` and does the QMP handshake with `options` (timeouts, `negotiate`,
/// …; see [`qmp_std::Options`]). Nagle's algorithm is off on TCP.
pub fn connect(
    address: &Address,
    options: qmp_std::Options,
) -> Result<Client<Connection>, ConnectError> {
    connect_with(address, options, |stream| stream)
}

/// Like [`connect`], with the connected socket wrapped by `wrap` before the handshake (to
/// record the session with [`qmp_std::transcript::Recorder`], say).
pub fn connect_with<T: qmp_std::Stream>(
    address: &Address,
    options: qmp_std::Options,
    wrap: impl FnOnce(Connection) -> T,
) -> Result<Client<T>, ConnectError> {
    let fail = |e: qmp_std::Error| ConnectError::new(address, &options, e);
    let stream = match address {
        Address::Unix(_) | Address::Tcp { .. } => connect_socket(address, options.connect_timeout)
            .expect("not TLS")
            .map_err(|e| fail(e.into()))?,
        Address::Tls { host, port, tls } => {
            let addr = Address::Tcp {
                host: host.clone(),
                port: *port,
            };
            let stream = qmp_std::tls::TlsStream::connect(
                &addr.to_string(),
                &tls.config(),
                options.connect_timeout,
            )
            .map_err(fail)?;
            Connection::Tls(stream)
        }
    };
    ClientBuilder::with_options(options.clone())
        .handshake(wrap(stream))
        .map_err(fail)
}

/// Connects to a Unix or TCP `address` (TCP within `timeout`, Nagle's algorithm off);
/// `None` for a TLS address, which needs a handshake of its own.
pub fn connect_socket(
    address: &Address,
    timeout: Option<Duration>,
) -> Option<io::Result<Connection>> {
    Some(match address {
        Address::Unix(path) => UnixStream::connect(path).map(Connection::Unix),
        Address::Tcp { host, port } => connect_tcp(host, *port, timeout).map(Connection::Tcp),
        Address::Tls { .. } => return None,
    })
}

fn connect_tcp(host: &str, port: u16, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let start = Instant::now();
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let connected = match timeout {
            Some(t) => TcpStream::connect_timeout(&addr, t.saturating_sub(start.elapsed())),
            None => TcpStream::connect(addr),
        };
        match connected {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host name has no address")))
}

// ---- a throwaway QEMU --------------------------------------------------------------------

/// The QEMU binary [`ThrowawayQemu::start`] runs.
pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// How long [`ThrowawayQemu::start`] waits for the monitor socket to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `qemu-system-x86_64 -machine none -nodefaults -display none` with a QMP monitor on a Unix
/// socket in a fresh temporary directory, for when the user names no QEMU to talk to.
///
/// It has no guest, no disks and no network (`query-status` says `running`). Its standard
/// output and error go to `qemu.log` in the directory, quoted if it fails to start. It runs
/// in its own process group, so a Ctrl-C on the terminal reaches only the program that
/// started it, which then stops it; if that program dies without cleaning up, QEMU gets
/// `SIGTERM` (Linux's parent-death signal).
///
/// Stopping (on [`drop`](Drop), [`ThrowawayQemu::stop`] or [`Stopper::stop`], whichever comes
/// first) sends `SIGTERM`, waits up to 2 s, then `SIGKILL`s, reaps it and removes the
/// directory.
#[derive(Debug)]
pub struct ThrowawayQemu {
    stopper: Stopper,
    socket: PathBuf,
    pid: u32,
}

/// Stops a [`ThrowawayQemu`] from anywhere, such as another thread; cloneable and
/// idempotent.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Mutex<Option<Running>>>);

#[derive(Debug)]
struct Running {
    child: Child,
    dir: PathBuf,
}

/// Why a [`ThrowawayQemu`] could not be started: one line, with QEMU's own first words when
/// it said any.
#[derive(Debug)]
pub struct LaunchError(String);

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LaunchError {}

impl ThrowawayQemu {
    /// Starts [`QEMU_PROGRAM`] and waits (up to [`START_TIMEOUT`]) until its monitor socket
    /// accepts connections.
    pub fn start() -> Result<ThrowawayQemu, LaunchError> {
        Self::start_program(QEMU_PROGRAM, &[] as &[&str])
    }

    /// Like [`ThrowawayQemu::start`], running `program` with `extra` arguments after the
    /// usual ones.
    pub fn start_program(
        program: impl AsRef<OsStr>,
        extra: &[impl AsRef<OsStr>],
    ) -> Result<ThrowawayQemu, LaunchError> {
        let usual = ["-machine", "none", "-nodefaults", "-display", "none"];
        Self::launch(program.as_ref(), &usual, extra)
    }

    /// Runs the user's own QEMU command line, `program` with `args`, adding only the QMP
    /// monitor (as QEMU's `qmp-shell-wrap` does); otherwise like [`ThrowawayQemu::start`].
    pub fn wrap(
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
    ) -> Result<ThrowawayQemu, LaunchError> {
        Self::launch(program.as_ref(), &[], args)
    }

    fn launch(
        program: &OsStr,
        usual: &[&str],
        extra: &[impl AsRef<OsStr>],
    ) -> Result<ThrowawayQemu, LaunchError> {
        let name = program.to_string_lossy();
        let dir = make_temp_dir().map_err(|e| {
            LaunchError(format!(
                "cannot create a temporary directory in {}: {}",
                std::env::temp_dir().display(),
                io_message(&e)
            ))
        })?;
        let socket = dir.join("qmp.sock");
        let log = dir.join("qemu.log");
        let spawned = File::create(&log).and_then(|out| {
            let err = out.try_clone()?;
            // QEMU's option syntax: a comma in a value is written twice.
            let mut qmp = OsString::from("unix:");
            let path = socket.as_os_str().as_encoded_bytes();
            if path.contains(&b',') {
                qmp.push(socket.to_string_lossy().replace(',', ",,"));
            } else {
                qmp.push(socket.as_os_str());
            }
            qmp.push(",server=on,wait=off");
            let mut command = Command::new(program);
            command
                .args(usual)
                .arg("-qmp")
                .arg(qmp)
                .args(extra)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0);
            stop_with_parent(&mut command);
            command.spawn()
        });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                let hint = if e.kind() == io::ErrorKind::NotFound {
                    " (install the Debian package qemu-system-x86)"
                } else {
                    ""
                };
                return Err(LaunchError(format!(
                    "cannot run {name}: {}{hint}",
                    io_message(&e)
                )));
            }
        };
        let qemu = ThrowawayQemu {
            pid: child.id(),
            stopper: Stopper(Arc::new(Mutex::new(Some(Running { child, dir })))),
            socket,
        };
        lock_launched().push(Arc::downgrade(&qemu.stopper.0));
        qemu.wait_ready(&name, &log)?;
        Ok(qemu)
    }

    /// Waits until the socket accepts a connection, or QEMU exits, or time runs out.
    fn wait_ready(&self, name: &str, log: &Path) -> Result<(), LaunchError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.stopper.lock().as_mut() {
                Some(running) => running.child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                let said = first_line(log);
                self.stop();
                return Err(LaunchError(match said {
                    Some(line) => format!("{name} exited during start-up ({status}): {line}"),
                    None => format!("{name} exited during start-up ({status})"),
                }));
            }
            // A probe connection, closed at once: QEMU then greets the next client afresh.
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(LaunchError(format!(
                    "{name} did not open its QMP socket within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The monitor's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects to the monitor and does the handshake with `options`, like [`connect`].
    ///
    /// QEMU 7.2 attaches the monitor to its socket a little after it starts listening, and a
    /// client that connects in between can wait forever for the greeting (seen with many
    /// QEMUs starting at once on a loaded machine). So a greeting that does not come within
    /// a second is given up on and the connection made again, with longer waits, for up to
    /// [`START_TIMEOUT`] or the connect timeout in `options`, whichever is longer.
    pub fn connect(&self, options: qmp_std::Options) -> Result<Client<Connection>, ConnectError> {
        self.connect_with(options, |stream| stream)
    }

    /// Like [`ThrowawayQemu::connect`], each connection wrapped by `wrap` before the
    /// handshake (see [`connect_with`]).
    pub fn connect_with<T: qmp_std::Stream>(
        &self,
        options: qmp_std::Options,
        wrap: impl Fn(Connection) -> T,
    ) -> Result<Client<T>, ConnectError> {
        let address = self.address();
        let limit = options
            .connect_timeout
            .unwrap_or(START_TIMEOUT)
            .max(START_TIMEOUT);
        let deadline = Instant::now() + limit;
        let mut wait = Duration::from_secs(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut attempt = options.clone();
            attempt.connect_timeout = Some(wait.min(left));
            match connect_with(&address, attempt, &wrap) {
                Err(e) if matches!(e.source, Some(qmp_std::Error::Timeout(_))) && left > wait => {
                    wait *= 2;
                }
                Err(mut e) if matches!(e.source, Some(qmp_std::Error::Timeout(_))) => {
                    e.reason = format!("no QMP greeting within {} s", limit.as_secs());
                    return Err(e);
                }
                result => return result,
            }
        }
    }

    /// The monitor's address, for [`connect`] (but see [`ThrowawayQemu::connect`]).
    pub fn address(&self) -> Address {
        Address::Unix(self.socket.clone())
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle that stops this QEMU from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops QEMU now and removes its directory (also done on drop).
    pub fn stop(&self) {
        self.stopper.stop();
    }
}

impl Drop for ThrowawayQemu {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Stopper {
    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops QEMU (`SIGTERM`, up to 2 s, then `SIGKILL`), reaps it and removes its
    /// directory; does nothing the second time. A call made while another is under way
    /// returns once that one has finished.
    pub fn stop(&self) {
        let mut state = self.lock();
        let Some(running) = state.as_mut() else {
            return;
        };
        if let Ok(None) = running.child.try_wait() {
            terminate(&running.child);
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(running.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Ok(None) = running.child.try_wait() {
                let _ = running.child.kill();
            }
        }
        let _ = running.child.wait();
        let _ = fs::remove_dir_all(&running.dir);
        *state = None;
    }
}

/// Every [`ThrowawayQemu`] this process started, for [`stop_all`].
static LAUNCHED: Mutex<Vec<Weak<Mutex<Option<Running>>>>> = Mutex::new(Vec::new());

fn lock_launched() -> MutexGuard<'static, Vec<Weak<Mutex<Option<Running>>>>> {
    let mut launched = LAUNCHED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    launched.retain(|w| w.strong_count() > 0);
    launched
}

/// Stops every [`ThrowawayQemu`] of this process that is still running, as
/// [`ThrowawayQemu::stop`] does ([`exit_on_signal`] calls it).
pub fn stop_all() {
    let launched: Vec<_> = lock_launched().iter().filter_map(Weak::upgrade).collect();
    for state in launched {
        Stopper(state).stop();
    }
}

/// Sends `SIGTERM` to a child that has not been reaped (so its pid is still its own).
fn terminate(child: &Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Makes the child get `SIGTERM` if this process dies first (`PR_SET_PDEATHSIG`).
#[allow(unsafe_code)]
fn stop_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; it only makes one raw
    // `prctl` system call (rustix's linux_raw backend: no allocation, no locks), which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(io::Error::from)
        });
    }
}

fn first_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.to_owned())
}

/// A new directory, private to this user, under the system temporary directory.
fn make_temp_dir() -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("qmp-examples-{}-{n}-{nanos:x}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            result => return result.map(|()| dir),
        }
    }
}

// ---- signals -----------------------------------------------------------------------------

/// Set once a termination signal arrived (see [`exit_on_signal`]).
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// On `SIGINT`, `SIGTERM` or `SIGHUP`: on a background thread, stops every
/// [`ThrowawayQemu`] (see [`stop_all`]), runs `cleanup`, and exits with status 128 + the
/// signal number (130 for Ctrl-C), as a shell reports a death by signal.
///
/// For programs whose cleanup must happen whatever the main thread is blocked on; install
/// it before starting a QEMU. The main thread may notice the cleanup's effects (QEMU going away) before
/// the process exits: it should call [`wait_if_exiting`] before reporting a failure or
/// returning from `main`. Fails only if the handlers cannot be installed.
pub fn exit_on_signal(cleanup: impl FnOnce() + Send + 'static) -> io::Result<()> {
    exit_on_signal_unless(|_| false, cleanup)
}

/// Like [`exit_on_signal`], except for a signal that `divert` takes (returns `true` for):
/// the program goes on (to cancel a command on Ctrl-C, say). `divert` runs on the signal
/// thread.
pub fn exit_on_signal_unless(
    divert: impl Fn(i32) -> bool + Send + 'static,
    cleanup: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().find(|&signal| !divert(signal)) {
                EXITING.store(true, Ordering::SeqCst);
                stop_all();
                cleanup();
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// If a signal handled by [`exit_on_signal`] arrived, blocks until its thread exits the
/// process; otherwise returns at once.
pub fn wait_if_exiting() {
    while EXITING.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

// ---- messages ----------------------------------------------------------------------------

/// Raises this process's limit on open files (to 65,536 if allowed, else to the hard limit):
/// the fleet programs hold 10,000 monitors' connections (and the fake fleet their listeners).
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // Root may raise the hard limit too; anyone may raise the soft one to the hard one.
    let wanted = Some(limit.maximum.unwrap_or(u64::MAX).max(1 << 16));
    let raised = rustix::process::Rlimit {
        current: wanted,
        maximum: wanted,
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Prints `PROGRAM: MESSAGE` on standard error. Unlike `eprintln!`, it does not panic when
/// standard error is gone (a closed terminal, say), which with `panic = "abort"` would skip
/// all cleanup.
pub fn print_error(program: &str, message: impl fmt::Display) {
    let _ = writeln!(io::stderr(), "{program}: {message}");
}

/// Writes `text` to standard output and flushes it; unlike `print!`, reports a closed
/// standard output as an error instead of panicking.
pub fn print_out(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// An I/O error as people read it: `No such file or directory`, without Rust's
/// ` (os error 2)` suffix.
pub fn io_message(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// A client error in one line, for people.
pub fn describe_error(error: &qmp_std::Error) -> String {
    match error {
        qmp_std::Error::Io(e) => format!("I/O error: {}", io_message(e)),
        qmp_std::Error::Disconnected => "the QMP server closed the connection".to_owned(),
        other => other.to_string(),
    }
}

// ---- JSON output -------------------------------------------------------------------------

/// `{"class": …, "desc": …}`, QEMU's error object.
pub fn error_json(error: &QmpError) -> Value {
    let mut object = Map::new();
    object.insert("class".into(), Value::String(error.class.clone()));
    object.insert("desc".into(), Value::String(error.desc.clone()));
    Value::Object(object)
}

/// A command's outcome as the QMP reply it came in: `{"return": …}` or `{"error": {…}}`.
pub fn reply_json(result: &Result<Value, QmpError>) -> Value {
    let (key, value) = match result {
        Ok(value) => ("return", value.clone()),
        Err(e) => ("error", error_json(e)),
    };
    let mut object = Map::new();
    object.insert(key.into(), value);
    Value::Object(object)
}

/// An event as the QMP message it came in: `{"timestamp": {…}, "event": …, "data": …}`
/// (`data` only when it had one).
pub fn event_json(event: &Event) -> Value {
    let mut timestamp = Map::new();
    timestamp.insert("seconds".into(), event.timestamp.seconds.into());
    timestamp.insert("microseconds".into(), event.timestamp.microseconds.into());
    let mut object = Map::new();
    object.insert("timestamp".into(), Value::Object(timestamp));
    object.insert("event".into(), Value::String(event.name.clone()));
    if let Some(data) = &event.data {
        object.insert("data".into(), data.clone());
    }
    Value::Object(object)
}

/// The order QEMU writes a message's top-level members (and a timestamp's) in; others follow,
/// sorted.
const QMP_ORDER: [&str; 12] = [
    "QMP",
    "timestamp",
    "seconds",
    "microseconds",
    "event",
    "data",
    "execute",
    "exec-oob",
    "arguments",
    "return",
    "error",
    "id",
];

/// `value` as one line of JSON with QEMU's separators (`", "`, `": "`), the way QEMU and its
/// `qmp-shell` print messages. The members of a top-level object come in QMP's order
/// (`timestamp` with `seconds` then `microseconds`, `event`, `data`; `execute`, `arguments`,
/// `id`; `return` or `error`, then `id`); those of nested objects in sorted order.
///
/// ```
/// use qmp_std::serde_json::json;
/// let reply = json!({"id": "a", "return": {"status": "running", "running": true}});
/// assert_eq!(
///     qmp_examples::json_line(&reply),
///     r#"{"return": {"running": true, "status": "running"}, "id": "a"}"#
/// );
/// ```
pub fn json_line(value: &Value) -> String {
    let mut out = String::new();
    write_ordered(&mut out, value, true);
    out
}

/// Writes an object's members in QMP's order (`top`: the envelope's, else a timestamp's).
fn write_ordered(out: &mut String, value: &Value, top: bool) {
    let Value::Object(object) = value else {
        return write_json(out, value, None);
    };
    out.push('{');
    for (i, (key, value)) in qmp_order(object).into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_string(out, key);
        out.push_str(": ");
        if top && key == "timestamp" {
            write_ordered(out, value, false);
        } else {
            write_json(out, value, None);
        }
    }
    out.push('}');
}

/// `value` pretty-printed as QEMU's `qmp-shell -p` does: 4-space indents, keys sorted.
///
/// ```
/// use qmp_std::serde_json::json;
/// let reply = json!({"return": {"status": "running", "running": true}});
/// assert_eq!(
///     qmp_examples::json_pretty(&reply),
///     "{\n    \"return\": {\n        \"running\": true,\n        \"status\": \"running\"\n    }\n}"
/// );
/// ```
pub fn json_pretty(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value, Some(0));
    out
}

fn qmp_order(object: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let rank = |key: &str| {
        QMP_ORDER
            .iter()
            .position(|k| *k == key)
            .unwrap_or(QMP_ORDER.len())
    };
    let mut members: Vec<_> = object.iter().collect();
    // Stable: the members QMP_ORDER does not name stay sorted by key, after the others.
    members.sort_by_key(|(key, _)| rank(key));
    members
}

/// Writes `value`; `indent` is `None` for one line, or the current depth when pretty.
fn write_json(out: &mut String, value: &Value, indent: Option<usize>) {
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("    ", depth));
    };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                if let Some(depth) = indent {
                    newline(out, depth + 1);
                }
                write_json(out, item, indent.map(|d| d + 1));
            }
            if let Some(depth) = indent {
                newline(out, depth);
            }
            out.push(']');
        }
        Value::Object(members) if members.is_empty() => out.push_str("{}"),
        Value::Object(members) => {
            out.push('{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                if let Some(depth) = indent {
                    newline(out, depth + 1);
                }
                write_string(out, key);
                out.push_str(": ");
                write_json(out, item, indent.map(|d| d + 1));
            }
            if let Some(depth) = indent {
                newline(out, depth);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    // serde_json escapes exactly what JSON requires.
    match qmp_std::serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

// ---- JSON as received ----------------------------------------------------------------------

/// A message's JSON text as one line with QEMU's separators (`", "`, `": "`), keeping the
/// members in the order they came and every string and number exactly as written (so a
/// reply from QEMU's default monitor prints as QEMU sent it); `None` if `text` is not JSON.
///
/// ```
/// let wire = "{\"return\":{\"status\":\"running\",\"running\":true},\"id\":2}";
/// assert_eq!(
///     qmp_examples::wire_json_line(wire).unwrap(),
///     r#"{"return": {"status": "running", "running": true}, "id": 2}"#
/// );
/// ```
pub fn wire_json_line(text: &str) -> Option<String> {
    let value = qmp_std::qmp_proto::RawJson::parse(text).ok()?;
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    write_wire(&mut out, value, None);
    Some(out)
}

/// A message's JSON text pretty-printed with 4-space indents, keeping the members in the
/// order they came (see [`wire_json_line`]); `None` if `text` is not JSON.
///
/// ```
/// assert_eq!(
///     qmp_examples::wire_json_pretty(r#"{"return": {"b": [1], "a": {}}}"#).unwrap(),
///     "{\n    \"return\": {\n        \"b\": [\n            1\n        ],\n        \"a\": {}\n    }\n}"
/// );
/// ```
pub fn wire_json_pretty(text: &str) -> Option<String> {
    let value = qmp_std::qmp_proto::RawJson::parse(text).ok()?;
    let mut out = String::with_capacity(text.len() * 2);
    write_wire(&mut out, value, Some(0));
    Some(out)
}

fn write_wire(out: &mut String, value: qmp_std::qmp_proto::RawJson<'_>, indent: Option<usize>) {
    use qmp_std::qmp_proto::JsonKind;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("    ", depth));
    };
    let (open, close) = match value.kind() {
        JsonKind::Object => ('{', '}'),
        JsonKind::Array => ('[', ']'),
        _ => return out.push_str(value.as_json()),
    };
    out.push(open);
    let mut first = true;
    let mut item = |out: &mut String, key: Option<&str>, item| {
        if !first {
            out.push(',');
            if indent.is_none() {
                out.push(' ');
            }
        }
        first = false;
        if let Some(depth) = indent {
            newline(out, depth + 1);
        }
        if let Some(key) = key {
            out.push('"');
            out.push_str(key);
            out.push_str("\": ");
        }
        write_wire(out, item, indent.map(|d| d + 1));
    };
    if value.kind() == JsonKind::Object {
        for (key, member) in value.members() {
            item(out, Some(key.as_escaped()), member);
        }
    } else {
        for element in value.elements() {
            item(out, None, element);
        }
    }
    if !first && let Some(depth) = indent {
        newline(out, depth);
    }
    out.push(close);
}

/// A QMP timestamp as a UTC time of day for people: `14:35:02.123456`.
///
/// ```
/// assert_eq!(qmp_examples::time_of_day(1_733_405_702, 123_456), "13:35:02.123456");
/// ```
pub fn time_of_day(seconds: i64, microseconds: i64) -> String {
    let day = seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        microseconds.clamp(0, 999_999)
    )
}

// ---- tables ------------------------------------------------------------------------------

/// Text in aligned columns, with a header row; every line is indented by `indent` spaces.
///
/// ```
/// let mut table = qmp_examples::Table::new(["INDEX", "TARGET"]);
/// table.row(["0", "x86_64"]);
/// table.row(["10", "x86_64"]);
/// assert_eq!(table.render(2), "  INDEX  TARGET\n  0      x86_64\n  10     x86_64\n");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(headers: I) -> Self {
        Table {
            rows: vec![headers.into_iter().map(Into::into).collect()],
        }
    }

    /// Adds a row (missing cells are empty).
    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// Rows added so far, not counting the header.
    pub fn len(&self) -> usize {
        self.rows.len() - 1
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table as text: columns two spaces apart, no trailing spaces, a newline after every
    /// line.
    pub fn render(&self, indent: usize) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = " ".repeat(indent);
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                line.push_str(cell);
                if c + 1 < columns {
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmp_std::serde_json::json;

    #[test]
    fn addresses() {
        let unix = |p: &str| Address::Unix(p.into());
        let tcp = |h: &str, port| Address::Tcp {
            host: h.into(),
            port,
        };
        assert_eq!(
            Address::parse("/run/qmp.sock").unwrap(),
            unix("/run/qmp.sock")
        );
        assert_eq!(Address::parse("./a:1").unwrap(), unix("./a:1"));
        assert_eq!(Address::parse("unix:a:1").unwrap(), unix("a:1"));
        assert_eq!(Address::parse("sock").unwrap(), unix("sock"));
        // A port that is no number is a mistake, named in the message.
        let err = Address::parse("localhost:abc").unwrap_err().to_string();
        assert!(err.starts_with("bad port \"abc\""), "{err}");
        let err = Address::parse("localhost:99999").unwrap_err().to_string();
        assert!(err.starts_with("bad port \"99999\""), "{err}");
        assert_eq!(Address::parse("./host:name").unwrap(), unix("./host:name"));
        assert_eq!(
            Address::parse("127.0.0.1:4444").unwrap(),
            tcp("127.0.0.1", 4444)
        );
        assert_eq!(
            Address::parse("tcp:localhost:1").unwrap(),
            tcp("localhost", 1)
        );
        assert_eq!(Address::parse("[::1]:80").unwrap(), tcp("::1", 80));
        for bad in [
            "", "unix:", "tcp:x", ":80", "h:0", "h:65536", "[::1:80", "tcp:h:",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(tcp("::1", 80).to_string(), "[::1]:80");
        assert_eq!(tcp("localhost", 80).to_string(), "localhost:80");
        assert_eq!(unix("/a b").to_string(), "/a b");
    }

    #[test]
    fn json_lines_follow_qemu() {
        let event = json!({"event": "RESET", "data": {"reason": "x", "guest": false},
                           "timestamp": {"seconds": 1, "microseconds": 2}});
        assert_eq!(
            json_line(&event),
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", "data": {"guest": false, "reason": "x"}}"#
        );
        let error = json!({"id": [1, {}], "error": {"class": "C", "desc": "a\"\n\u{1}é"}});
        assert_eq!(
            json_line(&error),
            r#"{"error": {"class": "C", "desc": "a\"\n\u0001é"}, "id": [1, {}]}"#
        );
        let cmd =
            json!({"id": 3, "zz": null, "arguments": {"id": 1, "a": 2}, "execute": "x", "aa": 1.5});
        assert_eq!(
            json_line(&cmd),
            r#"{"execute": "x", "arguments": {"a": 2, "id": 1}, "id": 3, "aa": 1.5, "zz": null}"#
        );
        assert_eq!(json_line(&json!("text")), r#""text""#);
        assert_eq!(json_line(&json!([])), "[]");
    }

    #[test]
    fn wire_json_keeps_order_and_text() {
        let wire = r#"{"timestamp":{"seconds":1,"microseconds":2},"event":"X","data":{"z":1.50,"a":"\u00e9\"","e":[],"o":{}}}"#;
        assert_eq!(
            wire_json_line(wire).unwrap(),
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {"z": 1.50, "a": "\u00e9\"", "e": [], "o": {}}}"#
        );
        // QEMU's own one-line format is kept as it is.
        let qemu = r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": [1, {"b": null}]}"#;
        assert_eq!(wire_json_line(qemu).unwrap(), qemu);
        assert_eq!(
            wire_json_pretty(r#"{"a":[{"b":1},[]],"c":"x"}"#).unwrap(),
            "{\n    \"a\": [\n        {\n            \"b\": 1\n        },\n        []\n    ],\n    \"c\": \"x\"\n}"
        );
        assert_eq!(wire_json_line("{"), None);
        assert_eq!(time_of_day(86_399, 7), "23:59:59.000007");
    }

    #[test]
    fn pretty_json() {
        let value = json!({"return": [{"name": "a"}, [], {}], "id": -1});
        assert_eq!(
            json_pretty(&value),
            "{\n    \"id\": -1,\n    \"return\": [\n        {\n            \"name\": \"a\"\n        },\n        [],\n        {}\n    ]\n}"
        );
    }

    #[test]
    fn replies() {
        assert_eq!(reply_json(&Ok(json!({}))), json!({"return": {}}));
        let error = QmpError {
            class: "GenericError".into(),
            desc: "no".into(),
        };
        assert_eq!(
            reply_json(&Err(error)),
            json!({"error": {"class": "GenericError", "desc": "no"}})
        );
    }

    #[test]
    fn io_messages() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_message(&e), "No such file or directory");
        assert_eq!(io_message(&io::Error::other("plain")), "plain");
    }

    #[test]
    fn tables() {
        let mut table = Table::new(["A", "LONGER"]);
        assert!(table.is_empty());
        table.row(["wide cell", ""]).row(["x"]);
        assert_eq!(table.len(), 2);
        assert_eq!(table.render(0), "A          LONGER\nwide cell\nx\n");
    }
}
