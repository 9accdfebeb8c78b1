//! A blocking client that many threads share: [`SharedClient`].
//!
//! # How it works
//! The connection is one [`qmp_proto::Driver`] (the same loop every client of this crate
//! runs) behind a mutex, with a table of who waits for which command. The driver decides
//! everything protocol: ids, room in flight, deadlines, what a failed write means, the end
//! of the connection. Around it:
//! - A caller locks, has the driver encode its command ([`Driver::execute`](qmp_proto::Driver::execute),
//!   with the command's deadline), takes the bytes out of the driver's transmit buffer and
//!   registers a channel for its answer; then, outside that lock, it writes the bytes whole
//!   under a second (writer) lock, so a blocked write never stops the reader. No room
//!   (QEMU's queue or the in-flight table full): it waits until a command completes,
//!   bounded by the command's deadline. A failed write is reported to the driver.
//! - A reader thread reads into a buffer of its own with blocking reads, then, under the
//!   lock, feeds the driver and delivers what completed: each outcome to its caller's
//!   channel, each event to every [`Subscription`]. Its read timeout is the driver's next
//!   deadline, after which it lets the driver apply the time; a caller whose own wait ends
//!   first does the same, so deadlines hold while the reader is blocked.
//! - Events: each subscription is a queue of its own with the one overflow rule of
//!   [`qmp_proto::EventQueue`]: past its capacity, the newest events are dropped and the
//!   gap is reported once, where it is, as [`Error::Lagged`].
//!
//! A command whose deadline passes fails with [`Error::Timeout`]; the driver keeps its slot
//! until the late reply, which it discards by id, so the connection stays in step.

use std::fmt;
use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use qmp_proto::{Done, Expired, LinkError, SendError, ServerInfo};

use crate::client::{Client, ClientBuilder, Options};
use serde::de::DeserializeOwned;

use crate::commands::{Command, HumanMonitorCommand};
use crate::drive::{self, Answer, Request};
use crate::error::decode;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hub::{self, Hub, copy_io};
use crate::stream::{FdStream, Stream};

/// How many events a [`Subscription`] holds before it drops new ones (and says so with
/// [`Error::Lagged`]), unless [`SharedClient::subscribe_with_capacity`] says otherwise.
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

    /// Writes the start of `bytes` with file descriptors attached (`SCM_RIGHTS`); returns
    /// how many bytes went. Unix sockets only: the default says it is unsupported.
    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let _ = (bytes, fds);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "file descriptors can only be passed over a Unix socket",
        ))
    }
}

impl SplitStream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, Shutdown::Both)
    }
    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        FdStream::send_with_fds(self, bytes, fds)
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

/// One subscriber's queue: a reader waits on its condition variable.
type Queue = hub::Queue<Condvar>;

/// What the lock guards: the driver, who waits for which command, and the subscribers.
type State = Hub<mpsc::Sender<Answer>, Condvar>;

/// The connection, shared by every handle and the reader thread.
struct Inner {
    state: Mutex<State>,
    /// Signalled when a command completes (room may have freed), or the connection ends.
    room: Condvar,
    /// The writing side: one command at a time goes out whole.
    writer: Mutex<Box<dyn SplitStream>>,
    /// Shuts the connection down from any thread.
    closer: Box<dyn Fn() + Send + Sync>,
    closing: AtomicBool,
    server: ServerInfo,
    origin: Instant,
    command_timeout: Option<Duration>,
    max_reply_size: usize,
    /// The optional check of arguments against the schema (`Options::check_arguments`).
    arguments: crate::check::ArgumentCheck,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> qmp_proto::Instant {
        drive::now_since(self.origin)
    }

    /// Delivers what the driver completed, and wakes those waiting for room.
    fn deliver(&self, st: &mut State) {
        let mut freed = false;
        while let Some(done) = st.driver.poll() {
            match done {
                Done::Completed(id) => {
                    freed = true;
                    st.complete(id, self.max_reply_size);
                }
                Done::Event => st.fan_out(),
                Done::Closed(reason) => {
                    st.end(reason);
                    self.room.notify_all();
                    return;
                }
                _ => {}
            }
        }
        st.fan_out();
        if freed {
            self.room.notify_all();
        }
    }

    /// Lets the driver apply the time (deadlines, stall), and delivers.
    fn tick(&self, st: &mut State) {
        st.driver.handle_timeout(self.now());
        self.deliver(st);
    }

    /// When the driver next has something to do without input, as a std instant.
    fn next_timeout(&self, st: &State) -> Option<Instant> {
        st.driver
            .poll_timeout()
            .map(|at| drive::std_instant(self.origin, at))
    }
}

