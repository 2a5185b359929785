//! Relaying a request to the leader, once: a follower sends what needs the
//! leader on, marked with [`FORWARDED_HEADER`], and relays the answer; a
//! forwarded request is never forwarded again. What reached the leader
//! decides the error: nothing sent is 503 (not applied), a write without
//! an answer is 504 (outcome unknown).

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use raft_core::NodeId;

use super::limits::{overloaded, ChunksBody};
use super::{Answer, AppState};
use crate::problem::Problem;

/// Marks a request forwarded by another node; it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-raft-forwarded-by";

/// The request headers the leader is sent.
const FORWARDED_REQUEST_HEADERS: [header::HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::AUTHORIZATION,
];

/// The answer headers relayed back to the client.
const RELAYED_ANSWER_HEADERS: [&str; 9] = [
    "content-type",
    "raft-lease",
    "etag",
    "retry-after",
    "x-raft-leader",
    "raft-revision",
    "raft-create-revision",
    "raft-mod-revision",
    "raft-version",
];

/// A request to send on to the leader.
#[derive(Clone)]
pub(super) struct Relay<'a> {
    pub(super) method: Method,
    pub(super) uri: &'a Uri,
    pub(super) headers: &'a HeaderMap,
    pub(super) body: Bytes,
    /// A write: an answer lost on the way makes its outcome unknown.
    pub(super) is_write: bool,
}

impl<'a> Relay<'a> {
    /// A request without a body that changes nothing.
    pub(super) fn read(uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self {
            method: Method::GET,
            uri,
            headers,
            body: Bytes::new(),
            is_write: false,
        }
    }

    /// A write of `body` with `method`: an answer lost on the way makes
    /// its outcome unknown.
    pub(super) fn write(method: Method, uri: &'a Uri, headers: &'a HeaderMap, body: Bytes) -> Self {
        Self {
            method,
            body,
            is_write: true,
            ..Self::read(uri, headers)
        }
    }
}

/// 503 `no-leader`: no leader to serve or forward the request to.
pub(super) fn no_leader(detail: impl Into<String>) -> Problem {
    Problem::unavailable("no-leader", "No leader", detail)
}

/// 500 for an outcome the command applied cannot have.
pub(super) fn unexpected(outcome: &impl std::fmt::Debug) -> Problem {
    Problem::storage(format!("unexpected outcome {outcome:?}"))
}

/// The leader's client address, or why the request cannot go there.
pub(super) fn leader_address(
    state: &AppState,
    leader: Option<NodeId>,
    headers: &HeaderMap,
) -> Result<(NodeId, String), Problem> {
    let Some(leader) = leader.filter(|l| *l != state.id) else {
        return Err(no_leader("no leader is known right now; retry shortly"));
    };
    if headers.contains_key(FORWARDED_HEADER) {
        return Err(no_leader(format!("this node is not the leader (leader: {leader}) and the request was already forwarded once")));
    }
    let addr = recorded_leader_address(leader, state.members.client_addr(leader))
        .inspect_err(|(_, why)| {
            if let Some(why) = why {
                state.members.warn_invalid_client_addr(leader, why);
            }
        })
        .map_err(|(p, _)| p)?;
    Ok((leader, addr))
}

/// The leader's recorded client address `addr` if a request (and its bearer
/// token) may be sent there: one recorded before addresses were checked
/// (`localhost`, `user@host:port`, `host:port#`) would send it to port 80
/// or to another host. Else the 503 and, for an invalid one, why.
fn recorded_leader_address(
    leader: NodeId,
    addr: Option<String>,
) -> Result<String, (Problem, Option<String>)> {
    let Some(addr) = addr else {
        return Err((
            no_leader(format!(
                "the leader is node {leader}, whose client address is unknown here"
            )),
            None,
        ));
    };
    match crate::config::check_client_addr(&addr) {
        Ok(()) => Ok(addr),
        Err(e) => Err((
            no_leader(format!(
                "the leader is node {leader}, whose recorded client address {addr:?} is invalid \
                 ({e}), so the request is not forwarded there; send it to the leader directly \
                 and correct the record with `raft-node ctl update-member {leader} \
                 --peer-addr PEER_ADDR --client-addr HOST:PORT`"
            )),
            Some(format!("{addr:?}: {e}")),
        )),
    }
}

