//! The framer over whole streams: frames, errors, resynchronisation, oversized messages.

use super::*;

/// Feeds `stream` in chunks of `chunk` bytes and collects frames (as offsets) and errors.
fn run<const N: usize>(
    stream: &[u8],
    chunk: usize,
) -> heapless::Vec<Result<(u64, usize), FrameError>, 64> {
    let mut framer = Framer::new([0u8; N]);
    let mut out = heapless::Vec::new();
    for mut piece in stream.chunks(chunk.max(1)) {
        while !piece.is_empty() {
            let n = framer.feed(piece);
            piece = &piece[n..];
            while let Some(item) = framer.next_frame() {
                out.push(item.map(|f| (f.offset(), f.as_bytes().len())))
                    .unwrap();
            }
        }
    }
    if let Some(e) = framer.finish() {
        out.push(Err(e)).unwrap();
    }
    out
}

#[test]
fn frames_by_balance_not_by_newline() {
    let stream =
        b"{\"return\": {\"s\": \"}\\n\\\"{\"}}\r\n{\r\n    \"return\": {\r\n    }\r\n}\r\n";
    for chunk in 1..stream.len() {
        let got = run::<64>(stream, chunk);
        assert_eq!(got.len(), 2, "chunk {chunk}");
        assert_eq!(got[0], Ok((0, 27)));
        assert_eq!(got[1], Ok((29, 28)));
    }
}

#[test]
fn strings_with_braces_and_escaped_quotes_do_not_confuse_depth() {
    let stream = br#"{"a": "\\", "b": "\"}{", "c": ["]", {"d": "\\\""}]}"#;
    assert_eq!(
        find_frame(stream),
        Ok(FrameStatus::Complete {
            start: 0,
            end: stream.len()
        })
    );
}

#[test]
fn non_objects_and_stray_bytes_are_errors_then_resync() {
    let stream = b"[1, 2]\r\n{\"a\": 1}\r\n}}}x{\"b\": 2}\r\n";
    let got = run::<64>(stream, 3);
    assert_eq!(got[0], Err(FrameError::NotAnObject { offset: 0 }));
    // The `[` error skips to the next `{`; one error per run of garbage.
    assert_eq!(got[1], Ok((8, 8)));
    assert_eq!(
        got[2],
        Err(FrameError::UnexpectedByte {
            offset: 18,
            byte: b'}'
        })
    );
    assert_eq!(got[3], Ok((22, 8)));
    assert_eq!(got.len(), 4);
}

#[test]
fn too_deep_is_reported_and_the_next_line_survives() {
    let mut stream = heapless::Vec::<u8, 256>::new();
    stream.push(b'{').unwrap();
    for _ in 0..100 {
        stream.extend_from_slice(b"[").unwrap();
    }
    stream.extend_from_slice(b"\r\n{\"ok\": 1}\r\n").unwrap();
    let got = run::<256>(&stream, 5);
    assert_eq!(
        got[0],
        Err(FrameError::TooDeep {
            offset: DEFAULT_MAX_DEPTH as u64,
            limit: DEFAULT_MAX_DEPTH
        })
    );
    assert_eq!(got[1], Ok((103, 9)));
    assert_eq!(got.len(), 2);
}

#[test]
fn control_character_in_string_is_reported_and_resyncs() {
    let stream = b"{\"return\": \"cut\r\n{\"id\": 2, \"return\": {}}\r\n";
    let got = run::<64>(stream, 4);
    assert_eq!(
        got[0],
        Err(FrameError::ControlCharInString {
            offset: 15,
            byte: b'\r'
        })
    );
    assert_eq!(got[1], Ok((17, 23)));
    assert_eq!(got.len(), 2);
}

#[test]
fn object_at_line_start_inside_a_frame_means_truncation() {
    let stream = b"{\"return\": {\"a\": 1\r\n{\"id\": 2, \"return\": {}}\r\n";
    for chunk in 1..8 {
        let got = run::<64>(stream, chunk);
        assert_eq!(got[0], Err(FrameError::Truncated { offset: 0, len: 20 }));
        assert_eq!(got[1], Ok((20, 23)));
        assert_eq!(got.len(), 2);
    }
}

#[test]
fn end_of_stream_inside_a_frame_is_truncation() {
    let got = run::<64>(b"{\"return\": 1}{\"ret", 2);
    assert_eq!(got[0], Ok((0, 13)));
    assert_eq!(got[1], Err(FrameError::Truncated { offset: 13, len: 5 }));
}

