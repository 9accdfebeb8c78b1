#!/usr/bin/env bash
# Fleet benchmark: one process monitoring N QEMUs, qmp-std's tokio client (examples'
# qmp-fleet) against the same program on QEMU's own Python client, qemu.qmp (asyncio,
# bench/fleet_qemu_qmp.py), run alternately in the same session.
#
#   bash bench/fleet.sh                    # N=100, 200 round trips per VM, 3 stop/cont cycles
#   VMS=10 ROUNDS=100 RUNS=1 bash bench/fleet.sh
#   SIMULATED=1 bash bench/fleet.sh       # 10,000 simulated monitors (qmp-fake-fleet), and 100
#
# SIMULATED=1: no QEMU is started; `qmp-fake-fleet` (qmp-proto's sans-IO server, one
# process) serves VMS_SIM (10000) monitors, and both clients connect to BASE (100) of them,
# then to all of them twice: with BASE of them busy at a time, and with all busy at once;
# ROUNDS_SIM (20) round trips per monitor at VMS_SIM, the same total at BASE; PY_TIMEOUT
# (900 s) bounds each qemu.qmp run.
#
# Environment: VMS (100), ROUNDS (200), CYCLES (3), RUNS (2: each client runs RUNS times,
# alternating), THREADS (0: qmp-fleet on a current-thread runtime), VENV (where qemu.qmp is
# installed; default target/bench-venv). qemu.qmp comes from PyPI into that virtual
# environment, never into the project. Prints each run's JSON line and a summary with
# medians; the machine's load average is part of every line, since other work on the
# machine moves these numbers.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
VMS=${VMS:-100}
ROUNDS=${ROUNDS:-200}
CYCLES=${CYCLES:-3}
RUNS=${RUNS:-2}
THREADS=${THREADS:-0}
target=${CARGO_TARGET_DIR:-$here/target}
VENV=${VENV:-$target/bench-venv}

if ! "$VENV/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
    echo "==> installing qemu.qmp into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'qemu.qmp'
fi
if [ "${SIMULATED:-0}" = 1 ]; then
    # Simulated fleet: qmp-fake-fleet serves VMS monitors (qmp-proto's sans-IO server, one
    # process) on Unix sockets; both clients connect to them with --connect, first to BASE
    # of them (the reference point), then to all VMS.
    VMS=${VMS_SIM:-10000}
    BASE=${BASE:-100}
    ROUNDS=${ROUNDS_SIM:-20}
    echo "==> building qmp-fleet and qmp-fake-fleet (release)" >&2
    cargo build --release --quiet -p qmp-examples --bin qmp-fleet --bin qmp-fake-fleet
    # 10,000 connections need more descriptors than the usual soft limit, in every process.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    sim=$(mktemp -d)
    out=$(mktemp)
    "$target/release/qmp-fake-fleet" --dir "$sim" --vms "$VMS" >"$sim/ready" &
    server=$!
    # The server dies of the SIGTERM (status 143): the benchmark's own status is kept.
    trap 'status=$?; kill $server 2>/dev/null; wait $server 2>/dev/null || true; rm -rf "$sim" "$out"; exit $status' EXIT
    until grep -q ready "$sim/ready" 2>/dev/null; do
        kill -0 $server 2>/dev/null || { echo "qmp-fake-fleet failed" >&2; exit 1; }
        sleep 0.1
    done
    # (connected monitors, how many busy at once: 0 = all): BASE connected; all VMS
    # connected with BASE of them busy at a time (what the number of connections costs);
    # all VMS busy at once (what as many commands in flight at once cost).
    for config in "$BASE 0" "$VMS $BASE" "$VMS 0"; do
        read -r n busy <<<"$config"
        # As many round trips at BASE monitors as at VMS (more per monitor), so that every
        # timed phase lasts long enough to measure.
        rounds=$((ROUNDS * VMS / n))
        args=(--connect "$sim" --vms "$n" --rounds "$rounds" --cycles "$CYCLES" --busy "$busy" --json)
        for run in $(seq 1 "$RUNS"); do
            echo "==> $n monitors (busy at once: ${busy/#0/all}), run $run/$RUNS: qmp-fleet --raw (no QMP client: the floor)" >&2
            "$target/release/qmp-fleet" "${args[@]}" --threads "$THREADS" --raw | tee -a "$out"
            echo "==> $n monitors (busy at once: ${busy/#0/all}), run $run/$RUNS: qmp-fleet (Rust, qmp-std tokio)" >&2
            "$target/release/qmp-fleet" "${args[@]}" --threads "$THREADS" | tee -a "$out"
            echo "==> $n monitors (busy at once: ${busy/#0/all}), run $run/$RUNS: fleet_qemu_qmp.py (Python, qemu.qmp)" >&2
            timeout "${PY_TIMEOUT:-900}" "$VENV/bin/python" bench/fleet_qemu_qmp.py "${args[@]}" \
                | tee -a "$out" || echo "   (qemu.qmp did not finish with $n monitors)" >&2
        done
    done
    python3 - "$out" "$BASE" "$VMS" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
