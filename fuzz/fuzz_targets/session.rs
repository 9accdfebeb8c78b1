//! A [`Session`] driven by an arbitrary list of operations: bytes of an arbitrary stream fed
//! in arbitrary pieces (through `feed` or `read_buf` + `commit`), synthesized server messages
//! aimed at the commands in flight, commands and out-of-band commands (any name, arguments,
//! deadline and output buffer size), `abandon` and `forget`, the clock moving on, end of
//! stream, and polls.
//!
//! Input: 1 configuration byte, 2 bytes giving the length `n` of the operation list's bytes,
//! `n` bytes from which the operations are derived (`arbitrary`), then the stream.
//!
//! Checks, besides "no panic": the receive buffer (a `Vec`) never grows and `buffered() <=
//! capacity()`; a command that was sent gets exactly one outcome (a reply, a typed failure,
//! or `Discarded` once abandoned), never one it was not owed; `TimedOut` only after its
//! deadline was handed in, `Disconnected` only after the end of stream; once everything is
//! polled after `handle_timeout(now)`, nothing whose deadline is `<= now` is still pending,
//! `poll_timeout` is the earliest deadline left, and `in_flight` counts what is owed; a
//! refused command writes nothing and records nothing; a sent command is valid JSON carrying
//! its id; after `handle_eof` and a full poll, the session is `Closed` and owes nothing.
#![no_main]

use std::collections::{BTreeMap, VecDeque};

#[path = "session_driver.rs"]
mod session_driver;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qmp_proto::{
    Config, Failure, Instant, Notice, Outcome, RawJson, Received, SendError, Session, State,
};

const NAMES: [&str; 6] = [
    "query-status",
    "stop",
    "cont",
    "qmp_capabilities",
    "query-name",
    "human-monitor-command",
];

const GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n";
const GREETING_NO_OOB: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 9}, \"package\": \"\"}, \"capabilities\": []}}\r\n";

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Args {
    None,
    Path(String),
    Enable(bool),
    Numbers(Vec<i64>),
    NotAnObject(u8),
    NonFinite,
}

#[derive(serde::Serialize)]
struct Path<'a> {
    path: &'a str,
}

#[derive(serde::Serialize)]
struct Enable {
    enable: &'static [&'static str],
}

#[derive(serde::Serialize)]
struct Numbers<'a> {
    n: &'a [i64],
    f: f64,
}

/// A server message aimed at the `which`-th command sent (or at an id never used).
#[derive(Arbitrary, Debug)]
enum Synth {
    Greeting {
        oob: bool,
    },
    Return {
        which: u8,
    },
    Error {
        which: u8,
    },
    Event,
    /// A return with a string of `size` bytes: too large for small buffers.
    Big {
        which: u8,
        size: u16,
    },
    /// An error reply missing its `desc`.
    Malformed {
        which: u8,
    },
    /// The first `cut` bytes of a return, then a line end.
    Truncated {
        which: u8,
        cut: u8,
    },
    /// A parse error, as QEMU sends for bad input: no id.
    Untagged,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Up to `n` bytes through `feed`.
    Feed(u16),
    /// Up to `n` bytes through `read_buf` + `commit`.
    ReadInto(u16),
    /// `n` polls; 0 polls until `None` and checks the settled invariants.
    Poll(u8),
    Negotiate {
        oob: bool,
        deadline: Option<u16>,
        out: u8,
    },
    Execute {
        name: Name,
        args: Args,
        oob: bool,
        deadline: Option<u16>,
        out: u8,
    },
    Abandon(u8),
    /// `forget` the `n`-th command sent.
    Forget(u8),
    /// The clock moves `ms` on and is handed in.
    Advance(u16),
    Eof,
    Inject(Synth),
}

/// What the driver knows about one command sent.
#[derive(Debug)]
struct Owed {
    deadline: Option<u64>,
    abandoned: bool,
    /// `execute` (or negotiation), not `exec-oob`.
    in_band: bool,
    /// Sent with its id (see `Config::untagged_when_alone`).
    tagged: bool,
    /// `handle_timeout` was given a time at or past the deadline after the command was sent.
    expired: bool,
}

