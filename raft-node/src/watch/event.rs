//! The changes a watch reports: [`Event`]s, with the key's record after
//! (and optionally before) the change.

use bytes::Bytes;

use crate::keys::prefix_end;
use crate::store::Versioned;

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was set (created or overwritten).
    Put,
    /// The key was deleted.
    Delete,
}

/// A key's record as an event shows it (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The revision that created the key (0 in a delete event).
    pub create_revision: u64,
    /// The revision of the change (for a delete, the delete's revision).
    pub mod_revision: u64,
    /// The key's version: 1 when created, one more per write; 0 in a
    /// delete event.
    pub version: u64,
    /// The value (empty in a delete event).
    pub value: Bytes,
    /// The lease the key was attached to (0: none, and in a delete event).
    pub lease: u64,
}

impl KeyValue {
    /// The record `v` of `key`.
    pub fn of(key: &Bytes, v: &Versioned) -> Self {
        Self {
            key: key.clone(),
            create_revision: v.create_rev,
            mod_revision: v.rev,
            version: v.version,
            value: v.value.clone(),
            lease: v.lease,
        }
    }
}

/// One key change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The revision of the change. Several changes can share one revision
    /// (one log entry changing several keys).
    pub revision: u64,
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: the key and the delete's
    /// revision as `mod_revision`, like etcd).
    pub kv: KeyValue,
    /// The key before the change, when it existed. The store always fills
    /// it; a watch without `prev_kv` leaves it out.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// `key` set to `new` over `old`.
    pub fn put(key: &Bytes, new: &Versioned, old: Option<&Versioned>) -> Self {
        Self {
            revision: new.rev,
            kind: EventKind::Put,
            kv: KeyValue::of(key, new),
            prev_kv: old.map(|o| KeyValue::of(key, o)),
        }
    }

    /// `key` deleted at `revision`, over `old`.
    pub fn delete(key: &Bytes, revision: u64, old: Option<&Versioned>) -> Self {
        Self {
            revision,
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.clone(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                value: Bytes::new(),
                lease: 0,
            },
            prev_kv: old.map(|o| KeyValue::of(key, o)),
        }
    }
}

/// The keys a watch covers, with etcd's conventions for `range_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The first key.
    pub start: Bytes,
    /// Where the range ends.
    pub end: RangeEnd,
}

/// The end of a [`KeyRange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEnd {
    /// Only the start key (etcd: empty `range_end`).
    Single,
    /// Every key from the start on (etcd: `range_end` = `"\0"`).
    Unbounded,
    /// The keys below this one (exclusive).
    Before(Bytes),
}

impl KeyRange {
    /// The range etcd means by `key` and `range_end`: empty `range_end` is
    /// the key alone, `"\0"` every key from `key` on, anything else
    /// `[key, range_end)`. `None` when `range_end` is not above `key`.
    pub fn etcd(key: Bytes, range_end: Bytes) -> Option<Self> {
        let end = match &range_end[..] {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            e if e > &key[..] => RangeEnd::Before(range_end.clone()),
            _ => return None,
        };
        Some(Self { start: key, end })
    }

    /// Every key starting with `prefix` (the whole store for an empty one).
    pub fn prefix(prefix: Bytes) -> Self {
        let end = match prefix_end(&prefix) {
            Some(e) => RangeEnd::Before(Bytes::from(e)),
            None => RangeEnd::Unbounded,
        };
        Self { start: prefix, end }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == &self.start[..],
            RangeEnd::Unbounded => key >= &self.start[..],
            RangeEnd::Before(e) => key >= &self.start[..] && key < &e[..],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcds_conventions() {
        let b = |s: &'static [u8]| Bytes::from_static(s);
        let one = KeyRange::etcd(b(b"a"), b(b"")).unwrap();
        assert!(one.contains(b"a") && !one.contains(b"ab"));
        let all = KeyRange::etcd(b(b"b"), b(b"\0")).unwrap();
        assert!(all.contains(b"b") && all.contains(b"zz") && !all.contains(b"a"));
        let half = KeyRange::etcd(b(b"a"), b(b"c")).unwrap();
        assert!(half.contains(b"a") && half.contains(b"bz") && !half.contains(b"c"));
        assert_eq!(KeyRange::etcd(b(b"c"), b(b"a")), None);
        assert_eq!(KeyRange::etcd(b(b"c"), b(b"c")), None);
        let p = KeyRange::prefix(b(b"a\xff"));
        assert!(p.contains(b"a\xff\xff") && !p.contains(b"b"));
        assert_eq!(p.end, RangeEnd::Before(b(b"b")));
        assert_eq!(KeyRange::prefix(b(b"")).end, RangeEnd::Unbounded);
    }
}
