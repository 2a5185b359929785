//! The in-memory summary of the stored log: its bounds, the term of every
//! entry (as runs of equal terms), the membership entries and the metadata.
//! It makes `first_index`, `last_index` and `term` cheap, and lets the writer
//! validate a write completely before any byte of it reaches RocksDB.

use std::collections::BTreeMap;

use raft_core::{Entry, EntryPayload, HardState, Index, LogId, Membership, SnapshotMeta, Term};

/// Summary of what is durably stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cache {
    /// The last entry of the purged prefix ((0, 0) when nothing was purged).
    pub(crate) purged: LogId,
    /// The last entry of the log; equal to `purged` when the log is empty.
    pub(crate) last: LogId,
    /// `(first index, term)` of each run of entries with the same term.
    pub(crate) runs: Vec<(Index, Term)>,
    /// The membership entries in the log.
    pub(crate) memberships: BTreeMap<Index, Membership>,
    pub(crate) hard_state: HardState,
    pub(crate) snapshot: Option<SnapshotMeta>,
}

impl Cache {
    pub(crate) fn first_index(&self) -> Index {
        self.purged.index + 1
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.last.index == self.purged.index
    }

    /// The term of the entry at `index` (or of the purged prefix's last).
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.purged.index {
            return Some(self.purged.term);
        }
        if index < self.purged.index || index > self.last.index {
            return None;
        }
        let pos = self.runs.partition_point(|(start, _)| *start <= index);
        pos.checked_sub(1).map(|p| self.runs[p].1)
    }

    /// Adds an entry at the end (the caller checked it is `last + 1`).
    pub(crate) fn push(&mut self, e: &Entry) {
        if self.runs.last().is_none_or(|(_, t)| *t != e.term) {
            self.runs.push((e.index, e.term));
        }
        if let EntryPayload::Membership(m) = &e.payload {
            self.memberships.insert(e.index, (**m).clone());
        }
        self.last = e.log_id();
    }

    /// Drops entries at or above `from` (the caller checked `from > purged`).
    pub(crate) fn cut(&mut self, from: Index) {
        if from > self.last.index {
            return;
        }
        let prev = from - 1;
        let prev_term = self.term(prev).unwrap_or(self.purged.term);
        self.runs.retain(|(start, _)| *start < from);
        self.memberships.retain(|i, _| *i < from);
        self.last = LogId::new(prev_term, prev);
    }

    /// Drops entries at or below `up_to`.
    pub(crate) fn purge(&mut self, up_to: Index) {
        if up_to <= self.purged.index {
            return;
        }
        let term = match self.term(up_to) {
            Some(t) => t,
            None => match &self.snapshot {
                Some(s) if s.last_log_id.index == up_to => s.last_log_id.term,
                _ => self.last.term,
            },
        };
        let new_first = up_to + 1;
        // Keep the run that covers new_first, starting at new_first.
        let covering = self.term(new_first);
        self.runs.retain(|(start, _)| *start > new_first);
        if let Some(t) = covering {
            self.runs.insert(0, (new_first, t));
        }
        self.memberships.retain(|i, _| *i > up_to);
        self.purged = LogId::new(term, up_to);
        if self.last.index <= up_to {
            self.last = self.purged;
            self.runs.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(term: Term, index: Index) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn terms_follow_runs_through_cut_and_purge() {
        let mut c = Cache::default();
        for (t, i) in [(1, 1), (1, 2), (2, 3), (2, 4), (3, 5)] {
            c.push(&e(t, i));
        }
        assert_eq!(
            (c.term(0), c.term(2), c.term(4), c.term(5), c.term(6)),
            (Some(0), Some(1), Some(2), Some(3), None)
        );
        c.cut(4);
        assert_eq!(c.last, LogId::new(2, 3));
        assert_eq!(c.term(4), None);
        c.purge(2);
        assert_eq!(c.purged, LogId::new(1, 2));
        assert_eq!((c.term(1), c.term(2), c.term(3)), (None, Some(1), Some(2)));
        c.purge(10);
        assert!(c.is_empty());
        assert_eq!(c.first_index(), 11);
    }
}
