//! The driver half of the network: each `Ready` handled as the engine's
//! contract says, writes held or completed, entries applied, and restarts.

use super::{Network, Write, MAX_READY_LOOPS};
use crate::engine::{Engine, Ready, Role};
use crate::testing::ReadySteps;
use crate::{Entry, EntryPayload, NodeId};

impl Network {
    /// Handles every `Ready` of node `id` until it has none.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..MAX_READY_LOOPS {
            if self.complete_snapshots {
                self.finish_builds(id);
            }
            if !self.node(id).engine.has_ready() {
                self.check_election_safety(id);
                return;
            }
            let ready = self.node_mut(id).engine.ready();
            self.handle_ready(id, ready);
        }
        panic!("node {id} still has a Ready after {MAX_READY_LOOPS} in a row");
    }

    fn check_election_safety(&mut self, id: NodeId) {
        let e = self.engine(id);
        if e.role() == Role::Leader {
            let term = e.term();
            let leader = *self.leaders.entry(term).or_insert(id);
            assert_eq!(
                leader, id,
                "election safety: two leaders ({leader} and {id}) in term {term}"
            );
        }
    }

    fn handle_ready(&mut self, id: NodeId, ready: Ready) {
        let steps = ReadySteps::from(ready);
        // Snapshot builds are recorded, and completed once their entries
        // are applied with `complete_snapshots`; without it they never
        // are, and an install a test provokes is left in progress.
        assert!(
            self.allow_snapshot_requests
                || self.complete_snapshots
                || (steps.compact_log.is_none() && steps.build_snapshot.is_none()),
            "node {id}: snapshot work in the engine test network (raise the thresholds)"
        );
        if let Some(meta) = steps.build_snapshot {
            self.node_mut(id).snapshot_requests.push(meta);
        }
        let install = if self.complete_snapshots {
            steps.install_snapshot
        } else {
            if let Some(meta) = steps.install_snapshot {
                self.node_mut(id).installing = Some(meta);
            }
            None
        };
        if let Some(ss) = steps.soft_state {
            self.node_mut(id).soft_states.push(ss);
        }
        // 1. Messages that depend on nothing unpersisted.
        for m in steps.messages {
            assert_eq!(m.from, id, "node {id} sent a message as {}", m.from);
            self.send(m, false);
        }
        // 2./3. The write, then what waited for it; 4. apply, after the
        // write by default, or at once when the test asks for overlap.
        let (apply_now, committed) = if self.apply_before_persist {
            (steps.committed_entries, Vec::new())
        } else {
            (Vec::new(), steps.committed_entries)
        };
        let write = Write {
            log: steps.write,
            committed,
            compact_log: steps.compact_log,
            fetch_entries: steps.fetch_entries,
        };
        let node = self.node_mut(id);
        if node.hold_persist || !node.pending.is_empty() {
            node.pending.push_back(write);
        } else {
            self.do_write(id, write);
        }
        if !apply_now.is_empty() {
            self.apply(id, apply_now);
        }
        // 5. Reads.
        let node = self.node_mut(id);
        node.read_states.extend(steps.read_states);
        node.failed_reads.extend(steps.failed_reads);
        node.forward_responses.extend(steps.forward_responses);
        if let Some(meta) = install {
            self.install(id, meta);
        }
    }

    fn do_write(&mut self, id: NodeId, w: Write) {
        let node = self.node_mut(id);
        let disk = &mut node.disk;
        let durable_commit = disk.hard_state.commit;
        if let Some(hs) = w.log.hard_state {
            disk.hard_state = hs;
        }
        if let Some(from) = w.log.truncate_from {
            assert!(from >= 1, "node {id}: truncate_from 0");
            assert!(
                from > durable_commit,
                "node {id}: truncation from {from} removes committed entries (commit {durable_commit})",
            );
            disk.truncate(from)
                .unwrap_or_else(|e| panic!("node {id}: {e}"));
        }
        disk.append(&w.log.entries).unwrap_or_else(|e| {
            panic!("node {id}: written entries do not continue the durable log consecutively: {e}")
        });
        assert!(
            disk.hard_state.commit <= disk.last_index(),
            "node {id}: durable commit {} beyond durable log {}",
            disk.hard_state.commit,
            disk.last_index()
        );
        if let Some(c) = &w.compact_log {
            disk.compact(c).unwrap_or_else(|e| panic!("node {id}: {e}"));
        }
        self.fetch(id, w.fetch_entries);
        for m in w.log.persisted_messages {
            assert_eq!(m.from, id, "node {id} sent a message as {}", m.from);
            self.send(m, true);
        }
        if let Some(write_id) = w.log.write_id {
            self.node_mut(id).engine.on_persisted(write_id);
        }
        if !w.committed.is_empty() {
            self.apply(id, w.committed);
        }
    }

    fn apply(&mut self, id: NodeId, entries: Vec<Entry>) {
        let last = entries.last().map(|e| e.index).unwrap_or_default();
        let keep = self.keep_applied;
        for e in entries {
            let node = self.node_mut(id);
            assert_eq!(
                e.index,
                node.applied_index + 1,
                "node {id}: entry handed out for applying out of order or again \
                 (the state machine has applied through {})",
                node.applied_index
            );
            assert_eq!(
                node.disk.get(e.index),
                Some(&e),
                "node {id}: applying entry {} that is not durable locally",
                e.log_id()
            );
            node.applied_index = e.index;
            if matches!(e.payload, EntryPayload::Normal(_)) {
                node.applied_normal += 1;
            }
            if keep {
                node.applied.push(e.clone());
            }
            if self.check_applied_agreement {
                let first = self
                    .applied_anywhere
                    .entry(e.index)
                    .or_insert_with(|| e.clone());
                assert_eq!(
                    *first, e,
                    "state machine safety: node {id} applied a different entry at index {}",
                    e.index
                );
            }
        }
        self.node_mut(id).engine.on_applied(last);
    }

    /// Queues node `id`'s writes (and the messages waiting for them) from now on.
    pub fn hold_persist(&mut self, id: NodeId) {
        self.node_mut(id).hold_persist = true;
    }

    /// Completes every queued write of node `id`, in order, and stops holding.
    pub fn release_persist(&mut self, id: NodeId) {
        self.node_mut(id).hold_persist = false;
        while let Some(w) = self.node_mut(id).pending.pop_front() {
            self.do_write(id, w);
        }
        self.process(id);
    }

    /// Completes only the oldest queued write of node `id` (persistence
    /// stays held). Returns false when none was queued.
    pub fn persist_next(&mut self, id: NodeId) -> bool {
        let Some(w) = self.node_mut(id).pending.pop_front() else {
            return false;
        };
        self.do_write(id, w);
        self.process(id);
        true
    }

    /// Restarts node `id` from its durable log, hard state and state
    /// machine; queued (non-durable) writes are lost.
    pub fn restart(&mut self, id: NodeId) {
        let complete = self.complete_snapshots;
        let node = self.node_mut(id);
        node.pending.clear();
        node.hold_persist = false;
        node.installing = None;
        node.incoming = None;
        node.fetches.clear();
        if complete {
            node.snapshot_requests.clear();
        }
        let initial = node
            .disk
            .initial_state(&node.bootstrap, node.applied_index, u64::MAX);
        node.engine = Engine::new(node.cfg.clone(), initial).expect("valid test configuration");
        self.process(id);
    }
}
