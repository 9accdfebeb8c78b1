//! Soak test: QEMU 7.2.22's recorded output (tests/data) with garbage, truncated messages,
//! huge strings and deep nesting spliced in, fed in random chunk sizes into a [`Session`]
//! that has commands in flight.
//!
//! # Properties
//! 1. Nothing panics, and nothing hangs: every `feed` or `read_buf` makes progress once `poll`
//!    has returned `None`, and `poll` returns `None` after finitely many items.
//! 2. Memory is bounded by the buffer: the session reads into a `Vec<u8>` whose length and
//!    capacity never change, and `buffered() <= capacity()` after every step.
//! 3. What comes out does not depend on how the bytes were chunked (or on `feed` versus
//!    `read_buf` + `commit`): every chunking yields exactly the same items, in the same order,
//!    with the same offsets.
//! 4. Every command ends, exactly once: each round of commands is followed by
//!    `handle_timeout` at their deadline (or by `handle_eof`), after which nothing is in
//!    flight; each id gets exactly one reply or typed failure (`TimedOut`, `Disconnected`,
//!    `TooLarge`, `Malformed`).
//! 5. Garbage costs no message it is not allowed to: every *protected* valid message below
//!    is decoded, with the outcome it would have had alone (a reply for its command, or
//!    `Failed(TooLarge)` when it is larger than the buffer, an event, a notice), in order, in
//!    the round it was sent in.
//!
//! # Which messages garbage cannot cost (the framer's resynchronisation rules)
//! A valid message `M` (one of QEMU's, starting with its `{`, one line or pretty-printed) is
//! protected, whatever came before it, when either:
//! - **(a)** the byte right before `M` is a line feed that does not directly follow a
//!   backslash. So garbage ending in `\r\n` (as every QEMU line does) or in `\n` after
//!   anything but a backslash, and a message cut off by a line that starts with `{` (the next
//!   message), never cost that next message:
//!   inside an unfinished object the framer treats a `{` at the start of a line as a new
//!   message; inside a string a raw line feed (or the carriage return before it) is an error
//!   that resynchronises at the end of the line; between messages it skips to the next `{`.
//! - **(b)** no `{` byte came since the end of the last protected message (or the start of
//!   the stream): stray bytes between messages make the framer skip to the next `{`, which is
//!   `M`'s, whatever those bytes are (quotes, brackets, backslashes, control characters,
//!   invalid UTF-8, with or without line ends). This also covers two messages with nothing
//!   between them.
//!
//! Other messages can be swallowed, and that is inherent: garbage holding a `{` and no line
//! end after it opens an object (and maybe a string) that `M` then continues, e.g.
//! `{"abc` + `M`, `x{` + `M`, or a message cut off without a line end. The framer cannot
//! tell such an `M` from string contents or nested values, so `M` is lost (its command times
//! out or fails on end of stream; the next message after a line end is protected again).
//! QEMU itself never sends such bytes; they take a corrupted link or a hostile peer.
//!
//! The exception in (a) is a known weakness, tested (and ignored until framing.rs is fixed)
//! at the end of this file: the framer does not check the character after a backslash in a
//! string, so in `"…\` + LF the line feed counts as escaped content instead of the raw control
//! character JSON says it is, and the message after it is swallowed. With QEMU's `\r\n` line
//! ends the carriage return is what gets "escaped" and the line feed still resynchronises, so
//! `"…\` + `\r\n` costs nothing (it is generated below as protected garbage); only the error
//! is reported at the line feed rather than at the carriage return.
//!
//! # Running longer
//! `QMP_SOAK_CASES=2000 QMP_SOAK_SEED=7 PROPTEST_CASES=100000 cargo test --release -p
//! qmp-proto --test soak` runs more (or other) cases; a soak failure prints the seed and case
//! that reproduce it, a proptest failure its shrunk input.

mod common;

use common::{GREETING, Got};
use qmp_proto::{
    Failure, FrameError, FrameStatus, Framer, Instant, Message, Notice, Received, Session, State,
    find_frame,
};

/// Cases run by default: about 4 s of CPU for the whole file in a debug build.
const DEFAULT_CASES: u64 = 40;

// ---------------------------------------------------------------------------------------
// Randomness: SplitMix64, seeded, so every failure can be replayed.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn pick_bytes(&mut self, items: &[&'static [u8]]) -> &'static [u8] {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------
// Recorded material.

/// A recorded reply, cut around its id so that it can answer any command.
struct Template {
    before: Vec<u8>,
    after: Vec<u8>,
}

impl Template {
    fn with_id(&self, id: u64) -> Vec<u8> {
        let mut m = self.before.clone();
        m.extend_from_slice(id.to_string().as_bytes());
        m.extend_from_slice(&self.after);
        m
    }
}

/// QEMU's messages from tests/data, each without its line end.
struct Material {
    /// Replies with an integer id (returns and errors), one line or pretty-printed.
    replies: Vec<Template>,
    /// Replies too large for any buffer used here (query-qmp-schema, 207 KB).
    huge_replies: Vec<Template>,
    events: Vec<Vec<u8>>,
    /// Messages that answer no command of ours: id-less returns, errors without an id
    /// (QEMU's parse errors), replies with string or object ids.
    foreign: Vec<Vec<u8>>,
}

