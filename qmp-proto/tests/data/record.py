#!/usr/bin/env python3
"""Record real QEMU QMP server output, byte for byte, into this folder.

Run from the workspace root:  python3 qmp-proto/tests/data/record.py
Needs qemu-system-x86_64 on PATH (Debian package qemu-system-x86), or its path in $QEMU.
Python 3 standard library only.

Writes session.jsonl, errors.jsonl, oob.jsonl and pretty.jsonl: each file is everything the
server sent on one QMP connection, unmodified (the `\\r\\n` line ends, the pretty-printing and
QEMU's non-JSON `inf` included). It also writes commands.txt, the exact bytes this script sent
on each connection, in order, with how many server messages it read after each step, so that
tests can pair every request with its replies.

The commands sent are fixed (no temporary paths, no clock values: QEMU runs with its working
directory in a fresh temporary folder and every path it is given is relative). Only the event
timestamps differ from one recording to the next.

How replies are read: the server's byte stream is cut into messages by counting `{`/`[` against
`}`/`]` outside JSON strings (never by line: a pretty-printed message spans many lines). Every
step says how many messages (replies, errors and events alike) it must produce; the script reads
exactly that many, checks the last one where a check is given, and at the end of each connection
checks that the server stays quiet (or closes, after `quit`).
"""

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
BASE_ARGS = ["-machine", "none", "-nodefaults", "-display", "none"]
TIMEOUT = 10.0  # seconds to wait for any one expected message
QUIET = 0.3  # seconds of silence that count as "nothing more is coming"


class Framer:
    """Splits a byte stream into top-level JSON values by bracket depth outside strings."""

    def __init__(self):
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.start = None  # offset of the current message's first byte in `data`
        self.data = bytearray()
        self.messages = []  # complete messages, as bytes (without the trailing \r\n)

    def feed(self, chunk):
        for b in chunk:
            self.data.append(b)
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif b == 0x5C:  # backslash
                    self.escape = True
                elif b == 0x22:  # "
                    self.in_string = False
                continue
            if b == 0x22:
                self.in_string = True
            elif b in (0x7B, 0x5B):  # { [
                if self.depth == 0:
                    self.start = len(self.data) - 1
                self.depth += 1
            elif b in (0x7D, 0x5D):  # } ]
                self.depth -= 1
                if self.depth < 0:
                    raise RuntimeError("unbalanced server output: %r" % bytes(self.data[-200:]))
                if self.depth == 0:
                    self.messages.append(bytes(self.data[self.start:]))
                    self.start = None


class Connection:
    """One QEMU process and one client connection to its QMP monitor, with a transcript."""

    def __init__(self, name, qemu_args, socket_name):
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix="qmp-record-")
        self.steps = []  # (action, messages read, bytes sent)
        self.framer = Framer()
        self.seen = 0  # messages already handed to a step
        self.eof = False
        cmd = [QEMU] + BASE_ARGS + qemu_args
        try:
            self.qemu = subprocess.Popen(cmd, cwd=self.tmp, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            sys.exit("record.py: %s not found; install Debian package qemu-system-x86" % QEMU)
        path = os.path.join(self.tmp, socket_name)
        deadline = time.monotonic() + TIMEOUT
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if self.qemu.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("%s: QEMU did not open %s" % (name, path))
                time.sleep(0.02)
        self.read(1, '"QMP"', action="connect")

    def _pump(self, timeout):
        """Read what is available within `timeout` seconds; False if nothing came."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            # After `quit`, QEMU exits without reading the rest of what was sent (here the
            # newline after the command); closing a socket with unread input makes the kernel
            # report ECONNRESET instead of EOF, after everything QEMU wrote has been read.
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.framer.feed(chunk)
        return True

    def read(self, count, want=None, action="read", sent=b""):
        """Read exactly `count` more messages; `want` must occur in the last one."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.framer.messages) < self.seen + count:
            if self.eof:
                raise RuntimeError("%s: EOF while waiting after %r" % (self.name, sent))
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "%s: timed out after %r; got %r"
                    % (self.name, sent, self.framer.messages[self.seen:]))
            self._pump(0.1)
        got = self.framer.messages[self.seen:self.seen + count]
        self.seen += count
        if want is not None and want.encode() not in got[-1]:
            raise RuntimeError("%s: after %r expected %r in %r" % (self.name, sent, want, got[-1]))
        self.steps.append((action, count, sent))
        return got

    def send(self, data, count=1, want=None):
        """Send `data` in one write, then read `count` messages (replies, errors and events)."""
        self.sock.sendall(data)
        return self.read(count, want, action="send", sent=data)

    def check_quiet(self):
        """Nothing beyond what the steps accounted for must arrive (trailing \\r\\n aside)."""
        end = time.monotonic() + QUIET
        while time.monotonic() < end and not self.eof:
            self._pump(max(0.0, end - time.monotonic()))
        extra = self.framer.messages[self.seen:]
        if extra or self.framer.depth != 0:
            raise RuntimeError("%s: unexpected extra output %r" % (self.name, extra))

    def finish(self, expect_exit=False):
        """Check for silence (or EOF and exit after quit), save the transcript, clean up."""
        self.check_quiet()
        if expect_exit:
            deadline = time.monotonic() + TIMEOUT
            while not self.eof and time.monotonic() < deadline:
                self._pump(0.1)
            if not self.eof:
                raise RuntimeError("%s: no EOF after quit" % self.name)
            self.steps.append(("close", 0, b""))
            self.qemu.wait(TIMEOUT)
        self.sock.close()
        if self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait(TIMEOUT)
        shutil.rmtree(self.tmp, ignore_errors=True)
        with open(os.path.join(HERE, self.name), "wb") as f:
            f.write(bytes(self.framer.data))
        print("%-14s %7d bytes, %3d messages" % (self.name, len(self.framer.data), self.seen))
        return self.steps


