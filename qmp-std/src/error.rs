//! The client's error type.

use std::fmt;
use std::io;

use qmp_proto::{EncodeError, ErrorClass, Expired, FrameError, MessageError, SendError};

/// An error reply from the server: `{"error": {"class": …, "desc": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QmpError {
    /// The error class, e.g. `GenericError` or `CommandNotFound`. An open set: newer QEMUs
    /// add classes.
    pub class: String,
    /// A description for people, not for parsing.
    pub desc: String,
}

impl QmpError {
    /// The class as an [`ErrorClass`], for matching; [`ErrorClass::Other`] for a class this
    /// crate does not know ([`class`](Self::class) still has its name).
    ///
    /// ```
    /// use qmp_std::{ErrorClass, QmpError};
    /// let e = QmpError { class: "CommandNotFound".into(), desc: "no".into() };
    /// assert_eq!(e.error_class(), ErrorClass::CommandNotFound);
    /// ```
    pub fn error_class(&self) -> ErrorClass {
        ErrorClass::from_name(&self.class)
    }

    pub(crate) fn from_view(e: &qmp_proto::QmpError<'_>) -> Self {
        Self {
            class: crate::event::owned_str(e.class),
            desc: crate::event::owned_str(e.desc),
        }
    }
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for QmpError {}

/// Everything that can go wrong with a command or the connection.
///
/// - Errors that concern one command leave the connection usable: [`Error::Qmp`],
///   [`Error::Timeout`], [`Error::TooLarge`], [`Error::Malformed`], [`Error::Decode`],
///   [`Error::ServerRestarted`].
/// - Errors that mean the connection is gone: [`Error::Disconnected`], [`Error::Stalled`],
///   [`Error::Io`] (see [`Error::is_disconnect`]); every later command fails too, with
///   [`Error::Disconnected`] or [`Error::Stalled`].
/// - Errors for commands refused before anything was sent: [`Error::Refused`],
///   [`Error::Encode`], [`Error::UnknownHandle`].
/// - [`Error::Tls`]: connecting to a TLS monitor failed a check (which one, see
///   [`TlsFailure`]).
/// - [`Error::Lagged`], from an event subscription: events were missed, and the
///   subscription goes on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error.
    Qmp(QmpError),
    /// A wait ran out; which one says what to look at. For a command ([`Expired::Command`]:
    /// its deadline passed before its reply came, or before there was room to send it),
    /// the connection stays usable and a late reply is dropped. For the connect and the
    /// greeting ([`Expired::Connect`], [`Expired::Greeting`]) the usual cause is another
    /// client holding the monitor (QEMU serves one at a time), or a monitor that expects
    /// TLS (`tls-creds` on its chardev) reached by a plain connection: it waits for a TLS
    /// handshake and says nothing, so the greeting never comes (use `connect_tls`).
    Timeout(Expired),
    /// The reply was larger than the maximum reply size; it was skipped and the connection
    /// stays usable.
    TooLarge {
        /// The reply's size in bytes.
        size: u64,
        /// The maximum reply size in force.
        limit: usize,
    },
    /// The reply was not a valid QMP message.
    Malformed(MessageError),
    /// The reply could not even be framed (nested too deep, a raw control character, a
    /// mismatched bracket); the connection stays usable.
    Unframed(FrameError),
    /// The reply's value (or an event's data) did not match the typed output; the error
    /// keeps the JSON that came ([`DecodeError::json`]).
    Decode(DecodeError),
    /// The server closed the connection (or it was closed earlier) before the reply.
    Disconnected,
    /// Nothing arrived for the read timeout while commands were waiting: the client gave up
    /// on the connection.
    Stalled,
    /// An I/O error on the stream; the connection is closed.
    Io(io::Error),
    /// The command's arguments could not be encoded (nothing was sent).
    Encode(EncodeError),
    /// The command was refused locally, before anything was sent (for example `exec-oob`
    /// without the `oob` capability negotiated).
    Refused(SendError),
    /// The command's arguments do not fit the server's schema ([`Options::check_arguments`](crate::Options::check_arguments));
    /// nothing was sent.
    #[cfg(feature = "qapi")]
    Invalid(Box<crate::SchemaError>),
    /// [`Client::wait`](crate::Client::wait) was given a handle this client does not know.
    UnknownHandle,
    /// An event subscriber fell behind and this many events were dropped for it (not for
    /// other subscribers); its next items are the events that followed. Event subscriptions
    /// of the shared and async clients yield it, and the blocking client's
    /// [`next_event`](crate::Client::next_event) / [`wait_event`](crate::Client::wait_event)
    /// when its queue is bounded ([`Options::max_queued_events`](crate::Options::max_queued_events)).
    Lagged {
        /// How many events this subscriber missed.
        missed: u64,
    },
    /// The connection ended and a reconnecting client
    /// ([`reconnect`](crate::reconnect)) connected again: delivered once per gap, in the
    /// event stream, where the gap is. Events the old QEMU sent after the last one read are
    /// lost; the next events are the new QEMU's, from its handshake on.
    Reconnected {
        /// From the end of the old connection to the new handshake's completion.
        downtime: std::time::Duration,
        /// Connect attempts it took (the successful one included).
        attempts: u32,
    },
    /// The server restarted before the reply: a second greeting on the link (QEMU restarted
    /// at the far end of a serial line or pty). The session started over by itself (the
    /// handshake was done again); this command was lost, and may be sent again.
    ServerRestarted,
    /// Connecting to a TLS monitor (feature `tls`) failed; [`TlsError::failure`] says which
    /// check.
    Tls(TlsError),
}