/// Splits a recorded transcript into its messages (balanced objects, any layout).
fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(FrameStatus::Complete { start, end }) = find_frame(&stream[at..]) {
        out.push(stream[at + start..at + end].to_vec());
        at += end;
    }
    assert!(
        stream[at..].iter().all(u8::is_ascii_whitespace),
        "unframed recorded bytes"
    );
    out
}

impl Material {
    fn load() -> Material {
        let mut m = Material {
            replies: Vec::new(),
            huge_replies: Vec::new(),
            events: Vec::new(),
            foreign: Vec::new(),
        };
        let mixed = common::data("mixed-stream.jsonl");
        let cut = mixed[..60_000].iter().rposition(|&b| b == b'\n').unwrap() + 1;
        let mut all = frames(&mixed[..cut]);
        for name in [
            "session.jsonl",
            "errors.jsonl",
            "oob.jsonl",
            "pretty.jsonl",
            "query-commands.jsonl",
            "query-qmp-schema.jsonl",
        ] {
            all.extend(frames(&common::data(name)));
        }
        for frame in all {
            let message = Message::parse(&frame).expect("recorded messages are valid");
            let numeric = message.id().and_then(|id| id.as_u64().map(|_| id));
            match (message, numeric) {
                (Message::Event(_), _) => m.events.push(frame),
                (Message::Return(_) | Message::Error(_), Some(id)) => {
                    let at = id.as_json().as_ptr() as usize - frame.as_ptr() as usize;
                    let template = Template {
                        before: frame[..at].to_vec(),
                        after: frame[at + id.as_json().len()..].to_vec(),
                    };
                    if frame.len() > 100_000 {
                        m.huge_replies.push(template);
                    } else {
                        m.replies.push(template);
                    }
                }
                // A greeting mid-session starts the session over (tests/restart.rs): not
                // noise to carry on through.
                (Message::Greeting(_), _) => {}
                _ => m.foreign.push(frame),
            }
        }
        assert!(m.replies.len() > 100 && m.events.len() > 20 && m.foreign.len() > 20);
        assert_eq!(m.huge_replies.len(), 1);
        m
    }
}

// ---------------------------------------------------------------------------------------
// Scripts: what the server sends, round by round, and what must come of it.

/// An id no command of ours ever has, for garbage made from replies.
const FOREIGN_ID: u64 = 4_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answers {
    /// The command with this id.
    Command(u64),
    /// No command (events, foreign messages).
    Nothing,
}

/// A run of bytes in the stream: a valid message (with what it answers) or garbage.
struct Piece {
    bytes: Vec<u8>,
    valid: Option<Answers>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The clock reaches the round's deadline.
    Timeout,
    /// The stream ends (the last round).
    Eof,
}

struct Round {
    /// How many commands are sent before the round's bytes arrive.
    commands: usize,
    deadline: Instant,
    pieces: Vec<Piece>,
    end: End,
}

struct Script {
    cap: usize,
    /// Garbage, the greeting, garbage: fed before negotiating.
    head: Vec<Piece>,
    /// Garbage and the reply to `qmp_capabilities` (id 1).
    negotiation: Vec<Piece>,
    rounds: Vec<Round>,
    /// Bytes after the last round, before the end of the stream.
    tail: Vec<Piece>,
    /// Everything that must come out, in order: protected messages and round ends.
    expected: Vec<Got>,
    /// Every command id the script sends.
    ids: Vec<u64>,
}

fn marker(round: usize) -> Got {
    Got::Notice(format!("-- end of round {round}"))
}

