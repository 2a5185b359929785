//! The key-value state machine on RocksDB: two column families in the node's
//! single database (beside the Raft log), written in one batch per apply
//! together with the applied index, so a restart neither loses nor
//! re-applies an entry.
//!
//! - `kv`: key → record `version:u8 | crc32c:u32 | rev:u64 | value`; the CRC
//!   covers rev and value, so a corrupted value is refused, not served.
//! - `kv_meta`: `applied` → u64; `i/<slot>` → the outcome of the first write
//!   with that idempotency key; `x/<index:u64><slot>` → ordering index used
//!   to forget tokens older than the idempotency window. The slot is the
//!   token in its principal's namespace ([`Command::idempotency_slot`]).
//!
//! The batch is written without fsync: the Raft log is durable, and after a
//! power loss the lost tail is re-applied from it, deterministically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use raft_core::{
    Entry, EntryPayload, FileSource, Index, SnapshotBuild, SnapshotData, SnapshotMeta,
    StateMachine, StateMachineError,
};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use tokio::sync::watch;

use crate::command::{Command, Fingerprint, Op, Outcome, Precondition, MEMBER_TAG};
use crate::config::Member;

/// Column family of the data.
pub const KV_CF: &str = "kv";
/// Column family of the applied index and the idempotency table.
pub const KV_META_CF: &str = "kv_meta";

const APPLIED_KEY: &[u8] = b"applied";
/// The metadata of the latest snapshot (raft-log's record encoding).
const SNAPSHOT_META_KEY: &[u8] = b"snapshot";
/// Set while a snapshot install is in progress (the snapshot's metadata).
const INSTALLING_KEY: &[u8] = b"installing";
/// Prefix of the replicated member address records: `m/<id:u64>`.
const MEMBER_PREFIX: &[u8] = b"m/";
/// The members (ids) of the last configuration entry applied, as JSON: a
/// later configuration deletes the address records of the nodes it drops.
const APPLIED_MEMBERS_KEY: &[u8] = b"applied_members";

/// The index of the first command applied with a principal (a scoped
/// idempotency key), u64: unscoped records older than it were written
/// before scoping existed, so a scoped retry of the same token finds them
/// (a write retried across the upgrade is not applied twice). Replicated:
/// a function of the log.
const SCOPED_SINCE_KEY: &[u8] = b"idempotency_scoped_since";

/// Whether a `kv_meta` key is replicated state (part of a snapshot), as
/// opposed to this replica's bookkeeping.
fn is_replicated_meta(key: &[u8]) -> bool {
    key != APPLIED_KEY && key != SNAPSHOT_META_KEY && key != INSTALLING_KEY
}

/// Writes snapshot metadata under `key` in `kv_meta`, synced.
fn put_meta_synced(db: &DB, key: &[u8], meta: &SnapshotMeta) -> Result<(), String> {
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

fn member_key(id: u64) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}
const RECORD_VERSION: u8 = 1;

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
}

/// A stored value and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The revision (log index of the write that set it).
    pub rev: u64,
}

fn encode_record(rev: u64, value: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(13 + value.len());
    out.put_u8(RECORD_VERSION);
    out.put_u32(0);
    out.put_u64(rev);
    out.put_slice(value);
    let crc = crc32c::crc32c(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    out.to_vec()
}

fn decode_record(key: &[u8], rec: &[u8]) -> Result<Versioned, StoreError> {
    let corrupt = |detail| StoreError::Corruption {
        key: String::from_utf8_lossy(key).into_owned(),
        detail,
    };
    if rec.len() < 13 {
        return Err(corrupt("record too short"));
    }
    if rec[0] != RECORD_VERSION {
        return Err(corrupt("unknown record version"));
    }
    let crc = u32::from_be_bytes([rec[1], rec[2], rec[3], rec[4]]);
    if crc32c::crc32c(&rec[5..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let rev = u64::from_be_bytes(rec[5..13].try_into().expect("8 bytes"));
    Ok(Versioned {
        value: Bytes::copy_from_slice(&rec[13..]),
        rev,
    })
}

/// First byte of an idempotency record of version 2 and later. Records of
/// version 1 (earlier releases) start with their index, big-endian, whose
/// first byte is 0 below index 2^56: they never start with this.
const TOKEN_RECORD_TAG: u8 = 0xFF;
/// Version of the idempotency records written now.
const TOKEN_RECORD_VERSION: u8 = 2;

/// What an idempotency record remembers of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remembered {
    /// A version-1 record (earlier releases): the CRC-32C of the request.
    Crc(u32),
    /// 128 bits of the request's SHA-256 ([`Command::fingerprint`]).
    Sha(Fingerprint),
}

impl Remembered {
    /// Whether `cmd` is the request the record was written for.
    fn matches(&self, cmd: &Command, fingerprint: &Fingerprint) -> bool {
        match self {
            Remembered::Crc(crc) => *crc == cmd.legacy_fingerprint(),
            Remembered::Sha(fp) => fp == fingerprint,
        }
    }
}

/// Version 2: `0xFF | 2 | index:u64 | fingerprint:[u8; 16] | outcome`.
/// (Version 1 was `index:u64 | crc32c:u32 | outcome`.)
fn encode_token_record(index: u64, fingerprint: &Fingerprint, outcome: &Outcome) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 8 + fingerprint.len() + 16);
    out.push(TOKEN_RECORD_TAG);
    out.push(TOKEN_RECORD_VERSION);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&outcome.encode());
    out
}

/// Reads an idempotency record of either version.
fn decode_token_record(slot: &[u8], rec: &[u8]) -> Result<(u64, Remembered, Outcome), StoreError> {
    let corrupt = || StoreError::Corruption {
        key: String::from_utf8_lossy(slot).into_owned(),
        detail: "idempotency record",
    };
    let (index, remembered, outcome) = match rec {
        [TOKEN_RECORD_TAG, TOKEN_RECORD_VERSION, rest @ ..] => {
            if rest.len() < 8 + crate::command::FINGERPRINT_BYTES {
                return Err(corrupt());
            }
            let (index, rest) = rest.split_at(8);
            let (fp, outcome) = rest.split_at(crate::command::FINGERPRINT_BYTES);
            (
                index,
                Remembered::Sha(fp.try_into().map_err(|_| corrupt())?),
                outcome,
            )
        }
        [TOKEN_RECORD_TAG, ..] => return Err(corrupt()),
        _ => {
            if rec.len() < 12 {
                return Err(corrupt());
            }
            let (index, rest) = rec.split_at(8);
            let (crc, outcome) = rest.split_at(4);
            let crc = u32::from_be_bytes(crc.try_into().map_err(|_| corrupt())?);
            (index, Remembered::Crc(crc), outcome)
        }
    };
    let index = u64::from_be_bytes(index.try_into().map_err(|_| corrupt())?);
    let outcome = Outcome::decode(Bytes::copy_from_slice(outcome)).map_err(|_| corrupt())?;
    Ok((index, remembered, outcome))
}

