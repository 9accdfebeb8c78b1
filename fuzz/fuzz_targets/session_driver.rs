//! The `session` target's second mode: the [`Driver`] every client runs, driven by
//! arbitrary operations over the same kind of stream: bytes delivered by `read_buf` +
//! `handle_read` or `feed`, replies synthesized for the commands sent, writes that take any
//! number of bytes or fail in any way, commands with any deadline (some with an
//! attachment), abandons, the clock moving on, read errors, the end of the stream, closes.
//!
//! Checks, besides "no panic": a command sent gets exactly one completion unless it was
//! abandoned (then none); each completion's outcome can be taken once; nothing completes
//! that was not sent; an attached command's bytes start a write of their own; the transmit
//! buffer never holds more than it can; once the stream has ended and everything is polled,
//! `Done::Closed` comes, nothing is owed and nothing more can be sent.

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use qmp_proto::{
    CommandId, Config, Deadline, Done, Driver, DriverConfig, EventBuffer, Instant, Io, LinkError,
    SendError, SendOptions, Wait,
};

const NAMES: [&str; 4] = ["query-status", "stop", "cont", "query-name"];

/// One operation on the driver.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Up to `n` stream bytes through `read_buf` + `handle_read`.
    Read(u16),
    /// Up to `n` stream bytes through `feed` (and polls in between).
    Feed(u16),
    /// One write: the link takes up to `n` bytes, or fails (`fail` picks the kind).
    Write { n: u16, fail: Option<u8> },
    Execute {
        name: u8,
        oob: bool,
        deadline: Option<u16>,
        attach: bool,
    },
    Abandon(u8),
    /// The clock moves `ms` on and is handed in.
    Advance(u16),
    /// `n` polls (0: until `None`).
    Poll(u8),
    /// A reply (or error) to the `which`-th command, appended to the stream.
    Reply { which: u8, error: bool },
    /// An event appended to the stream.
    Event,
    ReadError(u8),
    Eof,
    Close,
}

fn link_error(kind: u8) -> LinkError {
    match kind % 3 {
        0 => LinkError::Transient,
        1 => LinkError::Closed,
        _ => LinkError::Fatal,
    }
}

/// What the model knows of one command.
#[derive(Debug)]
struct Owed {
    abandoned: bool,
    completed: bool,
}

struct Model {
    driver: Driver<[u8; 1024], [u8; 256], EventBuffer<128>, 4>,
    now: u64,
    sent: Vec<CommandId>,
    owed: BTreeMap<CommandId, Owed>,
    /// Bytes the "server" sends, not yet delivered.
    stream: Vec<u8>,
    eof: bool,
    closed_seen: bool,
}

