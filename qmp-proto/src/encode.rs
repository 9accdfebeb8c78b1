//! Encoding commands into caller buffers.
//!
//! Arguments are any `serde::Serialize` value that serializes to a JSON object (or to nothing:
//! `()` or `None` mean "no arguments"). The output is compact JSON that QEMU accepts: strings
//! are escaped (`"`, `\`, and every control character), other text is passed as UTF-8, and
//! non-finite floats are refused rather than written as invalid JSON.
//!
//! Every function measures first and writes second, so on error the buffer is untouched and
//! [`EncodeError::BufferTooSmall`] says how many bytes the command needs. (The one exception:
//! a value whose `Serialize` or `Display` writes something else the second time it is asked
//! is refused with [`EncodeError::Custom`] after the second pass, so the buffer may then hold
//! part of it; it never yields a length longer than the buffer.)

use core::fmt;

use serde::ser::{self, Serialize};

mod serializer;

use serializer::{Out, Serializer};

/// Why a command could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small; the command needs `needed` bytes.
    BufferTooSmall {
        /// Bytes the encoded command occupies.
        needed: usize,
    },
    /// The arguments serialize to something other than an object.
    ArgumentsNotObject,
    /// A value JSON cannot represent: a non-finite float, or a map key that is not a string,
    /// integer, bool or char.
    Unsupported(&'static str),
    /// The value's `Serialize` implementation failed (its message is not kept: no
    /// allocation), or wrote something else the second time (see the module docs).
    Custom,
    /// The command nests objects and arrays `depth` deep (its own braces included), deeper
    /// than QEMU's JSON parser accepts ([`QEMU_MAX_NESTING`]). QEMU would answer it with
    /// id-less parse errors, one for each stray bracket after the limit, not a reply.
    TooDeep {
        /// The command's nesting depth.
        depth: usize,
    },
    /// The command is `len` bytes, more than QEMU's JSON parser accepts in one message
    /// ([`QEMU_MAX_MESSAGE`]).
    TooLarge {
        /// Bytes the encoded command occupies.
        len: usize,
    },
}

/// How deep QEMU's JSON parser lets a message nest objects and arrays, counting the
/// message's own braces (`MAX_NESTING` in QEMU's `qobject/json-streamer.c`).
pub const QEMU_MAX_NESTING: usize = 1024;

/// The most bytes of JSON tokens QEMU's parser takes in one message (`MAX_TOKEN_SIZE`); our
/// compact encoding writes no whitespace, so this bounds the encoded command.
pub const QEMU_MAX_MESSAGE: usize = 64 << 20;

/// The most tokens QEMU's parser takes in one message (`MAX_TOKEN_COUNT`). Every token is at
/// least one byte, so a command this long or shorter never reaches the limit.
pub const QEMU_MAX_TOKENS: usize = 2 << 20;

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
            Self::ArgumentsNotObject => f.write_str("command arguments must be a JSON object"),
            Self::Unsupported(what) => write!(f, "cannot encode {what} as JSON"),
            Self::Custom => f.write_str("the value's Serialize implementation failed"),
            Self::TooDeep { depth } => write!(
                f,
                "command nests {depth} deep; QEMU accepts at most {QEMU_MAX_NESTING}"
            ),
            Self::TooLarge { len } => write!(
                f,
                "command is {len} bytes; QEMU accepts at most {QEMU_MAX_MESSAGE}"
            ),
        }
    }
}

impl core::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        EncodeError::Custom
    }
}

/// Encodes `value` as JSON into `out`; see the module docs.
///
/// ```
/// let mut buf = [0u8; 64];
/// let n = qmp_proto::encode_json(&("a\"b", 1, [true]), &mut buf).unwrap();
/// assert_eq!(&buf[..n], br#"["a\"b",1,[true]]"#);
/// ```
pub fn encode_json<T: Serialize + ?Sized>(value: &T, out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_with(out, false, |o| {
        value.serialize(&mut Serializer { out: o }).map(|_| ())
    })
}

