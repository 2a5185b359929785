//! The `LogStorage` trait: where the replicated log and the hard state live
//! durably. `raft-log` implements it on RocksDB; `memory::MemLog` implements
//! it in memory for tests, and `conformance` checks any implementation
//! against the contract written here (both with the `test-util` feature).

use async_trait::async_trait;

use crate::membership::Membership;
use crate::types::{Entry, HardState, Index, LogId, SnapshotMeta};

/// Everything a node needs from its storage to restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredState {
    /// The last saved hard state (all zero on a new store).
    pub hard_state: HardState,
    /// The metadata of the latest snapshot recorded with
    /// [`LogStorage::save_snapshot`] or [`LogStorage::install_snapshot`].
    pub snapshot: Option<SnapshotMeta>,
    /// The last entry of the purged prefix (zero when nothing was purged).
    /// The log resumes right after it; it is at most the snapshot's index.
    pub purged: LogId,
    /// Id of the first entry in the log, or `None` when the log is empty.
    pub first_log_id: Option<LogId>,
    /// Id of the last entry in the log, or `None` when the log is empty.
    pub last_log_id: Option<LogId>,
    /// The latest membership entry in the log, with its index, if any.
    pub membership: Option<(Index, Membership)>,
}

/// One durable write: the unit the driver hands to storage for each batch of
/// engine output. Applied in field order: hard state, truncation, append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogWrite {
    /// A new hard state to save, if it changed.
    pub hard_state: Option<HardState>,
    /// Delete every entry at or above this index before appending.
    pub truncate_from: Option<Index>,
    /// Entries to append, consecutive, the first directly after the last
    /// entry that remains after `truncate_from`.
    pub entries: Vec<Entry>,
}

impl LogWrite {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.truncate_from.is_none() && self.entries.is_empty()
    }
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A stored record failed its integrity check. The node must stop
    /// serving rather than use it.
    #[error("corrupted log record at index {index}: {reason}")]
    Corruption {
        /// The index of the entry (0 for metadata records).
        index: Index,
        /// What did not match.
        reason: String,
    },
    /// The caller broke the contract (for example a gap in appended
    /// entries). Names the violated rule.
    #[error("invalid log operation: {0}")]
    Invalid(String),
    /// The requested entries were compacted away.
    #[error("entries below index {first_index} were compacted")]
    Compacted {
        /// The first index still in the log.
        first_index: Index,
    },
    /// An I/O error from the medium.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The storage does not support the operation (the trait's default
    /// snapshot methods).
    #[error("unsupported log operation: {0}")]
    Unsupported(String),
    /// Any other failure of the backend: the cause is the source.
    #[error("storage backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// A [`Backend`](Self::Backend) error from any cause (an error, or a
    /// message as a `String` or `&str`).
    pub fn backend<E: Into<Box<dyn std::error::Error + Send + Sync>>>(cause: E) -> Self {
        Self::Backend(cause.into())
    }
}

