#!/usr/bin/env python3
"""qmp-fleet's benchmark, written on QEMU's own Python QMP client (`qemu.qmp`, asyncio).

The same program as examples/src/bin/qmp-fleet.rs, phase for phase: start N
`qemu-system-x86_64 -machine none` instances on Unix sockets in a temporary directory,
connect to all at once and negotiate, `query-status` on all, a timed phase where each VM
runs ROUNDS `query-status` in a row (all VMs at once, or BUSY at a time), then CYCLES times `stop` all and
collect each VM's STOP, `cont` all and collect each VM's RESUME (none may be missing).
It reports wall times, round trips per second across the fleet, this process's CPU time per
round trip (`time.process_time()`: CLOCK_PROCESS_CPUTIME_ID, as the Rust program reads it;
QEMU not included) and its memory (VmRSS/VmHWM, and the RSS growth per connection).

With --connect DIR it starts nothing and connects to DIR/vm0.sock ... (the simulated
monitors of qmp-fake-fleet). Event latency: from an event's QMP timestamp to the moment the
coroutine waiting for it receives it, each VM's command and wait running together.

Run it through bench/fleet.sh, which installs `qemu.qmp` from PyPI into a virtual
environment of its own (it is never a dependency of the project).
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from qemu.qmp import EventListener, QMPClient


def rss_kib():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


async def connect(path, deadline):
    """Connects, retrying while QEMU is still creating its socket."""
    while True:
        qmp = QMPClient(os.path.basename(path))
        try:
            await qmp.connect(path)
            return qmp
        except Exception:  # qemu.qmp raises ConnectError (wrapping OSError) here
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def run(args, report):
    begin, cpu_begin = time.perf_counter(), time.process_time()
    directory = args.connect or tempfile.mkdtemp(prefix="qmp-fleet-py-")
    sockets = [os.path.join(directory, f"vm{i}.sock") for i in range(args.vms)]
    procs = [] if args.connect else [
        subprocess.Popen(
            [args.qemu, "-machine", "none", "-nodefaults", "-display", "none",
             "-qmp", f"unix:{path},server=on,wait=off"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for path in sockets
    ]
    report["start_s"] = time.perf_counter() - begin
    try:
        rss_before, _ = rss_kib()
        t = time.perf_counter()
        deadline = time.monotonic() + 60
        clients = await asyncio.gather(*(connect(path, deadline) for path in sockets))
        report["connect_s"] = time.perf_counter() - t
        rss_after, _ = rss_kib()
        report["rss_per_connection"] = (rss_after - rss_before) * 1024 // args.vms

        statuses = await asyncio.gather(*(c.execute("query-status") for c in clients))
        for i, status in enumerate(statuses):
            if status["status"] != "running":
                raise RuntimeError(f"vm{i} is {status['status']}")

        async def rounds(client):
            for _ in range(args.rounds):
                await client.execute("query-status")

        t, cpu = time.perf_counter(), time.process_time()
        if 0 < args.busy < len(clients):
            # At most BUSY VMs at a time: each worker takes the next VM not yet run.
            pending = iter(clients)

            async def worker():
                for client in pending:
                    await rounds(client)

            await asyncio.gather(*(worker() for _ in range(args.busy)))
        else:
            await asyncio.gather(*(rounds(c) for c in clients))
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        report["round_trips"] = args.vms * args.rounds
        report["rt_wall_s"] = wall
        report["rt_per_s"] = report["round_trips"] / wall
        report["cpu_per_rt_us"] = cpu * 1e6 / max(report["round_trips"], 1)

        listeners = []
        for client in clients:
            listener = EventListener(("STOP", "RESUME"))
            client.register_listener(listener)
            listeners.append(listener)
        report["events_expected"] = 0
        report["events_seen"] = 0
        latencies = []

        async def wait_for(i, listener, name):
            event = await asyncio.wait_for(listener.get(), 60)
            now = time.time()
            if event["event"] != name:
                raise RuntimeError(f"vm{i}: {event['event']} instead of {name}")
            stamp = event["timestamp"]
            latencies.append((now - stamp["seconds"] - stamp["microseconds"] / 1e6) * 1e6)

        async def command_and_event(i, client, listener, command, name):
            await asyncio.gather(wait_for(i, listener, name), client.execute(command))

        t = time.perf_counter()
        for _ in range(args.cycles):
            for command, name in (("stop", "STOP"), ("cont", "RESUME")):
                report["events_expected"] += args.vms
                before = len(latencies)
                await asyncio.gather(*(command_and_event(i, c, listener, command, name)
                                       for i, (c, listener) in enumerate(zip(clients, listeners))))
                report["events_seen"] += len(latencies) - before
        report["stop_cont_s"] = time.perf_counter() - t
        latencies.sort()
        def pct(p):
            return latencies[round((len(latencies) - 1) * p / 100)] if latencies else 0.0
        report["event_latency_p50_us"] = pct(50)
        report["event_latency_p99_us"] = pct(99)
        report["event_latency_max_us"] = pct(100)
        report["rss_kib"], report["hwm_kib"] = rss_kib()
        report["total_cpu_s"] = time.process_time() - cpu_begin
        for client, listener in zip(clients, listeners):
            client.remove_listener(listener)
        await asyncio.gather(*(c.disconnect() for c in clients))
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
        if not args.connect:
            shutil.rmtree(directory, ignore_errors=True)
    report["total_s"] = time.perf_counter() - begin


def raise_fd_limit():
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        want = max(hard, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", "-n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--connect", metavar="DIR",
                        help="connect to DIR/vmI.sock instead of starting QEMUs")
    parser.add_argument("--busy", type=int, default=0,
                        help="at most this many VMs busy at once in the timed phase (0: all)")
    args = parser.parse_args()
    report = {
        "client": "qemu.qmp asyncio", "vms": args.vms, "rounds": args.rounds,
        "cycles": args.cycles, "busy": args.busy, "python": sys.version.split()[0],
        "load_before": f"{os.getloadavg()[0]:.2f}",
    }
    raise_fd_limit()
    asyncio.run(run(args, report))
    report["load_after"] = f"{os.getloadavg()[0]:.2f}"
    if args.json:
        print(json.dumps(report))
    else:
        r = report
        print(f"fleet_qemu_qmp: {r['vms']} QEMUs, qemu.qmp (Python {r['python']}, asyncio)")
        print(f"  load average          {r['load_before']} before, {r['load_after']} after")
        print(f"  start {r['vms']} QEMUs        {r['start_s']:.2f} s")
        print(f"  connect + negotiate   {r['connect_s']:.2f} s (all at once)")
        print(f"  round trips           {r['round_trips']} query-status in {r['rt_wall_s']:.2f} s: "
              f"{r['rt_per_s']:.0f} round trips/s across the fleet")
        print(f"  client CPU            {r['cpu_per_rt_us']:.2f} µs per round trip")
        print(f"  stop/cont             {r['cycles']} cycles in {r['stop_cont_s']:.2f} s: "
              f"{r['events_seen']}/{r['events_expected']} STOP+RESUME events seen")
        print(f"  event latency         {r['event_latency_p50_us']:.0f} µs median, "
              f"{r['event_latency_p99_us']:.0f} µs p99, {r['event_latency_max_us']:.0f} µs max")
        print(f"  client memory         VmRSS {r['rss_kib']} KiB, VmHWM {r['hwm_kib']} KiB, "
              f"RSS growth {r['rss_per_connection']} bytes per connection")
        print(f"  total                 {r['total_s']:.2f} s wall, {r['total_cpu_s']:.3f} s client CPU")
    if report["events_seen"] != report["events_expected"]:
        print("fleet_qemu_qmp: events missing", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
