//! What every std client needs to run [`qmp_proto::Driver`]: heap buffers that grow to a
//! limit, owned events, the time, and the translation of I/O errors and command outcomes
//! into this crate's types. No protocol decision is made here: the driver makes them all.

use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use qmp_proto::{
    Buffer, CloseReason, Driver, DriverConfig, EventStore, Expired, Failure, Instant, LinkError,
    Outcome,
};

use crate::client::Options;
use crate::error::{Error, QmpError};
use crate::event::Event;

/// Capacity of the in-flight table: QEMU's in-band queue of 8, plus as many out-of-band
/// commands and abandoned ones still owed a reply. Every slot is part of each connection's
/// fixed state (a fleet of 10,000 idle connections holds 10,000 tables), so no larger.
pub(crate) const TABLE: usize = 16;

/// The driver every std client runs, over heap buffers and events stored in `Q`.
pub(crate) type StdDriver<Q> = Driver<HeapBuffer, HeapBuffer, Q, TABLE>;

/// A byte buffer on the heap that doubles when asked, up to `max` bytes. Released (see
/// [`Buffer::release`]) it holds nothing: its `initial` bytes go to this thread's pool and
/// come back from it when it grows again.
#[derive(Debug, Clone)]
pub(crate) struct HeapBuffer {
    bytes: Vec<u8>,
    initial: usize,
    max: usize,
}

/// Released buffers kept for reuse per thread, at most this many: a fleet of idle
/// connections shares a few buffers instead of holding one each, and taking one back costs
/// neither an allocation nor zeroing.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl HeapBuffer {
    /// `initial` bytes, growing to at most `max`.
    pub(crate) fn new(initial: usize, max: usize) -> Self {
        let initial = initial.min(max);
        Self {
            bytes: vec![0; initial],
            initial,
            max,
        }
    }

    /// `initial` bytes from this thread's pool, or new ones.
    fn take(initial: usize) -> Vec<u8> {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let at = pool.iter().rposition(|b| b.len() == initial)?;
            Some(pool.swap_remove(at))
        })
        .unwrap_or_else(|| vec![0; initial])
    }
}

impl AsRef<[u8]> for HeapBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for HeapBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Buffer for HeapBuffer {
    fn grow_to(&mut self, len: usize) -> bool {
        let len = len.min(self.max);
        if len <= self.bytes.len() {
            return false;
        }
        if self.bytes.is_empty() && self.initial > 0 {
            self.bytes = Self::take(self.initial);
        }
        if len > self.bytes.len() {
            self.bytes.resize(len, 0);
        }
        true
    }

    fn release(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.len() == self.initial && !bytes.is_empty() {
            POOL.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOL_MAX {
                    pool.push(bytes);
                }
            });
        }
    }
}

/// Owned events in arrival order, at most `max` of them (`None`: no bound).
#[derive(Debug, Default)]
pub(crate) struct EventList {
    pub(crate) events: VecDeque<Event>,
    pub(crate) max: Option<usize>,
}

impl EventList {
    pub(crate) fn new(max: Option<usize>) -> Self {
        Self {
            events: VecDeque::new(),
            max,
        }
    }
}

impl EventStore for EventList {
    type Item<'a> = Event;

    fn push(&mut self, event: &qmp_proto::Event<'_>) -> bool {
        if self.max.is_some_and(|max| self.events.len() >= max) {
            return false;
        }
        self.events.push_back(Event::from_view(event));
        true
    }

    fn take(&mut self, name: Option<&str>) -> Option<Event> {
        let at = match name {
            None => 0,
            Some(name) => self.events.iter().position(|e| e.name == name)?,
        };
        self.events.remove(at)
    }

    fn contains(&self, name: Option<&str>) -> bool {
        match name {
            None => !self.events.is_empty(),
            Some(name) => self.events.iter().any(|e| e.name == name),
        }
    }

    fn len(&self) -> usize {
        self.events.len()
    }
}

