//! qmp-fleet: one process monitoring a fleet of QEMUs with qmp-std's tokio client.
//!
//! Starts N `qemu-system-x86_64 -machine none` instances (each on its own Unix socket in a
//! temporary directory), connects to all of them at once and negotiates, runs `query-status`
//! on all, then a timed phase of round trips (each VM runs `--rounds` `query-status` in a
//! row, all VMs at once), then `--cycles` times stops and continues every VM while
//! collecting each VM's STOP and RESUME events (none may be missing). It reports wall times,
//! round trips per second across the fleet, the client's own CPU time per round trip
//! (`CLOCK_PROCESS_CPUTIME_ID`: user + system time of this process, QEMU not included), and
//! its memory: heap bytes per connection from a counting global allocator, and VmRSS/VmHWM.
//!
//! ```text
//! qmp-fleet [--vms N] [--rounds N] [--cycles N] [--threads N] [--json] [--qemu PROGRAM]
//!           [--connect DIR] [--raw]
//!   --vms N       how many QEMUs (default 100)
//!   --rounds N    query-status round trips per VM in the timed phase (default 200)
//!   --cycles N    stop/cont cycles (default 3)
//!   --threads N   tokio worker threads; 0 (default): a current-thread runtime
//!   --json        one JSON object on stdout instead of the report
//!   --connect DIR connect to DIR/vmI.sock (started elsewhere) instead of starting QEMUs
//!   --raw         no QMP library: the floor (see below)
//!   --busy K      in the timed phase, at most K VMs busy at once (each runs its rounds,
//!                 then the next VM starts); 0 (default): all of them at once
//! ```
//!
//! `--raw` runs the connect and round-trip phases with no QMP client at all: on the same
//! runtime, one task per VM writes the command's bytes to its tokio `UnixStream` and reads up
//! to the reply's line end. That is the floor a client's CPU per round trip stands on (the
//! runtime, the kernel's sockets, the peer's wake-ups); the tokio client's figure minus the
//! raw one is what the client itself costs, at each fleet size.
//!
//! With `--connect DIR` it starts nothing and connects to `DIR/vm0.sock` … `DIR/vm{N-1}.sock`
//! instead: the simulated monitors of `qmp-fake-fleet` (10,000 of them, more than this
//! machine can run as QEMUs). Event latency is the time from an event's QMP timestamp (the
//! server's wall clock when it wrote the event) to the moment the waiting task receives it.
//!
//! `bash bench/fleet.sh` runs it next to the same program written on Python's `qemu.qmp`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qmp_std::commands::{Cont, QueryStatus, RunState, Stop};
use qmp_std::tokio::{Client, ClientBuilder, EventStream};
use tokio::task::JoinSet;

/// The global allocator, counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes straight to `System` with the caller's arguments; the counters
// have no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn heap() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// User + system CPU time of this process (all threads), QEMU not included.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// User and system CPU time of this process from `/proc/self/stat` (10 ms ticks: Linux
/// reports them in USER_HZ, 100 per second), to split [`cpu_time`].
fn user_system() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        Duration::from_millis(ticks(11) * 10),
        Duration::from_millis(ticks(12) * 10),
    )
}

/// `VmRSS` and `VmHWM` from `/proc/self/status`, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The system's 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

