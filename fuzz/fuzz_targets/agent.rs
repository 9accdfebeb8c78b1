//! The [`Driver`] in the guest agent dialect ([`Driver::new_agent`]), driven by arbitrary
//! operations: garbage of any bytes (0xFF included) in the stream, sync replies (ours, and
//! others), replies and errors to the commands sent (some with a 0xFF inside), commands with
//! and without a success reply and any deadline, writes of any size, the clock moving on,
//! resyncs, polls and the end of the stream, the stream delivered in pieces of any size.
//!
//! Checks, besides "no panic": nothing completes that was not sent, and nothing twice; a
//! command without a success reply that completes as a success by silence does so only
//! after its deadline was handed in or the stream ended; **the sentinel rule**: once a sync
//! reply for the awaited sync (`0xFF` then `{"return": ID}`) is delivered and polled, the
//! driver is synced, whatever garbage came before it; the transmit buffer never holds more
//! than it can.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qmp_proto::{
    CommandId, Deadline, Done, Driver, DriverConfig, EventBuffer, Instant, Outcome, SendOptions,
};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Bytes appended to the stream, as they are.
    Garbage(Vec<u8>),
    /// `0xFF {"return": ID}\n`: the awaited sync's id (`ours`) or another.
    SyncReply {
        ours: bool,
        other: u64,
    },
    /// A reply to the `which`-th command sent: a return, or an error; perhaps with a 0xFF
    /// inside.
    Reply {
        which: u8,
        error: bool,
        sentinel: bool,
    },
    /// A command, with or without a success reply.
    Execute {
        no_reply: bool,
        deadline: Option<u16>,
    },
    /// Delivers up to `n` stream bytes (through `feed`, polling as it goes).
    Deliver(u16),
    /// Writes up to `n` queued bytes.
    Write(u16),
    /// The clock moves on.
    Advance(u16),
    Resync,
    Poll,
    Eof,
}

#[derive(Debug)]
struct Owed {
    no_reply: bool,
    /// A reply (not an error) for it was put in the stream.
    replied: bool,
    deadline: Option<u64>,
    completed: bool,
}

struct Model {
    driver: Driver<[u8; 1024], [u8; 512], EventBuffer<128>, 4>,
    now: u64,
    sent: Vec<CommandId>,
    owed: BTreeMap<CommandId, Owed>,
    stream: Vec<u8>,
    /// Where in `stream` a reply to the sync awaited when it was queued ends, and that id.
    sync_ends: Vec<(usize, u64)>,
    delivered: usize,
    eof: bool,
}

impl Model {
    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn poll(&mut self) {
        while let Some(done) = self.driver.poll() {
            if let Done::Closed(_) = done {
                // Said again for every later poll.
                break;
            }
            if let Done::Completed(id) = done {
                let owed = self
                    .owed
                    .get_mut(&id)
                    .expect("completed a command never sent");
                assert!(!owed.completed, "completed twice");
                owed.completed = true;
                let outcome = self.driver.outcome(id).expect("an outcome");
                if owed.no_reply && !owed.replied && matches!(outcome, Outcome::Return(_)) {
                    // Success by silence: only once its deadline passed, or at the end.
                    let due = owed.deadline.is_some_and(|d| d <= self.now);
                    assert!(self.eof || due, "silence taken for success too early");
                }
            }
        }
        // The sentinel rule.
        let pending = self.driver.agent_pending_sync();
        for &(end, id) in &self.sync_ends {
            if end <= self.delivered && pending == Some(id) && !self.eof {
                panic!("sync {id} delivered (ends at {end}) but not taken");
            }
        }
    }

