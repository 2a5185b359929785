//! The [`Client`] and its one request path: endpoint choice, attempts,
//! retries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::builder::{ClientBuilder, IdempotencyKeys, RetryPolicy};
use crate::error::{Error, Problem, Result};

/// A client of a raft-node cluster. Cheap to clone (clones share the
/// connection pool and what was learned about the leader).
///
/// Every node serves every request (followers forward to the leader), so
/// any endpoint works; the client prefers the endpoint it knows to be the
/// leader (learned from [`Client::status`] and from a leader hint in an
/// answer: an `X-Raft-Leader` header or a problem's `leader` member) to
/// save a forwarding hop, and moves to the next endpoint when one fails.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Endpoints,
    authorization: Option<String>,
    retry: RetryPolicy,
    idempotency: IdempotencyKeys,
    max_answer_bytes: usize,
    /// Replaces the builder's request timeout, for this client only.
    request_timeout: Option<Duration>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints.urls)
            .field("retry", &self.inner.retry)
            .field("idempotency", &self.inner.idempotency)
            .finish_non_exhaustive()
    }
}

/// The endpoints and what is known of them.
pub(crate) struct Endpoints {
    urls: Vec<String>,
    state: Mutex<EndpointState>,
}

#[derive(Default)]
struct EndpointState {
    /// The endpoint to try next when no leader is known.
    current: usize,
    /// Node id of each endpoint, once a status answer named it.
    ids: Vec<Option<u64>>,
    /// The leader, as last heard.
    leader: Option<u64>,
}

