//! The changes of a key range between two revisions, read back from the
//! history (`history.rs`) and the current records, for watches that start
//! in the past or fall behind. Paged by revision with bounded memory: a
//! page holds the first changes (whole revisions) that fit its
//! [`PageLimit`] in count and in bytes, found in one pass over the range's
//! history; the next page starts after it.

use std::collections::BinaryHeap;

use bytes::Bytes;
use rocksdb::{DBRawIteratorWithThreadMode, ReadOptions, DB};

use super::history::{
    decode_history, decode_history_key, history_after, history_key, history_of, history_prefix,
    HISTORY_PREFIX,
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

/// How much one page of changes may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// Changes, at most.
    pub events: usize,
    /// Bytes of keys and values (with the previous ones) in the changes,
    /// at most, counting [`EVENT_OVERHEAD`] more per change.
    pub bytes: usize,
}

/// The bytes a change counts for beyond its keys and values.
pub const EVENT_OVERHEAD: usize = 64;

/// The bytes `e` counts for in a page: its key and value, its previous
/// key and value, and [`EVENT_OVERHEAD`].
pub fn event_bytes(e: &Event) -> usize {
    let prev = e
        .prev_kv
        .as_ref()
        .map_or(0, |p| p.key.len() + p.value.len());
    EVENT_OVERHEAD + e.kv.key.len() + e.kv.value.len() + prev
}

/// The first changes found, by (revision, key), within a limit.
struct Kept {
    heap: BinaryHeap<ByRevision>,
    bytes: usize,
    /// The first change left out (revision, key), if any was: every
    /// change kept comes before it, every later one is left out too.
    cut: Option<(u64, Bytes)>,
    /// History records read.
    visited: usize,
}

