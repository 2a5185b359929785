//! Raw HTTP for the tests whose point is the HTTP API itself (status
//! codes, headers, problem documents) and for the admin routes no client
//! call sends: a client with a timeout, an answer's JSON body, a request
//! with a JSON body, an answer's problem type, and the members
//! `GET /v1/cluster` lists.

use std::time::{Duration, Instant};

use reqwest::{Client, IntoUrl, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::Proc;

/// A raw HTTP client whose requests give up after 10 s.
pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The JSON body of `GET url` (whatever its status).
pub async fn get_json(c: &Client, url: impl IntoUrl) -> Value {
    json_of(c.get(url)).await
}

/// The JSON body of the answer to `req` (whatever its status).
pub async fn json_of(req: RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// Sends `req` with the JSON `body`: the answer's status and text.
pub async fn send_json(req: RequestBuilder, body: &Value) -> (StatusCode, String) {
    let r = req.json(body).send().await.unwrap();
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

/// Member `id` as node `url` lists it in `GET /v1/cluster` (`Null` when
/// it is not listed), and the whole answer.
pub async fn listed_member(c: &Client, url: &str, id: u64) -> (Value, Value) {
    let s = get_json(c, format!("{url}/v1/cluster")).await;
    let member = s["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == id))
        .cloned()
        .unwrap_or_default();
    (member, s)
}

/// Waits (up to 10 s for each node) until every node of `procs` lists
/// member `id` in `GET /v1/cluster` as `check` wants it; `what` (what
/// `check` looks for) names it in the failure.
pub async fn wait_listed(
    c: &Client,
    procs: &[Proc],
    id: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    for p in procs {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (member, s) = listed_member(c, &p.http, id).await;
            if check(&member) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} does not list member {id} with {what}: {s:#}",
                p.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The problem type of an error answer, without its
/// `urn:raft-node:problem:` prefix.
pub async fn problem_kind(r: Response) -> String {
    let v: Value = r.json().await.unwrap();
    let t = v["type"].as_str().unwrap_or_default();
    t.rsplit(':').next().unwrap_or_default().to_owned()
}