/// Garbage, in the shapes a corrupted link or a hostile peer could send.
fn garbage(rng: &mut Rng, material: &Material) -> Vec<u8> {
    let mut g = Vec::new();
    match rng.below(17) {
        // Stray bytes, no `{`: quotes, brackets, backslashes, control and non-UTF-8 bytes.
        0 | 1 => {
            for _ in 0..rng.range(1, 40) {
                let b = match rng.below(4) {
                    0 => *rng.pick(b"\"[]}\\:,\t \x01\xff\xfe\x00\x1b"),
                    _ => rng.below(256) as u8,
                };
                g.push(if b == b'{' { b'x' } else { b });
            }
            if rng.chance(30) {
                g.extend_from_slice(b"\r\n");
            }
        }
        // Any bytes at all (a `{` too), then a line end.
        2 => {
            for _ in 0..rng.range(1, 60) {
                g.push(rng.below(256) as u8);
            }
            g.extend_from_slice(if rng.chance(70) { b"\r\n" } else { b"\n" });
        }
        // A message cut off, then the next line.
        3 | 4 => {
            let m = any_message(rng, material);
            g.extend_from_slice(&m[..rng.range(1, m.len() - 1)]);
            g.extend_from_slice(b"\r\n");
        }
        // A message cut off with no line end: what follows can be swallowed.
        5 => {
            let m = any_message(rng, material);
            g.extend_from_slice(&m[..rng.range(1, m.len() - 1)]);
        }
        // A huge string in a complete object (no id), or never closed.
        6 => {
            g.extend_from_slice(b"{\"return\": \"");
            let n = rng.range(1_000, 120_000);
            g.extend(std::iter::repeat_n(b'x', n));
            if rng.chance(50) {
                g.extend_from_slice(b"\"}");
            }
            g.extend_from_slice(b"\r\n");
        }
        // A huge run of escapes, inside an event that is too large.
        7 => {
            g.extend_from_slice(b"{\"event\": \"");
            for _ in 0..rng.range(500, 20_000) {
                g.extend_from_slice(b"\\\"\\\\\\u00E9");
            }
            g.extend_from_slice(b"\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n");
        }
        // Deep nesting inside an object: too deep, then the end of the line.
        8 | 9 => {
            let depth = rng.range(60, 3_000);
            let (open, close) = if rng.chance(50) {
                (&b"["[..], &b"]"[..])
            } else {
                (&b"{\"a\": "[..], &b"}"[..])
            };
            g.extend_from_slice(b"{\"return\": ");
            for _ in 0..depth {
                g.extend_from_slice(open);
            }
            if rng.chance(50) {
                for _ in 0..depth {
                    g.extend_from_slice(close);
                }
                g.push(b'}');
            }
            g.extend_from_slice(b"\r\n");
        }
        // Deep nesting at the top level: not an object, and no `{`.
        10 => {
            let depth = rng.range(100, 5_000);
            g.extend(std::iter::repeat_n(b'[', depth));
            if rng.chance(50) {
                g.extend(std::iter::repeat_n(b']', depth));
            }
        }
        // JSON that is not an object.
        11 => {
            g.extend_from_slice(rng.pick_bytes(&[
                &b"[1, 2]"[..],
                b"\"just a string\"",
                b"42",
                b"nul",
                b"-inf",
                b"]]]",
            ]));
            if rng.chance(60) {
                g.extend_from_slice(b"\r\n");
            }
        }
        // Objects that are not QMP messages, or not JSON.
        12 | 13 => {
            g.extend_from_slice(rng.pick_bytes(&[
                &b"{\"foo\": 1}"[..],
                b"{\"return\" 1}",
                b"{\"return\": [1 2, {\"a\" 1}]}",
                b"{\"a\": [}]",
                b"{]",
                b"{\"return\": \"\xff\xfe\xc3\"}",
                b"{\"return\": \"\\\xc3\xa9\"}",
                b"{\"return\": \"a\\\rb\"}",
                b"{\"event\": 5, \"timestamp\": {}}",
                b"{\"return\": {}, \"return\": 1}",
                b"{\"id\": \"x\", \"error\": {\"class\": 1}}",
                b"{\"return\": {}, \"id\": 4000000000}",
                b"{\"return\": {}, \"id\": -1}",
                b"{\"return\": {}, \"id\": 1e400}",
                b"{}",
            ]));
            g.extend_from_slice(b"\r\n");
        }
        // QEMU's own resynchronisation bytes, and terminal noise.
        14 => g.extend_from_slice(rng.pick_bytes(&[&b"\x01"[..], b"\xff", b"\x00", b"\x1b[0m"])),
        // A string ending in a backslash, then a line end (see the module docs).
        15 => {
            g.extend_from_slice(rng.pick_bytes(&[
                &b"{\"return\": \"abc\\"[..],
                b"\"\\",
                b"{\"a\": [\"\\",
            ]));
            g.extend_from_slice(if rng.chance(80) { b"\r\n" } else { b"\n" });
        }
        // Opens an object or a string and stops: what follows can be swallowed.
        _ => g.extend_from_slice(rng.pick_bytes(&[
            &b"{\"abc"[..],
            b"x{",
            b"{[[[",
            b"{\"a\": \"",
            b"{\"a\": 1, ",
            b"{",
        ])),
    }
    g
}

/// Any recorded message, with a foreign id in place of a reply's.
fn any_message(rng: &mut Rng, material: &Material) -> Vec<u8> {
    match rng.below(3) {
        0 => rng.pick(&material.replies).with_id(FOREIGN_ID),
        1 => rng.pick(&material.events).clone(),
        _ => rng.pick(&material.foreign).clone(),
    }
}

/// Garbage after which the next message is protected by rule (a): for the greeting and the
/// negotiation, which must always get through.
fn safe_garbage(rng: &mut Rng, material: &Material) -> Vec<u8> {
    loop {
        let g = garbage(rng, material);
        if g.ends_with(b"\n") && !g.ends_with(b"\\\n") {
            return g;
        }
    }
}

/// The separator after a valid message: QEMU's `\r\n`, or (rarely) nothing or a bare LF.
fn line_end(rng: &mut Rng) -> &'static [u8] {
    match rng.below(20) {
        0 => b"",
        1 => b"\n",
        _ => b"\r\n",
    }
}

