//! `RocksLog`: the [`LogStorage`] on RocksDB, and its group-commit writer.
//!
//! Every mutation goes through one writer thread. The writer takes every
//! request queued while the previous batch was syncing, validates each
//! against the cached state (a request that breaks the contract is refused
//! alone, with nothing of it written), puts the accepted ones into one
//! `WriteBatch`, writes it with one sync, and only then updates the cache and
//! answers the callers. Reads go straight to RocksDB on tokio's blocking pool.
//!
//! - `open`: opening a directory, the checks before RocksDB opens it, and
//!   the recovery read that verifies every record and builds the cache;
//! - `writer`: the group-commit writer thread and its `WriteBatch`;
//! - `stage`: validating each mutation against the cache (append,
//!   truncation, purge, snapshots) and listing its batch operations;
//! - `log_storage`: the [`LogStorage`] trait, and range reads;
//! - `errors`: RocksDB errors as [`StorageError`]s.
//!
//! [`LogStorage`]: raft_core::LogStorage

mod errors;
mod log_storage;
mod open;
mod stage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use raft_core::{HardState, Index, LogId, SnapshotMeta, StorageError, Term};
use rocksdb::DB;
use tokio::sync::{mpsc, oneshot};

use crate::cache::Cache;
use crate::options::SyncPolicy;
use writer::{Op, Request};

/// Column family of log entries: key = big-endian index, value = entry record.
pub const LOG_CF: &str = "raft_log";
/// Column family of metadata: format marker, hard state, purge point, snapshot.
pub const META_CF: &str = "raft_meta";
/// The format marker this build writes and accepts.
pub const FORMAT: &str = "raft-log/1";

const KEY_FORMAT: &[u8] = b"format";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_PURGED: &[u8] = b"purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// A durable Raft log in RocksDB. See the [crate docs](crate).
#[derive(Debug)]
pub struct RocksLog {
    path: PathBuf,
    db: Arc<DB>,
    sync: SyncPolicy,
    cache: Arc<Mutex<Cache>>,
    writer: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

fn lock(cache: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    // The cache is replaced whole after a successful write, never left half
    // updated, so a poisoned lock still guards a consistent value.
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RocksLog {
    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The RocksDB instance, to use
    /// [`RocksLogOptions::extra_column_families`](crate::RocksLogOptions::extra_column_families)
    /// for other data in the same database.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// When writes are acknowledged.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.sync
    }

    /// The first index in the log (the purge point + 1, even when empty).
    pub fn first_index(&self) -> Index {
        lock(&self.cache).first_index()
    }

    /// The last index in the log (the purge point when empty).
    pub fn last_index(&self) -> Index {
        lock(&self.cache).last.index
    }

    /// The id of the last entry (the purge point when empty).
    pub fn last_log_id(&self) -> LogId {
        lock(&self.cache).last
    }

    /// The term of the entry at `index`, from the cache.
    pub fn term(&self, index: Index) -> Option<Term> {
        lock(&self.cache).term(index)
    }

    /// The saved hard state.
    pub fn hard_state(&self) -> HardState {
        lock(&self.cache).hard_state
    }

    /// Records the metadata of a snapshot durably (the log is purged separately).
    ///
    /// # Errors
    ///
    /// A [`StorageError`] from RocksDB.
    pub async fn save_snapshot_meta(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.submit(Op::Snapshot(meta)).await
    }

    async fn submit(&self, op: Op) -> Result<(), StorageError> {
        let writer = self
            .writer
            .as_ref()
            .ok_or_else(|| StorageError::backend("store closed"))?;
        let (reply, rx) = oneshot::channel();
        writer
            .send(Request { op, reply })
            .await
            .map_err(|_| StorageError::backend("log writer stopped"))?;
        rx.await
            .map_err(|_| StorageError::backend("log writer stopped"))?
    }
}

impl Drop for RocksLog {
    fn drop(&mut self) {
        // Closing the queue stops the writer after what it holds; joining it
        // releases its database handle before ours, so the directory can be
        // reopened as soon as this returns.
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
