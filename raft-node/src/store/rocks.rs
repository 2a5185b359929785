//! The store on RocksDB: its column families, the reads of [`KvReader`],
//! the [`StoreView`] the rules of applying read through, and the one batch
//! their writes go in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{Index, SnapshotMeta};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::apply::{Cf, StoreView, Write};
use super::records::{
    decode_record, decode_u64, is_replicated_meta, APPLIED_KEY, MEMBER_PREFIX, SNAPSHOT_META_KEY,
};
use super::{StoreError, Versioned, KV_CF, KV_META_CF};
use crate::config::Member;
use crate::keys::scan_start;

/// Read access to the store, cheap to clone.
#[derive(Clone)]
pub struct KvReader {
    pub(super) db: Arc<DB>,
    /// Odd while a snapshot install replaces the data (a sequence lock):
    /// reads that overlap an install fail with [`StoreError::Installing`]
    /// instead of seeing half-replaced data.
    pub(super) install_seq: Arc<AtomicU64>,
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
            install_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Runs `read`, failing with [`StoreError::Installing`] when it overlaps
    /// a snapshot install.
    pub(super) fn consistent<T>(
        &self,
        read: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
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

    /// Bytes the key-value store takes in RocksDB: its live SST files and
    /// its memtables (an estimate; etcd's `dbSize`). 0 for what cannot be
    /// read.
    pub fn disk_size(&self) -> u64 {
        [KV_CF, KV_META_CF]
            .into_iter()
            .filter_map(|name| self.db.cf_handle(name))
            .flat_map(|cf| {
                [
                    "rocksdb.live-sst-files-size",
                    "rocksdb.cur-size-all-mem-tables",
                ]
                .map(|p| self.db.property_int_value_cf(cf, p).ok().flatten())
            })
            .map(Option::unwrap_or_default)
            .fold(0, u64::saturating_add)
    }

    pub(super) fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
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
        self.consistent(|| {
            let cf = self.cf(KV_CF)?;
            match self.db.get_pinned_cf(cf, key)? {
                None => Ok(None),
                Some(rec) => decode_record(key, &rec).map(Some),
            }
        })
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
        self.consistent(|| {
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
        })
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
            let start = scan_start(prefix, after);
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
            Some(v) => decode_u64(&v).ok_or_else(|| StoreError::Corruption {
                key: "applied".into(),
                detail: "applied index is not 8 bytes",
            }),
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

    /// Visits the `kv_meta` records from `start` (inclusive) to `end`
    /// (exclusive), in key order.
    pub(super) fn meta_scan(
        &self,
        start: &[u8],
        end: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let cf = self.cf(KV_META_CF)?;
        let mode = IteratorMode::From(start, Direction::Forward);
        for item in self.db.iterator_cf(cf, mode) {
            let (k, v) = item?;
            if k.as_ref() >= end {
                break;
            }
            visit(&k, &v)?;
        }
        Ok(())
    }

    pub(super) fn meta_record(
        &self,
        key: &'static [u8],
    ) -> Result<Option<SnapshotMeta>, StoreError> {
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
    /// key-value record (key, revisions, value) and every replicated
    /// bookkeeping record (idempotency tokens and their order, member
    /// addresses, the revision history and the store's revisions), read
    /// from one RocksDB snapshot. Two replicas that
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

    fn cf_of(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.cf(match cf {
            Cf::Kv => KV_CF,
            Cf::Meta => KV_META_CF,
        })
    }

    /// Makes `writes` in one batch, unsynced: the Raft log is durable, and
    /// after a power loss the lost tail is re-applied from it.
    ///
    /// # Errors
    ///
    /// RocksDB fails.
    pub(super) fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for w in writes {
            match w {
                Write::Put(cf, k, v) => batch.put_cf(self.cf_of(cf)?, k, v),
                Write::Delete(cf, k) => batch.delete_cf(self.cf_of(cf)?, k),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }
}

impl StoreView for KvReader {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = || Ok(self.db.get_cf(self.cf_of(cf)?, key)?);
        match cf {
            // The data as the API reads it: not while an install replaces it.
            Cf::Kv => self.consistent(read),
            Cf::Meta => read(),
        }
    }

    fn keys_in(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf_of(cf)?, mode) {
            let (k, _) = item?;
            if out.len() >= limit || end.is_some_and(|e| k.as_ref() >= e) {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }
}
