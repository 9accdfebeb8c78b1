//! A fake QEMU for your tests: a thread that speaks QMP the way QEMU 7.2 does, built on
//! [`qmp_proto::Server`].
//!
//! The greeting, capabilities negotiation, envelope checks and error answers are the
//! [`Server`]'s, byte for byte QEMU's; unknown commands get QEMU's `CommandNotFound`. You
//! register answers by command name ([`FakeQemuBuilder::on`], [`FakeQemuBuilder::on_error`],
//! [`FakeQemuBuilder::on_with`]) and optionally a [`fallback`](FakeQemuBuilder::fallback) for
//! every other name, then start it:
//!
//! * [`FakeQemuBuilder::spawn_unix`]: on a fresh [`UnixStream::pair`]; you get the client end.
//! * [`FakeQemuBuilder::listen_unix`]: on a socket path, serving one client at a time, like
//!   QEMU's `-qmp unix:PATH,server=on,wait=off`.
//! * [`FakeQemuBuilder::in_memory`]: no thread and no socket: a [`MemoryLink`] that the client
//!   reads and writes (`std::io`, and `embedded_io` with the `embedded-io` feature), run in
//!   the caller's thread on a [`VirtualClock`]. With a client that takes its time from the
//!   caller (qmp-embedded's, or [`qmp_proto::Driver`] itself), delays, dropped replies and
//!   deadlines play out on the virtual clock, deterministically, without waiting.
//!
//! The returned [`FakeQemu`] (through [`Control`], which handlers get too) pushes events with
//! the current wall-clock time ([`Control::event`]), delays or drops a command's replies
//! ([`Control::delay`], [`Control::drop_reply`]), closes the connection ([`Control::cut`],
//! [`Control::cut_after`]) and tells what it received ([`Control::requests`]).
//!
//! Like QEMU, in-band commands are answered in order, one at a time (a delayed reply holds
//! back the ones after it), `exec-oob` ones at once; a handler runs on the fake's thread.
//! Unlike QEMU, a dropped reply holds nothing back.
//!
//! # With the blocking client
//! ```
//! use std::time::Duration;
//! use qmp_std::commands::{QueryStatus, RunState};
//! use qmp_std::fake::FakeQemu;
//! use serde_json::json;
//!
//! let (stream, qemu) = FakeQemu::builder()
//!     .on("query-status", |_| Ok(json!({"status": "paused", "singlestep": false, "running": false})))
//!     .spawn_unix()?;
//! let mut qmp = qmp_std::Client::new(stream)?;
//! assert_eq!(qmp.server().version.to_string(), "7.2.22");
//! assert_eq!(qmp.execute(&QueryStatus)?.status, RunState::Paused);
//!
//! qemu.event("STOP", None);
//! let stop = qmp.wait_event("STOP", Duration::from_secs(5))?;
//! assert!(stop.data.is_none());
//!
//! let seen = qemu.requests();
//! assert_eq!(seen.last().unwrap().name, "query-status");
//! // Unknown commands are answered as QEMU does.
//! let err = qmp.execute_raw("no-such-command", &json!({})).unwrap_err();
//! assert!(err.to_string().contains("The command no-such-command has not been found"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same stream works with [`SharedClient`](crate::SharedClient) (through
//! [`ClientBuilder::handshake`](crate::ClientBuilder::handshake)) and, converted with
//! `tokio::net::UnixStream::from_std` (after `set_nonblocking(true)`), with the tokio
//! client's `ClientBuilder::handshake_unix`:
//! ```
//! # #[cfg(feature = "tokio")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use qmp_std::fake::FakeQemu;
//! use serde_json::json;
//!
//! let (stream, _qemu) = FakeQemu::builder()
//!     .on("query-name", |_| Ok(json!({"name": "vm"})))
//!     .spawn_unix()?;
//! stream.set_nonblocking(true)?;
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let stream = tokio::net::UnixStream::from_std(stream)?;
//!     let qmp = qmp_std::tokio::ClientBuilder::new().handshake_unix(stream).await?;
//!     assert_eq!(qmp.execute_raw("query-name", &json!({})).await?, json!({"name": "vm"}));
//!     Ok(())
//! })
//! # }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qmp_proto::{EncodeError, Incoming, RawJson, Server, encode_event};
use serde_json::Value;

