//! Applying a transaction entry (see [`crate::txn`]): decide the path from
//! the compares on the state before it, plan every operation in order
//! (each seeing the ones before), and only when the whole plan is within
//! its limits, make its changes through `put_value` and `delete_value`,
//! all at the entry's index.
//!
//! Work and memory per apply are bounded: the ranges of a transaction
//! (compares, reads and deletes with a `range_end`) visit at most
//! `max_range_keys` keys all together, each found with one bounded scan of
//! the store plus the part of this batch's own changes the range covers;
//! values are kept only for responses and deletes, at most
//! `max_read_bytes` of them. Both limits come from the entry, so every
//! replica refuses the same transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;

use super::apply::{Batch, Cf, StoreView};
use super::{StoreError, Versioned};
use crate::command::Outcome;
use crate::lease::LeaseRefusal;
use crate::txn::codec::TxnCommand;
use crate::txn::{
    interval, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    KeyValue, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnLimits,
    TxnRefusal, TxnRequest, TxnResponse,
};

/// Why planning stopped.
enum Stop {
    Refused(TxnRefusal),
    Lease(LeaseRefusal),
    /// A put keeping the value or lease of a key that does not exist.
    KeyNotFound,
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// A transaction being planned: nothing written yet.
struct Plan<'b, 'v, V> {
    batch: &'b Batch<'v, V>,
    index: u64,
    max_range_keys: u64,
    /// Keys the ranges of the transaction may still visit.
    keys_left: u64,
    /// The budget of bytes below, whole.
    max_read_bytes: u64,
    /// Bytes of keys and values still allowed in responses and deletes.
    bytes_left: u64,
    /// This transaction's changes so far (`None`: deleted).
    local: BTreeMap<Bytes, Option<Versioned>>,
    /// The changes, in order: a value put (with its lease), or a delete.
    changes: Vec<(Bytes, Option<(Bytes, u64)>)>,
    /// Most keys attached to one lease (from the entry).
    max_keys_per_lease: u32,
    /// Keys this transaction attaches to each lease, so far.
    attaching: BTreeMap<u64, u64>,
}

fn key_value(key: &Bytes, v: &Versioned, with_value: bool) -> KeyValue {
    KeyValue {
        key: key.clone(),
        create_revision: v.create_rev,
        mod_revision: v.rev,
        version: v.version,
        value: if with_value {
            v.value.clone()
        } else {
            Bytes::new()
        },
        lease: v.lease,
    }
}

impl<V: StoreView> Plan<'_, '_, V> {
    /// `key` as this transaction sees it (`with_local`) or as it was before.
    fn lookup(&self, key: &Bytes, with_local: bool) -> Result<Option<Versioned>, StoreError> {
        if with_local {
            if let Some(v) = self.local.get(key) {
                return Ok(v.clone());
            }
        }
        self.batch.current(key)
    }

