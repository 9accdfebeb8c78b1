//! An async QMP client on tokio (feature `tokio`): one connection, shared by any number of
//! tasks through cheap clones of [`Client`].
//!
//! ```no_run
//! # async fn run() -> qmp_std::Result<()> {
//! use qmp_std::commands::{QueryStatus, Stop, Cont};
//!
//! // qemu-system-x86_64 ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
//! let qmp = qmp_std::tokio::Client::connect_unix("/tmp/qmp.sock").await?;
//! let mut events = qmp.subscribe();
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
//! The connection is one [`qmp_proto::Driver`], the same loop every client of this crate
//! runs, behind a `std::sync::Mutex` that is never held across an `.await`. The driver does
//! the handshake (before [`ClientBuilder`]'s `connect_*` return), encodes commands into its
//! transmit buffer, matches replies by id, applies every deadline, and decides what a failed
//! write or the end of the stream means. Around it:
//! - A caller locks, has the driver encode its command (with the command's deadline), writes
//!   what the socket takes at once, leaves its waker for the answer, unlocks and waits; the
//!   answer is left under the lock for it (no channel per command). No room in flight
//!   (QEMU's queue or the in-flight table full): it waits until a command completes,
//!   bounded by the command's deadline.
//! - One drive task per connection writes the rest when the socket is writable, reads
//!   whenever it is readable (even when nobody waits, so QEMU is never left blocked on a
//!   full socket), keeps one timer set to the driver's next deadline, and delivers what the
//!   driver completed: each outcome to its caller, each event to every subscriber.
//! - While a caller waits for its answer, the socket wakes the caller's task instead of the
//!   drive task's: the caller reads and delivers for everyone (the same driver, under the
//!   same lock), and gives the reading back to the drive task when its answer comes or its
//!   future is dropped. A round trip then wakes one task, not two.
//!
//! # Cancellation
//! Every `execute*` future is cancel-safe: dropping it (a `select!` branch that lost,
//! [`tokio::time::timeout`], an aborted task) before its answer comes *abandons* the command
//! ([`Driver::abandon`](qmp_proto::Driver::abandon)): bytes not yet written are dropped;
//! otherwise its slot stays taken until the late reply arrives, since QEMU still holds the
//! command, and that reply is then discarded by id. The connection stays in step and the
//! next command works. A future dropped while it waits for room has sent nothing.
//!
//! # Timeouts
//! Each command has a deadline ([`Options::command_timeout`], or
//! [`Client::execute_timeout`]), which the driver applies: when it passes, the command fails
//! with [`Error::Timeout`], and its late reply is dropped. With [`ClientBuilder::read_timeout`],
//! a server that sends nothing for that long while commands wait ends the connection
//! ([`Error::Stalled`]).
//!
//! # Events
//! [`Client::subscribe`] gives an [`EventStream`] (a [`futures_core::Stream`]): every event
//! that arrives after the call, in order, to each subscriber. The first subscriber also gets
//! those received since the connection was made. Each subscriber holds up to
//! [`ClientBuilder::event_capacity`] unread events; past that, new events are dropped (the
//! one overflow rule of [`qmp_proto::EventQueue`]) and the subscriber gets
//! `Err(Error::Lagged { missed })` where the gap is, once; no event is dropped silently.
//! When the connection fails, the stream yields that error once and ends; when it was
//! closed on this side, it just ends.
//!
//! # Disconnection
//! When the peer closes the connection or an I/O error occurs, every command waiting fails
//! ([`Error::Disconnected`] or [`Error::Io`]), and so does every later one. What the peer
//! sent before it went is still delivered first, even when a write is what notices it gone
//! (a broken pipe): the writing stops, later commands fail at once, and the drive task reads
//! replies and events up to the end of the stream. Dropping the last clone of a [`Client`]
//! (or [`Client::close`]) closes the connection.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ::tokio::io::Interest;
use ::tokio::net::{TcpStream, ToSocketAddrs, UnixStream};
use ::tokio::time::Sleep;
use serde::Serialize;
use serde_json::Value;

use qmp_proto::{CommandId, Done, Expired, Io, LinkError, ServerInfo, Wait};

use crate::client::Options;
use serde::de::DeserializeOwned;

use crate::commands::{Command, HumanMonitorCommand};
use crate::drive::{self, Answer, EventList, Request, StdDriver, TABLE};
use crate::error::decode;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hub::{self, Hub, TaskWaiter, WakeReady};

/// Events a subscriber may fall behind by before new ones are dropped (and it is told).
pub const DEFAULT_EVENT_CAPACITY: usize = 64;

/// The async client's default receive buffer: small, since a fleet keeps one per VM; it
/// doubles (up to [`Options::max_reply_size`]) whenever one message fills it.
pub const DEFAULT_INITIAL_BUFFER: usize = 4 << 10;

