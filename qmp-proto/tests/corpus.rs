//! Decoding real QEMU 7.2.22 output, recorded byte for byte (tests/data, with the recording
//! script and command in tests/data/README.md).

mod common;

use common::data;
use qmp_proto::{Framer, Message, RawJson};

/// Frames and classifies a whole stream fed in `chunk`-byte pieces into a `cap`-byte buffer.
/// Returns one line per message: its kind, id or name, and a digest of its value.
fn decode(stream: &[u8], chunk: usize, cap: usize) -> Vec<String> {
    let mut framer = Framer::new(vec![0u8; cap]);
    let mut out = Vec::new();
    for mut piece in stream.chunks(chunk) {
        while !piece.is_empty() {
            let n = framer.feed(piece);
            piece = &piece[n..];
            while let Some(frame) = framer.next_frame() {
                let frame = frame.expect("real QEMU output frames cleanly");
                out.push(describe(
                    Message::parse(frame.as_bytes()).expect("real QEMU output classifies"),
                ));
            }
        }
    }
    assert_eq!(framer.finish(), None, "stream ends between messages");
    assert_eq!(framer.into_inner().len(), cap, "the buffer never grows");
    out
}

fn describe(m: Message<'_>) -> String {
    match m {
        Message::Greeting(g) => format!(
            "greeting {}.{}.{} {} caps={}",
            g.version.major,
            g.version.minor,
            g.version.micro,
            g.version.package,
            g.capabilities
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Message::Return(r) => format!(
            "return id={} len={} first={:?}",
            r.id.map(|i| i.as_json().to_string()).unwrap_or_default(),
            r.value.as_json().len(),
            r.value.as_json().chars().next()
        ),
        Message::Error(e) => format!(
            "error id={} {}: {}",
            e.id.map(|i| i.as_json().to_string()).unwrap_or_default(),
            e.error.class,
            e.error.desc
        ),
        Message::Event(e) => format!(
            "event {} data={} t={}.{:06}",
            e.name,
            e.data.map(|d| d.as_json().to_string()).unwrap_or_default(),
            e.timestamp.seconds,
            e.timestamp.microseconds
        ),
    }
}

#[test]
fn greeting() {
    let bytes = data("greeting.jsonl");
    assert_eq!(bytes, common::GREETING);
    let got = decode(&bytes, bytes.len(), 4096);
    assert_eq!(
        got,
        ["greeting 7.2.22 Debian 1:7.2+dfsg-7+deb12u18+b3 caps=oob"]
    );
    // Split at every byte offset: the same single message.
    // (The object ends 2 bytes before the end: `\r\n` follows.)
    for split in 1..bytes.len() - 2 {
        let mut framer = Framer::new([0u8; 256]);
        assert_eq!(framer.feed(&bytes[..split]), split);
        assert!(framer.next_frame().is_none(), "split {split}");
        let _ = framer.feed(&bytes[split..]);
        let frame = framer.next_frame().unwrap().unwrap();
        assert!(matches!(
            Message::parse(frame.as_bytes()),
            Ok(Message::Greeting(_))
        ));
    }
}

#[test]
fn query_qmp_schema_207_kb_reply() {
    let bytes = data("query-qmp-schema.jsonl");
    assert!(bytes.len() > 200_000);
    let reference = decode(&bytes, bytes.len(), 256 * 1024);
    assert_eq!(
        reference,
        [format!(
            "return id=1 len={} first=Some('[')",
            bytes.len() - r#"{"return": , "id": 1}"#.len() - 2
        )]
    );
    for chunk in [1, 3, 4096, 65536] {
        assert_eq!(
            decode(&bytes, chunk, 256 * 1024),
            reference,
            "chunk {chunk}"
        );
    }

    // The value is usable: walk the schema without serde, and deserialize entries with it.
    let frame = &bytes[..bytes.len() - 2];
    let Ok(Message::Return(ret)) = Message::parse(frame) else {
        panic!()
    };
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        name: &'a str,
        #[serde(rename = "meta-type")]
        meta_type: &'a str,
    }
    let mut commands = 0;
    let mut events = 0;
    let mut saw_query_status = false;
    for element in ret.value.elements() {
        let entry: Entry<'_> = element.deserialize().unwrap();
        match entry.meta_type {
            "command" => commands += 1,
            "event" => events += 1,
            _ => {}
        }
        saw_query_status |= entry.name == "query-status";
    }
    assert!(saw_query_status);
    assert!(
        commands > 200 && events > 40,
        "{commands} commands, {events} events"
    );
}

