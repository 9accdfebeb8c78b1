//! Borrowed JSON views: escaped strings ([`JsonStr`]), raw values ([`RawJson`]), and the
//! validating cursor that message classification walks frames with.
//!
//! Nothing here allocates or copies: views point into the frame, strings stay escaped until
//! the caller asks for them, and raw values deserialize on demand through serde-json-core.

use core::fmt;

mod cursor;

pub(crate) use cursor::Cursor;

/// A JSON string exactly as it appears on the wire, without the quotes and still escaped.
///
/// QEMU escapes every code point outside printable ASCII, so most strings contain no
/// backslash and compare or print without any decoding work.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct JsonStr<'a> {
    raw: &'a str,
}

/// Why a [`JsonStr`] could not be unescaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum UnescapeError {
    /// The output buffer is too small; `needed` bytes would fit the whole string.
    BufferTooSmall {
        /// Bytes the unescaped string occupies.
        needed: usize,
    },
    /// A `\uD800`–`\uDFFF` escape that is not part of a valid surrogate pair, at this byte offset
    /// of the escaped string.
    LoneSurrogate {
        /// Offset of the escape in the escaped string.
        offset: usize,
    },
}

impl fmt::Display for UnescapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => {
                write!(f, "unescape buffer too small: {needed} bytes needed")
            }
            Self::LoneSurrogate { offset } => write!(f, "lone UTF-16 surrogate at byte {offset}"),
        }
    }
}

impl core::error::Error for UnescapeError {}

impl<'a> JsonStr<'a> {
    /// Wraps the escaped contents of a JSON string (without quotes).
    ///
    /// The text must already be a valid JSON string body, as every `JsonStr` handed out by this
    /// crate is; with anything else the decoding methods give unspecified (but memory-safe,
    /// panic-free) results.
    pub const fn from_escaped(raw: &'a str) -> Self {
        Self { raw }
    }

    /// The escaped text, as on the wire (without quotes).
    pub const fn as_escaped(&self) -> &'a str {
        self.raw
    }

    /// The string itself when it has no escapes (the common case with QEMU), else `None`.
    pub fn as_plain(&self) -> Option<&'a str> {
        if self.raw.as_bytes().contains(&b'\\') {
            None
        } else {
            Some(self.raw)
        }
    }

    /// Decodes the string character by character.
    pub fn chars(&self) -> Chars<'a> {
        Chars {
            bytes: self.raw.as_bytes(),
            raw: self.raw,
            pos: 0,
        }
    }

    /// The number of bytes the unescaped UTF-8 string occupies, or the position of a lone
    /// surrogate.
    pub fn unescaped_len(&self) -> Result<usize, UnescapeError> {
        if self.as_plain().is_some() {
            return Ok(self.raw.len());
        }
        let mut len = 0;
        for c in self.chars() {
            len += c?.len_utf8();
        }
        Ok(len)
    }

    /// Unescapes into `out` and returns the string written there.
    ///
    /// On error nothing useful is in `out`; [`UnescapeError::BufferTooSmall`] says how much room
    /// the string needs.
    pub fn unescape_into<'o>(&self, out: &'o mut [u8]) -> Result<&'o str, UnescapeError> {
        let needed = self.unescaped_len()?;
        let out = match out.get_mut(..needed) {
            Some(out) => out,
            None => return Err(UnescapeError::BufferTooSmall { needed }),
        };
        let mut at = 0;
        for c in self.chars() {
            // `unescaped_len` already walked the string, so no error is left here.
            let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
            at += c.encode_utf8(&mut out[at..]).len();
        }
        // Every byte came from `char::encode_utf8`, so this cannot fail; map it anyway
        // instead of panicking.
        core::str::from_utf8(out).map_err(|_| UnescapeError::BufferTooSmall { needed })
    }

    /// Compares the unescaped string with `other` without a buffer.
    pub fn eq_str(&self, other: &str) -> bool {
        if let Some(plain) = self.as_plain() {
            return plain == other;
        }
        let mut expected = other.chars();
        for c in self.chars() {
            match (c, expected.next()) {
                (Ok(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
        expected.next().is_none()
    }
}

impl PartialEq<str> for JsonStr<'_> {
    fn eq(&self, other: &str) -> bool {
        self.eq_str(other)
    }
}

impl PartialEq<&str> for JsonStr<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.eq_str(other)
    }
}

impl fmt::Debug for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.raw)
    }
}

