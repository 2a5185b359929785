//! The lease rules of applying (see [`crate::lease`]): grants, revokes,
//! and attaching keys, all decided from the log alone.
//!
//! Layout in `kv_meta` (replicated, so in snapshots and backups):
//!
//! - `l/<id:u64>` → `1:u8 | ttl_secs:u64 | keys:u64`: a lease and how many
//!   keys are attached to it;
//! - `a/<id:u64><key>` → empty: the keys attached to a lease (each key's
//!   own record names its lease too);
//! - `lease_count` → u64: how many leases exist.
//!
//! A batch keeps its own changes to these in a [`LeaseOverlay`] (the view
//! does not show them yet), so the result never depends on the batching.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::apply::{Batch, Cf, StoreView};
use super::records::decode_u64;
use super::{KvReader, StoreError, Versioned};
use crate::command::Outcome;
use crate::keys::prefix_end;
use crate::lease::{LeaseGrant, LeaseInfo, LeaseRefusal, LeaseRevoke, MAX_LEASE_ID, MAX_TTL_SECS};

/// Prefix of the lease records.
const LEASE_PREFIX: &[u8] = b"l/";
/// Prefix of the lease → key index.
const ATTACH_PREFIX: &[u8] = b"a/";
/// How many leases exist.
const LEASE_COUNT_KEY: &[u8] = b"lease_count";
/// Format version of a lease record.
const LEASE_RECORD_VERSION: u8 = 1;

/// A lease as the store holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseRec {
    ttl_secs: u64,
    keys: u64,
}

/// This batch's changes to the leases.
#[derive(Debug, Default)]
pub(super) struct LeaseOverlay {
    /// Lease records set (`None`: deleted) by this batch.
    records: BTreeMap<u64, Option<LeaseRec>>,
    /// Attachments made (`true`) or removed by this batch.
    attached: BTreeMap<(u64, Bytes), bool>,
    /// The count of leases, once read.
    count: Option<u64>,
}

fn lease_key(id: u64) -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn attach_prefix(id: u64) -> Vec<u8> {
    let mut k = ATTACH_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn attach_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = attach_prefix(id);
    k.extend_from_slice(key);
    k
}

fn encode_lease(rec: LeaseRec) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(LEASE_RECORD_VERSION);
    out.extend_from_slice(&rec.ttl_secs.to_be_bytes());
    out.extend_from_slice(&rec.keys.to_be_bytes());
    out
}

fn decode_lease(id: u64, v: &[u8]) -> Result<LeaseRec, StoreError> {
    match v {
        [LEASE_RECORD_VERSION, rest @ ..] if rest.len() == 16 => Ok(LeaseRec {
            ttl_secs: decode_u64(&rest[..8]).unwrap_or_default(),
            keys: decode_u64(&rest[8..]).unwrap_or_default(),
        }),
        _ => Err(StoreError::Corruption {
            key: format!("lease {id}"),
            detail: "lease record",
        }),
    }
}

fn read_lease(view: &impl StoreView, id: u64) -> Result<Option<LeaseRec>, StoreError> {
    match view.get(Cf::Meta, &lease_key(id))? {
        Some(v) => decode_lease(id, &v).map(Some),
        None => Ok(None),
    }
}

/// The keys the store's index attaches to lease `id`, at most `limit`.
fn attached_keys(view: &impl StoreView, id: u64, limit: usize) -> Result<Vec<Bytes>, StoreError> {
    let start = attach_prefix(id);
    let end = attach_prefix(id + 1);
    let n = start.len();
    Ok(view
        .keys_in(Cf::Meta, &start, Some(&end), limit)?
        .into_iter()
        .map(|k| Bytes::copy_from_slice(&k[n..]))
        .collect())
}

