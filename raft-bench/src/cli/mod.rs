//! The `raft-bench` command line: throughput and election benchmarks of
//! real raft-node clusters, side by side with etcd.
//!
//! Each command starts a local cluster of server processes (or targets
//! running endpoints), measures, prints a table, and writes `report.json`
//! and SVG plots into the output directory.

mod binaries;
pub mod cluster;
pub mod election;
pub mod load;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use cluster::{ClusterOptions, LocalCluster};
use election::Fault;
use load::Workload;
use report::{ElectionResult, Machine, Percentiles, Report, Settings, ThroughputResult};

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// This project's raft-node.
    Raft,
    /// etcd (Debian's etcd-server), through its v3 JSON gateway.
    Etcd,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Raft => "raft",
            System::Etcd => "etcd",
        })
    }
}

/// `raft-bench`: cluster benchmarks of raft-node, side by side with etcd.
#[derive(Debug, Parser)]
#[command(
    name = "raft-bench",
    version,
    about = "Cluster benchmarks of raft-node (throughput, latency, elections), side by side with etcd",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write (and read) throughput and latency against concurrent clients.
    Throughput(ThroughputArgs),
    /// Time to a new leader and to a successful write after a fault on the
    /// leader, over repeated trials.
    Election(ElectionArgs),
    /// Both benchmarks on raft-node and etcd in one run, alternating, with
    /// the ratios.
    Compare(CompareArgs),
    /// Write latency before and while every member takes a snapshot of a
    /// large store, and whether it costs an election (raft-node only).
    Snapshot(SnapshotArgs),
    /// Committed proposals per second and latency of the whole in-memory
    /// stack in this process: three `Raft<MemLog, MemKv, MemNetwork>`
    /// nodes on a tokio runtime, closed-loop clients proposing on the
    /// leader (no processes, no disk, no network).
    Driver(DriverArgs),
}

#[derive(Debug, Args)]
struct DriverArgs {
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256,1024")]
    clients: Vec<usize>,
    /// Seconds measured per client count (after one second of warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_s: u64,
    /// Bytes per proposal (the state machine answers each; 0 is an empty
    /// command).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    payload_bytes: u64,
    /// Worker threads of the tokio runtime the nodes and clients share.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: u64,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `raft-bench driver`: runs on a runtime of its own (`--workers`
/// threads), in a thread of its own, one fresh cluster per client count.
fn driver_bench(a: DriverArgs) -> anyhow::Result<()> {
    if let Some(c) = a.clients.iter().find(|&&c| c == 0 || c > CLIENTS_MAX) {
        anyhow::bail!("--clients values must be between 1 and {CLIENTS_MAX}, got {c}");
    }
    let thread = std::thread::spawn(move || -> anyhow::Result<Vec<serde_json::Value>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.workers as usize)
            .enable_all()
            .build()?;
        let payload = bytes::Bytes::from(vec![7u8; a.payload_bytes as usize]);
        let mut rows = Vec::new();
        for &clients in &a.clients {
            let r = rt.block_on(async {
                let c = crate::driver_cluster::DriverCluster::start().await;
                let _ = c
                    .run_for(clients, Duration::from_secs(1), payload.clone())
                    .await;
                let r = c
                    .run_for(clients, Duration::from_secs(a.duration_s), payload.clone())
                    .await;
                c.shutdown().await;
                r
            });
            let us = |q: f64| r.latency_ns.value_at_quantile(q) as f64 / 1e3;
            eprintln!(
                "{clients:>5} clients: {:>10.0} committed/s, p50 {:>8.1} µs, p99 {:>8.1} µs ({} failed)",
                r.per_second(),
                us(0.5),
                us(0.99),
                r.failed
            );
            rows.push(serde_json::json!({
                "clients": clients,
                "committed_per_s": r.per_second(),
                "p50_us": us(0.5),
                "p99_us": us(0.99),
                "failed": r.failed,
                "seconds": r.elapsed.as_secs_f64(),
            }));
        }
        Ok(rows)
    });
    let rows = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))??;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "machine": Machine::read(),
                "workers": a.workers,
                "payload_bytes": a.payload_bytes,
                "results": rows,
            }))?
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    #[command(flatten)]
    common: Common,
    /// Data to fill the store with, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    store_mib: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    value_bytes: u64,
    /// Writers while filling.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    fill_clients: u64,
    /// Writers measured.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    clients: u64,
    /// Seconds measured before the snapshots are asked for.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    baseline_s: u64,
    /// Longest wait for every member's snapshot, seconds.
    #[arg(long, default_value_t = 600)]
    snapshot_timeout_s: u64,
    /// Only the leader takes a snapshot (else every member at once).
    #[arg(long)]
    leader_only: bool,
}

