//! One key: `GET`, `PUT` and `DELETE /v1/kv/{key}`, with revisions as
//! `ETag`, preconditions (`If-Match`, `If-None-Match: *`), idempotency
//! keys and the read consistency levels.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use raft_core::{ProposeError, ReadConsistency, ReadError};
use serde::Deserialize;
use serde_json::json;

use super::forwarding::{forward, unexpected, Relay};
use super::revisions::{problem_at, revision_param, with_key_revisions, with_revision};
use super::{Answer, AppState, Shared};
use crate::command::{Command, Op, Outcome, Precondition};
use crate::problem::Problem;

/// Characters kept literally when a key is shown percent-encoded.
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The query of a read: its consistency, and for a listing its page.
#[derive(Debug, Deserialize)]
pub(super) struct ReadParams {
    pub(super) consistency: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) limit: Option<usize>,
    /// Where a listing goes on: the `next` of the previous page.
    pub(super) cursor: Option<String>,
    /// A listing without values.
    pub(super) keys_only: Option<bool>,
    /// Read as of this revision (`None`: the current one).
    pub(super) revision: Option<String>,
}

/// The read's parameters, or 400 for a malformed query string.
pub(super) fn read_params(
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<ReadParams, Problem> {
    params
        .map(|Query(p)| p)
        .map_err(|_| Problem::bad_request("malformed query string"))
}

/// The key named by the request path, percent-decoded to bytes.
fn key_of(state: &AppState, uri: &Uri) -> Result<Bytes, Problem> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or_default();
    let key: Vec<u8> = percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err(Problem::bad_request("the key is empty"));
    }
    if key.len() > state.cfg.max_key_bytes {
        return Err(Problem::new(
            StatusCode::URI_TOO_LONG,
            "key-too-long",
            "Key too long",
            format!(
                "the key has {} bytes; the limit is {}",
                key.len(),
                state.cfg.max_key_bytes
            ),
        )
        .with("limit", state.cfg.max_key_bytes));
    }
    Ok(Bytes::from(key))
}

/// A key as a listing shows it: percent-encoded, `/` kept.
pub(super) fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => utf8_percent_encode(s, KEY_SAFE).to_string(),
        Err(_) => percent_encoding::percent_encode(key, KEY_SAFE).to_string(),
    }
}

fn etag(rev: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{rev}\"")).expect("digits and quotes")
}

fn precondition(headers: &HeaderMap) -> Result<Precondition, Problem> {
    let if_match = headers.get(header::IF_MATCH);
    let if_none = headers.get(header::IF_NONE_MATCH);
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(Problem::bad_request(
            "If-Match and If-None-Match together are not supported",
        )),
        (Some(v), None) => {
            let s = v.to_str().unwrap_or_default().trim();
            let rev = s
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|r| *r > 0)
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "If-Match must be a quoted revision like \"42\", got {s:?}"
                    ))
                })?;
            Ok(Precondition::IfMatch(rev))
        }
        (None, Some(v)) if v.as_bytes() == b"*" => Ok(Precondition::IfNoneMatch),
        (None, Some(v)) => Err(Problem::bad_request(format!(
            "only `If-None-Match: *` is supported, got {:?}",
            v.to_str().unwrap_or("<binary>")
        ))),
        (None, None) => Ok(Precondition::None),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| Problem::bad_request("Idempotency-Key must be visible ASCII"))?;
    if s.is_empty() || s.len() > 256 {
        return Err(Problem::bad_request(
            "Idempotency-Key must have 1 to 256 characters",
        ));
    }
    Ok(Some(s.to_owned()))
}

fn no_such_key() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such key",
        "the key does not exist",
    )
}

/// The answer to an applied write: its revision, or why it was refused.
fn write_answer(outcome: Outcome) -> Answer {
    match outcome {
        Outcome::Applied { rev } => {
            let mut resp = Json(json!({ "rev": rev })).into_response();
            resp.headers_mut().insert(header::ETAG, etag(rev));
            Ok(resp)
        }
        Outcome::PreconditionFailed { current } => Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            match current {
                Some(r) => format!("the key is at revision {r}"),
                None => "the key does not exist".to_owned(),
            },
        )
        .with("current_rev", current)),
        Outcome::NotFound => Err(no_such_key()),
        Outcome::LeaseRefused(r) => Err(super::lease::problem(&r)),
        Outcome::IdempotencyConflict => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used for a different request; nothing was applied",
        )),
        other => Err(unexpected(&other)),
    }
}

