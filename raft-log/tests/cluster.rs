//! A three-node cluster on `RocksLog` through raft-core's driver: writes
//! survive a leader failover and a restart of every node from its data
//! directory, and all replicas converge to the same data.

use std::path::Path;
use std::time::{Duration, Instant};

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
    let mut driver = DriverConfig::default();
    driver.tick_interval = Duration::from_millis(25);
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

/// The index of a node that reports itself leader, waiting up to 60 s.
async fn leader(nodes: &[(Handle, MemKvReader)]) -> usize {
    let handles: Vec<Handle> = nodes.iter().map(|(h, _)| h.clone()).collect();
    leader_of(&handles).await
}

async fn leader_of(handles: &[Handle]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for (i, h) in handles.iter().enumerate() {
            if h.status()
                .await
                .is_some_and(|s| s.engine.role == Role::Leader)
            {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within 60 s");
}

fn put(i: usize) -> Bytes {
    KvCommand::Put {
        key: format!("k{i}"),
        value: Bytes::from(format!("v{i}")),
    }
    .encode()
}

/// Writes `k{i}=v{i}` for every `i` in `range`, concurrently, each through
/// whichever node leads at the moment. A write refused or lost in a leader
/// change (which a stalled, loaded machine may cause at any time) is sent
/// again: writing the same value twice leaves the same data.
async fn write_all(nodes: &[(Handle, MemKvReader)], range: std::ops::Range<usize>) {
    let handles: Vec<Handle> = nodes.iter().map(|(h, _)| h.clone()).collect();
    let tasks: Vec<_> = range
        .map(|i| {
            let handles = handles.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let l = leader_of(&handles).await;
                    match handles[l].propose(put(i)).await {
                        Ok(r) => return r,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "write {i} not acknowledged: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("join");
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
    write_all(&nodes, 0..100).await;

    // Fail over: cut the leader off; the others elect a new one and go on.
    net.isolate(nodes[l].0.id());
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The isolated leader steps down after an election timeout without a
    // quorum (check-quorum); until then it still reports itself leader.
    let others: Vec<(Handle, MemKvReader)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != l)
        .map(|(_, n)| n.clone())
        .collect();
    // The two others elect a leader among themselves...
    leader(&others).await;
    // ... and the isolated one gives up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes[l]
        .0
        .status()
        .await
        .is_some_and(|s| s.engine.role == Role::Leader)
    {
        assert!(
            Instant::now() < deadline,
            "the isolated leader never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_all(&others, 100..150).await;
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
    write_all(&nodes, 150..160).await;
    let target = nodes
        .iter()
        .map(|(h, _)| h.applied_index())
        .max()
        .expect("three nodes");
    for (h, reader) in &nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while h.applied_index() < target && Instant::now() < deadline {
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
