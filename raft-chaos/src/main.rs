//! `raft-chaos`: runs seeded fault-injection runs against real `raft-node`
//! processes and prints what each found, with the command that replays a
//! failing seed. Needs root.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use raft_chaos::client::ClientConfig;
use raft_chaos::cluster::NodeSettings;
use raft_chaos::lease::LeaseConfig;
use raft_chaos::nemesis::{NemesisConfig, FAULT_KINDS};
use raft_chaos::netns;
use raft_chaos::run::{replay_command, run_seed, RunConfig};
use raft_chaos::watch::WatchConfig;

/// Fault injection on real raft-node clusters with a linearizability check.
#[derive(Debug, Parser)]
#[command(name = "raft-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs seeds SEED..SEED+SEEDS one after the other.
    Run(Box<RunArgs>),
    /// Removes namespaces, links and processes that dead runs left behind.
    Cleanup,
    /// Adds up the seeds of an output directory: seeds, time, operations,
    /// faults, violations (a soak's results). Exits non-zero when a seed
    /// failed.
    Summarize {
        /// The `--out` directory of the runs.
        #[arg(default_value = "raft-chaos-out")]
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Number of nodes (1 to 32; 3 and 5 are the usual).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=32))]
    nodes: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    seeds: u64,
    /// Seconds of clients and faults per seed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_s: u64,
    /// Output directory (one `seed-N` directory per seed).
    #[arg(long, default_value = "raft-chaos-out")]
    out: PathBuf,
    /// The raft-node binary [default: `raft-node` beside this executable].
    #[arg(long)]
    raft_node: Option<PathBuf>,
    /// Concurrent client workers.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Keys per key epoch.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    keys: u64,
    /// Consistency of the clients' reads: `mixed` (each read linearizable
    /// or lease at random), `linearizable` or `lease` alone are expected to
    /// pass; `stale` shows that the checks catch stale reads.
    #[arg(long, default_value = "mixed", value_parser = ["mixed", "linearizable", "lease", "stale"])]
    read_consistency: String,
    /// Probability that a fault is a membership change (a voter removed
    /// and replaced by a fresh node that joins as a learner and is
    /// promoted); 0 disables them.
    #[arg(long, default_value_t = 0.08)]
    replace_p: f64,
    /// Only these fault kinds, comma-separated (kill, kill-leader, pause,
    /// isolate-leader, split, bridge, one-way, loss, slow, delay, replace), to find
    /// which fault a failure needs [default: all].
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(FAULT_KINDS))]
    faults: Option<Vec<String>>,
    /// Keep node logs and data directories of passing runs.
    #[arg(long)]
    keep: bool,
    /// Start the nodes with this `--idempotency-window` (log entries), give
    /// every write an `Idempotency-Key`, and send some earlier writes again
    /// with their token: a node must recognise those within the window,
    /// and the replicas' digests (which cover the idempotency records)
    /// must still agree. A small window (say 50) makes most repeats fall
    /// past it [default: off, the node's default window].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    idempotency_window: Option<u64>,
    /// Watchers that follow the changes over `GET /v1/watch` for the whole
    /// run (every key, the prefix `e1`, the range `[e0-k3, e1-k2)`, in
    /// turn), each of which must deliver every acknowledged write of its
    /// keys exactly once, in revision order; 0 leaves the watch check out.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=64))]
    watchers: u64,
    /// How many of the watchers follow etcd's gRPC `Watch.Watch` stream
    /// (each member serves it on port 2379 of its address) instead of
    /// `GET /v1/watch`, checked the same way; which ones rotates with the
    /// seed. At least `--watchers`: all of them; 0: SSE only.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=64))]
    grpc_watchers: u64,
    /// A watch connection silent this long (no change, progress or
    /// keep-alive; the nodes report progress every 500 ms) is given up for
    /// the next member, resuming with `Last-Event-ID` (gRPC: with
    /// `start_revision` one past the last revision seen).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    watch_idle_ms: u64,
    /// A watcher moves on to the next member on its own after a random 1
    /// to this many seconds, so resuming is exercised between faults too
    /// (0: only when its connection fails).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    watch_switch_s: u64,
    /// A negative control: watchers (SSE and gRPC) resume one revision
    /// past the last they got, so each resume loses one; the run must fail with `watch`
    /// violations (missing writes), which shows the watch check can.
    #[arg(long)]
    watch_resume_past_last: bool,
    /// Lease clients that grant short leases, attach keys and keep them
    /// alive, let them expire or revoke them, reading the keys
    /// throughout: a key must not vanish while a keep-alive promised its
    /// lease, and every lease must be gone with its keys within its TTL +
    /// `--lease-bound-s` after convergence; 0 leaves the lease check out.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
    lease_clients: u64,
    /// The TTL the lease clients ask for, in seconds (the nodes clamp it
    /// up to three election timeouts: 2 s here; the clients use the TTL
    /// returned).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_ttl_s: u64,
    /// After convergence, every lease must be gone with its keys within
    /// its TTL + this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    lease_bound_s: u64,
    /// A negative control: the lease clients believe every TTL is this
    /// many seconds longer (keeping alive at a third of it), so the run
    /// must fail with `lease` violations.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    lease_believe_extra_s: u64,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("raft-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Cleanup => {
            for r in netns::cleanup_stale() {
                println!("removed {r}");
            }
            Ok(true)
        }
        Cmd::Summarize { dir, json } => {
            let t = raft_chaos::summary::summarize(&dir)?;
            if t.seeds.is_empty() {
                anyhow::bail!("no seed-N/summary.json under {}", dir.display());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("{}", t.render());
            }
            Ok(t.failed.is_empty())
        }
        Cmd::Run(a) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(run(*a))
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<bool> {
    netns::preflight()?;
    for r in netns::cleanup_stale() {
        eprintln!("raft-chaos: removed stale {r}");
    }
    let raft_node = match a.raft_node {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("raft-node"),
    };
    let raft_node = raft_node
        .canonicalize()
        .with_context(|| format!("raft-node binary {}", raft_node.display()))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = a.out.canonicalize()?;
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut passed = 0u64;
    for seed in a.seed..a.seed.saturating_add(a.seeds) {
        let cfg = RunConfig {
            nodes: a.nodes,
            seed,
            duration: Duration::from_secs(a.duration_s),
            out: out.clone(),
            raft_node: raft_node.clone(),
            clients: ClientConfig {
                workers: a.workers,
                keys: a.keys,
                read_consistency: a.read_consistency.clone(),
                idempotency_window: a.idempotency_window,
                ..ClientConfig::default()
            },
            nemesis: NemesisConfig {
                replace_p: a.replace_p.clamp(0.0, 1.0),
                kinds: a.faults.as_ref().map(|f| f.iter().cloned().collect()),
                ..NemesisConfig::default()
            },
            node: NodeSettings {
                idempotency_window: a.idempotency_window,
                ..NodeSettings::default()
            },
            watch: WatchConfig {
                watchers: a.watchers,
                grpc_watchers: a.grpc_watchers,
                idle_timeout: Duration::from_millis(a.watch_idle_ms),
                switch_s_max: a.watch_switch_s,
                resume_past_last: a.watch_resume_past_last,
            },
            lease: LeaseConfig {
                clients: a.lease_clients,
                ttl_s: a.lease_ttl_s,
                bound_s: a.lease_bound_s,
                believe_extra_s: a.lease_believe_extra_s,
            },
            keep: a.keep,
        };
        let result = tokio::select! {
            r = run_seed(&cfg) => r,
            _ = tokio::signal::ctrl_c() => {
                // Dropping the run tore the cluster and network down.
                anyhow::bail!("interrupted during seed {seed}");
            }
        };
        match result {
            Ok(s) => {
                println!("{}", s.render());
                if s.passed() {
                    passed += 1;
                } else {
                    println!("  replay: {}", replay_command(&cfg));
                    failed.push(seed);
                    if a.fail_fast {
                        break;
                    }
                }
            }
            Err(e) => {
                println!("seed {seed}: HARNESS ERROR: {e}");
                println!("  replay: {}", replay_command(&cfg));
                failed.push(seed);
                if a.fail_fast {
                    break;
                }
            }
        }
    }
    if a.seeds > 1 {
        // The totals of this run's seeds (what `summarize` prints).
        let range = a.seed..a.seed.saturating_add(a.seeds);
        if let Ok(t) = raft_chaos::summary::summarize_seeds(&out, |s| range.contains(&s)) {
            println!("totals:\n{}", t.render());
        }
    }
    println!(
        "raft-chaos: {passed} passed, {} failed {:?} in {:.0} s; output in {}",
        failed.len(),
        failed,
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(failed.is_empty())
}