impl Endpoints {
    pub(crate) fn new(urls: Vec<String>) -> Self {
        let ids = vec![None; urls.len()];
        Self {
            urls,
            state: Mutex::new(EndpointState {
                current: 0,
                ids,
                leader: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint to send to: the leader's when known, else the current.
    fn pick(&self) -> usize {
        let s = self.lock();
        s.leader
            .and_then(|l| s.ids.iter().position(|id| *id == Some(l)))
            .unwrap_or(s.current % self.urls.len())
    }

    /// Endpoint `i` failed: the next one is tried, and the leader is
    /// forgotten unless `hint` names it.
    fn failed(&self, i: usize, hint: Option<u64>) {
        let mut s = self.lock();
        s.current = (i + 1) % self.urls.len();
        s.leader = hint;
    }

    fn learned(&self, i: usize, id: Option<u64>, leader: Option<u64>) {
        let mut s = self.lock();
        if let Some(id) = id {
            // Another endpoint that claimed this id was reassigned.
            for other in s.ids.iter_mut() {
                if *other == Some(id) {
                    *other = None;
                }
            }
            s.ids[i] = Some(id);
        }
        if leader.is_some() {
            s.leader = leader;
        }
    }
}

/// Whether a request may be sent again after its outcome became unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Safety {
    /// A read: sending it again changes nothing.
    Read,
    /// A write with an idempotency key: the node answers a second attempt
    /// with the first result.
    KeyedWrite,
    /// A write without one: never sent again once it may have been applied.
    Write,
}

/// One request, ready to be sent (and sent again).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: Method,
    /// Path and query, starting with `/`.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) safety: Safety,
}

impl Request {
    pub(crate) fn new(method: Method, path: String, safety: Safety) -> Self {
        Self {
            method,
            path,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            safety,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Result<Self> {
        let v = HeaderValue::from_str(value)
            .map_err(|_| Error::Config(format!("{name} must be visible ASCII: {value:?}")))?;
        self.headers.insert(HeaderName::from_static(name), v);
        Ok(self)
    }

    pub(crate) fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// A node's answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// Which endpoint answered.
    pub(crate) endpoint: usize,
}

impl Answer {
    /// The `ETag` revision.
    pub(crate) fn rev(&self) -> Option<u64> {
        self.headers
            .get(reqwest::header::ETAG)?
            .to_str()
            .ok()?
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::InvalidAnswer(format!("{} answer: {e}", self.status)))
    }

    pub(crate) fn problem(&self) -> Problem {
        Problem::parse(self.status.as_u16(), &self.body)
    }

    /// The answer as an error, for statuses the caller does not expect.
    pub(crate) fn into_error(self) -> Error {
        let problem = Box::new(self.problem());
        match self.status.as_u16() {
            412 => Error::PreconditionFailed {
                current_rev: problem.number("current_rev"),
            },
            503 => Error::Unavailable {
                retry_after: retry_after(&self.headers),
                problem,
                attempts: 1,
            },
            504 => Error::OutcomeUnknown {
                detail: problem.to_string(),
                problem: Some(problem),
            },
            _ => Error::Api { problem },
        }
    }
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let s: u64 = h
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(s))
}

/// A leader hint in an answer: `X-Raft-Leader` or a problem's `leader`.
fn leader_hint(a: &Answer) -> Option<u64> {
    a.headers
        .get("x-raft-leader")
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .or_else(|| a.problem().number("leader"))
}

/// What one attempt came to.
enum Attempt {
    Answer(Answer),
    /// The connection could not be made: nothing was sent.
    NotSent(String),
    /// Sent, and the answer was lost (timeout, reset).
    Lost(String),
    /// An answer this client refuses (too large): not retried.
    Refused(Error),
}

impl Client {
    /// Starts building a client of the nodes at `endpoints`
    /// (`http://host:port` or `https://host:port`; any nodes of one
    /// cluster).
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder::new(endpoints.into_iter().map(Into::into).collect())
    }

    pub(crate) fn from_parts(
        http: reqwest::Client,
        endpoints: Endpoints,
        authorization: Option<String>,
        retry: RetryPolicy,
        idempotency: IdempotencyKeys,
        max_answer_bytes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                endpoints,
                authorization,
                retry,
                idempotency,
                max_answer_bytes,
                request_timeout: None,
            }),
        }
    }

    /// The endpoints, as given (normalized).
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints.urls
    }

    /// A client of the one node at `endpoint` with the same settings,
    /// sharing this one's connections: for sending a request to a chosen
    /// node.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed endpoint.
    pub fn at(&self, endpoint: &str) -> Result<Client> {
        let url = crate::builder::normalize_endpoint(endpoint)?;
        Ok(self.derive(vec![url], self.inner.retry.clone()))
    }

    /// A client of endpoint `i` alone, sharing connections.
    pub(crate) fn pinned(&self, i: usize) -> Client {
        let url = self.inner.endpoints.urls[i].clone();
        self.derive(vec![url], self.inner.retry.clone())
    }

    /// The same client with another retry policy (sharing connections).
    pub fn with_retry(&self, retry: RetryPolicy) -> Client {
        self.derive(self.inner.endpoints.urls.clone(), retry)
    }

    /// The same client with another longest wait for one attempt's whole
    /// answer ([`ClientBuilder::request_timeout`]), sharing connections:
    /// for a call that must answer quickly (a health poll) or may take
    /// long (a status with the digest of a large store).
    pub fn with_request_timeout(&self, timeout: Duration) -> Client {
        self.derive_with(
            self.inner.endpoints.urls.clone(),
            self.inner.retry.clone(),
            Some(timeout),
        )
    }

    /// A client of `urls` with this one's settings and connections.
    fn derive(&self, urls: Vec<String>, retry: RetryPolicy) -> Client {
        self.derive_with(urls, retry, self.inner.request_timeout)
    }

    fn derive_with(
        &self,
        urls: Vec<String>,
        retry: RetryPolicy,
        request_timeout: Option<Duration>,
    ) -> Client {
        Self {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                endpoints: Endpoints::new(urls),
                authorization: self.inner.authorization.clone(),
                retry,
                idempotency: self.inner.idempotency,
                max_answer_bytes: self.inner.max_answer_bytes,
                request_timeout,
            }),
        }
    }

    pub(crate) fn idempotency(&self) -> IdempotencyKeys {
        self.inner.idempotency
    }

    pub(crate) fn learned(&self, endpoint: usize, id: Option<u64>, leader: Option<u64>) {
        self.inner.endpoints.learned(endpoint, id, leader);
    }

    /// Sends `req`, retrying as the policy allows, and returns the first
    /// answer that is not retried (any status).
    pub(crate) async fn execute(&self, req: &Request) -> Result<Answer> {
        let policy = &self.inner.retry;
        let started = Instant::now();
        let mut backoff = policy.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let i = self.inner.endpoints.pick();
            let (err, wait) = match self.attempt(i, req).await {
                Attempt::Answer(a) => {
                    if !retryable(&a) {
                        return Ok(a);
                    }
                    self.inner.endpoints.failed(i, leader_hint(&a));
                    let wait = retry_after(&a.headers).unwrap_or_default();
                    match a.into_error() {
                        Error::Unavailable {
                            problem,
                            retry_after,
                            ..
                        } => (
                            Error::Unavailable {
                                problem,
                                retry_after,
                                attempts,
                            },
                            wait,
                        ),
                        e @ Error::OutcomeUnknown { .. } if req.safety == Safety::Write => {
                            return Err(e)
                        }
                        other => (other, wait),
                    }
                }
                Attempt::NotSent(detail) => {
                    self.inner.endpoints.failed(i, None);
                    (Error::Connect { attempts, detail }, Duration::ZERO)
                }
                Attempt::Refused(e) => return Err(e),
                Attempt::Lost(detail) => {
                    self.inner.endpoints.failed(i, None);
                    let err = Error::OutcomeUnknown {
                        problem: None,
                        detail,
                    };
                    if req.safety == Safety::Write {
                        return Err(err);
                    }
                    (err, Duration::ZERO)
                }
            };
            let wait = wait.max(backoff);
            if attempts >= policy.max_attempts || started.elapsed() + wait > policy.budget {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }

    async fn attempt(&self, i: usize, req: &Request) -> Attempt {
        let url = format!("{}{}", self.inner.endpoints.urls[i], req.path);
        let mut b = self
            .inner
            .http
            .request(req.method.clone(), &url)
            .headers(req.headers.clone());
        if let Some(a) = &self.inner.authorization {
            b = b.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(t) = self.inner.request_timeout {
            b = b.timeout(t);
        }
        if !req.body.is_empty() || req.method == Method::PUT {
            b = b.body(req.body.clone());
        }
        let mut resp = match b.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_builder() => return Attempt::NotSent(chain(&e)),
            Err(e) => return Attempt::Lost(chain(&e)),
        };
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > self.inner.max_answer_bytes {
                        return Attempt::Refused(Error::InvalidAnswer(format!(
                            "{url}: the answer is larger than max_answer_bytes ({})",
                            self.inner.max_answer_bytes
                        )));
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => return Attempt::Lost(format!("reading the answer: {}", chain(&e))),
            }
        }
        Attempt::Answer(Answer {
            status,
            headers,
            body: body.into(),
            endpoint: i,
        })
    }
}

/// An error and its sources, `: `-separated (reqwest's own message leaves
/// out why: refused, reset, certificate unknown).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether an answer means "nothing applied, try again": 503, or 409 with
/// `Retry-After` (a membership change in progress); and 504, which the
/// caller retries only for reads and keyed writes.
fn retryable(a: &Answer) -> bool {
    match a.status.as_u16() {
        503 | 504 => true,
        409 => a.headers.contains_key(reqwest::header::RETRY_AFTER),
        _ => false,
    }
}
