//! The HTTP API (the contract is in docs/architecture.md): key-value reads and
//! writes with preconditions, listing, cluster status, leadership transfer,
//! metrics and health. Any node serves any request: a follower forwards
//! what needs the leader, once (a forwarded request is never forwarded again).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use raft_core::driver::{MembershipError, SnapshotError};
use raft_core::{
    ChangeError, Membership, MembershipChange, NodeId, ProposeError, RaftHandle, ReadConsistency,
    ReadError, Role, TransferError,
};
use serde::Deserialize;
use serde_json::json;

use crate::command::{Command, Op, Outcome, Precondition};
use crate::config::{Member, NodeConfig};
use crate::problem::Problem;
use crate::store::KvReader;

/// Marks a request forwarded by another node; it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-raft-forwarded-by";

/// Characters kept literally when a key is shown percent-encoded.
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

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
    pub members: Arc<RwLock<HashMap<NodeId, Member>>>,
    /// For forwarding to the leader.
    pub client: reqwest::Client,
    /// The Prometheus exporter, when installed.
    pub metrics: Option<PrometheusHandle>,
    /// Slots and memory of the API's limits.
    pub limits: Arc<HttpLimits>,
}

/// The API's shared limits: slots for running requests, bodies being
/// received and listings being read, and the memory budget (one permit per
/// byte) of bodies and answers held in memory.
#[derive(Debug)]
pub struct HttpLimits {
    requests: Arc<tokio::sync::Semaphore>,
    bodies: Arc<tokio::sync::Semaphore>,
    listings: Arc<tokio::sync::Semaphore>,
    buffer: Arc<tokio::sync::Semaphore>,
}

impl HttpLimits {
    /// The limits `cfg` sets.
    pub fn new(cfg: &NodeConfig) -> Self {
        let sem = |n: usize| Arc::new(tokio::sync::Semaphore::new(n));
        Self {
            requests: sem(cfg.max_concurrent_requests),
            bodies: sem(cfg.http_max_receiving_bodies),
            listings: sem(cfg.max_concurrent_listings),
            buffer: sem(cfg
                .http_buffer_bytes
                .min(tokio::sync::Semaphore::MAX_PERMITS)),
        }
    }

    /// `n` bytes of the memory budget, now or never.
    fn reserve(&self, n: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = u32::try_from(n.max(1)).ok()?;
        self.buffer.clone().try_acquire_many_owned(n).ok()
    }
}

/// 503 for a request turned away by one of the API's limits.
fn overloaded(what: &str) -> Response {
    metrics::counter!("raft_node_http_requests_shed_total").increment(1);
    Problem::unavailable(
        "overloaded",
        "Overloaded",
        format!("this node is at its limit of {what}; retry shortly"),
    )
    .into_response()
}

/// A response body of chunks already in memory, with its exact length
/// (so the answer carries `Content-Length`), holding `guard` until sent or
/// dropped.
struct ChunksBody<G> {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
    _guard: G,
}

impl<G> ChunksBody<G> {
    fn new(chunks: Vec<Bytes>, guard: G) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: chunks.into(),
            remaining,
            _guard: guard,
        }
    }
}

impl<G: Unpin> http_body::Body for ChunksBody<G> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.remaining -= c.len() as u64;
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

type Shared = Arc<AppState>;

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
    let shed = state.limits.requests.clone();
    let api = Router::new()
        .route("/v1/kv", get(list))
        .route("/v1/kv/", get(list))
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/transfer-leader", post(transfer_leader))
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/voters/{id}", post(promote))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/v1/cluster/snapshot", post(take_snapshot))
        // A problem body like every other error; axum keeps the `Allow`
        // header listing the route's methods.
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
        .fallback(|uri: Uri| async move {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no-such-route",
                "No such route",
                format!("{} is not an API path", uri.path()),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(shed, shed_load))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        // The operator routes too answer a wrong method with a problem.
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
        .layer(axum::middleware::from_fn(record_metrics))
        .with_state(state)
}

/// A write: its outcome is unknown when it runs out of time.
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Bounds a request's run once its body arrived
/// (`--http-request-deadline-ms`).
async fn request_deadline(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let write = is_write(req.method());
    let limit = state.cfg.http_request_deadline;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!("raft_node_http_deadline_exceeded_total").increment(1);
            let detail = format!(
                "the request ran past the deadline of {} ms",
                limit.as_millis()
            );
            if write {
                Problem::outcome_unknown(detail).into_response()
            } else {
                Problem::unavailable("request-deadline", "Request deadline exceeded", detail)
                    .into_response()
            }
        }
    }
}

fn value_too_large(limit: usize) -> Response {
    let mut resp = Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "value-too-large",
        "Value too large",
        format!("the value exceeds the limit of {limit} bytes"),
    )
    .with("limit", limit)
    .into_response();
    // The body was not read: the connection cannot carry another request.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Reads the whole body before the handler runs and before the request