/// The version the fake greets with unless told otherwise (QEMU 7.2.22, Debian's package).
pub const DEFAULT_VERSION: (u64, u64, u64) = (7, 2, 22);
/// The package string the fake greets with unless told otherwise.
pub const DEFAULT_PACKAGE: &str = "Debian 1:7.2+dfsg-7+deb12u18+b3";

/// An error answer: QEMU's error class (such as `"GenericError"`) and its description.
pub type ErrorAnswer = (String, String);

type Handler = Box<dyn Fn(&Value, &Control) -> Result<Value, ErrorAnswer> + Send>;
type Fallback = Box<dyn Fn(&str, &Value, &Control) -> Result<Value, ErrorAnswer> + Send>;

/// The greeting of a default fake, without its `\r\n`: the one QEMU 7.2.22 sends.
#[cfg(test)]
pub(crate) fn default_greeting() -> String {
    let server = Server::new(Vec::new(), DEFAULT_VERSION, DEFAULT_PACKAGE, true);
    let bytes = encode_vec(|out| server.greeting(out)).unwrap();
    String::from_utf8(bytes).unwrap().trim_end().to_owned()
}

/// Configures a [`FakeQemu`]; from [`FakeQemu::builder`].
pub struct FakeQemuBuilder {
    version: (u64, u64, u64),
    package: String,
    oob: bool,
    handlers: HashMap<String, Handler>,
    fallback: Option<Fallback>,
}

impl fmt::Debug for FakeQemuBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeQemuBuilder")
            .field("version", &self.version)
            .field("package", &self.package)
            .field("oob", &self.oob)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl FakeQemuBuilder {
    /// The QEMU version in the greeting, `(major, minor, micro)`; [`DEFAULT_VERSION`] by default.
    pub fn version(mut self, version: (u64, u64, u64)) -> Self {
        self.version = version;
        self
    }

    /// The package string in the greeting; [`DEFAULT_PACKAGE`] by default.
    pub fn package(mut self, package: impl Into<String>) -> Self {
        self.package = package.into();
        self
    }

    /// Whether the `oob` capability is offered (it is by default, as QEMU does on a socket).
    pub fn oob(mut self, offered: bool) -> Self {
        self.oob = offered;
        self
    }

    /// Answers the command `name` with what `handler` returns for its arguments (`{}` when it
    /// had none): `Ok(value)` is `{"return": value}`, `Err((class, desc))` an error.
    pub fn on(
        self,
        name: impl Into<String>,
        handler: impl Fn(&Value) -> Result<Value, ErrorAnswer> + Send + 'static,
    ) -> Self {
        self.on_with(name, move |args, _| handler(args))
    }

    /// Like [`on`](Self::on), the handler also getting the fake's [`Control`] (to push
    /// events before the reply, for instance).
    pub fn on_with(
        mut self,
        name: impl Into<String>,
        handler: impl Fn(&Value, &Control) -> Result<Value, ErrorAnswer> + Send + 'static,
    ) -> Self {
        self.handlers.insert(name.into(), Box::new(handler));
        self
    }

    /// Answers the command `name` with the error `class` and `desc`, always.
    pub fn on_error(
        self,
        name: impl Into<String>,
        class: impl Into<String>,
        desc: impl Into<String>,
    ) -> Self {
        let (class, desc) = (class.into(), desc.into());
        self.on(name, move |_| Err((class.clone(), desc.clone())))
    }

    /// Answers every command without a handler of its own (by default, those get QEMU's
    /// `CommandNotFound`). The handler gets the command's name and arguments.
    pub fn fallback(
        mut self,
        handler: impl Fn(&str, &Value, &Control) -> Result<Value, ErrorAnswer> + Send + 'static,
    ) -> Self {
        self.fallback = Some(Box::new(handler));
        self
    }

    /// Starts the fake on a fresh [`UnixStream::pair`]: returns the client's end and the
    /// fake. It serves that one connection, until either side closes it.
    pub fn spawn_unix(self) -> io::Result<(UnixStream, FakeQemu)> {
        let (client, server) = UnixStream::pair()?;
        let control = Control::default();
        let ctl = control.clone();
        let thread = thread::Builder::new()
            .name("fake-qemu".into())
            .spawn(move || {
                let _ = serve(&self, &ctl, server);
            })?;
        Ok((
            client,
            FakeQemu {
                control,
                thread: Some(thread),
                path: None,
            },
        ))
    }

    /// Makes the fake an in-memory link on the virtual `clock`, run in the caller's thread
    /// by the client's reads and writes (see [`MemoryLink`]); the greeting is already there
    /// to read. For clients that take their time from the caller, such as
    /// [`qmp-embedded`](https://docs.rs/qmp-embedded)'s (`move || clock.now()`), so that
    /// delays and deadlines pass without waiting.
    pub fn in_memory(self, clock: VirtualClock) -> io::Result<MemoryLink> {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let control = Control::default();
        let (engine, greeting) = Engine::start(&self)?;
        control.connect(Sink::Memory(Arc::clone(&inbox)));
        control.write(&greeting)?;
        Ok(MemoryLink {
            config: self,
            engine,
            control,
            inbox,
            clock,
            idle_step: Duration::from_millis(10),
        })
    }

    /// Starts the fake listening on the Unix socket `path`: it accepts a client, serves it
    /// until the connection closes, then accepts the next one, like QEMU. Dropping the
    /// [`FakeQemu`] stops it and removes the socket file.
    pub fn listen_unix(self, path: impl AsRef<Path>) -> io::Result<FakeQemu> {
        let path = path.as_ref().to_owned();
        let listener = UnixListener::bind(&path)?;
        let control = Control::default();
        let ctl = control.clone();
        let thread = thread::Builder::new()
            .name("fake-qemu".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if ctl.shared.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve(&self, &ctl, stream);
                    }
                }
            })?;
        Ok(FakeQemu {
            control,
            thread: Some(thread),
            path: Some(path),
        })
    }
}

