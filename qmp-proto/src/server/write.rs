//! QEMU's output format: `", "` and `": "` separators, ASCII-only strings with uppercase
//! `\uXXXX` escapes, `\r\n` after every message. Encoders write twice (count, then copy)
//! so that the caller's buffer stays untouched when it is too small.

use core::fmt::{self, Write};

use crate::encode::EncodeError;
use crate::json::RawJson;

/// A byte sink that counts everything and copies only while it fits.
pub(super) struct Out<'b> {
    buf: &'b mut [u8],
    pub(super) len: usize,
}

impl<'b> Out<'b> {
    pub(super) fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    pub(super) fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.len += bytes.len();
    }

    /// Writes `c` inside a JSON string the way QEMU's JSON writer does.
    fn put_char(&mut self, c: char) {
        let esc: &[u8] = match c {
            '"' => b"\\\"",
            '\\' => b"\\\\",
            '\u{8}' => b"\\b",
            '\u{c}' => b"\\f",
            '\n' => b"\\n",
            '\r' => b"\\r",
            '\t' => b"\\t",
            ' '..='\u{7e}' => {
                self.put(&[c as u8]);
                return;
            }
            _ => {
                let mut units = [0u16; 2];
                for &u in c.encode_utf16(&mut units).iter() {
                    self.put_u16_escape(u);
                }
                return;
            }
        };
        self.put(esc);
    }

    fn put_u16_escape(&mut self, u: u16) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let h = |shift: u16| HEX[usize::from((u >> shift) & 15)];
        self.put(&[b'\\', b'u', h(12), h(8), h(4), h(0)]);
    }

    /// A quoted string from plain (unescaped) text.
    pub(super) fn put_text(&mut self, text: impl fmt::Display) {
        self.put(b"\"");
        // Writing to `Text` cannot fail; a failing Display impl just stops early.
        let _ = write!(Text(self), "{text}");
        self.put(b"\"");
    }

    /// Re-writes a validated JSON value in QEMU's spacing and string escaping. Key order and
    /// number spelling are kept as given.
    pub(super) fn put_json(&mut self, value: RawJson<'_>) {
        let text = value.as_json();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b' ' | b'\t' | b'\r' | b'\n' => i += 1,
                b',' => {
                    self.put(b", ");
                    i += 1;
                }
                b':' => {
                    self.put(b": ");
                    i += 1;
                }
                b'"' => {
                    let end = string_end(bytes, i);
                    let body = crate::json::JsonStr::from_escaped(&text[i + 1..end - 1]);
                    self.put(b"\"");
                    for c in body.chars() {
                        self.put_char(c.unwrap_or(char::REPLACEMENT_CHARACTER));
                    }
                    self.put(b"\"");
                    i = end;
                }
                b => {
                    self.put(&[b]);
                    i += 1;
                }
            }
        }
    }
}

/// Index just past the closing quote of the string starting at `start`.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

struct Text<'o, 'b>(&'o mut Out<'b>);

impl Write for Text<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            self.0.put_char(c);
        }
        Ok(())
    }
}

/// Runs `f` once to measure, then again to write when it fits.
pub(super) fn encode(out: &mut [u8], f: impl Fn(&mut Out<'_>)) -> Result<usize, EncodeError> {
    let mut count = Out::new(&mut []);
    f(&mut count);
    let needed = count.len + 2;
    if needed > out.len() {
        return Err(EncodeError::BufferTooSmall { needed });
    }
    let mut w = Out::new(out);
    f(&mut w);
    w.put(b"\r\n");
    Ok(w.len)
}

pub(super) fn put_u64(w: &mut Out<'_>, v: u64) {
    let _ = write!(Decimal(w), "{v}");
}

pub(super) fn put_i64(w: &mut Out<'_>, v: i64) {
    let _ = write!(Decimal(w), "{v}");
}

struct Decimal<'o, 'b>(&'o mut Out<'b>);

impl Write for Decimal<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put(s.as_bytes());
        Ok(())
    }
}

/// Encodes a success reply, `{"return": VALUE, "id": ID}` (no `id` member when the request
/// had none), the way QEMU 7.2 writes it: `value` and `id` are re-spaced and their strings
/// re-escaped (ASCII only), their key order and numbers kept. Returns the length written,
/// `\r\n` included; on error `out` is untouched.
///
/// ```
/// use qmp_proto::{RawJson, encode_reply};
/// let mut out = [0u8; 64];
/// let id = RawJson::parse("1").unwrap();
/// let value = RawJson::parse(r#"{"status":"running"}"#).unwrap();
/// let n = encode_reply(Some(id), value, &mut out).unwrap();
/// assert_eq!(&out[..n], b"{\"return\": {\"status\": \"running\"}, \"id\": 1}\r\n");
/// ```
pub fn encode_reply(
    id: Option<RawJson<'_>>,
    value: RawJson<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode(out, |w| {
        w.put(b"{\"return\": ");
        w.put_json(value);
        if let Some(id) = id {
            w.put(b", \"id\": ");
            w.put_json(id);
        }
        w.put(b"}");
    })
}

/// Encodes an error reply, `{"id": ID, "error": {"class": CLASS, "desc": DESC}}` (no `id`
/// member when the request had none or could not be parsed), as QEMU 7.2 writes it. `desc`
/// is plain text (escaped here): `format_args!` builds one without allocating. Returns the
/// length written, `\r\n` included; on error `out` is untouched.
///
/// ```
/// use qmp_proto::{RawJson, encode_error};
/// let mut out = [0u8; 128];
/// let id = RawJson::parse(r#""a""#).unwrap();
/// let name = "nope";
/// let desc = format_args!("The command {name} has not been found");
/// let n = encode_error(Some(id), "CommandNotFound", desc, &mut out).unwrap();
/// assert_eq!(
///     &out[..n],
///     &b"{\"id\": \"a\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\r\n"[..]
/// );
/// ```
pub fn encode_error(
    id: Option<RawJson<'_>>,
    class: &str,
    desc: impl fmt::Display,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode(out, |w| {
        w.put(b"{");
        if let Some(id) = id {
            w.put(b"\"id\": ");
            w.put_json(id);
            w.put(b", ");
        }
        w.put(b"\"error\": {\"class\": ");
        w.put_text(class);
        w.put(b", \"desc\": ");
        w.put_text(&desc);
        w.put(b"}}");
    })
}

/// Encodes an event, `{"timestamp": {"seconds": S, "microseconds": U}, "event": NAME,
/// "data": DATA}` (no `data` member when `data` is `None`, as for `STOP`), as QEMU 7.2
/// writes it. The timestamp is passed in (QEMU writes -1/-1 when its clock failed).
///
/// ```
/// use qmp_proto::encode_event;
/// let mut out = [0u8; 128];
/// let n = encode_event("STOP", None, (1795596531, 804941), &mut out).unwrap();
/// assert_eq!(
///     &out[..n],
///     &b"{\"timestamp\": {\"seconds\": 1795596531, \"microseconds\": 804941}, \"event\": \"STOP\"}\r\n"[..]
/// );
/// ```
pub fn encode_event(
    name: &str,
    data: Option<RawJson<'_>>,
    timestamp: (i64, i64),
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode(out, |w| {
        w.put(b"{\"timestamp\": {\"seconds\": ");
        put_i64(w, timestamp.0);
        w.put(b", \"microseconds\": ");
        put_i64(w, timestamp.1);
        w.put(b"}, \"event\": ");
        w.put_text(name);
        if let Some(data) = data {
            w.put(b", \"data\": ");
            w.put_json(data);
        }
        w.put(b"}");
    })
}