impl Error {
    /// The QMP error class, for [`Error::Qmp`].
    pub fn qmp_class(&self) -> Option<&str> {
        match self {
            Error::Qmp(e) => Some(&e.class),
            _ => None,
        }
    }

    /// Whether a wait ran out ([`Error::Timeout`]), and which.
    pub fn timeout(&self) -> Option<Expired> {
        match self {
            Error::Timeout(which) => Some(*which),
            _ => None,
        }
    }

    /// Whether a wait ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// Whether the server answered with an error ([`Error::Qmp`]).
    pub fn is_qmp(&self) -> bool {
        matches!(self, Error::Qmp(_))
    }

    /// Whether the peer broke the protocol for this reply ([`Error::TooLarge`],
    /// [`Error::Malformed`], [`Error::Unframed`]); the connection stays usable.
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            Error::TooLarge { .. } | Error::Malformed(_) | Error::Unframed(_)
        )
    }

    /// Which TLS check failed, for [`Error::Tls`].
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        match self {
            Error::Tls(e) => Some(e.failure),
            _ => None,
        }
    }

    /// Whether the connection is gone (as opposed to one command failing).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Disconnected | Error::Stalled | Error::Io(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Qmp(e) => write!(f, "QMP error: {e}"),
            Error::Timeout(which) => write!(f, "{which}"),
            Error::TooLarge { size, limit } => {
                write!(f, "reply of {size} bytes exceeds the {limit}-byte limit")
            }
            Error::Malformed(e) => write!(f, "malformed reply: {e}"),
            Error::Unframed(e) => write!(f, "unframeable reply: {e}"),
            Error::Decode(e) => write!(f, "unexpected reply value: {e}"),
            Error::Disconnected => f.write_str("the connection to the QMP server is closed"),
            Error::Stalled => f.write_str("the QMP server stopped sending (read timeout)"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Encode(e) => write!(f, "cannot encode the command: {e}"),
            Error::Refused(e) => write!(f, "command refused: {e}"),
            #[cfg(feature = "qapi")]
            Error::Invalid(e) => write!(f, "invalid arguments: {e}"),
            Error::UnknownHandle => f.write_str("unknown command handle"),
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::Reconnected { downtime, attempts } => write!(
                f,
                "reconnected after {downtime:?} down ({attempts} attempts): events of the gap are lost"
            ),
            Error::ServerRestarted => f.write_str("the QMP server restarted before the reply"),
            Error::Lagged { missed } => {
                write!(
                    f,
                    "the event subscriber fell behind and missed {missed} events"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Qmp(e) => Some(e),
            Error::Malformed(e) => Some(e),
            Error::Unframed(e) => Some(e),
            Error::Decode(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Encode(e) => Some(e),
            Error::Refused(e) => Some(e),
            #[cfg(feature = "qapi")]
            Error::Invalid(e) => Some(&**e),
            Error::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<QmpError> for Error {
    fn from(e: QmpError) -> Self {
        Error::Qmp(e)
    }
}

/// Which check failed when connecting to a TLS monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's certificate is not signed by a CA this client trusts.
    UnknownCa,
    /// The server's certificate is for another name (see `TlsConfig::server_name`).
    NameMismatch,
    /// The server's certificate has expired, or is not valid yet.
    Expired,
    /// The server wanted a client certificate (QEMU's `verify-peer=on`) and got none.
    ClientCertRequired,
    /// The server refused the client's certificate (not signed by its CA, or otherwise bad).
    ClientCertRejected,
    /// The server does not speak TLS (a plain monitor answered in plain text).
    NotTls,
    /// The local TLS configuration is unusable: a file that cannot be read or parsed, a key
    /// that does not fit, no CA to trust, a server name that is not one.
    Config,
    /// Another TLS failure; the description says which.
    Other,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::UnknownCa => "the server's certificate is not signed by a trusted CA",
            TlsFailure::NameMismatch => "the server's certificate is for another name",
            TlsFailure::Expired => "the server's certificate has expired or is not valid yet",
            TlsFailure::ClientCertRequired => "the server wants a client certificate",
            TlsFailure::ClientCertRejected => "the server refused the client certificate",
            TlsFailure::NotTls => "the server does not speak TLS",
            TlsFailure::Config => "the TLS configuration is unusable",
            TlsFailure::Other => "the TLS connection failed",
        })
    }
}

