//! The block scan against the byte scan, and the spans it records.

use super::*;
use crate::Framer;
use proptest::prelude::*;

/// Runs a scanner over `bytes` fed in pieces ending at `cuts`, the way the framer does
/// (each call sees everything up to the current end), with either scan.
fn run(
    mut scanner: Scanner,
    bytes: &[u8],
    cuts: &[usize],
    max_depth: u32,
    fast: bool,
) -> (Scanned, usize, Scanner) {
    let mut pos = 0;
    let mut ends: std::vec::Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    ends.sort_unstable();
    ends.push(bytes.len());
    let mut stop = Scanned::NeedMore;
    for end in ends {
        if pos > end {
            continue;
        }
        stop = if fast {
            scanner.scan_blocks::<true>(&bytes[..end], &mut pos, max_depth)
        } else {
            scanner.scan_bytes::<true>(&bytes[..end], &mut pos, max_depth)
        };
        if stop != Scanned::NeedMore {
            break;
        }
    }
    (stop, pos, scanner)
}

/// JSON-like bytes. `rare` 0 has no backslashes or control characters (blocks stay on
/// the fast path), 1 adds line ends, 2 adds backslashes, control characters and any byte
/// (many blocks go to the byte loop).
fn json_like(rare: u32) -> impl Strategy<Value = std::vec::Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            40 => prop::sample::select(b"aaaaaaaa0123 :,".to_vec()),
            20 => Just(b'"'),
            6 => prop::sample::select(b"{}[]".to_vec()),
            rare.min(1) => prop::sample::select(b"\r\n".to_vec()),
            rare / 2 * 5 => prop::sample::select(b"\\\\\\\r\n\t\x01".to_vec()),
            rare / 2 * 5 => any::<u8>(),
        ],
        0..400,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn block_scan_equals_byte_scan(
        bytes in (0u32..3).prop_flat_map(json_like),
        depth in 1u32..6,
        kinds: u8,
        in_string: bool,
        escaped: bool,
        line_start: bool,
        max_depth in 1u32..10,
        cuts in proptest::collection::vec(0usize..400, 0..4),
    ) {
        let scanner = Scanner {
            depth,
            // Any mix of `{` and `[` inside the frame's own `{`.
            kinds: Kinds {
                low: u64::from(kinds) & ((1 << (depth - 1)) - 1),
                high: 0,
            },
            in_string,
            escaped: escaped && in_string,
            line_start: line_start && !in_string,
            ..Scanner::open(0)
        };
        let max_depth = max_depth.max(depth);
        let slow = run(scanner, &bytes, &cuts, max_depth, false);
        let fast = run(scanner, &bytes, &cuts, max_depth, true);
        if slow.0 == Scanned::Complete {
            prop_assert_eq!((fast.0, fast.1, fast.2.spans), (slow.0, slow.1, slow.2.spans));
        } else {
            prop_assert_eq!(fast, slow);
        }
    }
}

/// Frames `stream` in `chunk`-byte pieces and checks every frame's spans and message
/// against the bytes alone.
fn check_spans(stream: &[u8], chunk: usize) -> usize {
    let mut framer = Framer::new([0u8; 512]);
    let mut frames = 0;
    for mut piece in stream.chunks(chunk.max(1)) {
        while !piece.is_empty() {
            let n = framer.feed(piece);
            piece = &piece[n..];
            while let Some(item) = framer.next_frame() {
                let Ok(frame) = item else { continue };
                frames += 1;
                let bytes = frame.as_bytes();
                for &(start, end) in frame.spans().as_slice() {
                    let (start, end) = (start as usize, end as usize);
                    assert!(matches!(bytes[start], b'{' | b'['), "{start}");
                    let skipped = skip_nested(bytes, start, MAX_SUPPORTED_DEPTH);
                    assert_eq!(skipped, Ok(end));
                }
                assert_eq!(frame.message(), crate::Message::parse(bytes));
            }
        }
    }
    frames
}

#[test]
fn spans_locate_the_top_level_nested_values() {
    let stream = b"{\"return\": {\"a\": [1, {}]}, \"id\": [2]}\r\n\
        {\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"X\", \"data\": [\"]\"]}\r\n\
        {\"a\": {}, \"b\": [], \"c\": {}, \"d\": [], \"return\": {\"x\": 1}}\r\n";
    let mut framer = Framer::new([0u8; 256]);
    let _ = framer.feed(stream);
    let spans = |framer: &mut Framer<[u8; 256]>| {
        let frame = framer.next_frame().unwrap().unwrap();
        std::vec::Vec::from(frame.spans().as_slice())
    };
    assert_eq!(spans(&mut framer), [(11, 25), (33, 36)]);
    assert_eq!(spans(&mut framer), [(14, 47), (71, 76)]);
    // Only the first four are kept; the fifth is found by skipping.
    assert_eq!(spans(&mut framer), [(6, 8), (15, 17), (24, 26), (33, 35)]);
    for chunk in [1, 7, 64, 200] {
        assert_eq!(check_spans(stream, chunk), 3);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn framed_messages_classify_as_their_bytes_do(
        bytes in (0u32..3).prop_flat_map(json_like),
        chunk in 1usize..200,
    ) {
        let mut stream = std::vec::Vec::from(&b"{\"return\": "[..]);
        stream.extend_from_slice(&bytes);
        check_spans(&stream, chunk);
        check_spans(&bytes, chunk);
    }
}

#[test]
fn long_strings_escapes_and_pretty_printing_scan_alike() {
    let mut stream = std::vec::Vec::new();
    stream.extend_from_slice(b"{\"return\": [");
    for i in 0..50 {
        stream.extend_from_slice(b"{\"name\": \"");
        stream.extend(core::iter::repeat_n(b'x', i * 3));
        stream.extend(core::iter::repeat_n(b'\\', (i % 4) * 2));
        stream.extend_from_slice(b"\\\"\"},\r\n    [\"\\\\\"]\r\n, ");
    }
    stream.extend_from_slice(b"{}], \"id\": 1}\r\n{");
    for split in (0..stream.len()).step_by(3) {
        let slow = run(Scanner::open(0), &stream[1..], &[split], 64, false);
        let fast = run(Scanner::open(0), &stream[1..], &[split], 64, true);
        assert_eq!(
            (fast.0, fast.1, fast.2.spans),
            (slow.0, slow.1, slow.2.spans),
            "split {split}"
        );
    }
}
