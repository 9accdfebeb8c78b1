//! The session: greeting → negotiation → command mode, ids, the in-flight table, deadlines.

use core::fmt;

use serde::Serialize;

use crate::encode::{EncodeError, Envelope, QEMU_MAX_TOKENS, encode_command_tagged_past};
use crate::framing::{FrameError, Framer};
use crate::message::{Greeting, Message, MessageError, QmpError, find_reply};
use crate::skim::Broken;
use crate::time::Instant;
use crate::{Event, RawJson};

mod oob;
mod table;

use table::{Kind, Pending, PendingStatus, Table};

/// QEMU's in-band request queue length (`QMP_REQ_QUEUE_LEN_MAX`): with more in flight, it
/// stops reading.
pub const QEMU_QUEUE_LEN: usize = 8;

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum State {
    /// Waiting for the server's greeting.
    AwaitingGreeting,
    /// Greeted; capabilities not negotiated yet (only `qmp_capabilities` may be sent).
    Negotiating,
    /// Command mode.
    Ready,
    /// The stream ended.
    Closed,
}

/// The id the session gave a command; replies are matched to commands by it. Only the
/// session makes them; [`CommandId::get`] reads the number that went on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommandId(u64);

impl CommandId {
    /// The id as sent on the wire (`"id": 17`).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A command written into the caller's buffer: send `out[..len]` to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sent {
    /// The command's id; its reply or failure will carry it.
    pub id: CommandId,
    /// Bytes written at the start of the output buffer.
    pub len: usize,
}

/// Why a command was not sent (local misuse or limits; nothing was written or recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SendError {
    /// The greeting has not arrived yet.
    AwaitingGreeting,
    /// Capabilities are not negotiated yet; only `qmp_capabilities` may be sent.
    NotNegotiated,
    /// [`Session::negotiate`] was called after negotiation started or completed.
    AlreadyNegotiated,
    /// `oob` was requested but the server's greeting did not offer it.
    OobNotOffered,
    /// `exec-oob` needs the `oob` capability negotiated first.
    OobNotEnabled,
    /// Every slot of the in-flight table is taken.
    TableFull,
    /// The in-band limit (by default QEMU's queue of 8) is reached.
    QueueFull,
    /// The stream has ended.
    Closed,
    /// The transmit buffer holds bytes that must be written first (a [`Driver`]'s buffer
    /// cannot grow, or an attachment must go out on its own).
    ///
    /// [`Driver`]: crate::Driver
    Busy,
    /// The command could not be encoded.
    Encode(EncodeError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AwaitingGreeting => f.write_str("the server's greeting has not arrived yet"),
            Self::NotNegotiated => f.write_str("capabilities are not negotiated yet"),
            Self::AlreadyNegotiated => f.write_str("capabilities negotiation already started"),
            Self::OobNotOffered => f.write_str("the server does not offer the oob capability"),
            Self::OobNotEnabled => f.write_str("exec-oob needs the oob capability negotiated"),
            Self::TableFull => f.write_str("too many commands in flight (table full)"),
            Self::QueueFull => f.write_str("too many in-band commands in flight"),
            Self::Closed => f.write_str("the connection is closed"),
            Self::Busy => f.write_str("bytes queued before it must be written first"),
            Self::Encode(e) => write!(f, "cannot encode the command: {e}"),
        }
    }
}

impl core::error::Error for SendError {}

impl From<EncodeError> for SendError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    max_in_band: usize,
    max_depth: u32,
    enforce_negotiation: bool,
    untagged_when_alone: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_in_band: QEMU_QUEUE_LEN,
            max_depth: crate::framing::DEFAULT_MAX_DEPTH,
            enforce_negotiation: true,
            untagged_when_alone: false,
        }
    }
}

impl Config {
    /// At most `n` in-band (`execute`) commands in flight; default [`QEMU_QUEUE_LEN`].
    pub fn max_in_band(mut self, n: usize) -> Self {
        self.max_in_band = n.max(1);
        self
    }

