//! `RocksLog`: the [`LogStorage`] on RocksDB, and its group-commit writer.
//!
//! Every mutation goes through one writer thread. The writer takes every
//! request queued while the previous batch was syncing, validates each
//! against the cached state (a request that breaks the contract is refused
//! alone, with nothing of it written), puts the accepted ones into one
//! `WriteBatch`, writes it with one sync, and only then updates the cache and
//! answers the callers. Reads go straight to RocksDB on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use raft_core::{
    Entry, HardState, Index, LogId, LogStorage, LogWrite, SnapshotMeta, StorageError, StoredState,
    Term,
};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};
use tokio::sync::{mpsc, oneshot};

use crate::cache::Cache;
use crate::error::OpenError;
use crate::options::{Compression, RocksLogOptions, SyncPolicy};
use crate::record;

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

/// One mutation.
#[derive(Debug)]
enum Op {
    Write(LogWrite),
    Purge(Index),
    Snapshot(SnapshotMeta),
    /// Record a snapshot, then purge up to the index.
    SaveSnapshot(SnapshotMeta, Index),
    /// Replace the whole log by an installed snapshot.
    InstallSnapshot(SnapshotMeta),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

/// A batch operation, collected before it is known the request is valid.
enum BatchOp {
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

/// Maps a RocksDB error to a storage error, keeping "disk full" recognisable.
fn storage_error(path: &Path, e: rocksdb::Error) -> StorageError {
    let msg = e.to_string();
    match e.kind() {
        rocksdb::ErrorKind::Corruption => {
            metrics::counter!("raft_log_corruptions_total").increment(1);
            StorageError::Corruption {
                index: 0,
                reason: format!("{}: {msg}", path.display()),
            }
        }
        _ if msg.contains("No space left") => StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{}: {msg}", path.display()),
        )),
        rocksdb::ErrorKind::IOError => {
            StorageError::Io(std::io::Error::other(format!("{}: {msg}", path.display())))
        }
        _ => StorageError::backend(format!("{}: {msg}", path.display())),
    }
}

/// A copy of `e` for each caller of a failed group write, keeping its kind
/// (`StorageError` is not `Clone` because `io::Error` is not).
fn copy_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Corruption { index, reason } => StorageError::Corruption {
            index: *index,
            reason: reason.clone(),
        },
        StorageError::Invalid(m) => StorageError::Invalid(m.clone()),
        StorageError::Compacted { first_index } => StorageError::Compacted {
            first_index: *first_index,
        },
        StorageError::Io(io) => StorageError::Io(std::io::Error::new(io.kind(), io.to_string())),
        StorageError::Unsupported(m) => StorageError::Unsupported(m.clone()),
        // The cause is not `Clone`: each copy keeps its description.
        other => StorageError::backend(other.to_string()),
    }
}

fn corruption(index: Index, reason: impl Into<String>) -> StorageError {
    metrics::counter!("raft_log_corruptions_total").increment(1);
    StorageError::Corruption {
        index,
        reason: reason.into(),
    }
}