/// takes a concurrency slot: a body announced above `--max-value-bytes`
/// gets 413 from `Content-Length` alone, and a body that does not arrive
/// within `--http-body-timeout-ms` gets 408. At most
/// `--http-max-receiving-bodies` bodies arrive at once, and their bytes
/// come out of the memory budget (`--http-buffer-mib`), held until the
/// handler is done; beyond either, 503.
async fn read_body(State(state): State<Shared>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let limit = state.cfg.max_value_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        metrics::counter!("raft_node_http_bodies_refused_total", "reason" => "too_large")
            .increment(1);
        return value_too_large(limit);
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if !chunked && declared.unwrap_or(0) == 0 {
        return next.run(req).await;
    }
    let Ok(slot) = state.limits.bodies.clone().try_acquire_owned() else {
        return overloaded("request bodies being received (--http-max-receiving-bodies)");
    };
    // A declared length is reserved whole, a chunked body as it arrives.
    let mut budget = match declared {
        Some(n) => match state.limits.reserve(n as usize) {
            Some(p) => Some(p),
            None => return overloaded("memory for request bodies (--http-buffer-mib)"),
        },
        None => None,
    };
    let (parts, mut body) = req.into_parts();
    let limits = state.limits.clone();
    let collect = async {
        let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Problem::bad_request(format!("cannot read the body: {e}")).into_response()
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > limit {
                metrics::counter!("raft_node_http_bodies_refused_total", "reason" => "too_large")
                    .increment(1);
                return Err(value_too_large(limit));
            }
            if declared.is_none() {
                let Some(p) = limits.reserve(data.len()) else {
                    return Err(overloaded("memory for request bodies (--http-buffer-mib)"));
                };
                match &mut budget {
                    Some(b) => b.merge(p),
                    None => budget = Some(p),
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf)
    };
    let buf = match tokio::time::timeout(state.cfg.http_body_timeout, collect).await {
        Ok(Ok(buf)) => buf,
        Ok(Err(resp)) => return resp,
        Err(_) => {
            metrics::counter!("raft_node_http_bodies_refused_total", "reason" => "timeout")
                .increment(1);
            let mut resp = Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                format!(
                    "the body did not arrive within {} ms",
                    state.cfg.http_body_timeout.as_millis()
                ),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    drop(slot);
    let req = Request::from_parts(parts, axum::body::Body::from(buf));
    let resp = next.run(req).await;
    drop(budget);
    resp
}

/// Serves at most `--max-concurrent-requests` API requests at once and
/// answers 503 with `Retry-After` beyond, instead of queueing without
/// bound. A request holds its slot until its answer is sent.
async fn shed_load(
    State(slots): State<Arc<tokio::sync::Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    match slots.try_acquire_owned() {
        Ok(permit) => next
            .run(req)
            .await
            .map(|b| axum::body::Body::new(crate::server::GuardedBody::new(b, permit))),
        Err(_) => overloaded("requests served at once (--max-concurrent-requests)"),
    }
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // A fixed label set: clients cannot mint new series with odd methods.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("raft_node_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("raft_node_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Compares two secrets in constant time without revealing their lengths:
/// the SHA-256 digests of both (32 bytes whatever the inputs) are compared
/// with `subtle`, so neither where they differ nor how long the expected
/// token is shows in the time taken.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The principal a request authenticated as, by the bearer token it
/// presents: `user` (`--auth-token-file`) or `admin`
/// (`--admin-token-file`); `None` without a valid token. It scopes
/// idempotency keys (carried in the proposed command).
pub(crate) fn principal(cfg: &NodeConfig, headers: &HeaderMap) -> Option<String> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)?;
    let matches = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| same_secret(t.as_bytes(), presented.as_bytes()))
    };
    if matches(&cfg.auth_token) {
        Some("user".to_owned())
    } else if matches(&cfg.admin_token) {
        Some("admin".to_owned())
    } else {
        None
    }
}

/// Admin routes: they change the cluster rather than the data.
fn is_admin(method: &Method, path: &str) -> bool {
    path.starts_with("/v1/cluster/") && method != Method::GET
}

