#!/usr/bin/env bash
# The main job: a QMP shell. With no ADDRESS it starts a throwaway
# `qemu-system-x86_64 -machine none` on a temporary Unix socket and stops it on exit.
#   bash scripts/run.sh [-p] [-H] [-N] [-v] [ADDRESS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/ensure-qemu.sh"
cd "$here"
cargo build --release -q -p qmp-examples --bin qmp-shell
exec "${CARGO_TARGET_DIR:-$here/target}/release/qmp-shell" "$@"
