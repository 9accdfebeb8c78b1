//! Transcripts of QMP sessions: every message each way, with its direction and time, one
//! JSON object per line. `qmp-shell -l FILE` writes them, [`Recorder`] writes them for any
//! blocking client, and [`replay`](crate::replay) plays them back as a fake server.
//!
//! # The format
//! A transcript is UTF-8 text, one entry per line (JSON Lines):
//!
//! ```text
//! {"dir":"in","t":1733400000.123456,"msg":{"QMP": {"version": …, "capabilities": ["oob"]}}}
//! {"dir":"out","t":1733400000.123501,"msg":{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}}
//! {"dir":"in","t":1733400000.123620,"msg":{"return": {}, "id": 1}}
//! ```
//!
//! - `dir`: `"out"` for a message the client sent, `"in"` for one it received.
//! - `t`: when the message was complete (received whole, or handed to the stream), in
//!   seconds since the Unix epoch with microseconds.
//! - `msg`: the message itself, its bytes from `{` to `}` copied verbatim from the wire
//!   (member order, spacing and escapes as sent). The whitespace between messages (QEMU's
//!   `\r\n`) is not kept. A message with a line break inside it (a monitor with
//!   `pretty=on`) would break the one-line rule, so it is written as `"raw"` instead of
//!   `"msg"`: the same bytes as a JSON string.
//!
//! Readers take the members in any order and ignore members they do not know.
//!
//! # Recording a client
//! ```
//! use qmp_std::fake::FakeQemu;
//! use qmp_std::transcript::{Direction, Recorder, Transcript, TranscriptWriter};
//! use serde_json::json;
//!
//! let (stream, _qemu) = FakeQemu::builder()
//!     .on("query-name", |_| Ok(json!({"name": "vm"})))
//!     .spawn_unix()?;
//! let mut log = Vec::new();
//! let mut qmp = qmp_std::Client::new(Recorder::new(stream, TranscriptWriter::new(&mut log)))?;
//! qmp.execute_raw("query-name", &json!({}))?;
//! drop(qmp);
//!
//! let transcript = Transcript::parse(std::str::from_utf8(&log)?)?;
//! let last = transcript.entries().last().unwrap();
//! assert_eq!(last.direction, Direction::In);
//! assert_eq!(last.message, r#"{"return": {"name": "vm"}}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qmp_proto::{AGENT_SENTINEL, JsonKind, RESYNC, RawJson};

use crate::shared::SplitStream;
use crate::stream::{FdStream, Stream};

/// Which way a message went, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the client (`"out"`).
    Out,
    /// Received by the client (`"in"`).
    In,
}

impl Direction {
    /// `"out"` or `"in"`, as in a transcript.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// One message of a transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Which way it went.
    pub direction: Direction,
    /// When it was complete.
    pub time: SystemTime,
    /// The message as on the wire, from `{` to `}`.
    pub message: String,
}

impl Entry {
    /// The entry as one transcript line, with its `\n`.
    pub fn to_line(&self) -> String {
        let since = self.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut line = format!(
            "{{\"dir\":\"{}\",\"t\":{}.{:06},",
            self.direction.as_str(),
            since.as_secs(),
            since.subsec_micros()
        );
        if self.message.contains(['\n', '\r']) || RawJson::parse(&self.message).is_err() {
            line.push_str("\"raw\":");
            line.push_str(&serde_json::Value::String(self.message.clone()).to_string());
        } else {
            line.push_str("\"msg\":");
            line.push_str(&self.message);
        }
        line.push_str("}\n");
        line
    }

    /// Reads one transcript line (without its line end).
    pub fn parse_line(line: &str) -> Result<Entry, String> {
        let entry = RawJson::parse(line).map_err(|e| format!("not JSON: {e}"))?;
        if entry.kind() != JsonKind::Object {
            return Err("not a JSON object".into());
        }
        let direction = match entry.get("dir").and_then(|d| d.as_str()) {
            Some(d) if d == "out" => Direction::Out,
            Some(d) if d == "in" => Direction::In,
            _ => return Err("\"dir\" is not \"in\" or \"out\"".into()),
        };
        let time = match entry.get("t").map(|t| t.as_json()) {
            Some(t) => parse_time(t).ok_or_else(|| format!("bad time {t}"))?,
            None => return Err("no \"t\"".into()),
        };
        let message = match (entry.get("msg"), entry.get("raw")) {
            (Some(msg), _) if msg.kind() == JsonKind::Object => msg.as_json().to_owned(),
            (Some(_), _) => return Err("\"msg\" is not an object".into()),
            (None, Some(raw)) => serde_json::from_str::<String>(raw.as_json())
                .map_err(|_| "\"raw\" is not a string".to_owned())?,
            (None, None) => return Err("no \"msg\"".into()),
        };
        Ok(Entry {
            direction,
            time,
            message,
        })
    }
}

