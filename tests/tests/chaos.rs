//! Chaos: real QMP sessions through [`ChaosProxy`], which splits, delays and stalls the bytes
//! between the client and a real QEMU 7.2, cuts the connection (often mid-message) and
//! injects garbage between QEMU's messages, all drawn from a seed.
//!
//! Each seed is one session through a fresh proxy: the handshake, `query-status`, `stop`
//! (→ `STOP`), `query-status`, `cont` (→ `RESUME`), `query-commands` (a 6.5 KB reply), an
//! unknown command (an error reply), then a pipelined batch (qmp-std's blocking client:
//! sent with `send` and collected with `wait` out of order; the tokio client: five `execute`
//! futures joined on one task), then (tokio only) three commands from three spawned tasks at
//! once, a last `query-status`, and the proxy shuts the connection down. qmp-std's
//! thread-safe [`SharedClient`] runs the tokio script's calls with three threads in place of
//! the three tasks, and no pipelined batch. Half of the seeds
//! of the qmp-std clients (drawn from the seed) turn on
//! `untagged_when_alone`: a command sent while no other in-band command is in flight goes
//! without an `id`, and its reply is matched by order; independently, half negotiate `oob`
//! (QEMU then reads ahead while a command runs). What it proves, for every seed:
//! - every call returns the right value, or a typed error (`Timeout`, or a disconnect:
//!   `Disconnected` / `Stalled` / `Io` / `Eof`) within its deadline plus [`MARGIN`];
//! - once a call has reported a disconnect, every later call does too, within [`FAST`];
//! - the events the client reported (queued, drained, and read to the end of the stream)
//!   are exactly the events the proxy fully delivered, in order (name and timestamp): none
//!   lost, none duplicated, none dropped because garbage came before them; an event caused
//!   by a command was there when that command's reply came; (tokio) a second subscriber,
//!   read only at the end, saw the same events, and both streams end with the disconnect
//!   error, once;
//! - (qmp-std: blocking, tokio, shared) every call is tied to its command as QEMU saw it: the
//!   proxy records the client's bytes, QEMU answers in-band commands one at a time in order
//!   (so its n-th reply answers the n-th command), and each reply QEMU tagged carries the
//!   id of that command (checked). Then: a successful call returned exactly the value of
//!   the reply QEMU sent to *its* command, and that reply was delivered; an expected error
//!   was QEMU's error to that command; no call whose reply was delivered is reported as
//!   disconnected. So a reply matched to the wrong command (by order or by id) fails the
//!   seed even where it would decode;
//! - (the same clients) ids on the wire: `qmp_capabilities` always carries id 1, every id
//!   sent is the command's own, and without `untagged_when_alone` every command carries
//!   one. With it: the first command after the handshake goes without; only a command sent
//!   alone (the first of a batch, or a sequential one) may; after a command sent without an
//!   id timed out, every later one carries its id (its late reply could otherwise be taken
//!   for another's); a command sent alone with no timeout before it goes without (for the
//!   blocking client, which frees a timed-out command's slot at once: exactly those sent
//!   alone before the first untagged timeout). The shared client's threads take their ids
//!   under its lock but write after it, so commands started together may reach the wire in
//!   another order and need not overlap: there ids are checked to be unique rather than in
//!   wire order, and only its sequential calls are held to the alone rules;
//! - a seed whose plan neither cut nor stalled for long runs every command successfully;
//! - nothing panics or hangs: each seed runs on a thread under a watchdog ([`WATCHDOG`]);
//! - afterwards a fresh direct connection to the same QEMU negotiates and runs
//!   `query-status` (and `cont`, so every seed starts with a running VM).
//!
//! Seeds run on [`WORKERS`] threads, each with its own QEMU (a monitor serves one client at
//! a time). `QMP_CHAOS_SEEDS=N` runs N seeds per client instead of the defaults,
//! `QMP_CHAOS_SEED=S` replays seed S alone (the seed and the plan are printed with every
//! failure; a seed's client follows from its range, see the `*_BASE` constants).

use std::collections::VecDeque;
use std::future::Future;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use qmp_e2e::chaos::{ChaosProxy, End, Knobs, Plan, Record, Rng};
use qmp_e2e::embedded::{HostClock, SocketLink};
use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::commands::{
    Cont, HumanMonitorCommand, QueryCommands, QueryStatus, RunState, StatusInfo, Stop,
};
use qmp_std::serde_json::{self, Value};
use qmp_std::tokio::EventStream;
use qmp_std::{Client, ClientBuilder, Error, Handle, SharedClient, Subscription};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every command's deadline (and the handshake's).
const DEADLINE: Duration = Duration::from_secs(1);
/// How late past its deadline a call may return (a busy 2-core machine, debug build).
const MARGIN: Duration = Duration::from_millis(300);
/// How soon a call must fail once the client knows the connection is gone.
const FAST: Duration = Duration::from_millis(250);
/// The read timeout some seeds give the qmp-std client (long stalls exceed it).
const READ_TIMEOUT: Duration = Duration::from_millis(800);
/// How long one seed may take, proxy and QEMU check included.
const WATCHDOG: Duration = Duration::from_secs(30);
/// Parallel sessions, each against its own QEMU.
const WORKERS: usize = 3;
/// Seeds per client unless `QMP_CHAOS_SEEDS` says otherwise.
const STD_SEEDS: u64 = 96;
const EMBEDDED_SEEDS: u64 = 32;
const TOKIO_SEEDS: u64 = 32;
const SHARED_SEEDS: u64 = 32;
/// Where each client's seeds start, so the clients do not replay each other's plans.
const STD_BASE: u64 = 0;
const EMBEDDED_BASE: u64 = 1_000_000;
const TOKIO_BASE: u64 = 2_000_000;
const SHARED_BASE: u64 = 3_000_000;
/// The tokio client's in-flight bound: more than the commands of a whole session, so no
/// call ever waits for a permit. Then every call that starts before the connection is gone
/// takes its id (and writes its command) on its first poll, and the calls' ids follow from
/// their order (see [`assign_ids`]). QEMU without `oob` reads one command at a time, and
/// with `oob` stops reading while its queue of 8 is full, so more in flight is harmless.
const TOKIO_IN_FLIGHT: usize = 24;

/// Roughly what a qmp-std or qmp-embedded session sends: 17 server messages, 700 client
/// bytes.
fn knobs() -> Knobs {
    Knobs {
        messages: 17,
        client_bytes: 700,
        deadline: DEADLINE,
    }
}

/// Roughly what a tokio session sends (three more commands): 20 server messages, 800
/// client bytes.
fn tokio_knobs() -> Knobs {
    Knobs {
        messages: 20,
        client_bytes: 800,
        deadline: DEADLINE,
    }
}

/// Whether a seed's client sends commands without ids when alone: half of the seeds.
fn untagged_for(seed: u64) -> bool {
    Rng::fork(seed, 98).chance(50)
}

/// Whether a seed's client negotiates `oob` (qmp-std's default, since QEMU offers it): half
/// of the seeds. With it QEMU reads ahead and queues up to 8 in-band commands while one
/// runs; without it, it reads one at a time. Either way it answers them in order.
fn oob_for(seed: u64) -> bool {
    Rng::fork(seed, 97).chance(50)
}

/// The seeds to run: `QMP_CHAOS_SEED` alone (if it is in this client's range of
/// `QMP_CHAOS_SEEDS`-or-so seeds from `base`, else none), or `QMP_CHAOS_SEEDS` (default `n`)
/// from `base`.
fn seeds(n: u64, base: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("QMP_CHAOS_SEED") {
        let seed: u64 = seed.trim().parse().expect("QMP_CHAOS_SEED is a u64");
        let mine = (base..base + 1_000_000).contains(&seed);
        return if mine { vec![seed] } else { Vec::new() };
    }
    let n = match std::env::var("QMP_CHAOS_SEEDS") {
        Ok(n) => n.trim().parse().expect("QMP_CHAOS_SEEDS is a number"),
        Err(_) => n,
    };
    (base..base + n).collect()
}

/// What one seed did, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    cut: bool,
    gone: bool,
    timeouts: usize,
    garbage: usize,
    events: usize,
    ok: usize,
    /// Commands sent without an id.
    untagged: usize,
    /// Successful calls whose value was compared with QEMU's reply to their command.
    matched: usize,
}

