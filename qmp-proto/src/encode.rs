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

use core::fmt::{self, Write as _};

use serde::ser::{self, Serialize};

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

/// Writes into a slice while it fits, and counts every byte either way, and how deep the
/// objects and arrays it writes nest.
struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
    depth: usize,
    max_depth: usize,
}

impl<'b> Out<'b> {
    fn new(buf: &'b mut [u8]) -> Self {
        Self {
            buf,
            len: 0,
            depth: 0,
            max_depth: 0,
        }
    }

    /// Writes opening brackets, `levels` of them in `bytes`.
    fn open(&mut self, bytes: &[u8], levels: usize) {
        self.put(bytes);
        self.depth += levels;
        self.max_depth = self.max_depth.max(self.depth);
    }

    /// Writes closing brackets (every byte of `bytes` is one).
    fn close(&mut self, bytes: &[u8]) {
        self.put(bytes);
        self.depth = self.depth.saturating_sub(bytes.len());
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.len += bytes.len();
    }

    fn put_escaped(&mut self, s: &str) {
        let bytes = s.as_bytes();
        let mut plain = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.put(&bytes[plain..i]);
                    self.put(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                    plain = i + 1;
                    continue;
                }
                _ => continue,
            };
            self.put(&bytes[plain..i]);
            self.put(esc);
            plain = i + 1;
        }
        self.put(&bytes[plain..]);
    }

    fn put_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }

    /// `,"id":N`.
    fn put_id(&mut self, id: u64) {
        self.put(b",\"id\":");
        self.put_u64(id);
    }

    fn put_i64(&mut self, v: i64) {
        if v < 0 {
            self.put(b"-");
        }
        self.put_u64(v.unsigned_abs());
    }
}

impl fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.put(s.as_bytes());
        Ok(())
    }
}

/// Escapes what `Display` writes, for `collect_str`.
struct Escaping<'o, 'b>(&'o mut Out<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put_escaped(s);
        Ok(())
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

/// The serde serializer: compact JSON into an [`Out`].
struct Serializer<'o, 'b> {
    out: &'o mut Out<'b>,
}

impl<'o, 'b> Serializer<'o, 'b> {
    /// Writes `{"variant":` (for enum variants) and then `bracket`, and returns the compound
    /// that writes the elements and, at its end, `close`.
    fn open<'s>(
        &'s mut self,
        bracket: &[u8],
        variant: Option<&str>,
        close: &'static [u8],
    ) -> Compound<'s, 'o, 'b> {
        if let Some(variant) = variant {
            self.out.open(b"{\"", 1);
            self.out.put_escaped(variant);
            self.out.put(b"\":");
        }
        self.out.open(bracket, 1);
        Compound {
            ser: self,
            first: true,
            close,
        }
    }
}

/// State for sequences and maps: whether a comma is due.
struct Compound<'s, 'o, 'b> {
    ser: &'s mut Serializer<'o, 'b>,
    first: bool,
    /// Closing bytes: `]`, `}`, or `]}` / `}}` for enum variants.
    close: &'static [u8],
}

impl Compound<'_, '_, '_> {
    fn comma(&mut self) {
        if !self.first {
            self.ser.out.put(b",");
        }
        self.first = false;
    }

    fn key(&mut self, key: &str) {
        self.comma();
        self.ser.out.put(b"\"");
        self.ser.out.put_escaped(key);
        self.ser.out.put(b"\":");
    }
}

