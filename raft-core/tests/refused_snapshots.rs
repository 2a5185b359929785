//! A snapshot a transport hands to a node that the node does not install
//! (it already holds everything the snapshot covers, or it comes from an
//! older term) is let go at once: a transport that keeps the data in a file
//! deletes the file when the node drops it, so a refused snapshot kept
//! alive would leave a file on disk until the next snapshot arrived.

use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use common::{leader_after_first_write, Node};
use raft_core::memory::{MemKv, MemLog, MemNetwork};
use raft_core::{
    Config, DriverConfig, LogId, Membership, Message, MessageBody, SnapshotData, SnapshotMeta,
    SnapshotSource,
};

/// Snapshot data held only through the node: the test keeps a `Weak`.
struct Data;

#[async_trait]
impl SnapshotSource for Data {
    fn len(&self) -> u64 {
        0
    }

    async fn read_at(&self, _offset: u64, _max: usize) -> io::Result<Bytes> {
        Ok(Bytes::new())
    }
}

async fn cluster() -> Vec<Node> {
    let net = MemNetwork::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(
            Node::start(
                &net,
                Config::new(id),
                DriverConfig::default(),
                Membership::new([1, 2, 3]),
                Arc::new(MemLog::new()),
                MemKv::new(),
            )
            .await,
        );
    }
    nodes
}

/// Hands `to` an `InstallSnapshot` from `from` at `term` covering the log up
/// to `index`, and gives back a `Weak` to its data.
fn offer(nodes: &[Node], from: u64, to: u64, term: u64, index: u64) -> Weak<dyn SnapshotSource> {
    let data: SnapshotData = Arc::new(Data);
    let weak = Arc::downgrade(&data);
    let header = Message {
        from,
        to,
        term,
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                last_log_id: LogId { term, index },
                membership: Membership::new([1, 2, 3]),
            },
        },
    };
    nodes[(to - 1) as usize]
        .handle
        .receive_snapshot(header, data)
        .expect("the node takes the offer");
    weak
}

async fn assert_released(weak: &Weak<dyn SnapshotSource>, what: &str) {
    for _ in 0..100 {
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the node still holds the data of {what} after 1 s");
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_the_follower_already_holds_is_let_go() {
    let nodes = cluster().await;
    let (leader, handle) = leader_after_first_write(&nodes).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let term = handle.status().await.unwrap().engine.term;
    common::wait_applied(&nodes[(follower - 1) as usize].handle, follower, 1, 500).await;
    // A copy the leader sent again after the follower caught up (its first
    // send's acknowledgement was slow): index 1 is committed there.
    let weak = offer(&nodes, leader, follower, term, 1);
    assert_released(&weak, "a snapshot below the commit index").await;
    for n in &nodes {
        n.handle.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_from_an_older_term_is_let_go() {
    let nodes = cluster().await;
    let (first, handle) = leader_after_first_write(&nodes).await;
    // A handover starts a newer term.
    let leader = handle
        .transfer_leader(None)
        .await
        .expect("leadership moves");
    let term = nodes[(leader - 1) as usize]
        .handle
        .status()
        .await
        .unwrap()
        .engine
        .term;
    assert!(term >= 2, "the handover raised the term (got {term})");
    let follower = (1..=3).find(|id| *id != leader && *id != first).unwrap();
    // From a deposed leader of an earlier term, covering more than the
    // follower holds: refused for its term.
    let weak = offer(&nodes, first, follower, term - 1, 1_000);
    assert_released(&weak, "a snapshot of an older term").await;
    for n in &nodes {
        n.handle.shutdown().await;
    }
}