base, big = int(sys.argv[2]), int(sys.argv[3])
rust, py, raw = "qmp-std tokio", "qemu.qmp asyncio", "raw tokio socket loop"
# The three configurations: (connected, busy at once; 0 = all).
BASE, SPREAD, ALL = (base, 0), (big, base), (big, 0)
name = {BASE: f"@{base}", SPREAD: f"@{big}/{base}", ALL: f"@{big}"}
def med(client, config, key):
    n, busy = config
    values = [r[key] for r in rows
              if r["client"] == client and r["vms"] == n and r.get("busy", 0) == busy and key in r]
    return statistics.median(values) if values else float("nan")
print(f"\nsimulated fleet (qmp-fake-fleet), {sum(r['round_trips'] for r in rows[:1])} query-status "
      f"round trips per run, medians; @{big}/{base}: {big} connected, {base} busy at a time; "
      f"load average across the runs: " + ", ".join(r["load_before"] for r in rows))
cols = [(c, k) for c in (rust, py) for k in (BASE, SPREAD, ALL)]
print(f"  {'':30}" + "".join(f"{('tokio ' if c == rust else 'qemu.qmp ') + name[k]:>19}" for c, k in cols))
for key, label, fmt in [
    ("rt_per_s", "round trips/s (fleet)", "{:19.0f}"),
    ("cpu_per_rt_us", "client CPU µs/round trip", "{:19.2f}"),
    ("connect_s", "connect + negotiate (s)", "{:19.2f}"),
    ("event_latency_p50_us", "event latency p50 (µs)", "{:19.0f}"),
    ("event_latency_p99_us", "event latency p99 (µs)", "{:19.0f}"),
    ("heap_per_connection", "heap B/conn, idle (counted)", "{:19.0f}"),
    ("heap_per_busy_connection", "heap B/conn, busy (peak)", "{:19.0f}"),
    ("heap_per_connection_after", "heap B/conn, after the run", "{:19.0f}"),
    ("rss_per_connection", "RSS growth B/connection", "{:19.0f}"),
    ("hwm_kib", "VmHWM (KiB)", "{:19.0f}"),
]:
    print(f"  {label:30}" + "".join(fmt.format(med(c, k, key)) for c, k in cols))
# The floor: the same phases with no QMP client (qmp-fleet --raw); above it, the client's own.
print(f"  {'':30}" + "".join(f"{'raw ' + name[k]:>19}" for k in (BASE, SPREAD, ALL)))
for key, label in [("cpu_per_rt_us", "raw CPU µs/round trip"),
                   ("user_per_rt_us", "  of which user"),
                   ("system_per_rt_us", "  of which system")]:
    print(f"  {label:30}" + "".join(f"{med(raw, k, key):19.2f}" for k in (BASE, SPREAD, ALL)))
for k in (BASE, SPREAD, ALL):
    own = med(rust, k, "cpu_per_rt_us") - med(raw, k, "cpu_per_rt_us")
    user = med(rust, k, "user_per_rt_us") - med(raw, k, "user_per_rt_us")
    floor = med(raw, k, "cpu_per_rt_us")
    print(f"  {name[k]:>13}: floor {floor:.2f} µs/rt, tokio client's own {own:.2f} µs (user {user:.2f}); "
          f"qemu.qmp's own {med(py, k, 'cpu_per_rt_us') - floor:.2f} µs")
