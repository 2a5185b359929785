//! The log entry of a transaction: strict and versioned, as every command
//! of the log.
//!
//! ```text
//! entry   = TXN_TAG:u8 | version:u8 (1) | max_range_keys:u32 | max_read_bytes:u64 | txn
//!         | TXN_TAG:u8 | version:u8 (2) | max_range_keys:u32 | max_read_bytes:u64
//!           | max_keys_per_lease:u32 | txn     (version 2: some put has a lease)
//!         | TXN_TAG:u8 | version:u8 (3) | max_range_keys:u32 | max_read_bytes:u64
//!           | max_keys_per_lease:u32 | txn     (version 3: a lease compare, or a
//!                                              put with ignore_value or ignore_lease)
//! txn     = n:u32 compare*n | n:u32 op*n (success) | n:u32 op*n (failure)
//! compare = result:u8 | target:u8 | operand | key:bytes | range_end:bytes
//!           (operand: i64, or bytes for a value; target 4, the lease, only
//!           in version 3)
//! op      = 1 | key:bytes | range_end:bytes | limit:u64 | flags:u8   (range: 1 keys_only, 2 count_only)
//!         | 2 | key:bytes | value:bytes | flags:u8 [| lease:u64]     (put: 1 prev_kv, 2 lease follows,
//!                                                                   version 3 also: 4 ignore_value,
//!                                                                   8 ignore_lease)
//!         | 3 | key:bytes | range_end:bytes | flags:u8               (delete: 1 prev_kv)
//!         | 4 | txn                                                  (nested, at most MAX_DEPTH deep)
//! bytes   = len:u32 | len bytes;  integers big-endian
//! ```
//!
//! Each transaction has one encoding: the lowest version that can hold
//! it. Versions 1 and 2 are read exactly as before version 3 existed,
//! except that a lease compare in one (which no release ever proposed: it
//! was refused before the log) is now refused as malformed rather than
//! when applied; either way nothing changes.
//!
//! Decoding refuses unknown versions, tags and flag bits, truncation and
//! trailing bytes, and allocates for the items that arrive, never for the
//! counts an entry declares.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::validate::MAX_DEPTH;
use super::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use crate::command::DecodeError;

/// First byte of an entry that holds a transaction.
pub const TXN_TAG: u8 = 0x82;
/// Format version of a transaction entry without leases.
const TXN_VERSION: u8 = 1;
/// Format version of a transaction entry with a put attaching a lease.
const TXN_VERSION_LEASED: u8 = 2;
/// Format version of a transaction entry with a lease compare or a put
/// that keeps the key's value or lease (`ignore_value`, `ignore_lease`).
const TXN_VERSION_KEEPING: u8 = 3;

/// A transaction as the log carries it: the request and the apply-time
/// limits of the node that proposed it (so every replica applies the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnCommand {
    /// Most keys a range may cover.
    pub max_range_keys: u32,
    /// Most bytes of keys and values in the responses.
    pub max_read_bytes: u64,
    /// Most keys attached to one lease (only encoded in versions 2 and 3;
    /// 0 after decoding a version 1 entry).
    pub max_keys_per_lease: u32,
    /// The transaction.
    pub request: TxnRequest,
}

impl TxnCommand {
    /// The entry payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        let version = version_of(&self.request);
        out.put_u8(TXN_TAG);
        out.put_u8(version);
        out.put_u32(self.max_range_keys);
        out.put_u64(self.max_read_bytes);
        if version != TXN_VERSION {
            out.put_u32(self.max_keys_per_lease);
        }
        put_txn(&mut out, &self.request);
        out.freeze()
    }

    /// Decodes an entry payload.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming what is wrong.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        if get_u8(&mut buf, "txn tag")? != TXN_TAG {
            return Err(DecodeError("txn tag"));
        }
        let version = get_u8(&mut buf, "txn version")?;
        if !matches!(
            version,
            TXN_VERSION | TXN_VERSION_LEASED | TXN_VERSION_KEEPING
        ) {
            return Err(DecodeError("unknown txn version"));
        }
        let max_range_keys = get_u32(&mut buf, "max range keys")?;
        let max_read_bytes = get_u64(&mut buf, "max read bytes")?;
        let max_keys_per_lease = if version == TXN_VERSION {
            0
        } else {
            get_u32(&mut buf, "max keys per lease")?
        };
        let request = get_txn(&mut buf, version, 0)?;
        if buf.has_remaining() {
            return Err(DecodeError("trailing bytes"));
        }
        // Each transaction has one encoding: the lowest version that holds
        // it.
        if version_of(&request) != version {
            return Err(DecodeError("txn version does not match its content"));
        }
        Ok(Self {
            max_range_keys,
            max_read_bytes,
            max_keys_per_lease,
            request,
        })
    }
}