#[derive(Debug, Clone)]
struct Args {
    vms: usize,
    rounds: usize,
    cycles: usize,
    threads: usize,
    json: bool,
    qemu: String,
    connect: Option<PathBuf>,
    raw: bool,
    busy: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        vms: 100,
        rounds: 200,
        cycles: 3,
        threads: 0,
        json: false,
        qemu: "qemu-system-x86_64".into(),
        connect: None,
        raw: false,
        busy: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--vms" | "-n" => args.vms = number("--vms")?.max(1),
            "--rounds" => args.rounds = number("--rounds")?,
            "--cycles" => args.cycles = number("--cycles")?,
            "--threads" => args.threads = number("--threads")?,
            "--json" => args.json = true,
            "--raw" => args.raw = true,
            "--busy" => args.busy = number("--busy")?,
            "--qemu" => args.qemu = it.next().ok_or("--qemu needs a program")?,
            "--connect" => {
                args.connect = Some(it.next().ok_or("--connect needs a directory")?.into());
            }
            "-h" | "--help" => {
                return Err(
                    "usage: qmp-fleet [--vms N] [--rounds N] [--cycles N] [--threads N] [--json] \
                     [--qemu PROGRAM] [--connect DIR] [--raw] [--busy K]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

/// The QEMUs, killed and reaped (and their directory removed) on drop; or the sockets of
/// monitors started elsewhere (`--connect`), left alone.
struct Fleet {
    dir: PathBuf,
    children: Vec<Child>,
    owned: bool,
}

impl Fleet {
    fn existing(dir: PathBuf) -> Fleet {
        Fleet {
            dir,
            children: Vec::new(),
            owned: false,
        }
    }

    fn start(program: &str, n: usize) -> std::io::Result<Fleet> {
        let dir = std::env::temp_dir().join(format!("qmp-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut fleet = Fleet {
            dir,
            children: Vec::with_capacity(n),
            owned: true,
        };
        for i in 0..n {
            let socket = fleet.socket(i);
            let child = Command::new(program)
                .args(["-machine", "none", "-nodefaults", "-display", "none"])
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {program}: {e}")))?;
            fleet.children.push(child);
        }
        Ok(fleet)
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("vm{i}.sock"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Connects, retrying while QEMU is still creating its socket (within 60 s).
async fn connect(path: PathBuf) -> Result<Client, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let builder = ClientBuilder::new()
            .connect_timeout(Some(Duration::from_secs(30)))
            .command_timeout(Some(Duration::from_secs(30)));
        match builder.connect_unix(&path).await {
            Ok(client) => return Ok(client),
            Err(qmp_std::Error::Io(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Runs `f` on every VM at once and collects the results in VM order.
async fn on_all<T, F, Fut>(clients: &[Client], f: F) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Fn(usize, Client) -> Fut,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let work = f(i, client.clone());
        set.spawn(async move { (i, work.await) });
    }
    let mut out: Vec<Option<T>> = (0..clients.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, result) = joined.map_err(|e| e.to_string())?;
        out[i] = Some(result?);
    }
    Ok(out.into_iter().map(Option::unwrap).collect())
}

/// Runs `work(i)` for every VM `i` in `0..n`, at most `busy` at a time (all at once when
/// `busy` is 0 or at least `n`), and collects the results in VM order: the timed phase's
/// schedule. With a limit, `busy` tasks each take the next VM not yet run until none is left.
async fn pooled<T, F, Fut>(n: usize, busy: usize, work: F) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    if busy == 0 || busy >= n {
        for i in 0..n {
            let job = work(i);
            set.spawn(async move { Ok(vec![(i, job.await?)]) });
        }
    } else {
        let (work, next) = (Arc::new(work), Arc::new(AtomicUsize::new(0)));
        for _ in 0..busy {
            let (work, next) = (work.clone(), next.clone());
            set.spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, String>(done);
                    }
                    done.push((i, work(i).await?));
                }
            });
        }
    }
    while let Some(joined) = set.join_next().await {
        for (i, result) in joined.map_err(|e| e.to_string())?? {
            out[i] = Some(result);
        }
    }
    Ok(out.into_iter().map(Option::unwrap).collect())
}

/// Microseconds from an event's QMP timestamp (the server's wall clock) to now.
fn latency_us(event: &qmp_std::Event) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let sent = event.timestamp.seconds as f64 * 1e6 + event.timestamp.microseconds as f64;
    now.as_micros() as f64 - sent
}

/// On every VM at once: runs `stop` (or `cont`) while waiting on that VM's own stream for
/// its `STOP` (or `RESUME`), so each event is taken the moment it arrives; returns each
/// event's latency in µs.
async fn command_and_event(
    clients: &[Client],
    streams: &mut Vec<EventStream>,
    stop: bool,
) -> Result<Vec<f64>, String> {
    let name = if stop { "STOP" } else { "RESUME" };
    let mut set = JoinSet::new();
    for (i, (client, mut stream)) in clients.iter().cloned().zip(streams.drain(..)).enumerate() {
        set.spawn(async move {
            let wait = async {
                match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                    Ok(Some(Ok(event))) if event.name == name => Ok(latency_us(&event)),
                    Ok(Some(Ok(event))) => Err(format!("vm{i}: {} instead of {name}", event.name)),
                    Ok(Some(Err(e))) => Err(format!("vm{i}: {e}")),
                    Ok(None) => Err(format!("vm{i}: event stream ended")),
                    Err(_) => Err(format!("vm{i}: no {name} within 60 s")),
                }
            };
            let exec = async {
                if stop {
                    client.execute(&Stop).await
                } else {
                    client.execute(&Cont).await
                }
            };
            let (latency, reply) = tokio::join!(wait, exec);
            let result = reply.map_err(|e| format!("vm{i}: {e}")).and(latency);
            (i, stream, result)
        });
    }
    let mut slots: Vec<Option<EventStream>> = (0..clients.len()).map(|_| None).collect();
    let mut latencies = Vec::with_capacity(clients.len());
    while let Some(joined) = set.join_next().await {
        let (i, stream, result) = joined.map_err(|e| e.to_string())?;
        slots[i] = Some(stream);
        latencies.push(result?);
    }
    streams.extend(slots.into_iter().map(Option::unwrap));
    Ok(latencies)
}

