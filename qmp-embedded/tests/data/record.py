#!/usr/bin/env python3
"""Records real QEMU QMP sessions, byte for byte, for qmp-embedded's scripted-link tests.

Needs qemu-system-x86_64 on PATH (recorded with Debian's QEMU 7.2.22). Run from anywhere:
    python3 qmp-embedded/tests/data/record.py

Each transcript is a text file in which a line `> COMMAND` is what the client sends (exactly the
compact bytes qmp-embedded writes, with the ids it assigns) and every other line is server output
as received, with its `\r\n`. The first lines, before any `> `, are the greeting. A last line
`<EOF>` means the server closed the connection there.
"""
import os, socket, subprocess, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))


def record(name, commands):
    sock = os.path.join(tempfile.mkdtemp(), "qmp.sock")
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults",
                             "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"])
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        buf = b""

        def read_line():
            nonlocal buf
            while b"\n" not in buf:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise EOFError
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            return line + b"\n"

        out = read_line()  # the greeting
        for cmd in commands:
            # An item is a command, or (command, number of non-event lines it gets back).
            cmd, replies = cmd if isinstance(cmd, tuple) else (cmd, 1)
            out += b"> " + cmd + b"\n"
            s.sendall(cmd)
            while replies > 0:
                line = read_line()
                out += line
                if not line.startswith(b'{"timestamp"'):
                    replies -= 1
        if commands and commands[-1] == b'{"execute":"quit","id":2}':
            s.settimeout(5)
            rest = s.recv(1 << 20)  # QEMU closes the socket after replying to quit
            assert rest == b"", rest
            out += b"<EOF>\n"
        s.close()
    finally:
        qemu.terminate()
        qemu.wait()
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(out)
    print("recorded", name, len(out), "bytes")


record("session.txt", [
    b'{"execute":"qmp_capabilities","id":1}',
    b'{"execute":"query-status","id":2}',
    b'{"execute":"stop","id":3}',
    b'{"execute":"query-status","id":4}',
    b'{"execute":"cont","id":5}',
    b'{"execute":"no-such-command","id":6}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info status"},"id":7}',
    b'{"execute":"system_reset","id":8}',
    b'{"execute":"query-version","id":9}',
])
record("oob.txt", [
    b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}',
    b'{"exec-oob":"query-status","id":2}',
    b'{"exec-oob":"migrate-pause","id":3}',
    b'{"execute":"query-status","id":4}',
])
record("quit.txt", [
    b'{"execute":"qmp_capabilities","id":1}',
    b'{"execute":"quit","id":2}',
])
# A command cut off after 20 bytes (the client timed out writing it), then the resync byte
# `\x01` that qmp-embedded sends before its next command, then that command.
record("resync.txt", [
    b'{"execute":"qmp_capabilities","id":1}',
    (b'{"execute":"query-st' + b'\x01' + b'{"execute":"query-status","id":3}', 2),
])
record("large.txt", [
    b'{"execute":"qmp_capabilities","id":1}',
    b'{"execute":"query-commands","id":2}',
    b'{"execute":"query-status","id":3}',
])
