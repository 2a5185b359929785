//! The whole in-memory stack under load: three `Raft<MemLog, MemKv,
//! MemNetwork>` nodes in one process, driven by closed-loop clients that
//! each await `RaftHandle::propose` on the leader. Each client proposes a
//! valid [`KvCommand::Put`] of the given value under a key of its own, as a
//! real deployment's clients would (so [`MemKv`] applies every entry instead
//! of skipping it as invalid).
//!
//! Unlike raftkv-bench's `engine_cluster`, which steps the sans-IO engine
//! in a synchronous loop, this runs everything a deployment
//! runs around the engine: the request queue, the engine task, group commit
//! in the storage task (the in-memory log reports a write durable when the
//! storage task's write returns, as the driver's contract asks), the
//! network task and the in-memory transport, the apply task, and the
//! answer to the proposer. What it leaves out is only what is not the
//! driver's: fsync, sockets, serialization and a real state machine's
//! work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::memory::{KvCommand, KvResponse, MemKv, MemLog, MemNetwork};
use crate::{Config, DriverConfig, Membership, Raft, RaftHandle, Role};
use bytes::Bytes;
use hdrhistogram::Histogram;

/// A histogram of latencies in nanoseconds, 1 ns to 60 s, to two
/// significant digits (1%). Each client records into its own: with three
/// digits one takes 220 KB, and hundreds of clients recording into theirs
/// missed the CPU cache at every proposal (in a profile at 256 clients the
/// recording cost more CPU than any function of the driver); with two it
/// takes 30 KB, of which a run touches a few hundred bytes.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("histogram bounds")
}

/// A three-node cluster on the current tokio runtime.
#[derive(Debug)]
pub struct DriverCluster {
    /// Keeps the network (and its routes) alive.
    _net: MemNetwork,
    handles: Vec<RaftHandle<KvResponse>>,
}

/// What one measurement saw.
#[derive(Debug)]
pub struct DriverRun {
    /// Proposals committed, applied and answered.
    pub committed: u64,
    /// Proposals that failed.
    pub failed: u64,
    /// Wall time of the measurement.
    pub elapsed: Duration,
    /// Latency of each answered proposal, nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl DriverRun {
    /// Committed proposals per second.
    pub fn per_second(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl DriverCluster {
    /// Starts three nodes and waits for a leader.
    ///
    /// # Panics
    ///
    /// When a node cannot start or no leader is elected within 10 s.
    pub async fn start() -> Self {
        Self::start_with_snapshots(0).await
    }

    /// [`DriverCluster::start`], each node taking a snapshot every
    /// `snapshot_every` applied entries (0: never, so the logs only grow,
    /// as in [`DriverCluster::start`]: it measures replication, not log
    /// compaction).
    ///
    /// # Panics
    ///
    /// When a node cannot start or no leader is elected within 10 s.
    pub async fn start_with_snapshots(snapshot_every: u64) -> Self {
        Self::start_with(snapshot_every, Duration::from_millis(10)).await
    }

    /// [`DriverCluster::start_with_snapshots`] with engine ticks of
    /// `tick_interval` instead of 10 ms: under a profiler that slows the
    /// process down many times (valgrind), longer ticks keep the leader's
    /// heartbeats ahead of the followers' election timeouts.
    ///
    /// # Panics
    ///
    /// When a node cannot start or no leader is elected within 10 s.
    pub async fn start_with(snapshot_every: u64, tick_interval: Duration) -> Self {
        let net = MemNetwork::new();
        let mut handles = Vec::new();
        for id in 1..=3 {
            let mut cfg = Config::new(id);
            cfg.snapshot_threshold_entries = snapshot_every;
            cfg.snapshot_threshold_bytes = 0;
            let driver = DriverConfig {
                tick_interval,
                ..DriverConfig::default()
            };
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
        let c = Self { _net: net, handles };
        c.leader().await;
        c
    }

    /// The leader's handle.
    ///
    /// # Panics
    ///
    /// When no leader is elected within 10 s.
    pub async fn leader(&self) -> RaftHandle<KvResponse> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for h in &self.handles {
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

    /// Runs `clients` closed-loop clients, each proposing a
    /// [`KvCommand::Put`] of `value` under its own key (`client-N`) and
    /// awaiting the answer, until `total` proposals were answered.
    pub async fn run(&self, clients: usize, total: u64, value: Bytes) -> DriverRun {
        self.run_until(clients, Some(total), None, value).await
    }

    /// Runs `clients` closed-loop clients for `duration` (each proposing
    /// as in [`run`](Self::run)).
    pub async fn run_for(&self, clients: usize, duration: Duration, value: Bytes) -> DriverRun {
        self.run_until(clients, None, Some(duration), value).await
    }

    async fn run_until(
        &self,
        clients: usize,
        total: Option<u64>,
        duration: Option<Duration>,
        value: Bytes,
    ) -> DriverRun {
        let leader = self.leader().await;
        let clients = clients.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        for c in 0..clients {
            let h = leader.clone();
            let payload = KvCommand::Put {
                key: format!("client-{c}"),
                value: value.clone(),
            }
            .encode();
            let stop = stop.clone();
            // Each client's share of `total`, the remainder to the first.
            let quota =
                total.map(|t| t / clients as u64 + u64::from((c as u64) < t % clients as u64));
            tasks.push(tokio::spawn(async move {
                let mut latency = latency_histogram();
                let (mut ok, mut failed) = (0u64, 0u64);
                loop {
                    if stop.load(Ordering::Relaxed) || quota.is_some_and(|q| ok + failed >= q) {
                        break;
                    }
                    let t = Instant::now();
                    match h.propose(payload.clone()).await {
                        Ok(_) => {
                            let _ = latency.record(t.elapsed().as_nanos().max(1) as u64);
                            ok += 1;
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed, latency)
            }));
        }
        if let Some(d) = duration {
            tokio::time::sleep(d).await;
            stop.store(true, Ordering::Relaxed);
        }
        let mut latency_ns = latency_histogram();
        let (mut committed, mut failed) = (0, 0);
        for t in tasks {
            let (ok, f, h) = t.await.expect("client task");
            committed += ok;
            failed += f;
            latency_ns.add(&h).expect("same bounds");
        }
        DriverRun {
            committed,
            failed,
            elapsed: started.elapsed(),
            latency_ns,
        }
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for h in &self.handles {
            h.shutdown().await;
        }
    }
}
