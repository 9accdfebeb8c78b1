//! Message views: classifying one frame into a greeting, a reply or an event, without copying.
//!
//! Keys may come in any order (QEMU writes `id` last in returns and first in errors) and
//! unknown keys are ignored, as the QMP specification asks of clients.

use core::fmt;

use crate::json::{Cursor, JsonStr, RawJson, SyntaxError};

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

impl fmt::Display for QmpError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
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

/// The top-level members classification cares about.
#[derive(Default)]
struct Members<'a> {
    qmp: Option<RawJson<'a>>,
    ret: Option<RawJson<'a>>,
    error: Option<RawJson<'a>>,
    id: Option<RawJson<'a>>,
    event: Option<RawJson<'a>>,
    data: Option<RawJson<'a>>,
    timestamp: Option<RawJson<'a>>,
}

const KEYS: [&str; 7] = ["QMP", "return", "error", "id", "event", "data", "timestamp"];

impl<'a> Members<'a> {
    fn slot(&mut self, index: usize) -> &mut Option<RawJson<'a>> {
        match index {
            0 => &mut self.qmp,
            1 => &mut self.ret,
            2 => &mut self.error,
            3 => &mut self.id,
            4 => &mut self.event,
            5 => &mut self.data,
            _ => &mut self.timestamp,
        }
    }
}

fn key_index(key: JsonStr<'_>) -> Option<usize> {
    match key.as_plain() {
        Some(plain) => KEYS.iter().position(|k| *k == plain),
        None => KEYS.iter().position(|k| key.eq_str(k)),
    }
}

/// Offset of `inner` within `outer` (both views of the same frame).
fn offset_in(outer: &str, inner: RawJson<'_>) -> usize {
    (inner.as_json().as_ptr() as usize).saturating_sub(outer.as_ptr() as usize)
}

/// Walks a frame's top-level members. On a syntax error the members seen so far are returned
/// with the error, so that even a broken reply can be tied to its id.
fn walk(frame: &[u8]) -> (Members<'_>, &str, Result<(), MessageError>) {
    let mut members = Members::default();
    let text = match core::str::from_utf8(frame) {
        Ok(text) => text,
        Err(e) => {
            // Walk the valid prefix for an id, then report the encoding error.
            let valid = core::str::from_utf8(&frame[..e.valid_up_to()]).unwrap_or("");
            let (prefix, _, _) = walk_text(valid);
            members.id = prefix.id;
            let error = MessageError::InvalidUtf8 {
                offset: e.valid_up_to(),
            };
            return (members, valid, Err(error));
        }
    };
    walk_text(text)
}

fn walk_text(text: &str) -> (Members<'_>, &str, Result<(), MessageError>) {
    let mut members = Members::default();
    let mut cur = Cursor::new(text);
    let result = (|| {
        cur.skip_ws();
        cur.expect(b'{')?;
        let mut first = true;
        while let Some((key, value)) = cur.next_member(first)? {
            first = false;
            if let Some(index) = key_index(key) {
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
    })();
    (members, text, result)
}

impl<'a> Message<'a> {
    /// Classifies one frame (a complete JSON object, as [`crate::Framer`] yields).
    ///
    /// ```
    /// use qmp_proto::Message;
    /// let frame = br#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#;
    /// let Message::Error(reply) = Message::parse(frame).unwrap() else { unreachable!() };
    /// assert!(reply.error.class == "CommandNotFound");
    /// assert_eq!(reply.id.unwrap().as_u64(), Some(3));
    /// ```
    pub fn parse(frame: &'a [u8]) -> Result<Self, MessageError> {
        let (m, text, result) = walk(frame);
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
            let class = string_member(text, error, "class", "error.class")?;
            let desc = string_member(text, error, "desc", "error.desc")?;
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
        let seconds = i64_member(text, timestamp, "seconds", "timestamp.seconds")?;
        let microseconds = i64_member(text, timestamp, "microseconds", "timestamp.microseconds")?;
        Ok(Message::Event(Event {
            name,
            data: m.data,
            timestamp: Timestamp {
                seconds,
                microseconds,
            },
        }))
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
    walk(frame).0.id
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

fn i64_member(
    text: &str,
    object: RawJson<'_>,
    key: &str,
    name: &'static str,
) -> Result<i64, MessageError> {
    let value = member(text, object, key, name)?;
    value.as_i64().ok_or(MessageError::InvalidMember {
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
        assert_eq!(find_id(br#"{"return": {"a" 1}, "id": 2}"#), None);
    }

    #[test]
    fn escaped_keys_are_matched_by_meaning() {
        let Message::Return(r) = parse(r#"{"\u0072eturn": 1, "\u0069d": 2}"#).unwrap() else {
            panic!()
        };
        assert_eq!(r.id.unwrap().as_u64(), Some(2));
    }
}