/// `SECONDS[.FRACTION]` since the epoch.
fn parse_time(text: &str) -> Option<SystemTime> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: u64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos = 0u32;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A whole transcript, read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    entries: Vec<Entry>,
}

/// A transcript line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptError {
    /// The line's number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for TranscriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transcript line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for TranscriptError {}

impl Transcript {
    /// Reads a transcript; blank lines are skipped.
    pub fn parse(text: &str) -> Result<Transcript, TranscriptError> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry = Entry::parse_line(line).map_err(|reason| TranscriptError {
                line: n + 1,
                reason,
            })?;
            entries.push(entry);
        }
        Ok(Transcript { entries })
    }

    /// A transcript of these entries.
    pub fn from_entries(entries: Vec<Entry>) -> Transcript {
        Transcript { entries }
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// Where a [`Recorder`] hands each whole message.
pub trait Tap {
    /// One whole message, from `{` to `}`, as it went over the wire.
    fn message(&mut self, direction: Direction, message: &[u8]);
}

impl<T: Tap + ?Sized> Tap for &mut T {
    fn message(&mut self, direction: Direction, message: &[u8]) {
        (**self).message(direction, message);
    }
}

impl<T: Tap + ?Sized> Tap for Box<T> {
    fn message(&mut self, direction: Direction, message: &[u8]) {
        (**self).message(direction, message);
    }
}

/// One tap shared by the handles of a split stream (see [`Recorder`] with
/// [`SharedClient`](crate::SharedClient)).
impl<T: Tap + ?Sized> Tap for Arc<Mutex<T>> {
    fn message(&mut self, direction: Direction, message: &[u8]) {
        self.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .message(direction, message);
    }
}

/// A [`Tap`] that writes each message as a transcript line, stamped with the current time,
/// and flushes it (a failed write is ignored: recording never breaks the session).
#[derive(Debug)]
pub struct TranscriptWriter<W> {
    out: W,
}

impl<W: Write> TranscriptWriter<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        TranscriptWriter { out }
    }

    /// Gives `out` back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Tap for TranscriptWriter<W> {
    fn message(&mut self, direction: Direction, message: &[u8]) {
        let entry = Entry {
            direction,
            time: SystemTime::now(),
            message: String::from_utf8_lossy(message).into_owned(),
        };
        let _ = self.out.write_all(entry.to_line().as_bytes());
        let _ = self.out.flush();
    }
}

/// Cuts a byte stream into whole top-level JSON objects, whatever the chunking, for a
/// recorder: it follows strings and the nesting of brackets, with no depth limit (a client
/// may send up to QEMU's 1,024 levels, deeper than the clients' own framer goes), and looks
/// at each byte once, however many reads a message takes. It checks no more than that: the
/// transcript writer keeps what is not JSON as text. Bytes between objects (line ends,
/// garbage) are skipped; a resync byte (QMP's 0x01, the agent's 0xFF: never part of JSON
/// text) drops the object it cuts off, as the server's parser does, and so does a closing
/// bracket of the wrong kind or a control character in a string; a `{` at the start of a
/// line inside an object starts a new one (the one before was cut off, as the clients'
/// framer takes it: servers end each message with a line end). An object longer than
/// [`SPLIT_MAX`] is followed to its end but not kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct Splitter {
    /// The object so far: its bytes from earlier reads.
    pending: Vec<u8>,
    /// The closing bracket each open one expects, innermost last: empty between objects.
    open: Vec<u8>,
    in_string: bool,
    escaped: bool,
    /// The last byte was a line end (outside strings).
    line_start: bool,
    /// The object in progress is longer than [`SPLIT_MAX`]: followed, not kept.
    skipping: bool,
}

/// The longest message a splitter keeps (a longer one is left out of the record): QEMU's own
/// limit, the largest command qmp-proto encodes, above any reply limit a client is given.
const SPLIT_MAX: usize = qmp_proto::QEMU_MAX_MESSAGE;

