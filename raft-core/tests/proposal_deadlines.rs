//! Proposals' timeouts on the node's shared deadline timer: a proposal
//! that cannot commit answers `Timeout` exactly `request_timeout` after it
//! was made, and proposals made at different times each time out at their
//! own deadline, however many wait and whichever are answered meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{leader_after_first_write, put, Node};
use raft_core::memory::{KvResponse, MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, ProposeError};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(2);

async fn cluster(net: &MemNetwork) -> Vec<Node> {
    let mut driver = DriverConfig::default();
    driver.request_timeout = TIMEOUT;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let bootstrap = Membership::new([1, 2, 3]);
        let log = Arc::new(MemLog::new());
        nodes.push(
            Node::start(
                net,
                Config::new(id),
                driver.clone(),
                bootstrap,
                log,
                MemKv::new(),
            )
            .await,
        );
    }
    nodes
}

/// A proposal the followers never receive times out after exactly the
/// request timeout, with an unknown outcome.
#[tokio::test(start_paused = true)]
async fn a_proposal_that_cannot_commit_times_out_at_the_request_timeout() {
    let net = MemNetwork::new();
    let nodes = cluster(&net).await;
    let (_, leader) = leader_after_first_write(&nodes).await;
    net.hold("append_entries");
    let started = Instant::now();
    let err = leader.propose(put("a", "1")).await.unwrap_err();
    assert_eq!(err, ProposeError::Timeout);
    assert_eq!(started.elapsed(), TIMEOUT);
}

/// Proposals made every 150 ms, while none can commit, each time out
/// `request_timeout` after its own start, also when proposers made between
/// them stop waiting early; once the followers receive
/// entries again, a new proposal commits and the old ones' deadlines
/// are gone.
#[tokio::test(start_paused = true)]
async fn proposals_made_at_different_times_time_out_at_their_own_deadlines() {
    let net = MemNetwork::new();
    let nodes = cluster(&net).await;
    let (_, leader) = leader_after_first_write(&nodes).await;
    net.hold("append_entries");
    let mut waiting = Vec::new();
    for i in 0..20u32 {
        let h = leader.clone();
        waiting.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = h.propose(put(&format!("k{i}"), "v")).await;
            (i, result, started.elapsed(), started)
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
        if i % 3 == 1 {
            // This proposer stops waiting 150 ms in: its deadline leaves
            // the queue, a hole among the deadlines of those still waiting.
            waiting[i as usize].abort();
        }
    }
    for (n, w) in waiting.into_iter().enumerate() {
        if n % 3 == 1 {
            assert!(w.await.is_err_and(|e| e.is_cancelled()));
            continue;
        }
        let (i, result, took, _) = w.await.expect("proposer");
        assert_eq!(result, Err(ProposeError::Timeout), "proposal {i}");
        assert_eq!(took, TIMEOUT, "proposal {i} timed out after {took:?}");
    }

    net.release();
    let answer = leader.propose(put("after", "1")).await;
    assert!(
        matches!(answer, Ok(KvResponse::Written { .. })),
        "{answer:?}"
    );
}

/// A caller that stops waiting (drops its `propose` future) while its
/// proposal still waits in the node's request queue gave it up: the
/// proposal is never appended, so nothing applies a command nobody waits
/// for.
#[tokio::test(start_paused = true)]
async fn a_proposal_dropped_before_the_driver_took_it_is_never_applied() {
    let net = MemNetwork::new();
    let nodes = cluster(&net).await;
    let (id, leader) = leader_after_first_write(&nodes).await;
    let node = &nodes[id as usize - 1];
    {
        let mut dropped = std::pin::pin!(leader.propose(put("gone", "1")));
        // One poll puts the request in the queue; the engine task has not
        // run since (one thread, and this test does not yield).
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(dropped.as_mut().poll(cx)));
        assert!(first.await.is_pending(), "waits for the driver");
    }
    leader.propose(put("kept", "1")).await.expect("commits");
    assert!(node.reader.get("kept").is_some());
    assert_eq!(
        node.reader.get("gone"),
        None,
        "the dropped proposal was applied"
    );
}