    /// The framer's nesting limit; see [`Framer::with_max_depth`].
    pub fn max_depth(mut self, depth: u32) -> Self {
        self.max_depth = depth;
        self
    }

    /// Whether to refuse commands before negotiation and `exec-oob` before `oob` is enabled
    /// (default `true`). Turn it off only to test a server's own checks, as
    /// `qmp-shell -N` does.
    pub fn enforce_negotiation(mut self, on: bool) -> Self {
        self.enforce_negotiation = on;
        self
    }

    /// Whether to send an `execute` without an `id` when no other in-band command is in
    /// flight (default `false`: every command carries its id).
    ///
    /// QEMU answers in-band commands one at a time, in order, so a reply (or a too-large or
    /// malformed one) without an id can only be that command's: the session matches it as
    /// it would by id, and [`Sent::id`] still names the command. This saves `,"id":N` on the
    /// wire, 7 to 12 bytes that QEMU reads one byte per main-loop pass: about a quarter of
    /// its work for a short command such as `query-status`, so sequential round trips run
    /// that much faster. Commands sent while another in-band one is in flight (pipelining),
    /// `exec-oob` and `qmp_capabilities` keep their ids. Once a command sent without an id
    /// times out or is [abandoned](Session::abandon), its reply may still come and could be
    /// taken for a later one's, so from then on every command carries its id.
    ///
    /// Only a command QEMU's parser accepts whole gets exactly one reply: the encoder refuses
    /// commands nested deeper than [`QEMU_MAX_NESTING`](crate::QEMU_MAX_NESTING) or longer
    /// than [`QEMU_MAX_MESSAGE`](crate::QEMU_MAX_MESSAGE), and a command longer than
    /// [`QEMU_MAX_TOKENS`](crate::QEMU_MAX_TOKENS) bytes, which might hold too many tokens,
    /// keeps its id.
    pub fn untagged_when_alone(mut self, on: bool) -> Self {
        self.untagged_when_alone = on;
        self
    }
}

/// One item the session yields from [`Session::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Received<'a> {
    /// The server's greeting (the first one; the state is now [`State::Negotiating`]).
    Greeting(Greeting<'a>),
    /// The outcome of a command sent through this session.
    Reply(Reply<'a>),
    /// An asynchronous event, in arrival order.
    Event(Event<'a>),
    /// Something the protocol says to drop or that went wrong without a command to blame;
    /// the session carries on.
    Notice(Notice<'a>),
}

/// The outcome of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reply<'a> {
    /// The command's id.
    pub id: CommandId,
    /// What happened.
    pub outcome: Outcome<'a>,
}

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Outcome<'a> {
    /// The server returned this value.
    Return(RawJson<'a>),
    /// The server answered with an error.
    Error(QmpError<'a>),
    /// No usable answer came; see [`Failure`].
    Failed(Failure),
}

/// Why a command has no usable answer.
///
/// # Which command a broken reply fails
/// A reply that cannot be used fails its command at once rather than leaving it to wait out
/// its deadline, as long as the session can tell which command it answers:
/// - one that can be framed but is not valid QMP ([`Failure::Malformed`]), or is larger than
///   the buffer ([`Failure::TooLarge`]): by its top-level `id`, read even past what the
///   grammar walk reaches;
/// - one that cannot be framed ([`Failure::Unframed`]: nesting past the limit, a raw control
///   character in a string, a mismatched bracket, or cut short by a new object at the start
///   of a line): by its top-level `id` if the whole `id` member was read before the bytes
///   went wrong.
///
/// Without an id, such a message fails the one command sent without an id
/// ([`Config::untagged_when_alone`]), if there is one in flight, but only when it reads as
/// a reply: a top-level `return` or `error` key was seen (before the break, for one that
/// cannot be framed) and no `event` key, and it was not merely cut off by the end of its
/// line (a line end inside a string, or the next line opening an object: QEMU ends every
/// message it sends, so that is noise on the line, and the real reply may still come).
/// Anything else (an event, or a message broken before any telling key) is a [`Notice`],
/// and the commands in flight keep waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Failure {
    /// Its reply was larger than the buffer (it was skimmed and dropped).
    TooLarge {
        /// The reply's size in bytes.
        size: u64,
    },
    /// Its reply was not a valid QMP message.
    Malformed(MessageError),
    /// Its reply could not be framed (see [`FrameError`]); the framer resynchronised after it.
    Unframed(FrameError),
    /// Its deadline passed first (a reply arriving later is a [`Notice::UnmatchedReply`]).
    TimedOut,
    /// The stream ended first.
    Disconnected,
    /// The server restarted first (a new greeting on the link: QEMU restarted at the far end
    /// of a serial line); the new server never saw the command, or cannot answer it.
    ServerRestarted,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { size } => write!(f, "reply of {size} bytes is larger than the buffer"),
            Self::Malformed(e) => write!(f, "malformed reply: {e}"),
            Self::Unframed(e) => write!(f, "reply could not be framed: {e}"),
            Self::TimedOut => f.write_str("timed out"),
            Self::Disconnected => f.write_str("disconnected before the reply"),
            Self::ServerRestarted => f.write_str("the server restarted before the reply"),
        }
    }
}

