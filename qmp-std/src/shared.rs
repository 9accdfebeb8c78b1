//! A blocking client that many threads share: [`SharedClient`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use qmp_proto::{Expired, SendError};

use crate::client::{Client, ClientBuilder, ClientParts, Options};
use crate::commands::{Command, HumanMonitorCommand};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::router::{Answer, Closed, Router, Waiter};
use crate::stream::Stream;
use qmp_proto::ServerInfo;

/// How many events a [`Subscription`] holds before it starts dropping the oldest (and says
/// so with [`Error::Lagged`]), unless [`SharedClient::subscribe_with_capacity`] says
/// otherwise.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 1024;

/// The reader thread's read size.
const READ_CHUNK: usize = 16 << 10;

/// A [`Stream`] that can be read on one thread while it is written on others, as
/// [`SharedClient`] does: implemented for [`UnixStream`] and [`TcpStream`].
pub trait SplitStream: Stream + Send + Sync + 'static {
    /// Another handle to the same connection.
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;

    /// Shuts both directions down, which wakes a read blocked on another handle.
    fn shutdown(&self) -> io::Result<()>;
}

impl SplitStream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, Shutdown::Both)
    }
}

impl SplitStream for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self) -> io::Result<()> {
        TcpStream::shutdown(self, Shutdown::Both)
    }
}

impl Waiter for mpsc::Sender<Answer> {
    fn answer(&mut self, answer: Answer) {
        let _ = self.send(answer);
    }
}

/// One subscriber's queue.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<Event>,
    capacity: usize,
    missed: u64,
    closed: Option<Closed>,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState {
                capacity: capacity.max(1),
                ..QueueState::default()
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, event: Event) {
        let mut st = self.lock();
        if st.events.len() >= st.capacity {
            st.events.pop_front();
            st.missed += 1;
        }
        st.events.push_back(event);
        self.ready.notify_one();
    }

    fn close(&self, why: &Closed) {
        self.lock().closed.get_or_insert_with(|| why.clone());
        self.ready.notify_all();
    }
}

/// What the lock guards: the session and its waiters, and the subscribers.
#[derive(Debug)]
struct State {
    router: Router<mpsc::Sender<Answer>>,
    subscribers: Vec<Weak<Queue>>,
    /// The first subscriber's queue, made at the start so that it misses nothing.
    first: Option<Arc<Queue>>,
}

impl State {
    fn fan_out(subscribers: &mut Vec<Weak<Queue>>, event: &qmp_proto::Event<'_>) {
        let event = Event::from_view(event);
        subscribers.retain(|queue| match queue.upgrade() {
            Some(queue) => {
                queue.push(event.clone());
                true
            }
            None => false,
        });
    }

    /// Feeds bytes the reader thread read; returns how many command slots were freed.
    fn receive(&mut self, bytes: &[u8]) -> usize {
        let Self {
            router,
            subscribers,
            ..
        } = self;
        router.receive(bytes, |e| Self::fan_out(subscribers, e))
    }

    fn close(&mut self, why: Closed) {
        let Self {
            router,
            subscribers,
            ..
        } = self;
        router.close(why.clone(), |e| Self::fan_out(subscribers, e));
        for queue in self.subscribers.drain(..).filter_map(|q| q.upgrade()) {
            queue.close(&why);
        }
    }
}

/// The connection, shared by every handle and the reader thread.
struct Inner {
    state: Mutex<State>,
    /// Signalled when command slots free up, or the connection closes.
    room: Condvar,
    /// The writing side: one command at a time goes out whole.
    writer: Mutex<Box<dyn Stream + Send>>,
    /// Shuts the connection down from any thread.
    closer: Box<dyn Fn() + Send + Sync>,
    closing: AtomicBool,
    server: ServerInfo,
    command_timeout: Option<Duration>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, st: &mut State, why: Closed) {
        st.close(why);
        self.room.notify_all();
    }
}

/// The reader thread: reads, routes replies to their callers and events to subscribers,
/// until the connection ends.
fn read_loop(inner: Arc<Inner>, mut stream: impl io::Read) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let result = stream.read(&mut buf);
        let mut st = inner.lock();
        let why = match result {
            Ok(0) => Closed::Eof,
            Ok(n) => {
                if st.receive(&buf[..n]) > 0 {
                    inner.room.notify_all();
                }
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => Closed::from_io(&e),
        };
        let why = if inner.closing.load(Ordering::Acquire) {
            Closed::Local
        } else {
            why
        };
        inner.close(&mut st, why);
        return;
    }
}

