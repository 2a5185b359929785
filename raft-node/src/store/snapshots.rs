//! The state machine's snapshots: writing one from a RocksDB view while
//! entries are applied, finding the latest, and installing one from the
//! leader (the file taken over durably, verified, then loaded in place of
//! the data, with a crash mid-install finished at the next start).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft_core::{FileSource, Index, SnapshotBuild, SnapshotData, SnapshotMeta, StateMachineError};
use rocksdb::{WriteBatch, WriteOptions, DB};

use super::records::{is_replicated_meta, APPLIED_KEY, INSTALLING_KEY, SNAPSHOT_META_KEY};
use super::{KvStateMachine, KV_CF, KV_META_CF};

/// Writes snapshot metadata under `key` in `kv_meta`, synced.
pub(super) fn put_meta_synced(db: &DB, key: &[u8], meta: &SnapshotMeta) -> Result<(), String> {
    let cf = db
        .cf_handle(KV_META_CF)
        .ok_or_else(|| "kv_meta column family missing".to_string())?;
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(
        &cf,
        key,
        raft_log::record::encode_snapshot_meta(meta),
        &opts,
    )
    .map_err(|e| e.to_string())
}

/// Stops a snapshot file's write when the build is dropped unfinished, and
/// waits (a moment: the write checks the flag every 1,024 records) until
/// its thread has let go of the database, so a stopped node holds no
/// handle on it.
struct CancelOnDrop {
    cancel: Arc<AtomicBool>,
    exited: std::sync::mpsc::Receiver<()>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.exited.recv_timeout(std::time::Duration::from_secs(30));
    }
}

fn err(e: impl Into<String>) -> StateMachineError {
    StateMachineError::backend(e.into())
}

/// The file of the snapshot at `index`.
pub(super) fn snapshot_path(dir: &Path, index: Index) -> PathBuf {
    dir.join(format!("snap-{index:020}.snap"))
}

/// Deletes snapshot files other than `keep`.
fn remove_other_snapshots(dir: &Path, keep: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p != keep && name.starts_with("snap-") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Syncs `dir` on a blocking thread.
async fn sync_dir(dir: PathBuf) -> Result<(), StateMachineError> {
    let shown = dir.display().to_string();
    tokio::task::spawn_blocking(move || crate::snapshot::sync_directory(&dir))
        .await
        .map_err(|e| err(format!("syncing the snapshot directory: {e}")))?
        .map_err(|e| err(format!("syncing {shown}: {e}")))
}

/// Copies `data` into `path`, through a temporary file, synced.
async fn copy_in(data: &SnapshotData, path: &Path) -> Result<(), StateMachineError> {
    let tmp = path.with_extension("recv");
    let io = |e: std::io::Error, p: &Path| err(format!("{}: {e}", p.display()));
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io(e, &tmp))?;
    let mut offset = 0;
    while offset < data.len() {
        let chunk = data
            .read_at(offset, 1 << 20)
            .await
            .map_err(|e| err(format!("reading the snapshot: {e}")))?;
        if chunk.is_empty() {
            return Err(err("the snapshot data ended early"));
        }
        tokio::io::AsyncWriteExt::write_all(&mut f, &chunk)
            .await
            .map_err(|e| io(e, &tmp))?;
        offset += chunk.len() as u64;
    }
    f.sync_all().await.map_err(|e| io(e, &tmp))?;
    tokio::fs::rename(&tmp, path).await.map_err(|e| io(e, path))
}