/// Measures, then writes: on error `buf` is untouched. With `qemu_limits`, a message QEMU's
/// parser would refuse (too deep, too large) is refused here.
fn encode_with(
    buf: &mut [u8],
    qemu_limits: bool,
    mut write: impl FnMut(&mut Out<'_>) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    let mut measure = Out::new(&mut []);
    write(&mut measure)?;
    write_measured(buf, qemu_limits, &measure, write)
}

/// The second half of [`encode_with`]: checks what `measure` counted, then writes.
fn write_measured(
    buf: &mut [u8],
    qemu_limits: bool,
    measure: &Out<'_>,
    mut write: impl FnMut(&mut Out<'_>) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    if qemu_limits && measure.max_depth > QEMU_MAX_NESTING {
        return Err(EncodeError::TooDeep {
            depth: measure.max_depth,
        });
    }
    if qemu_limits && measure.len > QEMU_MAX_MESSAGE {
        return Err(EncodeError::TooLarge { len: measure.len });
    }
    if measure.len > buf.len() {
        return Err(EncodeError::BufferTooSmall {
            needed: measure.len,
        });
    }
    let mut out = Out::new(buf);
    write(&mut out)?;
    // A value that serialized differently the second time (a `Serialize` or `Display` with
    // side effects) must not be reported as written: the bytes may not all be there.
    if out.len != measure.len {
        return Err(EncodeError::Custom);
    }
    Ok(out.len)
}

/// Which envelope a command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Envelope {
    /// `{"execute": …}`: queued and run in order.
    Execute,
    /// `{"exec-oob": …}`: run out of band (needs the `oob` capability negotiated).
    ExecOob,
}

/// Encodes a command: `{"execute":NAME,"arguments":ARGS,"id":ID}`.
///
/// `arguments` must serialize to an object, or to `null` (`&()`, `&None::<T>`) for none. The
/// id is optional; the session always sets one.
///
/// ```
/// use qmp_proto::{encode_command, Envelope};
/// #[derive(serde::Serialize)]
/// struct HmpArgs<'a> { #[serde(rename = "command-line")] command_line: &'a str }
/// let mut buf = [0u8; 128];
/// let n = encode_command(&mut buf, Envelope::Execute, "human-monitor-command",
///     &HmpArgs { command_line: "info \"status\"" }, Some(7)).unwrap();
/// assert_eq!(&buf[..n], br#"{"execute":"human-monitor-command","arguments":{"command-line":"info \"status\""},"id":7}"#);
/// let n = encode_command(&mut buf, Envelope::ExecOob, "query-status", &(), None).unwrap();
/// assert_eq!(&buf[..n], br#"{"exec-oob":"query-status"}"#);
/// ```
pub fn encode_command<A: Serialize + ?Sized>(
    buf: &mut [u8],
    envelope: Envelope,
    name: &str,
    arguments: &A,
    id: Option<u64>,
) -> Result<usize, EncodeError> {
    encode_command_tagged_past(buf, envelope, name, arguments, id, 0).map(|(len, _)| len)
}

/// [`encode_command`], with the id written only if the command without it is longer than
/// `untagged_up_to` bytes (the measuring pass decides, so nothing is encoded twice); returns
/// the length and whether the id went on.
pub(crate) fn encode_command_tagged_past<A: Serialize + ?Sized>(
    buf: &mut [u8],
    envelope: Envelope,
    name: &str,
    arguments: &A,
    id: Option<u64>,
    untagged_up_to: usize,
) -> Result<(usize, bool), EncodeError> {
    let has_arguments = probe_arguments(arguments)?;
    let write = |out: &mut Out<'_>, id: Option<u64>| {
        out.open(
            match envelope {
                Envelope::Execute => b"{\"execute\":\"",
                Envelope::ExecOob => b"{\"exec-oob\":\"",
            },
            1,
        );
        out.put_escaped(name);
        out.put(b"\"");
        if has_arguments {
            out.put(b",\"arguments\":");
            arguments.serialize(&mut Serializer { out: &mut *out })?;
        }
        if let Some(id) = id {
            out.put_id(id);
        }
        out.close(b"}");
        Ok(())
    };
    let mut measure = Out::new(&mut []);
    write(&mut measure, None)?;
    let id = id.filter(|_| measure.len > untagged_up_to);
    if let Some(id) = id {
        // Only the count matters here: the id goes before the closing brace when written.
        measure.put_id(id);
    }
    let len = write_measured(buf, true, &measure, |out| write(out, id))?;
    Ok((len, id.is_some()))
}

/// Whether `arguments` serialize to an object (`true`) or to `null` (`false`); anything else
/// is an error.
fn probe_arguments<A: Serialize + ?Sized>(arguments: &A) -> Result<bool, EncodeError> {
    let mut head = [0u8; 4];
    let mut out = Out::new(&mut head);
    arguments.serialize(&mut Serializer { out: &mut out })?;
    let len = out.len;
    match head {
        _ if len == 4 && &head == b"null" => Ok(false),
        [b'{', ..] => Ok(true),
        _ => Err(EncodeError::ArgumentsNotObject),
    }
}