/// What the session owes: the model its outcomes are checked against.
struct Model {
    /// Commands owed an outcome, by id.
    owed: BTreeMap<u64, Owed>,
    eof: bool,
    /// Commands may go without ids (`Config::untagged_when_alone`) and none that did has
    /// timed out or been abandoned yet.
    may_untag: bool,
}

impl Model {
    fn on(&mut self, item: Received<'_>) {
        match item {
            Received::Reply(reply) => {
                let id = reply.id.get();
                let owed = self
                    .owed
                    .remove(&id)
                    .unwrap_or_else(|| panic!("outcome for {id}, which is not owed one"));
                assert!(!owed.abandoned, "reply for abandoned {id}");
                match reply.outcome {
                    Outcome::Failed(Failure::TimedOut) => {
                        self.may_untag &= owed.tagged;
                        assert!(owed.deadline.is_some(), "{id} timed out without a deadline");
                        assert!(
                            owed.expired,
                            "{id} timed out before its deadline was handed in"
                        );
                    }
                    Outcome::Failed(Failure::Disconnected) => assert!(self.eof),
                    Outcome::Failed(f) => {
                        if matches!(f, Failure::Malformed(_) | Failure::Unframed(_)) {
                            // A broken message taken for the reply may have been noise: ids
                            // come back, as after a timeout.
                            self.may_untag &= owed.tagged;
                        }
                        let _ = f.to_string();
                    }
                    Outcome::Return(v) => {
                        // A payload is only checked structurally until validated.
                        if v.validate().is_ok() {
                            assert_eq!(
                                RawJson::parse(v.as_json()).map(|p| p.as_json()),
                                Ok(v.as_json())
                            );
                        }
                    }
                    Outcome::Error(e) => {
                        let _ = e.to_string();
                    }
                }
            }
            Received::Notice(Notice::Discarded(id)) => {
                let owed = self.owed.remove(&id.get()).expect("discarded but not owed");
                assert!(owed.abandoned);
            }
            Received::Notice(n) => {
                let _ = format!("{n:?}");
            }
            Received::Greeting(g) => {
                let _ = g.capabilities.oob();
            }
            Received::Event(e) => {
                let _ = e.name.to_string();
            }
        }
    }
}

struct Driver<const N: usize> {
    session: Session<Vec<u8>, N>,
    storage: (usize, usize),
    model: Model,
    sent: Vec<qmp_proto::CommandId>,
    last_id: u64,
    now: u64,
    pending: VecDeque<u8>,
}

impl<const N: usize> Driver<N> {
    fn check_memory(&mut self) {
        let framer = self.session.framer();
        assert!(framer.buffered() <= framer.capacity());
        let buf = self.session.framer().get_ref();
        assert_eq!((buf.len(), buf.capacity()), self.storage);
        assert!(self.session.in_flight() <= N);
    }

    fn poll(&mut self, limit: u8) {
        if limit > 0 {
            for _ in 0..limit {
                let Some(item) = self.session.poll() else {
                    break;
                };
                self.model.on(item);
            }
            return;
        }
        while let Some(item) = self.session.poll() {
            self.model.on(item);
        }
        self.check_settled();
    }

    /// Invariants once `poll` has returned `None`.
    fn check_settled(&mut self) {
        if self.model.eof {
            assert_eq!(self.session.state(), State::Closed);
            // Abandoned commands are dropped silently at the end of stream.
            self.model.owed.retain(|_, o| !o.abandoned);
            assert!(self.model.owed.is_empty(), "{:?}", self.model.owed);
        }
        for (id, o) in &self.model.owed {
            assert!(
                o.abandoned || !o.expired,
                "{id} is past its deadline and still pending"
            );
        }
        let earliest = self
            .model
            .owed
            .values()
            .filter(|o| !o.abandoned)
            .filter_map(|o| o.deadline)
            .min();
        assert_eq!(
            self.session.poll_timeout().map(|t| t.as_micros()),
            earliest.map(|d| d * 1000)
        );
        assert_eq!(self.session.in_flight(), self.model.owed.len());
        for (&id, o) in &self.model.owed {
            let cmd = *self.sent.iter().find(|c| c.get() == id).expect("owed ids were sent");
            assert_eq!(
                self.session.is_pending(cmd),
                !o.abandoned
            );
        }
        // After `None`, there is always room to read into.
        assert!(!self.session.read_buf().is_empty());
    }

