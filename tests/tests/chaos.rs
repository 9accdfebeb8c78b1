//! Chaos: real QMP sessions through [`ChaosProxy`], which splits, delays and stalls the bytes
//! between the client and a real QEMU 7.2, cuts the connection (often mid-message) and
//! injects garbage between QEMU's messages, all drawn from a seed.
//!
//! Each seed is one session through a fresh proxy: the handshake, `query-status`, `stop`
//! (→ `STOP`), `query-status`, `cont` (→ `RESUME`), `query-commands` (a 6.5 KB reply), an
//! unknown command (an error reply), then a pipelined batch sent with `send` and collected
//! with `wait` out of order, then the proxy shuts the connection down. What it proves, for
//! every seed:
//! - every call returns the right value, or a typed error (`Timeout`, or a disconnect:
//!   `Disconnected` / `Stalled` / `Io` / `Eof`) within its deadline plus [`MARGIN`];
//! - once a call has reported a disconnect, every later call does too, within [`FAST`];
//! - the events the client reported (queued, drained, and read to the end of the stream)
//!   are exactly the events the proxy fully delivered, in order (name and timestamp): none
//!   lost, none duplicated, none dropped because garbage came before them; an event caused
//!   by a command was there when that command's reply came;
//! - (qmp-std) no command whose reply the proxy delivered is reported as disconnected; a
//!   successful command's reply was delivered;
//! - a seed whose plan neither cut nor stalled for long runs every command successfully;
//! - nothing panics or hangs: each seed runs on a thread under a watchdog ([`WATCHDOG`]);
//! - afterwards a fresh direct connection to the same QEMU negotiates and runs
//!   `query-status` (and `cont`, so every seed starts with a running VM).
//!
//! Seeds run on [`WORKERS`] threads, each with its own QEMU (a monitor serves one client at
//! a time). `QMP_CHAOS_SEEDS=N` runs N seeds per client instead of the defaults,
//! `QMP_CHAOS_SEED=S` replays seed S alone (the seed and the plan are printed with every
//! failure).

use std::collections::{HashSet, VecDeque};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use qmp_e2e::chaos::{ChaosProxy, End, Knobs, Plan, Record, Rng};
use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::commands::{
    Cont, HumanMonitorCommand, QueryCommands, QueryStatus, RunState, StatusInfo, Stop,
};
use qmp_std::serde_json::{self, Value};
use qmp_std::{Client, ClientBuilder, Error, Handle};

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
/// Where each client's seeds start, so the clients do not replay each other's plans.
const STD_BASE: u64 = 0;
const EMBEDDED_BASE: u64 = 1_000_000;

/// Roughly what a session sends: 17 server messages, 700 client bytes.
fn knobs() -> Knobs {
    Knobs {
        messages: 17,
        client_bytes: 700,
        deadline: DEADLINE,
    }
}

