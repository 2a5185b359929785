//! The `raft-node` binary: `run` a node, start a local `dev` cluster,
//! create development `certs`, talk to a cluster with `ctl`, probe the
//! local node with `health`, `restore` a backup or `recover` from a lost
//! quorum.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use raft_node::config::{LogFormat, RunArgs};
use raft_node::{ctl, dev, health, restore};

/// mimalloc instead of the system allocator: allocation is a tenth of a
/// node's CPU under load with glibc's malloc (raft-bench's README has the
/// measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Raft-replicated key-value store: HTTP API, Prometheus metrics, QUIC
/// with mutual TLS between nodes, RocksDB storage.
#[derive(Debug, Parser)]
#[command(name = "raft-node", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs one node. Settings come from flags, then RAFT_* environment
    /// variables, then the --config TOML file, then defaults.
    Run(Box<RunArgs>),
    /// Starts a local cluster of node processes (certificates generated) and
    /// runs it until Ctrl-C.
    Dev(dev::DevArgs),
    /// Creates a development CA and node certificates (PEM).
    Certs(CertsArgs),
    /// Talks to a running cluster.
    Ctl(ctl::CtlArgs),
    /// Asks the local node's /healthz (or /readyz): exit status 0 on 200,
    /// 1 otherwise with the reason on stderr (a container HEALTHCHECK).
    ///
    /// The node is found from its own RAFT_* variables (not its --config
    /// file): RAFT_CLIENT_LISTEN, and HTTPS when RAFT_CLIENT_TLS=true. Over
    /// HTTPS the node's certificate is checked against --cacert, and
    /// --cert/--key are presented when both are set (for a node started
    /// with --client-ca). No token is sent: /healthz and /readyz are open.
    Health(health::HealthArgs),
    /// Seeds a new node's data directory from a backup file (`ctl snapshot
    /// save`); every node of the new cluster is restored from the same file.
    Restore(restore::RestoreArgs),
    /// After losing quorum for good: makes this stopped node the single
    /// voter of its cluster, keeping its data (needs --force-new-cluster).
    Recover(restore::RecoverArgs),
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Output directory (an existing ca.pem/ca.key there is reused).
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Node ids to issue certificates for, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
    /// Extra names (host names or IP addresses) each certificate carries.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    names: Vec<String>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log written to a file, a pipe, a
    // container's log driver or journald stays plain text. NO_COLOR
    // (no-color.org) turns them off on a terminal too.
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    init_logging(cfg.log_format);
    let handle = raft_node::monitoring::install(cfg.id)?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let mut cfg = cfg;
    cfg.http_max_connections = raft_node::server::raise_open_files_limit(cfg.http_max_connections);
    let exit_delay = cfg.failure_exit_delay;
    let node = raft_node::node::start(cfg, Some(handle)).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let raft = node.raft.clone();
    let failure = tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: shutting down");
            None
        }
        _ = term.recv() => {
            tracing::info!("SIGTERM: shutting down");
            None
        }
        reason = raft.failed() => Some(reason),
    };
    if let Some(reason) = failure {
        // Nothing is acknowledged from here on. /healthz answers 503 for a
        // while so that whatever watches the node sees why, then the
        // process exits non-zero for its supervisor to restart it (a
        // restart recovers from what is on disk, or refuses to start and
        // says why).
        tracing::error!(
            %reason,
            exit_in_ms = exit_delay.as_millis() as u64,
            "raft stopped: the log storage or the state machine failed; exiting"
        );
        tokio::time::sleep(exit_delay).await;
        node.shutdown().await;
        anyhow::bail!("raft stopped: {reason}");
    }
    node.shutdown().await;
    Ok(())
}

/// A panic anywhere (in a running node, and in `dev`, `ctl` and `certs`)
/// ends the process. Tokio would
/// otherwise catch a panic in a task and end only that task, leaving a node
/// that answers HTTP while its Raft driver, storage or transport is gone: a
/// crash is what a supervisor (systemd, Kubernetes) can see and restart, and
/// what a restart recovers from, since everything acknowledged is on disk.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic; aborting the process");
        default(info);
        std::process::abort();
    }));
}

/// How long the runtime waits, once the command is done, for blocking
/// work still running. A host name lookup (the system resolver, which
/// cannot be cancelled) can hang for minutes when a name server does not
/// answer; without a bound the process would outlive its SIGTERM by that
/// long. Everything a node must finish (its store, its log) is awaited
/// before this point.
const BLOCKING_WORK_GRACE: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raft-node: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    runtime.shutdown_timeout(BLOCKING_WORK_GRACE);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Run(args) => run_node(*args).await,
        Cmd::Dev(a) => dev::run(a).await,
        Cmd::Ctl(a) => ctl::run(a).await,
        Cmd::Health(a) => health::run(a).await,
        Cmd::Restore(a) => {
            init_logging(LogFormat::Human);
            restore::restore(a).await
        }
        Cmd::Recover(a) => {
            init_logging(LogFormat::Human);
            restore::recover(a).await
        }
        Cmd::Certs(a) => raft_net_quic::certs::write_dev_certs(&a.dir, &a.nodes, &a.names)
            .map(|files| {
                println!(
                    "CA: {} (key {})",
                    files.ca_cert.display(),
                    files.ca_key.display()
                );
                for (id, cert, key) in files.nodes {
                    println!("node {id}: {} (key {})", cert.display(), key.display());
                }
            })
            .map_err(Into::into),
    }
}
