#!/usr/bin/env bash
# Fleet benchmark: one process monitoring N QEMUs, qmp-std's tokio client (examples'
# qmp-fleet) against the same program on QEMU's own Python client, qemu.qmp (asyncio,
# bench/fleet_qemu_qmp.py), run alternately in the same session.
#
#   bash bench/fleet.sh                    # N=100, 200 round trips per VM, 3 stop/cont cycles
#   VMS=10 ROUNDS=100 RUNS=1 bash bench/fleet.sh
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
