//! The API's limits and the layers that enforce them: the memory budget and
//! request slots ([`HttpLimits`]), the body read, the request deadline, load
//! shedding, and the request metrics every route records.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Answer, Shared};
use crate::config::NodeConfig;
use crate::problem::Problem;

/// The API's shared limits: slots for running requests, bodies being
/// received and listings being read, and the memory budget (one permit per
/// byte) of bodies and answers held in memory.
#[derive(Debug)]
pub struct HttpLimits {
    requests: Arc<Semaphore>,
    bodies: Arc<Semaphore>,
    listings: Arc<Semaphore>,
    backups: Arc<Semaphore>,
    buffer: Arc<Semaphore>,
}

impl HttpLimits {
    /// The limits `cfg` sets.
    pub fn new(cfg: &NodeConfig) -> Self {
        let sem = |n: usize| Arc::new(Semaphore::new(n));
        Self {
            requests: sem(cfg.max_concurrent_requests),
            bodies: sem(cfg.http_max_receiving_bodies),
            listings: sem(cfg.max_concurrent_listings),
            backups: sem(cfg.max_concurrent_backups),
            buffer: sem(cfg.http_buffer_bytes.min(Semaphore::MAX_PERMITS)),
        }
    }

    /// `n` bytes of the memory budget, now or never.
    pub(super) fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n.max(1)).ok()?;
        self.buffer.clone().try_acquire_many_owned(n).ok()
    }

    /// `n` more bytes of the memory budget, added to `held`; `false` when
    /// the budget cannot give them.
    pub(super) fn reserve_more(&self, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> bool {
        let Some(p) = self.reserve(n) else {
            return false;
        };
        match held {
            Some(b) => b.merge(p),
            None => *held = Some(p),
        }
        true
    }

    /// The slots of requests served at once.
    pub(super) fn request_slots(&self) -> Arc<Semaphore> {
        self.requests.clone()
    }

    /// A slot for a listing being read, now or never.
    pub(crate) fn listing_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.listings.clone().try_acquire_owned().ok()
    }

    /// A slot for a backup being sent, now or never.
    pub(super) fn backup_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.backups.clone().try_acquire_owned().ok()
    }
}

/// 503 for a request turned away by one of the API's limits.
pub(crate) fn overloaded(what: &str) -> Problem {
    metrics::counter!("raft_node_http_requests_shed_total").increment(1);
    Problem::unavailable(
        "overloaded",
        "Overloaded",
        format!("this node is at its limit of {what}; retry shortly"),
    )
}

/// A response body of chunks already in memory, with its exact length
/// (so the answer carries `Content-Length`), holding `guard` until sent or
/// dropped.
pub(super) struct ChunksBody<G> {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
    _guard: G,
}

impl<G> ChunksBody<G> {
    pub(super) fn new(chunks: Vec<Bytes>, guard: G) -> Self {
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

/// A write: its outcome is unknown when it runs out of time.
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Bounds a request's run once its body arrived
/// (`--http-request-deadline-ms`).
pub(super) async fn request_deadline(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Answer {
    let write = is_write(req.method());
    let limit = state.cfg.http_request_deadline;
    let Ok(resp) = tokio::time::timeout(limit, next.run(req)).await else {
        metrics::counter!("raft_node_http_deadline_exceeded_total").increment(1);
        let detail = format!(
            "the request ran past the deadline of {} ms",
            limit.as_millis()
        );
        return Err(if write {
            Problem::outcome_unknown(detail)
        } else {
            Problem::unavailable("request-deadline", "Request deadline exceeded", detail)
        });
    };
    Ok(resp)
}

/// 413 for a body above `--max-value-bytes`; the body is not read, so the
/// connection closes.
pub(super) fn value_too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "value-too-large",
        "Value too large",
        format!("the value exceeds the limit of {limit} bytes"),
    )
    .with("limit", limit)
    .close_connection()
}

fn too_large(limit: usize) -> Problem {
    metrics::counter!("raft_node_http_bodies_refused_total", "reason" => "too_large").increment(1);
    value_too_large(limit)
}

/// Collects a body of at most `limit` bytes; a chunked body's bytes
/// (`declared` is `None`) come out of the memory budget as they arrive.
async fn collect_body(
    limits: &HttpLimits,
    mut body: axum::body::Body,
    declared: Option<u64>,
    limit: usize,
    budget: &mut Option<OwnedSemaphorePermit>,
) -> Result<Vec<u8>, Problem> {
    use http_body_util::BodyExt;
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Problem::bad_request(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        if declared.is_none() && !limits.reserve_more(budget, data.len()) {
            return Err(overloaded("memory for request bodies (--http-buffer-mib)"));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

/// Reads the whole body before the handler runs and before the request
/// takes a concurrency slot: a body announced above `--max-value-bytes`
/// gets 413 from `Content-Length` alone, and a body that does not arrive
/// within `--http-body-timeout-ms` gets 408. At most
/// `--http-max-receiving-bodies` bodies arrive at once, and their bytes
/// come out of the memory budget (`--http-buffer-mib`), held until the
/// handler is done; beyond either, 503.
pub(super) async fn read_body(State(state): State<Shared>, req: Request, next: Next) -> Answer {
    let limit = state.cfg.max_value_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if !chunked && declared.unwrap_or(0) == 0 {
        return Ok(next.run(req).await);
    }
    let Ok(slot) = state.limits.bodies.clone().try_acquire_owned() else {
        return Err(overloaded(
            "request bodies being received (--http-max-receiving-bodies)",
        ));
    };
    // A declared length is reserved whole, a chunked body as it arrives.
    let mut budget = match declared {
        Some(n) => match state.limits.reserve(n as usize) {
            Some(p) => Some(p),
            None => return Err(overloaded("memory for request bodies (--http-buffer-mib)")),
        },
        None => None,
    };
    let (parts, body) = req.into_parts();
    let collect = collect_body(&state.limits, body, declared, limit, &mut budget);
    let Ok(buf) = tokio::time::timeout(state.cfg.http_body_timeout, collect).await else {
        metrics::counter!("raft_node_http_bodies_refused_total", "reason" => "timeout")
            .increment(1);
        return Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            format!(
                "the body did not arrive within {} ms",
                state.cfg.http_body_timeout.as_millis()
            ),
        )
        .close_connection());
    };
    let buf = buf?;
    drop(slot);
    let req = Request::from_parts(parts, axum::body::Body::from(buf));
    let resp = next.run(req).await;
    drop(budget);
    Ok(resp)
}

/// Serves at most `--max-concurrent-requests` API requests at once and
/// answers 503 with `Retry-After` beyond, instead of queueing without
/// bound. A request holds its slot until its answer is sent.
pub(super) async fn shed_load(
    State(slots): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Answer {
    let Ok(permit) = slots.try_acquire_owned() else {
        return Err(overloaded(
            "requests served at once (--max-concurrent-requests)",
        ));
    };
    Ok(next
        .run(req)
        .await
        .map(|b| axum::body::Body::new(crate::server::GuardedBody::new(b, permit))))
}

/// Counts every request by route, method and status, and records its
/// duration.
pub(super) async fn record_metrics(req: Request, next: Next) -> Response {
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
