//! The blocking client: a loop that moves bytes for [`qmp_proto::Driver`].
//!
//! Every protocol decision (the handshake, deadlines, waiting for room, stalls, the event
//! queue and its overflow rule, what a failed write means) is the driver's; this file only
//! writes and reads the stream, arms its read timeout, and turns outcomes into owned values.

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

use qmp_proto::{
    CommandId, Deadline, Done, EncodeError, Expired, Failure, Instant, Io, Message, Outcome,
    RawJson, SendError, SendOptions, ServerInfo, State, Wait,
};

use crate::commands::{Command, HumanMonitorCommand};
use crate::drive::{
    EventList, Request, StdDriver, closed_error, failure_error, link_error, new_driver, now_since,
    outcome_result,
};
use crate::error::{Error, QmpError, Result, decode};
use crate::event::{Event, owned_str};
use crate::stream::{FdStream, Stream};

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
    /// only the command timeout applies). Also bounds each blocking write, with the command
    /// timeout when unset.
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
    /// Check every command's arguments against the server's own schema before sending it
    /// (off by default): the first command fetches `query-qmp-schema` once for the
    /// connection; a command whose arguments do not fit is refused with [`Error::Invalid`],
    /// which says where and what (see [`Schema::check`](crate::Schema::check)).
    #[cfg(feature = "qapi")]
    pub check_arguments: bool,
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
            #[cfg(feature = "qapi")]
            check_arguments: false,
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
    pub(crate) options: Options,
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

    /// Opens a serial device (a tty, or the pty that QEMU's `-chardev pty` announces) in
    /// raw mode ([`Serial`](crate::Serial)) and does the handshake over it.
    pub fn open_serial(self, path: impl AsRef<Path>) -> Result<Client<crate::Serial>> {
        let serial = crate::Serial::open(path)?;
        self.handshake(serial)
    }

    /// Does the handshake over an already connected stream: reads the greeting and, unless
    /// [`Options::negotiate`] is off, negotiates capabilities.
    pub fn handshake<S: Stream>(self, stream: S) -> Result<Client<S>> {
        self.handshake_from(stream, std::time::Instant::now())
    }

    /// The handshake, bounded (with connecting, which began at `start`) by the connect
    /// timeout: the driver's handshake deadline counts from `start`.
    pub(crate) fn handshake_from<S: Stream>(
        self,
        stream: S,
        start: std::time::Instant,
    ) -> Result<Client<S>> {
        self.start(stream, start, None)
    }

    /// Starts a client over `stream`, connected at `start`: the QMP handshake, or with
    /// `agent` (a random sync id) the guest agent's sync ([`crate::agent`]).
    pub(crate) fn start<S: Stream>(
        self,
        stream: S,
        start: std::time::Instant,
        agent: Option<u64>,
    ) -> Result<Client<S>> {
        let options = self.options;
        let events = EventList::new(options.max_queued_events);
        let driver = match agent {
            None => new_driver(&options, options.max_in_flight, events, Instant::ZERO),
            Some(sync) => crate::agent::new_driver(&options, sync),
        };
        let mut client = Client {
            arguments: crate::check::ArgumentCheck::new(&options),
            stream,
            driver,
            origin: start,
            finished: Vec::new(),
            io_error: None,
            timer: ReadTimer::default(),
            options,
        };
        // A blocking write is bounded too (it is retried while deadlines allow).
        let write_timeout = client
            .options
            .read_timeout
            .or(client.options.command_timeout);
        if write_timeout.is_some() {
            let _ = client.stream.set_write_timeout(write_timeout);
        }
        let result = client.finish_handshake(agent.is_some());
        // The guest agent has no greeting to report.
        if agent.is_none() {
            crate::trace::handshake(start, result.as_ref().map(Client::server));
        }
        result
    }
}

