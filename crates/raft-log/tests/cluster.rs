//! A three-node cluster on `RocksLog` through raft-core's driver: writes
//! survive a leader failover and a restart of every node from its data
//! directory, and all replicas converge to the same data.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raft_core::memory::{KvCommand, KvResponse, MemKv, MemKvReader, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, NodeId, Raft, RaftHandle, Role};
use raft_log::{RocksLog, RocksLogOptions};

type Handle = RaftHandle<KvResponse>;

async fn start(net: &MemNetwork, dir: &Path, id: NodeId) -> (Handle, MemKvReader) {
    let log = RocksLog::open(dir.join(format!("node-{id}")), RocksLogOptions::default())
        .expect("open log");
    let kv = MemKv::new();
    let reader = kv.reader();
    let driver = DriverConfig {
        tick_interval: Duration::from_millis(10),
        ..DriverConfig::default()
    };
    let h = Raft::start(
        Config::new(id),
        driver,
        Membership::new([1, 2, 3]),
        log,
        kv,
        net.transport(id),
    )
    .await
    .expect("start node");
    net.register(&h);
    (h, reader)
}

async fn leader(nodes: &[(Handle, MemKvReader)]) -> usize {
    for _ in 0..1000 {
        for (i, (h, _)) in nodes.iter().enumerate() {
            if h.status()
                .await
                .is_some_and(|s| s.engine.role == Role::Leader)
            {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within 10 s");
}

fn put(i: usize) -> Bytes {
    KvCommand::Put {
        key: format!("k{i}"),
        value: Bytes::from(format!("v{i}")),
    }
    .encode()
}

async fn write_all(h: &Handle, range: std::ops::Range<usize>) {
    let tasks: Vec<_> = range
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { h.propose(put(i)).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("join").expect("write acknowledged");
        assert!(matches!(r, KvResponse::Written { .. }), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_failover_and_full_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = MemNetwork::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&net, dir.path(), id).await);
    }
    let l = leader(&nodes).await;
    write_all(&nodes[l].0, 0..100).await;

    // Fail over: cut the leader off; the others elect a new one and go on.
    net.isolate(nodes[l].0.id());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut l2 = leader(&nodes).await;
    for _ in 0..100 {
        if l2 != l {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        l2 = leader(&nodes).await;
    }
    assert_ne!(l2, l, "a new leader replaces the isolated one");
    write_all(&nodes[l2].0, 100..150).await;
    net.heal();

    // Stop everything and restart every node from its directory.
    for (h, _) in &nodes {
        h.shutdown().await;
    }
    drop(nodes);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&net, dir.path(), id).await);
    }
    let l3 = leader(&nodes).await;
    write_all(&nodes[l3].0, 150..160).await;
    let target = nodes[l3].0.applied_index();
    for (h, reader) in &nodes {
        for _ in 0..500 {
            if h.applied_index() >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(h.applied_index() >= target, "node {} caught up", h.id());
        assert_eq!(
            reader.len(),
            160,
            "node {} holds every acknowledged write",
            h.id()
        );
        assert_eq!(
            reader.get("k123").map(|(v, _)| v),
            Some(Bytes::from_static(b"v123"))
        );
    }
    for (h, _) in &nodes {
        h.shutdown().await;
    }
}