def qmp_unix(name):
    return Connection(name, ["-qmp", "unix:qmp.sock,server=on,wait=off"], "qmp.sock")


def record_session():
    c = qmp_unix("session.jsonl")
    # Negotiation mode: everything but qmp_capabilities is CommandNotFound (the id is echoed).
    c.send(b'{"execute": "query-status", "id": "before-negotiation"}\n', 1, "Expecting capabilities")
    c.send(b'{"execute": "qmp_capabilities"}\n', 1, '"return": {}')
    c.send(b'{"execute": "query-version", "id": 1}\n', 1, '"id": 1')
    c.send(b'{"execute": "query-status", "id": 2}\n', 1, '"running"')
    c.send(b'{"execute": "query-name", "id": 3}\n', 1, '"id": 3')
    c.send(b'{"execute": "query-kvm", "id": 4}\n', 1, '"id": 4')
    c.send(b'{"execute": "stop", "id": 5}\n', 2, '"id": 5')  # STOP event, then the return
    c.send(b'{"execute": "query-status", "id": 6}\n', 1, '"paused"')
    c.send(b'{"execute": "stop", "id": 7}\n', 1, '"id": 7')  # already stopped: no event
    c.send(b'{"execute": "cont", "id": 8}\n', 2, '"id": 8')  # RESUME event, then the return
    c.send(b'{"execute": "no-such-command", "id": 9}\n', 1, "CommandNotFound")
    c.send(b'{"execute": "device_del", "id": 10}\n', 1, "GenericError")  # missing argument
    c.send(b'{"execute": "qom-get", "arguments": {"path": "/machine", "property": "no-such-property"}, "id": 11}\n',
           1, "GenericError")
    c.send(b'{"execute": "qom-get", "arguments": {"path": "/no/such/path", "property": "type"}, "id": 12}\n',
           1, "DeviceNotFound")
    c.send(b'{"execute": "human-monitor-command", "arguments": {"command-line": "info status"}, "id": 13}\n',
           1, "VM status: running")
    c.send(b'{"execute": "human-monitor-command", "arguments": {"command-line": "no-such-hmp-command"}, "id": 14}\n',
           1, '"id": 14')
    c.send(b'{"execute": "qmp_capabilities", "id": 15}\n', 1, "already complete")
    c.send(b'{"execute": "system_reset", "id": 16}\n', 2, '"id": 16')  # RESET event with data
    # Ids of every JSON type; QEMU echoes them re-encoded, not byte for byte.
    c.send(b'{"execute": "query-name", "id": "a string id"}\n', 1, '"a string id"')
    c.send(b'{"execute": "query-name", "id": {"k": [1, {}], "e": [], "s": "x"}}\n', 1, '"return"')
    c.send(b'{"execute": "query-name", "id": [1, "two", null, true, false, {}]}\n', 1, '"return"')
    c.send(b'{"execute": "query-name", "id": null}\n', 1, '"return"')
    c.send(b'{"execute": "query-name", "id": -42}\n', 1, '"id": -42')
    c.send(b'{"execute": "query-name", "id": 0.1}\n', 1, "0.10000000000000001")
    c.send(b'{"execute": "query-name", "id": 1e400}\n', 1, '"id": inf')
    c.send(b'{"execute": "query-name", "id": -1e400}\n', 1, '"id": -inf')
    c.send(b'{"execute": "query-name", "id": 18446744073709551615}\n', 1, "18446744073709551615")
    c.send(b'{"execute": "query-name", "id": 18446744073709551616}\n', 1, "1.8446744073709552e+19")
    c.send(b'{"execute": "query-name", "id": -9223372036854775808}\n', 1, "-9223372036854775808")
    c.send('{"execute": "query-name", "id": "caf\u00e9 \U0001F600 \\u0000 / \\" \\\\"}\n'.encode(), 1,
           "\\u00E9")
    c.send(b"{'execute': 'query-name', 'id': 'single-quoted'}\n", 1, '"single-quoted"')
    # Two commands in one write, and one command split over two writes.
    c.send(b'{"execute": "query-name", "id": "pair-1"}{"execute": "query-name", "id": "pair-2"}\n', 2,
           '"pair-2"')
    c.send(b'{"execute": "query-na', 0)
    c.send(b'me", "id": "split"}\n', 1, '"split"')
    # quit: SHUTDOWN event, the return, then the server closes the connection and exits.
    c.send(b'{"execute": "quit", "id": "bye"}\n', 2, '"bye"')
    return c.finish(expect_exit=True)


