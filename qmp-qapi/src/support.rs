//! What the generated vocabulary is built from: the enum and union macros, and the helpers
//! they expand to.

use std::fmt;

use serde::de::{self, Deserializer, Error as _};
use serde::ser::{self, SerializeMap, Serializer};
pub(crate) use serde::{Deserialize, Serialize};
pub(crate) use serde_json::{Map, Value};

pub(crate) use qmp_proto::commands::{Command, Empty, EventKind};

/// A QAPI enum: a variant per value QEMU 7.2 knows, and `Other(String)` keeping any value it
/// does not (a newer QEMU's), so a reply never fails to decode on an enum value.
macro_rules! qapi_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $var:ident = $val:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $var,)*
            /// A value QEMU 7.2 does not have (from another QEMU version), kept as sent.
            Other(String),
        }

        impl $name {
            /// Every value QEMU 7.2 knows, in schema order.
            pub const VALUES: &'static [&'static str] = &[$($val),*];

            /// The value as QEMU spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$var => $val,)*
                    Self::Other(value) => value,
                }
            }

            /// Whether this is a value QEMU 7.2 does not have ([`Self::Other`]).
            pub fn is_other(&self) -> bool {
                matches!(self, Self::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                match value {
                    $($val => Self::$var,)*
                    _ => Self::Other(value.to_owned()),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::support::de_enum(deserializer, |value: &str| Self::from(value))
            }
        }

        impl $crate::support::check::QapiEnum for $name {
            fn is_other(&self) -> bool {
                $name::is_other(self)
            }
        }
    };
}

/// A QAPI flat union's branches, chosen by a tag member: a variant per tag value QEMU 7.2
/// knows, holding the members that depend on it, and `Other` keeping an unknown tag and its
/// members as JSON. It (de)serializes as a JSON object holding the tag and the branch's members,
/// so it is flattened into the struct of the union's common members.
macro_rules! qapi_union {
    ($(#[$doc:meta])* $name:ident, $tag:literal { $($(#[$vdoc:meta])* $var:ident($case:literal, $ty:ty),)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $var($ty),)*
            /// A tag value QEMU 7.2 does not have (from another QEMU version), with the other
            /// members as JSON.
            Other {
                /// The tag's value.
                tag: String,
                /// The members that depend on it.
                members: ::serde_json::Map<String, ::serde_json::Value>,
            },
        }

        impl $name {
            /// The name of the tag member.
            pub const TAG: &'static str = $tag;

            /// The tag's value, as QEMU spells it.
            pub fn tag(&self) -> &str {
                match self {
                    $(Self::$var(_) => $case,)*
                    Self::Other { tag, .. } => tag,
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use $crate::support::ser_union as ser;
                match self {
                    $(Self::$var(branch) => ser(serializer, $tag, $case, branch),)*
                    Self::Other { tag, members } => ser(serializer, $tag, tag, members),
                }
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let (tag, members) = $crate::support::de_union(deserializer, $tag)?;
                match tag.as_str() {
                    $($case => $crate::support::de_branch::<_, D>(members).map(Self::$var),)*
                    _ => Ok(Self::Other { tag, members }),
                }
            }
        }
    };
}

/// Deserializes a string (borrowed or not) through `from`.
pub(crate) fn de_enum<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    from: fn(&str) -> T,
) -> Result<T, D::Error> {
    struct Visit<T>(fn(&str) -> T);
    impl<T> de::Visitor<'_> for Visit<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string (an enum value)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Ok((self.0)(v))
        }
    }
    deserializer.deserialize_str(Visit(from))
}

/// Serializes a union branch as one object: the tag, then the branch's members.
pub(crate) fn ser_union<S: Serializer, B: Serialize + ?Sized>(
    serializer: S,
    tag: &str,
    case: &str,
    branch: &B,
) -> Result<S::Ok, S::Error> {
    let members = match serde_json::to_value(branch).map_err(ser::Error::custom)? {
        Value::Object(members) => members,
        _ => return Err(ser::Error::custom("a union branch must be an object")),
    };
    let mut map = serializer.serialize_map(Some(members.len() + 1))?;
    map.serialize_entry(tag, case)?;
    for (name, value) in &members {
        if name != tag {
            map.serialize_entry(name, value)?;
        }
    }
    map.end()
}

/// Reads a union's object: the tag's value and the other members.
pub(crate) fn de_union<'de, D: Deserializer<'de>>(
    deserializer: D,
    tag: &str,
) -> Result<(String, Map<String, Value>), D::Error> {
    let mut members = Map::<String, Value>::deserialize(deserializer)?;
    match members.remove(tag) {
        Some(Value::String(value)) => Ok((value, members)),
        Some(other) => Err(de::Error::custom(format_args!(
            "the union tag `{tag}` must be a string, not {other}"
        ))),
        None => Err(D::Error::custom(format_args!("missing field `{tag}`"))),
    }
}

/// Decodes a union branch from its members.
pub(crate) fn de_branch<'de, T: de::DeserializeOwned, D: Deserializer<'de>>(
    members: Map<String, Value>,
) -> Result<T, D::Error> {
    serde_json::from_value(Value::Object(members)).map_err(de::Error::custom)
}

/// The round trips the schema coverage test runs through every generated type.
#[doc(hidden)]
pub mod check {
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    /// Decodes JSON into a type and encodes it back.
    pub type Check = fn(Value) -> Result<Value, String>;

    /// A generated enum, which can say whether a value fell into `Other`.
    pub trait QapiEnum {
        /// Whether the value is not one QEMU 7.2 has.
        fn is_other(&self) -> bool;
    }

    /// Decodes `value` as a `T` and encodes it back.
    pub fn rt<T: Serialize + DeserializeOwned>(value: Value) -> Result<Value, String> {
        let typed: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
        serde_json::to_value(&typed).map_err(|e| e.to_string())
    }

    /// [`rt`] for an enum, failing on a value that decodes as `Other`.
    pub fn rt_enum<T: Serialize + DeserializeOwned + QapiEnum>(
        value: Value,
    ) -> Result<Value, String> {
        let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        if typed.is_other() {
            return Err(format!("{value} decodes as Other"));
        }
        serde_json::to_value(&typed).map_err(|e| e.to_string())
    }
}

/// A value of any JSON type, for a member of type `any` or a property.
///
/// # Panics
///
/// If `value` has no JSON form (a map whose keys are not strings).
pub(crate) fn to_json(value: impl Serialize) -> Value {
    serde_json::to_value(value).expect("the value has a JSON form")
}

/// Decodes an optional member whose type has `null` among its values: present, even as
/// `null`, is `Some`.
pub(crate) fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}
