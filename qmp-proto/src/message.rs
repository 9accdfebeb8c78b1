//! Message views: classifying one frame into a greeting, a reply or an event, without copying.
//!
//! Keys may come in any order (QEMU writes `id` last in returns and first in errors) and
//! unknown keys are ignored, as the QMP specification asks of clients.

use core::fmt;

use crate::framing::Frame;
use crate::json::{Cursor, JsonStr, RawJson, SyntaxError};
use crate::scan::Spans;

mod fast;

use fast::canonical;

/// One message from the server, borrowing the frame it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Message<'a> {
    /// `{"QMP": {"version": …, "capabilities": […]}}`, sent once per connection.
    Greeting(Greeting<'a>),
    /// `{"return": …, "id": …}`: a command succeeded.
    Return(Return<'a>),
    /// `{"error": {"class": …, "desc": …}, "id": …}`: a command failed.
    Error(ErrorReply<'a>),
    /// `{"event": …, "data": …, "timestamp": …}`: something happened.
    Event(Event<'a>),
}

/// The server's greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Greeting<'a> {
    /// The QEMU version.
    pub version: Version<'a>,
    /// Capabilities the server offers (for example `oob`).
    pub capabilities: Capabilities<'a>,
}

/// A QEMU version, as in the greeting and `query-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Version<'a> {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Micro version.
    pub micro: u64,
    /// Distribution package string (for example `Debian 1:7.2+dfsg-7+deb12u18+b3`).
    pub package: JsonStr<'a>,
}

/// The greeting's list of capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Capabilities<'a> {
    list: RawJson<'a>,
}

impl<'a> Capabilities<'a> {
    /// Iterates over the capability names.
    pub fn iter(&self) -> impl Iterator<Item = JsonStr<'a>> + 'a {
        self.list.elements().filter_map(|e| e.as_str())
    }

    /// Whether the server offers `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|c| c.eq_str(name))
    }

    /// Whether the server offers out-of-band execution.
    pub fn oob(&self) -> bool {
        self.contains("oob")
    }
}

/// A success reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Return<'a> {
    /// The command's result: any JSON value (`{}` for commands that return nothing).
    pub value: RawJson<'a>,
    /// The id echoed from the command, of whatever JSON type the command used.
    pub id: Option<RawJson<'a>>,
}

/// An error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ErrorReply<'a> {
    /// What went wrong.
    pub error: QmpError<'a>,
    /// The id echoed from the command; absent when QEMU could not parse the input.
    pub id: Option<RawJson<'a>>,
}

/// The `error` member of an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QmpError<'a> {
    /// The error class, e.g. `GenericError` or `CommandNotFound`; an open set.
    pub class: JsonStr<'a>,
    /// A description for people, not for parsing.
    pub desc: JsonStr<'a>,
}

impl QmpError<'_> {
    /// The error class as an [`ErrorClass`]; [`ErrorClass::Other`] for a class this crate
    /// does not know ([`class`](Self::class) still has its name).
    ///
    /// ```
    /// use qmp_proto::{ErrorClass, Message};
    /// let frame = br#"{"error": {"class": "CommandNotFound", "desc": "no"}, "id": 1}"#;
    /// let Ok(Message::Error(reply)) = Message::parse(frame) else { panic!() };
    /// assert_eq!(reply.error.error_class(), ErrorClass::CommandNotFound);
    /// ```
    pub fn error_class(&self) -> ErrorClass {
        ErrorClass::NAMES
            .iter()
            .find(|(name, _)| self.class == *name)
            .map_or(ErrorClass::Other, |(_, class)| *class)
    }
}

impl fmt::Display for QmpError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

/// A QMP error class (the `class` of an error reply). The set is open (later QEMUs may add
/// classes); unknown ones are [`ErrorClass::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ErrorClass {
    /// `GenericError`: most failures.
    GenericError,
    /// `CommandNotFound`: no such command, or not allowed in this state (e.g. before
    /// negotiation).
    CommandNotFound,
    /// `DeviceNotActive`.
    DeviceNotActive,
    /// `DeviceNotFound`.
    DeviceNotFound,
    /// `KVMMissingCap`.
    KvmMissingCap,
    /// A class this crate does not know.
    Other,
}

