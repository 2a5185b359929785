//! The checks a transaction passes before it is proposed (and again when
//! applied, so an entry that skipped them changes nothing): counts, sizes,
//! empty keys, puts that both give and ignore a value or lease, lease ids
//! above etcd's `int64`, and etcd's rule against a key written twice.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use super::{interval, CompareTarget, RequestOp, TxnLimits, TxnRequest};

/// Deepest nesting of transactions.
pub const MAX_DEPTH: usize = 16;

/// Why a transaction is refused before anything is proposed. The messages
/// are etcd's where etcd has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnInvalid {
    /// More compares, or operations in a branch, than the limit (for a
    /// nested transaction: than the limit less its parent's largest list,
    /// as in etcd).
    #[error(
        "etcdserver: too many operations in txn request (the limit is {limit}, --max-txn-ops)"
    )]
    TooManyOps {
        /// The limit.
        limit: usize,
    },
    /// A key put twice, or put inside a range deleted, on one path.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A compare, `Range`, `Put` or `DeleteRange` with an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put with `ignore_value` that gives a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` that gives a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A put attaching a lease id above `i64::MAX`: etcd's lease ids are
    /// `int64`, so it names no lease (and a transaction entry cannot carry
    /// it). Answered as a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A key or range end over `--max-key-bytes`.
    #[error("a key of {len} bytes is over the limit of {limit} (--max-key-bytes)")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A value over `--max-value-bytes`.
    #[error("a value of {len} bytes is over the limit of {limit} (--max-value-bytes)")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The whole request is too large for one log entry.
    #[error("the transaction takes {len} bytes; the limit is {limit} (--max-key-bytes plus --max-value-bytes)")]
    TooLarge {
        /// Its encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Transactions nested too deep.
    #[error("transactions nested more than {MAX_DEPTH} deep")]
    TooDeep,
}

/// Checks `req` against `limits` (all but the encoded size).
///
/// # Errors
///
/// The first [`TxnInvalid`] found.
pub(crate) fn check(req: &TxnRequest, limits: &TxnLimits) -> Result<(), TxnInvalid> {
    check_shape(req, limits, limits.max_ops, 0)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_key(key: &[u8], limits: &TxnLimits) -> Result<(), TxnInvalid> {
    if key.len() > limits.max_key_bytes {
        return Err(TxnInvalid::KeyTooLong {
            len: key.len(),
            limit: limits.max_key_bytes,
        });
    }
    Ok(())
}

fn check_op_key(key: &[u8], range_end: &[u8], limits: &TxnLimits) -> Result<(), TxnInvalid> {
    if key.is_empty() {
        return Err(TxnInvalid::EmptyKey);
    }
    check_key(key, limits)?;
    check_key(range_end, limits)
}

/// Counts, sizes, keys and depth, recursively. As in etcd, a list holds at
/// most `max_ops` items, and a nested transaction's lists at most what
/// its parent's largest list leaves of that.
fn check_shape(
    req: &TxnRequest,
    limits: &TxnLimits,
    max_ops: usize,
    depth: usize,
) -> Result<(), TxnInvalid> {
    if depth >= MAX_DEPTH {
        return Err(TxnInvalid::TooDeep);
    }
    let most = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if most > max_ops {
        return Err(TxnInvalid::TooManyOps {
            limit: limits.max_ops,
        });
    }
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(TxnInvalid::EmptyKey);
        }
        check_key(&c.key, limits)?;
        check_key(&c.range_end, limits)?;
        if let CompareTarget::Value(v) = &c.target {
            if v.len() > limits.max_value_bytes {
                return Err(TxnInvalid::ValueTooLarge {
                    len: v.len(),
                    limit: limits.max_value_bytes,
                });
            }
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => check_op_key(&r.key, &r.range_end, limits)?,
            RequestOp::Put(p) => {
                check_op_key(&p.key, &[], limits)?;
                // etcd's order: the key, then the value, then the lease.
                if p.ignore_value && !p.value.is_empty() {
                    return Err(TxnInvalid::ValueProvided);
                }
                if p.ignore_lease && p.lease != 0 {
                    return Err(TxnInvalid::LeaseProvided);
                }
                if p.lease > crate::lease::MAX_LEASE_ID {
                    return Err(TxnInvalid::LeaseNotFound);
                }
                if p.value.len() > limits.max_value_bytes {
                    return Err(TxnInvalid::ValueTooLarge {
                        len: p.value.len(),
                        limit: limits.max_value_bytes,
                    });
                }
            }
            RequestOp::DeleteRange(d) => check_op_key(&d.key, &d.range_end, limits)?,
            RequestOp::Txn(t) => check_shape(t, limits, max_ops - most, depth + 1)?,
        }
    }
    Ok(())
}

