//! One process monitoring a fleet of real QEMUs with `qmp-std`'s tokio client: the CI-sized
//! version of `examples/src/bin/qmp-fleet.rs` (see `bench/fleet.sh` for N = 100 and the
//! comparison with Python's `qemu.qmp`).
//!
//! Starts `FLEET` QEMUs (default 10; the environment variable `QMP_FLEET` changes it),
//! connects to all of them at once on a current-thread runtime, runs `query-status` on all,
//! a short timed phase of round trips, then stops and continues them all while collecting
//! every STOP and RESUME (none may be missing), and prints wall time, round trips per second,
//! the client's CPU time per round trip and its memory. Only correctness is asserted: the
//! numbers depend on the machine and on what else runs on it.

use std::time::{Duration, Instant};

use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::commands::{Cont, QueryStatus, RunState, Stop};
use qmp_std::tokio::{Client, ClientBuilder, EventStream};

const TIMEOUT: Duration = Duration::from_secs(10);
const ROUNDS: usize = 100;
const CYCLES: usize = 2;

fn fleet_size() -> usize {
    std::env::var("QMP_FLEET")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}

/// User + system CPU time of this process (all threads).
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `f` on every client at once (one task each) and waits for all.
async fn on_all<F, Fut>(clients: &[Client], f: F)
where
    F: Fn(usize, Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        set.spawn(f(i, client.clone()));
    }
    while let Some(joined) = set.join_next().await {
        joined.unwrap();
    }
}

/// The next event of each VM, which must be `name`.
async fn collect(streams: &mut [EventStream], name: &str) -> usize {
    let mut seen = 0;
    for (i, stream) in streams.iter_mut().enumerate() {
        match tokio::time::timeout(TIMEOUT, stream.next()).await {
            Ok(Some(Ok(event))) if event.name == name => seen += 1,
            other => panic!("vm{i}: expected {name}, got {other:?}"),
        }
    }
    seen
}

#[test]
fn a_fleet_of_qemus_on_one_tokio_runtime() {
    let n = fleet_size();
    let began = Instant::now();
    // Start them in parallel: the harness waits for each to settle.
    let qemus: Vec<Qemu> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..n)
            .map(|_| s.spawn(|| Qemu::start(Monitor::Unix)))
            .collect();
        starting
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("start QEMU: {e}"))
            })
            .collect()
    });
    let started = began.elapsed();
    let paths: Vec<_> = qemus
        .iter()
        .map(|q| match q.address() {
            Address::Unix(path) => path.clone(),
            other => panic!("{other}"),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (i, path) in paths.into_iter().enumerate() {
            set.spawn(async move {
                let client = ClientBuilder::new()
                    .connect_timeout(Some(TIMEOUT))
                    .command_timeout(Some(TIMEOUT))
                    .connect_unix(&path)
                    .await
                    .unwrap_or_else(|e| panic!("vm{i}: connect: {e}"));
                (i, client)
            });
        }
        let mut clients: Vec<(usize, Client)> = set.join_all().await;
        clients.sort_by_key(|(i, _)| *i);
        let clients: Vec<Client> = clients.into_iter().map(|(_, c)| c).collect();
        let connected = t.elapsed();

        on_all(&clients, |i, c| async move {
            let status = c.execute(&QueryStatus).await.unwrap();
            assert_eq!(status.status, RunState::Running, "vm{i}");
        })
        .await;

        let (t, cpu) = (Instant::now(), cpu_time());
        on_all(&clients, |i, c| async move {
            for _ in 0..ROUNDS {
                c.execute(&QueryStatus)
                    .await
                    .unwrap_or_else(|e| panic!("vm{i}: {e}"));
            }
        })
        .await;
        let (wall, cpu) = (t.elapsed(), cpu_time() - cpu);
        let round_trips = n * ROUNDS;

        let mut streams: Vec<EventStream> = clients.iter().map(Client::subscribe).collect();
        let mut seen = 0;
        let t = Instant::now();
        for _ in 0..CYCLES {
            on_all(&clients, |i, c| async move {
                c.execute(&Stop)
                    .await
                    .unwrap_or_else(|e| panic!("vm{i}: {e}"));
            })
            .await;
            seen += collect(&mut streams, "STOP").await;
            on_all(&clients, |i, c| async move {
                c.execute(&Cont)
                    .await
                    .unwrap_or_else(|e| panic!("vm{i}: {e}"));
            })
            .await;
            seen += collect(&mut streams, "RESUME").await;
        }
        let stop_cont = t.elapsed();
        assert_eq!(seen, 2 * CYCLES * n, "STOP/RESUME events missing");
        for (i, stream) in streams.iter_mut().enumerate() {
            let extra = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
            assert!(extra.is_err(), "vm{i}: unexpected {extra:?}");
        }
        for c in &clients {
            assert_eq!((c.in_flight(), c.dropped_messages()), (0, 0));
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "fleet of {n}: started in {:.2} s, connected in {:.3} s; {round_trips} round trips \
             in {:.3} s = {:.0}/s, client CPU {:.1} µs per round trip; {CYCLES} stop/cont \
             cycles in {:.3} s, {seen} events; VmRSS {} KiB, VmHWM {} KiB; load {}",
            started.as_secs_f64(),
            connected.as_secs_f64(),
            wall.as_secs_f64(),
            round_trips as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / round_trips as f64,
            stop_cont.as_secs_f64(),
            status_kib("VmRSS:"),
            status_kib("VmHWM:"),
            load.split_whitespace().next().unwrap_or("?"),
        );
    });
    drop(qemus);
    assert!(began.elapsed() < Duration::from_secs(60));
}
