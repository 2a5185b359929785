//! The engine's in-memory view of the replicated log: every entry since the
//! compacted prefix, plus the bookkeeping that tells the driver what still has
//! to be made durable (`take_unpersisted`) and what can be applied
//! (`take_committed`).
//!
//! Like etcd's raft, the engine keeps the uncompacted log in memory (payloads
//! are reference-counted [`Bytes`](bytes::Bytes), so sending them is cheap);
//! log compaction through snapshots bounds its length. Its size in bytes is
//! bounded apart from that: once the payloads held exceed a budget
//! ([`Config::max_log_cache_bytes`](crate::Config::max_log_cache_bytes)),
//! the payloads of the oldest entries that are applied and durable are
//! dropped (`evict`): their index and term stay, so terms, matching and
//! backtracking work as before, and a leader reads their payloads back from
//! storage when a lagging follower needs them.

use std::collections::VecDeque;

use crate::types::{Entry, Index, LogId, Term};

/// In-memory log with persistence and apply cursors.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last entry of the compacted prefix (index 0 term 0 when nothing is compacted).
    offset: LogId,
    /// `entries[i].index == offset.index + 1 + i`.
    entries: VecDeque<Entry>,
    /// Highest index known committed; never decreases.
    committed: Index,
    /// Highest index durable in local storage and still matching this log.
    persisted: Index,
    /// Highest index handed to the driver for persisting.
    emitted: Index,
    /// Lowest index written since the last `take_unpersisted`, if any.
    dirty_from: Option<Index>,
    /// Whether a handed-out entry was overwritten, so storage must truncate first.
    truncate_from: Option<Index>,
    /// Highest index handed to the driver for applying.
    apply_emitted: Index,
    /// Writes handed out and not yet reported durable, in order: their
    /// sequence number and the highest index of this log they make durable
    /// (lowered when a later truncation overwrites part of what they wrote).
    writes: VecDeque<(u64, Index)>,
    /// Sequence number of the next write.
    next_write: u64,
    /// Entries at or below this index (and above `offset`) have their
    /// payloads dropped from memory, except blank and membership entries,
    /// which are kept whole (they are small and the engine reads them).
    evicted_to: Index,
    /// Bytes ([`Entry::size_bytes`]) of the normal entries whose payloads
    /// are held (blank and membership entries are not counted).
    cached_bytes: u64,
    /// Bytes ([`Entry::size_bytes`]) of the entries above the commit index.
    uncommitted_bytes: u64,
}

/// Whether evicting `e` frees its payload (blank and membership entries are
/// kept whole).
fn evictable(e: &Entry) -> bool {
    matches!(e.payload, crate::types::EntryPayload::Normal(_))
}

/// What `e` counts toward `cached_bytes` while held whole: its size when
/// its payload can be dropped, nothing for the small entries kept whole.
fn cached_size(e: &Entry) -> u64 {
    if evictable(e) {
        e.size_bytes()
    } else {
        0
    }
}

/// Why an AppendEntries was refused by the consistency check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendRefusal {
    /// The log does not contain `prev_log_id`; carries the backtracking hint.
    Mismatch(LogId),
    /// The entries are not consecutive after `prev_log_id`, or their terms
    /// decrease: no leader sends that, so the request is dropped.
    Malformed,
    /// The request would overwrite a committed entry: only a broken or
    /// malicious leader sends that, so the request is dropped.
    ConflictsWithCommitted(Index),
}

