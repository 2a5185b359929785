//! The command line's arguments: the subcommands and the settings they
//! share, and the checks on them made before anything starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use super::election::Fault;
use super::load::Protocol;
use super::System;

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
    pub(super) cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
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
    /// How cost grows: throughput and latency against value size, against
    /// members, and against stored keys (with RSS, disk bytes per key,
    /// snapshot build and learner catch-up times), each point on a fresh
    /// raft-node cluster.
    Scaling(ScalingArgs),
    /// Committed proposals per second and latency of the whole in-memory
    /// stack in this process: three `Raft<MemLog, MemKv, MemNetwork>`
    /// nodes on a tokio runtime, closed-loop clients proposing on the
    /// leader (no processes, no disk, no network).
    Driver(DriverArgs),
}

#[derive(Debug, Args)]
pub(super) struct DriverArgs {
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256,1024")]
    pub(super) clients: Vec<usize>,
    /// Seconds measured per client count (after one second of warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(super) duration_s: u64,
    /// Bytes of each proposal's value: each client proposes a `MemKv` put
    /// of it under a key of its own (0: an empty value).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub(super) payload_bytes: u64,
    /// Worker threads of the tokio runtime the nodes and clients share.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub(super) workers: u64,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct SnapshotArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Data to fill the store with, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub(super) store_mib: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub(super) value_bytes: u64,
    /// Writers while filling.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(super) fill_clients: u64,
    /// Writers measured.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(super) clients: u64,
    /// Seconds measured before the snapshots are asked for.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(super) baseline_s: u64,
    /// Longest wait for every member's snapshot, seconds.
    #[arg(long, default_value_t = 600)]
    pub(super) snapshot_timeout_s: u64,
    /// Only the leader takes a snapshot (else every member at once).
    #[arg(long)]
    pub(super) leader_only: bool,
}

/// One of `raft-bench scaling`'s sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Sweep {
    /// Throughput and latency against `--value-sizes`.
    ValueSize,
    /// Throughput, latency and CPU against `--member-counts`.
    Members,
    /// Latency, RSS, disk, snapshot and learner catch-up against
    /// `--key-counts`.
    Keys,
}

#[derive(Debug, Args)]
pub(super) struct ScalingArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// The sweeps to run; every point of each starts a fresh cluster.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "value-size,members,keys"
    )]
    pub(super) sweep: Vec<Sweep>,
    /// Value sizes of the value-size sweep, bytes.
    #[arg(long, value_delimiter = ',', default_value = "128,1024,8192,65536")]
    pub(super) value_sizes: Vec<u64>,
    /// Cluster sizes of the members sweep.
    #[arg(long, value_delimiter = ',', default_value = "3,5,7")]
    pub(super) member_counts: Vec<u64>,
    /// Store sizes of the keys sweep, keys.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,100000,1000000,10000000"
    )]
    pub(super) key_counts: Vec<u64>,
    /// Concurrent clients of every measurement.
    #[arg(long, default_value_t = 64)]
    pub(super) clients: usize,
    /// Bytes per value in the members and keys sweeps.
    #[arg(long, default_value_t = 128)]
    pub(super) value_bytes: u64,
    /// Distinct keys the value-size and members sweeps write to.
    #[arg(long, default_value_t = 10_000)]
    pub(super) keys: u64,
    /// Seconds of load before each measurement.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub(super) warmup_s: u64,
    /// Seconds measured per point (the keys sweep measures writes, then
    /// reads, this long each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(super) duration_s: u64,
    /// Transactions in flight while filling the store (each puts up to
    /// raft-node's `--max-txn-ops` keys).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(super) fill_clients: u64,
    /// Longest wait for a snapshot to be built, and for the new learner
    /// to catch up, seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(super) step_timeout_s: u64,
    /// A request slower than this counts as an error, ms.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(super) request_timeout_ms: u64,
}

/// Settings every command shares.
#[derive(Debug, Clone, Args)]
pub(super) struct Common {
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    pub(super) nodes: usize,
    /// First port: raft-node uses BASE.. (HTTP), BASE+100.. (peers),
    /// BASE+400.. (gRPC); etcd BASE+200.. (HTTP and gRPC), BASE+300..
    /// (peers).
    #[arg(long, default_value_t = 21000)]
    pub(super) base_port: u16,
    /// The raft-node binary [default: next to raft-bench, else on PATH].
    #[arg(long)]
    pub(super) raft_node: Option<PathBuf>,
    /// The etcd binary [default: on PATH].
    #[arg(long)]
    pub(super) etcd: Option<PathBuf>,
    /// Install Debian's etcd-server with apt-get when etcd is missing.
    #[arg(long)]
    pub(super) install_etcd: bool,
    /// Where clusters keep their data (a temporary directory is made in it
    /// and removed afterwards) [default: the system's temp directory].
    #[arg(long)]
    pub(super) work_dir: Option<PathBuf>,
    /// Heartbeat interval of both systems, ms (etcd requires the election
    /// timeout to be at least 5 times it).
    #[arg(long, default_value_t = 30)]
    pub(super) heartbeat_ms: u64,
    /// Election timeout of both systems, ms: each draws its timeout from
    /// [E, 2E).
    #[arg(long, default_value_t = 150)]
    pub(super) election_ms: u64,
    /// Print the report as JSON on stdout (tables go to stderr).
    #[arg(long)]
    pub(super) json: bool,
    /// Directory for report.json and the SVG plots.
    #[arg(long, default_value = "raft-bench-results")]
    pub(super) out: PathBuf,
    /// Seeds the clients' choices of keys and operations.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// An extra argument for every raft-node member (repeat for more), e.g.
    /// `--raft-arg=--write-buffer-mib=64`.
    #[arg(long, allow_hyphen_values = true)]
    pub(super) raft_arg: Vec<String>,
    /// An extra argument for every etcd member (repeat for more), e.g.
    /// `--etcd-arg=--snapshot-count=10000`.
    #[arg(long, allow_hyphen_values = true)]
    pub(super) etcd_arg: Vec<String>,
}