/// Read access to the store, cheap to clone.
#[derive(Clone)]
pub struct KvReader {
    db: Arc<DB>,
    /// Odd while a snapshot install replaces the data (a sequence lock):
    /// reads that overlap an install fail with [`StoreError::Installing`]
    /// instead of seeing half-replaced data.
    install_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for KvReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvReader").finish_non_exhaustive()
    }
}

impl KvReader {
    /// A reader over `db`, which must have the [`KV_CF`] and [`KV_META_CF`]
    /// column families.
    ///
    /// # Errors
    ///
    /// [`StoreError::MissingColumnFamily`].
    pub fn new(db: Arc<DB>) -> Result<Self, StoreError> {
        for cf in [KV_CF, KV_META_CF] {
            if db.cf_handle(cf).is_none() {
                return Err(StoreError::MissingColumnFamily(cf));
            }
        }
        Ok(Self {
            db,
            install_seq: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// Runs `read`, failing with [`StoreError::Installing`] when it overlaps
    /// a snapshot install.
    fn consistent<T>(&self, read: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        let before = self.install_seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return Err(StoreError::Installing);
        }
        let out = read()?;
        if self.install_seq.load(Ordering::Acquire) != before {
            return Err(StoreError::Installing);
        }
        Ok(out)
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }

    /// The value of `key`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or the record is corrupted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.consistent(|| self.get_unchecked(key))
    }

    fn get_unchecked(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        let cf = self.cf(KV_CF)?;
        match self.db.get_pinned_cf(cf, key)? {
            None => Ok(None),
            Some(rec) => decode_record(key, &rec).map(Some),
        }
    }

    /// Up to `limit` keys starting with `prefix`, in key order, and whether
    /// more follow.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or a record is corrupted.
    pub fn list(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<(Bytes, Versioned)>, bool), StoreError> {
        self.consistent(|| self.list_unchecked(prefix, limit))
    }

    fn list_unchecked(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<(Bytes, Versioned)>, bool), StoreError> {
        let cf = self.cf(KV_CF)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let rec = decode_record(&k, &v)?;
            out.push((Bytes::copy_from_slice(&k), rec));
        }
        Ok((out, false))
    }

    /// Visits the keys starting with `prefix` in key order, from the first
    /// key after `after` (from the first key when `None`), until `visit`
    /// returns `false`; answers whether more keys with the prefix follow
    /// the last one visited. The whole scan sees one state: a scan that
    /// overlaps a snapshot install fails with [`StoreError::Installing`].
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or a record is corrupted.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], Versioned) -> bool,
    ) -> Result<bool, StoreError> {
        self.consistent(|| {
            let cf = self.cf(KV_CF)?;
            let start = match after {
                // The smallest key greater than `after`.
                Some(a) if a >= prefix => {
                    let mut s = a.to_vec();
                    s.push(0);
                    s
                }
                _ => prefix.to_vec(),
            };
            let snapshot = self.db.snapshot();
            let mut opts = rocksdb::ReadOptions::default();
            opts.set_snapshot(&snapshot);
            let mut stopped = false;
            for item in
                self.db
                    .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
            {
                let (k, v) = item?;
                if !k.starts_with(prefix) {
                    break;
                }
                if stopped {
                    return Ok(true);
                }
                let rec = decode_record(&k, &v)?;
                stopped = !visit(&k, rec);
            }
            Ok(false)
        })
    }

    /// The applied index stored with the data.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or the value is malformed.
    pub fn applied(&self) -> Result<Index, StoreError> {
        let cf = self.cf(KV_META_CF)?;
        match self.db.get_pinned_cf(cf, APPLIED_KEY)? {
            None => Ok(0),
            Some(v) => {
                let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corruption {
                    key: "applied".into(),
                    detail: "applied index is not 8 bytes",
                })?;
                Ok(u64::from_be_bytes(b))
            }
        }
    }

    /// The member addresses replicated through the log, by id.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or a record is corrupted.
    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        let cf = self.cf(KV_META_CF)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(MEMBER_PREFIX, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(MEMBER_PREFIX) {
                break;
            }
            out.push(
                serde_json::from_slice(&v).map_err(|_| StoreError::Corruption {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    detail: "member record",
                })?,
            );
        }
        Ok(out)
    }

    /// The metadata of the latest snapshot taken or installed.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or the record is corrupted.
    pub fn snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StoreError> {
        self.meta_record(SNAPSHOT_META_KEY)
    }

    fn meta_record(&self, key: &'static [u8]) -> Result<Option<SnapshotMeta>, StoreError> {
        let cf = self.cf(KV_META_CF)?;
        match self.db.get_pinned_cf(cf, key)? {
            None => Ok(None),
            Some(v) => raft_log::record::decode_snapshot_meta(&v)
                .map(Some)
                .map_err(|_| StoreError::Corruption {
                    key: String::from_utf8_lossy(key).into_owned(),
                    detail: "snapshot metadata",
                }),
        }
    }

    /// A digest of the replicated state, for comparing replicas at the
    /// same applied index: the number of keys, and a CRC-32C over every
    /// key-value record (key, revision, value) and every replicated
    /// bookkeeping record (idempotency tokens and their order, member
    /// addresses), read from one RocksDB snapshot. Two replicas that
    /// applied the same log agree on it byte for byte.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails.
    pub fn digest(&self) -> Result<(u64, u32), StoreError> {
        let view = self.db.snapshot();
        let mut count = 0u64;
        let mut crc = 0u32;
        for (tag, cf) in [(b'k', KV_CF), (b'm', KV_META_CF)] {
            let mut opts = rocksdb::ReadOptions::default();
            opts.set_snapshot(&view);
            for item in self
                .db
                .iterator_cf_opt(self.cf(cf)?, opts, IteratorMode::Start)
            {
                let (k, v) = item?;
                if tag == b'm' && !is_replicated_meta(&k) {
                    continue;
                }
                crc = crc32c::crc32c_append(crc, &[tag]);
                crc = crc32c::crc32c_append(crc, &(k.len() as u64).to_be_bytes());
                crc = crc32c::crc32c_append(crc, &k);
                crc = crc32c::crc32c_append(crc, &(v.len() as u64).to_be_bytes());
                crc = crc32c::crc32c_append(crc, &v);
                if tag == b'k' {
                    count += 1;
                }
            }
        }
        Ok((count, crc))
    }
}

