//! Hostile guest agents: what the blocking and tokio agent clients (`qmp_std::agent`) do when
//! the peer on the agent channel is not `qemu-ga` but something trying to hurt them, in the
//! manner of hostile.rs for QMP servers.
//!
//! Each case is a fake agent on a thread at the other end of a `UnixStream::pair()`: it reads
//! the client's sync (0xFF, then `guest-sync-delimited`), misbehaves before or after
//! answering it, and, where the dialect lets the connection go on, answers one more command
//! (`guest-sync` with id 7) correctly. Per case and client, the test checks the exact outcome,
//! a time bound, a heap bound (a counting `#[global_allocator]`; everything runs in one
//! `#[test]`, so nothing else allocates meanwhile) and that nothing panics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qmp_std::agent::AgentBuilder;
use qmp_std::agent_commands::{GuestPing, GuestSync};
use qmp_std::{Error, Options};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The new block is counted before the old one is released.
        let now = CURRENT.fetch_add(new_size, Ordering::Relaxed) + new_size;
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The largest reply the clients accept here.
const MAX_REPLY: usize = 256 << 10;

/// What a hostile agent does.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// 4 MiB of garbage (bytes of every value, brackets, quotes, stray 0xFF) before the sync
    /// reply.
    GarbageBeforeSync,
    /// Replies to syncs that are not ours (wrong ids, the id as a string, as a float),
    /// without end.
    WrongSyncsForever,
    /// Never answers.
    Silent,
    /// Nesting 1,000,000 deep, then the sync reply.
    DeepNesting,
    /// After the sync, a string that never ends (16 MiB), then the answer.
    EndlessString,
    /// After the sync, an 8 MiB reply to the command (its id at the end), then the answer to
    /// the next.
    HugeReply,
    /// After the sync, the reply comes with a 0xFF in the middle of it, then the next
    /// command is answered.
    SentinelInsideReply,
    /// After the sync, 100,000 events (the agent has none), then the answer.
    EventFlood,
    /// Closes the channel right after the sync.
    HangUp,
}

/// The client's outcome, for comparison.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The handshake failed.
    Connect(String),
    /// The probe (`guest-ping`), then the command after it (`guest-sync` 7).
    Ran(String, String),
}

fn describe<T: std::fmt::Debug>(r: &Result<T, Error>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(Error::Timeout(e)) => format!("timeout {e:?}"),
        Err(Error::TooLarge { .. }) => "too large".into(),
        Err(Error::Unframed(_)) => "unframed".into(),
        Err(Error::Malformed(_)) => "malformed".into(),
        Err(Error::Disconnected) => "disconnected".into(),
        Err(e) => format!("{e}"),
    }
}

/// Reads one command (between balanced braces, 0xFF skipped); `None` at the end.
fn read_command(peer: &mut UnixStream) -> Option<qmp_std::serde_json::Value> {
    let mut depth = 0;
    let mut bytes = Vec::new();
    let mut byte = [0u8];
    loop {
        if peer.read(&mut byte).ok()? == 0 {
            return None;
        }
        match byte[0] {
            0xFF if depth == 0 => continue,
            b'{' => depth += 1,
            b'}' => depth -= 1,
            _ => {}
        }
        bytes.push(byte[0]);
        if depth == 0 && bytes.len() > 1 {
            return qmp_std::serde_json::from_slice(&bytes).ok();
        }
    }
}

/// Writes `n` bytes of `pattern`, repeated, in 64 KiB pieces.
fn stream(peer: &mut UnixStream, pattern: &[u8], n: usize) -> std::io::Result<()> {
    let chunk: Vec<u8> = pattern.iter().copied().cycle().take(64 << 10).collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        peer.write_all(&chunk[..k])?;
        left -= k;
    }
    Ok(())
}

fn reply(id: &qmp_std::serde_json::Value, value: &str) -> Vec<u8> {
    format!("{{\"return\": {value}, \"id\": {id}}}\n").into_bytes()
}