/// The `p`-th percentile (0–100) of `values`, sorted in place.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() - 1) as f64 * p / 100.0).round() as usize;
    values[at]
}

#[derive(Debug, Default)]
struct Report {
    client: &'static str,
    vms: usize,
    rounds: usize,
    cycles: usize,
    threads: usize,
    /// The timed phase's limit on VMs busy at once (0: all).
    busy: usize,
    start_s: f64,
    connect_s: f64,
    heap_per_connection: usize,
    heap_per_connection_after: usize,
    /// The heap's peak during the timed round trips (every connection busy), per connection.
    heap_per_busy_connection: usize,
    rss_per_connection: u64,
    rt_wall_s: f64,
    round_trips: usize,
    rt_per_s: f64,
    cpu_per_rt_us: f64,
    user_per_rt_us: f64,
    system_per_rt_us: f64,
    stop_cont_s: f64,
    events_expected: usize,
    events_seen: usize,
    event_latency_p50_us: f64,
    event_latency_p99_us: f64,
    event_latency_max_us: f64,
    total_s: f64,
    total_cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    load_before: String,
    load_after: String,
}

async fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    let begin = Instant::now();
    let cpu_begin = cpu_time();
    let fleet = match &args.connect {
        Some(dir) => Fleet::existing(dir.clone()),
        None => Fleet::start(&args.qemu, args.vms).map_err(|e| e.to_string())?,
    };
    report.start_s = begin.elapsed().as_secs_f64();
    if args.raw {
        return raw::run(args, &fleet, report, (begin, cpu_begin)).await;
    }

    // Connect and negotiate, all at once.
    let paths: Vec<PathBuf> = (0..args.vms).map(|i| fleet.socket(i)).collect();
    let heap_before = heap();
    let (rss_before, _) = rss_kib();
    let t = Instant::now();
    let mut set = JoinSet::new();
    for (i, path) in paths.iter().enumerate() {
        let path = path.clone();
        set.spawn(async move { (i, connect(path).await) });
    }
    let mut slots: Vec<Option<Client>> = (0..args.vms).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, client) = joined.map_err(|e| e.to_string())?;
        slots[i] = Some(client?);
    }
    drop(set);
    let clients: Vec<Client> = slots.into_iter().map(Option::unwrap).collect();
    report.connect_s = t.elapsed().as_secs_f64();
    report.heap_per_connection = heap().saturating_sub(heap_before) / args.vms;
    report.rss_per_connection = rss_kib().0.saturating_sub(rss_before) * 1024 / args.vms as u64;

    // query-status on all.
    let statuses = on_all(&clients, |_, c| async move {
        c.execute(&QueryStatus).await.map_err(|e| e.to_string())
    })
    .await?;
    if let Some((i, s)) = statuses
        .iter()
        .enumerate()
        .find(|(_, s)| s.status != RunState::Running)
    {
        return Err(format!("vm{i} is {:?}", s.status));
    }

    // Timed round trips: each VM `rounds` query-status in a row, all VMs at once (or
    // `--busy` of them at a time).
    let rounds = args.rounds;
    let shared: Arc<[Client]> = clients.clone().into();
    PEAK.store(heap(), Ordering::Relaxed);
    let (t, cpu, (user, system)) = (Instant::now(), cpu_time(), user_system());
    pooled(args.vms, args.busy, move |i| {
        let c = shared[i].clone();
        async move {
            for _ in 0..rounds {
                c.execute(&QueryStatus)
                    .await
                    .map_err(|e| format!("vm{i}: {e}"))?;
            }
            Ok(())
        }
    })
    .await?;
    let (wall, cpu) = (t.elapsed(), cpu_time() - cpu);
    let (user_end, system_end) = user_system();
    report.heap_per_busy_connection =
        PEAK.load(Ordering::Relaxed).saturating_sub(heap_before) / args.vms;
    report.round_trips = args.vms * rounds;
    report.rt_wall_s = wall.as_secs_f64();
    report.rt_per_s = report.round_trips as f64 / wall.as_secs_f64();
    let per_rt = |d: Duration| d.as_secs_f64() * 1e6 / report.round_trips.max(1) as f64;
    report.cpu_per_rt_us = per_rt(cpu);
    report.user_per_rt_us = per_rt(user_end.saturating_sub(user));
    report.system_per_rt_us = per_rt(system_end.saturating_sub(system));

    // Stop and continue them all, collecting every STOP and RESUME.
    let mut streams: Vec<EventStream> = clients.iter().map(Client::subscribe).collect();
    let t = Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..args.cycles {
        report.events_expected += 2 * args.vms;
        let stopped = command_and_event(&clients, &mut streams, true).await?;
        report.events_seen += stopped.len();
        latencies.extend(stopped);
        let resumed = command_and_event(&clients, &mut streams, false).await?;
        report.events_seen += resumed.len();
        latencies.extend(resumed);
    }
    report.stop_cont_s = t.elapsed().as_secs_f64();
    report.event_latency_p50_us = percentile(&mut latencies, 50.0);
    report.event_latency_p99_us = percentile(&mut latencies, 99.0);
    report.event_latency_max_us = percentile(&mut latencies, 100.0);
    report.heap_per_connection_after = heap().saturating_sub(heap_before) / args.vms;
    (report.rss_kib, report.hwm_kib) = rss_kib();
    report.total_cpu_s = (cpu_time() - cpu_begin).as_secs_f64();
    drop(streams);
    drop(clients);
    drop(fleet);
    report.total_s = begin.elapsed().as_secs_f64();
    Ok(())
}

