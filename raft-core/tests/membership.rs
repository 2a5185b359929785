//! End-to-end tests of membership changes and snapshots through the tokio
//! driver, over the in-memory log, state machine and network (paused tokio
//! time): the log is compacted by the snapshot policy, a restarted node
//! resumes from its snapshot, a new learner is brought up by a snapshot and
//! promoted, the leader removes itself, and bad changes are refused.

use std::sync::Arc;
use std::time::Duration;

mod common;

use bytes::Bytes;
use common::{put, wait_applied, wait_leader, Node};
use raft_core::driver::MembershipError;
use raft_core::memory::{KvResponse, MemKv, MemLog, MemNetwork};
use raft_core::{
    ChangeError, Config, DriverConfig, LogStorage, Membership, MembershipChange, NodeId, Role,
};

struct Cluster {
    net: MemNetwork,
    nodes: std::collections::BTreeMap<NodeId, Node>,
}

fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.snapshot_threshold_entries = 50;
    c.snapshot_keep_entries = 10;
    c.max_promotion_lag_entries = 20;
    c
}

impl Cluster {
    async fn start(voters: &[NodeId]) -> Self {
        let mut c = Cluster {
            net: MemNetwork::new(),
            nodes: Default::default(),
        };
        for &id in voters {
            let node = c
                .start_node(
                    id,
                    Membership::new(voters.iter().copied()),
                    Arc::new(MemLog::new()),
                    MemKv::new(),
                )
                .await;
            c.nodes.insert(id, node);
        }
        c
    }