/// Durable storage of the Raft log and hard state.
///
/// Methods take `&self` so that an implementation can group-commit concurrent
/// callers; the [`Raft`](crate::Raft) driver itself issues writes one at a time
/// in order, and never reads a range while a write that overlaps it is pending.
///
/// # Contract
///
/// - A write returns only once it is durable: after a crash and reopen, every
///   write that returned `Ok` is visible in full, and a write that did not
///   return is either fully visible or not at all.
/// - Entries are contiguous: the log holds every index from its first to its
///   last entry.
/// - Committed entries are never removed: a truncation or an overlapping
///   append reaching at or below the saved hard state's commit index is
///   [`StorageError::Invalid`] and changes nothing (a committed entry is
///   never undone, paper §5.4).
#[async_trait]
pub trait LogStorage: Send + Sync + 'static {
    /// Loads what a restarting node needs.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the store cannot be read or fails its checks.
    async fn stored_state(&self) -> Result<StoredState, StorageError>;

    /// Appends entries and returns once they are durable. The first entry's
    /// index must be at most `last_index + 1`; entries at or above it are
    /// replaced (a conflicting suffix is truncated, paper §5.3).
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] for a gap or non-consecutive entries, with
    /// nothing written; other variants for I/O failures.
    async fn append(&self, entries: Vec<Entry>) -> Result<(), StorageError>;

    /// Deletes every entry with index `>= from`, durably. A `from` past the
    /// last entry is a no-op.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] when `from` is at or below a purged prefix.
    async fn truncate(&self, from: Index) -> Result<(), StorageError>;

    /// Deletes every entry with index `<= up_to` (after a snapshot covers
    /// them). Purging past the last entry empties the log.
    ///
    /// # Errors
    ///
    /// I/O failures.
    async fn purge(&self, up_to: Index) -> Result<(), StorageError>;

    /// Reads entries in `[start, end)`, stopping early once `max_bytes` of
    /// [`Entry::size_bytes`] are read (always at least one entry when any is
    /// in range).
    ///
    /// # Errors
    ///
    /// [`StorageError::Compacted`] when `start` is below the first entry,
    /// [`StorageError::Invalid`] when `end` is past `last_index + 1`,
    /// [`StorageError::Corruption`] for a record that fails its check.
    async fn entries(
        &self,
        start: Index,
        end: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError>;

    /// Saves the hard state durably.
    ///
    /// # Errors
    ///
    /// I/O failures.
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError>;

    /// Records a snapshot the state machine took and purges the log up to
    /// `purge_to` (at most the snapshot's index), in one durable write.
    /// After a restart, [`stored_state`](Self::stored_state) reports the
    /// snapshot and `purge_to` as the purge point.
    ///
    /// The default saves nothing and only purges: storage that cannot
    /// record snapshots must not be used with a state machine that takes them.
    ///
    /// # Errors
    ///
    /// I/O failures.
    async fn save_snapshot(&self, meta: SnapshotMeta, purge_to: Index) -> Result<(), StorageError> {
        let _ = meta;
        Err(StorageError::Unsupported(format!(
            "this log storage cannot record snapshots (asked to purge to {purge_to})"
        )))
    }

    /// Replaces the whole log by an installed snapshot, in one durable
    /// write: every entry is deleted (even committed ones, which the
    /// snapshot covers), the snapshot is recorded, and the purge point
    /// becomes its last entry. The next append starts right after it.
    ///
    /// # Errors
    ///
    /// I/O failures; [`StorageError::Unsupported`] from storage that does not
    /// support snapshots (the default).
    async fn install_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "this log storage cannot install snapshots (asked to install {})",
            meta.last_log_id
        )))
    }

    /// Performs one [`LogWrite`] durably. The default runs
    /// [`save_hard_state`](Self::save_hard_state), [`truncate`](Self::truncate)
    /// and [`append`](Self::append) in that order; implementations should
    /// override it to make the whole write one atomic, synced batch.
    ///
    /// # Errors
    ///
    /// As the methods it runs.
    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        if let Some(hs) = write.hard_state {
            self.save_hard_state(hs).await?;
        }
        if let Some(from) = write.truncate_from {
            self.truncate(from).await?;
        }
        if !write.entries.is_empty() {
            self.append(write.entries).await?;
        }
        Ok(())
    }
}

/// A shared store is a store: lets a caller keep a handle to the storage it
/// gave the driver (to inspect it, or to restart a node on the same data).
#[async_trait]
impl<L: LogStorage> LogStorage for std::sync::Arc<L> {
    async fn stored_state(&self) -> Result<StoredState, StorageError> {
        (**self).stored_state().await
    }
    async fn append(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        (**self).append(entries).await
    }
    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        (**self).truncate(from).await
    }
    async fn purge(&self, up_to: Index) -> Result<(), StorageError> {
        (**self).purge(up_to).await
    }
    async fn entries(
        &self,
        start: Index,
        end: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        (**self).entries(start, end, max_bytes).await
    }
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        (**self).save_hard_state(hard_state).await
    }
    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        (**self).write(write).await
    }
    async fn save_snapshot(&self, meta: SnapshotMeta, purge_to: Index) -> Result<(), StorageError> {
        (**self).save_snapshot(meta, purge_to).await
    }
    async fn install_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        (**self).install_snapshot(meta).await
    }
}

#[cfg(test)]
mod tests {
    use super::StorageError;
    use crate::state_machine::StateMachineError;
    use std::error::Error;

    #[test]
    fn backend_errors_keep_their_cause_as_the_source() {
        let io = std::io::Error::other("disk on fire");
        let e = StorageError::backend(io);
        assert_eq!(e.to_string(), "storage backend error: disk on fire");
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk on fire")
        );
        let e = StateMachineError::backend("store closed");
        assert_eq!(e.to_string(), "state machine error: store closed");
        assert!(e.source().is_some());
    }
}
