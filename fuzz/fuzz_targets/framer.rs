//! Arbitrary bytes, cut into arbitrary chunks, through a [`Framer`].
//!
//! Input: 4 header bytes (buffer size, depth limit, chunking), then the stream.
//!
//! Checks: no panic; `buffered() <= capacity()` and the storage (a `Vec`) never grows;
//! `stream_position()` counts every byte fed; every frame starts with `{`, ends with `}`, is
//! exactly the stream's bytes at its offset and is one whole object for `find_frame`; items
//! come in stream order; `read_buf` is never empty once `next_frame` says `None`; and the
//! items do not depend on the chunking or on `feed` versus `read_buf` + `commit`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp_proto::{DEFAULT_MAX_DEPTH, FrameError, FrameStatus, Framer, find_frame};

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Frame { offset: u64, len: usize },
    Error(FrameError),
}

impl Item {
    fn offset(&self) -> u64 {
        match self {
            Item::Frame { offset, .. } => *offset,
            Item::Error(e) => e.offset(),
        }
    }
}

/// A tiny deterministic generator for chunk sizes.
struct Chunks(u64);

impl Chunks {
    fn next(&mut self, max: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1 + ((self.0 >> 33) as usize) % max
    }
}

/// Feeds `data` (starting at stream offset `base`) and collects every item, checking the
/// per-step invariants.
fn run(
    framer: &mut Framer<Vec<u8>>,
    data: &[u8],
    base: u64,
    mut chunk: impl FnMut() -> usize,
    use_read_buf: bool,
) -> Vec<Item> {
    let cap = framer.capacity();
    let default_depth = framer.max_depth() == DEFAULT_MAX_DEPTH;
    let mut items = Vec::new();
    let mut fed = 0usize;
    while fed < data.len() {
        let want = chunk().min(data.len() - fed);
        let piece = &data[fed..fed + want];
        let n = if use_read_buf {
            let room = framer.read_buf();
            let n = room.len().min(piece.len());
            room[..n].copy_from_slice(&piece[..n]);
            framer.commit(n);
            n
        } else {
            framer.feed(piece)
        };
        fed += n;
        assert_eq!(framer.stream_position(), base + fed as u64);
        assert!(framer.buffered() <= framer.capacity());
        while let Some(item) = framer.next_frame() {
            let item = match item {
                Ok(frame) => {
                    let bytes = frame.as_bytes();
                    let offset = frame.offset();
                    assert!(
                        bytes.len() >= 2 && bytes.len() <= cap,
                        "{offset} {}",
                        bytes.len()
                    );
                    assert_eq!(bytes[0], b'{');
                    check_last_byte(bytes);
                    // The frame is the stream's bytes at its offset.
                    let at = (offset - base) as usize;
                    assert_eq!(&data[at..at + bytes.len()], bytes);
                    if default_depth {
                        assert_eq!(
                            find_frame(bytes),
                            Ok(FrameStatus::Complete {
                                start: 0,
                                end: bytes.len()
                            })
                        );
                    }
                    Item::Frame {
                        offset,
                        len: bytes.len(),
                    }
                }
                Err(e) => {
                    assert!(e.offset() <= base + fed as u64, "{e:?}");
                    Item::Error(e)
                }
            };
            items.push(item);
            assert!(framer.buffered() <= framer.capacity());
        }
        assert!(!framer.read_buf().is_empty());
    }
    if let Some(e) = framer.finish() {
        assert!(matches!(e, FrameError::Truncated { .. }), "{e:?}");
        items.push(Item::Error(e));
    }
    assert_eq!(framer.buffered(), 0);
    for pair in items.windows(2) {
        assert!(pair[0].offset() <= pair[1].offset(), "{pair:?}");
    }
    items
}

fuzz_target!(|input: &[u8]| {
    let Some((header, data)) = input.split_first_chunk::<4>() else {
        return;
    };
    let cap = 1 + usize::from(u16::from_le_bytes([header[0], header[1]]) % 4096);
    let depth = u32::from(header[2] % 132);
    let max_chunk = 1 + usize::from(header[3] & 0x7f);
    let use_read_buf = header[3] & 0x80 != 0;

    let new = || {
        let framer = Framer::new(vec![0u8; cap]);
        if depth == 0 {
            framer
        } else {
            framer.with_max_depth(depth)
        }
    };

    let mut chunked = new();
    let storage_capacity = chunked.get_ref().capacity();
    let mut rng = Chunks(u64::from_le_bytes(
        *input.first_chunk::<8>().unwrap_or(&[0; 8]),
    ));
    let got = run(&mut chunked, data, 0, || rng.next(max_chunk), use_read_buf);

    // All at once (as much as fits each time), through the other input path.
    let mut whole = new();
    let reference = run(&mut whole, data, 0, || usize::MAX, !use_read_buf);
    assert_eq!(got, reference);

    // After `finish` the framer takes a new stream, with offsets continuing.
    let again = run(
        &mut chunked,
        data,
        data.len() as u64,
        || rng.next(max_chunk),
        use_read_buf,
    );
    let shifted: Vec<Item> = reference
        .iter()
        .map(|item| match item {
            Item::Frame { offset, len } => Item::Frame {
                offset: offset + data.len() as u64,
                len: *len,
            },
            Item::Error(e) => Item::Error(shift(*e, data.len() as u64)),
        })
        .collect();
    assert_eq!(again, shifted);

    // Memory: the storage never grew.
    let storage = chunked.into_inner();
    assert_eq!((storage.len(), storage.capacity()), (cap, storage_capacity));
});

/// A frame ends with `}`: bracket kinds are matched, so `]` never closes one.
fn check_last_byte(bytes: &[u8]) {
    assert_eq!(
        bytes[bytes.len() - 1],
        b'}',
        "{}",
        String::from_utf8_lossy(bytes)
    );
}

fn shift(e: FrameError, by: u64) -> FrameError {
    match e {
        FrameError::NotAnObject { offset } => FrameError::NotAnObject {
            offset: offset + by,
        },
        FrameError::UnexpectedByte { offset, byte } => FrameError::UnexpectedByte {
            offset: offset + by,
            byte,
        },
        FrameError::TooDeep { offset, limit } => FrameError::TooDeep {
            offset: offset + by,
            limit,
        },
        FrameError::MismatchedBracket { offset, byte } => FrameError::MismatchedBracket {
            offset: offset + by,
            byte,
        },
        FrameError::ControlCharInString { offset, byte } => FrameError::ControlCharInString {
            offset: offset + by,
            byte,
        },
        FrameError::TooLarge {
            offset,
            size,
            id,
            reply,
        } => FrameError::TooLarge {
            offset: offset + by,
            size,
            id,
            reply,
        },
        FrameError::Truncated { offset, len } => FrameError::Truncated {
            offset: offset + by,
            len,
        },
        other => panic!("new FrameError variant {other:?}"),
    }
}