impl ErrorClass {
    const NAMES: [(&'static str, ErrorClass); 5] = [
        ("GenericError", Self::GenericError),
        ("CommandNotFound", Self::CommandNotFound),
        ("DeviceNotActive", Self::DeviceNotActive),
        ("DeviceNotFound", Self::DeviceNotFound),
        ("KVMMissingCap", Self::KvmMissingCap),
    ];

    /// The class QEMU names `name` (an unescaped string).
    ///
    /// ```
    /// use qmp_proto::ErrorClass;
    /// assert_eq!(ErrorClass::from_name("KVMMissingCap"), ErrorClass::KvmMissingCap);
    /// assert_eq!(ErrorClass::from_name("SomethingNew"), ErrorClass::Other);
    /// ```
    pub fn from_name(name: &str) -> Self {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Self::Other, |(_, c)| *c)
    }

    /// The name QEMU uses (`"Other"` for unknown classes).
    pub fn as_str(&self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, c)| c == self)
            .map_or("Other", |(n, _)| n)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An asynchronous event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Event<'a> {
    /// The event name, e.g. `STOP`.
    pub name: JsonStr<'a>,
    /// The event's data, absent for events such as `STOP` and `RESUME`.
    pub data: Option<RawJson<'a>>,
    /// When the server emitted it.
    pub timestamp: Timestamp,
}

/// An event timestamp: host wall-clock time, `-1`/`-1` when QEMU could not read the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// Why a frame is not a QMP message. Offsets count bytes from the frame's `{`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes are not UTF-8.
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The bytes are not valid JSON.
    Syntax {
        /// Offset of the first byte that does not fit the grammar.
        offset: usize,
    },
    /// A member the message kind requires is missing.
    MissingMember {
        /// Its name (dotted for nested members, e.g. `error.desc`).
        member: &'static str,
    },
    /// A member has the wrong type.
    InvalidMember {
        /// Its name (dotted for nested members).
        member: &'static str,
        /// Offset of its value.
        offset: usize,
    },
    /// A known member appears twice.
    DuplicateMember {
        /// Its name.
        member: &'static str,
        /// Offset of the second value.
        offset: usize,
    },
    /// An object with none of `QMP`, `return`, `error`, `event`.
    Unrecognized,
    /// An object with more than one of `QMP`, `return`, `error`, `event`.
    Ambiguous,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUtf8 { offset } => write!(f, "invalid UTF-8 at byte {offset}"),
            Self::Syntax { offset } => write!(f, "JSON syntax error at byte {offset}"),
            Self::MissingMember { member } => write!(f, "missing member `{member}`"),
            Self::InvalidMember { member, offset } => {
                write!(f, "member `{member}` at byte {offset} has the wrong type")
            }
            Self::DuplicateMember { member, offset } => {
                write!(f, "member `{member}` repeated at byte {offset}")
            }
            Self::Unrecognized => f.write_str("object is not a greeting, reply or event"),
            Self::Ambiguous => f.write_str("object is more than one of greeting, reply, event"),
        }
    }
}

impl core::error::Error for MessageError {}

impl From<SyntaxError> for MessageError {
    fn from(e: SyntaxError) -> Self {
        Self::Syntax { offset: e.offset }
    }
}

