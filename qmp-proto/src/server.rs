//! The server side: a sans-IO QMP server session that answers the way QEMU 7.2 does.
//!
//! [`Server`] frames what a client sends, applies QEMU's envelope rules and capabilities
//! negotiation itself, and hands the application only the commands it must answer. The
//! encoders ([`encode_reply`], [`encode_error`], [`encode_event`], [`Server::greeting`])
//! write QEMU's exact bytes: `", "` and `": "` separators, QEMU's member order, ASCII-only
//! strings, `\r\n` after each message.

use core::fmt;

use crate::encode::EncodeError;
use crate::framing::{FrameError, Framer};
use crate::json::{JsonKind, JsonStr, RawJson};

mod write;

use write::{encode, put_u64};
pub use write::{encode_error, encode_event, encode_reply};

/// The nesting limit of QEMU's JSON parser, used for the server's framer.
const QEMU_DEPTH: u32 = 1024;

/// Where a server session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ServerState {
    /// Greeting sent (or due); only `qmp_capabilities` is accepted.
    Negotiating,
    /// Capabilities negotiated: commands go to the application.
    Command,
}

/// A command the application must answer (with [`Request::reply`] or [`Request::error`]).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `exec-oob` rather than `execute` (only once oob is negotiated).
    pub oob: bool,
    /// The command's name, still escaped.
    pub name: JsonStr<'a>,
    /// The `arguments` object, if the request had one.
    pub arguments: Option<RawJson<'a>>,
    /// The request's `id`, any JSON value, to echo in the answer.
    pub id: Option<RawJson<'a>>,
}

impl Request<'_> {
    /// Encodes the success reply to this request; see [`encode_reply`].
    pub fn reply(&self, value: RawJson<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
        encode_reply(self.id, value, out)
    }

    /// Encodes an error reply to this request; see [`encode_error`].
    pub fn error(
        &self,
        class: &str,
        desc: impl fmt::Display,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        encode_error(self.id, class, desc, out)
    }

    /// Encodes QEMU's answer to a command it does not have: `CommandNotFound`, "The command
    /// NAME has not been found".
    pub fn not_found(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let name = self.name;
        let desc = format_args!("The command {name} has not been found");
        encode_error(self.id, "CommandNotFound", desc, out)
    }
}

/// Why QEMU could not parse input; the answer carries no id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ParseError {
    /// "expecting value": a missing or misplaced value, a stray bracket.
    ExpectingValue,
    /// "missing : in object pair".
    MissingColon,
    /// "invalid keyword 'X'": a bare word (the word is [`Rejection::Parse`]'s text).
    InvalidKeyword,
    /// "duplicate key" (top-level members only are checked).
    DuplicateKey,
    /// "stray 'X'": a byte that cannot start a token.
    Stray(u8),
    /// Input that is not UTF-8.
    InvalidUtf8,
    /// Nesting deeper than QEMU's 1024.
    TooDeep,
    /// A message larger than the server's buffer.
    TooLarge,
}

