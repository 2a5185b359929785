//! `raft_leader_changes_total` counts each new leader a node learns of
//! once: neither a node's start nor the moment between two leaders (no
//! leader known while it campaigns) counts, so that the alert
//! RaftFrequentLeaderChanges (`increase(...[15m]) > 3`,
//! deploy/prometheus/rules.yml) does not fire on a routine rolling restart.
//! Its own test binary: the metrics recorder is process-wide.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use raft_core::testing::driver_cluster::DriverCluster;

fn leader_changes(snapshotter: &Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "raft_leader_changes_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(c) => c,
            other => panic!("raft_leader_changes_total is a {other:?}"),
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn each_node_counts_one_change_per_new_leader() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install recorder");

    // Three nodes start and elect their first leader: no change yet.
    let cluster = DriverCluster::start().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        leader_changes(&snapshotter),
        0,
        "the first leader a node learns of after its start is no change"
    );

    // One transfer: every node (the three share the recorder) learns of
    // one new leader, once.
    let leader = cluster.leader().await;
    let status = leader.status().await.expect("leader status");
    let target = status
        .engine
        .membership
        .voters()
        .iter()
        .copied()
        .find(|id| *id != status.engine.id)
        .expect("a follower");
    let new = leader
        .transfer_leader(Some(target))
        .await
        .expect("transfer");
    assert_eq!(new, target);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        leader_changes(&snapshotter),
        3,
        "one change per node for one new leader"
    );
    cluster.shutdown().await;
}
