//! The blocking client.

use std::collections::VecDeque;
use std::collections::vec_deque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use qmp_proto::commands::VersionTriple;
use qmp_proto::{
    CommandId, Config, EncodeError, Expired, Failure, Greeting, Instant, Message, Notice, Outcome,
    RawJson, Received, SendError, Sent, Session, State,
};

use crate::commands::{Command, HumanMonitorCommand};
use crate::error::{Error, QmpError, Result};
use crate::event::{Event, owned_str};
use crate::stream::{FdStream, Stream};

/// Capacity of the in-flight table: QEMU's in-band queue of 8, plus out-of-band commands and
/// abandoned ones still owed a reply.
pub(crate) const TABLE: usize = 32;

/// How many events the blocking [`Client`] queues by default before it drops new ones and
/// reports the gap (see [`Options::max_queued_events`]): far more than QEMU sends while a
/// program is busy elsewhere, a few MiB at most.
pub const DEFAULT_MAX_QUEUED_EVENTS: usize = 10_000;

/// Client settings; build them with [`ClientBuilder`], read them with [`Client::options`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Bound on connecting, the greeting and capabilities negotiation together (default
    /// 10 s; `None`: no bound).
    pub connect_timeout: Option<Duration>,
    /// The longest the client waits without receiving a single byte while commands are in
    /// flight before it gives up on the connection with [`Error::Stalled`] (default `None`:
    /// only the command timeout applies). Also bounds each blocking write.
    pub read_timeout: Option<Duration>,
    /// Default deadline of each command, from when it is sent (default 30 s; `None`: wait
    /// forever). A command that misses it fails with [`Error::Timeout`]; the connection
    /// stays usable.
    pub command_timeout: Option<Duration>,
    /// The largest message the client accepts (default 64 MiB). A reply over it fails its
    /// command with [`Error::TooLarge`]; the connection stays usable.
    pub max_reply_size: usize,
    /// The receive buffer's starting size (default 64 KiB); it doubles, up to
    /// `max_reply_size`, whenever one message fills it.
    pub initial_buffer: usize,
    /// Enable out-of-band execution if the server offers it (default `true`, as QEMU's own
    /// Python client does). Besides allowing `exec-oob`, this lets QEMU's monitor read the
    /// next in-band commands while one runs (up to 8 queued), so pipelined commands run
    /// about 1.5× faster than sequential ones; without it QEMU reads nothing while it
    /// executes. In-band commands are still run and answered in order. A server that does
    /// not offer `oob` is negotiated with no capabilities.
    pub oob: bool,
    /// Negotiate capabilities during the handshake (default `true`). With `false` the client
    /// stops after the greeting, does not refuse commands before negotiation (to observe the
    /// server's own checks), and [`Client::negotiate`] finishes the handshake.
    pub negotiate: bool,
    /// At most this many in-band commands in flight (default 8, QEMU's queue length); more
    /// wait for a reply first.
    pub max_in_flight: usize,
    /// At most this many events wait in the blocking [`Client`]'s queue (default
    /// [`DEFAULT_MAX_QUEUED_EVENTS`]; `None`: no bound, every event is kept however many
    /// arrive). When the queue is full, new events are dropped and counted until the caller
    /// has taken the queued ones: then [`Client::next_event`] / [`Client::wait_event`]
    /// report the gap once, as [`Error::Lagged`], and [`Client::events_lost`] counts every
    /// dropped event. The bound keeps a peer that floods events (or a program that never
    /// takes them) from growing the queue without end (the shared and async clients have
    /// their own per-subscriber bounds).
    pub max_queued_events: Option<usize>,
    /// Send a command without an `id` when no other in-band command is in flight (default
    /// `true`); its reply is matched by order, as QEMU answers in-band commands in order.
    /// QEMU reads commands one byte at a time, so the shorter command makes sequential
    /// round trips about a quarter faster (BENCHMARKS.md). Pipelined commands, `exec-oob`
    /// and `qmp_capabilities` keep their ids, and once a command sent without one times out
    /// (or, in the tokio client, its future is dropped) every later command carries its id,
    /// so a late reply is never taken for another command's. Turn it off to see an id on
    /// every command on the wire, or against a server that does not answer in order. See
    /// `qmp_proto::Config::untagged_when_alone`, which the core leaves off by default.
    pub untagged_when_alone: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: None,
            command_timeout: Some(Duration::from_secs(30)),
            max_reply_size: 64 << 20,
            initial_buffer: 64 << 10,
            oob: true,
            negotiate: true,
            max_in_flight: qmp_proto::QEMU_QUEUE_LEN,
            max_queued_events: Some(DEFAULT_MAX_QUEUED_EVENTS),
            untagged_when_alone: true,
        }
    }
}

