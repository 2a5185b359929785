//! A follower's driver forwarding client requests to its leader over the
//! transport: a write through a follower is answered from the follower's
//! own apply (even when the entry was applied before the leader's answer
//! arrived), a linearizable read on a follower sees every write completed
//! before it, and a follower that cannot forward says `NotLeader`.

use std::sync::Arc;
use std::time::Duration;

mod common;

use bytes::Bytes;
use common::{put, wait_leader, Node};
use raft_core::memory::{KvResponse, MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, NodeId, ProposeError, ReadConsistency, Role};

struct Cluster {
    net: MemNetwork,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn start(driver: DriverConfig) -> Self {
        let net = MemNetwork::new();
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let bootstrap = Membership::new([1, 2, 3]);
            let log = Arc::new(MemLog::new());
            let cfg = Config::new(id);
            nodes.push(Node::start(&net, cfg, driver.clone(), bootstrap, log, MemKv::new()).await);
        }
        Self { net, nodes }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// The leader and a follower that knows it.
    async fn leader_and_follower(&self) -> (NodeId, NodeId) {
        let handles: Vec<_> = self.nodes.iter().map(|n| &n.handle).collect();
        let leader = wait_leader(&handles).await;
        for _ in 0..100 {
            for id in (1..=3).filter(|id| *id != leader) {
                let s = self.node(id).handle.status().await.expect("running");
                if s.engine.role == Role::Follower && s.engine.leader == Some(leader) {
                    return (leader, id);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no follower learned of leader {leader}");
    }
}

/// A write through a follower is appended by the leader and answered
/// from the follower's own apply: the revision is the entry's index, and a
/// stale read on that follower right after sees the write.
#[tokio::test(start_paused = true)]
async fn a_write_through_a_follower_is_answered_from_its_own_apply() {
    let cluster = Cluster::start(DriverConfig::default()).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let node = cluster.node(follower);
    let answer = node.handle.propose(put("k", "v")).await;
    let Ok(KvResponse::Written { revision }) = answer else {
        panic!("the forwarded write failed: {answer:?}");
    };
    assert_eq!(
        node.reader.get("k"),
        Some((Bytes::from_static(b"v"), revision)),
        "read-your-writes on the follower"
    );
    let s = cluster.node(leader).handle.status().await.unwrap();
    assert!(s.engine.commit >= revision, "committed by the leader");
}

/// The race the follower must survive: its entry is applied here before
/// the leader's answer arrives (held back by the network). The answer
/// still finds the entry's output, kept by the apply task.
#[tokio::test(start_paused = true)]
async fn an_entry_applied_before_the_leaders_answer_still_answers_the_write() {
    let cluster = Cluster::start(DriverConfig::default()).await;
    let (_, follower) = cluster.leader_and_follower().await;
    cluster.net.hold("forward_propose_response");
    let handle = cluster.node(follower).handle.clone();
    let write = tokio::spawn(async move { handle.propose(put("k", "v")).await });
    let reader = cluster.node(follower).reader.clone();
    let mut applied_at = None;
    for _ in 0..100 {
        if let Some((_, rev)) = reader.get("k") {
            applied_at = Some(rev);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied_at = applied_at.expect("the entry is applied on the follower");
    assert!(
        !write.is_finished(),
        "answered before the leader's answer arrived"
    );
    // Later entries applied meanwhile do not push the output out.
    let leader_handle = cluster
        .nodes
        .iter()
        .find(|n| n.handle.id() != follower)
        .map(|n| n.handle.clone())
        .unwrap();
    let _ = leader_handle.propose(put("other", "x")).await;
    cluster.net.release();
    let answer = write.await.expect("joined");
    assert_eq!(
        answer,
        Ok(KvResponse::Written {
            revision: applied_at
        })
    );
}

/// A linearizable read on a follower asks the leader for a read index,
/// waits for its own apply, and sees a write the leader acknowledged
/// before the read started.
#[tokio::test(start_paused = true)]
async fn a_linearizable_read_on_a_follower_sees_a_write_acknowledged_before_it() {
    let cluster = Cluster::start(DriverConfig::default()).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    let Ok(KvResponse::Written { revision }) =
        cluster.node(leader).handle.propose(put("x", "1")).await
    else {
        panic!("write on the leader failed");
    };
    let node = cluster.node(follower);
    for level in [ReadConsistency::Linearizable, ReadConsistency::Lease] {
        let index = node
            .handle
            .read(level)
            .await
            .expect("the follower serves the read");
        assert!(
            index >= revision,
            "{level:?}: read index {index} < write {revision}"
        );
        assert_eq!(
            node.reader.get("x").map(|(v, _)| v),
            Some(Bytes::from_static(b"1"))
        );
    }
}

/// With a transport that cannot carry forwarding (a peer from before
/// it), a follower refuses as before and names the leader, so the caller
/// can reach it another way; nothing was appended.
#[tokio::test(start_paused = true)]
async fn a_follower_that_cannot_forward_refuses_and_names_the_leader() {
    let cluster = Cluster::start(DriverConfig::default()).await;
    let (leader, follower) = cluster.leader_and_follower().await;
    cluster.net.set_forwarding(false);
    let err = cluster
        .node(follower)
        .handle
        .propose(put("a", "b"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProposeError::NotLeader {
            leader: Some(leader)
        }
    );
    assert!(!err.may_have_committed());
}

/// A forwarded write whose answer never comes has an unknown outcome.
#[tokio::test(start_paused = true)]
async fn a_forwarded_write_without_an_answer_times_out_as_unknown() {
    let mut driver = DriverConfig::default();
    driver.request_timeout = Duration::from_secs(2);
    let cluster = Cluster::start(driver).await;
    let (_, follower) = cluster.leader_and_follower().await;
    cluster.net.hold("forward_propose");
    let err = cluster
        .node(follower)
        .handle
        .propose(put("a", "b"))
        .await
        .unwrap_err();
    assert_eq!(err, ProposeError::Timeout);
    assert!(err.may_have_committed());
}
