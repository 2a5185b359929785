//! Reads as of a revision: the store's revisions, one key and a prefix
//! listing at a past revision (from the history, see `history.rs`), each
//! from one RocksDB view, and the migration of a store or snapshot
//! written before revisions existed.

use rocksdb::{Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};

use super::apply::{Cf, StoreView};
use super::history::{
    decode_history, decode_history_key, history_after, history_key, history_of, history_prefix,
    COMPACTED_KEY, REVISION_KEY,
};
use super::mvcc::{stored_revisions, Revisions};
use super::records::{decode_record, decode_u64};
use super::{KvReader, StoreError, Versioned, KV_CF, KV_META_CF};
use crate::keys::scan_start;

type View<'a> = SnapshotWithThreadMode<'a, DB>;

/// The store seen through one RocksDB view.
struct AtView<'a> {
    db: &'a DB,
    view: View<'a>,
}

impl StoreView for AtView<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let name = match cf {
            Cf::Kv => KV_CF,
            Cf::Meta => KV_META_CF,
        };
        let handle = self
            .db
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))?;
        Ok(self.db.get_cf_opt(handle, key, &self.opts())?)
    }

    fn keys_in(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let name = match cf {
            Cf::Kv => KV_CF,
            Cf::Meta => KV_META_CF,
        };
        let handle = self
            .db
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))?;
        let mut out = Vec::new();
        let mode = IteratorMode::From(start, Direction::Forward);
        for item in self.db.iterator_cf_opt(handle, self.opts(), mode) {
            let (k, _) = item?;
            if out.len() >= limit || end.is_some_and(|e| k.as_ref() >= e) {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }
}

impl AtView<'_> {
    fn opts(&self) -> ReadOptions {
        let mut o = ReadOptions::default();
        o.set_snapshot(&self.view);
        o
    }

    fn revisions(&self) -> Result<Revisions, StoreError> {
        Ok(stored_revisions(self)?.unwrap_or_default())
    }

    /// The revision a read at `at` (the current one when `None`) reads,
    /// or why it cannot.
    fn check(&self, at: Option<u64>) -> Result<(u64, Revisions), StoreError> {
        let r = self.revisions()?;
        match at {
            None => Ok((r.current, r)),
            Some(n) if n < r.compacted => Err(StoreError::Compacted {
                requested: n,
                compacted: r.compacted,
            }),
            Some(n) if n > r.current => Err(StoreError::FutureRevision {
                requested: n,
                current: r.current,
            }),
            Some(n) => Ok((n, r)),
        }
    }

    /// The current value of `key`.
    fn value_now(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        match self.get(Cf::Kv, key)? {
            Some(rec) => decode_record(key, &rec).map(Some),
            None => Ok(None),
        }
    }

    /// [`KvReader::scan`] in this view: the current keys only, no history.
    fn scan_now(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], Versioned) -> bool,
    ) -> Result<bool, StoreError> {
        let kv = self
            .db
            .cf_handle(KV_CF)
            .ok_or(StoreError::MissingColumnFamily(KV_CF))?;
        let start = scan_start(prefix, after);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut stopped = false;
        for item in self.db.iterator_cf_opt(kv, self.opts(), mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if stopped {
                return Ok(true);
            }
            stopped = !visit(&k, decode_record(&k, &v)?);
        }
        Ok(false)
    }

    /// `key` as of revision `n`.
    fn value_at(&self, key: &[u8], n: u64) -> Result<Option<Versioned>, StoreError> {
        if let Some(rec) = self.get(Cf::Kv, key)? {
            let v = decode_record(key, &rec)?;
            if v.rev <= n {
                return Ok(Some(v));
            }
        }
        let meta = self
            .db
            .cf_handle(KV_META_CF)
            .ok_or(StoreError::MissingColumnFamily(KV_META_CF))?;
        let upper = history_key(key, n);
        let mut it = self.db.iterator_cf_opt(
            meta,
            self.opts(),
            IteratorMode::From(&upper, Direction::Reverse),
        );
        match it.next().transpose()? {
            Some((k, v)) if k.starts_with(&history_of(key)) => decode_history(&k, &v),
            _ => Ok(None),
        }
    }

    /// The keys starting with `prefix` after `after` that are stored now
    /// or have history, in order, each once.
    fn candidates<'s>(
        &'s self,
        prefix: &'s [u8],
        after: Option<&'s [u8]>,
    ) -> Result<impl Iterator<Item = Result<Vec<u8>, StoreError>> + 's, StoreError> {
        let kv = self
            .db
            .cf_handle(KV_CF)
            .ok_or(StoreError::MissingColumnFamily(KV_CF))?;
        let meta = self
            .db
            .cf_handle(KV_META_CF)
            .ok_or(StoreError::MissingColumnFamily(KV_META_CF))?;
        let kv_start = scan_start(prefix, after);
        let hist_start = match after {
            Some(a) if a >= prefix => history_key(a, u64::MAX),
            _ => history_prefix(prefix),
        };
        let hist_range = history_prefix(prefix);
        let keys = self
            .db
            .iterator_cf_opt(
                kv,
                self.opts(),
                IteratorMode::From(&kv_start, Direction::Forward),
            )
            .map(|i| i.map(|(k, _)| k.to_vec()).map_err(StoreError::from))
            .take_while(move |k| k.as_ref().map_or(true, |k| k.starts_with(prefix)));
        // Each key once: past its first history record, a seek skips its
        // other revisions, so a long history costs one step, not one per
        // record.
        let mut raw = self.db.raw_iterator_cf_opt(meta, self.opts());
        raw.seek(&hist_start);
        let past = std::iter::from_fn(move || {
            let Some(k) = raw.key() else {
                return raw.status().err().map(|e| Err(StoreError::from(e)));
            };
            if !k.starts_with(&hist_range) {
                return None;
            }
            let decoded = decode_history_key(k).map(|(key, _)| key);
            if let Ok(key) = &decoded {
                raw.seek(history_after(key));
            }
            Some(decoded)
        });
        let (mut keys, mut past) = (keys.peekable(), past.peekable());
        // The two sorted streams, merged (an error first).
        let mut merged = std::iter::from_fn(move || match (keys.peek(), past.peek()) {
            (Some(Ok(a)), Some(Ok(b))) if a > b => past.next(),
            (Some(Ok(_)), Some(Err(_))) => past.next(),
            (Some(_), _) => keys.next(),
            (None, _) => past.next(),
        });
        let mut last: Option<Vec<u8>> = None;
        Ok(std::iter::from_fn(move || loop {
            match merged.next()? {
                Err(e) => return Some(Err(e)),
                Ok(k) if last.as_ref() == Some(&k) => continue,
                Ok(k) if after.is_some_and(|a| k.as_slice() <= a) => continue,
                Ok(k) => {
                    last = Some(k.clone());
                    return Some(Ok(k));
                }
            }
        }))
    }
}