/// Builds a [`Client`]: set options, then connect or hand over a stream.
///
/// ```no_run
/// use std::time::Duration;
/// let mut qmp = qmp_std::ClientBuilder::new()
///     .command_timeout(Some(Duration::from_secs(5)))
///     .oob(true)
///     .connect_unix("/tmp/qmp.sock")?;
/// # Ok::<(), qmp_std::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    options: Options,
}

impl ClientBuilder {
    /// Default options (see [`Options`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from `options`.
    pub fn with_options(options: Options) -> Self {
        Self { options }
    }

    shared_option_setters!();

    /// See [`Options::read_timeout`].
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.read_timeout = timeout;
        self
    }

    /// See [`Options::command_timeout`].
    pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// See [`Options::max_in_flight`].
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.options.max_in_flight = n.max(1);
        self
    }

    /// See [`Options::max_queued_events`].
    pub fn max_queued_events(mut self, n: Option<usize>) -> Self {
        self.options.max_queued_events = n;
        self
    }

    /// Connects to a QMP Unix socket (`-qmp unix:PATH,server=on` or a
    /// `-chardev socket,path=PATH,server=on` + `-mon` pair) and does the handshake.
    pub fn connect_unix(self, path: impl AsRef<Path>) -> Result<Client<UnixStream>> {
        let start = std::time::Instant::now();
        let stream = crate::connect::connect_unix(path.as_ref(), self.options.connect_timeout)
            .map_err(crate::connect::error)?;
        self.handshake_from(stream, start)
    }

    /// Connects to a QMP TCP socket (`"127.0.0.1:4444"`), trying each address within the
    /// connect timeout, and does the handshake. Nagle's algorithm is turned off.
    pub fn connect_tcp(self, addr: impl ToSocketAddrs) -> Result<Client<TcpStream>> {
        let start = std::time::Instant::now();
        let stream = crate::connect::connect_tcp(addr, self.options.connect_timeout)
            .map_err(crate::connect::error)?;
        stream.set_nodelay(true)?;
        self.handshake_from(stream, start)
    }

    /// Does the handshake over an already connected stream: reads the greeting and, unless
    /// [`Options::negotiate`] is off, negotiates capabilities.
    pub fn handshake<S: Stream>(self, stream: S) -> Result<Client<S>> {
        self.handshake_from(stream, std::time::Instant::now())
    }

    fn handshake_from<S: Stream>(self, stream: S, start: std::time::Instant) -> Result<Client<S>> {
        let options = self.options;
        let config = Config::default()
            .max_in_band(options.max_in_flight)
            .enforce_negotiation(options.negotiate)
            .untagged_when_alone(options.untagged_when_alone);
        let buffer = vec![0; options.initial_buffer.min(options.max_reply_size)];
        let mut client = Client {
            stream,
            session: Session::with_config(buffer, config),
            out: vec![0; 4096],
            origin: start,
            inbox: Inbox {
                max_events: options.max_queued_events,
                ..Inbox::default()
            },
            server: ServerInfo::default(),
            broken: None,
            write_closed: false,
            io_error: None,
            armed: None,
            can_time_out: true,
            last_activity: Instant::ZERO,
            options,
        };
        let write_timeout = client
            .options
            .read_timeout
            .or(client.options.command_timeout);
        if write_timeout.is_some() {
            let _ = client.stream.set_write_timeout(write_timeout);
        }
        let deadline = client.options.connect_timeout.map(|t| Instant::ZERO + t);
        client.await_greeting(deadline)?;
        if client.options.negotiate {
            client.negotiate_by(deadline)?;
        }
        Ok(client)
    }
}

/// What the server said about itself in its greeting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ServerInfo {
    /// The QEMU version.
    pub version: VersionTriple,
    /// The distribution's package string (may be empty).
    pub package: String,
    /// The capabilities offered, e.g. `["oob"]`.
    pub capabilities: Vec<String>,
}

impl ServerInfo {
    pub(crate) fn from_view(g: &Greeting<'_>) -> Self {
        Self {
            version: VersionTriple {
                major: g.version.major,
                minor: g.version.minor,
                micro: g.version.micro,
            },
            package: owned_str(g.version.package),
            capabilities: g.capabilities.iter().map(owned_str).collect(),
        }
    }
}

/// A command sent with [`Client::send`] (or a sibling), to be collected with
/// [`Client::wait`], whose result decodes into `T`.
#[must_use = "wait for the reply, or discard it with Client::discard"]
pub struct Handle<T> {
    id: CommandId,
    _output: PhantomData<fn() -> T>,
}

impl<T> Handle<T> {
    fn new(id: CommandId) -> Self {
        Self {
            id,
            _output: PhantomData,
        }
    }

    /// The command's id on the wire.
    pub fn id(&self) -> u64 {
        self.id.get()
    }
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Handle").field(&self.id.get()).finish()
    }
}