/// Non-fatal protocol notices: the session keeps going after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Notice<'a> {
    /// A reply whose id matches no command in flight (the spec says to drop it), e.g. one
    /// that arrived after its command timed out, or a reply without an id when no command
    /// went without one.
    UnmatchedReply(Message<'a>),
    /// An error reply without an id when no command went without one: QEMU's answer to input
    /// it could not parse.
    UntaggedError(QmpError<'a>),
    /// A greeting after the first one: the server restarted (QEMU at the far end of a serial
    /// line). The session starts over: every command in flight fails with
    /// [`Failure::ServerRestarted`], the state is [`State::Negotiating`] again, and what the
    /// greeting offers replaces what the first one did.
    SecondGreeting(Greeting<'a>),
    /// The reply to a command abandoned with [`Session::abandon`], dropped as asked.
    Discarded(CommandId),
    /// A frame that is not a valid QMP message, with no command to tie it to.
    Malformed {
        /// Stream offset of the frame.
        offset: u64,
        /// What is wrong with it (offsets relative to the frame).
        error: MessageError,
    },
    /// Bytes that could not be framed, with no command to tie them to.
    Framing(FrameError),
}

/// Protocol state, kept apart from the framer so a frame can be borrowed while it changes.
#[derive(Debug)]
struct Protocol<const N: usize> {
    state: State,
    config: Config,
    next_id: u64,
    /// The commands in flight.
    table: Table<N>,
    oob_offered: bool,
    oob_enabled: bool,
    version: Option<(u64, u64, u64)>,
    eof: bool,
    eof_notice: Option<FrameError>,
    /// Whether a command may still go without its id: no untagged command has timed out or
    /// been abandoned (its reply could be taken for a later one's).
    may_untag: bool,
}

/// A QMP client session over caller storage: a [`Framer`] plus the protocol state machine.
///
/// `B` is the receive buffer (it bounds the largest message; see [`Framer`]) and `N` the
/// capacity of the in-flight table. Nothing inside does I/O, reads a clock or allocates.
///
/// # Method families (the quinn-proto / h11 shape)
/// - **Getters**: [`state`](Self::state), [`server_version`](Self::server_version),
///   [`oob_offered`](Self::oob_offered), [`oob_enabled`](Self::oob_enabled),
///   [`in_flight`](Self::in_flight).
/// - **Input**: bytes via [`feed`](Self::feed) or [`read_buf`](Self::read_buf) +
///   [`commit`](Self::commit); the end of the stream via [`handle_eof`](Self::handle_eof);
///   the time via [`handle_timeout`](Self::handle_timeout).
/// - **Commands**: [`negotiate`](Self::negotiate), [`execute`](Self::execute),
///   [`execute_oob`](Self::execute_oob) encode into the caller's buffer and return the id;
///   [`abandon`](Self::abandon) gives up on one.
/// - **Output**: [`poll`](Self::poll) yields greetings, replies, events and notices in
///   arrival order; [`poll_timeout`](Self::poll_timeout) says when to call
///   `handle_timeout` next.
///
/// Call order: after putting bytes in, call `poll` until it returns `None`, then read more.
/// Each item borrows the receive buffer, so handle (or copy) it before the next call. Events
/// are never dropped: unread ones simply wait in the buffer, in order.
///
/// See the crate documentation for a whole session.
#[derive(Debug)]
pub struct Session<B, const N: usize = QEMU_QUEUE_LEN> {
    framer: Framer<B>,
    proto: Protocol<N>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const N: usize> Session<B, N> {
    /// A session reading into `buf`, with the default [`Config`].
    pub fn new(buf: B) -> Self {
        Self::with_config(buf, Config::default())
    }

    /// A session reading into `buf`, with `config`.
    pub fn with_config(buf: B, config: Config) -> Self {
        Self {
            framer: Framer::new(buf).with_max_depth(config.max_depth),
            proto: Protocol {
                state: State::AwaitingGreeting,
                config,
                next_id: 1,
                table: Table::new(),
                oob_offered: false,
                oob_enabled: false,
                version: None,
                eof: false,
                eof_notice: None,
                may_untag: config.untagged_when_alone,
            },
        }
    }

    /// Where the session is.
    pub fn state(&self) -> State {
        self.proto.state
    }

    /// The server's `(major, minor, micro)` version, once greeted.
    pub fn server_version(&self) -> Option<(u64, u64, u64)> {
        self.proto.version
    }

    /// Whether the greeting offered out-of-band execution.
    pub fn oob_offered(&self) -> bool {
        self.proto.oob_offered
    }

    /// Whether out-of-band execution was negotiated.
    pub fn oob_enabled(&self) -> bool {
        self.proto.oob_enabled
    }

    /// Commands sent and not yet answered (including abandoned ones still owed a reply).
    pub fn in_flight(&self) -> usize {
        self.proto.table.len()
    }

    /// Whether one more command could be sent now: a free slot in the table and, in band,
    /// room under the in-band limit.
    pub fn has_room(&self, oob: bool) -> bool {
        self.proto.table.free_slot().is_ok()
            && (oob || self.proto.table.in_band() < self.proto.config.max_in_band)
    }

    /// Whether `id` is still waiting for its outcome.
    pub fn is_pending(&self, id: CommandId) -> bool {
        self.proto.table.is_waiting_for(id.0)
    }

    /// Numbers the next command `id` (later ones count up from it), before any was sent:
    /// the guest agent dialect starts from a random one.
    #[cfg_attr(not(feature = "agent"), allow(dead_code))]
    pub(crate) fn set_next_id(&mut self, id: u64) {
        self.proto.next_id = id;
    }

    /// The framer, e.g. to check [`Framer::is_full`].
    pub fn framer(&self) -> &Framer<B> {
        &self.framer
    }

    /// The framer, mutably (for the driver, which grows its buffer).
    pub(crate) fn framer_mut(&mut self) -> &mut Framer<B> {
        &mut self.framer
    }

    /// Free room to read bytes into; follow with [`commit`](Self::commit).
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.framer.read_buf()
    }

    /// Marks `n` bytes of [`read_buf`](Self::read_buf) as received.
    pub fn commit(&mut self, n: usize) {
        self.framer.commit(n);
    }

    /// Copies in as many bytes as fit and returns how many (see [`Framer::feed`]).
    #[must_use = "the bytes not taken must be fed again"]
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        self.framer.feed(bytes)
    }

    /// The stream ended (the peer closed it, or the caller gave up on it). Once buffered
    /// messages are polled, every command still in flight fails with
    /// [`Failure::Disconnected`], and an unfinished message is reported as
    /// [`FrameError::Truncated`].
    pub fn handle_eof(&mut self) {
        self.proto.eof = true;
    }

    /// The time is now `now`: commands whose deadline has passed fail with
    /// [`Failure::TimedOut`] (yielded by [`poll`](Self::poll) after buffered messages, so a
    /// reply already received still wins).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.proto.table.expire(now);
    }

    /// The earliest deadline of a command still waiting, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.proto.table.next_deadline()
    }

    /// Encodes `qmp_capabilities` (with `{"enable": ["oob"]}` when `oob`) into `out`.
    pub fn negotiate(
        &mut self,
        oob: bool,
        deadline: Option<Instant>,
        out: &mut [u8],
    ) -> Result<Sent, SendError> {
        match self.proto.state {
            State::AwaitingGreeting => return Err(SendError::AwaitingGreeting),
            State::Closed => return Err(SendError::Closed),
            State::Ready => return Err(SendError::AlreadyNegotiated),
            State::Negotiating => {}
        }
        if self.proto.table.negotiating() {
            return Err(SendError::AlreadyNegotiated);
        }
        if oob && !self.proto.oob_offered {
            return Err(SendError::OobNotOffered);
        }
        let slot = self.proto.table.free_slot()?;
        let id = self.proto.next_id;
        let len = crate::encode::encode_capabilities(out, oob, Some(id))?;
        Ok(self
            .proto
            .record(slot, Kind::Negotiate { oob }, deadline, len, true))
    }

    /// Encodes `{"execute": name, "arguments": arguments, "id": …}` into `out`.
    ///
    /// `arguments` must serialize to an object, or be `&()` for none. Sending
    /// `qmp_capabilities` this way counts as negotiating.
    pub fn execute<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
        deadline: Option<Instant>,
        out: &mut [u8],
    ) -> Result<Sent, SendError> {
        self.send(Envelope::Execute, name, arguments, deadline, out)
    }

    /// Encodes `{"exec-oob": name, …}` into `out`: run out of band, its reply may overtake
    /// in-band ones. Needs `oob` negotiated.
    pub fn execute_oob<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
        deadline: Option<Instant>,
        out: &mut [u8],
    ) -> Result<Sent, SendError> {
        self.send(Envelope::ExecOob, name, arguments, deadline, out)
    }

    fn send<A: Serialize + ?Sized>(
        &mut self,
        envelope: Envelope,
        name: &str,
        arguments: &A,
        deadline: Option<Instant>,
        out: &mut [u8],
    ) -> Result<Sent, SendError> {
        let strict = self.proto.config.enforce_negotiation;
        let negotiating = name == "qmp_capabilities" && envelope == Envelope::Execute;
        match self.proto.state {
            State::Closed => return Err(SendError::Closed),
            State::AwaitingGreeting if strict => return Err(SendError::AwaitingGreeting),
            State::Negotiating if strict && !negotiating => return Err(SendError::NotNegotiated),
            _ => {}
        }
        if strict && envelope == Envelope::ExecOob && !self.proto.oob_enabled {
            return Err(SendError::OobNotEnabled);
        }
        let slot = self.proto.table.free_slot()?;
        let in_band = self.proto.table.in_band();
        if envelope == Envelope::Execute && in_band >= self.proto.config.max_in_band {
            return Err(SendError::QueueFull);
        }
        let id = self.proto.next_id;
        let untag =
            self.proto.may_untag && envelope == Envelope::Execute && !negotiating && in_band == 0;
        // Past QEMU's token limit it answers with id-less parse errors, perhaps several,
        // which must not be taken for this command's or the next one's reply: such a long
        // command keeps its id.
        let untagged_up_to = if untag { QEMU_MAX_TOKENS } else { 0 };
        let (len, tagged) =
            encode_command_tagged_past(out, envelope, name, arguments, Some(id), untagged_up_to)?;
        let kind = match envelope {
            Envelope::ExecOob => Kind::OutOfBand,
            Envelope::Execute if negotiating => Kind::Negotiate {
                oob: oob::enables_oob(&out[..len]),
            },
            Envelope::Execute => Kind::InBand,
        };
        Ok(self.proto.record(slot, kind, deadline, len, tagged))
    }

    /// Gives up on a command: it no longer times out or fails, and its reply, when it comes,
    /// is dropped as [`Notice::Discarded`]. Its slot stays taken until then, since the server
    /// still holds the command in its queue; once the session is [`State::Closed`] no reply
    /// can come, so the slot is freed at once. Returns whether `id` was pending.
    pub fn abandon(&mut self, id: CommandId) -> bool {
        let closed = self.proto.state == State::Closed;
        let Some(index) = self.proto.table.position(id.0) else {
            return false;
        };
        let Some(p) = self.proto.table.slot_mut(index) else {
            return false;
        };
        if p.status == PendingStatus::Abandoned {
            return false;
        }
        // No reply can come once the session is closed, or the server restarted.
        if closed || p.status == PendingStatus::Restarted {
            self.proto.table.free(index);
        } else {
            p.status = PendingStatus::Abandoned;
            self.proto.may_untag &= p.tagged;
        }
        true
    }

    /// Forgets a command that never reached the server (for example, writing it failed
    /// before any byte went out): its slot is freed at once and nothing more is yielded for
    /// it. A reply that does arrive for it later is a [`Notice::UnmatchedReply`]. Use
    /// [`abandon`](Self::abandon) instead for a command the server may have received.
    /// Returns whether `id` was in the table.
    pub fn forget(&mut self, id: CommandId) -> bool {
        match self.proto.table.position(id.0) {
            Some(index) => {
                self.proto.table.free(index);
                true
            }
            None => false,
        }
    }

    /// The next greeting, reply, event or notice, or `None` when more bytes (or time) are
    /// needed.
    #[must_use]
    pub fn poll(&mut self) -> Option<Received<'_>> {
        match self.framer.next_frame_range() {
            Some(Ok(range)) => {
                let frame = self.framer.frame_at(range);
                return Some(self.proto.on_frame(frame));
            }
            Some(Err(error)) => {
                let broken = self.framer.broken();
                return Some(self.proto.on_frame_error(error, broken));
            }
            None => {}
        }
        if self.proto.eof && self.proto.state != State::Closed {
            self.proto.eof_notice = self.framer.finish();
            self.proto.close();
        }
        self.proto.next_failure()
    }
}