/// The seeds to run: `QMP_CHAOS_SEED` alone, or `QMP_CHAOS_SEEDS` (default `n`) from `base`.
fn seeds(n: u64, base: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("QMP_CHAOS_SEED") {
        return vec![seed.trim().parse().expect("QMP_CHAOS_SEED is a u64")];
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
}

/// Runs `session` for every seed on [`WORKERS`] threads with a QEMU each; fails with every
/// failing seed's plan and message.
fn run_seeds(label: &str, seeds: Vec<u64>, session: fn(u64, &Path) -> Stats) {
    let started = Instant::now();
    let total = seeds.len();
    let queue = Arc::new(Mutex::new(VecDeque::from(seeds)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS.min(total))
        .map(|_| {
            let (queue, results) = (Arc::clone(&queue), Arc::clone(&results));
            thread::spawn(move || worker(queue, results, session))
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
         injected, {} events compared, {} calls succeeded; {} failed",
        results.len(),
        started.elapsed(),
        stats.iter().filter(|s| s.cut).count(),
        stats.iter().filter(|s| s.gone).count(),
        stats.iter().map(|s| s.timeouts).sum::<usize>(),
        stats.iter().map(|s| s.garbage).sum::<usize>(),
        stats.iter().map(|s| s.events).sum::<usize>(),
        stats.iter().map(|s| s.ok).sum::<usize>(),
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

fn worker(queue: Arc<Mutex<VecDeque<u64>>>, results: Results, session: fn(u64, &Path) -> Stats) {
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
        let plan = Plan::generate(seed, &knobs());
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

/// The ids of the replies the proxy delivered.
fn delivered_reply_ids(record: &Record) -> HashSet<u64> {
    record
        .delivered_messages()
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(m).ok()?;
            if v.get("return").is_none() && v.get("error").is_none() {
                return None;
            }
            v.get("id")?.as_u64()
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
    Gone,
}

/// What the checks need to remember across calls of one session.
struct Observer {
    ctx: String,
    /// When the client first reported a disconnect, and what.
    gone: Option<(Instant, String)>,
    /// The client gave up on the connection itself (`Stalled`): it reads nothing more.
    abandoned: bool,
    calls: Vec<(&'static str, Option<u64>, Outcome)>,
    events: Vec<Ev>,
    /// The VM's run state, when known for sure.
    running: Option<bool>,
    stats: Stats,
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
        }
    }

    /// Checks one call's outcome: typed, in time, and failing fast once disconnected.
    /// `sent` is when the command went out, `asked` when the caller started waiting.
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
        let now = Instant::now();
        let ctx = &self.ctx;
        let took = now - sent;
        assert!(
            took <= DEADLINE + MARGIN,
            "{ctx}\n  {name} returned after {took:?} (deadline {DEADLINE:?}): {shown:?}"
        );
        if let Some((at, what)) = &self.gone {
            assert!(
                now - asked <= FAST,
                "{ctx}\n  {name} took {:?} after the client reported {what}: {shown:?}",
                now - asked
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
                self.gone = Some((now, format!("{shown:?}")));
                self.stats.gone = true;
            }
            _ => {}
        }
        self.calls.push((name, id, outcome));
        outcome
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
        Err(Error::Timeout) => Outcome::Timeout,
        Err(e) if e.is_disconnect() => Outcome::Gone,
        Err(e) => panic!("{ctx}\n  {name}: unexpected error {e:?}"),
    }
}

struct StdSession {
    client: Client<UnixStream>,
    obs: Observer,
    proxy: ChaosProxy,
}

impl StdSession {
    fn drain(&mut self) -> Vec<Ev> {
        let new: Vec<Ev> = self
            .client
            .events()
            .map(|e| (e.name, e.timestamp.seconds, e.timestamp.microseconds))
            .collect();
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
        sent: Result<Handle<T>, Error>,
    ) -> Option<(Handle<T>, Instant)> {
        let now = Instant::now();
        match sent {
            Ok(h) => Some((h, now)),
            Err(e) => {
                let stalled = matches!(e, Error::Stalled);
                let ctx = self.obs.ctx.clone();
                let result: Result<(), Error> = Err(e);
                let outcome = classify(&ctx, name, &result, None);
                self.obs.note(name, None, now, now, outcome, &result);
                self.after(stalled);
                None
            }
        }
    }

    fn wait<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &mut self,
        name: &'static str,
        handle: Option<(Handle<T>, Instant)>,
        expected_class: Option<&str>,
    ) -> Option<T> {
        let (handle, sent) = handle?;
        let id = handle.id();
        let asked = Instant::now();
        let result = self.client.wait(handle);
        let ctx = self.obs.ctx.clone();
        let outcome = classify(&ctx, name, &result, expected_class);
        self.obs.note(name, Some(id), sent, asked, outcome, &result);
        self.after(matches!(result, Err(Error::Stalled)));
        result.ok()
    }

    fn status(&mut self, name: &'static str) -> Option<StatusInfo> {
        let h = self.client.send(&QueryStatus);
        let h = self.sent(name, h);
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
        let h = if to_running {
            self.client.send(&Cont)
        } else {
            self.client.send(&Stop)
        };
        let h = self.sent(name, h);
        let done = self.wait(name, h, None).is_some();
        let events = self.drain();
        if done {
            if before == Some(!to_running) {
                let want = if to_running { "RESUME" } else { "STOP" };
                assert!(
                    events.iter().any(|e| e.0 == want),
                    "{}\n  {name} succeeded but {want} was not received before its reply: {events:?}",
                    self.obs.ctx
                );
            }
            self.obs.running = Some(to_running);
        } else {
            self.obs.running = None;
        }
    }
}

fn std_session(seed: u64, qemu: &Path) -> Stats {
    let plan = Plan::generate(seed, &knobs());
    let read_timeout = Rng::fork(seed, 99).chance(35).then_some(READ_TIMEOUT);
    let ctx = format!("qmp-std {plan}, read timeout {read_timeout:?}");
    let proxy = ChaosProxy::start(Address::Unix(qemu.to_path_buf()), plan.clone())
        .unwrap_or_else(|e| panic!("{ctx}\n  start the proxy: {e}"));
    let stream = proxy
        .connect()
        .unwrap_or_else(|e| panic!("{ctx}\n  connect to the proxy: {e}"));
    let started = Instant::now();
    let connected = ClientBuilder::new()
        .connect_timeout(Some(DEADLINE))
        .command_timeout(Some(DEADLINE))
        .read_timeout(read_timeout)
        .handshake(stream);
    let mut obs = Observer::new(ctx.clone());
    let outcome = classify(&ctx, "handshake", &connected, None);
    obs.note(
        "handshake",
        None,
        started,
        started,
        outcome,
        &connected.as_ref().map(|_| ()),
    );
    let client = match connected {
        Ok(client) => client,
        Err(_) => {
            // No client, no events: QEMU sends none before negotiation completes.
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
            obs.stats.cut = matches!(record.end, Some(End::PlannedCut(_)));
            return obs.stats;
        }
    };
    let mut s = StdSession { client, obs, proxy };

    s.status("query-status #1");
    s.change("stop", false);
    s.status("query-status #2");
    s.change("cont", true);

    let h = s.client.send(&QueryCommands);
    let h = s.sent("query-commands", h);
    if let Some(commands) = s.wait("query-commands", h, None) {
        assert!(
            commands.len() > 100 && commands.iter().any(|c| c.name == "query-status"),
            "{ctx}\n  query-commands: {} commands",
            commands.len()
        );
    }
    s.drain();

    let h = s.client.send_raw("chaos-no-such-command", &Value::Null);
    let h = s.sent("chaos-no-such-command", h);
    s.wait("chaos-no-such-command", h, Some("CommandNotFound"));
    s.drain();

    // Pipelined: all sent, then collected out of order.
    let before = s.obs.running;
    let h1 = s.client.send(&QueryStatus);
    let h1 = s.sent("pipelined query-status #1", h1);
    let h2 = s.client.send(&Stop);
    let h2 = s.sent("pipelined stop", h2);
    let h3 = s.client.send(&QueryStatus);
    let h3 = s.sent("pipelined query-status #2", h3);
    let h4 = s.client.send(&Cont);
    let h4 = s.sent("pipelined cont", h4);
    let h5 = s.client.send(&HumanMonitorCommand::new("info status"));
    let h5 = s.sent("pipelined info status", h5);
    let r3 = s.wait("pipelined query-status #2", h3, None);
    let r1 = s.wait("pipelined query-status #1", h1, None);
    let r5 = s.wait("pipelined info status", h5, None);
    let r2 = s.wait("pipelined stop", h2, None);
    let r4 = s.wait("pipelined cont", h4, None);
    if let (Some(r1), Some(before)) = (&r1, before) {
        assert_eq!(
            r1.running, before,
            "{ctx}\n  pipelined query-status #1: {r1:?}"
        );
    }
    if let (Some(r3), Some(_)) = (&r3, &r2) {
        assert_eq!(r3.status, RunState::Paused, "{ctx}\n  after stop: {r3:?}");
    }
    if let (Some(r5), Some(_)) = (&r5, &r4) {
        assert_eq!(r5, "VM status: running\r\n", "{ctx}\n  after cont");
    }
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
                obs.events
                    .push((e.name, e.timestamp.seconds, e.timestamp.microseconds));
                obs.stats.events += 1;
            }
            Err(e) if e.is_disconnect() => break,
            Err(e) => panic!("{ctx}\n  reading to the end after the proxy closed: {e:?}"),
        }
        assert!(Instant::now() < deadline, "{ctx}\n  the stream never ended");
    }
    check_record(&mut obs, record, &ctx, &plan, true);
    obs.stats
}

