//! An async QMP client on tokio (feature `tokio`): one connection, shared by any number of
//! tasks through cheap clones of [`Client`].
//!
//! ```no_run
//! # async fn run() -> qmp_std::Result<()> {
//! use qmp_std::commands::{QueryStatus, Stop, Cont};
//!
//! // qemu-system-x86_64 ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
//! let qmp = qmp_std::tokio::Client::connect_unix("/tmp/qmp.sock").await?;
//! let mut events = qmp.events();
//!
//! // Commands from several tasks at once, over the one connection.
//! let (a, b) = tokio::join!(qmp.execute(&QueryStatus), qmp.execute(&Stop));
//! println!("{:?} {:?}", a?.status, b?);
//! while let Some(event) = events.next().await {
//!     let event = event?; // Err(Error::Lagged { missed }) if this subscriber fell behind
//!     if event.name == "STOP" {
//!         break;
//!     }
//! }
//! qmp.execute(&Cont).await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//! The connection is the same sans-IO [`Session`] as the blocking [`Client`](crate::Client)'s,
//! behind a `std::sync::Mutex` that is never held across an `.await` (only around encoding a
//! command, a non-blocking `try_write`, or routing what one `try_read` brought):
//! - A caller takes an in-flight permit (a [`Semaphore`] sized to QEMU's in-band queue), locks,
//!   encodes its command straight from its typed arguments, registers a oneshot for the reply,
//!   writes the bytes at once if nothing else is queued (else the reader task writes them when
//!   the socket is writable), unlocks, and awaits the oneshot.
//! - One reader task per connection reads whenever the socket is readable, lets the session
//!   frame and match what came, and hands each reply to its caller by id and each event to a
//!   [`broadcast`] channel. It reads even when nobody waits, so QEMU is never left blocked
//!   on a full socket.
//!
//! # Cancellation
//! Every `execute*` future is cancel-safe: dropping it (a `select!` branch that lost,
//! [`tokio::time::timeout`], an aborted task) before its reply comes *abandons* the command
//! ([`Session::abandon`]): its slot (and permit) stays taken until the late reply arrives,
//! since QEMU still holds the command, and that reply is then discarded by id. Nothing else
//! changes: the connection stays in step and the next command works. A future dropped
//! while it waits for a permit has sent nothing.
//!
//! # Timeouts
//! Each command has a deadline ([`Options::command_timeout`], or
//! [`Client::execute_timeout`]); when it passes, the command fails with [`Error::Timeout`]
//! and is abandoned in the same way. The reader task keeps one timer per connection, set to
//! the earliest deadline, so a command costs no timer operation of its own. The deadline
//! also bounds waiting for a permit.
//!
//! # Events
//! [`Client::events`] gives an [`EventStream`] (a [`futures_core::Stream`]): every event that
//! arrives after the call, in order, to each subscriber. The first subscriber also gets those
//! received since the connection was made. A subscriber that falls more than
//! [`ClientBuilder::event_capacity`] events behind gets `Err(Error::Lagged { missed })` in
//! place of what it missed, then carries on; no event is dropped silently. When the
//! connection fails, the stream yields that error once and ends; when it was closed on this
//! side, it just ends.
//!
//! # Disconnection
//! When the peer closes the connection or an I/O error occurs, every command waiting fails
//! ([`Error::Disconnected`] or [`Error::Io`]), and so does every later one. What the peer
//! sent before it went is still delivered first, even when a write is what notices it gone
//! (a broken pipe): the writing stops, later commands fail at once, and the reader task
//! reads replies and events up to the end of the stream. Dropping the last clone of a
//! [`Client`] (or [`Client::close`]) closes the connection.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ::tokio::io::Interest;
use ::tokio::net::{TcpStream, ToSocketAddrs, UnixStream};
use ::tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, broadcast, oneshot};
use ::tokio::time::{Instant, Sleep};
use serde::Serialize;
use serde_json::Value;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use qmp_proto::{CommandId, Config, Expired, Outcome, Received, Session};