/// The top-level members classification cares about, and the members of `error` and
/// `timestamp`, picked out in the same pass.
#[derive(Debug, Default, PartialEq)]
struct TopMembers<'a> {
    qmp: Option<RawJson<'a>>,
    ret: Option<RawJson<'a>>,
    error: Option<RawJson<'a>>,
    id: Option<RawJson<'a>>,
    event: Option<RawJson<'a>>,
    data: Option<RawJson<'a>>,
    timestamp: Option<RawJson<'a>>,
    /// `error.class`, `error.desc`.
    error_members: [Option<RawJson<'a>>; 2],
    /// `timestamp.seconds`, `timestamp.microseconds`.
    timestamp_members: [Option<RawJson<'a>>; 2],
}

const KEYS: [&str; 7] = ["QMP", "return", "error", "id", "event", "data", "timestamp"];
const QMP: usize = 0;
const RETURN: usize = 1;
const ERROR: usize = 2;
const ID: usize = 3;
const EVENT: usize = 4;
const DATA: usize = 5;
const TIMESTAMP: usize = 6;

impl<'a> TopMembers<'a> {
    fn slot(&mut self, index: usize) -> &mut Option<RawJson<'a>> {
        match index {
            QMP => &mut self.qmp,
            RETURN => &mut self.ret,
            ERROR => &mut self.error,
            ID => &mut self.id,
            EVENT => &mut self.event,
            DATA => &mut self.data,
            _ => &mut self.timestamp,
        }
    }
}

fn key_index(key: JsonStr<'_>) -> Option<usize> {
    match key.as_plain() {
        Some(plain) => match plain {
            "QMP" => Some(QMP),
            "return" => Some(RETURN),
            "error" => Some(ERROR),
            "id" => Some(ID),
            "event" => Some(EVENT),
            "data" => Some(DATA),
            "timestamp" => Some(TIMESTAMP),
            _ => None,
        },
        None => KEYS.iter().position(|k| key.eq_str(k)),
    }
}

/// Offset of `inner` within `outer` (both views of the same frame).
fn offset_in(outer: &str, inner: RawJson<'_>) -> usize {
    (inner.as_json().as_ptr() as usize).saturating_sub(outer.as_ptr() as usize)
}

/// Walks a frame's top-level members into `members`. On a syntax error the members seen so
/// far are kept, so that even a broken reply can be tied to its id.
fn walk<'a>(
    frame: &'a [u8],
    spans: &Spans,
    members: &mut TopMembers<'a>,
) -> (&'a str, Result<(), MessageError>) {
    match core::str::from_utf8(frame) {
        Ok(text) => (text, walk_text(text, spans, members)),
        Err(e) => {
            // Walk the valid prefix for an id, then report the encoding error.
            let valid = core::str::from_utf8(&frame[..e.valid_up_to()]).unwrap_or("");
            let mut prefix = TopMembers::default();
            let _ = walk_text(valid, spans, &mut prefix);
            *members = prefix;
            let error = MessageError::InvalidUtf8 {
                offset: e.valid_up_to(),
            };
            (valid, Err(error))
        }
    }
}

fn walk_text<'a>(
    text: &'a str,
    spans: &Spans,
    members: &mut TopMembers<'a>,
) -> Result<(), MessageError> {
    // `--cfg qmp_proto_small` leaves out the fast path for QEMU's exact envelopes.
    if !cfg!(qmp_proto_small) && canonical(text, spans.as_slice(), members).is_some() {
        return Ok(());
    }
    *members = TopMembers::default();
    walk_general(text, spans, members)
}

