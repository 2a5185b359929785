//! etcd's `Txn`, and `Put` with `prev_kv` and `DeleteRange` of a range,
//! mapped field for field onto [`crate::txn`]: one log entry, every change
//! at one revision, proposed like every write (a follower forwards it to
//! the leader inside Raft).

use bytes::Bytes;
use raft_core::ProposeError;
use tonic::Status;

use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;
use super::{status_of, to_i64, NO_LEADER};
use crate::problem::Problem;
use crate::txn::{self as t, TxnError, TxnLimits};

/// etcd's `Compare` as a [`t::Compare`].
fn compare_of(c: pb::Compare) -> Result<t::Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => t::CompareResult::Equal,
        Ok(R::Greater) => t::CompareResult::Greater,
        Ok(R::Less) => t::CompareResult::Less,
        Ok(R::NotEqual) => t::CompareResult::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: unknown compare result",
            ))
        }
    };
    // The operand is read from the field the target names; a missing one
    // compares with zero (or the empty value), as etcd's defaults do.
    let target = match (T::try_from(c.target), c.target_union) {
        (Ok(T::Version), Some(U::Version(n))) => t::CompareTarget::Version(n),
        (Ok(T::Version), _) => t::CompareTarget::Version(0),
        (Ok(T::Create), Some(U::CreateRevision(n))) => t::CompareTarget::CreateRevision(n),
        (Ok(T::Create), _) => t::CompareTarget::CreateRevision(0),
        (Ok(T::Mod), Some(U::ModRevision(n))) => t::CompareTarget::ModRevision(n),
        (Ok(T::Mod), _) => t::CompareTarget::ModRevision(0),
        (Ok(T::Value), Some(U::Value(v))) => t::CompareTarget::Value(Bytes::from(v)),
        (Ok(T::Value), _) => t::CompareTarget::Value(Bytes::new()),
        (Ok(T::Lease), Some(U::Lease(n))) => t::CompareTarget::Lease(n),
        (Ok(T::Lease), _) => t::CompareTarget::Lease(0),
        (Err(_), _) => {
            return Err(Status::invalid_argument(
                "etcdserver: unknown compare target",
            ))
        }
    };
    Ok(t::Compare {
        key: Bytes::from(c.key),
        range_end: Bytes::from(c.range_end),
        target,
        result,
    })
}

/// Refuses what a range inside a transaction cannot do here.
fn range_of(r: pb::RangeRequest) -> Result<t::RangeRequest, Status> {
    let unsupported = r.revision != 0
        || r.sort_order != 0
        || r.sort_target != 0
        || r.serializable
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    if unsupported {
        return Err(Status::invalid_argument(
            "raft-node: a Range inside a Txn supports key, range_end, limit, keys_only and \
             count_only only (no revision, sort, serializable or min/max revisions)",
        ));
    }
    Ok(t::RangeRequest {
        key: Bytes::from(r.key),
        range_end: Bytes::from(r.range_end),
        limit: u64::try_from(r.limit).unwrap_or(0),
        keys_only: r.keys_only,
        count_only: r.count_only,
    })
}

