//! The HTTP load generator: a fixed number of closed-loop clients, each on
//! its own keep-alive HTTP/1.1 connection, writing and reading random keys
//! through raft-node's `/v1/kv` API or etcd's v3 JSON gateway; latencies go
//! into HDR histograms.
//!
//! The same code drives both systems; only the request shape differs:
//! raft-node takes `PUT /v1/kv/{key}` with the raw value and `GET
//! /v1/kv/{key}` (linearizable); etcd takes `POST /v3/kv/put` and `POST
//! /v3/kv/range` (linearizable) with base64 in JSON.
//!
//! It is the measuring instrument, so it talks HTTP itself, on hyper, for
//! both systems, and does not use [`raft_client`] for raft-node: one code
//! path gives every request the same cost on either side. The typed
//! client's retries, backoff, idempotency keys and leader tracking exist
//! on the raft-node side only; with them a failed request would be sent
//! again unseen, counted as one slower success, and requests would move
//! to the leader whatever `--via` asks, so the two systems would no longer
//! be measured alike. Each request here is sent once; a failure is counted
//! by kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::System;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Concurrent clients, each with one request outstanding.
    pub clients: usize,
    /// Bytes per written value.
    pub value_bytes: usize,
    /// Keys are drawn uniformly from this many.
    pub keys: u64,
    /// Share of reads, 0–100.
    pub read_percent: u8,
    /// Time before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// A request that takes longer counts as an error and its connection
    /// is replaced.
    pub request_timeout: Duration,
    /// Seeds the clients' key and operation choices.
    pub seed: u64,
}

/// What the clients saw during the measured window.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Successful operations completed in the window.
    pub ops: u64,
    /// Length of the window, seconds.
    pub elapsed_s: f64,
    /// Latency of every successful operation, microseconds.
    pub latency_us: Histogram<u64>,
    /// Failed requests in the window, by kind.
    pub errors: BTreeMap<String, u64>,
    /// CPU seconds the load generator itself used during the window.
    pub loadgen_cpu_s: f64,
}

/// Latency histograms cover 1 µs to 100 s with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Bytes of a random-looking printable value.
pub(crate) fn value(len: usize, rng: &mut ChaCha8Rng) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
        .collect::<Vec<u8>>()
        .into()
}

/// `host:port` of an `http://host:port` URL.
pub(crate) fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// endpoints are supported: {url}"))?;
    Ok(rest.trim_end_matches('/').to_owned())
}

/// One request to send, built for the target system.
pub(crate) fn build_request(
    system: System,
    host: &str,
    key: &str,
    write: Option<&Bytes>,
    etcd_value_b64: &str,
) -> Request<Full<Bytes>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let req = Request::builder().header(hyper::header::HOST, host);
    let built = match (system, write) {
        (System::Raft, Some(v)) => req
            .method(Method::PUT)
            .uri(format!("/v1/kv/{key}"))
            .body(Full::new(v.clone())),
        (System::Raft, None) => req
            .method(Method::GET)
            .uri(format!("/v1/kv/{key}"))
            .body(Full::new(Bytes::new())),
        (System::Etcd, Some(_)) => req
            .method(Method::POST)
            .uri("/v3/kv/put")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(format!(
                "{{\"key\":\"{}\",\"value\":\"{etcd_value_b64}\"}}",
                b64.encode(key)
            )))),
        (System::Etcd, None) => req
            .method(Method::POST)
            .uri("/v3/kv/range")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(format!(
                "{{\"key\":\"{}\"}}",
                b64.encode(key)
            )))),
    };
    built.expect("a request from valid parts")
}

