//! [`MemLog`]: the in-memory [`LogStorage`], the reference the
//! conformance suite runs against.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::storage::{LogStorage, LogWrite, StorageError, StoredState};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, SnapshotMeta, Term};

/// The state behind [`MemLog`]'s lock.
#[derive(Debug, Default)]
struct LogState {
    /// The last saved hard state.
    hard_state: HardState,
    /// The entries still in the log. When non-empty, the first one has index
    /// `purged.index + 1` and the rest follow consecutively.
    entries: VecDeque<Entry>,
    /// Id of the last purged entry; index 0 when nothing was purged. Kept
    /// after the entries themselves are gone so that the log still knows
    /// where it resumes (the next append must start at `purged.index + 1`).
    purged: LogId,
    /// The snapshot reported by `stored_state`, set by [`MemLog::set_snapshot`].
    snapshot: Option<SnapshotMeta>,
}

impl LogState {
    /// The first index that may still be in the log.
    fn first_index(&self) -> Index {
        self.purged.index.saturating_add(1)
    }

    /// The index of the last entry, or of the last purged one when the log
    /// is empty (0 for a new log).
    fn last_index(&self) -> Index {
        self.entries.back().map_or(self.purged.index, |e| e.index)
    }

    /// The position of `index` in `entries`. `index` must be at least
    /// [`first_index`](Self::first_index); the result may be past the end.
    fn position(&self, index: Index) -> usize {
        let offset = index.saturating_sub(self.first_index());
        // An offset that does not fit in usize is past the end of any VecDeque.
        usize::try_from(offset).unwrap_or(usize::MAX)
    }

    /// The term of the entry at `index`, if the log still holds it.
    fn term_at(&self, index: Index) -> Option<Term> {
        if index < self.first_index() {
            return None;
        }
        self.entries.get(self.position(index)).map(|e| e.term)
    }

    /// Checks a truncation from `from` and returns the last index that
    /// remains after it.
    fn check_truncate(&self, from: Index, commit: Index) -> Result<Index, StorageError> {
        if from <= commit && from <= self.last_index() {
            return Err(StorageError::Invalid(format!(
                "truncate from {from} would remove committed entries (commit index {commit})"
            )));
        }
        if from < self.first_index() {
            return Err(StorageError::Invalid(format!(
                "truncate from {from}: at or below the purged prefix (first index {})",
                self.first_index()
            )));
        }
        Ok(self.last_index().min(from - 1))
    }

    /// Checks that `entries` are consecutive and may follow a log whose last
    /// index is `last_index`.
    fn check_append(
        &self,
        entries: &[Entry],
        last_index: Index,
        commit: Index,
    ) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= commit && first.index <= last_index {
            return Err(StorageError::Invalid(format!(
                "append at {} would replace committed entries (commit index {commit})",
                first.index
            )));
        }
        if first.index > last_index.saturating_add(1) {
            return Err(StorageError::Invalid(format!(
                "append at {}: gap after last index {last_index}",
                first.index
            )));
        }
        if first.index < self.first_index() {
            // Replacing entries a snapshot covers would fork the log from
            // the state the snapshot captured.
            return Err(StorageError::Invalid(format!(
                "append at {}: at or below the purged prefix (first index {})",
                first.index,
                self.first_index()
            )));
        }
        for pair in entries.windows(2) {
            if pair[0].index.checked_add(1) != Some(pair[1].index) {
                return Err(StorageError::Invalid(format!(
                    "append: entry {} follows entry {}, entries must be consecutive",
                    pair[1].index, pair[0].index
                )));
            }
        }
        Ok(())
    }

    /// Deletes every entry at or above `from`. Unchecked: call
    /// [`check_truncate`](Self::check_truncate) first.
    fn truncate(&mut self, from: Index) {
        let keep = self.position(from);
        self.entries.truncate(keep);
    }

    /// Appends `entries`, replacing every entry at or above the first one's
    /// index. Unchecked: call [`check_append`](Self::check_append) first.
    fn append(&mut self, entries: Vec<Entry>) {
        if let Some(first) = entries.first() {
            self.truncate(first.index);
            self.entries.extend(entries);
        }
    }
}

/// An in-memory [`LogStorage`].
///
/// Holds the hard state, the entries, the id of the last purged entry and an
/// optional snapshot description behind one [`Mutex`], so every method takes
/// `&self` and each call is atomic with respect to the others.
///
/// Beyond the [`LogStorage`] contract, appending at or below the purged
/// prefix is rejected with [`StorageError::Invalid`], as is any operation on
/// index 0 (which holds no entry).
#[derive(Debug, Default)]
pub struct MemLog {
    state: Mutex<LogState>,
}

impl MemLog {
    /// A new, empty log with a zero hard state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the snapshot that [`LogStorage::stored_state`] reports.
    ///
    /// This only sets the description; call [`LogStorage::purge`] to drop
    /// the entries the snapshot covers.
    pub fn set_snapshot(&self, meta: SnapshotMeta) {
        lock(&self.state).snapshot = Some(meta);
    }