/// Bearer-token check of `/v1/` routes (when tokens are configured). A
/// request without valid credentials gets 401 and reaches no handler.
async fn authorize(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/v1/") && path != "/v1" {
        return next.run(req).await;
    }
    let admin = is_admin(req.method(), path);
    let cfg = &state.cfg;
    let accepted: Vec<&str> = if admin {
        match (&cfg.admin_token, &cfg.auth_token) {
            (Some(a), _) => vec![a.as_str()],
            (None, Some(t)) => vec![t.as_str()],
            (None, None) => vec![],
        }
    } else {
        cfg.auth_token
            .iter()
            .chain(cfg.admin_token.iter().filter(|_| cfg.auth_token.is_some()))
            .map(String::as_str)
            .collect()
    };
    if accepted.is_empty() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return unauthorized("this API needs `Authorization: Bearer <token>`");
    };
    if accepted
        .iter()
        .any(|t| same_secret(t.as_bytes(), presented.as_bytes()))
    {
        return next.run(req).await;
    }
    let is_user_token = cfg
        .auth_token
        .as_deref()
        .is_some_and(|t| same_secret(t.as_bytes(), presented.as_bytes()));
    if admin && is_user_token {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "admin-token-required",
            "Admin token required",
            "this route needs the admin token",
        )
        .into_response();
    }
    unauthorized("the bearer token is not valid")
}

fn unauthorized(detail: &str) -> Response {
    let mut resp = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"raft-node\""),
    );
    resp
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

fn show_key(key: &[u8]) -> String {
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
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
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
    }
}

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

/// Sends the request to the leader and relays its answer.
async fn forward(
    state: &AppState,
    leader: Option<NodeId>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    is_write: bool,
) -> Response {
    let no_leader =
        |detail: String| Problem::unavailable("no-leader", "No leader", detail).into_response();
    let Some(leader) = leader.filter(|l| *l != state.id) else {
        return no_leader("no leader is known right now; retry shortly".into());
    };
    if forwarded(headers) {
        return no_leader(format!("this node is not the leader (leader: {leader}) and the request was already forwarded once"));
    }
    let addr = state
        .members
        .read()
        .ok()
        .and_then(|m| m.get(&leader).map(|m| m.client_addr.clone()));
    let Some(addr) = addr else {
        return no_leader(format!(
            "the leader is node {leader}, whose client address is unknown here"
        ));
    };
    let scheme = if state.cfg.client_tls {
        "https"
    } else {
        "http"
    };
    let url = format!(
        "{scheme}://{addr}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut req = state
        .client
        .request(method, &url)
        .header(FORWARDED_HEADER, state.id.to_string())
        .timeout(state.cfg.request_timeout + std::time::Duration::from_secs(1))
        .body(body);
    for name in [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::CONTENT_TYPE,
        header::ACCEPT,
        header::AUTHORIZATION,
    ] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    if let Some(v) = headers.get("idempotency-key") {
        req = req.header("idempotency-key", v);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut out = Response::builder().status(status.as_u16());
            for (name, value) in resp.headers() {
                if matches!(
                    name.as_str(),
                    "content-type" | "etag" | "retry-after" | "x-raft-leader"
                ) {
                    out = out.header(name.as_str(), value.as_bytes());
                }
            }
            if !is_write {
                // Reads (a listing can be megabytes) are taken whole from
                // the leader, out of the memory budget, and sent on with
                // their length; a slow client does not hold the leader.
                return relay_read(state, out, resp).await;
            }
            match resp.bytes().await {
                Ok(b) => out
                    .body(axum::body::Body::from(b))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
                Err(e) if is_write => {
                    Problem::outcome_unknown(format!("the leader's answer was lost: {e}"))
                        .into_response()
                }
                Err(e) => no_leader(format!("the leader's answer was lost: {e}")),
            }
        }
        // Nothing reached the leader: the write did not happen.
        Err(e) if e.is_connect() || e.is_builder() => no_leader(format!(
            "cannot reach the leader (node {leader} at {addr}): {e}"
        )),
        Err(e) if is_write => Problem::outcome_unknown(format!(
            "forwarded to the leader (node {leader}) but got no answer: {e}"
        ))
        .into_response(),
        Err(e) => no_leader(format!(
            "forwarded to the leader (node {leader}) but got no answer: {e}"
        )),
    }
}

/// The leader's answer to a forwarded read, read whole under the memory
/// budget, sent on with its exact length.
async fn relay_read(
    state: &AppState,
    out: axum::http::response::Builder,
    mut resp: reqwest::Response,
) -> Response {
    let mut budget: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut chunks = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                let Some(p) = state.limits.reserve(c.len()) else {
                    return overloaded("memory for answers being sent (--http-buffer-mib)");
                };
                match &mut budget {
                    Some(b) => b.merge(p),
                    None => budget = Some(p),
                }
                chunks.push(c);
            }
            Ok(None) => break,
            Err(e) => {
                return Problem::unavailable(
                    "no-leader",
                    "No leader",
                    format!("the leader's answer was lost: {e}"),
                )
                .into_response()
            }
        }
    }
    out.body(axum::body::Body::new(ChunksBody::new(chunks, budget)))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

