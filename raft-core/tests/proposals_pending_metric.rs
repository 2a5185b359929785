//! `raft_proposals_pending` (and the status's `pending_proposals`) count
//! the proposals a node appended and has not answered yet. A leader cut
//! off with proposals in flight steps down; the new leader's entries
//! overwrite them when the link heals. They can then no longer be answered
//! from this node's log: the count must return to 0 on the idle cluster
//! and the proposers be told the outcome is unknown, not left waiting.
//! Its own test binary: the metrics recorder is process-wide.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{leader_after_first_write, put, wait_applied, wait_leader, Node};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use raft_core::memory::{MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, NodeId};

fn gauge(snapshotter: &Snapshotter, name: &str) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| match value {
            DebugValue::Gauge(g) => g.into_inner(),
            other => panic!("{name} is a {other:?}"),
        })
}

#[tokio::test(start_paused = true)]
async fn proposals_overwritten_after_a_leader_change_leave_nothing_pending() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install recorder");

    let net = MemNetwork::new();
    let members: Vec<NodeId> = vec![1, 2, 3];
    let mut nodes = Vec::new();
    for id in members.iter().copied() {
        let node = Node::start(
            &net,
            Config::new(id),
            DriverConfig::default(),
            Membership::new(members.clone()),
            Arc::new(MemLog::new()),
            MemKv::new(),
        )
        .await;
        nodes.push(node);
    }
    let (old, old_handle) = leader_after_first_write(&nodes).await;

    // Cut off, the leader still appends what it is given.
    net.isolate(old);
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let h = old_handle.clone();
            tokio::spawn(async move { h.propose(put(&format!("lost-{i}"), "x")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = old_handle.status().await.expect("status");
    assert_eq!(st.pending_proposals, 5, "the proposals were appended");

    // The others elect a leader, which writes over those indexes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let others: Vec<_> = nodes
        .iter()
        .filter(|n| n.handle.id() != old)
        .map(|n| &n.handle)
        .collect();
    let new = wait_leader(&others).await;
    assert_ne!(new, old);
    let new_handle = &nodes[(new - 1) as usize].handle;
    new_handle
        .propose(put("k", "w"))
        .await
        .expect("new leader writes");
    let index = new_handle.applied_index();

    // The link heals; the old leader follows and takes the new entries.
    net.heal();
    wait_applied(&old_handle, old, index, 500).await;
    // Then nothing happens for a while.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let st = old_handle.status().await.expect("status");
    let gauge_now = gauge(&snapshotter, "raft_proposals_pending");
    eprintln!(
        "after the heal: pending_proposals {}, raft_proposals_pending {gauge_now:?}",
        st.pending_proposals
    );
    assert_eq!(st.pending_proposals, 0, "proposals left pending");
    assert_eq!(gauge_now, Some(0.0), "raft_proposals_pending");
    for task in in_flight {
        let result = task.await.expect("proposal task");
        let err = result.expect_err("an overwritten proposal cannot have succeeded");
        assert!(err.may_have_committed(), "{err:?}");
        eprintln!("overwritten proposal: {err:?}");
    }
}