/// Builds a [`Client`]: set options, then connect.
///
/// The options are the blocking client's [`Options`], all of them used: the receive buffer
/// starts at [`DEFAULT_INITIAL_BUFFER`], [`Options::max_queued_events`] bounds each event
/// subscriber (default [`DEFAULT_EVENT_CAPACITY`]; see [`event_capacity`](Self::event_capacity)),
/// [`Options::read_timeout`] is the stall timeout (a server that sends nothing for that long
/// while commands wait ends the connection), and [`Options::negotiate`] off leaves
/// negotiation to you (`execute_raw("qmp_capabilities", …)`).
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) options: Options,
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
            max_queued_events: Some(DEFAULT_EVENT_CAPACITY),
            ..Options::default()
        })
    }

    /// Starts from `options` (taken as they are, `initial_buffer` and `max_queued_events`
    /// included).
    pub fn with_options(options: Options) -> Self {
        Self { options }
    }

    shared_option_setters!();

    /// How many unread events each subscriber holds before new ones are dropped and it
    /// gets [`Error::Lagged`] (default [`DEFAULT_EVENT_CAPACITY`]); sets
    /// [`Options::max_queued_events`].
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.options.max_queued_events = Some(events.max(1));
        self
    }

    /// See [`Options::max_queued_events`] (`None`: subscribers' queues are unbounded).
    pub fn max_queued_events(mut self, events: Option<usize>) -> Self {
        self.options.max_queued_events = events.map(|n| n.max(1));
        self
    }

    /// Connects to a QMP Unix socket and does the handshake. Needs a tokio runtime with I/O
    /// and time enabled; the drive task is spawned on it.
    pub async fn connect_unix(self, path: impl AsRef<Path>) -> Result<Client> {
        self.connect_unix_as(path, None).await
    }

    /// [`connect_unix`](Self::connect_unix), as QMP or (with a random sync id) the guest
    /// agent dialect ([`crate::agent::tokio`]).
    pub(crate) async fn connect_unix_as(
        self,
        path: impl AsRef<Path>,
        agent: Option<u64>,
    ) -> Result<Client> {
        let path = path.as_ref().to_owned();
        let connect = async move {
            let stream = crate::connect::connect_unix_tokio(&path).await?;
            Ok(Socket::Unix(stream))
        };
        self.start(connect, agent).await
    }

    /// Connects to a QMP TCP socket (Nagle's algorithm off) and does the handshake.
    pub async fn connect_tcp(self, addr: impl ToSocketAddrs) -> Result<Client> {
        self.connect_tcp_as(addr, None).await
    }

    /// [`connect_tcp`](Self::connect_tcp), as QMP or the guest agent dialect.
    pub(crate) async fn connect_tcp_as(
        self,
        addr: impl ToSocketAddrs,
        agent: Option<u64>,
    ) -> Result<Client> {
        let connect = async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Socket::Tcp(stream))
        };
        self.start(connect, agent).await
    }

    /// Does the handshake over a connected Unix stream (e.g. one end of
    /// [`UnixStream::pair`]).
    pub async fn handshake_unix(self, stream: UnixStream) -> Result<Client> {
        self.handshake_unix_as(stream, None).await
    }

    /// [`handshake_unix`](Self::handshake_unix), as QMP or the guest agent dialect.
    pub(crate) async fn handshake_unix_as(
        self,
        stream: UnixStream,
        agent: Option<u64>,
    ) -> Result<Client> {
        self.start(async move { Ok(Socket::Unix(stream)) }, agent)
            .await
    }

    /// Opens a serial device (a tty, or a pty's slave side such as the one QEMU's
    /// `-chardev pty` announces) in raw mode and does the handshake over it. A serial line
    /// has no end of its own: the client ends when QEMU closes its side (a pty reads as
    /// ended) or when it is closed.
    pub async fn open_serial(self, path: impl AsRef<Path>) -> Result<Client> {
        self.open_serial_as(path, None).await
    }

    /// [`open_serial`](Self::open_serial), as QMP or the guest agent dialect.
    pub(crate) async fn open_serial_as(
        self,
        path: impl AsRef<Path>,
        agent: Option<u64>,
    ) -> Result<Client> {
        let serial = crate::serial::Serial::open(path)?;
        self.handshake_serial_as(serial, agent).await
    }

    /// Does the handshake over a serial device already open ([`crate::serial::Serial`]).
    /// The device is switched to non-blocking mode, which holds for every descriptor of the
    /// same open device (a `try_clone` of it too), and stays so.
    pub async fn handshake_serial(self, serial: crate::serial::Serial) -> Result<Client> {
        self.handshake_serial_as(serial, None).await
    }

    /// [`handshake_serial`](Self::handshake_serial), as QMP or the guest agent dialect.
    pub(crate) async fn handshake_serial_as(
        self,
        serial: crate::serial::Serial,
        agent: Option<u64>,
    ) -> Result<Client> {
        let connect = async move {
            // Non-blocking, and in tokio's reactor through its pipe types, which read and
            // write any such descriptor (epoll takes a tty as it takes a pipe) without
            // `unsafe`: one for each direction, on two descriptors of the device.
            let file = serial.into_file();
            rustix::io::ioctl_fionbio(&file, true).map_err(io::Error::from)?;
            let tx = ::tokio::net::unix::pipe::Sender::from_file_unchecked(file.try_clone()?)?;
            let rx = ::tokio::net::unix::pipe::Receiver::from_file_unchecked(file)?;
            Ok(Socket::Serial { rx, tx })
        };
        self.start(connect, agent).await
    }

    /// Does the handshake over a connected TCP stream.
    pub async fn handshake_tcp(self, stream: TcpStream) -> Result<Client> {
        self.start(async move { Ok(Socket::Tcp(stream)) }, None)
            .await
    }

    /// Connects and does the handshake, both within the connect timeout:
    /// `Expired::Connect` if connecting ran out of it, `Expired::Greeting` if the handshake
    /// did.
    async fn start(
        self,
        connect: impl Future<Output = Result<Socket>>,
        agent: Option<u64>,
    ) -> Result<Client> {
        let options = self.options;
        let origin = std::time::Instant::now();
        let in_band = options.max_in_flight.clamp(1, TABLE - 4);
        let now = drive::now_since(origin);
        let mut driver = match agent {
            None => drive::new_driver(&options, in_band, EventList::new(None), now),
            Some(sync) => crate::agent::new_driver(&options, sync),
        };
        let socket = match options.connect_timeout {
            Some(t) => ::tokio::time::timeout(t, connect)
                .await
                .map_err(|_| Error::Timeout(Expired::Connect))??,
            None => connect.await?,
        };
        let shaken = handshake(&socket, &mut driver, origin, options.max_reply_size).await;
        let shaken = shaken.and_then(|()| match agent {
            None => driver.server().cloned().ok_or(Error::Disconnected),
            Some(_) => Ok(crate::agent::server_info()),
        });
        crate::trace::handshake(origin, shaken.as_ref());
        let server = shaken?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                hub: Hub::new(driver, options.max_queued_events),
                task: None,
                timer: Timer::default(),
                room: Vec::new(),
                reader: None,
                fds: None,
            }),
            socket,
            closing: AtomicBool::new(false),
            server,
            origin,
            command_timeout: options.command_timeout,
            max_reply_size: options.max_reply_size,
            event_capacity: options.max_queued_events,
            arguments: crate::check::ArgumentCheck::new(&options),
        });
        {
            let mut st = inner.lock();
            inner.run(&mut st, None, inner.now());
            // Until the drive task sees bytes or a command is sent, hold no buffer.
            st.hub.driver.release_buffers();
        }
        ::tokio::spawn(drive_task(Arc::clone(&inner)));
        Ok(Client {
            owner: Arc::new(Owner { inner }),
        })
    }
}

