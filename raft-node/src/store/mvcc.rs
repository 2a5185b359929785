//! The revision rules of applying: each key's `create_revision`,
//! `mod_revision` and `version`, the history a write or delete leaves
//! behind, the store's current revision, and compaction (by command, and
//! automatic by retention), all decided from the log alone so that every
//! replica keeps the same history. The layout is in `history.rs`.

use bytes::Bytes;

use super::apply::{Batch, Cf, StoreView};
use super::history::{
    encode_history, garbage_bound, garbage_key, history_key, history_of_garbage, COMPACTED_KEY,
    REVISION_KEY,
};
use super::records::{decode_record, decode_u64, encode_record};
use super::{StoreError, Versioned};
use crate::command::{decode_compact, Outcome};
use crate::watch::Event;

/// The store's revisions as a batch sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revisions {
    /// The revision of the last change (0 before any).
    pub current: u64,
    /// History is kept from this revision on (0: nothing compacted).
    pub compacted: u64,
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
    fn revisions(&mut self) -> Result<Revisions, StoreError> {
        if let Some(r) = self.revisions {
            return Ok(r);
        }
        let r = stored_revisions(self.view)?.unwrap_or_default();
        self.revisions = Some(r);
        Ok(r)
    }

    /// Sets `key` to `value` at `index`, over `old`.
    pub(super) fn put_value(
        &mut self,
        index: u64,
        key: &Bytes,
        old: Option<Versioned>,
        value: &Bytes,
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
        };
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
        self.retire(key, old, index);
        self.events.push(Event::delete(key, index, Some(old)));
        let tomb = history_key(key, index);
        self.put(Cf::Meta, tomb.clone(), encode_history(&tomb, None));
        self.put(Cf::Meta, garbage_key(index, &tomb), Vec::new());
        self.garbage.push((index, tomb));
        self.delete(Cf::Kv, key.to_vec());
        self.keys.insert(key.clone(), None);
        self.changed(index)
    }

    /// Keeps `old` in the history, needed until revision `superseded`.
    fn retire(&mut self, key: &[u8], old: &Versioned, superseded: u64) {
        let hk = history_key(key, old.rev);
        self.put(Cf::Meta, hk.clone(), encode_history(&hk, Some(old)));
        self.put(Cf::Meta, garbage_key(superseded, &hk), Vec::new());
        self.garbage.push((superseded, hk));
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

    /// Forgets the history no read at `rev` or later needs.
    fn compact(&mut self, rev: u64) -> Result<(), StoreError> {
        // Records needed until the compacted revision or before are gone
        // already: the scan starts past them, not over their deletions.
        let before = self.revisions()?.compacted;
        let start = garbage_bound(before.saturating_add(1));
        let end = garbage_bound(rev.saturating_add(1));
        for g in self.view.keys_between(Cf::Meta, &start, &end)? {
            let hk = history_of_garbage(&g)?;
            self.delete(Cf::Meta, hk);
            self.delete(Cf::Meta, g);
        }
        // This batch's own records are not in the view yet.
        let (gone, kept) = std::mem::take(&mut self.garbage)
            .into_iter()
            .partition::<Vec<_>, _>(|(s, _)| *s <= rev);
        self.garbage = kept;
        for (s, hk) in gone {
            self.delete(Cf::Meta, garbage_key(s, &hk));
            self.delete(Cf::Meta, hk);
        }
        let r = self.revisions()?;
        self.revisions = Some(Revisions {
            compacted: rev,
            ..r
        });
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