/// A reply of `len` bytes carrying `id`, its payload a long string (with the id first or
/// last, as QEMU puts it in errors and returns).
fn long_reply(rng: &mut Rng, id: u64) -> Vec<u8> {
    let filler = "y".repeat(rng.range(100, 40_000));
    if rng.chance(50) {
        format!("{{\"return\": \"{filler}\", \"id\": {id}}}").into_bytes()
    } else {
        format!(
            "{{\"id\": {id}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"{filler}\"}}}}"
        )
        .into_bytes()
    }
}

fn script(rng: &mut Rng, material: &Material) -> Script {
    let cap = *rng.pick(&[2048, 4096, 8192, 16384]);
    let valid = |bytes: Vec<u8>, answers: Answers| Piece {
        bytes,
        valid: Some(answers),
    };
    let junk = |bytes: Vec<u8>| Piece { bytes, valid: None };

    let mut head = Vec::new();
    if rng.chance(50) {
        head.push(junk(safe_garbage(rng, material)));
    }
    head.push(valid(
        GREETING.strip_suffix(b"\r\n").unwrap().to_vec(),
        Answers::Nothing,
    ));
    head.push(junk(b"\r\n".to_vec()));
    if rng.chance(50) {
        head.push(junk(safe_garbage(rng, material)));
    }
    let mut negotiation = Vec::new();
    if rng.chance(50) {
        negotiation.push(junk(safe_garbage(rng, material)));
    }
    negotiation.push(valid(
        b"{\"return\": {}, \"id\": 1}".to_vec(),
        Answers::Command(1),
    ));
    negotiation.push(junk(b"\r\n".to_vec()));

    let mut ids = vec![1];
    let mut next_id = 2;
    let mut rounds = Vec::new();
    let round_count = rng.range(3, 10);
    for r in 0..round_count {
        let commands = rng.range(1, 8);
        let round_ids: Vec<u64> = (next_id..next_id + commands as u64).collect();
        next_id += commands as u64;
        ids.extend(&round_ids);
        // The replies (some commands get none: the server stalls), with events and
        // foreign messages among them.
        let mut messages: Vec<(Vec<u8>, Answers)> = Vec::new();
        for &id in &round_ids {
            if rng.chance(10) {
                continue;
            }
            let bytes = match rng.below(40) {
                0 => rng.pick(&material.huge_replies).with_id(id),
                1..=3 => long_reply(rng, id),
                _ => rng.pick(&material.replies).with_id(id),
            };
            messages.push((bytes, Answers::Command(id)));
        }
        for _ in 0..rng.below(4) {
            let at = rng.below(messages.len() + 1);
            messages.insert(at, (rng.pick(&material.events).clone(), Answers::Nothing));
        }
        if rng.chance(30) {
            let at = rng.below(messages.len() + 1);
            let m = rng.pick(&material.foreign).clone();
            messages.insert(at, (m, Answers::Nothing));
        }
        // Out-of-band replies overtake in-band ones: sometimes swap two.
        if messages.len() > 1 && rng.chance(20) {
            let (a, b) = (rng.below(messages.len()), rng.below(messages.len()));
            messages.swap(a, b);
        }
        let mut pieces = Vec::new();
        for (bytes, answers) in messages {
            if rng.chance(35) {
                pieces.push(junk(garbage(rng, material)));
            }
            pieces.push(valid(bytes, answers));
            pieces.push(junk(line_end(rng).to_vec()));
        }
        if rng.chance(35) {
            pieces.push(junk(garbage(rng, material)));
        }
        let last = r + 1 == round_count;
        rounds.push(Round {
            commands,
            deadline: Instant::from_millis(1000 * (r as u64 + 1)),
            pieces,
            end: if last && rng.chance(50) {
                End::Eof
            } else {
                End::Timeout
            },
        });
    }
    let mut tail = Vec::new();
    if rng.chance(50) {
        tail.push(junk(garbage(rng, material)));
    }

    let mut s = Script {
        cap,
        head,
        negotiation,
        rounds,
        tail,
        expected: Vec::new(),
        ids,
    };
    s.expected = expected(&s);
    s
}

/// What a protected message yields, as it would alone.
fn outcome(frame: &[u8], answers: Answers, cap: usize) -> Got {
    if frame.len() > cap {
        let Answers::Command(id) = answers else {
            panic!("only replies are made larger than the buffer")
        };
        return Got::Failed {
            id,
            failure: Failure::TooLarge {
                size: frame.len() as u64,
            },
        };
    }
    let message = Message::parse(frame).expect("a valid message");
    match (message, answers) {
        (Message::Return(r), Answers::Command(id)) => Got::Return {
            id,
            value: r.value.as_json().to_string(),
        },
        (Message::Error(e), Answers::Command(id)) => Got::Error {
            id,
            class: e.error.class.to_string(),
            desc: e.error.desc.to_string(),
        },
        (Message::Event(e), Answers::Nothing) => Got::from(Received::Event(e)),
        (Message::Greeting(g), Answers::Nothing) => Got::from(Received::Greeting(g)),
        (Message::Error(e), Answers::Nothing) if e.id.is_none() => {
            Got::from(Received::Notice(Notice::UntaggedError(e.error)))
        }
        (m, Answers::Nothing) => Got::from(Received::Notice(Notice::UnmatchedReply(m))),
        (m, answers) => panic!("{m:?} cannot answer {answers:?}"),
    }
}