    /// Delivers up to `n` bytes (injected ones first, then the stream).
    fn deliver(&mut self, stream: &mut &[u8], n: usize, read_into: bool) {
        // No more than fits (`feed` calls `read_buf` itself, so asking first changes nothing),
        // to keep the bytes put back cheap.
        let n = n.min(self.session.read_buf().len());
        let mut piece: Vec<u8> = Vec::with_capacity(n);
        while piece.len() < n {
            match self.pending.pop_front() {
                Some(b) => piece.push(b),
                None => break,
            }
        }
        let from_stream = (n - piece.len()).min(stream.len());
        piece.extend_from_slice(&stream[..from_stream]);
        let took_from_pending = piece.len() - from_stream;
        let accepted = if read_into {
            let room = self.session.read_buf();
            let k = room.len().min(piece.len());
            room[..k].copy_from_slice(&piece[..k]);
            self.session.commit(k);
            k
        } else {
            self.session.feed(&piece)
        };
        // Bytes not accepted go back where they came from, in order.
        if accepted < took_from_pending {
            for &b in piece[accepted..took_from_pending].iter().rev() {
                self.pending.push_front(b);
            }
            // Nothing from the stream was accepted.
        } else {
            *stream = &stream[from_stream - (piece.len() - accepted)..];
        }
    }

    fn id_for(&self, which: u8) -> u64 {
        if self.sent.is_empty() || which == u8::MAX {
            // An id never used.
            return 1 << 60;
        }
        self.sent[usize::from(which) % self.sent.len()].get()
    }

