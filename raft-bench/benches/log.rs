//! Synced append throughput of `RocksLog` beside a raw RocksDB synced
//! `WriteBatch` of the same entries (same key and value sizes), so the
//! wrapper's overhead reads as a ratio. Batches of 1, 16, 256 and 1024
//! entries of 128 B and 4 KiB; every batch is one fsync.
//!
//! Run: `cargo bench -p raftkv-bench --bench log`. Throughput is reported in
//! bytes of payload; divide by the entry size for entries per second.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_core::{Entry, EntryPayload, LogStorage};
use raft_log::{RocksLog, RocksLogOptions};

fn batches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("log_append_synced");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for size in [128usize, 4096] {
        for batch in [1u64, 16, 256, 1024] {
            let payload = Bytes::from(vec![0xA5u8; size]);
            group.throughput(Throughput::Bytes(batch * size as u64));
            let param = format!("{batch}x{size}B");

            let dir = tempfile::tempdir().expect("tempdir");
            let log =
                RocksLog::open(dir.path().join("db"), RocksLogOptions::default()).expect("open");
            let mut next = 1u64;
            group.bench_with_input(
                BenchmarkId::new("rocks_log", &param),
                &batch,
                |b, &batch| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let entries: Vec<Entry> = (next..next + batch)
                                .map(|i| Entry {
                                    term: 1,
                                    index: i,
                                    payload: EntryPayload::Normal(payload.clone()),
                                })
                                .collect();
                            next += batch;
                            let start = Instant::now();
                            rt.block_on(log.append(entries)).expect("append");
                            total += start.elapsed();
                        }
                        total
                    });
                },
            );
            drop(log);

            let raw_dir = tempfile::tempdir().expect("tempdir");
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            let db = rocksdb::DB::open(&opts, raw_dir.path()).expect("open raw");
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            // The same bytes per entry as a raft-log record (header + ids + tag).
            let value = vec![0xA5u8; size + 22];
            let mut next = 1u64;
            group.bench_with_input(
                BenchmarkId::new("raw_rocksdb", &param),
                &batch,
                |b, &batch| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let start = Instant::now();
                            let mut wb = rocksdb::WriteBatch::default();
                            for i in next..next + batch {
                                wb.put(i.to_be_bytes(), &value);
                            }
                            next += batch;
                            db.write_opt(wb, &wo).expect("write");
                            total += start.elapsed();
                        }
                        total
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, batches);
criterion_main!(benches);
