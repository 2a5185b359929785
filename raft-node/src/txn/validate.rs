//! The checks a transaction passes before it is proposed (and again when
//! applied, so an entry that skipped them changes nothing): counts, sizes,
//! empty keys, leases, and etcd's rule against a key written twice.

use std::collections::HashSet;

use super::{interval, CompareTarget, RequestOp, TxnLimits, TxnRequest};

/// Deepest nesting of transactions.
pub const MAX_DEPTH: usize = 16;

/// Why a transaction is refused before anything is proposed. The messages
/// are etcd's where etcd has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnInvalid {
    /// More compares, or operations in a branch, than the limit.
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
    /// A `Range`, `Put` or `DeleteRange` with an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A compare on a lease.
    #[error("lease compares are not supported: raft-node has no leases yet")]
    LeaseUnsupported,
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
    check_shape(req, limits, 0)?;
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

/// Counts, sizes, keys and depth, recursively.
fn check_shape(req: &TxnRequest, limits: &TxnLimits, depth: usize) -> Result<(), TxnInvalid> {
    if depth >= MAX_DEPTH {
        return Err(TxnInvalid::TooDeep);
    }
    let most = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if most > limits.max_ops {
        return Err(TxnInvalid::TooManyOps {
            limit: limits.max_ops,
        });
    }
    for c in &req.compare {
        check_key(&c.key, limits)?;
        check_key(&c.range_end, limits)?;
        match &c.target {
            CompareTarget::Lease(_) => return Err(TxnInvalid::LeaseUnsupported),
            CompareTarget::Value(v) if v.len() > limits.max_value_bytes => {
                return Err(TxnInvalid::ValueTooLarge {
                    len: v.len(),
                    limit: limits.max_value_bytes,
                })
            }
            _ => {}
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => check_op_key(&r.key, &r.range_end, limits)?,
            RequestOp::Put(p) => {
                check_op_key(&p.key, &[], limits)?;
                if p.value.len() > limits.max_value_bytes {
                    return Err(TxnInvalid::ValueTooLarge {
                        len: p.value.len(),
                        limit: limits.max_value_bytes,
                    });
                }
            }
            RequestOp::DeleteRange(d) => check_op_key(&d.key, &d.range_end, limits)?,
            RequestOp::Txn(t) => check_shape(t, limits, depth + 1)?,
        }
    }
    Ok(())
}

/// Deleted ranges, `[start, end)` (`None`: unbounded).
#[derive(Default)]
struct Dels(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Dels {
    fn contains(&self, k: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(s, e)| s.as_slice() <= k && e.as_ref().is_none_or(|e| k < e.as_slice()))
    }
}

/// etcd's rule: on one path through the transaction, a key is put at most
/// once and never inside a range deleted. A put in the success and the
/// failure branch of the same nested transaction is fine (only one runs).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<&[u8]>, Dels), TxnInvalid> {
    let mut dels = Dels::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.0.push(interval(&d.key, &d.range_end));
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
        dels.0.extend(then_dels.0);
        dels.0.extend(else_dels.0);
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
