//! The driver answers as soon as its inputs allow, not at its next timer
//! tick: every change it waits for (a write made durable, entries applied,
//! a request, a message) wakes its task. On paused tokio time nothing but
//! the tick timer moves the clock, so a wake-up the driver missed shows as
//! a proposal that took a whole tick.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{put, wait_leader, Node};
use raft_core::memory::{MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership};

/// Rounds of 1 to 4 concurrent proposals to the leader of `n` nodes:
/// each round is answered without the clock moving, whatever order the
/// driver took the round's changes in (its log write, the followers'
/// acknowledgements, the applied index).
async fn proposals_are_answered_without_waiting_for_a_tick(n: u64) {
    let tick = Duration::from_millis(200);
    let mut driver = DriverConfig::default();
    driver.tick_interval = tick;
    let net = MemNetwork::new();
    let mut nodes = Vec::new();
    for id in 1..=n {
        let node = Node::start(
            &net,
            Config::new(id),
            driver.clone(),
            Membership::new((1..=n).collect::<Vec<_>>()),
            Arc::new(MemLog::new()),
            MemKv::new(),
        )
        .await;
        nodes.push(node);
    }
    let leader = wait_leader(&nodes.iter().map(|n| &n.handle).collect::<Vec<_>>()).await;
    let node = &nodes[(leader - 1) as usize];
    for round in 0..200 {
        let started = tokio::time::Instant::now();
        let proposals: Vec<_> = (0..1 + round % 4)
            .map(|i| {
                let h = node.handle.clone();
                tokio::spawn(async move { h.propose(put(&format!("k{round}-{i}"), "v")).await })
            })
            .collect();
        for p in proposals {
            p.await.expect("proposer").expect("proposal succeeds");
        }
        let took = started.elapsed();
        assert!(
            took < tick / 2,
            "round {round} took {took:?} of paused time: the driver only saw a change at a tick"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_single_node_answers_proposals_without_waiting_for_a_tick() {
    proposals_are_answered_without_waiting_for_a_tick(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_of_three_answers_proposals_without_waiting_for_a_tick() {
    proposals_are_answered_without_waiting_for_a_tick(3).await;
}