/// The driver's handshake, before the drive task starts: the greeting, and negotiation if
/// configured, within the driver's handshake deadline (the connect timeout).
async fn handshake(
    socket: &Socket,
    driver: &mut StdDriver<EventList>,
    origin: std::time::Instant,
    limit: usize,
) -> Result<()> {
    let expired = if driver.is_agent() {
        Expired::Sync
    } else {
        Expired::Greeting
    };
    let mut io_error = None;
    loop {
        let now = drive::now_since(origin);
        match driver.poll_io(now, Wait::Handshake, None) {
            Io::Done(Done::Ready) => return Ok(()),
            Io::Done(Done::TimedOut) => return Err(Error::Timeout(expired)),
            Io::Done(Done::Closed(reason)) => {
                return Err(drive::closed_error(Some(reason), io_error));
            }
            Io::Done(Done::Completed(id)) => {
                // The negotiation failed.
                return Err(
                    match drive::take_answer(driver, id, limit, || Error::Disconnected) {
                        Some(Err(e)) => e,
                        _ => Error::Disconnected,
                    },
                );
            }
            Io::Done(_) => {}
            Io::Write { bytes, .. } => match socket.write_some(bytes).await {
                Ok(n) => driver.handle_written(n, drive::now_since(origin)),
                Err(e) => {
                    driver.handle_write_error(drive::link_error(&e), drive::now_since(origin));
                    io_error = Some(e);
                }
            },
            Io::Read { buf, until } => {
                let read = socket.read_some(buf);
                let read = match until {
                    Some(at) => {
                        let at = ::tokio::time::Instant::from_std(drive::std_instant(origin, at));
                        ::tokio::time::timeout_at(at, read)
                            .await
                            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                    }
                    None => read.await,
                };
                let now = drive::now_since(origin);
                match read {
                    Ok(n) => driver.handle_read(n, now),
                    Err(e) => {
                        driver.handle_read_error(drive::link_error(&e), now);
                        io_error = Some(e);
                    }
                }
            }
        }
    }
}