/// Closes the connection and joins the reader thread when the last handle goes.
struct Owner {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        (self.inner.closer)();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A blocking QMP client that many threads share: `Clone + Send + Sync`, one connection.
///
/// A reader thread reads the connection all the time (so QEMU is never blocked on a full
/// socket), hands each reply to the thread whose command it answers (matched by id, through
/// the same qmp-proto session as [`Client`]), and each event to every [`Subscription`].
/// Callers encode under a short lock and write their command whole under a second one;
/// at most [`Options::max_in_flight`] in-band commands are in flight, and more wait for room.
///
/// A command that times out ([`Options::command_timeout`], or
/// [`execute_timeout`](Self::execute_timeout)) is abandoned: its late reply is discarded by
/// id and the connection stays in step. When the connection ends, every waiting command
/// fails, and every later one; dropping the last handle (or [`close`](Self::close)) ends it.
///
/// ```no_run
/// use std::thread;
/// use qmp_std::commands::QueryStatus;
///
/// let qmp = qmp_std::SharedClient::connect_unix("/tmp/qmp.sock")?;
/// let events = qmp.subscribe();
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let qmp = qmp.clone();
///         thread::spawn(move || qmp.execute(&QueryStatus).map(|s| s.status))
///     })
///     .collect();
/// for worker in workers {
///     println!("{:?}", worker.join().unwrap()?);
/// }
/// println!("{} events so far", events.queued());
/// # Ok::<(), qmp_std::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedClient {
    owner: Arc<Owner>,
}

impl fmt::Debug for SharedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedClient")
            .field("server", &self.inner().server)
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<S: SplitStream> Client<S> {
    /// Turns this client into a [`SharedClient`] over the same connection (events queued and
    /// not yet taken go to the first subscriber).
    pub fn into_shared(self) -> Result<SharedClient> {
        SharedClient::from_client(self)
    }
}

