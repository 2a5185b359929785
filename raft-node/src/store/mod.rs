//! The key-value state machine on RocksDB: two column families in the node's
//! single database (beside the Raft log), written in one batch per apply
//! together with the applied index, so a restart neither loses nor
//! re-applies an entry.
//!
//! - `kv`: key → its latest record `2:u8 | crc32c:u32 | mod_rev:u64 |
//!   create_rev:u64 | version:u64 | value`; the CRC covers every byte
//!   after it, so a corrupted value is refused, not served. A key attached
//!   to a lease has a version 3 record, `3 | crc32c | mod_rev | create_rev
//!   | version | lease:u64 | value`. (Records of
//!   version 1, `1 | crc32c | rev | value`, from earlier releases are
//!   still read, as created at `rev` with version 1.)
//! - `kv_meta` also holds the leases (`l/<id:u64>` → `1 | ttl:u64 |
//!   keys:u64`), the index of their keys (`a/<id:u64><key>`) and their
//!   count (`lease_count`); see `lease.rs`.
//! - `kv_meta` also holds the history (`h/`, `g/`), the current
//!   `revision` and the `compacted` revision (see `history.rs`).
//! - `kv_meta`: `applied` → u64; `i/<slot>` → the outcome of the first write
//!   with that idempotency key; `x/<index:u64><slot>` → ordering index used
//!   to forget tokens older than the idempotency window. The slot is the
//!   token in its principal's namespace ([`Command::idempotency_slot`]).
//!
//! The batch is written without fsync: the Raft log is durable, and after a
//! power loss the lost tail is re-applied from it, deterministically.
//!
//! Revisions work like etcd's: the revision of a change is the log index
//! of the entry that made it (identical on every replica, strictly
//! increasing, but not by exactly one as in etcd: entries that change no
//! key, such as no-ops, configuration changes and failed preconditions,
//! use up indexes without making a revision). Each key keeps its
//! `create_revision`, `mod_revision` and `version`; a value replaced or
//! deleted stays in the history (a delete as a tombstone), readable at
//! past revisions until compacted. The history lives in `kv_meta`
//! (layout in `history.rs`), so snapshots and backups carry it.
//!
//! The parts: `apply.rs` holds the rules of applying (preconditions,
//! idempotency records), and `mvcc.rs` those of revisions and
//! compaction, pure and tested without RocksDB; `records.rs` and
//! `history.rs` the record formats and key layout; `rocks.rs` the reads
//! ([`KvReader`]) and the batch; `at.rs` the reads at a past revision;
//! `snapshots.rs` taking and installing snapshots.
//!
//! [`Command::idempotency_slot`]: crate::command::Command::idempotency_slot

mod apply;
mod at;
mod backup;
mod changes;
mod history;
mod lease;
mod mvcc;
mod records;
mod rocks;
mod snapshots;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lease;
#[cfg(test)]
mod tests_revisions;
#[cfg(test)]
mod tests_txn;
#[cfg(test)]
mod tests_txn_lease;
mod txn;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Entry, Index, SnapshotBuild, SnapshotData, SnapshotMeta, StateMachine, StateMachineError,
};
use rocksdb::DB;
use tokio::sync::watch;

use crate::command::Outcome;
use crate::watch::{WatchConfig, WatchHub, Watches};
use records::INSTALLING_KEY;

pub use backup::{snapshot_file, ExportRequest};
pub use changes::{event_bytes, ChangesPage, PageLimit, EVENT_OVERHEAD};
pub use mvcc::Revisions;
pub use rocks::KvReader;

/// Column family of the data.
pub const KV_CF: &str = "kv";
/// Column family of the applied index and the idempotency table.
pub const KV_META_CF: &str = "kv_meta";

/// Why the store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored record fails its checksum or format.
    #[error("corrupted record for key {key:?}: {detail}")]
    Corruption {
        /// The key (lossy UTF-8).
        key: String,
        /// What is wrong.
        detail: &'static str,
    },
    /// A column family is missing (the database was not opened with them).
    #[error("column family {0} missing")]
    MissingColumnFamily(&'static str),
    /// A snapshot from the leader is replacing the data; nothing can be
    /// read consistently until it is done.
    #[error("a snapshot from the leader is being installed; retry shortly")]
    Installing,
    /// A read at a revision whose history was compacted.
    #[error("revision {requested} is compacted: history is kept from revision {compacted}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still readable.
        compacted: u64,
    },
    /// A read at a revision the store has not reached.
    #[error("revision {requested} is in the future: the current revision is {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
}

/// A stored value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The key's `mod_revision`: the revision (log index) of the write
    /// that set this value. Its `ETag`.
    pub rev: u64,
    /// The key's `create_revision`: the revision of the write that created
    /// it (since it was last deleted).
    pub create_rev: u64,
    /// The key's `version`: 1 when created, one more per write since;
    /// a delete starts it over.
    pub version: u64,
    /// The lease the key is attached to (0: none). Only the current
    /// record knows it: past versions read from the history show 0.
    pub lease: u64,
}

