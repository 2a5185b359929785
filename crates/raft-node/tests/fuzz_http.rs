//! A bad-input campaign against the HTTP API of a real 3-node cluster:
//! random methods, paths (valid routes with random segments, raw bytes,
//! oversized), headers (preconditions, idempotency keys, content types,
//! oversized) and bodies (random bytes, broken JSON, oversized), and raw
//! garbage instead of a request, sent to random nodes so that followers
//! forward some of them.
//!
//! Every request must get an answer within 10 s (or, for bytes that are
//! not HTTP at all, have its connection closed), with a status the API
//! documents, never 500. A third of the requests are valid but for one
//! known defect (an oversized key or value, a malformed precondition,
//! idempotency key, query or node id, an unknown method or route); those
//! must get exactly the status the API specifies for it, as a problem
//! document, and a write among them must not have been applied. Afterwards
//! every node is still running, logged no panic, and serves a normal write
//! and read.
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

/// A request that is valid but for one defect, the status the API
/// specifies for that defect, and the key it would have written (which must
/// stay absent). The test cluster limits keys to 64 bytes and values to
/// 4096.
struct Defect {
    label: String,
    bytes: Vec<u8>,
    expect: u16,
    must_not_exist: Option<String>,
}

fn defect(rng: &mut ChaCha8Rng, i: usize) -> Defect {
    let key = format!("defect-{i}");
    let put = |key: &str, extra: &str, body: &[u8]| {
        let mut b = format!(
            "PUT /v1/kv/{key} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        b.extend_from_slice(body);
        b
    };
    let bare = |method: &str, target: &str, extra: &str, body: &str| {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let (label, bytes, expect, written) = match rng.gen_range(0..12) {
        0 => {
            let long = "d".repeat(rng.gen_range(65..300));
            ("key over the limit", put(&long, "", b"v"), 414, false)
        }
        1 => {
            let body = vec![b'v'; rng.gen_range(4097..9000)];
            ("value over the limit", put(&key, "", &body), 413, true)
        }
        2 => {
            let v = pick(
                rng,
                &[
                    "junk",
                    "1",
                    "\"\"",
                    "\"abc\"",
                    "\"-5\"",
                    "W/\"3\"",
                    "*",
                    "\"99999999999999999999999\"",
                ],
            );
            let h = format!("If-Match: {v}\r\n");
            ("malformed If-Match", put(&key, &h, b"v"), 400, true)
        }
        3 => {
            let v = pick(rng, &["\"1\"", "junk", "W/\"1\""]);
            let h = format!("If-None-Match: {v}\r\n");
            ("If-None-Match other than *", put(&key, &h, b"v"), 400, true)
        }
        4 => {
            let h = format!(
                "Idempotency-Key: {}\r\n",
                "i".repeat(rng.gen_range(257..600))
            );
            ("Idempotency-Key too long", put(&key, &h, b"v"), 400, true)
        }
        5 => {
            let c = pick(rng, &["bogus", "", "LINEARIZABLE", "strong"]);
            let t = format!("/v1/kv/{key}?consistency={c}");
            ("unknown consistency", bare("GET", &t, "", ""), 400, false)
        }
        6 => {
            let l = pick(rng, &["-1", "x", "99999999999999999999", "1.5"]);
            let t = format!("/v1/kv?prefix=a&limit={l}");
            ("malformed limit", bare("GET", &t, "", ""), 400, false)
        }
        7 => {
            let m = pick(rng, &["BREW", "get", "PATCH", "POST", "TRACE"]);
            let t = format!("/v1/kv/{key}");
            ("method not allowed", bare(m, &t, "", "v"), 405, true)
        }
        8 => {
            let t = pick(
                rng,
                &["/v2/kv/a", "/v1/kvx", "/v1/cluster/nope", "/index.html"],
            );
            ("unknown route", bare("GET", t, "", ""), 404, false)
        }
        9 => {
            let id = pick(rng, &["abc", "-1", "1.0", "99999999999999999999999"]);
            let (m, t) = if rng.gen_bool(0.5) {
                ("POST", format!("/v1/cluster/voters/{id}"))
            } else {
                ("DELETE", format!("/v1/cluster/members/{id}"))
            };
            ("malformed node id", bare(m, &t, "", ""), 400, false)
        }
        10 => {
            let body = pick(rng, &["{", "{\"id\":-1}", "null", "{\"id\":\"a\"}"]);
            let h = "Content-Type: application/json\r\n";
            (
                "malformed learner",
                bare("POST", "/v1/cluster/learners", h, body),
                400,
                false,
            )
        }
        _ => {
            let d = pick(rng, &["maybe", "1", "yes"]);
            let t = format!("/v1/cluster?digest={d}");
            ("malformed digest flag", bare("GET", &t, "", ""), 400, false)
        }
    };
    Defect {
        label: format!("defect: {label}"),
        bytes,
        expect,
        must_not_exist: written.then_some(key),
    }
}

/// Sends raw bytes and returns the response status and head, or `None`
/// when the server closed the connection without one. With `end`, the
/// client then closes its side (for input that is not a complete request).
async fn send(addr: &str, bytes: &[u8], end: bool) -> Result<Option<(u16, String)>, String> {
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
                if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 64 * 1024 {
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
    let head = line.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    Ok(Some((status, head)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_documented_statuses_and_break_nothing() {
    let seed: u64 = raft_core::testing::seed_from_env("RAFT_FUZZ_SEED");
    let cases: usize = raft_core::testing::env_or("RAFT_FUZZ_CASES", 200);
    eprintln!("fuzz_http: seed {seed}, {cases} requests (replay: RAFT_FUZZ_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    leader(&client, &procs, None).await;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    let mut absent = Vec::new();
    for i in 0..cases {
        let node = rng.gen_range(0..procs.len());
        if rng.gen_bool(0.33) {
            let d = defect(&mut rng, i);
            let addr = procs[node].http.trim_start_matches("http://").to_owned();
            let got = tokio::time::timeout(Duration::from_secs(10), send(&addr, &d.bytes, false))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "seed {seed}, request {i} ({}) to node {}: no answer in 10 s",
                        d.label,
                        node + 1
                    )
                })
                .unwrap_or_else(|e| panic!("seed {seed}, request {i} ({}): {e}", d.label));
            let Some((status, head)) = got else {
                panic!(
                    "seed {seed}, request {i} ({}): closed without a response",
                    d.label
                )
            };
            assert_eq!(
                status,
                d.expect,
                "seed {seed}, request {i} ({}) to node {}: {head}",
                d.label,
                node + 1
            );
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/problem+json"),
                "seed {seed}, request {i} ({}): not a problem document: {head}",
                d.label
            );
            absent.extend(d.must_not_exist);
            *by_status
                .entry(format!("{status} ({})", d.label))
                .or_default() += 1;
            continue;
        }
        let (label, bytes) = request(&mut rng);
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
        match status.as_ref().map(|(s, _)| *s) {
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
            .entry(status.map_or("closed".into(), |(s, _)| s.to_string()))
            .or_default() += 1;
    }
    eprintln!("fuzz_http: statuses {by_status:?}");
    assert_running_without_panic(&mut procs, &format!("seed {seed}"));
    // Still a working cluster, through every node. A random request may
    // have moved the leadership: wait for a leader, and retry a write that
    // was refused for want of one.
    leader(&client, &procs, None).await;
    for (i, p) in procs.iter().enumerate() {
        let key = format!("after-fuzz-{i}");
        let status = status_past_503(|| put(&client, p, &key, "ok")).await;
        assert!(
            status.is_success(),
            "seed {seed}: write via node {}: {status}",
            p.id,
        );
        let v = client
            .get(format!("{}/v1/kv/after-fuzz-{i}", p.http))
            .send()
            .await
            .unwrap();
        assert_eq!(v.status(), 200, "seed {seed}");
        assert_eq!(v.text().await.unwrap(), "ok", "seed {seed}");
    }
    // The defective writes applied nothing.
    for key in &absent {
        let url = format!("{}/v1/kv/{key}", procs[0].http);
        let status = status_past_503(|| async { client.get(&url).send().await.unwrap() }).await;
        assert_eq!(
            status, 404,
            "seed {seed}: a refused write to {key} was applied"
        );
    }
    eprintln!("fuzz_http: {} refused writes checked absent", absent.len());
}
