//! An in-process cluster of [`Engine`]s with in-memory storage and a
//! function-call network: the fastest possible environment for the engine,
//! so a benchmark on it measures the algorithm's own cost.
//!
//! Storage writes complete immediately (after the `Ready` that asked for
//! them, in order), messages are delivered in FIFO order on the next pump,
//! and committed entries are applied at once. Proposers are closed-loop: each
//! keeps one proposal outstanding on the leader and proposes again as soon as
//! the leader applies it.

use std::collections::VecDeque;

use bytes::Bytes;
use raft_core::engine::{Engine, InitialState, Role};
use raft_core::{Config, Entry, Membership, Message, NodeId};

/// One node: its engine and what it has applied.
#[derive(Debug)]
struct Node {
    engine: Engine,
    /// Number of entries applied (the data is discarded).
    applied: u64,
    /// The durable log; kept so the cost of storing entries is paid.
    log: Vec<Entry>,
}

/// A cluster of engines wired by function calls.
#[derive(Debug)]
pub struct EngineCluster {
    nodes: Vec<Node>,
    queue: VecDeque<Message>,
    leader: NodeId,
    /// Proposals appended on the leader and not yet applied there.
    outstanding: usize,
    /// Normal entries applied on the leader so far.
    committed: u64,
}

impl EngineCluster {
    /// Builds a cluster of `voters` nodes and runs it until node 1 leads.
    ///
    /// # Panics
    ///
    /// If no leader emerges (a bug in the engine).
    pub fn new(voters: u64) -> Self {
        let membership = Membership::new(1..=voters);
        let nodes = (1..=voters)
            .map(|id| {
                let cfg = Config {
                    max_uncommitted_entries: 1 << 20,
                    ..Config::new(id)
                };
                let engine = Engine::new(cfg, InitialState::bootstrap(membership.clone()))
                    .expect("default configuration is valid");
                Node {
                    engine,
                    applied: 0,
                    log: Vec::new(),
                }
            })
            .collect();
        let mut cluster = Self {
            nodes,
            queue: VecDeque::new(),
            leader: 1,
            outstanding: 0,
            committed: 0,
        };
        for _ in 0..1000 {
            if cluster.nodes[0].engine.role() == Role::Leader {
                break;
            }
            cluster.nodes[0].engine.tick();
            cluster.pump();
        }
        assert_eq!(
            cluster.nodes[0].engine.role(),
            Role::Leader,
            "node 1 must win the election"
        );
        cluster.pump();
        cluster.committed = 0;
        cluster
    }

    /// Runs `proposers` closed-loop proposers until `total` proposals have
    /// been applied on the leader. Returns the number applied.
    pub fn run(&mut self, proposers: usize, total: u64) -> u64 {
        let start = self.committed;
        while self.committed - start < total {
            let leader = (self.leader - 1) as usize;
            while self.outstanding < proposers {
                self.nodes[leader]
                    .engine
                    .propose(Bytes::new())
                    .expect("the leader accepts proposals");
                self.outstanding += 1;
            }
            self.pump();
        }
        self.committed - start
    }

    /// Processes output and delivers messages until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                while self.nodes[i].engine.has_ready() {
                    progressed = true;
                    self.handle_ready(i);
                }
            }
            while let Some(msg) = self.queue.pop_front() {
                progressed = true;
                let to = (msg.to - 1) as usize;
                self.nodes[to].engine.step(msg);
            }
            if !progressed {
                return;
            }
        }
    }

    fn handle_ready(&mut self, i: usize) {
        let is_leader = self.nodes[i].engine.id() == self.leader;
        let node = &mut self.nodes[i];
        let ready = node.engine.ready();
        self.queue.extend(ready.messages);
        if let Some(from) = ready.truncate_from {
            node.log.retain(|e| e.index < from);
        }
        node.log.extend(ready.entries);
        // Storage is "durable" at once: release what waited for it.
        self.queue.extend(ready.persisted_messages);
        if let Some(write) = ready.write_id {
            node.engine.on_persisted(write);
        }
        if let Some(e) = ready.committed_entries.last() {
            let normal = ready
                .committed_entries
                .iter()
                .filter(|e| matches!(e.payload, raft_core::EntryPayload::Normal(_)))
                .count();
            node.applied += ready.committed_entries.len() as u64;
            node.engine.on_applied(e.index);
            if is_leader {
                self.committed += normal as u64;
                self.outstanding -= normal;
            }
        }
        // Keep memory flat over long runs: the engine keeps its own copy.
        if node.log.len() > 100_000 {
            node.log.drain(..50_000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_commit_with_one_and_many_proposers() {
        let mut c = EngineCluster::new(3);
        assert_eq!(c.run(1, 100), 100);
        assert!(c.run(64, 1000) >= 1000);
        assert!(
            c.nodes.iter().all(|n| n.applied > 1000),
            "followers apply too"
        );
    }
}
