//! What operators and probes ask: `GET /v1/cluster` (status), `/healthz`,
//! `/readyz`, `/metrics` and `POST /v1/cluster/snapshot`.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft_core::{DriverStatus, NodeId, Role};
use serde::Deserialize;
use serde_json::json;

use super::{Answer, AppState, Shared};
use crate::problem::Problem;

/// How long a handler waits for the driver's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The driver's status, or the 503 a stopped or stuck node answers with.
pub(super) async fn driver_status(state: &AppState) -> Result<DriverStatus, Problem> {
    match tokio::time::timeout(STATUS_TIMEOUT, state.raft.status()).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Problem::unavailable(
            "shutting-down",
            "Node shutting down",
            "the node has stopped",
        )),
        Err(_) => Err(Problem::unavailable(
            "busy",
            "Node busy",
            "the Raft driver did not answer within 2 s",
        )),
    }
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct ClusterParams {
    /// Also compute a digest of the whole key-value store (a full scan).
    digest: Option<bool>,
}

/// The replication state of each peer, as the leader sees it.
fn peers_json(s: &DriverStatus) -> Vec<serde_json::Value> {
    s.engine
        .peers
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "matched": p.matched,
                "next": p.next,
                "state": p.state.as_str(),
                "inflight": p.inflight,
                "recent_active": p.recent_active,
                "snapshot": p.pending_snapshot.map(|index| json!({
                    "index": index,
                    "sending": s.snapshots_sending.contains(&p.id),
                })),
            })
        })
        .collect()
}

/// `GET /v1/cluster[?digest=true]`: this node's view of the cluster.
pub(super) async fn cluster(
    State(state): State<Shared>,
    params: Result<Query<ClusterParams>, QueryRejection>,
) -> Answer {
    let want_digest = match params {
        Ok(Query(p)) => p.digest.unwrap_or(false),
        Err(e) => return Err(Problem::bad_request(format!("bad query: {e}"))),
    };
    let s = driver_status(&state).await?;
    let e = &s.engine;
    let addr = |id: NodeId| {
        state
            .members
            .get(id)
            .map(|m| json!({ "peer": m.peer_addr.to_string(), "client": m.client_addr }))
    };
    let digest = if want_digest {
        // A full scan: off the async workers, opt-in.
        let reader = state.reader.clone();
        tokio::task::spawn_blocking(move || reader.digest().ok())
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    Ok(Json(json!({
        "id": e.id,
        "cluster_id": state.transport.cluster_id().map(crate::node::cluster_id::to_hex),
        "role": e.role.as_str(),
        "term": e.term,
        "leader": e.leader,
        "commit": e.commit,
        "applied": s.applied,
        "last_index": e.last_index,
        "membership": {
            "voters": e.membership.voters(),
            "learners": e.membership.learners(),
            "outgoing_voters": e.membership.voters_outgoing(),
            "joint": e.membership.is_joint(),
            "index": e.membership_index,
            "committed": e.membership_committed,
        },
        "snapshot": s.snapshot.as_ref().map(|m| json!({
            "index": m.last_log_id.index,
            "term": m.last_log_id.term,
        })),
        "first_index": e.first_index,
        "installing_snapshot": e.installing_snapshot.map(|id| id.index),
        "members": e.membership.members().into_iter().map(|id| json!({ "id": id, "addresses": addr(id) })).collect::<Vec<_>>(),
        "peers": peers_json(&s),
        "kv": digest.map(|(count, crc)| json!({ "keys": count, "digest": format!("{crc:08x}") })),
    }))
    .into_response())
}

/// How long the log's current write has run, with the limit, when it has
/// run longer than `--storage-stall-timeout-ms`.
fn storage_stall(state: &AppState) -> Option<(Duration, Duration)> {
    let limit = state.cfg.storage_stall_timeout?;
    let busy = state.raft.storage_busy_for()?;
    (busy > limit).then_some((busy, limit))
}

/// `GET /metrics`: the Prometheus exposition.
pub(super) async fn metrics(State(state): State<Shared>) -> Answer {
    // A write that hangs never records its duration: expose the one in
    // progress.
    metrics::gauge!("raft_storage_busy_seconds").set(
        state
            .raft
            .storage_busy_for()
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    crate::monitoring::update_process_metrics();
    let Some(h) = &state.metrics else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no-metrics",
            "Metrics not installed",
            "this process has no Prometheus exporter",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.render(),
    )
        .into_response())
}

/// Liveness: `ok` while the Raft driver runs; 503 naming the failure once
/// the log storage or the state machine failed (the process then exits),
/// 503 `storage-stalled` while a log write has run longer than
/// `--storage-stall-timeout-ms`, and 503 once the driver has stopped for
/// any other reason.
pub(super) async fn healthz(State(state): State<Shared>) -> Result<&'static str, Problem> {
    if let Some(reason) = state.raft.failure() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node-failed",
            "Node failed",
            format!("raft stopped because its storage or state machine failed: {reason}; the process is exiting"),
        ));
    }
    if let Some((busy, limit)) = storage_stall(&state) {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-stalled",
            "Storage stalled",
            format!(
                "a log write has been running for {:.1} s (limit {:.1} s): the disk is not \
                 answering, and this node makes nothing durable until it does",
                busy.as_secs_f64(),
                limit.as_secs_f64()
            ),
        ));
    }
    if state.raft.is_stopped() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node-stopped",
            "Node stopped",
            "raft has stopped; the process is shutting down",
        ));
    }
    Ok("ok\n")
}

/// 503 with `Retry-After` and the readiness body.
fn not_ready(body: serde_json::Value) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(body),
    )
        .into_response()
}

/// Readiness: 200 once a leader is known and this node applied all it
/// knows committed; 503 (a JSON body, not a problem) otherwise or while
/// storage stalls.
pub(super) async fn readyz(State(state): State<Shared>) -> Answer {
    let s = driver_status(&state).await?;
    let e = &s.engine;
    if let Some((busy, _)) = storage_stall(&state) {
        let body = json!({ "ready": false, "storage_stalled_seconds": busy.as_secs_f64(), "leader": e.leader, "commit": e.commit, "applied": s.applied });
        return Ok(not_ready(body));
    }
    let has_leader = e.leader.is_some() || e.role == Role::Leader;
    let caught_up = s.applied >= e.commit;
    let body = json!({ "ready": has_leader && caught_up, "leader": e.leader, "commit": e.commit, "applied": s.applied });
    if has_leader && caught_up {
        Ok(Json(body).into_response())
    } else {
        Ok(not_ready(body))
    }
}

/// `POST /v1/cluster/snapshot`: this node takes a snapshot now and compacts
/// its log (every node snapshots on its own; this is not forwarded).
pub(super) async fn take_snapshot(State(state): State<Shared>) -> Answer {
    let meta = state.raft.snapshot().await?;
    Ok(Json(json!({
        "index": meta.last_log_id.index,
        "term": meta.last_log_id.term,
    }))
    .into_response())
}