/// The reader thread: reads, feeds the driver and delivers, until the connection ends.
fn read_loop(inner: Arc<Inner>, mut stream: Box<dyn SplitStream>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let result = stream.read(&mut buf);
        let mut st = inner.lock();
        let now = inner.now();
        match result {
            Ok(0) => st.driver.handle_eof(),
            Ok(n) => {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = st.driver.feed(rest, now);
                    rest = &rest[taken..];
                    inner.deliver(&mut st);
                }
            }
            Err(e) => {
                if inner.closing.load(Ordering::Acquire) {
                    st.driver.close();
                } else {
                    st.read_failed(e, now);
                }
            }
        }
        inner.tick(&mut st);
        if st.ended.is_some() {
            return;
        }
        // Sleep in the read no longer than until the driver's next deadline.
        let wake = inner.next_timeout(&st);
        drop(st);
        let timeout = wake.map(|at| {
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        let _ = stream.set_read_timeout(timeout);
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
/// socket) and hands each outcome to the thread whose command it answers (matched by id by
/// the same [`qmp_proto::Driver`] every client runs), and each event to every
/// [`Subscription`]. Callers encode under a short lock and write their command whole under
/// a second one; at most [`Options::max_in_flight`] in-band commands are in flight, and
/// more wait for room.
///
/// A command that times out ([`Options::command_timeout`], or
/// [`execute_timeout`](Self::execute_timeout)) fails with [`Error::Timeout`]: its late reply
/// is discarded by id and the connection stays in step. When the connection ends, every
/// waiting command fails, and every later one; dropping the last handle (or
/// [`close`](Self::close)) ends it.
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
        hub::fmt_client(
            f,
            "SharedClient",
            self.server(),
            self.in_flight(),
            self.is_closed(),
        )
    }
}

impl<S: SplitStream> Client<S> {
    /// Turns this client into a [`SharedClient`] over the same connection (events queued and
    /// not yet taken go to the first subscriber). Fails with
    /// `Error::Refused(SendError::Busy)` while commands sent with [`Client::send`] still
    /// wait for their replies.
    pub fn into_shared(self) -> Result<SharedClient> {
        SharedClient::from_client(self)
    }
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

