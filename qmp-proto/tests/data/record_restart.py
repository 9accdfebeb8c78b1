#!/usr/bin/env python3
"""Record what a serial line carries when the QEMU at its far end restarts: restart.jsonl.

Run from the workspace root:  python3 qmp-proto/tests/data/record_restart.py
Needs qemu-system-x86_64 on PATH (Debian package qemu-system-x86), or its path in $QEMU.
Python 3 standard library only.

The line is a pty made by this script: it keeps the master (the client's end, which never
closes) and gives QEMU the slave as a serial chardev
(`-chardev serial,id=ser0,path=/dev/pts/N -mon chardev=ser0,mode=control`). QEMU A greets;
the client negotiates (`qmp_capabilities`, id 1) and runs `query-status` (id 2). Then QEMU A
is killed (SIGKILL) and QEMU B is started on the same slave: it greets on the same line. The
client negotiates again (id 4) and runs `query-status` (id 5). restart.jsonl is everything the
master read, byte for byte, in order; the ids are the ones qmp_proto::Driver gives (id 3 is the
command a client had in flight when B greeted: it was never sent to either QEMU).
"""

import os
import select
import signal
import subprocess
import sys
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
TIMEOUT = 10.0


def main():
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    recorded = bytearray()

    def start():
        try:
            return subprocess.Popen(
                [QEMU, "-machine", "none", "-nodefaults", "-display", "none",
                 "-chardev", "serial,id=ser0,path=" + path, "-mon", "chardev=ser0,mode=control"],
                stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            sys.exit("record_restart.py: %s not found; install qemu-system-x86" % QEMU)

    def read_until(marker):
        """Reads from the master until `marker` and a line end came after what was read."""
        start_at = len(recorded)
        deadline = time.monotonic() + TIMEOUT
        while True:
            tail = bytes(recorded[start_at:])
            at = tail.find(marker)
            if at >= 0 and tail.find(b"\r\n", at) >= 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for %r; got %r" % (marker, tail))
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                recorded.extend(os.read(master, 65536))

    def send(data):
        os.write(master, data)

    a = start()
    read_until(b'"QMP"')
    send(b'{"execute": "qmp_capabilities", "id": 1}')
    read_until(b'"id": 1')
    send(b'{"execute": "query-status", "id": 2}')
    read_until(b'"id": 2')
    a.send_signal(signal.SIGKILL)
    a.wait()
    b = start()
    read_until(b'"QMP"')
    send(b'{"execute": "qmp_capabilities", "id": 4}')
    read_until(b'"id": 4')
    send(b'{"execute": "query-status", "id": 5}')
    read_until(b'"id": 5')
    # Nothing more is coming.
    r, _, _ = select.select([master], [], [], 0.3)
    if r:
        raise RuntimeError("unexpected output: %r" % os.read(master, 65536))
    b.send_signal(signal.SIGKILL)
    b.wait()
    with open(os.path.join(HERE, "restart.jsonl"), "wb") as f:
        f.write(recorded)
    print("restart.jsonl: %d bytes" % len(recorded))


main()
