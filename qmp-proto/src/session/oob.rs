//! Whether the arguments of a `qmp_capabilities` sent through
//! [`Session::execute`](crate::Session::execute) enable `oob`: a serde serializer that writes
//! nothing and only notes whether the string `"oob"` is an element of the sequence in the
//! top-level `enable` member (`{"enable": ["oob"]}`).

use core::fmt;

use serde::ser::{self, Serialize};

use crate::encode::EncodeError;

/// Whether `arguments` serialize to an object whose `enable` member is a sequence holding
/// the string `"oob"` (or an enum variant named `oob`, as [`crate::commands::QmpCapability`]
/// is). Arguments that fail to serialize enable nothing.
pub(super) fn enables_oob<A: Serialize + ?Sized>(arguments: &A) -> bool {
    let mut probe = Probe::default();
    arguments.serialize(&mut probe).is_ok() && probe.found
}

#[derive(Debug, Default)]
struct Probe {
    /// How many objects and sequences are open around the value being serialized.
    depth: u32,
    /// The next string is a top-level object key (a map key, not a value).
    in_key: bool,
    /// The top-level member being serialized is `enable`.
    enable: bool,
    /// The value of that member is a sequence (open at depth 2).
    enable_seq: bool,
    found: bool,
}

impl Probe {
    /// A string value (or a variant name): `"oob"` as an element of `enable` counts.
    fn string(&mut self, v: &str) {
        if self.in_key {
            self.enable = self.depth == 1 && v == "enable";
        } else if self.depth == 2 && self.enable && self.enable_seq && v == "oob" {
            self.found = true;
        }
    }

    /// A key at the top level.
    fn key(&mut self, key: &str) {
        if self.depth == 1 {
            self.enable = key == "enable";
            self.enable_seq = false;
        }
    }

    fn open(&mut self, seq: bool) -> &mut Self {
        self.depth += 1;
        if self.depth == 2 && self.enable {
            self.enable_seq = seq;
        }
        self
    }

    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

/// Compares what is written with a string (for [`ser::Serializer::collect_str`]).
struct Matches<'a> {
    rest: &'a str,
    ok: bool,
}

impl fmt::Write for Matches<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.rest.strip_prefix(s) {
            Some(rest) => self.rest = rest,
            None => self.ok = false,
        }
        Ok(())
    }
}

macro_rules! ignore {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, _v: $ty) -> Result<(), EncodeError> {
            Ok(())
        })*
    };
}

impl<'p> ser::Serializer for &'p mut Probe {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = &'p mut Probe;
    type SerializeTuple = &'p mut Probe;
    type SerializeTupleStruct = &'p mut Probe;
    type SerializeTupleVariant = &'p mut Probe;
    type SerializeMap = &'p mut Probe;
    type SerializeStruct = &'p mut Probe;
    type SerializeStructVariant = &'p mut Probe;

    ignore!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_f32: f32,
        serialize_f64: f64, serialize_char: char, serialize_bytes: &[u8],
        serialize_unit_struct: &'static str,
    );

    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.string(v);
        Ok(())
    }

    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        let mut m = Matches {
            rest: if self.in_key { "enable" } else { "oob" },
            ok: true,
        };
        let _ = fmt::write(&mut m, format_args!("{value}"));
        if m.ok && m.rest.is_empty() {
            let text = if self.in_key { "enable" } else { "oob" };
            self.string(text);
        } else {
            self.string("");
        }
        Ok(())
    }

    fn serialize_none(self) -> Result<(), EncodeError> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), EncodeError> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.string(variant);
        Ok(())
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
        value: &T,
    ) -> Result<(), EncodeError> {
        // `{"variant": value}`: one more level.
        self.open(false);
        let result = value.serialize(&mut *self);
        self.close();
        result
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, EncodeError> {
        Ok(self.open(true))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self, EncodeError> {
        Ok(self.open(true))
    }

    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self.open(true))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        // `{"variant": [...]}`: counted as one level, which is enough to keep it out of
        // `enable`.
        Ok(self.open(false))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self, EncodeError> {
        Ok(self.open(false))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self.open(false))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        Ok(self.open(false))
    }
}

impl ser::SerializeSeq for &mut Probe {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Probe {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Probe {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Probe {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeMap for &mut Probe {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        self.in_key = self.depth == 1;
        let result = key.serialize(&mut **self);
        self.in_key = false;
        if self.depth == 1 {
            self.enable_seq = false;
        }
        result
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Probe {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.key(key);
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Probe {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.key(key);
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::enables_oob;
    use crate::commands::{QmpCapabilities, QmpCapability};

    #[derive(serde::Serialize)]
    struct Enable<'a> {
        enable: &'a [&'a str],
    }

    #[derive(serde::Serialize)]
    struct Other<'a> {
        other: &'a [&'a str],
        name: &'a str,
    }

    #[test]
    fn oob_counts_only_as_an_element_of_enable() {
        assert!(enables_oob(&Enable { enable: &["oob"] }));
        assert!(enables_oob(&Enable {
            enable: &["x", "oob"]
        }));
        assert!(enables_oob(&QmpCapabilities {
            enable: Some(&[QmpCapability::Oob]),
        }));
        assert!(!enables_oob(&QmpCapabilities { enable: None }));
        assert!(!enables_oob(&QmpCapabilities { enable: Some(&[]) }));
        assert!(!enables_oob(&()));
        assert!(!enables_oob(&Enable { enable: &["x"] }));
        // "oob" elsewhere (the bytes-searching check took these for a negotiation of oob).
        assert!(!enables_oob(&Other {
            other: &["oob"],
            name: "oob",
        }));
        assert!(!enables_oob(&Enable {
            enable: &["\"oob\""]
        }));
        let mut map = std::collections::BTreeMap::new();
        map.insert("enable", std::vec!["oob"]);
        assert!(enables_oob(&map));
        let mut map = std::collections::BTreeMap::new();
        map.insert("x", std::vec!["oob"]);
        map.insert("enable", std::vec!["y"]);
        assert!(!enables_oob(&map));
        // Nested deeper, it is not the top-level `enable`.
        let mut outer = std::collections::BTreeMap::new();
        outer.insert("wrap", Enable { enable: &["oob"] });
        assert!(!enables_oob(&outer));
    }
}
