//! Races of a follower forwarding to its leader that a caller must not
//! observe: an answer meant for a request of a previous run of the node
//! answering a request of this run (a stale read), and a proposal told
//! "not applied" (`Superseded`) although its entry then commits, because
//! another request's late answer named the same index.

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

    /// Waits until `id` leads.
    async fn leads(&self, id: NodeId) {
        for _ in 0..400 {
            let s = self.node(id).handle.status().await.expect("running");
            if s.engine.role == Role::Leader {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {id} did not become leader");
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

/// Node 1 or 2 leads (node 3 never campaigns in time and does not check
/// quorum, so it votes at once). The leader appends a local entry and a
/// forwarded one (A) that reach nobody; the other node then wins, appends
/// its own entries over the same indexes (B, a local write, lands where
/// A is), and only then does the old leader's answer for A arrive. B
/// commits: its caller must not be told it was not applied.
#[tokio::test(start_paused = true)]
async fn a_late_answer_naming_the_same_index_does_not_deny_a_write_that_commits() {
    let cluster = Cluster::start(|cfg| {
        if cfg.id == 3 {
            cfg.election_timeout_ticks = 100_000;
            cfg.check_quorum = false;
        }
    })
    .await;
    let handles: Vec<_> = cluster.nodes.iter().map(|n| &n.handle).collect();
    let old_leader = wait_leader(&handles).await;
    assert_ne!(old_leader, 3);
    let other = 3 - old_leader;
    cluster.follows(other, old_leader).await;
    cluster.follows(3, old_leader).await;
    let old_handle = cluster.node(old_leader).handle.clone();
    old_handle
        .propose(put("w", "0"))
        .await
        .expect("first write");
    tokio::time::sleep(Duration::from_millis(500)).await;

    for kind in ["append_entries", "heartbeat", "forward_propose_response"] {
        cluster.net.hold(kind);
    }
    let x = tokio::spawn(async move { old_handle.propose(put("x", "X")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let forwarder = cluster.node(other).handle.clone();
    let a = tokio::spawn(async move { forwarder.propose(put("a", "A")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    // `other` takes over: a blank entry where X is, B where A is.
    cluster.leads(other).await;
    let new_handle = cluster.node(other).handle.clone();
    let b = tokio::spawn(async move { new_handle.propose(put("b", "B")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.net.release();

    let b = b.await.expect("joined");
    for _ in 0..200 {
        if cluster.node(other).reader.get("b").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cluster.node(other).reader.get("b").map(|(v, _)| v),
        Some(Bytes::from_static(b"B")),
        "B committed and applied"
    );
    assert!(
        !matches!(b, Err(ProposeError::Superseded { .. })),
        "B was applied, yet its caller was told it was not: {b:?}"
    );
    let _ = (x.await, a.await);
}
