//! Write latency around a snapshot of a large store (`raft-bench
//! snapshot`): what taking a snapshot costs the writers, and whether it
//! costs leadership.
//!
//! 1. Starts a raft-node cluster with automatic snapshots off and fills its
//!    store with `--store-mib` of data (`--value-bytes` per key, every key
//!    written once).
//! 2. Runs `--clients` closed-loop writers on random keys of that store,
//!    and after `--baseline-s` asks every member (or with `--leader-only`
//!    the leader) to take a snapshot (`POST /v1/cluster/snapshot`), then
//!    waits until each has one above the one it had.
//! 3. Reports latency percentiles of the writes that completed in the
//!    baseline window and of those that completed while the snapshots
//!    were being built, how long each member's build took, and each
//!    member's term and leader before and after (a term change is an
//!    election).
//!
//! The writers are the load generator's (hyper, one connection each, each
//! write sent once: see [`load`](super::load)); the control requests, each
//! member's `/v1/cluster` view and the snapshot requests, go through
//! [`raft_client`], one attempt each with a 10 s timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::cluster::LocalCluster;
use super::load::{authority, build_request, connect, new_histogram, value};
use super::report::Percentiles;
use super::System;

/// The benchmark's settings.
#[derive(Debug, Clone)]
pub struct SnapshotBench {
    /// Bytes of data to fill the store with.
    pub store_bytes: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Writers while filling.
    pub fill_clients: usize,
    /// Writers measured.
    pub clients: usize,
    /// Measured time before the snapshot is asked for.
    pub baseline: Duration,
    /// Longest wait for the snapshots.
    pub snapshot_timeout: Duration,
    /// Only the leader snapshots (else every member at once).
    pub leader_only: bool,
    /// Seeds the writers' key choices and values.
    pub seed: u64,
}

/// One window's writes.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Seconds.
    pub seconds: f64,
    /// Successful writes completed in the window.
    pub writes: u64,
    /// Writes per second.
    pub writes_per_s: f64,
    /// Latency of those writes, ms.
    pub latency_ms: Percentiles,
    /// Failed writes in the window, by kind.
    pub errors: BTreeMap<String, u64>,
}

/// One member's view before and after, and its snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct MemberResult {
    /// Node id.
    pub id: usize,
    /// Term and leader before the snapshot was asked for.
    pub before: (u64, Option<u64>),
    /// Term and leader once every snapshot was built.
    pub after: (u64, Option<u64>),
    /// Index of the snapshot it built.
    pub snapshot_index: Option<u64>,
    /// Seconds from the request to the snapshot being recorded.
    pub build_s: Option<f64>,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotResult {
    /// Keys in the store.
    pub keys: u64,
    /// Bytes of values in the store.
    pub store_bytes: u64,
    /// Seconds the fill took.
    pub fill_s: f64,
    /// Writers measured.
    pub clients: usize,
    /// Writes before the snapshot was asked for.
    pub baseline: Window,
    /// Writes while the snapshots were being built.
    pub during: Window,
    /// Per member.
    pub members: Vec<MemberResult>,
    /// Whether any member's term changed (an election happened).
    pub election: bool,
    /// p99 during the snapshots over p99 before.
    pub p99_ratio: f64,
}

/// The `/v1/cluster` fields the benchmark reads.
#[derive(Debug, Clone, Copy)]
struct View {
    term: u64,
    leader: Option<u64>,
    snapshot: Option<u64>,
}

/// Member `node`'s view (one attempt, through [`raft_client`]).
async fn view(node: &raft_client::Client) -> anyhow::Result<View> {
    let s = node
        .status()
        .await
        .with_context(|| format!("GET {}/v1/cluster", node.endpoints()[0]))?;
    Ok(View {
        term: s.term,
        leader: s.leader,
        snapshot: s.raw["snapshot"]["index"].as_u64(),
    })
}

/// Every member's view, one after the other.
async fn views(nodes: &[raft_client::Client]) -> anyhow::Result<Vec<View>> {
    let mut out = Vec::new();
    for node in nodes {
        out.push(view(node).await?);
    }
    Ok(out)
}