impl RocksLog {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// Opening reads the whole log once to verify every record and to build
    /// the cache behind [`term`](Self::term) and friends.
    ///
    /// # Errors
    ///
    /// An [`OpenError`] naming the path: not a directory, missing, holding
    /// something else or another format version, a corrupted record, or an
    /// I/O or RocksDB failure.
    pub fn open(path: impl AsRef<Path>, options: RocksLogOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        if options.max_group_commit_requests == 0 || options.write_queue_capacity == 0 {
            return Err(OpenError::InvalidOption(
                "max_group_commit_requests and write_queue_capacity must be at least 1".into(),
            ));
        }
        let io = |source| OpenError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::metadata(&path) {
            Ok(m) if !m.is_dir() => return Err(OpenError::NotADirectory { path }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !options.create_if_missing {
                    return Err(OpenError::Missing { path });
                }
                std::fs::create_dir_all(&path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        let existed = path.join("CURRENT").exists();
        if !existed && std::fs::read_dir(&path).map_err(io)?.next().is_some() {
            return Err(OpenError::NotAStore {
                path,
                reason: "the directory is not empty and holds no RocksDB database".into(),
            });
        }

        let mut db_opts = Options::default();
        // WAL recovery stays RocksDB's default, point-in-time: replay up to
        // the first bad record. A crash tears the unsynced tail of the WAL
        // in any shape (cut short, zeroed pages of a preallocated file,
        // pages written out of order), and that must never stop a node from
        // starting. `TolerateCorruptedTailRecords` would refuse most of those
        // shapes (tests/storage_faults.rs opens each one). A damaged record
        // before a synced write (bit rot in synced data) would also end the
        // replay, silently: `wal_check` refuses such a store first.
        if existed {
            crate::wal_check::check(&path)?;
        }
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        let mut cf_names: Vec<String> = vec![LOG_CF.into(), META_CF.into()];
        if existed {
            let existing = DB::list_cf(&db_opts, &path).map_err(|source| OpenError::Rocks {
                path: path.clone(),
                source,
            })?;
            if !existing.iter().any(|c| c == META_CF) || !existing.iter().any(|c| c == LOG_CF) {
                return Err(OpenError::NotAStore {
                    path,
                    reason: format!("a RocksDB database with column families {existing:?}"),
                });
            }
            for c in existing {
                if !cf_names.contains(&c) && c != "default" {
                    cf_names.push(c);
                }
            }
        }
        for c in &options.extra_column_families {
            if !cf_names.contains(c) {
                cf_names.push(c.clone());
            }
        }
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_write_buffer_size(options.write_buffer_bytes);
        cf_opts.set_compression_type(match options.compression {
            Compression::None => DBCompressionType::None,
            Compression::Lz4 => DBCompressionType::Lz4,
        });
        let descriptors = cf_names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()))
            .collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&db_opts, &path, descriptors).map_err(|source| {
            OpenError::Rocks {
                path: path.clone(),
                source,
            }
        })?;

        let state = Self::load(&db, &path, existed)?;
        if options.sync == SyncPolicy::UnsafeNoSync {
            tracing::warn!(
                path = %path.display(),
                "raft log opened WITHOUT fsync: acknowledged entries can be lost on power failure"
            );
        }
        let db = Arc::new(db);
        let cache = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::channel(options.write_queue_capacity);
        let writer = Writer {
            db: db.clone(),
            path: path.clone(),
            cache: cache.clone(),
            sync: options.sync,
            max_requests: options.max_group_commit_requests,
        };
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(Self {
            path,
            db,
            sync: options.sync,
            cache,
            writer: Some(tx),
            thread: Some(thread),
        })
    }

