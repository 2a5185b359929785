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
//! Beside the campaign, resource exhaustion: slow heads, stalled bodies
//! and TLS handshakes, connection floods, descriptors exhausted, a hung
//! disk, huge listings and clients that never read, each with the bounds
//! the raft-node README states (see the tests below).
//!
//! The campaign is seeded: a failure prints the seed, and
//! `RAFT_FUZZ_SEED=<seed> cargo test -p raftkv-node --test fuzz_http` replays
//! it. `RAFT_FUZZ_CASES` sets the number of requests (default 200).

mod common;
#[path = "../../raft-log/tests/support/failsync.rs"]
mod failsync;

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
            "/v1/txn",
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
    leader(&client_of(&procs), &procs, None).await;
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
    let nodes = client_of(&procs);
    leader(&nodes, &procs, None).await;
    for (i, p) in procs.iter().enumerate() {
        let key = format!("after-fuzz-{i}");
        if let Err(e) = put(&nodes, p, &key, "ok").await {
            panic!("seed {seed}: write via node {}: {e}", p.id);
        }
        let v = via(&nodes, p).get(&key).await;
        let v = v.unwrap_or_else(|e| panic!("seed {seed}: read via node {}: {e}", p.id));
        assert_eq!(v.map(|e| e.value), Some("ok".into()), "seed {seed}");
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

// ---------------------------------------------------------------------
// Resource exhaustion: slow headers, stalled bodies, connection floods and
// huge listings. These run one at a time (they measure file descriptors
// and memory of the nodes) and beside the random campaign above.

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lets this test process open as many sockets as its hard limit allows.
fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn open_fds(p: &Proc) -> usize {
    let pid = p.child.as_ref().expect("running").id();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn status_line(p: &Proc, field: &str) -> u64 {
    let pid = p.child.as_ref().expect("running").id();
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Opens `n` connections to `addr` that each send `bytes` and then
/// nothing; they stay open until dropped.
async fn stalled(addr: &str, n: usize, bytes: &[u8]) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => panic!("opening stalled connection {i} of {n}: {e}"),
        };
        if !bytes.is_empty() {
            // A refused connection is closed by the node: that is fine.
            let _ = s.write_all(bytes).await;
        }
        out.push(s);
    }
    out
}

/// A plain request on a new connection; the status and how long it took.
async fn timed_get(addr: &str, path: &str) -> (Option<u16>, Duration) {
    let (got, took) = probe(addr, path).await;
    (got.ok(), took)
}

/// [`timed_get`] that says why there was no status: the connection was
/// refused, reset or closed without an answer, or nothing came within
/// 10 s.
async fn probe(addr: &str, path: &str) -> (Result<u16, String>, Duration) {
    let started = std::time::Instant::now();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) if buf.is_empty() => return Err("closed without an answer".to_string()),
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the answer ({} bytes in): {e}", buf.len())),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        head.strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {head:?}"))
    };
    let got = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 10 s".to_string()),
    };
    (got, started.elapsed())
}