    async fn start_node(
        &self,
        id: NodeId,
        bootstrap: Membership,
        log: Arc<MemLog>,
        kv: MemKv,
    ) -> Node {
        let driver = DriverConfig::default();
        Node::start(&self.net, config(id), driver, bootstrap, log, kv).await
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    async fn leader(&self) -> NodeId {
        let handles: Vec<_> = self.nodes.values().map(|n| &n.handle).collect();
        wait_leader(&handles).await
    }

    async fn wait_applied(&self, id: NodeId, index: u64) {
        wait_applied(&self.node(id).handle, id, index, 1000).await;
    }

    async fn write_many(&self, leader: NodeId, from: usize, n: usize) -> u64 {
        let h = &self.node(leader).handle;
        let mut last = 0;
        for i in from..from + n {
            match h.propose(put(&format!("k{i}"), &format!("v{i}"))).await {
                Ok(KvResponse::Written { revision }) => last = revision,
                other => panic!("write {i} failed: {other:?}"),
            }
        }
        last
    }
}

#[tokio::test(start_paused = true)]
async fn the_log_is_compacted_and_a_restarted_node_resumes_from_its_snapshot() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let last = cluster.write_many(leader, 0, 120).await;
    for id in 1..=3 {
        cluster.wait_applied(id, last).await;
    }
    // Every node took a snapshot by itself and purged its log below it,
    // keeping `snapshot_keep_entries` entries.
    for id in 1..=3 {
        let node = cluster.node(id);
        let snap = node.reader.snapshot().expect("a snapshot was taken");
        assert!(snap.index >= 50, "node {id}: snapshot at {snap}");
        let stored = node.log.stored_state().await.expect("readable");
        let meta = stored.snapshot.expect("the log recorded the snapshot");
        assert!(meta.last_log_id.index >= 50);
        assert!(
            stored.purged.index >= meta.last_log_id.index - 10 && stored.purged.index > 0,
            "node {id}: purged to {} with the snapshot at {}",
            stored.purged.index,
            meta.last_log_id.index
        );
    }
    // Restart a follower on its own storage: it resumes from the snapshot
    // and the kept entries, and catches up with new writes.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let old = cluster.nodes.remove(&follower).expect("running");
    old.handle.shutdown().await;
    cluster.net.unregister(follower);
    let more = cluster.write_many(leader, 120, 30).await;
    let node = cluster
        .start_node(
            follower,
            Membership::new([1, 2, 3]),
            old.log.clone(),
            MemKv::reopen(&old.reader),
        )
        .await;
    cluster.nodes.insert(follower, node);
    cluster.wait_applied(follower, more).await;
    let r = cluster.node(follower).reader.clone();
    for i in 0..150 {
        let (v, _) = r.get(&format!("k{i}")).expect("every write is there");
        assert_eq!(v, Bytes::from(format!("v{i}")));
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_learner_is_brought_up_by_a_snapshot_then_promoted() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let last = cluster.write_many(leader, 0, 150).await;
    cluster.wait_applied(leader, last).await;
    // The leader's log no longer starts at 1: a new node needs a snapshot.
    let status = cluster.node(leader).handle.status().await.expect("running");
    assert!(status.engine.first_index > 1, "{status:#?}");

    // A brand-new node with no configuration waits to be added.
    let node = cluster
        .start_node(
            4,
            Membership::default(),
            Arc::new(MemLog::new()),
            MemKv::new(),
        )
        .await;
    cluster.nodes.insert(4, node);
    // Promoting a node that is not a member is refused.
    let err = cluster
        .node(leader)
        .handle
        .change_membership(MembershipChange::Promote(4))
        .await
        .expect_err("not a member yet");
    assert_eq!(err, MembershipError::Rejected(ChangeError::UnknownNode(4)));

    let m = cluster
        .node(leader)
        .handle
        .change_membership(MembershipChange::AddLearner(4))
        .await
        .expect("learner added");
    assert!(m.learners().contains(&4) && !m.is_voter(4), "{m:?}");
    let now = cluster.node(leader).handle.applied_index();
    cluster.wait_applied(4, now).await;
    let r4 = cluster.node(4).reader.clone();
    assert!(r4.snapshot().is_some(), "the learner installed a snapshot");
    assert_eq!(r4.get("k0").map(|(v, _)| v), Some(Bytes::from("v0")));

    let m = cluster
        .node(leader)
        .handle
        .change_membership(MembershipChange::Promote(4))
        .await
        .expect("caught-up learner promoted");
    assert!(
        m.is_voter(4) && !m.is_joint() && m.voters().len() == 4,
        "{m:?}"
    );
    let last = cluster.write_many(leader, 150, 10).await;
    for id in 1..=4 {
        cluster.wait_applied(id, last).await;
        let s = cluster.node(id).handle.status().await.expect("running");
        assert_eq!(
            s.engine.membership, m,
            "node {id} has the new configuration"
        );
    }
    assert_eq!(r4.get("k159").map(|(v, _)| v), Some(Bytes::from("v159")));
}

#[tokio::test(start_paused = true)]
async fn the_leader_removes_itself_and_a_new_leader_takes_over() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    cluster.write_many(leader, 0, 5).await;
    let m = cluster
        .node(leader)
        .handle
        .change_membership(MembershipChange::Remove(leader))
        .await
        .expect("leader removed");
    assert!(!m.contains(leader) && m.voters().len() == 2, "{m:?}");
    // The old leader stepped down; one of the others leads and takes writes.
    let mut new_leader = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for id in (1..=3).filter(|id| *id != leader) {
            let s = cluster.node(id).handle.status().await.expect("running");
            if s.engine.role == Role::Leader {
                new_leader = Some(id);
            }
        }
        if new_leader.is_some() {
            break;
        }
    }
    let new_leader = new_leader.expect("a remaining voter leads");
    let old = cluster.node(leader).handle.status().await.expect("running");
    assert_ne!(old.engine.role, Role::Leader);
    let last = cluster.write_many(new_leader, 5, 5).await;
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.wait_applied(id, last).await;
    }
    // The removed node does not disrupt: after several election timeouts
    // the leader is unchanged and the term did not move.
    let before = cluster
        .node(new_leader)
        .handle
        .status()
        .await
        .expect("running");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = cluster
        .node(new_leader)
        .handle
        .status()
        .await
        .expect("running");
    assert_eq!(after.engine.role, Role::Leader);
    assert_eq!(
        after.engine.term, before.engine.term,
        "the removed node raised the term"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_changes_are_refused_and_change_nothing() {
    let cluster = Cluster::start(&[1]).await;
    let leader = cluster.leader().await;
    cluster.write_many(leader, 0, 3).await;
    let h = &cluster.node(leader).handle;
    let before = h.status().await.expect("running").engine.membership;
    for (change, expected) in [
        (MembershipChange::Remove(1), ChangeError::NoVoters),
        (MembershipChange::Demote(1), ChangeError::NoVoters),
        (MembershipChange::Remove(9), ChangeError::UnknownNode(9)),
        (MembershipChange::Promote(9), ChangeError::UnknownNode(9)),
        (
            MembershipChange::AddLearner(1),
            ChangeError::AlreadyMember(1, "voter"),
        ),
        (MembershipChange::AddLearner(0), ChangeError::InvalidId),
    ] {
        let err = h
            .change_membership(change.clone())
            .await
            .expect_err("refused");
        assert_eq!(err, MembershipError::Rejected(expected), "{change:?}");
    }
    // A learner that never answered is too far behind to be promoted.
    h.change_membership(MembershipChange::AddLearner(7))
        .await
        .expect("learner added (it does not need to be up)");
    cluster.write_many(leader, 3, 30).await;
    let err = h
        .change_membership(MembershipChange::Promote(7))
        .await
        .expect_err("lagging");
    assert!(
        matches!(
            err,
            MembershipError::Rejected(ChangeError::Lagging { id: 7, max: 20, .. })
        ),
        "{err:?}"
    );
    let after = h.status().await.expect("running").engine.membership;
    assert_eq!(after, Membership::with_learners([1], [7]));
    assert_ne!(before, after);
}
