//! Multi-key transactions like etcd's `Txn`: compares, then the `success`
//! or the `failure` operations, all applied atomically at one revision.
//!
//! This is the transport-neutral API: `POST /v1/txn` maps its JSON onto
//! these types, and an etcd gRPC server maps etcd's messages onto them
//! field for field (`Compare`, `RequestOp`, `ResponseOp`, `KeyValue`).
//! A transaction travels through the Raft log as one entry ([`codec`]),
//! and every replica decides it the same way:
//!
//! - **Compares** see the state before the transaction (nested
//!   transactions' compares too, as in etcd). A compare with a `range_end`
//!   holds only if it holds for every key in the range. An absent key (or
//!   an empty range) has version, create and mod revision 0 and no lease
//!   (0), and a [`CompareTarget::Value`] compare on it is always false,
//!   whatever the result asked. A [`CompareTarget::Lease`] compare looks
//!   at the id of the lease the key is attached to (0: none).
//! - **Operations** run in order, and each sees the ones before it: a
//!   [`RequestOp::Range`] after a [`RequestOp::Put`] of the same
//!   transaction returns the new value. A put with
//!   [`PutRequest::ignore_value`] or [`PutRequest::ignore_lease`] keeps
//!   the key's value or lease as the entry finds it when applied; on an
//!   absent key it makes the whole transaction fail, nothing changed
//!   ([`TxnError::KeyNotFound`], etcd's "key not found").
//! - **One revision**: every change of the transaction gets the entry's
//!   log index as its revision; a transaction that changes nothing makes no
//!   revision ([`TxnResponse::revision`] is then the store's revision).
//! - **Refused** before the log ([`TxnInvalid`]): more than
//!   [`TxnLimits::max_ops`] compares or operations in a list (in a nested
//!   transaction: than its parent's largest list leaves, as in etcd), a
//!   key put
//!   twice or put inside a range the same path deletes (etcd's
//!   "duplicate key given in txn request"), an empty key, a put with
//!   `ignore_value` and a value or `ignore_lease` and a lease, a put's
//!   lease id above `i64::MAX` (etcd's ids are `int64`: answered as a
//!   lease that does not exist), a key or value over the size limits, a
//!   request over [`TxnLimits::max_request_bytes`].
//! - **Refused when applied** ([`TxnRefusal`], nothing changes): ranges
//!   (in compares, `Range`s and `DeleteRange`s with a `range_end`)
//!   covering more than [`TxnLimits::max_range_keys`] keys all together,
//!   or responses holding more than [`TxnLimits::max_read_bytes`] of keys
//!   and values. Both limits travel in the entry, so every replica applies
//!   the proposer's, and an apply visits at most that many keys and holds
//!   at most that many bytes, however many operations the entry holds.
//!
//! [`propose`] proposes a transaction through the same path as every
//! write (a follower forwards it to the leader inside Raft); [`put`] and
//! [`delete_range`] are the one-operation transactions that etcd's `Put`
//! and `DeleteRange` are.
//!
//! ```
//! use bytes::Bytes;
//! use raft_node::txn::{Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, TxnRequest};
//!
//! // Set "color" to blue only if it is still at mod revision 7; else read it.
//! let cas = TxnRequest {
//!     compare: vec![Compare {
//!         key: Bytes::from_static(b"color"),
//!         range_end: Bytes::new(),
//!         target: CompareTarget::ModRevision(7),
//!         result: CompareResult::Equal,
//!     }],
//!     success: vec![RequestOp::Put(PutRequest {
//!         key: Bytes::from_static(b"color"),
//!         value: Bytes::from_static(b"blue"),
//!         prev_kv: true,
//!         ..PutRequest::default()
//!     })],
//!     failure: vec![RequestOp::Range(RangeRequest {
//!         key: Bytes::from_static(b"color"),
//!         ..RangeRequest::default()
//!     })],
//! };
//! // `node.txn(cas).await` on a `RunningNode`, or
//! // `raft_node::txn::propose(&raft, &limits, cas).await`, runs it.
//! # assert_eq!(cas.success.len(), 1);
//! ```

pub mod codec;
mod propose;
pub(crate) mod validate;

use bytes::Bytes;

pub use propose::{delete_range, prefix_end, propose, put, TxnError};
pub use validate::TxnInvalid;

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    /// The conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    pub failure: Vec<RequestOp>,
}

/// One condition on a key (or on every key of a range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Bytes,
    /// Empty: the key alone; `\0`: every key from `key` on; otherwise
    /// every key in `[key, range_end)`.
    pub range_end: Bytes,
    /// What is compared, and with what.
    pub target: CompareTarget,
    /// How.
    pub result: CompareResult,
}

/// What a compare looks at, with the operand (etcd's `target_union`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's create revision (0 when absent).
    CreateRevision(i64),
    /// The key's mod revision (0 when absent).
    ModRevision(i64),
    /// The key's value (bytes, compared lexicographically); false on an
    /// absent key.
    Value(Bytes),
    /// The id of the lease the key is attached to (0 when it has none or
    /// is absent).
    Lease(i64),
}