/// etcd's `PutRequest` as a [`t::PutRequest`]. As etcd: no value with
/// `ignore_value`, no lease with `ignore_lease` (an empty key is refused
/// first, later); a negative lease id does not exist (etcd's ids are
/// positive).
pub(super) fn put_of(p: pb::PutRequest) -> Result<t::PutRequest, Status> {
    let keyed = !p.key.is_empty();
    if keyed && p.ignore_value && !p.value.is_empty() {
        return Err(Status::invalid_argument(
            t::TxnInvalid::ValueProvided.to_string(),
        ));
    }
    if keyed && p.ignore_lease && p.lease != 0 {
        return Err(Status::invalid_argument(
            t::TxnInvalid::LeaseProvided.to_string(),
        ));
    }
    let lease =
        u64::try_from(p.lease).map_err(|_| Status::not_found(crate::grpc::LEASE_NOT_FOUND))?;
    Ok(t::PutRequest {
        key: Bytes::from(p.key),
        value: Bytes::from(p.value),
        prev_kv: p.prev_kv,
        lease,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

/// etcd's `DeleteRangeRequest` as a [`t::DeleteRangeRequest`].
pub(super) fn delete_of(d: pb::DeleteRangeRequest) -> t::DeleteRangeRequest {
    t::DeleteRangeRequest {
        key: Bytes::from(d.key),
        range_end: Bytes::from(d.range_end),
        prev_kv: d.prev_kv,
    }
}

/// etcd's `TxnRequest` as a [`t::TxnRequest`].
pub(super) fn txn_of(req: pb::TxnRequest) -> Result<t::TxnRequest, Status> {
    let ops = |list: Vec<pb::RequestOp>| -> Result<Vec<t::RequestOp>, Status> {
        list.into_iter()
            .map(|op| match op.request {
                Some(pb::request_op::Request::RequestRange(r)) => {
                    range_of(r).map(t::RequestOp::Range)
                }
                Some(pb::request_op::Request::RequestPut(p)) => put_of(p).map(t::RequestOp::Put),
                Some(pb::request_op::Request::RequestDeleteRange(d)) => {
                    Ok(t::RequestOp::DeleteRange(delete_of(d)))
                }
                Some(pb::request_op::Request::RequestTxn(t)) => txn_of(t).map(t::RequestOp::Txn),
                None => Err(Status::invalid_argument("etcdserver: empty request op")),
            })
            .collect()
    };
    Ok(t::TxnRequest {
        compare: req
            .compare
            .into_iter()
            .map(compare_of)
            .collect::<Result<_, _>>()?,
        success: ops(req.success)?,
        failure: ops(req.failure)?,
    })
}

/// A [`t::KeyValue`] on etcd's wire.
pub(super) fn kv_out(kv: t::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: to_i64(kv.create_revision),
        mod_revision: to_i64(kv.mod_revision),
        version: to_i64(kv.version),
        value: kv.value.to_vec(),
        lease: to_i64(kv.lease),
    }
}

/// The responses of a transaction on etcd's wire; every header carries
/// `header` (nested transactions' too, as etcd fills them).
pub(super) fn responses_out(
    responses: Vec<t::ResponseOp>,
    header: &pb::ResponseHeader,
) -> Vec<pb::ResponseOp> {
    use pb::response_op::Response;
    responses
        .into_iter()
        .map(|r| pb::ResponseOp {
            response: Some(match r {
                t::ResponseOp::Range(r) => Response::ResponseRange(pb::RangeResponse {
                    header: Some(*header),
                    kvs: r.kvs.into_iter().map(kv_out).collect(),
                    more: r.more,
                    count: to_i64(r.count),
                }),
                t::ResponseOp::Put(p) => Response::ResponsePut(pb::PutResponse {
                    header: Some(*header),
                    prev_kv: p.prev_kv.map(kv_out),
                }),
                t::ResponseOp::DeleteRange(d) => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: Some(*header),
                        deleted: to_i64(d.deleted),
                        prev_kvs: d.prev_kvs.into_iter().map(kv_out).collect(),
                    })
                }
                t::ResponseOp::Txn(t) => Response::ResponseTxn(pb::TxnResponse {
                    header: Some(*header),
                    succeeded: t.succeeded,
                    responses: responses_out(t.responses, header),
                }),
            }),
        })
        .collect()
}

/// The gRPC status of a transaction that did not run.
pub(super) fn txn_status(e: TxnError) -> Status {
    match e {
        // etcd's own messages where it has one (duplicate key, too many
        // operations, key not provided); ours otherwise.
        // etcd's ErrGRPCLeaseNotFound, as for a lease that does not exist.
        TxnError::Invalid(t::TxnInvalid::LeaseNotFound) => {
            super::lease::lease_status(&crate::lease::LeaseRefusal::NotFound)
        }
        TxnError::Invalid(i) => Status::invalid_argument(i.to_string()),
        TxnError::Refused(why) => {
            Status::invalid_argument(format!("raft-node: {why}; nothing was applied"))
        }
        // This node knows no leader it can forward to.
        TxnError::Propose(ProposeError::NotLeader { .. }) => Status::unavailable(NO_LEADER),
        TxnError::Lease(r) => super::lease::lease_status(&r),
        // etcd's ErrGRPCKeyNotFound.
        TxnError::KeyNotFound => Status::invalid_argument(TxnError::KeyNotFound.to_string()),
        TxnError::Propose(e) => status_of(&Problem::from(e)),
        e @ TxnError::Unexpected(_) => Status::internal(e.to_string()),
    }
}

/// The limits of this node's transactions.
pub(super) fn limits(cfg: &crate::config::NodeConfig) -> TxnLimits {
    TxnLimits::of(cfg)
}
