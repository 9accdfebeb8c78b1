//! Conformance of `qmp_proto::Server` with real QEMU: every case is sent both to a
//! `qemu-system-x86_64` and to a `Server` driven by a tiny application that answers the few
//! commands the cases use the way QEMU does, and the bytes that come back are compared
//! (event timestamps blanked). Each input is followed by `{"execute": "query-status", "id":
//! "sync"}`, whose answer (an error while negotiating) marks the end of the input's answers.
//!
//! Differences that remain are the `DIFFERENT` table, asserted to still differ so that the
//! list stays honest.

use std::io::{Read, Write};
use std::time::Duration;

use qmp_e2e::{Monitor, Qemu, Stream};
use qmp_proto::{Incoming, RawJson, Server};

const SYNC: &[u8] = br#"{"execute": "query-status", "id": "sync"}"#;
const CAPS: &str = r#"{"execute": "qmp_capabilities", "id": 0}"#;
const CAPS_OOB: &str =
    r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 0}"#;

/// Cases: a name and the inputs sent one after the other on a fresh connection.
const SAME: &[(&str, &[&str])] = &[
    (
        "before negotiation, with id",
        &[r#"{"execute": "query-status", "id": 1}"#],
    ),
    (
        "before negotiation, no id",
        &[r#"{"execute": "query-status"}"#],
    ),
    ("negotiation", &[CAPS]),
    ("negotiation with oob", &[CAPS_OOB]),
    (
        "negotiation with empty enable",
        &[r#"{"execute": "qmp_capabilities", "arguments": {"enable": []}}"#],
    ),
    ("negotiation twice", &[CAPS, CAPS, CAPS_OOB]),
    (
        "unknown capability",
        &[r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}, "id": 2}"#],
    ),
    (
        "enable not an array",
        &[r#"{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}, "id": 2}"#],
    ),
    (
        "enable element not a string",
        &[r#"{"execute": "qmp_capabilities", "arguments": {"enable": [1]}, "id": 2}"#],
    ),
    (
        "unknown capabilities parameter",
        &[r#"{"execute": "qmp_capabilities", "arguments": {"x": 1}, "id": 2}"#],
    ),
    (
        "exec-oob while negotiating",
        &[r#"{"exec-oob": "query-status", "id": 3}"#],
    ),
    (
        "exec-oob without oob",
        &[CAPS, r#"{"exec-oob": "query-status", "id": 3}"#],
    ),
    (
        "exec-oob of an in-band command",
        &[CAPS_OOB, r#"{"exec-oob": "query-status", "id": 3}"#],
    ),
    (
        "exec-oob of qmp_capabilities",
        &[CAPS_OOB, r#"{"exec-oob": "qmp_capabilities", "id": 3}"#],
    ),
    (
        "exec-oob of an unknown command",
        &[CAPS_OOB, r#"{"exec-oob": "nope", "id": 3}"#],
    ),
    (
        "exec-oob not a string",
        &[CAPS_OOB, r#"{"exec-oob": 1, "id": 3}"#],
    ),
    (
        "execute and exec-oob",
        &[
            CAPS_OOB,
            r#"{"exec-oob": "query-status", "execute": "query-status", "id": 3}"#,
        ],
    ),
    ("not an object: array", &[CAPS, "[1]"]),
    ("not an object: string", &[CAPS, r#""str""#]),
    ("missing execute", &[CAPS, r#"{"id": 4}"#, "{}"]),
    (
        "execute not a string",
        &[CAPS, r#"{"execute": 1, "id": 5}"#],
    ),
    (
        "unknown member",
        &[CAPS, r#"{"execute": "query-status", "foo": 1, "id": 6}"#],
    ),
    (
        "control member",
        &[
            CAPS,
            r#"{"execute": "query-status", "control": {}, "id": 6}"#,
        ],
    ),
    (
        "arguments not an object",
        &[
            CAPS,
            r#"{"execute": "query-status", "arguments": 1, "id": 7}"#,
        ],
    ),
    (
        "unknown member before negotiation",
        &[r#"{"execute": "query-status", "foo": 1, "id": 6}"#],
    ),
    (
        "unknown command",
        &[CAPS, r#"{"execute": "nope", "id": 8}"#],
    ),
    (
        "unknown command, escaped name",
        &[CAPS, r#"{"execute": "n\u00e9\"pe", "id": 8}"#],
    ),
    (
        "arguments given",
        &[
            CAPS,
            r#"{"execute": "query-status", "arguments": {}, "id": 9}"#,
        ],
    ),
    (
        "ids of every JSON type",
        &[
            CAPS,
            r#"{"execute": "query-status", "id": 1}"#,
            r#"{"execute": "query-status", "id": -7}"#,
            r#"{"execute": "query-status", "id": 2.5}"#,
            r#"{"execute": "query-status", "id": "s\u00e9\/\u0001"}"#,
            r#"{"execute": "query-status", "id": null}"#,
            r#"{"execute": "query-status", "id": false}"#,
            r#"{"execute": "query-status", "id": []}"#,
            r#"{"execute": "query-status", "id": {"a": [1, "x", null, true, {}]}}"#,
            r#"{"execute":"query-status","id":{ "a" :[ 1,2 ] }}"#,
            r#"{"execute": "nope", "id": [{"k": "v"}]}"#,
        ],
    ),
    (
        "stop, status, cont: events",
        &[
            CAPS,
            r#"{"execute": "stop", "id": 1}"#,
            r#"{"execute": "query-status", "id": 2}"#,
            r#"{"execute": "cont", "id": 3}"#,
        ],
    ),
    (
        "parse error: expecting value",
        &[CAPS, "{\"execute\": }\x01"],
    ),
    (
        "parse error: missing colon",
        &[CAPS, "{\"execute\" \"x\"}\x01"],
    ),
    (
        "parse error: trailing comma",
        &[CAPS, "{\"execute\": \"x\",}\x01"],
    ),
    (
        "parse error: invalid keyword",
        &[CAPS, "{\"execute\": tru}\x01"],
    ),
    (
        "parse error: duplicate key",
        &[CAPS, "{\"execute\": \"x\", \"execute\": \"y\"}\x01"],
    ),
    (
        "two commands in one write",
        &[r#"{"execute": "qmp_capabilities"}{"execute": "query-status", "id": 1}"#],
    ),
];

/// Inputs where the `Server` still answers differently, and why.
const DIFFERENT: &[(&str, &[&str])] = &[
    // QEMU re-prints numbers from doubles (`%.17g`): 0.1 → 0.10000000000000001, 1.0 → 1,
    // integers past u64 → 1.8446744073709552e+19. The server echoes the number as written.
    (
        "float id",
        &[CAPS, r#"{"execute": "query-status", "id": 0.1}"#],
    ),
    // QEMU prints an object's members in its hash table's order; the server keeps the
    // client's order.
    (
        "object id with two keys",
        &[
            CAPS,
            r#"{"execute": "query-status", "id": {"b": 1, "a": 2}}"#,
        ],
    ),
    // QEMU accepts 'single-quoted' strings; the crate's JSON does not (a parse error).
    (
        "single-quoted id",
        &[CAPS, r#"{"execute": "query-status", "id": 'sq'}"#],
    ),
];

/// The tiny application: answers what QEMU answers for these few commands.
struct App<'p> {
    server: Server<'p, Vec<u8>>,
    running: bool,
}

impl App<'_> {
    fn handle(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        let mut buf = vec![0u8; 4096];
        while !rest.is_empty() {
            let n = self.server.feed(rest);
            rest = &rest[n..];
            loop {
                let events_ok = self.server.state() == qmp_proto::ServerState::Command;
                let Some(item) = self.server.poll() else {
                    break;
                };
                let len = match item {
                    Incoming::Answer(answer) => answer.encode(&mut buf).unwrap(),
                    Incoming::Request(req) if req.oob && req.name != "nope" => {
                        let desc = format_args!("The command {} does not support OOB", req.name);
                        req.error("GenericError", desc, &mut buf).unwrap()
                    }
                    Incoming::Request(req) if req.name == "query-status" => {
                        let value = if self.running {
                            r#"{"status":"running","singlestep":false,"running":true}"#
                        } else {
                            r#"{"status":"paused","singlestep":false,"running":false}"#
                        };
                        req.reply(RawJson::parse(value).unwrap(), &mut buf).unwrap()
                    }
                    Incoming::Request(req) if req.name == "stop" || req.name == "cont" => {
                        let stop = req.name == "stop";
                        let event = if stop { "STOP" } else { "RESUME" };
                        assert!(events_ok);
                        let n = qmp_proto::encode_event(event, None, (0, 0), &mut buf).unwrap();
                        out.extend_from_slice(&buf[..n]);
                        self.running = !stop;
                        req.reply(RawJson::parse("{}").unwrap(), &mut buf).unwrap()
                    }
                    Incoming::Request(req) => req.not_found(&mut buf).unwrap(),
                };
                out.extend_from_slice(&buf[..len]);
            }
        }
    }
}

/// Reads from QEMU until the answer to the sync command has arrived.
fn read_until_sync(stream: &mut Stream, out: &mut Vec<u8>) {
    let mut chunk = [0u8; 65536];
    let start = out.len();
    while !out[start..].ends_with(b"\"sync\"}\r\n")
        && !out[start..].ends_with(b"\"id\": \"sync\"}\r\n")
        && !find(&out[start..], b"\"sync\"")
    {
        let n = stream.read(&mut chunk).expect("read from QEMU");
        assert!(n > 0, "QEMU closed the connection");
        out.extend_from_slice(&chunk[..n]);
    }
    while !out.ends_with(b"\r\n") {
        let n = stream.read(&mut chunk).expect("read from QEMU");
        assert!(n > 0, "QEMU closed the connection");
        out.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Blanks event timestamps: `"seconds": N, "microseconds": N` → zeros.
fn blank_timestamps(text: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        match line.find("\"event\": ") {
            Some(at) if line.starts_with("{\"timestamp\": {") => {
                out.push_str("{\"timestamp\": {\"seconds\": 0, \"microseconds\": 0}, ");
                out.push_str(&line[at..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// Runs one case against QEMU and against the server; returns both transcripts.
fn run(qemu: &Qemu, inputs: &[&str]) -> (String, String) {
    let mut stream = qemu.address().connect().expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut real = Vec::new();
    let mut chunk = [0u8; 4096];
    while !real.ends_with(b"\r\n") {
        let n = stream.read(&mut chunk).expect("read the greeting");
        assert!(n > 0);
        real.extend_from_slice(&chunk[..n]);
    }
    let greeting = String::from_utf8(real.clone()).unwrap();
    let package = greeting
        .split("\"package\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let mut app = App {
        server: Server::new(vec![0; 8192], (7, 2, 22), &package, true),
        running: true,
    };
    let mut ours = vec![0u8; 512];
    let n = app.server.greeting(&mut ours).unwrap();
    ours.truncate(n);
    for input in inputs {
        for bytes in [input.as_bytes(), SYNC] {
            stream.write_all(bytes).unwrap();
            app.handle(bytes, &mut ours);
        }
        read_until_sync(&mut stream, &mut real);
    }
    let text = |b: Vec<u8>| blank_timestamps(&String::from_utf8(b).unwrap());
    (text(real), text(ours))
}

#[test]
fn server_answers_like_qemu() {
    let qemu = Qemu::start(Monitor::Unix).expect("start QEMU");
    let mut failures = Vec::new();
    for (name, inputs) in SAME {
        let (real, ours) = run(&qemu, inputs);
        if std::env::var_os("SHOW").is_some() {
            eprintln!("{name}:\n{real}");
        }
        if real != ours {
            failures.push(format!("{name}:\n  QEMU:   {real:?}\n  server: {ours:?}"));
        }
    }
    for (name, inputs) in DIFFERENT {
        let (real, ours) = run(&qemu, inputs);
        if real == ours {
            failures.push(format!("{name}: now the same as QEMU; move it to SAME"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