/// A command outcome that arrived before anyone asked for it.
#[derive(Debug)]
enum Done {
    Return(Box<str>),
    Error(QmpError),
    Failed(Failure),
}

/// Everything received and not yet handed out.
#[derive(Debug, Default)]
struct Inbox {
    events: VecDeque<Event>,
    done: Vec<(CommandId, Done)>,
    greeting: Option<ServerInfo>,
    dropped: u64,
    /// [`Options::max_queued_events`].
    max_events: Option<usize>,
    /// Events dropped after the last queued one (the gap not yet reported).
    lost: u64,
    /// Events dropped since the start.
    lost_total: u64,
}

impl Inbox {
    fn dispatch(&mut self, item: Received<'_>) {
        match item {
            Received::Greeting(g) => self.greeting = Some(ServerInfo::from_view(&g)),
            Received::Reply(reply) => {
                let done = match reply.outcome {
                    Outcome::Return(value) => Done::Return(value.as_json().into()),
                    Outcome::Error(e) => Done::Error(QmpError::from_view(&e)),
                    Outcome::Failed(f) => Done::Failed(f),
                };
                self.done.push((reply.id, done));
            }
            Received::Event(e) => {
                let full = self.max_events.is_some_and(|max| self.events.len() >= max);
                if self.lost > 0 || full {
                    self.lost += 1;
                    self.lost_total += 1;
                } else {
                    self.events.push_back(Event::from_view(&e));
                }
            }
            Received::Notice(Notice::Discarded(_)) => {}
            Received::Notice(_) => self.dropped += 1,
        }
    }
}

/// Why the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    Eof,
    Stalled,
    Io,
}

/// A blocking QMP client over a [`Stream`].
///
/// Method families:
/// - **Connecting**: [`Client::connect_unix`], [`Client::connect_tcp`], [`Client::new`] (any
///   stream), or [`ClientBuilder`] for options; all read the greeting and negotiate.
/// - **Commands**: [`execute`](Self::execute) (typed, see [`Command`]),
///   [`execute_raw`](Self::execute_raw) (name + JSON arguments), [`hmp`](Self::hmp),
///   [`execute_oob`](Self::execute_oob), [`execute_with_fds`](Self::execute_with_fds)
///   (Unix sockets), and [`request`](Self::request) for a whole message of your own.
/// - **Pipelining**: [`send`](Self::send) (and `send_*`) returns a [`Handle`]; collect
///   replies with [`wait`](Self::wait) in any order.
/// - **Events**: queued as they arrive, whatever the client is doing, and never dropped
///   silently (beyond [`Options::max_queued_events`] a gap is reported):
///   [`events`](Self::events) drains the queue, [`wait_event`](Self::wait_event) and
///   [`next_event`](Self::next_event) wait for more. Against a peer that may flood
///   events, bound the queue with [`Options::max_queued_events`]: a gap is then reported,
///   not hidden.
///
/// Every wait is bounded: by the command's deadline ([`Options::command_timeout`]), by the
/// read timeout, or by the timeout you pass. When the peer closes the connection or stalls,
/// every command in flight fails with a typed [`Error`], and so does every later one.
pub struct Client<S> {
    stream: S,
    session: Session<Vec<u8>, TABLE>,
    /// The encode buffer, reused for every command.
    out: Vec<u8>,
    /// `qmp_proto::Instant`s are microseconds since this.
    origin: std::time::Instant,
    options: Options,
    inbox: Inbox,
    server: ServerInfo,
    broken: Option<Broken>,
    /// Writing failed because the peer went away; reading goes on until EOF.
    write_closed: bool,
    io_error: Option<io::Error>,
    /// The read timeout currently set on the stream.
    armed: Option<Duration>,
    can_time_out: bool,
    /// When a byte was last received or a command last sent.
    last_activity: Instant,
}

impl<S> fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("state", &self.session.state())
            .field("oob_enabled", &self.session.oob_enabled())
            .field("in_flight", &self.session.in_flight())
            .field("queued_events", &self.inbox.events.len())
            .finish_non_exhaustive()
    }
}

impl Client<UnixStream> {
    /// Connects to a QMP Unix socket with default [`Options`]; see
    /// [`ClientBuilder::connect_unix`].
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Self> {
        ClientBuilder::new().connect_unix(path)
    }
}

impl Client<TcpStream> {
    /// Connects to a QMP TCP socket with default [`Options`]; see
    /// [`ClientBuilder::connect_tcp`].
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Self> {
        ClientBuilder::new().connect_tcp(addr)
    }
}

pub(crate) fn is_disconnect(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
            | io::ErrorKind::WriteZero
    )
}

fn is_timeout(kind: io::ErrorKind) -> bool {
    matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn parse_value(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_owned()))
}