impl RaftLog {
    /// A log restored from storage: `entries` follow `offset` and are durable.
    pub(crate) fn restore(offset: LogId, entries: Vec<Entry>, committed: Index) -> Self {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                offset.index + 1 + i as u64,
                "invariant: restored entries are consecutive after the compacted prefix"
            );
        }
        let last = offset.index + entries.len() as u64;
        let committed = committed.min(last).max(offset.index);
        let cached_bytes = entries.iter().map(cached_size).sum();
        let uncommitted_bytes = entries
            .iter()
            .filter(|e| e.index > committed)
            .map(Entry::size_bytes)
            .sum();
        Self {
            offset,
            evicted_to: offset.index,
            cached_bytes,
            uncommitted_bytes,
            entries: entries.into(),
            committed,
            persisted: last,
            emitted: last,
            dirty_from: None,
            truncate_from: None,
            apply_emitted: offset.index,
            writes: VecDeque::new(),
            next_write: 1,
        }
    }

    pub(crate) fn last_index(&self) -> Index {
        self.offset.index + self.entries.len() as u64
    }

    pub(crate) fn last_log_id(&self) -> LogId {
        self.entries.back().map_or(self.offset, Entry::log_id)
    }

    pub(crate) fn first_index(&self) -> Index {
        self.offset.index + 1
    }

    pub(crate) fn committed(&self) -> Index {
        self.committed
    }

    pub(crate) fn persisted(&self) -> Index {
        self.persisted
    }

    pub(crate) fn apply_emitted(&self) -> Index {
        self.apply_emitted
    }

    /// The term of the entry at `index`, or `None` when it is compacted away
    /// (below the offset) or beyond the last entry.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset.index {
            return Some(self.offset.term);
        }
        if index < self.offset.index {
            return None;
        }
        self.get(index).map(|e| e.term)
    }

    pub(crate) fn get(&self, index: Index) -> Option<&Entry> {
        if index <= self.offset.index {
            return None;
        }
        self.entries.get((index - self.offset.index - 1) as usize)
    }

    /// Whether `id` names an entry of this log (or the compacted prefix's last).
    pub(crate) fn matches(&self, id: LogId) -> bool {
        self.term(id.index) == Some(id.term)
    }

    /// Entries from `start` up to `last_index`, at most `max_entries` and
    /// `max_bytes` (at least one entry when any is in range).
    pub(crate) fn slice(&self, start: Index, max_entries: usize, max_bytes: u64) -> Vec<Entry> {
        self.slice_to(start, self.last_index(), max_entries, max_bytes)
    }

    /// Entries in `[start, end]` (clamped to the log), at most `max_entries`
    /// and `max_bytes` (at least one entry when any is in range).
    pub(crate) fn slice_to(
        &self,
        start: Index,
        end: Index,
        max_entries: usize,
        max_bytes: u64,
    ) -> Vec<Entry> {
        let start = start.max(self.first_index());
        let end = end.min(self.last_index());
        if start > end {
            return Vec::new();
        }
        debug_assert!(
            start > self.evicted_to,
            "invariant: evicted payloads are never handed out (start {start}, evicted to {})",
            self.evicted_to
        );
        let from = (start - self.offset.index - 1) as usize;
        let mut count = ((end - start + 1) as usize).min(max_entries.max(1));
        if max_bytes != u64::MAX {
            // How many fit, before any is cloned: the copy is then one
            // tight loop over (at most) two slices.
            let mut bytes = 0u64;
            let fit = self.entries.range(from..from + count).position(|e| {
                bytes += e.size_bytes();
                bytes > max_bytes
            });
            if let Some(fit) = fit {
                count = fit.max(1);
            }
        }
        // The deque's two slices, cut to `from..from + count`.
        let (head, tail) = self.entries.as_slices();
        let to = from + count;
        let (a, b) = if to <= head.len() {
            (&head[from..to], &tail[..0])
        } else if from >= head.len() {
            (&head[..0], &tail[from - head.len()..to - head.len()])
        } else {
            (&head[from..], &tail[..to - head.len()])
        };
        let mut out = Vec::with_capacity(count);
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        out
    }

    /// Appends entries created by this node as leader; they must continue the log.
    pub(crate) fn append_own(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "invariant: a leader appends at the end of its log"
        );
        self.mark_dirty(entry.index);
        self.cached_bytes += cached_size(&entry);
        if entry.index > self.committed {
            self.uncommitted_bytes += entry.size_bytes();
        }
        self.entries.push_back(entry);
    }

    fn mark_dirty(&mut self, index: Index) {
        self.dirty_from = Some(self.dirty_from.map_or(index, |d| d.min(index)));
    }

    /// Follower side of AppendEntries (paper §5.3): checks `prev`, skips entries
    /// already present, truncates at the first conflict and appends the rest.
    /// Returns the index of the last entry known to match the leader.
    pub(crate) fn try_append(
        &mut self,
        prev: LogId,
        mut entries: Vec<Entry>,
    ) -> Result<Index, AppendRefusal> {
        // Check the whole request's shape before touching anything: indexes
        // consecutive after `prev`, terms never decreasing.
        let mut expected = prev;
        for e in &entries {
            if Some(e.index) != expected.index.checked_add(1) || e.term < expected.term {
                return Err(AppendRefusal::Malformed);
            }
            expected = e.log_id();
        }
        // A `prev` below the compacted prefix matches: everything up to the
        // prefix is committed, so it is the leader's too (Log Matching).
        if prev.index >= self.offset.index && !self.matches(prev) {
            return Err(AppendRefusal::Mismatch(self.conflict_hint(prev)));
        }
        let last_new = prev.index + entries.len() as u64;
        // Find the first entry not already in the log with the same term.
        let mut first_new = None;
        for (i, e) in entries.iter().enumerate() {
            if e.index <= self.offset.index {
                continue; // covered by the compacted (hence committed) prefix
            }
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                _ => {
                    first_new = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = first_new {
            let from = entries[i].index;
            if from <= self.committed {
                return Err(AppendRefusal::ConflictsWithCommitted(from));
            }
            self.truncate_suffix(from);
            for e in entries.drain(i..) {
                self.cached_bytes += cached_size(&e);
                if e.index > self.committed {
                    self.uncommitted_bytes += e.size_bytes();
                }
                self.entries.push_back(e);
            }
            self.mark_dirty(from);
        }
        Ok(last_new)
    }

    /// Removes entries at or above `from` (never committed ones).
    fn truncate_suffix(&mut self, from: Index) {
        assert!(
            from > self.committed,
            "invariant: committed entries are never truncated"
        );
        if from > self.last_index() {
            return;
        }
        let keep = (from - self.offset.index - 1) as usize;
        for e in self.entries.range(keep..) {
            // Above the commit index, so never evicted.
            self.cached_bytes -= cached_size(e);
            self.uncommitted_bytes -= e.size_bytes();
        }
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(from - 1);
        // Writes still in flight wrote entries that are now gone from this
        // log: when they complete, they make durable only what precedes `from`.
        for (_, valid_to) in self.writes.iter_mut() {
            *valid_to = (*valid_to).min(from - 1);
        }
        if from <= self.emitted {
            self.truncate_from = Some(self.truncate_from.map_or(from, |t| t.min(from)));
            self.emitted = from - 1;
        }
    }

    /// The largest index at or below `index` whose term is at most `term`,
    /// with that term (the fast-backtracking hint, as in etcd's
    /// `findConflictByTerm`). Stops at the compacted prefix.
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> LogId {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t <= term => return LogId::new(t, i),
                Some(_) if i > self.offset.index => i -= 1,
                _ => return self.offset,
            }
        }
    }

    fn conflict_hint(&self, prev: LogId) -> LogId {
        self.find_conflict_by_term(prev.index, prev.term)
    }

    /// Raises the commit index; never lowers it. Returns whether it moved.
    pub(crate) fn commit_to(&mut self, index: Index) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            let from = (self.committed.max(self.offset.index) - self.offset.index) as usize;
            let to = (index - self.offset.index) as usize;
            for e in self.entries.range(from..to) {
                self.uncommitted_bytes -= e.size_bytes();
            }
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// What the driver must write: `(truncate_from, entries)`.
    pub(crate) fn take_unpersisted(&mut self) -> (Option<Index>, Vec<Entry>) {
        let truncate = self.truncate_from.take();
        let Some(from) = self.dirty_from.take() else {
            return (truncate, Vec::new());
        };
        debug_assert!(
            from > self.emitted,
            "invariant: dirty entries were not handed out"
        );
        let entries = self.slice(from, usize::MAX, u64::MAX);
        self.emitted = self.last_index();
        (truncate, entries)
    }

    /// Whether `take_unpersisted` would return something.
    pub(crate) fn has_unpersisted(&self) -> bool {
        self.dirty_from.is_some() || self.truncate_from.is_some()
    }

    /// Registers a write handed to the driver (after `take_unpersisted`)
    /// and returns its sequence number.
    pub(crate) fn register_write(&mut self) -> u64 {
        let seq = self.next_write;
        self.next_write += 1;
        self.writes.push_back((seq, self.last_index()));
        seq
    }

    /// Records that the write `seq` (and so every earlier one) is durable.
    /// Returns whether the durable index moved. Unknown or repeated
    /// sequence numbers are ignored.
    pub(crate) fn on_persisted(&mut self, seq: u64) -> bool {
        let mut durable = None;
        while let Some(&(s, valid_to)) = self.writes.front() {
            if s > seq {
                break;
            }
            self.writes.pop_front();
            durable = Some(valid_to);
        }
        match durable {
            Some(index) if index != self.persisted => {
                self.persisted = index.min(self.last_index()).max(self.offset.index);
                true
            }
            _ => false,
        }
    }

    /// Committed, locally durable entries not yet handed out for applying.
    pub(crate) fn take_committed(&mut self, max_entries: usize) -> Vec<Entry> {
        let upto = self.committed.min(self.persisted);
        if upto <= self.apply_emitted {
            return Vec::new();
        }
        let out = self.slice_to(self.apply_emitted + 1, upto, max_entries, u64::MAX);
        if let Some(last) = out.last() {
            self.apply_emitted = last.index;
        }
        out
    }

    /// Whether `take_committed` would return something.
    pub(crate) fn has_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.apply_emitted
    }

    /// Sets where applying resumes (the state machine's durable applied index).
    pub(crate) fn set_applied(&mut self, applied: Index) {
        self.apply_emitted = self.apply_emitted.max(applied.min(self.committed));
    }

    /// Payload bytes held in memory.
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    /// Bytes of the entries above the commit index.
    pub(crate) fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }

    /// The highest index whose payload may have been dropped from memory
    /// (the offset when none was).
    pub(crate) fn evicted_to(&self) -> Index {
        self.evicted_to
    }

    /// Records that the normal entries up to `to` were restored without
    /// their payloads (the driver loaded them so; `to` is at most the
    /// applied index, and every restored entry is durable).
    pub(crate) fn restored_without_payloads(&mut self, to: Index) {
        let to = to.min(self.apply_emitted).min(self.last_index());
        while self.evicted_to < to {
            let pos = (self.evicted_to - self.offset.index) as usize;
            self.cached_bytes -= cached_size(&self.entries[pos]);
            self.evicted_to += 1;
        }
    }

    /// Drops the payloads of the oldest entries that are applied (handed
    /// out for applying) and durable while more than `budget` payload bytes
    /// are held. Entries not yet applied or not yet durable are never
    /// evicted: the driver still needs them, so those may exceed `budget`
    /// (the uncommitted and unapplied bounds limit them).
    pub(crate) fn evict(&mut self, budget: u64) {
        let limit = self
            .apply_emitted
            .min(self.persisted)
            .min(self.last_index());
        while self.cached_bytes > budget && self.evicted_to < limit {
            let pos = (self.evicted_to - self.offset.index) as usize;
            let e = &mut self.entries[pos];
            if evictable(e) {
                self.cached_bytes -= cached_size(e);
                // The payload's bytes are freed once no message or apply
                // job shares them; the entry keeps its index and term.
                e.payload = crate::types::EntryPayload::Normal(bytes::Bytes::new());
            }
            self.evicted_to += 1;
        }
    }

    /// The compacted prefix's last entry.
    pub(crate) fn offset(&self) -> LogId {
        self.offset
    }

    /// Drops entries at or below `to` (log compaction after a snapshot,
    /// paper §7). Only applied, durable entries are dropped: `to` is lowered
    /// to what is both. Returns the new offset when it moved.
    pub(crate) fn compact(&mut self, to: Index) -> Option<LogId> {
        let to = to.min(self.apply_emitted).min(self.persisted);
        if to <= self.offset.index {
            return None;
        }
        let term = self.term(to)?;
        let drop = (to - self.offset.index) as usize;
        for e in self.entries.drain(..drop) {
            if e.index > self.evicted_to {
                self.cached_bytes -= cached_size(&e);
            }
        }
        self.offset = LogId::new(term, to);
        self.evicted_to = self.evicted_to.max(to);
        Some(self.offset)
    }

    /// Replaces the whole log by an installed snapshot ending at `id`
    /// (paper §7: the snapshot supersedes the log). Everything up to `id` is
    /// committed, durable and applied.
    pub(crate) fn install(&mut self, id: LogId) {
        self.entries.clear();
        self.cached_bytes = 0;
        self.uncommitted_bytes = 0;
        self.evicted_to = id.index;
        self.offset = id;
        self.committed = self.committed.max(id.index);
        self.persisted = id.index;
        self.emitted = id.index;
        self.apply_emitted = id.index;
        self.dirty_from = None;
        self.truncate_from = None;
        // Writes still in flight were ordered before the install: once they
        // complete, the snapshot's end is what is durable.
        for (_, valid_to) in self.writes.iter_mut() {
            *valid_to = id.index;
        }
    }
}

#[cfg(test)]
mod tests;