impl KvReader {
    fn at_view(&self) -> AtView<'_> {
        AtView {
            db: &self.db,
            view: self.db.snapshot(),
        }
    }

    /// The store's current and compacted revisions.
    ///
    /// # Errors
    ///
    /// [`StoreError::Installing`] while a snapshot replaces the data (its
    /// revisions may be missing meanwhile), and [`StoreError`] when
    /// RocksDB fails or a value is malformed.
    pub fn revisions(&self) -> Result<Revisions, StoreError> {
        self.consistent(|| self.at_view().revisions())
    }

    /// `key` as of revision `at` (now when `None`), and the revision read.
    ///
    /// # Errors
    ///
    /// [`StoreError::Compacted`] below the compacted revision,
    /// [`StoreError::FutureRevision`] above the current one, and the
    /// errors of [`KvReader::get`].
    pub fn get_at(
        &self,
        key: &[u8],
        at: Option<u64>,
    ) -> Result<(Option<Versioned>, u64), StoreError> {
        self.consistent(|| {
            let v = self.at_view();
            let (n, _) = v.check(at)?;
            let value = match at {
                None => v.value_now(key)?,
                Some(_) => v.value_at(key, n)?,
            };
            Ok((value, n))
        })
    }

    /// [`KvReader::scan`] as of revision `at` (now when `None`): visits the
    /// keys that existed then, with their values then. Answers whether
    /// more follow, and the revision read.
    ///
    /// # Errors
    ///
    /// Those of [`KvReader::get_at`].
    pub fn scan_at(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        at: Option<u64>,
        mut visit: impl FnMut(&[u8], Versioned) -> bool,
    ) -> Result<(bool, u64), StoreError> {
        self.consistent(|| {
            let v = self.at_view();
            let (n, _) = v.check(at)?;
            if at.is_none() {
                return Ok((v.scan_now(prefix, after, &mut visit)?, n));
            }
            let mut stopped = false;
            for key in v.candidates(prefix, after)? {
                let key = key?;
                let Some(value) = v.value_at(&key, n)? else {
                    continue;
                };
                if stopped {
                    return Ok((true, n));
                }
                stopped = !visit(&key, value);
            }
            Ok((false, n))
        })
    }

    /// [`KvReader::scan_at`] that also shows `visit` each key it examines
    /// that has no value at the revision (`None`: one with history but
    /// created later or deleted then), so that a caller can bound the work
    /// of a past revision's scan, which such keys make without items.
    /// Once `visit` returns `false`, "more" is whether any key to examine
    /// follows (found without reading further).
    ///
    /// # Errors
    ///
    /// Those of [`KvReader::get_at`].
    pub fn scan_at_examining(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        at: Option<u64>,
        mut visit: impl FnMut(&[u8], Option<Versioned>) -> bool,
    ) -> Result<(bool, u64), StoreError> {
        self.consistent(|| {
            let v = self.at_view();
            let (n, _) = v.check(at)?;
            if at.is_none() {
                let more = v.scan_now(prefix, after, |k, val| visit(k, Some(val)))?;
                return Ok((more, n));
            }
            let mut stopped = false;
            for key in v.candidates(prefix, after)? {
                let key = key?;
                if stopped {
                    return Ok((true, n));
                }
                stopped = !visit(&key, v.value_at(&key, n)?);
            }
            Ok((false, n))
        })
    }

    /// Gives a store written before revisions existed (an applied index
    /// but no revision) its revisions: current and compacted both at the
    /// applied index, as its past values were never kept. `index` is the
    /// applied index when the caller knows it.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails.
    pub(super) fn migrate_revisions(&self) -> Result<(), StoreError> {
        let v = self.at_view();
        if stored_revisions(&v)?.is_some() {
            return Ok(());
        }
        let applied = match v.get(Cf::Meta, super::records::APPLIED_KEY)? {
            Some(a) => decode_u64(&a).unwrap_or(0),
            None => 0,
        };
        if applied == 0 {
            return Ok(());
        }
        tracing::info!(
            applied,
            "store written before revisions: history starts at the applied index"
        );
        let cf = self.cf(KV_META_CF)?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(cf, REVISION_KEY, applied.to_be_bytes());
        batch.put_cf(cf, COMPACTED_KEY, applied.to_be_bytes());
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }
}