/// Whether a reply's id is the one a raw request used (compared as JSON values).
fn id_matches(got: Option<RawJson<'_>>, want: Option<&Value>) -> bool {
    match (got, want) {
        (None, None) => true,
        (Some(got), Some(want)) => serde_json::from_str::<Value>(got.as_json())
            .map(|got| &got == want)
            .unwrap_or(false),
        _ => false,
    }
}

fn error_value(e: &qmp_proto::QmpError<'_>) -> Value {
    let mut error = Map::new();
    error.insert("class".into(), Value::String(owned_str(e.class)));
    error.insert("desc".into(), Value::String(owned_str(e.desc)));
    Value::Object(error)
}

/// A whole reply message as JSON, for [`Client::request`].
fn reply_value(message: &Message<'_>) -> Value {
    let mut reply = Map::new();
    match message {
        Message::Return(r) => {
            reply.insert("return".into(), parse_value(r.value.as_json()));
        }
        Message::Error(e) => {
            reply.insert("error".into(), error_value(&e.error));
        }
        _ => {}
    }
    if let Some(id) = message.id() {
        reply.insert("id".into(), parse_value(id.as_json()));
    }
    Value::Object(reply)
}

impl<S: Stream> Client<S> {
    /// Does the handshake over a connected stream with default [`Options`]; see
    /// [`ClientBuilder::handshake`].
    pub fn new(stream: S) -> Result<Self> {
        ClientBuilder::new().handshake(stream)
    }

    /// What the server's greeting said.
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Changes the deadline given to commands sent from now on.
    pub fn set_command_timeout(&mut self, timeout: Option<Duration>) {
        self.options.command_timeout = timeout;
    }

    /// Whether out-of-band execution was negotiated.
    pub fn oob_enabled(&self) -> bool {
        self.session.oob_enabled()
    }

    /// Whether capabilities negotiation completed (command mode).
    pub fn is_negotiated(&self) -> bool {
        self.session.state() == State::Ready
    }

    /// Whether the connection is gone (every later command fails).
    pub fn is_closed(&self) -> bool {
        self.session.state() == State::Closed || self.write_closed
    }