/// The walk for any valid JSON object, and the errors for invalid ones.
fn walk_general<'a>(
    text: &'a str,
    spans: &Spans,
    members: &mut TopMembers<'a>,
) -> Result<(), MessageError> {
    let mut cur = Cursor::new(text);
    let mut spans = spans.as_slice();
    {
        cur.skip_ws();
        cur.expect(b'{')?;
        let mut first = true;
        loop {
            cur.skip_ws();
            if cur.eat(b'}') {
                break;
            }
            if !first {
                cur.expect(b',')?;
                cur.skip_ws();
            }
            first = false;
            let key = cur.member_key()?;
            let index = key_index(key);
            let value = match index {
                Some(RETURN | DATA) | None => {
                    // Where the framer saw this value end, if it starts here.
                    let at = cur.pos;
                    while spans
                        .first()
                        .is_some_and(|&(start, _)| (start as usize) < at)
                    {
                        spans = &spans[1..];
                    }
                    let known_end = match spans.first() {
                        Some(&(start, end)) if start as usize == at => Some(end as usize),
                        _ => None,
                    };
                    cur.skim_value(known_end)?
                }
                Some(ERROR) if members.error.is_none() => {
                    let (value, found) = cur.value_with_members(["class", "desc"])?;
                    members.error_members = found;
                    value
                }
                Some(TIMESTAMP) if members.timestamp.is_none() => {
                    let (value, found) = cur.value_with_members(["seconds", "microseconds"])?;
                    members.timestamp_members = found;
                    value
                }
                Some(_) => cur.value()?,
            };
            if let Some(index) = index {
                let slot = members.slot(index);
                if slot.is_some() {
                    return Err(MessageError::DuplicateMember {
                        member: KEYS[index],
                        offset: offset_in(text, value),
                    });
                }
                *slot = Some(value);
            }
        }
        cur.skip_ws();
        if cur.pos != text.len() {
            return Err(MessageError::Syntax { offset: cur.pos });
        }
        Ok(())
    }
}

/// [`Message::parse`] with the spans the framer recorded for the frame.
pub(crate) fn parse_with_spans<'a>(
    frame: &'a [u8],
    spans: &Spans,
) -> Result<Message<'a>, MessageError> {
    let mut m = TopMembers::default();
    let (text, result) = walk(frame, spans, &mut m);
    result?;
    let kinds = [m.qmp, m.ret, m.error, m.event]
        .iter()
        .filter(|k| k.is_some())
        .count();
    if kinds == 0 {
        return Err(MessageError::Unrecognized);
    }
    if kinds > 1 {
        return Err(MessageError::Ambiguous);
    }
    if let Some(qmp) = m.qmp {
        return parse_greeting(text, qmp).map(Message::Greeting);
    }
    if let Some(value) = m.ret {
        return Ok(Message::Return(Return { value, id: m.id }));
    }
    if let Some(error) = m.error {
        let [class, desc] = m.error_members;
        let class = found_member(text, error, class, "error.class")?;
        let class = class.as_str().ok_or(invalid(text, class, "error.class"))?;
        let desc = found_member(text, error, desc, "error.desc")?;
        let desc = desc.as_str().ok_or(invalid(text, desc, "error.desc"))?;
        return Ok(Message::Error(ErrorReply {
            error: QmpError { class, desc },
            id: m.id,
        }));
    }
    let event = m.event.ok_or(MessageError::Unrecognized)?;
    let name = event.as_str().ok_or(MessageError::InvalidMember {
        member: "event",
        offset: offset_in(text, event),
    })?;
    let timestamp = m.timestamp.ok_or(MessageError::MissingMember {
        member: "timestamp",
    })?;
    let [seconds, microseconds] = m.timestamp_members;
    let seconds = found_member(text, timestamp, seconds, "timestamp.seconds")?;
    let seconds = seconds
        .as_i64()
        .ok_or(invalid(text, seconds, "timestamp.seconds"))?;
    let microseconds = found_member(text, timestamp, microseconds, "timestamp.microseconds")?;
    let microseconds =
        microseconds
            .as_i64()
            .ok_or(invalid(text, microseconds, "timestamp.microseconds"))?;
    Ok(Message::Event(Event {
        name,
        data: m.data,
        timestamp: Timestamp {
            seconds,
            microseconds,
        },
    }))
}

impl<'a> Frame<'a> {
    /// Classifies the frame: [`Message::parse`](crate::Message::parse) of its bytes, faster,
    /// since the framer already knows where the top-level nested values (`return`, `data`,
    /// …) end.
    pub fn message(&self) -> Result<crate::Message<'a>, crate::MessageError> {
        parse_with_spans(self.as_bytes(), self.spans())
    }
}

