//! Raw HTTP for the tests whose point is the HTTP API itself (status
//! codes, headers, problem documents): a client with a timeout, a GET's
//! JSON body, and an answer's problem type.

use std::time::Duration;

use reqwest::{Client, IntoUrl, Response};
use serde_json::Value;

/// A raw HTTP client whose requests give up after 10 s.
pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The JSON body of `GET url` (whatever its status).
pub async fn get_json(c: &Client, url: impl IntoUrl) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// The problem type of an error answer, without its
/// `urn:raft-node:problem:` prefix.
pub async fn problem_kind(r: Response) -> String {
    let v: Value = r.json().await.unwrap();
    let t = v["type"].as_str().unwrap_or_default();
    t.rsplit(':').next().unwrap_or_default().to_owned()
}
