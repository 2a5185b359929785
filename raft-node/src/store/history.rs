//! The revision history's layout, pure: the keys and records of past
//! values in `kv_meta`, and the order in which compaction forgets them.
//!
//! - `h/<escaped key><rev:u64>` → a past version of `key` whose
//!   `mod_revision` is `rev`, or a tombstone when `rev` is the revision of
//!   the delete: `version:u8 | crc32c:u32 | kind:u8 | create_rev:u64 |
//!   version:u64 | value` (record version 1), or for a version written
//!   with a lease `2 | crc32c | kind | create_rev | version | lease:u64 |
//!   value` (record version 2; versions without a lease are still written
//!   as 1, byte for byte as before leases). The CRC covers the history key
//!   and every byte after itself, so a record that is damaged, or moved
//!   under another key or revision, is refused.
//! - `g/<superseded:u64><escaped key><rev:u64>` → empty: the revision from
//!   which the history record is no longer needed (the revision of the
//!   write that replaced or deleted it; a tombstone's own revision).
//!   Compacting to `C` deletes every record whose `superseded <= C`, in
//!   this order, visiting nothing else.
//! - `revision` → u64, the store's current revision; `compacted` → u64,
//!   the revision history is kept from.
//!
//! Keys are escaped so that history keys sort like the user keys they
//! hold (byte `0x00` becomes `0x00 0xFF`, and `0x00 0x01` ends the key):
//! the history of every key with a prefix is one contiguous range.

use bytes::Bytes;

use super::{StoreError, Versioned};

/// Prefix of the history records.
pub(super) const HISTORY_PREFIX: &[u8] = b"h/";
/// Prefix of the compaction order keys.
pub(super) const GARBAGE_PREFIX: &[u8] = b"g/";
/// The store's current revision, u64 (replicated).
pub(super) const REVISION_KEY: &[u8] = b"revision";
/// The compacted revision, u64 (replicated).
pub(super) const COMPACTED_KEY: &[u8] = b"compacted";

const HISTORY_RECORD_VERSION: u8 = 1;
/// A record that names the version's lease.
const HISTORY_RECORD_VERSION_LEASED: u8 = 2;
const KIND_VALUE: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
/// End of an escaped key.
const TERMINATOR: [u8; 2] = [0x00, 0x01];

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// The start of the history of every key starting with `prefix`.
pub(super) fn history_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut k = HISTORY_PREFIX.to_vec();
    escape_into(&mut k, prefix);
    k
}

/// The start of the history of exactly `key` (all its revisions).
pub(super) fn history_of(key: &[u8]) -> Vec<u8> {
    let mut k = history_prefix(key);
    k.extend_from_slice(&TERMINATOR);
    k
}

/// The first history key after every revision of exactly `key` (the
/// history of the next key, if any): escaped keys never hold `0x00 0x02`.
pub(super) fn history_after(key: &[u8]) -> Vec<u8> {
    let mut k = history_prefix(key);
    k.extend_from_slice(&[0x00, 0x02]);
    k
}

