//! Property tests: chunking never changes what is decoded, arbitrary bytes never panic, and
//! memory stays inside the caller's buffer.

mod common;

use common::{GREETING, Got};
use proptest::prelude::*;
use qmp_proto::{Framer, Session};

/// Feeds `stream` cut at the given chunk sizes (cycled) into a fresh session; returns all
/// items.
fn session_decode<const CAP: usize>(stream: &[u8], chunks: &[usize]) -> Vec<Got> {
    let mut s = Session::<[u8; CAP], 8>::new([0; CAP]);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let take = (*sizes.next().unwrap()).clamp(1, rest.len());
        let mut piece = &rest[..take];
        rest = &rest[take..];
        while !piece.is_empty() {
            let n = s.feed(piece);
            piece = &piece[n..];
            while let Some(item) = s.poll() {
                out.push(Got::from(item));
            }
        }
    }
    s.handle_eof();
    while let Some(item) = s.poll() {
        out.push(Got::from(item));
    }
    out
}

/// A recorded prefix of the mixed stream (replies and STOP/RESUME events), after the greeting.
fn recorded_stream() -> Vec<u8> {
    let mixed = common::data("mixed-stream.jsonl");
    let mut stream = GREETING.to_vec();
    // About 200 messages keep each case fast; cut at a line end.
    let cut = mixed[..20_000].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    stream.extend_from_slice(&mixed[..cut]);
    stream
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_chunking_of_a_recorded_stream_yields_the_same_messages(
        chunks in proptest::collection::vec(1usize..600, 1..40)
    ) {
        let stream = recorded_stream();
        let reference = session_decode::<4096>(&stream, &[stream.len()]);
        prop_assert!(reference.len() > 60, "{}", reference.len());
        prop_assert_eq!(session_decode::<4096>(&stream, &chunks), reference.clone());
        // With a buffer smaller than the qom-list replies those become TooLarge notices, at
        // the same places whatever the chunking.
        let small = session_decode::<512>(&stream, &[stream.len()]);
        prop_assert!(small.iter().any(|g| matches!(g, Got::Notice(n) if n.contains("TooLarge"))));
        prop_assert_eq!(session_decode::<512>(&stream, &chunks), small);
    }

    #[test]
    fn every_chunking_of_a_pretty_printed_stream_yields_the_same_messages(
        chunks in proptest::collection::vec(1usize..50, 1..20)
    ) {
        // The shape QEMU's `-mon …,pretty=on` writes (4-space indents, `{\r\n    }`).
        let pretty = b"{\r\n    \"QMP\": {\r\n        \"version\": {\r\n            \"qemu\": {\r\n                \"micro\": 22,\r\n                \"minor\": 2,\r\n                \"major\": 7\r\n            },\r\n            \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"\r\n        },\r\n        \"capabilities\": [\r\n            \"oob\"\r\n        ]\r\n    }\r\n}\r\n{\r\n    \"return\": {\r\n    }\r\n}\r\n{\r\n    \"timestamp\": {\r\n        \"seconds\": 1795596531,\r\n        \"microseconds\": 804941\r\n    },\r\n    \"event\": \"STOP\"\r\n}\r\n";
        let reference = session_decode::<512>(pretty, &[pretty.len()]);
        prop_assert_eq!(reference.len(), 3);
        prop_assert_eq!(session_decode::<512>(pretty, &chunks), reference);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_in_the_buffer(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        chunks in proptest::collection::vec(1usize..300, 1..10)
    ) {
        // Through a whole session…
        let _ = session_decode::<256>(&bytes, &chunks);
        // …and through a framer over growable storage that must not grow.
        let mut framer = Framer::new(vec![0u8; 64]);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = framer.feed(rest);
            rest = &rest[n..];
            while let Some(item) = framer.next_frame() {
                if let Ok(frame) = item {
                    let _ = qmp_proto::Message::parse(frame.as_bytes());
                    let _ = qmp_proto::find_id(frame.as_bytes());
                }
            }
            prop_assert!(framer.buffered() <= 64);
        }
        let _ = framer.finish();
        let storage = framer.into_inner();
        prop_assert_eq!((storage.len(), storage.capacity()), (64, 64));
    }

    #[test]
    fn json_like_bytes_never_panic(
        bytes in proptest::collection::vec(prop::sample::select(b"{}[]\":,\\ \r\n0123456789-.eEtruefalsnil".to_vec()), 0..2048),
        chunks in proptest::collection::vec(1usize..64, 1..10)
    ) {
        let _ = session_decode::<128>(&bytes, &chunks);
    }

    #[test]
    fn encoded_strings_read_back_exactly(s in "\\PC*", control in proptest::collection::vec(0u8..0x20, 0..4)) {
        let mut text = s.clone();
        text.extend(control.iter().map(|&c| c as char));
        let mut buf = vec![0u8; text.len() * 6 + 2];
        let n = qmp_proto::encode_json(text.as_str(), &mut buf).unwrap();
        let raw = qmp_proto::RawJson::parse(std::str::from_utf8(&buf[..n]).unwrap()).unwrap();
        let mut out = vec![0u8; text.len()];
        prop_assert_eq!(raw.as_str().unwrap().unescape_into(&mut out).unwrap(), text.as_str());
    }
}