async fn wait_fds_below(p: &Proc, bound: usize, within: Duration) -> usize {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = open_fds(p);
        if n <= bound || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Samples a process's open files every 20 ms until stopped; the peak.
fn sample_fds(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let n = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0);
            peak = peak.max(n);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// The sum of the series of counter `name` in a node's `/metrics` whose
/// labels include `label` (`key="value"`; every series carries `node` too).
async fn counter(client: &reqwest::Client, p: &Proc, name: &str, label: &str) -> f64 {
    let text = client
        .get(format!("{}/metrics", p.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 5,000 connections that sent half a request line, 512 that announced a
/// 1 MB body and sent none of it and 512 that sent all of it but one byte,
/// all held open, against one node capped at 2,000 connections (so the cap
/// is reached and idle connections are evicted to make room): meanwhile
/// that node answers `/healthz` within 100 ms and a well-behaved `PUT`
/// within 1 s, its open files stay under the cap and its memory grows by
/// less than 256 MiB (bodies come out of a 64 MiB budget; beyond it,
/// 503), and once the header and body timeouts pass its open files fall
/// back although the attacker keeps its sockets. Then: a head larger than
/// `--http-max-header-bytes` gets 431, a chunked body above the value limit
/// 413, a stalled chunked body 408, and the node stops on SIGTERM within
/// its grace period while fresh stalled connections are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_stalled_bodies_do_not_starve_probes_or_writes() {
    let _heavy = HEAVY.lock().await;
    let fd_limit = raise_fd_limit();
    assert!(
        fd_limit >= 7_000,
        "this test opens 6,024 sockets; the open-files limit is {fd_limit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        // Long enough that the flood is still open when the cap is
        // reached, even on a loaded machine where opening it takes seconds.
        "--http-header-timeout-ms=8000".to_string(),
        "--http-idle-timeout-ms=8000".to_string(),
        "--http-body-timeout-ms=10000".to_string(),
        "--http-max-connections=2000".to_string(),
        "--max-concurrent-requests=512".to_string(),
        // Bodies held in memory: 64 MiB; the rest of the growth is the
        // connections' own buffers.
        "--http-buffer-mib=64".to_string(),
    ];
    let mut procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    leader(&client_of(&procs), &procs, None).await;
    let target = &procs[0];
    let pid = target.child.as_ref().unwrap().id();
    let addr = target.http.trim_start_matches("http://").to_owned();
    let before = open_fds(target);
    let rss_before = status_line(target, "VmRSS:");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fd_peak = sample_fds(pid, stop.clone());
    let rss_peak = sample_rss(pid, stop.clone());

    let head = b"PUT /v1/kv/stalled HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n";
    let mut bodies = stalled(&addr, 512, head).await;
    let mut most = head.to_vec();
    most.extend(std::iter::repeat_n(b'v', 999_999));
    bodies.extend(stalled(&addr, 512, &most).await);
    let halves = stalled(&addr, 5000, b"GET /v1/kv/a HTT").await;

    let (health, took) = timed_get(&addr, "/healthz").await;
    assert_eq!(
        health,
        Some(200),
        "/healthz under the flood (took {took:?})"
    );
    assert!(
        took < Duration::from_millis(100),
        "/healthz took {took:?} under the flood"
    );
    let started = std::time::Instant::now();
    let put = client
        .put(format!("{}/v1/kv/well-behaved", target.http))
        .body("yes")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let put_took = started.elapsed();
    let put =
        put.unwrap_or_else(|e| panic!("a PUT under the flood failed after {put_took:?}: {e}"));
    assert_eq!(put.status(), 200, "{:?}", put.text().await);
    assert!(
        put_took < Duration::from_secs(1),
        "a PUT under the flood took {put_took:?}"
    );
    let evicted = counter(
        &client,
        target,
        "raft_node_http_connections_closed_total",
        "reason=\"evicted\"",
    )
    .await;
    assert!(evicted > 0.0, "no connection was evicted at the cap");

    // The attacker keeps every socket; the node's timeouts close them.
    let after = wait_fds_below(target, before + 32, Duration::from_secs(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (fd_peak, rss_peak) = (fd_peak.join().unwrap(), rss_peak.join().unwrap());
    eprintln!(
        "flood: /healthz {took:?}, PUT {put_took:?}; node files {before} before, peak {fd_peak}, \
         {after} after; {evicted} evicted; RSS {} -> peak {} MiB",
        rss_before >> 20,
        rss_peak >> 20
    );
    assert!(
        after <= before + 32,
        "the node still holds {after} files 30 s after the flood ({before} before)"
    );
    // Evicted connections close a moment after they are chosen (their
    // task runs), hence the slack above the cap.
    assert!(
        fd_peak <= before + 2000 + 512,
        "the node held {fd_peak} files during the flood ({before} before); the cap is 2000"
    );
    assert!(
        rss_peak.saturating_sub(rss_before) < 256 << 20,
        "the node's memory grew from {} to {} MiB under the stalled bodies",
        rss_before >> 20,
        rss_peak >> 20
    );
    // A stalled body that got a slot got 408 before its connection closed.
    let mut timed_out = 0;
    for mut b in bodies.into_iter().take(64) {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), b.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 408") {
            timed_out += 1;
        } else {
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with("HTTP/1.1 503") && answer.contains("overloaded"),
                "a stalled body's answer: {answer:?}"
            );
        }
    }
    assert!(timed_out > 0, "no stalled body got 408");

    // A body announced above the limit is refused from its head alone.
    let started = std::time::Instant::now();
    let got = send(
        &addr,
        b"PUT /v1/kv/huge HTTP/1.1\r\nhost: x\r\ncontent-length: 67108864\r\n\r\n",
        false,
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(got.map(|(s, _)| s), Some(413), "a 64 MiB body announced");
    assert!(took < Duration::from_secs(1), "413 took {took:?}");
    // A head larger than --http-max-header-bytes (64 KiB).
    let mut big_head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    big_head.extend(std::iter::repeat_n(b'h', 100_000));
    let got = send(&addr, &big_head, false).await.unwrap();
    assert_eq!(got.map(|(s, _)| s), Some(431), "a 100 KB head");
    // A chunked body above the 1 MiB value limit.
    let mut chunked =
        b"PUT /v1/kv/chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend(format!("{:x}\r\n", 300_000).as_bytes());
        chunked.extend(std::iter::repeat_n(b'c', 300_000));
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let got = send(&addr, &chunked, false).await.unwrap();
    assert_eq!(got.map(|(s, _)| s), Some(413), "a 1.5 MB chunked body");
    // A chunked body that stalls.
    let started = std::time::Instant::now();
    let got = send(
        &addr,
        b"PUT /v1/kv/chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabc",
        false,
    )
    .await
    .unwrap();
    assert_eq!(got.map(|(s, _)| s), Some(408), "a stalled chunked body");
    assert!(started.elapsed() < Duration::from_secs(12));
    assert!(
        client
            .get(format!("{}/v1/kv/chunked", target.http))
            .send()
            .await
            .unwrap()
            .status()
            == 404,
        "nothing of the refused bodies was written"
    );

    // A stop while fresh stalled connections are open ends within the
    // grace period (10 s) plus the leadership handover.
    let _late_bodies = stalled(
        &addr,
        100,
        b"PUT /v1/kv/late HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
    )
    .await;
    let _late_halves = stalled(&addr, 100, b"GET /v1/kv/a HTT").await;
    drop(halves);
    let started = std::time::Instant::now();
    let status = procs[0].sigterm();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(15), "the stop took {took:?}");
    assert_running_without_panic(&mut procs[1..], "after the connection flood");
}

/// Over HTTPS: 1,000 connections that never send a ClientHello and 1,000
/// that send half of one do not delay new HTTPS clients (the accept loop
/// used to wait for a handshake slot), and the handshake timeout closes
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_handshakes_do_not_block_new_https_clients() {
    let _heavy = HEAVY.lock().await;
    let fd_limit = raise_fd_limit();
    assert!(
        fd_limit >= 3_000,
        "this test opens 2,000 sockets; the open-files limit is {fd_limit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    // Capped at 1,024 connections: the 2,000 stalled handshakes reach the
    // cap and are evicted to make room.
    let extra = vec![
        "--client-tls".to_string(),
        "--http-tls-handshake-timeout-ms=3000".to_string(),
        "--http-max-connections=1024".to_string(),
        "--max-concurrent-requests=256".to_string(),
        "--http-max-receiving-bodies=256".to_string(),
    ];
    let procs = cluster_with(dir.path(), 3, &extra, &names, "https");
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("certs/ca.pem")).unwrap())
            .unwrap();
    let https = || {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let nodes = builder_of(&procs)
        .ca_file(dir.path().join("certs/ca.pem"))
        .unwrap()
        .build()
        .unwrap();
    leader(&nodes, &procs, None).await;
    let target = &procs[0];
    let addr = target.http.trim_start_matches("https://").to_owned();
    let before = open_fds(target);
    let silent = stalled(&addr, 1000, b"").await;
    // The first bytes of a TLS record header and a ClientHello, no more.
    let halves = stalled(&addr, 1000, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;

    for (what, path) in [("/healthz", "/healthz"), ("a read", "/v1/kv/absent")] {
        // A new client each time: a new connection and handshake.
        let started = std::time::Instant::now();
        let r = https().get(format!("{}{path}", target.http)).send().await;
        let took = started.elapsed();
        let r = r.unwrap_or_else(|e| panic!("{what} over HTTPS failed after {took:?}: {e}"));
        assert!(
            r.status() == 200 || r.status() == 404,
            "{what}: {}",
            r.status()
        );
        assert!(
            took < Duration::from_secs(1),
            "{what} over HTTPS took {took:?} beside 2,000 stalled handshakes"
        );
    }
    let after = wait_fds_below(target, before + 32, Duration::from_secs(15)).await;
    assert!(
        after <= before + 32,
        "the node still holds {after} files after the handshake timeout ({before} before)"
    );
    let evicted = counter(
        &https(),
        target,
        "raft_node_http_connections_closed_total",
        "reason=\"evicted\"",
    )
    .await;
    assert!(
        evicted > 0.0,
        "no handshaking connection was evicted at the cap"
    );
    drop((silent, halves));
    assert_running_without_panic(&mut { procs }, "after the stalled handshakes");
}

/// Samples a process's resident memory every 20 ms until stopped; the
/// peak, in bytes.
fn sample_rss(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
            peak = peak.max(rss);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// The `next` cursor and the item count of a listing page, read without
/// decoding its values.
fn page_summary(body: &[u8]) -> (Option<String>, usize, Vec<String>) {
    #[derive(serde::Deserialize)]
    struct Item {
        key: String,
        #[allow(dead_code)]
        value: Option<serde::de::IgnoredAny>,
        #[allow(dead_code)]
        value_base64: Option<serde::de::IgnoredAny>,
    }
    #[derive(serde::Deserialize)]
    struct Page {
        items: Vec<Item>,
        more: bool,
        next: Option<String>,
    }
    let page: Page = serde_json::from_slice(body).expect("a listing page is JSON");
    assert_eq!(
        page.more,
        page.next.is_some(),
        "`next` is given exactly when more follow"
    );
    let keys: Vec<String> = page.items.into_iter().map(|i| i.key).collect();
    (page.next, keys.len(), keys)
}

/// 1,000 values of 1 MiB of 0x01 (which JSON escapes sixfold), listed by
/// three clients at once through a follower with the largest `limit`:
/// every answer is bounded by `--max-list-bytes` (plus one item) and says
/// where to go on, the follower's and the leader's memory grow by less than
/// 256 MiB, and no election happens. A keys-only walk with the cursor then
/// visits every key once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_listings_are_bounded_paged_and_keep_the_cluster_up() {
    let _heavy = HEAVY.lock().await;
    let values: usize = raft_core::testing::env_or("RAFT_LISTING_VALUES", 1000);
    let pages: usize = raft_core::testing::env_or("RAFT_LISTING_PAGES", 3);
    let dir = tempfile::tempdir().unwrap();
    // Elections after 1-2 s of silence (50 ticks of 20 ms), as with the
    // defaults, not the tests' usual 0.4 s: a loaded debug build can miss
    // a few heartbeats, and the test asserts that no election happens.
    let extra = ["--election-ticks=50".to_string()];
    let mut procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let nodes = builder_of(&procs)
        .request_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let lead = leader(&nodes, &procs, None).await;
    let leader_proc = procs.iter().find(|p| p.id == lead).unwrap();
    let follower = procs.iter().find(|p| p.id != lead).unwrap();
    let value = vec![0x01u8; 1 << 20];
    let started = std::time::Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            let url = leader_proc.http.clone();
            let value = value.clone();
            tokio::spawn(async move {
                for i in (w..values).step_by(8) {
                    // A loaded machine may see an election while 1 GiB is
                    // written: retry what was refused or went unanswered
                    // (the same value again changes nothing).
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    let mut last: String;
                    loop {
                        let r = client
                            .put(format!("{url}/v1/kv/big/{i:04}"))
                            .body(value.clone())
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => break,
                            Ok(r) if r.status() == 503 || r.status() == 504 => {
                                let status = r.status();
                                last = format!("{status} {}", r.text().await.unwrap_or_default());
                            }
                            Ok(r) => panic!("PUT big/{i:04}: {} {:?}", r.status(), r.text().await),
                            Err(e) => last = format!("{e:?}"),
                        }
                        assert!(
                            std::time::Instant::now() < deadline,
                            "PUT big/{i:04} not accepted within 60 s; last answer: {last}"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    eprintln!("wrote {values} values of 1 MiB in {:?}", started.elapsed());
    // The follower has applied them all.
    let commit = status_of(&nodes, leader_proc).await.commit;
    wait_status(
        &nodes,
        follower,
        120,
        "the follower applied the writes",
        |s| s.applied >= commit,
    )
    .await;
    let term_before = status_of(&nodes, follower).await.term;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss_of = |p: &Proc| status_line(p, "VmRSS:");
    let (f_before, l_before) = (rss_of(follower), rss_of(leader_proc));
    let f_peak = sample_rss(follower.child.as_ref().unwrap().id(), stop.clone());
    let l_peak = sample_rss(leader_proc.child.as_ref().unwrap().id(), stop.clone());
    let listers: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let url = follower.http.clone();
            tokio::spawn(async move {
                let mut cursor: Option<String> = None;
                let mut largest = 0usize;
                for _ in 0..pages {
                    let mut u = format!("{url}/v1/kv?prefix=big/&limit=1000");
                    if let Some(c) = &cursor {
                        u.push_str(&format!("&cursor={c}"));
                    }
                    let r = client.get(u).send().await.expect("listing");
                    assert_eq!(r.status(), 200);
                    let body = r.bytes().await.expect("listing body");
                    largest = largest.max(body.len());
                    let (next, n, _) = page_summary(&body);
                    assert!(n >= 1, "a page holds at least one item");
                    cursor = next;
                    if cursor.is_none() {
                        break;
                    }
                }
                largest
            })
        })
        .collect();
    let mut largest = 0;
    for l in listers {
        largest = largest.max(l.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (f_peak, l_peak) = (f_peak.join().unwrap(), l_peak.join().unwrap());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "listings: largest answer {:.1} MiB; follower RSS {:.0} -> peak {:.0} MiB, leader {:.0} -> {:.0} MiB",
        mib(largest as u64),
        mib(f_before),
        mib(f_peak),
        mib(l_before),
        mib(l_peak)
    );
    // 8 MiB (the default --max-list-bytes) plus one item: 1 MiB of \u0001.
    let bound = (8 << 20) + 6 * (1 << 20) + 4096;
    assert!(
        largest <= bound,
        "a listing answer of {largest} bytes; bound {bound}"
    );
    for (who, before, peak) in [("follower", f_before, f_peak), ("leader", l_before, l_peak)] {
        assert!(
            peak.saturating_sub(before) < 256 << 20,
            "the {who}'s memory grew from {:.0} to {:.0} MiB during three listings",
            mib(before),
            mib(peak)
        );
    }
    for p in &procs {
        assert_eq!(
            status_of(&nodes, p).await.term,
            term_before,
            "an election happened during the listings (node {})",
            p.id
        );
    }

    // 100 clients that ask for the largest page and never read it: the
    // pages held for them come out of the memory budget (128 MiB).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let l_before = rss_of(leader_proc);
    let l_peak = sample_rss(leader_proc.child.as_ref().unwrap().id(), stop.clone());
    let addr = leader_proc.http.trim_start_matches("http://").to_owned();
    let readers = stalled(
        &addr,
        100,
        b"GET /v1/kv?prefix=big/&limit=1000 HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (health, took) = probe(&addr, "/healthz").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let l_peak = l_peak.join().unwrap();
    eprintln!(
        "100 listings never read: leader RSS {:.0} -> peak {:.0} MiB",
        mib(l_before),
        mib(l_peak)
    );
    if health != Ok(200) {
        let leader_id = leader_proc.id;
        let fds = open_fds(leader_proc);
        panic!(
            "/healthz of the leader (node {leader_id}) beside unread listings: {health:?} after \
             {took:?}; the leader has {fds} open files, RSS peak {:.0} MiB\n{}",
            mib(l_peak),
            nodes_report(&mut procs, 60)
        );
    }
    assert!(
        l_peak.saturating_sub(l_before) < 256 << 20,
        "the leader's memory grew from {:.0} to {:.0} MiB with 100 unread listings",
        mib(l_before),
        mib(l_peak)
    );
    drop(readers);

    // Every key once, in order, page by page.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut u = format!(
            "{}/v1/kv?prefix=big/&limit=100&keys_only=true",
            follower.http
        );
        if let Some(c) = &cursor {
            u.push_str(&format!("&cursor={c}"));
        }
        let body = client.get(u).send().await.unwrap().bytes().await.unwrap();
        let (next, _, keys) = page_summary(&body);
        seen.extend(keys);
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<String> = (0..values).map(|i| format!("big/{i:04}")).collect();
    assert_eq!(
        seen, expected,
        "a keys-only walk visits every key once, in order"
    );
    assert_running_without_panic(&mut procs, "after the listings");
}

/// Stalled bodies beyond `--http-max-receiving-bodies` get 503
/// `overloaded` at once, so they never fill the connection table: with 64
/// of them against a cap of 64 connections, `/healthz` still answers, and
/// the 16 that got a slot time out with 408. `POST /healthz` gets a problem
/// document like any other wrong method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_beyond_their_slots_get_503_and_probes_still_answer() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--http-max-connections=64".to_string(),
        "--max-concurrent-requests=16".to_string(),
        "--http-max-receiving-bodies=16".to_string(),
        "--http-body-timeout-ms=3000".to_string(),
    ];
    let procs = cluster_with(dir.path(), 1, &extra, &[], "http");
    leader(&client_of(&procs), &procs, None).await;
    let addr = procs[0].http.trim_start_matches("http://").to_owned();
    let bodies = stalled(
        &addr,
        64,
        b"PUT /v1/kv/stalled HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, took) = timed_get(&addr, "/healthz").await;
    assert_eq!(status, Some(200), "/healthz beside 64 stalled bodies");
    assert!(took < Duration::from_millis(500), "/healthz took {took:?}");
    let (mut got408, mut got503) = (0, 0);
    for mut b in bodies {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), b.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        if answer.starts_with("http/1.1 408") {
            got408 += 1;
        } else if answer.starts_with("http/1.1 503") {
            assert!(answer.contains("retry-after: 1"), "{answer}");
            assert!(answer.contains("overloaded"), "{answer}");
            got503 += 1;
        } else {
            panic!("a stalled body's answer: {answer:?}");
        }
    }
    assert_eq!(
        (got408, got503),
        (16, 48),
        "408s and 503s of 64 stalled bodies"
    );
    let got = send(
        &addr,
        b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .await
    .unwrap();
    let (status, head) = got.expect("an answer");
    assert_eq!(status, 405);
    assert!(
        head.to_ascii_lowercase()
            .contains("application/problem+json"),
        "{head}"
    );
    assert_running_without_panic(&mut { procs }, "after the stalled bodies");
}

/// Out of file descriptors (the node's limit lowered to 256 after it
/// started, so its connection cap of 4,096 cannot help), 600 silent
/// connections do not lock probes out: the accept loop closes the
/// connections idle the longest when `accept` fails for lack of
/// descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_longest_idle_connections_make_room() {
    let _heavy = HEAVY.lock().await;
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let procs = cluster_with(dir.path(), 1, &[], &[], "http");
    leader(&client_of(&procs), &procs, None).await;
    let pid = procs[0].child.as_ref().unwrap().id();
    let low = rustix::process::Rlimit {
        current: Some(256),
        maximum: Some(256),
    };
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::Resource::Nofile,
        low,
    )
    .expect("lowering the node's open-files limit");
    let addr = procs[0].http.trim_start_matches("http://").to_owned();
    let silent = stalled(&addr, 600, b"").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        let (status, took) = timed_get(&addr, "/healthz").await;
        assert_eq!(
            status,
            Some(200),
            "probe {i} with the descriptors exhausted (took {took:?})"
        );
        assert!(took < Duration::from_secs(2), "probe {i} took {took:?}");
    }
    drop(silent);
    assert_running_without_panic(&mut { procs }, "after running out of descriptors");
}

/// A node whose disk hangs (every flush blocks): writes cannot finish, so
/// they end at `--http-request-deadline-ms` with 504 (outcome unknown)
/// although `--request-timeout-ms` is a minute; beyond
/// `--max-concurrent-requests` running requests a new one gets 503
/// `overloaded` at once instead of waiting; `/healthz` keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_requests_meet_the_deadline_and_extra_ones_are_shed() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let lib = failsync::FailSync::build(dir.path());
    let trigger = dir.path().join("hang");
    let extra = [
        "--request-timeout-ms=60000".to_string(),
        "--http-request-deadline-ms=2000".to_string(),
        "--max-concurrent-requests=4".to_string(),
        "--storage-stall-timeout-ms=0".to_string(),
    ];
    let env = lib.env_hang(&trigger);
    let procs = common::cluster_with_env(dir.path(), 1, &extra, &[], "http", |_| env.clone());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    leader(&client_of(&procs), &procs, None).await;
    let url = procs[0].http.clone();
    std::fs::write(&trigger, b"").unwrap();
    let hung: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let r = client
                    .put(format!("{url}/v1/kv/hung-{i}"))
                    .body("x")
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body = r.text().await.unwrap();
                (status, body, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let r = client
        .put(format!("{url}/v1/kv/one-more"))
        .body("x")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503, "a fifth request beside four hung ones");
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(r.text().await.unwrap().contains("overloaded"));
    assert!(took < Duration::from_secs(1), "the 503 took {took:?}");
    let (health, took) = timed_get(url.trim_start_matches("http://"), "/healthz").await;
    assert_eq!(health, Some(200), "/healthz beside hung requests");
    assert!(took < Duration::from_millis(500), "/healthz took {took:?}");
    for h in hung {
        let (status, body, took) = h.await.unwrap();
        assert_eq!(status, 504, "a write that hung: {body}");
        assert!(body.contains("outcome-unknown"), "{body}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "the deadline is 2 s; the write ended after {took:?}"
        );
    }
    std::fs::remove_file(&trigger).unwrap();
    assert_running_without_panic(&mut { procs }, "after the hung disk");
}

/// A client that reads a listing slowly, through a follower: the follower
/// takes the leader's answer whole (its own deadline to the leader is one
/// second) and sends it on at the client's pace, with its length, and the
/// client's connection is not evicted while its answer is on the way,
/// although new connections keep arriving at a follower capped at 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_its_whole_listing_through_a_follower() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--request-timeout-ms=1000".to_string(),
        "--http-max-connections=8".to_string(),
        "--max-concurrent-requests=2".to_string(),
        "--http-max-receiving-bodies=2".to_string(),
    ];
    let procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let lead = leader(&client_of(&procs), &procs, None).await;
    let leader_proc = procs.iter().find(|p| p.id == lead).unwrap();
    let follower = procs.iter().find(|p| p.id != lead).unwrap();
    for i in 0..10 {
        let r = client
            .put(format!("{}/v1/kv/slow/{i}", leader_proc.http))
            .body(vec![0x01u8; 1 << 20])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let addr = follower.http.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /v1/kv?prefix=slow/&limit=1000&consistency=linearizable HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let addr2 = addr.clone();
    let crowd = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..20 {
            if let Ok(c) = tokio::net::TcpStream::connect(&addr2).await {
                held.push(c);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        held
    });
    // About 4 s to read the whole answer, 64 KiB at a time.
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("reading the listing after {} bytes: {e}", answer.len()),
            Err(_) => panic!("the listing stalled after {} bytes", answer.len()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(crowd.await.unwrap());
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let body = &answer[split + 4..];
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    assert_eq!(body.len(), length, "the whole answer arrived");
    let (_, n, _) = page_summary(body);
    assert!(n >= 1);
    assert_running_without_panic(&mut { procs }, "after the slow reader");
}