impl<S: Stream> Client<S> {
    /// The rest of the handshake: the greeting, and negotiation unless it is off (or, for
    /// the guest `agent`, the sync).
    fn finish_handshake(self, agent: bool) -> Result<Self> {
        let mut client = self;
        match client.run(Wait::Handshake, None, None) {
            Done::Ready => Ok(client),
            Done::TimedOut if agent => Err(Error::Timeout(Expired::Sync)),
            Done::TimedOut => Err(Error::Timeout(Expired::Greeting)),
            // The negotiation was refused (or failed).
            Done::Completed(id) => {
                let limit = client.options.max_reply_size;
                let reason = client.driver.close_reason();
                let io = &mut client.io_error;
                let error = match client.driver.outcome(id) {
                    Some(outcome) => {
                        outcome_result(outcome, limit, || closed_error(reason, io.take()))
                            .err()
                            .unwrap_or(Error::Disconnected)
                    }
                    None => Error::Disconnected,
                };
                Err(error)
            }
            done => Err(client.ended(done)),
        }
    }
}

/// A command sent with [`Client::send`] (or a sibling), to be collected with
/// [`Client::wait`], whose result decodes into `T`.
#[must_use = "wait for the reply, or give up on it with Client::abandon"]
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

/// A command outcome that arrived while another was waited for, copied out of the
/// receive buffer until asked for.
#[derive(Debug)]
enum Finished {
    Return(Box<str>),
    Error(QmpError),
    Failed(Failure),
}

/// The read timeout set on the stream, re-armed only when it matters.
#[derive(Debug, Clone, Copy)]
struct ReadTimer {
    /// The read timeout currently set on the stream.
    armed: Option<Duration>,
    /// The stream supports read timeouts.
    can_time_out: bool,
}

impl Default for ReadTimer {
    fn default() -> Self {
        Self {
            armed: None,
            can_time_out: true,
        }
    }
}

impl ReadTimer {
    /// Sets the stream's read timeout to about `wait`, skipping the system call when the one
    /// already set is close enough: a little shorter only costs a spurious wake-up, and a
    /// little longer (by at most 1/64 + 1 ms) only delays a timeout by as much.
    fn arm<S: Stream>(&mut self, stream: &mut S, wait: Option<Duration>) {
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
            match stream.set_read_timeout(want) {
                Ok(true) => self.armed = want,
                Ok(false) | Err(_) => self.can_time_out = false,
            }
        }
    }
}

/// Sends an attachment with the first bytes of a command ([`SendOptions::attach`]).
type Attach<'f, S> = &'f mut dyn FnMut(&mut S, &[u8]) -> io::Result<usize>;

