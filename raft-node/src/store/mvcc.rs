//! The revision rules of applying: each key's `create_revision`,
//! `mod_revision` and `version`, the history a write or delete leaves
//! behind, the store's current revision, and compaction (by command, and
//! automatic by retention), all decided from the log alone so that every
//! replica keeps the same history. The layout is in `history.rs`.
//!
//! Compaction takes effect at once (reads below the compacted revision are
//! refused from that entry on), but the records it releases are deleted a
//! bounded number at a time: after each applied entry, at most
//! [`COLLECT_PER_ENTRY`] of them, in compaction order. So a compaction over
//! millions of overwrites costs no more memory or time per entry than any
//! other, and the records left meanwhile are never read: a read at or
//! above the compacted revision finds the version live then first, and a
//! key's tombstone goes only after every older record of that key (it
//! sorts last among the records its delete released). Every replica
//! deletes the same records after the same entry, whatever its batches,
//! so replicas stay byte for byte equal.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;

use super::apply::{Batch, Cf, StoreView};
use super::history::{
    encode_history, garbage_key, garbage_superseded, history_key, history_of_garbage,
    COMPACTED_KEY, GARBAGE_PREFIX, REVISION_KEY,
};
use super::records::{decode_record, decode_u64, encode_record};
use super::{StoreError, Versioned};
use crate::command::{decode_compact, Outcome};
use crate::keys::{prefix_end, successor};
use crate::watch::Event;

/// The store's revisions as a batch sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revisions {
    /// The revision of the last change (0 before any).
    pub current: u64,
    /// History is kept from this revision on (0: nothing compacted).
    pub compacted: u64,
}

/// Released history records deleted after each applied entry, at most.
/// Part of the replicated format: every replica must delete the same
/// records after the same entry (it shows in the store's digest), so this
/// is a constant, not a setting. Above the records a write releases (two
/// for a delete, one for an overwrite), so collection keeps up with any
/// steady load; a transaction deleting a large range releases more, and
/// the entries after it catch up.
pub const COLLECT_PER_ENTRY: usize = 1024;

/// How many compaction order keys one read of the view fetches.
const FETCH: usize = 256;

/// The deletion of released history records over one batch: those the
/// view holds (fetched in order, a page at a time), then this batch's own
/// (which the view does not show, and which sort after every record in
/// it: they were released at this batch's indexes).
#[derive(Debug)]
pub(super) struct Collector {
    /// Records deleted after each entry, at most.
    per_entry: usize,
    /// Compaction order keys fetched from the view and not deleted yet.
    fetched: VecDeque<Vec<u8>>,
    /// The last key fetched; the next page starts past it.
    cursor: Option<Vec<u8>>,
    /// The view holds no compaction order key past the cursor.
    view_done: bool,
    /// This batch's own history records, by (the revision they are needed
    /// until, history key).
    pub(super) own: BTreeSet<(u64, Vec<u8>)>,
}

impl Collector {
    /// A collector deleting at most `per_entry` records after each entry.
    pub(super) fn new(per_entry: usize) -> Self {
        Self {
            per_entry,
            fetched: VecDeque::new(),
            cursor: None,
            view_done: false,
            own: BTreeSet::new(),
        }
    }
}

/// The revisions stored in `kv_meta`, `None` when the store has none
/// (never applied an entry, or written by a release without revisions).
///
/// # Errors
///
/// [`StoreError`] when the store cannot be read or a value is malformed.
pub(super) fn stored_revisions(view: &impl StoreView) -> Result<Option<Revisions>, StoreError> {
    let read = |key: &'static [u8]| -> Result<Option<u64>, StoreError> {
        match view.get(Cf::Meta, key)? {
            None => Ok(None),
            Some(v) => decode_u64(&v).map(Some).ok_or(StoreError::Corruption {
                key: String::from_utf8_lossy(key).into_owned(),
                detail: "revision is not 8 bytes",
            }),
        }
    };
    Ok(match (read(REVISION_KEY)?, read(COMPACTED_KEY)?) {
        (Some(current), compacted) => Some(Revisions {
            current,
            compacted: compacted.unwrap_or(0),
        }),
        (None, _) => None,
    })
}