fn propose_problem(e: &ProposeError) -> Problem {
    match e {
        ProposeError::NotLeader { .. } => {
            Problem::unavailable("no-leader", "No leader", e.to_string())
        }
        ProposeError::TransferInProgress => Problem::unavailable(
            "transfer-in-progress",
            "Leadership transfer in progress",
            e.to_string(),
        ),
        ProposeError::Overloaded => {
            Problem::unavailable("overloaded", "Too many pending writes", e.to_string())
        }
        ProposeError::Superseded { .. } => {
            Problem::unavailable("superseded", "Write lost to a leader change", e.to_string())
        }
        ProposeError::ShuttingDown { appended: false } => {
            Problem::unavailable("shutting-down", "Node shutting down", e.to_string())
        }
        _ => Problem::outcome_unknown(e.to_string()),
    }
}

fn read_problem(e: &ReadError) -> Problem {
    match e {
        ReadError::NotLeader { .. } => {
            Problem::unavailable("no-leader", "No leader", e.to_string())
        }
        ReadError::Overloaded => {
            Problem::unavailable("overloaded", "Too many pending reads", e.to_string())
        }
        ReadError::Timeout => Problem::unavailable(
            "read-timeout",
            "Leadership not confirmed in time",
            e.to_string(),
        ),
        ReadError::ShuttingDown => {
            Problem::unavailable("shutting-down", "Node shutting down", e.to_string())
        }
        // A failed read observed nothing: retrying is safe.
        _ => Problem::unavailable("read-failed", "Read failed", e.to_string()),
    }
}

async fn write(
    state: Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    op: Op,
) -> Response {
    let key = match key_of(&state, &uri) {
        Ok(k) => k,
        Err(p) => return p.into_response(),
    };
    let precondition = match precondition(&headers) {
        Ok(p) => p,
        Err(p) => return p.into_response(),
    };
    let idem = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(p) => return p.into_response(),
    };
    let cmd = Command {
        op,
        key,
        precondition,
        principal: idem.as_ref().and_then(|_| principal(&state.cfg, &headers)),
        idempotency_key: idem,
    };
    match state.raft.propose(cmd.encode()).await {
        Ok(Outcome::Applied { rev }) => {
            let mut resp = Json(json!({ "rev": rev })).into_response();
            resp.headers_mut().insert(header::ETAG, etag(rev));
            resp
        }
        Ok(Outcome::PreconditionFailed { current }) => Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            match current {
                Some(r) => format!("the key is at revision {r}"),
                None => "the key does not exist".to_owned(),
            },
        )
        .with("current_rev", current)
        .into_response(),
        Ok(Outcome::NotFound) => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such key",
            "the key does not exist",
        )
        .into_response(),
        Ok(Outcome::IdempotencyConflict) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used for a different request; nothing was applied",
        )
        .into_response(),
        Ok(other) => Problem::storage(format!("unexpected outcome {other:?}")).into_response(),
        Err(ProposeError::NotLeader { leader }) => {
            forward(&state, leader, method, &uri, &headers, body, true).await
        }
        Err(e) => propose_problem(&e).into_response(),
    }
}

async fn put_key(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value-too-large",
                "Value too large",
                format!(
                    "the value exceeds the limit of {} bytes",
                    state.cfg.max_value_bytes
                ),
            )
            .with("limit", state.cfg.max_value_bytes)
            .into_response()
        }
        Err(r) => {
            return Problem::bad_request(format!("cannot read the body: {r}")).into_response()
        }
    };
    let op = Op::Put(body.clone());
    write(state, method, uri, headers, body, op).await
}

async fn delete_key(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    write(state, method, uri, headers, Bytes::new(), Op::Delete).await
}

#[derive(Debug, Deserialize)]
struct ReadParams {
    consistency: Option<String>,
    prefix: Option<String>,
    limit: Option<usize>,
    /// Where a listing goes on: the `next` of the previous page.
    cursor: Option<String>,
    /// A listing without values.
    keys_only: Option<bool>,
}

/// One item of a listing, as JSON.
#[derive(serde::Serialize)]
struct ListItem<'a> {
    key: String,
    rev: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

