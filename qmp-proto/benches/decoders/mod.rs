//! The decoders the benchmarks compare, and the comparison table, shared by
//! `benches/decode.rs` and `benches/criterion/` (criterion statistics). Each decoder does what
//! a QMP client does with each message it receives: find it in the stream, classify it
//! (return, error, event, greeting), and for a reply look its id up among the commands in
//! flight.

use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant};

use qmp_proto::{Framer, Message};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One recorded QEMU 7.2 stream.
pub struct Corpus {
    /// Short name for tables.
    pub name: &'static str,
    /// The bytes, as QEMU wrote them.
    pub bytes: Vec<u8>,
    /// The id of its first reply (replies come in order).
    pub first_id: u64,
}

/// The corpora (tests/data, recorded from QEMU 7.2.22): one 207 KB reply, and a 2 MB stream
/// of ~10,000 small replies and STOP/RESUME events.
pub fn corpora() -> Vec<Corpus> {
    vec![
        Corpus {
            name: "schema",
            bytes: include_bytes!("../../tests/data/query-qmp-schema.jsonl").to_vec(),
            first_id: 1,
        },
        Corpus {
            name: "mixed",
            bytes: include_bytes!("../../tests/data/mixed-stream.jsonl").to_vec(),
            first_id: 10,
        },
    ]
}

/// The commands in flight, as a client keeps them to match replies: at most 8 (QEMU's queue),
/// and each answered one is replaced by the next command.
#[derive(Debug, Clone)]
pub struct InFlight {
    ids: [u64; 8],
    next: u64,
}

impl InFlight {
    /// Commands `first`, `first + 1`, … in flight.
    pub fn new(first: u64) -> Self {
        Self {
            ids: std::array::from_fn(|i| first + i as u64),
            next: first + 8,
        }
    }

    /// A reply with `id` arrived: whether it answers a command in flight.
    #[inline]
    fn answer(&mut self, id: Option<u64>) -> bool {
        let Some(id) = id else { return false };
        match self.ids.iter_mut().find(|slot| **slot == id) {
            Some(slot) => {
                *slot = self.next;
                self.next += 1;
                true
            }
            None => false,
        }
    }
}

/// What a decoder saw; every decoder must see the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Replies matched to a command in flight.
    pub matched: u64,
    /// Replies with no matching command.
    pub unmatched: u64,
    /// Error replies.
    pub errors: u64,
    /// Events.
    pub events: u64,
    /// Greetings.
    pub greetings: u64,
    /// Sum of the lengths of return values, event names and error classes (so that nothing
    /// is optimised away, and the decoders are seen to agree on the values).
    pub value_bytes: u64,
}

impl Tally {
    #[inline]
    fn reply(&mut self, table: &mut InFlight, id: Option<u64>) {
        if table.answer(id) {
            self.matched += 1;
        } else {
            self.unmatched += 1;
        }
    }
}

/// Bytes handed to the framer per "read", as from a socket.
pub const READ: usize = 64 * 1024;

/// qmp-proto: bytes copied into the framer's buffer `READ` at a time (as `read(2)` into
/// [`Framer::read_buf`] would), every frame classified with [`qmp_proto::Frame::message`].
pub fn qmp_proto(stream: &[u8], framer: &mut Framer<Vec<u8>>, table: &mut InFlight) -> Tally {
    let mut tally = Tally::default();
    each_frame(stream, framer, |frame| {
        tally_message(
            &mut tally,
            table,
            frame.message().expect("QEMU output classifies"),
        )
    });
    tally
}