/// Writes the unescaped string; a lone surrogate prints as U+FFFD.
impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(plain) = self.as_plain() {
            return f.write_str(plain);
        }
        for c in self.chars() {
            fmt::Write::write_char(f, c.unwrap_or(char::REPLACEMENT_CHARACTER))?;
        }
        Ok(())
    }
}

/// Iterator over the decoded characters of a [`JsonStr`]; see [`JsonStr::chars`].
#[derive(Debug, Clone)]
pub struct Chars<'a> {
    bytes: &'a [u8],
    raw: &'a str,
    pos: usize,
}

impl Chars<'_> {
    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.bytes.get(at..at + 4)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16)?;
        }
        Some(v)
    }
}

impl Iterator for Chars<'_> {
    type Item = Result<char, UnescapeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        let b = *self.bytes.get(start)?;
        if b != b'\\' {
            let c = self.raw.get(start..)?.chars().next()?;
            self.pos += c.len_utf8();
            return Some(Ok(c));
        }
        let esc = self.bytes.get(start + 1).copied().unwrap_or(b'\\');
        self.pos += 2;
        let c = match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let lone = Err(UnescapeError::LoneSurrogate { offset: start });
                let Some(hi) = self.hex4(start + 2) else {
                    self.pos = self.bytes.len();
                    return Some(lone);
                };
                self.pos = start + 6;
                match hi {
                    0xD800..=0xDBFF => {
                        let pair = self.bytes.get(start + 6..start + 8) == Some(b"\\u");
                        match self.hex4(start + 8) {
                            Some(lo @ 0xDC00..=0xDFFF) if pair => {
                                self.pos = start + 12;
                                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                return Some(
                                    char::from_u32(c)
                                        .ok_or(UnescapeError::LoneSurrogate { offset: start }),
                                );
                            }
                            _ => return Some(lone),
                        }
                    }
                    0xDC00..=0xDFFF => return Some(lone),
                    v => {
                        return Some(
                            char::from_u32(v).ok_or(UnescapeError::LoneSurrogate { offset: start }),
                        );
                    }
                }
            }
            other => other as char,
        };
        Some(Ok(c))
    }
}

/// One JSON value, borrowed from a frame as raw text.
///
/// Deserialize it when you need it ([`RawJson::deserialize`]), or look at it without serde
/// ([`RawJson::as_u64`], [`RawJson::as_str`], [`RawJson::members`], [`RawJson::elements`]).
///
/// # How much is checked
/// A `RawJson` from [`RawJson::parse`] is fully validated. One handed out by
/// [`Message::parse`](crate::Message::parse) or [`Frame::message`](crate::Frame::message) is
/// fully validated too when it is a scalar or part of the envelope (`id`, `error`,
/// `timestamp`, `QMP`), but the object or array of a `return` or `data` member (and of
/// unknown members) is only checked *structurally*, so that classifying a large reply does
/// not cost a second pass over it: its brackets balance, its strings are closed and hold no
/// raw control characters, and the frame is UTF-8. The grammar inside (commas, colons,
/// numbers, literals, escape sequences, which bracket closes which) is checked when it is
/// used: [`RawJson::deserialize`] validates as it parses and fails on bad JSON, the
/// iterators stop at the first error, and [`RawJson::validate`] checks the whole value up
/// front. Nothing reads past the value's text either way.
///
/// QEMU can write the non-finite numbers `inf`, `-inf` and `nan` (it echoes an id of `1e400`
/// as `inf`); they are accepted as number tokens here so such a message still classifies.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RawJson<'a> {
    text: &'a str,
}

/// The type of a [`RawJson`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum JsonKind {
    /// `{…}`
    Object,
    /// `[…]`
    Array,
    /// `"…"`
    String,
    /// A number (including QEMU's `inf`, `-inf`, `nan`).
    Number,
    /// `true` or `false`
    Bool,
    /// `null`
    Null,
}

/// Error from [`RawJson::deserialize`]: serde-json-core's error type.
pub type DeserializeError = serde_json_core::de::Error;

impl<'a> RawJson<'a> {
    /// Validates `text` as exactly one JSON value (surrounding whitespace allowed and trimmed).
    pub fn parse(text: &'a str) -> Result<Self, SyntaxError> {
        let mut cur = Cursor::new(text);
        cur.skip_ws();
        let value = cur.value()?;
        cur.skip_ws();
        if cur.pos != text.len() {
            return Err(cur.err());
        }
        Ok(value)
    }

    pub(crate) const fn new_unchecked(text: &'a str) -> Self {
        Self { text }
    }