    fn inject(&mut self, synth: Synth) {
        let bytes: Vec<u8> = match synth {
            Synth::Greeting { oob: true } => GREETING.to_vec(),
            Synth::Greeting { oob: false } => GREETING_NO_OOB.to_vec(),
            Synth::Return { which } => {
                format!("{{\"return\": {{}}, \"id\": {}}}\r\n", self.id_for(which)).into_bytes()
            }
            Synth::Error { which } => format!(
                "{{\"id\": {}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"x\"}}}}\r\n",
                self.id_for(which)
            )
            .into_bytes(),
            Synth::Event => b"{\"timestamp\": {\"seconds\": 1795596531, \"microseconds\": 804941}, \"event\": \"STOP\"}\r\n".to_vec(),
            Synth::Big { which, size } => format!(
                "{{\"return\": \"{}\", \"id\": {}}}\r\n",
                "x".repeat(usize::from(size)),
                self.id_for(which)
            )
            .into_bytes(),
            Synth::Malformed { which } => format!(
                "{{\"id\": {}, \"error\": {{\"class\": \"GenericError\"}}}}\r\n",
                self.id_for(which)
            )
            .into_bytes(),
            Synth::Truncated { which, cut } => {
                let full = format!(
                    "{{\"return\": {{\"status\": \"running\", \"running\": true}}, \"id\": {}}}",
                    self.id_for(which)
                );
                let mut b = full.as_bytes()[..usize::from(cut).min(full.len() - 1)].to_vec();
                b.extend_from_slice(b"\r\n");
                b
            }
            Synth::Untagged => b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}\r\n".to_vec(),
        };
        self.pending.extend(bytes);
    }

    fn after_send(
        &mut self,
        before: usize,
        result: Result<qmp_proto::Sent, SendError>,
        out: &[u8],
        deadline: Option<u16>,
    ) {
        match result {
            Ok(sent) => {
                let id = sent.id.get();
                assert!(id > self.last_id);
                assert!(sent.len <= out.len());
                let text = std::str::from_utf8(&out[..sent.len]).expect("UTF-8");
                let raw = RawJson::parse(text).expect("a valid command");
                let in_band = raw.get("exec-oob").is_none();
                let tagged = match raw.get("id") {
                    Some(wire) => {
                        assert_eq!(wire.as_u64(), Some(id));
                        true
                    }
                    None => {
                        // Without an id only when allowed, in band, not negotiation, and
                        // with no other in-band command owed anything.
                        assert!(self.model.may_untag, "{text}");
                        assert!(in_band, "{text}");
                        let name = raw.get("execute").map(|n| n.as_json());
                        assert_ne!(name, Some("\"qmp_capabilities\""), "{text}");
                        assert!(
                            self.model.owed.values().all(|o| !o.in_band),
                            "{text} went without an id next to {:?}",
                            self.model.owed
                        );
                        false
                    }
                };
                self.last_id = id;
                self.sent.push(sent.id);
                self.model.owed.insert(
                    id,
                    Owed {
                        deadline: deadline.map(|d| self.now + u64::from(d)),
                        abandoned: false,
                        in_band,
                        tagged,
                        expired: false,
                    },
                );
            }
            Err(e) => {
                let _ = e.to_string();
                // Nothing written, nothing recorded.
                assert!(out.iter().all(|&b| b == 0x5A), "{e:?}");
                assert_eq!(self.session.in_flight(), before);
                if self.session.state() == State::Closed {
                    assert!(
                        matches!(e, SendError::Closed | SendError::AlreadyNegotiated),
                        "{e:?}"
                    );
                }
            }
        }
    }

    fn run(&mut self, op: Op, stream: &mut &[u8]) {
        match op {
            Op::Feed(n) => self.deliver(stream, usize::from(n), false),
            Op::ReadInto(n) => self.deliver(stream, usize::from(n), true),
            Op::Poll(n) => self.poll(n),
            Op::Negotiate { oob, deadline, out } => {
                let mut buf = vec![0x5Au8; usize::from(out)];
                let at = deadline.map(|d| Instant::from_millis(self.now + u64::from(d)));
                let before = self.session.in_flight();
                let result = self.session.negotiate(oob, at, &mut buf);
                self.after_send(before, result, &buf, deadline);
            }
            Op::Execute {
                name,
                args,
                oob,
                deadline,
                out,
            } => {
                let name = match &name {
                    Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()],
                    Name::Other(s) => s.as_str(),
                };
                let mut buf = vec![0x5Au8; usize::from(out) * 2];
                let at = deadline.map(|d| Instant::from_millis(self.now + u64::from(d)));
                let before = self.session.in_flight();
                let s = &mut self.session;
                let result = match (&args, oob) {
                    (Args::None, false) => s.execute(name, &(), at, &mut buf),
                    (Args::None, true) => s.execute_oob(name, &(), at, &mut buf),
                    (Args::Path(p), false) => s.execute(name, &Path { path: p }, at, &mut buf),
                    (Args::Path(p), true) => s.execute_oob(name, &Path { path: p }, at, &mut buf),
                    (Args::Enable(e), _) => {
                        let enable: &'static [&'static str] = if *e { &["oob"] } else { &[] };
                        s.execute(name, &Enable { enable }, at, &mut buf)
                    }
                    (Args::Numbers(n), _) => {
                        s.execute_oob(name, &Numbers { n, f: 0.5 }, at, &mut buf)
                    }
                    (Args::NotAnObject(v), _) => s.execute(name, v, at, &mut buf),
                    (Args::NonFinite, _) => s.execute(
                        name,
                        &Numbers {
                            n: &[],
                            f: f64::NAN,
                        },
                        at,
                        &mut buf,
                    ),
                };
                self.after_send(before, result, &buf, deadline);
            }
            Op::Abandon(which) => {
                if self.sent.is_empty() {
                    return;
                }
                let cmd = self.sent[usize::from(which) % self.sent.len()];
                let id = cmd.get();
                let was = self.session.abandon(cmd);
                match self.model.owed.get_mut(&id) {
                    // A command timed out or disconnected but not yet polled can still be
                    // abandoned; either way its outcome becomes `Discarded` (or nothing, at
                    // the end of the stream).
                    Some(o) => {
                        assert_eq!(was, !o.abandoned, "{id}");
                        o.abandoned = true;
                        if was && self.session.state() != State::Closed {
                            self.model.may_untag &= o.tagged;
                        }
                    }
                    None => assert!(!was, "abandoned {id}, which is owed nothing"),
                }
            }
            Op::Forget(which) => {
                if self.sent.is_empty() {
                    return;
                }
                let cmd = self.sent[usize::from(which) % self.sent.len()];
                let id = cmd.get();
                let was = self.session.forget(cmd);
                match self.model.owed.remove(&id) {
                    // An abandoned command leaves the table when the session closes.
                    Some(o) => assert!(
                        was || (o.abandoned && self.session.state() == State::Closed),
                        "{id}"
                    ),
                    None => assert!(!was, "forgot {id}, which is owed nothing"),
                }
            }
            Op::Advance(ms) => {
                self.now += u64::from(ms);
                self.session.handle_timeout(Instant::from_millis(self.now));
                for o in self.model.owed.values_mut() {
                    o.expired |= o.deadline.is_some_and(|d| d <= self.now);
                }
            }
            Op::Eof => {
                self.session.handle_eof();
                self.model.eof = true;
            }
            Op::Inject(synth) => self.inject(synth),
        }
        self.check_memory();
    }
}