    /// Calls `f` on every live key of the range, in key order. A range
    /// (a non-empty `range_end`) takes its keys from the transaction's
    /// budget of keys: the transaction is refused once its ranges together
    /// cover more than `max_range_keys`.
    fn each_in_range(
        &mut self,
        key: &Bytes,
        range_end: &[u8],
        with_local: bool,
        mut f: impl FnMut(&Bytes, Versioned) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        if range_end.is_empty() {
            if let Some(v) = self.lookup(key, with_local)? {
                f(key, v)?;
            }
            return Ok(());
        }
        let (start, end) = interval(key, range_end);
        if end.as_ref().is_some_and(|e| *e <= start) {
            return Ok(());
        }
        let bounds = (
            Bound::Included(Bytes::from(start.clone())),
            end.clone()
                .map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(e))),
        );
        // Keys changed by this batch or transaction, which the store's
        // view does not show; its deleted ones may still be in the view.
        let mut candidates = BTreeSet::new();
        let mut hidden = 0usize;
        let local = self.local.range(bounds.clone()).filter(|_| with_local);
        for (k, v) in self.batch.keys.range(bounds).chain(local) {
            hidden += usize::from(v.is_none());
            candidates.insert(k.clone());
        }
        let max = usize::try_from(self.keys_left).unwrap_or(usize::MAX);
        let scan = max.saturating_add(hidden).saturating_add(1);
        let stored = self
            .batch
            .view
            .keys_in(Cf::Kv, &start, end.as_deref(), scan)?;
        if stored.len() >= scan {
            // At least `max + 1` of them are live whatever the overlays.
            return Err(Stop::Refused(self.too_many_keys()));
        }
        candidates.extend(stored.into_iter().map(Bytes::from));
        // The count first, so that the same limit refuses the range
        // whatever the batch (before `f` charges any bytes).
        let mut live = Vec::new();
        for k in candidates {
            if self.lookup(&k, with_local)?.is_some() {
                live.push(k);
            }
        }
        if live.len() > max {
            return Err(Stop::Refused(self.too_many_keys()));
        }
        self.keys_left -= live.len() as u64;
        for k in live {
            if let Some(v) = self.lookup(&k, with_local)? {
                f(&k, v)?;
            }
        }
        Ok(())
    }

    fn too_many_keys(&self) -> TxnRefusal {
        TxnRefusal::RangeTooLarge {
            limit: self.max_range_keys,
        }
    }

    /// Takes `n` bytes from the budget.
    fn charge(bytes_left: &mut u64, n: usize, limit: u64) -> Result<(), Stop> {
        let n = n as u64;
        if n > *bytes_left {
            return Err(Stop::Refused(TxnRefusal::ResponseTooLarge { limit }));
        }
        *bytes_left -= n;
        Ok(())
    }

    /// Whether every compare of `req` holds on the state before the
    /// transaction.
    fn holds(&mut self, req: &TxnRequest) -> Result<bool, Stop> {
        for c in &req.compare {
            let mut all = true;
            let mut any = false;
            self.each_in_range(&c.key, &c.range_end, false, |_, v| {
                any = true;
                all &= compare(c, Some(&v));
                Ok(())
            })?;
            if !any {
                all = compare(c, None);
            }
            if !all {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Plans `req`: its branch's operations, in order.
    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Stop> {
        let succeeded = self.holds(req)?;
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(p) => {
                    let old = self.lookup(&p.key, true)?;
                    // Keeping the value or lease takes them from the key as
                    // this entry finds it (etcd: "key not found" without).
                    let keep = p.ignore_value || p.ignore_lease;
                    let kept = match old.as_ref() {
                        Some(o) if keep => Some(o),
                        None if keep => return Err(Stop::KeyNotFound),
                        _ => None,
                    };
                    let value = match kept {
                        Some(o) if p.ignore_value => o.value.clone(),
                        _ => p.value.clone(),
                    };
                    let lease = match kept {
                        Some(o) if p.ignore_lease => o.lease,
                        _ => p.lease,
                    };
                    let prev_kv = match old.as_ref().filter(|_| p.prev_kv) {
                        Some(o) => {
                            let limit = self.max_read_bytes;
                            Self::charge(&mut self.bytes_left, p.key.len() + o.value.len(), limit)?;
                            Some(key_value(&p.key, o, true))
                        }
                        None => None,
                    };
                    self.check_lease(lease, old.as_ref())?;
                    let new = Versioned {
                        value: value.clone(),
                        rev: self.index,
                        create_rev: old.as_ref().map_or(self.index, |o| o.create_rev),
                        version: old.as_ref().map_or(1, |o| o.version + 1),
                        lease,
                    };
                    self.local.insert(p.key.clone(), Some(new));
                    self.changes.push((p.key.clone(), Some((value, lease))));
                    ResponseOp::Put(PutResponse { prev_kv })
                }
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            revision: 0,
            responses,
        })
    }

    /// Whether a put may attach a key whose record is `old` to `lease`
    /// (0: none): the lease exists and, with this transaction's other
    /// attachments, holds no more than the limit. (Keys the transaction
    /// detaches from it are not counted off.)
    fn check_lease(&mut self, lease: u64, old: Option<&Versioned>) -> Result<(), Stop> {
        if lease == 0 {
            return Ok(());
        }
        let extra = self.attaching.get(&lease).copied().unwrap_or(0);
        if let Err(r) = self
            .batch
            .may_attach(lease, old, extra, self.max_keys_per_lease)?
        {
            return Err(Stop::Lease(r));
        }
        if old.is_none_or(|o| o.lease != lease) {
            *self.attaching.entry(lease).or_default() += 1;
        }
        Ok(())
    }

    fn range(&mut self, r: &RangeRequest) -> Result<RangeResponse, Stop> {
        let mut kvs = Vec::new();
        let mut count = 0u64;
        let mut left = self.bytes_left;
        let limit = self.max_read_bytes;
        self.each_in_range(&r.key, &r.range_end, true, |k, v| {
            count += 1;
            if !r.count_only && (r.limit == 0 || count <= r.limit) {
                let value_len = if r.keys_only { 0 } else { v.value.len() };
                Self::charge(&mut left, k.len() + value_len, limit)?;
                kvs.push(key_value(k, &v, !r.keys_only));
            }
            Ok(())
        })?;
        self.bytes_left = left;
        Ok(RangeResponse {
            more: r.limit > 0 && count > r.limit && !r.count_only,
            kvs,
            count,
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Stop> {
        let mut gone = Vec::new();
        let mut left = self.bytes_left;
        let limit = self.max_read_bytes;
        self.each_in_range(&d.key, &d.range_end, true, |k, v| {
            // The value goes to the history: charged with or without
            // `prev_kv`.
            Self::charge(&mut left, k.len() + v.value.len(), limit)?;
            gone.push(key_value(k, &v, true));
            Ok(())
        })?;
        self.bytes_left = left;
        for kv in &gone {
            self.local.insert(kv.key.clone(), None);
            self.changes.push((kv.key.clone(), None));
        }
        Ok(DeleteRangeResponse {
            deleted: gone.len() as u64,
            prev_kvs: if d.prev_kv { gone } else { Vec::new() },
        })
    }
}

/// Whether `c` holds for a key whose record is `v` (`None`: absent).
/// Absent keys have version, revisions and lease 0; a value compare on one
/// is false whatever the result asked, as in etcd.
fn compare(c: &Compare, v: Option<&Versioned>) -> bool {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let ord = match (&c.target, v) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(want), Some(v)) => v.value.as_ref().cmp(want.as_ref()),
        (CompareTarget::Version(n), v) => as_i64(v.map_or(0, |v| v.version)).cmp(n),
        (CompareTarget::CreateRevision(n), v) => as_i64(v.map_or(0, |v| v.create_rev)).cmp(n),
        (CompareTarget::ModRevision(n), v) => as_i64(v.map_or(0, |v| v.rev)).cmp(n),
        (CompareTarget::Lease(n), v) => as_i64(v.map_or(0, |v| v.lease)).cmp(n),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// Sets the revision of a response and of its nested ones.
fn stamp(resp: &mut TxnResponse, revision: u64) {
    resp.revision = revision;
    for r in &mut resp.responses {
        if let ResponseOp::Txn(t) = r {
            stamp(t, revision);
        }
    }
}

impl<V: StoreView> Batch<'_, V> {
    /// A transaction entry at `index`.
    pub(super) fn txn_command(&mut self, index: u64, data: &Bytes) -> Result<Outcome, StoreError> {
        let cmd = match TxnCommand::decode(data.clone()) {
            Ok(cmd) => cmd,
            Err(err) => return Ok(Outcome::Malformed(err.to_string())),
        };
        // The proposer checked the request against its limits; the rules
        // the apply relies on (a key changed once, no empty key, no value or
        // lease both given and kept) are checked again, so that no entry can
        // break them.
        let unbounded = TxnLimits {
            max_ops: usize::MAX,
            max_key_bytes: usize::MAX,
            max_value_bytes: usize::MAX,
            max_request_bytes: usize::MAX,
            ..TxnLimits::default()
        };
        if let Err(e) = crate::txn::validate::check(&cmd.request, &unbounded) {
            return Ok(Outcome::TxnRefused(e.to_string()));
        }
        let mut plan = Plan {
            batch: self,
            index,
            max_range_keys: u64::from(cmd.max_range_keys),
            keys_left: u64::from(cmd.max_range_keys),
            max_read_bytes: cmd.max_read_bytes,
            bytes_left: cmd.max_read_bytes,
            local: BTreeMap::new(),
            changes: Vec::new(),
            max_keys_per_lease: cmd.max_keys_per_lease,
            attaching: BTreeMap::new(),
        };
        let mut resp = match plan.txn(&cmd.request) {
            Ok(resp) => resp,
            Err(Stop::Refused(r)) => return Ok(Outcome::TxnRefused(r.to_string())),
            Err(Stop::Lease(r)) => return Ok(Outcome::LeaseRefused(r)),
            Err(Stop::KeyNotFound) => return Ok(Outcome::NotFound),
            Err(Stop::Store(e)) => return Err(e),
        };
        let changes = std::mem::take(&mut plan.changes);
        for (key, value) in &changes {
            let old = self.current(key)?;
            match (value, old) {
                (Some((value, lease)), old) => self.put_value(index, key, old, value, *lease)?,
                (None, Some(old)) => self.delete_value(index, key, &old)?,
                (None, None) => {}
            }
        }
        let revision = if changes.is_empty() {
            self.revisions()?.current
        } else {
            index
        };
        stamp(&mut resp, revision);
        Ok(Outcome::Txn(Box::new(resp)))
    }
}
