//! Leases ([`crate::lease`]): `POST /v1/leases` (grant), `GET /v1/leases`
//! (list), `GET /v1/leases/{id}[?keys=true]` (time to live),
//! `DELETE /v1/leases/{id}` (revoke) and `POST /v1/leases/{id}/keepalive`.
//!
//! Grants and revokes go through the log like every write. A keep-alive
//! and a time-to-live need the leader's deadlines: a follower forwards
//! them to the leader (over HTTP, once, as reads are), and the leader
//! answers only after a ReadIndex confirmed it still leads, so no node
//! promises a TTL it cannot keep.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use raft_core::{ProposeError, ReadConsistency, Role};
use serde::Deserialize;
use serde_json::json;

use super::forwarding::{forward, no_leader, unexpected, Relay};
use super::kv::{ready_to_read, show_key};
use super::revisions::with_revision;
use super::{Answer, AppState, Shared};
use crate::command::Outcome;
use crate::lease::{
    LeaseGrant, LeaseLimits, LeaseRefusal, LeaseRevoke, MAX_LEASE_ID, MAX_TTL_SECS,
};
use crate::problem::Problem;

/// Most keys a time-to-live answer lists (`--max-keys-per-lease` bounds
/// them too).
const MAX_KEYS_LISTED: usize = 10_000;

/// The problem answering a [`LeaseRefusal`].
pub(crate) fn problem(r: &LeaseRefusal) -> Problem {
    let (status, kind, title) = match r {
        LeaseRefusal::NotFound => (StatusCode::NOT_FOUND, "lease-not-found", "No such lease"),
        LeaseRefusal::Exists => (StatusCode::CONFLICT, "lease-exists", "Lease exists"),
        LeaseRefusal::TtlTooLarge => (
            StatusCode::BAD_REQUEST,
            "lease-ttl-too-large",
            "Lease TTL too large",
        ),
        LeaseRefusal::TooManyLeases { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-leases",
            "Too many leases",
        ),
        LeaseRefusal::TooManyKeys { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-keys-on-lease",
            "Too many keys on the lease",
        ),
    };
    Problem::new(status, kind, title, format!("{r}; nothing changed"))
}

