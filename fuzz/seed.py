#!/usr/bin/env python3
"""Builds fuzz/corpus/<target>/ seed inputs from the recorded QEMU 7.2.22 output in
qmp-proto/tests/data (never committed: corpus/ is in .gitignore).

    python3 fuzz/seed.py            # from anywhere; rewrites fuzz/corpus/*/seed-*

Each target's input format is described at the top of its fuzz_targets/*.rs file; the
seeds put the recorded bytes where that target reads its stream. Seeds are kept under
4 KiB so libFuzzer's default -max_len stays small and runs stay fast.
"""
import hashlib
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "qmp-proto", "tests", "data")
CORPUS = os.path.join(HERE, "corpus")
MAX = 4 * 1024
GREETING = open(os.path.join(DATA, "greeting.jsonl"), "rb").read()


def data(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def pieces(stream, size=MAX):
    """Cuts `stream` into pieces of at most `size` bytes, at line ends where possible."""
    out = []
    while stream:
        if len(stream) <= size:
            out.append(stream)
            break
        cut = stream.rfind(b"\n", 0, size) + 1 or size
        out.append(stream[:cut])
        stream = stream[cut:]
    return out


def messages(stream):
    """One-line messages of a transcript, each without its line end."""
    return [line.rstrip(b"\r") for line in stream.split(b"\n") if line.strip()]


def pretty_messages(stream):
    parts = stream.split(b"\r\n}\r\n")
    return [p + b"\r\n}" for p in parts if p.strip()]


# --- session: operation lists in the byte format `arbitrary` (1.x) derives for
# fuzz_targets/session.rs's `Op` (keep in step with it): each element of the list is
# preceded by a 1 byte (continue), an enum's variant is a little-endian u32 scaled by the
# variant count, integers are little-endian, a bool is a byte (low bit), an Option is a bool
# then the value.
def variant(i, count):
    v = (i * 2**32) // count + 1000
    assert (v * count) >> 32 == i
    return v.to_bytes(4, "little")


OPS = 10
SYNTHS = 8


def feed(n):
    return variant(0, OPS) + n.to_bytes(2, "little")


def read_into(n):
    return variant(1, OPS) + n.to_bytes(2, "little")


def poll(n=0):
    return variant(2, OPS) + bytes([n])


def option_u16(v):
    return b"\x00" if v is None else b"\x01" + v.to_bytes(2, "little")


def negotiate(oob=False, deadline=None, out=100):
    return variant(3, OPS) + bytes([oob]) + option_u16(deadline) + bytes([out])


def execute(name=0, args=0, oob=False, deadline=None, out=100):
    # name: Known(u8); args: the variant index of `Args` with no payload for 0 (None).
    return (variant(4, OPS) + variant(0, 2) + bytes([name]) + variant(args, 6)
            + bytes([oob]) + option_u16(deadline) + bytes([out]))


def abandon(which):
    return variant(5, OPS) + bytes([which])


def forget(which):
    return variant(6, OPS) + bytes([which])


def advance(ms):
    return variant(7, OPS) + ms.to_bytes(2, "little")


def eof():
    return variant(8, OPS)


def inject(synth, *fields):
    return variant(9, OPS) + variant(synth, SYNTHS) + bytes(fields)


def ops(*items):
    return b"".join(b"\x01" + item for item in items)


SCENARIOS = [
    # Greeting, negotiation, commands with deadlines, replies (one too large), a timeout,
    # an abandon, the end of the stream, an abandon and a forget while closing.
    ops(inject(0, 1), feed(400), poll(), negotiate(deadline=50), inject(1, 0), feed(400),
        poll(), execute(0, deadline=100), execute(1, deadline=200), execute(4, 1, deadline=300),
        inject(1, 1), inject(4, 2, 0x00, 0x20), feed(9000), poll(), advance(150), poll(),
        abandon(3), eof(), poll(1), abandon(2), forget(1), poll()),
    # Out-of-band negotiation and exec-oob, replies out of order, truncation, malformed.
    ops(inject(0, 1), read_into(300), poll(), negotiate(oob=True), inject(1, 0), feed(100),
        poll(), execute(2, 0, oob=True), execute(0), execute(3), inject(6, 2, 20),
        inject(5, 1), inject(2, 3), inject(3), inject(7), feed(2000), poll(2), advance(10),
        poll()),
    # Commands before the greeting (refused unless negotiation is not enforced), then the
    # recorded stream.
    ops(execute(0), negotiate(), feed(200), poll(), negotiate(deadline=0), advance(0),
        poll(), execute(5, 1, deadline=0), feed(4000), poll()),
]

def write(target, seeds):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.startswith("seed-"):
            os.remove(os.path.join(directory, name))
    for seed in seeds:
        name = "seed-" + hashlib.sha1(seed).hexdigest()[:16]
        with open(os.path.join(directory, name), "wb") as f:
            f.write(seed)
    print(f"{target}: {len(set(seeds))} seeds")


def main():
    rng = random.Random(7)
    mixed = data("mixed-stream.jsonl")[:3 * MAX]
    transcripts = [data(n) for n in ("session.jsonl", "errors.jsonl", "oob.jsonl", "pretty.jsonl")]
    big = [data("query-commands.jsonl"), data("query-qmp-schema.jsonl")[:MAX]]
    streams = []
    for s in transcripts + [mixed] + big:
        streams.extend(pieces(s))

    one_line = []
    for s in transcripts[:3] + [mixed, data("query-commands.jsonl")]:
        one_line.extend(messages(s))
    one_line.extend(pretty_messages(transcripts[3]))
    one_line = sorted(set(m for m in one_line if len(m) <= MAX))

    # framer: 4 header bytes (buffer size, depth limit, chunking), then the stream.
    headers = [b"\xff\x0f\x00\x10", b"\x00\x01\x00\x85", b"\x3f\x00\x05\x01", b"\x00\x02\x40\xff"]
    write("framer", [h + s for s in streams for h in headers])

    # message: one frame.
    write("message", one_line)

    # json_str: string bodies, as they appear on the wire.
    bodies = set()
    for m in one_line:
        for i, part in enumerate(m.split(b'"')):
            if i % 2 == 1 and part:
                bodies.add(part)
    write("json_str", sorted(bodies) + [b"caf\\u00E9 \\uD83D\\uDE00 \\u0000 / \\\" \\\\"])

    # session: config byte, 2-byte length of the operation bytes, operation bytes, stream.
    seeds = []
    for s in streams:
        for cfg in (0x05, 0x45, 0x02, 0xC4, 0xD0):
            choice = rng.randrange(3)
            if choice == 0:
                op_bytes = rng.choice(SCENARIOS)
            else:
                op_bytes = bytes(rng.randrange(256) for _ in range(rng.choice((0, 32, 128))))
            stream = s if s.startswith(b'{"QMP"') else GREETING + s
            seeds.append(bytes([cfg]) + len(op_bytes).to_bytes(2, "little") + op_bytes + stream)
    for scenario in SCENARIOS:
        for cfg in (0x44, 0xD0, 0x10):
            seeds.append(bytes([cfg]) + len(scenario).to_bytes(2, "little") + scenario)
    write("session", seeds)

    # encode_roundtrip: any bytes drive `arbitrary`; recorded messages give it strings.
    write("encode_roundtrip", one_line[:200])


if __name__ == "__main__":
    main()
