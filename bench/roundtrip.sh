#!/usr/bin/env bash
# Round trips against a real QEMU: qmp-std, qmp-embedded, QEMU's Python qemu.qmp, the qapi
# crate, and raw socket loops, against one fresh qemu-system-x86_64 -machine none, in one run.
#
#   bash bench/roundtrip.sh [--seconds S] [--rounds N] [--only std,raw,...]
#
# Installs qemu.qmp from PyPI into bench/.venv (once), builds bench/ in release (its own
# workspace and target dir), runs, and prints a Markdown table plus the memory figures.
# Defaults (15 rounds x 0.4 s x 8 clients) take about a minute once built.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=$here/.venv
QEMU_QMP_VERSION=0.0.6

command -v qemu-system-x86_64 >/dev/null || {
    echo "qemu-system-x86_64 not found: apt-get install qemu-system-x86" >&2
    exit 1
}
if ! "$venv/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
    echo "installing qemu.qmp==$QEMU_QMP_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "qemu.qmp==$QEMU_QMP_VERSION"
fi
cargo build --release --quiet --manifest-path "$here/Cargo.toml" --target-dir "$here/target" \
    --bin roundtrip
exec "$here/target/release/roundtrip" --python "$venv/bin/python" \
    --peers "$here/roundtrip_peers.py" "$@"
