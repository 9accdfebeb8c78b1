//! Arbitrary bytes as one frame: [`Message::parse`], [`find_id`], every [`RawJson`]
//! accessor on every value inside, and [`JsonStr`] decoding of every string inside.
//!
//! Checks: no panic; a parsed reply and `find_id` agree on the id (events and greetings have
//! none); every fully validated
//! value (from `RawJson::parse`, the envelope's members, anything the iterators yield, and a
//! `return`/`data` payload once `validate` accepts it) is valid JSON on its own and its
//! accessors agree with its kind and text; a payload that classification only checked
//! structurally (see "How much is checked" on `RawJson`) and that `validate` refuses is still
//! safe to use: its accessors do not panic and never yield text from outside it; every
//! string's `unescaped_len`, `unescape_into`, `chars`, `eq_str` and `Display` agree with each
//! other, and a buffer one byte short is refused with the exact size needed; serde-json-core
//! decoding of a value agrees with the views.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp_proto::{JsonKind, JsonStr, Message, RawJson, UnescapeError, find_id};

fuzz_target!(|frame: &[u8]| {
    let parsed = Message::parse(frame);
    let id = find_id(frame);
    if let Some(id) = id {
        value(id, 0);
        assert!(inside(frame, id.as_json()));
    }
    if let Ok(message) = parsed {
        // Replies carry the frame's id; an event or greeting has none, even when the frame
        // holds an `id` member (which `find_id`, reading any frame, still reports).
        match message {
            Message::Return(_) | Message::Error(_) => assert_eq!(message.id(), id),
            Message::Event(_) | Message::Greeting(_) => assert_eq!(message.id(), None),
        }
        match message {
            Message::Greeting(g) => {
                string(g.version.package);
                let caps = g.capabilities.iter().inspect(|c| string(*c)).count();
                assert_eq!(
                    g.capabilities.oob(),
                    g.capabilities.iter().any(|c| c == "oob")
                );
                let _ = caps;
            }
            Message::Return(r) => payload(frame, r.value),
            Message::Error(e) => {
                string(e.error.class);
                string(e.error.desc);
                let _ = e.error.to_string();
            }
            Message::Event(e) => {
                string(e.name);
                if let Some(data) = e.data {
                    payload(frame, data);
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(frame)
        && let Ok(v) = RawJson::parse(text)
    {
        assert_eq!(v.as_json(), text.trim_matches([' ', '\t', '\r', '\n']));
        value(v, 0);
    }
});

/// Whether `inner` lies within `outer`.
fn inside(outer: &[u8], inner: &str) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// A `return` or `data` value: maybe only checked structurally.
fn payload(frame: &[u8], v: RawJson<'_>) {
    let text = v.as_json();
    assert!(inside(frame, text));
    if v.validate().is_ok() {
        return value(v, 0);
    }
    assert!(
        matches!(v.kind(), JsonKind::Object | JsonKind::Array),
        "{text}"
    );
    assert!(RawJson::parse(text).is_err());
    // Usable, if not useful: whatever the views yield is valid and comes from inside.
    let _ = (v.as_u64(), v.as_i64(), v.as_bool(), v.is_null(), v.as_str());
    for (key, member) in v.members().take(64) {
        assert!(inside(text.as_bytes(), key.as_escaped()));
        assert!(inside(text.as_bytes(), member.as_json()));
        string(key);
        value(member, 1);
    }
    for element in v.elements().take(64) {
        assert!(inside(text.as_bytes(), element.as_json()));
        value(element, 1);
    }
    if let Some(m) = v.get("id") {
        assert!(inside(text.as_bytes(), m.as_json()));
    }
    let _ = v.deserialize::<heapless::Vec<u32, 8>>();
    let _ = v.deserialize::<heapless::Vec<(), 0>>();
    let mut scratch = [0u8; 64];
    let _ = v.deserialize_unescaped::<heapless::Vec<heapless::String<16>, 4>>(&mut scratch);
}

/// Checks one fully validated value and everything inside it.
fn value(v: RawJson<'_>, depth: u32) {
    assert!(depth <= 130);
    let text = v.as_json();
    // Every value handed out is valid JSON on its own.
    assert_eq!(RawJson::parse(text).map(|p| p.as_json()), Ok(text));
    assert_eq!(v.to_string(), text);
    let kind = v.kind();
    assert_eq!(v.as_bool().is_some(), kind == JsonKind::Bool);
    assert_eq!(v.is_null(), kind == JsonKind::Null);
    assert_eq!(v.as_str().is_some(), kind == JsonKind::String);
    if let Some(n) = v.as_u64() {
        assert_eq!(kind, JsonKind::Number);
        assert_eq!(text.parse::<u64>(), Ok(n));
        assert_eq!(v.deserialize::<u64>().ok(), Some(n));
    }
    if let Some(n) = v.as_i64() {
        assert_eq!(kind, JsonKind::Number);
        assert_eq!(text.parse::<i64>(), Ok(n));
        assert_eq!(v.deserialize::<i64>().ok(), Some(n));
    }
    let _ = v.deserialize::<f64>();
    if let Ok(b) = v.deserialize::<bool>() {
        assert_eq!(v.as_bool(), Some(b));
    }
    match kind {
        JsonKind::Object => {
            let mut count = 0;
            for (key, member) in v.members() {
                string(key);
                value(member, depth + 1);
                count += 1;
            }
            // `get` finds every key (the first of repeated ones); only on small objects, to
            // keep runs fast.
            if count <= 16 {
                let mut buf = [0u8; 256];
                for (key, _) in v.members() {
                    if let Ok(k) = key.unescape_into(&mut buf) {
                        let first = v.members().find(|(k2, _)| *k2 == k).map(|(_, m)| m);
                        assert_eq!(v.get(k), first);
                        assert!(first.is_some());
                    }
                }
            }
            assert_eq!(v.elements().count(), 0);
            let _ = v.deserialize::<heapless::Vec<(), 0>>();
        }
        JsonKind::Array => {
            for element in v.elements() {
                value(element, depth + 1);
            }
            assert_eq!(v.members().count(), 0);
            let _ = v.deserialize::<heapless::Vec<u32, 8>>();
        }
        JsonKind::String => {
            let s = v.as_str().unwrap();
            string(s);
            let mut unescaped = [0u8; 64];
            let ours = s.unescape_into(&mut unescaped).ok().map(str::to_owned);
            // serde-json-core's decoding agrees with ours when both succeed.
            if let Ok(borrowed) = v.deserialize::<&str>() {
                assert_eq!(s.as_plain(), Some(borrowed));
            }
            let mut scratch = [0u8; 64];
            if let (Ok(theirs), Some(ours)) = (
                v.deserialize_unescaped::<heapless::String<64>>(&mut scratch),
                ours,
            ) {
                assert_eq!(theirs.as_str(), ours);
            }
        }
        JsonKind::Number | JsonKind::Bool | JsonKind::Null => {
            assert_eq!(v.members().count(), 0);
            assert_eq!(v.elements().count(), 0);
        }
    }
}

/// Checks that every way of decoding a (validated) string agrees.
fn string(s: JsonStr<'_>) {
    let raw = s.as_escaped();
    let display = s.to_string();
    let _ = format!("{s:?}");
    match s.unescaped_len() {
        Ok(len) => {
            let mut buf = vec![0u8; len];
            let text = s
                .unescape_into(&mut buf)
                .expect("exact-size buffer")
                .to_owned();
            assert_eq!(text.len(), len);
            let chars: String = s.chars().map(|c| c.expect("no lone surrogate")).collect();
            assert_eq!(chars, text);
            assert_eq!(display, text);
            assert!(s.eq_str(&text));
            assert!(s == text.as_str());
            if let Some(plain) = s.as_plain() {
                assert_eq!(plain, text);
                assert_eq!(plain, raw);
            }
            if len > 0 {
                let mut short = vec![0u8; len - 1];
                assert_eq!(
                    s.unescape_into(&mut short),
                    Err(UnescapeError::BufferTooSmall { needed: len })
                );
                let mut longer = text.clone();
                longer.push('x');
                assert!(!s.eq_str(&longer));
            }
        }
        Err(e) => {
            let UnescapeError::LoneSurrogate { offset } = e else {
                panic!("{e:?}");
            };
            assert!(raw[offset..].starts_with("\\u"), "{raw:?} {offset}");
            let mut buf = vec![0u8; raw.len() * 3];
            assert_eq!(s.unescape_into(&mut buf), Err(e));
            assert!(s.chars().any(|c| c.is_err()));
        }
    }
}