/// How the key's field must relate to the operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// `field == operand`.
    Equal,
    /// `field != operand`.
    NotEqual,
    /// `field > operand`.
    Greater,
    /// `field < operand`.
    Less,
}

/// One operation of a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    /// Read a key or a range.
    Range(RangeRequest),
    /// Set a key.
    Put(PutRequest),
    /// Delete a key or a range.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// A read inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    /// The key.
    pub key: Bytes,
    /// As in [`Compare::range_end`].
    pub range_end: Bytes,
    /// At most this many keys in `kvs` (0: no limit).
    pub limit: u64,
    /// Leave the values out.
    pub keys_only: bool,
    /// Only the count, no `kvs`.
    pub count_only: bool,
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Answer the key's previous value.
    pub prev_kv: bool,
    /// Attach the key to this lease (0: none; a put without a lease
    /// detaches the key from the one it had).
    pub lease: u64,
    /// Keep the key's current value (etcd's `ignore_value`): `value` must
    /// be empty, and the key must exist when the entry applies.
    pub ignore_value: bool,
    /// Keep the key's current lease (etcd's `ignore_lease`): `lease` must
    /// be 0, and the key must exist when the entry applies.
    pub ignore_lease: bool,
}

/// A delete inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeRequest {
    /// The key.
    pub key: Bytes,
    /// As in [`Compare::range_end`].
    pub range_end: Bytes,
    /// Answer the deleted keys' values.
    pub prev_kv: bool,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// Whether every compare held (`success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction: the entry's index when
    /// it changed a key, else the revision it read.
    pub revision: u64,
    /// One response per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// The answer to one [`RequestOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    /// To a [`RequestOp::Range`].
    Range(RangeResponse),
    /// To a [`RequestOp::Put`].
    Put(PutResponse),
    /// To a [`RequestOp::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// To a [`RequestOp::Txn`].
    Txn(TxnResponse),
}

/// The keys a range read found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The keys, in order, at most `limit` (none with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds.
    pub count: u64,
    /// Whether the range holds more keys than `kvs`.
    pub more: bool,
}

/// What a put replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    /// The previous value, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeResponse {
    /// How many keys were deleted.
    pub deleted: u64,
    /// Their values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// A key and its revisions, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The revision that created it (since it was last deleted).
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
    /// 1 when created, one more per write since.
    pub version: u64,
    /// The value (empty with `keys_only`).
    pub value: Bytes,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

/// Why a valid transaction was refused when applied; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnRefusal {
    /// The ranges of the transaction cover more keys than the limit, all
    /// together.
    #[error("the ranges of the transaction cover more than {limit} keys together (--max-txn-range-keys); narrow them or use several transactions")]
    RangeTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The responses would hold too many bytes.
    #[error("the transaction's responses would hold more than {limit} bytes of keys and values (--max-list-bytes); narrow its ranges or use keys_only or count_only")]
    ResponseTooLarge {
        /// The limit.
        limit: u64,
    },
}

/// The limits of transactions (the node's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnLimits {
    /// Most compares, and most operations in each branch; a nested
    /// transaction gets what its parent's largest list leaves
    /// (`--max-txn-ops`, etcd's `--max-txn-ops`, default 128).
    pub max_ops: usize,
    /// Most keys the ranges of a transaction (compares, reads and deletes
    /// with a `range_end`) may cover, all together
    /// (`--max-txn-range-keys`, default 10000).
    pub max_range_keys: u32,
    /// Most bytes of keys and values in a transaction's responses
    /// (`--max-list-bytes`, default 8 MiB).
    pub max_read_bytes: u64,
    /// Largest key (`--max-key-bytes`).
    pub max_key_bytes: usize,
    /// Largest value (`--max-value-bytes`).
    pub max_value_bytes: usize,
    /// Largest encoded transaction (`--max-key-bytes` plus
    /// `--max-value-bytes`: one entry always fits a peer frame).
    pub max_request_bytes: usize,
    /// Most keys attached to one lease (`--max-keys-per-lease`, default
    /// 10000); travels in the entry.
    pub max_keys_per_lease: u32,
}

impl Default for TxnLimits {
    fn default() -> Self {
        Self {
            max_ops: 128,
            max_range_keys: 10_000,
            max_read_bytes: 8 << 20,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_request_bytes: 1024 + (1 << 20),
            max_keys_per_lease: 10_000,
        }
    }
}

impl TxnLimits {
    /// The limits a node's settings give.
    pub fn of(cfg: &crate::config::NodeConfig) -> Self {
        Self {
            max_ops: cfg.max_txn_ops,
            max_range_keys: cfg.max_txn_range_keys,
            max_read_bytes: cfg.max_list_bytes as u64,
            max_key_bytes: cfg.max_key_bytes,
            max_value_bytes: cfg.max_value_bytes,
            max_request_bytes: cfg.max_key_bytes.saturating_add(cfg.max_value_bytes),
            max_keys_per_lease: cfg.max_keys_per_lease,
        }
    }
}

/// A key range: `[key, end)`, `end` `None` for "every key from `key` on".
/// An empty `range_end` is the key alone (`end` is `key\0`).
pub(crate) fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}