impl Model {
    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn on(&mut self, done: Done) {
        match done {
            Done::Completed(id) => {
                if self.owed.get(&id).is_none() && self.driver.negotiation() == Some(id) {
                    // The capabilities negotiation the driver sent by itself.
                    self.owed.insert(
                        id,
                        Owed {
                            abandoned: false,
                            completed: false,
                        },
                    );
                }
                let owed = self
                    .owed
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("completion for {id}, never sent"));
                assert!(!owed.abandoned, "completion for abandoned {id}");
                assert!(!owed.completed, "second completion for {id}");
                owed.completed = true;
                assert!(self.driver.outcome(id).is_some(), "no outcome for {id}");
                assert!(self.driver.outcome(id).is_none(), "outcome of {id} taken twice");
            }
            Done::Closed(_) => self.closed_seen = true,
            _ => {}
        }
    }

    fn poll(&mut self, n: u8) {
        let mut left = if n == 0 { usize::MAX } else { usize::from(n) };
        while left > 0 {
            let Some(done) = self.driver.poll() else {
                return;
            };
            self.on(done);
            if matches!(done, Done::Closed(_)) {
                return;
            }
            left -= 1;
        }
    }

    fn run(&mut self, op: Op) {
        let now = self.now();
        match op {
            Op::Read(n) => {
                let buf = self.driver.read_buf();
                let n = buf.len().min(usize::from(n)).min(self.stream.len());
                if n == 0 {
                    if self.eof {
                        self.driver.handle_read(0, now);
                    }
                    return;
                }
                buf[..n].copy_from_slice(&self.stream[..n]);
                self.stream.drain(..n);
                self.driver.handle_read(n, now);
            }
            Op::Feed(n) => {
                let mut n = usize::from(n).min(self.stream.len());
                while n > 0 {
                    let took = self.driver.feed(&self.stream[..n], now);
                    self.stream.drain(..took);
                    n -= took;
                    self.poll(0);
                    if took == 0 {
                        break;
                    }
                }
            }
            Op::Write { n, fail } => match (self.driver.poll_io(now, Wait::Idle, None), fail) {
                (Io::Write { .. }, Some(kind)) => self.driver.handle_write_error(link_error(kind), now),
                (Io::Write { bytes, attach }, None) => {
                    if attach {
                        assert!(bytes.first().is_some_and(|&b| b == b'{'), "attachment mid-command");
                    }
                    let n = bytes.len().min(usize::from(n));
                    self.driver.handle_written(n, now);
                }
                (Io::Done(done), _) => self.on(done),
                (Io::Read { .. }, _) => unreachable!("Wait::Idle never reads"),
            },
            Op::Execute {
                name,
                oob,
                deadline,
                attach,
            } => {
                let name = NAMES[usize::from(name) % NAMES.len()];
                let deadline = match deadline {
                    Some(ms) => Deadline::At(Instant::from_millis(self.now + u64::from(ms))),
                    None => Deadline::Never,
                };
                let options = SendOptions::new().oob(oob).deadline(deadline).attach(attach);
                let closed = self.driver.is_closed();
                match self.driver.execute(name, &(), options, now) {
                    Ok(id) => {
                        assert!(!closed, "sent on a closed connection");
                        self.sent.push(id);
                        let old = self.owed.insert(
                            id,
                            Owed {
                                abandoned: false,
                                completed: false,
                            },
                        );
                        assert!(old.is_none(), "id {id} used twice");
                    }
                    Err(SendError::Closed) => assert!(closed),
                    Err(_) => {}
                }
                assert!(self.driver.queued_bytes() <= 256);
            }
            Op::Abandon(i) => {
                if let Some(&id) = self.sent.get(usize::from(i) % self.sent.len().max(1)) {
                    if self.driver.abandon(id) {
                        let owed = self.owed.get_mut(&id).expect("sent");
                        assert!(!owed.completed, "abandoned {id} after its completion");
                        owed.abandoned = true;
                    }
                }
            }
            Op::Advance(ms) => {
                self.now += u64::from(ms);
                self.driver.handle_timeout(self.now());
            }
            Op::Poll(n) => self.poll(n),
            Op::Reply { which, error } => {
                if let Some(id) = self.sent.get(usize::from(which) % self.sent.len().max(1)) {
                    let id = id.get();
                    let text = if error {
                        format!("{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"x\"}}, \"id\": {id}}}\r\n")
                    } else {
                        format!("{{\"return\": {{}}, \"id\": {id}}}\r\n")
                    };
                    self.stream.extend_from_slice(text.as_bytes());
                }
            }
            Op::Event => self.stream.extend_from_slice(
                b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n",
            ),
            Op::ReadError(kind) => self.driver.handle_read_error(link_error(kind), now),
            Op::Eof => self.eof = true,
            Op::Close => self.driver.close(),
        }
    }

    /// The end: deliver what is left, then the end of the stream, and poll to `Closed`.
    fn finish(&mut self) {
        self.eof = true;
        for _ in 0..100_000 {
            if self.closed_seen {
                break;
            }
            self.run(Op::Read(u16::MAX));
            self.poll(0);
        }
        assert!(self.closed_seen, "no Done::Closed after the end of the stream");
        for (id, owed) in &self.owed {
            assert!(owed.abandoned || owed.completed, "{id} never completed");
        }
        assert_eq!(self.driver.in_flight(), 0);
        assert_eq!(
            self.driver.execute("stop", &(), SendOptions::new(), self.now()),
            Err(SendError::Closed)
        );
    }
}

/// Runs `ops` against a driver whose server first greets (with `greeting`), then sends what
/// the operations synthesize.
pub fn drive(config: Config, negotiate: bool, greeting: &[u8], ops: Vec<Op>) {
    let driver_config = DriverConfig {
        session: config,
        negotiate,
        oob: true,
        handshake_timeout: Some(core::time::Duration::from_millis(500)),
        command_timeout: Some(core::time::Duration::from_millis(200)),
        stall_timeout: None,
        zero_read_is_eof: true,
    };
    let mut model = Model {
        driver: Driver::new(
            [0; 1024],
            [0; 256],
            EventBuffer::new(),
            driver_config,
            Instant::ZERO,
        ),
        now: 0,
        sent: Vec::new(),
        owed: BTreeMap::new(),
        stream: greeting.to_vec(),
        eof: false,
        closed_seen: false,
    };
    for op in ops {
        model.run(op);
        if model.closed_seen {
            break;
        }
    }
    model.finish();
}