#[test]
fn query_commands_reply() {
    let bytes = data("query-commands.jsonl");
    let frame = &bytes[..bytes.len() - 2];
    let Ok(Message::Return(ret)) = Message::parse(frame) else {
        panic!()
    };
    assert_eq!(ret.id.unwrap().as_u64(), Some(2));
    let names: Vec<String> = ret
        .value
        .elements()
        .map(|e| e.get("name").unwrap().as_str().unwrap().to_string())
        .collect();
    for expected in [
        "qmp_capabilities",
        "query-status",
        "stop",
        "cont",
        "query-qmp-schema",
        "human-monitor-command",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}");
    }
}

#[test]
fn mixed_stream_of_replies_and_events() {
    let bytes = data("mixed-stream.jsonl");
    let reference = decode(&bytes, bytes.len(), 8192);
    assert_eq!(
        reference.len(),
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    );
    // The recording sent query-status, stop, query-version, cont, no-such-command, qom-list,
    // human-monitor-command with ids 10, 11, …; stop and cont each put an event first.
    let mut next_id = 10;
    let mut stops = 0;
    let mut resumes = 0;
    for line in &reference {
        if let Some(rest) = line
            .strip_prefix("return id=")
            .or_else(|| line.strip_prefix("error id="))
        {
            let id: u64 = rest.split([' ']).next().unwrap().parse().unwrap();
            assert_eq!(id, next_id, "replies come in order");
            if (id - 10) % 7 == 4 {
                assert_eq!(
                    line,
                    &format!(
                        "error id={id} CommandNotFound: The command no-such-command has not been found"
                    )
                );
            }
            next_id += 1;
        } else if line.starts_with("event STOP ") {
            stops += 1;
        } else if line.starts_with("event RESUME ") {
            resumes += 1;
        } else {
            panic!("unexpected {line}");
        }
    }
    assert!(next_id - 10 > 8_000, "{} exchanges", next_id - 10);
    assert!(stops > 1000 && stops == resumes);
    for chunk in [1, 2, 13, 4096] {
        assert_eq!(decode(&bytes, chunk, 8192), reference, "chunk {chunk}");
    }
}

#[test]
fn human_monitor_command_string_keeps_its_escapes_until_asked() {
    let bytes = data("mixed-stream.jsonl");
    let line = bytes
        .split(|&b| b == b'\n')
        .find(|l| l.windows(10).any(|w| w == b"VM status:"))
        .unwrap();
    let Ok(Message::Return(ret)) = Message::parse(line.strip_suffix(b"\r").unwrap()) else {
        panic!()
    };
    let text = ret.value.as_str().unwrap();
    assert_eq!(text.as_escaped(), "VM status: running\\r\\n");
    let mut buf = [0u8; 64];
    assert_eq!(
        text.unescape_into(&mut buf).unwrap(),
        "VM status: running\r\n"
    );
    assert!(RawJson::parse(ret.value.as_json()).is_ok());
}

/// Decodes `stream` split in two at every offset and checks each gives `reference`.
fn every_split_matches(stream: &[u8], reference: &[String], cap: usize) {
    for split in 1..stream.len() {
        let mut framer = Framer::new(vec![0u8; cap]);
        let mut got = Vec::new();
        for part in [&stream[..split], &stream[split..]] {
            let mut rest = part;
            while !rest.is_empty() {
                let n = framer.feed(rest);
                rest = &rest[n..];
                while let Some(frame) = framer.next_frame() {
                    got.push(describe(Message::parse(frame.unwrap().as_bytes()).unwrap()));
                }
            }
        }
        assert_eq!(got, reference, "split at {split}");
    }
}

