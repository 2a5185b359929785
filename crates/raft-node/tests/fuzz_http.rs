//! A bad-input campaign against the HTTP API of a real 3-node cluster:
//! random methods, paths (valid routes with random segments, raw bytes,
//! oversized), headers (preconditions, idempotency keys, content types,
//! oversized) and bodies (random bytes, broken JSON, oversized), and raw
//! garbage instead of a request, sent to random nodes so that followers
//! forward some of them.
//!
//! Every request must get an answer within 10 s (or, for bytes that are
//! not HTTP at all, have its connection closed), with a status the API
//! documents, never 500; afterwards every node is still running, logged no
//! panic, and serves a normal write and read.
//!
//! The campaign is seeded: a failure prints the seed, and
//! `RAFT_FUZZ_SEED=<seed> cargo test -p raft-node --test fuzz_http` replays
//! it. `RAFT_FUZZ_CASES` sets the number of requests (default 200).

mod common;

use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Statuses the API may answer to input it did not expect.
const ALLOWED: &[u16] = &[
    200, 201, 204, 400, 401, 403, 404, 405, 409, 411, 412, 413, 414, 415, 422, 431, 503, 504,
];

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

fn random_bytes(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.gen()).collect()
}

/// A path segment: printable, percent-encoded bytes, or junk that is not
/// valid percent-encoding.
fn segment(rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..5) {
        0 => "k".to_owned(),
        1 => random_bytes(rng, 40)
            .iter()
            .map(|b| format!("%{b:02X}"))
            .collect(),
        2 => pick(rng, &["%", "%zz", "%%", "..", ".", "%00", "%2F", "%FF%FE"]).to_owned(),
        3 => "x".repeat(rng.gen_range(1000..5000)),
        _ => (0..rng.gen_range(1..20))
            .map(|_| rng.gen_range(b'!'..=b'~') as char)
            .filter(|c| !matches!(c, ' ' | '#' | '?'))
            .collect(),
    }
}

fn path(rng: &mut ChaCha8Rng) -> String {
    let base = pick(
        rng,
        &[
            "/v1/kv/",
            "/v1/kv",
            "/v1/kv?prefix=",
            "/v1/kv?limit=",
            "/v1/cluster",
            "/v1/cluster/transfer-leader",
            "/v1/cluster/learners",
            "/v1/cluster/voters/",
            "/v1/cluster/members/",
            "/v1/cluster/snapshot",
            "/metrics",
            "/healthz",
            "/readyz",
            "/",
            "/v2/",
        ],
    );
    let mut p = base.to_owned();
    if rng.gen_bool(0.7) {
        p.push_str(&segment(rng));
    }
    if rng.gen_bool(0.3) {
        p.push_str(pick(
            rng,
            &[
                "?consistency=stale",
                "?consistency=bogus",
                "?consistency=",
                "&limit=-1",
                "?limit=99999999999999999999",
                "?digest=maybe",
                "?prefix=%FF&limit=0",
            ],
        ));
    }
    p
}

/// One request as bytes on the wire.
fn request(rng: &mut ChaCha8Rng) -> (String, Vec<u8>) {
    if rng.gen_bool(0.05) {
        // Not HTTP at all.
        let b = random_bytes(rng, 2000);
        return ("<random bytes>".into(), b);
    }
    let method = pick(
        rng,
        &[
            "GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW", "get",
        ],
    );
    let p = path(rng);
    let mut head = format!("{method} {p} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n");
    for _ in 0..rng.gen_range(0..4) {
        let h = match rng.gen_range(0..9) {
            0 => format!(
                "If-Match: {}",
                pick(
                    rng,
                    &[
                        "\"1\"",
                        "1",
                        "\"\"",
                        "*",
                        "\"-5\"",
                        "\"99999999999999999999999\"",
                        "W/\"3\""
                    ]
                )
            ),
            1 => format!("If-None-Match: {}", pick(rng, &["*", "\"1\"", "junk"])),
            2 => format!(
                "Idempotency-Key: {}",
                pick(rng, &["", "k", "\u{7f}", &"i".repeat(300)])
            ),
            3 => format!(
                "Content-Type: {}",
                pick(rng, &["application/json", "text/plain", "garbage/", ""])
            ),
            4 => format!(
                "Authorization: {}",
                pick(rng, &["Bearer", "Bearer x", "Basic Zm9v"])
            ),
            5 => format!("X-Junk: {}", "j".repeat(rng.gen_range(1..20_000))),
            6 => "x-raft-forwarded-by: 7".to_owned(),
            7 => format!(
                "Accept: {}",
                pick(rng, &["*/*", "application/problem+json", ""])
            ),
            _ => "Transfer-Encoding: chunked".to_owned(),
        };
        head.push_str(&h);
        head.push_str("\r\n");
    }
    let body: Vec<u8> = match rng.gen_range(0..6) {
        0 => Vec::new(),
        1 => random_bytes(rng, 300),
        2 => pick(
            rng,
            &[
                "{",
                "{}",
                "{\"id\":",
                "{\"id\":-1,\"peer_addr\":\"x\",\"client_addr\":5}",
                "{\"target\": \"a\"}",
                "null",
                "[1,2",
            ],
        )
        .as_bytes()
        .to_vec(),
        3 => vec![b'v'; rng.gen_range(4000..9000)],
        4 => vec![0u8; 2 << 20],
        _ => b"hello".to_vec(),
    };
    if !head.contains("Transfer-Encoding") || rng.gen_bool(0.5) {
        // Sometimes a Content-Length that lies.
        let len = if rng.gen_bool(0.1) {
            body.len() + rng.gen_range(1..100)
        } else {
            body.len()
        };
        head.push_str(&format!("Content-Length: {len}\r\n"));
        if len != body.len() {
            // A body shorter than announced: `send` ends the stream, and
            // the server may close without answering.
            head.push_str("X-Short-Body: 1\r\n");
        }
    }
    head.push_str("\r\n");
    let label = format!("{method} {}", p.chars().take(120).collect::<String>());
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    (label, bytes)
}