/// The checks against the proxy's record, shared by the clients.
fn check_record(obs: &mut Observer, record: &Record, ctx: &str, plan: &Plan, ids: bool) {
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
    if ids {
        let replies = delivered_reply_ids(record);
        for (name, id, outcome) in &obs.calls {
            let Some(id) = id else { continue };
            if *outcome == Outcome::Gone && !obs.abandoned {
                assert!(
                    !replies.contains(id),
                    "{ctx}\n  {name} (id {id}) failed as disconnected, but its reply was \
                     delivered\n  {summary}\n  garbage {garbage:?}"
                );
            }
            if matches!(outcome, Outcome::Ok | Outcome::ExpectedError) {
                assert!(
                    replies.contains(id),
                    "{ctx}\n  {name} (id {id}) succeeded without a delivered reply\n  {summary}"
                );
            }
        }
    }
    // No cut, no long stall, no give-up: everything must have worked.
    let cut = matches!(record.end, Some(End::PlannedCut(_)));
    let long_stall = record.stalls.iter().any(|(_, d)| *d >= DEADLINE / 2);
    if !cut && !long_stall && !plan.has_stall_of(DEADLINE / 2) {
        for (name, _, outcome) in &obs.calls {
            assert!(
                matches!(outcome, Outcome::Ok | Outcome::ExpectedError),
                "{ctx}\n  {name} failed ({outcome:?}) though the plan neither cut nor stalled \
                 for long\n  {summary}\n  garbage {garbage:?}"
            );
        }
    }
}

