//! Races of a follower forwarding to its leader that a caller must not
//! observe: an answer meant for a request of a previous run of the node
//! answering a request of this run (a stale read).

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{put, wait_leader, Node};
use raft_core::memory::{KvResponse, MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, NodeId, ReadConsistency, Role};

struct Cluster {
    net: MemNetwork,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Three nodes; `tweak` adjusts each node's configuration.
    async fn start(tweak: impl Fn(&mut Config)) -> Self {
        let net = MemNetwork::new();
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let mut cfg = Config::new(id);
            tweak(&mut cfg);
            let log = Arc::new(MemLog::new());
            let bootstrap = Membership::new([1, 2, 3]);
            let driver = DriverConfig::default();
            nodes.push(Node::start(&net, cfg, driver, bootstrap, log, MemKv::new()).await);
        }
        Self { net, nodes }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Waits until `id` is a follower of `leader`.
    async fn follows(&self, id: NodeId, leader: NodeId) {
        for _ in 0..200 {
            let s = self.node(id).handle.status().await.expect("running");
            if s.engine.role == Role::Follower && s.engine.leader == Some(leader) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {id} did not learn of leader {leader}");
    }
}

/// A follower restarts while the leader's answer to one of its reads is
/// on its way. A read on the restarted follower, started after a write
/// was acknowledged, must see that write: the old answer (an older read
/// index) must not be taken for the new read's.
#[tokio::test(start_paused = true)]
async fn an_answer_to_a_read_of_a_previous_run_does_not_answer_a_read_of_this_run() {
    let mut cluster = Cluster::start(|_| {}).await;
    let handles: Vec<_> = cluster.nodes.iter().map(|n| &n.handle).collect();
    let leader = wait_leader(&handles).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.follows(follower, leader).await;
    let leader_handle = cluster.node(leader).handle.clone();
    leader_handle.propose(put("x", "1")).await.expect("write 1");

    // A read whose answer is held back; then the follower restarts.
    cluster.net.hold("read_index_response");
    let old = cluster.node(follower).handle.clone();
    let old_read = tokio::spawn(async move { old.read(ReadConsistency::Linearizable).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node = &cluster.nodes[(follower - 1) as usize];
    node.handle.shutdown().await;
    let _ = old_read.await;
    cluster.net.unregister(follower);
    let log = node.log.clone();
    let restarted = Node::start(
        &cluster.net,
        Config::new(follower),
        DriverConfig::default(),
        Membership::new([1, 2, 3]),
        log,
        MemKv::new(),
    )
    .await;
    cluster.nodes[(follower - 1) as usize] = restarted;
    cluster.follows(follower, leader).await;

    // A write acknowledged, then a read on the restarted follower.
    let Ok(KvResponse::Written { revision }) = leader_handle.propose(put("x", "2")).await else {
        panic!("write 2 failed");
    };
    let new = cluster.node(follower).handle.clone();
    let new_read = tokio::spawn(async move { new.read(ReadConsistency::Linearizable).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.net.release();
    let index = new_read.await.expect("joined").expect("the read is served");
    assert!(
        index >= revision,
        "read index {index} misses the write acknowledged at {revision} before the read"
    );
}