cpu_base = med(rust, BASE, "cpu_per_rt_us")
print(f"  tokio CPU per round trip, {big} connected ({base} busy at a time) vs {base} connected: "
      f"{med(rust, SPREAD, 'cpu_per_rt_us') / cpu_base:.2f}x (target <= 1.0x, noise aside)")
print(f"  tokio CPU per round trip, {big} connected and all busy at once vs {base}: "
      f"{med(rust, ALL, 'cpu_per_rt_us') / cpu_base:.2f}x; the floor's own ratio: "
      f"{med(raw, ALL, 'cpu_per_rt_us') / med(raw, BASE, 'cpu_per_rt_us'):.2f}x")
idle = med(rust, ALL, "heap_per_connection")
print(f"  tokio heap per idle connection at {big}: {idle:.0f} B (target < 4096 B)")
ok = all(r["events_seen"] == r["events_expected"] for r in rows if r["client"] == rust)
print(f"  events: {'every STOP/RESUME seen' if ok else 'MISSING EVENTS'} in every tokio run")
for k in (SPREAD, ALL):
    done = [r for r in rows if r["client"] == py and (r["vms"], r.get("busy", 0)) == k]
    print(f"  qemu.qmp {name[k]}: {len(done)} run(s) finished")
PY
    exit 0
fi

echo "==> building qmp-fleet (release)" >&2
cargo build --release --quiet -p qmp-examples --bin qmp-fleet

out=$(mktemp)
trap 'rm -f "$out"' EXIT
args=(--vms "$VMS" --rounds "$ROUNDS" --cycles "$CYCLES" --json)
for run in $(seq 1 "$RUNS"); do
    echo "==> run $run/$RUNS: qmp-fleet (Rust, qmp-std tokio)" >&2
    "$target/release/qmp-fleet" "${args[@]}" --threads "$THREADS" | tee -a "$out"
    echo "==> run $run/$RUNS: fleet_qemu_qmp.py (Python, qemu.qmp)" >&2
    "$VENV/bin/python" bench/fleet_qemu_qmp.py "${args[@]}" | tee -a "$out"
done

python3 - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
def med(client, key):
    values = [r[key] for r in rows if r["client"] == client and key in r]
    return statistics.median(values) if values else float("nan")
rust, py = "qmp-std tokio", "qemu.qmp asyncio"
n = rows[0]["vms"]
print(f"\nfleet of {n} QEMUs, {rows[0]['rounds']} query-status per VM, medians of "
      f"{sum(r['client'] == rust for r in rows)} runs each")
print(f"  load average (1 min) across the runs: "
      + ", ".join(f"{r['load_before']}" for r in rows))
print(f"  {'':28}{'qmp-std tokio':>16}{'qemu.qmp':>16}")
for key, label, fmt in [
    ("rt_per_s", "round trips/s (fleet)", "{:16.0f}"),
    ("cpu_per_rt_us", "client CPU µs/round trip", "{:16.2f}"),
    ("connect_s", "connect + negotiate (s)", "{:16.2f}"),
    ("stop_cont_s", "stop/cont cycles (s)", "{:16.2f}"),
    ("rss_per_connection", "RSS growth B/connection", "{:16.0f}"),
    ("hwm_kib", "VmHWM (KiB)", "{:16.0f}"),
]:
    print(f"  {label:28}" + fmt.format(med(rust, key)) + fmt.format(med(py, key)))
print(f"  {'heap B/connection (counted)':28}{med(rust, 'heap_per_connection_after'):16.0f}{'-':>16}")
ratio = med(rust, "rt_per_s") / med(py, "rt_per_s")
print(f"  round-trip rate ratio: {ratio:.2f}x (target >= 1.5x)")
ok = all(r["events_seen"] == r["events_expected"] for r in rows)
print(f"  events: {'all STOP/RESUME seen' if ok else 'MISSING EVENTS'} in every run")
EOF