/// The fake agent for `case`.
fn agent(case: Case, mut peer: UnixStream) {
    let _ = (|| -> std::io::Result<()> {
        let sync = read_command(&mut peer).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let sync_id = sync["arguments"]["id"].clone();
        let sync_reply = format!("\u{0}{{\"return\": {sync_id}}}\n").into_bytes();
        let mut sync_reply = sync_reply;
        sync_reply[0] = 0xFF;
        match case {
            Case::GarbageBeforeSync => {
                let garbage: Vec<u8> = (0..=255u8).chain(*b"{[\"\\}]\xff\n{{\"a\": \"").collect();
                stream(&mut peer, &garbage, 4 << 20)?;
                peer.write_all(&sync_reply)?;
            }
            Case::WrongSyncsForever => loop {
                let wrong = format!(
                    "\u{0}{{\"return\": 1}}\n{{\"return\": \"{sync_id}\"}}\n{{\"return\": {sync_id}.5}}\n"
                );
                peer.write_all(
                    &wrong
                        .into_bytes()
                        .into_iter()
                        .map(|b| if b == 0 { 0xFF } else { b })
                        .collect::<Vec<_>>(),
                )?;
            },
            Case::Silent => {
                // Keeps the channel open until the client gives up.
                while read_command(&mut peer).is_some() {}
                return Ok(());
            }
            Case::DeepNesting => {
                stream(&mut peer, b"{\"a\":", 5_000_000)?;
                peer.write_all(&sync_reply)?;
            }
            _ => peer.write_all(&sync_reply)?,
        }
        // The probe, then `guest-sync` 7 (skipping resyncs).
        let mut probe = true;
        while let Some(command) = read_command(&mut peer) {
            let id = command["id"].clone();
            match command["execute"].as_str() {
                Some("guest-sync-delimited") => {
                    let mut r = vec![0xFF];
                    r.extend_from_slice(
                        format!("{{\"return\": {}}}\n", command["arguments"]["id"]).as_bytes(),
                    );
                    peer.write_all(&r)?;
                    continue;
                }
                Some("guest-sync") => {
                    peer.write_all(&reply(&id, "7"))?;
                    continue;
                }
                _ if !probe => {
                    peer.write_all(&reply(&id, "{}"))?;
                    continue;
                }
                _ => {}
            }
            probe = false;
            match case {
                Case::EndlessString => {
                    peer.write_all(b"{\"return\": \"")?;
                    stream(&mut peer, b"abcdefgh", 16 << 20)?;
                    peer.write_all(b"\"}\n")?;
                    peer.write_all(&reply(&id, "{}"))?;
                }
                Case::HugeReply => {
                    peer.write_all(b"{\"return\": [")?;
                    stream(&mut peer, b"1234567,", 8 << 20)?;
                    peer.write_all(format!("0], \"id\": {id}}}\n").as_bytes())?;
                }
                Case::SentinelInsideReply => {
                    peer.write_all(
                        &format!("{{\"return\": {{\"x\": \"a\u{0}b\"}}, \"id\": {id}}}\n")
                            .into_bytes()
                            .into_iter()
                            .map(|b| if b == 0 { 0xFF } else { b })
                            .collect::<Vec<_>>(),
                    )?;
                }
                Case::EventFlood => {
                    let event = b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"X\"}\n";
                    for _ in 0..100_000 {
                        peer.write_all(event)?;
                    }
                    peer.write_all(&reply(&id, "{}"))?;
                }
                Case::HangUp => return Ok(()),
                _ => peer.write_all(&reply(&id, "{}"))?,
            }
        }
        Ok(())
    })();
}

fn options() -> Options {
    let mut options = Options::default();
    options.connect_timeout = Some(Duration::from_millis(1500));
    options.command_timeout = Some(Duration::from_millis(1500));
    options.max_reply_size = MAX_REPLY;
    options.initial_buffer = 4096;
    options
}

fn blocking(case: Case) -> Outcome {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || agent(case, theirs));
    let outcome = match AgentBuilder::with_options(options()).handshake(ours) {
        Err(e) => Outcome::Connect(describe::<()>(&Err(e))),
        Ok(mut client) => {
            let probe = describe(&client.execute(&GuestPing));
            let next = describe(&client.execute(&GuestSync { id: 7 }));
            Outcome::Ran(probe, next)
        }
    };
    server.join().unwrap();
    outcome
}

fn tokio(case: Case, runtime: &tokio::runtime::Runtime) -> Outcome {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || agent(case, theirs));
    ours.set_nonblocking(true).unwrap();
    let outcome = runtime.block_on(async {
        let ours = tokio::net::UnixStream::from_std(ours).unwrap();
        match qmp_std::agent::tokio::Agent::handshake_unix(options(), ours).await {
            Err(e) => Outcome::Connect(describe::<()>(&Err(e))),
            Ok(client) => {
                let probe = describe(&client.execute(&GuestPing).await);
                let next = describe(&client.execute(&GuestSync { id: 7 }).await);
                client.close();
                Outcome::Ran(probe, next)
            }
        }
    });
    server.join().unwrap();
    outcome
}

fn ran(probe: &str, next: &str) -> Outcome {
    Outcome::Ran(probe.into(), next.into())
}

#[test]
fn hostile_agents() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = "ok Empty";
    let seven = "ok 7";
    let cases = [
        (Case::GarbageBeforeSync, ran(ok, seven), 10),
        (
            Case::WrongSyncsForever,
            Outcome::Connect("timeout Sync".into()),
            5,
        ),
        (Case::Silent, Outcome::Connect("timeout Sync".into()), 5),
        (Case::DeepNesting, ran(ok, seven), 10),
        // The endless string, too large and with no id, is skimmed and dropped; the real
        // reply after it is taken.
        (Case::EndlessString, ran(ok, seven), 10),
        (Case::HugeReply, ran("too large", seven), 10),
        // The 0xFF inside the reply cuts it: the ping times out, the resync recovers.
        (Case::SentinelInsideReply, ran("timeout Command", seven), 10),
        (Case::EventFlood, ran(ok, seven), 10),
        (Case::HangUp, ran("disconnected", "disconnected"), 5),
    ];
    let mut failures = Vec::new();
    for (case, want, seconds) in cases {
        for client in ["blocking", "tokio"] {
            let before = CURRENT.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            let started = Instant::now();
            let got = catch_unwind(AssertUnwindSafe(|| match client {
                "blocking" => blocking(case),
                _ => tokio(case, &runtime),
            }));
            let took = started.elapsed();
            let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
            println!("{case:?} {client}: {got:?} in {took:?}, peak heap {peak} bytes");
            match got {
                Err(_) => failures.push(format!("{case:?} {client}: panicked")),
                Ok(got) if got != want => {
                    failures.push(format!("{case:?} {client}: {got:?}, want {want:?}"))
                }
                Ok(_) => {}
            }
            if took > Duration::from_secs(seconds) {
                failures.push(format!("{case:?} {client}: took {took:?}"));
            }
            // The receive buffer (up to MAX_REPLY), the transmit buffer, the fake agent's
            // 64 KiB chunk and reads, the runtime's share: well under 4 × MAX_REPLY.
            if peak > 4 * MAX_REPLY + (256 << 10) {
                failures.push(format!("{case:?} {client}: peak heap {peak}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