/// qmp-proto's whole client state machine: a [`qmp_proto::Session`] fed the stream `READ`
/// bytes at a time, which matches each reply to its command and, as a pipelining client
/// would, sends (encodes) the next command for each reply, keeping 8 in flight.
pub fn qmp_proto_session(stream: &[u8], first_id: u64) -> Tally {
    use qmp_proto::{Config, Outcome, Received, Session};
    let mut session: Session<Vec<u8>, 8> = Session::with_config(
        vec![0u8; 256 * 1024],
        Config::default().enforce_negotiation(false),
    );
    let mut out = [0u8; 64];
    let mut send = |session: &mut Session<Vec<u8>, 8>| {
        session
            .execute("query-status", &(), None, &mut out)
            .expect("room in the table");
    };
    // Commands 1 .. first_id were answered before the recording started.
    for id in 1..first_id {
        send(&mut session);
        let reply = format!("{{\"return\": {{}}, \"id\": {id}}}\r\n");
        let _ = session.feed(reply.as_bytes());
        while session.poll().is_some() {}
    }
    for _ in 0..8 {
        send(&mut session);
    }
    let mut tally = Tally::default();
    let mut rest = stream;
    while !rest.is_empty() {
        let room = session.read_buf();
        let n = room.len().min(rest.len()).min(READ);
        room[..n].copy_from_slice(&rest[..n]);
        session.commit(n);
        rest = &rest[n..];
        while let Some(item) = session.poll() {
            let answered = match item {
                Received::Reply(reply) => {
                    tally.matched += 1;
                    match reply.outcome {
                        Outcome::Return(value) => tally.value_bytes += value.as_json().len() as u64,
                        Outcome::Error(error) => {
                            tally.errors += 1;
                            tally.value_bytes += error.class.as_escaped().len() as u64;
                        }
                        Outcome::Failed(failure) => panic!("{failure}"),
                    }
                    true
                }
                Received::Event(event) => {
                    tally.events += 1;
                    tally.value_bytes += event.name.as_escaped().len() as u64;
                    false
                }
                Received::Greeting(_) => {
                    tally.greetings += 1;
                    false
                }
                Received::Notice(notice) => {
                    tally.unmatched += 1;
                    let _ = notice;
                    false
                }
            };
            if answered {
                send(&mut session);
            }
        }
    }
    tally
}

/// qmp-proto classifying frames from their bytes alone ([`Message::parse`]): payloads are
/// skipped by a structural scan instead of the framer's record of where they end.
pub fn qmp_proto_bytes(stream: &[u8], framer: &mut Framer<Vec<u8>>, table: &mut InFlight) -> Tally {
    let mut tally = Tally::default();
    each_frame(stream, framer, |frame| {
        let message = Message::parse(frame.as_bytes()).expect("QEMU output classifies");
        tally_message(&mut tally, table, message)
    });
    tally
}

/// qmp-proto's framer alone: how many frames.
pub fn qmp_proto_frames(stream: &[u8], framer: &mut Framer<Vec<u8>>) -> u64 {
    let mut frames = 0;
    each_frame(stream, framer, |_| frames += 1);
    frames
}

#[inline]
fn each_frame(
    stream: &[u8],
    framer: &mut Framer<Vec<u8>>,
    mut f: impl FnMut(qmp_proto::Frame<'_>),
) {
    let mut rest = stream;
    while !rest.is_empty() {
        let room = framer.read_buf();
        let n = room.len().min(rest.len()).min(READ);
        room[..n].copy_from_slice(&rest[..n]);
        framer.commit(n);
        rest = &rest[n..];
        while let Some(frame) = framer.next_frame() {
            f(frame.expect("QEMU output frames"));
        }
    }
}

#[inline]
fn tally_message(tally: &mut Tally, table: &mut InFlight, message: Message<'_>) {
    match message {
        Message::Return(r) => {
            tally.value_bytes += r.value.as_json().len() as u64;
            tally.reply(table, r.id.and_then(|id| id.as_u64()));
        }
        Message::Error(e) => {
            tally.errors += 1;
            tally.value_bytes += e.error.class.as_escaped().len() as u64;
            tally.reply(table, e.id.and_then(|id| id.as_u64()));
        }
        Message::Event(e) => {
            tally.events += 1;
            tally.value_bytes += e.name.as_escaped().len() as u64;
        }
        Message::Greeting(_) => tally.greetings += 1,
    }
}

/// The lines of a stream (what the serde clients split it into), without blank ones.
#[inline]
fn lines(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', stream)
        .chain(std::iter::once(stream.len()))
        .filter_map(move |end| {
            let line = &stream[start..end];
            start = (end + 1).min(stream.len());
            (!line.trim_ascii().is_empty()).then_some(line)
        })
}

/// Peer (a), what existing Rust QMP clients do: split on newlines, parse each line into a
/// `serde_json::Value`, look at `return` / `error` / `event` / `id`.
pub fn serde_value(stream: &[u8], table: &mut InFlight) -> Tally {
    let mut tally = Tally::default();
    for line in lines(stream) {
        let value: serde_json::Value = serde_json::from_slice(line).expect("QEMU output parses");
        let id = || value.get("id").and_then(serde_json::Value::as_u64);
        if let Some(ret) = value.get("return") {
            // The length of the value's text is not at hand in a Value; count something.
            tally.value_bytes += match ret {
                serde_json::Value::Array(a) => a.len() as u64,
                serde_json::Value::Object(o) => o.len() as u64,
                _ => 1,
            };
            tally.reply(table, id());
        } else if let Some(error) = value.get("error") {
            tally.errors += 1;
            let class = error.get("class").and_then(|c| c.as_str()).unwrap_or("");
            tally.value_bytes += class.len() as u64;
            tally.reply(table, id());
        } else if let Some(event) = value.get("event") {
            tally.events += 1;
            tally.value_bytes += event.as_str().map_or(0, |e| e.len() as u64);
        } else if value.get("QMP").is_some() {
            tally.greetings += 1;
        }
    }
    tally
}

/// The envelope peer (b) deserializes into: payloads stay raw JSON text.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "return", borrow, default)]
    ret: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    #[allow(dead_code)]
    timestamp: Option<Timestamp>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "QMP", borrow, default)]
    qmp: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    class: Cow<'a, str>,
    #[serde(borrow)]
    #[allow(dead_code)]
    desc: Cow<'a, str>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Timestamp {
    seconds: i64,
    microseconds: i64,
}

