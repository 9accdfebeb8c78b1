"""Python clients for bench/roundtrip.sh, driven over standard input.

    python roundtrip_peers.py SOCKET QEMU_PID

Reads lines `CLIENT SECONDS` and, for each, connects to the QMP Unix socket, runs a
warm-up, then `query-status` round trips for SECONDS, disconnects, and prints one JSON line:
round trips, elapsed seconds, and this process's CPU time (utime, stime) and QEMU's
(utime + stime) over the timed part, from /proc/PID/stat in clock ticks. The process stays up between runs, so
its start-up is not part of any.

CLIENT is `qemu.qmp` (QEMU's own client, from PyPI: asyncio `QMPClient.execute`, one
command at a time) or `raw` (a plain socket loop that writes one fixed command and reads one
line).
"""

import asyncio
import json
import os
import socket
import sys
import time

WARMUP = 100
BATCH = 32


def cpu_ticks(pid):
    """(utime, stime) of a process, in clock ticks, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


class Meter:
    def __init__(self, qemu_pid):
        self.qemu_pid = qemu_pid

    def start(self):
        self.client0 = cpu_ticks("self")
        self.qemu0 = cpu_ticks(self.qemu_pid)
        self.t0 = time.perf_counter()

    def stop(self, count):
        elapsed = time.perf_counter() - self.t0
        client = cpu_ticks("self")
        qemu = cpu_ticks(self.qemu_pid)
        return {
            "count": count,
            "seconds": elapsed,
            "client_utime": client[0] - self.client0[0],
            "client_stime": client[1] - self.client0[1],
            "qemu_ticks": sum(qemu) - sum(self.qemu0),
        }


async def qemu_qmp(path, meter, seconds):
    from qemu.qmp import QMPClient

    qmp = QMPClient("bench")
    await qmp.connect(path)
    for _ in range(WARMUP):
        await qmp.execute("query-status")
    meter.start()
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(BATCH):
            await qmp.execute("query-status")
        count += BATCH
    result = meter.stop(count)
    await qmp.disconnect()
    return result


def raw(path, meter, seconds):
    command = b'{"execute":"query-status"}'
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    lines = sock.makefile("rb")
    lines.readline()  # greeting
    sock.sendall(b'{"execute":"qmp_capabilities"}')
    lines.readline()
    for _ in range(WARMUP):
        sock.sendall(command)
        lines.readline()
    meter.start()
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(BATCH):
            sock.sendall(command)
            lines.readline()
        count += BATCH
    result = meter.stop(count)
    sock.close()
    return result


def main():
    path, qemu_pid = sys.argv[1:3]
    meter = Meter(int(qemu_pid))
    import qemu.qmp  # noqa: F401  (imported once, before any timing)

    for line in sys.stdin:
        client, seconds = line.split()
        seconds = float(seconds)
        if client == "qemu.qmp":
            result = asyncio.run(qemu_qmp(path, meter, seconds))
        elif client == "raw":
            result = raw(path, meter, seconds)
        else:
            sys.exit(f"unknown client {client!r}")
        # One thread: the process's CPU time is the client's.
        result["threads"] = len(os.listdir("/proc/self/task"))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