/// Settings every command shares.
#[derive(Debug, Clone, Args)]
struct Common {
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// First port: raft-node uses BASE.., BASE+100..; etcd BASE+200..,
    /// BASE+300...
    #[arg(long, default_value_t = 21000)]
    base_port: u16,
    /// The raft-node binary [default: next to raft-bench, else on PATH].
    #[arg(long)]
    raft_node: Option<PathBuf>,
    /// The etcd binary [default: on PATH].
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Install Debian's etcd-server with apt-get when etcd is missing.
    #[arg(long)]
    install_etcd: bool,
    /// Where clusters keep their data (a temporary directory is made in it
    /// and removed afterwards) [default: the system's temp directory].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Heartbeat interval of both systems, ms (etcd requires the election
    /// timeout to be at least 5 times it).
    #[arg(long, default_value_t = 30)]
    heartbeat_ms: u64,
    /// Election timeout of both systems, ms: each draws its timeout from
    /// [E, 2E).
    #[arg(long, default_value_t = 150)]
    election_ms: u64,
    /// Print the report as JSON on stdout (tables go to stderr).
    #[arg(long)]
    json: bool,
    /// Directory for report.json and the SVG plots.
    #[arg(long, default_value = "raft-bench-results")]
    out: PathBuf,
    /// Seeds the clients' choices of keys and operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// An extra argument for every raft-node member (repeat for more), e.g.
    /// `--raft-arg=--write-buffer-mib=64`.
    #[arg(long, allow_hyphen_values = true)]
    raft_arg: Vec<String>,
    /// An extra argument for every etcd member (repeat for more), e.g.
    /// `--etcd-arg=--snapshot-count=10000`.
    #[arg(long, allow_hyphen_values = true)]
    etcd_arg: Vec<String>,
}

/// The load generator's settings.
#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    clients: Vec<usize>,
    /// Bytes per written value.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Number of distinct keys (drawn uniformly).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Share of operations that are (linearizable) reads, 0–100.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    read_percent: u8,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    warmup_s: u64,
    /// Seconds measured per client count.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_s: u64,
    /// A request slower than this counts as an error, ms.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Which members the clients talk to: `all` spreads them over every
    /// member (followers forward to the leader), `leader` sends them all to
    /// the leader.
    #[arg(long, value_enum, default_value_t = Via::All)]
    via: Via,
}

/// Which members the load generator's clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Client `i` uses member `i mod n`.
    All,
    /// Every client uses the leader.
    Leader,
}

#[derive(Debug, Args)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// The system to start and measure.
    #[arg(long, value_enum, default_value_t = System::Raft)]
    target: System,
    /// Measure running endpoints (client URLs, comma-separated) of
    /// `--target`'s kind instead of starting a cluster.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
}

#[derive(Debug, Args)]
struct ElectionArgs {
    #[command(flatten)]
    common: Common,
    /// The system to start and measure.
    #[arg(long, value_enum, default_value_t = System::Raft)]
    target: System,
    #[command(flatten)]
    faults: FaultArgs,
}

/// The election trials' settings.
#[derive(Debug, Clone, Args)]
struct FaultArgs {
    /// Faults to inject on the leader.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,pause,transfer"
    )]
    faults: Vec<Fault>,
    /// Trials per fault (and per system, spread over the rounds, for
    /// `compare`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    trials: u32,
}

#[derive(Debug, Args)]
struct CompareArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    faults: FaultArgs,
    /// Rounds; each runs both systems, in alternating order.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Skip the election trials.
    #[arg(long)]
    no_election: bool,
    /// Skip the throughput measurements.
    #[arg(long)]
    no_throughput: bool,
}

