//! The [`LogStorage`] trait on [`RocksLog`]: state from the cache, writes
//! through the writer, range reads from RocksDB on tokio's blocking pool.

use std::path::Path;

use async_trait::async_trait;
use raft_core::{
    Entry, HardState, Index, LogId, LogStorage, LogWrite, SnapshotMeta, StorageError, StoredState,
};
use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

use super::errors::{corruption, storage_error};
use super::writer::Op;
use super::{lock, RocksLog, LOG_CF};
use crate::record;

#[async_trait]
impl LogStorage for RocksLog {
    async fn stored_state(&self) -> Result<StoredState, StorageError> {
        let c = lock(&self.cache).clone();
        let first_log_id = (!c.is_empty()).then(|| {
            let i = c.first_index();
            LogId::new(c.term(i).unwrap_or(0), i)
        });
        Ok(StoredState {
            hard_state: c.hard_state,
            snapshot: c.snapshot.clone(),
            purged: c.purged,
            first_log_id,
            last_log_id: (!c.is_empty()).then_some(c.last),
            membership: c
                .memberships
                .iter()
                .next_back()
                .map(|(i, m)| (*i, m.clone())),
        })
    }

    async fn append(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.submit(Op::Write(LogWrite {
            entries,
            ..LogWrite::default()
        }))
        .await
    }

    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        self.submit(Op::Write(LogWrite {
            truncate_from: Some(from),
            ..LogWrite::default()
        }))
        .await
    }

    async fn purge(&self, up_to: Index) -> Result<(), StorageError> {
        self.submit(Op::Purge(up_to)).await
    }

    async fn entries(
        &self,
        start: Index,
        end: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let (first, last) = {
            let c = lock(&self.cache);
            (c.first_index(), c.last.index)
        };
        if start < first {
            return Err(StorageError::Compacted { first_index: first });
        }
        if end > last + 1 {
            return Err(StorageError::Invalid(format!(
                "read end {end} is past the last index {last} + 1"
            )));
        }
        if start > end {
            return Err(StorageError::Invalid(format!(
                "read start {start} is after its end {end}"
            )));
        }
        if start == end {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        let task = tokio::task::spawn_blocking(move || read_range(&db, start, end, max_bytes));
        task.await
            .map_err(|e| StorageError::backend(format!("read task failed: {e}")))?
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        self.submit(Op::Write(LogWrite {
            hard_state: Some(hard_state),
            ..LogWrite::default()
        }))
        .await
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        if write.is_empty() {
            return Ok(());
        }
        self.submit(Op::Write(write)).await
    }

    async fn save_snapshot(&self, meta: SnapshotMeta, purge_to: Index) -> Result<(), StorageError> {
        self.submit(Op::SaveSnapshot(meta, purge_to)).await
    }

    async fn install_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.submit(Op::InstallSnapshot(meta)).await
    }
}

fn read_range(
    db: &DB,
    start: Index,
    end: Index,
    max_bytes: u64,
) -> Result<Vec<Entry>, StorageError> {
    let log = db
        .cf_handle(LOG_CF)
        .ok_or_else(|| StorageError::backend("log column family missing"))?;
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(record::entry_key(end).to_vec());
    let start_key = record::entry_key(start);
    let iter = db.iterator_cf_opt(log, ro, IteratorMode::From(&start_key, Direction::Forward));
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut expected = start;
    for item in iter {
        let (key, value) = item.map_err(|e| storage_error(Path::new("raft_log"), e))?;
        let index = record::key_index(&key).map_err(|e| corruption(expected, e.0))?;
        if index != expected {
            return Err(corruption(
                expected,
                format!("entry missing: the next stored entry is {index}"),
            ));
        }
        let entry = record::decode_entry(&value, index).map_err(|e| corruption(index, e.0))?;
        let size = entry.size_bytes();
        if !out.is_empty() && bytes + size > max_bytes {
            return Ok(out);
        }
        bytes += size;
        out.push(entry);
        expected += 1;
    }
    if expected != end {
        return Err(corruption(expected, "entry missing: the log ends early"));
    }
    Ok(out)
}