impl<'a> Message<'a> {
    /// Classifies one frame (a complete JSON object, as [`crate::Framer`] yields).
    ///
    /// The envelope is fully validated: the top-level object, its keys, scalar members, and
    /// the `id`, `error`, `timestamp` and `QMP` values. The object or array of a `return` or
    /// `data` member (or of an unknown member) is only checked structurally (balanced
    /// brackets, closed strings without raw control characters) and jumped over: the grammar
    /// inside is checked when it is deserialized, or by [`RawJson::validate`]. A reply whose
    /// payload is malformed JSON therefore still classifies, and fails when decoded. See
    /// [How much is checked](RawJson#how-much-is-checked).
    ///
    /// For a frame from the framer, [`crate::Frame::message`] does the same work faster.
    ///
    /// ```
    /// use qmp_proto::Message;
    /// let frame = br#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#;
    /// let Message::Error(reply) = Message::parse(frame).unwrap() else { unreachable!() };
    /// assert!(reply.error.class == "CommandNotFound");
    /// assert_eq!(reply.id.unwrap().as_u64(), Some(3));
    /// ```
    pub fn parse(frame: &'a [u8]) -> Result<Self, MessageError> {
        parse_with_spans(frame, &Spans::default())
    }

    /// The id of a reply (`None` for greetings, events and id-less replies).
    pub fn id(&self) -> Option<RawJson<'a>> {
        match self {
            Message::Return(r) => r.id,
            Message::Error(e) => e.id,
            _ => None,
        }
    }
}

/// The top-level `id` of a frame that may not be a valid message, as far as it can be read:
/// used to tie a malformed reply to its command.
pub fn find_id(frame: &[u8]) -> Option<RawJson<'_>> {
    find_reply(frame).0
}

/// [`find_id`], and whether the frame reads as a reply as far as it can be read: a top-level
/// `return` or `error` member and no `event` (used to tie a malformed reply without an id to
/// the command sent without one).
pub(crate) fn find_reply(frame: &[u8]) -> (Option<RawJson<'_>>, bool) {
    let mut members = TopMembers::default();
    let _ = walk(frame, &Spans::default(), &mut members);
    let reply = (members.ret.is_some() || members.error.is_some()) && members.event.is_none();
    (members.id, reply)
}

/// A member of `object` picked out while it was validated, with the errors [`member`] gives.
fn found_member<'a>(
    text: &str,
    object: RawJson<'a>,
    found: Option<RawJson<'a>>,
    name: &'static str,
) -> Result<RawJson<'a>, MessageError> {
    if !matches!(object.kind(), crate::JsonKind::Object) {
        return Err(MessageError::InvalidMember {
            member: name.split('.').next().unwrap_or(name),
            offset: offset_in(text, object),
        });
    }
    found.ok_or(MessageError::MissingMember { member: name })
}

fn invalid(text: &str, value: RawJson<'_>, name: &'static str) -> MessageError {
    MessageError::InvalidMember {
        member: name,
        offset: offset_in(text, value),
    }
}

fn member<'a>(
    text: &str,
    object: RawJson<'a>,
    key: &str,
    name: &'static str,
) -> Result<RawJson<'a>, MessageError> {
    if !matches!(object.kind(), crate::JsonKind::Object) {
        // Report the enclosing object; `name` is dotted, its head is the parent.
        return Err(MessageError::InvalidMember {
            member: name.split('.').next().unwrap_or(name),
            offset: offset_in(text, object),
        });
    }
    object
        .get(key)
        .ok_or(MessageError::MissingMember { member: name })
}

fn string_member<'a>(
    text: &str,
    object: RawJson<'a>,
    key: &str,
    name: &'static str,
) -> Result<JsonStr<'a>, MessageError> {
    let value = member(text, object, key, name)?;
    value.as_str().ok_or(MessageError::InvalidMember {
        member: name,
        offset: offset_in(text, value),
    })
}

fn u64_member(
    text: &str,
    object: RawJson<'_>,
    key: &str,
    name: &'static str,
) -> Result<u64, MessageError> {
    let value = member(text, object, key, name)?;
    value.as_u64().ok_or(MessageError::InvalidMember {
        member: name,
        offset: offset_in(text, value),
    })
}

