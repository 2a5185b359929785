//! An in-process cluster of [`Engine`](raft_core::Engine)s on raft-core's
//! engine test network ([`raft_core::testing::network`]) with its bookkeeping
//! switched off: the fastest possible environment for the engine, so a
//! benchmark on it measures the algorithm's own cost.
//!
//! Storage writes complete immediately (after the `Ready` that asked for
//! them, in order), messages are delivered in FIFO order, and committed
//! entries are applied at once. Proposers are closed-loop: each keeps one
//! proposal outstanding on the leader and proposes again as soon as the
//! leader applies it.

use bytes::Bytes;
use raft_core::engine::Role;
use raft_core::testing::network::Network;
use raft_core::NodeId;

/// Durable entries a node's log model holds before the oldest half is
/// forgotten (the engine keeps its own copy), so memory stays flat.
const MAX_DISK_ENTRIES: usize = 100_000;

/// A cluster of engines wired by function calls.
#[derive(Debug)]
pub struct EngineCluster {
    net: Network,
    leader: NodeId,
    /// Proposals accepted by the leader so far.
    proposed: u64,
}

impl EngineCluster {
    /// Builds a cluster of `voters` nodes and runs it until node 1 leads.
    ///
    /// # Panics
    ///
    /// If no leader emerges (a bug in the engine).
    pub fn new(voters: u64) -> Self {
        let mut net = Network::with_config(voters, |c| c.max_uncommitted_entries = 1 << 20);
        net.record_sent = false;
        net.keep_applied = false;
        net.check_applied_agreement = false;
        // Snapshot builds are asked for (default thresholds) and never
        // completed, so the engine never compacts, as before.
        net.allow_snapshot_requests = true;
        for _ in 0..1000 {
            if net.role(1) == Role::Leader {
                break;
            }
            net.tick(1, 1);
            net.deliver_all();
        }
        assert_eq!(net.role(1), Role::Leader, "node 1 must win the election");
        net.deliver_all();
        let proposed = net.node(1).applied_normal;
        Self {
            net,
            leader: 1,
            proposed,
        }
    }

    /// Normal entries applied on the leader so far.
    fn committed(&self) -> u64 {
        self.net.node(self.leader).applied_normal
    }

    /// Runs `proposers` closed-loop proposers until `total` proposals have
    /// been applied on the leader. Returns the number applied.
    pub fn run(&mut self, proposers: usize, total: u64) -> u64 {
        let start = self.committed();
        while self.committed() - start < total {
            let leader = self.leader;
            while self.proposed - self.committed() < proposers as u64 {
                self.net
                    .node_mut(leader)
                    .engine
                    .propose(Bytes::new())
                    .expect("the leader accepts proposals");
                self.proposed += 1;
            }
            self.net.process(leader);
            self.net.deliver_all();
            for id in self.net.ids() {
                let disk = &mut self.net.node_mut(id).disk;
                if disk.log.len() > MAX_DISK_ENTRIES {
                    disk.forget_oldest(MAX_DISK_ENTRIES / 2);
                }
            }
        }
        self.committed() - start
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
            c.net.nodes.values().all(|n| n.applied_index > 1000),
            "followers apply too"
        );
    }
}
