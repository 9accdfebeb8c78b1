//! Whether a `qmp_capabilities` sent through [`Session::execute`](crate::Session::execute)
//! enables `oob`, read from the command as encoded: its `arguments.enable` array holds the
//! string `"oob"`.

use crate::json::RawJson;

/// Whether the encoded command `command` (compact JSON, as the encoder writes it) has an
/// `arguments` object whose `enable` member is an array holding the string `"oob"`.
pub(super) fn enables_oob(command: &[u8]) -> bool {
    let Some(command) = core::str::from_utf8(command)
        .ok()
        .and_then(|text| RawJson::parse(text).ok())
    else {
        return false;
    };
    command
        .get("arguments")
        .and_then(|arguments| arguments.get("enable"))
        .is_some_and(|enable| {
            enable
                .elements()
                .any(|e| e.as_str().is_some_and(|s| s.eq_str("oob")))
        })
}

#[cfg(test)]
mod tests {
    use crate::commands::{QmpCapabilities, QmpCapability};
    use crate::encode::{Envelope, encode_command};

    /// Encodes `qmp_capabilities` with `arguments`, as the session does, and reads it back.
    fn enables_oob<A: serde::Serialize + ?Sized>(arguments: &A) -> bool {
        let mut out = [0u8; 256];
        let len = encode_command(
            &mut out,
            Envelope::Execute,
            "qmp_capabilities",
            arguments,
            Some(1),
        )
        .unwrap();
        super::enables_oob(&out[..len])
    }

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
