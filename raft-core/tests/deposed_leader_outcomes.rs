//! What the proposers of a deposed leader are told. Its proposals that the
//! new leader also holds (same index, same term) are committed by the new
//! leader and must be answered with their results; only those the new
//! leader's entries overwrite are answered `OutcomeUnknown`. The truncation
//! point splits the two exactly. When a snapshot from the new leader
//! replaces the deposed leader's whole log, none of its proposals is left
//! to be answered from that log: they are all answered `OutcomeUnknown`,
//! those above the snapshot's index too.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{leader_after_first_write, put, wait_applied, wait_leader, Handle, Node};
use raft_core::memory::{MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, NodeId, ProposeError};
use tokio::task::JoinHandle;

fn propose(h: &Handle, key: String) -> JoinHandle<Result<(), ProposeError>> {
    let h = h.clone();
    tokio::spawn(async move { h.propose(put(&key, "x")).await.map(|_| ()) })
}

async fn start(net: &MemNetwork, cfg: impl Fn(NodeId) -> Config) -> Vec<Node> {
    let members: Vec<NodeId> = vec![1, 2, 3];
    let mut driver = DriverConfig::default();
    // Long enough that every answer below comes from the driver, not from
    // the handle's own timeout.
    driver.request_timeout = Duration::from_secs(120);
    let mut nodes = Vec::new();
    for id in members.iter().copied() {
        let node = Node::start(
            net,
            cfg(id),
            driver.clone(),
            Membership::new(members.clone()),
            Arc::new(MemLog::new()),
            MemKv::new(),
        )
        .await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leaders_proposals_the_new_leader_holds_are_applied_and_answered() {
    let net = MemNetwork::new();
    let nodes = start(&net, Config::new).await;
    let (old, old_handle) = leader_after_first_write(&nodes).await;
    let base = old_handle.status().await.expect("status").engine.last_index;
    let (keep, lost) = match old {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };

    // The leader hears nobody and reaches only `keep`: its entries get
    // there, never commit at the leader.
    net.block(old, lost);
    net.block(lost, old);
    net.block(keep, old);
    let held: Vec<_> = (0..3)
        .map(|i| propose(&old_handle, format!("held-{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keep_handle = nodes[(keep - 1) as usize].handle.clone();
    let st = keep_handle.status().await.expect("status");
    assert_eq!(
        st.engine.last_index,
        base + 3,
        "node {keep} holds the 3 entries"
    );
    // Then it reaches nobody: these stay in its log alone.
    net.block(old, keep);
    let overwritten: Vec<_> = (0..2)
        .map(|i| propose(&old_handle, format!("gone-{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = old_handle.status().await.expect("status");
    assert_eq!(st.engine.last_index, base + 5, "the leader appended 5");

    // `keep` (the longer log) is elected and commits the 3 entries with
    // its own, which overwrites the last 2 at the old leader.
    let others: Vec<_> = [keep, lost]
        .iter()
        .map(|id| &nodes[(*id - 1) as usize].handle)
        .collect();
    let new = wait_leader(&others).await;
    assert_eq!(new, keep);
    keep_handle
        .propose(put("k", "w"))
        .await
        .expect("new leader writes");
    let index = keep_handle.applied_index();
    assert!(index > base + 3);
    net.heal();
    wait_applied(&old_handle, old, index, 500).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    for (i, task) in held.into_iter().enumerate() {
        let result = task.await.expect("proposal task");
        assert!(
            result.is_ok(),
            "held-{i} (index {}) was committed by the new leader, yet answered {result:?}",
            base + 1 + i as u64
        );
    }
    for (i, task) in overwritten.into_iter().enumerate() {
        let result = task.await.expect("proposal task");
        match result {
            Err(ProposeError::OutcomeUnknown { index }) => {
                assert_eq!(index, base + 4 + i as u64);
            }
            other => panic!("gone-{i} was overwritten, yet answered {other:?}"),
        }
    }
    let st = old_handle.status().await.expect("status");
    assert_eq!(st.pending_proposals, 0);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_that_replaces_a_deposed_leaders_log_answers_all_its_proposals() {
    let net = MemNetwork::new();
    let nodes = start(&net, |id| {
        let mut c = Config::new(id);
        c.snapshot_threshold_entries = 3;
        c.snapshot_keep_entries = 0;
        c
    })
    .await;
    let (old, old_handle) = leader_after_first_write(&nodes).await;
    let base = old_handle.status().await.expect("status").engine.last_index;

    // Cut off, the leader appends 8 proposals no one else gets.
    net.isolate(old);
    let cut_off: Vec<_> = (0..8)
        .map(|i| propose(&old_handle, format!("cut-off-{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = old_handle.status().await.expect("status");
    assert_eq!(st.engine.last_index, base + 8, "the leader appended 8");

    // The others elect a leader that writes 3 entries (fewer than the 8)
    // and compacts its log under a snapshot.
    let others: Vec<_> = nodes
        .iter()
        .filter(|n| n.handle.id() != old)
        .map(|n| &n.handle)
        .collect();
    let new = wait_leader(&others).await;
    let new_handle = nodes[(new - 1) as usize].handle.clone();
    for i in 0..3 {
        new_handle
            .propose(put(&format!("new-{i}"), "y"))
            .await
            .expect("new leader writes");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = new_handle.status().await.expect("status");
    let snapshot = st.engine.snapshot.expect("the new leader took a snapshot");
    assert!(
        st.engine.last_index < base + 8,
        "{:?}",
        st.engine.last_index
    );

    // The link heals: the old leader installs the snapshot; the cluster
    // then stays idle.
    net.heal();
    wait_applied(&old_handle, old, st.engine.last_index, 500).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let old_st = old_handle.status().await.expect("status");
    assert_eq!(
        old_st.engine.snapshot,
        Some(snapshot),
        "the old leader installed the snapshot"
    );
    assert_eq!(
        old_st.pending_proposals,
        0,
        "proposals left pending after the snapshot replaced the log (snapshot at {}, \
         proposals at {}..={})",
        snapshot.index,
        base + 1,
        base + 8
    );
    for (i, task) in cut_off.into_iter().enumerate() {
        let result = task.await.expect("proposal task");
        match result {
            Err(ProposeError::OutcomeUnknown { index }) => {
                assert_eq!(index, base + 1 + i as u64);
            }
            other => panic!("cut-off-{i} left the log, yet answered {other:?}"),
        }
    }
}