/// Why the server refused a request; QEMU's class and desc are [`Rejection::class`] and the
/// `Display` text.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Rejection<'a> {
    /// Input that is not JSON (no id).
    Parse(ParseError, &'a str),
    /// "QMP input must be a JSON object" (no id).
    NotAnObject,
    /// "QMP input lacks member 'execute'".
    LacksExecute,
    /// "QMP input member 'X' must be a string" (`execute` or `exec-oob`).
    NotAString(&'static str),
    /// "QMP input member 'X' is unexpected" (also `exec-oob` before oob is enabled).
    Unexpected(JsonStr<'a>),
    /// "QMP input member 'arguments' must be an object".
    ArgumentsNotObject,
    /// "QMP input member 'execute' clashes with 'exec-oob'".
    Clash,
    /// `CommandNotFound`: "Expecting capabilities negotiation with 'qmp_capabilities'".
    NotNegotiated,
    /// `CommandNotFound`: "Capabilities negotiation is already complete, command ignored".
    AlreadyNegotiated,
    /// "The command X does not support OOB" (`qmp_capabilities` sent with `exec-oob`).
    NoOob(JsonStr<'a>),
    /// "Parameter 'X' is unexpected" (in `qmp_capabilities`'s arguments).
    ParameterUnexpected(JsonStr<'a>),
    /// "Invalid parameter type for 'enable', expected: array", or `'enable[N]'` and
    /// `string` for an element (index given).
    ParameterType(Option<usize>),
    /// "Parameter 'null' does not accept value 'X'": an unknown capability (QEMU 7.2's words).
    UnknownCapability(JsonStr<'a>),
    /// "Capability oob not available" (repeated, comma-separated, once per request of it).
    NotAvailable(usize),
}

impl Rejection<'_> {
    /// QEMU's error class.
    pub fn class(&self) -> &'static str {
        match self {
            Rejection::NotNegotiated | Rejection::AlreadyNegotiated => "CommandNotFound",
            _ => "GenericError",
        }
    }
}

impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rejection::Parse(e, word) => {
                f.write_str("JSON parse error, ")?;
                match e {
                    ParseError::ExpectingValue => f.write_str("expecting value"),
                    ParseError::MissingColon => f.write_str("missing : in object pair"),
                    ParseError::InvalidKeyword => write!(f, "invalid keyword '{word}'"),
                    ParseError::DuplicateKey => f.write_str("duplicate key"),
                    ParseError::Stray(b) => write!(f, "stray '{}'", char::from(b)),
                    ParseError::InvalidUtf8 => f.write_str("invalid UTF-8 sequence in string"),
                    ParseError::TooDeep => f.write_str("nesting too deep"),
                    ParseError::TooLarge => f.write_str("message too large"),
                }
            }
            Rejection::NotAnObject => f.write_str("QMP input must be a JSON object"),
            Rejection::LacksExecute => f.write_str("QMP input lacks member 'execute'"),
            Rejection::NotAString(m) => write!(f, "QMP input member '{m}' must be a string"),
            Rejection::Unexpected(m) => write!(f, "QMP input member '{m}' is unexpected"),
            Rejection::ArgumentsNotObject => {
                f.write_str("QMP input member 'arguments' must be an object")
            }
            Rejection::Clash => f.write_str("QMP input member 'execute' clashes with 'exec-oob'"),
            Rejection::NotNegotiated => {
                f.write_str("Expecting capabilities negotiation with 'qmp_capabilities'")
            }
            Rejection::AlreadyNegotiated => {
                f.write_str("Capabilities negotiation is already complete, command ignored")
            }
            Rejection::NoOob(name) => write!(f, "The command {name} does not support OOB"),
            Rejection::ParameterUnexpected(p) => write!(f, "Parameter '{p}' is unexpected"),
            Rejection::ParameterType(None) => {
                f.write_str("Invalid parameter type for 'enable', expected: array")
            }
            Rejection::ParameterType(Some(i)) => {
                write!(
                    f,
                    "Invalid parameter type for 'enable[{i}]', expected: string"
                )
            }
            Rejection::UnknownCapability(v) => {
                write!(f, "Parameter 'null' does not accept value '{v}'")
            }
            Rejection::NotAvailable(n) => {
                f.write_str("Capability ")?;
                for i in 0..n {
                    f.write_str(if i == 0 { "oob" } else { ", oob" })?;
                }
                f.write_str(" not available")
            }
        }
    }
}

/// An answer the server decided by itself: encode it with [`Answer::encode`] and send it.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// `qmp_capabilities` succeeded: `{"return": {}}`; the server is in command mode.
    Negotiated {
        /// The request's id.
        id: Option<RawJson<'a>>,
        /// Whether oob is now enabled.
        oob: bool,
    },
    /// The request was refused, with QEMU's class and desc.
    Rejected {
        /// The request's id (`None` for input that was not a JSON object).
        id: Option<RawJson<'a>>,
        /// Why.
        why: Rejection<'a>,
    },
}

