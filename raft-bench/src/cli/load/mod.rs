//! The load generator: a fixed number of closed-loop clients writing and
//! reading random keys, latencies into HDR histograms, failures counted by
//! kind. Two protocols, each one code path for both systems:
//!
//! - [`Protocol::Http`] (`http.rs`): each client on its own keep-alive
//!   HTTP/1.1 connection; raft-node gets `PUT`/`GET /v1/kv/{key}`, etcd its
//!   v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`, base64 in JSON).
//! - [`Protocol::Grpc`] (`grpc.rs`): etcd's v3 gRPC API, which both systems
//!   serve: `KV.Put` and linearizable `KV.Range` with the same generated
//!   client, byte for byte the same requests to either system, over HTTP/2
//!   connections the load generator opens itself (one per client unless
//!   `--grpc-connections` says otherwise).
//!
//! It is the measuring instrument, so it speaks the protocols itself (hyper,
//! and a tonic client generated from raft-node's protos) and does not use
//! [`raft_client`] for raft-node: the typed client's retries, backoff,
//! idempotency keys and leader tracking exist on the raft-node side only;
//! with them a failed request would be sent again unseen, counted as one
//! slower success, and requests would move to the leader whatever `--via`
//! asks. Each request here is sent once; a failure is counted by kind.

mod grpc;
mod http;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub(crate) use self::http::{authority, build_request, connect};
use super::System;

/// The API the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1: raft-node's `/v1/kv`, etcd's v3 JSON gateway.
    Http,
    /// etcd's v3 gRPC API (`KV.Put`, `KV.Range`) on both systems.
    Grpc,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        })
    }
}

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
    /// A request that takes longer counts as an error (over HTTP/1.1 its
    /// connection is replaced; over HTTP/2 only its stream is reset).
    pub request_timeout: Duration,
    /// Seeds the clients' key and operation choices.
    pub seed: u64,
    /// The API spoken.
    pub protocol: Protocol,
    /// gRPC only: HTTP/2 connections the clients share (0: one per client).
    pub grpc_connections: usize,
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

/// The name of key `i` of the workload's key space (`raft-bench
/// scaling` fills a store with these keys before reading them).
pub(crate) fn key_name(i: u64) -> String {
    format!("k{i:08}")
}

/// One client's choices (keys, reads or writes) and what it counted, in
/// the measured window only.
pub(crate) struct Tally {
    rng: ChaCha8Rng,
    keys: u64,
    read_percent: u8,
    measure_from: Instant,
    end: Instant,
    completed: Arc<AtomicU64>,
    ops: u64,
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    /// Client `index`'s tally and the value it writes.
    fn new(
        w: &Workload,
        index: u64,
        window: (Instant, Instant),
        completed: Arc<AtomicU64>,
    ) -> (Self, Bytes) {
        let mut rng = ChaCha8Rng::seed_from_u64(w.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let val = value(w.value_bytes, &mut rng);
        let t = Tally {
            rng,
            keys: w.keys.max(1),
            read_percent: w.read_percent,
            measure_from: window.0,
            end: window.1,
            completed,
            ops: 0,
            latency_us: new_histogram(),
            errors: BTreeMap::new(),
        };
        (t, val)
    }

    /// Whether the run is over.
    pub(crate) fn over(&self) -> bool {
        Instant::now() >= self.end
    }

    /// The next operation: a key, and whether it is a write.
    pub(crate) fn next_op(&mut self) -> (String, bool) {
        let key = key_name(self.rng.gen_range(0..self.keys));
        let write = self.rng.gen_range(0..100u8) >= self.read_percent;
        (key, write)
    }

    /// A success sent at `sent`, answered at `done`.
    pub(crate) fn success(&mut self, sent: Instant, done: Instant) {
        if done >= self.measure_from && done <= self.end {
            self.ops += 1;
            let us = (done - sent).as_micros().max(1) as u64;
            let _ = self.latency_us.record(us.min(100_000_000));
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// A failure of `kind` at `at`.
    pub(crate) fn error(&mut self, kind: impl Into<String>, at: Instant) {
        if at >= self.measure_from && at <= self.end {
            *self.errors.entry(kind.into()).or_insert(0) += 1;
        }
    }
}

/// Runs the workload against `endpoints` (client `i` uses endpoint
/// `i % len`; with shared gRPC connections, connection `j` goes to
/// endpoint `j % len` and client `i` uses connection `i % n`); `completed`
/// counts successful operations as they finish (for progress display).
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
    let window = (start + w.warmup, start + w.warmup + w.duration);
    let cpu_before = super::procstat::sample(std::process::id()).ok();
    let conns = match w.protocol {
        Protocol::Http => Vec::new(),
        Protocol::Grpc => grpc::connections(&hosts, w.clients, w.grpc_connections),
    };
    let mut tasks = Vec::with_capacity(w.clients);
    for c in 0..w.clients {
        let (mut tally, val) = Tally::new(w, c as u64, window, completed.clone());
        let timeout = w.request_timeout;
        tasks.push(match w.protocol {
            Protocol::Http => {
                let host = hosts[c % hosts.len()].clone();
                tokio::spawn(async move {
                    http::client(system, &host, val, timeout, &mut tally).await;
                    tally
                })
            }
            Protocol::Grpc => {
                let conn = conns[c % conns.len()].clone();
                tokio::spawn(async move {
                    grpc::client(&conn, val, timeout, &mut tally).await;
                    tally
                })
            }
        });
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
