//! Key arithmetic shared by the key-value reads, the etcd gRPC API and the
//! watches: the end of a prefix's range (etcd's `GetPrefixRangeEnd`) and
//! the smallest key after a key, where a scan resumes.
//!
//! Keys are compared as raw bytes, so the key right after `k` is `k`
//! followed by a zero byte, and every key starting with `p` lies below `p`
//! with its last byte under `0xFF` raised by one (the bytes after it
//! dropped).

/// The first key after every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): its last byte below `0xFF` plus one, the bytes
/// after it dropped; `None` when there is none (an empty prefix, or every
/// byte `0xFF`): the range then runs to the end of the key space.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b < 0xFF)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// The smallest key greater than `key`: `key` followed by a zero byte.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// Where a scan of the keys starting with `prefix` resumes after the key
/// `after` (the last one a previous page returned): the smallest key
/// greater than `after`, or `prefix` itself when there is no `after` or
/// it sorts below the prefix.
pub(crate) fn scan_start(prefix: &[u8], after: Option<&[u8]>) -> Vec<u8> {
    match after {
        Some(a) if a >= prefix => successor(a),
        _ => prefix.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_below_0xff_plus_one() {
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\0"), Some(b"a\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xfe"), Some(b"a\xff".to_vec()));
        // Trailing 0xFF bytes are dropped, the byte before them raised.
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(
            prefix_end(b"\x01\xff\x02\xff"),
            Some(b"\x01\xff\x03".to_vec())
        );
    }

    #[test]
    fn a_prefix_of_only_0xff_bytes_or_none_has_no_end() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b"\xff\xff\xff"), None);
    }

    #[test]
    fn every_key_with_the_prefix_lies_below_its_end_and_no_other_between() {
        let keys: [&[u8]; 9] = [
            b"",
            b"a",
            b"a\0",
            b"a\xff",
            b"a\xff\xff",
            b"ab",
            b"b",
            b"b\0",
            b"\xff",
        ];
        for prefix in [&b"a"[..], b"a\xff", b"a\0", b"b"] {
            let end = prefix_end(prefix).unwrap();
            for k in keys {
                let in_range = k >= prefix && k < &end[..];
                assert_eq!(in_range, k.starts_with(prefix), "{prefix:?} {k:?}");
            }
        }
    }

    #[test]
    fn the_successor_of_a_key_is_the_next_key_in_byte_order() {
        assert_eq!(successor(b""), b"\0");
        assert_eq!(successor(b"a"), b"a\0");
        assert_eq!(successor(b"a\xff"), b"a\xff\0");
        let next = successor(b"a");
        assert!(b"a".to_vec() < next && next < b"a\0\0".to_vec() && next < b"a\x01".to_vec());
    }

    #[test]
    fn a_scan_resumes_after_the_last_key_or_starts_at_the_prefix() {
        assert_eq!(scan_start(b"p/", None), b"p/");
        assert_eq!(scan_start(b"p/", Some(b"p/x")), b"p/x\0");
        assert_eq!(scan_start(b"p/", Some(b"p/")), b"p/\0");
        // A cursor below the prefix does not move the start before it.
        assert_eq!(scan_start(b"p/", Some(b"a")), b"p/");
        assert_eq!(scan_start(b"", Some(b"a")), b"a\0");
    }
}