    fn deliver(&mut self, n: usize) {
        let end = (self.delivered + n).min(self.stream.len());
        while self.delivered < end {
            let taken = self
                .driver
                .feed(&self.stream[self.delivered..end], self.now());
            self.delivered += taken;
            self.poll();
            if taken == 0 {
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(seed) = u64::arbitrary(&mut u) else {
        return;
    };
    let mut m = Model {
        driver: Driver::new_agent(
            [0; 1024],
            [0; 512],
            EventBuffer::new(),
            DriverConfig::default(),
            seed,
            Instant::ZERO,
        ),
        now: 0,
        sent: Vec::new(),
        owed: BTreeMap::new(),
        stream: Vec::new(),
        sync_ends: Vec::new(),
        delivered: 0,
        eof: false,
    };
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    if std::env::var_os("AGENT_FUZZ_DEBUG").is_some() {
        eprintln!("seed {seed}: {ops:#?}");
    }
    for op in ops.into_iter().take(256) {
        match op {
            Op::Garbage(bytes) => m.stream.extend_from_slice(&bytes[..bytes.len().min(4096)]),
            Op::SyncReply { ours, other } => {
                let id = match (ours, m.driver.agent_pending_sync()) {
                    (true, Some(id)) => id,
                    _ => other,
                };
                m.stream.push(0xFF);
                m.stream
                    .extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
                if Some(id) == m.driver.agent_pending_sync() {
                    m.sync_ends.push((m.stream.len(), id));
                }
            }
            Op::Reply {
                which,
                error,
                sentinel,
            } => {
                let Some(&id) = m.sent.get(which as usize % m.sent.len().max(1)) else {
                    continue;
                };
                if !error && !sentinel {
                    m.owed.get_mut(&id).expect("sent").replied = true;
                }
                let body = match (error, sentinel) {
                    (true, _) => format!(
                        "{{\"id\": {id}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"no\"}}}}\n"
                    ),
                    (false, false) => format!("{{\"return\": {{}}, \"id\": {id}}}\n"),
                    (false, true) => format!("{{\"return\": \"a\u{1}b\", \"id\": {id}}}\n"),
                };
                let bytes: Vec<u8> = body
                    .into_bytes()
                    .into_iter()
                    .map(|b| if b == 1 { 0xFF } else { b })
                    .collect();
                m.stream.extend_from_slice(&bytes);
            }
            Op::Execute { no_reply, deadline } => {
                let deadline = deadline.map(|ms| u64::from(ms) + 1);
                let options = SendOptions::new().deadline(match deadline {
                    Some(ms) => Deadline::After(std::time::Duration::from_millis(ms)),
                    None => Deadline::Never,
                });
                let now = m.now();
                let sent = if no_reply {
                    m.driver
                        .execute_no_reply("guest-shutdown", &(), options, now)
                } else {
                    m.driver.execute("guest-ping", &(), options, now)
                };
                if let Ok(id) = sent {
                    assert!(!m.owed.contains_key(&id), "an id used twice");
                    m.sent.push(id);
                    m.owed.insert(
                        id,
                        Owed {
                            no_reply,
                            replied: false,
                            // Without one, the driver gives it 5 s.
                            deadline: Some(m.now + deadline.unwrap_or(5000)),
                            completed: false,
                        },
                    );
                }
            }
            Op::Deliver(n) => m.deliver(usize::from(n)),
            Op::Write(n) => {
                if let Some(bytes) = m.driver.poll_transmit() {
                    let k = bytes.len().min(usize::from(n).max(1));
                    let now = m.now();
                    m.driver.handle_written(k, now);
                }
                assert!(m.driver.queued_bytes() <= 512);
            }
            Op::Advance(ms) => {
                m.now += u64::from(ms);
                let now = m.now();
                m.driver.handle_timeout(now);
                m.poll();
            }
            Op::Resync => {
                let now = m.now();
                m.driver.resync(now);
            }
            Op::Poll => m.poll(),
            Op::Eof => {
                m.deliver(usize::MAX);
                m.eof = true;
                m.driver.handle_eof();
                m.poll();
            }
        }
    }
    m.deliver(usize::MAX);
    m.poll();
});