impl KvStateMachine {
    /// Loads the snapshot file of `meta` into the store and records it.
    pub(super) fn finish_install(&self, meta: &SnapshotMeta) -> Result<(), String> {
        let dir = self.snapshot_dir.as_ref().ok_or("no snapshot directory")?;
        let path = snapshot_path(dir, meta.last_log_id.index);
        let db = &self.reader.db;
        let seq = &self.reader.install_seq;
        seq.fetch_add(1, Ordering::AcqRel);
        crate::snapshot::load(db, KV_CF, KV_META_CF, is_replicated_meta, &path)
            .map_err(|e| e.to_string())?;
        let cf = self.reader.cf(KV_META_CF).map_err(|e| e.to_string())?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, APPLIED_KEY, meta.last_log_id.index.to_be_bytes());
        batch.put_cf(
            cf,
            SNAPSHOT_META_KEY,
            raft_log::record::encode_snapshot_meta(meta),
        );
        batch.delete_cf(cf, INSTALLING_KEY);
        // A snapshot (or backup) of a release without revisions: its history
        // starts at its index, like a store of that release (see
        // `KvReader::migrate_revisions`).
        let revisions = super::mvcc::stored_revisions(&self.reader).map_err(|e| e.to_string())?;
        if revisions.is_none() {
            let at = meta.last_log_id.index.to_be_bytes();
            batch.put_cf(cf, super::history::REVISION_KEY, at);
            batch.put_cf(cf, super::history::COMPACTED_KEY, at);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts).map_err(|e| e.to_string())?;
        // Even again: reads see the new data from here on. (After a failure
        // it stays odd: the node stops, and reads are refused meanwhile.)
        seq.fetch_add(1, Ordering::AcqRel);
        remove_other_snapshots(dir, &path);
        self.members_changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// The snapshot directory, or the error of a state machine without one.
    fn snapshot_dir(&self) -> Result<PathBuf, StateMachineError> {
        self.snapshot_dir
            .clone()
            .ok_or_else(|| err("snapshots are not enabled"))
    }

    /// Takes a RocksDB snapshot of the store on a blocking thread and
    /// returns as soon as it is taken; the walk and the file's write go on
    /// there while entries are applied.
    pub(super) async fn start_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotBuild, StateMachineError> {
        let dir = self.snapshot_dir()?;
        let applied = self.reader.applied().map_err(|e| err(e.to_string()))?;
        if applied != meta.last_log_id.index {
            return Err(err(format!(
                "snapshot asked at {} but the applied index is {applied}",
                meta.last_log_id
            )));
        }
        let db = self.reader.db.clone();
        let meta = meta.clone();
        let path = snapshot_path(&dir, meta.last_log_id.index);
        let (viewed_tx, viewed_rx) = tokio::sync::oneshot::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let (exited_tx, exited_rx) = std::sync::mpsc::channel::<()>();
        let stop = cancel.clone();
        let writing = tokio::task::spawn_blocking(move || -> Result<PathBuf, String> {
            // Dropped when this thread is done with the database.
            let _exited = exited_tx;
            let w = crate::snapshot::write(
                &db,
                KV_CF,
                KV_META_CF,
                is_replicated_meta,
                &path,
                || {
                    let _ = viewed_tx.send(());
                },
                &stop,
            )
            .map_err(|e| e.to_string())?;
            // The snapshot covers log entries that are purged next: the
            // state it captures must be durable first. Syncing the WAL now
            // also syncs everything applied up to the view.
            db.flush_wal(true).map_err(|e| e.to_string())?;
            put_meta_synced(&db, SNAPSHOT_META_KEY, &meta)?;
            tracing::debug!(records = w.records, bytes = w.bytes, path = %path.display(), "snapshot file written");
            remove_other_snapshots(&dir, &path);
            Ok(path)
        });
        // Applying waits only until the view is taken (or the write failed
        // before taking it: the error comes from the build below).
        let _ = viewed_rx.await;
        let guard = CancelOnDrop {
            cancel,
            exited: exited_rx,
        };
        Ok(Box::pin(async move {
            // A build dropped unfinished (the node stopping) stops its
            // thread and waits for it to let go of the database.
            let _guard = guard;
            let written = writing
                .await
                .map_err(|e| err(format!("snapshot task failed: {e}")))?
                .map_err(err)?;
            let source = FileSource::open(&written).map_err(|e| err(e.to_string()))?;
            let data: SnapshotData = Arc::new(source);
            Ok(data)
        }))
    }

