#!/usr/bin/env bash
# Every check and every test, as CI runs them. Installs QEMU first when it is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/ensure-qemu.sh
target=${CARGO_TARGET_DIR:-target}

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "the generated QMP vocabulary (qmp-qapi/src/generated/) is what scripts/gen-qapi.sh makes"
bash scripts/gen-qapi.sh --check

step "no workspace member turns on std in a crate the freestanding firmware links"
bash .ci/firmware-features.sh

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p qmp-embedded --all-targets --all-features -- -D warnings
cargo clippy -p qmp-std --all-targets --all-features -- -D warnings

step "docs build (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q

step "cargo package (dry run of the four library crates)"
# Packs each library crate as it would be published (licence files, test data) and
# verifies that it builds from its tarball alone; path dependencies between the three
# resolve through a temporary local registry. Nothing is uploaded. --allow-dirty: the
# script also runs on uncommitted work trees.
# Cargo takes registry crates for immutable: what it unpacked (under
# $CARGO_HOME/registry/src/-HASH/) and built from its temporary registry is reused while the
# version stays 0.1.0, so a second run would verify against the first run's code. Drop the
# unpacked copies, and verify in a target dir of its own, emptied first.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/qmp-{proto,qapi,std,embedded}-*
rm -rf "$target/package-check"
CARGO_TARGET_DIR="$target/package-check" \
    cargo package -q --allow-dirty -p qmp-proto -p qmp-embedded -p qmp-qapi -p qmp-std

step "the benchmark programs compile (bench/ and qmp-proto's criterion package are workspaces of their own)"
# They are only run by hand (BENCHMARKS.md), so nothing else would notice when they rot.
CARGO_TARGET_DIR="$target/bench-check" cargo check -q --locked --all-targets --manifest-path bench/Cargo.toml
CARGO_TARGET_DIR="$target/bench-check" cargo check -q --locked --all-targets --manifest-path qmp-proto/benches/criterion/Cargo.toml

step "release build of the whole workspace (includes the freestanding qmp-firmware)"
cargo build --release --workspace -q
step "freestanding no_std check: qmp-firmware links qmp-proto and qmp-embedded with no std, no libc"
file "$target/release/qmp-firmware" | sed 's/, BuildID[^,]*//'
sh .ci/firmware-size.sh "$target/release/qmp-firmware"
# The smallest build: LTO at opt-level "z", and qmp-proto's small scanner. The cfg goes
# through RUSTFLAGS into its own target dir, so it never mixes with the normal builds.
RUSTFLAGS="--cfg qmp_proto_small" CARGO_TARGET_DIR="$target/small" \
    cargo build --profile firmware -p qmp-firmware -q
sh .ci/firmware-size.sh "$target/small/firmware/qmp-firmware"
step "bare-metal guest (examples/qmp-guest): sizes (flash = text + rodata + data; static RAM outside stack and page tables), and one boot"
sh .ci/firmware-size.sh "$target/release/qmp-guest"
RUSTFLAGS="--cfg qmp_proto_small" CARGO_TARGET_DIR="$target/small" \
    cargo build --profile firmware -p qmp-guest -q
# The budget of the bare-metal guest (issue #15): under 48 KiB of flash and 4 KiB of static RAM.
sh .ci/firmware-size.sh "$target/small/firmware/qmp-guest" 49152 4096
# ... and that build, the one under budget, boots and passes every step too.
bash scripts/guest.sh "$target/small/firmware/qmp-guest"
bash scripts/guest.sh

step "tests (unit, property, doc, and end-to-end against a real qemu-system-x86_64)"
cargo test --workspace
step "qmp-proto's tests again with its small scanner (--cfg qmp_proto_small, as the firmware builds it)"
RUSTFLAGS="--cfg qmp_proto_small" CARGO_TARGET_DIR="$target/small" cargo test -q -p qmp-proto --features agent --lib --tests

step "qmp-embedded with every feature (async client, defmt logging through a host logger)"
cargo test -p qmp-embedded --all-features

step "qmp-std with every feature (tokio, tls, tracing)"
cargo test -p qmp-std --all-features --lib --tests