impl<V: StoreView> Batch<'_, V> {
    /// The record of `key`: this batch's, else the stored one.
    pub(super) fn current(&self, key: &Bytes) -> Result<Option<Versioned>, StoreError> {
        if let Some(v) = self.keys.get(key) {
            return Ok(v.clone());
        }
        match self.view.get(Cf::Kv, key)? {
            Some(rec) => decode_record(key, &rec).map(Some),
            None => Ok(None),
        }
    }

    /// The revisions before this point of the batch.
    pub(super) fn revisions(&mut self) -> Result<Revisions, StoreError> {
        if let Some(r) = self.revisions {
            return Ok(r);
        }
        let r = stored_revisions(self.view)?.unwrap_or_default();
        self.revisions = Some(r);
        Ok(r)
    }

    /// Sets `key` to `value` at `index`, over `old`, attached to `lease`
    /// (0: none; the caller checked that it exists). The key leaves the
    /// lease it had.
    pub(super) fn put_value(
        &mut self,
        index: u64,
        key: &Bytes,
        old: Option<Versioned>,
        value: &Bytes,
        lease: u64,
    ) -> Result<(), StoreError> {
        let (create_rev, version) = match &old {
            Some(o) => (o.create_rev, o.version + 1),
            None => (index, 1),
        };
        let new = Versioned {
            value: value.clone(),
            rev: index,
            create_rev,
            version,
            lease,
        };
        self.reattach(key, old.as_ref().map_or(0, |o| o.lease), lease)?;
        if let Some(o) = &old {
            self.retire(key, o, index);
        }
        self.events.push(Event::put(key, &new, old.as_ref()));
        self.put(Cf::Kv, key.to_vec(), encode_record(&new));
        self.keys.insert(key.clone(), Some(new));
        self.changed(index)
    }

    /// Deletes `key` (whose record is `old`) at `index`: a tombstone stays
    /// in the history until compacted.
    pub(super) fn delete_value(
        &mut self,
        index: u64,
        key: &Bytes,
        old: &Versioned,
    ) -> Result<(), StoreError> {
        self.reattach(key, old.lease, 0)?;
        self.retire(key, old, index);
        self.events.push(Event::delete(key, index, Some(old)));
        let tomb = history_key(key, index);
        self.put(Cf::Meta, tomb.clone(), encode_history(&tomb, None));
        self.put(Cf::Meta, garbage_key(index, &tomb), Vec::new());
        self.collector.own.insert((index, tomb));
        self.delete(Cf::Kv, key.to_vec());
        self.keys.insert(key.clone(), None);
        self.changed(index)
    }

    /// Keeps `old` in the history, needed until revision `superseded`.
    fn retire(&mut self, key: &[u8], old: &Versioned, superseded: u64) {
        let hk = history_key(key, old.rev);
        self.put(Cf::Meta, hk.clone(), encode_history(&hk, Some(old)));
        self.put(Cf::Meta, garbage_key(superseded, &hk), Vec::new());
        self.collector.own.insert((superseded, hk));
    }

    fn changed(&mut self, index: u64) -> Result<(), StoreError> {
        let r = self.revisions()?;
        self.revisions = Some(Revisions {
            current: index,
            ..r
        });
        Ok(())
    }

    /// A compaction entry (`POST /v1/kv/compact`): refused for a revision
    /// already compacted or above the current one, as etcd does.
    /// It is decided as if every entry before it had ended a batch (the
    /// retention's compaction made), so its outcome does not depend on
    /// how entries were batched.
    pub(super) fn compact_command(
        &mut self,
        index: u64,
        data: &[u8],
    ) -> Result<Outcome, StoreError> {
        let rev = match decode_compact(data) {
            Ok(rev) => rev,
            Err(err) => return Ok(Outcome::Malformed(err.to_string())),
        };
        self.compact_by_retention(index.saturating_sub(1))?;
        let r = self.revisions()?;
        if rev <= r.compacted || rev > r.current {
            return Ok(Outcome::CompactRefused {
                compacted: r.compacted,
                current: r.current,
            });
        }
        self.compact(rev)?;
        Ok(Outcome::Compacted { revision: rev })
    }

    /// Compacts to `rev`: from now on no read below it is answered, and the
    /// records it releases are deleted after this and later entries.
    fn compact(&mut self, rev: u64) -> Result<(), StoreError> {
        let r = self.revisions()?;
        self.revisions = Some(Revisions {
            compacted: rev,
            ..r
        });
        Ok(())
    }

    /// After entry `index`: the retention's compaction, then the deletion of
    /// at most [`COLLECT_PER_ENTRY`] released records. Both depend only on
    /// the state after `index`, never on the batch.
    pub(super) fn after_entry(&mut self, index: u64) -> Result<(), StoreError> {
        self.compact_by_retention(index)?;
        let compacted = self.revisions()?.compacted;
        if compacted == 0 {
            return Ok(());
        }
        for _ in 0..self.collector.per_entry {
            if !self.collect_one(compacted)? {
                break;
            }
        }
        Ok(())
    }

    /// Deletes the first released record (needed until `compacted` or
    /// before), if any; answers whether it did.
    fn collect_one(&mut self, compacted: u64) -> Result<bool, StoreError> {
        if self.collector.fetched.is_empty() && !self.collector.view_done {
            self.fetch_released()?;
        }
        if let Some(g) = self.collector.fetched.front() {
            if garbage_superseded(g)? > compacted {
                return Ok(false);
            }
            if let Some(g) = self.collector.fetched.pop_front() {
                self.delete(Cf::Meta, history_of_garbage(&g)?);
                self.delete(Cf::Meta, g);
            }
            return Ok(true);
        }
        match self.collector.own.first() {
            Some((s, _)) if *s <= compacted => {}
            _ => return Ok(false),
        }
        if let Some((s, hk)) = self.collector.own.pop_first() {
            self.delete(Cf::Meta, garbage_key(s, &hk));
            self.delete(Cf::Meta, hk);
        }
        Ok(true)
    }

    /// Fetches the view's next page of compaction order keys.
    fn fetch_released(&mut self) -> Result<(), StoreError> {
        let start = match &self.collector.cursor {
            Some(c) => successor(c),
            None => GARBAGE_PREFIX.to_vec(),
        };
        let end = prefix_end(GARBAGE_PREFIX).expect("b\"g/\" has an end");
        let page = self.view.keys_in(Cf::Meta, &start, Some(&end), FETCH)?;
        self.collector.view_done = page.len() < FETCH;
        self.collector.cursor = page.last().cloned().or(self.collector.cursor.take());
        self.collector.fetched.extend(page);
        Ok(())
    }

    /// The retention's compaction once entry `last` is applied: to
    /// `last - retention`, at most the current revision. Monotonic and
    /// idempotent, so making it at any subset of entries gives the same
    /// state as making it after each.
    fn compact_by_retention(&mut self, last: u64) -> Result<(), StoreError> {
        let r = self.revisions()?;
        if self.retention > 0 {
            let target = last.saturating_sub(self.retention).min(r.current);
            if target > r.compacted {
                self.compact(target)?;
            }
        }
        Ok(())
    }

    /// At the end of a batch ending at `last`: compacts to `last - retention`
    /// (at most the current revision) when retention is on, and records
    /// the revisions. Deterministic: the result at `last` does not depend on
    /// where earlier batches ended.
    pub(super) fn finish_revisions(&mut self, last: u64) -> Result<(), StoreError> {
        self.compact_by_retention(last)?;
        let r = self.revisions()?;
        self.put(
            Cf::Meta,
            REVISION_KEY.to_vec(),
            r.current.to_be_bytes().to_vec(),
        );
        self.put(
            Cf::Meta,
            COMPACTED_KEY.to_vec(),
            r.compacted.to_be_bytes().to_vec(),
        );
        Ok(())
    }
}