/// A failed TLS check ([`Error::Tls`]): which one, and the TLS library's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// Which check failed.
    pub failure: TlsFailure,
    /// What the TLS library (or the configuration) said, for people.
    pub detail: String,
}

impl TlsError {
    /// A failure with its detail.
    pub fn new(failure: TlsFailure, detail: impl Into<String>) -> Self {
        Self {
            failure,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.failure, self.detail)
    }
}

impl std::error::Error for TlsError {}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Error::Tls(e)
    }
}

/// A reply (or event data) that does not fit its type: why, and the JSON that came, so the
/// caller still has the answer ([`Error::Decode`]).
#[derive(Debug)]
pub struct DecodeError {
    error: serde_json::Error,
    json: String,
}

impl DecodeError {
    pub(crate) fn new(error: serde_json::Error, json: impl Into<String>) -> Self {
        Self {
            error,
            json: json.into(),
        }
    }

    /// The JSON text that did not fit, as received (the `return` value or the event's data).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The JSON that did not fit, parsed (a string holding the text if it is not JSON that
    /// `serde_json` reads, such as QEMU's `inf`).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.json)
            .unwrap_or_else(|_| serde_json::Value::String(self.json.clone()))
    }

    /// Why it did not fit.
    pub fn serde_error(&self) -> &serde_json::Error {
        &self.error
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        if self.json.len() <= SHOWN {
            write!(f, "{} in {}", self.error, self.json)
        } else {
            let mut end = SHOWN;
            while !self.json.is_char_boundary(end) {
                end -= 1;
            }
            write!(f, "{} in {}…", self.error, &self.json[..end])
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Decodes a command's result (or an event's data) from its JSON text.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Decode(DecodeError::new(e, json)))
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