/// A blocking QMP client over a [`Stream`]: it runs [`qmp_proto::Driver`], which makes
/// every protocol decision, and moves the bytes.
///
/// Method families (the same names mean the same in the shared and async clients):
/// - **Connecting**: [`Client::connect_unix`], [`Client::connect_tcp`], [`Client::new`] (any
///   stream), or [`ClientBuilder`] for options; all read the greeting and negotiate.
/// - **Commands**: [`execute`](Self::execute) (typed, see [`Command`]),
///   [`execute_raw`](Self::execute_raw) (name + JSON arguments),
///   [`execute_timeout`](Self::execute_timeout) / [`execute_raw_timeout`](Self::execute_raw_timeout)
///   (a deadline of their own), [`hmp`](Self::hmp), [`execute_oob`](Self::execute_oob) /
///   [`execute_oob_raw`](Self::execute_oob_raw), [`execute_with_fds`](Self::execute_with_fds)
///   / [`execute_raw_with_fds`](Self::execute_raw_with_fds) (Unix sockets), and
///   [`request`](Self::request) for a whole message of your own. Each waits for its reply
///   within its deadline ([`Options::command_timeout`] unless given), which also bounds
///   waiting for room in flight.
/// - **Pipelining**: [`send`](Self::send) (and `send_*`) writes a command and returns a
///   [`Handle`]; collect replies with [`wait`](Self::wait) in any order, or give up on one
///   with [`abandon`](Self::abandon) (its late reply is discarded by id and counted in
///   [`discarded_replies`](Self::discarded_replies)).
/// - **Events**: queued as they arrive, whatever the client is doing, in one bounded queue
///   ([`Options::max_queued_events`]): when it is full, new events are dropped and the gap
///   is reported where it is. [`events`](Self::events) drains the queue without I/O;
///   [`next_event`](Self::next_event) and [`wait_event`](Self::wait_event) wait for more
///   (a gap comes as [`Error::Lagged`]); [`events_lost`](Self::events_lost) counts drops.
/// - **Getters**: [`server`](Self::server), [`options`](Self::options),
///   [`oob_enabled`](Self::oob_enabled), [`is_negotiated`](Self::is_negotiated),
///   [`is_closed`](Self::is_closed), [`in_flight`](Self::in_flight),
///   [`dropped_messages`](Self::dropped_messages), [`buffer_capacity`](Self::buffer_capacity),
///   [`stream`](Self::stream), and [`into_inner`](Self::into_inner) to get the stream back.
///
/// Every wait is bounded: by the command's deadline, by the read timeout (a peer silent
/// that long while commands wait ends the connection with [`Error::Stalled`]), or by the
/// timeout you pass. A command whose write is cut off (its deadline passed, or the write
/// failed) is dropped and QEMU is resynchronised before the next one. When the peer closes
/// the connection, every command in flight fails with a typed [`Error`] after the replies
/// already received, and so does every later one.
pub struct Client<S> {
    stream: S,
    driver: StdDriver<EventList>,
    /// The driver's `Instant`s are microseconds since this.
    origin: std::time::Instant,
    options: Options,
    /// Outcomes of commands that finished while another was waited for.
    finished: Vec<(CommandId, Finished)>,
    /// The I/O error that ended the connection, until reported.
    io_error: Option<io::Error>,
    timer: ReadTimer,
    /// The optional check of arguments against the schema (`Options::check_arguments`).
    arguments: crate::check::ArgumentCheck,
}

impl<S> fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.driver.server())
            .field("state", &self.driver.state())
            .field("in_flight", &self.driver.in_flight())
            .field("queued_events", &self.driver.events().len())
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

fn parse_value(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_owned()))
}

/// A whole message of your own, sent with [`Client::send_request`]: its reply is the one
/// whose `id` equals the message's (or the one without an id, for a message without one).
#[derive(Debug, Clone)]
pub struct RequestHandle {
    id: Option<Value>,
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