/// Runs `session` for every seed on [`WORKERS`] threads with a QEMU each; fails with every
/// failing seed's plan and message.
fn run_seeds(label: &str, seeds: Vec<u64>, knobs: Knobs, session: fn(u64, &Path) -> Stats) {
    let started = Instant::now();
    let total = seeds.len();
    let queue = Arc::new(Mutex::new(VecDeque::from(seeds)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS.min(total))
        .map(|_| {
            let (queue, results) = (Arc::clone(&queue), Arc::clone(&results));
            thread::spawn(move || worker(queue, results, knobs, session))
        })
        .collect();
    for w in workers {
        w.join().expect("a worker panicked outside a seed");
    }
    let results = results.lock().unwrap();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let stats: Vec<Stats> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    eprintln!(
        "chaos {label}: {} seeds in {:.1?}: {} cut, {} saw a disconnect, {} timeouts, {} garbage \
         injected, {} events compared, {} calls succeeded ({} checked against QEMU's reply), \
         {} commands sent without an id; {} failed",
        results.len(),
        started.elapsed(),
        stats.iter().filter(|s| s.cut).count(),
        stats.iter().filter(|s| s.gone).count(),
        stats.iter().map(|s| s.timeouts).sum::<usize>(),
        stats.iter().map(|s| s.garbage).sum::<usize>(),
        stats.iter().map(|s| s.events).sum::<usize>(),
        stats.iter().map(|s| s.ok).sum::<usize>(),
        stats.iter().map(|s| s.matched).sum::<usize>(),
        stats.iter().map(|s| s.untagged).sum::<usize>(),
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} of {total} {label} seeds failed:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(results.len(), total, "every seed ran");
}

type Results = Arc<Mutex<Vec<Result<Stats, String>>>>;

fn worker(
    queue: Arc<Mutex<VecDeque<u64>>>,
    results: Results,
    knobs: Knobs,
    session: fn(u64, &Path) -> Stats,
) {
    let qemu = match Qemu::start(Monitor::Unix) {
        Ok(q) => q,
        Err(e) => {
            results
                .lock()
                .unwrap()
                .push(Err(format!("start QEMU: {e}")));
            return;
        }
    };
    let Address::Unix(path) = qemu.address().clone() else {
        unreachable!("a Unix monitor")
    };
    loop {
        let Some(seed) = queue.lock().unwrap().pop_front() else {
            return;
        };
        let plan = Plan::generate(seed, &knobs);
        let (tx, rx) = mpsc::channel();
        let thread_path = path.clone();
        let thread = thread::Builder::new()
            .name(format!("chaos-seed-{seed}"))
            .spawn(move || {
                let stats = session(seed, &thread_path);
                verify_qemu(seed, &thread_path);
                let _ = tx.send(stats);
            })
            .expect("spawn a seed thread");
        let result = match rx.recv_timeout(WATCHDOG) {
            Ok(stats) => Ok(stats),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let message = match thread.join() {
                    Err(panic) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                    Ok(()) => "ended without a result".into(),
                };
                // Leave the VM running for the next seed, so one failure does not cascade.
                let reset = std::panic::catch_unwind(|| verify_qemu(seed, &path));
                let reset = if reset.is_ok() {
                    ""
                } else {
                    " (and resetting QEMU failed)"
                };
                Err(format!(
                    "FAILED {plan}{reset}\n  {message}\n  QEMU: {}",
                    qemu.output()
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The session is stuck; this worker's QEMU is in an unknown state: stop here.
                results
                    .lock()
                    .unwrap()
                    .push(Err(format!("HUNG for {WATCHDOG:?} (watchdog): {plan}")));
                return;
            }
        };
        results.lock().unwrap().push(result);
    }
}

/// A fresh direct connection to the QEMU negotiates and runs `query-status`; the VM is left
/// running. QEMU greets a new client only once it has dropped the previous one, so the
/// handshake itself waits for that (bounded); a refused connect is retried until a deadline.
fn verify_qemu(seed: u64, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        let connected = ClientBuilder::new()
            .connect_timeout(Some(Duration::from_secs(5)))
            .command_timeout(Some(Duration::from_secs(5)))
            .connect_unix(path);
        match connected {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                eprintln!("seed {seed}: reconnecting to QEMU after: {e}");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("seed {seed}: no new connection to QEMU after the session: {e}"),
        }
    };
    let status = client
        .execute(&QueryStatus)
        .unwrap_or_else(|e| panic!("seed {seed}: query-status after the session: {e}"));
    if !status.running {
        assert_eq!(status.status, RunState::Paused, "seed {seed}");
        client
            .execute(&Cont)
            .unwrap_or_else(|e| panic!("seed {seed}: cont after the session: {e}"));
        assert!(client.execute(&QueryStatus).unwrap().running, "seed {seed}");
    }
}

/// An event as compared: name, seconds, microseconds.
type Ev = (String, i64, i64);

/// An event as the checks compare it.
fn ev(e: qmp_std::Event) -> Ev {
    (e.name, e.timestamp.seconds, e.timestamp.microseconds)
}

/// The events among the messages the proxy delivered.
fn delivered_events(record: &Record) -> Vec<Ev> {
    record
        .delivered_messages()
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(m).ok()?;
            let name = v.get("event")?.as_str()?.to_owned();
            let ts = v.get("timestamp")?;
            Some((
                name,
                ts.get("seconds")?.as_i64()?,
                ts.get("microseconds")?.as_i64()?,
            ))
        })
        .collect()
}

/// How a call ended, as far as the checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// The error reply the call was meant to get.
    ExpectedError,
    Timeout,
    /// The reply broke the protocol (unframeable or malformed); like a timeout, the real
    /// reply may still come later.
    Broken,
    Gone,
}

/// Reads a reply's `return` value the way the call's typed output does (decoded, then
/// encoded again), so it compares with what the call returned.
type Normalize = fn(&Value) -> Result<Value, serde_json::Error>;

fn normalize<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, serde_json::Error> {
    serde_json::to_value(serde_json::from_value::<T>(value.clone())?)
}

/// One call, as the checks remember it.
struct Call {
    label: &'static str,
    /// The QMP command it ran (`None`: the handshake and the embedded client's calls, which
    /// the wire checks leave out).
    command: Option<&'static str>,
    /// Its command's id: the blocking client's handle says it; a tokio call gets it from its
    /// place on the wire ([`assign_ids`]).
    id: Option<u64>,
    /// Calls in flight together share a group; a sequential call has one of its own.
    group: usize,
    /// The error class it was meant to get.
    expected: Option<&'static str>,
    outcome: Outcome,
    /// What it returned (as JSON), and how to read QEMU's reply the same way.
    value: Option<(Value, Normalize)>,
}

/// A finished call of the tokio client, before the checks: its result as JSON.
struct Finished {
    label: &'static str,
    command: &'static str,
    expected: Option<&'static str>,
    sent: Instant,
    done: Instant,
    result: Result<Value, Error>,
    normalize: Normalize,
}

/// Times `call`; returns the finished call and its typed value.
async fn timed<T: Serialize + DeserializeOwned>(
    label: &'static str,
    command: &'static str,
    expected: Option<&'static str>,
    call: impl Future<Output = Result<T, Error>>,
) -> (Finished, Option<T>) {
    let sent = Instant::now();
    let result = call.await;
    let done = Instant::now();
    let (result, typed) = match result {
        Ok(t) => (
            Ok(serde_json::to_value(&t).expect("a command's output encodes")),
            Some(t),
        ),
        Err(e) => (Err(e), None),
    };
    let finished = Finished {
        label,
        command,
        expected,
        sent,
        done,
        result,
        normalize: normalize::<T>,
    };
    (finished, typed)
}

/// What the checks need to remember across calls of one session.
struct Observer {
    ctx: String,
    /// When the client first reported a disconnect, and what.
    gone: Option<(Instant, String)>,
    /// The client gave up on the connection itself (`Stalled`): it reads nothing more.
    abandoned: bool,
    calls: Vec<Call>,
    events: Vec<Ev>,
    /// The VM's run state, when known for sure.
    running: Option<bool>,
    stats: Stats,
    /// The last call group handed out.
    group: usize,
}

impl Observer {
    fn new(ctx: String) -> Self {
        Self {
            ctx,
            gone: None,
            abandoned: false,
            calls: Vec::new(),
            events: Vec::new(),
            running: Some(true),
            stats: Stats::default(),
            group: 0,
        }
    }

    /// A new call group (for a sequential call, or for calls in flight together).
    fn next_group(&mut self) -> usize {
        self.group += 1;
        self.group
    }

    /// Checks one call's outcome, ending now, with no command to tie it to on the wire.
    #[track_caller]
    fn note(
        &mut self,
        name: &'static str,
        id: Option<u64>,
        sent: Instant,
        asked: Instant,
        outcome: Outcome,
        shown: &dyn std::fmt::Debug,
    ) -> Outcome {
        let group = self.next_group();
        let call = Call {
            label: name,
            command: None,
            id,
            group,
            expected: None,
            outcome,
            value: None,
        };
        self.note_call(call, sent, asked, Instant::now(), shown)
    }

    /// Checks one call's outcome: typed, in time, and failing fast once disconnected.
    /// `sent` is when the command went out, `asked` when the caller started waiting, `done`
    /// when the call returned.
    #[track_caller]
    fn note_call(
        &mut self,
        call: Call,
        sent: Instant,
        asked: Instant,
        done: Instant,
        shown: &dyn std::fmt::Debug,
    ) -> Outcome {
        let ctx = &self.ctx;
        let name = call.label;
        let outcome = call.outcome;
        let took = done - sent;
        assert!(
            took <= DEADLINE + MARGIN,
            "{ctx}\n  {name} returned after {took:?} (deadline {DEADLINE:?}): {shown:?}"
        );
        if let Some((at, what)) = &self.gone {
            // From when it was asked, or when the client knew, whichever came later (calls
            // in flight together may have been asked before).
            let from = asked.max(*at);
            let late = done.saturating_duration_since(from);
            assert!(
                late <= FAST,
                "{ctx}\n  {name} took {late:?} after the client reported {what}: {shown:?}"
            );
            if sent > *at {
                assert_eq!(
                    outcome,
                    Outcome::Gone,
                    "{ctx}\n  {name} sent after the client reported {what}: {shown:?}"
                );
            }
        }
        match outcome {
            Outcome::Ok => self.stats.ok += 1,
            Outcome::Timeout => self.stats.timeouts += 1,
            Outcome::Gone if self.gone.is_none() => {
                self.gone = Some((done, format!("{shown:?}")));
                self.stats.gone = true;
            }
            _ => {}
        }
        self.calls.push(call);
        outcome
    }

