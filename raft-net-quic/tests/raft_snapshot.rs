//! A Raft cluster over QUIC that compacts its log: a new learner joins
//! after the entries it needs were purged, receives the leader's snapshot
//! over the transport's snapshot stream (through `Transport::send_snapshot`,
//! a `FileSnapshotSink` and `forward_snapshots`), installs it and catches up.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use raft_core::memory::KvResponse;
use raft_core::memory::{KvCommand, MemKv, MemKvReader, MemLog};
use raft_core::{Config, DriverConfig, Membership, MembershipChange, Raft, RaftHandle, Role};
use raft_net_quic::certs::DevCa;
use raft_net_quic::{forward_snapshots, FileSnapshotSink, QuicTransport};

struct Running {
    handle: RaftHandle<KvResponse>,
    transport: QuicTransport,
    reader: MemKvReader,
    addr: std::net::SocketAddr,
}

async fn start(ca: &DevCa, id: u64, bootstrap: Membership, dir: &std::path::Path) -> Running {
    let (sink, received) = FileSnapshotSink::new(dir.join(format!("snap-{id}")), 4).unwrap();
    let cfg = test_config();
    let max_frame = cfg.max_frame_bytes;
    let (transport, mut inbound) = QuicTransport::builder(id, tls(ca, id))
        .config(cfg)
        .snapshot_sink(Arc::new(sink))
        .bind(any_addr())
        .unwrap();
    let addr = transport.local_addr().unwrap();
    let mut config = Config::new(id);
    config.snapshot_threshold_entries = 40;
    config.snapshot_keep_entries = 5;
    let kv = MemKv::new();
    let reader = kv.reader();
    let handle = Raft::start(
        config,
        DriverConfig::default(),
        bootstrap,
        MemLog::new(),
        kv,
        transport.clone(),
    )
    .await
    .unwrap();
    let h = handle.clone();
    tokio::spawn(async move {
        while let Some(m) = inbound.recv().await {
            let _ = h.receive(m);
        }
    });
    tokio::spawn(forward_snapshots(received, handle.clone(), max_frame));
    Running {
        handle,
        transport,
        reader,
        addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_brought_up_by_a_snapshot_over_quic() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let voters = Membership::new([1, 2, 3]);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&ca, id, voters.clone(), dir.path()).await);
    }
    for a in &nodes {
        for b in &nodes {
            if a.handle.id() != b.handle.id() {
                a.transport.add_peer(b.handle.id(), b.addr);
            }
        }
    }
    let leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            for n in &nodes {
                if n.handle
                    .status()
                    .await
                    .is_some_and(|s| s.engine.role == Role::Leader)
                {
                    return n.handle.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no leader within 30 s");
    let value = Bytes::from(vec![7u8; 4096]);
    for i in 0..120 {
        let cmd = KvCommand::Put {
            key: format!("k{i}"),
            value: value.clone(),
        };
        leader.propose(cmd.encode()).await.unwrap();
    }
    let status = leader.status().await.unwrap();
    assert!(
        status.engine.first_index > 1,
        "the leader compacted: {status:#?}"
    );

    // Node 4 starts empty, with no configuration, and is added as a learner.
    let learner = start(&ca, 4, Membership::default(), dir.path()).await;
    for n in &nodes {
        n.transport.add_peer(4, learner.addr);
        learner.transport.add_peer(n.handle.id(), n.addr);
    }
    let m = leader
        .change_membership(MembershipChange::AddLearner(4))
        .await
        .expect("learner added");
    assert!(m.learners().contains(&4));
    let target = leader.applied_index();
    tokio::time::timeout(Duration::from_secs(30), async {
        while learner.handle.applied_index() < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("learner did not catch up to {target}"));
    let snap = learner
        .reader
        .snapshot()
        .expect("the learner installed a snapshot");
    assert!(snap.index > 1);
    assert_eq!(
        learner.reader.get("k0").map(|(v, _)| v),
        Some(value.clone())
    );
    assert_eq!(learner.reader.get("k119").map(|(v, _)| v), Some(value));
    // Issue 16 item 9: once the driver is done with the received file it
    // is deleted. It keeps it as its latest snapshot (to send on) until it
    // takes one of its own: 60 more entries (threshold 40).
    for i in 120..180 {
        let cmd = KvCommand::Put {
            key: format!("k{i}"),
            value: Bytes::from_static(b"more"),
        };
        leader.propose(cmd.encode()).await.unwrap();
    }
    let target = leader.applied_index();
    tokio::time::timeout(Duration::from_secs(30), async {
        while learner.handle.applied_index() < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("learner did not catch up to {target}"));
    let incoming = dir.path().join("snap-4");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = std::fs::read_dir(&incoming)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "received snapshot files left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes.iter().chain([&learner]) {
        n.handle.shutdown().await;
        n.transport.shutdown().await;
    }
}