/// A connected tokio socket, or a serial device (non-blocking, in tokio's reactor).
#[derive(Debug)]
enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
    Serial {
        rx: ::tokio::net::unix::pipe::Receiver,
        tx: ::tokio::net::unix::pipe::Sender,
    },
}

impl Socket {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.try_read(buf),
            Socket::Tcp(s) => s.try_read(buf),
            // A pty whose other side went away reads as the end.
            Socket::Serial { rx, .. } => match rx.try_read(buf) {
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => Ok(0),
                other => other,
            },
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.try_write(buf),
            Socket::Tcp(s) => s.try_write(buf),
            Socket::Serial { tx, .. } => tx.try_write(buf),
        }
    }

    /// Writes the start of `bytes` with `fds` attached (`SCM_RIGHTS`), if the socket is
    /// writable now.
    fn try_send_with_fds(&self, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
        let Socket::Unix(s) = self else {
            return Err(unsupported_fds());
        };
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        s.try_io(Interest::WRITABLE, || {
            let mut space = vec![
                std::mem::MaybeUninit::<u8>::uninit();
                rustix::cmsg_space!(ScmRights(fds.len()))
            ];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("too many file descriptors"));
            }
            let iov = [io::IoSlice::new(bytes)];
            rustix::net::sendmsg(s.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        })
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
            Socket::Serial { rx, .. } => rx.try_io(read),
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
            Socket::Serial { rx, .. } => rx.poll_read_ready(cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Socket::Unix(s) => s.poll_write_ready(cx),
            Socket::Tcp(s) => s.poll_write_ready(cx),
            Socket::Serial { tx, .. } => tx.poll_write_ready(cx),
        }
    }

    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            poll_fn(|cx| self.poll_read_ready(cx)).await?;
            match self.read_drained(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
    }

    async fn write_some(&self, bytes: &[u8]) -> io::Result<usize> {
        loop {
            poll_fn(|cx| self.poll_write_ready(cx)).await?;
            match self.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
    }

    /// Shuts both directions down, so the peer sees the end at once (a serial line has
    /// nothing to shut down: it ends for the client when the client is closed).
    fn shutdown(&self) {
        let fd = match self {
            Socket::Unix(s) => s.as_fd(),
            Socket::Tcp(s) => s.as_fd(),
            Socket::Serial { .. } => return,
        };
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
    }
}

fn unsupported_fds() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "file descriptors can only be passed over a Unix socket",
    )
}

/// One subscriber's queue: a reader waiting for an event leaves its waker there.
type Sub = hub::Queue<WakeReady>;

/// What the lock guards: the small fields first (`repr(C)`), beside the lock's own word.
#[derive(Debug)]
#[repr(C)]
struct State {
    /// The caller (by its command) whose task the socket wakes when bytes come, instead of
    /// the drive task's: a caller waiting for its answer reads for everyone meanwhile, which
    /// spares a round trip one task wake-up. `None`: the drive task.
    reader: Option<CommandId>,
    /// The drive task, to wake when bytes wait to be written, a deadline may come before
    /// its timer, or the client closes.
    task: Option<Waker>,
    /// The drive task's one timer, set to the driver's next deadline by the drive task, or
    /// by a caller for the drive task (with its waker) when a command's deadline comes
    /// before the timer's: no wake-up of the drive task per command.
    timer: Timer,
    /// Callers waiting for room in flight, woken when a command completes (room may have
    /// freed, the transmit buffer may be empty) or the connection ends.
    room: Vec<Waker>,
    /// The file descriptors to send with the next command sent with an attachment.
    fds: Option<Vec<OwnedFd>>,
    /// The driver, who waits for which command, the subscribers.
    hub: Hub<TaskWaiter, WakeReady>,
}

impl State {
    fn wake_task(&self) {
        if let Some(task) = &self.task {
            task.wake_by_ref();
        }
    }

    /// Wakes the callers waiting for room (they try again).
    fn wake_room(&mut self) {
        for waker in self.room.drain(..) {
            waker.wake();
        }
    }
}

