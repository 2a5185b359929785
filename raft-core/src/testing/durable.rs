//! [`DurableLog`]: a harness's model of a node's durable log storage, the
//! hard state, the log after its purged prefix, and the metadata of the
//! latest snapshot recorded. A harness changes it when a write completes,
//! with the semantics of [`LogStorage`](crate::LogStorage) (`write`,
//! `save_snapshot`, `install_snapshot`, as [`MemLog`](crate::memory::MemLog)
//! implements them): each operation is atomic, so a crash leaves either
//! all of it or none. The engine test network and the simulation share it.

use crate::engine::{EntryFetch, InitialState, LogCompaction};
use crate::{Entry, EntryPayload, HardState, Index, LogId, Membership, SnapshotMeta, Term};

/// What survives a crash of a node's log storage.
#[derive(Debug, Default, Clone)]
pub struct DurableLog {
    /// The hard state.
    pub hard_state: HardState,
    /// The last purged entry (zero when nothing was purged); `log` resumes
    /// right after it.
    pub purged: LogId,
    /// The entries after the purged prefix: `log[i].index == purged.index + 1 + i`.
    pub log: Vec<Entry>,
    /// The latest snapshot recorded by a compaction or an install.
    pub snapshot: Option<SnapshotMeta>,
}

impl DurableLog {
    /// The index of the last durable entry (the purge point when none is held).
    pub fn last_index(&self) -> Index {
        self.purged.index + self.log.len() as Index
    }

    /// The id of the last durable entry (the purge point when none is held).
    pub fn last_log_id(&self) -> LogId {
        self.log.last().map_or(self.purged, Entry::log_id)
    }

    /// The durable entry at `index`, if held.
    pub fn get(&self, index: Index) -> Option<&Entry> {
        let offset = index.checked_sub(self.purged.index + 1)?;
        self.log.get(offset as usize)
    }

    /// The term of the entry at `index`: held, or the purge point.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.purged.index {
            return Some(self.purged.term);
        }
        self.get(index).map(|e| e.term)
    }

    /// The entries held at or after `from`.
    pub fn entries_from(&self, from: Index) -> &[Entry] {
        let skip = from.saturating_sub(self.purged.index + 1) as usize;
        &self.log[skip.min(self.log.len())..]
    }

    /// Deletes the entries at or after `from` (part of a `LogWrite`).
    pub fn truncate(&mut self, from: Index) -> Result<(), String> {
        if from <= self.purged.index {
            return Err(format!(
                "truncate_from {from} reaches into the purged prefix (purged up to {})",
                self.purged
            ));
        }
        self.log.truncate((from - self.purged.index - 1) as usize);
        Ok(())
    }

    /// Appends entries that must directly follow the log (part of a `LogWrite`).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        if let Some(first) = entries.first() {
            if first.index != self.last_index() + 1 {
                return Err(format!(
                    "write appends from {} but the durable log ends at {} (LogWrite: entries \
                     must directly follow the log)",
                    first.log_id(),
                    self.last_log_id()
                ));
            }
        }
        self.log.extend(entries.iter().cloned());
        Ok(())
    }

    /// `LogStorage::save_snapshot`: records the snapshot and purges the log
    /// up to `purge_to` (kept entries stay).
    pub fn compact(&mut self, c: &LogCompaction) -> Result<(), String> {
        if c.purge_to > c.snapshot.last_log_id.index {
            return Err(format!(
                "compaction purges to {} past its snapshot {}",
                c.purge_to, c.snapshot.last_log_id
            ));
        }
        if c.purge_to > self.last_index() {
            return Err(format!(
                "compaction purges to {} but the durable log ends at {} (compact_log must \
                 follow the write that made those entries durable)",
                c.purge_to,
                self.last_log_id()
            ));
        }
        if let Some(s) = self.snapshot.as_ref() {
            if s.last_log_id.index >= c.snapshot.last_log_id.index {
                return Err(format!(
                    "compaction records snapshot {} but storage already holds snapshot {}",
                    c.snapshot.last_log_id, s.last_log_id
                ));
            }
        }
        self.snapshot = Some(c.snapshot.clone());
        if c.purge_to > self.purged.index {
            let term = self.term(c.purge_to).expect("held: checked above");
            let drop = (c.purge_to - self.purged.index) as usize;
            self.log.drain(..drop);
            self.purged = LogId::new(term, c.purge_to);
        }
        Ok(())
    }

    /// `LogStorage::install_snapshot`: the snapshot replaces the whole log.
    /// The hard state is left alone (the trait does not ask to raise its
    /// commit index; the engine restarts from `max(commit, applied)`).
    pub fn install(&mut self, meta: &SnapshotMeta) {
        self.log.clear();
        self.purged = meta.last_log_id;
        self.snapshot = Some(meta.clone());
    }

    /// What a node restarts from, given its state machine's applied index.
    ///
    /// Payloads of applied entries beyond `cache_bytes` are left out, oldest
    /// first, as `Raft::start` loads them.
    pub fn initial_state(
        &self,
        bootstrap: &Membership,
        applied: Index,
        cache_bytes: u64,
    ) -> InitialState {
        let mut entries = self.log.clone();
        let mut held: u64 = entries
            .iter()
            .filter(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .map(Entry::size_bytes)
            .sum();
        let mut payloads_dropped_to = 0;
        for e in entries.iter_mut() {
            if held <= cache_bytes || e.index > applied {
                break;
            }
            if let EntryPayload::Normal(data) = &e.payload {
                held -= Entry::OVERHEAD_BYTES + data.len() as u64;
                e.payload = EntryPayload::Normal(bytes::Bytes::new());
            }
            payloads_dropped_to = e.index;
        }
        InitialState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            purged: self.purged,
            entries,
            bootstrap: bootstrap.clone(),
            applied,
            payloads_dropped_to,
        }
    }

    /// Where the durable log ends for `Raft::start`'s consistency check:
    /// the last entry, the purge point or the recorded snapshot, whichever
    /// is highest.
    pub fn end_index(&self) -> Index {
        self.last_index()
            .max(self.snapshot.as_ref().map_or(0, |s| s.last_log_id.index))
    }

    /// The entries a leader asked to read back ([`EntryFetch`]), as a
    /// [`LogStorage::entries`](crate::LogStorage::entries) read of
    /// `[start, end)` returns them: at most `max_entries`, stopping before
    /// `max_bytes` except for the first; empty when they are not held.
    pub fn read_back(&self, fetch: &EntryFetch) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in fetch.start..fetch.end {
            let Some(e) = self.get(index) else {
                return Vec::new();
            };
            if out.len() >= fetch.max_entries
                || (!out.is_empty() && bytes + e.size_bytes() > fetch.max_bytes)
            {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        out
    }

    /// Forgets the oldest `count` durable entries as a purge would, so a
    /// long-running harness (a benchmark) keeps its memory flat.
    pub fn forget_oldest(&mut self, count: usize) {
        let count = count.min(self.log.len());
        if let Some(last) = self.log[..count].last() {
            self.purged = last.log_id();
            self.log.drain(..count);
        }
    }
}
