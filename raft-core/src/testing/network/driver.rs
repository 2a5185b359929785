//! The driver half of the network: each `Ready` handled as the engine's
//! contract says, writes held or completed, entries applied, and restarts.

use super::{Network, Write, MAX_READY_LOOPS};
use crate::engine::{Engine, Ready, Role};
use crate::{Entry, EntryPayload, NodeId};

impl Network {
    /// Handles every `Ready` of node `id` until it has none.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..MAX_READY_LOOPS {
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
        let Ready {
            soft_state,
            hard_state,
            truncate_from,
            entries,
            write_id,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
            failed_reads,
            compact_log,
            build_snapshot,
            install_snapshot,
            fetch_entries,
        } = ready;
        // This harness has no state machine snapshots; they are exercised
        // by the simulation and the driver tests. Builds are recorded when
        // allowed and never completed; an install a test provokes is
        // recorded and left in progress.
        assert!(
            self.allow_snapshot_requests || (compact_log.is_none() && build_snapshot.is_none()),
            "node {id}: snapshot work in the engine test network (raise the thresholds)"
        );
        if let Some(meta) = build_snapshot {
            self.node_mut(id).snapshot_requests.push(meta);
        }
        if let Some(meta) = install_snapshot {
            self.node_mut(id).installing = Some(meta);
        }
        if let Some(ss) = soft_state {
            self.node_mut(id).soft_states.push(ss);
        }
        // 1. Messages that depend on nothing unpersisted.
        for m in messages {
            assert_eq!(m.from, id, "node {id} sent a message as {}", m.from);
            self.send(m, false);
        }
        // 2./3. The write, then what waited for it; 4. apply, after the
        // write by default, or at once when the test asks for overlap.
        let (apply_now, committed) = if self.apply_before_persist {
            (committed_entries, Vec::new())
        } else {
            (Vec::new(), committed_entries)
        };
        let write = Write {
            write_id,
            hard_state,
            truncate_from,
            entries,
            persisted_messages,
            committed,
            compact_log,
            fetch_entries,
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
        node.read_states.extend(read_states);
        node.failed_reads.extend(failed_reads);
    }

    fn do_write(&mut self, id: NodeId, w: Write) {
        let node = self.node_mut(id);
        let disk = &mut node.disk;
        let durable_commit = disk.hard_state.commit;
        if let Some(hs) = w.hard_state {
            disk.hard_state = hs;
        }
        if let Some(from) = w.truncate_from {
            assert!(from >= 1, "node {id}: truncate_from 0");
            assert!(
                from > durable_commit,
                "node {id}: truncation from {from} removes committed entries (commit {durable_commit})",
            );
            disk.truncate(from)
                .unwrap_or_else(|e| panic!("node {id}: {e}"));
        }
        disk.append(&w.entries).unwrap_or_else(|e| {
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
        for fetch in w.fetch_entries {
            let entries = node.disk.read_back(&fetch);
            node.read_back += entries.len() as u64;
            node.engine.on_entries_fetched(fetch, entries);
        }
        for m in w.persisted_messages {
            assert_eq!(m.from, id, "node {id} sent a message as {}", m.from);
            self.send(m, true);
        }
        if let Some(write_id) = w.write_id {
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
        let node = self.node_mut(id);
        node.pending.clear();
        node.hold_persist = false;
        node.installing = None;
        let initial = node
            .disk
            .initial_state(&node.bootstrap, node.applied_index, u64::MAX);
        node.engine = Engine::new(node.cfg.clone(), initial).expect("valid test configuration");
        self.process(id);
    }
}
