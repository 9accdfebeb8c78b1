//! Criterion statistics (`Throughput::Bytes`) for the decoders of `benches/decode.rs`, then the
//! same comparison table. Warm-up 1 s and measurement 3 s per benchmark keep the whole run
//! near a minute; criterion's command-line options override them.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};

#[allow(dead_code)]
#[path = "../decoders/mod.rs"]
mod decoders;

use decoders::InFlight;

fn decode(c: &mut Criterion) {
    for corpus in decoders::corpora() {
        decoders::check(&corpus);
        let mut group = c.benchmark_group(format!("decode/{}", corpus.name));
        group.throughput(Throughput::Bytes(corpus.bytes.len() as u64));
        let mut framer = decoders::framer();
        group.bench_function(BenchmarkId::from_parameter("qmp-proto"), |b| {
            b.iter(|| {
                decoders::qmp_proto(
                    &corpus.bytes,
                    &mut framer,
                    &mut InFlight::new(corpus.first_id),
                )
            })
        });
        group.bench_function(BenchmarkId::from_parameter("serde_json-value"), |b| {
            b.iter(|| decoders::serde_value(&corpus.bytes, &mut InFlight::new(corpus.first_id)))
        });
        group.bench_function(
            BenchmarkId::from_parameter("serde_json-typed-rawvalue"),
            |b| {
                b.iter(|| decoders::serde_typed(&corpus.bytes, &mut InFlight::new(corpus.first_id)))
            },
        );
        group.bench_function(BenchmarkId::from_parameter("qmp-proto-framing-only"), |b| {
            b.iter(|| decoders::qmp_proto_frames(&corpus.bytes, &mut framer))
        });
        group.finish();
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    decode(&mut criterion);
    criterion.final_summary();
    // The summary: the same decoders, interleaved, with ratios.
    decoders::compare(9, Duration::from_millis(50));
}
