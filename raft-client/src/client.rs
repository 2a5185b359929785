//! The [`Client`] and its one request path: endpoint choice, attempts,
//! retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::builder::{ClientBuilder, IdempotencyKeys, RetryPolicy};
pub(crate) use crate::endpoints::Endpoints;
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
    /// Longest wait for one attempt's whole answer; for a streamed answer,
    /// for its head and then for each chunk.
    request_timeout: Duration,
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
    /// A success's body is left unread, for the caller to stream
    /// ([`Answer::stream`]); each wait for bytes is bounded by the request
    /// timeout, the whole answer by nothing.
    pub(crate) stream: bool,
}

impl Request {
    pub(crate) fn new(method: Method, path: String, safety: Safety) -> Self {
        Self {
            method,
            path,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            safety,
            stream: false,
        }
    }

    /// Leaves a success's body unread: see [`Request::stream`].
    pub(crate) fn streamed(mut self) -> Self {
        self.stream = true;
        self
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
    /// Which endpoint answered (`None`: an address a 421 named, not one of
    /// the client's endpoints).
    pub(crate) endpoint: Option<usize>,
    /// The base URL of the node that answered (`http://host:port`).
    pub(crate) from: String,
    /// A streamed request's success, its body unread (`body` is empty).
    pub(crate) stream: Option<Box<reqwest::Response>>,
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

/// A streamed answer has no overall time limit (a backup takes as long as
/// the store is large): only each wait for bytes is bounded. (tokio caps
/// any sleep at about 30 years.)
const NO_TOTAL_LIMIT: Duration = Duration::from_secs(365 * 86_400);

/// Where an attempt goes.
#[derive(Debug, Clone)]
enum Target {
    /// One of the client's endpoints.
    Endpoint(usize),
    /// The leader's address a 421 named (`http://host:port`), not one of
    /// the client's endpoints.
    Url(String),
}

/// What an answer came to.
enum Step {
    /// Returned to the caller.
    Done(Result<Answer>),
    /// Sent again.
    Again(Retry),
}

/// Why an answer's body was not read whole.
enum Unread {
    /// The connection failed, or the body did not come in time.
    Lost(String),
    /// Larger than `max_answer_bytes`.
    TooLarge(String),
}

/// Why and how a request is sent again.
struct Retry {
    /// Returned if no attempt is left.
    err: Error,
    /// Least wait before the next attempt (the answer's `Retry-After`).
    wait: Duration,
    /// Where the next attempt goes at once (`None`: the endpoint the
    /// client picks, after the backoff).
    to: Option<Target>,
}

impl Retry {
    fn after(err: Error, wait: Duration) -> Self {
        Self {
            err,
            wait,
            to: None,
        }
    }
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
        request_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                endpoints,
                authorization,
                retry,
                idempotency,
                max_answer_bytes,
                request_timeout,
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
            timeout,
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
        request_timeout: Duration,
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

    /// The longest wait for one attempt's answer (for a streamed one, for
    /// each chunk).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    pub(crate) fn idempotency(&self) -> IdempotencyKeys {
        self.inner.idempotency
    }

    pub(crate) fn learned(&self, endpoint: usize, id: Option<u64>, leader: Option<u64>) {
        self.inner.endpoints.learned(endpoint, id, leader);
    }

    /// Sends `req`, retrying as the policy allows, and returns the first
    /// answer that is not retried (any status). A 421 `not-leader` naming
    /// the leader's address sends the request there at once (a node
    /// answers 421 when only the leader may serve the request).
    pub(crate) async fn execute(&self, req: &Request) -> Result<Answer> {
        let policy = &self.inner.retry;
        let started = Instant::now();
        let mut backoff = policy.initial_backoff;
        let mut attempts = 0u32;
        let mut next: Option<Target> = None;
        loop {
            attempts += 1;
            let target = next
                .take()
                .unwrap_or_else(|| Target::Endpoint(self.inner.endpoints.pick()));
            let retry = match self.attempt(&target, req).await {
                Attempt::Answer(a) => match self.judge(&target, a, attempts, req.safety) {
                    Step::Done(result) => return result,
                    Step::Again(retry) => retry,
                },
                Attempt::NotSent(detail) => {
                    self.failed(&target, None);
                    Retry::after(Error::Connect { attempts, detail }, Duration::ZERO)
                }
                Attempt::Refused(e) => return Err(e),
                Attempt::Lost(detail) => {
                    self.failed(&target, None);
                    let err = Error::OutcomeUnknown {
                        problem: None,
                        detail,
                    };
                    if req.safety == Safety::Write {
                        return Err(err);
                    }
                    Retry::after(err, Duration::ZERO)
                }
            };
            // To the leader at once; anything else after the backoff.
            let wait = match retry.to {
                Some(_) => Duration::ZERO,
                None => retry.wait.max(backoff),
            };
            if attempts >= policy.max_attempts || started.elapsed() + wait > policy.budget {
                return Err(retry.err);
            }
            tokio::time::sleep(wait).await;
            if retry.to.is_none() {
                backoff = (backoff * 2).min(policy.max_backoff);
            }
            next = retry.to;
        }
    }

    /// What an answer means: final, or try again (where, after how long).
    fn judge(&self, target: &Target, a: Answer, attempts: u32, safety: Safety) -> Step {
        if a.status == StatusCode::MISDIRECTED_REQUEST {
            // Nothing was done: any request may go to the leader.
            let hint = leader_hint(&a);
            let to = self.leader_target(&a, hint);
            self.failed(target, hint);
            return Step::Again(Retry {
                err: a.into_error(),
                wait: Duration::ZERO,
                to,
            });
        }
        if !retryable(&a) {
            return Step::Done(Ok(a));
        }
        self.failed(target, leader_hint(&a));
        let wait = retry_after(&a.headers).unwrap_or_default();
        let err = match a.into_error() {
            Error::Unavailable {
                problem,
                retry_after,
                ..
            } => Error::Unavailable {
                problem,
                retry_after,
                attempts,
            },
            e @ Error::OutcomeUnknown { .. } if safety == Safety::Write => {
                return Step::Done(Err(e))
            }
            other => other,
        };
        Step::Again(Retry::after(err, wait))
    }

    /// Where a 421 says the leader is (its `leader_client_addr`): one of
    /// the endpoints, then known as the leader's, or else that address
    /// with the scheme of the node that answered.
    fn leader_target(&self, a: &Answer, leader: Option<u64>) -> Option<Target> {
        let problem = a.problem();
        let addr = problem.body.get("leader_client_addr")?.as_str()?;
        let urls = &self.inner.endpoints.urls;
        let host = |u: &str| u.split_once("://").map(|(_, h)| h.to_owned());
        if let Some(j) = urls.iter().position(|u| host(u).as_deref() == Some(addr)) {
            if leader.is_some() {
                self.inner.endpoints.learned(j, leader, leader);
            }
            return Some(Target::Endpoint(j));
        }
        let scheme = a.from.split_once("://").map_or("http", |(s, _)| s);
        crate::builder::normalize_endpoint(&format!("{scheme}://{addr}"))
            .ok()
            .map(Target::Url)
    }

    /// An attempt at `target` failed: the next endpoint is tried, and the
    /// leader is forgotten unless `hint` names it.
    fn failed(&self, target: &Target, hint: Option<u64>) {
        if let Target::Endpoint(i) = target {
            self.inner.endpoints.failed(*i, hint);
        }
    }

    async fn attempt(&self, target: &Target, req: &Request) -> Attempt {
        let (endpoint, base) = match target {
            Target::Endpoint(i) => (Some(*i), self.inner.endpoints.urls[*i].as_str()),
            Target::Url(u) => (None, u.as_str()),
        };
        let url = format!("{base}{}", req.path);
        let timeout = self.inner.request_timeout;
        let mut b = self
            .inner
            .http
            .request(req.method.clone(), &url)
            .headers(req.headers.clone())
            .timeout(if req.stream { NO_TOTAL_LIMIT } else { timeout });
        if let Some(a) = &self.inner.authorization {
            b = b.header(reqwest::header::AUTHORIZATION, a);
        }
        if !req.body.is_empty() || req.method == Method::PUT {
            b = b.body(req.body.clone());
        }
        let sent = if req.stream {
            match tokio::time::timeout(timeout, b.send()).await {
                Ok(sent) => sent,
                Err(_) => return Attempt::Lost(no_answer(&url, timeout)),
            }
        } else {
            b.send().await
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_builder() => return Attempt::NotSent(chain(&e)),
            Err(e) => return Attempt::Lost(chain(&e)),
        };
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        let answer = |body: Bytes, stream| {
            Attempt::Answer(Answer {
                status,
                headers,
                body,
                endpoint,
                from: base.to_owned(),
                stream,
            })
        };
        if req.stream && status.is_success() {
            return answer(Bytes::new(), Some(Box::new(resp)));
        }
        let body = if req.stream {
            tokio::time::timeout(timeout, self.read_body(resp, &url))
                .await
                .unwrap_or_else(|_| Err(Unread::Lost(no_answer(&url, timeout))))
        } else {
            self.read_body(resp, &url).await
        };
        match body {
            Ok(body) => answer(body, None),
            Err(Unread::Lost(detail)) => Attempt::Lost(detail),
            Err(Unread::TooLarge(detail)) => Attempt::Refused(Error::InvalidAnswer(detail)),
        }
    }

    /// An answer's whole body, at most `max_answer_bytes`.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        url: &str,
    ) -> std::result::Result<Bytes, Unread> {
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > self.inner.max_answer_bytes {
                        return Err(Unread::TooLarge(format!(
                            "{url}: the answer is larger than max_answer_bytes ({})",
                            self.inner.max_answer_bytes
                        )));
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => return Ok(body.into()),
                Err(e) => return Err(Unread::Lost(format!("reading the answer: {}", chain(&e)))),
            }
        }
    }
}

fn no_answer(url: &str, timeout: Duration) -> String {
    format!("{url}: no answer within {} ms", timeout.as_millis())
}

/// An error and its sources, `: `-separated (reqwest's own message leaves
/// out why: refused, reset, certificate unknown).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
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
