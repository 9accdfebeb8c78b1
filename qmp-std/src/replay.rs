//! Replays a [transcript](crate::transcript) as a fake QEMU: the server's half of a recorded
//! session, played back to a client that must send what the recorded client sent.
//!
//! A transcript written by `qmp-shell -l` or by a [`Recorder`](crate::transcript::Recorder)
//! on any client (against real QEMU) becomes a deterministic test of a client, without
//! QEMU. The replay walks the transcript in order:
//!
//! - a message QEMU sent (`in`: the greeting, events, replies) is sent to the client: the
//!   greeting and events byte for byte as recorded, a reply with its `id` rewritten to the one
//!   the client gave the matching command (encoded by [`qmp_proto::encode_reply`] /
//!   [`qmp_proto::encode_error`], QEMU's own format, with the recorded value verbatim);
//! - a message the client sent (`out`) is awaited and compared with what the client sends
//!   now, as JSON, with the top-level `id` left out (ids may differ, and a command may go
//!   with or without one).
//!
//! On the first difference the replay stops, closes the connection, and reports a
//! [`Divergence`]: the transcript entry, the path of the first differing field, and both
//! messages. [`Replay::finish`] returns it once the client is done, as a typed
//! [`ReplayError`] (whose `Display` is the readable diff).
//!
//! ```
//! use qmp_std::replay::Replay;
//! use qmp_std::transcript::Transcript;
//! use serde_json::json;
//!
//! // Recorded from QEMU 7.2 (here by hand: see `qmp-shell -l` for real ones).
//! let transcript = Transcript::parse(r#"
//! {"dir":"in","t":1.0,"msg":{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}}
//! {"dir":"out","t":1.1,"msg":{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}}
//! {"dir":"in","t":1.2,"msg":{"return": {}, "id": 1}}
//! {"dir":"out","t":1.3,"msg":{"execute":"qom-get","arguments":{"path":"/machine","property":"type"}}}
//! {"dir":"in","t":1.4,"msg":{"return": "none-machine"}}
//! "#)?;
//!
//! let (stream, replay) = Replay::spawn_unix(transcript.clone())?;
//! let mut qmp = qmp_std::Client::new(stream)?;
//! let args = json!({"path": "/machine", "property": "type"});
//! assert_eq!(qmp.execute_raw("qom-get", &args)?, json!("none-machine"));
//! drop(qmp);
//! replay.finish()?;
//!
//! // A client that asks for something else is caught.
//! let (stream, replay) = Replay::spawn_unix(transcript)?;
//! let mut qmp = qmp_std::Client::new(stream)?;
//! let args = json!({"path": "/machine", "property": "kvm"});
//! assert!(qmp.execute_raw("qom-get", &args).is_err());
//! drop(qmp);
//! let diff = replay.finish().unwrap_err().to_string();
//! assert!(diff.contains("at arguments.property"), "{diff}");
//! assert!(diff.contains(r#"expected: "type""#), "{diff}");
//! assert!(diff.contains(r#"got:      "kvm""#), "{diff}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

use qmp_proto::{RawJson, encode_error, encode_reply};
use serde_json::Value;

use crate::fake::encode_vec;
use crate::transcript::{Direction, Entry, Splitter, Transcript};

/// Where a replay and its client parted ways: what the transcript had and what came.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The transcript entry expected, counted from 1 (a line number when the transcript
    /// has no blank lines).
    pub entry: usize,
    /// The path of the first differing field (`arguments.file.size`, `actions[1].type`;
    /// empty when the messages differ as a whole).
    pub path: String,
    /// The recorded value at `path` (JSON), or `None` where the recording had nothing.
    pub expected_value: Option<String>,
    /// The client's value at `path` (JSON), or `None` where the client sent nothing.
    pub got_value: Option<String>,
    /// The recorded message, without its `id`.
    pub expected: String,
    /// What the client sent, without its `id`.
    pub got: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "the message".to_owned()
        } else {
            self.path.clone()
        };
        let absent = "(nothing)".to_owned();
        writeln!(
            f,
            "the client diverged from transcript entry {} at {at}",
            self.entry
        )?;
        writeln!(
            f,
            "  expected: {}",
            self.expected_value.as_ref().unwrap_or(&absent)
        )?;
        writeln!(
            f,
            "  got:      {}",
            self.got_value.as_ref().unwrap_or(&absent)
        )?;
        writeln!(f, "  expected message: {}", self.expected)?;
        write!(f, "  got message:      {}", self.got)
    }
}