/// The history key of `key` at `rev`.
pub(super) fn history_key(key: &[u8], rev: u64) -> Vec<u8> {
    let mut k = history_of(key);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

fn corrupt(key: &[u8], detail: &'static str) -> StoreError {
    StoreError::Corruption {
        key: String::from_utf8_lossy(key).into_owned(),
        detail,
    }
}

/// The user key and revision of a history key.
pub(super) fn decode_history_key(k: &[u8]) -> Result<(Vec<u8>, u64), StoreError> {
    let bad = || corrupt(k, "history key");
    let body = k.strip_prefix(HISTORY_PREFIX).ok_or_else(bad)?;
    let mut key = Vec::with_capacity(body.len());
    let mut i = 0;
    loop {
        match (body.get(i), body.get(i + 1)) {
            (Some(0), Some(0xFF)) => {
                key.push(0);
                i += 2;
            }
            (Some(0), Some(1)) => break,
            (Some(0), _) | (None, _) => return Err(bad()),
            (Some(&b), _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    let rev = <[u8; 8]>::try_from(&body[i + 2..])
        .map(u64::from_be_bytes)
        .map_err(|_| bad())?;
    Ok((key, rev))
}

/// The compaction order key of the history record `hist_key`, no longer
/// needed from revision `superseded` on.
pub(super) fn garbage_key(superseded: u64, hist_key: &[u8]) -> Vec<u8> {
    let mut k = GARBAGE_PREFIX.to_vec();
    k.extend_from_slice(&superseded.to_be_bytes());
    k.extend_from_slice(&hist_key[HISTORY_PREFIX.len()..]);
    k
}

/// The first compaction order key of records superseded at `rev` or later.
#[cfg(test)]
pub(super) fn garbage_bound(rev: u64) -> Vec<u8> {
    garbage_key(rev, HISTORY_PREFIX)
}

/// The revision from which the record a compaction order key names is no
/// longer needed.
pub(super) fn garbage_superseded(g: &[u8]) -> Result<u64, StoreError> {
    g.strip_prefix(GARBAGE_PREFIX)
        .and_then(|r| r.get(..8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(g, "compaction order key"))
}

/// The history key a compaction order key names.
pub(super) fn history_of_garbage(g: &[u8]) -> Result<Vec<u8>, StoreError> {
    let rest = g
        .strip_prefix(GARBAGE_PREFIX)
        .and_then(|r| r.get(8..))
        .ok_or_else(|| corrupt(g, "compaction order key"))?;
    let mut k = HISTORY_PREFIX.to_vec();
    k.extend_from_slice(rest);
    Ok(k)
}

/// A history record: `past` is the version replaced (its `rev` is in the
/// key), `None` a tombstone.
pub(super) fn encode_history(hist_key: &[u8], past: Option<&Versioned>) -> Vec<u8> {
    let (kind, create, version, lease, value): (u8, u64, u64, u64, &[u8]) = match past {
        Some(v) => (KIND_VALUE, v.create_rev, v.version, v.lease, &v.value),
        None => (KIND_TOMBSTONE, 0, 0, 0, &[]),
    };
    let mut out = Vec::with_capacity(30 + value.len());
    out.push(if lease == 0 {
        HISTORY_RECORD_VERSION
    } else {
        HISTORY_RECORD_VERSION_LEASED
    });
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&create.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    if lease != 0 {
        out.extend_from_slice(&lease.to_be_bytes());
    }
    out.extend_from_slice(value);
    let crc = crc32c::crc32c_append(crc32c::crc32c(hist_key), &out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Reads a history record: the version it holds, `None` for a tombstone.
///
/// # Errors
///
/// [`StoreError::Corruption`] when the key or record fails its checks,
/// or is a record never written (version 2 of a tombstone, or naming
/// lease 0).
pub(super) fn decode_history(hist_key: &[u8], rec: &[u8]) -> Result<Option<Versioned>, StoreError> {
    let (key, rev) = decode_history_key(hist_key)?;
    let bad = |detail| corrupt(&key, detail);
    let header = match rec.first() {
        Some(&HISTORY_RECORD_VERSION) => 22,
        Some(&HISTORY_RECORD_VERSION_LEASED) => 30,
        Some(_) => return Err(bad("unknown history record version")),
        None => return Err(bad("history record too short")),
    };
    if rec.len() < header {
        return Err(bad("history record too short"));
    }
    let crc = u32::from_be_bytes([rec[1], rec[2], rec[3], rec[4]]);
    if crc32c::crc32c_append(crc32c::crc32c(hist_key), &rec[5..]) != crc {
        return Err(bad("history record checksum mismatch"));
    }
    let u64_at = |at: usize| u64::from_be_bytes(rec[at..at + 8].try_into().unwrap_or([0; 8]));
    let leased = rec[0] == HISTORY_RECORD_VERSION_LEASED;
    match rec[5] {
        // Version 2 is written only for a live version with a lease.
        KIND_TOMBSTONE if leased => Err(bad("history record version 2 of a tombstone")),
        KIND_TOMBSTONE => Ok(None),
        KIND_VALUE if leased && u64_at(22) == 0 => {
            Err(bad("history record version 2 without a lease"))
        }
        KIND_VALUE => Ok(Some(Versioned {
            value: Bytes::copy_from_slice(&rec[header..]),
            rev,
            create_rev: u64_at(6),
            version: u64_at(14),
            lease: if leased { u64_at(22) } else { 0 },
        })),
        _ => Err(bad("unknown history record kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_like_their_user_keys_and_round_trip() {
        let keys: [&[u8]; 6] = [b"", b"a", b"a\0", b"a\0\0b", b"a\x01", b"ab"];
        let mut encoded: Vec<Vec<u8>> = keys.iter().map(|k| history_key(k, 7)).collect();
        let sorted = encoded.clone();
        encoded.sort();
        assert_eq!(encoded, sorted, "escaped keys keep the user keys' order");
        for k in keys {
            assert_eq!(
                decode_history_key(&history_key(k, 9)).unwrap(),
                (k.to_vec(), 9)
            );
            assert!(history_key(k, 1).starts_with(&history_prefix(b"")));
        }
        // Every key with a prefix is in the prefix's range, others are not.
        assert!(history_key(b"a\0\0b", 1).starts_with(&history_prefix(b"a\0")));
        assert!(!history_key(b"b", 1).starts_with(&history_prefix(b"a")));
        let g = garbage_key(5, &history_key(b"x\0y", 3));
        assert_eq!(history_of_garbage(&g).unwrap(), history_key(b"x\0y", 3));
        assert!(g < garbage_bound(6) && g >= garbage_bound(5));
        // Past every revision of a key, before the next key's history.
        for w in keys.windows(2) {
            assert!(history_key(w[0], u64::MAX) < history_after(w[0]));
            assert!(history_after(w[0]) <= history_key(w[1], 0), "{w:?}");
        }
    }

    #[test]
    fn a_damaged_or_moved_history_record_is_refused() {
        let v = Versioned {
            value: Bytes::from_static(b"old"),
            rev: 4,
            create_rev: 2,
            version: 3,
            lease: 0,
        };
        let hk = history_key(b"k", 4);
        let rec = encode_history(&hk, Some(&v));
        assert_eq!(decode_history(&hk, &rec).unwrap(), Some(v));
        let mut flipped = rec.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_history(&hk, &flipped),
            Err(StoreError::Corruption { .. })
        ));
        // The same bytes under another revision are refused too.
        assert!(decode_history(&history_key(b"k", 5), &rec).is_err());
        let tomb = history_key(b"k", 6);
        assert_eq!(
            decode_history(&tomb, &encode_history(&tomb, None)).unwrap(),
            None
        );
    }

    /// A version without a lease is written as record version 1, byte for
    /// byte as before leases; one with a lease as version 2, which keeps
    /// it. A version 2 record cut short is refused, not misread.
    #[test]
    fn a_leased_version_keeps_its_lease_and_others_keep_their_bytes() {
        let hk = history_key(b"k", 4);
        let mut v = Versioned {
            value: Bytes::from_static(b"old"),
            rev: 4,
            create_rev: 2,
            version: 3,
            lease: 0,
        };
        let plain = encode_history(&hk, Some(&v));
        let mut golden = vec![1, 0, 0, 0, 0, 1];
        golden.extend_from_slice(&2u64.to_be_bytes());
        golden.extend_from_slice(&3u64.to_be_bytes());
        golden.extend_from_slice(b"old");
        assert_eq!(plain[0], 1);
        assert_eq!(&plain[5..], &golden[5..], "the layout of record version 1");
        v.lease = 0x0102_0304_0506_0708;
        let leased = encode_history(&hk, Some(&v));
        assert_eq!(leased[0], 2);
        assert_eq!(&leased[22..30], &v.lease.to_be_bytes());
        assert_eq!(&leased[30..], b"old");
        assert_eq!(decode_history(&hk, &leased).unwrap(), Some(v));
        for cut in [0, 1, 21, 29] {
            assert!(matches!(
                decode_history(&hk, &leased[..cut]),
                Err(StoreError::Corruption { .. })
            ));
        }
        let mut unknown = leased.clone();
        unknown[0] = 3;
        assert!(decode_history(&hk, &unknown).is_err());
    }

    /// `rec` with its CRC set for `hk`, as a writer would seal it.
    fn sealed(hk: &[u8], mut rec: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c_append(crc32c::crc32c(hk), &rec[5..]);
        rec[1..5].copy_from_slice(&crc.to_be_bytes());
        rec
    }

    /// Record version 2 is written only for a live version with a lease:
    /// a version 2 record naming lease 0, or a version 2 tombstone, was
    /// never written, so it is refused as corrupt (with a valid CRC too),
    /// not read as a version without a lease or as a delete.
    #[test]
    fn a_version_2_record_without_lease_or_of_a_tombstone_is_corrupt() {
        let hk = history_key(b"k", 4);
        let leased = |kind: u8, lease: u64| {
            let mut rec = vec![2, 0, 0, 0, 0, kind];
            rec.extend_from_slice(&2u64.to_be_bytes());
            rec.extend_from_slice(&3u64.to_be_bytes());
            rec.extend_from_slice(&lease.to_be_bytes());
            rec.extend_from_slice(b"old");
            sealed(&hk, rec)
        };
        // The record as the writer seals it decodes.
        assert_eq!(
            decode_history(&hk, &leased(KIND_VALUE, 9))
                .unwrap()
                .map(|v| v.lease),
            Some(9)
        );
        for (rec, detail) in [
            (
                leased(KIND_VALUE, 0),
                "history record version 2 without a lease",
            ),
            (
                leased(KIND_TOMBSTONE, 9),
                "history record version 2 of a tombstone",
            ),
            (
                leased(KIND_TOMBSTONE, 0),
                "history record version 2 of a tombstone",
            ),
        ] {
            match decode_history(&hk, &rec) {
                Err(StoreError::Corruption { key, detail: d }) => {
                    assert_eq!((key.as_str(), d), ("k", detail));
                }
                other => panic!("{rec:?} decoded as {other:?}"),
            }
        }
    }
}
