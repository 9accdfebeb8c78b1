//! What the clients that share one connection among many callers ([`SharedClient`] on
//! threads, the tokio `Client` on tasks) keep under their lock, written once: the driver, who
//! waits for which command, the event subscribers and how the connection ended. They differ
//! only in how a caller waits (a channel for an answer, or the answer left here for a woken
//! task; a condition variable or a waker for an event); the [`Waiter`] and [`Ready`] traits
//! say that part.
//!
//! [`SharedClient`]: crate::SharedClient

use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};
use std::time::Duration;

use serde::Serialize;

use qmp_proto::{CloseReason, CommandId, Deadline, EventQueue, LinkError, SendError, SendOptions};

use crate::drive::{self, Answer, Ended, EventList, StdDriver};
use crate::error::{Error, Result};
use crate::event::Event;

/// Whoever waits for a command's answer.
pub(crate) trait Waiter {
    /// Hands the answer to `id` over: sent on (if the caller went away, it is dropped), or
    /// left in `answered` for the caller to take under the lock.
    fn answer(self, id: CommandId, answer: Answer, answered: &mut Vec<(CommandId, Answer)>);
}

impl Waiter for mpsc::Sender<Answer> {
    fn answer(self, _: CommandId, answer: Answer, _: &mut Vec<(CommandId, Answer)>) {
        let _ = self.send(answer);
    }
}

/// A task waiting for a command's answer: the answer is left in the hub and the task woken
/// (no channel to allocate per command). No waker while the task itself runs (it looks for
/// its answer under the lock before it waits).
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) struct TaskWaiter(pub(crate) Option<std::task::Waker>);

#[cfg(feature = "tokio")]
impl Waiter for TaskWaiter {
    fn answer(self, id: CommandId, answer: Answer, answered: &mut Vec<(CommandId, Answer)>) {
        answered.push((id, answer));
        if let Some(waker) = self.0 {
            waker.wake();
        }
    }
}

/// How a subscriber waiting for an event is woken: `Slot` is kept under the queue's lock
/// (a task's waker), `Self` beside it (a condition variable).
pub(crate) trait Ready: Default + fmt::Debug {
    /// What a waiting reader leaves under the lock.
    type Slot: Default + fmt::Debug;
    /// Wakes whoever waits (called with the queue locked).
    fn notify(&self, slot: &mut Self::Slot);
}

impl Ready for Condvar {
    type Slot = ();
    fn notify(&self, _: &mut ()) {
        self.notify_all();
    }
}

/// A task waiting for an event leaves its waker in the queue.
#[cfg(feature = "tokio")]
#[derive(Debug, Default)]
pub(crate) struct WakeReady;

#[cfg(feature = "tokio")]
impl Ready for WakeReady {
    type Slot = Option<std::task::Waker>;
    fn notify(&self, slot: &mut Self::Slot) {
        if let Some(waker) = slot.take() {
            waker.wake();
        }
    }
}

/// One subscriber's queue.
#[derive(Debug)]
pub(crate) struct Queue<R: Ready> {
    state: Mutex<QueueState<R::Slot>>,
    pub(crate) ready: R,
}

/// What a subscriber's lock guards.
#[derive(Debug)]
pub(crate) struct QueueState<S> {
    pub(crate) events: EventQueue<EventList>,
    pub(crate) ended: Option<Ended>,
    /// Left by a waiting reader (see [`Ready`]).
    pub(crate) waiting: S,
}

impl<S> QueueState<S> {
    /// The next queued event called `name` (any, if `None`), or the gap before it.
    pub(crate) fn take(&mut self, name: Option<&str>) -> Option<Result<Event>> {
        Some(self.events.take(name)?.map_err(|lagged| Error::Lagged {
            missed: lagged.missed,
        }))
    }

    /// The error of the connection's end, as readers get it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn closed_error(&self) -> Error {
        self.ended
            .as_ref()
            .map_or(Error::Disconnected, Ended::error)
    }
}