/// Why a replay failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayError {
    /// The client sent something other than what was recorded.
    Diverged(Box<Divergence>),
    /// The client sent more than the transcript has.
    Extra {
        /// What it sent, without its `id`.
        got: String,
    },
    /// The client closed the connection while the transcript still expected a message.
    Ended {
        /// The transcript entry expected, counted from 1.
        entry: usize,
        /// The message it expected, without its `id`.
        expected: String,
    },
    /// The connection failed.
    Io(io::Error),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Diverged(d) => d.fmt(f),
            ReplayError::Extra { got } => {
                write!(f, "the client sent more than the transcript has: {got}")
            }
            ReplayError::Ended { entry, expected } => write!(
                f,
                "the client closed the connection before sending transcript entry {entry}: {expected}"
            ),
            ReplayError::Io(e) => write!(f, "replay: {e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

impl From<io::Error> for ReplayError {
    fn from(e: io::Error) -> Self {
        ReplayError::Io(e)
    }
}

/// A transcript being replayed on its own thread; see the [module docs](self).
#[derive(Debug)]
pub struct Replay {
    thread: Option<JoinHandle<Result<(), ReplayError>>>,
    path: Option<PathBuf>,
}

impl Replay {
    /// Replays `transcript` on a fresh [`UnixStream::pair`]: returns the client's end.
    pub fn spawn_unix(transcript: Transcript) -> io::Result<(UnixStream, Replay)> {
        let (client, server) = UnixStream::pair()?;
        let thread = thread::Builder::new()
            .name("qmp-replay".into())
            .spawn(move || play(&transcript, server))?;
        Ok((
            client,
            Replay {
                thread: Some(thread),
                path: None,
            },
        ))
    }

    /// Replays `transcript` to the first client that connects to the Unix socket `path`
    /// (created here, removed by [`finish`](Replay::finish)), for clients that take an
    /// address, such as `qmp-shell`.
    pub fn listen_unix(transcript: Transcript, path: impl AsRef<Path>) -> io::Result<Replay> {
        let path = path.as_ref().to_owned();
        let listener = UnixListener::bind(&path)?;
        let thread = thread::Builder::new()
            .name("qmp-replay".into())
            .spawn(move || {
                let (stream, _) = listener.accept()?;
                play(&transcript, stream)
            })?;
        Ok(Replay {
            thread: Some(thread),
            path: Some(path),
        })
    }

    /// Waits until the client has closed the connection (or the replay stopped at a
    /// divergence) and says whether the client did what the transcript says.
    pub fn finish(mut self) -> Result<(), ReplayError> {
        let result = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ReplayError::Io(io::Error::other("the replay panicked"))),
            None => Ok(()),
        };
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A command matched and not answered yet: its recorded id and the client's (raw JSON).
struct Matched {
    recorded: Option<String>,
    client: Option<String>,
}

/// The client's messages, one at a time.
struct Incoming {
    stream: UnixStream,
    splitter: Splitter,
    ready: std::collections::VecDeque<String>,
}

impl Incoming {
    /// The next whole message, or `None` at the end of the stream.
    fn next(&mut self) -> io::Result<Option<String>> {
        let mut buf = [0u8; 8192];
        while self.ready.is_empty() {
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            let ready = &mut self.ready;
            self.splitter.push(&buf[..n], |m| {
                ready.push_back(String::from_utf8_lossy(m).into_owned());
            });
        }
        Ok(self.ready.pop_front())
    }
}

fn play(transcript: &Transcript, stream: UnixStream) -> Result<(), ReplayError> {
    let mut writer = stream.try_clone()?;
    let mut incoming = Incoming {
        stream,
        splitter: Splitter::default(),
        ready: Default::default(),
    };
    let mut matched: Vec<Matched> = Vec::new();
    let result = (|| {
        for (index, entry) in transcript.entries().iter().enumerate() {
            match entry.direction {
                Direction::In => {
                    let mut bytes = answer(entry, &mut matched);
                    bytes.extend_from_slice(b"\r\n");
                    // A client that left early is reported when its message is missed.
                    let _ = writer.write_all(&bytes);
                }
                Direction::Out => {
                    let Some(got) = incoming.next()? else {
                        return Err(ReplayError::Ended {
                            entry: index + 1,
                            expected: show(&without_id(&entry.message)),
                        });
                    };
                    compare(index + 1, &entry.message, &got)?;
                    matched.push(Matched {
                        recorded: raw_id(&entry.message),
                        client: raw_id(&got),
                    });
                }
            }
        }
        // The transcript is over: the client may only leave.
        match incoming.next()? {
            None => Ok(()),
            Some(got) => Err(ReplayError::Extra {
                got: show(&without_id(&got)),
            }),
        }
    })();
    let _ = writer.shutdown(std::net::Shutdown::Both);
    result
}

/// The bytes to send for a recorded `in` message: a reply to a matched command with the
/// client's id, anything else as recorded.
fn answer(entry: &Entry, matched: &mut Vec<Matched>) -> Vec<u8> {
    let recorded = entry.message.as_bytes().to_vec();
    let Ok(message) = RawJson::parse(&entry.message) else {
        return recorded;
    };
    let (value, error) = (message.get("return"), message.get("error"));
    if value.is_none() && error.is_none() {
        return recorded;
    }
    let id = message.get("id").map(|id| id.as_json().to_owned());
    let Some(at) = matched.iter().position(|m| m.recorded == id) else {
        return recorded;
    };
    let command = matched.remove(at);
    let client_id = command
        .client
        .as_deref()
        .and_then(|id| RawJson::parse(id).ok());
    let encoded = match (value, error) {
        (Some(value), _) => encode_vec(|out| encode_reply(client_id, value, out)),
        (None, Some(error)) => {
            let text = |key| error.get(key).and_then(|v| v.as_str());
            match (text("class"), text("desc")) {
                (Some(class), Some(desc)) => {
                    let class = class.to_string();
                    encode_vec(|out| encode_error(client_id, &class, desc, out))
                }
                _ => return recorded,
            }
        }
        (None, None) => return recorded,
    };
    encoded.unwrap_or(recorded)
}

/// A message's top-level `id` as raw JSON text.
fn raw_id(message: &str) -> Option<String> {
    let id = RawJson::parse(message).ok()?.get("id")?;
    Some(id.as_json().to_owned())
}

/// A message as JSON without its top-level `id` (`Null` if it is not JSON).
fn without_id(message: &str) -> Value {
    let mut value: Value = serde_json::from_str(message).unwrap_or(Value::Null);
    if let Value::Object(object) = &mut value {
        object.remove("id");
    }
    value
}

fn show(value: &Value) -> String {
    value.to_string()
}

/// Compares a recorded `out` message with what the client sent, ids left out.
fn compare(entry: usize, recorded: &str, got: &str) -> Result<(), ReplayError> {
    let (expected, sent) = (without_id(recorded), without_id(got));
    let Some((path, expected_value, got_value)) = first_difference(&expected, &sent, "") else {
        return Ok(());
    };
    Err(ReplayError::Diverged(Box::new(Divergence {
        entry,
        path,
        expected_value: expected_value.map(show),
        got_value: got_value.map(show),
        expected: show(&expected),
        got: show(&sent),
    })))
}

/// The first place where `a` and `b` differ, depth first in `a`'s member order then
/// `b`'s extra members: the path and both values there.
fn first_difference<'v>(
    a: &'v Value,
    b: &'v Value,
    path: &str,
) -> Option<(String, Option<&'v Value>, Option<&'v Value>)> {
    let member = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, value) in x {
                match y.get(key) {
                    Some(other) => {
                        if let Some(found) = first_difference(value, other, &member(key)) {
                            return Some(found);
                        }
                    }
                    None => return Some((member(key), Some(value), None)),
                }
            }
            y.iter()
                .find(|(key, _)| !x.contains_key(*key))
                .map(|(key, value)| (member(key), None, Some(value)))
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let at = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => {
                        if let Some(found) = first_difference(p, q, &at) {
                            return Some(found);
                        }
                    }
                    (p, q) => return Some((at, p, q)),
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some((path.to_owned(), Some(a), Some(b))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::transcript::Entry;
    use crate::{ClientBuilder, Error};

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;

    fn transcript(entries: &[(Direction, &str)]) -> Transcript {
        Transcript::from_entries(
            entries
                .iter()
                .enumerate()
                .map(|(i, (direction, message))| Entry {
                    direction: *direction,
                    time: UNIX_EPOCH + Duration::from_secs(i as u64),
                    message: (*message).to_owned(),
                })
                .collect(),
        )
    }

    fn session() -> Transcript {
        use Direction::{In, Out};
        transcript(&[
            (In, GREETING),
            (
                Out,
                r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#,
            ),
            (In, r#"{"return": {}, "id": 1}"#),
            (Out, r#"{"execute":"stop"}"#),
            (
                In,
                r#"{"timestamp": {"seconds": 1796481554, "microseconds": 55294}, "event": "STOP"}"#,
            ),
            (In, r#"{"return": {}}"#),
            (
                Out,
                r#"{"execute":"qom-get","arguments":{"path":"/machine","property":"nope"}}"#,
            ),
            (
                In,
                r#"{"error": {"class": "GenericError", "desc": "Property 'none-machine.nope' not found"}}"#,
            ),
            (Out, r#"{"execute":"query-status"}"#),
            (
                In,
                r#"{"return": {"status": "paused", "singlestep": false, "running": false}}"#,
            ),
        ])
    }

    fn client(stream: UnixStream, untagged: bool) -> crate::Client<UnixStream> {
        ClientBuilder::new()
            .connect_timeout(Some(Duration::from_secs(5)))
            .command_timeout(Some(Duration::from_secs(5)))
            .untagged_when_alone(untagged)
            .handshake(stream)
            .unwrap()
    }

    /// The recorded session, run by a client: the same with or without ids on commands.
    fn run_session(untagged: bool) {
        let (stream, replay) = Replay::spawn_unix(session()).unwrap();
        let mut qmp = client(stream, untagged);
        assert_eq!(qmp.server().version.to_string(), "7.2.22");
        qmp.execute_raw("stop", &Value::Null).unwrap();
        let stop = qmp.events().next().expect("STOP came before the reply");
        assert_eq!(
            (stop.name.as_str(), stop.timestamp.seconds),
            ("STOP", 1796481554)
        );
        match qmp.execute_raw("qom-get", &json!({"path": "/machine", "property": "nope"})) {
            Err(Error::Qmp(e)) => {
                assert_eq!(e.desc, "Property 'none-machine.nope' not found")
            }
            other => panic!("{other:?}"),
        }
        let status = qmp.execute_raw("query-status", &Value::Null).unwrap();
        assert_eq!(status["status"], "paused");
        drop(qmp);
        replay.finish().unwrap();
    }

    #[test]
    fn a_client_that_does_the_same_gets_the_same_answers() {
        run_session(true);
        // Every command with an id this time: the replies carry the client's.
        run_session(false);
    }

    #[test]
    fn a_different_argument_is_a_readable_diff() {
        let (stream, replay) = Replay::spawn_unix(session()).unwrap();
        let mut qmp = client(stream, true);
        qmp.execute_raw("stop", &Value::Null).unwrap();
        let wrong = qmp.execute_raw("qom-get", &json!({"path": "/machine", "property": "type"}));
        assert!(wrong.is_err(), "the replay closed the connection");
        drop(qmp);
        let err = replay.finish().unwrap_err();
        let ReplayError::Diverged(d) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(d.entry, 7);
        assert_eq!(d.path, "arguments.property");
        assert_eq!(d.expected_value.as_deref(), Some(r#""nope""#));
        assert_eq!(d.got_value.as_deref(), Some(r#""type""#));
        assert_eq!(
            err.to_string(),
            "the client diverged from transcript entry 7 at arguments.property\n  \
             expected: \"nope\"\n  got:      \"type\"\n  \
             expected message: {\"arguments\":{\"path\":\"/machine\",\"property\":\"nope\"},\"execute\":\"qom-get\"}\n  \
             got message:      {\"arguments\":{\"path\":\"/machine\",\"property\":\"type\"},\"execute\":\"qom-get\"}"
        );
    }

    #[test]
    fn a_client_that_stops_early_or_goes_on_is_caught() {
        let (stream, replay) = Replay::spawn_unix(session()).unwrap();
        let mut qmp = client(stream, true);
        qmp.execute_raw("stop", &Value::Null).unwrap();
        drop(qmp);
        let err = replay.finish().unwrap_err();
        assert!(
            matches!(&err, ReplayError::Ended { entry: 7, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"property\":\"nope\""), "{err}");

        let short = Transcript::from_entries(session().entries()[..3].to_vec());
        let (stream, replay) = Replay::spawn_unix(short).unwrap();
        let mut qmp = client(stream, true);
        assert!(qmp.execute_raw("query-name", &Value::Null).is_err());
        drop(qmp);
        let err = replay.finish().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client sent more than the transcript has: {\"execute\":\"query-name\"}"
        );
    }

    #[test]
    fn differences_are_found_where_they_are() {
        let a = json!({"execute": "x", "arguments": {"list": [1, {"k": true}], "b": 2}});
        let same = json!({"arguments": {"b": 2, "list": [1, {"k": true}]}, "execute": "x"});
        assert_eq!(first_difference(&a, &same, ""), None);
        let deep = json!({"execute": "x", "arguments": {"list": [1, {"k": false}], "b": 2}});
        let (path, p, q) = first_difference(&a, &deep, "").unwrap();
        assert_eq!(
            (path.as_str(), p, q),
            (
                "arguments.list[1].k",
                Some(&json!(true)),
                Some(&json!(false))
            )
        );
        let extra = json!({"execute": "x", "arguments": {"list": [1, {"k": true}, 3], "b": 2}});
        let (path, p, q) = first_difference(&a, &extra, "").unwrap();
        assert_eq!(
            (path.as_str(), p, q),
            ("arguments.list[2]", None, Some(&json!(3)))
        );
        let missing = json!({"execute": "x"});
        let (path, _, q) = first_difference(&a, &missing, "").unwrap();
        assert_eq!((path.as_str(), q), ("arguments", None));
        let (path, ..) = first_difference(&json!(1), &json!("1"), "").unwrap();
        assert_eq!(path, "");
    }
}