    /// The latest snapshot taken or installed, when its file is there.
    pub(super) fn latest(&self) -> Result<Option<(SnapshotMeta, SnapshotData)>, StateMachineError> {
        let Some(dir) = &self.snapshot_dir else {
            return Ok(None);
        };
        let Some(meta) = self
            .reader
            .snapshot_meta()
            .map_err(|e| err(e.to_string()))?
        else {
            return Ok(None);
        };
        let path = snapshot_path(dir, meta.last_log_id.index);
        match FileSource::open(&path) {
            Ok(source) => Ok(Some((meta, Arc::new(source)))),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the latest snapshot's file is missing");
                Ok(None)
            }
        }
    }

    /// Installs the leader's snapshot `data` of `meta` in place of the data.
    pub(super) async fn install(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), StateMachineError> {
        let dir = self.snapshot_dir()?;
        let path = snapshot_path(&dir, meta.last_log_id.index);
        // Take the received file over (or copy the data in). The rename is
        // made durable in both directories before the install goes on: a
        // power loss must not lose the file the store is switched to.
        let moved = match data.path() {
            Some(src) => match tokio::fs::rename(src, &path).await {
                Ok(()) => {
                    sync_dir(dir.clone()).await?;
                    if let Some(from) = src.parent() {
                        sync_dir(from.to_path_buf()).await?;
                    }
                    true
                }
                Err(_) => false,
            },
            None => false,
        };
        if !moved {
            copy_in(&data, &path).await?;
            sync_dir(dir.clone()).await?;
        }
        let db = self.reader.db.clone();
        let meta = meta.clone();
        let this = KvStateMachine {
            reader: self.reader.clone(),
            idempotency_window_entries: self.idempotency_window_entries,
            history_retention_entries: self.history_retention_entries,
            collect_per_entry: self.collect_per_entry,
            snapshot_dir: Some(dir),
            members_changed: self.members_changed.clone(),
            hub: self.hub.clone(),
            watch_cfg: self.watch_cfg.clone(),
        };
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            // Refuse a bad file before anything is deleted.
            let records = crate::snapshot::verify(&path).map_err(|e| e.to_string())?;
            put_meta_synced(&db, INSTALLING_KEY, &meta)?;
            this.finish_install(&meta)?;
            tracing::info!(records, last = %meta.last_log_id, "snapshot loaded into the store");
            Ok(())
        })
        .await
        .map_err(|e| err(format!("install task failed: {e}")))?
        .map_err(err)
    }
}

#[cfg(test)]
impl KvStateMachine {
    /// Puts the store where a snapshot install is halfway through loading:
    /// reads are marked as overlapping an install and the revisions are
    /// gone (the load deleted the old data and has not written the new
    /// yet). Answers what [`Self::end_install_halfway`] puts back.
    pub(crate) fn begin_install_halfway(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        use super::history::{COMPACTED_KEY, REVISION_KEY};
        self.reader.install_seq.fetch_add(1, Ordering::AcqRel);
        let db = &self.reader.db;
        let cf = self.reader.cf(KV_META_CF).unwrap();
        let mut saved = Vec::new();
        for key in [REVISION_KEY, COMPACTED_KEY] {
            if let Some(v) = db.get_cf(cf, key).unwrap() {
                saved.push((key.to_vec(), v));
                db.delete_cf(cf, key).unwrap();
            }
        }
        saved
    }

    /// Ends what [`Self::begin_install_halfway`] began, with `saved` loaded.
    pub(crate) fn end_install_halfway(&self, saved: Vec<(Vec<u8>, Vec<u8>)>) {
        let cf = self.reader.cf(KV_META_CF).unwrap();
        for (k, v) in saved {
            self.reader.db.put_cf(cf, k, v).unwrap();
        }
        self.reader.install_seq.fetch_add(1, Ordering::AcqRel);
        // As `install_snapshot` does once the data is replaced.
        self.hub.replaced();
    }
}