/// Stops a snapshot file's write when the build is dropped unfinished, and
/// waits (a moment: the write checks the flag every 1,024 records) until
/// its thread has let go of the database, so a stopped node holds no
/// handle on it.
struct CancelOnDrop {
    cancel: Arc<std::sync::atomic::AtomicBool>,
    exited: std::sync::mpsc::Receiver<()>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.exited.recv_timeout(std::time::Duration::from_secs(30));
    }
}

/// The state machine: applies commands to the store.
pub struct KvStateMachine {
    reader: KvReader,
    /// Idempotency tokens are remembered for this many log entries.
    idempotency_window_entries: u64,
    /// Where snapshot files live; snapshots are refused without one.
    snapshot_dir: Option<PathBuf>,
    /// Bumped whenever the replicated member addresses may have changed.
    members_changed: Arc<watch::Sender<u64>>,
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
        Ok(Self {
            reader: KvReader::new(db)?,
            idempotency_window_entries,
            snapshot_dir: None,
            members_changed: Arc::new(watch::channel(0).0),
        })
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

    fn snapshot_path(dir: &Path, index: Index) -> PathBuf {
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

    /// Loads the snapshot file of `meta` into the store and records it.
    fn finish_install(&self, meta: &SnapshotMeta) -> Result<(), String> {
        let dir = self.snapshot_dir.as_ref().ok_or("no snapshot directory")?;
        let path = Self::snapshot_path(dir, meta.last_log_id.index);
        let db = &self.reader.db;
        let seq = &self.reader.install_seq;
        seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
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
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts).map_err(|e| e.to_string())?;
        // Even again: reads see the new data from here on. (After a failure
        // it stays odd: the node stops, and reads are refused meanwhile.)
        seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self::remove_other_snapshots(dir, &path);
        self.members_changed.send_modify(|v| *v += 1);
        Ok(())
    }

    fn idempotency_key(slot: &[u8]) -> Vec<u8> {
        let mut k = b"i/".to_vec();
        k.extend_from_slice(slot);
        k
    }

    fn order_key(index: u64, slot: &[u8]) -> Vec<u8> {
        let mut k = b"x/".to_vec();
        k.extend_from_slice(&index.to_be_bytes());
        k.extend_from_slice(slot);
        k
    }