/// One connection, shared by every [`Client`] clone and the drive task.
///
/// In declaration order (`repr(C)`): what every command touches first, so that it shares
/// the fewest cache lines (with 10,000 connections, each line a command touches is a cache
/// miss), then the lock, then what is rarely read.
#[derive(Debug)]
#[repr(C)]
struct Inner {
    socket: Socket,
    origin: std::time::Instant,
    command_timeout: Option<Duration>,
    max_reply_size: usize,
    /// Set when the last handle went away or `close` was called.
    closing: AtomicBool,
    /// The optional check of arguments against the schema (`Options::check_arguments`).
    arguments: crate::check::ArgumentCheck,
    state: Mutex<State>,
    server: ServerInfo,
    event_capacity: Option<usize>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> qmp_proto::Instant {
        drive::now_since(self.origin)
    }

    /// Sets the drive task's timer (for the drive task: it is woken when the timer fires)
    /// if the driver's next deadline comes before it. Without the drive task's waker (it has
    /// not run yet), it sets its timer when it does.
    fn arm_timer(&self, st: &mut State, now: qmp_proto::Instant) {
        let Some(due) = st.hub.driver.poll_timeout() else {
            return;
        };
        let due = drive::std_instant(self.origin, due);
        if st
            .timer
            .pending_at(drive::std_instant(self.origin, now))
            .is_some_and(|wakes| wakes <= due)
        {
            return;
        }
        if let Some(task) = &st.task
            && st.timer.poll_until(&mut Context::from_waker(task), due)
        {
            // Already due: the drive task applies it.
            task.wake_by_ref();
        }
    }

    /// Runs the driver as far as it goes without reading: writes what the socket takes now
    /// (with `cx`, registering for writability when it takes no more; without, waking the
    /// drive task for the rest) and delivers what completed.
    /// `now` is read once by the caller (a clock read per pass of this loop cost more than
    /// the loop's other work).
    fn run(&self, st: &mut State, mut cx: Option<&mut Context<'_>>, now: qmp_proto::Instant) {
        let mut freed = false;
        loop {
            match st.hub.driver.poll_io(now, Wait::Idle, None) {
                Io::Done(Done::Completed(id)) => {
                    freed = true;
                    st.hub.complete(id, self.max_reply_size);
                }
                Io::Done(Done::Closed(reason)) => {
                    self.end(st, reason);
                    return;
                }
                Io::Done(_) => break,
                Io::Write { bytes, attach } => {
                    if let Some(cx) = cx.as_deref_mut() {
                        match self.socket.poll_write_ready(cx) {
                            Poll::Pending => break,
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(e)) => {
                                st.hub.driver.handle_write_error(LinkError::Fatal, now);
                                st.hub.io_error = Some(e);
                                continue;
                            }
                        }
                    }
                    let written = if attach {
                        let fds = st.fds.take().unwrap_or_default();
                        let written = self.socket.try_send_with_fds(bytes, &fds);
                        if written.is_err() {
                            st.fds = Some(fds);
                        }
                        written
                    } else {
                        self.socket.try_write(bytes)
                    };
                    match written {
                        Ok(n) => st.hub.driver.handle_written(n, now),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if cx.is_none() {
                                st.wake_task();
                                break;
                            }
                        }
                        Err(e) => st.hub.write_failed(e, now),
                    }
                }
                Io::Read { .. } => break,
            }
        }
        st.hub.fan_out();
        if freed || st.hub.driver.queued_bytes() == 0 {
            st.wake_room();
        }
    }

    /// The connection ended (everything it brought was delivered): what still waits fails,
    /// subscribers see the end, the socket is shut down.
    fn end(&self, st: &mut State, reason: qmp_proto::CloseReason) {
        if !st.hub.end(reason) {
            return;
        }
        // A subscriber made from now on starts ended and empty.
        st.hub.first = None;
        st.fds = None;
        self.socket.shutdown();
        st.wake_room();
        if let Some(task) = st.task.take() {
            task.wake();
        }
    }

    /// Closes the connection on this side.
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let mut st = self.lock();
        if st.hub.ended.is_none() {
            st.hub.driver.close();
            self.run(&mut st, None, self.now());
        }
    }

    /// The drive task's body: write what waits, read what came, apply the time, deliver.
    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if self.closing.load(Ordering::Acquire) && st.hub.ended.is_none() {
            st.hub.driver.close();
        }
        if !st.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.task = Some(cx.waker().clone());
        }
        // One clock read per pass: what happens within it takes microseconds.
        let mut now = self.now();
        // The socket wakes this task from now on (a caller that was reading loses that).
        st.reader = None;
        loop {
            self.run(st, Some(cx), now);
            if st.hub.ended.is_some() {
                return Poll::Ready(());
            }
            if self.read_when_ready(st, cx, now).is_ready() {
                continue;
            }
            if let Some(at) = st.hub.driver.poll_timeout()
                && st.timer.poll_until(cx, drive::std_instant(self.origin, at))
            {
                now = self.now();
                st.hub.driver.handle_timeout(now);
                continue;
            }
            // Waiting for the socket: an idle connection holds no buffer meanwhile (the
            // driver takes them back from the pool when bytes come or a command is sent).
            st.hub.driver.release_buffers();
            return Poll::Pending;
        }
    }
}