/// A listing page encoded as JSON chunks, built on a blocking thread, and
/// the memory budget it holds until sent.
struct ListPage {
    chunks: Vec<Bytes>,
    budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Why a listing page could not be built.
enum ListFailure {
    Store(crate::store::StoreError),
    /// Not even one item fits the memory budget.
    NoMemory,
    /// The request went away.
    Cancelled,
}

/// Reads and encodes one page: at most `limit` items, stopping after the
/// item that brings the answer, or the bytes read from the store (values
/// included, with `keys_only` too), to `max_bytes`, and before an item the
/// memory budget cannot hold.
#[allow(clippy::too_many_arguments)]
fn list_page(
    reader: &KvReader,
    limits: &HttpLimits,
    cancel: &std::sync::atomic::AtomicBool,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    max_bytes: usize,
    keys_only: bool,
) -> Result<ListPage, ListFailure> {
    use base64::Engine;
    use std::sync::atomic::Ordering;
    let mut chunks = vec![Bytes::from_static(b"{\"items\":[")];
    let mut budget: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let (mut encoded, mut read, mut count) = (0usize, 0usize, 0usize);
    let mut last: Option<Vec<u8>> = None;
    let mut failure = None;
    let mut cut_short = false;
    let more = reader
        .scan(prefix, after, |k, v| {
            if cancel.load(Ordering::Relaxed) {
                failure = Some(ListFailure::Cancelled);
                return false;
            }
            let text = if keys_only {
                None
            } else {
                std::str::from_utf8(&v.value).ok()
            };
            let item = ListItem {
                key: show_key(k),
                rev: v.rev,
                value: text,
                value_base64: (!keys_only && text.is_none())
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&v.value)),
            };
            let mut out = Vec::with_capacity(64 + if keys_only { 0 } else { v.value.len() + 2 });
            if count > 0 {
                out.push(b',');
            }
            // Serializing plain strings and numbers cannot fail.
            let _ = serde_json::to_writer(&mut out, &item);
            let Some(p) = limits.reserve(out.len()) else {
                if count == 0 {
                    failure = Some(ListFailure::NoMemory);
                }
                cut_short = true;
                return false;
            };
            match &mut budget {
                Some(b) => b.merge(p),
                None => budget = Some(p),
            }
            encoded += out.len();
            read += k.len() + v.value.len();
            count += 1;
            chunks.push(Bytes::from(out));
            last = Some(k.to_vec());
            count < limit && encoded < max_bytes && read < max_bytes
        })
        .map_err(ListFailure::Store)?;
    if let Some(f) = failure {
        return Err(f);
    }
    let more = more || cut_short;
    let mut tail = format!("],\"more\":{more}");
    if let (true, Some(last)) = (more, last) {
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last);
        tail.push_str(&format!(",\"next\":\"{cursor}\""));
    }
    tail.push('}');
    chunks.push(Bytes::from(tail));
    Ok(ListPage { chunks, budget })
}

/// Sets its flag when dropped: tells a blocking task its request is gone.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn consistency(p: &ReadParams) -> Result<ReadConsistency, Problem> {
    match p.consistency.as_deref() {
        None | Some("linearizable") => Ok(ReadConsistency::Linearizable),
        Some("lease") => Ok(ReadConsistency::Lease),
        Some("stale") => Ok(ReadConsistency::Stale),
        Some(other) => Err(Problem::bad_request(format!(
            "consistency must be linearizable, lease or stale; got {other:?}"
        ))),
    }
}

/// Waits until this node may serve a read at `c`; `Err` is the response
/// (forwarded answer or problem).
async fn ready_to_read(
    state: &AppState,
    c: ReadConsistency,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), Response> {
    match state.raft.read(c).await {
        Ok(_) => Ok(()),
        Err(ReadError::NotLeader { leader }) => Err(forward(
            state,
            leader,
            Method::GET,
            uri,
            headers,
            Bytes::new(),
            false,
        )
        .await),
        Err(e) => Err(read_problem(&e).into_response()),
    }
}

async fn get_key(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return Problem::bad_request("malformed query string").into_response();
    };
    let key = match key_of(&state, &uri) {
        Ok(k) => k,
        Err(p) => return p.into_response(),
    };
    let c = match consistency(&params) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    if let Err(resp) = ready_to_read(&state, c, &uri, &headers).await {
        return resp;
    }
    match state.reader.get(&key) {
        Ok(Some(v)) => {
            let mut resp = (StatusCode::OK, v.value).into_response();
            resp.headers_mut().insert(header::ETAG, etag(v.rev));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        Ok(None) => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such key",
            "the key does not exist",
        )
        .into_response(),
        Err(e) => store_problem(&e).into_response(),
    }
}