/// The version an entry holding `t` is encoded in: the lowest that can
/// hold it.
fn version_of(t: &TxnRequest) -> u8 {
    if keeps(t) {
        TXN_VERSION_KEEPING
    } else if has_lease(t) {
        TXN_VERSION_LEASED
    } else {
        TXN_VERSION
    }
}

/// Whether a put of `t` (nested ones too) attaches a lease.
fn has_lease(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        RequestOp::Put(p) => p.lease != 0,
        RequestOp::Txn(t) => has_lease(t),
        _ => false,
    })
}

/// Whether `t` (nested ones too) needs version 3: a lease compare, or a
/// put keeping the key's value or lease.
fn keeps(t: &TxnRequest) -> bool {
    t.compare
        .iter()
        .any(|c| matches!(c.target, CompareTarget::Lease(_)))
        || t.success.iter().chain(&t.failure).any(|op| match op {
            RequestOp::Put(p) => p.ignore_value || p.ignore_lease,
            RequestOp::Txn(t) => keeps(t),
            _ => false,
        })
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).expect("fields are bounded by the request limits"));
    out.put_slice(b);
}

fn put_count(out: &mut BytesMut, n: usize) {
    out.put_u32(u32::try_from(n).expect("counts are bounded by --max-txn-ops"));
}

fn put_txn(out: &mut BytesMut, t: &TxnRequest) {
    put_count(out, t.compare.len());
    for c in &t.compare {
        put_compare(out, c);
    }
    for ops in [&t.success, &t.failure] {
        put_count(out, ops.len());
        for op in ops {
            put_op(out, op);
        }
    }
}

fn put_compare(out: &mut BytesMut, c: &Compare) {
    out.put_u8(match c.result {
        CompareResult::Equal => 0,
        CompareResult::Greater => 1,
        CompareResult::Less => 2,
        CompareResult::NotEqual => 3,
    });
    match &c.target {
        CompareTarget::Version(n) => {
            out.put_u8(0);
            out.put_i64(*n);
        }
        CompareTarget::CreateRevision(n) => {
            out.put_u8(1);
            out.put_i64(*n);
        }
        CompareTarget::ModRevision(n) => {
            out.put_u8(2);
            out.put_i64(*n);
        }
        CompareTarget::Value(v) => {
            out.put_u8(3);
            put_bytes(out, v);
        }
        CompareTarget::Lease(n) => {
            out.put_u8(4);
            out.put_i64(*n);
        }
    }
    put_bytes(out, &c.key);
    put_bytes(out, &c.range_end);
}

fn put_op(out: &mut BytesMut, op: &RequestOp) {
    match op {
        RequestOp::Range(r) => {
            out.put_u8(1);
            put_bytes(out, &r.key);
            put_bytes(out, &r.range_end);
            out.put_u64(r.limit);
            out.put_u8(u8::from(r.keys_only) | (u8::from(r.count_only) << 1));
        }
        RequestOp::Put(p) => {
            out.put_u8(2);
            put_bytes(out, &p.key);
            put_bytes(out, &p.value);
            out.put_u8(
                u8::from(p.prev_kv)
                    | (u8::from(p.lease != 0) << 1)
                    | (u8::from(p.ignore_value) << 2)
                    | (u8::from(p.ignore_lease) << 3),
            );
            if p.lease != 0 {
                out.put_u64(p.lease);
            }
        }
        RequestOp::DeleteRange(d) => {
            out.put_u8(3);
            put_bytes(out, &d.key);
            put_bytes(out, &d.range_end);
            out.put_u8(u8::from(d.prev_kv));
        }
        RequestOp::Txn(t) => {
            out.put_u8(4);
            put_txn(out, t);
        }
    }
}

fn get_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError(what));
    }
    Ok(buf.get_u8())
}

fn get_u32(buf: &mut Bytes, what: &'static str) -> Result<u32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError(what));
    }
    Ok(buf.get_u32())
}

fn get_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, DecodeError> {
    if buf.remaining() < 8 {
        return Err(DecodeError(what));
    }
    Ok(buf.get_u64())
}

fn get_i64(buf: &mut Bytes, what: &'static str) -> Result<i64, DecodeError> {
    if buf.remaining() < 8 {
        return Err(DecodeError(what));
    }
    Ok(buf.get_i64())
}