/// The driver's settings for `options`.
pub(crate) fn driver_config(options: &Options, in_band: usize) -> DriverConfig {
    DriverConfig {
        session: qmp_proto::Config::default()
            .max_in_band(in_band)
            .enforce_negotiation(options.negotiate)
            .untagged_when_alone(options.untagged_when_alone),
        negotiate: options.negotiate,
        oob: options.oob,
        handshake_timeout: options.connect_timeout,
        command_timeout: options.command_timeout,
        stall_timeout: options.read_timeout,
        zero_read_is_eof: true,
    }
}

/// A new driver for a connection made at `now`.
pub(crate) fn new_driver<Q: EventStore>(
    options: &Options,
    in_band: usize,
    events: Q,
    now: Instant,
) -> StdDriver<Q> {
    Driver::new(
        HeapBuffer::new(options.initial_buffer, options.max_reply_size),
        // Commands are small; the transmit buffer grows for a large one.
        HeapBuffer::new(4096, usize::MAX),
        events,
        driver_config(options, in_band),
        now,
    )
}

/// The time as the driver counts it: microseconds since `origin`.
pub(crate) fn now_since(origin: std::time::Instant) -> Instant {
    let micros = origin.elapsed().as_micros();
    Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// What an I/O error means for the connection.
pub(crate) fn link_error(e: &io::Error) -> LinkError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
            LinkError::Transient
        }
        kind if is_disconnect(kind) => LinkError::Closed,
        _ => LinkError::Fatal,
    }
}

/// Whether an I/O error kind means the peer went away.
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

/// The error for a connection that ended for `reason` (`io`: the I/O error, if the adapter
/// still holds it).
pub(crate) fn closed_error(reason: Option<CloseReason>, io: Option<io::Error>) -> Error {
    match reason {
        Some(CloseReason::Stalled) => Error::Stalled,
        Some(CloseReason::Io) => io.map_or(Error::Disconnected, Error::Io),
        _ => Error::Disconnected,
    }
}

/// A command's outcome as this crate's result: the `return` value's JSON text, or the
/// error. `limit` is the maximum reply size in force; `closed` builds the error of a
/// command that failed because the connection ended.
pub(crate) fn outcome_result<'a>(
    outcome: Outcome<'a>,
    limit: usize,
    closed: impl FnOnce() -> Error,
) -> Result<&'a str, Error> {
    match outcome {
        Outcome::Return(value) => Ok(value.as_json()),
        Outcome::Error(e) => Err(Error::Qmp(QmpError::from_view(&e))),
        Outcome::Failed(failure) => Err(failure_error(failure, limit, closed)),
    }
}

/// The error for a command that got no usable answer.
pub(crate) fn failure_error(
    failure: Failure,
    limit: usize,
    closed: impl FnOnce() -> Error,
) -> Error {
    match failure {
        Failure::TooLarge { size } => Error::TooLarge { size, limit },
        Failure::Malformed(e) => Error::Malformed(e),
        Failure::Unframed(e) => Error::Unframed(e),
        Failure::TimedOut => Error::Timeout(Expired::Command),
        Failure::ServerRestarted => Error::ServerRestarted,
        _ => closed(),
    }
}

/// A command's answer as handed to a waiter on another thread or task: the `return`
/// value's JSON text, or the error.
pub(crate) type Answer = Result<Box<str>, Error>;

/// One command call, as the command methods of every client (`command_verbs!`) hand it
/// to the client's own primitive.
pub(crate) struct Request<'a, A: ?Sized> {
    /// Out of band (`exec-oob`).
    pub(crate) oob: bool,
    pub(crate) name: &'a str,
    pub(crate) arguments: &'a A,
    /// The command's own deadline from now (`Some(None)`: none); `None`: the client's
    /// command timeout.
    pub(crate) timeout: Option<Option<Duration>>,
    /// File descriptors to attach (`SCM_RIGHTS`); empty for none.
    pub(crate) fds: &'a [BorrowedFd<'a>],
}

