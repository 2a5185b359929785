//! Committed proposals per second through the whole in-memory stack: three
//! `Raft<MemLog, MemKv, MemNetwork>` nodes on a tokio runtime with 2 worker
//! threads, closed-loop clients each awaiting `RaftHandle::propose` of a
//! `MemKv` put of an 8-byte value (under a key of its own) on the leader,
//! at 1, 64, 256 and 1,024 clients. Every
//! part of the driver a deployment runs is on the path (request queue,
//! engine task, group commit, network task, apply task, the answer); the
//! engine benchmark (`--bench engine`) is the algorithm alone. For
//! latency percentiles, run `raft-bench driver`.
//!
//! Run: `cargo bench -p raftkv-bench --bench driver`.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_bench::driver_cluster::DriverCluster;

fn committed_proposals(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let payload = Bytes::from_static(&[7u8; 8]);
    let mut group = c.benchmark_group("driver_3_nodes_committed_proposals");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(10);
    for clients in [1usize, 64, 256, 1024] {
        let batch = 2_000u64.max(clients as u64 * 20);
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::from_parameter(clients), &clients, |b, &n| {
            let cluster = rt.block_on(DriverCluster::start());
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(cluster.run(n, batch, payload.clone())).elapsed;
                }
                total
            });
            rt.block_on(cluster.shutdown());
        });
    }
    group.finish();
}

criterion_group!(benches, committed_proposals);
criterion_main!(benches);
