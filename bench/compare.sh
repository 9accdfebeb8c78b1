#!/usr/bin/env bash
# Old against new, in one run: builds the round-trip bench (bench/roundtrip.sh) at OLD_REV in
# a temporary git worktree and at the working tree, then runs the two binaries in turn,
# PAIRS times each (old, new, old, new, ...), each against its own fresh QEMU, and prints
# every client's "vs raw loop" ratio (the median over a run's rounds of its rate divided by
# the raw socket loop's rate within the same round) for old and new, and the change.
#
#   bash bench/compare.sh OLD_REV [PAIRS] [roundtrip options, e.g. --rounds 8 --only std,raw]
#
# Ratios, not rates, are compared: each is measured against a raw loop running seconds
# apart, so load from elsewhere on the machine cancels out.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
old_rev=${1:?usage: compare.sh OLD_REV [PAIRS] [roundtrip options]}
shift
pairs=${1:-3}
[ $# -gt 0 ] && shift
venv=$here/.venv
bash "$here/roundtrip.sh" --help >/dev/null 2>&1 || true # installs qemu.qmp, builds new

old_tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$old_tree" >/dev/null 2>&1 || true' EXIT
git -C "$root" worktree add --detach -q "$old_tree" "$old_rev"
echo "building the bench at $old_rev" >&2
cargo build --release --quiet --manifest-path "$old_tree/bench/Cargo.toml" \
    --target-dir "$here/target-old" --bin roundtrip
cargo build --release --quiet --manifest-path "$here/Cargo.toml" --target-dir "$here/target" \
    --bin roundtrip

out=$(mktemp -d)
for i in $(seq 1 "$pairs"); do
    for which in old new; do
        bin=$here/target/release/roundtrip
        [ "$which" = old ] && bin=$here/target-old/release/roundtrip
        echo "run $i: $which" >&2
        "$bin" --python "$venv/bin/python" --peers "$here/roundtrip_peers.py" "$@" \
            >"$out/$which-$i.md" 2>/dev/null
    done
done

python3 - "$out" "$pairs" "$old_rev" <<'PY'
import glob, os, re, statistics, sys
out, pairs, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def ratios(path):
    rows = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"\d+\.\d+", cells[2]):
            rows[cells[0]] = float(cells[2])
    return rows
runs = {w: [ratios(f"{out}/{w}-{i}.md") for i in range(1, pairs + 1)] for w in ("old", "new")}
names = [n for n in runs["new"][0] if n in runs["old"][0]]
print(f"vs raw loop, median of {pairs} runs each (old = {rev}, new = working tree)\n")
print("| client | old | new | change |")
print("|---|---:|---:|---:|")
for n in names:
    o = statistics.median(r[n] for r in runs["old"] if n in r)
    w = statistics.median(r[n] for r in runs["new"] if n in r)
    print(f"| {n} | {o:.2f} | {w:.2f} | {100 * (w / o - 1):+.1f}% |")
PY