/// Runs the parsed command line.
///
/// # Errors
///
/// When a cluster cannot start or a measurement fails.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.cmd {
        Cmd::Throughput(a) => {
            check_load(&a.load)?;
            let mut r = new_report(command, &a.common, &[a.target])?;
            if a.endpoints.is_empty() {
                let mut c = start(&a.common, a.target).await?;
                let urls = c.urls();
                for &n in &a.load.clients {
                    let t = throughput(Some(&c), a.target, &urls, &a.load, &a.common, n, 0).await?;
                    r.throughput.push(t);
                }
                c.shutdown();
            } else {
                r.settings.fsync = false;
                r.settings.nodes = a.endpoints.len();
                for &n in &a.load.clients {
                    let t =
                        throughput(None, a.target, &a.endpoints, &a.load, &a.common, n, 0).await?;
                    r.throughput.push(t);
                }
            }
            finish(&r, &a.common)
        }
        Cmd::Driver(a) => tokio::task::spawn_blocking(move || driver_bench(a)).await?,
        Cmd::Snapshot(a) => {
            let mut common = a.common.clone();
            // Snapshots only when asked, so the baseline has none.
            common.raft_arg.extend([
                "--snapshot-entries=0".to_owned(),
                "--snapshot-mib=0".to_owned(),
            ]);
            let mut c = start(&common, System::Raft).await?;
            let b = snapshot::SnapshotBench {
                store_bytes: a.store_mib << 20,
                value_bytes: a.value_bytes as usize,
                fill_clients: a.fill_clients as usize,
                clients: a.clients as usize,
                baseline: Duration::from_secs(a.baseline_s),
                snapshot_timeout: Duration::from_secs(a.snapshot_timeout_s),
                leader_only: a.leader_only,
                seed: a.common.seed,
            };
            let r = snapshot::run(&c, &b).await;
            c.shutdown();
            let r = r?;
            let text = snapshot::table(&r);
            std::fs::create_dir_all(&a.common.out)
                .with_context(|| format!("creating {}", a.common.out.display()))?;
            let json = serde_json::json!({
                "command": command,
                "machine": Machine::read(),
                "snapshot": r,
            });
            let path = a.common.out.join("snapshot.json");
            std::fs::write(&path, serde_json::to_string_pretty(&json)?)
                .with_context(|| format!("writing {}", path.display()))?;
            if a.common.json {
                eprint!("{text}");
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print!("{text}");
            }
            eprintln!("report: {}", path.display());
            Ok(())
        }
        Cmd::Election(a) => {
            let mut r = new_report(command, &a.common, &[a.target])?;
            let mut c = start(&a.common, a.target).await?;
            for &f in &a.faults.faults {
                r.elections
                    .push(elections(&mut c, f, a.faults.trials, 0).await?);
            }
            c.shutdown();
            finish(&r, &a.common)
        }
        Cmd::Compare(a) => {
            check_load(&a.load)?;
            let both = [System::Raft, System::Etcd];
            let mut r = new_report(command, &a.common, &both)?;
            let rounds = a.rounds.max(1);
            let (faults, trials_total) = (&a.faults.faults, a.faults.trials);
            let per_round = trials_total.div_ceil(rounds);
            let mut trials: BTreeMap<(System, Fault), (Vec<election::Trial>, Vec<String>)> =
                BTreeMap::new();
            for round in 0..rounds {
                let order = if round % 2 == 0 {
                    both
                } else {
                    [both[1], both[0]]
                };
                for system in order {
                    eprintln!("\n== round {} of {rounds}: {system}", round + 1);
                    let mut c = start(&a.common, system).await?;
                    if !a.no_throughput {
                        let urls = c.urls();
                        for &n in &a.load.clients {
                            let t =
                                throughput(Some(&c), system, &urls, &a.load, &a.common, n, round)
                                    .await?;
                            eprint!("{}", report::throughput_table(std::slice::from_ref(&t)));
                            r.throughput.push(t);
                        }
                    }
                    if !a.no_election {
                        let n = per_round.min(trials_total - per_round * round);
                        for &f in faults {
                            let e = elections(&mut c, f, n, round).await?;
                            let slot = trials.entry((system, f)).or_default();
                            slot.0.extend(e.trials);
                            slot.1.extend(e.failures);
                        }
                    }
                    c.shutdown();
                }
            }
            for system in both {
                for &f in faults {
                    if let Some((t, fails)) = trials.remove(&(system, f)) {
                        r.elections.push(ElectionResult::new(system, f, t, fails));
                    }
                }
            }
            finish(&r, &a.common)?;
            let ratios = report::ratio_table(&r);
            if a.common.json {
                eprintln!("\nraft-node / etcd:\n{ratios}");
            } else {
                println!("\nraft-node / etcd:\n{ratios}");
            }
            Ok(())
        }
    }
}

