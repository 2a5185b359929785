//! Snapshot transfer over `raft-net-quic` on loopback: one 64 MiB snapshot
//! per iteration from node 1 to node 2, through the snapshot stream
//! (CRC-32C-checked 256 KiB chunks, mutual TLS) into a `FileSnapshotSink`
//! that writes, fsyncs and renames the file before announcing it; timed
//! until the receiver announces the verified file.
//!
//! Baseline: writing the same 64 MiB to a file and fsyncing it, which the
//! receiver has to do anyway: the transfer cannot beat it.
//!
//! Run with `cargo bench -p raftkv-bench --bench snapshot`.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raft_core::NodeId;
use raft_net_quic::certs::DevCa;
use raft_net_quic::{FileSnapshotSink, NodeTls, QuicConfig, QuicTransport, ReceivedSnapshot};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const SIZE: usize = 64 << 20;

fn identity(ca: &DevCa, id: NodeId) -> NodeTls {
    ca.node_tls(id).expect("node identity")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

struct Pair {
    sender: QuicTransport,
    receiver: QuicTransport,
    received: mpsc::Receiver<ReceivedSnapshot>,
    _dir: tempfile::TempDir,
}

async fn pair(ca: &DevCa) -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = QuicConfig {
        idle_timeout: Duration::from_secs(10),
        keep_alive_interval: Duration::from_secs(1),
        ..QuicConfig::default()
    };
    let (sink, received) = FileSnapshotSink::new(dir.path(), 2).expect("sink");
    let (receiver, _inbound2) = QuicTransport::builder(2, identity(ca, 2))
        .config(cfg.clone())
        .snapshot_sink(Arc::new(sink))
        .bind(loopback())
        .expect("bind");
    let (sender, _inbound1) = QuicTransport::builder(1, identity(ca, 1))
        .config(cfg)
        .bind(loopback())
        .expect("bind");
    sender.add_peer(2, receiver.local_addr().expect("addr"));
    receiver.add_peer(1, sender.local_addr().expect("addr"));
    sender.connect(2).await.expect("connect");
    Pair {
        sender,
        receiver,
        received,
        _dir: dir,
    }
}

fn transfer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = DevCa::generate("bench").expect("CA");
    let data = Bytes::from((0..SIZE).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    let mut p = rt.block_on(pair(&ca));
    let mut group = c.benchmark_group("snapshot_transfer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(SIZE as u64));
    let mut transfer_id = 0u64;
    group.bench_function("quic_64MiB", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    transfer_id += 1;
                    let started = Instant::now();
                    p.sender
                        .stream_snapshot(
                            2,
                            transfer_id,
                            Bytes::from_static(b"bench"),
                            Arc::new(data.clone()),
                        )
                        .await
                        .expect("transfer");
                    let got = p.received.recv().await.expect("announced");
                    total += started.elapsed();
                    assert_eq!(got.bytes, SIZE as u64);
                    let _ = tokio::fs::remove_file(&got.path).await;
                }
                total
            })
        })
    });
    let dir = tempfile::tempdir().expect("temp dir");
    group.bench_function("baseline_write_fsync_64MiB", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let path = dir.path().join(format!("f{i}"));
                    let started = Instant::now();
                    let mut f = tokio::fs::File::create(&path).await.expect("create");
                    for chunk in data.chunks(256 << 10) {
                        f.write_all(chunk).await.expect("write");
                    }
                    f.sync_all().await.expect("fsync");
                    total += started.elapsed();
                    drop(f);
                    let _ = tokio::fs::remove_file(&path).await;
                }
                total
            })
        })
    });
    group.finish();
    rt.block_on(async {
        p.sender.shutdown().await;
        p.receiver.shutdown().await;
    });
}

criterion_group!(benches, transfer);
criterion_main!(benches);