/// The protected messages (see the module docs) and the round ends, in order.
fn expected(s: &Script) -> Vec<Got> {
    let mut out = Vec::new();
    // The last two bytes of the stream so far, and whether a `{` came since the end of the
    // last protected message.
    let mut last = [0u8; 2];
    let mut brace_since = false;
    let mut greeted = false;
    let mut walk = |pieces: &[Piece], out: &mut Vec<Got>| {
        for piece in pieces {
            let protected = (last[1] == b'\n' && last[0] != b'\\') || !brace_since;
            match piece.valid {
                Some(answers) if protected => {
                    let got = outcome(&piece.bytes, answers, s.cap);
                    // Only the first greeting is a greeting.
                    if matches!(got, Got::Greeting { .. }) && greeted {
                        out.push(Got::Notice("second greeting".into()));
                    } else {
                        greeted |= matches!(got, Got::Greeting { .. });
                        out.push(got);
                    }
                    brace_since = false;
                }
                _ => brace_since |= piece.bytes.contains(&b'{'),
            }
            for &b in &piece.bytes {
                last = [last[1], b];
            }
        }
    };
    walk(&s.head, &mut out);
    walk(&s.negotiation, &mut out);
    for (r, round) in s.rounds.iter().enumerate() {
        walk(&round.pieces, &mut out);
        if round.end == End::Timeout {
            out.push(marker(r));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Driving a session.

#[derive(Debug, Clone, Copy)]
enum Chunking {
    /// As much as fits, every time.
    Whole,
    /// Sizes in `1..=max`, through `feed` or (`read_buf`) through `read_buf` + `commit`.
    Random { max: usize, read_buf: bool },
    /// Mostly small pieces, now and then a large one.
    Mixed,
}

struct Driver<'r> {
    session: Session<Vec<u8>, 8>,
    shape: (usize, usize),
    log: Vec<Got>,
    chunking: Chunking,
    rng: &'r mut Rng,
}

impl Driver<'_> {
    fn check_memory(&mut self) {
        let framer = self.session.framer();
        assert!(framer.buffered() <= framer.capacity());
        let buf = self.session.framer().get_ref();
        assert_eq!((buf.len(), buf.capacity()), self.shape, "the buffer grew");
    }

    fn drain(&mut self) {
        let mut n = 0;
        while let Some(item) = self.session.poll() {
            self.log.push(Got::from(item));
            n += 1;
            assert!(n < 1_000_000, "poll never returns None");
        }
        self.check_memory();
    }

    fn deliver(&mut self, pieces: &[Piece]) {
        let bytes: Vec<u8> = pieces
            .iter()
            .flat_map(|p| p.bytes.iter().copied())
            .collect();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (want, read_buf) = match self.chunking {
                Chunking::Whole => (rest.len(), false),
                Chunking::Random { max, read_buf } => (self.rng.range(1, max), read_buf),
                Chunking::Mixed if self.rng.chance(5) => (self.rng.range(1, 50_000), true),
                Chunking::Mixed => (self.rng.range(1, 16), false),
            };
            let mut piece = &rest[..want.min(rest.len())];
            rest = &rest[piece.len()..];
            while !piece.is_empty() {
                let n = if read_buf {
                    let room = self.session.read_buf();
                    let n = room.len().min(piece.len());
                    room[..n].copy_from_slice(&piece[..n]);
                    self.session.commit(n);
                    n
                } else {
                    self.session.feed(piece)
                };
                // Polling until `None` always makes room: no input is ever stuck.
                assert!(n > 0, "no room after poll returned None");
                piece = &piece[n..];
                self.check_memory();
                self.drain();
            }
        }
    }
}

/// Runs `s` with `chunking`; returns everything the session yielded (with round markers).
fn run(s: &Script, chunking: Chunking, rng: &mut Rng) -> Vec<Got> {
    let storage = vec![0u8; s.cap];
    let shape = (storage.len(), storage.capacity());
    let mut d = Driver {
        session: Session::new(storage),
        shape,
        log: Vec::new(),
        chunking,
        rng,
    };
    let mut out = [0u8; 128];
    d.deliver(&s.head);
    assert_eq!(d.session.state(), State::Negotiating);
    let sent = d.session.negotiate(false, None, &mut out).unwrap();
    assert_eq!(sent.id.get(), 1);
    d.deliver(&s.negotiation);
    assert_eq!(d.session.state(), State::Ready);
    let names = ["query-status", "stop", "query-version", "cont", "qom-list"];
    let mut next_id = 2;
    for (r, round) in s.rounds.iter().enumerate() {
        for k in 0..round.commands {
            let name = names[k % names.len()];
            let sent = d
                .session
                .execute(name, &(), Some(round.deadline), &mut out)
                .unwrap();
            assert_eq!(sent.id.get(), next_id);
            next_id += 1;
        }
        d.deliver(&round.pieces);
        match round.end {
            End::Timeout => {
                d.log.push(marker(r));
                d.session.handle_timeout(round.deadline);
                d.drain();
                // Every command of the round (and of earlier ones) has ended.
                assert_eq!(d.session.in_flight(), 0, "round {r}");
                assert_eq!(d.session.poll_timeout(), None);
            }
            End::Eof => break,
        }
    }
    if s.rounds.last().is_some_and(|r| r.end == End::Timeout) {
        d.deliver(&s.tail);
    }
    d.session.handle_eof();
    d.drain();
    assert_eq!(d.session.state(), State::Closed);
    assert_eq!(d.session.in_flight(), 0);
    d.check_memory();
    d.log
}

