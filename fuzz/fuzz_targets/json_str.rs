//! Arbitrary text as the body of a [`JsonStr`], through every decoding method.
//!
//! `JsonStr::from_escaped` documents that text which is not a valid JSON string body gives
//! unspecified results, but memory-safe and panic-free ones; this checks the "panic-free"
//! part, and that `unescape_into` never claims success with a result that disagrees with
//! `unescaped_len`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp_proto::JsonStr;

fuzz_target!(|raw: &str| {
    let s = JsonStr::from_escaped(raw);
    let _ = s.as_plain();
    let _ = s.to_string();
    let _ = format!("{s:?}");
    let _ = s.eq_str(raw);
    let _ = s.chars().count();
    let len = s.unescaped_len();
    let mut buf = vec![0u8; raw.len() * 4 + 4];
    let out = s.unescape_into(&mut buf).map(str::len);
    match (len, out) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
});