    /// Id of the last purged entry, or `None` when nothing was purged.
    ///
    /// When a purge went past the last entry, the index is the purge bound
    /// and the term is the snapshot's (if [`set_snapshot`](Self::set_snapshot)
    /// recorded one for that index) or else the last removed entry's.
    pub fn last_purged_log_id(&self) -> Option<LogId> {
        let state = lock(&self.state);
        (state.purged.index > 0).then_some(state.purged)
    }

    /// Every entry currently in the log, in order (for tests).
    pub fn snapshot_entries(&self) -> Vec<Entry> {
        lock(&self.state).entries.iter().cloned().collect()
    }
}

#[async_trait]
impl LogStorage for MemLog {
    async fn stored_state(&self) -> Result<StoredState, StorageError> {
        let state = lock(&self.state);
        // Scanning backwards is fine for an in-memory log used in tests; a
        // persistent store would index membership entries instead.
        let membership = state.entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some((e.index, (**m).clone())),
            _ => None,
        });
        Ok(StoredState {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            purged: state.purged,
            first_log_id: state.entries.front().map(Entry::log_id),
            last_log_id: state.entries.back().map(Entry::log_id),
            membership,
        })
    }

    async fn append(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let last_index = state.last_index();
        let commit = state.hard_state.commit;
        state.check_append(&entries, last_index, commit)?;
        state.append(entries);
        Ok(())
    }

    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let commit = state.hard_state.commit;
        state.check_truncate(from, commit)?;
        state.truncate(from);
        Ok(())
    }

    async fn purge(&self, up_to: Index) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        if up_to <= state.purged.index {
            return Ok(());
        }
        // The term of the new purge point: the entry's own when the log holds
        // it, else the snapshot's when it describes that index, else the last
        // entry removed (the best the log knows when purging past its end).
        let snapshot_term = state
            .snapshot
            .as_ref()
            .filter(|s| s.last_log_id.index == up_to)
            .map(|s| s.last_log_id.term);
        let last_removed_term = state.entries.back().map_or(state.purged.term, |e| e.term);
        let term = state
            .term_at(up_to)
            .or(snapshot_term)
            .unwrap_or(last_removed_term);
        let removed = state
            .position(up_to.saturating_add(1))
            .min(state.entries.len());
        state.entries.drain(..removed);
        state.purged = LogId::new(term, up_to);
        Ok(())
    }

    async fn entries(
        &self,
        start: Index,
        end: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let state = lock(&self.state);
        if start == 0 {
            return Err(StorageError::Invalid(
                "entries from index 0, which holds no entry".into(),
            ));
        }
        if start > end {
            return Err(StorageError::Invalid(format!(
                "entries [{start}, {end}): start after end"
            )));
        }
        let last_index = state.last_index();
        if end > last_index.saturating_add(1) {
            return Err(StorageError::Invalid(format!(
                "entries [{start}, {end}): end past last index {last_index} + 1"
            )));
        }
        let first_index = state.first_index();
        if start < first_index {
            return Err(StorageError::Compacted { first_index });
        }
        let range = state.position(start)..state.position(end);
        let mut out = Vec::new();
        let mut total: u64 = 0;
        for entry in state.entries.range(range) {
            total = total.saturating_add(entry.size_bytes());
            // The first entry is returned whatever its size so that a caller
            // with a small budget still makes progress.
            if total > max_bytes && !out.is_empty() {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        lock(&self.state).hard_state = hard_state;
        Ok(())
    }

    async fn save_snapshot(&self, meta: SnapshotMeta, purge_to: Index) -> Result<(), StorageError> {
        if purge_to > meta.last_log_id.index {
            return Err(StorageError::Invalid(format!(
                "purge to {purge_to} past the snapshot's last index {}",
                meta.last_log_id.index
            )));
        }
        lock(&self.state).snapshot = Some(meta);
        self.purge(purge_to).await
    }

    async fn install_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        state.entries.clear();
        state.purged = meta.last_log_id;
        if state.hard_state.commit < meta.last_log_id.index {
            state.hard_state.commit = meta.last_log_id.index;
        }
        state.snapshot = Some(meta);
        Ok(())
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        // Validate the truncation and the append against the log as it will
        // be after the truncation, so that an invalid write changes nothing.
        // Committed entries are protected by the commit index saved before
        // this write: the write's own hard state may commit the very entries
        // it appends after a truncation.
        let commit = state.hard_state.commit;
        let last_index = match write.truncate_from {
            Some(from) => state.check_truncate(from, commit)?,
            None => state.last_index(),
        };
        state.check_append(&write.entries, last_index, commit)?;
        if let Some(hard_state) = write.hard_state {
            state.hard_state = hard_state;
        }
        if let Some(from) = write.truncate_from {
            state.truncate(from);
        }
        state.append(write.entries);
        Ok(())
    }
}
