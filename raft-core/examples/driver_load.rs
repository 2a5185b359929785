//! The driver under load, for working on its cost: three `Raft<MemLog,
//! MemKv, MemNetwork>` nodes in one process on a tokio runtime with 2
//! worker threads, closed-loop clients each awaiting `RaftHandle::propose`
//! of an 8-byte command on the leader (as `raft-bench driver` does),
//! printing per client count the committed proposals per second, the p50
//! and p99 latency, and the process's CPU time (user + system) per
//! committed proposal. On a machine shared with other work the wall-clock
//! figures are noisy; the CPU time per proposal is not.
//!
//! Run it with `cargo run --release -p raftkv-core --features test-util
//! --example driver_load -- [CLIENTS,...] [SECONDS] [SNAPSHOT_EVERY]`
//! (defaults: `1,64,256,1024 3 0`; one second of warm-up comes before each
//! measurement). Like `raft-bench driver`, it takes no snapshots unless
//! `SNAPSHOT_EVERY` (entries applied between two) is set, so the in-memory
//! logs grow for the whole run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::memory::{KvResponse, MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, Raft, RaftHandle, Role};

/// Latencies in buckets of about 1.5%: 64 sub-buckets per power of two.
struct Histogram {
    counts: Vec<u64>,
}

impl Histogram {
    const SUB: u32 = 64;

    fn new() -> Self {
        Self {
            counts: vec![0; (64 * Self::SUB) as usize],
        }
    }

    fn bucket(ns: u64) -> usize {
        let ns = ns.max(1);
        let exp = 63 - ns.leading_zeros();
        if exp < 6 {
            return ns as usize;
        }
        let sub = (ns >> (exp - 6)) as u32 - Self::SUB;
        (exp * Self::SUB + sub) as usize
    }

    /// The lowest value of bucket `b`.
    fn value(b: usize) -> u64 {
        let (exp, sub) = (b as u32 / Self::SUB, b as u64 % u64::from(Self::SUB));
        if exp < 6 {
            return b as u64;
        }
        (u64::from(Self::SUB) + sub) << (exp - 6)
    }

    fn record(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
    }

    fn add(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.counts.iter().sum();
        let want = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::value(b);
            }
        }
        0
    }
}

/// The process's CPU time so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here,
    // in clock ticks of 1/100 s on Linux.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Starts three nodes; `snapshot_every` entries applied make a snapshot
/// (0: never, so the logs only grow, as in `raft-bench driver`).
async fn start(snapshot_every: u64) -> (MemNetwork, Vec<RaftHandle<KvResponse>>) {
    let net = MemNetwork::new();
    let mut handles = Vec::new();
    for id in 1..=3 {
        let mut cfg = Config::new(id);
        cfg.snapshot_threshold_entries = snapshot_every;
        cfg.snapshot_threshold_bytes = 0;
        let mut driver = DriverConfig::default();
        driver.tick_interval = Duration::from_millis(10);
        let h = Raft::start(
            cfg,
            driver,
            Membership::new(vec![1, 2, 3]),
            Arc::new(MemLog::new()),
            MemKv::new(),
            net.transport(id),
        )
        .await
        .expect("node starts");
        net.register(&h);
        handles.push(h);
    }
    (net, handles)
}

async fn leader(handles: &[RaftHandle<KvResponse>]) -> RaftHandle<KvResponse> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for h in handles {
            if h.status()
                .await
                .is_some_and(|s| s.engine.role == Role::Leader)
            {
                return h.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within 10 s");
}

/// Runs `clients` closed-loop clients for `duration`: (answered, failed, latencies).
async fn run(
    leader: &RaftHandle<KvResponse>,
    clients: usize,
    duration: Duration,
) -> (u64, u64, Histogram) {
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from_static(&[7u8; 8]);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (h, stop, payload) = (leader.clone(), stop.clone(), payload.clone());
            tokio::spawn(async move {
                let mut latency = Histogram::new();
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match h.propose(payload.clone()).await {
                        Ok(_) => {
                            latency.record(t.elapsed().as_nanos() as u64);
                            ok += 1;
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed, latency)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::new();
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f, h) = t.await.expect("client task");
        ok += o;
        failed += f;
        all.add(&h);
    }
    (ok, failed, all)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,64,256,1024".into())
        .split(',')
        .map(|c| c.parse().expect("a client count"))
        .collect();
    let seconds: f64 = args.next().map_or(3.0, |s| s.parse().expect("seconds"));
    let snapshot_every: u64 = args
        .next()
        .map_or(0, |s| s.parse().expect("entries between snapshots"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for n in clients {
        rt.block_on(async {
            let (_net, handles) = start(snapshot_every).await;
            let l = leader(&handles).await;
            let _ = run(&l, n, Duration::from_secs(1)).await;
            let cpu0 = cpu_time();
            let t0 = Instant::now();
            let (ok, failed, lat) = run(&l, n, Duration::from_secs_f64(seconds)).await;
            let elapsed = t0.elapsed();
            let cpu = cpu_time().zip(cpu0).map(|(a, b)| a - b);
            let us = |q| lat.quantile(q) as f64 / 1e3;
            println!(
                "{n:>5} clients: {:>10.0} committed/s, p50 {:>7.1} µs, p99 {:>7.1} µs, CPU {} µs/proposal ({failed} failed)",
                ok as f64 / elapsed.as_secs_f64(),
                us(0.5),
                us(0.99),
                cpu.map_or("?".into(), |c| format!("{:.2}", c.as_secs_f64() * 1e6 / ok.max(1) as f64)),
            );
            for h in &handles {
                h.shutdown().await;
            }
        });
    }
}