impl<const N: usize> Protocol<N> {
    fn record(
        &mut self,
        slot: usize,
        kind: Kind,
        deadline: Option<Instant>,
        len: usize,
        tagged: bool,
    ) -> Sent {
        let id = self.next_id;
        self.next_id += 1;
        self.table.insert(
            slot,
            Pending {
                id,
                kind,
                deadline,
                status: PendingStatus::Waiting,
                tagged,
            },
        );
        Sent {
            id: CommandId(id),
            len,
        }
    }

    fn reply<'a>(&mut self, pending: Pending, outcome: Outcome<'a>) -> Received<'a> {
        let id = CommandId(pending.id);
        if let (Kind::Negotiate { oob }, Outcome::Return(_)) = (pending.kind, outcome) {
            if self.state == State::Negotiating || self.state == State::AwaitingGreeting {
                self.state = State::Ready;
            }
            self.oob_enabled |= oob;
        }
        if let Outcome::Failed(Failure::Malformed(_) | Failure::Unframed(_)) = outcome {
            // A broken message without an id taken for this command's reply may have been
            // noise: the real reply may still come, without an id, and must not be taken
            // for a later command's.
            self.may_untag &= pending.tagged;
        }
        if pending.status == PendingStatus::Abandoned {
            return Received::Notice(Notice::Discarded(id));
        }
        Received::Reply(Reply { id, outcome })
    }

    fn on_frame<'a>(&mut self, frame: crate::Frame<'a>) -> Received<'a> {
        let (bytes, offset) = (frame.as_bytes(), frame.offset());
        let message = match frame.message() {
            Ok(message) => message,
            Err(error) => {
                let pending = match find_reply(bytes) {
                    (Some(id), _) => self.table.take(Some(id)),
                    (None, reply) => match crate::skim::skim_id(bytes) {
                        // An id that the grammar walk did not reach (say, after invalid
                        // UTF-8), read byte by byte.
                        (Some(id), _) => self.table.take_u64(id.as_u64()),
                        (None, skimmed) if reply || skimmed => self.table.take_untagged(),
                        (None, _) => None,
                    },
                };
                return match pending {
                    Some(p) => self.reply(p, Outcome::Failed(Failure::Malformed(error))),
                    None => Received::Notice(Notice::Malformed { offset, error }),
                };
            }
        };
        match message {
            Message::Greeting(greeting) => {
                if self.state != State::AwaitingGreeting {
                    if self.state != State::Closed {
                        self.restart();
                        self.greeted(&greeting);
                    }
                    return Received::Notice(Notice::SecondGreeting(greeting));
                }
                self.greeted(&greeting);
                Received::Greeting(greeting)
            }
            Message::Event(event) => Received::Event(event),
            Message::Return(ret) => {
                let pending = match ret.id {
                    Some(_) => self.table.take(ret.id),
                    None => self.table.take_untagged(),
                };
                match pending {
                    Some(p) => self.reply(p, Outcome::Return(ret.value)),
                    None => Received::Notice(Notice::UnmatchedReply(message)),
                }
            }
            Message::Error(err) => {
                let pending = match err.id {
                    Some(_) => self.table.take(err.id),
                    None => self.table.take_untagged(),
                };
                match (err.id, pending) {
                    (_, Some(p)) => self.reply(p, Outcome::Error(err.error)),
                    (None, None) => Received::Notice(Notice::UntaggedError(err.error)),
                    (Some(_), None) => Received::Notice(Notice::UnmatchedReply(message)),
                }
            }
        }
    }

    /// A framing error: the command it answers fails, if there is one (see [`Failure`]).
    fn on_frame_error<'a>(&mut self, error: FrameError, broken: Option<Broken>) -> Received<'a> {
        let (failure, Broken { id, reply }) = match (error, broken) {
            (
                FrameError::TooLarge {
                    size, id, reply, ..
                },
                _,
            ) => (Failure::TooLarge { size }, Broken { id, reply }),
            (_, Some(broken)) => (Failure::Unframed(error), broken),
            (_, None) => return Received::Notice(Notice::Framing(error)),
        };
        // A message whose line ended inside it (a line end in a string, or the next line
        // opening a new object) was cut off: QEMU ends every message, so that is noise on the
        // line, and the real reply may still come. Only an id read whole blames it on a
        // command.
        let cut_off = matches!(
            error,
            FrameError::Truncated { .. }
                | FrameError::ControlCharInString {
                    byte: b'\r' | b'\n',
                    ..
                }
        );
        let pending = match id {
            Some(id) => self.table.take_u64(id.as_u64()),
            None if reply && !cut_off => self.table.take_untagged(),
            None => None,
        };
        match pending {
            Some(p) => self.reply(p, Outcome::Failed(failure)),
            None => Received::Notice(Notice::Framing(error)),
        }
    }

    /// A greeting came: negotiation is next.
    fn greeted(&mut self, greeting: &Greeting<'_>) {
        self.state = State::Negotiating;
        self.oob_offered = greeting.capabilities.oob();
        let v = greeting.version;
        self.version = Some((v.major, v.minor, v.micro));
    }

    /// The server restarted: what was negotiated is gone, and the commands in flight fail.
    fn restart(&mut self) {
        self.oob_enabled = false;
        self.may_untag = self.config.untagged_when_alone;
        self.table.restart();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.table.disconnect();
    }

    /// Yields the notice of a truncated last message, then commands that timed out or lost
    /// their connection.
    fn next_failure<'a>(&mut self) -> Option<Received<'a>> {
        if let Some(error) = self.eof_notice.take() {
            return Some(Received::Notice(Notice::Framing(error)));
        }
        let p = self.table.take_failed()?;
        let failure = match p.status {
            PendingStatus::Expired => {
                // Its reply may still come, without an id if it went without one.
                self.may_untag &= p.tagged;
                Failure::TimedOut
            }
            PendingStatus::Restarted => Failure::ServerRestarted,
            _ => Failure::Disconnected,
        };
        Some(Received::Reply(Reply {
            id: CommandId(p.id),
            outcome: Outcome::Failed(failure),
        }))
    }
}