impl<R: Ready> Queue<R> {
    /// A queue holding up to `capacity` unread events (`None`: no bound).
    pub(crate) fn new(capacity: Option<usize>) -> Self {
        Self {
            state: Mutex::new(QueueState {
                events: EventQueue::new(EventList::new(capacity)),
                ended: None,
                waiting: R::Slot::default(),
            }),
            ready: R::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, QueueState<R::Slot>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, items: &[drive::Queued]) {
        let mut st = self.lock();
        for item in items {
            drive::push_queued(&mut st.events, item);
        }
        self.ready.notify(&mut st.waiting);
    }

    fn end(&self, ended: &Ended) {
        let mut st = self.lock();
        st.ended.get_or_insert_with(|| ended.clone());
        self.ready.notify(&mut st.waiting);
    }
}

/// What the connection's lock guards: the driver, who waits for which command, and the
/// subscribers. The small fields come first (`repr(C)`), to share cache lines with the
/// lock's word and each other rather than sit past the driver's two kilobytes.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Hub<W, R: Ready> {
    /// Who waits for which command's answer.
    waiters: Vec<(CommandId, W)>,
    /// Answers left for their callers to take (see [`Waiter::answer`]).
    answered: Vec<(CommandId, Answer)>,
    subscribers: Vec<Weak<Queue<R>>>,
    /// The first subscriber's queue, made at the start so that it misses nothing.
    pub(crate) first: Option<Arc<Queue<R>>>,
    pub(crate) ended: Option<Ended>,
    /// The I/O error that ended the connection, if one did.
    pub(crate) io_error: Option<io::Error>,
    pub(crate) driver: StdDriver<EventList>,
}

impl<W: Waiter, R: Ready> Hub<W, R> {
    /// The hub of a connection run by `driver`, its first subscriber holding up to
    /// `capacity` events.
    pub(crate) fn new(driver: StdDriver<EventList>, capacity: Option<usize>) -> Self {
        let first = Arc::new(Queue::new(capacity));
        Self {
            driver,
            waiters: Vec::new(),
            answered: Vec::new(),
            subscribers: vec![Arc::downgrade(&first)],
            first: Some(first),
            io_error: None,
            ended: None,
        }
    }