    /// Checks the tokio calls of one group (in the order they returned), and returns them to
    /// the caller's typed checks.
    #[track_caller]
    fn note_group(&mut self, mut finished: Vec<Finished>, group: usize) {
        finished.sort_by_key(|f| f.done);
        for f in finished {
            let outcome = classify(&self.ctx, f.label, &f.result, f.expected);
            let call = Call {
                label: f.label,
                command: Some(f.command),
                id: None,
                group,
                expected: f.expected,
                outcome,
                value: f.result.as_ref().ok().map(|v| (v.clone(), f.normalize)),
            };
            self.note_call(call, f.sent, f.sent, f.done, &f.result);
        }
    }
}

// ---- qmp-std's blocking client -------------------------------------------------------------

/// Classifies a qmp-std result; any error but the expected class, a timeout or a disconnect
/// fails the seed.
#[track_caller]
fn classify<T: std::fmt::Debug>(
    ctx: &str,
    name: &str,
    result: &Result<T, Error>,
    expected_class: Option<&str>,
) -> Outcome {
    match result {
        Ok(_) if expected_class.is_some() => {
            panic!("{ctx}\n  {name} succeeded but should have failed: {result:?}")
        }
        Ok(_) => Outcome::Ok,
        Err(Error::Qmp(e)) if Some(e.class.as_str()) == expected_class => Outcome::ExpectedError,
        Err(Error::Timeout(_)) => Outcome::Timeout,
        Err(e) if e.is_protocol() => Outcome::Broken,
        Err(e) if e.is_disconnect() => Outcome::Gone,
        Err(e) => panic!("{ctx}\n  {name}: unexpected error {e:?}"),
    }
}

/// A command sent with `send`: its handle, what it ran, when, and the call group.
struct Sent<T> {
    handle: Handle<T>,
    command: &'static str,
    at: Instant,
    group: usize,
}

struct StdSession {
    client: Client<UnixStream>,
    obs: Observer,
    proxy: ChaosProxy,
}

impl StdSession {
    fn drain(&mut self) -> Vec<Ev> {
        let new: Vec<Ev> = self.client.events().map(ev).collect();
        self.obs.events.extend(new.iter().cloned());
        self.obs.stats.events += new.len();
        new
    }

    /// After a disconnect of the `Stalled` kind the client reads nothing more: cut the
    /// proxy at once, so that what it delivered is what the client read.
    fn after(&mut self, result_is_stalled: bool) {
        if result_is_stalled && !self.obs.abandoned {
            self.obs.abandoned = true;
            self.proxy.cut_now();
        }
    }

    fn sent<T>(
        &mut self,
        name: &'static str,
        command: &'static str,
        group: usize,
        sent: Result<Handle<T>, Error>,
    ) -> Option<Sent<T>> {
        let now = Instant::now();
        match sent {
            Ok(handle) => Some(Sent {
                handle,
                command,
                at: now,
                group,
            }),
            Err(e) => {
                let stalled = matches!(e, Error::Stalled);
                let ctx = self.obs.ctx.clone();
                let result: Result<(), Error> = Err(e);
                let outcome = classify(&ctx, name, &result, None);
                let call = Call {
                    label: name,
                    command: Some(command),
                    id: None,
                    group,
                    expected: None,
                    outcome,
                    value: None,
                };
                self.obs.note_call(call, now, now, Instant::now(), &result);
                self.after(stalled);
                None
            }
        }
    }

    fn wait<T: DeserializeOwned + Serialize + std::fmt::Debug>(
        &mut self,
        name: &'static str,
        sent: Option<Sent<T>>,
        expected_class: Option<&'static str>,
    ) -> Option<T> {
        let Sent {
            handle,
            command,
            at: sent,
            group,
        } = sent?;
        let id = handle.id();
        let asked = Instant::now();
        let result = self.client.wait(handle);
        let done = Instant::now();
        let ctx = self.obs.ctx.clone();
        let outcome = classify(&ctx, name, &result, expected_class);
        let call = Call {
            label: name,
            command: Some(command),
            id: Some(id),
            group,
            expected: expected_class,
            outcome,
            value: result.as_ref().ok().map(|t| {
                let json = serde_json::to_value(t).expect("a command's output encodes");
                (json, normalize::<T> as Normalize)
            }),
        };
        self.obs.note_call(call, sent, asked, done, &result);
        self.after(matches!(result, Err(Error::Stalled)));
        result.ok()
    }

    fn status(&mut self, name: &'static str) -> Option<StatusInfo> {
        let group = self.obs.next_group();
        let h = self.client.send(&QueryStatus);
        let h = self.sent(name, "query-status", group, h);
        let status = self.wait(name, h, None);
        if let Some(s) = &status {
            if let Some(running) = self.obs.running {
                assert_eq!(s.running, running, "{}\n  {name}: {s:?}", self.obs.ctx);
            }
            let want = if s.running {
                RunState::Running
            } else {
                RunState::Paused
            };
            assert_eq!(s.status, want, "{}\n  {name}: {s:?}", self.obs.ctx);
            self.obs.running = Some(s.running);
        }
        self.drain();
        status
    }

    /// `stop` or `cont`; when it succeeds from a known opposite state, its event must have
    /// come before its reply.
    fn change(&mut self, name: &'static str, to_running: bool) {
        let before = self.obs.running;
        let group = self.obs.next_group();
        let h = if to_running {
            self.client.send(&Cont)
        } else {
            self.client.send(&Stop)
        };
        let h = self.sent(name, name, group, h);
        let done = self.wait(name, h, None).is_some();
        let events = self.drain();
        check_change(&mut self.obs, name, to_running, before, done, &events);
    }
}

fn std_session(seed: u64, qemu: &Path) -> Stats {
    let plan = Plan::generate(seed, &knobs());
    let read_timeout = Rng::fork(seed, 99).chance(35).then_some(READ_TIMEOUT);
    let untagged = untagged_for(seed);
    let oob = oob_for(seed);
    let ctx = format!(
        "qmp-std {plan}, read timeout {read_timeout:?}, untagged when alone: {untagged}, oob: {oob}"
    );
    let proxy = start_proxy(&ctx, qemu, &plan);
    let stream = connect_proxy(&ctx, &proxy);
    let started = Instant::now();
    let connected = std_builder(untagged, oob)
        .read_timeout(read_timeout)
        .handshake(stream);
    let obs = observe_handshake(&ctx, started, &connected);
    let client = match connected {
        Ok(client) => client,
        Err(_) => {
            let wire = Wire {
                untagged,
                blocking: true,
                ordered: true,
            };
            return handshake_failed(obs, proxy, &plan, wire);
        }
    };
    let mut s = StdSession { client, obs, proxy };

    s.status("query-status #1");
    s.change("stop", false);
    s.status("query-status #2");
    s.change("cont", true);

    let group = s.obs.next_group();
    let h = s.client.send(&QueryCommands);
    let h = s.sent("query-commands", "query-commands", group, h);
    if let Some(commands) = s.wait("query-commands", h, None) {
        assert!(
            commands.len() > 100 && commands.iter().any(|c| c.name == "query-status"),
            "{ctx}\n  query-commands: {} commands",
            commands.len()
        );
    }
    s.drain();

    let group = s.obs.next_group();
    let h = s.client.send_raw("chaos-no-such-command", &Value::Null);
    let h = s.sent("chaos-no-such-command", "chaos-no-such-command", group, h);
    s.wait("chaos-no-such-command", h, Some("CommandNotFound"));
    s.drain();

    // Pipelined: all sent, then collected out of order.
    let before = s.obs.running;
    let group = s.obs.next_group();
    let h1 = s.client.send(&QueryStatus);
    let h1 = s.sent("pipelined query-status #1", "query-status", group, h1);
    let h2 = s.client.send(&Stop);
    let h2 = s.sent("pipelined stop", "stop", group, h2);
    let h3 = s.client.send(&QueryStatus);
    let h3 = s.sent("pipelined query-status #2", "query-status", group, h3);
    let h4 = s.client.send(&Cont);
    let h4 = s.sent("pipelined cont", "cont", group, h4);
    let h5 = s.client.send(&HumanMonitorCommand::new("info status"));
    let h5 = s.sent("pipelined info status", "human-monitor-command", group, h5);
    let r3 = s.wait("pipelined query-status #2", h3, None);
    let r1 = s.wait("pipelined query-status #1", h1, None);
    let r5 = s.wait("pipelined info status", h5, None);
    let r2 = s.wait("pipelined stop", h2, None);
    let r4 = s.wait("pipelined cont", h4, None);
    check_batch(&s.obs.ctx, before, &r1, &r2, &r3, &r4, &r5);
    s.obs.running = match (r4.is_some(), before, r2.is_some()) {
        (true, _, _) => Some(true),
        _ => None,
    };
    s.drain();
    s.status("query-status #3");

    // The end: the proxy shuts the connection down; the client reads to the end of it.
    let StdSession {
        mut client,
        mut obs,
        proxy,
    } = s;
    let records = proxy
        .finish(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{ctx}\n  stop the proxy: {e}"));
    assert_eq!(records.len(), 1, "{ctx}\n  one connection");
    let record = &records[0];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.next_event(Duration::from_secs(3)) {
            Ok(e) => {
                obs.events.push(ev(e));
                obs.stats.events += 1;
            }
            Err(e) if e.is_disconnect() => break,
            Err(e) => panic!("{ctx}\n  reading to the end after the proxy closed: {e:?}"),
        }
        assert!(Instant::now() < deadline, "{ctx}\n  the stream never ended");
    }
    let wire = Wire {
        untagged,
        blocking: true,
        ordered: true,
    };
    check_record(&mut obs, record, &ctx, &plan, Some(wire));
    obs.stats
}