fn new_report(command: String, c: &Common, systems: &[System]) -> anyhow::Result<Report> {
    let mut versions = BTreeMap::new();
    for &s in systems {
        let bin = binary(c, s)?;
        let out = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", bin.display()))?;
        let v = String::from_utf8_lossy(&out.stdout);
        versions.insert(
            s.to_string(),
            v.lines().next().unwrap_or("").trim().to_owned(),
        );
    }
    Ok(Report {
        command,
        machine: Machine::read(),
        settings: Settings {
            nodes: c.nodes,
            heartbeat_ms: c.heartbeat_ms,
            election_ms: c.election_ms,
            fsync: true,
            versions,
        },
        throughput: Vec::new(),
        elections: Vec::new(),
    })
}

fn binary(c: &Common, s: System) -> anyhow::Result<PathBuf> {
    match s {
        System::Raft => cluster::find_binary(s, c.raft_node.as_deref()),
        System::Etcd => match cluster::find_binary(s, c.etcd.as_deref()) {
            Err(_) if c.install_etcd && c.etcd.is_none() => {
                cluster::install_etcd()?;
                cluster::find_binary(s, None)
            }
            r => r,
        },
    }
}

async fn start(c: &Common, system: System) -> anyhow::Result<LocalCluster> {
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "starting {} {system} members and waiting for a leader",
        c.nodes
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let r = LocalCluster::start(ClusterOptions {
        system,
        nodes: c.nodes,
        base_port: c.base_port,
        binary: binary(c, system)?,
        work_dir: c.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        heartbeat_ms: c.heartbeat_ms,
        election_ms: c.election_ms,
        extra_args: match system {
            System::Raft => c.raft_arg.clone(),
            System::Etcd => c.etcd_arg.clone(),
        },
    })
    .await;
    spinner.finish_and_clear();
    let c = r?;
    eprintln!(
        "{system}: {} members up, data in {}",
        c.members(),
        c.dir().display()
    );
    Ok(c)
}

/// Most clients one measurement runs (each holds a connection and a task).
const CLIENTS_MAX: usize = 10_000;

/// Refuses load settings that cannot run, before any cluster starts.
fn check_load(l: &LoadArgs) -> anyhow::Result<()> {
    if let Some(c) = l.clients.iter().find(|&&c| c == 0 || c > CLIENTS_MAX) {
        anyhow::bail!("--clients values must be between 1 and {CLIENTS_MAX}, got {c}");
    }
    if l.keys == 0 {
        anyhow::bail!("--keys must be positive");
    }
    Ok(())
}