async fn list(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return Problem::bad_request("malformed query string").into_response();
    };
    let c = match consistency(&params) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > state.cfg.max_list_limit {
        return Problem::bad_request(format!(
            "limit must be between 1 and {}",
            state.cfg.max_list_limit
        ))
        .into_response();
    }
    let prefix = params.prefix.unwrap_or_default();
    if prefix.len() > state.cfg.max_key_bytes {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "key-too-long",
            "Prefix too long",
            "the prefix is longer than the key limit",
        )
        .into_response();
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(c) => {
            use base64::Engine;
            match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c) {
                Ok(k) if k.len() <= state.cfg.max_key_bytes => Some(k),
                _ => {
                    return Problem::bad_request("cursor must be the `next` of a previous listing")
                        .into_response()
                }
            }
        }
    };
    if let Err(resp) = ready_to_read(&state, c, &uri, &headers).await {
        return resp;
    }
    let Ok(slot) = state.limits.listings.clone().try_acquire_owned() else {
        return overloaded("listings read at once (--max-concurrent-listings)");
    };
    let reader = state.reader.clone();
    let limits = state.limits.clone();
    let max_bytes = state.cfg.max_list_bytes;
    let keys_only = params.keys_only.unwrap_or(false);
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let page = tokio::task::spawn_blocking(move || {
        let page = list_page(
            &reader,
            &limits,
            &cancel,
            prefix.as_bytes(),
            after.as_deref(),
            limit,
            max_bytes,
            keys_only,
        );
        drop(slot);
        page
    })
    .await;
    match page {
        Ok(Ok(page)) => {
            let body = ChunksBody::new(page.chunks, page.budget);
            let mut resp = axum::body::Body::new(body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Ok(Err(ListFailure::Store(e))) => store_problem(&e).into_response(),
        Ok(Err(ListFailure::NoMemory)) => {
            overloaded("memory for answers being sent (--http-buffer-mib)")
        }
        Ok(Err(ListFailure::Cancelled)) => {
            Problem::unavailable("cancelled", "Cancelled", "the request was cancelled")
                .into_response()
        }
        Err(e) => Problem::storage(format!("the listing task failed: {e}")).into_response(),
    }
}

/// The driver's status, or the 503 a stopped node answers with.
async fn driver_status(state: &AppState) -> Result<raft_core::DriverStatus, Response> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.raft.status()).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Problem::unavailable(
            "shutting-down",
            "Node shutting down",
            "the node has stopped",
        )
        .into_response()),
        Err(_) => Err(Problem::unavailable(
            "busy",
            "Node busy",
            "the Raft driver did not answer within 2 s",
        )
        .into_response()),
    }
}

#[derive(Debug, Deserialize, Default)]
struct ClusterParams {
    /// Also compute a digest of the whole key-value store (a full scan).
    digest: Option<bool>,
}

async fn cluster(
    State(state): State<Shared>,
    params: Result<Query<ClusterParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let want_digest = match params {
        Ok(Query(p)) => p.digest.unwrap_or(false),
        Err(e) => return Problem::bad_request(format!("bad query: {e}")).into_response(),
    };
    let s = match driver_status(&state).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let e = &s.engine;
    let members = state.members.read().map(|m| m.clone()).unwrap_or_default();
    let addr = |id: NodeId| {
        members
            .get(&id)
            .map(|m| json!({ "peer": m.peer_addr.to_string(), "client": m.client_addr }))
    };
    let peers: Vec<serde_json::Value> = e
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
        .collect();
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
    Json(json!({
        "id": e.id,
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
        "peers": peers,
        "kv": digest.map(|(count, crc)| json!({ "keys": count, "digest": format!("{crc:08x}") })),
    }))
    .into_response()
}

#[derive(Debug, Deserialize, Default)]
struct TransferBody {
    target: Option<NodeId>,
}

async fn transfer_leader(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<TransferBody>(&body) {
            Ok(b) => b.target,
            Err(e) => {
                return Problem::bad_request(format!(
                    "body must be {{\"target\": <node id>}} or empty: {e}"
                ))
                .into_response()
            }
        }
    };
    match state.raft.transfer_leader(target).await {
        Ok(leader) => Json(json!({ "leader": leader })).into_response(),
        Err(TransferError::NotLeader { leader }) => {
            forward(&state, leader, Method::POST, &uri, &headers, body, false).await
        }
        Err(e @ TransferError::NoTarget(_)) => Problem::bad_request(e.to_string()).into_response(),
        Err(e) => Problem::unavailable(
            "transfer-failed",
            "Leadership transfer failed",
            e.to_string(),
        )
        .into_response(),
    }
}

/// How long the log's current write has run, with the limit, when it has
/// run longer than `--storage-stall-timeout-ms`.
fn storage_stall(state: &AppState) -> Option<(std::time::Duration, std::time::Duration)> {
    let limit = state.cfg.storage_stall_timeout?;
    let busy = state.raft.storage_busy_for()?;
    (busy > limit).then_some((busy, limit))
}

async fn metrics(State(state): State<Shared>) -> Response {
    // A write that hangs never records its duration: expose the one in
    // progress.
    metrics::gauge!("raft_storage_busy_seconds").set(
        state
            .raft
            .storage_busy_for()
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "no-metrics",
            "Metrics not installed",
            "this process has no Prometheus exporter",
        )
        .into_response(),
    }
}

/// Liveness: `ok` while the Raft driver runs; 503 naming the failure once
/// the log storage or the state machine failed (the process then exits),
/// 503 `storage-stalled` while a log write has run longer than
/// `--storage-stall-timeout-ms`, and 503 once the driver has stopped for
/// any other reason.
async fn healthz(State(state): State<Shared>) -> Response {
    if let Some(reason) = state.raft.failure() {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node-failed",
            "Node failed",
            format!("raft stopped because its storage or state machine failed: {reason}; the process is exiting"),
        )
        .into_response();
    }
    if let Some((busy, limit)) = storage_stall(&state) {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-stalled",
            "Storage stalled",
            format!(
                "a log write has been running for {:.1} s (limit {:.1} s): the disk is not \
                 answering, and this node makes nothing durable until it does",
                busy.as_secs_f64(),
                limit.as_secs_f64()
            ),
        )
        .into_response();
    }
    if state.raft.is_stopped() {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node-stopped",
            "Node stopped",
            "raft has stopped; the process is shutting down".to_string(),
        )
        .into_response();
    }
    "ok\n".into_response()
}