impl<V: StoreView> Batch<'_, V> {
    /// Lease `id`: this batch's record, else the stored one.
    pub(super) fn lease(&self, id: u64) -> Result<Option<LeaseRec>, StoreError> {
        match self.leases.records.get(&id) {
            Some(r) => Ok(*r),
            None => read_lease(self.view, id),
        }
    }

    fn set_lease(&mut self, id: u64, rec: Option<LeaseRec>) {
        match rec {
            Some(r) => self.put(Cf::Meta, lease_key(id), encode_lease(r)),
            None => self.delete(Cf::Meta, lease_key(id)),
        }
        self.leases.records.insert(id, rec);
    }

    fn lease_count(&mut self) -> Result<u64, StoreError> {
        if let Some(n) = self.leases.count {
            return Ok(n);
        }
        let n = self
            .view
            .get(Cf::Meta, LEASE_COUNT_KEY)?
            .and_then(|v| decode_u64(&v))
            .unwrap_or(0);
        self.leases.count = Some(n);
        Ok(n)
    }

    fn set_lease_count(&mut self, n: u64) {
        self.leases.count = Some(n);
        self.put(Cf::Meta, LEASE_COUNT_KEY.to_vec(), n.to_be_bytes().to_vec());
    }

    /// Whether a put may attach `key` (whose record is `old`) to lease
    /// `id`, which holds at most `max_keys` keys.
    pub(super) fn may_attach(
        &self,
        id: u64,
        old: Option<&Versioned>,
        extra: u64,
        max_keys: u32,
    ) -> Result<Result<(), LeaseRefusal>, StoreError> {
        let Some(rec) = self.lease(id)? else {
            return Ok(Err(LeaseRefusal::NotFound));
        };
        if old.is_some_and(|o| o.lease == id) {
            return Ok(Ok(()));
        }
        if rec.keys.saturating_add(extra) >= u64::from(max_keys) {
            return Ok(Err(LeaseRefusal::TooManyKeys {
                limit: u64::from(max_keys),
            }));
        }
        Ok(Ok(()))
    }

    /// Moves `key` from lease `from` to lease `to` (0: none), as a put or
    /// delete changes it.
    pub(super) fn reattach(&mut self, key: &Bytes, from: u64, to: u64) -> Result<(), StoreError> {
        if from == to {
            return Ok(());
        }
        if from != 0 {
            if let Some(mut rec) = self.lease(from)? {
                rec.keys = rec.keys.saturating_sub(1);
                self.set_lease(from, Some(rec));
            }
            self.delete(Cf::Meta, attach_key(from, key));
            self.leases.attached.insert((from, key.clone()), false);
        }
        if to != 0 {
            if let Some(mut rec) = self.lease(to)? {
                rec.keys += 1;
                self.set_lease(to, Some(rec));
            }
            self.put(Cf::Meta, attach_key(to, key), Vec::new());
            self.leases.attached.insert((to, key.clone()), true);
        }
        Ok(())
    }

    /// A lease grant entry at `index`.
    pub(super) fn lease_grant(&mut self, index: u64, data: &Bytes) -> Result<Outcome, StoreError> {
        let g = match LeaseGrant::decode(data.clone()) {
            Ok(g) => g,
            Err(err) => return Ok(Outcome::Malformed(err.to_string())),
        };
        if g.ttl_secs > MAX_TTL_SECS {
            return Ok(Outcome::LeaseRefused(LeaseRefusal::TtlTooLarge));
        }
        if g.id != 0 && self.lease(g.id)?.is_some() {
            return Ok(Outcome::LeaseRefused(LeaseRefusal::Exists));
        }
        let count = self.lease_count()?;
        if count >= g.max_leases {
            return Ok(Outcome::LeaseRefused(LeaseRefusal::TooManyLeases {
                limit: g.max_leases,
            }));
        }
        let id = if g.id == 0 {
            // From the index: the same on every replica; past the ids in use
            // (fewer than `max_leases`, so the walk is bounded).
            let mut id = index.clamp(1, MAX_LEASE_ID);
            while self.lease(id)?.is_some() {
                id = id % MAX_LEASE_ID + 1;
            }
            id
        } else {
            g.id
        };
        self.set_lease(
            id,
            Some(LeaseRec {
                ttl_secs: g.ttl_secs,
                keys: 0,
            }),
        );
        self.set_lease_count(count + 1);
        Ok(Outcome::LeaseGranted {
            id,
            ttl_secs: g.ttl_secs,
        })
    }

    /// The keys attached to lease `id`: the store's index with this batch's
    /// changes.
    fn keys_of_lease(&self, id: u64) -> Result<Vec<Bytes>, StoreError> {
        let mut keys: std::collections::BTreeSet<Bytes> = attached_keys(self.view, id, usize::MAX)?
            .into_iter()
            .collect();
        let first = (id, Bytes::new());
        for ((l, k), on) in self.leases.attached.range(first..) {
            if *l != id {
                break;
            }
            if *on {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// A lease revoke entry at `index` of `term`: every key attached
    /// goes, at this one revision, then the lease. An expiry decided by the
    /// leader of another term changes nothing (see [`crate::lease`]).
    pub(super) fn lease_revoke(
        &mut self,
        index: u64,
        term: u64,
        data: &Bytes,
    ) -> Result<Outcome, StoreError> {
        let r = match LeaseRevoke::decode(data.clone()) {
            Ok(r) => r,
            Err(err) => return Ok(Outcome::Malformed(err.to_string())),
        };
        if r.expiry_term != 0 && r.expiry_term != term {
            return Ok(Outcome::Noop);
        }
        if self.lease(r.id)?.is_none() {
            return Ok(Outcome::LeaseRefused(LeaseRefusal::NotFound));
        }
        let mut deleted = false;
        for key in self.keys_of_lease(r.id)? {
            match self.current(&key)? {
                Some(old) if old.lease == r.id => {
                    self.delete_value(index, &key, &old)?;
                    deleted = true;
                }
                // An index entry its key no longer backs: dropped.
                _ => self.delete(Cf::Meta, attach_key(r.id, &key)),
            }
        }
        self.set_lease(r.id, None);
        let count = self.lease_count()?;
        self.set_lease_count(count.saturating_sub(1));
        let rev = if deleted {
            index
        } else {
            self.revisions()?.current
        };
        Ok(Outcome::LeaseRevoked { rev })
    }
}

impl KvReader {
    /// Lease `id`, when it exists.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or the record is corrupted.
    pub fn lease(&self, id: u64) -> Result<Option<LeaseInfo>, StoreError> {
        Ok(read_lease(self, id)?.map(|r| LeaseInfo {
            id,
            ttl_secs: r.ttl_secs,
            keys: r.keys,
        }))
    }

    /// Every lease, in id order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails or a record is corrupted.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let end = prefix_end(LEASE_PREFIX).expect("b\"l/\" has an end");
        let mut out = Vec::new();
        self.meta_scan(LEASE_PREFIX, &end, |k, v| {
            let Some(id) = k.get(LEASE_PREFIX.len()..).and_then(decode_u64) else {
                return Ok(());
            };
            let r = decode_lease(id, v)?;
            out.push(LeaseInfo {
                id,
                ttl_secs: r.ttl_secs,
                keys: r.keys,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// The keys attached to lease `id`, in key order, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when RocksDB fails.
    pub fn lease_keys(&self, id: u64, limit: usize) -> Result<Vec<Bytes>, StoreError> {
        attached_keys(self, id, limit)
    }
}