fn parse_greeting<'a>(text: &str, qmp: RawJson<'a>) -> Result<Greeting<'a>, MessageError> {
    let version = member(text, qmp, "version", "QMP.version")?;
    let qemu = member(text, version, "qemu", "QMP.version.qemu")?;
    let capabilities = member(text, qmp, "capabilities", "QMP.capabilities")?;
    let invalid_caps = MessageError::InvalidMember {
        member: "QMP.capabilities",
        offset: offset_in(text, capabilities),
    };
    if !matches!(capabilities.kind(), crate::JsonKind::Array)
        || capabilities.elements().any(|c| c.as_str().is_none())
    {
        return Err(invalid_caps);
    }
    Ok(Greeting {
        version: Version {
            major: u64_member(text, qemu, "major", "QMP.version.qemu.major")?,
            minor: u64_member(text, qemu, "minor", "QMP.version.qemu.minor")?,
            micro: u64_member(text, qemu, "micro", "QMP.version.qemu.micro")?,
            package: string_member(text, version, "package", "QMP.version.package")?,
        },
        capabilities: Capabilities { list: capabilities },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn parse(text: &str) -> Result<Message<'_>, MessageError> {
        Message::parse(text.as_bytes())
    }

    #[test]
    fn greeting_as_qemu_7_2_sends_it() {
        // Recorded from qemu-system-x86_64 7.2.22 (see tests/data/README.md).
        let Message::Greeting(g) = parse(
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (g.version.major, g.version.minor, g.version.micro),
            (7, 2, 22)
        );
        assert!(g.version.package == "Debian 1:7.2+dfsg-7+deb12u18+b3");
        assert!(g.capabilities.oob());
        assert_eq!(g.capabilities.iter().count(), 1);
    }

    #[test]
    fn keys_in_any_order_and_unknown_keys_ignored() {
        for text in [
            r#"{"return": {}, "id": 5}"#,
            r#"{"id": 5, "return": {}}"#,
            r#"{"x-new": [1, {"a": 2}], "id": 5, "return": {}, "__vendor": null}"#,
        ] {
            let Message::Return(r) = parse(text).unwrap() else {
                panic!("{text}")
            };
            assert_eq!(r.id.unwrap().as_u64(), Some(5));
            assert_eq!(r.value.as_json(), "{}");
        }
        let Message::Error(e) =
            parse(r#"{"error": {"desc": "d", "extra": 1, "class": "GenericError"}}"#).unwrap()
        else {
            panic!()
        };
        assert!(e.error.class == "GenericError" && e.error.desc == "d");
        assert!(e.id.is_none());
    }

    #[test]
    fn events_with_and_without_data() {
        let Message::Event(e) = parse(
            r#"{"timestamp": {"seconds": 1795596531, "microseconds": 804941}, "event": "STOP"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert!(e.name == "STOP");
        assert!(e.data.is_none());
        assert_eq!(e.timestamp.seconds, 1795596531);
        let Message::Event(e) = parse(
            r#"{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.timestamp.seconds, -1);
        assert_eq!(e.data.unwrap().get("guest").unwrap().as_bool(), Some(false));
    }

    #[test]
    fn ids_of_every_json_type_survive() {
        for id in [
            r#""abc""#,
            r#"{"a": [1]}"#,
            "[1, 2]",
            "-3",
            "0.10000000000000001",
            "inf",
            "-inf",
            "nan",
            "null",
            "true",
        ] {
            let mut text = heapless::String::<128>::new();
            use core::fmt::Write;
            write!(text, r#"{{"return": {{}}, "id": {id}}}"#).unwrap();
            let msg = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(msg.id().unwrap().as_json(), id);
        }
    }

    #[test]
    fn malformed_messages_get_specific_errors() {
        assert_eq!(parse(r#"{"foo": 1}"#), Err(MessageError::Unrecognized));
        assert_eq!(
            parse(r#"{"return": 1, "error": {}}"#),
            Err(MessageError::Ambiguous)
        );
        assert_eq!(
            parse(r#"{"error": {"class": "GenericError"}, "id": 1}"#),
            Err(MessageError::MissingMember {
                member: "error.desc"
            })
        );
        assert_eq!(
            parse(r#"{"event": "STOP"}"#),
            Err(MessageError::MissingMember {
                member: "timestamp"
            })
        );
        assert_eq!(
            parse(r#"{"event": 5, "timestamp": {"seconds": 1, "microseconds": 1}}"#),
            Err(MessageError::InvalidMember {
                member: "event",
                offset: 10
            })
        );
        assert_eq!(
            parse(r#"{"return": {}, "return": 1}"#),
            Err(MessageError::DuplicateMember {
                member: "return",
                offset: 25
            })
        );
        assert_eq!(
            parse(r#"{"return" {}}"#),
            Err(MessageError::Syntax { offset: 10 })
        );
        assert_eq!(
            Message::parse(b"{\"return\": \"\xff\"}"),
            Err(MessageError::InvalidUtf8 { offset: 12 })
        );
        assert_eq!(
            parse(
                r#"{"QMP": {"version": {"qemu": {"micro": -1, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#
            ),
            Err(MessageError::InvalidMember {
                member: "QMP.version.qemu.micro",
                offset: 39
            })
        );
    }

    #[test]
    fn the_id_of_a_broken_reply_can_still_be_found() {
        assert_eq!(
            find_id(br#"{"id": 9, "error": {"class": "X"}}"#).and_then(|i| i.as_u64()),
            Some(9)
        );
        assert_eq!(
            find_id(b"{\"id\": 4, \"return\": \"\xff\"}").and_then(|i| i.as_u64()),
            Some(4)
        );
        // A broken envelope hides the id…
        assert_eq!(find_id(br#"{"return" {"a": 1}, "id": 2}"#), None);
        // …but a broken payload is only skimmed, so the reply still classifies, and fails when
        // the value is validated or decoded.
        assert_eq!(
            find_id(br#"{"return": {"a" 1}, "id": 2}"#).and_then(|i| i.as_u64()),
            Some(2)
        );
    }

    #[test]
    fn payloads_are_checked_structurally_and_validated_on_demand() {
        let Ok(Message::Return(r)) = parse(r#"{"return": [1 2, {"a" 1}], "id": 2}"#) else {
            panic!()
        };
        assert_eq!(r.value.as_json(), r#"[1 2, {"a" 1}]"#);
        assert_eq!(r.value.validate(), Err(SyntaxError { offset: 3 }));
        assert!(r.value.deserialize::<[u8; 2]>().is_err());
        let Ok(Message::Event(e)) = parse(
            r#"{"event": "X", "data": {"a": tru}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
        ) else {
            panic!()
        };
        assert!(e.data.unwrap().validate().is_err());
        // What the framer would refuse is refused here too, at the same byte.
        for (text, offset) in [
            (r#"{"return": [1, 2}"#, 16),
            ("{\"return\": [\"a\tb\"]}", 14),
            (r#"{"return": {"a": [}"#, 18),
        ] {
            assert_eq!(parse(text), Err(MessageError::Syntax { offset }), "{text}");
        }
        // The envelope itself is still fully validated.
        assert_eq!(
            parse(r#"{"return": {}, "id": 01}"#),
            Err(MessageError::Syntax { offset: 22 })
        );
        assert_eq!(
            parse(r#"{"error": {"class": "X", "desc": "d", "n": 1.}, "id": 1}"#),
            Err(MessageError::Syntax { offset: 45 })
        );
        assert_eq!(
            parse(r#"{"event": "X", "timestamp": {"seconds": 1, "microseconds": 2,}}"#),
            Err(MessageError::Syntax { offset: 61 })
        );
    }

    /// Every frame of the recorded transcripts, and of `extra`, classifies the same through
    /// the canonical fast path as through the general walk; returns how many took the fast
    /// path.
    fn fast_path_agrees(recorded: bool, extra: &[&[u8]]) -> usize {
        let mut fast = 0;
        let mut framer = crate::Framer::new(std::vec![0u8; 256 * 1024]);
        let mut stream = std::vec::Vec::new();
        let names = [
            "greeting",
            "session",
            "errors",
            "oob",
            "pretty",
            "query-commands",
            "mixed-stream",
        ];
        for name in names.iter().filter(|_| recorded) {
            let path = std::format!("{}/tests/data/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
            stream.extend(std::fs::read(path).unwrap());
        }
        for message in extra {
            stream.extend_from_slice(message);
            stream.extend_from_slice(b"\r\n");
        }
        let mut rest = &stream[..];
        loop {
            let n = framer.feed(rest);
            rest = &rest[n..];
            let Some(item) = framer.next_frame() else {
                if rest.is_empty() {
                    break;
                }
                continue;
            };
            let Ok(frame) = item else { continue };
            let Ok(text) = core::str::from_utf8(frame.as_bytes()) else {
                continue;
            };
            let mut general = TopMembers::default();
            let general_result = walk_general(text, frame.spans(), &mut general);
            let mut canon = TopMembers::default();
            if canonical(text, frame.spans().as_slice(), &mut canon).is_some() {
                fast += 1;
                assert_eq!(general_result, Ok(()), "{text}");
                assert_eq!(canon, general, "{text}");
            }
            let mut chosen = TopMembers::default();
            assert_eq!(
                walk_text(text, frame.spans(), &mut chosen),
                general_result,
                "{text}"
            );
            assert_eq!(chosen, general, "{text}");
            assert_eq!(frame.message(), Message::parse(frame.as_bytes()), "{text}");
        }
        fast
    }

    #[test]
    fn the_fast_path_takes_qemu_output_and_agrees_with_the_general_walk() {
        let fast = fast_path_agrees(
            true,
            &[
                br#"{"return": "a\"b\u00e9", "id": 7}"#,
                br#"{"return": {}, "id": 0}"#,
                br#"{"id": 5, "return": [1, {"x": "}"}]}"#,
                br#"{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "X", "data": {}}"#,
                br#"{"error": {"class": "A", "desc": "\u0001"}}"#,
            ],
        );
        assert!(fast > 10_000, "{fast}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

        #[test]
        fn envelopes_near_the_canonical_shape_agree(
            members in proptest::collection::vec((0usize..10, 0usize..16), 0..5),
            sep in proptest::sample::select(std::vec![", ", ",", " , "]),
            colon in proptest::sample::select(std::vec![": ", ":", " :"]),
        ) {
            const KEYS: [&str; 10] = [
                "return", "id", "event", "data", "timestamp", "error", "QMP", "x-new", "ret\\u0075rn", "i",
            ];
            const VALUES: [&str; 16] = [
                "{}", "[1, 2]", r#"{"a": [}"#, "7", "-1", "01", "1.5", "1e3", r#""STOP""#,
                r#""a\nb""#, r#""bad\x""#, "true", r#"{"seconds": 1, "microseconds": 2}"#,
                r#"{"seconds": 1.5, "microseconds": 2}"#, r#"{"class": "C", "desc": "d"}"#,
                r#"{"class": "C", "desc": 5}"#,
            ];
            let mut text = std::string::String::from("{");
            for (i, &(key, value)) in members.iter().enumerate() {
                if i > 0 {
                    text.push_str(sep);
                }
                text.push('"');
                text.push_str(KEYS[key]);
                text.push('"');
                text.push_str(colon);
                text.push_str(VALUES[value]);
            }
            text.push('}');
            fast_path_agrees(false, &[text.as_bytes()]);
        }
    }

    #[test]
    fn escaped_keys_are_matched_by_meaning() {
        let Message::Return(r) = parse(r#"{"\u0072eturn": 1, "\u0069d": 2}"#).unwrap() else {
            panic!()
        };
        assert_eq!(r.id.unwrap().as_u64(), Some(2));
    }
}