/// Proposes the write `op` on the key of `uri` (forwarded to the leader
/// when this node is not it).
async fn write(
    state: Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    op: Op,
) -> Answer {
    let key = key_of(&state, &uri)?;
    let precondition = precondition(&headers)?;
    let idem = idempotency_key(&headers)?;
    let cmd = Command {
        op,
        key,
        precondition,
        principal: idem
            .as_ref()
            .and_then(|_| super::principal(&state.cfg, &headers)),
        idempotency_key: idem,
    };
    match state.raft.propose(cmd.encode()).await {
        Ok(Outcome::Applied { rev }) => write_answer(Outcome::Applied { rev }).map(|mut r| {
            with_revision(&mut r, rev);
            r
        }),
        Ok(outcome) => {
            let current = state.reader.revisions().map(|r| r.current).ok();
            write_answer(outcome).map_err(|p| problem_at(p, current))
        }
        Err(ProposeError::NotLeader { leader }) => {
            let relay = Relay::write(method, &uri, &headers, body);
            forward(&state, leader, relay).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The query of a put: the lease to attach the key to, or a TTL to grant
/// one with.
#[derive(Debug, Deserialize)]
pub(super) struct PutParams {
    lease: Option<String>,
    ttl: Option<u64>,
}

/// `PUT /v1/kv/{key}[?lease=ID | ?ttl=SECS]`: sets the value; with `lease`
/// attaches the key to that lease (404 `lease-not-found` when it does not
/// exist), with `ttl` grants a lease of that TTL first and attaches the
/// key to it (two log entries: a crash between them leaves a lease with no
/// key, which simply expires; refused with an `Idempotency-Key`, as a
/// retry would grant another lease). The lease is answered in `Raft-Lease`.
pub(super) async fn put_key(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<PutParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let Query(params) = params.map_err(|e| Problem::bad_request(format!("bad query: {e}")))?;
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = state.cfg.max_value_bytes;
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value-too-large",
                "Value too large",
                format!("the value exceeds the limit of {limit} bytes"),
            )
            .with("limit", limit));
        }
        Err(r) => return Err(Problem::bad_request(format!("cannot read the body: {r}"))),
    };
    let lease = match (params.lease.as_deref(), params.ttl) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request("give either lease or ttl, not both"))
        }
        (Some("0"), None) | (None, None) => 0,
        (Some(id), None) => id
            .parse::<u64>()
            .ok()
            .filter(|id| *id <= crate::lease::MAX_LEASE_ID)
            .ok_or_else(|| Problem::bad_request(format!("lease must be a lease id, got {id:?}")))?,
        (None, Some(_)) if headers.contains_key("idempotency-key") => {
            // Each attempt grants another lease, so a retry never matches.
            return Err(Problem::bad_request(
                "PUT ?ttl= grants a new lease on every attempt and cannot be retried \
                 with an Idempotency-Key: grant with POST /v1/leases, then PUT ?lease=ID",
            ));
        }
        (None, Some(ttl)) => super::lease::grant_lease(&state, 0, ttl).await?.0,
    };
    let op = if lease == 0 {
        Op::Put(body.clone())
    } else {
        Op::PutLeased {
            value: body.clone(),
            lease,
            max_keys: state.cfg.max_keys_per_lease,
        }
    };
    let mut resp = write(state, method, uri, headers, body, op).await?;
    // A forwarded put carries the leader's answer (and lease) already.
    if lease != 0 && resp.status().is_success() && !resp.headers().contains_key("raft-lease") {
        resp.headers_mut()
            .insert("raft-lease", HeaderValue::from(lease));
    }
    Ok(resp)
}

/// `DELETE /v1/kv/{key}`: deletes the key (404 when it does not exist).
pub(super) async fn delete_key(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    write(state, method, uri, headers, Bytes::new(), Op::Delete).await
}

/// The consistency a read asks for (linearizable by default).
pub(super) fn consistency(p: &ReadParams) -> Result<ReadConsistency, Problem> {
    match p.consistency.as_deref() {
        None | Some("linearizable") => Ok(ReadConsistency::Linearizable),
        Some("lease") => Ok(ReadConsistency::Lease),
        Some("stale") => Ok(ReadConsistency::Stale),
        Some(other) => Err(Problem::bad_request(format!(
            "consistency must be linearizable, lease or stale; got {other:?}"
        ))),
    }
}

/// Waits until this node may serve a read at `c`. `Some` is the leader's
/// answer, when the read had to go there.
pub(super) async fn ready_to_read(
    state: &AppState,
    c: ReadConsistency,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<axum::response::Response>, Problem> {
    match state.raft.read(c).await {
        Ok(_) => Ok(None),
        Err(ReadError::NotLeader { leader }) => forward(state, leader, Relay::read(uri, headers))
            .await
            .map(Some),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/kv/{key}[?revision=N]`: the value (as of revision `N`), its
/// `mod_revision` as `ETag`, its revisions and the store's as headers.
pub(super) async fn get_key(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Answer {
    let params = read_params(params)?;
    let key = key_of(&state, &uri)?;
    let c = consistency(&params)?;
    let at = revision_param(params.revision.as_deref())?;
    if let Some(leaders_answer) = ready_to_read(&state, c, &uri, &headers).await? {
        return Ok(leaders_answer);
    }
    let (v, read_at) = state.reader.get_at(&key, at)?;
    let v = v.ok_or_else(|| problem_at(no_such_key(), Some(read_at)))?;
    let mut resp = (StatusCode::OK, v.value.clone()).into_response();
    resp.headers_mut().insert(header::ETAG, etag(v.rev));
    with_key_revisions(&mut resp, &v);
    with_revision(&mut resp, read_at);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}
