//! `POST /v1/txn`: a multi-key transaction ([`crate::txn`]) as one JSON
//! request. Keys, range ends and values are UTF-8 strings (`key`,
//! `range_end`, `value`) or base64 (`key_base64`, `range_end_base64`,
//! `value_base64`); answers use `key`/`value` for UTF-8 and the `_base64`
//! names otherwise.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use raft_core::ProposeError;
use serde::{Deserialize, Serialize};

use super::forwarding::{forward, Relay};
use super::revisions::with_revision;
use super::{Answer, Shared};
use crate::problem::Problem;
use crate::txn::{
    prefix_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest,
    RangeRequest, RequestOp, ResponseOp, TxnError, TxnInvalid, TxnLimits, TxnRequest, TxnResponse,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A key and its range end, as UTF-8 strings or base64 (`prefix`: every
/// key that starts with the key).
struct KeyRange {
    key: Option<String>,
    key_base64: Option<String>,
    range_end: Option<String>,
    range_end_base64: Option<String>,
    prefix: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCompare {
    key: Option<String>,
    key_base64: Option<String>,
    range_end: Option<String>,
    range_end_base64: Option<String>,
    #[serde(default)]
    prefix: bool,
    target: String,
    result: String,
    version: Option<i64>,
    create_revision: Option<i64>,
    mod_revision: Option<i64>,
    value: Option<String>,
    value_base64: Option<String>,
    /// The lease id a `lease` compare compares with (0: no lease).
    lease: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRange {
    key: Option<String>,
    key_base64: Option<String>,
    range_end: Option<String>,
    range_end_base64: Option<String>,
    #[serde(default)]
    prefix: bool,
    #[serde(default)]
    limit: u64,
    #[serde(default)]
    keys_only: bool,
    #[serde(default)]
    count_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPut {
    key: Option<String>,
    key_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
    #[serde(default)]
    prev_kv: bool,
    /// Attach the key to this lease (0 or absent: none).
    #[serde(default)]
    lease: u64,
    /// Keep the key's value (no `value` may be given; the key must exist).
    #[serde(default)]
    ignore_value: bool,
    /// Keep the key's lease (no `lease` may be given; the key must exist).
    #[serde(default)]
    ignore_lease: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDelete {
    key: Option<String>,
    key_base64: Option<String>,
    range_end: Option<String>,
    range_end_base64: Option<String>,
    #[serde(default)]
    prefix: bool,
    #[serde(default)]
    prev_kv: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum JsonOp {
    Range(JsonRange),
    Put(JsonPut),
    DeleteRange(JsonDelete),
    Txn(JsonTxn),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTxn {
    #[serde(default)]
    compare: Vec<JsonCompare>,
    #[serde(default)]
    success: Vec<JsonOp>,
    #[serde(default)]
    failure: Vec<JsonOp>,
}

/// The key range of a JSON object that has the five fields.
macro_rules! key_range {
    ($o:expr) => {
        KeyRange {
            key: $o.key,
            key_base64: $o.key_base64,
            range_end: $o.range_end,
            range_end_base64: $o.range_end_base64,
            prefix: $o.prefix,
        }
    };
}

/// One of `plain` (UTF-8) or `b64`; `None` when neither is given.
fn either(
    plain: Option<String>,
    b64: Option<String>,
    name: &str,
) -> Result<Option<Bytes>, Problem> {
    match (plain, b64) {
        (Some(_), Some(_)) => Err(Problem::bad_request(format!(
            "give {name} or {name}_base64, not both"
        ))),
        (Some(s), None) => Ok(Some(Bytes::from(s))),
        (None, Some(b)) => B64
            .decode(b.as_bytes())
            .map(|v| Some(Bytes::from(v)))
            .map_err(|e| Problem::bad_request(format!("{name}_base64 is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

impl KeyRange {
    fn resolve(self) -> Result<(Bytes, Bytes), Problem> {
        let key = either(self.key, self.key_base64, "key")?.unwrap_or_default();
        let end = either(self.range_end, self.range_end_base64, "range_end")?;
        let end = match (end, self.prefix) {
            (Some(_), true) => {
                return Err(Problem::bad_request("give range_end or prefix, not both"))
            }
            (Some(e), false) => e,
            (None, true) => prefix_end(&key),
            (None, false) => Bytes::new(),
        };
        Ok((key, end))
    }
}

fn compare_of(c: JsonCompare) -> Result<Compare, Problem> {
    let (key, range_end) = key_range!(c).resolve()?;
    let result = match c.result.as_str() {
        "equal" => CompareResult::Equal,
        "not_equal" => CompareResult::NotEqual,
        "greater" => CompareResult::Greater,
        "less" => CompareResult::Less,
        other => {
            return Err(Problem::bad_request(format!(
                "result must be equal, not_equal, greater or less; got {other:?}"
            )))
        }
    };
    let operand = |n: Option<i64>, name: &str| {
        n.ok_or_else(|| Problem::bad_request(format!("a {name} compare needs \"{name}\"")))
    };
    let target =
        match c.target.as_str() {
            "version" => CompareTarget::Version(operand(c.version, "version")?),
            "create_revision" => {
                CompareTarget::CreateRevision(operand(c.create_revision, "create_revision")?)
            }
            "mod_revision" => CompareTarget::ModRevision(operand(c.mod_revision, "mod_revision")?),
            "value" => CompareTarget::Value(either(c.value, c.value_base64, "value")?.ok_or_else(
                || Problem::bad_request("a value compare needs \"value\" or \"value_base64\""),
            )?),
            "lease" => CompareTarget::Lease(operand(c.lease, "lease")?),
            other => {
                return Err(Problem::bad_request(format!(
                    "target must be version, create_revision, mod_revision, value or lease; \
                     got {other:?}"
                )))
            }
        };
    Ok(Compare {
        key,
        range_end,
        target,
        result,
    })
}

fn op_of(op: JsonOp) -> Result<RequestOp, Problem> {
    Ok(match op {
        JsonOp::Range(r) => {
            let (key, range_end) = key_range!(r).resolve()?;
            RequestOp::Range(RangeRequest {
                key,
                range_end,
                limit: r.limit,
                keys_only: r.keys_only,
                count_only: r.count_only,
            })
        }
        JsonOp::Put(p) => {
            // etcd's lease ids are int64: a larger id names no lease, and
            // a transaction entry cannot carry it (every replica would
            // apply the entry as malformed, and the client get a 500).
            // With `ignore_lease`, the lease given is refused as such.
            if p.lease > crate::lease::MAX_LEASE_ID && !p.ignore_lease {
                return Err(super::lease::problem(&crate::lease::LeaseRefusal::NotFound));
            }
            RequestOp::Put(PutRequest {
                key: either(p.key, p.key_base64, "key")?.unwrap_or_default(),
                value: either(p.value, p.value_base64, "value")?.unwrap_or_default(),
                prev_kv: p.prev_kv,
                lease: p.lease,
                ignore_value: p.ignore_value,
                ignore_lease: p.ignore_lease,
            })
        }
        JsonOp::DeleteRange(d) => {
            let (key, range_end) = key_range!(d).resolve()?;
            RequestOp::DeleteRange(DeleteRangeRequest {
                key,
                range_end,
                prev_kv: d.prev_kv,
            })
        }
        JsonOp::Txn(t) => RequestOp::Txn(txn_of(t)?),
    })
}

fn txn_of(t: JsonTxn) -> Result<TxnRequest, Problem> {
    Ok(TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_of)
            .collect::<Result<_, _>>()?,
        success: t.success.into_iter().map(op_of).collect::<Result<_, _>>()?,
        failure: t.failure.into_iter().map(op_of).collect::<Result<_, _>>()?,
    })
}

#[derive(Serialize)]
struct KvOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    /// The key's lease, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

/// Text as a string, other bytes as base64.
fn text_or_b64(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (None, Some(B64.encode(b))),
    }
}

fn kv_out(kv: &KeyValue) -> KvOut {
    let (key, key_base64) = text_or_b64(&kv.key);
    let (value, value_base64) = text_or_b64(&kv.value);
    KvOut {
        key,
        key_base64,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: (kv.lease != 0).then_some(kv.lease),
        value,
        value_base64,
    }
}

fn response_json(r: &TxnResponse) -> serde_json::Value {
    let responses: Vec<serde_json::Value> = r
        .responses
        .iter()
        .map(|op| match op {
            ResponseOp::Range(rr) => serde_json::json!({ "range": {
                "kvs": rr.kvs.iter().map(kv_out).collect::<Vec<_>>(),
                "count": rr.count,
                "more": rr.more,
            }}),
            ResponseOp::Put(p) => serde_json::json!({ "put": {
                "prev_kv": p.prev_kv.as_ref().map(kv_out),
            }}),
            ResponseOp::DeleteRange(d) => serde_json::json!({ "delete_range": {
                "deleted": d.deleted,
                "prev_kvs": d.prev_kvs.iter().map(kv_out).collect::<Vec<_>>(),
            }}),
            ResponseOp::Txn(t) => serde_json::json!({ "txn": response_json(t) }),
        })
        .collect();
    serde_json::json!({
        "succeeded": r.succeeded,
        "revision": r.revision,
        "responses": responses,
    })
}

/// The problem of a transaction refused before it was proposed.
fn invalid(e: TxnInvalid) -> Problem {
    let (status, kind, title) = match &e {
        TxnInvalid::LeaseNotFound => {
            return super::lease::problem(&crate::lease::LeaseRefusal::NotFound)
        }
        TxnInvalid::TooManyOps { .. } => (
            StatusCode::BAD_REQUEST,
            "too-many-ops",
            "Too many operations",
        ),
        TxnInvalid::DuplicateKey => (
            StatusCode::BAD_REQUEST,
            "duplicate-key",
            "Duplicate key in transaction",
        ),
        TxnInvalid::EmptyKey => (StatusCode::BAD_REQUEST, "empty-key", "Empty key"),
        TxnInvalid::ValueProvided => (
            StatusCode::BAD_REQUEST,
            "value-provided",
            "Value given with ignore_value",
        ),
        TxnInvalid::LeaseProvided => (
            StatusCode::BAD_REQUEST,
            "lease-provided",
            "Lease given with ignore_lease",
        ),
        TxnInvalid::KeyTooLong { .. } => (StatusCode::URI_TOO_LONG, "key-too-long", "Key too long"),
        TxnInvalid::ValueTooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "value-too-large",
            "Value too large",
        ),
        TxnInvalid::TooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "txn-too-large",
            "Transaction too large",
        ),
        TxnInvalid::TooDeep => (
            StatusCode::BAD_REQUEST,
            "txn-too-deep",
            "Transactions nested too deep",
        ),
    };
    Problem::new(status, kind, title, e.to_string())
}

/// `POST /v1/txn`: runs the transaction of the JSON body.
pub(super) async fn txn(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    if headers.contains_key("idempotency-key") {
        return Err(Problem::bad_request(
            "Idempotency-Key is not supported on transactions: make the transaction \
             conditional (compare a mod_revision) so that a retry is safe",
        ));
    }
    let parsed: JsonTxn = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("the body is not a transaction: {e}")))?;
    let req = txn_of(parsed)?;
    let limits = TxnLimits::of(&state.cfg);
    match crate::txn::propose(&state.raft, &limits, req).await {
        Ok(resp) => {
            let mut answer = Json(response_json(&resp)).into_response();
            with_revision(&mut answer, resp.revision);
            Ok(answer)
        }
        Err(TxnError::Invalid(e)) => Err(invalid(e)),
        Err(TxnError::Refused(why)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "txn-refused",
            "Transaction refused",
            format!("{why}; nothing was applied"),
        )),
        Err(TxnError::Propose(ProposeError::NotLeader { leader })) => {
            let relay = Relay {
                method: Method::POST,
                uri: &uri,
                headers: &headers,
                body,
                is_write: true,
            };
            forward(&state, leader, relay).await
        }
        Err(TxnError::Lease(r)) => Err(super::lease::problem(&r)),
        Err(TxnError::KeyNotFound) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such key",
            "a put with ignore_value or ignore_lease needs the key to exist; nothing was applied",
        )),
        Err(TxnError::Propose(e)) => Err(e.into()),
        Err(e @ TxnError::Unexpected(_)) => Err(Problem::storage(e.to_string())),
    }
}
