//! Arbitrary values (strings, integers, floats, bytes, chars, nested arrays and maps, enum
//! variants, `Display` values written in pieces) encoded with [`encode_json`] and
//! [`encode_command`], then read back with [`RawJson::parse`].
//!
//! Checks: the output is valid JSON and means exactly the input (strings unescape to the same
//! text, numbers read back equal, structure and key order kept); non-finite floats and
//! non-object arguments are refused; a buffer that is too small is left untouched and the
//! error names the exact size needed; a command is one whole frame for `find_frame`.
#![no_main]

use std::fmt;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use qmp_proto::{
    EncodeError, Envelope, JsonKind, RawJson, FrameStatus, encode_command, encode_json, find_frame,
};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Deeper than this and the reader (and the framer) refuse the text by design.
const MAX_DEPTH: u32 = 60;

const VARIANTS: [&str; 4] = ["plain", "with \"quote\"", "caf\u{e9}", "ctl\u{1}"];

#[derive(Debug)]
enum Value {
    Null,
    Unit,
    Bool(bool),
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    F32(f32),
    Str(String),
    Char(char),
    /// Written through `collect_str`, one `write_str` per piece.
    Display(Vec<String>),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Object(Vec<(Key, Value)>),
    /// `{"variant": value}`.
    Newtype(usize, Box<Value>),
}

#[derive(Debug)]
enum Key {
    Str(String),
    U64(u64),
    I64(i64),
    Bool(bool),
    Char(char),
}

impl Key {
    fn arbitrary(u: &mut Unstructured<'_>) -> arbitrary::Result<Key> {
        Ok(match u.int_in_range(0..=5)? {
            0 => Key::U64(u.arbitrary()?),
            1 => Key::I64(u.arbitrary()?),
            2 => Key::Bool(u.arbitrary()?),
            3 => Key::Char(u.arbitrary()?),
            _ => Key::Str(u.arbitrary()?),
        })
    }

    fn text(&self) -> String {
        match self {
            Key::Str(s) => s.clone(),
            Key::U64(v) => v.to_string(),
            Key::I64(v) => v.to_string(),
            Key::Bool(v) => v.to_string(),
            Key::Char(c) => c.to_string(),
        }
    }
}

impl Value {
    fn arbitrary(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
        let max = if depth >= MAX_DEPTH { 12 } else { 15 };
        Ok(match u.int_in_range(0..=max)? {
            0 => Value::Null,
            1 => Value::Unit,
            2 => Value::Bool(u.arbitrary()?),
            3 => Value::I64(u.arbitrary()?),
            4 => Value::U64(u.arbitrary()?),
            5 => Value::I128(u.arbitrary()?),
            6 => Value::U128(u.arbitrary()?),
            7 => Value::F64(u.arbitrary()?),
            8 => Value::F32(u.arbitrary()?),
            9 => Value::Char(u.arbitrary()?),
            10 => Value::Display(u.arbitrary()?),
            11 => Value::Bytes(u.arbitrary()?),
            12 => Value::Str(u.arbitrary()?),
            13 => Value::Newtype(
                u.choose_index(VARIANTS.len())?,
                Box::new(Value::arbitrary(u, depth + 1)?),
            ),
            14 => {
                let mut items = Vec::new();
                while items.len() < 64 && u.arbitrary::<bool>()? {
                    items.push(Value::arbitrary(u, depth + 1)?);
                }
                Value::Array(items)
            }
            _ => Value::Object(object(u, depth)?),
        })
    }

    fn non_finite(&self) -> bool {
        match self {
            Value::F64(v) => !v.is_finite(),
            Value::F32(v) => !v.is_finite(),
            Value::Array(items) => items.iter().any(Value::non_finite),
            Value::Object(members) => members.iter().any(|(_, v)| v.non_finite()),
            Value::Newtype(_, v) => v.non_finite(),
            _ => false,
        }
    }