    /// Checks the whole value against the JSON grammar (with QEMU's non-finite numbers), as
    /// [`RawJson::parse`] does: needed only for values that classification checked just
    /// structurally (see [How much is checked](RawJson#how-much-is-checked)). The offset of
    /// an error counts from the start of the value.
    ///
    /// ```
    /// use qmp_proto::{Message, SyntaxError};
    /// let Ok(Message::Return(ret)) = Message::parse(br#"{"return": {"a" 1}, "id": 1}"#) else {
    ///     unreachable!()
    /// };
    /// assert_eq!(ret.value.validate(), Err(SyntaxError { offset: 5 }));
    /// ```
    pub fn validate(&self) -> Result<(), SyntaxError> {
        Self::parse(self.text).map(|_| ())
    }

    /// The value's JSON text, exactly as received.
    pub const fn as_json(&self) -> &'a str {
        self.text
    }

    /// What kind of value this is.
    pub fn kind(&self) -> JsonKind {
        match self.text.as_bytes().first() {
            Some(b'{') => JsonKind::Object,
            Some(b'[') => JsonKind::Array,
            Some(b'"') => JsonKind::String,
            Some(b't' | b'f') => JsonKind::Bool,
            Some(b'n') if self.text == "null" => JsonKind::Null,
            _ => JsonKind::Number,
        }
    }

    /// Deserializes the value into `T` with serde-json-core, borrowing from the frame.
    ///
    /// Strings with escapes can't be borrowed as `&str`; deserialize those into owned strings
    /// (`heapless::String`) with [`RawJson::deserialize_unescaped`].
    ///
    /// A string that contains escapes is an error here rather than its still-escaped text.
    pub fn deserialize<T: serde::Deserialize<'a>>(&self) -> Result<T, DeserializeError> {
        // With an empty unescape buffer serde-json-core borrows plain strings and fails on
        // escaped ones; without one it would hand out escaped text as if it were the value.
        serde_json_core::from_str_escaped(self.text, &mut []).map(|(value, _)| value)
    }

    /// Deserializes into `T`, unescaping each string through `scratch` (which must hold the
    /// longest unescaped string) before handing it to `T`'s owned string fields.
    pub fn deserialize_unescaped<T>(&self, scratch: &mut [u8]) -> Result<T, DeserializeError>
    where
        T: serde::Deserialize<'a>,
    {
        serde_json_core::from_str_escaped(self.text, scratch).map(|(value, _)| value)
    }

    /// The value as an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        parse_u64(self.text.as_bytes())
    }

    /// The value as a signed integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        parse_i64(self.text.as_bytes())
    }

    /// The value as a (still escaped) string, if it is one.
    pub fn as_str(&self) -> Option<JsonStr<'a>> {
        let inner = self.text.strip_prefix('"')?.strip_suffix('"')?;
        Some(JsonStr::from_escaped(inner))
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.text {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// Whether the value is `null`.
    pub fn is_null(&self) -> bool {
        self.text == "null"
    }

    /// Iterates over an object's members (empty for other kinds).
    pub fn members(&self) -> Members<'a> {
        let mut cur = Cursor::new(self.text);
        let open = self.kind() == JsonKind::Object;
        if open {
            cur.pos = 1;
        }
        Members { cur, done: !open }
    }

    /// The value of an object's member called `key` (the first, if keys repeat).
    pub fn get(&self, key: &str) -> Option<RawJson<'a>> {
        self.members().find(|(k, _)| k.eq_str(key)).map(|(_, v)| v)
    }

    /// Iterates over an array's elements (empty for other kinds).
    pub fn elements(&self) -> Elements<'a> {
        let mut cur = Cursor::new(self.text);
        let open = self.kind() == JsonKind::Array;
        if open {
            cur.pos = 1;
        }
        Elements {
            cur,
            done: !open,
            first: true,
        }
    }
}

impl fmt::Debug for RawJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

impl fmt::Display for RawJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

/// Iterator over an object's members; see [`RawJson::members`].
#[derive(Debug, Clone)]
pub struct Members<'a> {
    cur: Cursor<'a>,
    done: bool,
}

impl<'a> Iterator for Members<'a> {
    type Item = (JsonStr<'a>, RawJson<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // The text was validated when the RawJson was made, so errors here mean "stop".
        self.cur.skip_ws();
        if self.cur.eat(b',') {
            self.cur.skip_ws();
        }
        if self.cur.peek() != Some(b'"') {
            self.done = true;
            return None;
        }
        let item = (|| {
            let key = self.cur.string().ok()?;
            self.cur.skip_ws();
            self.cur.eat(b':').then_some(())?;
            self.cur.skip_ws();
            let value = self.cur.value().ok()?;
            Some((key, value))
        })();
        self.done = item.is_none();
        item
    }
}

