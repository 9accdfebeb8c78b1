//! The driver: the one client loop every adapter runs, above the session (see [`Driver`]).

use core::fmt;
use core::time::Duration;

use serde::Serialize;

use crate::FrameError;
use crate::events::{EventQueue, EventStore};
use crate::json::{JsonStr, RawJson};
use crate::message::{Message, QmpError};
use crate::session::{CommandId, Failure, Notice, Outcome, Received, SendError, Session, State};
use crate::time::Instant;

mod agent;
mod config;
mod outbox;
mod restart;
mod steps;

pub use crate::buffer::Buffer;
pub use agent::{AGENT_SENTINEL, NO_REPLY_TIMEOUT, NO_SUCCESS_RESPONSE, no_reply_timeout};
pub use config::{Deadline, DriverConfig, RESYNC, SendOptions, ServerInfo};
pub use steps::{CloseReason, Done, Expired, Io, LinkError, Wait};

use outbox::Outbox;

/// An outcome held for its caller; spans are offsets into the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    None,
    Return(CommandId, (usize, usize)),
    Error(CommandId, (usize, usize), (usize, usize)),
    Failed(CommandId, Failure),
    Message((usize, usize)),
    /// A command with no reply on success that got none (guest agent).
    Silent(CommandId),
}

/// A QMP client's protocol, whole, for any transport: the one loop every client runs.
///
/// # Design notes
/// [`Session`] knows the protocol message by message. A *client* needs more: the handshake
/// as one step, bytes queued for writing and what a failed write means, the deadlines of the
/// greeting, of commands and of waiting for room, a peer that stalls, one event queue with
/// one overflow rule, and the outcome of a command kept until its caller takes it. Written
/// in each adapter, that logic drifted apart (four handshakes, two overflow rules, three
/// timeout schemes). The [`Driver`] holds it once; an adapter only moves bytes and passes
/// the time in, in the quinn-proto manner:
///
/// ```text
/// loop {
///     match driver.poll_io(now, wait, deadline) {
///         Io::Write(bytes)      => { n = link.write(bytes)?;  driver.handle_written(n, now) }
///         Io::Read { buf, until } => { n = link.read(buf)?;  driver.handle_read(n, now) }
///                                   // blocking at most until `until`
///         Io::Done(done)        => return done,
///     }
/// }
/// ```
///
/// A blocking client runs that loop with blocking reads bounded by `until`; an async one
/// awaits the same calls; a client whose reads and writes happen elsewhere (a reader thread,
/// a reactor) calls the pieces directly: [`poll_transmit`](Driver::poll_transmit) +
/// [`handle_written`](Driver::handle_written), [`read_buf`](Driver::read_buf) +
/// [`handle_read`](Driver::handle_read) (or [`feed`](Driver::feed)),
/// [`poll_timeout`](Driver::poll_timeout) + [`handle_timeout`](Driver::handle_timeout), and
/// [`poll`](Driver::poll) for what completed.
///
/// The rules it applies, the same for every client:
/// - **Handshake**: the greeting is awaited (bytes before it that are not QMP, such as boot
///   noise on a serial line, are skipped), then `qmp_capabilities` goes out by itself, with
///   `oob` when the server offers it and the configuration asks for it. The greeting and the
///   negotiation share one deadline ([`DriverConfig::handshake_timeout`]); when it passes,
///   [`Done::TimedOut`] — the usual cause is another client holding the monitor, which QEMU
///   serves one at a time.
/// - **Commands** have a deadline each ([`Deadline`]); one that passes fails the command
///   with [`Failure::TimedOut`]. When QEMU's queue or the in-flight table is full, waiting
///   for room ([`Wait::Room`]) is bounded by the deadline of the command to be sent.
/// - **Writes**: bytes wait in the transmit buffer until written. A command cut off midway
///   (its deadline passed during the write, or the write failed) is dropped from the buffer
///   and the byte `0x01` is sent before the next command: QEMU then drops the fragment with
///   an id-less error and runs the next command whole. A peer that went away while we wrote
///   ([`LinkError::Closed`]) still has its last words read, up to the end of the stream.
/// - **Stalls**: with [`DriverConfig::stall_timeout`], a peer that sends nothing for that
///   long while commands wait ends the connection ([`CloseReason::Stalled`]).
/// - **Events** go into one [`EventQueue`] (drop the newest, report the gap where it is).
/// - **The end**: every command still waiting fails with [`Failure::Disconnected`], in
///   order, after the replies and events already received; then [`Done::Closed`] with the
///   reason, for every later wait.
///
/// `R` and `T` are the receive and transmit buffers ([`Buffer`]), `Q` the event storage
/// ([`EventStore`]), `N` the in-flight table's size.
///
/// # Method families
/// - **Getters**: [`state`](Self::state), [`server`](Self::server),
///   [`in_flight`](Self::in_flight), [`is_pending`](Self::is_pending),
///   [`close_reason`](Self::close_reason), [`dropped_messages`](Self::dropped_messages),
///   [`discarded_replies`](Self::discarded_replies), [`events`](Self::events).
/// - **Commands**: [`execute`](Self::execute) encodes a command into the transmit buffer and
///   returns its id; [`negotiate`](Self::negotiate), [`send_message`](Self::send_message),
///   [`abandon`](Self::abandon), [`close`](Self::close).
/// - **I/O**, in the loop: [`poll_io`](Self::poll_io), or its pieces
///   [`poll_transmit`](Self::poll_transmit), [`read_buf`](Self::read_buf),
///   [`poll_timeout`](Self::poll_timeout); inputs [`handle_written`](Self::handle_written),
///   [`handle_write_error`](Self::handle_write_error), [`handle_read`](Self::handle_read),
///   [`feed`](Self::feed), [`handle_read_error`](Self::handle_read_error),
///   [`handle_timeout`](Self::handle_timeout).
/// - **Results**: [`poll`](Self::poll) / [`poll_io`](Self::poll_io) say what is done;
///   [`outcome`](Self::outcome), [`take_event`](Self::take_event) and
///   [`untracked`](Self::untracked) hand it out, borrowed from the receive buffer.
///
/// Call order: after [`Done::Completed`], take the outcome with `outcome` before the next
/// call that reads or polls (it is held in the receive buffer until then).
pub struct Driver<R, T, Q, const N: usize = { crate::QEMU_QUEUE_LEN }> {
    session: Session<R, N>,
    /// The transmit buffer and the commands queued in it.
    outbox: Outbox<T, N>,
    /// Commands dropped from the transmit buffer unwritten (the peer went away, or the link
    /// failed): they fail with [`Failure::Disconnected`] at the next [`Driver::poll`].
    unsent: heapless::Deque<CommandId, N>,
    /// Every message of the ended connection was handed out.
    drained: bool,
    events: EventQueue<Q>,
    config: DriverConfig,
    /// Who is on the other end: a QMP server (and what its greeting said), or the guest
    /// agent (and the dialect's state).
    peer: agent::Peer,
    negotiation: Option<CommandId>,
    handshake_deadline: Option<Instant>,
    held: Held,
    closed: Option<CloseReason>,
    write_closed: bool,
    last_activity: Instant,
    dropped: u64,
    discarded: u64,
    restarts: u64,
}