/// Peer (b), the strongest fair serde client: split on newlines, deserialize each line into
/// a typed envelope whose `return` / `data` / `id` are borrowed `&RawValue`s (serde_json
/// still validates them completely).
pub fn serde_typed(stream: &[u8], table: &mut InFlight) -> Tally {
    let mut tally = Tally::default();
    for line in lines(stream) {
        let envelope: Envelope<'_> = serde_json::from_slice(line).expect("QEMU output parses");
        let id = || envelope.id.and_then(|id| id.get().parse::<u64>().ok());
        if let Some(ret) = envelope.ret {
            tally.value_bytes += ret.get().len() as u64;
            tally.reply(table, id());
        } else if let Some(error) = &envelope.error {
            tally.errors += 1;
            tally.value_bytes += error.class.len() as u64;
            tally.reply(table, id());
        } else if let Some(event) = &envelope.event {
            tally.events += 1;
            tally.value_bytes += event.len() as u64;
        } else if envelope.qmp.is_some() {
            tally.greetings += 1;
        }
    }
    tally
}

/// The floor: counting the newlines with memchr.
pub fn newlines(stream: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', stream).count() as u64
}

/// A fresh framer, big enough for the 207 KB reply (as a client expecting
/// `query-qmp-schema` would size it).
pub fn framer() -> Framer<Vec<u8>> {
    Framer::new(vec![0u8; 256 * 1024])
}

/// The decoders must agree before they are timed.
pub fn check(corpus: &Corpus) {
    let table = || InFlight::new(corpus.first_id);
    let proto = qmp_proto(&corpus.bytes, &mut framer(), &mut table());
    let bytes = qmp_proto_bytes(&corpus.bytes, &mut framer(), &mut table());
    let session = qmp_proto_session(&corpus.bytes, corpus.first_id);
    let value = serde_value(&corpus.bytes, &mut table());
    let typed = serde_typed(&corpus.bytes, &mut table());
    let name = corpus.name;
    assert_eq!(proto, bytes, "{name}");
    assert_eq!(proto, session, "{name}");
    assert_eq!(proto, typed, "{name}");
    // (a) cannot measure values as text; the rest must match.
    let counts = |t: Tally| Tally {
        value_bytes: 0,
        ..t
    };
    assert_eq!(counts(proto), counts(value), "{name}");
    assert_eq!(
        proto.unmatched, 0,
        "{name}: every reply answers a command in flight"
    );
}

/// One row of the comparison: a decoder run over a whole corpus.
pub struct Row {
    /// What it is.
    pub name: &'static str,
    /// Decodes a corpus; returns a checksum.
    pub run: Box<dyn FnMut(&Corpus) -> u64>,
}