impl Kept {
    /// Keeps `e` if it is among the first that fit `limit` (all when
    /// `None`); at least one change is kept whatever its size.
    fn keep(&mut self, e: Event, limit: Option<PageLimit>) {
        let Some(l) = limit else {
            self.heap.push(ByRevision(e));
            return;
        };
        // After the first left out: left out too (a smaller change found
        // later may fit where that one did not, but the page must be a
        // run of the first changes).
        if self
            .cut
            .as_ref()
            .is_some_and(|(rev, key)| (*rev, &key[..]) < (e.revision, &e.kv.key[..]))
        {
            return;
        }
        self.bytes += event_bytes(&e);
        self.heap.push(ByRevision(e));
        while self.heap.len() > l.events || (self.bytes > l.bytes && self.heap.len() > 1) {
            if let Some(out) = self.heap.pop() {
                self.bytes -= event_bytes(&out.0);
                // The last kept, so before the earlier first left out.
                self.cut = Some((out.0.revision, out.0.kv.key));
            }
        }
    }
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
    /// the first that fit `limit` (more only when one revision alone does
    /// not fit it: that revision whole), as one page ending on a whole
    /// revision.
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
        limit: PageLimit,
    ) -> Result<ChangesPage, StoreError> {
        let limit = PageLimit {
            events: limit.events.max(1),
            bytes: limit.bytes,
        };
        let kept = self.consistent(|| self.collect(range, after, upto, Some(limit)))?;
        let mut heap = kept.heap;
        // The first change left out tells whether the page's last revision
        // is whole.
        let through = match kept.cut {
            None => upto,
            Some((cut, _)) => {
                // The changes at the cut revision go to the next page together.
                while heap.peek().is_some_and(|e| e.0.revision == cut) {
                    heap.pop();
                }
                if heap.is_empty() {
                    // One revision fills the page: take it whole.
                    heap = self
                        .consistent(|| self.collect(range, cut - 1, cut, None))?
                        .heap;
                    cut
                } else {
                    cut - 1
                }
            }
        };
        let events = heap.into_sorted_vec().into_iter().map(|e| e.0).collect();
        Ok(ChangesPage { events, through })
    }

    /// One pass over `range`: the first changes in `(after, upto]` by
    /// (revision, key) that fit `limit`, all of them when `None`.
    fn collect(
        &self,
        range: &KeyRange,
        after: u64,
        upto: u64,
        limit: Option<PageLimit>,
    ) -> Result<Kept, StoreError> {
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
        let mut kept = Kept {
            heap: BinaryHeap::new(),
            bytes: 0,
            cut: None,
            visited: 0,
        };
        let mut visited = 0;
        let mut keep = |e: Event| {
            if e.revision > after && e.revision <= upto {
                kept.keep(e, limit);
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
            let prev = key_history(&mut hist, &key, (after, upto), &mut keep, &mut visited)?;
            if kv.key() == Some(&key[..]) {
                let v = decode_record(&key, kv.value().unwrap_or_default())?;
                keep(Event::put(&key, &v, prev.as_ref()));
                kv.next();
            }
        }
        hist.status()?;
        kv.status()?;
        kept.visited = visited;
        Ok(kept)
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

/// History records of a key read one by one before the rest below the
/// window is skipped with a seek.
const STEPS_BEFORE_SEEK: usize = 8;

/// Visits the history of `key` (where `hist` is, if it is there) in
/// revision order, each record as the change that made it, reading only
/// the records in the window `(after, upto]` and the one before it (the
/// previous value of its first change): the others are skipped with
/// seeks. Answers the last version read (`None` after a tombstone or
/// without history); when records above `upto` were skipped, the
/// current record is above it too, so its change is out of the window
/// whatever this answers. `hist` is left past the key's history.
fn key_history(
    hist: &mut Raw<'_>,
    key: &Bytes,
    (after, upto): (u64, u64),
    keep: &mut impl FnMut(Event),
    visited: &mut usize,
) -> Result<Option<Versioned>, StoreError> {
    let own = history_of(key);
    let mut prev: Option<Versioned> = None;
    let mut below = 0;
    while let Some(k) = hist.key().filter(|k| k.starts_with(&own)) {
        let (_, rev) = decode_history_key(k)?;
        if rev > upto {
            hist.seek(history_after(key));
            break;
        }
        if rev <= after {
            below += 1;
            if below == STEPS_BEFORE_SEEK {
                // To the last record at or below `after` (this one, or
                // one of this key after it).
                hist.seek_for_prev(history_key(key, after));
                continue;
            }
        }
        let Some(k) = hist.key() else { break };
        *visited += 1;
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

#[cfg(test)]
mod tests {
    //! Pages on RocksDB, with a revision that changes two keys written
    //! directly (no command makes one yet).

    use raft_core::{Entry, StateMachine};

    use super::super::history::REVISION_KEY;
    use super::super::records::encode_record;
    use super::super::test_support::{entry, put, store};
    use super::*;
    use crate::command::Op;
    use crate::watch::EventKind;

    /// A limit of `events` changes, whatever their bytes.
    fn n(events: usize) -> PageLimit {
        PageLimit {
            events,
            bytes: usize::MAX,
        }
    }

    fn revs(p: &ChangesPage) -> Vec<(u64, String)> {
        p.events
            .iter()
            .map(|e| {
                assert_eq!(e.kind, EventKind::Put);
                (e.revision, String::from_utf8_lossy(&e.kv.key).into_owned())
            })
            .collect()
    }

    fn put_sized(index: u64, key: &str, bytes: usize) -> Entry {
        entry(index, key, Op::Put(Bytes::from(vec![b'v'; bytes])))
    }

    /// Finding: a page was bounded in count only, so a watch replaying
    /// 1 MiB values (and their 1 MiB previous values) held up to 2 GB per
    /// page. Now a page also stops at a byte budget, keeping at least one
    /// whole revision so that the replay always moves on.
    #[tokio::test]
    async fn a_page_is_bounded_in_bytes_and_still_holds_one_revision() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = store(dir.path(), 100);
        // Ten changes of 1,000-byte values, then one of 10,000 bytes.
        for i in 1..=10 {
            let key = if i % 2 == 0 { "a" } else { "b" };
            sm.apply(&[put_sized(i, key, 1000)]).await.unwrap();
        }
        sm.apply(&[put_sized(11, "c", 10_000)]).await.unwrap();
        let r = sm.reader();
        let all = KeyRange::prefix(Bytes::new());
        let budget = PageLimit {
            events: 1000,
            bytes: 4500,
        };
        let mut after = 0;
        let mut got = Vec::new();
        while after < 11 {
            let p = r.changes(&all, after, 11, budget).unwrap();
            let bytes: usize = p.events.iter().map(event_bytes).sum();
            assert!(!p.events.is_empty() && p.through > after);
            assert!(
                bytes <= budget.bytes || p.events.len() == 1,
                "a page of {} changes holds {bytes} bytes",
                p.events.len()
            );
            got.extend(p.events.iter().map(|e| e.revision));
            after = p.through;
        }
        assert_eq!(got, (1..=11).collect::<Vec<_>>());
    }

    /// A page's changes, whatever order they are found in, are the longest
    /// run of the first changes (by revision, key) that fits the limit (at
    /// least one), and the cut is the revision of the first left out.
    /// Randomized: `PAGE_SEED=<n>` replays a run.
    #[test]
    fn kept_changes_are_the_first_that_fit() {
        use rand::{Rng, SeedableRng};
        let seed = std::env::var("PAGE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("PAGE_SEED={seed}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..500 {
            let mut events: Vec<Event> = (0..rng.gen_range(0..30))
                .map(|i| {
                    let v = Versioned {
                        value: Bytes::from(vec![b'v'; rng.gen_range(0..200)]),
                        rev: rng.gen_range(1..10),
                        create_rev: 1,
                        version: 1,
                        lease: 0,
                    };
                    Event::put(&Bytes::from(format!("k{i}")), &v, None)
                })
                .collect();
            let limit = PageLimit {
                events: rng.gen_range(1..12),
                bytes: rng.gen_range(1..1500),
            };
            let mut kept = Kept {
                heap: BinaryHeap::new(),
                bytes: 0,
                cut: None,
                visited: 0,
            };
            for e in &events {
                kept.keep(e.clone(), Some(limit));
            }
            events.sort_by(|a, b| (a.revision, &a.kv.key).cmp(&(b.revision, &b.kv.key)));
            let (mut n, mut bytes) = (0, 0);
            while n < events.len()
                && (n == 0 || (n < limit.events && bytes + event_bytes(&events[n]) <= limit.bytes))
            {
                bytes += event_bytes(&events[n]);
                n += 1;
            }
            let got: Vec<Event> = kept
                .heap
                .into_sorted_vec()
                .into_iter()
                .map(|e| e.0)
                .collect();
            let short = |v: &[Event]| -> Vec<(u64, String, usize)> {
                v.iter()
                    .map(|e| {
                        (
                            e.revision,
                            String::from_utf8_lossy(&e.kv.key).into_owned(),
                            event_bytes(e),
                        )
                    })
                    .collect()
            };
            assert_eq!(
                short(&got),
                short(&events[..n]),
                "PAGE_SEED={seed} {limit:?} all {:?}",
                short(&events)
            );
            assert_eq!(got, events[..n], "PAGE_SEED={seed}");
            assert_eq!(
                kept.cut.map(|c| c.0),
                events.get(n).map(|e| e.revision),
                "PAGE_SEED={seed}"
            );
        }
    }

    /// Finding: every page walked the whole history of every key in the
    /// range, so a watch from revision 1 over one key written N times read
    /// about N records per page, N²/page records in all. Now a page skips
    /// a key's records below its start (but the one before it, the
    /// previous value) and above its end with seeks.
    #[tokio::test]
    async fn a_page_reads_only_the_records_of_its_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = store(dir.path(), 100);
        let batch: Vec<Entry> = (1..=1000).map(|i| put(i, "k")).collect();
        sm.apply(&batch).await.unwrap();
        let r = sm.reader();
        let key = KeyRange::etcd(Bytes::from("k"), Bytes::new()).unwrap();
        let kept = r.collect(&key, 500, 510, Some(n(100))).unwrap();
        let revs: Vec<u64> = kept
            .heap
            .into_sorted_vec()
            .iter()
            .map(|e| {
                assert_eq!(e.0.prev_kv.as_ref().unwrap().mod_revision, e.0.revision - 1);
                e.0.revision
            })
            .collect();
        assert_eq!(revs, (501..=510).collect::<Vec<_>>());
        assert!(kept.visited < 40, "{} history records read", kept.visited);
    }

    #[tokio::test]
    async fn pages_end_on_whole_revisions_and_take_a_large_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut sm) = store(dir.path(), 100);
        sm.apply(&[put(1, "a"), put(2, "b"), put(3, "a")])
            .await
            .unwrap();
        // Revision 4 creates "x" and "y" together.
        let db = log.db();
        for key in ["x", "y"] {
            let v = Versioned {
                value: Bytes::from_static(b"v4"),
                rev: 4,
                create_rev: 4,
                version: 1,
                lease: 0,
            };
            db.put_cf(db.cf_handle(KV_CF).unwrap(), key, encode_record(&v))
                .unwrap();
        }
        let meta = db.cf_handle(KV_META_CF).unwrap();
        db.put_cf(meta, REVISION_KEY, 4u64.to_be_bytes()).unwrap();
        let r = sm.reader();
        let all = KeyRange::prefix(Bytes::new());
        let p = r.changes(&all, 0, 4, n(2)).unwrap();
        assert_eq!(revs(&p), [(1, "a".into()), (2, "b".into())]);
        assert_eq!(p.through, 2);
        // Two changes at 4 and one at 3 do not fit two: 3 alone.
        let p = r.changes(&all, 2, 4, n(2)).unwrap();
        assert_eq!((revs(&p), p.through), (vec![(3, "a".into())], 3));
        // A page of one still holds revision 4 whole.
        let p = r.changes(&all, 3, 4, n(1)).unwrap();
        assert_eq!(revs(&p), [(4, "x".into()), (4, "y".into())]);
        assert_eq!(p.through, 4);
        // The previous value comes with each change, from the history.
        let p = r
            .changes(&KeyRange::prefix(Bytes::from("a")), 2, 4, n(10))
            .unwrap();
        let prev = p.events[0].prev_kv.as_ref().unwrap();
        assert_eq!((prev.mod_revision, &prev.value[..]), (1, &b"v1"[..]));
        assert_eq!(p.through, 4);
    }
}