use crate::client::Options;
use crate::commands::{Command, HumanMonitorCommand};
use crate::drive::{TABLE, is_disconnect};
use crate::error::{Error, QmpError, Result};
use crate::event::Event;
use crate::router::{Answer, Closed, Router, Waiter};
use qmp_proto::ServerInfo;

/// Events a subscriber may fall behind by before it is told it missed some.
pub const DEFAULT_EVENT_CAPACITY: usize = 64;

/// The async client's default receive buffer: small, since a fleet keeps one per VM; it
/// doubles (up to [`Options::max_reply_size`]) whenever one message fills it.
pub const DEFAULT_INITIAL_BUFFER: usize = 4 << 10;

/// Builds a [`Client`]: set options, then connect.
///
/// The options are the blocking client's [`Options`], with these differences: the receive
/// buffer starts at [`DEFAULT_INITIAL_BUFFER`], [`Options::read_timeout`] is not used (bound
/// each command instead, with [`Options::command_timeout`] or
/// [`Client::execute_timeout`]), and [`Options::negotiate`] off leaves negotiation to you
/// (`execute_raw("qmp_capabilities", …)`).
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    options: Options,
    event_capacity: usize,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientBuilder {
    /// Default options.
    pub fn new() -> Self {
        Self::with_options(Options {
            initial_buffer: DEFAULT_INITIAL_BUFFER,
            ..Options::default()
        })
    }

    /// Starts from `options` (taken as they are, `initial_buffer` included).
    pub fn with_options(options: Options) -> Self {
        Self {
            options,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    shared_option_setters!();

    /// See [`Options::command_timeout`]: the default bound of each command, from its call.
    pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// See [`Options::max_in_flight`] (at most 28 here: the in-flight table holds 32, and
    /// out-of-band commands keep the rest).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.options.max_in_flight = n.max(1);
        self
    }

    /// How far each event subscriber may fall behind before it gets
    /// [`Error::Lagged`] (default [`DEFAULT_EVENT_CAPACITY`]; rounded up to a power of two).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }

    /// Connects to a QMP Unix socket and does the handshake. Needs a tokio runtime with I/O
    /// and time enabled; the reader task is spawned on it.
    pub async fn connect_unix(self, path: impl AsRef<Path>) -> Result<Client> {
        let path = path.as_ref().to_owned();
        self.bounded(async move {
            let stream = crate::connect::connect_unix_tokio(&path).await?;
            Ok(Socket::Unix(stream))
        })
        .await
    }

    /// Connects to a QMP TCP socket (Nagle's algorithm off) and does the handshake.
    pub async fn connect_tcp(self, addr: impl ToSocketAddrs) -> Result<Client> {
        self.bounded(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Socket::Tcp(stream))
        })
        .await
    }

    /// Does the handshake over a connected Unix stream (e.g. one end of
    /// [`UnixStream::pair`]).
    pub async fn handshake_unix(self, stream: UnixStream) -> Result<Client> {
        self.bounded(async move { Ok(Socket::Unix(stream)) }).await
    }

    /// Does the handshake over a connected TCP stream.
    pub async fn handshake_tcp(self, stream: TcpStream) -> Result<Client> {
        self.bounded(async move { Ok(Socket::Tcp(stream)) }).await
    }

    /// Connects and does the handshake within the connect timeout.
    async fn bounded(self, connect: impl Future<Output = Result<Socket>>) -> Result<Client> {
        let timeout = self.options.connect_timeout;
        let work = async move {
            let socket = connect.await?;
            self.start(socket).await
        };
        match timeout {
            Some(t) => ::tokio::time::timeout(t, work)
                .await
                .unwrap_or(Err(Error::Timeout(Expired::Connect))),
            None => work.await,
        }
    }

    async fn start(self, socket: Socket) -> Result<Client> {
        let options = self.options;
        let in_band = options.max_in_flight.clamp(1, TABLE - 4);
        let config = Config::default()
            .max_in_band(in_band)
            .enforce_negotiation(options.negotiate)
            .untagged_when_alone(options.untagged_when_alone);
        let buffer = vec![0; options.initial_buffer.min(options.max_reply_size)];
        let mut session = Session::with_config(buffer, config);
        let server = handshake(&socket, &mut session, &options).await?;
        let (events, first) = broadcast::channel(self.event_capacity);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                router: Router::new(session, options.max_reply_size),
                out: Vec::new(),
                events: Some(events),
                first: Some(first),
                task: None,
                timer: None,
                rearm: false,
                write_closed: false,
            }),
            socket,
            in_band: Arc::new(Semaphore::new(in_band)),
            out_of_band: Arc::new(Semaphore::new(TABLE - in_band)),
            closing: AtomicBool::new(false),
            closed: Arc::new(OnceLock::new()),
            server,
            command_timeout: options.command_timeout,
        });
        ::tokio::spawn(drive(Arc::clone(&inner)));
        Ok(Client {
            owner: Arc::new(Owner { inner }),
        })
    }
}