    /// Commands sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.session.in_flight()
    }

    /// Messages dropped as the protocol asks (late replies to commands that timed out, id-less
    /// errors, malformed frames without a command to blame, …), since the start.
    pub fn dropped_messages(&self) -> u64 {
        self.inbox.dropped
    }

    /// The receive buffer's current size (it grows for large replies).
    pub fn buffer_capacity(&self) -> usize {
        self.session.framer().capacity()
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The stream, mutably. Reading from or writing to it directly desynchronises the
    /// client.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Gives back the stream.
    pub fn into_inner(self) -> S {
        self.stream
    }

    // ---- commands ----------------------------------------------------------------------

    /// Runs a typed command and waits for its result.
    ///
    /// ```no_run
    /// use qmp_std::commands::{QueryStatus, RunState, Stop};
    /// let mut qmp = qmp_std::Client::connect_unix("/tmp/qmp.sock")?;
    /// qmp.execute(&Stop)?;
    /// assert_eq!(qmp.execute(&QueryStatus)?.status, RunState::Paused);
    /// # Ok::<(), qmp_std::Error>(())
    /// ```
    pub fn execute<C: Command>(&mut self, command: &C) -> Result<C::Output> {
        let handle = self.send(command)?;
        self.wait(handle)
    }

    /// Runs a command by name with JSON arguments (an object, or `Value::Null` for none) and
    /// returns its result as JSON.
    pub fn execute_raw(&mut self, name: &str, arguments: &Value) -> Result<Value> {
        let handle = self.send_raw(name, arguments)?;
        self.wait(handle)
    }

    /// Runs a typed command out of band (`exec-oob`): its reply may overtake in-band ones.
    /// Needs [`Options::oob`] and a server that offers it, and a command QEMU allows out of
    /// band (in 7.2: `migrate-recover`, `migrate-pause`, `yank`, `query-yank`).
    pub fn execute_oob<C: Command>(&mut self, command: &C) -> Result<C::Output> {
        let handle = self.send_oob(command)?;
        self.wait(handle)
    }

    /// [`execute_raw`](Self::execute_raw), out of band.
    pub fn execute_oob_raw(&mut self, name: &str, arguments: &Value) -> Result<Value> {
        let handle = self.send_oob_raw(name, arguments)?;
        self.wait(handle)
    }

    /// Runs an HMP command line through `human-monitor-command` and returns its output.
    pub fn hmp(&mut self, command_line: &str) -> Result<String> {
        self.execute(&HumanMonitorCommand::new(command_line))
    }

    /// Capabilities negotiation, for a client built with [`Options::negotiate`] off.
    pub fn negotiate(&mut self) -> Result<()> {
        let deadline = self.command_deadline();
        self.negotiate_by(deadline)
    }

    /// Sends a whole message of your own, exactly as given (any envelope, any `id` of any
    /// JSON type, or none), and returns the whole reply message whose `id` equals it
    /// (`{"return": …, "id": …}` or `{"error": {…}, "id": …}`), within the command timeout.
    ///
    /// The session does not track such messages: use an id that is not a small positive
    /// integer (the client numbers its own commands 1, 2, 3, …), and negotiate with
    /// [`Client::negotiate`] rather than through here.
    pub fn request(&mut self, message: &Value) -> Result<Value> {
        if !message.is_object() {
            return Err(Error::Encode(EncodeError::ArgumentsNotObject));
        }
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let len = loop {
            match qmp_proto::encode_json(message, &mut self.out) {
                Ok(len) => break len,
                Err(EncodeError::BufferTooSmall { needed }) => self.grow_out(needed),
                Err(e) => return Err(Error::Encode(e)),
            }
        };
        if let Err(e) = self.stream.write_message(&self.out[..len]) {
            return Err(self.write_failed(None, e));
        }
        let want = message.get("id").cloned();
        let deadline = self.command_deadline();
        self.touch();
        loop {
            let mut found = None;
            while let Some(item) = self.session.poll() {
                match item {
                    Received::Notice(Notice::UnmatchedReply(m))
                        if id_matches(m.id(), want.as_ref()) =>
                    {
                        found = Some(reply_value(&m));
                        break;
                    }
                    Received::Notice(Notice::UntaggedError(e)) if want.is_none() => {
                        let mut reply = Map::new();
                        reply.insert("error".into(), error_value(&e));
                        found = Some(Value::Object(reply));
                        break;
                    }
                    other => self.inbox.dispatch(other),
                }
            }
            if let Some(reply) = found {
                return Ok(reply);
            }
            if self.session.state() == State::Closed {
                return Err(self.closed_error());
            }
            if deadline.is_some_and(|d| self.now() >= d) {
                return Err(Error::Timeout(Expired::Command));
            }
            self.read_more(deadline);
        }
    }

    // ---- pipelining --------------------------------------------------------------------

    /// Sends a typed command without waiting; collect its result with
    /// [`wait`](Self::wait). Replies to other commands that arrive meanwhile are kept until
    /// asked for.
    ///
    /// With [`Options::max_in_flight`] commands already in flight, this first waits for one
    /// of them to finish. A handle dropped without [`wait`](Self::wait) or
    /// [`discard`](Self::discard) leaves its outcome stored in the client.
    ///
    /// Pipelining pays only with [`Options::oob`] negotiated (the default, when the server
    /// offers it): QEMU's monitor then reads and queues the next commands in its I/O thread
    /// while the main thread runs one (about 1.5× the sequential rate with 8 in flight
    /// against QEMU 7.2; BENCHMARKS.md). Without `oob` QEMU stops reading while a command
    /// runs, so it never holds more than one and pipelined commands go no faster than
    /// sequential ones.
    pub fn send<C: Command>(&mut self, command: &C) -> Result<Handle<C::Output>> {
        self.send_as(false, C::NAME, command)
    }

    /// [`send`](Self::send) by name with JSON arguments.
    pub fn send_raw(&mut self, name: &str, arguments: &Value) -> Result<Handle<Value>> {
        self.send_as(false, name, arguments)
    }

    /// [`send`](Self::send), out of band (see [`execute_oob`](Self::execute_oob)).
    pub fn send_oob<C: Command>(&mut self, command: &C) -> Result<Handle<C::Output>> {
        self.send_as(true, C::NAME, command)
    }

    /// [`send_raw`](Self::send_raw), out of band.
    pub fn send_oob_raw(&mut self, name: &str, arguments: &Value) -> Result<Handle<Value>> {
        self.send_as(true, name, arguments)
    }

    /// Waits for the result of a command sent with [`send`](Self::send) or a sibling.
    pub fn wait<T: DeserializeOwned>(&mut self, handle: Handle<T>) -> Result<T> {
        self.wait_id(handle.id, |json| {
            serde_json::from_str(json).map_err(Error::Decode)
        })
    }

    /// Gives up on a sent command: its reply, when it comes, is dropped.
    pub fn discard<T>(&mut self, handle: Handle<T>) {
        match self.inbox.done.iter().position(|(id, _)| *id == handle.id) {
            Some(pos) => {
                self.inbox.done.swap_remove(pos);
            }
            None => {
                self.session.abandon(handle.id);
            }
        }
    }

    // ---- events ------------------------------------------------------------------------

    /// Drains the events received so far, oldest first, without reading the stream.
    ///
    /// With [`Options::max_queued_events`], events dropped because the queue was full came
    /// after the drained ones; [`events_lost`](Self::events_lost) counts them (this does not
    /// report the gap as an error, and new events are queued again from now on).
    pub fn events(&mut self) -> vec_deque::Drain<'_, Event> {
        while let Some(item) = self.session.poll() {
            self.inbox.dispatch(item);
        }
        self.inbox.lost = 0;
        self.inbox.events.drain(..)
    }

    /// Events dropped since the start because the queue was full (see
    /// [`Options::max_queued_events`]).
    pub fn events_lost(&self) -> u64 {
        self.inbox.lost_total
    }

    /// Events received and not yet taken.
    pub fn queued_events(&self) -> usize {
        self.inbox.events.len()
    }

    /// The oldest queued event, or the next to arrive within `timeout` ([`Error::Timeout`]
    /// if none does). A zero timeout only looks at what was already received. Once the
    /// queued events are taken, a gap left by a full queue is reported once as
    /// [`Error::Lagged`] (see [`Options::max_queued_events`]).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        self.wait_event_where(timeout, |_| true)
    }

    /// The oldest queued event called `name`, or the next to arrive within `timeout`
    /// ([`Error::Timeout`] if none does). Other events stay queued, in order. If none of the
    /// queued events matches and events were dropped after them because the queue was
    /// full, the gap is reported once as [`Error::Lagged`].
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        self.wait_event_where(timeout, |e| e.name == name)
    }

    fn wait_event_where(
        &mut self,
        timeout: Duration,
        mut matches: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = self.now() + timeout;
        let mut scanned = 0;
        loop {
            if let Some(pos) = self
                .inbox
                .events
                .iter()
                .skip(scanned)
                .position(&mut matches)
            {
                return Ok(self.inbox.events.remove(scanned + pos).expect("in range"));
            }
            scanned = self.inbox.events.len();
            while let Some(item) = self.session.poll() {
                self.inbox.dispatch(item);
            }
            if self.inbox.events.len() > scanned {
                continue;
            }
            if self.inbox.lost > 0 {
                let missed = std::mem::take(&mut self.inbox.lost);
                return Err(Error::Lagged { missed });
            }
            if self.session.state() == State::Closed {
                return Err(self.closed_error());
            }
            if self.now() >= deadline {
                return Err(Error::Timeout(Expired::Event));
            }
            self.read_more(Some(deadline));
        }
    }

    // ---- internals ---------------------------------------------------------------------

    fn now(&self) -> Instant {
        let micros = self.origin.elapsed().as_micros();
        Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    fn command_deadline(&self) -> Option<Instant> {
        self.options.command_timeout.map(|t| self.now() + t)
    }

    fn grow_out(&mut self, needed: usize) {
        let len = needed.max(self.out.len() * 2);
        self.out.resize(len, 0);
    }

    fn await_greeting(&mut self, deadline: Option<Instant>) -> Result<()> {
        loop {
            while let Some(item) = self.session.poll() {
                self.inbox.dispatch(item);
            }
            if let Some(server) = self.inbox.greeting.take() {
                self.server = server;
                return Ok(());
            }
            if self.session.state() == State::Closed {
                return Err(self.closed_error());
            }
            if deadline.is_some_and(|d| self.now() >= d) {
                return Err(Error::Timeout(Expired::Greeting));
            }
            self.read_more(deadline);
        }
    }

    fn negotiate_by(&mut self, deadline: Option<Instant>) -> Result<()> {
        let oob = self.options.oob && self.session.oob_offered();
        let sent = self.encode(|session, out| session.negotiate(oob, deadline, out))?;
        self.transmit(sent)?;
        self.wait_id(sent.id, |_| Ok(()))
    }

    fn send_as<A: Serialize + ?Sized, T>(
        &mut self,
        oob: bool,
        name: &str,
        arguments: &A,
    ) -> Result<Handle<T>> {
        let sent = self.encode_command(oob, name, arguments)?;
        self.transmit(sent)?;
        Ok(Handle::new(sent.id))
    }

    fn encode_command<A: Serialize + ?Sized>(
        &mut self,
        oob: bool,
        name: &str,
        arguments: &A,
    ) -> Result<Sent> {
        if self.write_closed {
            return Err(self.closed_error());
        }
        let deadline = self.command_deadline();
        self.encode(|session, out| {
            if oob {
                session.execute_oob(name, arguments, deadline, out)
            } else {
                session.execute(name, arguments, deadline, out)
            }
        })
    }

    /// Encodes into the reuse buffer, growing it, and waiting for room in flight if needed.
    fn encode(
        &mut self,
        mut encode: impl FnMut(&mut Session<Vec<u8>, TABLE>, &mut [u8]) -> Result<Sent, SendError>,
    ) -> Result<Sent> {
        loop {
            match encode(&mut self.session, &mut self.out) {
                Ok(sent) => return Ok(sent),
                Err(SendError::Encode(EncodeError::BufferTooSmall { needed })) => {
                    self.grow_out(needed)
                }
                Err(SendError::QueueFull | SendError::TableFull) => self.make_room(),
                Err(SendError::Closed) => return Err(self.closed_error()),
                Err(SendError::Encode(e)) => return Err(Error::Encode(e)),
                Err(e) => return Err(Error::Refused(e)),
            }
        }
    }

    /// Reads until a command in flight finishes (or the connection closes).
    fn make_room(&mut self) {
        let before = self.session.in_flight();
        loop {
            while let Some(item) = self.session.poll() {
                self.inbox.dispatch(item);
            }
            if self.session.in_flight() < before || self.session.state() == State::Closed {
                return;
            }
            self.read_more(None);
        }
    }

    /// Notes that bytes moved, for the read timeout (the clock is read only when one is
    /// set).
    fn touch(&mut self) {
        if self.options.read_timeout.is_some() {
            self.last_activity = self.now();
        }
    }

    fn transmit(&mut self, sent: Sent) -> Result<()> {
        match self.stream.write_message(&self.out[..sent.len]) {
            Ok(()) => {
                self.touch();
                Ok(())
            }
            Err(e) => Err(self.write_failed(Some(sent.id), e)),
        }
    }

    /// A write failed: the command will get no reply. A peer that went away still gets its
    /// last words read; anything else leaves half a command on the wire, so the connection
    /// is given up.
    fn write_failed(&mut self, id: Option<CommandId>, e: io::Error) -> Error {
        if let Some(id) = id {
            self.session.abandon(id);
        }
        if is_disconnect(e.kind()) {
            self.write_closed = true;
            Error::Disconnected
        } else if is_timeout(e.kind()) {
            self.break_connection(Broken::Stalled);
            Error::Stalled
        } else {
            self.break_connection(Broken::Io);
            Error::Io(e)
        }
    }

    fn break_connection(&mut self, why: Broken) {
        if self.broken.is_none() {
            self.broken = Some(why);
        }
        self.session.handle_eof();
    }

    fn closed_error(&mut self) -> Error {
        match self.broken {
            Some(Broken::Stalled) => Error::Stalled,
            Some(Broken::Io) => match self.io_error.take() {
                Some(e) => Error::Io(e),
                None => Error::Disconnected,
            },
            _ => Error::Disconnected,
        }
    }

    fn failure_error(&mut self, failure: Failure) -> Error {
        match failure {
            Failure::TooLarge { size } => Error::TooLarge {
                size,
                limit: self.options.max_reply_size,
            },
            Failure::Malformed(e) => Error::Malformed(e),
            Failure::TimedOut => Error::Timeout(Expired::Command),
            _ => self.closed_error(),
        }
    }

    /// Waits for command `id`'s outcome, decoding a result straight from the receive buffer.
    fn wait_id<T>(&mut self, id: CommandId, decode: impl FnOnce(&str) -> Result<T>) -> Result<T> {
        loop {
            if let Some(pos) = self.inbox.done.iter().position(|(done, _)| *done == id) {
                return match self.inbox.done.swap_remove(pos).1 {
                    Done::Return(json) => decode(&json),
                    Done::Error(e) => Err(Error::Qmp(e)),
                    Done::Failed(f) => Err(self.failure_error(f)),
                };
            }
            let mut failed = None;
            while let Some(item) = self.session.poll() {
                if let Received::Reply(reply) = item
                    && reply.id == id
                {
                    match reply.outcome {
                        Outcome::Return(value) => return decode(value.as_json()),
                        Outcome::Error(e) => return Err(Error::Qmp(QmpError::from_view(&e))),
                        Outcome::Failed(f) => {
                            failed = Some(f);
                            break;
                        }
                    }
                }
                self.inbox.dispatch(item);
            }
            if let Some(f) = failed {
                return Err(self.failure_error(f));
            }
            if !self.session.is_pending(id) {
                return Err(Error::UnknownHandle);
            }
            self.read_more(None);
        }
    }

    /// When the connection counts as stalled, if commands are waiting.
    fn stall_deadline(&self) -> Option<Instant> {
        let timeout = self.options.read_timeout?;
        (self.session.in_flight() > 0).then(|| self.last_activity + timeout)
    }

    /// Deadlines that passed now take effect.
    fn expire(&mut self, now: Instant) {
        self.session.handle_timeout(now);
        if self.stall_deadline().is_some_and(|at| at <= now) {
            self.break_connection(Broken::Stalled);
        }
    }

    /// Reads once into the session's buffer, blocking at most until the nearest deadline
    /// (a command's, the stall deadline, or `until`). Outcomes (bytes, EOF, errors,
    /// timeouts) all surface through the session's `poll`.
    fn read_more(&mut self, until: Option<Instant>) {
        if self.session.state() == State::Closed {
            return;
        }
        let now = self.now();
        let wake = min_instant(
            min_instant(self.session.poll_timeout(), until),
            self.stall_deadline(),
        );
        if wake.is_some_and(|w| w <= now) {
            self.expire(now);
            return;
        }
        self.arm(wake.map(|w| w.saturating_duration_since(now)));
        self.grow_if_full();
        let room = self.session.read_buf();
        match self.stream.read(room) {
            Ok(0) => self.break_connection(Broken::Eof),
            Ok(n) => {
                self.session.commit(n);
                self.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(e.kind()) => {
                let now = self.now();
                self.expire(now);
            }
            Err(e) if is_disconnect(e.kind()) => self.break_connection(Broken::Eof),
            Err(e) => {
                self.io_error = Some(e);
                self.break_connection(Broken::Io);
            }
        }
    }

    /// Sets the stream's read timeout to about `wait`, skipping the system call when the one
    /// already set is close enough: a little shorter only costs a spurious wake-up, and a
    /// little longer (by at most 1/64 + 1 ms) only delays a timeout by as much.
    fn arm(&mut self, wait: Option<Duration>) {
        if !self.can_time_out {
            return;
        }
        let want = wait.map(|w| w.max(Duration::from_micros(1)));
        let rearm = match (self.armed, want) {
            (None, None) => false,
            (None, Some(_)) => true,
            (Some(armed), None) => armed < Duration::from_secs(1),
            (Some(armed), Some(w)) => {
                armed > w + w / 64 + Duration::from_millis(1) || armed < w / 4
            }
        };
        if rearm {
            match self.stream.set_read_timeout(want) {
                Ok(true) => self.armed = want,
                Ok(false) | Err(_) => self.can_time_out = false,
            }
        }
    }

    /// Doubles the receive buffer, up to the maximum reply size, when one message fills it.
    fn grow_if_full(&mut self) {
        if !self.session.framer().is_full() {
            return;
        }
        let max = self.options.max_reply_size;
        let buffer = self.session.framer_mut().buffer_mut();
        if buffer.len() < max {
            let len = buffer.len().saturating_mul(2).min(max);
            buffer.resize(len, 0);
        }
    }
}

/// A client taken apart, for [`SharedClient`](crate::SharedClient).
pub(crate) struct ClientParts<S> {
    pub(crate) stream: S,
    pub(crate) session: Session<Vec<u8>, TABLE>,
    pub(crate) options: Options,
    pub(crate) server: ServerInfo,
    /// Events received and not yet taken.
    pub(crate) events: VecDeque<Event>,
    /// Whether the connection is gone.
    pub(crate) closed: bool,
}

impl<S: Stream> Client<S> {
    /// Takes the client apart: the outcomes of commands sent and not waited for are dropped,
    /// and the stream's read timeout is left as it was.
    pub(crate) fn into_parts(mut self) -> ClientParts<S> {
        while let Some(item) = self.session.poll() {
            self.inbox.dispatch(item);
        }
        ClientParts {
            closed: self.is_closed(),
            stream: self.stream,
            session: self.session,
            options: self.options,
            server: self.server,
            events: self.inbox.events,
        }
    }
}

impl<S: FdStream> Client<S> {
    /// Runs a typed command with file descriptors attached (`SCM_RIGHTS`), as `getfd` and
    /// `add-fd` need. The descriptors travel in the same `sendmsg` as the command's first
    /// bytes; QEMU duplicates them, so the caller still owns (and may close) its copies.
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// use qmp_std::commands::{Closefd, Getfd};
    /// let mut qmp = qmp_std::Client::connect_unix("/tmp/qmp.sock")?;
    /// let file = std::fs::File::open("/dev/null")?;
    /// qmp.execute_with_fds(&Getfd { fdname: "null" }, &[file.as_fd()])?;
    /// qmp.execute(&Closefd { fdname: "null" })?;
    /// # Ok::<(), qmp_std::Error>(())
    /// ```
    pub fn execute_with_fds<C: Command>(
        &mut self,
        command: &C,
        fds: &[BorrowedFd<'_>],
    ) -> Result<C::Output> {
        let handle = self.send_with_fds(command, fds)?;
        self.wait(handle)
    }

    /// [`send`](Self::send) with file descriptors attached; see
    /// [`execute_with_fds`](Self::execute_with_fds).
    pub fn send_with_fds<C: Command>(
        &mut self,
        command: &C,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Handle<C::Output>> {
        let sent = self.encode_command(false, C::NAME, command)?;
        let bytes = &self.out[..sent.len];
        let result = self.stream.send_with_fds(bytes, fds).and_then(|n| {
            if n < bytes.len() {
                self.stream.write_message(&bytes[n..])
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.touch();
                Ok(Handle::new(sent.id))
            }
            Err(e) => Err(self.write_failed(Some(sent.id), e)),
        }
    }
}