#[test]
fn session_transcript_with_ids_of_every_json_type() {
    let bytes = data("session.jsonl");
    let got = decode(&bytes, bytes.len(), 4096);
    // As recorded (tests/data/commands.txt lists what the client sent for each line).
    assert_eq!(
        got[1],
        "error id=\"before-negotiation\" CommandNotFound: Expecting capabilities negotiation with 'qmp_capabilities'"
    );
    assert_eq!(got[2], "return id= len=2 first=Some('{')");
    assert!(got[7].starts_with("event STOP data= t="));
    assert_eq!(
        got[14],
        "error id=10 GenericError: Parameter 'id' is missing"
    );
    assert_eq!(
        got[16],
        "error id=12 DeviceNotFound: Device '/no/such/path' not found"
    );
    assert_eq!(
        got[19],
        "error id=15 CommandNotFound: Capabilities negotiation is already complete, command ignored"
    );
    assert!(
        got[20].starts_with(
            "event RESET data={\"guest\": false, \"reason\": \"host-qmp-system-reset\"}"
        )
    );
    assert!(got.last().unwrap().starts_with("return id=\"bye\""));
    assert!(
        got[got.len() - 2]
            .starts_with("event SHUTDOWN data={\"guest\": false, \"reason\": \"host-qmp-quit\"}")
    );
    every_split_matches(&bytes, &got, 4096);

    // Ids come back unchanged whatever their type: QEMU echoes 1e400 as `inf` (not JSON, but
    // accepted), 2^64 as a float, and escapes every non-ASCII code point.
    let ids: Vec<String> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            Message::parse(l)
                .unwrap()
                .id()
                .map(|i| i.as_json().to_string())
        })
        .collect();
    for expected in [
        "\"a string id\"",
        "null",
        "-42",
        "0.10000000000000001",
        "inf",
        "-inf",
        "18446744073709551615",
        "1.8446744073709552e+19",
        "[1, \"two\", null, true, false, {}]",
    ] {
        assert!(ids.iter().any(|i| i == expected), "{expected} in {ids:?}");
    }
    let unicode = bytes
        .split(|&b| b == b'\n')
        .find(|l| l.windows(5).any(|w| w == b"caf\\u"))
        .unwrap();
    let id = Message::parse(unicode)
        .unwrap()
        .id()
        .unwrap()
        .as_str()
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(id.unescape_into(&mut buf).unwrap(), "café 😀 \0 / \" \\");
}

#[test]
fn error_transcript_untagged_parse_errors_and_envelope_errors() {
    let bytes = data("errors.jsonl");
    let got = decode(&bytes, 7, 1024);
    let untagged = got
        .iter()
        .filter(|l| l.starts_with("error id= GenericError: JSON parse error"))
        .count();
    assert!(untagged >= 20, "{untagged}");
    assert!(got.contains(&"error id= GenericError: QMP input must be a JSON object".to_string()));
    assert!(got.contains(
        &"error id=13 GenericError: QMP input member 'arguments' must be an object".to_string()
    ));
    // QEMU's own escapes of what it could not parse (a raw 0x01, U+FFFD) decode cleanly.
    assert!(got.contains(&"error id= GenericError: JSON parse error, stray '\u{1}'".to_string()));
    assert!(
        got.contains(&"error id= GenericError: JSON parse error, stray '\u{fffd}'".to_string())
    );
    let ends = got
        .iter()
        .filter(|l| l.starts_with("return id=\"end-"))
        .count();
    assert_eq!(ends, 15);
    every_split_matches(&bytes, &got, 1024);
}

#[test]
fn oob_transcript_replies_overtake_in_band_ones() {
    let bytes = data("oob.jsonl");
    let got = decode(&bytes, 3, 1024);
    let order: Vec<&str> = got
        .iter()
        .filter_map(|l| l.split("id=\"").nth(1).and_then(|r| r.split('"').next()))
        .collect();
    // The in-band commands were sent first, while QEMU's main loop was blocked; the
    // out-of-band ones, sent after, were answered first (see tests/data/commands.txt).
    assert_eq!(
        order,
        [
            "oob-1", "oob-2", "oob-3", "ib-1", "ib-2", "ib-3", "ib-4", "both", "ib-5"
        ]
    );
}

#[test]
fn pretty_printed_transcript_frames_by_balance() {
    let bytes = data("pretty.jsonl");
    assert!(
        bytes.windows(7).any(|w| w == b"{\r\n    "),
        "recorded with pretty=on"
    );
    let got = decode(&bytes, bytes.len(), 1024);
    assert!(got[0].starts_with("greeting 7.2.22"));
    // query-name's empty object prints as `{\r\n    }`: still an object value.
    assert!(got.iter().any(|l| l.starts_with("event STOP")));
    assert!(got.iter().any(|l| l.starts_with("event RESUME")));
    assert!(got.iter().any(|l| l.starts_with("error id=")));
    for chunk in [1, 2, 5, 64] {
        assert_eq!(decode(&bytes, chunk, 1024), got, "chunk {chunk}");
    }
    every_split_matches(&bytes, &got, 1024);
}