/// The URL of `uri` at the leader's client address `addr`.
pub(super) fn leader_url(state: &AppState, addr: &str, uri: &Uri) -> String {
    let scheme = if state.cfg.client_tls {
        "https"
    } else {
        "http"
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("{scheme}://{addr}{path}")
}

/// Sends the request to the leader and relays its answer.
pub(super) async fn forward(state: &AppState, leader: Option<NodeId>, relay: Relay<'_>) -> Answer {
    let (leader, addr) = leader_address(state, leader, relay.headers)?;
    let kind = if relay.is_write { "write" } else { "read" };
    metrics::counter!("raft_node_http_forwarded_total", "kind" => kind).increment(1);
    let url = leader_url(state, &addr, relay.uri);
    let mut req = state
        .client
        .request(relay.method, &url)
        .header(FORWARDED_HEADER, state.id.to_string())
        .timeout(state.cfg.request_timeout + std::time::Duration::from_secs(1))
        .body(relay.body);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = relay.headers.get(&name) {
            req = req.header(name, v);
        }
    }
    if let Some(v) = relay.headers.get("idempotency-key") {
        req = req.header("idempotency-key", v);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        // Nothing reached the leader: the write did not happen.
        Err(e) if e.is_connect() || e.is_builder() => {
            return Err(no_leader(format!(
                "cannot reach the leader (node {leader} at {addr}): {e}"
            )))
        }
        Err(e) => {
            let detail = format!("forwarded to the leader (node {leader}) but got no answer: {e}");
            return Err(if relay.is_write {
                Problem::outcome_unknown(detail)
            } else {
                no_leader(detail)
            });
        }
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if RELAYED_ANSWER_HEADERS.contains(&name.as_str()) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    if !relay.is_write {
        // Reads (a listing can be megabytes) are taken whole from the
        // leader, out of the memory budget, and sent on with their length;
        // a slow client does not hold the leader.
        return relay_read(state, out, resp).await;
    }
    match resp.bytes().await {
        Ok(b) => Ok(out
            .body(axum::body::Body::from(b))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())),
        Err(e) => Err(Problem::outcome_unknown(format!(
            "the leader's answer was lost: {e}"
        ))),
    }
}

/// The leader's answer to a forwarded read, read whole under the memory
/// budget, sent on with its exact length.
async fn relay_read(
    state: &AppState,
    out: axum::http::response::Builder,
    mut resp: reqwest::Response,
) -> Answer {
    let mut budget = None;
    let mut chunks = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if !state.limits.reserve_more(&mut budget, c.len()) {
                    return Err(overloaded(
                        "memory for answers being sent (--http-buffer-mib)",
                    ));
                }
                chunks.push(c);
            }
            Ok(None) => break,
            Err(e) => return Err(no_leader(format!("the leader's answer was lost: {e}"))),
        }
    }
    Ok(out
        .body(axum::body::Body::new(ChunksBody::new(chunks, budget)))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(p: Problem) -> serde_json::Value {
        let resp = p.into_response();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("the body");
        serde_json::from_slice(&bytes).expect("a JSON problem")
    }

    #[tokio::test]
    async fn a_recorded_client_address_that_fails_the_check_is_not_forwarded_to() {
        for bad in ["localhost", "a@b:1", "b:1#", "b:1/x"] {
            let Err((p, why)) = recorded_leader_address(2, Some(bad.to_owned())) else {
                panic!("{bad:?} was accepted as a forwarding address");
            };
            assert_eq!(p.status(), StatusCode::SERVICE_UNAVAILABLE, "{bad:?}");
            let body = body_of(p).await;
            assert_eq!(
                body["type"].as_str().map(|t| t.ends_with("no-leader")),
                Some(true),
                "{body}"
            );
            let detail = body["detail"].as_str().expect("a detail");
            assert!(detail.contains("invalid"), "{detail}");
            assert!(detail.contains(&format!("{bad:?}")), "{detail}");
            assert!(detail.contains("ctl update-member 2"), "{detail}");
            assert!(why.is_some_and(|w| w.contains(bad)), "{bad:?}: no warning");
        }
    }

    #[test]
    fn a_valid_recorded_client_address_is_forwarded_to() {
        for good in ["raft-2.example:8080", "10.0.0.2:8080", "[::1]:8080"] {
            assert_eq!(
                recorded_leader_address(2, Some(good.to_owned()))
                    .ok()
                    .as_deref(),
                Some(good)
            );
        }
        assert!(matches!(recorded_leader_address(2, None), Err((_, None))));
    }
}