impl Answer<'_> {
    /// Encodes the answer as QEMU would send it.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        match *self {
            Answer::Negotiated { id, .. } => encode_reply(id, RawJson::new_unchecked("{}"), out),
            Answer::Rejected { id, why } => encode_error(id, why.class(), why, out),
        }
    }
}

/// What [`Server::poll`] yields.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    /// A command for the application to run and answer.
    Request(Request<'a>),
    /// An answer the server decided (errors, negotiation): encode and send it.
    Answer(Answer<'a>),
}

/// A sans-IO QMP server session over a receive buffer of the caller's (`B`).
///
/// * Getters: [`state`](Server::state), [`oob_enabled`](Server::oob_enabled).
/// * Output before input: [`greeting`](Server::greeting) on every new connection.
/// * Input: [`feed`](Server::feed), or [`read_buf`](Server::read_buf) then
///   [`commit`](Server::commit).
/// * Output: [`poll`](Server::poll) until `None`; each item is a [`Request`] to answer or an
///   [`Answer`] to encode. Encoders: [`encode_reply`], [`encode_error`], and
///   [`event`](Server::event) (nothing before negotiation, as QEMU).
///
/// # A server and the crate's client, in memory
/// ```
/// use qmp_proto::{Incoming, Outcome, Received, RawJson, Server, Session, State};
///
/// let mut server = Server::new([0u8; 512], (7, 2, 22), "demo", true);
/// let mut client: Session<[u8; 512]> = Session::new([0; 512]);
/// let (mut to_client, mut to_server) = ([0u8; 256], [0u8; 256]);
///
/// let n = server.greeting(&mut to_client).unwrap();
/// assert_eq!(client.feed(&to_client[..n]), n);
/// assert!(matches!(client.poll(), Some(Received::Greeting(_))));
/// let sent = client.negotiate(true, None, &mut to_server).unwrap();
/// assert_eq!(server.feed(&to_server[..sent.len]), sent.len);
/// let Some(Incoming::Answer(answer)) = server.poll() else { panic!() };
/// let n = answer.encode(&mut to_client).unwrap();
/// assert_eq!(client.feed(&to_client[..n]), n);
/// assert!(matches!(client.poll(), Some(Received::Reply(_))));
/// assert_eq!((client.state(), client.oob_enabled()), (State::Ready, true));
///
/// let sent = client.execute("query-status", &(), None, &mut to_server).unwrap();
/// assert_eq!(server.feed(&to_server[..sent.len]), sent.len);
/// let Some(Incoming::Request(req)) = server.poll() else { panic!() };
/// assert!(req.name == "query-status");
/// let value = RawJson::parse(r#"{"status": "running", "running": true}"#).unwrap();
/// let n = req.reply(value, &mut to_client).unwrap();
/// assert_eq!(client.feed(&to_client[..n]), n);
/// let Some(Received::Reply(reply)) = client.poll() else { panic!() };
/// assert_eq!(reply.id, sent.id);
/// assert!(matches!(reply.outcome, Outcome::Return(v) if v.get("running").unwrap().as_bool() == Some(true)));
/// ```
#[derive(Debug)]
pub struct Server<'p, B> {
    framer: Framer<B>,
    version: (u64, u64, u64),
    package: &'p str,
    oob_offered: bool,
    oob_enabled: bool,
    state: ServerState,
}

impl<'p, B: AsRef<[u8]> + AsMut<[u8]>> Server<'p, B> {
    /// A server that will greet with QEMU version `(major, minor, micro)` and `package`,
    /// offering the `oob` capability if `oob`.
    pub fn new(buf: B, version: (u64, u64, u64), package: &'p str, oob: bool) -> Self {
        Self {
            framer: Framer::new(buf).with_max_depth(QEMU_DEPTH.min(crate::MAX_SUPPORTED_DEPTH)),
            version,
            package,
            oob_offered: oob,
            oob_enabled: false,
            state: ServerState::Negotiating,
        }
    }