/// Whether `expected` appears in `log` in order (other items may come in between).
#[track_caller]
fn assert_subsequence(expected: &[Got], log: &[Got]) {
    let mut it = log.iter();
    for (i, want) in expected.iter().enumerate() {
        assert!(
            it.any(|got| got == want),
            "protected item {i} missing or out of order: {want:?}\n  expected: {expected:#?}\n  log: {log:#?}"
        );
    }
}

fn check_case(seed: u64, case: u64, material: &Material) -> usize {
    let mut rng = Rng(seed ^ case.wrapping_mul(0xA24B_AED4_963E_E407));
    let s = script(&mut rng, material);
    let reference = run(&s, Chunking::Whole, &mut rng);
    assert_subsequence(&s.expected, &reference);
    // Each command ended exactly once.
    for &id in &s.ids {
        let outcomes = reference
            .iter()
            .filter(|g| match g {
                Got::Return { id: i, .. }
                | Got::Error { id: i, .. }
                | Got::Failed { id: i, .. } => *i == id,
                _ => false,
            })
            .count();
        assert_eq!(outcomes, 1, "command {id}");
    }
    let size: usize = s
        .rounds
        .iter()
        .flat_map(|r| &r.pieces)
        .map(|p| p.bytes.len())
        .sum();
    let mut chunkings = vec![
        Chunking::Random {
            max: *rng.pick(&[64, 700, 5_000]),
            read_buf: rng.chance(50),
        },
        Chunking::Mixed,
    ];
    if size < 60_000 {
        chunkings.push(Chunking::Random {
            max: 3,
            read_buf: rng.chance(50),
        });
    }
    for chunking in chunkings {
        let got = run(&s, chunking, &mut rng);
        assert!(
            got == reference,
            "{chunking:?} changed the outcome\n  reference: {reference:#?}\n  got: {got:#?}"
        );
    }
    size
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn recorded_streams_with_garbage_in_random_chunks() {
    let material = Material::load();
    let seed = env_u64("QMP_SOAK_SEED", 0x51A7_2024);
    let cases = env_u64("QMP_SOAK_CASES", DEFAULT_CASES);
    let mut bytes = 0;
    for case in 0..cases {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_case(seed, case, &material)
        }));
        match result {
            Ok(n) => bytes += n,
            Err(panic) => {
                eprintln!(
                    "soak failure: replay with QMP_SOAK_SEED={seed} (case {case} of {cases})"
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!("soak: {cases} cases, {bytes} bytes of rounds, seed {seed}");
}

// ---------------------------------------------------------------------------------------
// The garbage rule on its own, small enough for proptest to shrink a counterexample.

mod garbage_rule {
    use super::common::{Got, feed_all};
    use proptest::prelude::*;
    use qmp_proto::{Instant, Session};

    type S = Session<[u8; 512], 8>;

    /// A session that is ready, with command 2 in flight.
    fn ready() -> S {
        let mut s = S::new([0; 512]);
        let mut out = [0u8; 128];
        feed_all(&mut s, super::GREETING);
        s.negotiate(false, None, &mut out).unwrap();
        feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
        let sent = s
            .execute(
                "query-status",
                &(),
                Some(Instant::from_millis(10)),
                &mut out,
            )
            .unwrap();
        assert_eq!(sent.id.get(), 2);
        s
    }

    const REPLY: &[u8] = b"{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, \"id\": 2}\r\n";
    const PRETTY: &[u8] = b"{\r\n    \"return\": {\r\n        \"status\": \"running\"\r\n    },\r\n    \"id\": 2\r\n}\r\n";

    fn decoded(got: &[Got]) -> bool {
        got.iter().any(|g| matches!(g, Got::Return { id: 2, .. }))
    }

    /// Feeds `garbage` then `reply` in pieces of `chunk`; returns what came out.
    fn run(garbage: &[u8], reply: &[u8], chunk: usize) -> Vec<Got> {
        let mut s = ready();
        let mut stream = garbage.to_vec();
        stream.extend_from_slice(reply);
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            got.extend(feed_all(&mut s, piece));
        }
        s.handle_timeout(Instant::from_millis(10));
        got.extend(super::common::drain(&mut s));
        assert_eq!(s.in_flight(), 0);
        got
    }

    fn junk() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                8 => prop::sample::select(b"{}[]\":,\\ \r\nab0\t".to_vec()),
                1 => any::<u8>(),
            ],
            0..40,
        )
    }

    proptest! {
        // 512 cases, or `PROPTEST_CASES`.
        #![proptest_config(ProptestConfig {
            cases: super::env_u64("PROPTEST_CASES", 512) as u32,
            ..ProptestConfig::default()
        })]

        /// Rule (a): garbage ending in a line feed that does not follow a backslash.
        #[test]
        fn garbage_ending_in_a_line_end_never_costs_the_next_message(
            mut garbage in junk(),
            crlf: bool,
            pretty: bool,
            chunk in 1usize..200,
        ) {
            while garbage.last() == Some(&b'\\') {
                garbage.pop();
            }
            garbage.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            let reply = if pretty { PRETTY } else { REPLY };
            let got = run(&garbage, reply, chunk);
            prop_assert!(decoded(&got), "{got:?}");
            prop_assert_eq!(got, run(&garbage, reply, usize::MAX));
        }

        /// Rule (b): garbage without a `{`, with or without line ends.
        #[test]
        fn garbage_without_a_brace_never_costs_the_next_message(
            garbage in junk().prop_map(|g| g.into_iter().filter(|&b| b != b'{').collect::<Vec<u8>>()),
            pretty: bool,
            chunk in 1usize..200,
        ) {
            let reply = if pretty { PRETTY } else { REPLY };
            let got = run(&garbage, reply, chunk);
            prop_assert!(decoded(&got), "{got:?}");
            prop_assert_eq!(got, run(&garbage, reply, usize::MAX));
        }

        /// Anything else may swallow the message, but the command still ends (here by its
        /// deadline), and chunking changes nothing.
        #[test]
        fn any_garbage_ends_the_command_one_way_or_another(
            garbage in junk(),
            pretty: bool,
            chunk in 1usize..200,
        ) {
            let reply = if pretty { PRETTY } else { REPLY };
            let got = run(&garbage, reply, chunk);
            let outcomes = got.iter().filter(|g| matches!(g, Got::Return { id: 2, .. } | Got::Failed { id: 2, .. } | Got::Error { id: 2, .. })).count();
            prop_assert_eq!(outcomes, 1, "{:?}", got);
            prop_assert_eq!(got, run(&garbage, reply, usize::MAX));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bugs the fuzzers found and that are fixed.

/// Found by the `session` fuzz target, fixed in session.rs: a command abandoned while the
/// session was yielding its end-of-stream failures (`Disconnected`) kept its slot for good,
/// so `in_flight()` never came back to 0 on the closed session.
#[test]
fn abandoning_a_command_after_the_end_of_stream_frees_its_slot() {
    let mut s = Session::<[u8; 512], 8>::new([0; 512]);
    let mut out = [0u8; 128];
    common::feed_all(&mut s, GREETING);
    s.negotiate(false, None, &mut out).unwrap();
    common::feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
    let a = s.execute("stop", &(), None, &mut out).unwrap().id;
    let b = s.execute("cont", &(), None, &mut out).unwrap().id;
    s.handle_eof();
    assert_eq!(
        s.poll().map(Got::from),
        Some(Got::Failed {
            id: a.get(),
            failure: Failure::Disconnected
        })
    );
    assert_eq!(s.state(), State::Closed);
    assert!(s.abandon(b));
    assert_eq!(s.poll().map(Got::from), None);
    assert_eq!(s.in_flight(), 0);
    assert!(!s.is_pending(b));
    assert!(!s.abandon(b));
}

/// Found while writing the `encode_roundtrip` fuzz target, fixed in encode.rs: the encoder
/// measures a value, then writes it; a value that wrote more the second time (a `Serialize`
/// or `Display` with side effects) was reported as `Ok(n)` with `n` larger than the buffer,
/// so the caller's `&out[..n]` panicked. It is now `EncodeError::Custom`.
#[test]
fn a_value_that_serializes_differently_twice_is_an_error() {
    use std::cell::Cell;
    use std::fmt;
    struct Growing(Cell<usize>);
    impl fmt::Display for Growing {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let n = self.0.get();
            self.0.set(n + 10);
            f.write_str(&"x".repeat(n))
        }
    }
    impl serde::Serialize for Growing {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self)
        }
    }
    let mut buf = [0u8; 8];
    assert_eq!(
        qmp_proto::encode_json(&Growing(Cell::new(1)), &mut buf),
        Err(qmp_proto::EncodeError::Custom)
    );
    #[derive(serde::Serialize)]
    struct Args {
        text: Growing,
    }
    let mut s = Session::<[u8; 512], 8>::new([0; 512]);
    common::feed_all(&mut s, GREETING);
    let mut out = [0u8; 64];
    s.negotiate(false, None, &mut out).unwrap();
    common::feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
    let args = Args {
        text: Growing(Cell::new(1)),
    };
    assert!(s.execute("x", &args, None, &mut out).is_err());
    assert_eq!(s.in_flight(), 0);
}