impl Inner {
    /// A caller's read: delivers what the socket has (writing what waits, without waiting
    /// for writability: the drive task does that), until it has no more and `cx` is
    /// registered to be woken when more comes. Returns whether the connection ended.
    fn read_for(&self, st: &mut State, cx: &mut Context<'_>, now: qmp_proto::Instant) -> bool {
        loop {
            self.run(st, None, now);
            if st.hub.ended.is_some() {
                return true;
            }
            if self.read_when_ready(st, cx, now).is_pending() {
                return false;
            }
        }
    }

    /// Reads what the socket has into the driver if it is readable (else `cx` is woken when
    /// it is): `Ready` when it read (or failed), to go round again.
    fn read_when_ready(
        &self,
        st: &mut State,
        cx: &mut Context<'_>,
        now: qmp_proto::Instant,
    ) -> Poll<()> {
        let result = std::task::ready!(self.socket.poll_read_ready(cx));
        let driver = &mut st.hub.driver;
        match result.and_then(|()| self.socket.read_drained(driver.read_buf())) {
            Ok(n) => driver.handle_read(n, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => st.hub.read_failed(e, now),
        }
        Poll::Ready(())
    }

    /// A caller that was reading for everyone has its answer (or went away): the socket wakes
    /// the drive task again. What came meanwhile is delivered first.
    fn hand_back_reads(&self, st: &mut State, now: qmp_proto::Instant) {
        st.reader = None;
        // No drive task waker yet: it registers itself when it first runs. (A clone: the
        // reads below may need `st.task` to wake it for a write that would block.)
        if let Some(task) = st.task.clone() {
            self.read_for(st, &mut Context::from_waker(&task), now);
        }
        st.hub.driver.release_buffers();
    }
}

/// The drive task's one timer.
#[derive(Debug, Default)]
struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    at: Option<std::time::Instant>,
}

