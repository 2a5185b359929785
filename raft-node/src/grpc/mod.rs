//! etcd's v3 gRPC API on its own port (`--grpc-listen`), beside the HTTP
//! API, so that etcd clients (`etcdctl`, `clientv3`, the `etcd-client`
//! crate) work unchanged. The wire definitions are `proto/etcd/*.proto`
//! (etcd's packages, messages and field numbers), compiled by `build.rs`.
//!
//! One file per service: `kv` (Range, Put, DeleteRange, Compact, Txn;
//! `txn` maps transactions onto [`crate::txn`]),
//! `maintenance` (Status, Alarm, Defragment, Snapshot, MoveLeader),
//! `cluster` (the member calls), `auth` (Authenticate: logging in with a
//! token), `watch` (the Watch stream over [`crate::watch`]), `lease`
//! (grant, revoke, the KeepAlive stream, TimeToLive and Leases over the
//! HTTP API's `/v1/leases` routes, see [`crate::lease`]), `server`
//! (listener, TLS, tokens, limits).
//!
//! Reads go straight to the store. Writes and admin calls go through the
//! HTTP API's own handlers, called in-process (no socket): the same write
//! path (forwarding from followers), the same token rules (admin for
//! member changes, compaction, snapshots), the same limits and errors,
//! which `status_of` turns into etcd's gRPC codes and messages.

mod auth;
mod authority;
mod cluster;
mod kv;
mod lease;
mod maintenance;
mod server;
mod txn;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::http::AppState;
use crate::problem::Problem;
use crate::store::StoreError;

pub use server::{serve, GrpcServing};

/// The code generated from `proto/etcd/*.proto` (lints are not ours to fix).
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    rustdoc::all
)]
pub mod pb {
    /// `mvccpb`: keys, values and events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `etcdserverpb`: the services.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::ResponseHeader;

/// etcd's message for a read below the compacted revision.
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's message for a read above the current revision.
pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
/// etcd's message when no leader is known.
pub const NO_LEADER: &str = "etcdserver: no leader";
/// etcd's message when a request's outcome is unknown.
pub const TIMED_OUT: &str = "etcdserver: request timed out";
/// etcd's message for an empty key.
pub const NO_KEY: &str = "etcdserver: key is not provided";
/// etcd's message for a lease that does not exist.
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// What every service needs: the HTTP API's state and routes.
#[derive(Clone)]
pub(crate) struct Ctx {
    state: Arc<AppState>,
    /// The HTTP API's routes, called in-process for writes and admin calls.
    http: axum::Router,
    /// This node's gRPC URL, as the member list shows it.
    grpc_url: String,
    /// Login attempts (`--grpc-auth-failures-per-sec`).
    auth_attempts: Arc<auth::AttemptBucket>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("grpc_url", &self.grpc_url)
            .finish_non_exhaustive()
    }
}