    /// Reads and verifies the metadata and every entry.
    fn load(db: &DB, path: &Path, existed: bool) -> Result<Cache, OpenError> {
        let corrupt = |index, reason: String| OpenError::Corruption {
            path: path.to_path_buf(),
            index,
            reason,
        };
        let rocks = |source| OpenError::Rocks {
            path: path.to_path_buf(),
            source,
        };
        let meta = db
            .cf_handle(META_CF)
            .ok_or_else(|| corrupt(0, "meta column family missing".into()))?;
        let log = db
            .cf_handle(LOG_CF)
            .ok_or_else(|| corrupt(0, "log column family missing".into()))?;
        match db.get_cf(meta, KEY_FORMAT).map_err(rocks)? {
            Some(v) if v == FORMAT.as_bytes() => {}
            Some(v) => {
                return Err(OpenError::Format {
                    path: path.to_path_buf(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                    expected: FORMAT.into(),
                })
            }
            None if existed => {
                return Err(OpenError::NotAStore {
                    path: path.to_path_buf(),
                    reason: "the database has no raft-log format marker".into(),
                })
            }
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, KEY_FORMAT, FORMAT.as_bytes(), &wo)
                    .map_err(rocks)?;
            }
        }
        let mut cache = Cache::default();
        if let Some(v) = db.get_cf(meta, KEY_HARD_STATE).map_err(rocks)? {
            cache.hard_state = record::decode_hard_state(&v)
                .map_err(|e| corrupt(0, format!("hard state: {}", e.0)))?;
        }
        if let Some(v) = db.get_cf(meta, KEY_PURGED).map_err(rocks)? {
            cache.purged = record::decode_log_id(&v)
                .map_err(|e| corrupt(0, format!("purge point: {}", e.0)))?;
        }
        if let Some(v) = db.get_cf(meta, KEY_SNAPSHOT).map_err(rocks)? {
            cache.snapshot = Some(
                record::decode_snapshot_meta(&v)
                    .map_err(|e| corrupt(0, format!("snapshot metadata: {}", e.0)))?,
            );
        }
        cache.last = cache.purged;
        for item in db.iterator_cf(log, IteratorMode::Start) {
            let (key, value) = item.map_err(rocks)?;
            let index = record::key_index(&key).map_err(|e| corrupt(0, e.0))?;
            let expected = cache.last.index + 1;
            if index != expected {
                return Err(corrupt(
                    expected,
                    format!("entry missing: the next stored entry is {index}"),
                ));
            }
            let entry = record::decode_entry(&value, index).map_err(|e| corrupt(index, e.0))?;
            if entry.term < cache.last.term {
                return Err(corrupt(
                    index,
                    format!("term {} after term {}", entry.term, cache.last.term),
                ));
            }
            cache.push(&entry);
        }
        let end = cache.last.index.max(cache.purged.index);
        if cache.hard_state.commit > end {
            return Err(corrupt(
                cache.hard_state.commit,
                format!(
                    "hard state commits index {} but the log ends at {end}",
                    cache.hard_state.commit
                ),
            ));
        }
        Ok(cache)
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The RocksDB instance, to use [`RocksLogOptions::extra_column_families`]
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

fn wo_syncs(sync: SyncPolicy) -> bool {
    sync == SyncPolicy::Always
}

/// The group-commit writer thread.
struct Writer {
    db: Arc<DB>,
    path: PathBuf,
    cache: Arc<Mutex<Cache>>,
    sync: SyncPolicy,
    max_requests: usize,
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Request>) {
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

/// Validates `op` against `cache`, applies it there and lists its batch
/// operations. On error, `cache` and `ops` may be half-updated: the caller
/// stages on a copy and drops it.
fn stage(cache: &mut Cache, ops: &mut Vec<BatchOp>, op: Op) -> Result<(), StorageError> {
    match op {
        Op::Write(w) => {
            // Committed entries are protected by the commit index saved
            // before this write: the write's own hard state may commit the
            // very entries it appends after a truncation.
            let commit = cache.hard_state.commit;
            if let Some(hs) = w.hard_state {
                cache.hard_state = hs;
                ops.push(BatchOp::Put {
                    meta: true,
                    key: KEY_HARD_STATE.to_vec(),
                    value: record::encode_hard_state(&hs),
                });
            }
            if let Some(from) = w.truncate_from {
                truncate(cache, ops, from, commit)?;
            }
            if !w.entries.is_empty() {
                append(cache, ops, w.entries, commit)?;
            }
        }
        Op::Purge(up_to) => {
            if up_to > cache.purged.index {
                let end = up_to.min(cache.last.index) + 1;
                if cache.first_index() < end {
                    ops.push(BatchOp::DeleteRange {
                        from: cache.first_index(),
                        to: end,
                    });
                }
                cache.purge(up_to);
                ops.push(BatchOp::Put {
                    meta: true,
                    key: KEY_PURGED.to_vec(),
                    value: record::encode_log_id(cache.purged),
                });
            }
        }
        Op::Snapshot(meta) => {
            ops.push(BatchOp::Put {
                meta: true,
                key: KEY_SNAPSHOT.to_vec(),
                value: record::encode_snapshot_meta(&meta),
            });
            cache.snapshot = Some(meta);
        }
        Op::SaveSnapshot(meta, purge_to) => {
            if purge_to > meta.last_log_id.index {
                return Err(StorageError::Invalid(format!(
                    "purge to {purge_to} past the snapshot's last index {}",
                    meta.last_log_id.index
                )));
            }
            stage(cache, ops, Op::Snapshot(meta))?;
            stage(cache, ops, Op::Purge(purge_to))?;
        }
        Op::InstallSnapshot(meta) => {
            let id = meta.last_log_id;
            if !cache.is_empty() {
                ops.push(BatchOp::DeleteRange {
                    from: cache.first_index(),
                    to: Index::MAX,
                });
            }
            cache.runs.clear();
            cache.memberships.clear();
            cache.purged = id;
            cache.last = id;
            ops.push(BatchOp::Put {
                meta: true,
                key: KEY_PURGED.to_vec(),
                value: record::encode_log_id(id),
            });
            if cache.hard_state.commit < id.index {
                // The snapshot is committed: never let the saved commit
                // index point below it.
                cache.hard_state.commit = id.index;
                ops.push(BatchOp::Put {
                    meta: true,
                    key: KEY_HARD_STATE.to_vec(),
                    value: record::encode_hard_state(&cache.hard_state),
                });
            }
            stage(cache, ops, Op::Snapshot(meta))?;
        }
    }
    Ok(())
}

fn truncate(
    cache: &mut Cache,
    ops: &mut Vec<BatchOp>,
    from: Index,
    commit: Index,
) -> Result<(), StorageError> {
    if from <= cache.purged.index || from == 0 {
        return Err(StorageError::Invalid(format!(
            "truncate from {from} reaches into the purged prefix (first index {})",
            cache.first_index()
        )));
    }
    if from <= commit && from <= cache.last.index {
        // Raft never removes a committed entry (Leader Completeness); a
        // caller that tries is broken, and obeying would lose data.
        return Err(StorageError::Invalid(format!(
            "truncate from {from} would remove committed entries (commit index {commit})"
        )));
    }
    if from <= cache.last.index {
        // Open-ended, so nothing past the cached end can survive either.
        ops.push(BatchOp::DeleteRange {
            from,
            to: Index::MAX,
        });
        cache.cut(from);
    }
    Ok(())
}

fn append(
    cache: &mut Cache,
    ops: &mut Vec<BatchOp>,
    entries: Vec<Entry>,
    commit: Index,
) -> Result<(), StorageError> {
    let first = entries[0].index;
    if first <= cache.purged.index || first == 0 {
        return Err(StorageError::Invalid(format!(
            "append at {first} is at or below the purged prefix (first index {})",
            cache.first_index()
        )));
    }
    if first > cache.last.index + 1 {
        return Err(StorageError::Invalid(format!(
            "append at {first} leaves a gap after the last index {}",
            cache.last.index
        )));
    }
    for (i, e) in entries.iter().enumerate() {
        if e.index != first + i as u64 {
            return Err(StorageError::Invalid(format!(
                "entries are not consecutive: {} follows {}",
                e.index,
                first + i as u64 - 1
            )));
        }
    }
    truncate(cache, ops, first, commit)?;
    for e in &entries {
        if e.term < cache.last.term {
            return Err(StorageError::Invalid(format!(
                "entry {} has term {} below the previous entry's {}",
                e.index, e.term, cache.last.term
            )));
        }
        let value = record::encode_entry(e);
        // Pair the check: what is written must read back as the same entry.
        debug_assert_eq!(
            record::decode_entry(&value, e.index).as_ref(),
            Ok(e),
            "record round trip"
        );
        ops.push(BatchOp::Put {
            meta: false,
            key: record::entry_key(e.index).to_vec(),
            value,
        });
        cache.push(e);
    }
    Ok(())
}

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