impl<R, T, Q: fmt::Debug, const N: usize> fmt::Debug for Driver<R, T, Q, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("server", &self.peer.server())
            .field("closed", &self.closed)
            .field("queued_bytes", &self.outbox.len())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl<R: Buffer, T: Buffer, Q: EventStore, const N: usize> Driver<R, T, Q, N> {
    /// A driver at the start of a connection made at `now`: it awaits the greeting.
    pub fn new(rx: R, tx: T, events: Q, config: DriverConfig, now: Instant) -> Self {
        Self {
            session: Session::with_config(rx, config.session),
            outbox: Outbox::new(tx),
            unsent: heapless::Deque::new(),
            drained: false,
            events: EventQueue::new(events),
            config,
            peer: agent::Peer::Qmp(None),
            negotiation: None,
            handshake_deadline: config.handshake_timeout.map(|t| now + t),
            held: Held::None,
            closed: None,
            write_closed: false,
            last_activity: now,
            dropped: 0,
            discarded: 0,
            restarts: 0,
        }
    }

    // ---- getters -----------------------------------------------------------------------

    /// Where the session is.
    pub fn state(&self) -> State {
        if self.closed.is_some() {
            return State::Closed;
        }
        self.session.state()
    }

    /// The id of the capabilities negotiation, once sent (by the driver itself, or through
    /// [`negotiate`](Self::negotiate)).
    pub fn negotiation(&self) -> Option<CommandId> {
        self.negotiation
    }

    /// Whether the handshake is complete (command mode, or greeted when not negotiating).
    pub fn is_ready(&self) -> bool {
        if let Some(agent) = self.peer.agent() {
            return agent.is_synced() && self.session.state() != State::Closed;
        }
        match self.session.state() {
            State::Ready => true,
            State::Negotiating => !self.config.negotiate && self.negotiation.is_none(),
            _ => false,
        }
    }

    /// What the greeting said, once it came.
    pub fn server(&self) -> Option<&ServerInfo> {
        self.peer.server()
    }

    /// The settings in force.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// Changes [`DriverConfig::command_timeout`] for commands sent from now on.
    pub fn set_command_timeout(&mut self, timeout: Option<Duration>) {
        self.config.command_timeout = timeout;
    }

    /// Changes [`DriverConfig::oob`] for a negotiation not yet started (a client that asks
    /// for `oob` per handshake, with [`DriverConfig::negotiate`] off).
    pub fn set_oob(&mut self, oob: bool) {
        self.config.oob = oob;
    }

    /// Commands sent and not finished (abandoned ones still owed a reply included).
    pub fn in_flight(&self) -> usize {
        self.session.in_flight()
    }

    /// Whether `id` still waits for its outcome.
    pub fn is_pending(&self, id: CommandId) -> bool {
        self.session.is_pending(id)
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Whether the connection ended and everything it brought was handed out.
    pub fn is_drained(&self) -> bool {
        self.drained
    }

    /// Whether commands can no longer be sent (the connection ended, or the peer went away
    /// while we wrote).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some() || self.write_closed || self.session.state() == State::Closed
    }

    /// Messages dropped as the protocol asks, so far: replies matching no command (late
    /// replies to commands that timed out), id-less errors, malformed frames and unframeable
    /// bytes with no command to blame. (A second greeting is not dropped: see
    /// [`restarts`](Self::restarts).)
    pub fn dropped_messages(&self) -> u64 {
        self.dropped
    }

    /// Late replies to abandoned commands, discarded by id, so far.
    pub fn discarded_replies(&self) -> u64 {
        self.discarded
    }

    /// The event queue.
    pub fn events(&self) -> &EventQueue<Q> {
        &self.events
    }

    /// The event queue, mutably (e.g. to take events, or clear a gap).
    pub fn events_mut(&mut self) -> &mut EventQueue<Q> {
        &mut self.events
    }

    /// The receive buffer's size.
    pub fn receive_capacity(&self) -> usize {
        self.session.framer().capacity()
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.outbox.len()
    }

    // ---- commands ----------------------------------------------------------------------

    /// Encodes `{"execute": name, "arguments": arguments}` (or `exec-oob`) into the transmit
    /// buffer, to be written by the I/O loop, and returns the command's id. `arguments`
    /// must serialize to an object, or be `&()` for none.
    ///
    /// [`SendError::QueueFull`] / [`SendError::TableFull`]: wait for [`Wait::Room`] (bounded
    /// by this command's deadline), then try again.
    ///
    /// A guest agent driver (feature `agent`) sends the agent's commands that have no
    /// success reply (`NO_SUCCESS_RESPONSE`) as `execute_no_reply` does.
    pub fn execute<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
        options: SendOptions,
        now: Instant,
    ) -> Result<CommandId, SendError> {
        if self.is_agent() && agent::NO_SUCCESS_RESPONSE.contains(&name) {
            return self.execute_no_reply(name, arguments, options, now);
        }
        self.send_command(name, arguments, options, now)
    }

    /// [`execute`](Self::execute) without the agent's no-reply rule.
    fn send_command<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
        options: SendOptions,
        now: Instant,
    ) -> Result<CommandId, SendError> {
        if self.rehandshaking() {
            return Err(SendError::QueueFull);
        }
        let deadline = self.deadline(options.deadline, now);
        let oob = options.oob;
        self.encode(options.attach, |session, out| {
            if oob {
                session.execute_oob(name, arguments, deadline, out)
            } else {
                session.execute(name, arguments, deadline, out)
            }
        })
    }

    /// Queues `qmp_capabilities` (with `oob` when configured and offered), for a driver
    /// configured not to negotiate by itself. Wait for its id like any command's.
    pub fn negotiate(
        &mut self,
        options: SendOptions,
        now: Instant,
    ) -> Result<CommandId, SendError> {
        let oob = self.config.oob && self.session.oob_offered();
        let deadline = self.deadline(options.deadline, now);
        let id = self.encode(false, |session, out| session.negotiate(oob, deadline, out))?;
        self.negotiation = Some(id);
        Ok(id)
    }

    /// Queues a whole message of the caller's own, exactly as given (any envelope, any id
    /// or none). The session does not track it: its reply comes as [`Done::Untracked`]
    /// while waiting for [`Wait::Untracked`].
    pub fn send_message<M: Serialize + ?Sized>(&mut self, message: &M) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.outbox.push_message(message)
    }

    /// Gives up on a command: its outcome will not be yielded, and a late reply is
    /// discarded by id. Unwritten bytes of it are dropped. Returns whether it was pending.
    pub fn abandon(&mut self, id: CommandId) -> bool {
        if self.holds(id) {
            self.held = Held::None;
            return true;
        }
        if self.outbox.unqueue(id) {
            // Never (wholly) reached the server: no reply will come.
            self.forget_silent(id);
            return self.session.forget(id);
        }
        if self.forget_silent(id) {
            // An agent's command without a success reply: none is owed, so nothing is kept
            // for it (an error reply that still comes is dropped as unmatched).
            return self.session.forget(id);
        }
        self.session.abandon(id)
    }

    /// Closes the connection on this side: every command still waiting fails with
    /// [`Failure::Disconnected`], then [`Done::Closed`]`(`[`CloseReason::Local`]`)`.
    pub fn close(&mut self) {
        self.end(CloseReason::Local);
    }

    // ---- I/O ---------------------------------------------------------------------------

    /// Runs the protocol as far as it goes without I/O, and says what to do next: write,
    /// read (and until when), or that `wait` is over. `deadline` bounds the wait
    /// ([`Done::TimedOut`]); commands and the handshake have their own.
    pub fn poll_io(&mut self, now: Instant, wait: Wait<'_>, deadline: Option<Instant>) -> Io<'_> {
        if let Some(done) = self.poll_wait(now, wait, deadline) {
            return Io::Done(done);
        }
        if let Some((start, end, attach)) = self.transmit_range() {
            return Io::Write {
                bytes: self.outbox.bytes(start, end),
                attach,
            };
        }
        if wait == Wait::Idle {
            return Io::Done(Done::Idle);
        }
        let mut until = min_instant(self.poll_timeout(), deadline);
        if matches!(wait, Wait::Handshake) {
            until = min_instant(until, self.handshake_deadline);
        }
        Io::Read {
            buf: self.read_buf(),
            until,
        }
    }

    /// Handles what is buffered, and says whether `wait` is over; `None`: do I/O.
    pub fn poll_wait(
        &mut self,
        now: Instant,
        wait: Wait<'_>,
        deadline: Option<Instant>,
    ) -> Option<Done> {
        self.handle_timeout(now);
        loop {
            if let Some(done) = self.satisfied(wait) {
                return Some(done);
            }
            let Some(done) = self.poll() else {
                // Notices (a discarded late reply) may have made room.
                return self
                    .satisfied(wait)
                    .or_else(|| self.timed_out(now, wait, deadline));
            };
            match done {
                Done::Completed(id) if Some(id) == self.negotiation => {
                    if self.session.state() == State::Ready {
                        self.held = Held::None;
                        if wait == Wait::Handshake {
                            return Some(Done::Ready);
                        }
                        if wait == Wait::Command(id) {
                            return Some(Done::Completed(id));
                        }
                    } else if wait == Wait::Handshake
                        && matches!(self.held, Held::Failed(_, Failure::TimedOut))
                    {
                        self.held = Held::None;
                        return Some(Done::TimedOut);
                    } else {
                        return Some(Done::Completed(id));
                    }
                }
                Done::Untracked if wait != Wait::Untracked => self.held = Held::None,
                Done::Event => {}
                Done::Closed(reason) => return Some(Done::Closed(reason)),
                done => return Some(done),
            }
        }
    }

    fn timed_out(&self, now: Instant, wait: Wait<'_>, deadline: Option<Instant>) -> Option<Done> {
        let handshake = matches!(wait, Wait::Handshake) && !self.is_ready();
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        let expired = self.peer.agent().is_some_and(|a| a.is_expired());
        (due(deadline) || (handshake && (due(self.handshake_deadline) || expired)))
            .then_some(Done::TimedOut)
    }

    fn satisfied(&mut self, wait: Wait<'_>) -> Option<Done> {
        match wait {
            Wait::Handshake => self.is_ready().then_some(Done::Ready),
            Wait::Command(id) => {
                // A command dropped unwritten is no longer in the session, but its failure
                // is still to come from `unsent`.
                let owed = self.session.is_pending(id)
                    || self.holds(id)
                    || self.unsent.iter().any(|&u| u == id);
                (!owed).then_some(Done::NotPending)
            }
            Wait::Event(name) => self.events.is_ready(name).then_some(Done::Event),
            Wait::Room { oob } => self.has_room(oob).then_some(Done::Room),
            Wait::Flush => (self.outbox.len() == 0).then_some(Done::Flushed),
            Wait::Untracked | Wait::Idle => None,
        }
    }

    fn holds(&self, id: CommandId) -> bool {
        matches!(self.held, Held::Return(h, _) | Held::Error(h, ..) | Held::Failed(h, _) | Held::Silent(h) if h == id)
    }

    /// Whether a command (out of band, or in band) could be queued now. An agent driver with
    /// the most commands without a success reply in flight has none until one ends.
    pub fn has_room(&self, oob: bool) -> bool {
        self.session.has_room(oob)
            && !self.outbox.is_full()
            && !self.rehandshaking()
            && self.silent_room()
    }

    /// Handles the next buffered message, if any: `Some` when it completed something the
    /// adapter must see ([`Done::Completed`], [`Done::Event`], [`Done::Untracked`],
    /// [`Done::Closed`]); `None` when more bytes (or time) are needed. A held outcome not
    /// taken by now is dropped.
    #[must_use]
    pub fn poll(&mut self) -> Option<Done> {
        self.held = Held::None;
        if let Some(id) = self.unsent.pop_front() {
            // Never written: a failure, even for a command whose success is silence.
            self.forget_silent(id);
            self.held = Held::Failed(id, Failure::Disconnected);
            return Some(Done::Completed(id));
        }
        loop {
            let base = self.session.framer().buffer().as_ptr() as usize;
            let Some(item) = self.session.poll() else {
                if self.session.state() != State::Closed {
                    return None;
                }
                self.drained = true;
                return Some(Done::Closed(*self.closed.get_or_insert(CloseReason::Eof)));
            };
            let span = |s: &str| {
                let start = (s.as_ptr() as usize).wrapping_sub(base);
                (start, start + s.len())
            };
            match item {
                Received::Greeting(g) => {
                    let (server, oob) = (ServerInfo::from_greeting(&g), g.capabilities.oob());
                    self.greeted(server, oob, self.config.negotiate);
                }
                Received::Reply(reply) => {
                    let id = reply.id;
                    let mut unwritten = false;
                    self.held = match reply.outcome {
                        Outcome::Return(v) => Held::Return(id, span(v.as_json())),
                        Outcome::Error(e) => {
                            Held::Error(id, span(e.class.as_escaped()), span(e.desc.as_escaped()))
                        }
                        Outcome::Failed(f) => {
                            unwritten = self.outbox.unqueue(id);
                            Held::Failed(id, f)
                        }
                    };
                    let oob = self.session.oob_enabled();
                    if let Some(server) = self.peer.server_mut() {
                        server.oob_enabled = oob;
                    }
                    self.agent_outcome(id, unwritten);
                    return Some(Done::Completed(id));
                }
                Received::Event(event) => {
                    self.events.push(&event);
                    return Some(Done::Event);
                }
                // The agent's reply to the sync it waits for; any other unmatched reply
                // (a stale sync's included) is dropped below.
                Received::Notice(notice) if agent::awaits_sync_reply(&self.peer, &notice) => {
                    self.agent_synced();
                }
                Received::Notice(notice) => match notice {
                    Notice::SecondGreeting(g) => {
                        let (server, oob) = (ServerInfo::from_greeting(&g), g.capabilities.oob());
                        self.restarted(server, oob);
                    }
                    Notice::Discarded(_) => self.discarded += 1,
                    Notice::Framing(FrameError::TooLarge {
                        id: None,
                        reply: false,
                        ..
                    }) => {
                        // Replies are tied to their command; what is left is an event that
                        // did not fit the receive buffer.
                        self.events.lose(1);
                        return Some(Done::Event);
                    }
                    Notice::UnmatchedReply(_) | Notice::UntaggedError(_) => {
                        self.dropped += 1;
                        self.held = Held::Message(self.session.framer().last_range());
                        return Some(Done::Untracked);
                    }
                    _ => self.dropped += 1,
                },
            }
        }
    }

    /// Takes the outcome of command `id`, just reported by [`Done::Completed`]; `None` if it
    /// is not the one held (or was already taken). Borrowed from the receive buffer.
    pub fn outcome(&mut self, id: CommandId) -> Option<Outcome<'_>> {
        self.outcome_with_scratch(id).map(|(outcome, _)| outcome)
    }

    /// Like [`outcome`](Self::outcome), with the transmit buffer's free room alongside, as
    /// scratch space while the outcome is borrowed (e.g. to unescape the strings of a
    /// `return` value with [`RawJson::deserialize_unescaped`]). It is all of the transmit
    /// buffer when nothing waits to be written.
    pub fn outcome_with_scratch(&mut self, id: CommandId) -> Option<(Outcome<'_>, &mut [u8])> {
        let held = self.held;
        if self.holds(id) {
            // Taken: the bytes stay in place until the next read.
            self.held = Held::None;
        }
        let buf = self.session.framer().buffer();
        let text = |(start, end): (usize, usize)| {
            buf.get(start..end)
                .and_then(|b| core::str::from_utf8(b).ok())
        };
        let outcome = match held {
            Held::Return(h, span) if h == id => {
                Outcome::Return(RawJson::new_unchecked(text(span)?))
            }
            Held::Error(h, class, desc) if h == id => Outcome::Error(QmpError {
                class: JsonStr::from_escaped(text(class)?),
                desc: JsonStr::from_escaped(text(desc)?),
            }),
            Held::Failed(h, failure) if h == id => Outcome::Failed(failure),
            Held::Silent(h) if h == id => Outcome::Return(RawJson::new_unchecked("{}")),
            _ => return None,
        };
        let scratch = self.outbox.scratch();
        Some((outcome, scratch))
    }

    /// The message just reported by [`Done::Untracked`]: a reply whose id matches no
    /// command, or an error without an id.
    pub fn untracked(&self) -> Option<Message<'_>> {
        let Held::Message((start, end)) = self.held else {
            return None;
        };
        Message::parse(self.session.framer().buffer().get(start..end)?).ok()
    }

    /// The oldest queued event (called `name`, if given), or the gap after the queued ones.
    pub fn take_event(
        &mut self,
        name: Option<&str>,
    ) -> Option<Result<Q::Item<'_>, crate::events::Lagged>> {
        self.events.take(name)
    }

    /// Bytes to write next, if any; follow with [`handle_written`](Self::handle_written).
    #[must_use]
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        let (start, end, _) = self.transmit_range()?;
        Some(self.outbox.bytes(start, end))
    }

    fn transmit_range(&self) -> Option<(usize, usize, bool)> {
        if self.write_closed || self.closed.is_some() {
            return None;
        }
        self.outbox.transmit_range()
    }

    /// `n` bytes of [`poll_transmit`](Self::poll_transmit) were written at `now`.
    pub fn handle_written(&mut self, n: usize, now: Instant) {
        self.outbox.written(n);
        if n > 0 {
            self.last_activity = now;
        }
    }

    /// Writing failed. [`LinkError::Transient`]: deadlines are checked, and the write is
    /// tried again. [`LinkError::Closed`]: the peer went away; commands not (wholly)
    /// written fail, no more are sent, and reading goes on to the end of the stream.
    /// [`LinkError::Fatal`]: the connection is given up.
    pub fn handle_write_error(&mut self, error: LinkError, now: Instant) {
        match error {
            LinkError::Transient => self.handle_timeout(now),
            LinkError::Closed => {
                self.write_closed = true;
                self.drop_queued();
            }
            LinkError::Fatal => {
                self.drop_queued();
                self.end(CloseReason::Io);
            }
        }
    }

    /// Room to read into (it grows first, if the buffer can and one message fills it);
    /// follow with [`handle_read`](Self::handle_read).
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.held = Held::None;
        // An empty (released) buffer grows back to whatever its owner starts with.
        let _ = self.session.framer_mut().grow();
        self.session.read_buf()
    }

    /// Lets the receive and transmit buffers give their memory back ([`Buffer::release`])
    /// where they hold nothing the driver still needs: no byte of an unfinished message and
    /// no outcome left to take for the one, no unwritten byte for the other. For an adapter
    /// that waits for the link to be readable before it asks for [`read_buf`](Self::read_buf)
    /// (an async client), so that a fleet of idle connections holds no buffers; the driver
    /// takes them back (growing them from empty) the next time it reads or encodes.
    pub fn release_buffers(&mut self) {
        let framer = self.session.framer_mut();
        if matches!(self.held, Held::None) && framer.capacity() > 0 && framer.rewind_if_idle() {
            framer.buffer_mut().release();
        }
        self.outbox.release_if_empty();
    }

    /// `n` bytes of [`read_buf`](Self::read_buf) were read at `now` (`0`: the end of the
    /// stream, unless [`DriverConfig::zero_read_is_eof`] is off).
    pub fn handle_read(&mut self, n: usize, now: Instant) {
        if n > 0 {
            self.agent_read(n);
            self.session.commit(n);
            self.last_activity = now;
        } else if self.config.zero_read_is_eof {
            self.session.handle_eof();
        }
        self.handle_timeout(now);
    }

    /// Copies in as many of `bytes` as fit and returns how many (for a client that reads
    /// into buffers of its own); handle what they complete with [`poll`](Self::poll)
    /// before feeding the rest.
    #[must_use]
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> usize {
        let room = self.read_buf();
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        // Unlike a read, taking nothing (no bytes, or no room yet) is not the end of the
        // stream.
        if n > 0 {
            self.handle_read(n, now);
        }
        n
    }

    /// The end of the stream (for a client that reads elsewhere): as a read of 0 bytes.
    pub fn handle_eof(&mut self) {
        self.session.handle_eof();
    }

    /// Reading failed; see [`handle_write_error`](Self::handle_write_error) for the kinds.
    pub fn handle_read_error(&mut self, error: LinkError, now: Instant) {
        match error {
            LinkError::Transient => self.handle_timeout(now),
            LinkError::Closed => self.session.handle_eof(),
            LinkError::Fatal => self.end(CloseReason::Io),
        }
    }

    /// The time is `now`: deadlines that passed take effect (commands fail with
    /// [`Failure::TimedOut`], a stalled peer ends the connection).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
        self.agent_timeout(now);
        if self.stall_deadline().is_some_and(|d| d <= now) {
            self.end(CloseReason::Stalled);
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has something to
    /// do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let handshake = (!self.is_ready())
            .then_some(self.handshake_deadline)
            .flatten();
        min_instant(
            min_instant(self.session.poll_timeout(), self.stall_deadline()),
            handshake,
        )
    }

    // ---- internals ---------------------------------------------------------------------

    fn stall_deadline(&self) -> Option<Instant> {
        let stall = self.config.stall_timeout?;
        (self.session.in_flight() > 0 && self.closed.is_none()).then(|| self.last_activity + stall)
    }

    fn deadline(&self, deadline: Deadline, now: Instant) -> Option<Instant> {
        match deadline {
            Deadline::Default => self.config.command_timeout.map(|t| now + t),
            Deadline::Never => None,
            Deadline::After(t) => Some(now + t),
            Deadline::At(at) => Some(at),
        }
    }

    fn end(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
        self.session.handle_eof();
    }

    /// Drops the unwritten bytes of every queued command: they fail with
    /// [`Failure::Disconnected`] at the next poll.
    fn drop_queued(&mut self) {
        let (session, unsent) = (&mut self.session, &mut self.unsent);
        self.outbox.drop_all(|id| {
            if session.forget(id) {
                let _ = unsent.push_back(id);
            }
        });
    }

    fn encode(
        &mut self,
        attach: bool,
        mut encode: impl FnMut(&mut Session<R, N>, &mut [u8]) -> Result<crate::Sent, SendError>,
    ) -> Result<CommandId, SendError> {
        if self.write_closed || self.closed.is_some() {
            return Err(SendError::Closed);
        }
        let session = &mut self.session;
        self.outbox.push_command(attach, |out| encode(session, out))
    }
}