    fn apply_batch(&self, entries: &[Entry]) -> Result<Vec<Outcome>, StoreError> {
        let db = &self.reader.db;
        let kv = self.reader.cf(KV_CF)?;
        let meta = self.reader.cf(KV_META_CF)?;
        let mut batch = WriteBatch::default();
        // Effects of earlier entries of this batch, not yet in the database.
        let mut revs: HashMap<Bytes, Option<u64>> = HashMap::new();
        let mut tokens: HashMap<Vec<u8>, (u64, Remembered, Outcome)> = HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        let mut members_changed = false;
        // The members of the configuration last applied (this batch's own
        // entries first, then the stored record).
        let mut applied_members: Option<Option<std::collections::BTreeSet<u64>>> = None;
        let mut scoped_since: Option<Option<u64>> = None;
        for e in entries {
            let cmd = match &e.payload {
                EntryPayload::Normal(data) if data.first() == Some(&MEMBER_TAG) => {
                    match crate::command::decode_member(data) {
                        Ok(m) => {
                            batch.put_cf(
                                meta,
                                member_key(m.id),
                                serde_json::to_vec(&m).unwrap_or_default(),
                            );
                            members_changed = true;
                            out.push(Outcome::Noop);
                        }
                        Err(err) => out.push(Outcome::Malformed(err.to_string())),
                    }
                    continue;
                }
                EntryPayload::Normal(data) => match Command::decode(data.clone()) {
                    Ok(c) => c,
                    Err(err) => {
                        out.push(Outcome::Malformed(err.to_string()));
                        continue;
                    }
                },
                EntryPayload::Membership(m) => {
                    // A node dropped from the configuration loses its
                    // address record on every replica, at the same index:
                    // no member dials it or lets it in again.
                    let now = m.members();
                    let prev = match applied_members.take() {
                        Some(p) => p,
                        None => db
                            .get_cf(meta, APPLIED_MEMBERS_KEY)?
                            .and_then(|v| serde_json::from_slice(&v).ok()),
                    };
                    if let Some(prev) = prev {
                        for gone in prev.difference(&now) {
                            batch.delete_cf(meta, member_key(*gone));
                            members_changed = true;
                        }
                    }
                    batch.put_cf(
                        meta,
                        APPLIED_MEMBERS_KEY,
                        serde_json::to_vec(&now).unwrap_or_default(),
                    );
                    applied_members = Some(Some(now));
                    out.push(Outcome::Noop);
                    continue;
                }
                _ => {
                    out.push(Outcome::Noop);
                    continue;
                }
            };
            let slot = cmd.idempotency_slot();
            let fingerprint = if slot.is_some() {
                cmd.fingerprint()
            } else {
                [0; 16]
            };
            if cmd.principal.is_some() && cmd.idempotency_key.is_some() {
                let since = match scoped_since {
                    Some(s) => s,
                    None => db
                        .get_pinned_cf(meta, SCOPED_SINCE_KEY)?
                        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)),
                };
                if since.is_none() {
                    batch.put_cf(meta, SCOPED_SINCE_KEY, e.index.to_be_bytes());
                }
                scoped_since = Some(Some(since.unwrap_or(e.index)));
            }
            if let Some(token) = &slot {
                let lookup = |slot: &[u8]| -> Result<_, StoreError> {
                    Ok(match tokens.get(slot) {
                        Some(p) => Some(p.clone()),
                        None => match db.get_pinned_cf(meta, Self::idempotency_key(slot))? {
                            Some(stored) => Some(decode_token_record(slot, &stored)?),
                            None => None,
                        },
                    })
                };
                let mut prior = lookup(token)?;
                // A scoped retry of a write made before scoping existed.
                if prior.is_none() && cmd.principal.is_some() {
                    if let (Some(raw), Some(Some(since))) = (&cmd.idempotency_key, scoped_since) {
                        // Only within its window: past it, it is simply
                        // forgotten (its own order key removes it).
                        let window = self.idempotency_window_entries;
                        prior = lookup(raw.as_bytes())?.filter(|(index, _, _)| {
                            *index < since && e.index.saturating_sub(*index) <= window
                        });
                    }
                }
                // Whether a token is remembered depends only on the two
                // indexes, never on how entries were batched: every replica
                // decides the same.
                if let Some((index, remembered, outcome)) = prior {
                    if e.index.saturating_sub(index) <= self.idempotency_window_entries {
                        out.push(if remembered.matches(&cmd, &fingerprint) {
                            outcome
                        } else {
                            Outcome::IdempotencyConflict
                        });
                        continue;
                    }
                    // Past its window: the token is used anew below, and
                    // its old order key goes with the old record.
                    batch.delete_cf(meta, Self::order_key(index, token));
                }
            }
            // A plain put does not depend on the key's current revision, so
            // it is not read (a point lookup per write otherwise).
            let current = if matches!(
                (&cmd.precondition, &cmd.op),
                (Precondition::None, Op::Put(_))
            ) {
                None
            } else {
                match revs.get(&cmd.key) {
                    Some(r) => *r,
                    None => self.reader.get(&cmd.key)?.map(|v| v.rev),
                }
            };
            let allowed = match cmd.precondition {
                Precondition::None => true,
                Precondition::IfMatch(rev) => current == Some(rev),
                Precondition::IfNoneMatch => current.is_none(),
            };
            let outcome = if !allowed {
                Outcome::PreconditionFailed { current }
            } else {
                match &cmd.op {
                    Op::Put(value) => {
                        batch.put_cf(kv, &cmd.key, encode_record(e.index, value));
                        revs.insert(cmd.key.clone(), Some(e.index));
                        Outcome::Applied { rev: e.index }
                    }
                    Op::Delete if current.is_none() => Outcome::NotFound,
                    Op::Delete => {
                        batch.delete_cf(kv, &cmd.key);
                        revs.insert(cmd.key.clone(), None);
                        Outcome::Applied { rev: e.index }
                    }
                }
            };
            if let Some(token) = slot {
                batch.put_cf(
                    meta,
                    Self::idempotency_key(&token),
                    encode_token_record(e.index, &fingerprint, &outcome),
                );
                batch.put_cf(meta, Self::order_key(e.index, &token), b"");
                tokens.insert(
                    token,
                    (e.index, Remembered::Sha(fingerprint), outcome.clone()),
                );
            }
            out.push(outcome);
        }
        let Some(last) = entries.last() else {
            return Ok(out);
        };
        // Forget tokens that fell out of the window (deterministic: by index).
        if let Some(horizon) = last.index.checked_sub(self.idempotency_window_entries) {
            let end = Self::order_key(horizon, b"");
            for item in db.iterator_cf(meta, IteratorMode::From(b"x/", Direction::Forward)) {
                let (k, _) = item?;
                if !k.starts_with(b"x/") || k.as_ref() >= end.as_slice() {
                    break;
                }
                let Some(token) = k.get(10..) else {
                    return Err(StoreError::Corruption {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        detail: "idempotency order key too short",
                    });
                };
                let index = u64::from_be_bytes(k[2..10].try_into().expect("8 bytes"));
                // The token's record goes only if it is still the one this
                // order key was written for: a token used again (in this
                // batch or an earlier one) holds a newer record, which
                // must stay whatever the batch boundaries were.
                let current = match tokens.get(token) {
                    Some((i, _, _)) => Some(*i),
                    None => match db.get_pinned_cf(meta, Self::idempotency_key(token))? {
                        Some(stored) => Some(decode_token_record(token, &stored)?.0),
                        None => None,
                    },
                };
                if current == Some(index) {
                    batch.delete_cf(meta, Self::idempotency_key(token));
                }
                batch.delete_cf(meta, &k);
            }
            // Tokens recorded by this batch's own entries are not in the
            // database yet; those already out of the window go too, as
            // they would have had their entries come in smaller batches.
            for (token, (index, _, _)) in &tokens {
                if *index < horizon {
                    batch.delete_cf(meta, Self::idempotency_key(token));
                    batch.delete_cf(meta, Self::order_key(*index, token));
                }
            }
        }
        batch.put_cf(meta, APPLIED_KEY, last.index.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        db.write_opt(batch, &opts)?;
        if members_changed {
            self.members_changed.send_modify(|v| *v += 1);
        }
        Ok(out)
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
        let err = StateMachineError::backend::<String>;
        let dir = self
            .snapshot_dir
            .clone()
            .ok_or_else(|| err("snapshots are not enabled".into()))?;
        let applied = self.reader.applied().map_err(|e| err(e.to_string()))?;
        if applied != meta.last_log_id.index {
            return Err(err(format!(
                "snapshot asked at {} but the applied index is {applied}",
                meta.last_log_id
            )));
        }
        let db = self.reader.db.clone();
        let meta = meta.clone();
        let path = Self::snapshot_path(&dir, meta.last_log_id.index);
        let (viewed_tx, viewed_rx) = tokio::sync::oneshot::channel();
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
            Self::remove_other_snapshots(&dir, &path);
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

    async fn latest_snapshot(
        &mut self,
    ) -> Result<Option<(SnapshotMeta, SnapshotData)>, StateMachineError> {
        let Some(dir) = &self.snapshot_dir else {
            return Ok(None);
        };
        let Some(meta) = self
            .reader
            .snapshot_meta()
            .map_err(StateMachineError::backend)?
        else {
            return Ok(None);
        };
        let path = Self::snapshot_path(dir, meta.last_log_id.index);
        match FileSource::open(&path) {
            Ok(source) => Ok(Some((meta, Arc::new(source)))),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the latest snapshot's file is missing");
                Ok(None)
            }
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), StateMachineError> {
        let err = StateMachineError::backend::<String>;
        let dir = self
            .snapshot_dir
            .clone()
            .ok_or_else(|| err("snapshots are not enabled".into()))?;
        let path = Self::snapshot_path(&dir, meta.last_log_id.index);
        // Take the received file over (or copy the data in). The rename is
        // made durable in both directories before the install goes on: a
        // power loss must not lose the file the store is switched to.
        let moved = match data.path() {
            Some(src) => match tokio::fs::rename(src, &path).await {
                Ok(()) => {
                    let (from, to) = (src.parent().map(Path::to_path_buf), dir.clone());
                    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                        crate::snapshot::sync_directory(&to)?;
                        if let Some(from) = from {
                            crate::snapshot::sync_directory(&from)?;
                        }
                        Ok(())
                    })
                    .await
                    .map_err(|e| err(format!("syncing the snapshot directory: {e}")))?
                    .map_err(|e| err(format!("syncing {}: {e}", dir.display())))?;
                    true
                }
                Err(_) => false,
            },
            None => false,
        };
        if !moved {
            let tmp = path.with_extension("recv");
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
            let mut offset = 0;
            while offset < data.len() {
                let chunk = data
                    .read_at(offset, 1 << 20)
                    .await
                    .map_err(|e| err(format!("reading the snapshot: {e}")))?;
                if chunk.is_empty() {
                    return Err(err("the snapshot data ended early".into()));
                }
                tokio::io::AsyncWriteExt::write_all(&mut f, &chunk)
                    .await
                    .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
                offset += chunk.len() as u64;
            }
            f.sync_all()
                .await
                .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            let to = dir.clone();
            tokio::task::spawn_blocking(move || crate::snapshot::sync_directory(&to))
                .await
                .map_err(|e| err(format!("syncing the snapshot directory: {e}")))?
                .map_err(|e| err(format!("syncing {}: {e}", dir.display())))?;
        }
        let db = self.reader.db.clone();
        let meta = meta.clone();
        let this = KvStateMachine {
            reader: self.reader.clone(),
            idempotency_window_entries: self.idempotency_window_entries,
            snapshot_dir: Some(dir),
            members_changed: self.members_changed.clone(),
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
mod tests {
    use super::*;
    use raft_log::{RocksLog, RocksLogOptions};

    fn open(dir: &std::path::Path) -> RocksLog {
        RocksLog::open(
            dir,
            RocksLogOptions {
                extra_column_families: vec![KV_CF.into(), KV_META_CF.into()],
                ..RocksLogOptions::default()
            },
        )
        .unwrap()
    }

    /// A store in `dir` and its state machine, with snapshots enabled.
    fn snapshotting(dir: &std::path::Path, window: u64) -> (RocksLog, KvStateMachine) {
        let log = open(dir);
        let sm = KvStateMachine::new(log.db().clone(), window)
            .unwrap()
            .with_snapshot_dir(dir.join("snapshots"))
            .unwrap();
        (log, sm)
    }

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(cmd.encode()),
        }
    }

    fn put(key: &str, value: &str, pre: Precondition, token: Option<&str>) -> Command {
        Command {
            op: Op::Put(Bytes::from(value.to_owned())),
            key: Bytes::from(key.to_owned()),
            precondition: pre,
            idempotency_key: token.map(str::to_owned),
            principal: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn preconditions_idempotency_and_the_applied_index_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            let mut sm = KvStateMachine::new(log.db().clone(), 100).unwrap();
            assert_eq!(sm.applied_index().await.unwrap(), 0);
            let out = sm
                .apply(&[
                    entry(1, put("a", "1", Precondition::IfNoneMatch, None)),
                    entry(2, put("a", "2", Precondition::IfNoneMatch, None)),
                    entry(3, put("a", "3", Precondition::IfMatch(1), Some("t1"))),
                    entry(4, put("a", "3", Precondition::IfMatch(1), Some("t1"))),
                    Entry {
                        term: 1,
                        index: 5,
                        payload: EntryPayload::Blank,
                    },
                    Entry {
                        term: 1,
                        index: 6,
                        payload: EntryPayload::Normal(Bytes::from_static(b"junk")),
                    },
                ])
                .await
                .unwrap();
            assert_eq!(out[0], Outcome::Applied { rev: 1 });
            assert_eq!(out[1], Outcome::PreconditionFailed { current: Some(1) });
            assert_eq!(out[2], Outcome::Applied { rev: 3 });
            // The retry returns the first result and changes nothing.
            assert_eq!(out[3], Outcome::Applied { rev: 3 });
            assert_eq!(out[4], Outcome::Noop);
            assert!(matches!(out[5], Outcome::Malformed(_)));
        }
        let log = open(dir.path());
        let mut sm = KvStateMachine::new(log.db().clone(), 100).unwrap();
        assert_eq!(sm.applied_index().await.unwrap(), 6);
        let r = sm.reader();
        assert_eq!(
            r.get(b"a").unwrap(),
            Some(Versioned {
                value: Bytes::from("3"),
                rev: 3
            })
        );
        // The token is remembered across the restart...
        let out = sm
            .apply(&[entry(
                7,
                put("a", "3", Precondition::IfMatch(1), Some("t1")),
            )])
            .await
            .unwrap();
        assert_eq!(out[0], Outcome::Applied { rev: 3 });
        let del = Command {
            op: Op::Delete,
            key: Bytes::from_static(b"missing"),
            precondition: Precondition::None,
            idempotency_key: None,
            principal: None,
        };
        assert_eq!(
            sm.apply(&[entry(8, del)]).await.unwrap()[0],
            Outcome::NotFound
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn tokens_are_forgotten_after_the_window_and_listing_is_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let mut sm = KvStateMachine::new(log.db().clone(), 3).unwrap();
        sm.apply(&[entry(1, put("p/1", "a", Precondition::None, Some("t")))])
            .await
            .unwrap();
        for i in 2..=5 {
            sm.apply(&[entry(
                i,
                put(&format!("p/{i}"), "b", Precondition::None, None),
            )])
            .await
            .unwrap();
        }
        // Index 1 is outside the window of 3 entries: the token applies anew.
        let out = sm
            .apply(&[entry(6, put("p/1", "c", Precondition::None, Some("t")))])
            .await
            .unwrap();
        assert_eq!(out[0], Outcome::Applied { rev: 6 });
        let r = sm.reader();
        let (items, more) = r.list(b"p/", 3).unwrap();
        assert_eq!(items.len(), 3);
        assert!(more);
        assert_eq!(items[0].0, Bytes::from("p/1"));
        let (items, more) = r.list(b"p/", 10).unwrap();
        assert_eq!((items.len(), more), (5, false));
    }

    /// A token used at entry 1 and used again at 6 (past the window of
    /// 3) and 7 (a retry of 6): every replica must answer entry 7 with the
    /// outcome of 6, whether 6 was applied alone or in one batch with 5.
    /// (The cleanup at the end of a batch once deleted the token's new
    /// record along with its expired one when both fell in one batch.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_token_reused_past_its_window_is_remembered_whatever_the_batches() {
        let cmd = |i: u64| match i {
            1 => put("p/1", "a", Precondition::None, Some("t")),
            6 | 7 => put("p/1", "c", Precondition::None, Some("t")),
            _ => put(&format!("p/{i}"), "b", Precondition::None, None),
        };
        let mut outcomes = Vec::new();
        let mut digests = Vec::new();
        for batches in [
            vec![
                vec![1],
                vec![2],
                vec![3],
                vec![4],
                vec![5],
                vec![6],
                vec![7],
            ],
            vec![vec![1], vec![2], vec![3], vec![4], vec![5, 6], vec![7]],
            vec![vec![1, 2, 3, 4, 5, 6, 7]],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path());
            let mut sm = KvStateMachine::new(log.db().clone(), 3).unwrap();
            let mut out = Vec::new();
            for b in &batches {
                let entries: Vec<Entry> = b.iter().map(|&i| entry(i, cmd(i))).collect();
                out.extend(sm.apply(&entries).await.unwrap());
            }
            assert_eq!(out[5], Outcome::Applied { rev: 6 }, "{batches:?}");
            assert_eq!(
                out[6],
                Outcome::Applied { rev: 6 },
                "{batches:?}: the retry"
            );
            assert_eq!(sm.reader().get(b"p/1").unwrap().unwrap().rev, 6);
            outcomes.push(out);
            digests.push(sm.reader().digest().unwrap());
        }
        assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: raft_core::LogId::new(1, index),
            membership: raft_core::Membership::new([1, 2, 3]),
        }
    }

    #[tokio::test]
    async fn applies_go_on_while_a_snapshot_is_written_and_it_holds_its_own_point() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = snapshotting(dir.path(), 100);
        for i in 1..=20 {
            let cmd = put(
                &format!("k{i}"),
                "old",
                Precondition::None,
                Some(&format!("t{i}")),
            );
            sm.apply(&[entry(i, cmd)]).await.unwrap();
        }
        let at_20 = sm.reader().digest().unwrap();
        // The build starts: the state machine is free again at once.
        let build = sm.begin_snapshot(&meta(20)).await.unwrap();
        for i in 21..=40 {
            let cmd = put(&format!("k{}", i - 20), "new", Precondition::None, None);
            sm.apply(&[entry(i, cmd)]).await.unwrap();
        }
        let data = build.await.unwrap();
        let (latest, _) = sm.latest_snapshot().await.unwrap().expect("recorded");
        assert_eq!(latest, meta(20));

        // Installed elsewhere, it is the state at 20, none of 21..=40.
        let b_dir = tempfile::tempdir().unwrap();
        let (_b_log, mut b) = snapshotting(b_dir.path(), 100);
        b.install_snapshot(&meta(20), data).await.unwrap();
        let r = b.reader();
        assert_eq!(r.applied().unwrap(), 20);
        assert_eq!(r.get(b"k7").unwrap().unwrap().value, Bytes::from("old"));
        assert_eq!(r.digest().unwrap(), at_20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_dropped_unfinished_stops_and_lets_go_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        {
            let log = open(dir.path());
            let mut sm = KvStateMachine::new(log.db().clone(), 100)
                .unwrap()
                .with_snapshot_dir(&snapshots)
                .unwrap();
            sm.apply(&[entry(1, put("a", "1", Precondition::None, None))])
                .await
                .unwrap();
            // A store large enough that writing its snapshot takes a while.
            let kv = log.db().cf_handle(KV_CF).unwrap();
            for chunk in 0..40u32 {
                let mut batch = WriteBatch::default();
                for i in 0..5_000u32 {
                    batch.put_cf(kv, format!("bulk-{chunk:03}-{i:05}"), [7u8; 64]);
                }
                log.db().write(batch).unwrap();
            }
            let build = sm.begin_snapshot(&meta(1)).await.unwrap();
            // The node stops: the build is dropped before it finished.
            drop(build);
            drop(sm);
            drop(log);
        }
        // Nothing holds the database any more: it opens again at once.
        let log = open(dir.path());
        let sm = KvStateMachine::new(log.db().clone(), 100)
            .unwrap()
            .with_snapshot_dir(&snapshots)
            .unwrap();
        assert_eq!(
            sm.reader().snapshot_meta().unwrap(),
            None,
            "no snapshot recorded"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&snapshots).unwrap().collect();
        assert!(leftovers.is_empty(), "no partial file left: {leftovers:?}");
    }

    #[tokio::test]
    async fn a_snapshot_installs_on_another_store_and_a_corrupted_one_is_refused() {
        let a_dir = tempfile::tempdir().unwrap();
        let (_a_log, mut a) = snapshotting(a_dir.path(), 100);
        for i in 1..=20 {
            a.apply(&[entry(
                i,
                put(
                    &format!("k{i}"),
                    &format!("v{i}"),
                    Precondition::None,
                    Some(&format!("t{i}")),
                ),
            )])
            .await
            .unwrap();
        }
        let data = a.build_snapshot(&meta(20)).await.unwrap();
        let (latest, _) = a.latest_snapshot().await.unwrap().expect("recorded");
        assert_eq!(latest, meta(20));

        // A store with other data takes the snapshot over completely.
        let b_dir = tempfile::tempdir().unwrap();
        let (_b_log, mut b) = snapshotting(b_dir.path(), 100);
        b.apply(&[entry(1, put("stale", "x", Precondition::None, None))])
            .await
            .unwrap();
        let bytes = raft_core::snapshot::read_all(data.as_ref(), 1 << 30)
            .await
            .unwrap();
        b.install_snapshot(&meta(20), Arc::new(bytes.clone()))
            .await
            .unwrap();
        let r = b.reader();
        assert_eq!(r.applied().unwrap(), 20);
        assert!(r.get(b"stale").unwrap().is_none());
        assert_eq!(r.get(b"k7").unwrap().unwrap().value, Bytes::from("v7"));
        assert_eq!(r.digest().unwrap(), a.reader().digest().unwrap());
        // Idempotency records travel with the snapshot: a retry gets the
        // first outcome (revision 3), not a new write at 21.
        let out = b
            .apply(&[entry(21, put("k3", "v3", Precondition::None, Some("t3")))])
            .await
            .unwrap();
        assert_eq!(out[0], Outcome::Applied { rev: 3 });

        // A flipped byte is refused before anything is touched.
        let c_dir = tempfile::tempdir().unwrap();
        let (_c_log, mut c) = snapshotting(c_dir.path(), 100);
        c.apply(&[entry(1, put("mine", "x", Precondition::None, None))])
            .await
            .unwrap();
        let mut bad = bytes.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        let err = c
            .install_snapshot(&meta(20), Arc::new(Bytes::from(bad)))
            .await
            .expect_err("corrupted snapshot refused");
        assert!(err.to_string().contains("corrupted"), "{err}");
        assert_eq!(c.reader().applied().unwrap(), 1);
        assert!(c.reader().get(b"mine").unwrap().is_some());
    }

    /// A received snapshot moved into place survives a power loss: the
    /// rename is followed by a sync of both directories it touched, and
    /// the snapshot directory is the node's alone (0700).
    #[tokio::test]
    async fn a_snapshot_install_syncs_the_directories_of_its_rename_and_they_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let a_dir = tempfile::tempdir().unwrap();
        let (_a_log, mut a) = snapshotting(a_dir.path(), 100);
        for i in 1..=5 {
            a.apply(&[entry(
                i,
                put(&format!("k{i}"), "v", Precondition::None, None),
            )])
            .await
            .unwrap();
        }
        let data = a.build_snapshot(&meta(5)).await.unwrap();
        let bytes = raft_core::snapshot::read_all(data.as_ref(), 1 << 30)
            .await
            .unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let (_b_log, mut b) = snapshotting(b_dir.path(), 100);
        let snapshots = b_dir.path().join("snapshots");
        let mode = std::fs::metadata(&snapshots).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            format!("{mode:04o}"),
            "0700",
            "the snapshot directory is created 0700"
        );
        // As the transport leaves a received snapshot: a file in another
        // directory, taken over by a rename.
        let incoming = b_dir.path().join("incoming");
        std::fs::create_dir(&incoming).unwrap();
        let received = incoming.join("received.snap");
        std::fs::write(&received, &bytes).unwrap();
        let source = FileSource::open(&received).unwrap();
        let (before_in, before_snap) = (
            crate::snapshot::synced::count(&incoming),
            crate::snapshot::synced::count(&snapshots),
        );
        b.install_snapshot(&meta(5), Arc::new(source))
            .await
            .unwrap();
        assert!(!received.exists(), "the received file was moved");
        assert!(KvStateMachine::snapshot_path(&snapshots, 5).exists());
        assert!(
            crate::snapshot::synced::count(&incoming) > before_in,
            "the directory the snapshot left was not synced"
        );
        assert!(
            crate::snapshot::synced::count(&snapshots) > before_snap,
            "the directory the snapshot entered was not synced"
        );
        assert_eq!(b.reader().digest().unwrap(), a.reader().digest().unwrap());
    }

    /// Idempotency records written by the previous release (version 1:
    /// `index | crc32c | outcome` under `i/<token>`, and their order keys)
    /// still read: a retry within the window gets the first outcome, another
    /// request with that token is refused, and the window still forgets
    /// them. The same token from a principal is another request.
    #[tokio::test]
    async fn idempotency_records_of_the_previous_version_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let mut sm = KvStateMachine::new(log.db().clone(), 10).unwrap();
        let first = put("k", "v1", Precondition::None, Some("old"));
        // The previous release's fingerprint: a CRC-32C of the request
        // without its token.
        let anonymous = Command {
            idempotency_key: None,
            ..first.clone()
        };
        {
            // What the previous release left after applying `first` at 3.
            let db = log.db();
            let kv = db.cf_handle(KV_CF).unwrap();
            let meta = db.cf_handle(KV_META_CF).unwrap();
            db.put_cf(&kv, b"k", encode_record(3, b"v1")).unwrap();
            let mut rec = 3u64.to_be_bytes().to_vec();
            rec.extend_from_slice(&crc32c::crc32c(&anonymous.encode()).to_be_bytes());
            rec.extend_from_slice(&Outcome::Applied { rev: 3 }.encode());
            db.put_cf(&meta, b"i/old", &rec).unwrap();
            let mut order = b"x/".to_vec();
            order.extend_from_slice(&3u64.to_be_bytes());
            order.extend_from_slice(b"old");
            db.put_cf(&meta, &order, b"").unwrap();
            db.put_cf(&meta, APPLIED_KEY, 3u64.to_be_bytes()).unwrap();
        }
        let out = sm
            .apply(&[
                entry(4, first.clone()),
                entry(5, put("k", "other", Precondition::None, Some("old"))),
                entry(
                    6,
                    Command {
                        principal: Some("user".into()),
                        ..put("k", "scoped", Precondition::None, Some("old"))
                    },
                ),
            ])
            .await
            .unwrap();
        // The scoped request finds the record written before scoping
        // existed (a retry across the upgrade must not apply twice), and
        // it is another request: 422.
        assert_eq!(
            out,
            vec![
                Outcome::Applied { rev: 3 },
                Outcome::IdempotencyConflict,
                Outcome::IdempotencyConflict,
            ]
        );
        // Past the window, the old record is forgotten with its order key.
        sm.apply(&[entry(20, put("z", "z", Precondition::None, None))])
            .await
            .unwrap();
        let meta = log.db().cf_handle(KV_META_CF).unwrap();
        assert!(log.db().get_cf(&meta, b"i/old").unwrap().is_none());
        let out = sm.apply(&[entry(21, first)]).await.unwrap();
        assert_eq!(out, vec![Outcome::Applied { rev: 21 }]);
    }

    /// An authenticated client's write made through the previous release
    /// (no principal in the command: record under `i/<token>`), retried
    /// after the upgrade (now carried with principal `user`): the retry
    /// must get the first outcome, not be applied again over a later write.
    #[tokio::test]
    async fn review_a_retry_across_the_upgrade_is_not_applied_twice() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let mut sm = KvStateMachine::new(log.db().clone(), 100).unwrap();
        let first = put("k", "v1", Precondition::None, Some("t"));
        {
            // What the previous release left after applying `first` at 3.
            let db = log.db();
            let kv = db.cf_handle(KV_CF).unwrap();
            let meta = db.cf_handle(KV_META_CF).unwrap();
            db.put_cf(&kv, b"k", encode_record(3, b"v1")).unwrap();
            let mut rec = 3u64.to_be_bytes().to_vec();
            rec.extend_from_slice(&first.legacy_fingerprint().to_be_bytes());
            rec.extend_from_slice(&Outcome::Applied { rev: 3 }.encode());
            db.put_cf(&meta, b"i/t", &rec).unwrap();
            let mut order = b"x/".to_vec();
            order.extend_from_slice(&3u64.to_be_bytes());
            order.extend_from_slice(b"t");
            db.put_cf(&meta, &order, b"").unwrap();
            db.put_cf(&meta, APPLIED_KEY, 3u64.to_be_bytes()).unwrap();
        }
        // Another client writes after it; then the first client's retry
        // arrives at an upgraded leader.
        let out = sm
            .apply(&[
                entry(4, put("k", "v2", Precondition::None, None)),
                entry(
                    5,
                    Command {
                        principal: Some("user".into()),
                        ..first.clone()
                    },
                ),
            ])
            .await
            .unwrap();
        assert_eq!(
            out[1],
            Outcome::Applied { rev: 3 },
            "the retry was applied again"
        );
        assert_eq!(&sm.reader().get(b"k").unwrap().unwrap().value[..], b"v2");
    }

    #[tokio::test]
    async fn reads_overlapping_a_snapshot_install_are_refused() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let mut sm = KvStateMachine::new(log.db().clone(), 100).unwrap();
        sm.apply(&[entry(1, put("k", "v", Precondition::None, None))])
            .await
            .unwrap();
        let r = sm.reader();
        assert!(r.get(b"k").unwrap().is_some());
        // What `finish_install` does around replacing the data.
        r.install_seq.fetch_add(1, Ordering::AcqRel);
        assert!(matches!(r.get(b"k"), Err(StoreError::Installing)));
        assert!(matches!(r.list(b"", 10), Err(StoreError::Installing)));
        r.install_seq.fetch_add(1, Ordering::AcqRel);
        assert!(r.get(b"k").unwrap().is_some());
    }

    /// A random log for the replay property: puts, deletes and CAS on a
    /// few keys, idempotency tokens retried inside and past the window
    /// (and reused for other commands), member records, blanks and junk.
    fn random_log(rng: &mut rand_chacha::ChaCha8Rng, len: u64) -> Vec<Entry> {
        use rand::Rng;
        let mut log: Vec<Entry> = Vec::new();
        for index in 1..=len {
            let payload = match rng.gen_range(0..100) {
                0..=3 => EntryPayload::Blank,
                4..=5 => EntryPayload::Normal(Bytes::from_static(b"\x07junk")),
                6..=10 => {
                    EntryPayload::Normal(crate::command::encode_member(&crate::config::Member {
                        id: rng.gen_range(1..=4),
                        peer_addr: format!("127.0.0.1:{}", rng.gen_range(7000..7004))
                            .parse()
                            .unwrap(),
                        client_addr: format!("127.0.0.1:{}", rng.gen_range(8000..8004)),
                    }))
                }
                // A retry of an earlier command, same token and all.
                11..=30 if !log.is_empty() => {
                    let back = rng.gen_range(1..=log.len().min(12));
                    log[log.len() - back].payload.clone()
                }
                _ => {
                    let key = format!("k{}", rng.gen_range(0..4));
                    let op = if rng.gen_bool(0.25) {
                        Op::Delete
                    } else {
                        Op::Put(Bytes::from(format!("v{index}")))
                    };
                    let precondition = match rng.gen_range(0..6) {
                        0 => Precondition::IfNoneMatch,
                        1 | 2 => {
                            Precondition::IfMatch(rng.gen_range(index.saturating_sub(8)..=index))
                        }
                        _ => Precondition::None,
                    };
                    let token = rng
                        .gen_bool(0.6)
                        .then(|| format!("t{}", rng.gen_range(0..5)));
                    // The same tokens from up to two principals, and none.
                    let principal = match rng.gen_range(0..3) {
                        0 => None,
                        1 => Some("user".to_owned()),
                        _ => Some("admin".to_owned()),
                    };
                    EntryPayload::Normal(
                        Command {
                            op,
                            key: Bytes::from(key),
                            precondition,
                            idempotency_key: token,
                            principal,
                        }
                        .encode(),
                    )
                }
            };
            log.push(Entry {
                term: 1,
                index,
                payload,
            });
        }
        log
    }

    /// Splits `from..=to` into random consecutive batches.
    fn random_batches(rng: &mut rand_chacha::ChaCha8Rng, from: u64, to: u64) -> Vec<(u64, u64)> {
        use rand::Rng;
        let mut out = Vec::new();
        let mut next = from;
        while next <= to {
            let end = (next + rng.gen_range(0..16)).min(to);
            out.push((next, end));
            next = end + 1;
        }
        out
    }

    fn slice(log: &[Entry], from: u64, to: u64) -> &[Entry] {
        &log[(from - 1) as usize..to as usize]
    }

    /// One seed of the replay property.
    async fn replicas_agree_whatever_the_batches(seed: u64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let window = rng.gen_range(1..=6);
        let len = rng.gen_range(60..=200);
        let log = random_log(&mut rng, len);
        let ctx =
            format!("seed {seed} (replay: KV_REPLAY_SEED={seed}), window {window}, {len} entries");

        // Replica A applies one entry at a time: the reference.
        let a_dir = tempfile::tempdir().unwrap();
        let a_log = open(a_dir.path());
        let mut a = KvStateMachine::new(a_log.db().clone(), window).unwrap();
        let mut outcomes = Vec::new();
        let mut digests = vec![a.reader().digest().unwrap()];
        for e in &log {
            outcomes.extend(a.apply(std::slice::from_ref(e)).await.unwrap());
            digests.push(a.reader().digest().unwrap());
        }

        // Replica B: random batches, and restarts (the store closed and
        // reopened, resuming after its applied index).
        let b_dir = tempfile::tempdir().unwrap();
        let mut b_log = open(b_dir.path());
        let mut b = KvStateMachine::new(b_log.db().clone(), window).unwrap();
        for (from, to) in random_batches(&mut rng, 1, len) {
            let got = b.apply(slice(&log, from, to)).await.unwrap();
            assert_eq!(
                got,
                outcomes[(from - 1) as usize..to as usize],
                "{ctx}: batch {from}..={to} answered differently"
            );
            assert_eq!(
                b.reader().digest().unwrap(),
                digests[to as usize],
                "{ctx}: after the batch {from}..={to} the store differs from one applied entry by entry"
            );
            if rng.gen_bool(0.15) {
                drop(b);
                drop(b_log);
                b_log = open(b_dir.path());
                b = KvStateMachine::new(b_log.db().clone(), window).unwrap();
                assert_eq!(b.applied_index().await.unwrap(), to, "{ctx}");
            }
        }

        // Replica C starts from a snapshot that D took at a random point,
        // then applies the rest in random batches.
        let k = rng.gen_range(1..=len);
        let d_dir = tempfile::tempdir().unwrap();
        let (_d_log, mut d) = snapshotting(d_dir.path(), window);
        for (from, to) in random_batches(&mut rng, 1, k) {
            d.apply(slice(&log, from, to)).await.unwrap();
        }
        let data = d.build_snapshot(&meta(k)).await.unwrap();
        let c_dir = tempfile::tempdir().unwrap();
        let (_c_log, mut c) = snapshotting(c_dir.path(), window);
        c.install_snapshot(&meta(k), data).await.unwrap();
        assert_eq!(
            c.reader().digest().unwrap(),
            digests[k as usize],
            "{ctx}: snapshot at {k}"
        );
        for (from, to) in random_batches(&mut rng, k + 1, len) {
            let got = c.apply(slice(&log, from, to)).await.unwrap();
            assert_eq!(
                got,
                outcomes[(from - 1) as usize..to as usize],
                "{ctx}: after the snapshot at {k}, batch {from}..={to} answered differently"
            );
        }
        assert_eq!(
            c.reader().digest().unwrap(),
            digests[len as usize],
            "{ctx}: the replica restored from the snapshot at {k} differs"
        );
    }

    /// The state machine is a function of the log alone: replicas that
    /// apply the same random log in different batches, with restarts, or
    /// from a snapshot plus the rest of the log, answer every entry the
    /// same and hold byte-identical state (data, idempotency records,
    /// member records) after every batch. `KV_SEEDS` sets how many seeds
    /// (40), `KV_REPLAY_SEED` replays one.
    #[tokio::test]
    async fn replicas_are_a_function_of_the_log_whatever_the_batches() {
        if let Ok(seed) = std::env::var("KV_REPLAY_SEED") {
            let seed = seed.parse().expect("KV_REPLAY_SEED is a number");
            replicas_agree_whatever_the_batches(seed).await;
            return;
        }
        let seeds: u64 = raft_core::testing::env_or("KV_SEEDS", 40);
        let start = raft_core::testing::seed_from_env("KV_SEED_START");
        eprintln!("{seeds} seeds from {start} (KV_SEED_START={start} repeats them)");
        for i in 0..seeds {
            replicas_agree_whatever_the_batches(start.wrapping_add(i)).await;
        }
    }
}