/// Reads the greeting and, if asked, negotiates.
async fn handshake(
    socket: &Socket,
    session: &mut Session<Vec<u8>, TABLE>,
    options: &Options,
) -> Result<ServerInfo> {
    let server = loop {
        let mut greeting = None;
        while let Some(item) = session.poll() {
            if let Received::Greeting(g) = item {
                greeting = Some(ServerInfo::from_greeting(&g));
                break;
            }
        }
        if let Some(server) = greeting {
            break server;
        }
        read_some(socket, session).await?;
    };
    if !options.negotiate {
        return Ok(server);
    }
    let oob = options.oob && session.oob_offered();
    let mut out = [0u8; 96];
    let sent = session
        .negotiate(oob, None, &mut out)
        .map_err(Error::Refused)?;
    socket.write_all(&out[..sent.len]).await?;
    loop {
        let mut outcome = None;
        while let Some(item) = session.poll() {
            if let Received::Reply(reply) = item
                && reply.id == sent.id
            {
                outcome = Some(match reply.outcome {
                    Outcome::Return(_) => Ok(()),
                    Outcome::Error(e) => Err(Error::Qmp(QmpError::from_view(&e))),
                    Outcome::Failed(_) => Err(Error::Disconnected),
                });
                break;
            }
        }
        if let Some(outcome) = outcome {
            return outcome.map(|()| server);
        }
        read_some(socket, session).await?;
    }
}