/// The load generator's settings.
#[derive(Debug, Clone, Args)]
pub(super) struct LoadArgs {
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    pub(super) clients: Vec<usize>,
    /// Bytes per written value.
    #[arg(long, default_value_t = 128)]
    pub(super) value_bytes: usize,
    /// Number of distinct keys (drawn uniformly).
    #[arg(long, default_value_t = 100_000)]
    pub(super) keys: u64,
    /// Share of operations that are (linearizable) reads, 0–100.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub(super) read_percent: u8,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    pub(super) warmup_s: u64,
    /// Seconds measured per client count.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(super) duration_s: u64,
    /// A request slower than this counts as an error, ms.
    #[arg(long, default_value_t = 10_000)]
    pub(super) request_timeout_ms: u64,
    /// Which members the clients talk to: `all` spreads them over every
    /// member (followers forward to the leader), `leader` sends them all to
    /// the leader.
    #[arg(long, value_enum, default_value_t = Via::All)]
    pub(super) via: Via,
    /// The API the clients use, the same on both systems' side: `http`
    /// (raft-node's /v1/kv, etcd's v3 JSON gateway; each client on its own
    /// HTTP/1.1 connection) or `grpc` (etcd's v3 gRPC API on both:
    /// KV.Put and linearizable KV.Range, one generated client).
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    pub(super) protocol: Protocol,
    /// With `--protocol grpc`: HTTP/2 connections the clients share,
    /// spread over the members as clients are (0: one per client, as over
    /// HTTP/1.1).
    #[arg(long, default_value_t = 0)]
    pub(super) grpc_connections: usize,
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
pub(super) struct ThroughputArgs {
    #[command(flatten)]
    pub(super) common: Common,
    #[command(flatten)]
    pub(super) load: LoadArgs,
    /// The system to start and measure.
    #[arg(long, value_enum, default_value_t = System::Raft)]
    pub(super) target: System,
    /// Measure running endpoints (client URLs, comma-separated; with
    /// `--protocol grpc` their gRPC URLs, `http://host:port`) of
    /// `--target`'s kind instead of starting a cluster.
    #[arg(long, value_delimiter = ',')]
    pub(super) endpoints: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct ElectionArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// The system to start and measure.
    #[arg(long, value_enum, default_value_t = System::Raft)]
    pub(super) target: System,
    #[command(flatten)]
    pub(super) faults: FaultArgs,
}

/// The election trials' settings.
#[derive(Debug, Clone, Args)]
pub(super) struct FaultArgs {
    /// Faults to inject on the leader.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,pause,transfer"
    )]
    pub(super) faults: Vec<Fault>,
    /// Trials per fault (and per system, spread over the rounds, for
    /// `compare`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(super) trials: u32,
}

#[derive(Debug, Args)]
pub(super) struct CompareArgs {
    #[command(flatten)]
    pub(super) common: Common,
    #[command(flatten)]
    pub(super) load: LoadArgs,
    #[command(flatten)]
    pub(super) faults: FaultArgs,
    /// Rounds; each runs both systems, in alternating order.
    #[arg(long, default_value_t = 2)]
    pub(super) rounds: u32,
    /// Skip the election trials.
    #[arg(long)]
    pub(super) no_election: bool,
    /// Skip the throughput measurements.
    #[arg(long)]
    pub(super) no_throughput: bool,
}

/// Most clients one measurement runs (each holds a connection and a task).
pub(super) const CLIENTS_MAX: usize = 10_000;

/// Refuses load settings that cannot run, before any cluster starts.
pub(super) fn check_load(l: &LoadArgs) -> anyhow::Result<()> {
    if let Some(c) = l.clients.iter().find(|&&c| c == 0 || c > CLIENTS_MAX) {
        anyhow::bail!("--clients values must be between 1 and {CLIENTS_MAX}, got {c}");
    }
    if l.keys == 0 {
        anyhow::bail!("--keys must be positive");
    }
    if l.grpc_connections > CLIENTS_MAX {
        anyhow::bail!(
            "--grpc-connections must be at most {CLIENTS_MAX} (0: one per client), got {}",
            l.grpc_connections
        );
    }
    if l.grpc_connections != 0 && l.protocol != Protocol::Grpc {
        anyhow::bail!("--grpc-connections needs --protocol grpc");
    }
    Ok(())
}