/// A lease id of a path or body: 1 to `i64::MAX`.
fn lease_id(raw: &str) -> Result<u64, Problem> {
    super::path_id(raw, MAX_LEASE_ID).ok_or_else(|| {
        Problem::bad_request(format!(
            "a lease id is a number from 1 to {MAX_LEASE_ID}, got {raw:?}"
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantBody {
    ttl: u64,
    #[serde(default)]
    id: u64,
}

/// Proposes a grant of `ttl` seconds (clamped up to the minimum) as lease
/// `id` (0: chosen at apply); answers the lease's id and TTL.
pub(super) async fn grant_lease(
    state: &AppState,
    id: u64,
    ttl: u64,
) -> Result<(u64, u64), Problem> {
    if id > MAX_LEASE_ID {
        return Err(Problem::bad_request(format!(
            "a lease id is at most {MAX_LEASE_ID}"
        )));
    }
    if ttl > MAX_TTL_SECS {
        return Err(problem(&LeaseRefusal::TtlTooLarge));
    }
    let limits = LeaseLimits::of(&state.cfg);
    let grant = LeaseGrant {
        id,
        ttl_secs: limits.clamp_ttl(ttl),
        max_leases: limits.max_leases,
    };
    match state.raft.propose(grant.encode()).await {
        Ok(Outcome::LeaseGranted { id, ttl_secs }) => Ok((id, ttl_secs)),
        Ok(Outcome::LeaseRefused(r)) => Err(problem(&r)),
        Ok(other) => Err(unexpected(&other)),
        Err(ProposeError::NotLeader { .. }) => {
            Err(no_leader("no leader is known right now; retry shortly"))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /v1/leases` `{"ttl": N[, "id": N]}`: grants a lease; 200
/// `{"id": ID, "ttl": SECS}`.
pub(super) async fn grant(
    State(state): State<Shared>,
    body: Result<Json<GrantBody>, JsonRejection>,
) -> Answer {
    let Json(body) = body.map_err(|e| Problem::bad_request(format!("bad lease grant: {e}")))?;
    let (id, ttl) = grant_lease(&state, body.id, body.ttl).await?;
    Ok(Json(json!({ "id": id, "ttl": ttl })).into_response())
}

/// `DELETE /v1/leases/{id}`: revokes the lease and deletes its keys at one
/// revision; 200 `{"rev": N}`.
pub(super) async fn revoke(
    State(state): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    let id = lease_id(&id)?;
    let revoke = LeaseRevoke { id, expiry_term: 0 };
    match state.raft.propose(revoke.encode()).await {
        Ok(Outcome::LeaseRevoked { rev }) => {
            metrics::counter!("raft_node_leases_revoked_total").increment(1);
            let mut resp = Json(json!({ "rev": rev })).into_response();
            with_revision(&mut resp, rev);
            Ok(resp)
        }
        Ok(Outcome::LeaseRefused(r)) => Err(problem(&r)),
        Ok(other) => Err(unexpected(&other)),
        Err(ProposeError::NotLeader { leader }) => {
            let relay = Relay::write(method, &uri, &headers, Bytes::new());
            forward(&state, leader, relay).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The term this node leads, confirmed by a ReadIndex; `Err` with the
/// leader's answer when another node leads (the request was forwarded).
async fn confirmed_leader(
    state: &AppState,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Result<u64, axum::response::Response>, Problem> {
    let status = state.raft.status().await.map(|s| s.engine);
    let Some(status) = status.filter(|s| s.role == Role::Leader) else {
        let leader = state.raft.status().await.and_then(|s| s.engine.leader);
        let relay = Relay {
            method,
            ..Relay::read(uri, headers)
        };
        return forward(state, leader, relay).await.map(Err);
    };
    state.raft.read(ReadConsistency::Linearizable).await?;
    // Still the leader of the same term once the read confirmed it.
    match state.raft.status().await.map(|s| s.engine) {
        Some(now) if now.role == Role::Leader && now.term == status.term => Ok(Ok(status.term)),
        _ => Err(no_leader("leadership changed during the request; retry")),
    }
}

/// `POST /v1/leases/{id}/keepalive`: on the leader, the lease lives its
/// full TTL from now; 200 `{"id": ID, "ttl": SECS}`, 404 for a lease that
/// does not exist (any more), 503 `lease-expiring` while the revoke of an
/// expired lease may still apply (a retry then finds it gone, or kept).
pub(super) async fn keep_alive(
    State(state): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    let id = lease_id(&id)?;
    let term = match confirmed_leader(&state, method, &uri, &headers).await? {
        Ok(term) => term,
        Err(leaders_answer) => return Ok(leaders_answer),
    };
    let lease = state
        .reader
        .lease(id)?
        .ok_or_else(|| problem(&LeaseRefusal::NotFound))?;
    if !state.lessor.keep_alive(term, id, lease.ttl_secs) {
        return Err(Problem::unavailable(
            "lease-expiring",
            "Lease expiring",
            "the lease expired and its revoke is in progress, or leadership changed; retry",
        ));
    }
    Ok(Json(json!({ "id": id, "ttl": lease.ttl_secs })).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct TtlParams {
    #[serde(default)]
    keys: bool,
}

/// `GET /v1/leases/{id}[?keys=true]`: on the leader, the TTL left, the TTL
/// granted and (with `keys=true`) the keys attached.
pub(super) async fn time_to_live(
    State(state): State<Shared>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<TtlParams>, QueryRejection>,
) -> Answer {
    let Query(params) = params.map_err(|_| Problem::bad_request("malformed query string"))?;
    let id = lease_id(&id)?;
    let term = match confirmed_leader(&state, Method::GET, &uri, &headers).await? {
        Ok(term) => term,
        Err(leaders_answer) => return Ok(leaders_answer),
    };
    let lease = state
        .reader
        .lease(id)?
        .ok_or_else(|| problem(&LeaseRefusal::NotFound))?;
    let left = state
        .lessor
        .remaining(term, id)
        .map_or(lease.ttl_secs, |d| d.as_secs());
    let mut body = json!({ "id": id, "ttl": left, "granted_ttl": lease.ttl_secs });
    if params.keys {
        let keys = state.reader.lease_keys(id, MAX_KEYS_LISTED)?;
        body["keys"] = keys.iter().map(|k| show_key(k)).collect();
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/leases`: every lease, `{"leases": [{"id": ID, "ttl": SECS}]}`
/// (the TTLs granted), as a linearizable read.
pub(super) async fn list(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> Answer {
    if let Some(leaders_answer) =
        ready_to_read(&state, ReadConsistency::Linearizable, &uri, &headers).await?
    {
        return Ok(leaders_answer);
    }
    let leases = state.reader.leases()?;
    let items: Vec<serde_json::Value> = leases
        .iter()
        .map(|l| json!({ "id": l.id, "ttl": l.ttl_secs, "keys": l.keys }))
        .collect();
    Ok(Json(json!({ "leases": items })).into_response())
}