/// Sends raw bytes and returns the response status, or `None` when the
/// server closed the connection without one. With `end`, the client then
/// closes its side (for input that is not a complete request).
async fn send(addr: &str, bytes: &[u8], end: bool) -> Result<Option<u16>, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before reading a large body.
    let _ = s.write_all(bytes).await;
    if end {
        let _ = s.shutdown().await;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 64 {
                    break;
                }
            }
        }
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
    Ok(Some(status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_documented_statuses_and_break_nothing() {
    let seed: u64 = std::env::var("RAFT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("RAFT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    eprintln!("fuzz_http: seed {seed}, {cases} requests (replay: RAFT_FUZZ_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    let client = reqwest::Client::new();
    leader(&client, &procs, None).await;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..cases {
        let (label, bytes) = request(&mut rng);
        let node = rng.gen_range(0..procs.len());
        let addr = procs[node].http.trim_start_matches("http://").to_owned();
        let incomplete = label == "<random bytes>"
            || bytes.windows(15).any(|w| w == b"X-Short-Body: 1")
            || bytes.windows(18).any(|w| w == b"Transfer-Encoding:");
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), send(&addr, &bytes, incomplete)).await;
        let status = match outcome {
            Err(_) => panic!(
                "seed {seed}, request {i} ({label}) to node {}: no answer in 10 s",
                node + 1
            ),
            Ok(Err(e)) => panic!(
                "seed {seed}, request {i} ({label}) to node {}: {e}",
                node + 1
            ),
            Ok(Ok(s)) => s,
        };
        match status {
            Some(s) => assert!(
                ALLOWED.contains(&s),
                "seed {seed}, request {i} ({label}) to node {}: status {s} is not one the API documents",
                node + 1
            ),
            None => assert!(
                incomplete || bytes.len() > 1 << 20,
                "seed {seed}, request {i} ({label}): connection closed without a response"
            ),
        }
        *by_status
            .entry(status.map_or("closed".into(), |s| s.to_string()))
            .or_default() += 1;
    }
    eprintln!("fuzz_http: statuses {by_status:?}");
    for p in &mut procs {
        let exited = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "seed {seed}: node {} exited ({exited:?}); log:\n{}",
            p.id,
            p.log_text()
        );
        assert!(
            !p.log_text().contains("panicked"),
            "seed {seed}: node {} panicked; log:\n{}",
            p.id,
            p.log_text()
        );
    }
    // Still a working cluster, through every node.
    for (i, p) in procs.iter().enumerate() {
        let r = put(&client, p, &format!("after-fuzz-{i}"), "ok").await;
        assert!(
            r.status().is_success(),
            "seed {seed}: write via node {}: {}",
            p.id,
            r.status()
        );
        let v = client
            .get(format!("{}/v1/kv/after-fuzz-{i}", p.http))
            .send()
            .await
            .unwrap();
        assert_eq!(v.status(), 200, "seed {seed}");
        assert_eq!(v.text().await.unwrap(), "ok", "seed {seed}");
    }
}