async fn readyz(State(state): State<Shared>) -> Response {
    let s = match driver_status(&state).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let e = &s.engine;
    if let Some((busy, _)) = storage_stall(&state) {
        let body = json!({ "ready": false, "storage_stalled_seconds": busy.as_secs_f64(), "leader": e.leader, "commit": e.commit, "applied": s.applied });
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response();
    }
    let has_leader = e.leader.is_some() || e.role == Role::Leader;
    let caught_up = s.applied >= e.commit;
    let body = json!({ "ready": has_leader && caught_up, "leader": e.leader, "commit": e.commit, "applied": s.applied });
    if has_leader && caught_up {
        Json(body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerBody {
    id: NodeId,
    peer_addr: std::net::SocketAddr,
    client_addr: String,
}

/// Maps a failed membership change to its response (forwarding to the
/// leader when this node is not it).
async fn membership_error(
    state: &AppState,
    err: MembershipError,
    uri: &Uri,
    method: Method,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let conflict = |kind: &'static str, title: &'static str, detail: String| {
        Problem::new(StatusCode::CONFLICT, kind, title, detail).into_response()
    };
    match err {
        MembershipError::Rejected(ChangeError::NotLeader { leader }) => {
            forward(state, leader, method, uri, headers, body, false).await
        }
        MembershipError::Rejected(
            e @ (ChangeError::InProgress { .. }
            | ChangeError::LeaderNotReady
            | ChangeError::TransferInProgress(_)),
        ) => Problem::new(
            StatusCode::CONFLICT,
            "change-in-progress",
            "Another change is in progress",
            e.to_string(),
        )
        .retry_after(1)
        .into_response(),
        MembershipError::Rejected(e @ ChangeError::UnknownNode(_)) => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-member",
            "Not a member",
            e.to_string(),
        )
        .into_response(),
        MembershipError::Rejected(e @ ChangeError::Lagging { lag, max, .. }) => Problem::new(
            StatusCode::CONFLICT,
            "learner-lagging",
            "Learner not caught up",
            e.to_string(),
        )
        .with("lag", lag)
        .with("max_lag", max)
        .retry_after(1)
        .into_response(),
        MembershipError::Rejected(e @ ChangeError::NoVoters) => {
            conflict("last-voter", "Would remove the last voter", e.to_string())
        }
        MembershipError::Rejected(e @ ChangeError::InvalidId) => {
            Problem::bad_request(e.to_string()).into_response()
        }
        MembershipError::Rejected(e) => {
            conflict("membership-conflict", "Membership conflict", e.to_string())
        }
        MembershipError::Timeout | MembershipError::LeadershipLost => {
            Problem::outcome_unknown(format!("{err}; check GET /v1/cluster before retrying"))
                .into_response()
        }
        MembershipError::ShuttingDown => {
            Problem::unavailable("shutting-down", "Shutting down", err.to_string()).into_response()
        }
        // A failure the driver may add later: assume the worst.
        _ => Problem::outcome_unknown(format!("{err}; check GET /v1/cluster before retrying"))
            .into_response(),
    }
}

fn membership_json(m: &Membership, members: &[Member]) -> serde_json::Value {
    json!({
        "membership": {
            "voters": m.voters(),
            "learners": m.learners(),
            "outgoing_voters": m.voters_outgoing(),
            "joint": m.is_joint(),
        },
        "members": members,
    })
}

/// The member addresses this node knows (replicated records over the
/// ones it started with).
fn known_members(state: &AppState) -> Vec<Member> {
    let mut all: HashMap<NodeId, Member> =
        state.members.read().map(|m| m.clone()).unwrap_or_default();
    if let Ok(replicated) = state.reader.members() {
        for m in replicated {
            all.insert(m.id, m);
        }
    }
    let mut v: Vec<Member> = all.into_values().collect();
    v.sort_by_key(|m| m.id);
    v
}

/// `POST /v1/cluster/learners {"id", "peer_addr", "client_addr"}`: records
/// the node's addresses through the log, then adds it as a learner.
/// Repeating the request for a learner with the same addresses succeeds.
async fn add_learner(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: LearnerBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return Problem::bad_request(format!(
                "body must be {{\"id\": <node id>, \"peer_addr\": \"ip:port\", \"client_addr\": \"host:port\"}}: {e}"
            ))
            .into_response()
        }
    };
    if req.id == 0 {
        return Problem::bad_request("node id 0 is reserved").into_response();
    }
    if req.client_addr.is_empty() || req.client_addr.len() > 255 || req.client_addr.contains('/') {
        return Problem::bad_request("client_addr must be host:port").into_response();
    }
    let s = match driver_status(&state).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if s.engine.role != Role::Leader {
        return forward(
            &state,
            s.engine.leader,
            Method::POST,
            &uri,
            &headers,
            body,
            false,
        )
        .await;
    }
    if s.engine.membership.is_voter(req.id) {
        return Problem::new(
            StatusCode::CONFLICT,
            "already-voter",
            "Already a voter",
            format!("node {} is already a voter", req.id),
        )
        .into_response();
    }
    let member = Member {
        id: req.id,
        peer_addr: req.peer_addr,
        client_addr: req.client_addr,
    };
    let known = known_members(&state);
    if !known.contains(&member) {
        if let Some(other) = known.iter().find(|m| m.id == member.id) {
            if s.engine.membership.contains(member.id) {
                return Problem::new(
                    StatusCode::CONFLICT,
                    "address-conflict",
                    "Member has other addresses",
                    format!(
                        "node {} is a member with addresses {}/{}; remove it first",
                        other.id, other.peer_addr, other.client_addr
                    ),
                )
                .into_response();
            }
        }
        match state
            .raft
            .propose(crate::command::encode_member(&member))
            .await
        {
            Ok(_) => {}
            Err(ProposeError::NotLeader { leader }) => {
                return forward(&state, leader, Method::POST, &uri, &headers, body, false).await
            }
            Err(e) => {
                return Problem::unavailable(
                    "propose-failed",
                    "Could not record the addresses",
                    e.to_string(),
                )
                .into_response()
            }
        }
    }
    let result = if s.engine.membership.learners().contains(&member.id) {
        Ok(s.engine.membership.clone())
    } else {
        state
            .raft
            .change_membership(MembershipChange::AddLearner(member.id))
            .await
    };
    match result {
        Ok(m) => Json(membership_json(&m, &known_members(&state))).into_response(),
        Err(e) => membership_error(&state, e, &uri, Method::POST, &headers, body).await,
    }
}