#[test]
fn std_client_survives_chaos() {
    run_seeds("qmp-std", seeds(STD_SEEDS, STD_BASE), std_session);
}

// ---- qmp-embedded's blocking client ------------------------------------------------------

/// How long one read of [`SocketLink`] may block before it reports `TimedOut` (so the
/// client checks its deadlines).
const POLL: Duration = Duration::from_millis(20);

/// A link error: the `std::io` error's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkError(io::ErrorKind);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "socket: {}", self.0)
    }
}

impl std::error::Error for LinkError {}

impl embedded_io::Error for LinkError {
    fn kind(&self) -> embedded_io::ErrorKind {
        use embedded_io::ErrorKind as K;
        match self.0 {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => K::TimedOut,
            io::ErrorKind::Interrupted => K::Interrupted,
            io::ErrorKind::BrokenPipe => K::BrokenPipe,
            io::ErrorKind::ConnectionReset => K::ConnectionReset,
            io::ErrorKind::NotConnected => K::NotConnected,
            _ => K::Other,
        }
    }
}

/// A Unix socket as an `embedded_io` link: reads time out after [`POLL`], a reset is the
/// end of the link.
#[derive(Debug)]
struct SocketLink(UnixStream);

impl embedded_io::ErrorType for SocketLink {
    type Error = LinkError;
}

impl embedded_io::Read for SocketLink {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        use std::io::Read;
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            other => other.map_err(|e| LinkError(e.kind())),
        }
    }
}

impl embedded_io::Write for SocketLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, LinkError> {
        use std::io::Write;
        self.0.write(buf).map_err(|e| LinkError(e.kind()))
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

/// The host's monotonic clock, from the client's creation.
#[derive(Debug, Clone, Copy)]
struct HostClock(Instant);

impl qmp_embedded::Clock for HostClock {
    fn now(&self) -> qmp_embedded::Instant {
        qmp_embedded::Instant::from_micros(
            u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX),
        )
    }
}

/// `query-status`'s return value.
#[derive(Debug, serde::Deserialize)]
struct Status<'a> {
    status: &'a str,
    running: bool,
}

/// 8 KiB receive buffer (`query-commands` is 6.5 KB), 1 KiB of events, 4 slots.
type Embedded = qmp_embedded::Client<SocketLink, HostClock, 8192, 256, 1024, 4>;

type EmbeddedError = qmp_embedded::Error<LinkError>;

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
        Err(E::Timeout) => Outcome::Timeout,
        Err(E::Eof | E::Disconnected | E::Io(_)) => Outcome::Gone,
        Err(e) => panic!("{ctx}\n  {name}: unexpected error {e:?}"),
    }
}

fn embedded_drain(qmp: &mut Embedded, obs: &mut Observer) -> Vec<Ev> {
    let mut new = Vec::new();
    while let Some(event) = qmp.next_event() {
        match event {
            Ok(e) => new.push((
                e.name.to_string(),
                e.timestamp.seconds,
                e.timestamp.microseconds,
            )),
            Err(lost) => panic!("{}\n  events lost: {lost}", obs.ctx),
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
    if result.is_ok() {
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

fn embedded_session(seed: u64, qemu: &Path) -> Stats {
    let plan = Plan::generate(seed, &knobs());
    let ctx = format!("qmp-embedded {plan}");
    let proxy = ChaosProxy::start(Address::Unix(qemu.to_path_buf()), plan.clone())
        .unwrap_or_else(|e| panic!("{ctx}\n  start the proxy: {e}"));
    let stream = proxy
        .connect()
        .unwrap_or_else(|e| panic!("{ctx}\n  connect to the proxy: {e}"));
    stream
        .set_read_timeout(Some(POLL))
        .expect("set a read timeout");
    let config = qmp_embedded::Config::new().timeout(Some(DEADLINE));
    let mut qmp: Embedded =
        qmp_embedded::Client::with_config(SocketLink(stream), HostClock(Instant::now()), config);
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
        match qmp.wait_event(Duration::from_secs(3)) {
            Ok(true) => {
                embedded_drain(&mut qmp, &mut obs);
            }
            Ok(false) => panic!("{ctx}\n  the stream did not end after the proxy closed"),
            Err(E::Eof | E::Disconnected) => break,
            Err(e) => panic!("{ctx}\n  reading to the end after the proxy closed: {e:?}"),
        }
        assert!(Instant::now() < deadline, "{ctx}\n  the stream never ended");
    }
    check_record(&mut obs, record, &ctx, &plan, false);
    obs.stats
}

#[test]
fn embedded_client_survives_chaos() {
    run_seeds(
        "qmp-embedded",
        seeds(EMBEDDED_SEEDS, EMBEDDED_BASE),
        embedded_session,
    );
}