// TODO(#11): a bridge until the SharedClient runs the driver it is handed: a fresh session
// brought to where the client's driver is (greeted, negotiated as it was), and the events
// the driver queued.
fn legacy_session<S>(
    parts: &mut ClientParts<S>,
) -> (
    qmp_proto::Session<Vec<u8>, { crate::drive::TABLE }>,
    ServerInfo,
    Vec<Event>,
) {
    let options = &parts.options;
    let config = crate::drive::driver_config(options, options.max_in_flight).session;
    let size = options
        .initial_buffer
        .max(4096)
        .min(options.max_reply_size.max(4096));
    let mut session = qmp_proto::Session::with_config(vec![0; size], config);
    let server = parts.driver.server().cloned().expect("greeted");
    let greeting = serde_json::json!({"QMP": {
        "version": {"qemu": {"major": server.version.major, "minor": server.version.minor,
            "micro": server.version.micro}, "package": server.package.as_str()},
        "capabilities": if server.oob_offered { vec!["oob"] } else { vec![] },
    }});
    let _ = session.feed(greeting.to_string().as_bytes());
    while session.poll().is_some() {}
    if parts.driver.state() == qmp_proto::State::Ready {
        let mut out = [0u8; 128];
        if let Ok(sent) = session.negotiate(server.oob_enabled, None, &mut out) {
            let reply = format!(r#"{{"return": {{}}, "id": {}}}"#, sent.id.get());
            let _ = session.feed(reply.as_bytes());
            while session.poll().is_some() {}
        }
    }
    let events = parts
        .driver
        .events_mut()
        .store_mut()
        .events
        .drain(..)
        .collect();
    (session, server, events)
}

impl SharedClient {
    /// Connects to a QMP Unix socket with default [`Options`] and does the handshake.
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Self> {
        ClientBuilder::new().connect_unix(path)?.into_shared()
    }

    /// Connects to a QMP TCP socket with default [`Options`] and does the handshake.
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Self> {
        ClientBuilder::new().connect_tcp(addr)?.into_shared()
    }

    /// Shares a connected client (built with [`ClientBuilder`] for other options).
    pub fn from_client<S: SplitStream>(client: Client<S>) -> Result<Self> {
        let mut parts = client.into_parts();
        if parts.driver.is_closed() {
            return Err(Error::Disconnected);
        }
        let (session, server, events) = legacy_session(&mut parts);
        let mut reader = parts.stream.try_clone()?;
        // The blocking client bounds its reads with a read timeout; the reader thread blocks.
        reader.set_read_timeout(None)?;
        let closer = parts.stream.try_clone()?;
        let options: Options = parts.options;
        let first = Arc::new(Queue::new(DEFAULT_SUBSCRIPTION_CAPACITY));
        for event in events {
            first.push(event);
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                router: Router::new(session, options.max_reply_size),
                subscribers: vec![Arc::downgrade(&first)],
                first: Some(first),
            }),
            room: Condvar::new(),
            writer: Mutex::new(Box::new(parts.stream)),
            closer: Box::new(move || {
                let _ = closer.shutdown();
            }),
            closing: AtomicBool::new(false),
            server,
            command_timeout: options.command_timeout,
        });
        let reader = {
            let inner = Arc::clone(&inner);
            thread::Builder::new()
                .name("qmp-reader".into())
                .spawn(move || read_loop(inner, reader))?
        };
        Ok(Self {
            owner: Arc::new(Owner {
                inner,
                reader: Some(reader),
            }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.owner.inner
    }

    /// What the server's greeting said.
    pub fn server(&self) -> &ServerInfo {
        &self.inner().server
    }

    /// Whether out-of-band execution was negotiated.
    pub fn oob_enabled(&self) -> bool {
        self.inner().lock().router.session().oob_enabled()
    }

    /// Whether the connection is gone (every later command fails).
    pub fn is_closed(&self) -> bool {
        self.inner().lock().router.closed().is_some()
    }

    /// Commands sent and not answered yet, abandoned ones still owed a reply included.
    pub fn in_flight(&self) -> usize {
        self.inner().lock().router.session().in_flight()
    }

    /// Late replies to abandoned (timed-out) commands, discarded by id so far.
    pub fn discarded_replies(&self) -> u64 {
        self.inner().lock().router.discarded()
    }

    /// Messages dropped as the protocol asks (replies matching no command, id-less errors,
    /// malformed frames without a command to blame), so far.
    pub fn dropped_messages(&self) -> u64 {
        self.inner().lock().router.dropped()
    }

    /// Closes the connection now, for every handle: waiting commands fail with
    /// [`Error::Disconnected`], subscriptions end.
    pub fn close(&self) {
        self.inner().closing.store(true, Ordering::Release);
        (self.inner().closer)();
    }

    /// A new subscriber: every event that arrives from now on (the first subscriber also
    /// gets those received since the connection was made), up to
    /// [`DEFAULT_SUBSCRIPTION_CAPACITY`] unread.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_with_capacity(DEFAULT_SUBSCRIPTION_CAPACITY)
    }

    /// [`subscribe`](Self::subscribe), holding up to `capacity` unread events.
    pub fn subscribe_with_capacity(&self, capacity: usize) -> Subscription {
        let mut st = self.inner().lock();
        let queue = match st.first.take() {
            Some(first) => {
                first.lock().capacity = capacity.max(1);
                first
            }
            None => {
                let queue = Arc::new(Queue::new(capacity));
                match st.router.closed() {
                    Some(why) => queue.close(why),
                    None => st.subscribers.push(Arc::downgrade(&queue)),
                }
                queue
            }
        };
        Subscription {
            queue,
            ended: false,
        }
    }

    // ---- commands ----------------------------------------------------------------------

    /// Runs a typed command and waits for its result (within the command timeout).
    pub fn execute<C: Command>(&self, command: &C) -> Result<C::Output> {
        self.execute_timeout(command, self.inner().command_timeout)
    }

    /// [`execute`](Self::execute) with a deadline of its own (`None`: wait forever), which
    /// also bounds waiting for room in flight. When it passes, the command is abandoned (its
    /// late reply is discarded) and this returns [`Error::Timeout`].
    pub fn execute_timeout<C: Command>(
        &self,
        command: &C,
        timeout: Option<Duration>,
    ) -> Result<C::Output> {
        let json = self.call(false, C::NAME, command, timeout)?;
        serde_json::from_str(&json).map_err(Error::Decode)
    }

    /// Runs a command by name with JSON arguments (an object, or `Value::Null` for none) and
    /// returns its result as JSON.
    pub fn execute_raw(&self, name: &str, arguments: &Value) -> Result<Value> {
        self.execute_raw_timeout(name, arguments, self.inner().command_timeout)
    }

    /// [`execute_raw`](Self::execute_raw) with a deadline of its own; see
    /// [`execute_timeout`](Self::execute_timeout).
    pub fn execute_raw_timeout(
        &self,
        name: &str,
        arguments: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let json = self.call(false, name, arguments, timeout)?;
        serde_json::from_str(&json).map_err(Error::Decode)
    }

    /// Runs a typed command out of band (`exec-oob`); needs [`Options::oob`].
    pub fn execute_oob<C: Command>(&self, command: &C) -> Result<C::Output> {
        let json = self.call(true, C::NAME, command, self.inner().command_timeout)?;
        serde_json::from_str(&json).map_err(Error::Decode)
    }

    /// [`execute_raw`](Self::execute_raw), out of band.
    pub fn execute_oob_raw(&self, name: &str, arguments: &Value) -> Result<Value> {
        let json = self.call(true, name, arguments, self.inner().command_timeout)?;
        serde_json::from_str(&json).map_err(Error::Decode)
    }

    /// Runs an HMP command line through `human-monitor-command` and returns its output.
    pub fn hmp(&self, command_line: &str) -> Result<String> {
        self.execute(&HumanMonitorCommand::new(command_line))
    }

    fn call<A: Serialize + ?Sized>(
        &self,
        oob: bool,
        name: &str,
        arguments: &A,
        timeout: Option<Duration>,
    ) -> Answer {
        let inner = self.inner();
        let deadline = timeout.map(|t| Instant::now() + t);
        let (reply, answer) = mpsc::channel();
        let mut bytes = Vec::new();
        let id = {
            let mut st = inner.lock();
            let id = loop {
                match st.router.encode(oob, name, arguments, &mut bytes) {
                    Ok(id) => break id,
                    Err(Error::Refused(SendError::QueueFull | SendError::TableFull)) => {
                        st = match deadline {
                            None => inner.room.wait(st).unwrap_or_else(|p| p.into_inner()),
                            Some(deadline) => {
                                let now = Instant::now();
                                if now >= deadline {
                                    return Err(Error::Timeout(Expired::Command));
                                }
                                inner
                                    .room
                                    .wait_timeout(st, deadline - now)
                                    .unwrap_or_else(|p| p.into_inner())
                                    .0
                            }
                        };
                    }
                    Err(e) => return Err(e),
                }
            };
            st.router.register(id, reply);
            id
        };
        let written = {
            let mut writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer.write_message(&bytes)
        };
        if let Err(e) = written {
            let mut st = inner.lock();
            st.router.forget(id);
            let why = Closed::from_io(&e);
            if why != Closed::Eof {
                // Part of a command may be on the wire: the connection is out of step.
                drop(st);
                inner.closing.store(true, Ordering::Release);
                (inner.closer)();
                return Err(Error::Io(e));
            }
            return Err(Error::Disconnected);
        }
        let received = match deadline {
            None => answer.recv().ok(),
            Some(deadline) => {
                match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(a) => Some(a),
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let mut st = inner.lock();
                        // The reply may have come while the lock was taken.
                        if let Ok(a) = answer.try_recv() {
                            return a;
                        }
                        st.router.abandon(id);
                        return Err(Error::Timeout(Expired::Command));
                    }
                }
            }
        };
        received.unwrap_or_else(|| {
            Err(inner
                .lock()
                .router
                .closed()
                .map_or(Error::Disconnected, Closed::error))
        })
    }
}

