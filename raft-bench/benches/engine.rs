//! Committed proposals per second of the engine on a 3-node in-process
//! cluster (in-memory storage, function-call network, empty payloads), with
//! 1, 64 and 256 closed-loop proposers. Measures the algorithm's own CPU
//! cost: no fsync, no network, no serialization.
//!
//! Run: `cargo bench -p raftkv-bench --bench engine`.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_bench::engine_cluster::EngineCluster;

fn committed_proposals(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_3_nodes_committed_proposals");
    group.measurement_time(Duration::from_secs(5));
    for proposers in [1usize, 64, 256] {
        let batch = 10_000u64.max(proposers as u64 * 40);
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::from_parameter(proposers),
            &proposers,
            |b, &p| {
                let mut cluster = EngineCluster::new(3);
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        cluster.run(p, batch);
                    }
                    start.elapsed()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, committed_proposals);
criterion_main!(benches);