/// Found by the `json_str` fuzz target, fixed in json.rs (commit a15e1b2, "no str-slicing
/// panics"): `JsonStr::from_escaped` documents "unspecified (but memory-safe, panic-free)
/// results" for text that is not a valid JSON string body, but a backslash before a
/// multi-byte character made `chars` (and so `Display`, `unescape_into`, `eq_str`) slice the
/// text inside that character and panic. Strings from frames are validated first, so QEMU's
/// input could not reach this; a caller's own `from_escaped` text could.
#[test]
fn json_str_from_invalid_escapes_does_not_panic() {
    let s = qmp_proto::JsonStr::from_escaped("\\\u{e9}x");
    let _ = s.to_string();
    let _ = s.eq_str("x");
    let mut buf = [0u8; 16];
    assert_eq!(s.unescape_into(&mut buf).map(str::len), s.unescaped_len());
}

// ---------------------------------------------------------------------------------------
// Known weaknesses found by the soak and the fuzzers, in files this test does not own. Each
// test states the correct behaviour and fails today; they are ignored so CI stays green,
// and should be un-ignored by whoever fixes the code they name.

/// framing.rs: the character after a backslash in a string is not checked, so a raw line
/// feed right after `\` counts as escaped content (JSON forbids any raw control character
/// there) instead of an error that resynchronises at the end of the line; the next message
/// is then swallowed.
#[test]
fn a_backslash_before_a_line_feed_does_not_swallow_the_next_message() {
    let stream = b"{\"return\": \"abc\\\n{\"return\": {}, \"id\": 2}\r\n";
    let mut framer = Framer::new([0u8; 256]);
    assert_eq!(framer.feed(stream), stream.len());
    let mut items = Vec::new();
    while let Some(item) = framer.next_frame() {
        items.push(item.map(|f| f.as_bytes().to_vec()));
    }
    assert_eq!(
        items,
        [
            Err(FrameError::ControlCharInString {
                offset: 16,
                byte: b'\n'
            }),
            Ok(b"{\"return\": {}, \"id\": 2}".to_vec()),
        ]
    );
}

