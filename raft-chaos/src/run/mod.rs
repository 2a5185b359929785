//! One chaos run from a seed: start the cluster, run the clients while the
//! nemesis injects faults, heal, wait for convergence, check, and write what
//! was found. [`run_seed`] is what the CLI and the tests call.
//!
//! Its phases, one file each: the nemesis rounds and the healing after
//! them (`schedule.rs`), the convergence after healing (`converge.rs`), the
//! findings and the checks of the history and the node logs
//! (`verdict.rs`), and the summary and the files a run leaves
//! (`output.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::client::{ClientConfig, Recorder, SharedUrls, Worker};
use crate::cluster::{Cluster, NodeSettings};
use crate::error::ChaosError;
use crate::lease::{LeaseClients, LeaseConfig};
use crate::nemesis::NemesisConfig;
use crate::probe::Probe;
use crate::watch::{WatchConfig, Watchers};

mod converge;
mod output;
mod schedule;
mod verdict;

pub use output::{replay_command, RunSummary};

use verdict::Findings;

/// Everything a run depends on. Two runs with the same config make the same
/// random choices (timing still differs).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Number of nodes (3 or 5 are the documented ones).
    pub nodes: u64,
    /// The seed of the nemesis schedule and the clients' choices.
    pub seed: u64,
    /// How long the clients and the nemesis run.
    pub duration: Duration,
    /// Where this run's directory (`seed-<seed>`) is made.
    pub out: PathBuf,
    /// The `raft-node` binary.
    pub raft_node: PathBuf,
    /// Client settings.
    pub clients: ClientConfig,
    /// Nemesis settings.
    pub nemesis: NemesisConfig,
    /// Node settings.
    pub node: NodeSettings,
    /// The watchers of the watch checker.
    pub watch: WatchConfig,
    /// The lease clients of the lease checker.
    pub lease: LeaseConfig,
    /// Keep node logs and data even when the run passes.
    pub keep: bool,
}

/// Time for every watcher to get to the store's revision after the run
/// converged.
const WATCH_CATCH_UP_BUDGET: Duration = Duration::from_secs(30);

/// How long the cluster has to agree on a leader after it starts.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one seed. Harness errors (the cluster could not be set up) are
/// `Err`; findings about the system are in [`RunSummary::violations`].
///
/// # Errors
///
/// When the network, certificates or processes cannot be set up.
pub async fn run_seed(cfg: &RunConfig) -> Result<RunSummary, ChaosError> {
    let started = Instant::now();
    let dir = fresh_dir(cfg)?;
    let (mut cluster, probe) = start_cluster(cfg, &dir).await?;
    let rec = Recorder::new(Instant::now());
    let clients = Clients::start(cfg, &cluster, &rec)?;
    let watchers = Watchers::start(&cfg.watch, cfg.seed, cfg.duration, &clients.urls);
    let leases = LeaseClients::start(&cfg.lease, cfg.seed, rec.start(), &clients.urls);
    let mut found = Findings::default();
    let (mut events, harness_error) =
        schedule::run(cfg, &mut cluster, &probe, &rec, &clients.urls, &mut found).await;
    clients.stop().await;
    let leases = leases.stop().await;
    schedule::heal(&mut cluster, &rec, &mut events, harness_error, &mut found);
    let finals = converge::converge(&cluster, &probe, &rec, &mut found).await?;
    let node_urls: Vec<String> = cluster.urls().into_iter().map(|(_, u)| u).collect();
    let watched = watchers.finish(&node_urls, WATCH_CATCH_UP_BUDGET).await;
    let leftovers = crate::lease::liveness(&leases, &node_urls, cfg.lease.bound_s).await;
    found.check_exits(&mut cluster);
    let history = verdict::check_history(cfg, &rec, finals, &mut found).await;
    verdict::check_watches(cfg, &rec, &watched, &mut found);
    verdict::check_leases(cfg, &leases, &leftovers, &watched, &mut found);
    // Stop the nodes before reading their logs: they are complete then.
    let logs = cluster.logs();
    drop(cluster);
    verdict::check_logs(&logs, &mut found);
    let summary = output::summarize(cfg, started, &history, &events, &rec, found, dir);
    output::write_outputs(&summary, &history, &events, cfg)?;
    if !summary.passed() || cfg.keep {
        output::write_watches(&summary.dir, &watched)?;
    }
    Ok(summary)
}

/// Makes the run's directory, empty (a replay of the seed replaces the
/// earlier run's), and returns its canonical path.
fn fresh_dir(cfg: &RunConfig) -> Result<PathBuf, ChaosError> {
    let dir = cfg.out.join(format!("seed-{}", cfg.seed));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ChaosError::io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(ChaosError::io(&dir))?;
    dir.canonicalize().map_err(ChaosError::io(&dir))
}

/// Starts the network and the nodes under `dir` and waits until they
/// agree on a leader; returns them with the probe of their status.
async fn start_cluster(cfg: &RunConfig, dir: &Path) -> Result<(Cluster, Probe), ChaosError> {
    let mut cluster = Cluster::start(dir, cfg.nodes, &cfg.raft_node, &cfg.node)?;
    let urls = cluster.urls();
    let any_url = urls.first().map_or("", |(_, u)| u.as_str());
    let probe = Probe::new(any_url)?;
    if let Err(e) = probe.wait_for_leader(&urls, FIRST_LEADER_TIMEOUT).await {
        let exits = cluster.unexpected_exits();
        return Err(ChaosError::Cluster(format!(
            "{e}; exited: {exits:?}; logs in {}",
            dir.display()
        )));
    }
    Ok((cluster, probe))
}

/// The client workers of a run. Dropping it stops them (a run that ends
/// early: an error, Ctrl-C).
struct Clients {
    /// The node URLs the workers pick from (membership replacements change
    /// them).
    urls: SharedUrls,
    /// Set to stop the workers.
    stop: Arc<AtomicBool>,
    /// The workers' tasks.
    workers: Vec<JoinHandle<()>>,
}

impl Clients {
    /// Spawns `cfg.clients.workers` workers on the cluster's nodes,
    /// recording into `rec`.
    fn start(cfg: &RunConfig, cluster: &Cluster, rec: &Recorder) -> Result<Self, ChaosError> {
        let node_urls: Vec<String> = cluster.urls().into_iter().map(|(_, u)| u).collect();
        let mut clients = Clients {
            urls: Arc::new(RwLock::new(node_urls)),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
        };
        for w in 1..=cfg.clients.workers {
            let worker = Worker::new(
                w,
                cfg.seed,
                clients.urls.clone(),
                cfg.clients.clone(),
                rec.clone(),
            )?;
            let task = tokio::spawn(worker.run(clients.stop.clone()));
            clients.workers.push(task);
        }
        Ok(clients)
    }

    /// Stops the workers and waits for them to finish their operations.
    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in std::mem::take(&mut self.workers) {
            let _ = w.await;
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