    fn depth(&self) -> u32 {
        match self {
            Value::Bytes(_) => 1,
            Value::Array(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Object(members) => 1 + members.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            Value::Newtype(_, v) => 1 + v.depth(),
            _ => 0,
        }
    }

    /// Checks that `raw` means exactly `self`.
    fn check(&self, raw: RawJson<'_>) {
        let text = raw.as_json();
        match self {
            Value::Null | Value::Unit => assert!(raw.is_null(), "{text}"),
            Value::Bool(b) => assert_eq!(raw.as_bool(), Some(*b)),
            Value::I64(v) => {
                assert_eq!(raw.as_i64(), Some(*v));
                assert_eq!(raw.as_u64(), u64::try_from(*v).ok());
            }
            Value::U64(v) => assert_eq!(raw.as_u64(), Some(*v)),
            Value::I128(v) => assert_eq!(text, v.to_string()),
            Value::U128(v) => assert_eq!(text, v.to_string()),
            Value::F64(v) => {
                assert_eq!(raw.kind(), JsonKind::Number);
                assert_eq!(
                    text.parse::<f64>().map(f64::to_bits),
                    Ok(v.to_bits()),
                    "{text}"
                );
            }
            Value::F32(v) => {
                assert_eq!(raw.kind(), JsonKind::Number);
                assert_eq!(
                    text.parse::<f32>().map(f32::to_bits),
                    Ok(v.to_bits()),
                    "{text}"
                );
            }
            Value::Str(s) => check_str(raw, s),
            Value::Char(c) => check_str(raw, &c.to_string()),
            Value::Display(parts) => check_str(raw, &parts.concat()),
            Value::Bytes(bytes) => {
                let got: Vec<Option<u64>> = raw.elements().map(|e| e.as_u64()).collect();
                let want: Vec<Option<u64>> = bytes.iter().map(|&b| Some(u64::from(b))).collect();
                assert_eq!(got, want);
            }
            Value::Array(items) => {
                assert_eq!(raw.kind(), JsonKind::Array);
                assert_eq!(raw.elements().count(), items.len());
                for (item, element) in items.iter().zip(raw.elements()) {
                    item.check(element);
                }
            }
            Value::Object(members) => check_object(raw, members),
            Value::Newtype(variant, inner) => {
                let mut it = raw.members();
                let (key, value) = it.next().expect("one member");
                assert!(key == VARIANTS[*variant]);
                inner.check(value);
                assert!(it.next().is_none());
            }
        }
    }
}

fn object(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Vec<(Key, Value)>> {
    let mut members = Vec::new();
    while members.len() < 64 && u.arbitrary::<bool>()? {
        members.push((Key::arbitrary(u)?, Value::arbitrary(u, depth + 1)?));
    }
    Ok(members)
}

fn check_str(raw: RawJson<'_>, want: &str) {
    let s = raw.as_str().expect("a string");
    let mut buf = vec![0u8; want.len()];
    assert_eq!(s.unescape_into(&mut buf), Ok(want));
    assert!(s.eq_str(want));
    // Only `"`, `\` and control characters are escaped; all else is passed through.
    let escapes = s.as_escaped().matches('\\').count();
    let needed = want
        .bytes()
        .filter(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .count();
    assert_eq!(escapes, needed + want.matches('\\').count(), "{s:?}");
}

fn check_object(raw: RawJson<'_>, members: &[(Key, Value)]) {
    assert_eq!(raw.kind(), JsonKind::Object);
    assert_eq!(raw.members().count(), members.len());
    for ((key, value), (k, v)) in members.iter().zip(raw.members()) {
        let mut buf = vec![0u8; key.text().len()];
        assert_eq!(k.unescape_into(&mut buf), Ok(key.text().as_str()));
        value.check(v);
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Key::Str(v) => s.serialize_str(v),
            Key::U64(v) => s.serialize_u64(*v),
            Key::I64(v) => s.serialize_i64(*v),
            Key::Bool(v) => s.serialize_bool(*v),
            Key::Char(v) => s.serialize_char(*v),
        }
    }
}

/// A value that writes one text, then the other, then the first again…: `Serialize` and
/// `Display` implementations can have side effects, and the encoder asks twice.
struct Flaky {
    texts: [String; 2],
    calls: std::cell::Cell<usize>,
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.calls.get();
        self.calls.set(n + 1);
        f.write_str(&self.texts[n % 2])
    }
}

impl Serialize for Flaky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

struct Pieces<'a>(&'a [String]);

impl fmt::Display for Pieces<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|p| f.write_str(p))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::Unit => s.serialize_unit(),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::I64(v) => s.serialize_i64(*v),
            Value::U64(v) => s.serialize_u64(*v),
            Value::I128(v) => s.serialize_i128(*v),
            Value::U128(v) => s.serialize_u128(*v),
            Value::F64(v) => s.serialize_f64(*v),
            Value::F32(v) => s.serialize_f32(*v),
            Value::Str(v) => s.serialize_str(v),
            Value::Char(v) => s.serialize_char(*v),
            Value::Display(parts) => s.collect_str(&Pieces(parts)),
            Value::Bytes(v) => s.serialize_bytes(v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Value::Newtype(variant, inner) => {
                s.serialize_newtype_variant("E", *variant as u32, VARIANTS[*variant], &**inner)
            }
        }
    }
}