/// Deleted ranges `[start, end)` (`None`: unbounded), merged into
/// disjoint ones by their start: a lookup or an insert is a logarithmic
/// search, so checking a transaction of `n` operations takes `n log n`.
#[derive(Default)]
struct Dels(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

/// The larger of two range ends (`None`: unbounded).
fn max_end(a: Option<Vec<u8>>, b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    Some(a?.max(b?))
}

impl Dels {
    /// The range starting at or before `k` (the only one that may hold it).
    fn before(&self, k: &[u8]) -> Option<(&Vec<u8>, &Option<Vec<u8>>)> {
        self.0
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(k)))
            .next_back()
    }

    fn contains(&self, k: &[u8]) -> bool {
        self.before(k)
            .is_some_and(|(_, e)| e.as_ref().is_none_or(|e| k < e.as_slice()))
    }

    /// Adds `[start, end)`, merged with the ranges it overlaps or touches.
    fn insert(&mut self, (mut start, mut end): (Vec<u8>, Option<Vec<u8>>)) {
        if end.as_ref().is_some_and(|e| *e <= start) {
            return; // empty
        }
        if let Some((s, e)) = self.before(&start) {
            if e.as_ref().is_none_or(|e| *e >= start) {
                let (s, e) = (s.clone(), e.clone());
                start = s;
                end = max_end(end, e);
            }
        }
        loop {
            let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Included);
            let next = self
                .0
                .range::<[u8], _>((Bound::Included(start.as_slice()), upper))
                .next()
                .map(|(s, e)| (s.clone(), e.clone()));
            let Some((s, e)) = next else { break };
            self.0.remove(&s);
            end = max_end(end, e);
        }
        self.0.insert(start, end);
    }

    fn extend(&mut self, other: Dels) {
        for range in other.0 {
            self.insert(range);
        }
    }
}

