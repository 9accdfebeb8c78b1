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
        framer.feed(&bytes[split..]);
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