    /// What the server's greeting said, and whether `oob` was negotiated.
    pub fn server(&self) -> &ServerInfo {
        // The handshake ends after the greeting.
        self.driver.server().expect("greeted")
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Changes the deadline given to commands sent from now on.
    pub fn set_command_timeout(&mut self, timeout: Option<Duration>) {
        self.options.command_timeout = timeout;
        self.driver.set_command_timeout(timeout);
    }

    /// Whether out-of-band execution was negotiated.
    pub fn oob_enabled(&self) -> bool {
        self.driver.server().is_some_and(|s| s.oob_enabled)
    }

    /// Whether capabilities negotiation completed (command mode).
    pub fn is_negotiated(&self) -> bool {
        self.driver.state() == State::Ready
    }

    /// Whether the connection is gone (every later command fails).
    pub fn is_closed(&self) -> bool {
        self.driver.is_closed()
    }

    /// Commands sent and not finished (abandoned ones still owed a reply included).
    pub fn in_flight(&self) -> usize {
        self.driver.in_flight()
    }

    /// Messages dropped as the protocol asks (late replies to commands that timed out, id-less
    /// errors, malformed frames without a command to blame, replies to
    /// [`request`](Self::request)s, …), since the start.
    pub fn dropped_messages(&self) -> u64 {
        self.driver.dropped_messages()
    }

    /// Late replies to [`abandon`](Self::abandon)ed commands, discarded by id, since the
    /// start.
    pub fn discarded_replies(&self) -> u64 {
        self.driver.discarded_replies()
    }

    /// The receive buffer's current size (it grows for large replies).
    pub fn buffer_capacity(&self) -> usize {
        self.driver.receive_capacity()
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

    /// Gives back the stream (bytes received and not yet handled are dropped).
    pub fn into_inner(self) -> S {
        self.stream
    }

    // ---- commands ----------------------------------------------------------------------

    command_verbs! {
        commands: [mut] [] [] call,
        oob: "Options::oob",
        execute: {
            ///
            /// ```no_run
            /// use qmp_std::commands::{QueryStatus, RunState, Stop};
            /// let mut qmp = qmp_std::Client::connect_unix("/tmp/qmp.sock")?;
            /// qmp.execute(&Stop)?;
            /// assert_eq!(qmp.execute(&QueryStatus)?.status, RunState::Paused);
            /// # Ok::<(), qmp_std::Error>(())
            /// ```
        }
    }

    /// Capabilities negotiation, for a client built with [`Options::negotiate`] off (with
    /// `oob` when [`Options::oob`] asks for it and the server offers it).
    pub fn negotiate(&mut self) -> Result<()> {
        let at = self.deadline(self.options.command_timeout);
        let now = self.now();
        let options = SendOptions::new().deadline(at.map_or(Deadline::Never, Deadline::At));
        let id = match self.driver.negotiate(options, now) {
            Ok(id) => id,
            Err(e) => return Err(self.send_error(e)),
        };
        // A successful negotiation's outcome is consumed by the driver.
        self.wait_id(id, |_| Ok(())).or_else(|e| match e {
            Error::UnknownHandle if self.is_negotiated() => Ok(()),
            e => Err(e),
        })
    }

    /// Sends a whole message of your own, exactly as given (any envelope, any `id` of any
    /// JSON type, or none), and returns the whole reply message whose `id` equals it
    /// (`{"return": …, "id": …}` or `{"error": {…}, "id": …}`), within the command timeout.
    ///
    /// The driver does not track such messages: use an id that is not a small positive
    /// integer (the client numbers its own commands 1, 2, 3, …), and negotiate with
    /// [`Client::negotiate`] rather than through here. Replies that match no command are
    /// counted in [`dropped_messages`](Self::dropped_messages), this one's too.
    pub fn request(&mut self, message: &Value) -> Result<Value> {
        let timeout = self.options.command_timeout;
        let request = self.send_request(message)?;
        self.wait_request(&request, timeout)?
            .ok_or(Error::Timeout(Expired::Command))
    }

    /// [`request`](Self::request) in two steps, so that the wait can be given up: writes
    /// the message now, and returns what to wait for with
    /// [`wait_request`](Self::wait_request). Giving up is dropping the [`RequestHandle`]:
    /// the reply, if it comes, is dropped like any reply nobody waits for. Give up only on a
    /// message with an `id`: a late reply without one cannot be told from the reply to the
    /// next message (or command) sent without an id.
    pub fn send_request(&mut self, message: &Value) -> Result<RequestHandle> {
        if !message.is_object() {
            return Err(Error::Encode(EncodeError::ArgumentsNotObject));
        }
        loop {
            match self.driver.send_message(message) {
                Ok(()) => break,
                Err(SendError::Busy) => self.flush(),
                Err(e) => return Err(self.send_error(e)),
            }
        }
        self.flush();
        Ok(RequestHandle {
            id: message.get("id").cloned(),
        })
    }

    /// The whole reply to a message sent with [`send_request`](Self::send_request), waiting
    /// for it up to `timeout` (`None`: as long as it takes); `Ok(None)` if it has not come
    /// by then, and it may still be waited for. Events that arrive meanwhile are queued.
    pub fn wait_request(
        &mut self,
        request: &RequestHandle,
        timeout: Option<Duration>,
    ) -> Result<Option<Value>> {
        let deadline = self.deadline(timeout);
        loop {
            match self.run(Wait::Untracked, deadline, None) {
                Done::Untracked => {
                    if let Some(reply) = self.driver.untracked()
                        && id_matches(reply.id(), request.id.as_ref())
                    {
                        return Ok(Some(reply_value(&reply)));
                    }
                }
                Done::TimedOut => return Ok(None),
                done => return Err(self.ended(done)),
            }
        }
    }

    // ---- pipelining --------------------------------------------------------------------

    /// Writes a typed command without waiting for its reply; collect its result with
    /// [`wait`](Self::wait). Replies to other commands that arrive meanwhile are kept until
    /// asked for.
    ///
    /// With [`Options::max_in_flight`] commands already in flight, this first waits for one
    /// of them to finish, within the command's own deadline. A handle dropped without
    /// [`wait`](Self::wait) or [`abandon`](Self::abandon) leaves its outcome stored in the
    /// client.
    ///
    /// Pipelining pays only with [`Options::oob`] negotiated (the default, when the server
    /// offers it): QEMU's monitor then reads and queues the next commands in its I/O thread
    /// while the main thread runs one (about 1.5× the sequential rate with 8 in flight
    /// against QEMU 7.2; BENCHMARKS.md). Without `oob` QEMU stops reading while a command
    /// runs, so it never holds more than one and pipelined commands go no faster than
    /// sequential ones.
    pub fn send<C>(&mut self, command: &C) -> Result<Handle<C::Output<'static>>>
    where
        C: Command,
        for<'de> C::Output<'de>: DeserializeOwned,
    {
        self.send_as(C::NAME, command, false, None, None)
    }

    /// [`send`](Self::send) by name with JSON arguments.
    pub fn send_raw(&mut self, name: &str, arguments: &Value) -> Result<Handle<Value>> {
        self.send_as(name, arguments, false, None, None)
    }

    /// [`send`](Self::send), out of band (see [`execute_oob`](Self::execute_oob)).
    pub fn send_oob<C>(&mut self, command: &C) -> Result<Handle<C::Output<'static>>>
    where
        C: Command,
        for<'de> C::Output<'de>: DeserializeOwned,
    {
        self.send_as(C::NAME, command, true, None, None)
    }

    /// [`send_raw`](Self::send_raw), out of band.
    pub fn send_oob_raw(&mut self, name: &str, arguments: &Value) -> Result<Handle<Value>> {
        self.send_as(name, arguments, true, None, None)
    }

    /// Waits for the result of a command sent with [`send`](Self::send) or a sibling.
    pub fn wait<T: DeserializeOwned>(&mut self, handle: Handle<T>) -> Result<T> {
        self.wait_id(handle.id, decode)
    }

    /// Gives up on a sent command: its outcome is never yielded, and its reply, when it
    /// comes, is discarded by id (counted in [`discarded_replies`](Self::discarded_replies)).
    pub fn abandon<T>(&mut self, handle: Handle<T>) {
        match self.finished.iter().position(|(id, _)| *id == handle.id) {
            Some(pos) => {
                self.finished.swap_remove(pos);
            }
            None => {
                self.driver.abandon(handle.id);
            }
        }
    }

    // ---- events ------------------------------------------------------------------------

    /// Drains the events received so far, oldest first, without reading the stream (bytes
    /// already read are handled first).
    ///
    /// With [`Options::max_queued_events`], events dropped because the queue was full came
    /// after the drained ones; [`events_lost`](Self::events_lost) counts them (this does not
    /// report the gap as an error, and new events are queued again from now on).
    pub fn events(&mut self) -> vec_deque::Drain<'_, Event> {
        self.handle_buffered();
        let queue = self.driver.events_mut();
        queue.clear_gap();
        queue.store_mut().events.drain(..)
    }

    /// Events dropped since the start because the queue was full (see
    /// [`Options::max_queued_events`]).
    pub fn events_lost(&self) -> u64 {
        self.driver.events().lost_total()
    }

    /// Events received and not yet taken.
    pub fn queued_events(&self) -> usize {
        self.driver.events().len()
    }

    /// The oldest queued event, or the next to arrive within `timeout` ([`Error::Timeout`]
    /// if none does). A zero timeout only looks at what was already received. Once the
    /// queued events are taken, a gap left by a full queue is reported once as
    /// [`Error::Lagged`] (see [`Options::max_queued_events`]).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        self.wait_event_named(None, timeout)
    }

