//! Helpers shared by the core's integration tests: owned copies of what a session yields,
//! and the recorded QEMU transcripts.
#![allow(dead_code)]

use qmp_proto::{Failure, Notice, Outcome, Received, Session};

/// Everything a session yielded, copied out so tests can compare whole sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Greeting {
        version: (u64, u64, u64),
        oob: bool,
    },
    Return {
        id: u64,
        value: String,
    },
    Error {
        id: u64,
        class: String,
        desc: String,
    },
    Failed {
        id: u64,
        failure: Failure,
    },
    Event {
        name: String,
        data: Option<String>,
    },
    Notice(String),
}

impl Got {
    pub fn from(item: Received<'_>) -> Got {
        match item {
            Received::Greeting(g) => Got::Greeting {
                version: (g.version.major, g.version.minor, g.version.micro),
                oob: g.capabilities.oob(),
            },
            Received::Reply(r) => match r.outcome {
                Outcome::Return(v) => Got::Return {
                    id: r.id.get(),
                    value: v.as_json().to_string(),
                },
                Outcome::Error(e) => Got::Error {
                    id: r.id.get(),
                    class: e.class.to_string(),
                    desc: e.desc.to_string(),
                },
                Outcome::Failed(failure) => Got::Failed {
                    id: r.id.get(),
                    failure,
                },
            },
            Received::Event(e) => Got::Event {
                name: e.name.to_string(),
                data: e.data.map(|d| d.as_json().to_string()),
            },
            Received::Notice(n) => Got::Notice(notice_text(n)),
        }
    }
}

/// A short, stable description of a notice, for comparisons.
pub fn notice_text(n: Notice<'_>) -> String {
    match n {
        Notice::UnmatchedReply(m) => format!(
            "unmatched id={}",
            m.id().map(|i| i.as_json().to_string()).unwrap_or_default()
        ),
        Notice::UntaggedError(e) => format!("untagged {}", e.class),
        Notice::SecondGreeting(_) => "second greeting".into(),
        Notice::Discarded(id) => format!("discarded {id}"),
        Notice::Malformed { error, .. } => format!("malformed {error:?}"),
        Notice::Framing(e) => format!("framing {e:?}"),
        _ => unreachable!("new notice kind"),
    }
}

/// Polls until the session has nothing more, copying each item.
pub fn drain<B: AsRef<[u8]> + AsMut<[u8]>, const N: usize>(s: &mut Session<B, N>) -> Vec<Got> {
    let mut out = Vec::new();
    while let Some(item) = s.poll() {
        out.push(Got::from(item));
    }
    out
}

/// Feeds all of `bytes` (polling whenever the buffer is full) and returns everything yielded.
pub fn feed_all<B: AsRef<[u8]> + AsMut<[u8]>, const N: usize>(
    s: &mut Session<B, N>,
    mut bytes: &[u8],
) -> Vec<Got> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = s.feed(bytes);
        bytes = &bytes[n..];
        out.extend(drain(s));
    }
    out
}

/// A recorded transcript from `tests/data` (recorded byte for byte from QEMU 7.2.22; see
/// tests/data/README.md for the command that recorded each file).
pub fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The greeting QEMU 7.2.22 sends (tests/data/greeting.jsonl).
pub const GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n";