/// One subscriber's events from a [`SharedClient`], in arrival order.
///
/// Unread events wait in the subscription, up to its capacity; past it the oldest are
/// dropped, and the next read returns `Err(Error::Lagged { missed })` before the events that
/// remain. Once the connection has ended and every event is read, reads return its error
/// ([`Error::Disconnected`] or [`Error::Io`]). As an [`Iterator`], it blocks for each event
/// and ends after that error.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
    ended: bool,
}

impl Subscription {
    fn take(st: &mut QueueState) -> Option<Result<Event>> {
        if st.missed > 0 {
            let missed = std::mem::take(&mut st.missed);
            return Some(Err(Error::Lagged { missed }));
        }
        if let Some(event) = st.events.pop_front() {
            return Some(Ok(event));
        }
        st.closed.as_ref().map(|why| Err(why.error()))
    }

    /// The next event, waiting as long as it takes.
    pub fn recv(&self) -> Result<Event> {
        let mut st = self.queue.lock();
        loop {
            if let Some(item) = Self::take(&mut st) {
                return item;
            }
            st = self.queue.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next event, or [`Error::Timeout`] if none comes within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        let mut st = self.queue.lock();
        loop {
            if let Some(item) = Self::take(&mut st) {
                return item;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(Expired::Event));
            }
            st = self
                .queue
                .ready
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The next event if one is waiting (or the lag or end notice), without blocking.
    pub fn try_recv(&self) -> Option<Result<Event>> {
        Self::take(&mut self.queue.lock())
    }

    /// Events waiting to be read.
    pub fn queued(&self) -> usize {
        self.queue.lock().events.len()
    }
}

impl Iterator for Subscription {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        if self.ended {
            return None;
        }
        let item = self.recv();
        if item.as_ref().is_err_and(Error::is_disconnect) {
            self.ended = true;
        }
        Some(item)
    }
}