impl<'a, A: ?Sized> Request<'a, A> {
    pub(crate) fn new(
        oob: bool,
        name: &'a str,
        arguments: &'a A,
        timeout: Option<Option<Duration>>,
        fds: &'a [BorrowedFd<'a>],
    ) -> Self {
        Self {
            oob,
            name,
            arguments,
            timeout,
            fds,
        }
    }

    /// Its parts: `(oob, name, arguments, timeout, fds)`, the timeout resolved against the
    /// client's command timeout.
    #[allow(clippy::type_complexity)]
    pub(crate) fn parts(
        self,
        default: Option<Duration>,
    ) -> (bool, &'a str, &'a A, Option<Duration>, &'a [BorrowedFd<'a>]) {
        let timeout = self.timeout_or(default);
        (self.oob, self.name, self.arguments, timeout, self.fds)
    }

    /// The command's deadline from now, given the client's command timeout.
    pub(crate) fn timeout_or(&self, default: Option<Duration>) -> Option<Duration> {
        self.timeout.unwrap_or(default)
    }
}

/// Why a connection ended, kept so that every later caller gets the same error.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub(crate) reason: CloseReason,
    io: Option<(io::ErrorKind, String)>,
}

impl Ended {
    /// The end for `reason` (`io`: the I/O error that ended it, if any).
    pub(crate) fn new(reason: CloseReason, io: Option<&io::Error>) -> Self {
        Self {
            reason,
            io: io.map(|e| (e.kind(), e.to_string())),
        }
    }

    /// The error every waiting and later command gets.
    pub(crate) fn error(&self) -> Error {
        let io = self.io.as_ref().map(|(k, m)| io::Error::new(*k, m.clone()));
        closed_error(Some(self.reason), io)
    }
}

/// Takes the outcome of `id` (just reported by `Done::Completed`) as an owned answer.
pub(crate) fn take_answer<Q: EventStore>(
    driver: &mut StdDriver<Q>,
    id: qmp_proto::CommandId,
    limit: usize,
    closed: impl FnOnce() -> Error,
) -> Option<Answer> {
    let outcome = driver.outcome(id)?;
    Some(outcome_result(outcome, limit, closed).map(Box::from))
}

impl EventList {
    /// Stores an owned event, if there is room.
    pub(crate) fn push_owned(&mut self, event: Event) -> bool {
        if self.max.is_some_and(|max| self.events.len() >= max) {
            return false;
        }
        self.events.push_back(event);
        true
    }
}

/// What the driver's event queue hands out: an event, or how many were lost at that point.
pub(crate) type Queued = Result<Event, u64>;

/// Takes every event (and gap) the driver has queued, oldest first.
pub(crate) fn drain_events(driver: &mut StdDriver<EventList>) -> Vec<Queued> {
    let mut out = Vec::new();
    while let Some(item) = driver.take_event(None) {
        out.push(item.map_err(|lagged| lagged.missed));
    }
    out
}

/// Hands one drained item to a subscriber's queue, under the one overflow rule.
pub(crate) fn push_queued(queue: &mut qmp_proto::EventQueue<EventList>, item: &Queued) {
    match item {
        Ok(event) => {
            queue.push_with(|list| list.push_owned(event.clone()));
        }
        Err(missed) => queue.lose(*missed),
    }
}

/// The std instant of the driver's `at`, counted from `origin`.
pub(crate) fn std_instant(origin: std::time::Instant, at: Instant) -> std::time::Instant {
    origin + std::time::Duration::from_micros(at.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffers_grow_to_their_limit_and_no_further() {
        let mut b = HeapBuffer::new(64, 200);
        assert!(b.grow_to(128));
        assert_eq!(b.as_ref().len(), 128);
        assert!(b.grow_to(256));
        assert_eq!(b.as_ref().len(), 200);
        assert!(!b.grow_to(400));
    }

    #[test]
    fn io_errors_are_classified() {
        let kind = |k| link_error(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::WouldBlock), LinkError::Transient);
        assert_eq!(kind(io::ErrorKind::BrokenPipe), LinkError::Closed);
        assert_eq!(kind(io::ErrorKind::PermissionDenied), LinkError::Fatal);
    }
}