#[test]
fn oversized_frame_is_skimmed_for_its_id_wherever_it_is() {
    // QEMU puts the id last in returns and first in errors.
    let big_return = b"{\"return\": [\"aaaaaaaaaaaaaaaaaaaa\", {\"id\": 99}, \"bbbbbbbbbbbbbbbbbbbbbbbbb\"], \"id\": 7}\r\n{\"return\": {}, \"id\": 8}\r\n";
    for chunk in [1, 3, 16, 100] {
        let got = run::<32>(big_return, chunk);
        match got[0] {
            Err(FrameError::TooLarge {
                offset: 0,
                size,
                id,
                reply: true,
            }) => {
                assert_eq!(size, 86);
                assert_eq!(id.unwrap().as_u64(), Some(7), "chunk {chunk}");
            }
            ref other => panic!("chunk {chunk}: {other:?}"),
        }
        assert_eq!(got[1], Ok((88, 23)));
        assert_eq!(got.len(), 2);
    }
    let big_error = b"{\"id\": \"str-id\", \"error\": {\"class\": \"GenericError\", \"desc\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}";
    match run::<16>(big_error, 5)[0] {
        Err(FrameError::TooLarge {
            id: Some(id),
            reply: true,
            ..
        }) => {
            assert_eq!(id.as_bytes(), b"\"str-id\"")
        }
        ref other => panic!("{other:?}"),
    }
    let no_id = b"{\"event\": \"X\", \"data\": {\"id\": 5, \"pad\": \"yyyyyyyyyyyyyyyyyyyyyyyy\"}}";
    match run::<16>(no_id, 5)[0] {
        Err(FrameError::TooLarge {
            id: None,
            reply: false,
            ..
        }) => {}
        ref other => panic!("{other:?}"),
    }
    // Which keys make a reply: `return` or `error` at the top level, and no `event`;
    // keys that only begin like those, or are escaped, do not count.
    for (text, reply) in [
        (&b"{\"return\": \"xxxxxxxxxxxxxxxxxxxxxxxx\"}"[..], true),
        (b"{\"error\": {\"class\": \"xxxxxxxxxxxxxxxxxxxxx\"}}", true),
        (b"{\"returns\": \"xxxxxxxxxxxxxxxxxxxxxxx\"}", false),
        (b"{\"retur\": \"xxxxxxxxxxxxxxxxxxxxxxxxx\"}", false),
        (
            b"{\"\\u0069d\": 1, \"x\": \"xxxxxxxxxxxxxxxxxxxxx\"}",
            false,
        ),
        (b"{\"data\": {\"return\": \"xxxxxxxxxxxxxxxxxxx\"}}", false),
        (
            b"{\"return\": 1, \"event\": \"xxxxxxxxxxxxxxxxxxx\"}",
            false,
        ),
    ] {
        match run::<16>(text, 3)[0] {
            Err(FrameError::TooLarge { reply: r, .. }) => {
                assert_eq!(r, reply, "{}", std::string::String::from_utf8_lossy(text))
            }
            ref other => panic!("{other:?}"),
        }
    }
}

#[test]
fn oversized_frame_cut_off_by_a_new_line_object_is_truncated() {
    let stream =
        b"{\"return\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \r\n{\"id\": 1, \"return\": {}}\r\n";
    let got = run::<24>(stream, 7);
    assert_eq!(got[0], Err(FrameError::Truncated { offset: 0, len: 49 }));
    assert_eq!(got[1], Ok((49, 23)));
}

#[test]
fn read_buf_is_never_empty_after_frames_are_drained() {
    let mut framer = Framer::new([0u8; 8]);
    for _ in 0..100 {
        let room = framer.read_buf();
        assert!(!room.is_empty());
        room.fill(b' ');
        let n = room.len().min(3);
        framer.commit(n);
        while framer.next_frame().is_some() {}
    }
    assert_eq!(framer.stream_position(), 300);
}

#[test]
fn grow_keeps_an_unfinished_object_and_its_scan() {
    /// Storage that grows to any length asked (up to its array).
    struct Growing([u8; 64], usize);
    impl AsRef<[u8]> for Growing {
        fn as_ref(&self) -> &[u8] {
            &self.0[..self.1]
        }
    }
    impl AsMut<[u8]> for Growing {
        fn as_mut(&mut self) -> &mut [u8] {
            &mut self.0[..self.1]
        }
    }
    impl Buffer for Growing {
        fn grow_to(&mut self, len: usize) -> bool {
            let len = len.min(self.0.len());
            let grew = len > self.1;
            self.1 = self.1.max(len);
            grew
        }
    }
    let stream = b"{\"return\": \"a}b{c\", \"id\": 77}";
    let mut framer = Framer::new(Growing([0; 64], 8));
    assert!(!framer.grow(), "nothing to grow for yet");
    let mut fed = 0;
    let frame = loop {
        if framer.is_full() {
            assert!(framer.grow());
        }
        fed += framer.feed(&stream[fed..]);
        if let Some(frame) = framer.next_frame() {
            break frame.unwrap().as_bytes().to_vec();
        }
    };
    assert_eq!(frame, stream);
    assert_eq!(framer.capacity(), 32);
}