    /// Has the driver encode a command into its transmit buffer; `Ok(None)` when there is no
    /// room in flight (wait until a command completes and try again).
    pub(crate) fn execute<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
        options: SendOptions,
        now: qmp_proto::Instant,
    ) -> Result<Option<CommandId>> {
        if self.ended.is_some() {
            return Err(self.closed_error());
        }
        match self.driver.execute(name, arguments, options, now) {
            Ok(id) => Ok(Some(id)),
            Err(SendError::QueueFull | SendError::TableFull | SendError::Busy) => Ok(None),
            Err(SendError::Closed) => Err(self.closed_error()),
            Err(SendError::Encode(e)) => Err(Error::Encode(e)),
            Err(e) => Err(Error::Refused(e)),
        }
    }

    /// Registers `waiter` for the answer to `id`.
    pub(crate) fn wait_for(&mut self, id: CommandId, waiter: W) {
        self.waiters.push((id, waiter));
    }

    /// Forgets the command `id`: nobody waits for it any more.
    pub(crate) fn abandon(&mut self, id: CommandId) {
        self.waiters.retain(|w| w.0 != id);
        self.answered.retain(|a| a.0 != id);
        self.driver.abandon(id);
    }

    /// The answer to `id` if it was left here (see [`Waiter::answer`]).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn take_answered(&mut self, id: CommandId) -> Option<Answer> {
        let at = self.answered.iter().position(|a| a.0 == id)?;
        Some(self.answered.swap_remove(at).1)
    }

    /// The waiter for `id`, if its answer has not come yet.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn waiter_mut(&mut self, id: CommandId) -> Option<&mut W> {
        self.waiters
            .iter_mut()
            .find(|w| w.0 == id)
            .map(|(_, waiter)| waiter)
    }

    /// Hands the outcome of `id` (just reported by `Done::Completed`) to its waiter.
    pub(crate) fn complete(&mut self, id: CommandId, max_reply_size: usize) {
        let reason = self.driver.close_reason();
        let io_error = &self.io_error;
        let answer = drive::take_answer(&mut self.driver, id, max_reply_size, || {
            drive::closed_error(reason, io_error.as_ref().map(copy_io))
        });
        if let Some(at) = self.waiters.iter().position(|w| w.0 == id)
            && let Some(answer) = answer
        {
            self.waiters
                .swap_remove(at)
                .1
                .answer(id, answer, &mut self.answered);
        }
    }

    /// Hands every event the driver queued to every subscriber.
    pub(crate) fn fan_out(&mut self) {
        if self.driver.events().is_ready(None) {
            let items = drive::drain_events(&mut self.driver);
            self.subscribers.retain(|queue| match queue.upgrade() {
                Some(queue) => {
                    queue.push(&items);
                    true
                }
                None => false,
            });
        }
    }

    /// The connection ended for `reason` (`Done::Closed`): the last events go out, then
    /// every waiting command and every subscriber gets the end. Returns whether this ended
    /// it (not an earlier call).
    pub(crate) fn end(&mut self, reason: CloseReason) -> bool {
        self.fan_out();
        if self.ended.is_some() {
            return false;
        }
        let ended = Ended::new(reason, self.io_error.as_ref());
        for (id, waiter) in self.waiters.drain(..) {
            waiter.answer(id, Err(ended.error()), &mut self.answered);
        }
        for queue in self.subscribers.drain(..).filter_map(|q| q.upgrade()) {
            queue.end(&ended);
        }
        if let Some(first) = &self.first {
            first.end(&ended);
        }
        self.ended = Some(ended);
        true
    }

    /// The error for a command refused or dropped because the connection ended.
    pub(crate) fn closed_error(&self) -> Error {
        self.ended
            .as_ref()
            .map_or(Error::Disconnected, Ended::error)
    }

    /// Reports a failed read to the driver (keeping a fatal error to say later).
    pub(crate) fn read_failed(&mut self, e: io::Error, now: qmp_proto::Instant) {
        let kind = self.keep_fatal(e);
        self.driver.handle_read_error(kind, now);
    }

    /// Reports a failed write to the driver (keeping a fatal error to say later).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn write_failed(&mut self, e: io::Error, now: qmp_proto::Instant) {
        let kind = self.keep_fatal(e);
        self.driver.handle_write_error(kind, now);
    }

    fn keep_fatal(&mut self, e: io::Error) -> LinkError {
        let kind = drive::link_error(&e);
        if kind == LinkError::Fatal {
            self.io_error = Some(e);
        }
        kind
    }

    /// A new subscriber holding up to `capacity` unread events: the first one made (which
    /// has every event since the start), else a fresh queue.
    pub(crate) fn subscribe(&mut self, capacity: Option<usize>) -> Arc<Queue<R>> {
        if let Some(first) = self.first.take() {
            first.lock().events.store_mut().max = capacity;
            return first;
        }
        let queue = Arc::new(Queue::new(capacity));
        match &self.ended {
            Some(ended) => queue.end(ended),
            None => self.subscribers.push(Arc::downgrade(&queue)),
        }
        queue
    }

    /// Whether the connection is gone (every later command fails).
    pub(crate) fn is_closed(&self) -> bool {
        self.ended.is_some() || self.driver.is_closed()
    }
}

/// How a command is sent: out of band or not, with the deadline of its own `timeout` from
/// `now` (see [`deadline`]).
pub(crate) fn send_options(
    oob: bool,
    timeout: Option<Option<Duration>>,
    attach: bool,
    now: qmp_proto::Instant,
) -> SendOptions {
    SendOptions {
        oob,
        deadline: deadline(timeout, now),
        attach,
    }
}

/// A command's deadline from the timeout it was given (`None`: none of its own): the
/// driver resolves the client's command timeout itself ([`Deadline::Default`]), and with it
/// the shorter silence window of an agent's command without a success reply.
pub(crate) fn deadline(timeout: Option<Option<Duration>>, now: qmp_proto::Instant) -> Deadline {
    match timeout {
        None => Deadline::Default,
        Some(Some(t)) => Deadline::At(now + t),
        Some(None) => Deadline::Never,
    }
}

/// How a client sharing one connection shows itself in `{:?}`.
pub(crate) fn fmt_client(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    server: &qmp_proto::ServerInfo,
    in_flight: usize,
    closed: bool,
) -> fmt::Result {
    f.debug_struct(name)
        .field("server", server)
        .field("in_flight", &in_flight)
        .field("closed", &closed)
        .finish_non_exhaustive()
}

/// A copy of an I/O error, to hand to more than one caller.
pub(crate) fn copy_io(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}