fn get_bytes(buf: &mut Bytes, what: &'static str) -> Result<Bytes, DecodeError> {
    let n = get_u32(buf, what)? as usize;
    if buf.remaining() < n {
        return Err(DecodeError(what));
    }
    Ok(buf.split_to(n))
}

/// A flags byte with no bit beyond `known`.
fn get_flags(buf: &mut Bytes, known: u8, what: &'static str) -> Result<u8, DecodeError> {
    let f = get_u8(buf, what)?;
    if f & !known != 0 {
        return Err(DecodeError(what));
    }
    Ok(f)
}

/// Items a list reserves room for before they arrive: the list grows
/// with the items actually decoded, never with the count declared (an
/// item takes ten bytes or more of the entry but a hundred in memory).
const LIST_RESERVE: usize = 16;

/// A list of `n` items, each at least one byte.
fn get_list<T>(
    buf: &mut Bytes,
    what: &'static str,
    mut item: impl FnMut(&mut Bytes) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let n = get_u32(buf, what)? as usize;
    if n > buf.remaining() {
        return Err(DecodeError(what));
    }
    let mut out = Vec::with_capacity(n.min(LIST_RESERVE));
    for _ in 0..n {
        out.push(item(buf)?);
    }
    Ok(out)
}

fn get_txn(buf: &mut Bytes, version: u8, depth: usize) -> Result<TxnRequest, DecodeError> {
    if depth >= MAX_DEPTH {
        return Err(DecodeError("transactions nested too deep"));
    }
    let compare = get_list(buf, "compares", |b| get_compare(b, version))?;
    let success = get_list(buf, "success ops", |b| get_op(b, version, depth))?;
    let failure = get_list(buf, "failure ops", |b| get_op(b, version, depth))?;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

fn get_compare(buf: &mut Bytes, version: u8) -> Result<Compare, DecodeError> {
    let result = match get_u8(buf, "compare result")? {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        _ => return Err(DecodeError("compare result")),
    };
    let target = match get_u8(buf, "compare target")? {
        0 => CompareTarget::Version(get_i64(buf, "version")?),
        1 => CompareTarget::CreateRevision(get_i64(buf, "create revision")?),
        2 => CompareTarget::ModRevision(get_i64(buf, "mod revision")?),
        3 => CompareTarget::Value(get_bytes(buf, "compared value")?),
        4 if version >= TXN_VERSION_KEEPING => CompareTarget::Lease(get_i64(buf, "lease")?),
        _ => return Err(DecodeError("compare target")),
    };
    Ok(Compare {
        key: get_bytes(buf, "compare key")?,
        range_end: get_bytes(buf, "compare range end")?,
        target,
        result,
    })
}

fn get_op(buf: &mut Bytes, version: u8, depth: usize) -> Result<RequestOp, DecodeError> {
    Ok(match get_u8(buf, "op")? {
        1 => {
            let key = get_bytes(buf, "range key")?;
            let range_end = get_bytes(buf, "range end")?;
            let limit = get_u64(buf, "range limit")?;
            let f = get_flags(buf, 0b11, "range flags")?;
            RequestOp::Range(RangeRequest {
                key,
                range_end,
                limit,
                keys_only: f & 1 != 0,
                count_only: f & 2 != 0,
            })
        }
        2 => {
            let key = get_bytes(buf, "put key")?;
            let value = get_bytes(buf, "put value")?;
            let known = if version >= TXN_VERSION_KEEPING {
                0b1111
            } else {
                0b11
            };
            let f = get_flags(buf, known, "put flags")?;
            let lease = if f & 2 != 0 {
                let l = get_u64(buf, "put lease")?;
                if l == 0 || l > crate::lease::MAX_LEASE_ID {
                    return Err(DecodeError("put lease"));
                }
                l
            } else {
                0
            };
            RequestOp::Put(PutRequest {
                key,
                value,
                prev_kv: f & 1 != 0,
                lease,
                ignore_value: f & 4 != 0,
                ignore_lease: f & 8 != 0,
            })
        }
        3 => RequestOp::DeleteRange(DeleteRangeRequest {
            key: get_bytes(buf, "delete key")?,
            range_end: get_bytes(buf, "delete range end")?,
            prev_kv: get_flags(buf, 1, "delete flags")? != 0,
        }),
        4 => RequestOp::Txn(get_txn(buf, version, depth + 1)?),
        _ => return Err(DecodeError("op")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn sample() -> TxnCommand {
        TxnCommand {
            max_range_keys: 10,
            max_read_bytes: 4096,
            max_keys_per_lease: 0,
            request: TxnRequest {
                compare: vec![Compare {
                    key: b("k"),
                    range_end: Bytes::new(),
                    target: CompareTarget::Version(1),
                    result: CompareResult::Equal,
                }],
                success: vec![
                    RequestOp::Put(PutRequest {
                        key: b("k"),
                        value: b("v"),
                        prev_kv: true,
                        ..PutRequest::default()
                    }),
                    RequestOp::Txn(TxnRequest {
                        compare: vec![],
                        success: vec![RequestOp::Range(RangeRequest {
                            key: b("a"),
                            range_end: b("b"),
                            limit: 2,
                            keys_only: false,
                            count_only: true,
                        })],
                        failure: vec![],
                    }),
                ],
                failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b("p"),
                    range_end: Bytes::from_static(b"\0"),
                    prev_kv: false,
                })],
            },
        }
    }

    /// The bytes of a transaction entry are pinned: a change of the
    /// layout must come with a new version.
    #[test]
    fn the_txn_entry_layout_is_pinned() {
        let golden: &[u8] = b"\x82\x01\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x10\x00\
            \x00\x00\x00\x01\
            \x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01k\x00\x00\x00\x00\
            \x00\x00\x00\x02\
            \x02\x00\x00\x00\x01k\x00\x00\x00\x01v\x01\
            \x04\x00\x00\x00\x00\x00\x00\x00\x01\
            \x01\x00\x00\x00\x01a\x00\x00\x00\x01b\x00\x00\x00\x00\x00\x00\x00\x02\x02\
            \x00\x00\x00\x00\
            \x00\x00\x00\x01\
            \x03\x00\x00\x00\x01p\x00\x00\x00\x01\x00\x00";
        assert_eq!(sample().encode().as_ref(), golden);
        assert_eq!(
            TxnCommand::decode(Bytes::from_static(golden)).unwrap(),
            sample()
        );
    }

    #[test]
    fn truncated_extended_or_unknown_entries_are_refused() {
        let enc = sample().encode();
        for cut in 0..enc.len() {
            assert!(
                TxnCommand::decode(enc.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = enc.to_vec();
        longer.push(0);
        assert!(TxnCommand::decode(longer.into()).is_err());
        for version in [2, 3] {
            let mut other = enc.to_vec();
            other[1] = version;
            assert!(TxnCommand::decode(other.into()).is_err());
        }
        // A flag bit nobody defined.
        let mut flags = enc.to_vec();
        let put_flags = enc.iter().position(|&x| x == b'v').unwrap() + 1;
        flags[put_flags] = 0b10;
        assert!(TxnCommand::decode(flags.into()).is_err());
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        let mut t = TxnRequest::default();
        for _ in 0..MAX_DEPTH {
            t = TxnRequest {
                success: vec![RequestOp::Txn(t)],
                ..TxnRequest::default()
            };
        }
        let cmd = TxnCommand {
            max_range_keys: 1,
            max_read_bytes: 1,
            max_keys_per_lease: 0,
            request: t,
        };
        assert!(TxnCommand::decode(cmd.encode()).is_err());
    }

    /// A put with a lease makes a version 2 entry, pinned too.
    #[test]
    fn a_leased_put_makes_a_pinned_version_2_entry() {
        let cmd = TxnCommand {
            max_range_keys: 10,
            max_read_bytes: 4096,
            max_keys_per_lease: 7,
            request: TxnRequest {
                success: vec![RequestOp::Put(PutRequest {
                    key: b("k"),
                    value: b("v"),
                    lease: 5,
                    ..PutRequest::default()
                })],
                ..TxnRequest::default()
            },
        };
        let golden: &[u8] = b"\x82\x02\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x10\x00\
            \x00\x00\x00\x07\
            \x00\x00\x00\x00\
            \x00\x00\x00\x01\
            \x02\x00\x00\x00\x01k\x00\x00\x00\x01v\x02\x00\x00\x00\x00\x00\x00\x00\x05\
            \x00\x00\x00\x00";
        assert_eq!(cmd.encode().as_ref(), golden);
        assert_eq!(TxnCommand::decode(Bytes::from_static(golden)).unwrap(), cmd);
        // The same put in a version 1 entry is refused.
        let mut v1 = golden.to_vec();
        v1[1] = 1;
        v1.drain(14..18);
        assert!(TxnCommand::decode(v1.into()).is_err());
    }

    /// A lease compare, or a put keeping the key's value or lease, makes a
    /// version 3 entry, pinned too; versions 1 and 2 cannot hold them.
    #[test]
    fn lease_compares_and_kept_values_or_leases_make_a_pinned_version_3_entry() {
        let cmd = TxnCommand {
            max_range_keys: 10,
            max_read_bytes: 4096,
            max_keys_per_lease: 7,
            request: TxnRequest {
                compare: vec![Compare {
                    key: b("k"),
                    range_end: Bytes::new(),
                    target: CompareTarget::Lease(9),
                    result: CompareResult::Greater,
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: b("k"),
                    value: Bytes::new(),
                    prev_kv: true,
                    lease: 0,
                    ignore_value: true,
                    ignore_lease: true,
                })],
                failure: vec![RequestOp::Put(PutRequest {
                    key: b("k"),
                    value: b("v"),
                    lease: 5,
                    ignore_value: false,
                    ignore_lease: false,
                    prev_kv: false,
                })],
            },
        };
        let golden: &[u8] = b"\x82\x03\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x10\x00\
            \x00\x00\x00\x07\
            \x00\x00\x00\x01\
            \x01\x04\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x01k\x00\x00\x00\x00\
            \x00\x00\x00\x01\
            \x02\x00\x00\x00\x01k\x00\x00\x00\x00\x0d\
            \x00\x00\x00\x01\
            \x02\x00\x00\x00\x01k\x00\x00\x00\x01v\x02\x00\x00\x00\x00\x00\x00\x00\x05";
        assert_eq!(cmd.encode().as_ref(), golden);
        assert_eq!(TxnCommand::decode(Bytes::from_static(golden)).unwrap(), cmd);
        // The same content as version 2 (which has the same header) is
        // refused: its lease compare and put flags 4 and 8 are unknown there.
        let mut v2 = golden.to_vec();
        v2[1] = 2;
        assert!(TxnCommand::decode(v2.into()).is_err());
        // Each part alone needs version 3 too.
        for (i, part) in [
            TxnRequest {
                compare: cmd.request.compare.clone(),
                ..TxnRequest::default()
            },
            TxnRequest {
                success: cmd.request.success.clone(),
                ..TxnRequest::default()
            },
        ]
        .into_iter()
        .enumerate()
        {
            let one = TxnCommand {
                request: part,
                ..cmd.clone()
            };
            let enc = one.encode();
            assert_eq!(enc[1], 3, "part {i}");
            assert_eq!(TxnCommand::decode(enc.clone()).unwrap(), one, "part {i}");
            let mut older = enc.to_vec();
            older[1] = 2;
            assert!(TxnCommand::decode(older.into()).is_err(), "part {i}");
        }
        // A version 3 entry of what version 1 or 2 holds is refused (one
        // encoding per transaction).
        for lower in [sample(), {
            let mut leased = sample();
            leased.max_keys_per_lease = 7;
            leased.request.failure = cmd.request.failure.clone();
            leased
        }] {
            let enc = lower.encode();
            let mut v3 = enc.to_vec();
            if v3[1] == 1 {
                v3.splice(14..14, [0, 0, 0, 7]);
            }
            v3[1] = 3;
            assert!(TxnCommand::decode(v3.into()).is_err());
        }
    }

    /// A version 1 entry with a lease compare (target 4) never came from
    /// a proposer: it is refused as malformed.
    #[test]
    fn a_lease_compare_in_a_version_1_entry_is_refused() {
        let mut raw = sample().encode().to_vec();
        // The first compare's target byte follows its result byte.
        assert_eq!(raw[18..20], [0, 0]);
        raw[19] = 4;
        assert!(TxnCommand::decode(raw.into()).is_err());
    }

    proptest! {
        /// Decoding random bytes (also behind a valid header) never panics
        /// nor allocates past its input; what decodes re-encodes the same.
        #[test]
        fn decoding_random_bytes_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            for head in [
                &b""[..],
                &b"\x82\x01\0\0\0\x01\0\0\0\0\0\0\0\x01"[..],
                &b"\x82\x03\0\0\0\x01\0\0\0\0\0\0\0\x01\0\0\0\x01"[..],
            ] {
                let mut raw = head.to_vec();
                raw.extend_from_slice(&tail);
                if let Ok(cmd) = TxnCommand::decode(raw.clone().into()) {
                    let again = cmd.encode();
                    prop_assert_eq!(again.as_ref(), &raw[..]);
                }
            }
        }
    }
}