fn drive<const N: usize>(
    config: Config,
    untagged: bool,
    cap: usize,
    ops: Vec<Op>,
    mut stream: &[u8],
) {
    let storage = vec![0u8; cap];
    let storage_shape = (storage.len(), storage.capacity());
    let mut d = Driver::<N> {
        session: Session::with_config(storage, config),
        storage: storage_shape,
        model: Model {
            owed: BTreeMap::new(),
            eof: false,
            may_untag: untagged,
        },
        sent: Vec::new(),
        last_id: 0,
        now: 0,
        pending: VecDeque::new(),
    };
    for op in ops {
        d.run(op, &mut stream);
    }
    // Everything left, then the end of the stream: nothing may stay owed.
    while !stream.is_empty() || !d.pending.is_empty() {
        d.deliver(&mut stream, 4096, false);
        d.poll(0);
    }
    d.session.handle_eof();
    d.model.eof = true;
    d.poll(0);
    d.check_memory();
}

fuzz_target!(|input: &[u8]| {
    let Some((&[cfg, lo, hi], rest)) = input.split_first_chunk::<3>() else {
        return;
    };
    // The top bit of the ops length: commands without ids when alone; the next one: drive
    // the client `Driver` instead of the bare session (`session_driver.rs`).
    let untagged = hi & 0x80 != 0;
    let through_driver = hi & 0x40 != 0;
    let ops_len = usize::from(u16::from_le_bytes([lo, hi & 0x3F])).min(rest.len());
    let (op_bytes, stream) = rest.split_at(ops_len);
    if through_driver {
        let Ok(ops) = Vec::<session_driver::Op>::arbitrary_take_rest(Unstructured::new(op_bytes))
        else {
            return;
        };
        let config = Config::default()
            .max_in_band([1, 2, 8, 255][usize::from((cfg >> 3) & 3)])
            .untagged_when_alone(untagged);
        let greeting = if cfg & 1 == 0 { GREETING } else { GREETING_NO_OOB };
        let mut first = greeting.to_vec();
        // Whatever the stream holds follows the greeting (noise, replies, events).
        first.extend_from_slice(&stream[..stream.len().min(512)]);
        session_driver::drive(config, cfg & 2 == 0, &first, ops);
        return;
    }
    let u = Unstructured::new(op_bytes);
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(u) else {
        return;
    };
    // `QMP_FUZZ_DEBUG=1 cargo fuzz run session FILE` shows what an input does.
    if std::env::var_os("QMP_FUZZ_DEBUG").is_some() {
        eprintln!(
            "cfg {cfg:#04x}, {} stream bytes, ops: {ops:#?}",
            stream.len()
        );
    }
    let cap = [64, 128, 256, 512, 1024, 4096, 16384, 65536][usize::from(cfg & 7)];
    let config = Config::default()
        .max_in_band([1, 2, 8, 255][usize::from((cfg >> 3) & 3)])
        .enforce_negotiation(cfg & 0x80 == 0)
        .untagged_when_alone(untagged);
    match (cfg >> 5) & 3 {
        0 => drive::<1>(config, untagged, cap, ops, stream),
        1 => drive::<4>(config, untagged, cap, ops, stream),
        _ => drive::<8>(config, untagged, cap, ops, stream),
    }
});