/// Iterator over an array's elements; see [`RawJson::elements`].
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    cur: Cursor<'a>,
    done: bool,
    first: bool,
}

impl<'a> Iterator for Elements<'a> {
    type Item = RawJson<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.cur.skip_ws();
        if !self.first && !self.cur.eat(b',') {
            self.done = true;
            return None;
        }
        self.first = false;
        self.cur.skip_ws();
        if self.cur.peek() == Some(b']') {
            self.done = true;
            return None;
        }
        let value = self.cur.value().ok();
        self.done = value.is_none();
        value
    }
}

/// A JSON syntax error at a byte offset (relative to the text the cursor walked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyntaxError {
    /// Byte offset of the first byte that does not fit the grammar.
    pub offset: usize,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JSON syntax error at byte {}", self.offset)
    }
}

impl core::error::Error for SyntaxError {}

fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || (text.len() > 1 && text[0] == b'0') {
        return None;
    }
    let mut v: u64 = 0;
    if text.len() <= 19 {
        // At most 19 digits cannot overflow.
        for &d in text {
            let digit = d.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            v = v * 10 + u64::from(digit);
        }
        return Some(v);
    }
    for &d in text {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

fn parse_i64(text: &[u8]) -> Option<i64> {
    match text.split_first() {
        Some((b'-', rest)) => {
            let v = parse_u64(rest)?;
            if v == 1 << 63 {
                Some(i64::MIN)
            } else {
                i64::try_from(v).ok().map(|v| -v)
            }
        }
        _ => i64::try_from(parse_u64(text)?).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::MAX_SUPPORTED_DEPTH;

    #[track_caller]
    fn unescape(raw: &str) -> Result<heapless::String<64>, UnescapeError> {
        let mut buf = [0u8; 64];
        let s = JsonStr::from_escaped(raw).unescape_into(&mut buf)?;
        Ok(heapless::String::try_from(s).unwrap())
    }

    #[test]
    fn unescapes_every_escape_form() {
        assert_eq!(unescape(r#"a\"b\\c\/d"#).unwrap(), "a\"b\\c/d");
        assert_eq!(unescape(r"\b\f\n\r\t").unwrap(), "\u{8}\u{c}\n\r\t");
        assert_eq!(unescape(r"\u0000\u001F\u00e9\u00E9").unwrap(), "\0\u{1f}éé");
        // U+1F600 as QEMU writes it: a surrogate pair with uppercase hex.
        assert_eq!(unescape(r"x\uD83D\uDE00y").unwrap(), "x\u{1F600}y");
        assert_eq!(unescape("plain ascii").unwrap(), "plain ascii");
        assert_eq!(unescape("raw é utf8").unwrap(), "raw é utf8");
    }

    #[test]
    fn lone_surrogates_are_errors_with_offsets() {
        assert_eq!(
            unescape(r"ab\uD83Dx"),
            Err(UnescapeError::LoneSurrogate { offset: 2 })
        );
        assert_eq!(
            unescape(r"\uDE00"),
            Err(UnescapeError::LoneSurrogate { offset: 0 })
        );
        assert_eq!(
            unescape(r"\uD83D\u0041"),
            Err(UnescapeError::LoneSurrogate { offset: 0 })
        );
    }

    #[test]
    fn unescape_reports_the_room_needed() {
        let mut small = [0u8; 3];
        assert_eq!(
            JsonStr::from_escaped(r"\u00e9\u00e9").unescape_into(&mut small),
            Err(UnescapeError::BufferTooSmall { needed: 4 })
        );
        let mut exact = [0u8; 4];
        assert_eq!(
            JsonStr::from_escaped(r"\u00e9\u00e9").unescape_into(&mut exact),
            Ok("éé")
        );
    }

    #[test]
    fn eq_str_compares_decoded_text() {
        let s = JsonStr::from_escaped(r"STOP\u0021");
        assert!(s == "STOP!");
        assert!(s != "STOP");
        assert!(s != "STOP!!");
        assert!(JsonStr::from_escaped("STOP") == "STOP");
    }

    #[test]
    fn validator_accepts_json_and_qemu_non_finite_numbers() {
        for ok in [
            "{}",
            "[]",
            "{ }",
            "{\r\n    }",
            r#"{"a": [1, -2.5e+3, 0, true, false, null, "x\"y"], "b": {}}"#,
            "inf",
            "-inf",
            "nan",
            "0.10000000000000001",
            r#""\u00e9""#,
        ] {
            assert!(RawJson::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn validator_rejects_bad_json_at_the_right_offset() {
        for (bad, offset) in [
            ("{", 1),
            (r#"{"a" 1}"#, 5),
            (r#"{"a": 1,}"#, 8),
            ("[1 2]", 3),
            ("[1,]", 3),
            ("01", 1),
            ("1.", 2),
            ("-", 1),
            (r#""\x""#, 2),
            (r#""\u12G4""#, 5),
            ("\"a\u{1}\"", 2),
            ("tru", 0),
            ("{]", 1),
            ("[}", 1),
            (r#"{"a":1}}"#, 7),
        ] {
            assert_eq!(RawJson::parse(bad), Err(SyntaxError { offset }), "{bad:?}");
        }
    }

    #[test]
    fn validator_limits_depth_without_recursion() {
        let mut deep = heapless::String::<600>::new();
        for _ in 0..MAX_SUPPORTED_DEPTH {
            deep.push('[').unwrap();
        }
        for _ in 0..MAX_SUPPORTED_DEPTH {
            deep.push(']').unwrap();
        }
        assert!(RawJson::parse(&deep).is_ok());
        let mut deeper = heapless::String::<600>::new();
        deeper.push('[').unwrap();
        deeper.push_str(&deep).unwrap();
        deeper.push(']').unwrap();
        assert!(RawJson::parse(&deeper).is_err());
    }

    #[test]
    fn raw_accessors_read_values_without_serde() {
        let v = RawJson::parse(r#"{"a": 1, "b": [true, "x", {"c": null}], "d": -7}"#).unwrap();
        assert_eq!(v.kind(), JsonKind::Object);
        assert_eq!(v.get("a").and_then(|a| a.as_u64()), Some(1));
        assert_eq!(v.get("d").and_then(|d| d.as_i64()), Some(-7));
        let b = v.get("b").unwrap();
        let mut it = b.elements();
        assert_eq!(it.next().and_then(|e| e.as_bool()), Some(true));
        assert!(it.next().and_then(|e| e.as_str()).unwrap() == "x");
        assert!(it.next().unwrap().get("c").unwrap().is_null());
        assert!(it.next().is_none());
        assert_eq!(v.members().count(), 3);
        assert_eq!(RawJson::parse("[]").unwrap().elements().count(), 0);
        assert_eq!(RawJson::parse("{}").unwrap().members().count(), 0);
        assert_eq!(
            RawJson::parse("18446744073709551615").unwrap().as_u64(),
            Some(u64::MAX)
        );
        assert_eq!(
            RawJson::parse("18446744073709551616").unwrap().as_u64(),
            None
        );
        assert_eq!(
            RawJson::parse("-9223372036854775808").unwrap().as_i64(),
            Some(i64::MIN)
        );
        assert_eq!(RawJson::parse("1.5").unwrap().as_u64(), None);
    }

    proptest::proptest! {
        #[test]
        fn integers_read_as_rust_reads_them(n: u64, i: i64, junk in "[0-9+-]{0,22}") {
            proptest::prop_assert_eq!(parse_u64(std::format!("{n}").as_bytes()), Some(n));
            proptest::prop_assert_eq!(parse_i64(std::format!("{i}").as_bytes()), Some(i));
            // Rust also accepts a leading `+` and leading zeros, which JSON does not.
            let json_like = !(junk.starts_with('+') || (junk.len() > 1 && junk.starts_with('0')));
            let expected = junk.parse::<u64>().ok().filter(|_| json_like);
            proptest::prop_assert_eq!(parse_u64(junk.as_bytes()), expected);
        }
    }

    #[test]
    fn deserializes_on_demand() {
        #[derive(serde::Deserialize)]
        struct Status<'a> {
            status: &'a str,
            running: bool,
        }
        let v = RawJson::parse(r#"{"status": "running", "singlestep": false, "running": true}"#)
            .unwrap();
        let s: Status<'_> = v.deserialize().unwrap();
        assert_eq!(s.status, "running");
        assert!(s.running);
        #[derive(serde::Deserialize)]
        struct Owned {
            status: heapless::String<8>,
        }
        let escaped = RawJson::parse(r#"{"status": "a\"b\u00e9", "running": false}"#).unwrap();
        let mut scratch = [0u8; 16];
        let s: Owned = escaped.deserialize_unescaped(&mut scratch).unwrap();
        assert_eq!(s.status, "a\"bé");
        // Borrowing an escaped string is impossible; it is an error, not a wrong value.
        assert!(escaped.deserialize::<Status<'_>>().is_err());
    }
}