/// A chaos proxy for `plan` in front of the QEMU at `qemu`.
fn start_proxy(ctx: &str, qemu: &Path, plan: &Plan) -> ChaosProxy {
    ChaosProxy::start(Address::Unix(qemu.to_path_buf()), plan.clone())
        .unwrap_or_else(|e| panic!("{ctx}\n  start the proxy: {e}"))
}

/// A connection to the proxy.
fn connect_proxy(ctx: &str, proxy: &ChaosProxy) -> UnixStream {
    proxy
        .connect()
        .unwrap_or_else(|e| panic!("{ctx}\n  connect to the proxy: {e}"))
}

/// The blocking std client's settings for a seed (also behind the shared client).
fn std_builder(untagged: bool, oob: bool) -> ClientBuilder {
    ClientBuilder::new()
        .connect_timeout(Some(DEADLINE))
        .command_timeout(Some(DEADLINE))
        .untagged_when_alone(untagged)
        .oob(oob)
}

/// A new observer of the session `ctx`, with the handshake (started at `started`) as its
/// first call.
#[track_caller]
fn observe_handshake<T: std::fmt::Debug>(
    ctx: &str,
    started: Instant,
    connected: &Result<T, Error>,
) -> Observer {
    let mut obs = Observer::new(ctx.to_owned());
    let outcome = classify(ctx, "handshake", connected, None);
    obs.note(
        "handshake",
        None,
        started,
        started,
        outcome,
        &connected.as_ref().map(|_| ()),
    );
    obs
}