/// Reads once into the session (EOF: the session is told, and it fails what waits).
async fn read_some(socket: &Socket, session: &mut Session<Vec<u8>, TABLE>) -> Result<()> {
    loop {
        socket.readable().await?;
        match socket.try_read(session.read_buf()) {
            Ok(0) => {
                session.handle_eof();
                return Err(Error::Disconnected);
            }
            Ok(n) => {
                session.commit(n);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// A connected tokio socket.
#[derive(Debug)]
enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Socket {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.try_read(buf),
            Socket::Tcp(s) => s.try_read(buf),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.try_write(buf),
            Socket::Tcp(s) => s.try_write(buf),
        }
    }

    /// `try_read`, except that a read shorter than `buf` also clears the read readiness (as
    /// a `WouldBlock` would): the socket is drained, and the next `poll_read_ready` waits
    /// for more instead of costing a `read` that finds nothing. Tokio clears readiness only
    /// if no new readiness event came meanwhile, so no wake-up is lost.
    fn read_drained(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        let mut got = 0;
        let read = || {
            got = self.try_read(buf)?;
            if got > 0 && got < len {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        };
        let result = match self {
            Socket::Unix(s) => s.try_io(Interest::READABLE, read),
            Socket::Tcp(s) => s.try_io(Interest::READABLE, read),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            other => other,
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Unix(s) => s.poll_read_ready(cx),
            Socket::Tcp(s) => s.poll_read_ready(cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Unix(s) => s.poll_write_ready(cx),
            Socket::Tcp(s) => s.poll_write_ready(cx),
        }
    }

    async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            poll_fn(|cx| self.poll_write_ready(cx)).await?;
            match self.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Shuts both directions down, so the peer sees the end at once.
    fn shutdown(&self) {
        use std::os::fd::AsFd;
        let fd = match self {
            Socket::Unix(s) => s.as_fd(),
            Socket::Tcp(s) => s.as_fd(),
        };
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
    }
}

/// The caller's side of a command: its reply channel and the permit it holds until the
/// session frees its slot.
#[derive(Debug)]
struct TaskWaiter {
    reply: Option<oneshot::Sender<Answer>>,
    deadline: Option<Instant>,
    _permit: OwnedSemaphorePermit,
}

impl Waiter for TaskWaiter {
    fn answer(&mut self, answer: Answer) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

/// What the lock guards.
#[derive(Debug)]
struct State {
    router: Router<TaskWaiter>,
    /// Encoded commands not yet written (the reader task writes them when it can).
    out: Vec<u8>,
    /// `None` once closed: subscribers then see the end.
    events: Option<broadcast::Sender<Event>>,
    /// The first subscriber's receiver, made at connect time so it misses nothing.
    first: Option<broadcast::Receiver<Event>>,
    /// The reader task, to wake when bytes wait to be written, a deadline comes before the
    /// timer, or the client closes.
    task: Option<Waker>,
    /// When the reader task's timer fires (`None`: not armed); it is only ever early.
    timer: Option<Instant>,
    /// The timer must be set again (to the earliest deadline).
    rearm: bool,
    /// A write failed because the peer went away: nothing more is written and new commands
    /// fail at once, while the reader task still reads what the peer sent before it went
    /// (replies, events) up to the end of the stream, which then fails what still waits.
    write_closed: bool,
}

/// One connection, shared by every [`Client`] clone and the reader task.
#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    socket: Socket,
    in_band: Arc<Semaphore>,
    out_of_band: Arc<Semaphore>,
    /// Set when the last handle went away or `close` was called.
    closing: AtomicBool,
    /// Why the connection ended, for event streams (which do not keep it alive).
    closed: Arc<OnceLock<Closed>>,
    server: ServerInfo,
    command_timeout: Option<Duration>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is queued, as far as the socket takes it now; the reader task is woken
    /// for the rest.
    fn flush(&self, st: &mut State) {
        while !st.out.is_empty() {
            match self.socket.try_write(&st.out) {
                Ok(n) => {
                    st.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(task) = &st.task {
                        task.wake_by_ref();
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.write_failed(st, &e);
                    return;
                }
            }
        }
    }

    /// A write failed. A peer that went away may have sent replies and events that still
    /// wait unread in the socket: stop writing, and let the reader task read up to the end
    /// of the stream (as the blocking client does), where the connection closes. Any other
    /// error closes it now (part of a command may be on the wire).
    fn write_failed(&self, st: &mut State, e: &io::Error) {
        if is_disconnect(e.kind()) {
            st.write_closed = true;
            st.out = Vec::new();
            if let Some(task) = &st.task {
                task.wake_by_ref();
            }
        } else {
            self.close(st, Closed::from_io(e));
        }
    }

    /// Ends the connection: pending commands fail, permits are closed, event streams end.
    fn close(&self, st: &mut State, why: Closed) {
        let _ = self.closed.set(why.clone());
        let events = st.events.take();
        st.router.close(why, |e| {
            if let Some(events) = &events {
                let _ = events.send(Event::from_view(e));
            }
        });
        drop(events);
        st.first = None;
        st.out = Vec::new();
        self.in_band.close();
        self.out_of_band.close();
        self.socket.shutdown();
        if let Some(task) = st.task.take() {
            task.wake();
        }
    }

    /// The reader task's body: write what waits, read what came, route it, time out
    /// commands whose deadline passed.
    fn poll_drive(&self, cx: &mut Context<'_>, sleep: &mut Option<Pin<Box<Sleep>>>) -> Poll<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.router.closed().is_some() {
            return Poll::Ready(());
        }
        if self.closing.load(Ordering::Acquire) {
            self.close(st, Closed::Local);
            return Poll::Ready(());
        }
        if !st.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.task = Some(cx.waker().clone());
        }
        self.poll_timer(st, cx, sleep);
        while !st.out.is_empty() {
            match self.socket.poll_write_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    self.close(st, Closed::from_io(&e));
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => match self.socket.try_write(&st.out) {
                    Ok(n) => {
                        st.out.drain(..n);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        self.write_failed(st, &e);
                        if st.router.closed().is_some() {
                            return Poll::Ready(());
                        }
                    }
                },
            }
        }
        loop {
            match self.socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.close(st, Closed::from_io(&e));
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            match self.socket.read_drained(st.router.read_buf()) {
                Ok(0) => {
                    self.close(st, Closed::Eof);
                    return Poll::Ready(());
                }
                Ok(n) => {
                    st.router.commit(n);
                    let events = &st.events;
                    st.router.route(|e| {
                        if let Some(events) = events {
                            let _ = events.send(Event::from_view(e));
                        }
                    });
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    self.close(st, Closed::from_io(&e));
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl Inner {
    /// Deadlines: one timer per connection, set to the earliest deadline of the commands
    /// waiting. A command rarely moves it (callers wake the task only for a deadline before
    /// the timer's), so a command costs no timer operation; when it fires, the commands due
    /// are answered [`Error::Timeout`] and abandoned.
    fn poll_timer(
        &self,
        st: &mut State,
        cx: &mut Context<'_>,
        sleep: &mut Option<Pin<Box<Sleep>>>,
    ) {
        loop {
            if std::mem::take(&mut st.rearm) {
                st.timer = st.router.waiting().filter_map(|w| w.deadline).min();
                if let Some(at) = st.timer {
                    match sleep {
                        Some(sleep) => sleep.as_mut().reset(at),
                        None => *sleep = Some(Box::pin(::tokio::time::sleep_until(at))),
                    }
                }
            }
            let Some(timer) = sleep.as_mut().filter(|_| st.timer.is_some()) else {
                return;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
            let now = Instant::now();
            st.router.expire(|w| w.deadline.is_some_and(|d| d <= now));
            st.rearm = true;
        }
    }
}

/// The reader task. If it is dropped unfinished (the runtime shut down), the connection is
/// closed so that nobody waits forever.
async fn drive(inner: Arc<Inner>) {
    struct Guard(Arc<Inner>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let mut st = self.0.lock();
            if st.router.closed().is_none() {
                self.0.close(&mut st, Closed::Local);
            }
        }
    }
    let guard = Guard(inner);
    let mut sleep = None;
    poll_fn(|cx| guard.0.poll_drive(cx, &mut sleep)).await;
}

/// Closes the connection when the last [`Client`] clone goes.
#[derive(Debug)]
struct Owner {
    inner: Arc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        let mut st = self.inner.lock();
        if st.router.closed().is_none() {
            self.inner.close(&mut st, Closed::Local);
        }
    }
}

/// An async QMP client: one connection, shared by every clone (`Clone + Send + Sync`).
///
/// Method families:
/// - **Connecting**: [`Client::connect_unix`], [`Client::connect_tcp`], or
///   [`ClientBuilder`] for options; each reads the greeting and negotiates.
/// - **Commands**, from any number of tasks at once, matched to their replies by id:
///   [`execute`](Self::execute) (typed, see [`Command`]), [`execute_raw`](Self::execute_raw)
///   (name + JSON arguments), [`execute_oob`](Self::execute_oob) and
///   [`execute_oob_raw`](Self::execute_oob_raw) (`exec-oob`), [`hmp`](Self::hmp), and
///   [`execute_timeout`](Self::execute_timeout) / [`execute_raw_timeout`](Self::execute_raw_timeout)
///   with a deadline of their own. All are cancel-safe (see the [module docs](self)).
/// - **Events**: [`events`](Self::events), one [`EventStream`] per subscriber.
/// - **State**: [`server`](Self::server), [`oob_enabled`](Self::oob_enabled),
///   [`is_closed`](Self::is_closed), [`in_flight`](Self::in_flight),
///   [`discarded_replies`](Self::discarded_replies), [`close`](Self::close).
#[derive(Clone)]
pub struct Client {
    owner: Arc<Owner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner().server)
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to a QMP Unix socket with default options; see
    /// [`ClientBuilder::connect_unix`].
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Client> {
        ClientBuilder::new().connect_unix(path).await
    }

    /// Connects to a QMP TCP socket with default options; see
    /// [`ClientBuilder::connect_tcp`].
    pub async fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Client> {
        ClientBuilder::new().connect_tcp(addr).await
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
        self.inner().closed.get().is_some()
    }

    /// Commands sent and not answered yet, abandoned ones still owed a reply included.
    pub fn in_flight(&self) -> usize {
        self.inner().lock().router.session().in_flight()
    }

    /// Late replies to abandoned (cancelled or timed-out) commands, discarded by id so far.
    pub fn discarded_replies(&self) -> u64 {
        self.inner().lock().router.discarded()
    }

    /// Messages dropped as the protocol asks (replies matching no command, id-less errors,
    /// malformed frames without a command to blame), so far.
    pub fn dropped_messages(&self) -> u64 {
        self.inner().lock().router.dropped()
    }

    /// Closes the connection now, for every clone: commands waiting fail with
    /// [`Error::Disconnected`], event streams end.
    pub fn close(&self) {
        let inner = self.inner();
        inner.closing.store(true, Ordering::Release);
        let mut st = inner.lock();
        if st.router.closed().is_none() {
            inner.close(&mut st, Closed::Local);
        }
    }

    /// A new subscriber to the events (see [`EventStream`]).
    pub fn events(&self) -> EventStream {
        let inner = self.inner();
        let mut st = inner.lock();
        let receiver = st
            .first
            .take()
            .or_else(|| st.events.as_ref().map(broadcast::Sender::subscribe));
        EventStream {
            inner: receiver.map(BroadcastStream::new),
            closed: Arc::clone(&inner.closed),
            ended: false,
        }
    }

    // ---- commands ----------------------------------------------------------------------

    /// Runs a typed command and waits for its result (within the command timeout).
    pub async fn execute<C: Command>(&self, command: &C) -> Result<C::Output> {
        self.execute_timeout(command, self.inner().command_timeout)
            .await
    }

    /// [`execute`](Self::execute) with a deadline of its own (`None`: wait forever). When it
    /// passes, the command is abandoned (its late reply is discarded) and this returns
    /// [`Error::Timeout`].
    pub async fn execute_timeout<C: Command>(
        &self,
        command: &C,
        timeout: Option<Duration>,
    ) -> Result<C::Output> {
        let json = self.call(false, C::NAME, command, timeout).await?;
        serde_json::from_str(&json).map_err(Error::Decode)
    }

    /// Runs a command by name with JSON arguments (an object, or `Value::Null` for none) and
    /// returns its result as JSON.
    pub async fn execute_raw(&self, name: &str, arguments: &Value) -> Result<Value> {
        self.execute_raw_timeout(name, arguments, self.inner().command_timeout)
            .await
    }

    /// [`execute_raw`](Self::execute_raw) with a deadline of its own; see
    /// [`execute_timeout`](Self::execute_timeout).
    pub async fn execute_raw_timeout(
        &self,
        name: &str,
        arguments: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let json = self.call(false, name, arguments, timeout).await?;
        decode(&json)
    }

    /// Runs a typed command out of band (`exec-oob`); its reply may overtake in-band ones.
    /// Needs [`ClientBuilder::oob`] and a server that offers it.
    pub async fn execute_oob<C: Command>(&self, command: &C) -> Result<C::Output> {
        let timeout = self.inner().command_timeout;
        let json = self.call(true, C::NAME, command, timeout).await?;
        serde_json::from_str(&json).map_err(Error::Decode)
    }

    /// [`execute_raw`](Self::execute_raw), out of band.
    pub async fn execute_oob_raw(&self, name: &str, arguments: &Value) -> Result<Value> {
        let timeout = self.inner().command_timeout;
        let json = self.call(true, name, arguments, timeout).await?;
        decode(&json)
    }

    /// Runs an HMP command line through `human-monitor-command` and returns its output.
    pub async fn hmp(&self, command_line: &str) -> Result<String> {
        self.execute(&HumanMonitorCommand::new(command_line)).await
    }

    async fn call<A: Serialize + ?Sized>(
        &self,
        oob: bool,
        name: &str,
        arguments: &A,
        timeout: Option<Duration>,
    ) -> Answer {
        let inner = self.inner();
        let deadline = timeout.map(|t| Instant::now() + t);
        let semaphore = if oob {
            &inner.out_of_band
        } else {
            &inner.in_band
        };
        // Cancelled while waiting here: nothing was sent.
        let permit = match Arc::clone(semaphore).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(self.closed_error()),
            Err(TryAcquireError::NoPermits) => {
                let acquire = Arc::clone(semaphore).acquire_owned();
                let acquired = match deadline {
                    Some(deadline) => ::tokio::time::timeout_at(deadline, acquire)
                        .await
                        .map_err(|_| Error::Timeout(Expired::Command))?,
                    None => acquire.await,
                };
                acquired.map_err(|_| self.closed_error())?
            }
        };
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut guard = inner.lock();
            let st = &mut *guard;
            if st.write_closed {
                return Err(Error::Disconnected);
            }
            let queued = !st.out.is_empty();
            let id = st.router.encode(oob, name, arguments, &mut st.out)?;
            st.router.register(
                id,
                TaskWaiter {
                    reply: Some(reply),
                    deadline,
                    _permit: permit,
                },
            );
            // A deadline before the timer's: the reader task sets the timer again.
            let earlier = deadline.is_some_and(|d| st.timer.is_none_or(|t| t > d));
            if earlier {
                st.timer = deadline;
                st.rearm = true;
            }
            if !queued {
                inner.flush(st);
            }
            if earlier && let Some(task) = &st.task {
                task.wake_by_ref();
            }
            id
        };
        // Cancelled from here on: the command is (or will be) on the wire; abandon it.
        let mut pending = InFlight {
            inner,
            id,
            done: false,
        };
        let answer = answer.await;
        pending.done = true;
        answer.unwrap_or_else(|_| Err(self.closed_error()))
    }

    fn closed_error(&self) -> Error {
        self.inner()
            .closed
            .get()
            .map_or(Error::Disconnected, Closed::error)
    }
}

fn decode(json: &str) -> Result<Value> {
    serde_json::from_str(json).map_err(Error::Decode)
}

/// A command on the wire whose caller may go away: if it does, the command is abandoned.
struct InFlight<'a> {
    inner: &'a Inner,
    id: CommandId,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.lock().router.abandon(self.id);
        }
    }
}

/// One subscriber's events, in arrival order: a [`futures_core::Stream`] of
/// `Result<Event, Error>` (also [`EventStream::next`] without `StreamExt`).
///
/// Items: `Ok(event)`; `Err(Error::Lagged { missed })` when this subscriber fell more than
/// the event capacity behind (the stream goes on with the events that followed); at the end,
/// if the connection failed, its error once (`Err(Error::Disconnected)`, `Err(Error::Io(..))`),
/// then `None`. A connection closed on this side just ends the stream.
pub struct EventStream {
    inner: Option<BroadcastStream<Event>>,
    closed: Arc<OnceLock<Closed>>,
    ended: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next item (see [`EventStream`]); `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *self), cx)).await
    }
}

impl futures_core::Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(inner) = &mut self.inner {
            match Pin::new(inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(event))) => return Poll::Ready(Some(Ok(event))),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    return Poll::Ready(Some(Err(Error::Lagged { missed })));
                }
                Poll::Ready(None) => {}
            }
        }
        self.ended = true;
        self.inner = None;
        Poll::Ready(match self.closed.get() {
            Some(Closed::Local) | None => None,
            Some(why) => Some(Err(why.error())),
        })
    }
}

impl futures_core::FusedStream for EventStream {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}