/// A command the fake received (after negotiation), in [`Control::requests`].
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The command's name.
    pub name: String,
    /// Its arguments (`None` if the request had none).
    pub arguments: Option<Value>,
    /// Its `id` as the client wrote it (raw JSON text), if it had one.
    pub id: Option<String>,
    /// Sent with `exec-oob`.
    pub oob: bool,
}

#[derive(Debug, Default)]
struct Shared {
    /// The write side of the current connection, and whether it is negotiated.
    conn: Mutex<Option<Conn>>,
    rules: Mutex<Rules>,
    requests: Mutex<Vec<Received>>,
    events: AtomicU64,
    connected: AtomicBool,
    stopping: AtomicBool,
}

/// Where a connection's answers go.
#[derive(Debug)]
enum Sink {
    Stream(UnixStream),
    Memory(Arc<Mutex<Inbox>>),
}

#[derive(Debug)]
struct Conn {
    sink: Sink,
    negotiated: bool,
}

#[derive(Debug, Default)]
struct Rules {
    delay: HashMap<String, Duration>,
    drop: Vec<String>,
    cut_after: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What can be done to a running fake: from [`FakeQemu`] (it derefs to this) or in a
/// handler ([`FakeQemuBuilder::on_with`]). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    /// Sends the event `name` (with `data`, if any) now, with the current wall-clock
    /// timestamp, in QEMU's format. Returns whether it was sent: like QEMU, the fake sends
    /// no events to a client that is not connected or still negotiating.
    pub fn event(&self, name: &str, data: Option<Value>) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let timestamp = (now.as_secs() as i64, i64::from(now.subsec_micros()));
        let data = data.map(|d| d.to_string());
        let data = data
            .as_deref()
            .map(|d| RawJson::parse(d).expect("serde_json's output"));
        let Ok(bytes) = encode_vec(|out| encode_event(name, data, timestamp, out)) else {
            return false;
        };
        let mut conn = lock(&self.shared.conn);
        match conn.as_mut() {
            Some(c) if c.negotiated => {
                let sent = c.sink.write(&bytes).is_ok();
                if sent {
                    self.shared.events.fetch_add(1, Ordering::SeqCst);
                }
                sent
            }
            _ => false,
        }
    }

    /// A new connection, answered through `sink`.
    fn connect(&self, sink: Sink) {
        *lock(&self.shared.conn) = Some(Conn {
            sink,
            negotiated: false,
        });
        self.shared.connected.store(true, Ordering::SeqCst);
    }

    /// Writes to the current connection; an error once it is gone.
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        match lock(&self.shared.conn).as_mut() {
            Some(conn) => conn.sink.write(bytes),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// How many events were sent so far.
    pub fn events_sent(&self) -> u64 {
        self.shared.events.load(Ordering::SeqCst)
    }

    /// Delays the replies to the command `name` by `delay` (from when it arrived);
    /// `Duration::ZERO` removes the delay. In-band replies stay in order: the ones after a
    /// delayed reply wait for it.
    pub fn delay(&self, name: &str, delay: Duration) {
        lock(&self.shared.rules).delay.insert(name.into(), delay);
    }

    /// Never answers the command `name` from now on (it is still recorded).
    pub fn drop_reply(&self, name: &str) {
        lock(&self.shared.rules).drop.push(name.into());
    }

    /// Closes the connection when the command `name` comes, right after its reply (replies
    /// still delayed are never sent), or without one if it is [dropped](Control::drop_reply).
    pub fn cut_after(&self, name: &str) {
        lock(&self.shared.rules).cut_after.push(name.into());
    }

    /// Closes the current connection now (replies still delayed are never sent).
    pub fn cut(&self) {
        if let Some(conn) = lock(&self.shared.conn).take() {
            match conn.sink {
                Sink::Stream(stream) => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                Sink::Memory(inbox) => {
                    lock(&inbox).closed = true;
                    self.shared.connected.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    /// Whether a client is connected.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for the current connection to end; returns whether it did.
    pub fn wait_disconnected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_connected() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The commands received so far (not `qmp_capabilities`, nor what was refused), in order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.requests).clone()
    }
}

/// A running fake QEMU; see the [module docs](self). Derefs to its [`Control`].
///
/// Dropping it does not wait for a [`spawn_unix`](FakeQemuBuilder::spawn_unix) fake's
/// thread (it ends with its connection; [`join`](FakeQemu::join) waits for that); a
/// [`listen_unix`](FakeQemuBuilder::listen_unix) fake is stopped and its socket removed.
#[derive(Debug)]
pub struct FakeQemu {
    control: Control,
    thread: Option<JoinHandle<()>>,
    path: Option<PathBuf>,
}

impl FakeQemu {
    /// A builder with the defaults: QEMU 7.2.22's greeting, `oob` offered, no handlers (every
    /// command but `qmp_capabilities` gets `CommandNotFound`).
    pub fn builder() -> FakeQemuBuilder {
        FakeQemuBuilder {
            version: DEFAULT_VERSION,
            package: DEFAULT_PACKAGE.into(),
            oob: true,
            handlers: HashMap::new(),
            fallback: None,
        }
    }

    /// The fake's [`Control`], to move into another thread.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Waits for the fake's thread to end (for a spawned fake: for its connection to close;
    /// a listening one is stopped first).
    pub fn join(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(path) = &self.path {
            self.control.shared.stopping.store(true, Ordering::SeqCst);
            self.control.cut();
            // Wake the accept.
            let _ = UnixStream::connect(path);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl std::ops::Deref for FakeQemu {
    type Target = Control;

    fn deref(&self) -> &Control {
        &self.control
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        if self.path.is_some() {
            self.stop();
        }
    }
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stream(stream) => stream.write_all(bytes),
            Sink::Memory(inbox) => {
                lock(inbox).bytes.extend(bytes);
                Ok(())
            }
        }
    }
}

/// Runs an encoder into a buffer big enough.
pub(crate) fn encode_vec(
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0; 4096];
    loop {
        match encode(&mut out) {
            Ok(n) => {
                out.truncate(n);
                return Ok(out);
            }
            Err(EncodeError::BufferTooSmall { needed }) => out.resize(needed, 0),
            Err(e) => return Err(e),
        }
    }
}

/// A reply waiting for its time (since the connection started, on the fake's clock).
struct Due {
    at: Duration,
    bytes: Vec<u8>,
    cut: bool,
}

/// One connection's protocol, apart from its I/O and its clock: the [`Server`], and the
/// replies held back by a delay. Both the thread ([`serve`]) and the in-memory link
/// ([`MemoryLink`]) run it; answers go out through [`Control`]'s sink.
struct Engine {
    server: Server<'static, Vec<u8>>,
    pending: VecDeque<Due>,
}

impl Engine {
    /// A connection of a fake configured by `config`, with its greeting.
    fn start(config: &FakeQemuBuilder) -> io::Result<(Engine, Vec<u8>)> {
        // The package string only goes into the greeting, encoded here once.
        let greeter = Server::new(Vec::new(), config.version, &config.package, config.oob);
        let greeting = encode_vec(|out| greeter.greeting(out)).map_err(io::Error::other)?;
        let server = Server::new(vec![0u8; 1 << 20], config.version, "", config.oob);
        let pending = VecDeque::new();
        Ok((Engine { server, pending }, greeting))
    }

    /// When the next held-back reply is due.
    fn next_due(&self) -> Option<Duration> {
        self.pending.front().map(|d| d.at)
    }

    /// Sends the held-back replies due at `now`; `false` once the connection was cut.
    fn send_due(&mut self, ctl: &Control, now: Duration) -> io::Result<bool> {
        while self.pending.front().is_some_and(|due| due.at <= now) {
            let due = self.pending.pop_front().expect("checked");
            ctl.write(&due.bytes)?;
            if due.cut {
                ctl.cut();
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Answers every whole request received so far (at `now`); `false` once the connection
    /// was cut.
    fn answer(
        &mut self,
        config: &FakeQemuBuilder,
        ctl: &Control,
        now: Duration,
    ) -> io::Result<bool> {
        let shared = &ctl.shared;
        while let Some(incoming) = self.server.poll() {
            let (bytes, oob, name) = match incoming {
                Incoming::Answer(answer) => {
                    let bytes = encode_vec(|out| answer.encode(out)).map_err(io::Error::other)?;
                    (bytes, false, None)
                }
                Incoming::Request(req) => {
                    let name = req.name.to_string();
                    let arguments = req
                        .arguments
                        .and_then(|a| serde_json::from_str::<Value>(a.as_json()).ok());
                    lock(&shared.requests).push(Received {
                        name: name.clone(),
                        arguments: arguments.clone(),
                        id: req.id.map(|id| id.as_json().to_owned()),
                        oob: req.oob,
                    });
                    let args = arguments.unwrap_or_else(|| Value::Object(Default::default()));
                    let answer = match (config.handlers.get(&name), &config.fallback) {
                        (Some(h), _) => Some(h(&args, ctl)),
                        (None, Some(f)) => Some(f(&name, &args, ctl)),
                        (None, None) => None,
                    };
                    let bytes = match answer {
                        None => encode_vec(|out| req.not_found(out)),
                        Some(Ok(value)) => {
                            let text = value.to_string();
                            let raw = RawJson::parse(&text).expect("serde_json's output");
                            encode_vec(|out| req.reply(raw, out))
                        }
                        Some(Err((class, desc))) => encode_vec(|out| req.error(&class, &desc, out)),
                    }
                    .map_err(io::Error::other)?;
                    (bytes, req.oob, Some(name))
                }
            };
            if let Some(conn) = lock(&shared.conn).as_mut() {
                conn.negotiated = self.server.state() == qmp_proto::ServerState::Command;
            }
            let rules = lock(&shared.rules);
            let (delay, dropped, cut) = match &name {
                Some(name) => (
                    rules.delay.get(name).copied().unwrap_or_default(),
                    rules.drop.contains(name),
                    rules.cut_after.contains(name),
                ),
                None => (Duration::ZERO, false, false),
            };
            drop(rules);
            if dropped {
                if cut {
                    ctl.cut();
                    return Ok(false);
                }
                continue;
            }
            if oob || (self.pending.is_empty() && delay.is_zero()) {
                ctl.write(&bytes)?;
                if cut {
                    ctl.cut();
                    return Ok(false);
                }
            } else {
                let at = self
                    .pending
                    .back()
                    .map_or(now + delay, |p| p.at.max(now + delay));
                self.pending.push_back(Due { at, bytes, cut });
            }
        }
        Ok(true)
    }
}

/// Serves one connection until it closes, on the wall clock.
fn serve(config: &FakeQemuBuilder, ctl: &Control, stream: UnixStream) -> io::Result<()> {
    let shared = &ctl.shared;
    stream.set_nonblocking(false)?;
    let mut reader = stream.try_clone()?;
    let (mut engine, greeting) = Engine::start(config)?;
    ctl.connect(Sink::Stream(stream));
    let origin = Instant::now();
    let result = (|| {
        ctl.write(&greeting)?;
        loop {
            // Send what is due, then wait for input until the next reply is.
            if !engine.send_due(ctl, origin.elapsed())? {
                return Ok(());
            }
            let wait = engine.next_due().map(|at| {
                at.saturating_sub(origin.elapsed())
                    .max(Duration::from_millis(1))
            });
            reader.set_read_timeout(wait)?;
            let n = match reader.read(engine.server.read_buf()) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            engine.server.commit(n);
            if !engine.answer(config, ctl, origin.elapsed())? {
                return Ok(());
            }
        }
    })();
    ctl.cut();
    shared.connected.store(false, Ordering::SeqCst);
    result
}

/// A virtual clock for a [`MemoryLink`] and the client on it: it moves only when the link
/// waits (to a held-back reply's time, or by [`MemoryLink::idle_step`] when nothing will come)
/// or when the test [advances](VirtualClock::advance) it. Cheap to clone; clones share the
/// time.
#[derive(Debug, Clone, Default)]
pub struct VirtualClock {
    micros: Arc<AtomicU64>,
}

impl VirtualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The time since the clock started.
    pub fn elapsed(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::SeqCst))
    }

    /// The time as the sans-IO core counts it (for a client's clock:
    /// `move || clock.now()`).
    pub fn now(&self) -> qmp_proto::Instant {
        qmp_proto::Instant::from_micros(self.micros.load(Ordering::SeqCst))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }

    /// Moves the clock forward to `to`, if it is not there yet.
    fn advance_to(&self, to: Duration) {
        let to = u64::try_from(to.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_max(to, Ordering::SeqCst);
    }
}

/// The client's end of a fake QEMU that runs in memory, in the caller's thread, on a
/// [`VirtualClock`]: from [`FakeQemuBuilder::in_memory`].
///
/// Writing to it hands the bytes to the fake, which answers at once (into the link's
/// receive side) or, for a [delayed](Control::delay) command, at its time on the virtual
/// clock. Reading takes what was answered; with nothing there, a read moves the clock to the
/// next held-back reply's time, or, if none is held back, by [`idle_step`](Self::idle_step)
/// and fails with [`io::ErrorKind::TimedOut`] (a client that waits on its own deadlines sees
/// them pass, at no cost in real time). After [`Control::cut`] and everything sent before it,
/// a read returns `Ok(0)`, the end of the stream. With the `embedded-io` feature it is also
/// an `embedded_io` link, for [`qmp-embedded`](https://docs.rs/qmp-embedded)'s clients.
pub struct MemoryLink {
    config: FakeQemuBuilder,
    engine: Engine,
    control: Control,
    /// What the fake sent and the client has not read (the fake's connection writes here).
    inbox: Arc<Mutex<Inbox>>,
    clock: VirtualClock,
    idle_step: Duration,
}

impl fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLink")
            .field("clock", &self.clock.elapsed())
            .field("idle_step", &self.idle_step)
            .finish_non_exhaustive()
    }
}

/// What a [`MemoryLink`]'s fake has sent and the client not yet read.
#[derive(Debug, Default)]
struct Inbox {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl MemoryLink {
    /// How far a read with nothing to return moves the virtual clock (10 ms by default).
    pub fn idle_step(mut self, step: Duration) -> Self {
        self.idle_step = step.max(Duration::from_micros(1));
        self
    }

    /// The fake's [`Control`].
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The virtual clock.
    pub fn clock(&self) -> VirtualClock {
        self.clock.clone()
    }

    /// Copies out what waits for the client; `None` if nothing does (and the link is open).
    fn take(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if self
            .engine
            .send_due(&self.control, self.clock.elapsed())
            .is_err()
        {
            return Ok(Some(0));
        }
        let mut inbox = lock(&self.inbox);
        if !inbox.bytes.is_empty() {
            return io::Read::read(&mut inbox.bytes, buf).map(Some);
        }
        Ok(inbox.closed.then_some(0))
    }
}

impl io::Read for MemoryLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(n) = self.take(buf)? {
            return Ok(n);
        }
        match self.engine.next_due() {
            Some(at) => {
                self.clock.advance_to(at);
                Ok(self.take(buf)?.unwrap_or(0))
            }
            None => {
                self.clock.advance(self.idle_step);
                Err(io::ErrorKind::TimedOut.into())
            }
        }
    }
}