pub(crate) async fn connect(host: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Per-client results, merged at the end.
struct ClientResult {
    ops: u64,
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs the workload against `endpoints` (client `i` uses endpoint
/// `i % len`); `completed` counts successful operations as they finish (for
/// progress display).
///
/// # Errors
///
/// When an endpoint is malformed or a client task panics.
pub async fn run(
    system: System,
    endpoints: &[String],
    w: &Workload,
    completed: Arc<AtomicU64>,
) -> anyhow::Result<LoadOutcome> {
    if endpoints.is_empty() {
        return Err(anyhow!("no endpoints"));
    }
    let hosts: Vec<String> = endpoints
        .iter()
        .map(|e| authority(e))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let measure_from = start + w.warmup;
    let end = measure_from + w.duration;
    let cpu_before = super::procstat::sample(std::process::id()).ok();
    let mut tasks = Vec::with_capacity(w.clients);
    for c in 0..w.clients {
        let host = hosts[c % hosts.len()].clone();
        let w = w.clone();
        let completed = completed.clone();
        tasks.push(tokio::spawn(async move {
            client(system, host, c as u64, &w, measure_from, end, completed).await
        }));
    }
    let mut latency_us = new_histogram();
    let mut errors = BTreeMap::new();
    let mut ops = 0;
    for t in tasks {
        let r = t.await.context("a client task failed")?;
        ops += r.ops;
        latency_us
            .add(&r.latency_us)
            .expect("same histogram bounds");
        for (k, v) in r.errors {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    let cpu_after = super::procstat::sample(std::process::id()).ok();
    let loadgen_cpu_s = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
        _ => 0.0,
    };
    Ok(LoadOutcome {
        ops,
        elapsed_s: w.duration.as_secs_f64(),
        latency_us,
        errors,
        loadgen_cpu_s,
    })
}

async fn client(
    system: System,
    host: String,
    index: u64,
    w: &Workload,
    measure_from: Instant,
    end: Instant,
    completed: Arc<AtomicU64>,
) -> ClientResult {
    let mut rng = ChaCha8Rng::seed_from_u64(w.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let val = value(w.value_bytes, &mut rng);
    let val_b64 = base64::engine::general_purpose::STANDARD.encode(&val);
    let mut out = ClientResult {
        ops: 0,
        latency_us: new_histogram(),
        errors: BTreeMap::new(),
    };
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let error = |out: &mut ClientResult, kind: String, at: Instant| {
        if at >= measure_from && at <= end {
            *out.errors.entry(kind).or_insert(0) += 1;
        }
    };
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let s = match &mut sender {
            Some(s) => s,
            None => match tokio::time::timeout(w.request_timeout, connect(&host)).await {
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(_)) | Err(_) => {
                    error(&mut out, "connect".into(), Instant::now());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let key = format!("k{:08}", rng.gen_range(0..w.keys.max(1)));
        let write = rng.gen_range(0..100u8) >= w.read_percent;
        let req = build_request(system, &host, &key, write.then_some(&val), &val_b64);
        let sent = Instant::now();
        let result = tokio::time::timeout(w.request_timeout, async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        let done = Instant::now();
        match result {
            Ok(Ok(status)) => {
                let ok = status.is_success()
                    || (system == System::Raft && !write && status == hyper::StatusCode::NOT_FOUND);
                if ok {
                    if done >= measure_from && done <= end {
                        out.ops += 1;
                        let us = (done - sent).as_micros().max(1) as u64;
                        let _ = out.latency_us.record(us.min(100_000_000));
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    error(&mut out, format!("HTTP {}", status.as_u16()), done);
                }
            }
            Ok(Err(_)) => {
                error(&mut out, "connection".into(), done);
                sender = None;
            }
            Err(_) => {
                error(&mut out, "timeout".into(), done);
                sender = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_each_api() {
        let v = Bytes::from_static(b"value");
        let r = build_request(System::Raft, "h:1", "k00000001", Some(&v), "");
        assert_eq!(
            (r.method(), r.uri().path()),
            (&Method::PUT, "/v1/kv/k00000001")
        );
        let r = build_request(System::Raft, "h:1", "k1", None, "");
        assert_eq!((r.method(), r.uri().path()), (&Method::GET, "/v1/kv/k1"));
        let r = build_request(System::Etcd, "h:1", "k1", Some(&v), "dmFsdWU=");
        assert_eq!((r.method(), r.uri().path()), (&Method::POST, "/v3/kv/put"));
        let body = futures::executor::block_on(r.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], br#"{"key":"azE=","value":"dmFsdWU="}"#);
        let r = build_request(System::Etcd, "h:1", "k1", None, "");
        assert_eq!(r.uri().path(), "/v3/kv/range");
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert_eq!(
            authority("http://127.0.0.1:2379/").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(authority("https://x:1").is_err());
    }
}
