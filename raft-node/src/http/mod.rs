//! The HTTP API (the contract is in docs/architecture.md): key-value reads and
//! writes with preconditions, listing, cluster status, leadership transfer,
//! metrics and health. Any node serves any request: a follower forwards
//! what needs the leader, once (a forwarded request is never forwarded again).
//!
//! One file per resource: `kv` (one key), `listing` (`GET /v1/kv`),
//! `cluster` (membership and leadership), `txn` (`POST /v1/txn`), `lease`
//! (`/v1/leases`), `revisions` (revision headers,
//! `?revision=`, `POST /v1/cluster/compact`), `ops` (status, health,
//! metrics, snapshots), `backup` (`GET /v1/cluster/backup`), `watch`
//! (`GET /v1/watch`, server-sent events); and the layers around them: `auth` (bearer
//! tokens), `limits` (bodies, deadlines, load shedding, request metrics)
//! and `forwarding` (relaying to the leader). Handlers return
//! `Result<_, Problem>`; each error type's response is in
//! [`crate::problem`].

mod auth;
mod backup;
mod cluster;
pub(crate) use cluster::{publish_own_grpc_url, PublishError};
mod forwarding;
mod kv;
pub(crate) mod lease;
mod limits;
mod listing;
mod ops;
mod revisions;
mod txn;
mod watch;

use std::sync::Arc;

use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use raft_core::{NodeId, RaftHandle};

use crate::command::Outcome;
use crate::config::NodeConfig;
use crate::members::MemberDirectory;
use crate::problem::Problem;
use crate::store::KvReader;

pub(crate) use auth::{check_bearer, principal};
pub use forwarding::FORWARDED_HEADER;
pub(crate) use limits::overloaded;
pub use limits::HttpLimits;

/// A handler's answer: its response (or the leader's, when forwarded), or
/// the problem that stopped it.
type Answer = Result<Response, Problem>;

/// What every handler needs.
pub struct AppState {
    /// This node.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: RaftHandle<Outcome>,
    /// Reads of the key-value store.
    pub reader: KvReader,
    /// Settings.
    pub cfg: Arc<NodeConfig>,
    /// Known members and their addresses.
    pub members: MemberDirectory,
    /// The peer transport (to check a member's new address before it is
    /// recorded).
    pub transport: raft_net_quic::QuicTransport,
    /// For forwarding to the leader.
    pub client: reqwest::Client,
    /// The Prometheus exporter, when installed.
    pub metrics: Option<PrometheusHandle>,
    /// Slots and memory of the API's limits.
    pub limits: Arc<HttpLimits>,
    /// Watches of this node's store (`GET /v1/watch`).
    pub watches: crate::watch::Watches,
    /// The leader's lease deadlines (keep-alives reset them).
    pub lessor: crate::lease::Lessor,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

type Shared = Arc<AppState>;

/// 405 with a problem body; axum keeps the `Allow` header listing the
/// route's methods.
async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn no_such_route(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-such-route",
        "No such route",
        format!("{} is not an API path", uri.path()),
    )
}

/// An id in a path (a node's, a lease's): a decimal number from 1 to
/// `max`; `None` for anything else.
fn path_id(raw: &str, max: u64) -> Option<u64> {
    raw.parse::<u64>().ok().filter(|id| (1..=max).contains(id))
}

/// The API's routes, limits and request metrics.
///
/// `/v1/...` requests pass, outermost first: the token check, the body
/// read (refused at once from `Content-Length` above `--max-value-bytes`,
/// bounded by `--http-body-timeout-ms`), the request deadline
/// (`--http-request-deadline-ms`), and the concurrency limit
/// (`--max-concurrent-requests`, shedding with 503 beyond it), which a
/// request holds only while its handler runs. `/healthz`, `/readyz` and
/// `/metrics` are outside all of these, so a flooded node still answers its
/// probes.
pub fn router(state: Shared) -> Router {
    let body_limit = state.cfg.max_value_bytes;
    let shed = state.limits.request_slots();
    let api = Router::new()
        .route("/v1/kv", get(listing::list))
        .route("/v1/kv/", get(listing::list))
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route("/v1/txn", post(txn::txn))
        .route("/v1/leases", get(lease::list).post(lease::grant))
        .route(
            "/v1/leases/{id}",
            get(lease::time_to_live).delete(lease::revoke),
        )
        .route("/v1/leases/{id}/keepalive", post(lease::keep_alive))
        .route("/v1/cluster", get(ops::cluster))
        .route(
            "/v1/cluster/transfer-leader",
            post(cluster::transfer_leader),
        )
        .route("/v1/cluster/learners", post(cluster::add_learner))
        .route("/v1/cluster/voters/{id}", post(cluster::promote))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove_member).put(cluster::update_member),
        )
        .route("/v1/cluster/snapshot", post(ops::take_snapshot))
        .route("/v1/cluster/compact", post(revisions::compact))
        .route("/v1/cluster/backup", get(backup::backup))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_such_route)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            shed,
            limits::shed_load,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ));
    // Watches are long-lived: outside the request deadline and the
    // concurrency limit (they have their own, `--watch-max-watchers`), but
    // behind the token check like every read.
    let watches = Router::new().route("/v1/watch", get(watch::watch)).layer(
        axum::middleware::from_fn_with_state(state.clone(), auth::authorize),
    );
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .merge(watches)
        .merge(api)
        // The operator routes too answer a wrong method with a problem.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(limits::record_metrics))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::path_id;

    #[test]
    fn a_path_id_is_a_decimal_number_from_one_to_the_maximum() {
        assert_eq!(path_id("1", 10), Some(1));
        assert_eq!(path_id("10", 10), Some(10));
        assert_eq!(path_id("18446744073709551615", u64::MAX), Some(u64::MAX));
        for bad in [
            "0",
            "11",
            "",
            "-1",
            "+1 ",
            "abc",
            "1.0",
            "0x1",
            "18446744073709551616",
        ] {
            assert_eq!(path_id(bad, 10), None, "{bad:?}");
        }
    }
}