/// One throughput measurement with `clients` clients.
async fn throughput(
    cluster: Option<&LocalCluster>,
    system: System,
    endpoints: &[String],
    l: &LoadArgs,
    c: &Common,
    clients: usize,
    round: u32,
) -> anyhow::Result<ThroughputResult> {
    let w = Workload {
        clients,
        value_bytes: l.value_bytes,
        keys: l.keys,
        read_percent: l.read_percent,
        warmup: Duration::from_secs(l.warmup_s),
        duration: Duration::from_secs(l.duration_s),
        request_timeout: Duration::from_millis(l.request_timeout_ms),
        seed: c.seed ^ u64::from(round) << 32,
    };
    let leader = match &cluster {
        Some(cl) => cl.leader().await?,
        None => 0,
    };
    let endpoints = match (l.via, &cluster) {
        (Via::All, _) => endpoints.to_vec(),
        (Via::Leader, Some(_)) => vec![endpoints[leader].clone()],
        (Via::Leader, None) => anyhow::bail!(
            "--via leader needs a cluster started by raft-bench; with --endpoints, list only the leader"
        ),
    };
    let completed = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new((l.warmup_s + l.duration_s) * 1000).with_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{system}, {clients} clients"));
    let task = {
        let (w, completed) = (w.clone(), completed.clone());
        tokio::spawn(async move { load::run(system, &endpoints, &w, completed).await })
    };
    let start = Instant::now();
    let mut usage_begin = None;
    let mut last = (start, 0u64);
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let elapsed = now - start;
        if usage_begin.is_none() && elapsed >= w.warmup {
            usage_begin = cluster.as_ref().map(|cl| cl.usage_begin());
        }
        let done = completed.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, done);
        bar.set_position(elapsed.as_millis().min(u128::from(u64::MAX)) as u64);
        bar.set_message(format!(
            "{} {:.0} ops/s",
            if elapsed < w.warmup {
                "warm-up"
            } else {
                "measuring"
            },
            rate
        ));
    }
    bar.finish_and_clear();
    let out = task.await.context("the load generator failed")??;
    let nodes = match (&cluster, &usage_begin) {
        (Some(cl), Some(b)) => cl.usage_end(b, leader),
        _ => Vec::new(),
    };
    let cdf = out
        .latency_us
        .iter_quantiles(8)
        .map(|v| (v.value_iterated_to() as f64 / 1e3, v.quantile_iterated_to()))
        .filter(|(ms, _)| *ms > 0.0)
        .collect();
    Ok(ThroughputResult {
        system,
        round,
        clients,
        value_bytes: l.value_bytes,
        read_percent: l.read_percent,
        via: l.via,
        duration_s: out.elapsed_s,
        ops: out.ops,
        ops_per_s: out.ops as f64 / out.elapsed_s,
        latency_ms: Percentiles::from_histogram_us(&out.latency_us),
        errors: out.errors,
        nodes,
        loadgen_cpu_s: out.loadgen_cpu_s,
        cdf,
    })
}

/// `trials` trials of `fault` on one cluster.
async fn elections(
    c: &mut LocalCluster,
    fault: Fault,
    trials: u32,
    round: u32,
) -> anyhow::Result<ElectionResult> {
    let bar = ProgressBar::new(u64::from(trials)).with_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}, {fault}", c.system()));
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for i in 0..trials {
        // A pause between trials lets the restarted member settle, as an
        // operator's would between incidents.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match election::trial(c, fault, u64::from(round) * 1_000_000 + u64::from(i)).await {
            Ok(t) => {
                bar.set_message(format!(
                    "last: leader {:.0} ms, write {:.0} ms",
                    t.elected_ms, t.write_ms
                ));
                ok.push(t);
            }
            Err(e) => {
                bar.println(format!("{} {fault} trial {i} failed: {e:#}", c.system()));
                failures.push(format!("{e:#}"));
                // The trial already tried to recover; stop if it could not.
                c.wait_stable(Duration::from_secs(30)).await?;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let r = ElectionResult::new(c.system(), fault, ok, failures);
    eprint!("{}", report::election_table(std::slice::from_ref(&r)));
    Ok(r)
}

/// Prints the tables, writes report.json and the plots.
fn finish(r: &Report, c: &Common) -> anyhow::Result<()> {
    let mut text = String::new();
    if !r.throughput.is_empty() {
        text.push_str(&format!(
            "\nthroughput: {} members, {} B values, {}% reads, clients on {}, fsync {}\n",
            r.settings.nodes,
            r.throughput[0].value_bytes,
            r.throughput[0].read_percent,
            match r.throughput[0].via {
                Via::All => "every member",
                Via::Leader => "the leader",
            },
            if r.settings.fsync {
                "on"
            } else {
                "as the target is configured"
            }
        ));
        text.push_str(&report::throughput_table(&r.throughput));
    }
    if !r.elections.is_empty() {
        text.push_str(&format!(
            "\nelections: heartbeat {} ms, election timeout {}-{} ms\n",
            r.settings.heartbeat_ms,
            r.settings.election_ms,
            2 * r.settings.election_ms
        ));
        text.push_str(&report::election_table(&r.elections));
        text.push_str(&report::election_histograms(&r.elections));
    }
    write_outputs(r, &c.out)?;
    if c.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{text}");
        println!("\nreport and plots in {}", c.out.display());
    }
    Ok(())
}

fn write_outputs(r: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", out.join("report.json").display()))?;
    plot::write_all(r, out)?;
    Ok(())
}