    /// Negotiating or command mode.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Whether the client enabled oob (so `exec-oob` is accepted).
    pub fn oob_enabled(&self) -> bool {
        self.oob_enabled
    }

    /// Encodes the greeting, as QEMU 7.2 writes it.
    pub fn greeting(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let (major, minor, micro) = self.version;
        encode(out, |w| {
            w.put(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": ");
            put_u64(w, micro);
            w.put(b", \"minor\": ");
            put_u64(w, minor);
            w.put(b", \"major\": ");
            put_u64(w, major);
            w.put(b"}, \"package\": ");
            w.put_text(self.package);
            w.put(b"}, \"capabilities\": [");
            if self.oob_offered {
                w.put(b"\"oob\"");
            }
            w.put(b"]}}");
        })
    }

    /// Encodes an event (see [`encode_event`]), or writes nothing and returns 0 before
    /// negotiation is complete: QEMU delivers no events to a monitor still negotiating.
    pub fn event(
        &self,
        name: &str,
        data: Option<RawJson<'_>>,
        timestamp: (i64, i64),
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        match self.state {
            ServerState::Negotiating => Ok(0),
            ServerState::Command => encode_event(name, data, timestamp, out),
        }
    }

    /// The spare room of the receive buffer: read into it, then [`commit`](Server::commit).
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.framer.read_buf()
    }

    /// Marks `n` bytes of [`read_buf`](Server::read_buf) as received.
    pub fn commit(&mut self, n: usize) {
        self.framer.commit(n)
    }

    /// Copies in as much of `bytes` as fits; returns how many. Poll, then feed the rest.
    #[must_use = "the bytes not taken must be fed again"]
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        self.framer.feed(bytes)
    }

    /// The next thing to handle, or `None` until more input arrives.
    #[must_use]
    pub fn poll(&mut self) -> Option<Incoming<'_>> {
        let frame = match self.framer.next_frame()? {
            Ok(frame) => frame,
            Err(e) => return Some(reject(None, frame_error(e))),
        };
        let Ok(text) = core::str::from_utf8(frame.as_bytes()) else {
            return Some(reject(None, Rejection::Parse(ParseError::InvalidUtf8, "")));
        };
        let obj = match RawJson::parse(text) {
            Ok(obj) => obj,
            Err(e) => return Some(reject(None, syntax_error(text, e.offset))),
        };
        if has_duplicate_key(obj) {
            return Some(reject(None, Rejection::Parse(ParseError::DuplicateKey, "")));
        }
        Some(dispatch(
            obj,
            &mut self.state,
            &mut self.oob_enabled,
            self.oob_offered,
        ))
    }
}

fn reject<'a>(id: Option<RawJson<'a>>, why: Rejection<'a>) -> Incoming<'a> {
    Incoming::Answer(Answer::Rejected { id, why })
}

fn frame_error<'a>(e: FrameError) -> Rejection<'a> {
    let parse = match e {
        FrameError::NotAnObject { .. } => return Rejection::NotAnObject,
        FrameError::UnexpectedByte { byte, .. } | FrameError::ControlCharInString { byte, .. } => {
            ParseError::Stray(byte)
        }
        FrameError::TooDeep { .. } => ParseError::TooDeep,
        FrameError::TooLarge { .. } => ParseError::TooLarge,
        _ => ParseError::ExpectingValue,
    };
    Rejection::Parse(parse, "")
}

/// QEMU's words for a syntax error at `offset` of a balanced object.
fn syntax_error(text: &str, offset: usize) -> Rejection<'_> {
    let bytes = text.as_bytes();
    let word_len = bytes[offset.min(bytes.len())..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    if word_len > 0 && bytes[offset].is_ascii_alphabetic() {
        let word = &text[offset..offset + word_len];
        return Rejection::Parse(ParseError::InvalidKeyword, word);
    }
    let before = bytes[..offset.min(bytes.len())]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace());
    let e = match before {
        Some(b'"') => ParseError::MissingColon,
        _ => ParseError::ExpectingValue,
    };
    Rejection::Parse(e, "")
}

