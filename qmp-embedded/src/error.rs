//! Errors: every fault of the link or of the peer, as a value.

use core::fmt;

pub use qmp_proto::ErrorClass;
use qmp_proto::{DeserializeError, Expired, FrameError, MessageError, QmpError, SendError};

/// Why a client call failed. `E` is the link's error type (`embedded_io::ErrorType::Error`).
///
/// Faults of the **link**: [`Io`](Self::Io), [`WriteZero`](Self::WriteZero), and its end:
/// [`Eof`](Self::Eof), then [`Disconnected`](Self::Disconnected). Faults of the **peer**
/// for one reply: [`Qmp`](Self::Qmp) (an error reply), [`Malformed`](Self::Malformed),
/// [`TooLarge`](Self::TooLarge), [`Unframed`](Self::Unframed). **Waits** that ran out:
/// [`Timeout`](Self::Timeout), saying which. **Local** limits and misuse:
/// [`Send`](Self::Send), [`Decode`](Self::Decode). And the event queue's gap:
/// [`Lagged`](Self::Lagged).
///
/// After any of them the client stays usable unless the link has ended: a command that
/// failed locally was never sent, and one that timed out or hit an I/O error is abandoned
/// (its late reply dropped, a fragment of it resynchronised).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error<E> {
    /// The link's `read`, `write` or `flush` failed with an error other than the
    /// `TimedOut`/`Interrupted` kinds (those only make the client check its deadlines).
    /// The session goes on.
    Io(E),
    /// The link ended (a read returned `Ok(0)`) before the answer arrived; a message cut
    /// short by it is dropped. The session is closed from now on.
    Eof,
    /// The session ended earlier (reported once as [`Eof`](Self::Eof)); nothing can be
    /// sent. Start a new client for a new connection.
    Disconnected,
    /// The link's `write` accepted no bytes (`Ok(0)`), which `embedded-io` forbids.
    WriteZero,
    /// The server answered with a QMP error.
    Qmp(ServerError),
    /// The answer was not a valid QMP message.
    Malformed(MessageError),
    /// The answer was larger than the receive buffer (`RX`); it was skimmed and dropped.
    TooLarge {
        /// Its size in bytes.
        size: u64,
    },
    /// The answer could not be framed (e.g. nested deeper than the framer allows).
    Unframed(FrameError),
    /// A wait ran out: [`Expired::Greeting`] for the handshake, [`Expired::Command`] for a
    /// reply (or room to send the command), [`Expired::Event`] for an event. A reply
    /// arriving later is dropped.
    Timeout(Expired),
    /// The command was not sent: negotiation not done, `exec-oob` without `oob`, or it does
    /// not fit the transmit buffer (`TX`).
    Send(SendError),
    /// The `return` value did not deserialize into the requested type (or an escaped string
    /// in it did not fit the transmit buffer used as scratch space).
    Decode(DeserializeError),
    /// Events were dropped here, in order: the event queue (`EV`) was full, or one did not
    /// fit it or the receive buffer. The events before were delivered; the next ones came
    /// after the gap.
    Lagged {
        /// How many events were dropped at this point.
        missed: u64,
    },
    /// The server restarted (it greeted again: QEMU restarted at the far end of the line)
    /// before the answer; the session started over and the handshake was done again (see
    /// `qmp_proto::Driver::restarts`).
    ServerRestarted,
}