/// The handshake failed: no client, no events (QEMU sends none before negotiation
/// completes); `qmp_capabilities`, if it got through, carried id 1.
fn handshake_failed(mut obs: Observer, proxy: ChaosProxy, plan: &Plan, wire: Wire) -> Stats {
    let ctx = obs.ctx.clone();
    let records = proxy
        .finish(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{ctx}\n  stop the proxy: {e}"));
    let record = &records[0];
    assert_eq!(
        delivered_events(record),
        [],
        "{ctx}\n  {}",
        record.summary()
    );
    check_record(&mut obs, record, &ctx, plan, Some(wire));
    obs.stats
}

/// After `stop` or `cont` (`done`: it succeeded; `events`: those drained right after it):
/// when it succeeded from a known opposite state, its event must have come before its
/// reply; the run state is then known, or unknown if it failed.
#[track_caller]
fn check_change(
    obs: &mut Observer,
    name: &str,
    to_running: bool,
    before: Option<bool>,
    done: bool,
    events: &[Ev],
) {
    if done {
        if before == Some(!to_running) {
            let want = if to_running { "RESUME" } else { "STOP" };
            assert!(
                events.iter().any(|e| e.0 == want),
                "{}\n  {name} succeeded but {want} was not received before its reply: {events:?}",
                obs.ctx
            );
        }
        obs.running = Some(to_running);
    } else {
        obs.running = None;
    }
}

/// The pipelined batch's values (`query-status`, `stop`, `query-status`, `cont`, `info
/// status`, sent in this order): each state as the commands before it left it.
fn check_batch(
    ctx: &str,
    before: Option<bool>,
    r1: &Option<StatusInfo>,
    r2: &Option<qmp_std::qmp_proto::commands::Empty>,
    r3: &Option<StatusInfo>,
    r4: &Option<qmp_std::qmp_proto::commands::Empty>,
    r5: &Option<String>,
) {
    if let (Some(r1), Some(before)) = (r1, before) {
        assert_eq!(
            r1.running, before,
            "{ctx}\n  pipelined query-status #1: {r1:?}"
        );
    }
    if let (Some(r3), Some(_)) = (r3, r2) {
        assert_eq!(r3.status, RunState::Paused, "{ctx}\n  after stop: {r3:?}");
    }
    if let (Some(r5), Some(_)) = (r5, r4) {
        assert_eq!(r5, "VM status: running\r\n", "{ctx}\n  after cont");
    }
}

// ---- the wire: commands as QEMU got them, and its replies ----------------------------------

/// What the wire checks need to know about the client.
#[derive(Debug, Clone, Copy)]
struct Wire {
    /// `untagged_when_alone` was on.
    untagged: bool,
    /// The blocking client: ids come from its handles, and a timed-out command's slot is
    /// freed at once (so which commands go without an id is exactly predictable).
    blocking: bool,
    /// Commands reach the wire in the order they took their ids. Not so for the
    /// [`SharedClient`], whose threads take ids under its lock and write after it: commands
    /// started at once may go out in another order (harmless: replies are matched by id, and
    /// at most one of them goes without an id).
    ordered: bool,
}

/// A command as it reached QEMU, and QEMU's reply to it if one came.
#[derive(Debug)]
struct Exchange {
    name: String,
    /// The `id` it carried, if any.
    id: Option<u64>,
    /// QEMU's reply (`{"return": …}` or `{"error": …}`), and whether the proxy delivered
    /// it whole.
    reply: Option<(Value, bool)>,
}

/// Pairs the commands that reached QEMU (parsed from the client's bytes, up to the first
/// incomplete one) with QEMU's replies, in order: QEMU answers in-band commands one at a
/// time, in the order it read them.
fn exchanges(record: &Record, ctx: &str) -> Vec<Exchange> {
    let mut commands: Vec<Exchange> = serde_json::Deserializer::from_slice(&record.sent)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .map(|command| {
            let name = command.get("execute").and_then(Value::as_str);
            let name = name.unwrap_or_else(|| panic!("{ctx}\n  not a command: {command}"));
            let id = command.get("id").map(|id| {
                id.as_u64()
                    .unwrap_or_else(|| panic!("{ctx}\n  an id that is no u64: {command}"))
            });
            Exchange {
                name: name.to_owned(),
                id,
                reply: None,
            }
        })
        .collect();
    let replies = record.received.iter().enumerate().filter_map(|(i, m)| {
        let v: Value = serde_json::from_slice(m).ok()?;
        (v.get("return").is_some() || v.get("error").is_some()).then_some((v, i < record.delivered))
    });
    for (n, reply) in replies.enumerate() {
        let Some(command) = commands.get_mut(n) else {
            panic!(
                "{ctx}\n  QEMU sent reply #{} ({}), but only {n} commands reached it",
                n + 1,
                reply.0
            );
        };
        command.reply = Some(reply);
    }
    commands
}

/// Gives each tokio or [`SharedClient`] call its command's place on the wire (as its `id`,
/// counting from 1): the calls of a group took consecutive ids (a group's calls all start
/// before any of them can finish; groups run one after another), none once the connection
/// was gone, so a group's commands are the next ones on the wire. A group with distinct
/// commands (tasks or threads, in any order) is matched by name; one with repeated commands
/// (futures joined with `biased;`, polled in order) by position, and the names must agree.
fn assign_ids(calls: &mut [Call], wire: &[Exchange], ctx: &str) {
    let mut next = 1; // the command after qmp_capabilities
    let mut at = 0;
    while at < calls.len() {
        let group = calls[at].group;
        let len = calls[at..].iter().take_while(|c| c.group == group).count();
        let members = &mut calls[at..at + len];
        at += len;
        if members.iter().all(|c| c.command.is_none()) {
            continue;
        }
        let window = next..(next + len).min(wire.len().max(next));
        next += len;
        let mut names: Vec<_> = members.iter().map(|c| c.command).collect();
        names.sort();
        names.dedup();
        let distinct = names.len() == len;
        for call in members.iter_mut() {
            let found = if distinct {
                window
                    .clone()
                    .find(|&k| Some(wire[k].name.as_str()) == call.command)
            } else {
                // The group was noted in the order its calls finished: place each by its
                // label.
                let k = window.start + batch_index(call.label);
                window.contains(&k).then_some(k)
            };
            if let Some(k) = found {
                assert_eq!(
                    Some(wire[k].name.as_str()),
                    call.command,
                    "{ctx}\n  {} is not the command at its place on the wire: {wire:?}",
                    call.label
                );
                call.id = Some(k as u64 + 1);
            }
        }
    }
}

/// A batch call's place in its batch, from its label.
fn batch_index(label: &str) -> usize {
    BATCH
        .iter()
        .position(|l| *l == label)
        .unwrap_or_else(|| panic!("{label} is not in the batch"))
}

/// The pipelined batch, in the order it is sent.
const BATCH: [&str; 5] = [
    "pipelined query-status #1",
    "pipelined stop",
    "pipelined query-status #2",
    "pipelined cont",
    "pipelined info status",
];

/// Ties every call to its command on the wire and checks values, replies and ids; see the
/// module documentation.
fn check_wire(obs: &mut Observer, record: &Record, ctx: &str, wire: Wire) {
    let summary = record.summary();
    let exchanges = exchanges(record, ctx);
    let shown = || {
        exchanges
            .iter()
            .map(|e| {
                format!(
                    "{}{}",
                    e.name,
                    e.id.map(|i| format!("#{i}")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !wire.blocking {
        assign_ids(&mut obs.calls, &exchanges, ctx);
    }
    // Ids on the wire are the commands' own (in wire order, or at least each once), and
    // tagged replies echo them.
    let mut seen = Vec::new();
    for (k, e) in exchanges.iter().enumerate() {
        let ordinal = k as u64 + 1;
        if let Some(id) = e.id {
            if wire.ordered {
                assert_eq!(
                    id,
                    ordinal,
                    "{ctx}\n  command #{ordinal} on the wire carries id {id}: {}",
                    shown()
                );
            }
            assert!(
                !seen.contains(&id),
                "{ctx}\n  id {id} went out twice: {}",
                shown()
            );
            seen.push(id);
        }
        if let Some((reply, _)) = &e.reply {
            assert_eq!(
                reply.get("id").and_then(Value::as_u64),
                e.id,
                "{ctx}\n  QEMU's reply #{ordinal} does not echo command #{ordinal}'s id: {reply}"
            );
        }
    }
    if let Some(first) = exchanges.first() {
        assert_eq!(
            (first.name.as_str(), first.id),
            ("qmp_capabilities", Some(1)),
            "{ctx}\n  the first command"
        );
    }
    obs.stats.untagged = exchanges.iter().filter(|e| e.id.is_none()).count();
    if !wire.untagged {
        assert_eq!(
            obs.stats.untagged,
            0,
            "{ctx}\n  commands without an id though untagged_when_alone is off: {}",
            shown()
        );
    } else if exchanges.len() > 1 {
        assert_eq!(
            exchanges[1].id,
            None,
            "{ctx}\n  the first command after the handshake carries an id: {}",
            shown()
        );
    }
    // Each call against its command and QEMU's reply.
    let mut first_of_group: Vec<(usize, u64)> = Vec::new();
    for call in &obs.calls {
        let (Some(command), Some(id)) = (call.command, call.id) else {
            continue;
        };
        match first_of_group.iter_mut().find(|(g, _)| *g == call.group) {
            Some((_, first)) => *first = (*first).min(id),
            None => first_of_group.push((call.group, id)),
        }
        let name = call.label;
        let k = usize::try_from(id - 1).expect("a small id");
        let exchange = exchanges.get(k);
        if let Some(e) = exchange {
            assert_eq!(
                e.name,
                command,
                "{ctx}\n  {name} (id {id}) is not the command with that place on the wire: {}",
                shown()
            );
        }
        let reply = exchange.and_then(|e| e.reply.as_ref());
        let delivered = reply.filter(|(_, delivered)| *delivered).map(|(r, _)| r);
        match call.outcome {
            Outcome::Ok => {
                let reply = delivered.unwrap_or_else(|| {
                    panic!(
                        "{ctx}\n  {name} (id {id}) succeeded without a delivered reply\n  {summary}"
                    )
                });
                let value = reply.get("return").unwrap_or_else(|| {
                    panic!("{ctx}\n  {name} (id {id}) succeeded, but QEMU answered {reply}")
                });
                let (got, normalize) = call.value.as_ref().expect("a successful call's value");
                let want = normalize(value).unwrap_or_else(|e| {
                    panic!("{ctx}\n  {name} (id {id}): QEMU's reply {value} does not decode: {e}")
                });
                assert_eq!(
                    got, &want,
                    "{ctx}\n  {name} (id {id}) returned another value than QEMU's reply to it"
                );
                obs.stats.matched += 1;
            }
            Outcome::ExpectedError => {
                let reply = delivered.unwrap_or_else(|| {
                    panic!("{ctx}\n  {name} (id {id}) failed as expected without a delivered reply\n  {summary}")
                });
                let class = reply.pointer("/error/class").and_then(Value::as_str);
                assert_eq!(
                    class, call.expected,
                    "{ctx}\n  {name} (id {id}): QEMU answered {reply}"
                );
                obs.stats.matched += 1;
            }
            Outcome::Gone if !obs.abandoned => assert!(
                delivered.is_none(),
                "{ctx}\n  {name} (id {id}) failed as disconnected, but its reply was delivered\n  \
                 {summary}"
            ),
            Outcome::Gone | Outcome::Timeout | Outcome::Broken => {}
        }
    }
    // Which commands went without an id.
    let timed_out = |id: u64| {
        obs.calls
            .iter()
            .any(|c| c.id == Some(id) && matches!(c.outcome, Outcome::Timeout | Outcome::Broken))
    };
    let first_untagged_timeout = exchanges
        .iter()
        .enumerate()
        .map(|(k, e)| (k as u64 + 1, e))
        .find(|(id, e)| e.id.is_none() && timed_out(*id))
        .map(|(id, _)| id);
    let first_timeout = obs
        .calls
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Timeout | Outcome::Broken))
        .filter_map(|c| c.id)
        .min();
    for call in &obs.calls {
        let (Some(_), Some(id)) = (call.command, call.id) else {
            continue;
        };
        let Some(e) = exchanges.get(usize::try_from(id - 1).expect("a small id")) else {
            continue;
        };
        let name = call.label;
        // Without wire order (see `Wire::ordered`), the command that went out first in its
        // group need not be the one that took the first id, and threads started together
        // need not overlap: only a sequential call is known to have been alone. (Each
        // call's value is still checked against QEMU's reply to its own command.)
        let alone = if wire.ordered {
            first_of_group
                .iter()
                .any(|&(g, first)| g == call.group && first == id)
        } else {
            obs.calls.iter().filter(|c| c.group == call.group).count() == 1
        };
        let after_untagged_timeout = first_untagged_timeout.is_some_and(|t| id > t);
        if e.id.is_none() {
            // Threads started together need not overlap: each may have been alone.
            assert!(
                alone || !wire.ordered,
                "{ctx}\n  {name} (id {id}) went without an id while another command was in \
                 flight: {}",
                shown()
            );
            assert!(
                !after_untagged_timeout,
                "{ctx}\n  {name} (id {id}) went without an id after a command without one \
                 timed out: {}",
                shown()
            );
        } else if wire.untagged && alone {
            let excused = if wire.blocking {
                after_untagged_timeout
            } else {
                first_timeout.is_some_and(|t| id > t)
            };
            assert!(
                excused,
                "{ctx}\n  {name} (id {id}) was sent alone with untagged_when_alone, but carried \
                 an id: {}",
                shown()
            );
        }
    }
}

/// The checks against the proxy's record, shared by the clients (`wire`: the qmp-std
/// clients, whose calls are tied to the wire).
fn check_record(obs: &mut Observer, record: &Record, ctx: &str, plan: &Plan, wire: Option<Wire>) {
    obs.stats.cut = matches!(record.end, Some(End::PlannedCut(_)));
    obs.stats.garbage = record.garbage.len();
    let summary = record.summary();
    let garbage: Vec<_> = record
        .garbage
        .iter()
        .map(|g| (g.after, &g.garbage))
        .collect();
    let delivered = delivered_events(record);
    assert_eq!(
        obs.events, delivered,
        "{ctx}\n  the client's events (left) differ from those the proxy delivered (right)\n  \
         {summary}\n  garbage {garbage:?}"
    );
    if let Some(wire) = wire {
        check_wire(obs, record, ctx, wire);
    }
    // No cut, no long stall, no give-up: everything must have worked.
    let cut = matches!(record.end, Some(End::PlannedCut(_)));
    let long_stall = record.stalls.iter().any(|(_, d)| *d >= DEADLINE / 2);
    if !cut && !long_stall && !plan.has_stall_of(DEADLINE / 2) {
        for call in &obs.calls {
            assert!(
                matches!(call.outcome, Outcome::Ok | Outcome::ExpectedError),
                "{ctx}\n  {} failed ({:?}) though the plan neither cut nor stalled for long\n  \
                 {summary}\n  garbage {garbage:?}",
                call.label,
                call.outcome
            );
        }
    }
}

#[test]
fn std_client_survives_chaos() {
    run_seeds("qmp-std", seeds(STD_SEEDS, STD_BASE), knobs(), std_session);
}

// ---- qmp-std's tokio client ----------------------------------------------------------------

/// The items an event stream has ready now, without waiting: events, then (once) the error
/// that ended it, then the end.
fn ready_items(stream: &mut EventStream) -> Vec<Option<Result<Ev, Error>>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut items = Vec::new();
    loop {
        let next = pin!(stream.next()).poll(&mut cx);
        let Poll::Ready(item) = next else {
            return items;
        };
        let end = item.is_none();
        items.push(item.map(|r| r.map(ev)));
        if end {
            return items;
        }
    }
}

/// One event subscriber's view: the events, and how its stream ended.
#[derive(Debug, Default)]
struct Subscriber {
    events: Vec<Ev>,
    /// The error the stream ended with (it must come once, then the end).
    error: Option<String>,
    ended: bool,
}

impl Subscriber {
    /// [`take`](Self::take)s `items` as the session's own events (the ones compared with
    /// the proxy's record); returns the new ones.
    #[track_caller]
    fn absorb(&mut self, obs: &mut Observer, items: Vec<Option<Result<Ev, Error>>>) -> Vec<Ev> {
        let new = self.take(&obs.ctx, items);
        obs.events.extend(new.iter().cloned());
        obs.stats.events += new.len();
        new
    }

    /// Takes `items`; returns the new events. A lagging subscriber, an error that is no
    /// disconnect, a second error or anything after the end fails the seed.
    #[track_caller]
    fn take(&mut self, ctx: &str, items: Vec<Option<Result<Ev, Error>>>) -> Vec<Ev> {
        let mut new = Vec::new();
        for item in items {
            assert!(
                !self.ended,
                "{ctx}\n  an item after the end of the event stream: {item:?}"
            );
            assert!(
                self.error.is_none() || item.is_none(),
                "{ctx}\n  the event stream went on after its error: {item:?}"
            );
            match item {
                Some(Ok(e)) => new.push(e),
                Some(Err(e)) if e.is_disconnect() => self.error = Some(format!("{e:?}")),
                Some(Err(e)) => panic!("{ctx}\n  the event stream failed: {e:?}"),
                None => self.ended = true,
            }
        }
        self.events.extend(new.iter().cloned());
        new
    }

    /// Reads the stream to its end (bounded), after the connection was shut down.
    async fn read_to_end(&mut self, ctx: &str, stream: &mut EventStream) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.ended {
            let item = tokio::time::timeout(Duration::from_secs(3), stream.next())
                .await
                .unwrap_or_else(|_| panic!("{ctx}\n  the event stream did not end"));
            let item = item.map(|r| r.map(ev));
            self.take(ctx, vec![item]);
            self.check_in_time(ctx, deadline);
        }
        self.check_ended_by_error(ctx);
    }

    /// Inside [`read_to_end`](Self::read_to_end)'s loop: still before `deadline`.
    #[track_caller]
    fn check_in_time(&self, ctx: &str, deadline: Instant) {
        assert!(
            Instant::now() < deadline,
            "{ctx}\n  the event stream never ended"
        );
    }

    /// After [`read_to_end`](Self::read_to_end): the stream ended with the disconnect error.
    #[track_caller]
    fn check_ended_by_error(&self, ctx: &str) {
        assert!(
            self.error.is_some(),
            "{ctx}\n  the event stream ended without the disconnect error"
        );
    }
}

/// The three calls made at once (from tasks or threads): `query-status`, `info status`
/// and an unknown command, as one group; the values against the known run state.
#[track_caller]
fn check_three(
    obs: &mut Observer,
    (fs, rs): (Finished, Option<StatusInfo>),
    (fh, rh): (Finished, Option<String>),
    (fu, _): (Finished, Option<Value>),
) {
    let (status, info) = (fs.label, fh.label);
    let group = obs.next_group();
    obs.note_group(vec![fs, fh, fu], group);
    if let Some(rs) = &rs {
        check_status(obs, status, rs);
    }
    if let (Some(rh), Some(true)) = (&rh, obs.running) {
        assert_eq!(rh, "VM status: running\r\n", "{}\n  {info}", obs.ctx);
    }
}

/// The end of a session with two subscribers, after both read to the end: the first one's
/// events from `before` on join the session's; the second (read only now) saw the same
/// events; a command started at `after.0` after the end failed at once as disconnected; the
/// client says it is closed.
#[track_caller]
fn check_the_end(
    obs: &mut Observer,
    first: &Subscriber,
    before: usize,
    second: &Subscriber,
    after: (Instant, Result<StatusInfo, Error>),
    closed: bool,
) {
    let ctx = &obs.ctx;
    assert_eq!(
        second.events, first.events,
        "{ctx}\n  the second subscriber (left) saw other events than the first (right)"
    );
    let (t, after) = after;
    assert!(
        matches!(after, Err(ref e) if e.is_disconnect()) && t.elapsed() <= FAST,
        "{ctx}\n  a command after the end: {after:?} after {:?}",
        t.elapsed()
    );
    assert!(closed, "{ctx}\n  the client is not closed");
    let rest = &first.events[before..];
    obs.events.extend(rest.iter().cloned());
    obs.stats.events += rest.len();
}

struct TokioSession {
    client: qmp_std::tokio::Client,
    events: EventStream,
    subscriber: Subscriber,
    obs: Observer,
}

impl TokioSession {
    /// Takes the events the first subscriber has ready (the second reads at the end).
    fn drain(&mut self) -> Vec<Ev> {
        if self.subscriber.ended {
            return Vec::new();
        }
        let items = ready_items(&mut self.events);
        self.subscriber.absorb(&mut self.obs, items)
    }

    /// Runs one call alone (a group of its own) and checks it.
    async fn one<T: Serialize + DeserializeOwned>(
        &mut self,
        label: &'static str,
        command: &'static str,
        expected: Option<&'static str>,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Option<T> {
        let (finished, typed) = timed(label, command, expected, call).await;
        let group = self.obs.next_group();
        self.obs.note_group(vec![finished], group);
        typed
    }

    async fn status(&mut self, name: &'static str) -> Option<StatusInfo> {
        let qmp = self.client.clone();
        let status = self
            .one(name, "query-status", None, qmp.execute(&QueryStatus))
            .await;
        if let Some(s) = &status {
            check_status(&mut self.obs, name, s);
        }
        self.drain();
        status
    }

    /// `stop` or `cont`, as [`StdSession::change`].
    async fn change(&mut self, name: &'static str, to_running: bool) {
        let before = self.obs.running;
        let qmp = self.client.clone();
        let done = if to_running {
            self.one(name, name, None, qmp.execute(&Cont)).await
        } else {
            self.one(name, name, None, qmp.execute(&Stop)).await
        }
        .is_some();
        let events = self.drain();
        check_change(&mut self.obs, name, to_running, before, done, &events);
    }
}

/// A `query-status` result against the known run state; it becomes the known state.
#[track_caller]
fn check_status(obs: &mut Observer, name: &str, s: &StatusInfo) {
    if let Some(running) = obs.running {
        assert_eq!(s.running, running, "{}\n  {name}: {s:?}", obs.ctx);
    }
    let want = if s.running {
        RunState::Running
    } else {
        RunState::Paused
    };
    assert_eq!(s.status, want, "{}\n  {name}: {s:?}", obs.ctx);
    obs.running = Some(s.running);
}

fn tokio_session(seed: u64, qemu: &Path) -> Stats {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(tokio_script(seed, qemu))
}

async fn tokio_script(seed: u64, qemu: &Path) -> Stats {
    let plan = Plan::generate(seed, &tokio_knobs());
    let untagged = untagged_for(seed);
    let oob = oob_for(seed);
    let ctx = format!("qmp-std tokio {plan}, untagged when alone: {untagged}, oob: {oob}");
    let proxy = start_proxy(&ctx, qemu, &plan);
    let started = Instant::now();
    let connected = qmp_std::tokio::ClientBuilder::new()
        .connect_timeout(Some(DEADLINE))
        .command_timeout(Some(DEADLINE))
        .max_in_flight(TOKIO_IN_FLIGHT)
        .untagged_when_alone(untagged)
        .oob(oob)
        .connect_unix(proxy.path())
        .await;
    let obs = observe_handshake(&ctx, started, &connected);
    let client = match connected {
        Ok(client) => client,
        Err(_) => {
            let wire = Wire {
                untagged,
                blocking: false,
                ordered: true,
            };
            return handshake_failed(obs, proxy, &plan, wire);
        }
    };
    // Two subscribers: the first drained as the session goes, the second only at the end.
    let events = client.subscribe();
    let mut late = client.subscribe();
    let mut s = TokioSession {
        client,
        events,
        subscriber: Subscriber::default(),
        obs,
    };
    let qmp = s.client.clone();

    s.status("query-status #1").await;
    s.change("stop", false).await;
    s.status("query-status #2").await;
    s.change("cont", true).await;

    let commands = s
        .one(
            "query-commands",
            "query-commands",
            None,
            qmp.execute(&QueryCommands),
        )
        .await;
    if let Some(commands) = commands {
        assert!(
            commands.len() > 100 && commands.iter().any(|c| c.name == "query-status"),
            "{ctx}\n  query-commands: {} commands",
            commands.len()
        );
    }
    s.drain();

    // A deadline of its own (the same as the default).
    let unknown = qmp.execute_raw_timeout("chaos-no-such-command", &Value::Null, Some(DEADLINE));
    s.one(
        "chaos-no-such-command",
        "chaos-no-such-command",
        Some("CommandNotFound"),
        unknown,
    )
    .await;
    s.drain();

    // Pipelined: five futures on this task, polled in this order (so sent in this order).
    let before = s.obs.running;
    let info = HumanMonitorCommand::new("info status");
    let (f1, f2, f3, f4, f5) = tokio::join!(
        biased;
        timed(BATCH[0], "query-status", None, qmp.execute(&QueryStatus)),
        timed(BATCH[1], "stop", None, qmp.execute(&Stop)),
        timed(BATCH[2], "query-status", None, qmp.execute(&QueryStatus)),
        timed(BATCH[3], "cont", None, qmp.execute(&Cont)),
        timed(BATCH[4], "human-monitor-command", None, qmp.execute(&info)),
    );
    let group = s.obs.next_group();
    let ((f1, r1), (f2, r2), (f3, r3), (f4, r4), (f5, r5)) = (f1, f2, f3, f4, f5);
    s.obs.note_group(vec![f1, f2, f3, f4, f5], group);
    check_batch(&ctx, before, &r1, &r2, &r3, &r4, &r5);
    s.obs.running = match (r4.is_some(), before, r2.is_some()) {
        (true, _, _) => Some(true),
        _ => None,
    };
    s.drain();

    // Three tasks at once, each with a command of its own.
    let status = {
        let qmp = qmp.clone();
        tokio::spawn(async move {
            timed(
                "task query-status",
                "query-status",
                None,
                qmp.execute(&QueryStatus),
            )
            .await
        })
    };
    let hmp = {
        let qmp = qmp.clone();
        tokio::spawn(async move {
            let info = HumanMonitorCommand::new("info status");
            timed(
                "task info status",
                "human-monitor-command",
                None,
                qmp.execute(&info),
            )
            .await
        })
    };
    let unknown = {
        let qmp = qmp.clone();
        tokio::spawn(async move {
            let call = qmp.execute_raw("chaos-no-such-task-command", &Value::Null);
            timed(
                "task unknown command",
                "chaos-no-such-task-command",
                Some("CommandNotFound"),
                call,
            )
            .await
        })
    };
    let (status, hmp, unknown) = tokio::join!(status, hmp, unknown);
    check_three(
        &mut s.obs,
        status.expect("the query-status task"),
        hmp.expect("the info status task"),
        unknown.expect("the unknown command task"),
    );
    s.drain();
    s.status("query-status #3").await;

    // The end: the proxy shuts the connection down; both subscribers read to the end.
    let TokioSession {
        client,
        mut events,
        mut subscriber,
        mut obs,
    } = s;
    let records = proxy
        .finish(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{ctx}\n  stop the proxy: {e}"));
    assert_eq!(records.len(), 1, "{ctx}\n  one connection");
    let record = &records[0];
    let before = subscriber.events.len();
    subscriber.read_to_end(&ctx, &mut events).await;
    let mut second = Subscriber::default();
    second.read_to_end(&ctx, &mut late).await;
    let t = Instant::now();
    let after = qmp.execute(&QueryStatus).await;
    check_the_end(
        &mut obs,
        &subscriber,
        before,
        &second,
        (t, after),
        client.is_closed(),
    );
    let wire = Wire {
        untagged,
        blocking: false,
        ordered: true,
    };
    check_record(&mut obs, record, &ctx, &plan, Some(wire));
    obs.stats
}

#[test]
fn tokio_client_survives_chaos() {
    run_seeds(
        "qmp-std tokio",
        seeds(TOKIO_SEEDS, TOKIO_BASE),
        tokio_knobs(),
        tokio_session,
    );
}

// ---- qmp-std's thread-safe blocking handle ------------------------------------------------

/// Roughly what a [`SharedClient`] session sends: 14 server messages, 450 client bytes.
fn shared_knobs() -> Knobs {
    Knobs {
        messages: 14,
        client_bytes: 450,
        deadline: DEADLINE,
    }
}

/// Runs a call that never waits for anything but its own thread (a [`SharedClient`] call)
/// through [`timed`].
fn timed_now<T: Serialize + DeserializeOwned>(
    label: &'static str,
    command: &'static str,
    expected: Option<&'static str>,
    call: impl FnOnce() -> Result<T, Error>,
) -> (Finished, Option<T>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut future = pin!(timed(label, command, expected, async move { call() }));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(done) => done,
        Poll::Pending => unreachable!("a blocking call is ready when it returns"),
    }
}

/// The items a subscription has ready now: events, then (once) the error that ended it and
/// the end.
fn ready_subscription(subscription: &Subscription) -> Vec<Option<Result<Ev, Error>>> {
    let mut items = Vec::new();
    while let Some(item) = subscription.try_recv() {
        let end = item.as_ref().is_err_and(Error::is_disconnect);
        items.push(Some(item.map(ev)));
        if end {
            items.push(None);
            break;
        }
    }
    items
}

impl Subscriber {
    /// [`Subscriber::read_to_end`] for a [`Subscription`].
    fn read_subscription_to_end(&mut self, ctx: &str, subscription: &Subscription) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.ended {
            let item = match subscription.recv_timeout(Duration::from_secs(3)) {
                Err(Error::Timeout(_)) => panic!("{ctx}\n  the subscription did not end"),
                item => item,
            };
            let end = item.as_ref().is_err_and(Error::is_disconnect);
            let item = item.map(ev);
            self.take(ctx, vec![Some(item)]);
            if end {
                self.take(ctx, vec![None]);
            }
            self.check_in_time(ctx, deadline);
        }
        self.check_ended_by_error(ctx);
    }
}

struct SharedSession {
    client: SharedClient,
    events: Subscription,
    subscriber: Subscriber,
    obs: Observer,
}

impl SharedSession {
    /// Takes the events the first subscription has ready (the second reads at the end).
    fn drain(&mut self) -> Vec<Ev> {
        if self.subscriber.ended {
            return Vec::new();
        }
        let items = ready_subscription(&self.events);
        self.subscriber.absorb(&mut self.obs, items)
    }

    /// Runs one call alone (a group of its own) and checks it.
    fn one<T: Serialize + DeserializeOwned>(
        &mut self,
        label: &'static str,
        command: &'static str,
        expected: Option<&'static str>,
        call: impl FnOnce(&SharedClient) -> Result<T, Error>,
    ) -> Option<T> {
        let qmp = self.client.clone();
        let (finished, typed) = timed_now(label, command, expected, || call(&qmp));
        let group = self.obs.next_group();
        self.obs.note_group(vec![finished], group);
        typed
    }

    fn status(&mut self, name: &'static str) -> Option<StatusInfo> {
        let status = self.one(name, "query-status", None, |q| q.execute(&QueryStatus));
        if let Some(s) = &status {
            check_status(&mut self.obs, name, s);
        }
        self.drain();
        status
    }

    /// `stop` or `cont`, as [`StdSession::change`].
    fn change(&mut self, name: &'static str, to_running: bool) {
        let before = self.obs.running;
        let done = if to_running {
            self.one(name, name, None, |q| q.execute(&Cont))
        } else {
            self.one(name, name, None, |q| q.execute(&Stop))
        }
        .is_some();
        let events = self.drain();
        check_change(&mut self.obs, name, to_running, before, done, &events);
    }
}

/// The tokio script's session on a [`SharedClient`]: the same sequential calls, then three
/// threads with a command each at once (its reader thread routes the replies), two
/// subscriptions, and the end.
fn shared_session(seed: u64, qemu: &Path) -> Stats {
    let plan = Plan::generate(seed, &shared_knobs());
    let untagged = untagged_for(seed);
    let oob = oob_for(seed);
    let ctx = format!("qmp-std shared {plan}, untagged when alone: {untagged}, oob: {oob}");
    let proxy = start_proxy(&ctx, qemu, &plan);
    let stream = connect_proxy(&ctx, &proxy);
    let started = Instant::now();
    let connected = std_builder(untagged, oob)
        .handshake(stream)
        .and_then(Client::into_shared);
    let obs = observe_handshake(&ctx, started, &connected);
    let wire = Wire {
        untagged,
        blocking: false,
        ordered: false,
    };
    let client = match connected {
        Ok(client) => client,
        Err(_) => return handshake_failed(obs, proxy, &plan, wire),
    };
    // Two subscriptions: the first drained as the session goes, the second only at the end.
    let events = client.subscribe();
    let late = client.subscribe();
    let mut s = SharedSession {
        client,
        events,
        subscriber: Subscriber::default(),
        obs,
    };

    s.status("query-status #1");
    s.change("stop", false);
    s.status("query-status #2");
    s.change("cont", true);
    let commands = s.one("query-commands", "query-commands", None, |q| {
        q.execute(&QueryCommands)
    });
    if let Some(commands) = commands {
        assert!(
            commands.len() > 100 && commands.iter().any(|c| c.name == "query-status"),
            "{ctx}\n  query-commands: {} commands",
            commands.len()
        );
    }
    s.drain();
    s.one(
        "chaos-no-such-command",
        "chaos-no-such-command",
        Some("CommandNotFound"),
        |q| q.execute_raw_timeout("chaos-no-such-command", &Value::Null, Some(DEADLINE)),
    );
    s.drain();

    // Three threads at once, each with a command of its own.
    let (status, hmp, unknown) = thread::scope(|scope| {
        let qmp = &s.client;
        let status = scope.spawn(move || {
            timed_now("thread query-status", "query-status", None, || {
                qmp.execute(&QueryStatus)
            })
        });
        let hmp = scope.spawn(move || {
            let info = HumanMonitorCommand::new("info status");
            timed_now("thread info status", "human-monitor-command", None, || {
                qmp.execute(&info)
            })
        });
        let unknown = scope.spawn(move || {
            timed_now(
                "thread unknown command",
                "chaos-no-such-thread-command",
                Some("CommandNotFound"),
                || qmp.execute_raw("chaos-no-such-thread-command", &Value::Null),
            )
        });
        (status.join(), hmp.join(), unknown.join())
    });
    check_three(
        &mut s.obs,
        status.expect("the query-status thread"),
        hmp.expect("the info status thread"),
        unknown.expect("the unknown command thread"),
    );
    s.drain();
    s.status("query-status #3");

    // The end: the proxy shuts the connection down; both subscriptions read to the end.
    let SharedSession {
        client,
        events,
        mut subscriber,
        mut obs,
    } = s;
    let records = proxy
        .finish(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{ctx}\n  stop the proxy: {e}"));
    assert_eq!(records.len(), 1, "{ctx}\n  one connection");
    let record = &records[0];
    let before = subscriber.events.len();
    subscriber.read_subscription_to_end(&ctx, &events);
    let mut second = Subscriber::default();
    second.read_subscription_to_end(&ctx, &late);
    let t = Instant::now();
    let after = client.execute(&QueryStatus);
    check_the_end(
        &mut obs,
        &subscriber,
        before,
        &second,
        (t, after),
        client.is_closed(),
    );
    check_record(&mut obs, record, &ctx, &plan, Some(wire));
    obs.stats
}

#[test]
fn shared_client_survives_chaos() {
    run_seeds(
        "qmp-std shared",
        seeds(SHARED_SEEDS, SHARED_BASE),
        shared_knobs(),
        shared_session,
    );
}

// ---- qmp-embedded's blocking client ------------------------------------------------------

/// `query-status`'s return value.
#[derive(Debug, serde::Deserialize)]
struct Status<'a> {
    status: &'a str,
    running: bool,
}

/// 8 KiB receive buffer (`query-commands` is 6.5 KB), 1 KiB of events, 4 slots.
type Embedded = qmp_embedded::Client<SocketLink, HostClock, 8192, 256, 1024, 4>;

type EmbeddedError = qmp_embedded::Error<embedded_io::ErrorKind>;

#[track_caller]
fn classify_embedded<T: std::fmt::Debug>(
    ctx: &str,
    name: &str,
    result: &Result<T, EmbeddedError>,
    expected: Option<qmp_embedded::ErrorClass>,
) -> Outcome {
    use qmp_embedded::Error as E;
    match result {
        Ok(_) if expected.is_some() => {
            panic!("{ctx}\n  {name} succeeded but should have failed: {result:?}")
        }
        Ok(_) => Outcome::Ok,
        Err(E::Qmp(e)) if Some(e.class()) == expected => Outcome::ExpectedError,
        Err(E::Timeout(_)) => Outcome::Timeout,
        Err(e) if e.is_protocol() => Outcome::Broken,
        Err(E::Eof | E::Disconnected | E::Io(_)) => Outcome::Gone,
        Err(e) => panic!("{ctx}\n  {name}: unexpected error {e:?}"),
    }
}

fn embedded_drain(qmp: &mut Embedded, obs: &mut Observer) -> Vec<Ev> {
    let mut new = Vec::new();
    loop {
        match qmp.next_event(Duration::ZERO) {
            Ok(e) => new.push((
                e.name.to_string(),
                e.timestamp.seconds,
                e.timestamp.microseconds,
            )),
            Err(lost @ qmp_embedded::Error::Lagged { .. }) => {
                panic!("{}\n  events lost: {lost}", obs.ctx)
            }
            Err(_) => break,
        }
    }
    obs.stats.events += new.len();
    obs.events.extend(new.iter().cloned());
    new
}

fn embedded_status(qmp: &mut Embedded, obs: &mut Observer, name: &'static str) {
    let t = Instant::now();
    let result = qmp
        .execute::<Status<'_>, _>("query-status", &())
        .map(|s| (s.status.to_owned(), s.running));
    let outcome = classify_embedded(&obs.ctx, name, &result, None);
    obs.note(name, None, t, t, outcome, &result);
    if let Ok((status, running)) = &result {
        if let Some(known) = obs.running {
            assert_eq!(*running, known, "{}\n  {name}: {status}", obs.ctx);
        }
        let want = if *running { "running" } else { "paused" };
        assert_eq!(status, want, "{}\n  {name}", obs.ctx);
        obs.running = Some(*running);
    }
    embedded_drain(qmp, obs);
}

fn embedded_change(qmp: &mut Embedded, obs: &mut Observer, name: &'static str, to_running: bool) {
    let before = obs.running;
    let t = Instant::now();
    let result = qmp.execute_raw(name, &()).map(|v| v.as_json().to_owned());
    let outcome = classify_embedded(&obs.ctx, name, &result, None);
    obs.note(name, None, t, t, outcome, &result);
    let events = embedded_drain(qmp, obs);
    check_change(obs, name, to_running, before, result.is_ok(), &events);
}

fn embedded_session(seed: u64, qemu: &Path) -> Stats {
    let plan = Plan::generate(seed, &knobs());
    let ctx = format!("qmp-embedded {plan}");
    let proxy = start_proxy(&ctx, qemu, &plan);
    let stream = connect_proxy(&ctx, &proxy);
    let config = qmp_embedded::Config::new().timeout(Some(DEADLINE));
    let mut qmp: Embedded = qmp_embedded::Client::with_config(
        SocketLink::new(stream),
        HostClock(Instant::now()),
        config,
    );
    let mut obs = Observer::new(ctx.clone());

    // The greeting and the negotiation each have their own deadline.
    let t = Instant::now();
    let greeting = qmp.wait_greeting();
    let outcome = classify_embedded(&ctx, "greeting", &greeting, None);
    obs.note("greeting", None, t, t, outcome, &greeting);
    let negotiated = greeting.is_ok() && {
        let t = Instant::now();
        let negotiated = qmp.negotiate(false);
        let outcome = classify_embedded(&ctx, "qmp_capabilities", &negotiated, None);
        obs.note("qmp_capabilities", None, t, t, outcome, &negotiated);
        negotiated.is_ok()
    };

    if negotiated {
        embedded_status(&mut qmp, &mut obs, "query-status #1");
        embedded_change(&mut qmp, &mut obs, "stop", false);
        embedded_status(&mut qmp, &mut obs, "query-status #2");
        embedded_change(&mut qmp, &mut obs, "cont", true);

        let t = Instant::now();
        let result = qmp
            .execute_raw("query-commands", &())
            .map(|v| v.as_json().len() > 4000 && v.as_json().contains(r#""query-status""#));
        let outcome = classify_embedded(&ctx, "query-commands", &result, None);
        obs.note("query-commands", None, t, t, outcome, &result);
        if let Ok(fine) = result {
            assert!(fine, "{ctx}\n  query-commands: a short or wrong list");
        }
        embedded_drain(&mut qmp, &mut obs);

        let t = Instant::now();
        let result = qmp
            .execute_raw("chaos-no-such-command", &())
            .map(|v| v.as_json().to_owned());
        let class = Some(qmp_embedded::ErrorClass::CommandNotFound);
        let outcome = classify_embedded(&ctx, "chaos-no-such-command", &result, class);
        obs.note("chaos-no-such-command", None, t, t, outcome, &result);
        embedded_drain(&mut qmp, &mut obs);

        embedded_change(&mut qmp, &mut obs, "stop", false);
        embedded_change(&mut qmp, &mut obs, "cont", true);
        embedded_status(&mut qmp, &mut obs, "query-status #3");
    }

    let records = proxy
        .finish(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{ctx}\n  stop the proxy: {e}"));
    assert_eq!(records.len(), 1, "{ctx}\n  one connection");
    let record = &records[0];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        use qmp_embedded::Error as E;
        match qmp.next_event(Duration::from_secs(3)) {
            Ok(e) => {
                let event = (
                    e.name.to_string(),
                    e.timestamp.seconds,
                    e.timestamp.microseconds,
                );
                obs.stats.events += 1;
                obs.events.push(event);
                embedded_drain(&mut qmp, &mut obs);
            }
            Err(E::Timeout(_)) => {
                panic!("{ctx}\n  the stream did not end after the proxy closed")
            }
            Err(E::Eof | E::Disconnected) => break,
            Err(e) => panic!("{ctx}\n  reading to the end after the proxy closed: {e:?}"),
        }
        assert!(Instant::now() < deadline, "{ctx}\n  the stream never ended");
    }
    check_record(&mut obs, record, &ctx, &plan, None);
    obs.stats
}

#[test]
fn embedded_client_survives_chaos() {
    run_seeds(
        "qmp-embedded",
        seeds(EMBEDDED_SEEDS, EMBEDDED_BASE),
        knobs(),
        embedded_session,
    );
}
