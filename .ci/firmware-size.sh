#!/bin/sh
# Print the size of the qmp-firmware binary (or another, named by its file) in one line:
#   qmp-firmware: text 6506 B, rodata 1714 B, data 224 B, bss 0 B (static RAM 224 B)
#
# Usage: .ci/firmware-size.sh [BINARY [MAX_FLASH MAX_STATIC_RAM]]
#   With the two bounds (bytes), it fails when flash (text + rodata + data) or
#   static RAM (data + bss) is not under them: CI holds the smallest bare-metal
#   guest to its budget (48 KiB of flash, 4 KiB of static RAM) this way.
#   BINARY defaults to ${CARGO_TARGET_DIR:-target}/release/qmp-firmware, i.e.
#   run it after `cargo build --release`; pass target/firmware/qmp-firmware
#   after `cargo build --profile firmware -p qmp-firmware`.
#
# Sizes come from the ELF section headers (Python 3 stdlib only), summed by
# section flags rather than names:
#   text   = allocated, executable sections (.text, .init, ...)
#   rodata = allocated, read-only, non-executable sections (.rodata,
#            .eh_frame, ...)
#   data   = allocated, writable sections with contents (.data,
#            .data.rel.ro, .got, .tdata): initialised static RAM
#   bss    = allocated, writable NOBITS sections (.bss, .tbss): zeroed
#            static RAM. lld's .relro_padding (page-alignment padding after
#            RELRO, not program data) is left out.
# A binary with its own `.stack` and `.page_tables` sections (the bare-metal
# qmp-guest: target/release/qmp-guest) gets them reported on their own, outside
# bss and static RAM, after its flash size (text + rodata + data):
#   qmp-guest: text ..., bss 0 B (static RAM 1880 B); flash 47383 B, stack 16384 B, page tables 12288 B
set -eu

bin=${1:-${CARGO_TARGET_DIR:-target}/release/qmp-firmware}
if [ ! -f "$bin" ]; then
    echo "firmware-size: $bin not found (build it with: cargo build --release)" >&2
    exit 1
fi

exec python3 - "$bin" "${2:-}" "${3:-}" <<'PY'
import os
import struct
import sys

path = sys.argv[1]
max_flash = int(sys.argv[2]) if sys.argv[2] else None
max_ram = int(sys.argv[3]) if sys.argv[3] else None
with open(path, "rb") as f:
    elf = f.read()

if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
    sys.exit(f"firmware-size: {path}: not a little-endian ELF64 file")

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHT_NOBITS = 8

shoff, = struct.unpack_from("<Q", elf, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
sections = [
    struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)  # name, type, flags, addr, offset, size
    for i in range(shnum)
]
strtab_offset = sections[shstrndx][4]

def name(sh):
    start = strtab_offset + sh[0]
    return elf[start:elf.index(b"\0", start)].decode()

sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
apart = {".stack": 0, ".page_tables": 0}
for sh in sections:
    _, sh_type, flags, _, _, size = sh
    if not flags & SHF_ALLOC:
        continue
    if flags & SHF_EXECINSTR:
        sizes["text"] += size
    elif not flags & SHF_WRITE:
        sizes["rodata"] += size
    elif sh_type != SHT_NOBITS:
        sizes["data"] += size
    elif name(sh) in apart:
        apart[name(sh)] += size
    elif name(sh) != ".relro_padding":
        sizes["bss"] += size

line = (
    "{name}: text {text} B, rodata {rodata} B, data {data} B, bss {bss} B"
    " (static RAM {ram} B)".format(
        name=os.path.basename(path), ram=sizes["data"] + sizes["bss"], **sizes
    )
)
if any(apart.values()):
    line += "; flash {} B, stack {} B, page tables {} B".format(
        sizes["text"] + sizes["rodata"] + sizes["data"], apart[".stack"], apart[".page_tables"]
    )
print(line)
flash = sizes["text"] + sizes["rodata"] + sizes["data"]
ram = sizes["data"] + sizes["bss"]
over = []
if max_flash is not None and flash >= max_flash:
    over.append(f"flash {flash} B is not under {max_flash} B")
if max_ram is not None and ram >= max_ram:
    over.append(f"static RAM {ram} B is not under {max_ram} B")
if over:
    sys.exit("firmware-size: {}: {}".format(os.path.basename(path), "; ".join(over)))
if max_flash is not None:
    print(f"firmware-size: within budget: {max_flash - flash} B of flash and "
          f"{max_ram - ram if max_ram is not None else 'any'} B of static RAM to spare")
PY
