//! Proposing a transaction: checked, encoded with the node's apply-time
//! limits, proposed like every write (a follower forwards it to the leader
//! inside Raft), answered from this node's apply of the entry.

use bytes::Bytes;
use raft_core::{ProposeError, RaftHandle};

use super::codec::TxnCommand;
use super::validate::{check, TxnInvalid};
use super::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp, ResponseOp,
    TxnLimits, TxnRequest, TxnResponse,
};
use crate::command::Outcome;

/// Why a transaction did not run.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Refused before it was proposed; nothing was applied.
    #[error(transparent)]
    Invalid(#[from] TxnInvalid),
    /// Refused when applied ([`super::TxnRefusal`], as its message);
    /// nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The proposal failed: [`ProposeError`] tells whether it may still be
    /// applied (`Timeout`, `OutcomeUnknown`) or certainly was not.
    /// `NotLeader` means this node could not forward it: the caller may
    /// send the request to the leader itself.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// Refused when applied for its lease (a put with a lease that does
    /// not exist, or one holding `--max-keys-per-lease` keys); nothing
    /// changed.
    #[error("{0}")]
    Lease(crate::lease::LeaseRefusal),
    /// A put with `ignore_value` or `ignore_lease` found no key to keep
    /// the value or lease of when applied (etcd's "key not found");
    /// nothing changed.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// The state machine answered something else (a bug).
    #[error("unexpected outcome of a transaction: {0}")]
    Unexpected(String),
}

/// Checks `req` against `limits`, proposes it and answers what it did.
///
/// # Errors
///
/// [`TxnError`]: invalid, refused when applied, or the proposal failed.
pub async fn propose(
    raft: &RaftHandle<Outcome>,
    limits: &TxnLimits,
    req: TxnRequest,
) -> Result<TxnResponse, TxnError> {
    check(&req, limits)?;
    let cmd = TxnCommand {
        max_range_keys: limits.max_range_keys,
        max_read_bytes: limits.max_read_bytes,
        max_keys_per_lease: limits.max_keys_per_lease,
        request: req,
    };
    let data = cmd.encode();
    if data.len() > limits.max_request_bytes {
        return Err(TxnInvalid::TooLarge {
            len: data.len(),
            limit: limits.max_request_bytes,
        }
        .into());
    }
    match raft.propose(data).await? {
        Outcome::Txn(resp) => Ok(*resp),
        Outcome::TxnRefused(why) => Err(TxnError::Refused(why)),
        Outcome::LeaseRefused(r) => Err(TxnError::Lease(r)),
        Outcome::NotFound => Err(TxnError::KeyNotFound),
        other => Err(TxnError::Unexpected(format!("{other:?}"))),
    }
}

/// etcd's `Put`: a transaction of one put. Answers the put's response and
/// the revision it made.
///
/// # Errors
///
/// As [`propose`].
pub async fn put(
    raft: &RaftHandle<Outcome>,
    limits: &TxnLimits,
    req: PutRequest,
) -> Result<(PutResponse, u64), TxnError> {
    let resp = propose(raft, limits, one(RequestOp::Put(req))).await?;
    match resp.responses.into_iter().next() {
        Some(ResponseOp::Put(p)) => Ok((p, resp.revision)),
        other => Err(TxnError::Unexpected(format!("{other:?}"))),
    }
}

/// etcd's `DeleteRange`: a transaction of one delete. Answers its response
/// and the store's revision after it.
///
/// # Errors
///
/// As [`propose`].
pub async fn delete_range(
    raft: &RaftHandle<Outcome>,
    limits: &TxnLimits,
    req: DeleteRangeRequest,
) -> Result<(DeleteRangeResponse, u64), TxnError> {
    let resp = propose(raft, limits, one(RequestOp::DeleteRange(req))).await?;
    match resp.responses.into_iter().next() {
        Some(ResponseOp::DeleteRange(d)) => Ok((d, resp.revision)),
        other => Err(TxnError::Unexpected(format!("{other:?}"))),
    }
}

fn one(op: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: vec![op],
        failure: Vec::new(),
    }
}

/// The key one past every key that starts with `prefix` (etcd's
/// `GetPrefixRangeEnd`) as a transaction's `range_end`: `\0` (every key)
/// when there is none.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    crate::keys::prefix_end(prefix).map_or(Bytes::from_static(b"\0"), Bytes::from)
}