impl Timer {
    /// Whether `at` has come (else the task is woken when it does).
    fn poll_until(&mut self, cx: &mut Context<'_>, at: std::time::Instant) -> bool {
        let deadline = ::tokio::time::Instant::from_std(at);
        if self.at != Some(at) {
            self.at = Some(at);
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(::tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = self.sleep.as_mut().expect("set above");
        let fired = sleep.as_mut().poll(cx).is_ready();
        if fired {
            self.at = None;
        }
        fired
    }

    /// When the timer will wake the task, if it is armed: it was polled when last set, and
    /// its time has not come (it may have fired unpolled, the driver having applied that
    /// deadline on its own).
    fn pending_at(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        self.at.filter(|&at| at > now)
    }
}

/// The drive task. If it is dropped unfinished (the runtime shut down), the connection is
/// closed so that nobody waits forever.
async fn drive_task(inner: Arc<Inner>) {
    struct Guard(Arc<Inner>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let guard = Guard(inner);
    poll_fn(|cx| guard.0.poll_drive(cx)).await;
}

/// Closes the connection when the last [`Client`] clone goes.
#[derive(Debug)]
struct Owner {
    inner: Arc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.close();
    }
}

/// An async QMP client: one connection, shared by every clone (`Clone + Send + Sync`).
///
/// Method families (the same names as the blocking [`Client`](crate::Client)):
/// - **Connecting**: [`Client::connect_unix`], [`Client::connect_tcp`], or
///   [`ClientBuilder`] for options; each reads the greeting and negotiates.
/// - **Commands**, from any number of tasks at once, matched to their replies by id:
///   [`execute`](Self::execute) (typed, see [`Command`]), [`execute_raw`](Self::execute_raw)
///   (name + JSON arguments), [`execute_oob`](Self::execute_oob) and
///   [`execute_oob_raw`](Self::execute_oob_raw) (`exec-oob`), [`hmp`](Self::hmp),
///   [`execute_timeout`](Self::execute_timeout) / [`execute_raw_timeout`](Self::execute_raw_timeout)
///   with a deadline of their own, and [`execute_with_fds`](Self::execute_with_fds) /
///   [`execute_raw_with_fds`](Self::execute_raw_with_fds) with file descriptors attached.
///   All are cancel-safe (see the [module docs](self)).
/// - **Events**: [`subscribe`](Self::subscribe), one [`EventStream`] per subscriber;
///   [`wait_event`](Self::wait_event).
/// - **State**: [`server`](Self::server), [`oob_enabled`](Self::oob_enabled),
///   [`is_closed`](Self::is_closed), [`in_flight`](Self::in_flight),
///   [`discarded_replies`](Self::discarded_replies),
///   [`dropped_messages`](Self::dropped_messages), [`close`](Self::close).
#[derive(Clone)]
pub struct Client {
    owner: Arc<Owner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hub::fmt_client(
            f,
            "Client",
            self.server(),
            self.in_flight(),
            self.is_closed(),
        )
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

    hub_getters!(.hub);

    /// Closes the connection now, for every clone: commands waiting fail with
    /// [`Error::Disconnected`], event streams end.
    pub fn close(&self) {
        self.inner().close();
    }

    /// Guest agent dialect: queues a new sync (0xFF, then `guest-sync-delimited` with the
    /// next id) ahead of any command sent after it, and starts writing it. Replies before
    /// the sync's own are dropped by the driver.
    pub(crate) fn queue_resync(&self) {
        let inner = self.inner();
        let mut st = inner.lock();
        let now = inner.now();
        st.hub.driver.resync(now);
        inner.run(&mut st, None, now);
    }

    /// A new subscriber to the events (see [`EventStream`]): every event from now on (the
    /// first subscriber also gets those received since the connection was made).
    pub fn subscribe(&self) -> EventStream {
        let inner = self.inner();
        let sub = inner.lock().hub.subscribe(inner.event_capacity);
        EventStream { sub, ended: false }
    }

    /// The next event called `name` to arrive within `timeout`, on a fresh subscription:
    /// events that arrived before the call are not seen (subscribe first, and use
    /// [`EventStream::wait_event`], not to miss one that comes early).
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> Result<Event> {
        self.subscribe().wait_event(name, timeout).await
    }

    // ---- commands ----------------------------------------------------------------------

    command_verbs! {
        commands: [] [async] [.await] call,
        oob: "ClientBuilder::oob",
        execute: {}
    }

    command_verbs! {
        fds: [] [async] [.await] call,
        execute_with_fds: {
            /// This client duplicates them too, for the time it takes to send them.
        }
    }

    /// Runs a command and decodes its result.
    pub(crate) async fn call<A: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        request: Request<'_, A>,
    ) -> Result<T> {
        let check = &self.inner().arguments;
        if check.needs_schema(request.name) {
            let fetch = Request::new(false, crate::check::SCHEMA_COMMAND, &(), None, &[]);
            // Traced as a span of its own (its id), without a closing event.
            let mut trace = crate::trace::CommandTrace::start(crate::check::SCHEMA_COMMAND);
            check.load(&self.answer(fetch, &mut trace).await?)?;
        }
        check.check(request.name, request.arguments)?;
        let mut trace = crate::trace::CommandTrace::start(request.name);
        let result = self
            .answer(request, &mut trace)
            .await
            .and_then(|text| decode(&text));
        trace.finish(&result);
        result
    }

    /// Runs a command: its result's JSON text, or the error.
    async fn answer<A: Serialize + ?Sized>(
        &self,
        request: Request<'_, A>,
        trace: &mut crate::trace::CommandTrace<'_>,
    ) -> Answer {
        let inner = self.inner();
        let own = request.timeout;
        let (oob, name, arguments, timeout, fds) = request.parts(inner.command_timeout);
        let attach = !fds.is_empty();
        let mut fds = if attach {
            if !matches!(inner.socket, Socket::Unix(_)) {
                return Err(Error::Io(unsupported_fds()));
            }
            Some(
                fds.iter()
                    .map(|fd| fd.try_clone_to_owned())
                    .collect::<io::Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        let wait_until = timeout.map(|t| ::tokio::time::Instant::now() + t);
        let options = hub::send_options(oob, own, attach, inner.now());
        // Sends the command once there is room in flight. Cancelled while it waits: nothing
        // was sent.
        let send = poll_fn(|cx| {
            let mut st = inner.lock();
            let now = inner.now();
            match st.hub.execute(name, arguments, options, now) {
                Err(e) => Poll::Ready(Err(e)),
                Ok(Some(id)) => {
                    // The answer is left in the hub for this task, which looks for it
                    // (below, in this same poll) before it leaves its waker there.
                    st.hub.wait_for(id, TaskWaiter(None));
                    if attach {
                        st.fds = fds.take();
                    }
                    // Written now if the socket takes it (else `run` wakes the drive task
                    // to write the rest). The drive task's timer is set here for it if this
                    // command's deadline comes first: no wake-up of the drive task per
                    // command.
                    inner.run(&mut st, None, now);
                    inner.arm_timer(&mut st, now);
                    Poll::Ready(Ok(id))
                }
                Ok(None) => {
                    // No room: woken when a command completes or the connection ends.
                    if !st.room.iter().any(|w| w.will_wake(cx.waker())) {
                        st.room.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        });
        let id = match wait_until {
            Some(at) => match ::tokio::time::timeout_at(at, send).await {
                Ok(sent) => sent?,
                Err(_) => return Err(Error::Timeout(Expired::Command)),
            },
            None => send.await?,
        };
        trace.sent(id.get());
        // Cancelled from here on: the command is (or will be) on the wire; abandon it.
        let mut pending = InFlight {
            inner,
            id,
            done: false,
        };
        // Waiting, this task reads for everyone: the socket wakes it (not the drive task)
        // when bytes come, it delivers them, and it gives the reading back with its answer.
        let answer = poll_fn(|cx| {
            let mut guard = inner.lock();
            let st = &mut *guard;
            let now = inner.now();
            let mut answer = st.hub.take_answered(id);
            if answer.is_none()
                && let Some(TaskWaiter(waker)) = st.hub.waiter_mut(id)
            {
                // This task runs: its own answer, delivered here, must not wake it.
                let mine = waker.take();
                st.reader = Some(id);
                inner.read_for(st, cx, now);
                answer = st.hub.take_answered(id);
                if answer.is_none()
                    && let Some(TaskWaiter(waker)) = st.hub.waiter_mut(id)
                {
                    *waker = Some(match mine {
                        Some(mine) if mine.will_wake(cx.waker()) => mine,
                        _ => cx.waker().clone(),
                    });
                    // The command is written: its transmit buffer goes back to the pool
                    // while this task waits (with thousands of connections busy at once,
                    // holding it until the reply would run the pool dry, and every command
                    // allocate a buffer).
                    st.hub.driver.release_buffers();
                    return Poll::Pending;
                }
            }
            if st.reader == Some(id) {
                inner.hand_back_reads(st, now);
            }
            // Neither answered nor awaited: the connection's end took it.
            Poll::Ready(answer.unwrap_or_else(|| Err(st.hub.closed_error())))
        })
        .await;
        pending.done = true;
        answer
    }
}

/// A command sent whose caller may go away: if it does, the command is abandoned.
struct InFlight<'a> {
    inner: &'a Inner,
    id: CommandId,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut st = self.inner.lock();
            st.hub.abandon(self.id);
            let now = self.inner.now();
            // Abandoning may have dropped unwritten bytes (room for others).
            self.inner.run(&mut st, None, now);
            if st.reader == Some(self.id) {
                self.inner.hand_back_reads(&mut st, now);
            }
        }
    }
}

/// One subscriber's events, in arrival order: a [`futures_core::Stream`] of
/// `Result<Event, Error>` (also [`EventStream::next`] without `StreamExt`).
///
/// Items: `Ok(event)`; `Err(Error::Lagged { missed })` where events were dropped because
/// this subscriber held its capacity of unread ones (the newest are dropped; the gap is
/// reported once, in place, and the events after it follow); at the end, if the connection
/// failed, its error once (`Err(Error::Disconnected)`, `Err(Error::Io(..))`), then `None`.
/// A connection closed on this side just ends the stream.
pub struct EventStream {
    sub: Arc<Sub>,
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
        poll_fn(|cx| self.poll_take(cx, None)).await
    }

    /// The next event (or gap) within `timeout`: `Error::Timeout(Expired::Event)` if none
    /// comes; the connection's error (or [`Error::Disconnected`]) once it has ended.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        self.wait(None, timeout).await
    }

    /// The oldest event called `name`, waiting up to `timeout` for one to arrive; other
    /// events stay queued in this subscription, in order. A gap is reported
    /// ([`Error::Lagged`]) when no such event is queued before it.
    pub async fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        self.wait(Some(name), timeout).await
    }

    /// Events waiting to be read.
    pub fn queued(&self) -> usize {
        self.sub.lock().events.len()
    }

    async fn wait(&mut self, name: Option<&str>, timeout: Duration) -> Result<Event> {
        let next = poll_fn(|cx| self.poll_take(cx, name));
        match ::tokio::time::timeout(timeout, next).await {
            Err(_) => Err(Error::Timeout(Expired::Event)),
            Ok(Some(item)) => item,
            Ok(None) => Err(self.sub.lock().closed_error()),
        }
    }

    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        name: Option<&str>,
    ) -> Poll<Option<Result<Event>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let mut st = self.sub.lock();
        match st.take(name) {
            Some(item) => Poll::Ready(Some(item)),
            None => match &st.ended {
                Some(ended) => {
                    let item =
                        (ended.reason != qmp_proto::CloseReason::Local).then(|| Err(ended.error()));
                    drop(st);
                    self.ended = true;
                    Poll::Ready(item)
                }
                None => {
                    if !st.waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        st.waiting = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
            },
        }
    }
}

impl futures_core::Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_take(cx, None)
    }
}

impl futures_core::FusedStream for EventStream {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}