impl<E> Error<E> {
    /// The server's error reply, if that is what this is.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Self::Qmp(e) => Some(e),
            _ => None,
        }
    }

    /// Whether a wait ran out ([`Error::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// Whether the link has ended ([`Error::Eof`], [`Error::Disconnected`]): every later
    /// call fails too.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Self::Eof | Self::Disconnected)
    }

    /// Whether the server answered with an error ([`Error::Qmp`]).
    pub fn is_qmp(&self) -> bool {
        matches!(self, Self::Qmp(_))
    }

    /// Whether the peer broke the protocol for this reply ([`Error::Malformed`],
    /// [`Error::TooLarge`], [`Error::Unframed`]); the session goes on.
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_) | Self::TooLarge { .. } | Self::Unframed(_)
        )
    }

    /// Converts the link error with `f`, keeping every other variant.
    pub fn map_io<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
        match self {
            Self::Io(e) => Error::Io(f(e)),
            Self::Eof => Error::Eof,
            Self::Disconnected => Error::Disconnected,
            Self::WriteZero => Error::WriteZero,
            Self::Qmp(e) => Error::Qmp(e),
            Self::Malformed(e) => Error::Malformed(e),
            Self::TooLarge { size } => Error::TooLarge { size },
            Self::Unframed(e) => Error::Unframed(e),
            Self::Timeout(which) => Error::Timeout(which),
            Self::Send(e) => Error::Send(e),
            Self::Decode(e) => Error::Decode(e),
            Self::Lagged { missed } => Error::Lagged { missed },
            Self::ServerRestarted => Error::ServerRestarted,
        }
    }
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "link I/O error: {e:?}"),
            Self::Eof => f.write_str("the link ended"),
            Self::Disconnected => f.write_str("the session has ended"),
            Self::WriteZero => f.write_str("the link accepted no bytes"),
            Self::Qmp(e) => write!(f, "QMP error: {e}"),
            Self::Malformed(e) => write!(f, "malformed reply: {e}"),
            Self::TooLarge { size } => {
                write!(f, "reply of {size} bytes is larger than the receive buffer")
            }
            Self::Unframed(e) => write!(f, "unframeable reply: {e}"),
            Self::Timeout(which) => write!(f, "{which}"),
            Self::Send(e) => write!(f, "command not sent: {e}"),
            Self::Decode(e) => write!(f, "cannot decode the return value: {e}"),
            Self::Lagged { missed } => {
                write!(f, "{missed} QMP event(s) lost: the event queue was full")
            }
            Self::ServerRestarted => f.write_str("the server restarted before the reply"),
        }
    }
}

impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Malformed(e) => Some(e),
            Self::Unframed(e) => Some(e),
            Self::Send(e) => Some(e),
            _ => None,
        }
    }
}

/// A QMP error reply, copied out of the receive buffer: its class, and its description
/// unescaped and cut to [`ServerError::DESC_CAPACITY`] bytes (at a character boundary).
///
/// The description is for people, not for parsing (the QMP specification says so).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ServerError {
    class: ErrorClass,
    truncated: bool,
    len: u8,
    desc: [u8; ServerError::DESC_CAPACITY],
}

impl ServerError {
    /// The most description bytes kept.
    pub const DESC_CAPACITY: usize = 80;

    /// Copies `error` (a view into a frame).
    pub fn new(error: &QmpError<'_>) -> Self {
        let mut this = Self {
            class: error.error_class(),
            truncated: false,
            len: 0,
            desc: [0; Self::DESC_CAPACITY],
        };
        let mut at = 0;
        for c in error.desc.chars() {
            let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
            let end = at + c.len_utf8();
            let Some(room) = this.desc.get_mut(at..end) else {
                this.truncated = true;
                break;
            };
            c.encode_utf8(room);
            at = end;
        }
        this.len = at as u8;
        this
    }

    /// The error class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The description (unescaped; possibly cut, see [`is_truncated`](Self::is_truncated)).
    pub fn desc(&self) -> &str {
        let bytes = &self.desc[..usize::from(self.len)];
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// Whether the description was longer than [`DESC_CAPACITY`](Self::DESC_CAPACITY).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Debug for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerError")
            .field("class", &self.class)
            .field("desc", &self.desc())
            .field("truncated", &self.truncated)
            .finish()
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc())?;
        if self.truncated {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for ServerError {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}: {=str}", self.class, self.desc());
    }
}
