#!/usr/bin/env bash
# Fails, naming the crate, when any workspace member (dev-dependencies included) turns on
# `std` for a crate that the freestanding qmp-firmware links. Cargo unifies features across
# the members built in one invocation (`cargo clippy --all-targets` builds the firmware with
# every dev-dependency), so such a leak breaks the firmware with a confusing
# "duplicate lang item `panic_impl`" error; this check says which crate leaked.
set -euo pipefail
closure=$(cargo tree -q -p qmp-firmware -e normal,no-proc-macro --prefix none -f '{p}' | sed 's/ (.*//' | sort -u)
cargo tree -q --workspace -e normal,dev,no-proc-macro --prefix none -f '{p}|{f}' | sed 's/ (\*)$//' | sort -u |
awk -F'|' -v closure="$closure" '
  BEGIN { n = split(closure, c, "\n"); for (i = 1; i <= n; i++) w[c[i]] = 1 }
  { p = $1; sub(/ \(.*/, "", p) }
  (p in w) && ("," $2 "," ~ /,std,/) { print "firmware-features: " p " gets std (" $2 ")"; bad = 1 }
  END { if (!bad) print "firmware-features: no crate the firmware links has std enabled"; exit bad }'