    /// The oldest queued event called `name`, or the next to arrive within `timeout`
    /// ([`Error::Timeout`] if none does). Other events stay queued, in order. If none of the
    /// queued events matches and events were dropped after them because the queue was
    /// full, the gap is reported once as [`Error::Lagged`].
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        self.wait_event_named(Some(name), timeout)
    }

    fn wait_event_named(&mut self, name: Option<&str>, timeout: Duration) -> Result<Event> {
        let deadline = self.now() + timeout;
        match self.run(Wait::Event(name), Some(deadline), None) {
            Done::Event => match self.driver.take_event(name) {
                Some(Ok(event)) => Ok(event),
                Some(Err(lagged)) => Err(Error::Lagged {
                    missed: lagged.missed,
                }),
                None => Err(Error::Timeout(Expired::Event)),
            },
            Done::TimedOut => Err(Error::Timeout(Expired::Event)),
            done => Err(self.ended(done)),
        }
    }

    // ---- internals ---------------------------------------------------------------------

    fn now(&self) -> Instant {
        now_since(self.origin)
    }

    /// The instant `timeout` from now.
    fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        timeout.map(|t| self.now() + t)
    }

    /// Runs a command (without descriptors) and decodes its result.
    pub(crate) fn call<A: Serialize + ?Sized, T: DeserializeOwned>(
        &mut self,
        request: Request<'_, A>,
    ) -> Result<T> {
        self.check_arguments(request.name, request.arguments)?;
        let mut trace = crate::trace::CommandTrace::start(request.name);
        let result = self
            .send_as(
                request.name,
                request.arguments,
                request.oob,
                request.timeout,
                None,
            )
            .and_then(|handle| {
                trace.sent(handle.id());
                self.wait(handle)
            });
        trace.finish(&result);
        result
    }

    /// The optional schema check (`Options::check_arguments`), fetching the schema first.
    fn check_arguments<A: Serialize + ?Sized>(&mut self, name: &str, arguments: &A) -> Result<()> {
        if self.arguments.needs_schema(name) {
            let handle: Handle<Value> =
                self.send_as(crate::check::SCHEMA_COMMAND, &(), false, None, None)?;
            let json = self.wait_id(handle.id, |json| Ok(json.to_owned()))?;
            self.arguments.load(&json)?;
        }
        self.arguments.check(name, arguments)
    }

    /// Queues a command with its own `timeout` (`None`: the command timeout), waiting for
    /// room until its deadline, then writes it out.
    fn send_as<A: Serialize + ?Sized, T>(
        &mut self,
        name: &str,
        arguments: &A,
        oob: bool,
        timeout: Option<Option<Duration>>,
        attach: Option<Attach<'_, S>>,
    ) -> Result<Handle<T>> {
        let at = self.deadline(timeout.unwrap_or(self.options.command_timeout));
        let options = crate::hub::send_options(oob, timeout, attach.is_some(), self.now());
        let id = loop {
            let now = self.now();
            match self.driver.execute(name, arguments, options, now) {
                Ok(id) => break id,
                Err(SendError::QueueFull | SendError::TableFull) => {
                    match self.run(Wait::Room { oob }, at, None) {
                        Done::Room => {}
                        Done::TimedOut => return Err(Error::Timeout(Expired::Command)),
                        done => return Err(self.ended(done)),
                    }
                }
                Err(SendError::Busy) => self.flush(),
                Err(e) => return Err(self.send_error(e)),
            }
        };
        // Written out now, as a blocking client's `send` promises; a cut-off write fails the
        // command, which its `wait` reports.
        self.run(Wait::Flush, None, attach);
        Ok(Handle::new(id))
    }

    /// Syncs with the guest agent again (0xFF and `guest-sync-delimited` with a fresh id),
    /// within the connect timeout.
    pub(crate) fn resync(&mut self) -> Result<()> {
        let now = self.now();
        self.driver.resync(now);
        loop {
            match self.run(Wait::Handshake, None, None) {
                Done::Ready => return Ok(()),
                Done::TimedOut => return Err(Error::Timeout(Expired::Sync)),
                // Another command finished meanwhile: kept for its own wait.
                Done::Completed(id) => self.keep(id),
                done => return Err(self.ended(done)),
            }
        }
    }

    /// The driver, read only.
    pub(crate) fn driver(&self) -> &StdDriver<EventList> {
        &self.driver
    }

    /// Writes out what is queued.
    fn flush(&mut self) {
        self.run(Wait::Flush, None, None);
    }

    /// Waits for command `id`'s outcome, decoding a result straight from the receive buffer.
    fn wait_id<T>(&mut self, id: CommandId, decode: impl FnOnce(&str) -> Result<T>) -> Result<T> {
        let limit = self.options.max_reply_size;
        if let Some(pos) = self.finished.iter().position(|(done, _)| *done == id) {
            return match self.finished.swap_remove(pos).1 {
                Finished::Return(json) => decode(&json),
                Finished::Error(e) => Err(Error::Qmp(e)),
                Finished::Failed(f) => {
                    let reason = self.driver.close_reason();
                    Err(failure_error(f, limit, || {
                        closed_error(reason, self.io_error.take())
                    }))
                }
            };
        }
        match self.run(Wait::Command(id), None, None) {
            Done::Completed(done) if done == id => {
                let reason = self.driver.close_reason();
                let io = &mut self.io_error;
                match self.driver.outcome(id) {
                    Some(outcome) => {
                        outcome_result(outcome, limit, || closed_error(reason, io.take()))
                            .and_then(decode)
                    }
                    None => Err(Error::UnknownHandle),
                }
            }
            Done::NotPending => Err(Error::UnknownHandle),
            done => Err(self.ended(done)),
        }
    }

    /// Handles what was already read, without I/O.
    fn handle_buffered(&mut self) {
        let now = self.now();
        while let Some(done) = self.driver.poll_wait(now, Wait::Idle, None) {
            match done {
                Done::Completed(id) => self.keep(id),
                _ => break,
            }
        }
    }

    /// Copies out the outcome of command `id`, which finished while another was awaited.
    fn keep(&mut self, id: CommandId) {
        let finished = match self.driver.outcome(id) {
            Some(Outcome::Return(value)) => Finished::Return(value.as_json().into()),
            Some(Outcome::Error(e)) => Finished::Error(QmpError::from_view(&e)),
            Some(Outcome::Failed(f)) => Finished::Failed(f),
            None => return,
        };
        self.finished.push((id, finished));
    }

    /// The error for a wait that ended without what it waited for.
    fn ended(&mut self, done: Done) -> Error {
        match done {
            Done::Closed(reason) => closed_error(Some(reason), self.io_error.take()),
            Done::TimedOut => Error::Timeout(Expired::Command),
            _ => closed_error(self.driver.close_reason(), self.io_error.take()),
        }
    }

    /// The error for a command the driver refused to queue.
    fn send_error(&mut self, e: SendError) -> Error {
        match e {
            SendError::Closed => closed_error(self.driver.close_reason(), self.io_error.take()),
            SendError::Encode(e) => Error::Encode(e),
            e => Error::Refused(e),
        }
    }

    /// The I/O loop: runs the driver until `wait` is over, writing and reading as it says,
    /// with reads bounded by its deadlines. Commands that finish meanwhile (other than the
    /// one waited for) are kept for their own `wait`. `attach` sends the first bytes of a
    /// command queued with an attachment.
    fn run(
        &mut self,
        wait: Wait<'_>,
        deadline: Option<Instant>,
        mut attach: Option<Attach<'_, S>>,
    ) -> Done {
        loop {
            let now = now_since(self.origin);
            match self.driver.poll_io(now, wait, deadline) {
                Io::Write {
                    bytes,
                    attach: first,
                } => {
                    let written = match (&mut attach, first) {
                        (Some(send), true) => send(&mut self.stream, bytes),
                        _ => self.stream.write_some(bytes),
                    };
                    let now = now_since(self.origin);
                    match written {
                        Ok(n) => self.driver.handle_written(n, now),
                        Err(e) => {
                            let kind = link_error(&e);
                            if kind == qmp_proto::LinkError::Fatal {
                                self.io_error = Some(e);
                            }
                            self.driver.handle_write_error(kind, now);
                        }
                    }
                }
                Io::Read { buf, until } => {
                    self.timer.arm(
                        &mut self.stream,
                        until.map(|u| u.saturating_duration_since(now)),
                    );
                    let read = self.stream.read(buf);
                    let now = now_since(self.origin);
                    match read {
                        Ok(n) => self.driver.handle_read(n, now),
                        Err(e) => {
                            let kind = link_error(&e);
                            if kind == qmp_proto::LinkError::Fatal {
                                self.io_error = Some(e);
                            }
                            self.driver.handle_read_error(kind, now);
                        }
                    }
                }
                Io::Done(Done::Completed(id))
                    if wait != Wait::Command(id) && wait != Wait::Handshake =>
                {
                    self.keep(id);
                }
                Io::Done(done) => return done,
            }
        }
    }
}