impl io::Write for MemoryLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if lock(&self.inbox).closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let n = self.engine.server.feed(rest);
            rest = &rest[n..];
            if !self
                .engine
                .answer(&self.config, &self.control, self.clock.elapsed())?
            {
                break;
            }
            if n == 0 && !rest.is_empty() {
                return Err(io::Error::other(
                    "fake QEMU: request larger than its buffer",
                ));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(feature = "embedded-io")]
impl embedded_io::ErrorType for MemoryLink {
    type Error = embedded_io::ErrorKind;
}

#[cfg(feature = "embedded-io")]
fn embedded_kind(e: &io::Error) -> embedded_io::ErrorKind {
    match e.kind() {
        io::ErrorKind::TimedOut => embedded_io::ErrorKind::TimedOut,
        io::ErrorKind::BrokenPipe => embedded_io::ErrorKind::BrokenPipe,
        _ => embedded_io::ErrorKind::Other,
    }
}

#[cfg(feature = "embedded-io")]
impl embedded_io::Read for MemoryLink {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, embedded_io::ErrorKind> {
        io::Read::read(self, buf).map_err(|e| embedded_kind(&e))
    }
}

#[cfg(feature = "embedded-io")]
impl embedded_io::Write for MemoryLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, embedded_io::ErrorKind> {
        io::Write::write(self, buf).map_err(|e| embedded_kind(&e))
    }

    fn flush(&mut self) -> Result<(), embedded_io::ErrorKind> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::{FakeQemu, default_greeting};
    use crate::{Client, ClientBuilder, Error};

    fn client(stream: std::os::unix::net::UnixStream) -> Client<std::os::unix::net::UnixStream> {
        ClientBuilder::new()
            .connect_timeout(Some(Duration::from_secs(5)))
            .command_timeout(Some(Duration::from_secs(5)))
            .handshake(stream)
            .unwrap()
    }

    #[test]
    fn the_greeting_is_qemus() {
        assert_eq!(
            default_greeting(),
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#
        );
        let (stream, _fake) = FakeQemu::builder()
            .version((9, 1, 0))
            .package("test")
            .oob(false)
            .spawn_unix()
            .unwrap();
        let qmp = client(stream);
        let server = qmp.server();
        assert_eq!(server.version.to_string(), "9.1.0");
        assert_eq!(
            (server.package.as_str(), server.oob_offered),
            ("test", false)
        );
    }

    #[test]
    fn errors_unknown_commands_and_the_record() {
        let (stream, fake) = FakeQemu::builder()
            .on_error("device_del", "DeviceNotFound", "Device 'x' not found")
            .on("echo", |args| Ok(args.clone()))
            .spawn_unix()
            .unwrap();
        assert!(
            !fake.event("TOO_EARLY", None),
            "no events before negotiation"
        );
        let mut qmp = client(stream);
        match qmp.execute_raw("device_del", &json!({"id": "x"})) {
            Err(Error::Qmp(e)) => {
                assert_eq!(
                    (e.class.as_str(), e.desc.as_str()),
                    ("DeviceNotFound", "Device 'x' not found")
                );
            }
            other => panic!("{other:?}"),
        }
        match qmp.execute_raw("nope", &json!({})) {
            Err(Error::Qmp(e)) => {
                assert_eq!(e.class, "CommandNotFound");
                assert_eq!(e.desc, "The command nope has not been found");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            qmp.execute_raw("echo", &json!({"a": [1, "é"]})).unwrap(),
            json!({"a": [1, "é"]})
        );
        let seen = fake.requests();
        let names: Vec<_> = seen.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["device_del", "nope", "echo"]);
        assert_eq!(seen[0].arguments, Some(json!({"id": "x"})));
        assert!(seen.iter().all(|r| !r.oob));
        drop(qmp);
        fake.join();
    }

    #[test]
    fn delays_keep_the_order_and_drops_never_answer() {
        let (stream, fake) = FakeQemu::builder()
            .fallback(|name, _, _| Ok(json!(name)))
            .spawn_unix()
            .unwrap();
        fake.delay("slow", Duration::from_millis(100));
        fake.drop_reply("never");
        let mut qmp = client(stream);
        let start = Instant::now();
        let slow = qmp.send_raw("slow", &json!({})).unwrap();
        let fast = qmp.send_raw("fast", &json!({})).unwrap();
        assert_eq!(qmp.wait(fast).unwrap(), json!("fast"));
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "in order, behind the slow one"
        );
        assert_eq!(qmp.wait(slow).unwrap(), json!("slow"));
        let never = qmp.execute_raw_timeout("never", &json!({}), Some(Duration::from_millis(50)));
        assert!(matches!(never, Err(Error::Timeout(_))), "{never:?}");
        assert_eq!(
            qmp.execute_raw("after", &json!({})).unwrap(),
            json!("after")
        );
        let ids: Vec<_> = fake
            .requests()
            .into_iter()
            .map(|r| r.id.is_some())
            .collect();
        assert_eq!(ids.len(), 4);
        fake.cut();
        assert!(fake.wait_disconnected(Duration::from_secs(5)));
        assert!(matches!(
            qmp.execute_raw("gone", &json!({})),
            Err(Error::Disconnected)
        ));
    }

    #[test]
    fn a_listening_fake_serves_one_client_after_another() {
        let dir = std::env::temp_dir().join(format!("qmp-std-fake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let fake = FakeQemu::builder()
            .on("query-name", |_| Ok(json!({"name": "vm"})))
            .listen_unix(&path)
            .unwrap();
        for _ in 0..2 {
            let mut qmp = Client::connect_unix(&path).unwrap();
            assert_eq!(
                qmp.execute_raw("query-name", &json!({})).unwrap(),
                json!({"name": "vm"})
            );
            fake.event("HELLO", Some(json!({"n": 1})));
            let hello = qmp.wait_event("HELLO", Duration::from_secs(5)).unwrap();
            assert_eq!(hello.data.unwrap()["n"], 1);
            drop(qmp);
            assert!(fake.wait_disconnected(Duration::from_secs(5)));
        }
        assert_eq!(fake.requests().len(), 2);
        drop(fake);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn in_memory_the_fake_answers_on_the_virtual_clock() {
        let clock = super::VirtualClock::new();
        let mut link = FakeQemu::builder()
            .on("query-name", |_| Ok(json!({"name": "vm"})))
            .in_memory(clock.clone())
            .unwrap()
            .idle_step(Duration::from_millis(250));
        let mut buf = [0u8; 512];
        let n = link.read(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap().trim_end(),
            default_greeting()
        );
        // Nothing more will come: the clock moves by the idle step, and the read says so.
        let err = link.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(clock.elapsed(), Duration::from_millis(250));

        link.write_all(br#"{"execute": "qmp_capabilities"}"#)
            .unwrap();
        let n = link.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"{\"return\": {}}\r\n");
        link.control().delay("query-name", Duration::from_secs(2));
        link.write_all(br#"{"execute": "query-name", "id": 7}"#)
            .unwrap();
        // Held back: the read moves the clock to its time.
        let n = link.read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"{\"return\": {\"name\": \"vm\"}, \"id\": 7}\r\n"
        );
        assert_eq!(clock.elapsed(), Duration::from_millis(2250));
        link.control().cut();
        assert_eq!(link.read(&mut buf).unwrap(), 0);
        assert!(link.write(b"{}").is_err());
    }
}