def record_errors():
    c = qmp_unix("errors.jsonl")
    # Each scenario: the bad input, then a \x01 byte (which resyncs QEMU's JSON lexer and itself
    # earns a "stray '\u0001'" error), then a good command whose id marks the scenario's end.
    n = [0]

    def scenario(bad, count):
        n[0] += 1
        c.send(bad, count)
        c.send(b"\x01", 1, "\\u0001")
        end = '"end-%d"' % n[0]
        c.send(b'{"execute": "query-name", "id": %s}\n' % end.encode(), 1, end)

    scenario(b'{"execute": }\n', 1)  # 1: invalid JSON, before negotiation
    c.send(b'{"execute": "qmp_capabilities"}\n', 1, '"return": {}')
    scenario(b'{"execute": }\n', 1)  # 2: invalid JSON
    scenario(b"[1, 2]\n", 1)  # 3: not an object
    scenario(b'"just a string"\n', 1)  # 4: not an object
    scenario(b'{"arguments": {}, "id": 5}\n', 1)  # 5: no execute (the id is echoed)
    scenario(b'{"execute": "query-name", "id": "bad \\q escape"}\n', 1)  # 6: bad escape
    scenario(b'{"execute": "query-name", "id": "\xff\xfe\xc3("}\n', 3)  # 7: invalid UTF-8
    scenario(b'{"execute": "query-name", "id": "\\ud800"}\n', 1)  # 8: lone surrogate
    scenario(b'{"execute": "query-name", "id": "a", "id": "b"}\n', 1)  # 9: duplicate key
    scenario(b'{"execute": "query-name", "id": "\x01"}\n', 2)  # 10: control byte in a string
    scenario(b"}\n", 1)  # 11: stray closing brace
    scenario(b"nul\n", 1)  # 12: bad keyword
    scenario(b'{"execute": "query-name", "arguments": [], "id": 13}\n', 1)  # 13: arguments not an object
    scenario(b'{"execute": "query-name", "unexpected": 1, "id": 14}\n', 1)  # 14: unknown member
    scenario(b'{"execute": 42, "id": 15}\n', 1)  # 15: execute not a string
    scenario(b'{"exec-oob": "query-yank", "id": 16}\n', 1)  # 16: exec-oob without oob enabled
    return c.finish()