    /// Shares a connected client (built with [`ClientBuilder`] for other options); see
    /// [`Client::into_shared`].
    pub fn from_client<S: SplitStream>(client: Client<S>) -> Result<Self> {
        let parts = client.into_parts();
        let driver = parts.driver;
        if driver.is_closed() {
            return Err(Error::Disconnected);
        }
        // Outcomes of commands the blocking client sent would have no one to go to.
        if driver.in_flight() > 0 {
            return Err(Error::Refused(SendError::Busy));
        }
        let origin = parts.origin;
        let server = match driver.server() {
            Some(server) => server.clone(),
            None if driver.is_agent() => crate::agent::server_info(),
            None => return Err(Error::Disconnected),
        };
        let mut reader = parts.stream.try_clone()?;
        // The reader thread's read timeout follows the driver's deadlines.
        reader.set_read_timeout(None)?;
        let closer = parts.stream.try_clone()?;
        let options: Options = parts.options;
        // Events the client queued and nobody took go to the first subscriber.
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(driver, Some(DEFAULT_SUBSCRIPTION_CAPACITY))),
            room: Condvar::new(),
            writer: Mutex::new(Box::new(parts.stream)),
            closer: Box::new(move || {
                let _ = closer.shutdown();
            }),
            closing: AtomicBool::new(false),
            server,
            origin,
            command_timeout: options.command_timeout,
            max_reply_size: options.max_reply_size,
            arguments: crate::check::ArgumentCheck::new(&options),
        });
        inner.deliver(&mut inner.lock());
        let reader = {
            let inner = Arc::clone(&inner);
            thread::Builder::new()
                .name("qmp-reader".into())
                .spawn(move || read_loop(inner, Box::new(reader)))?
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

    hub_getters!();

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
        let queue = self.inner().lock().subscribe(Some(capacity.max(1)));
        Subscription {
            queue,
            ended: false,
        }
    }

    // ---- commands ----------------------------------------------------------------------

    command_verbs! {
        commands: [] [] [] call,
        oob: "Options::oob",
        execute: {}
    }

    command_verbs! {
        fds: [] [] [] call,
        execute_with_fds: {}
    }

    /// Runs a command and decodes its result.
    fn call<A: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        request: Request<'_, A>,
    ) -> Result<T> {
        let check = &self.inner().arguments;
        if check.needs_schema(request.name) {
            let fetch = Request::new(false, crate::check::SCHEMA_COMMAND, &(), None, &[]);
            // Traced as a span of its own (its id), without a closing event.
            let mut trace = crate::trace::CommandTrace::start(crate::check::SCHEMA_COMMAND);
            check.load(&self.answer(fetch, &mut trace)?)?;
        }
        check.check(request.name, request.arguments)?;
        let mut trace = crate::trace::CommandTrace::start(request.name);
        let result = self
            .answer(request, &mut trace)
            .and_then(|text| decode(&text));
        trace.finish(&result);
        result
    }

    /// Runs a command: its result's JSON text, or the error.
    fn answer<A: Serialize + ?Sized>(
        &self,
        request: Request<'_, A>,
        trace: &mut crate::trace::CommandTrace<'_>,
    ) -> Answer {
        let inner = self.inner();
        let own = request.timeout;
        let (oob, name, arguments, timeout, fds) = request.parts(inner.command_timeout);
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let options = hub::send_options(oob, own, !fds.is_empty(), inner.now());
        let (reply, answer) = mpsc::channel();
        let mut bytes = Vec::new();
        let id = {
            let mut st = inner.lock();
            let id = loop {
                match st.execute(name, arguments, options, inner.now())? {
                    Some(id) => {
                        trace.sent(id.get());
                        break id;
                    }
                    // No room: wait until a command completes, within the deadline.
                    None => {
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
                }
            };
            // The bytes leave the driver now; this thread writes them.
            let now = inner.now();
            while let Some(queued) = st.driver.poll_transmit() {
                bytes.extend_from_slice(queued);
                let n = queued.len();
                st.driver.handle_written(n, now);
            }
            st.wait_for(id, reply);
            id
        };
        let written = {
            let mut writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            if fds.is_empty() {
                writer.write_message(&bytes)
            } else {
                writer.send_with_fds(&bytes, fds).and_then(|n| {
                    if n < bytes.len() {
                        writer.write_message(&bytes[n..])
                    } else {
                        Ok(())
                    }
                })
            }
        };
        if let Err(e) = written {
            // The command never (wholly) reached the server.
            let mut st = inner.lock();
            st.abandon(id);
            let kind = match drive::link_error(&e) {
                // Part of it may be on the wire, marked written: the stream is out of step.
                LinkError::Transient => LinkError::Fatal,
                kind => kind,
            };
            let error = if kind == LinkError::Closed {
                Error::Disconnected
            } else {
                st.io_error = Some(copy_io(&e));
                Error::Io(e)
            };
            st.driver.handle_write_error(kind, inner.now());
            inner.deliver(&mut st);
            if kind == LinkError::Fatal {
                drop(st);
                (inner.closer)();
            }
            return Err(error);
        }
        // Wait for the answer. The reader applies the driver's deadlines when it wakes; if
        // this wait ends first, this thread does it.
        let mut wake = min_instant(deadline, inner.next_timeout(&inner.lock()));
        loop {
            let received = match wake {
                None => answer
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(at) => answer.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match received {
                Ok(answer) => return answer,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(inner.lock().closed_error());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let mut st = inner.lock();
                    inner.tick(&mut st);
                    if let Ok(answer) = answer.try_recv() {
                        return answer;
                    }
                    let next = inner.next_timeout(&st);
                    // Never spin: wake no earlier than a millisecond from now.
                    wake = min_instant(deadline, next)
                        .map(|at| at.max(Instant::now() + Duration::from_millis(1)));
                }
            }
        }
    }
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One subscriber's events from a [`SharedClient`], in arrival order.
///
/// Unread events wait in the subscription, up to its capacity. Past it, new events are
/// dropped (the one overflow rule of [`qmp_proto::EventQueue`]): once the events before the
/// gap are read, the next read returns `Err(Error::Lagged { missed })`, once, and the
/// events after the gap follow. Once the connection has ended and every event is read,
/// reads return its error ([`Error::Disconnected`], [`Error::Stalled`] or [`Error::Io`]).
/// As an [`Iterator`], it blocks for each event and ends after that error.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
    ended: bool,
}

impl Subscription {
    fn take(st: &mut hub::QueueState<()>, name: Option<&str>) -> Option<Result<Event>> {
        st.take(name)
            .or_else(|| st.ended.as_ref().map(|ended| Err(ended.error())))
    }

    fn wait(&self, name: Option<&str>, timeout: Option<Duration>) -> Result<Event> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.queue.lock();
        loop {
            if let Some(item) = Self::take(&mut st, name) {
                return item;
            }
            st = match deadline {
                None => self.queue.ready.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::Timeout(Expired::Event));
                    }
                    self.queue
                        .ready
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// The next event (or gap), waiting as long as it takes.
    pub fn recv(&self) -> Result<Event> {
        self.wait(None, None)
    }

    /// The next event (or gap), or `Error::Timeout(Expired::Event)` if none comes within
    /// `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event> {
        self.wait(None, Some(timeout))
    }

    /// The next event (or gap) within `timeout`, as the blocking client's
    /// [`Client::next_event`]: the same as [`recv_timeout`](Self::recv_timeout).
    pub fn next_event(&self, timeout: Duration) -> Result<Event> {
        self.wait(None, Some(timeout))
    }

    /// The oldest event called `name`, waiting up to `timeout` for one to arrive; other
    /// events stay queued in this subscription, in order. A gap is reported
    /// ([`Error::Lagged`]) when no such event is queued before it.
    pub fn wait_event(&self, name: &str, timeout: Duration) -> Result<Event> {
        self.wait(Some(name), Some(timeout))
    }

    /// The next event if one is waiting (or the lag or end notice), without blocking.
    pub fn try_recv(&self) -> Option<Result<Event>> {
        Self::take(&mut self.queue.lock(), None)
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