/// framing.rs, same cause, with QEMU's `\r\n`: the next message survives (the line feed is
/// still a raw control character), but the error names the line feed, not the carriage
/// return that JSON forbids after the backslash.
#[test]
fn a_backslash_before_a_carriage_return_is_reported_at_the_carriage_return() {
    let stream = b"{\"return\": \"abc\\\r\n{\"return\": {}, \"id\": 2}\r\n";
    let mut framer = Framer::new([0u8; 256]);
    let _ = framer.feed(stream);
    assert_eq!(
        framer.next_frame().map(|r| r.map(|f| f.offset())),
        Some(Err(FrameError::ControlCharInString {
            offset: 16,
            byte: b'\r'
        }))
    );
}

/// Bracket kinds are matched: `]` cannot close an object nor `}` an array. The mismatch is
/// reported at the closing bracket, the rest of its line is skipped, and the next message is
/// decoded, whether the object fits the buffer, is fed a byte at a time, or is oversized and
/// skimmed (then the error is the mismatch, not `TooLarge`).
#[test]
fn a_closing_bracket_of_the_wrong_kind_is_an_error_at_that_bracket() {
    let next = b"{\"return\": {}, \"id\": 2}\r\n";
    for (bad, at) in [
        (&b"{]"[..], 1),
        (b"{\"return\": [}]", 12),
        (b"{\"return\": {]], \"id\": 1}", 12),
        (b"{\"a\": [[{\"b\": \"]}\"}]], \"c\": [{]}", 30),
    ] {
        let mut stream = bad.to_vec();
        stream.extend_from_slice(b" trailing ] } junk\r\n");
        stream.extend_from_slice(next);
        let expected = FrameError::MismatchedBracket {
            offset: at,
            byte: bad[at as usize],
        };
        for chunk in [stream.len(), 1, 7] {
            // 256 bytes: the object fits; 16 bytes: it is skimmed as oversized.
            for capacity in [256, 16] {
                let mut framer = Framer::new(vec![0u8; capacity]);
                let mut got = Vec::new();
                for piece in stream.chunks(chunk) {
                    let mut piece = piece;
                    while !piece.is_empty() {
                        let n = framer.feed(piece);
                        piece = &piece[n..];
                        while let Some(item) = framer.next_frame() {
                            got.push(item.map(|f| f.as_bytes().to_vec()));
                        }
                    }
                }
                let what = format!(
                    "{:?} in chunks of {chunk}, buffer {capacity}",
                    String::from_utf8_lossy(bad)
                );
                if capacity == 256 {
                    assert_eq!(
                        got,
                        [Err(expected), Ok(next[..next.len() - 2].to_vec())],
                        "{what}"
                    );
                } else {
                    // The next message does not fit 16 bytes either.
                    assert_eq!(got[0], Err(expected), "{what}");
                    assert_eq!(got.len(), 2, "{what}: {got:?}");
                    let size = next.len() as u64 - 2;
                    assert!(
                        matches!(got[1], Err(FrameError::TooLarge { size: s, .. }) if s == size),
                        "{what}: {got:?}"
                    );
                }
                assert!(expected.to_string().contains("closes a"), "{expected}");
            }
        }
    }
}