impl Splitter {
    /// Takes `bytes` and hands every message they complete to `each`.
    pub(crate) fn push(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        // Where the object in progress starts in `bytes` (0: before them, in `pending`).
        let mut from = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == RESYNC || b == AGENT_SENTINEL {
                self.drop_object();
                continue;
            }
            let line_start = std::mem::replace(&mut self.line_start, b == b'\n');
            if b == b'{' && (self.open.is_empty() || line_start && !self.in_string) {
                self.drop_object();
                self.open.push(b'}');
                from = i;
                continue;
            }
            if self.open.is_empty() {
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                } else if b < 0x20 {
                    self.drop_object();
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' => self.open.push(b'}'),
                b'[' => self.open.push(b']'),
                b'}' | b']' => {
                    if self.open.pop() != Some(b) {
                        // A bracket of the wrong kind: no JSON object.
                        self.drop_object();
                    } else if self.open.is_empty() {
                        if self.skipping {
                            // Too long: left out.
                        } else if self.pending.is_empty() {
                            // Whole in this read: handed over from it, not copied first.
                            each(&bytes[from..=i]);
                        } else {
                            self.pending.extend_from_slice(&bytes[from..=i]);
                            each(&self.pending);
                        }
                        self.drop_object();
                    }
                }
                _ => {}
            }
        }
        if !self.open.is_empty() && !self.skipping {
            self.pending.extend_from_slice(&bytes[from..]);
            if self.pending.len() > SPLIT_MAX {
                self.skipping = true;
                self.pending = Vec::new();
            }
        }
    }

    /// Forgets the object in progress (the splitter is then between objects).
    fn drop_object(&mut self) {
        self.pending.clear();
        self.open.clear();
        self.in_string = false;
        self.escaped = false;
        self.skipping = false;
    }
}

/// A [`Stream`] that hands every whole message written and read through it to a [`Tap`]
/// (such as a [`TranscriptWriter`]), and otherwise behaves as the stream it wraps.
///
/// Wrap the stream before the handshake to see the greeting:
/// `Client::new(Recorder::new(stream, tap))`. With a tap shared as `Arc<Mutex<_>>`, it is a
/// [`SplitStream`] too, for [`SharedClient`](crate::SharedClient). A message is handed over when its last byte
/// went through, so a command is seen as sent when the client wrote all of it, and a
/// reply when it was read, before the client decoded it.
#[derive(Debug)]
pub struct Recorder<S, T> {
    inner: S,
    tap: T,
    sent: Splitter,
    received: Splitter,
}

impl<S, T: Tap> Recorder<S, T> {
    /// Records what goes through `inner` into `tap`.
    pub fn new(inner: S, tap: T) -> Self {
        Recorder {
            inner,
            tap,
            sent: Splitter::default(),
            received: Splitter::default(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably: bytes moved through it directly are not recorded.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The tap.
    pub fn tap(&self) -> &T {
        &self.tap
    }

    /// The tap, mutably.
    pub fn tap_mut(&mut self) -> &mut T {
        &mut self.tap
    }

    /// The stream and the tap.
    pub fn into_parts(self) -> (S, T) {
        (self.inner, self.tap)
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let tap = &mut self.tap;
        self.sent
            .push(bytes, |message| tap.message(Direction::Out, message));
    }
}

impl<S: Read, T: Tap> Read for Recorder<S, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let tap = &mut self.tap;
        self.received
            .push(&buf[..n], |message| tap.message(Direction::In, message));
        Ok(n)
    }
}

impl<S: Write, T: Tap> Write for Recorder<S, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.wrote(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Stream, T: Tap> Stream for Recorder<S, T> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.inner.set_read_timeout(timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.inner.set_write_timeout(timeout)
    }

    fn write_message(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_message(bytes)?;
        self.wrote(bytes);
        Ok(())
    }

    fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.inner.write_some(bytes)?;
        self.wrote(&bytes[..n]);
        Ok(n)
    }
}

impl<S: FdStream, T: Tap> FdStream for Recorder<S, T> {
    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let n = self.inner.send_with_fds(bytes, fds)?;
        self.wrote(&bytes[..n]);
        Ok(n)
    }
}

impl<S, T> SplitStream for Recorder<S, T>
where
    S: SplitStream,
    T: Tap + Clone + Send + Sync + 'static,
{
    /// Each handle records what goes through it (the reader what is received, the writers
    /// what is sent), into the same tap.
    fn try_clone(&self) -> io::Result<Self> {
        Ok(Recorder {
            inner: self.inner.try_clone()?,
            tap: self.tap.clone(),
            sent: self.sent.clone(),
            received: self.received.clone(),
        })
    }

    fn shutdown(&self) -> io::Result<()> {
        self.inner.shutdown()
    }

    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let n = SplitStream::send_with_fds(&mut self.inner, bytes, fds)?;
        self.wrote(&bytes[..n]);
        Ok(n)
    }
}