/// Parses `raw` as a node id, then runs the change `make(id)` and answers
/// with the resulting configuration (or the error, forwarded to the leader
/// when this node is not it).
async fn change_by_id(
    state: &AppState,
    raw: &str,
    make: fn(NodeId) -> MembershipChange,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let Some(id) = raw.parse::<NodeId>().ok().filter(|id| *id > 0) else {
        return Problem::bad_request(format!("{raw:?} is not a node id")).into_response();
    };
    match state.raft.change_membership(make(id)).await {
        Ok(m) => Json(membership_json(&m, &known_members(state))).into_response(),
        Err(e) => membership_error(state, e, uri, method, headers, Bytes::new()).await,
    }
}

/// `POST /v1/cluster/voters/{id}`: promotes a caught-up learner.
async fn promote(
    State(state): State<Shared>,
    axum::extract::Path(raw): axum::extract::Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    change_by_id(
        &state,
        &raw,
        MembershipChange::Promote,
        Method::POST,
        &uri,
        &headers,
    )
    .await
}

/// `DELETE /v1/cluster/members/{id}`: removes a learner or a voter (the
/// leader too: it hands over and steps down).
async fn remove_member(
    State(state): State<Shared>,
    axum::extract::Path(raw): axum::extract::Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    change_by_id(
        &state,
        &raw,
        MembershipChange::Remove,
        Method::DELETE,
        &uri,
        &headers,
    )
    .await
}

/// `POST /v1/cluster/snapshot`: this node takes a snapshot now and compacts
/// its log (every node snapshots on its own; this is not forwarded).
async fn take_snapshot(State(state): State<Shared>) -> Response {
    match state.raft.snapshot().await {
        Ok(meta) => Json(json!({
            "index": meta.last_log_id.index,
            "term": meta.last_log_id.term,
        }))
        .into_response(),
        Err(e @ (SnapshotError::Installing | SnapshotError::Timeout)) => {
            Problem::unavailable("snapshot-busy", "Snapshot not taken", e.to_string())
                .retry_after(1)
                .into_response()
        }
        Err(e) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "snapshot-failed",
            "Snapshot failed",
            e.to_string(),
        )
        .into_response(),
    }
}

/// A store read error as a problem: 503 while a snapshot is installed, 500
/// otherwise.
fn store_problem(e: &crate::store::StoreError) -> Problem {
    match e {
        crate::store::StoreError::Installing => Problem::unavailable(
            "installing-snapshot",
            "Installing a snapshot",
            e.to_string(),
        )
        .retry_after(1),
        _ => Problem::storage(e.to_string()),
    }
}