def record_oob():
    c = qmp_unix("oob.jsonl")
    os.mkfifo(os.path.join(c.tmp, "fifo"))
    c.send(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\n', 1, '"return": {}')
    c.send(b'{"execute": "query-name"}\n', 1, '"return": {}')  # ids stay optional in 7.2
    # chardev-add of a file backend opens the FIFO for writing, which blocks QEMU's main thread
    # until the script opens the FIFO for reading: in-band commands queue up behind it.
    c.send(b'{"execute": "chardev-add", "arguments": {"id": "blocker", "backend": '
           b'{"type": "file", "data": {"out": "fifo"}}}, "id": "ib-1"}\n', 0)
    c.send(b'{"execute": "query-status", "id": "ib-2"}\n', 0)
    c.send(b'{"execute": "query-name", "id": "ib-3"}\n', 0)
    # Out-of-band commands are run at once on the monitor I/O thread and overtake them.
    c.send(b'{"exec-oob": "query-yank", "id": "oob-1"}\n', 1, '"oob-1"')
    c.send(b'{"exec-oob": "migrate-pause", "id": "oob-2"}\n', 1, '"oob-2"')  # an error
    c.send(b'{"exec-oob": "query-status", "id": "oob-3"}\n', 1, "does not support OOB")
    c.send(b'{"exec-oob": "query-yank"}\n', 1, '"return"')  # no id
    c.send(b'{"execute": "query-version", "id": "ib-4"}\n', 0)
    c.check_quiet()
    fifo = os.open(os.path.join(c.tmp, "fifo"), os.O_RDONLY | os.O_NONBLOCK)
    c.read(4, '"ib-4"', action="open-fifo")  # ib-1 .. ib-4, in order
    os.close(fifo)
    c.send(b'{"exec-oob": "query-yank", "execute": "query-yank", "id": "both"}\n', 1, "clashes")
    c.send(b'{"execute": "query-status", "id": "ib-5"}\n', 1, '"ib-5"')
    return c.finish()


def record_pretty():
    c = Connection("pretty.jsonl", ["-chardev", "socket,id=mon0,path=mon.sock,server=on,wait=off",
                                    "-mon", "chardev=mon0,mode=control,pretty=on"], "mon.sock")
    c.send(b'{"execute": "qmp_capabilities"}\n', 1, '"return"')
    c.send(b'{"execute": "query-version", "id": 1}\n', 1, '"id": 1')
    c.send(b'{"execute": "query-status", "id": 2}\n', 1, '"running"')
    c.send(b'{"execute": "query-name", "id": 3}\n', 1, '"id": 3')  # {\r\n    } empty object
    c.send(b'{"execute": "query-iothreads", "id": 4}\n', 1, '"id": 4')  # [\r\n    ] empty array
    c.send(b'{"execute": "query-chardev", "id": 5}\n', 1, '"id": 5')
    c.send(b'{"execute": "stop", "id": 6}\n', 2, '"id": 6')
    c.send(b'{"execute": "human-monitor-command", "arguments": {"command-line": "info status"}, "id": 7}\n',
           1, "VM status: paused")
    c.send(b'{"execute": "cont", "id": 8}\n', 2, '"id": 8')
    c.send(b'{"execute": "no-such-command", "id": 9}\n', 1, "CommandNotFound")
    c.send(b'{"execute": "device_del", "id": 10}\n', 1, "GenericError")
    c.send(b'{"execute": "query-name", "id": {"k": [1, {}], "e": [], "s": "x \\"}{]["}}\n', 1, '"return"')
    c.send(b'{"execute": "system_reset", "id": 11}\n', 2, '"id": 11')
    c.send(b'{"execute": "quit", "id": 12}\n', 2, '"id": 12')
    return c.finish(expect_exit=True)


def escape(data):
    """Backslash as \\\\, bytes outside 0x20..0x7E as \\xNN, everything else as itself."""
    out = []
    for b in data:
        if b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return "".join(out)


def main():
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(version)
    lines = [
        "# Client side of the recordings made by record.py (%s)." % version,
        "# One line per step: FILE<TAB>ACTION<TAB>MESSAGES<TAB>BYTES",
        "#   ACTION   connect: the client connected (the greeting follows);",
        "#            send: the client wrote BYTES in one write;",
        "#            open-fifo: oob.jsonl only: the FIFO that blocks QEMU's main thread was opened;",
        "#            close: the server closed the connection (seen as EOF or ECONNRESET).",
        "#   MESSAGES how many server messages (replies, errors, events, greeting) the script read",
        "#            from FILE after this step and before the next one. A message is one balanced",
        "#            JSON value; its trailing \\r\\n belongs to it.",
        "#   BYTES    exactly what was sent: a backslash is written \\\\, a byte outside 0x20..0x7E",
        "#            is written \\xNN (two lowercase hex digits), and nothing else is escaped.",
    ]
    for record in (record_session, record_errors, record_oob, record_pretty):
        steps = record()
        name = record.__name__[len("record_"):] + ".jsonl"
        for action, count, sent in steps:
            lines.append("%s\t%s\t%d\t%s" % (name, action, count, escape(sent)))
    with open(os.path.join(HERE, "commands.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