/// A client taken apart, for [`SharedClient`](crate::SharedClient): the driver goes on
/// over the same stream.
pub(crate) struct ClientParts<S> {
    pub(crate) stream: S,
    /// The driver, mid-connection (queued events and all).
    pub(crate) driver: StdDriver<EventList>,
    pub(crate) options: Options,
    /// The driver's `Instant`s are microseconds since this.
    pub(crate) origin: std::time::Instant,
}

impl<S: Stream> Client<S> {
    /// Takes the client apart: the outcomes of commands sent and not waited for are dropped,
    /// and the stream's read timeout is left as it was.
    pub(crate) fn into_parts(mut self) -> ClientParts<S> {
        self.flush();
        ClientParts {
            stream: self.stream,
            driver: self.driver,
            options: self.options,
            origin: self.origin,
        }
    }
}

impl<S: FdStream> Client<S> {
    command_verbs! {
        fds: [mut] [] [] call_with_fds,
        execute_with_fds: {
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
        }
    }

    /// [`send`](Self::send) with file descriptors attached; see
    /// [`execute_with_fds`](Self::execute_with_fds).
    pub fn send_with_fds<C>(
        &mut self,
        command: &C,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Handle<C::Output<'static>>>
    where
        C: Command,
        for<'de> C::Output<'de>: DeserializeOwned,
    {
        let mut send = |stream: &mut S, bytes: &[u8]| stream.send_with_fds(bytes, fds);
        self.send_as(C::NAME, command, false, None, Some(&mut send))
    }

    /// [`send_raw`](Self::send_raw) with file descriptors attached; see
    /// [`execute_with_fds`](Self::execute_with_fds).
    pub fn send_raw_with_fds(
        &mut self,
        name: &str,
        arguments: &Value,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Handle<Value>> {
        let mut send = |stream: &mut S, bytes: &[u8]| stream.send_with_fds(bytes, fds);
        self.send_as(name, arguments, false, None, Some(&mut send))
    }

    /// Runs a command, its descriptors sent with its first bytes, and decodes its result.
    fn call_with_fds<A: Serialize + ?Sized, T: DeserializeOwned>(
        &mut self,
        request: Request<'_, A>,
    ) -> Result<T> {
        self.check_arguments(request.name, request.arguments)?;
        let fds = request.fds;
        let mut send = |stream: &mut S, bytes: &[u8]| stream.send_with_fds(bytes, fds);
        let handle = self.send_as(
            request.name,
            request.arguments,
            request.oob,
            request.timeout,
            Some(&mut send),
        )?;
        self.wait(handle)
    }
}
