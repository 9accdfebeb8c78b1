#!/usr/bin/env python3
"""Records what the real QEMU guest agent writes, byte for byte, for the dialect's tests.

Run:  python3 qmp-proto/tests/data/qga/record.py
(needs `qemu-ga`, Debian package qemu-guest-agent; recorded with 7.2.22). Each recording is
the agent's whole output for the input written beside it as NAME.in; NAME.out is the output.
"""
import os, socket, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> the bytes a client writes (in one go), then waits for the agent to go quiet.
SESSIONS = {
    # A clean connection: the sync (0xFF first), then commands with ids.
    "sync": b'\xff{"execute":"guest-sync-delimited","arguments":{"id":4242424242}}'
            b'{"execute":"guest-ping","id":1}'
            b'{"execute":"guest-get-host-name","id":2}'
            b'{"execute":"nope","id":3}',
    # A dirty channel: a previous client's command whose reply is unread, a stale sync of
    # its own, half a command; then the new client's 0xFF and sync, and a command.
    "dirty": b'{"execute":"guest-get-osinfo","id":1}'
             b'\xff{"execute":"guest-sync-delimited","arguments":{"id":77}}'
             b'{"execute":"guest-info","id":2}'
             b'{"execute":"guest-ping","argu'
             b'\xff{"execute":"guest-sync-delimited","arguments":{"id":987654321}}'
             b'{"execute":"guest-ping","id":1}',
    # guest-sync (no sentinel) and an input error without an id.
    "plain": b'{"execute":"guest-sync","arguments":{"id":5}}'
             b'garbage\x01'
             b'{"execute":"guest-get-time","id":"t"}',
}


def main():
    tmp = tempfile.mkdtemp()
    sock = os.path.join(tmp, "qga.sock")
    state = os.path.join(tmp, "state")
    os.mkdir(state)
    agent = subprocess.Popen(["qemu-ga", "-m", "unix-listen", "-p", sock, "-t", state,
                              "-f", os.path.join(tmp, "pid")], stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        for name, data in SESSIONS.items():
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall(data)
            s.settimeout(1.0)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                out += chunk
            s.close()
            with open(os.path.join(HERE, name + ".in"), "wb") as f:
                f.write(data)
            with open(os.path.join(HERE, name + ".out"), "wb") as f:
                f.write(out)
            print(name, len(out), "bytes", file=sys.stderr)
    finally:
        agent.terminate()
        agent.wait()


if __name__ == "__main__":
    main()