/// An answer of the HTTP API to an in-process call.
struct HttpAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Ctx {
    /// `ResponseHeader` at `revision` (the store's current one when `None`).
    async fn header(&self, revision: Option<u64>) -> ResponseHeader {
        let revision = revision
            .or_else(|| self.state.reader.revisions().ok().map(|r| r.current))
            .unwrap_or(0);
        let term =
            match tokio::time::timeout(Duration::from_secs(1), self.state.raft.status()).await {
                Ok(Some(s)) => s.engine.term,
                _ => 0,
            };
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.state.id,
            revision: to_i64(revision),
            raft_term: term,
        }
    }

    /// The 128-bit cluster id folded to etcd's 64 bits (0 when the store
    /// predates cluster ids).
    fn cluster_id(&self) -> u64 {
        self.state
            .transport
            .cluster_id()
            .map_or(0, |id| (id as u64) ^ ((id >> 64) as u64))
    }

    /// Calls not served by an HTTP route check the user token here.
    fn check_user(&self, meta: &MetadataMap) -> Result<(), Status> {
        crate::http::check_bearer(&self.state.cfg, &headers_of(meta), false)
            .map_err(|p| status_of(&p))
    }

    /// Admin calls not served by an HTTP route check the admin token here.
    fn check_admin(&self, meta: &MetadataMap) -> Result<(), Status> {
        crate::http::check_bearer(&self.state.cfg, &headers_of(meta), true)
            .map_err(|p| status_of(&p))
    }

    /// Calls the HTTP API's route `path` in-process with the caller's
    /// token. A problem answer becomes its gRPC status.
    async fn call_http(
        &self,
        method: Method,
        path: &str,
        meta: &MetadataMap,
        body: Bytes,
    ) -> Result<HttpAnswer, Status> {
        let mut headers = headers_of(meta);
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        // Announced, so the body counts against the HTTP API's memory budget.
        headers.insert("content-length", HeaderValue::from(body.len()));
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body))
            .map_err(|e| Status::internal(format!("building the request: {e}")))?;
        *req.headers_mut() = headers;
        let resp = self
            .http
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| Status::internal(format!("the HTTP API failed: {e}")))?;
        let (parts, body) = resp.into_parts();
        if parts.status.is_success() {
            return Ok(HttpAnswer {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        Err(problem_answer(parts.status, &bytes))
    }

    /// [`Ctx::call_http`], answering its JSON body.
    async fn call_json(
        &self,
        method: Method,
        path: &str,
        meta: &MetadataMap,
        body: Bytes,
    ) -> Result<(HeaderMap, serde_json::Value), Status> {
        let a = self.call_http(method, path, meta, body).await?;
        let bytes = axum::body::to_bytes(a.body, 16 << 20)
            .await
            .map_err(|e| Status::internal(format!("reading the answer: {e}")))?;
        let _ = a.status;
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((a.headers, v))
    }
}

/// The token of a call as the HTTP API's `Authorization: Bearer` header:
/// from `authorization: Bearer <token>`, or etcd's `token: <token>` or
/// `authorization: <token>` (what etcd clients send after Authenticate).
fn headers_of(meta: &MetadataMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    let token = meta
        .get("authorization")
        .or_else(|| meta.get("token"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
    if let Some(v) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        h.insert("authorization", v);
    }
    h
}

/// An `i64` of etcd's wire from a revision or count.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The gRPC status of an HTTP problem answer (`application/problem+json`).
fn problem_answer(status: StatusCode, body: &[u8]) -> Status {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let kind = v["type"]
        .as_str()
        .and_then(|t| t.strip_prefix(crate::problem::TYPE_PREFIX))
        .unwrap_or("");
    let detail = v["detail"].as_str().unwrap_or("");
    status_from(status, kind, detail)
}

/// The gRPC status of a [`Problem`], with etcd's code and message where
/// clients match on them.
pub(crate) fn status_of(p: &Problem) -> Status {
    status_from(p.status(), p.kind(), p.detail())
}

fn status_from(status: StatusCode, kind: &str, detail: &str) -> Status {
    match kind {
        "revision-compacted" => return Status::out_of_range(COMPACTED),
        "future-revision" => return Status::out_of_range(FUTURE_REVISION),
        "no-leader" => return Status::unavailable(NO_LEADER),
        "outcome-unknown" => return Status::unavailable(TIMED_OUT),
        "unknown-member" => return Status::not_found("etcdserver: member not found"),
        "lease-not-found" => return Status::not_found(LEASE_NOT_FOUND),
        "lease-exists" => return Status::failed_precondition("etcdserver: lease already exists"),
        "lease-ttl-too-large" => return Status::out_of_range("etcdserver: too large lease TTL"),
        "too-many-leases" | "too-many-keys-on-lease" => {
            return Status::resource_exhausted(format!("raft-node: {kind}: {detail}"))
        }
        _ => {}
    }
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::URI_TOO_LONG | StatusCode::UNPROCESSABLE_ENTITY => {
            Code::InvalidArgument
        }
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => Code::FailedPrecondition,
        StatusCode::GATEWAY_TIMEOUT => return Status::unavailable(TIMED_OUT),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::MISDIRECTED_REQUEST => Code::Unavailable,
        StatusCode::GONE => Code::OutOfRange,
        _ => Code::Internal,
    };
    Status::new(code, format!("raft-node: {kind}: {detail}"))
}

/// The gRPC status of a store error.
fn store_status(e: StoreError) -> Status {
    status_of(&Problem::from(e))
}

/// `Unimplemented`, naming what is missing.
fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("raft-node does not implement {what} yet"))
}
