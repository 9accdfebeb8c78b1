#!/usr/bin/env bash
# Regenerates the typed QMP vocabulary (qmp-qapi) (qmp-qapi/src/generated/) from the
# query-qmp-schema reply recorded from QEMU 7.2 (qmp-proto/tests/data/query-qmp-schema.jsonl),
# then formats it. Deterministic: CI runs it and fails if the checked-in output differs
# (`bash scripts/gen-qapi.sh --check`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/gen_qapi.py
rustfmt --edition 2024 qmp-qapi/src/generated/*.rs
if [ "${1:-}" = "--check" ]; then
    git diff --exit-code --stat -- qmp-qapi/src/generated/ || {
        echo "gen-qapi: qmp-qapi/src/generated/ is not what scripts/gen_qapi.py makes; run bash scripts/gen-qapi.sh and commit" >&2
        exit 1
    }
    untracked=$(git ls-files --others --exclude-standard -- qmp-qapi/src/generated/)
    if [ -n "$untracked" ]; then
        echo "gen-qapi: untracked generated files: $untracked" >&2
        exit 1
    fi
fi