fn has_duplicate_key(obj: RawJson<'_>) -> bool {
    obj.members().enumerate().any(|(i, (k, _))| {
        obj.members()
            .take(i)
            .any(|(other, _)| other.as_escaped() == k.as_escaped())
    })
}

/// QEMU's envelope checks, then negotiation; returns what the application must see.
fn dispatch<'a>(
    obj: RawJson<'a>,
    state: &mut ServerState,
    oob_enabled: &mut bool,
    oob_offered: bool,
) -> Incoming<'a> {
    let (mut execute, mut exec_oob, mut arguments, mut id, mut unexpected) =
        (None, None, None, None, None);
    for (key, value) in obj.members() {
        match key.as_escaped() {
            "execute" => execute = Some(value),
            "exec-oob" => exec_oob = Some(value),
            "arguments" => arguments = Some(value),
            "id" => id = Some(value),
            _ => {
                unexpected.get_or_insert(key);
            }
        }
    }
    let oob_member = JsonStr::from_escaped("exec-oob");
    let why = if exec_oob.is_some() && !*oob_enabled {
        Some(Rejection::Unexpected(oob_member))
    } else if exec_oob.is_some_and(|v| v.kind() != JsonKind::String) {
        Some(Rejection::NotAString("exec-oob"))
    } else if execute.is_some_and(|v| v.kind() != JsonKind::String) {
        Some(Rejection::NotAString("execute"))
    } else if let Some(key) = unexpected {
        Some(Rejection::Unexpected(key))
    } else if arguments.is_some_and(|v| v.kind() != JsonKind::Object) {
        Some(Rejection::ArgumentsNotObject)
    } else if execute.is_some() && exec_oob.is_some() {
        Some(Rejection::Clash)
    } else {
        None
    };
    if let Some(why) = why {
        return reject(id, why);
    }
    let (oob, name) = match (execute, exec_oob) {
        (Some(v), None) => (false, v),
        (None, Some(v)) => (true, v),
        _ => return reject(id, Rejection::LacksExecute),
    };
    let Some(name) = name.as_str() else {
        return reject(id, Rejection::LacksExecute);
    };
    let capabilities = name == "qmp_capabilities";
    match *state {
        ServerState::Command if !capabilities => Incoming::Request(Request {
            oob,
            name,
            arguments,
            id,
        }),
        ServerState::Command if oob => reject(id, Rejection::NoOob(name)),
        ServerState::Negotiating if !capabilities => reject(id, Rejection::NotNegotiated),
        _ => match capability_args(arguments) {
            Err(why) => reject(id, why),
            Ok(_) if *state == ServerState::Command => reject(id, Rejection::AlreadyNegotiated),
            Ok(n) if n > 0 && !oob_offered => reject(id, Rejection::NotAvailable(n)),
            Ok(n) => {
                *state = ServerState::Command;
                *oob_enabled = n > 0;
                Incoming::Answer(Answer::Negotiated { id, oob: n > 0 })
            }
        },
    }
}

/// Checks `qmp_capabilities`'s arguments as QEMU 7.2 does; returns how often `oob` was asked.
fn capability_args(arguments: Option<RawJson<'_>>) -> Result<usize, Rejection<'_>> {
    let Some(arguments) = arguments else {
        return Ok(0);
    };
    let mut count = 0;
    if let Some(enable) = arguments.get("enable") {
        if enable.kind() != JsonKind::Array {
            return Err(Rejection::ParameterType(None));
        }
        for (i, cap) in enable.elements().enumerate() {
            let Some(cap) = cap.as_str() else {
                return Err(Rejection::ParameterType(Some(i)));
            };
            if cap != "oob" {
                return Err(Rejection::UnknownCapability(cap));
            }
            count += 1;
        }
    }
    match arguments
        .members()
        .find(|(k, _)| k.as_escaped() != "enable")
    {
        Some((key, _)) => Err(Rejection::ParameterUnexpected(key)),
        None => Ok(count),
    }
}