/// The rows of the comparison; the first three are qmp-proto, (a) and (b).
pub fn rows() -> Vec<Row> {
    fn checksum(t: Tally) -> u64 {
        t.matched + t.errors + t.events + t.value_bytes
    }
    let (mut f1, mut f2, mut f3) = (framer(), framer(), framer());
    vec![
        Row {
            name: "qmp-proto: Framer + Frame::message + id",
            run: Box::new(move |c| {
                checksum(qmp_proto(&c.bytes, &mut f1, &mut InFlight::new(c.first_id)))
            }),
        },
        Row {
            name: "(a) serde_json Value + classify + id",
            run: Box::new(|c| checksum(serde_value(&c.bytes, &mut InFlight::new(c.first_id)))),
        },
        Row {
            name: "(b) serde_json typed, &RawValue + id",
            run: Box::new(|c| checksum(serde_typed(&c.bytes, &mut InFlight::new(c.first_id)))),
        },
        Row {
            name: "qmp-proto: Message::parse(bytes) + id",
            run: Box::new(move |c| {
                checksum(qmp_proto_bytes(
                    &c.bytes,
                    &mut f2,
                    &mut InFlight::new(c.first_id),
                ))
            }),
        },
        Row {
            name: "qmp-proto: Session::poll + execute next",
            run: Box::new(|c| checksum(qmp_proto_session(&c.bytes, c.first_id))),
        },
        Row {
            name: "qmp-proto: framing only",
            run: Box::new(move |c| qmp_proto_frames(&c.bytes, &mut f3)),
        },
        Row {
            name: "newline count (memchr)",
            run: Box::new(|c| newlines(&c.bytes)),
        },
    ]
}

/// Times every row on every corpus in `rounds` interleaved rounds (each row runs for about
/// `round` per round, so a machine that slows down or speeds up mid-run affects all rows
/// alike), and prints MB/s (median round, and the slowest and fastest) and the ratios.
pub fn compare(rounds: usize, round: Duration) {
    let corpora = corpora();
    for corpus in &corpora {
        check(corpus);
    }
    let mut rows = rows();
    // samples[corpus][row]: MB/s of each round.
    let mut samples = vec![vec![Vec::new(); rows.len()]; corpora.len()];
    for (c, corpus) in corpora.iter().enumerate() {
        // Warm up, and find how many passes fill a round.
        let passes: Vec<u32> = rows
            .iter_mut()
            .map(|row| {
                let start = Instant::now();
                black_box((row.run)(black_box(corpus)));
                let once = start.elapsed().max(Duration::from_micros(1));
                (round.as_secs_f64() / once.as_secs_f64()).ceil().max(1.0) as u32
            })
            .collect();
        for _ in 0..rounds {
            for (r, row) in rows.iter_mut().enumerate() {
                let start = Instant::now();
                for _ in 0..passes[r] {
                    black_box((row.run)(black_box(corpus)));
                }
                let secs = start.elapsed().as_secs_f64();
                let bytes = corpus.bytes.len() as f64 * f64::from(passes[r]);
                samples[c][r].push(bytes / secs / 1e6);
            }
        }
    }
    print_table(&corpora, &rows, &mut samples, rounds);
}

fn print_table(corpora: &[Corpus], rows: &[Row], samples: &mut [Vec<Vec<f64>>], rounds: usize) {
    println!();
    println!(
        "Decode throughput in MB/s (10^6 bytes/s): median of {rounds} interleaved rounds [slowest-fastest]"
    );
    println!();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut medians = vec![vec![0.0; rows.len()]; corpora.len()];
    print!("{:width$}", "");
    for corpus in corpora {
        let title = format!("{} ({} KB)", corpus.name, corpus.bytes.len() / 1000);
        print!("  {title:>26}");
    }
    println!();
    for (r, row) in rows.iter().enumerate() {
        print!("{:width$}", row.name);
        for c in 0..corpora.len() {
            let v = &mut samples[c][r];
            v.sort_by(f64::total_cmp);
            let (mid, low, high) = (v[v.len() / 2], v[0], v[v.len() - 1]);
            medians[c][r] = mid;
            print!("  {mid:>8.0} [{low:>6.0}-{high:>6.0}]");
        }
        println!();
    }
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    for (c, corpus) in corpora.iter().enumerate() {
        // Rows 0, 1, 2 are qmp-proto, (a) and (b).
        let m = &medians[c];
        let (vs_a, vs_b) = (m[0] / m[1], m[0] / m[2]);
        let mut line = vec![
            format!("{vs_a:.1}x (a) [target 6x: {}]", verdict(vs_a >= 6.0)),
            format!("{vs_b:.2}x (b) [target 1.5x: {}]", verdict(vs_b >= 1.5)),
        ];
        if corpus.name == "schema" {
            let gbs = m[0] / 1000.0;
            line.push(format!(
                "{gbs:.2} GB/s [target 1.2: {}]",
                verdict(gbs >= 1.2)
            ));
        }
        println!("qmp-proto on {:<7} {}", corpus.name, line.join(", "));
    }
    println!();
}
