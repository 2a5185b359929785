//! The changes of a key range between two revisions, read back from the
//! history (`history.rs`) and the current records, for watches that start
//! in the past or fall behind. Paged by revision with bounded memory: a
//! page holds the `limit` first changes (whole revisions), found in one
//! pass over the range's history; the next page starts after it.

use std::collections::BinaryHeap;

use bytes::Bytes;
use rocksdb::{DBRawIteratorWithThreadMode, ReadOptions, DB};

use super::history::{
    decode_history, decode_history_key, history_after, history_of, history_prefix, HISTORY_PREFIX,
};
use super::mvcc::stored_revisions;
use super::records::decode_record;
use super::{KvReader, StoreError, Versioned, KV_CF, KV_META_CF};
use crate::watch::{Event, KeyRange, RangeEnd};

/// A page of changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesPage {
    /// The changes, by revision, then key.
    pub events: Vec<Event>,
    /// Every change up to this revision (inclusive) is in this page or an
    /// earlier one: the next page starts after it.
    pub through: u64,
}

/// An event ordered by revision, then key.
struct ByRevision(Event);

impl ByRevision {
    fn order(&self) -> (u64, &[u8]) {
        (self.0.revision, &self.0.kv.key)
    }
}

impl PartialEq for ByRevision {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}
impl Eq for ByRevision {}
impl PartialOrd for ByRevision {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByRevision {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

/// The history bounds of `range` in `kv_meta`.
fn history_bounds(range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    match &range.end {
        RangeEnd::Single => (history_of(&range.start), history_after(&range.start)),
        RangeEnd::Before(e) => (history_prefix(&range.start), history_prefix(e)),
        RangeEnd::Unbounded => {
            let mut end = HISTORY_PREFIX.to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            (history_prefix(&range.start), end)
        }
    }
}

impl KvReader {
    /// The changes to keys in `range` with a revision in `(after, upto]`,
    /// at most about `limit` of them (more only when one revision alone
    /// holds more), as one page ending on a whole revision.
    ///
    /// # Errors
    ///
    /// [`StoreError::Compacted`] when the history no longer holds every
    /// change after `after` (the compacted revision is above it),
    /// [`StoreError::Installing`] while a snapshot replaces the data, and
    /// the errors of reading the store.
    pub fn changes(
        &self,
        range: &KeyRange,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<ChangesPage, StoreError> {
        let limit = limit.max(1);
        let mut heap = self.consistent(|| self.collect(range, after, upto, Some(limit)))?;
        let Some(max) = heap.peek().map(|e| e.0.revision) else {
            return Ok(ChangesPage {
                events: Vec::new(),
                through: upto,
            });
        };
        let through = if heap.len() < limit {
            upto
        } else if heap.iter().any(|e| e.0.revision < max) {
            // Only whole revisions: the last one may have more changes.
            while heap.peek().is_some_and(|e| e.0.revision == max) {
                heap.pop();
            }
            max - 1
        } else {
            // One revision fills the page: take it whole.
            heap = self.consistent(|| self.collect(range, max - 1, max, None))?;
            max
        };
        let events = heap.into_sorted_vec().into_iter().map(|e| e.0).collect();
        Ok(ChangesPage { events, through })
    }

    /// One pass over `range`: the first `limit` changes in `(after, upto]`
    /// by (revision, key), all of them when `limit` is `None`.
    fn collect(
        &self,
        range: &KeyRange,
        after: u64,
        upto: u64,
        limit: Option<usize>,
    ) -> Result<BinaryHeap<ByRevision>, StoreError> {
        let view = self.db.snapshot();
        let opts = || {
            let mut o = ReadOptions::default();
            o.set_snapshot(&view);
            o
        };
        let compacted = stored_revisions(self)?.unwrap_or_default().compacted;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after + 1,
                compacted,
            });
        }
        let mut hist = self.db.raw_iterator_cf_opt(self.cf(KV_META_CF)?, opts());
        let mut kv = self.db.raw_iterator_cf_opt(self.cf(KV_CF)?, opts());
        let (hist_start, hist_end) = history_bounds(range);
        hist.seek(&hist_start);
        kv.seek(&range.start);
        let mut heap = BinaryHeap::new();
        let mut keep = |e: Event| {
            if e.revision <= after || e.revision > upto {
                return;
            }
            heap.push(ByRevision(e));
            if limit.is_some_and(|l| heap.len() > l) {
                heap.pop();
            }
        };
        loop {
            let next_hist = next_history_key(&hist, &hist_end, range)?;
            let next_kv = next_kv_key(&kv, range)?;
            let key = match (next_hist, next_kv) {
                (None, None) => break,
                (Some(h), Some(k)) => h.min(k),
                (Some(h), None) => h,
                (None, Some(k)) => k,
            };
            let key = Bytes::from(key);
            let prev = key_history(&mut hist, &key, &mut keep)?;
            if kv.key() == Some(&key[..]) {
                let v = decode_record(&key, kv.value().unwrap_or_default())?;
                keep(Event::put(&key, &v, prev.as_ref()));
                kv.next();
            }
        }
        hist.status()?;
        kv.status()?;
        Ok(heap)
    }
}

type Raw<'a> = DBRawIteratorWithThreadMode<'a, DB>;

/// The user key of the history record `hist` is on, when in `range`.
fn next_history_key(
    hist: &Raw<'_>,
    end: &[u8],
    range: &KeyRange,
) -> Result<Option<Vec<u8>>, StoreError> {
    match hist.key() {
        Some(k) if k < end => {
            let (key, _) = decode_history_key(k)?;
            Ok(range.contains(&key).then_some(key))
        }
        _ => Ok(None),
    }
}

/// The key `kv` is on, when in `range`.
fn next_kv_key(kv: &Raw<'_>, range: &KeyRange) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(kv.key().filter(|k| range.contains(k)).map(<[u8]>::to_vec))
}

/// Visits the history of `key` (where `hist` is, if it is there) in
/// revision order, each record as the change that made it; answers the
/// last version (`None` after a tombstone or without history).
fn key_history(
    hist: &mut Raw<'_>,
    key: &Bytes,
    keep: &mut impl FnMut(Event),
) -> Result<Option<Versioned>, StoreError> {
    let own = history_of(key);
    let mut prev: Option<Versioned> = None;
    while let Some(k) = hist.key().filter(|k| k.starts_with(&own)) {
        let (_, rev) = decode_history_key(k)?;
        let past = decode_history(k, hist.value().unwrap_or_default())?;
        match &past {
            Some(v) => keep(Event::put(key, v, prev.as_ref())),
            None => keep(Event::delete(key, rev, prev.as_ref())),
        }
        prev = past;
        hist.next();
    }
    Ok(prev)
}