/// Encodes capability negotiation: `{"execute":"qmp_capabilities"}`, with
/// `"arguments":{"enable":["oob"]}` when `oob` is set.
///
/// ```
/// let mut buf = [0u8; 96];
/// let n = qmp_proto::encode_capabilities(&mut buf, true, Some(1)).unwrap();
/// assert_eq!(&buf[..n], br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#);
/// ```
pub fn encode_capabilities(
    buf: &mut [u8],
    oob: bool,
    id: Option<u64>,
) -> Result<usize, EncodeError> {
    #[derive(serde::Serialize)]
    struct Enable {
        enable: [&'static str; 1],
    }
    if oob {
        encode_command(
            buf,
            Envelope::Execute,
            "qmp_capabilities",
            &Enable { enable: ["oob"] },
            id,
        )
    } else {
        encode_command(buf, Envelope::Execute, "qmp_capabilities", &(), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::RawJson;

    #[track_caller]
    fn encode<T: Serialize + ?Sized>(v: &T) -> heapless::String<256> {
        let mut buf = [0u8; 256];
        let n = encode_json(v, &mut buf).unwrap();
        let s = core::str::from_utf8(&buf[..n]).unwrap();
        // Everything written must be valid JSON.
        RawJson::parse(s).unwrap();
        heapless::String::try_from(s).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        assert_eq!(
            encode("a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}"),
            r#""a\"b\\c\n\r\t\b\f\u0001\u001f""#
        );
        assert_eq!(encode("é😀/"), "\"é😀/\"");
        assert_eq!(encode(&'"'), r#""\"""#);
    }

    #[test]
    fn numbers_and_floats() {
        assert_eq!(
            encode(&(0u8, u64::MAX, i64::MIN, -1i32)),
            "[0,18446744073709551615,-9223372036854775808,-1]"
        );
        assert_eq!(
            encode(&(0.1f64, 1e300f64, -2.5f32, 1.0f64)),
            "[0.1,1e300,-2.5,1.0]"
        );
        let mut buf = [0u8; 16];
        assert_eq!(
            encode_json(&f64::NAN, &mut buf),
            Err(EncodeError::Unsupported("a non-finite float"))
        );
        assert_eq!(
            encode_json(&f64::INFINITY, &mut buf),
            Err(EncodeError::Unsupported("a non-finite float"))
        );
    }

    #[test]
    fn enums_and_options_follow_serde_json_conventions() {
        #[derive(serde::Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, u8),
            Struct { a: u8 },
        }
        assert_eq!(
            encode(&[E::Unit, E::New(1), E::Tuple(1, 2), E::Struct { a: 3 }]),
            r#"["Unit",{"New":1},{"Tuple":[1,2]},{"Struct":{"a":3}}]"#
        );
        assert_eq!(encode(&(None::<u8>, Some(2u8), ())), "[null,2,null]");
        assert_eq!(encode(&b"ab"[..]), "[97,98]");
    }

    #[test]
    fn map_keys_are_strings() {
        let map: heapless::index_map::FnvIndexMap<u32, bool, 4> =
            [(1, true), (2, false)].into_iter().collect();
        assert_eq!(encode(&map), r#"{"1":true,"2":false}"#);
        let bad: heapless::index_map::FnvIndexMap<heapless::Vec<u8, 2>, bool, 2> =
            [(heapless::Vec::new(), true)].into_iter().collect();
        let mut buf = [0u8; 16];
        assert!(matches!(
            encode_json(&bad, &mut buf),
            Err(EncodeError::Unsupported(_))
        ));
    }

    #[test]
    fn commands_with_and_without_arguments() {
        let mut buf = [0u8; 128];
        let n = encode_command(&mut buf, Envelope::Execute, "query-status", &(), Some(1)).unwrap();
        assert_eq!(&buf[..n], br#"{"execute":"query-status","id":1}"#);
        let n = encode_command(&mut buf, Envelope::Execute, "stop", &None::<()>, None).unwrap();
        assert_eq!(&buf[..n], br#"{"execute":"stop"}"#);
        #[derive(serde::Serialize)]
        struct Path<'a> {
            path: &'a str,
        }
        let n = encode_command(
            &mut buf,
            Envelope::ExecOob,
            "qom-list",
            &Path { path: "/machine" },
            Some(u64::MAX),
        )
        .unwrap();
        assert_eq!(
            &buf[..n],
            br#"{"exec-oob":"qom-list","arguments":{"path":"/machine"},"id":18446744073709551615}"#
        );
        assert_eq!(
            encode_command(&mut buf, Envelope::Execute, "x", &[1], None),
            Err(EncodeError::ArgumentsNotObject)
        );
        assert_eq!(
            encode_command(&mut buf, Envelope::Execute, "x", &"str", None),
            Err(EncodeError::ArgumentsNotObject)
        );
    }

    #[test]
    fn too_small_buffer_is_untouched_and_says_what_it_needs() {
        let mut buf = [b'#'; 20];
        assert_eq!(
            encode_capabilities(&mut buf, true, Some(1)),
            Err(EncodeError::BufferTooSmall { needed: 68 })
        );
        assert_eq!(buf, [b'#'; 20]);
        let mut exact = [0u8; 68];
        assert_eq!(encode_capabilities(&mut exact, true, Some(1)), Ok(68));
    }

    /// `[[…[0]…]]`, `levels` arrays deep.
    struct Nest(usize);
    impl Serialize for Nest {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeSeq;
            if self.0 == 0 {
                return s.serialize_u8(0);
            }
            let mut seq = s.serialize_seq(Some(1))?;
            seq.serialize_element(&Nest(self.0 - 1))?;
            seq.end()
        }
    }

    #[derive(serde::Serialize)]
    struct Args<T> {
        a: T,
    }

    #[derive(serde::Serialize)]
    enum Wrap {
        V(Nest),
    }

    #[test]
    fn commands_nested_deeper_than_qemu_takes_are_refused() {
        let mut buf = [b'#'; 4096];
        // The command's own brace and the arguments' make two levels.
        let n = encode_command(
            &mut buf,
            Envelope::Execute,
            "x",
            &Args { a: Nest(1022) },
            None,
        )
        .unwrap();
        assert!(buf[..n].ends_with(&[[b']'; 1022].as_slice(), b"}}"].concat()));
        buf.fill(b'#');
        let e = encode_command(
            &mut buf,
            Envelope::Execute,
            "x",
            &Args { a: Nest(1023) },
            None,
        );
        assert_eq!(e, Err(EncodeError::TooDeep { depth: 1025 }));
        assert_eq!(buf, [b'#'; 4096]);
        // An enum variant's object is a level too.
        let wrapped = |n| Args {
            a: Wrap::V(Nest(n)),
        };
        assert!(encode_command(&mut buf, Envelope::ExecOob, "x", &wrapped(1021), Some(1)).is_ok());
        assert_eq!(
            encode_command(&mut buf, Envelope::ExecOob, "x", &wrapped(1022), Some(1)),
            Err(EncodeError::TooDeep { depth: 1025 })
        );
        // Depth is the deepest point, not the number of brackets.
        let wide = Args {
            a: [Nest(600), Nest(600), Nest(600)],
        };
        assert!(encode_command(&mut buf, Envelope::Execute, "x", &wide, None).is_ok());
        // Plain JSON values have no QEMU to answer to.
        assert!(encode_json(&Nest(2000), &mut buf).is_ok());
    }

    /// A string of `len` bytes, written a piece at a time through `collect_str`.
    struct Long(usize);
    impl Serialize for Long {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            struct Text(usize);
            impl fmt::Display for Text {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    const PIECE: &str = match core::str::from_utf8(&[b'a'; 4096]) {
                        Ok(s) => s,
                        Err(_) => panic!(),
                    };
                    let mut left = self.0;
                    while left > 0 {
                        let n = left.min(PIECE.len());
                        f.write_str(&PIECE[..n])?;
                        left -= n;
                    }
                    Ok(())
                }
            }
            s.collect_str(&Text(self.0))
        }
    }

    #[test]
    fn commands_longer_than_qemu_takes_are_refused() {
        let mut buf = [b'#'; 64];
        // `{"execute":"x","arguments":{"a":"…"}}` is 36 bytes around the string.
        let e = encode_command(
            &mut buf,
            Envelope::Execute,
            "x",
            &Args {
                a: Long(QEMU_MAX_MESSAGE - 36),
            },
            None,
        );
        assert_eq!(
            e,
            Err(EncodeError::BufferTooSmall {
                needed: QEMU_MAX_MESSAGE
            })
        );
        let e = encode_command(
            &mut buf,
            Envelope::Execute,
            "x",
            &Args {
                a: Long(QEMU_MAX_MESSAGE - 35),
            },
            None,
        );
        assert_eq!(
            e,
            Err(EncodeError::TooLarge {
                len: QEMU_MAX_MESSAGE + 1
            })
        );
        assert_eq!(buf, [b'#'; 64]);
    }
}
