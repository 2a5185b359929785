//! Snapshots for real ([`Network::complete_snapshots`]): builds completed
//! once their entries are applied, the data sent beside the
//! `InstallSnapshot` header, installs completed at once.

use super::Network;
use crate::{EntryPayload, Message, MessageBody, NodeId, SnapshotMeta};

impl Network {
    /// Completes node `id`'s snapshot builds whose entries it has applied:
    /// the data is the entries applied through the snapshot's index.
    pub(super) fn finish_builds(&mut self, id: NodeId) {
        assert!(
            self.keep_applied,
            "complete_snapshots needs keep_applied: a snapshot's data is the applied entries"
        );
        let node = self.node_mut(id);
        let applied = node.applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut node.snapshot_requests)
            .into_iter()
            .partition(|m| m.last_log_id.index <= applied);
        node.snapshot_requests = waiting;
        for meta in ready {
            let node = self.node_mut(id);
            let data = node.applied[..meta.last_log_id.index as usize].to_vec();
            node.snapshot = Some(meta.clone());
            node.engine.on_snapshot_built(meta.clone());
            let index = meta.last_log_id.index;
            let held = self
                .snapshot_data
                .entry(index)
                .or_insert_with(|| data.clone());
            assert!(
                *held == data,
                "node {id} built snapshot {} with other data than an earlier one",
                meta.last_log_id
            );
        }
    }

    /// A node sends a snapshot: it must be its state machine's latest.
    pub(super) fn check_snapshot_sent(&self, msg: &Message) {
        if let MessageBody::InstallSnapshot { meta } = &msg.body {
            assert_eq!(
                self.node(msg.from).snapshot.as_ref(),
                Some(meta),
                "node {} sends a snapshot that is not its latest",
                msg.from
            );
        }
    }

    /// The transport tells `from` how its snapshot transfer to `to` ended.
    pub(super) fn report_snapshot(&mut self, from: NodeId, to: NodeId, delivered: bool) {
        if self.nodes.contains_key(&from) {
            self.node_mut(from).engine.report_snapshot(to, delivered);
            self.process(from);
        }
    }

    /// A snapshot (header and data) arrived at its recipient.
    pub(super) fn receive_snapshot(&mut self, msg: Message, meta: SnapshotMeta) {
        let to = msg.to;
        if !self.node(to).engine.is_installing_snapshot() {
            self.node_mut(to).incoming = Some(meta);
        }
        self.step(msg);
        // Not taken: the engine refused it, or already held what it covers.
        self.node_mut(to).incoming = None;
    }

    /// Installs the snapshot node `id`'s engine asked for: its data
    /// replaces the state machine, then the log, and the engine hears of it.
    ///
    /// # Panics
    ///
    /// When the node's persistence is held (not modelled with
    /// installs), or the snapshot is not the one that arrived.
    pub(super) fn install(&mut self, id: NodeId, meta: SnapshotMeta) {
        let index = meta.last_log_id.index;
        let data = self
            .snapshot_data
            .get(&index)
            .unwrap_or_else(|| panic!("node {id}: no data for snapshot {}", meta.last_log_id))
            .clone();
        let node = self.node_mut(id);
        assert!(
            !node.hold_persist && node.pending.is_empty(),
            "node {id}: installing a snapshot while writes are held is not modelled"
        );
        let incoming = node.incoming.take();
        assert_eq!(
            incoming.as_ref(),
            Some(&meta),
            "node {id}: the snapshot to install"
        );
        node.applied_normal = data
            .iter()
            .filter(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .count() as u64;
        node.applied = data;
        node.applied_index = index;
        node.disk.install(&meta);
        node.snapshot = Some(meta.clone());
        node.snapshots_installed += 1;
        node.engine.on_snapshot_installed(meta);
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::network::Network;

    #[test]
    fn a_follower_behind_the_compacted_log_installs_the_leaders_snapshot() {
        let mut net = Network::with_config(3, |c| {
            c.snapshot_threshold_entries = 10;
            c.snapshot_keep_entries = 2;
        });
        net.complete_snapshots = true;
        net.elect(1);
        net.isolate(3);
        for i in 0..40 {
            net.propose(1, &format!("e{i}")).unwrap();
            net.tick_all(1);
        }
        assert!(net.node(1).disk.purged.index > 10, "the leader compacted");
        assert!(
            net.node(1).snapshot.is_some(),
            "the leader built a snapshot"
        );
        net.recover();
        net.tick_all_until(200, |n| n.node(3).applied_index == n.node(1).applied_index);
        assert_eq!(net.node(3).snapshots_installed, 1);
        assert_eq!(net.node(3).applied, net.node(1).applied);
        assert_eq!(net.node(3).applied_data(), net.node(1).applied_data());
        assert!(net.node(3).pending_fetches() == 0);
    }
}