/// A client of each member alone (sharing connections), for the control
/// requests: one attempt each, 10 s per request, no idempotency keys.
pub(crate) fn member_clients(urls: &[String]) -> anyhow::Result<Vec<raft_client::Client>> {
    let base = raft_client::Client::builder(urls.iter().cloned())
        .request_timeout(Duration::from_secs(10))
        .retry(raft_client::RetryPolicy::none())
        .idempotency_keys(raft_client::IdempotencyKeys::Off)
        .build()?;
    Ok(urls.iter().map(|u| base.at(u)).collect::<Result<_, _>>()?)
}

fn key(i: u64) -> String {
    format!("snap-{i:010}")
}

/// A closed-loop writer: until `stop`, writes random keys below `keys`
/// (or, when `fill` is set, takes the next key from it until `keys`),
/// recording (completion time since `t0` in µs, latency in µs) of each
/// success and counting failures.
#[allow(clippy::too_many_arguments)]
async fn writer(
    host: String,
    id: u64,
    b: SnapshotBench,
    keys: u64,
    fill: Option<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> (Vec<(u64, u64)>, Vec<(u64, String)>) {
    let mut rng = ChaCha8Rng::seed_from_u64(b.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let k = match &fill {
            Some(next) => {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    break;
                }
                k
            }
            None => rng.gen_range(0..keys),
        };
        let v = value(b.value_bytes, &mut rng);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let sender = match conn.as_mut() {
                Some(s) => s,
                None => match connect(&host).await {
                    Ok(s) => conn.insert(s),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let req = build_request(System::Raft, &host, &key(k), Some(&v), "");
            let started = Instant::now();
            let outcome =
                match tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await
                {
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.is_success() {
                            Ok(())
                        } else {
                            Err(format!("HTTP {}", status.as_u16()))
                        }
                    }
                    Ok(Err(_)) => {
                        conn = None;
                        Err("connection".to_owned())
                    }
                    Err(_) => {
                        conn = None;
                        Err("timeout".to_owned())
                    }
                };
            let at = t0.elapsed().as_micros() as u64;
            match outcome {
                Ok(()) => {
                    done.push((at, started.elapsed().as_micros() as u64));
                    break;
                }
                Err(e) => {
                    failed.push((at, e));
                    // While filling, every key must be written.
                    if fill.is_none() || attempts > 20 || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    (done, failed)
}

fn window(done: &[(u64, u64)], failed: &[(u64, String)], from_us: u64, to_us: u64) -> Window {
    let mut h: Histogram<u64> = new_histogram();
    let mut writes = 0;
    for &(at, lat) in done {
        if (from_us..to_us).contains(&at) {
            let _ = h.record(lat.max(1));
            writes += 1;
        }
    }
    let mut errors = BTreeMap::new();
    for (at, e) in failed {
        if (from_us..to_us).contains(at) {
            *errors.entry(e.clone()).or_insert(0) += 1;
        }
    }
    let seconds = (to_us.saturating_sub(from_us)) as f64 / 1e6;
    Window {
        seconds,
        writes,
        writes_per_s: writes as f64 / seconds.max(1e-9),
        latency_ms: Percentiles::from_histogram_us(&h),
        errors,
    }
}

/// Runs the benchmark on a started cluster.
///
/// # Errors
///
/// When the cluster does not answer, the fill fails or no snapshot is
/// built within the timeout.
pub async fn run(cluster: &LocalCluster, b: &SnapshotBench) -> anyhow::Result<SnapshotResult> {
    if b.value_bytes == 0 || b.clients == 0 || b.fill_clients == 0 {
        bail!("--value-bytes, --clients and --fill-clients must be positive");
    }
    let keys = (b.store_bytes / b.value_bytes as u64).max(1);
    let urls = cluster.urls();
    let hosts: Vec<String> = urls
        .iter()
        .map(|u| authority(u))
        .collect::<Result<_, _>>()?;
    let leader = cluster.leader().await?;
    let nodes = member_clients(&urls)?;
    let fill_s = fill(&hosts[leader], b, keys).await?;
    let m = measure(&hosts, &nodes, leader, b, keys).await?;
    Ok(summarize(&m, b, keys, fill_s))
}

/// Fills the store: every key once, through the leader at `leader_host`;
/// returns the seconds it took.
async fn fill(leader_host: &str, b: &SnapshotBench, keys: u64) -> anyhow::Result<f64> {
    eprintln!(
        "filling the store: {keys} keys of {} bytes ({:.0} MiB) with {} writers",
        b.value_bytes,
        (keys * b.value_bytes as u64) as f64 / (1 << 20) as f64,
        b.fill_clients
    );
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..b.fill_clients {
        tasks.push(tokio::spawn(writer(
            leader_host.to_owned(),
            c as u64,
            b.clone(),
            keys,
            Some(next.clone()),
            stop.clone(),
            t0,
        )));
    }
    let progress = {
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let n = next.load(Ordering::Relaxed).min(keys);
                eprintln!(
                    "  {n} of {keys} keys ({:.0}%) after {:.0} s",
                    100.0 * n as f64 / keys as f64,
                    t0.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut fill_failed = 0;
    for t in tasks {
        let (_, failed) = t.await.context("a fill writer failed")?;
        fill_failed += failed.len();
    }
    progress.abort();
    let fill_s = t0.elapsed().as_secs_f64();
    eprintln!("filled in {fill_s:.0} s ({fill_failed} retried writes)");
    Ok(fill_s)
}

/// A member's snapshot once built: its index and the seconds from the
/// request (`Some((None, 0.0))` for a member not asked).
type Built = Option<(Option<u64>, f64)>;

/// What the measured run saw.
struct Measured {
    before: Vec<View>,
    after: Vec<View>,
    built: Vec<Built>,
    /// (completion µs since the writers started, latency µs) per success.
    done: Vec<(u64, u64)>,
    /// (µs since the writers started, kind) per failure.
    failed: Vec<(u64, String)>,
    /// When the baseline window began and the snapshots were asked for,
    /// and when the last was built, µs since the writers started.
    window_us: (u64, u64, u64),
}

/// The measured run: writers on every member, one second to get going,
/// the baseline window, then the snapshots asked for and awaited.
async fn measure(
    hosts: &[String],
    nodes: &[raft_client::Client],
    leader: usize,
    b: &SnapshotBench,
    keys: u64,
) -> anyhow::Result<Measured> {
    let before = views(nodes).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..b.clients {
        tasks.push(tokio::spawn(writer(
            hosts[c % hosts.len()].clone(),
            1_000 + c as u64,
            b.clone(),
            keys,
            None,
            stop.clone(),
            t0,
        )));
    }
    let warmup = Duration::from_secs(1);
    tokio::time::sleep(warmup + b.baseline).await;
    let asked_us = t0.elapsed().as_micros() as u64;
    let built = ask_snapshots(nodes, &before, leader, b).await;
    let done_us = t0.elapsed().as_micros() as u64;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for t in tasks {
        let (d, f) = t.await.context("a writer failed")?;
        done.extend(d);
        failed.extend(f);
    }
    let after = views(nodes).await?;
    if built.iter().any(Option::is_none) {
        bail!(
            "not every member built its snapshot within {:?}",
            b.snapshot_timeout
        );
    }
    Ok(Measured {
        before,
        after,
        built,
        done,
        failed,
        window_us: (warmup.as_micros() as u64, asked_us, done_us),
    })
}

/// Asks every member (or the leader) for a snapshot and waits, up to the
/// timeout, until each has one above the one it had `before`.
async fn ask_snapshots(
    nodes: &[raft_client::Client],
    before: &[View],
    leader: usize,
    b: &SnapshotBench,
) -> Vec<Built> {
    eprintln!(
        "asking {} for a snapshot",
        if b.leader_only {
            "the leader"
        } else {
            "every member"
        }
    );
    let asked_at = Instant::now();
    let mut asks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if b.leader_only && i != leader {
            asks.push(tokio::spawn(async { Some((None, 0.0)) }));
            continue;
        }
        let node = node.clone();
        let floor = before[i].snapshot.unwrap_or(0);
        asks.push(tokio::spawn(async move {
            build_snapshot(&node, floor, asked_at, Duration::from_secs(3600))
                .await
                .map(|(index, s)| (Some(index), s))
        }));
    }
    let mut built = Vec::new();
    for a in asks {
        let r = tokio::time::timeout(b.snapshot_timeout, a)
            .await
            .ok()
            .and_then(|r| r.ok().flatten());
        built.push(r);
    }
    built
}

/// Asks `node` for a snapshot and waits, up to `limit` after `asked_at`,
/// until it holds one above `floor`: its index and the seconds since
/// `asked_at`.
pub(crate) async fn build_snapshot(
    node: &raft_client::Client,
    floor: u64,
    asked_at: Instant,
    limit: Duration,
) -> Option<(u64, f64)> {
    // The request may time out on a large store; the build goes on.
    let _ = node.snapshot().await;
    loop {
        if let Ok(v) = view(node).await {
            if let Some(s) = v.snapshot.filter(|&s| s > floor) {
                return Some((s, asked_at.elapsed().as_secs_f64()));
            }
        }
        if asked_at.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The index of the snapshot `node` holds (0: none).
pub(crate) async fn snapshot_index(node: &raft_client::Client) -> anyhow::Result<u64> {
    Ok(view(node).await?.snapshot.unwrap_or(0))
}

/// The windows' statistics and each member's outcome.
fn summarize(m: &Measured, b: &SnapshotBench, keys: u64, fill_s: f64) -> SnapshotResult {
    let (base_from, asked_us, done_us) = m.window_us;
    let baseline = window(&m.done, &m.failed, base_from, asked_us);
    // At least a second, so a fast build still has writes to measure.
    let during = window(
        &m.done,
        &m.failed,
        asked_us,
        done_us.max(asked_us + 1_000_000),
    );
    let members: Vec<MemberResult> = (0..m.before.len())
        .map(|i| MemberResult {
            id: i + 1,
            before: (m.before[i].term, m.before[i].leader),
            after: (m.after[i].term, m.after[i].leader),
            snapshot_index: m.built[i].and_then(|b| b.0),
            build_s: m.built[i].map(|b| b.1),
        })
        .collect();
    let election = members.iter().any(|r| r.before.0 != r.after.0);
    let p99_ratio = during.latency_ms.p99 / baseline.latency_ms.p99.max(1e-9);
    SnapshotResult {
        keys,
        store_bytes: keys * b.value_bytes as u64,
        fill_s,
        clients: b.clients,
        baseline,
        during,
        members,
        election,
        p99_ratio,
    }
}

/// The result as a readable table.
pub fn table(r: &SnapshotResult) -> String {
    let mut s = format!(
        "store: {} keys, {:.0} MiB of values (filled in {:.0} s); {} writers\n\n",
        r.keys,
        r.store_bytes as f64 / (1 << 20) as f64,
        r.fill_s,
        r.clients
    );
    s += "| window | seconds | writes/s | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|---|\n";
    for (name, w) in [("before", &r.baseline), ("during snapshots", &r.during)] {
        s += &format!(
            "| {name} | {:.1} | {:.0} | {:.2} | {:.2} | {:.1} | {} |\n",
            w.seconds,
            w.writes_per_s,
            w.latency_ms.p50,
            w.latency_ms.p99,
            w.latency_ms.max,
            w.errors.values().sum::<u64>()
        );
    }
    s += "\n| member | term, leader before | after | snapshot index | build s |\n|---|---|---|---|---|\n";
    for m in &r.members {
        s += &format!(
            "| {} | {}, {:?} | {}, {:?} | {} | {} |\n",
            m.id,
            m.before.0,
            m.before.1,
            m.after.0,
            m.after.1,
            m.snapshot_index.map_or("-".into(), |i| i.to_string()),
            m.build_s.map_or("-".into(), |b| format!("{b:.1}")),
        );
    }
    s += &format!(
        "\np99 during / before: {:.2}x; election: {}\n",
        r.p99_ratio,
        if r.election { "YES" } else { "none" }
    );
    s
}