impl<'s, 'o, 'b> ser::Serializer for &'s mut Serializer<'o, 'b> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Compound<'s, 'o, 'b>;
    type SerializeTuple = Compound<'s, 'o, 'b>;
    type SerializeTupleStruct = Compound<'s, 'o, 'b>;
    type SerializeTupleVariant = Compound<'s, 'o, 'b>;
    type SerializeMap = Compound<'s, 'o, 'b>;
    type SerializeStruct = Compound<'s, 'o, 'b>;
    type SerializeStructVariant = Compound<'s, 'o, 'b>;

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.put(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        self.out.put_i64(v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        self.out.put_u64(v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        if !v.is_finite() {
            return Err(EncodeError::Unsupported("a non-finite float"));
        }
        // `{:?}` is the shortest text that reads back as the same value, in JSON's syntax.
        let _ = write!(self.out, "{v:?}");
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        if !v.is_finite() {
            return Err(EncodeError::Unsupported("a non-finite float"));
        }
        let _ = write!(self.out, "{v:?}");
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.out.put(b"\"");
        self.out.put_escaped(v);
        self.out.put(b"\"");
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        use ser::SerializeSeq;
        let mut seq = self.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(b)?;
        }
        seq.end()
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        self.out.put(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.out.open(b"{\"", 1);
        self.out.put_escaped(variant);
        self.out.put(b"\":");
        value.serialize(&mut *self)?;
        self.out.close(b"}");
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, EncodeError> {
        Ok(self.open(b"[", None, b"]"))
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, EncodeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, EncodeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, EncodeError> {
        Ok(self.open(b"[", Some(variant), b"]}"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, EncodeError> {
        Ok(self.open(b"{", None, b"}"))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, EncodeError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, EncodeError> {
        Ok(self.open(b"{", Some(variant), b"}}"))
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.out.put(b"\"");
        let _ = write!(Escaping(self.out), "{value}");
        self.out.put(b"\"");
        Ok(())
    }
}

macro_rules! seq_impl {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Compound<'_, '_, '_> {
            type Ok = ();
            type Error = EncodeError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
                self.comma();
                value.serialize(&mut *self.ser)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.ser.out.close(self.close);
                Ok(())
            }
        }
    )*};
}
seq_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

macro_rules! struct_impl {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Compound<'_, '_, '_> {
            type Ok = ();
            type Error = EncodeError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), EncodeError> {
                self.key(key);
                value.serialize(&mut *self.ser)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.ser.out.close(self.close);
                Ok(())
            }
        }
    )*};
}
struct_impl!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Compound<'_, '_, '_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        self.comma();
        key.serialize(MapKey {
            out: &mut *self.ser.out,
        })?;
        self.ser.out.put(b":");
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.ser.out.close(self.close);
        Ok(())
    }
}

/// Serializes map keys: JSON keys are strings, so integers, bools and chars are quoted.
struct MapKey<'o, 'b> {
    out: &'o mut Out<'b>,
}

impl MapKey<'_, '_> {
    fn quoted(self, f: impl FnOnce(&mut Out<'_>)) -> Result<(), EncodeError> {
        self.out.put(b"\"");
        f(self.out);
        self.out.put(b"\"");
        Ok(())
    }
}

type Impossible = ser::Impossible<(), EncodeError>;

fn bad_key<T>() -> Result<T, EncodeError> {
    Err(EncodeError::Unsupported("a map key that is not a string"))
}

impl ser::Serializer for MapKey<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Impossible;
    type SerializeTuple = Impossible;
    type SerializeTupleStruct = Impossible;
    type SerializeTupleVariant = Impossible;
    type SerializeMap = Impossible;
    type SerializeStruct = Impossible;
    type SerializeStructVariant = Impossible;

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.quoted(|o| o.put(if v { b"true" } else { b"false" }))
    }
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        self.quoted(|o| o.put_i64(v))
    }
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        self.quoted(|o| o.put_u64(v))
    }
    fn serialize_f32(self, _v: f32) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_f64(self, _v: f64) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.quoted(|o| o.put_escaped(v))
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), EncodeError> {
        bad_key()
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Impossible, EncodeError> {
        bad_key()
    }
    fn serialize_tuple(self, _len: usize) -> Result<Impossible, EncodeError> {
        bad_key()
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Impossible, EncodeError> {
        bad_key()
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Impossible, EncodeError> {
        bad_key()
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Impossible, EncodeError> {
        bad_key()
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Impossible, EncodeError> {
        bad_key()
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Impossible, EncodeError> {
        bad_key()
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.out.put(b"\"");
        let _ = write!(Escaping(self.out), "{value}");
        self.out.put(b"\"");
        Ok(())
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