/// etcd's rule: on one path through the transaction, a key is put at most
/// once and never inside a range deleted. A put in the success and the
/// failure branch of the same nested transaction is fine (only one runs).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<&[u8]>, Dels), TxnInvalid> {
    let mut dels = Dels::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.insert(interval(&d.key, &d.range_end));
        }
    }
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (then_puts, then_dels) = check_intervals(&t.success)?;
        let (else_puts, else_dels) = check_intervals(&t.failure)?;
        for &k in &then_puts {
            if puts.contains(k) || dels.contains(k) {
                return Err(TxnInvalid::DuplicateKey);
            }
            puts.insert(k);
        }
        for &k in &else_puts {
            if (puts.contains(k) && !then_puts.contains(k)) || dels.contains(k) {
                return Err(TxnInvalid::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(p.key.as_ref()) || dels.contains(&p.key) {
            return Err(TxnInvalid::DuplicateKey);
        }
        puts.insert(&p.key);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::txn::{Compare, CompareResult, DeleteRangeRequest, PutRequest};

    fn put(k: &'static str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: Bytes::from_static(k.as_bytes()),
            ..PutRequest::default()
        })
    }

    fn del(k: &'static str, end: &'static str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(k.as_bytes()),
            range_end: Bytes::from_static(end.as_bytes()),
            prev_kv: false,
        })
    }

    fn ops(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        }
    }

    proptest::proptest! {
        /// Merged deleted ranges hold exactly the keys of the ranges added
        /// (against the list of ranges as a model), whatever they overlap.
        #[test]
        fn merged_deleted_ranges_hold_the_keys_of_the_ranges_added(
            ranges in proptest::collection::vec((0u8..8, 0u8..10, proptest::bool::ANY), 0..12),
        ) {
            let mut dels = Dels::default();
            let mut model = Vec::new();
            for (start, end, bounded) in ranges {
                let range = (vec![start], bounded.then(|| vec![end]));
                model.push(range.clone());
                dels.insert(range);
            }
            for k in 0u8..10 {
                for key in [vec![k], vec![k, 0]] {
                    let want = model.iter().any(|(s, e): &(Vec<u8>, Option<Vec<u8>>)| {
                        *s <= key && e.as_ref().is_none_or(|e| key < *e)
                    });
                    proptest::prop_assert_eq!(dels.contains(&key), want, "{:?}", key);
                }
            }
        }
    }

    #[test]
    fn etcds_duplicate_key_rule_on_one_path() {
        let l = TxnLimits::default();
        let dup = Err(TxnInvalid::DuplicateKey);
        assert_eq!(check(&ops(vec![put("a"), put("a")], vec![]), &l), dup);
        assert_eq!(check(&ops(vec![del("a", "c"), put("b")], vec![]), &l), dup);
        assert_eq!(check(&ops(vec![put("b"), del("a", "\0")], vec![]), &l), dup);
        // Two deletes may overlap; a put outside the range is fine; the
        // two branches are two paths.
        let fine = [
            ops(vec![del("a", "c"), del("b", "d"), put("d")], vec![]),
            ops(vec![put("a")], vec![put("a")]),
            ops(
                vec![RequestOp::Txn(ops(vec![put("a")], vec![put("a")]))],
                vec![],
            ),
        ];
        for t in fine {
            assert_eq!(check(&t, &l), Ok(()), "{t:?}");
        }
        // A nested put of a key the outer path also puts or deletes.
        let nested = |outer: RequestOp| {
            ops(
                vec![outer, RequestOp::Txn(ops(vec![], vec![put("a")]))],
                vec![],
            )
        };
        assert_eq!(check(&nested(put("a")), &l), dup);
        assert_eq!(check(&nested(del("a", "")), &l), dup);
    }

    /// As etcd: a nested transaction may hold only what its parent's
    /// limit leaves (`--max-txn-ops` minus the parent's largest list), so
    /// nesting does not multiply the limit; and a compare needs a key.
    #[test]
    fn nested_transactions_share_the_limit_and_compares_need_a_key() {
        let l = TxnLimits {
            max_ops: 4,
            ..TxnLimits::default()
        };
        let too_many = Err(TxnInvalid::TooManyOps { limit: 4 });
        let puts = |prefix: &str, n: usize| -> Vec<RequestOp> {
            (0..n)
                .map(|i| {
                    RequestOp::Put(PutRequest {
                        key: Bytes::from(format!("{prefix}{i}")),
                        ..PutRequest::default()
                    })
                })
                .collect()
        };
        // `outer` operations, the last a transaction of `inner` puts.
        let nested = |outer: usize, inner: usize| {
            let mut success = puts("o", outer - 1);
            success.push(RequestOp::Txn(ops(puts("i", inner), vec![])));
            ops(success, vec![])
        };
        assert_eq!(check(&nested(2, 2), &l), Ok(()));
        assert_eq!(check(&nested(2, 3), &l), too_many);
        assert_eq!(check(&nested(1, 3), &l), Ok(()));
        let compare = |key: &'static str| Compare {
            key: Bytes::from_static(key.as_bytes()),
            range_end: Bytes::new(),
            target: CompareTarget::Version(0),
            result: CompareResult::Equal,
        };
        let compares = TxnRequest {
            compare: vec![compare("a"); 3],
            success: vec![RequestOp::Txn(ops(vec![put("m"), put("n")], vec![]))],
            failure: vec![],
        };
        assert_eq!(check(&compares, &l), too_many);
        let empty = TxnRequest {
            compare: vec![compare("")],
            ..TxnRequest::default()
        };
        assert_eq!(check(&empty, &l), Err(TxnInvalid::EmptyKey));
    }

    /// A put's lease id above `i64::MAX` is refused before the log, as a
    /// lease that does not exist, whoever built the transaction (not only
    /// `POST /v1/txn`), at any depth; `i64::MAX` itself is an id. With
    /// `ignore_lease`, etcd's "lease is provided" comes first.
    #[test]
    fn a_lease_id_above_i64_max_is_refused_before_the_log() {
        let l = TxnLimits::default();
        let leased = |lease: u64, ignore_lease: bool| {
            RequestOp::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                lease,
                ignore_lease,
                ..PutRequest::default()
            })
        };
        let max = crate::lease::MAX_LEASE_ID;
        assert_eq!(max, i64::MAX as u64);
        assert_eq!(check(&ops(vec![leased(max, false)], vec![]), &l), Ok(()));
        for lease in [max + 1, u64::MAX] {
            let refused = Err(TxnInvalid::LeaseNotFound);
            assert_eq!(check(&ops(vec![leased(lease, false)], vec![]), &l), refused);
            assert_eq!(check(&ops(vec![], vec![leased(lease, false)]), &l), refused);
            let nested = ops(
                vec![RequestOp::Txn(ops(vec![], vec![leased(lease, false)]))],
                vec![],
            );
            assert_eq!(check(&nested, &l), refused);
            assert_eq!(
                check(&ops(vec![leased(lease, true)], vec![]), &l),
                Err(TxnInvalid::LeaseProvided)
            );
        }
        assert_eq!(
            TxnInvalid::LeaseNotFound.to_string(),
            crate::grpc::LEASE_NOT_FOUND
        );
    }

    #[test]
    fn counts_keys_values_and_leases_are_checked() {
        let l = TxnLimits {
            max_ops: 2,
            max_key_bytes: 3,
            max_value_bytes: 4,
            ..TxnLimits::default()
        };
        let too_many = Err(TxnInvalid::TooManyOps { limit: 2 });
        assert_eq!(
            check(&ops(vec![put("a"), put("b"), put("c")], vec![]), &l),
            too_many
        );
        assert_eq!(
            check(&ops(vec![], vec![put("a"), put("b"), put("c")]), &l),
            too_many
        );
        let nested = ops(
            vec![RequestOp::Txn(ops(
                vec![put("a"), put("b"), put("c")],
                vec![],
            ))],
            vec![],
        );
        assert_eq!(check(&nested, &l), too_many);
        let compare = |target| Compare {
            key: Bytes::from_static(b"k"),
            range_end: Bytes::new(),
            target,
            result: CompareResult::Equal,
        };
        let compares = TxnRequest {
            compare: vec![compare(CompareTarget::Version(1)); 3],
            ..TxnRequest::default()
        };
        assert_eq!(check(&compares, &l), too_many);
        let lease = TxnRequest {
            compare: vec![compare(CompareTarget::Lease(5))],
            ..TxnRequest::default()
        };
        assert_eq!(check(&lease, &l), Ok(()));
        // ignore_value with a value, ignore_lease with a lease: etcd's
        // errors, the value's first; an empty key before both.
        let ignoring = |key: &'static str, value: &'static str, lease, iv, il| {
            ops(
                vec![RequestOp::Put(PutRequest {
                    key: Bytes::from_static(key.as_bytes()),
                    value: Bytes::from_static(value.as_bytes()),
                    lease,
                    ignore_value: iv,
                    ignore_lease: il,
                    ..PutRequest::default()
                })],
                vec![],
            )
        };
        assert_eq!(check(&ignoring("k", "", 0, true, true), &l), Ok(()));
        assert_eq!(
            check(&ignoring("k", "v", 5, true, true), &l),
            Err(TxnInvalid::ValueProvided)
        );
        assert_eq!(
            check(&ignoring("k", "", 5, true, true), &l),
            Err(TxnInvalid::LeaseProvided)
        );
        assert_eq!(check(&ignoring("k", "v", 0, false, true), &l), Ok(()));
        assert_eq!(check(&ignoring("k", "", 5, true, false), &l), Ok(()));
        assert_eq!(
            check(&ignoring("", "v", 5, true, true), &l),
            Err(TxnInvalid::EmptyKey)
        );
        assert_eq!(
            check(&ops(vec![put("long")], vec![]), &l),
            Err(TxnInvalid::KeyTooLong { len: 4, limit: 3 })
        );
        let big = RequestOp::Put(PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"12345"),
            ..PutRequest::default()
        });
        assert_eq!(
            check(&ops(vec![big], vec![]), &l),
            Err(TxnInvalid::ValueTooLarge { len: 5, limit: 4 })
        );
        assert_eq!(
            check(&ops(vec![put("")], vec![]), &l),
            Err(TxnInvalid::EmptyKey)
        );
    }
}