impl<S: AsFd, T> AsFd for Recorder<S, T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Vec<(Direction, String)>);

    impl Tap for Seen {
        fn message(&mut self, direction: Direction, message: &[u8]) {
            self.0
                .push((direction, String::from_utf8(message.to_vec()).unwrap()));
        }
    }

    #[test]
    fn splitting_is_the_same_for_any_chunking() {
        let stream = b"{\"QMP\": {}}\r\n\x01{\"a\": \"}{\\\"\"}\r\n{\"b\": [1, {\"c\": {}}]}\r\n{bad\n{\"d\": 1}";
        for size in 1..stream.len() {
            let mut splitter = Splitter::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(size) {
                splitter.push(chunk, |m| seen.push(String::from_utf8(m.to_vec()).unwrap()));
            }
            assert_eq!(
                seen,
                [
                    "{\"QMP\": {}}",
                    "{\"a\": \"}{\\\"\"}",
                    "{\"b\": [1, {\"c\": {}}]}",
                    "{\"d\": 1}"
                ],
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn commands_after_a_cut_off_one_on_the_same_line_are_kept() {
        // What a client writes: compact commands with no line end, two of them cut off by
        // the resync byte (their deadline passed mid-write), inside a string and between
        // values; one nested deep; an agent's sync after its 0xFF (`~` below); more on the
        // same line; garbage with a `{` and a mismatched bracket in it.
        // 300 levels, past the clients' framer (128), within QEMU's 1,024: kept whole, and
        // the object inside it is no message of its own.
        let deep = format!("{}{{\"a\":1}}{}", "[".repeat(299), "]".repeat(299));
        let text = format!(
            "{{\"execute\":\"a\",\"arguments\":{{\"s\":\"ab\x01{{\"execute\":\"b\"}}\
             {{\"execute\":\"c\",\"arguments\":{{\"v\":{deep}}}}}{{\"execute\":\"d\"}}\
             {{\"execute\":\"e\",\"arguments\":{{\"x\":[1,\x01{{\"execute\":\"f\"}}\
             ~{{\"execute\":\"guest-sync-delimited\"}}x{{]}}{{\"execute\":\"g\"}}"
        );
        let stream: Vec<u8> = text
            .bytes()
            .map(|b| if b == b'~' { AGENT_SENTINEL } else { b })
            .collect();
        let expected = [
            "{\"execute\":\"b\"}".to_owned(),
            format!("{{\"execute\":\"c\",\"arguments\":{{\"v\":{deep}}}}}"),
            "{\"execute\":\"d\"}".to_owned(),
            "{\"execute\":\"f\"}".to_owned(),
            "{\"execute\":\"guest-sync-delimited\"}".to_owned(),
            "{\"execute\":\"g\"}".to_owned(),
        ];
        for size in [1, 2, 7, 64, stream.len()] {
            let mut splitter = Splitter::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(size) {
                splitter.push(chunk, |m| seen.push(String::from_utf8(m.to_vec()).unwrap()));
            }
            assert_eq!(seen, expected, "chunks of {size}");
        }
    }

    #[test]
    fn a_message_longer_than_the_buffer_is_kept_whole() {
        // 1 MiB of reply, fed in reads of 1,000 bytes, between two short messages: nothing
        // is lost.
        let big = format!("{{\"return\": \"{}\"}}", "x".repeat(1 << 20));
        let stream = format!("{{\"a\": 1}}\r\n{big}\r\n{{\"b\": 2}}\r\n");
        let mut splitter = Splitter::default();
        let mut seen = Vec::new();
        for chunk in stream.as_bytes().chunks(1000) {
            splitter.push(chunk, |m| seen.push(String::from_utf8(m.to_vec()).unwrap()));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], "{\"a\": 1}");
        assert!(seen[1] == big, "the long message was cut or changed");
        assert_eq!(seen[2], "{\"b\": 2}");
    }

    #[test]
    fn entries_round_trip() {
        let time = UNIX_EPOCH + Duration::new(1_733_400_000, 123_456_000);
        let entry = Entry {
            direction: Direction::Out,
            time,
            message: r#"{"execute":"x","arguments":{"b":1,"a":"\u00e9"}}"#.into(),
        };
        let line = entry.to_line();
        assert_eq!(
            line,
            "{\"dir\":\"out\",\"t\":1733400000.123456,\"msg\":{\"execute\":\"x\",\"arguments\":{\"b\":1,\"a\":\"\\u00e9\"}}}\n"
        );
        assert_eq!(Entry::parse_line(line.trim_end()).unwrap(), entry);

        // A pretty-printed message keeps its line breaks, in a string.
        let pretty = Entry {
            direction: Direction::In,
            time,
            message: "{\r\n    \"return\": {}\r\n}".into(),
        };
        let line = pretty.to_line();
        assert_eq!(line.lines().count(), 1);
        assert!(line.contains("\"raw\":\"{\\r\\n"), "{line}");
        assert_eq!(Entry::parse_line(line.trim_end()).unwrap(), pretty);
    }

    #[test]
    fn bad_lines_are_named() {
        let text = "{\"dir\":\"in\",\"t\":1.5,\"msg\":{}}\n\n{\"dir\":\"up\",\"t\":1,\"msg\":{}}\n";
        let err = Transcript::parse(text).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.to_string().contains("\"dir\""), "{err}");
        for bad in [
            "[]",
            "{\"dir\":\"in\",\"msg\":{}}",
            "{\"dir\":\"in\",\"t\":\"x\",\"msg\":{}}",
            "{\"dir\":\"in\",\"t\":1,\"msg\":[]}",
            "{\"dir\":\"in\",\"t\":1}",
            "{\"dir\":\"in\",\"t\":1,\"msg\":{}",
        ] {
            assert!(Entry::parse_line(bad).is_err(), "{bad}");
        }
        let ok = Transcript::parse(&text[..31]).unwrap();
        assert_eq!(
            ok.entries()[0].time,
            UNIX_EPOCH + Duration::from_millis(1500)
        );
    }

    #[test]
    fn a_shared_client_records_from_every_thread() {
        use crate::fake::FakeQemu;
        let (stream, _qemu) = FakeQemu::builder()
            .fallback(|name, _, _| Ok(serde_json::json!(name)))
            .spawn_unix()
            .unwrap();
        let log = Arc::new(Mutex::new(TranscriptWriter::new(Vec::new())));
        let qmp = crate::Client::new(Recorder::new(stream, Arc::clone(&log)))
            .unwrap()
            .into_shared()
            .unwrap();
        let threads: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let qmp = qmp.clone();
                std::thread::spawn(move || qmp.execute_raw(name, &serde_json::Value::Null))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        drop(qmp);
        let text = String::from_utf8(log.lock().unwrap().out.clone()).unwrap();
        let transcript = Transcript::parse(&text).unwrap();
        let mut sent: Vec<String> = Vec::new();
        let mut received: Vec<String> = Vec::new();
        for entry in transcript.entries() {
            let message: serde_json::Value = serde_json::from_str(&entry.message).unwrap();
            match entry.direction {
                Direction::Out => sent.push(message["execute"].as_str().unwrap().into()),
                Direction::In if message.get("return").is_some() => {
                    received.push(message["return"].to_string())
                }
                Direction::In => assert!(message.get("QMP").is_some(), "{message}"),
            }
        }
        sent.sort();
        received.sort();
        assert_eq!(sent, ["a", "b", "qmp_capabilities"]);
        assert_eq!(received, ["\"a\"", "\"b\"", "{}"]);
    }

    #[test]
    fn a_recorder_sees_whole_messages_each_way() {
        // In: the greeting and replies, as QEMU sends them; out: what the client writes.
        struct Pipe {
            unread: Vec<u8>,
        }
        impl Read for Pipe {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                // Three bytes at a time: messages come in pieces.
                let n = buf.len().min(3).min(self.unread.len());
                buf[..n].copy_from_slice(&self.unread[..n]);
                self.unread.drain(..n);
                Ok(n)
            }
        }
        impl Write for Pipe {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                // Two bytes at a time.
                Ok(buf.len().min(2))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl Stream for Pipe {}
        let greeting = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}";
        let unread = format!(
            "{greeting}\r\n{{\"return\": {{}}, \"id\": 1}}\r\n{{\"return\": {{\"b\": 1, \"a\": 2}}}}\r\n"
        );
        let stream = Recorder::new(
            Pipe {
                unread: unread.into_bytes(),
            },
            Seen::default(),
        );
        let mut qmp = crate::Client::new(stream).unwrap();
        let value = qmp
            .execute_raw("x", &serde_json::json!({"k": "v"}))
            .unwrap();
        assert_eq!(value, serde_json::json!({"a": 2, "b": 1}));
        let seen = &qmp.stream().tap().0;
        let seen: Vec<(Direction, &str)> = seen.iter().map(|(d, m)| (*d, m.as_str())).collect();
        assert_eq!(
            seen,
            [
                (Direction::In, greeting),
                (Direction::Out, r#"{"execute":"qmp_capabilities","id":1}"#),
                (Direction::In, r#"{"return": {}, "id": 1}"#),
                (Direction::Out, r#"{"execute":"x","arguments":{"k":"v"}}"#),
                (Direction::In, r#"{"return": {"b": 1, "a": 2}}"#),
            ]
        );
    }
}