/// Encodes with `encode`, checking the too-small and roomy-buffer behaviour on the way, and
/// returns the output.
fn encode_checked(
    small: usize,
    encode: impl Fn(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    let needed = match encode(&mut []) {
        Err(EncodeError::BufferTooSmall { needed }) => needed,
        Err(other) => return Err(other),
        Ok(n) => panic!("{n} bytes written into an empty buffer"),
    };
    // Too small: untouched, and the same size asked for.
    let mut short = vec![0xA5u8; small % needed];
    assert_eq!(
        encode(&mut short),
        Err(EncodeError::BufferTooSmall { needed })
    );
    assert!(short.iter().all(|&b| b == 0xA5));
    // Roomy: exactly `needed` bytes written, the rest untouched.
    let mut roomy = vec![0xA5u8; needed + 16];
    assert_eq!(encode(&mut roomy), Ok(needed));
    assert!(roomy[needed..].iter().all(|&b| b == 0xA5));
    roomy.truncate(needed);
    // Exact.
    let mut exact = vec![0u8; needed];
    assert_eq!(encode(&mut exact), Ok(needed));
    assert_eq!(exact, roomy);
    Ok(exact)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(small) = u.arbitrary::<u16>() else {
        return;
    };
    let small = usize::from(small);

    // A bare value.
    let Ok(value) = Value::arbitrary(&mut u, 0) else {
        return;
    };
    match encode_checked(small, |buf| encode_json(&value, buf)) {
        Ok(out) => {
            assert!(!value.non_finite());
            let text = std::str::from_utf8(&out).expect("UTF-8 output");
            let raw = RawJson::parse(text).unwrap_or_else(|e| panic!("{e} in {text}"));
            value.check(raw);
        }
        Err(e) => {
            assert!(value.non_finite(), "{e:?}");
            assert_eq!(e, EncodeError::Unsupported("a non-finite float"));
        }
    }

    // A value that changes between the measuring and the writing pass: whatever comes out,
    // never a length longer than the buffer.
    if let (Ok(a), Ok(b)) = (u.arbitrary::<String>(), u.arbitrary::<String>()) {
        let flaky = Flaky {
            texts: [a, b],
            calls: std::cell::Cell::new(0),
        };
        let mut buf = vec![0u8; small % 512];
        match encode_json(&flaky, &mut buf) {
            Ok(n) => {
                assert!(n <= buf.len());
                let text = std::str::from_utf8(&buf[..n]).expect("UTF-8 output");
                RawJson::parse(text).unwrap_or_else(|e| panic!("{e} in {text}"));
            }
            Err(e) => assert!(
                matches!(e, EncodeError::Custom | EncodeError::BufferTooSmall { .. }),
                "{e:?}"
            ),
        }
    }

    // A command.
    let (Ok(name), Ok(oob), Ok(id)) = (
        u.arbitrary::<String>(),
        u.arbitrary::<bool>(),
        u.arbitrary::<Option<u64>>(),
    ) else {
        return;
    };
    let envelope = if oob {
        Envelope::ExecOob
    } else {
        Envelope::Execute
    };
    let arguments = match u.int_in_range(0..=3) {
        Ok(0) => Value::Unit,
        Ok(1) => Value::Null,
        Ok(2) => match object(&mut u, 1) {
            Ok(members) => Value::Object(members),
            Err(_) => return,
        },
        _ => match Value::arbitrary(&mut u, 1) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    let result = encode_checked(small, |buf| {
        encode_command(buf, envelope, &name, &arguments, id)
    });
    let expect_arguments = match &arguments {
        _ if arguments.non_finite() => {
            assert_eq!(result, Err(EncodeError::Unsupported("a non-finite float")));
            return;
        }
        Value::Null | Value::Unit => false,
        // Objects, and enum variants with data (`{"variant": …}`).
        Value::Object(_) | Value::Newtype(..) => true,
        _ => {
            assert_eq!(result, Err(EncodeError::ArgumentsNotObject));
            return;
        }
    };
    let out = result.expect("a command");
    let text = std::str::from_utf8(&out).expect("UTF-8 output");
    let raw = RawJson::parse(text).unwrap_or_else(|e| panic!("{e} in {text}"));
    let mut members = raw.members();
    let (key, value) = members.next().expect("the envelope");
    assert!(key == if oob { "exec-oob" } else { "execute" });
    check_str(value, &name);
    if expect_arguments {
        let (key, value) = members.next().expect("arguments");
        assert!(key == "arguments");
        arguments.check(value);
    }
    match id {
        Some(id) => {
            let (key, value) = members.next().expect("the id");
            assert!(key == "id");
            assert_eq!(value.as_u64(), Some(id));
        }
        None => assert!(raw.get("id").is_none()),
    }
    assert!(members.next().is_none());
    if arguments.depth() < 60 {
        assert_eq!(
            find_frame(&out),
            Ok(FrameStatus::Complete {
                start: 0,
                end: out.len()
            })
        );
    }
});
