#!/usr/bin/env bash
# Builds the bare-metal guest (examples/qmp-guest) and boots it in QEMU wired to its own VM's
# QMP monitor: COM1 is a client chardev socket connected to this same QEMU's server chardev
# monitor socket, COM2 is the report (printed), and isa-debug-exit ends the VM. Exits 0 when
# every step passed (QEMU's status 1), 1 otherwise, printing QEMU's status.
#
# Usage: bash scripts/guest.sh [KERNEL]
#   KERNEL: a qmp-guest binary already built (CI boots the smallest build,
#   target/small/firmware/qmp-guest, this way); without it, the release build is built and
#   booted.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/ensure-qemu.sh
target=${CARGO_TARGET_DIR:-target}
if [ $# -ge 1 ]; then
    kernel=$1
else
    cargo build --release -p qmp-guest -q
    kernel="$target/release/qmp-guest"
fi
echo "guest: booting $kernel"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
status=0
timeout 60 qemu-system-x86_64 -machine pc -accel tcg -m 32 \
    -display none -nodefaults -no-reboot \
    -chardev "socket,id=mon,path=$dir/qmp.sock,server=on,wait=off" \
    -mon chardev=mon,mode=control \
    -chardev "socket,id=link,path=$dir/qmp.sock" \
    -serial chardev:link \
    -serial "file:$dir/report.txt" \
    -device isa-debug-exit,iobase=0xf4,iosize=4 \
    -kernel "$kernel" || status=$?
cat "$dir/report.txt"
if [ "$status" -eq 1 ]; then
    echo "guest: every step passed (QEMU exit status 1)"
    exit 0
fi
echo "guest: FAILED (QEMU exit status $status: 1 is success, 2N+1 is a failure at step N)" >&2
exit 1