/// The state machine: applies commands to the store.
pub struct KvStateMachine {
    reader: KvReader,
    /// Idempotency tokens are remembered for this many log entries.
    idempotency_window_entries: u64,
    /// History is compacted to this many log entries below the last
    /// applied (0: only by command).
    history_retention_entries: u64,
    /// Released history records deleted after each entry, at most
    /// ([`mvcc::COLLECT_PER_ENTRY`]; smaller in tests).
    collect_per_entry: usize,
    /// Where snapshot files live; snapshots are refused without one.
    snapshot_dir: Option<PathBuf>,
    /// Bumped whenever the replicated member addresses may have changed.
    members_changed: Arc<watch::Sender<u64>>,
    /// Where applied changes are published for watches.
    hub: WatchHub,
    /// The limits of watches.
    watch_cfg: WatchConfig,
}

impl std::fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStateMachine")
            .field(
                "idempotency_window_entries",
                &self.idempotency_window_entries,
            )
            .finish_non_exhaustive()
    }
}

impl KvStateMachine {
    /// A state machine over `db`. Every replica must use the same
    /// `idempotency_window_entries`: forgetting a token is part of the
    /// replicated state.
    ///
    /// # Errors
    ///
    /// [`StoreError::MissingColumnFamily`].
    pub fn new(db: Arc<DB>, idempotency_window_entries: u64) -> Result<Self, StoreError> {
        let reader = KvReader::new(db)?;
        reader.migrate_revisions()?;
        Ok(Self {
            reader,
            idempotency_window_entries,
            history_retention_entries: 0,
            collect_per_entry: mvcc::COLLECT_PER_ENTRY,
            snapshot_dir: None,
            members_changed: Arc::new(watch::channel(0).0),
            hub: WatchHub::new(&WatchConfig::default()),
            watch_cfg: WatchConfig::default(),
        })
    }

    /// Sets the limits of watches (before any is opened).
    pub fn with_watch_config(mut self, cfg: WatchConfig) -> Self {
        self.hub = WatchHub::new(&cfg);
        self.watch_cfg = cfg;
        self
    }

    /// Opens watches of this store's changes.
    pub fn watches(&self) -> Watches {
        Watches::new(self.hub.clone(), self.reader(), self.watch_cfg.clone())
    }

    /// Compacts the revision history automatically to `entries` log
    /// entries below the last applied (0: only `POST /v1/kv/compact`
    /// compacts). Like the idempotency window, every replica must use the
    /// same value: the history is replicated state.
    pub fn with_history_retention(mut self, entries: u64) -> Self {
        self.history_retention_entries = entries;
        self
    }

    /// Deletes at most `n` released history records after each entry, to
    /// test collection that spans entries and batches.
    #[cfg(test)]
    pub(crate) fn with_collect_per_entry(mut self, n: usize) -> Self {
        self.collect_per_entry = n;
        self
    }

    /// Enables snapshots, kept in `dir` (created if missing), and finishes
    /// an install that a crash interrupted.
    ///
    /// # Errors
    ///
    /// [`StoreError`] or an I/O error, with context.
    pub fn with_snapshot_dir(mut self, dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.into();
        crate::snapshot::create_private_dir(&dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        self.snapshot_dir = Some(dir);
        if let Some(meta) = self.reader.meta_record(INSTALLING_KEY)? {
            tracing::warn!(last = %meta.last_log_id, "finishing a snapshot install interrupted by a crash");
            self.finish_install(&meta)
                .map_err(|e| anyhow::anyhow!("finishing the interrupted snapshot install: {e}"))?;
        }
        Ok(self)
    }

    /// A receiver that changes whenever the replicated member addresses may
    /// have changed.
    pub fn members_changed(&self) -> watch::Receiver<u64> {
        self.members_changed.subscribe()
    }

    /// A reader of the same store.
    pub fn reader(&self) -> KvReader {
        self.reader.clone()
    }

    /// Decides `entries` by the rules of [`apply`] and writes the result
    /// in one batch.
    fn apply_batch(&self, entries: &[Entry]) -> Result<Vec<Outcome>, StoreError> {
        let applied = apply::apply(
            &self.reader,
            self.idempotency_window_entries,
            self.history_retention_entries,
            self.collect_per_entry,
            entries,
        )?;
        self.reader.write(applied.writes)?;
        // In the store now: watchers may read it back from the history.
        self.hub.publish(applied.events);
        if applied.members_changed {
            self.members_changed.send_modify(|v| *v += 1);
        }
        Ok(applied.outcomes)
    }
}

#[async_trait]
impl StateMachine for KvStateMachine {
    type Response = Outcome;

    async fn applied_index(&mut self) -> Result<Index, StateMachineError> {
        self.reader.applied().map_err(StateMachineError::backend)
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Outcome>, StateMachineError> {
        // Unsynced RocksDB writes and point reads take microseconds; the
        // apply task is the only caller, so running them inline is fine.
        self.apply_batch(entries)
            .map_err(StateMachineError::backend)
    }

    async fn build_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotData, StateMachineError> {
        self.begin_snapshot(meta).await?.await
    }

    /// Takes a RocksDB snapshot of the store on a blocking thread and
    /// returns as soon as it is taken; the walk and the file's write go on
    /// there while entries are applied.
    async fn begin_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotBuild, StateMachineError> {
        self.start_snapshot(meta).await
    }

    async fn latest_snapshot(
        &mut self,
    ) -> Result<Option<(SnapshotMeta, SnapshotData)>, StateMachineError> {
        self.latest()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), StateMachineError> {
        self.install(meta, data).await?;
        // Changes the snapshot covers were never published: watchers catch
        // up from the history it carries.
        self.hub.replaced();
        Ok(())
    }
}
