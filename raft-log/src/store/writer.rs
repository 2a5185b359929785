//! The group-commit writer thread: it drains the queue, stages each
//! request on a copy of the cache, writes the accepted ones in one
//! `WriteBatch` with one sync, and only then publishes the cache and
//! answers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raft_core::{Index, LogWrite, SnapshotMeta, StorageError};
use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::{mpsc, oneshot};

use super::errors::{copy_error, storage_error};
use super::stage::stage;
use super::{lock, LOG_CF, META_CF};
use crate::cache::Cache;
use crate::options::SyncPolicy;
use crate::record;

/// One mutation.
#[derive(Debug)]
pub(super) enum Op {
    Write(LogWrite),
    Purge(Index),
    Snapshot(SnapshotMeta),
    /// Record a snapshot, then purge up to the index.
    SaveSnapshot(SnapshotMeta, Index),
    /// Replace the whole log by an installed snapshot.
    InstallSnapshot(SnapshotMeta),
}

pub(super) struct Request {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<(), StorageError>>,
}

/// A batch operation, collected before it is known the request is valid.
pub(super) enum BatchOp {
    Put {
        meta: bool,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteRange {
        from: Index,
        to: Index,
    },
}

fn wo_syncs(sync: SyncPolicy) -> bool {
    sync == SyncPolicy::Always
}

/// The group-commit writer thread.
pub(super) struct Writer {
    pub(super) db: Arc<DB>,
    pub(super) path: PathBuf,
    pub(super) cache: Arc<Mutex<Cache>>,
    pub(super) sync: SyncPolicy,
    pub(super) max_requests: usize,
}

impl Writer {
    pub(super) fn run(self, mut rx: mpsc::Receiver<Request>) {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync == SyncPolicy::Always);
        // After a failed write the cache may no longer describe the disk
        // (RocksDB may have kept part of the batch): refuse everything after.
        let mut failed: Option<String> = None;
        while let Some(first) = rx.blocking_recv() {
            if let Some(reason) = &failed {
                let _ = first.reply.send(Err(StorageError::backend(format!(
                    "{}: the log refuses writes after an earlier failure: {reason}",
                    self.path.display()
                ))));
                continue;
            }
            let mut requests = vec![first];
            while requests.len() < self.max_requests {
                match rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            let mut staged = lock(&self.cache).clone();
            let mut ops = Vec::new();
            let mut accepted = Vec::new();
            for req in requests {
                let mut trial = staged.clone();
                let mut trial_ops = Vec::new();
                match stage(&mut trial, &mut trial_ops, req.op) {
                    Ok(()) => {
                        staged = trial;
                        ops.extend(trial_ops);
                        accepted.push(req.reply);
                    }
                    Err(e) => {
                        let _ = req.reply.send(Err(e));
                    }
                }
            }
            if accepted.is_empty() {
                continue;
            }
            let result = self.write(ops, &wo);
            match result {
                Ok(()) => {
                    *lock(&self.cache) = staged;
                    for r in accepted {
                        let _ = r.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "raft log write failed");
                    failed = Some(e.to_string());
                    for r in accepted {
                        let _ = r.send(Err(copy_error(&e)));
                    }
                }
            }
        }
    }

    fn write(&self, ops: Vec<BatchOp>, wo: &WriteOptions) -> Result<(), StorageError> {
        let (Some(log), Some(meta)) = (self.db.cf_handle(LOG_CF), self.db.cf_handle(META_CF))
        else {
            return Err(StorageError::backend("column family missing"));
        };
        let mut batch = WriteBatch::default();
        let mut bytes = 0usize;
        for op in ops {
            match op {
                BatchOp::Put {
                    meta: true,
                    key,
                    value,
                } => {
                    bytes += value.len();
                    batch.put_cf(meta, key, value);
                }
                BatchOp::Put {
                    meta: false,
                    key,
                    value,
                } => {
                    bytes += value.len();
                    batch.put_cf(log, key, value);
                }
                BatchOp::DeleteRange { from, to } => {
                    batch.delete_range_cf(log, record::entry_key(from), record::entry_key(to));
                }
            }
        }
        if wo_syncs(self.sync) {
            // Marks the WAL record as synced, for the torn-write check.
            batch.put_cf(meta, crate::wal_check::SYNCED_MARK_KEY, b"");
        }
        let started = Instant::now();
        self.db
            .write_opt(batch, wo)
            .map_err(|e| storage_error(&self.path, e))?;
        metrics::histogram!("raft_log_write_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("raft_log_write_bytes_total").increment(bytes as u64);
        Ok(())
    }
}
