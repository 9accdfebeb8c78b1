//! The counting serde serializer behind every `encode_*` function: [`Out`] writes into a
//! slice while it fits and counts every byte (and the nesting depth) either way, so the same
//! pass both measures and writes; [`Serializer`] and its map-key helper write compact JSON
//! into it.

use core::fmt::{self, Write as _};

use serde::ser::{self, Serialize};

use super::EncodeError;

/// Writes into a slice while it fits, and counts every byte either way, and how deep the
/// objects and arrays it writes nest.
pub(super) struct Out<'b> {
    buf: &'b mut [u8],
    pub(super) len: usize,
    depth: usize,
    pub(super) max_depth: usize,
}

impl<'b> Out<'b> {
    pub(super) fn new(buf: &'b mut [u8]) -> Self {
        Self {
            buf,
            len: 0,
            depth: 0,
            max_depth: 0,
        }
    }

    /// Writes opening brackets, `levels` of them in `bytes`.
    pub(super) fn open(&mut self, bytes: &[u8], levels: usize) {
        self.put(bytes);
        self.depth += levels;
        self.max_depth = self.max_depth.max(self.depth);
    }

    /// Writes closing brackets (every byte of `bytes` is one).
    pub(super) fn close(&mut self, bytes: &[u8]) {
        self.put(bytes);
        self.depth = self.depth.saturating_sub(bytes.len());
    }

    #[inline]
    pub(super) fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.len += bytes.len();
    }

    pub(super) fn put_escaped(&mut self, s: &str) {
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
    pub(super) fn put_id(&mut self, id: u64) {
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

/// The serde serializer: compact JSON into an [`Out`].
pub(super) struct Serializer<'o, 'b> {
    pub(super) out: &'o mut Out<'b>,
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
pub(super) struct Compound<'s, 'o, 'b> {
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
