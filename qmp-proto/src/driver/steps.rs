//! What a driver tells its adapter, and what the adapter tells it: the next step of the
//! loop, how a wait ended, what a failed read or write means, why a connection ended.

use core::fmt;

use crate::session::CommandId;
use crate::time::Instant;

/// Why the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CloseReason {
    /// The peer closed it (end of stream, or it went away while we wrote).
    Eof,
    /// The peer sent nothing for the stall timeout while commands waited.
    Stalled,
    /// The link failed ([`LinkError::Fatal`]); the adapter holds the error itself.
    Io,
    /// This side closed it ([`Driver::close`](crate::Driver::close)).
    Local,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eof => "the server closed the connection",
            Self::Stalled => "the server stopped sending (stall timeout)",
            Self::Io => "the link failed",
            Self::Local => "the connection was closed on this side",
        })
    }
}

/// Which wait ran out: what a client's timeout error says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Expired {
    /// Connecting (the socket's accept queue may be full: another client holds the
    /// monitor).
    Connect,
    /// The greeting, or negotiating capabilities.
    Greeting,
    /// A command's deadline (waiting for room to send it included).
    Command,
    /// Waiting for an event.
    Event,
    /// The guest agent's sync reply (the agent is not running, or is frozen).
    Sync,
}

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "timed out connecting (the monitor's accept queue may be full: another client may hold it)",
            Self::Greeting => "timed out waiting for the greeting (QEMU serves one client per monitor: another client may hold it)",
            Self::Command => "timed out waiting for the reply",
            Self::Event => "timed out waiting for the event",
            Self::Sync => "timed out waiting for the guest agent's sync reply (is the agent running?)",
        })
    }
}

/// What a failed read or write means, as the adapter classifies its link's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LinkError {
    /// Nothing happened yet (a read or write timed out, was interrupted, would block): the
    /// driver checks its deadlines and the adapter tries again.
    Transient,
    /// The peer is gone (broken pipe, reset, end of file).
    Closed,
    /// Anything else: the connection is given up.
    Fatal,
}

/// What a [`Driver::poll_io`](crate::Driver::poll_io) loop waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Wait<'a> {
    /// The end of the handshake: [`Done::Ready`].
    Handshake,
    /// The outcome of this command: [`Done::Completed`] with its id.
    Command(CommandId),
    /// An event (called this, if given) or a gap: [`Done::Event`]; take it with
    /// [`Driver::take_event`](crate::Driver::take_event).
    Event(Option<&'a str>),
    /// Room for one more command (in band, or out of band): [`Done::Room`].
    Room {
        /// Out of band.
        oob: bool,
    },
    /// The transmit buffer written out: [`Done::Flushed`].
    Flush,
    /// A reply that matches no command, or an id-less error (after
    /// [`Driver::send_message`](crate::Driver::send_message)): [`Done::Untracked`]; read it with [`Driver::untracked`](crate::Driver::untracked).
    Untracked,
    /// Nothing: write what is queued, handle what is buffered, then [`Done::Idle`] instead
    /// of reading (for a client that reads elsewhere).
    Idle,
}

/// How a wait ended (or something the adapter must see on the way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Done {
    /// The handshake is complete.
    Ready,
    /// A command finished (not necessarily the one waited for): take its outcome with
    /// [`Driver::outcome`](crate::Driver::outcome) before the next call that reads or polls.
    Completed(CommandId),
    /// An event (or a gap) is ready to take.
    Event,
    /// There is room for the command.
    Room,
    /// Everything queued was written.
    Flushed,
    /// A reply nobody waits for is held; see [`Driver::untracked`](crate::Driver::untracked).
    Untracked,
    /// The command waited for is not pending (never sent, or already taken).
    NotPending,
    /// Nothing more to do without reading (only for [`Wait::Idle`]).
    Idle,
    /// The wait's deadline passed (for [`Wait::Handshake`], the handshake deadline).
    TimedOut,
    /// The connection has ended, and everything it brought was handed out.
    Closed(CloseReason),
}

/// What the adapter does next; see [`Driver::poll_io`](crate::Driver::poll_io).
#[derive(Debug)]
pub enum Io<'a> {
    /// Write these bytes (as many as the link takes), then
    /// [`handle_written`](crate::Driver::handle_written) or
    /// [`handle_write_error`](crate::Driver::handle_write_error).
    Write {
        /// The bytes.
        bytes: &'a [u8],
        /// They start a command sent with [`SendOptions::attach`](crate::SendOptions::attach): send the attachment
        /// with the first byte.
        attach: bool,
    },
    /// Read into `buf`, blocking at most until `until` (`None`: as long as it takes), then
    /// [`handle_read`](crate::Driver::handle_read) or [`handle_read_error`](crate::Driver::handle_read_error)
    /// (a read that timed out is [`LinkError::Transient`]).
    Read {
        /// Where to read into (never empty).
        buf: &'a mut [u8],
        /// When to give up waiting and call again.
        until: Option<Instant>,
    },
    /// The wait is over.
    Done(Done),
}
