//! Decode throughput of qmp-proto against serde_json-based peers, in one run, on streams
//! recorded from QEMU 7.2 (see BENCHMARKS.md at the workspace root).
//!
//! `cargo bench -p qmp-proto --bench decode` prints one table: MB/s for each decoder on each
//! corpus, and qmp-proto's ratios to the peers. For criterion's statistics on the same
//! decoders, see `benches/criterion/`.
//!
//! Options (environment): `QMP_BENCH_ROUNDS` (default 15), `QMP_BENCH_ROUND_MS` (time per
//! decoder per round, default 60).

use std::time::Duration;

#[allow(dead_code)]
mod decoders;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`. Run any other way (`cargo test --benches`, an
    // unoptimised build), only check that the decoders agree and run.
    if !std::env::args().any(|a| a == "--bench") {
        for corpus in &decoders::corpora() {
            decoders::check(corpus);
            for row in &mut decoders::rows() {
                (row.run)(corpus);
            }
        }
        println!("decode: the decoders agree (`cargo bench` for the numbers)");
        return;
    }
    let rounds = env("QMP_BENCH_ROUNDS", 15).max(1) as usize;
    let round = Duration::from_millis(env("QMP_BENCH_ROUND_MS", 60));
    decoders::compare(rounds, round);
}