fn print_report(r: &Report, json: bool) {
    if json {
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"client\": \"{}\", \"vms\": {}, \"rounds\": {}, \"cycles\": {}, \
             \"threads\": {}, \"busy\": {}, \"start_s\": {:.3}, \"connect_s\": {:.3}, \
             \"heap_per_connection\": {}, \"heap_per_connection_after\": {}, \
             \"heap_per_busy_connection\": {}, \
             \"rss_per_connection\": {}, \"round_trips\": {}, \"rt_wall_s\": {:.3}, \"rt_per_s\": {:.0}, \
             \"cpu_per_rt_us\": {:.2}, \"user_per_rt_us\": {:.2}, \"system_per_rt_us\": {:.2}, \
             \"stop_cont_s\": {:.3}, \"events_expected\": {}, \
             \"events_seen\": {}, \"event_latency_p50_us\": {:.0}, \"event_latency_p99_us\": {:.0}, \
             \"event_latency_max_us\": {:.0}, \"rss_kib\": {}, \"hwm_kib\": {}, \"total_s\": {:.3}, \
             \"total_cpu_s\": {:.3}, \"load_before\": \"{}\", \"load_after\": \"{}\"",
            r.client,
            r.vms,
            r.rounds,
            r.cycles,
            r.threads,
            r.busy,
            r.start_s,
            r.connect_s,
            r.heap_per_connection,
            r.heap_per_connection_after,
            r.heap_per_busy_connection,
            r.rss_per_connection,
            r.round_trips,
            r.rt_wall_s,
            r.rt_per_s,
            r.cpu_per_rt_us,
            r.user_per_rt_us,
            r.system_per_rt_us,
            r.stop_cont_s,
            r.events_expected,
            r.events_seen,
            r.event_latency_p50_us,
            r.event_latency_p99_us,
            r.event_latency_max_us,
            r.rss_kib,
            r.hwm_kib,
            r.total_s,
            r.total_cpu_s,
            r.load_before,
            r.load_after,
        );
        s.push('}');
        println!("{s}");
        return;
    }
    let runtime = match r.threads {
        0 => "current-thread runtime".to_owned(),
        n => format!("{n} worker threads"),
    };
    println!("qmp-fleet: {} QEMUs, {} ({runtime})", r.vms, r.client);
    println!(
        "  load average          {} before, {} after",
        r.load_before, r.load_after
    );
    println!("  start {} QEMUs        {:.2} s", r.vms, r.start_s);
    println!("  connect + negotiate   {:.2} s (all at once)", r.connect_s);
    println!(
        "  round trips           {} query-status in {:.2} s: {:.0} round trips/s across the fleet",
        r.round_trips, r.rt_wall_s, r.rt_per_s
    );
    println!(
        "  client CPU            {:.2} µs per round trip (user {:.2}, system {:.2}; /proc ticks)",
        r.cpu_per_rt_us, r.user_per_rt_us, r.system_per_rt_us
    );
    println!(
        "  stop/cont             {} cycles in {:.2} s: {}/{} STOP+RESUME events seen",
        r.cycles, r.stop_cont_s, r.events_seen, r.events_expected
    );
    println!(
        "  event latency         {:.0} µs median, {:.0} µs p99, {:.0} µs max (QMP timestamp to the waiting task)",
        r.event_latency_p50_us, r.event_latency_p99_us, r.event_latency_max_us
    );
    println!(
        "  client heap           {} bytes per connection after connecting, {} at the peak of \
         the round trips (all busy), {} after the run",
        r.heap_per_connection, r.heap_per_busy_connection, r.heap_per_connection_after
    );
    println!(
        "  client memory         VmRSS {} KiB, VmHWM {} KiB, RSS growth {} bytes per connection",
        r.rss_kib, r.hwm_kib, r.rss_per_connection
    );
    println!(
        "  total                 {:.2} s wall, {:.3} s client CPU",
        r.total_s, r.total_cpu_s
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("qmp-fleet: {e}");
            return ExitCode::from(2);
        }
    };
    qmp_examples::raise_fd_limit();
    let runtime = if args.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("qmp-fleet: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report {
        client: if args.raw {
            "raw tokio socket loop"
        } else {
            "qmp-std tokio"
        },
        vms: args.vms,
        rounds: args.rounds,
        cycles: args.cycles,
        threads: args.threads,
        busy: args.busy,
        load_before: load_average(),
        ..Report::default()
    };
    let result = runtime.block_on(run(&args, &mut report));
    report.load_after = load_average();
    match result {
        Ok(()) if report.events_seen == report.events_expected => {
            print_report(&report, args.json);
            ExitCode::SUCCESS
        }
        Ok(()) => {
            print_report(&report, args.json);
            eprintln!("qmp-fleet: events missing");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("qmp-fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--raw`: the connect and round-trip phases with no QMP client, the floor under a client's
/// figures (the same runtime, sockets and peer; no library between them).
mod raw {
    use std::io;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use tokio::net::UnixStream;
    use tokio::task::JoinSet;

    use std::sync::atomic::Ordering;

    use std::sync::{Arc, Mutex};

    use super::{Fleet, PEAK, Report, cpu_time, heap, pooled, rss_kib, user_system};

    const CAPABILITIES: &[u8] = b"{\"execute\":\"qmp_capabilities\"}\n";
    const QUERY_STATUS: &[u8] = b"{\"execute\":\"query-status\"}\n";

    /// One monitor's socket and what has been read from it past the last line end.
    struct Conn {
        stream: UnixStream,
        buf: Vec<u8>,
        len: usize,
    }

    impl Conn {
        async fn open(path: &Path) -> io::Result<Conn> {
            let deadline = Instant::now() + Duration::from_secs(30);
            let stream = loop {
                match UnixStream::connect(path).await {
                    Ok(stream) => break stream,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut conn = Conn {
                stream,
                buf: vec![0; 4096],
                len: 0,
            };
            let greeting = conn.line().await?;
            if !greeting.starts_with(b"{\"QMP\"") {
                return Err(io::Error::other("no greeting"));
            }
            conn.round_trip(CAPABILITIES).await?;
            Ok(conn)
        }

        /// Writes `command` and reads its reply, which must be a `return`.
        async fn round_trip(&mut self, command: &[u8]) -> io::Result<()> {
            let mut sent = 0;
            while sent < command.len() {
                self.stream.writable().await?;
                match self.stream.try_write(&command[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if self.line().await?.starts_with(b"{\"return\"") {
                Ok(())
            } else {
                Err(io::Error::other("not a return"))
            }
        }

        /// The next line (up to its `\n`, which it includes).
        async fn line(&mut self) -> io::Result<Vec<u8>> {
            loop {
                if let Some(end) = self.buf[..self.len].iter().position(|&b| b == b'\n') {
                    let line = self.buf[..=end].to_vec();
                    self.buf.copy_within(end + 1..self.len, 0);
                    self.len -= end + 1;
                    return Ok(line);
                }
                if self.len == self.buf.len() {
                    return Err(io::Error::other("line longer than the buffer"));
                }
                self.stream.readable().await?;
                match self.stream.try_read(&mut self.buf[self.len..]) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => self.len += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Connects to every monitor at once, then the timed round trips, as `run` does.
    pub(super) async fn run(
        args: &super::Args,
        fleet: &Fleet,
        report: &mut Report,
        (begin, cpu_begin): (Instant, Duration),
    ) -> Result<(), String> {
        let heap_before = heap();
        let (rss_before, _) = rss_kib();
        let t = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..args.vms {
            let path = fleet.socket(i);
            set.spawn(async move { (i, Conn::open(&path).await) });
        }
        let mut conns: Vec<Option<Conn>> = (0..args.vms).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, conn) = joined.map_err(|e| e.to_string())?;
            conns[i] = Some(conn.map_err(|e| format!("vm{i}: {e}"))?);
        }
        report.connect_s = t.elapsed().as_secs_f64();
        report.heap_per_connection = heap().saturating_sub(heap_before) / args.vms;
        report.rss_per_connection = rss_kib().0.saturating_sub(rss_before) * 1024 / args.vms as u64;

        let rounds = args.rounds;
        // Each task takes its VM's connection and gives it back, so that every connection
        // stays open (idle ones too) until the phase ends.
        let slots: Arc<[Mutex<Option<Conn>>]> = conns.into_iter().map(Mutex::new).collect();
        PEAK.store(heap(), Ordering::Relaxed);
        let (t, cpu, (user, system)) = (Instant::now(), cpu_time(), user_system());
        let conns = pooled(args.vms, args.busy, move |i| {
            let conn = slots[i].lock().expect("not poisoned").take();
            async move {
                let mut conn = conn.expect("every VM connected");
                for _ in 0..rounds {
                    conn.round_trip(QUERY_STATUS)
                        .await
                        .map_err(|e| format!("vm{i}: {e}"))?;
                }
                Ok::<_, String>(conn)
            }
        })
        .await?;
        let (wall, cpu) = (t.elapsed(), cpu_time() - cpu);
        let (user_end, system_end) = user_system();
        report.heap_per_busy_connection =
            PEAK.load(Ordering::Relaxed).saturating_sub(heap_before) / args.vms;
        report.round_trips = args.vms * rounds;
        report.rt_wall_s = wall.as_secs_f64();
        report.rt_per_s = report.round_trips as f64 / wall.as_secs_f64();
        let per_rt = |d: Duration| d.as_secs_f64() * 1e6 / report.round_trips.max(1) as f64;
        report.cpu_per_rt_us = per_rt(cpu);
        report.user_per_rt_us = per_rt(user_end.saturating_sub(user));
        report.system_per_rt_us = per_rt(system_end.saturating_sub(system));
        report.cycles = 0;
        report.heap_per_connection_after = heap().saturating_sub(heap_before) / args.vms;
        (report.rss_kib, report.hwm_kib) = rss_kib();
        report.total_cpu_s = (cpu_time() - cpu_begin).as_secs_f64();
        drop(conns);
        report.total_s = begin.elapsed().as_secs_f64();
        Ok(())
    }
}
