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
mod scaling;
pub mod snapshot;

mod args;
mod commands;

use serde::Serialize;

use args::Cmd;
pub use args::{Cli, Via};

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

/// Runs the parsed command line.
///
/// # Errors
///
/// When a cluster cannot start or a measurement fails.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.cmd {
        Cmd::Throughput(a) => commands::throughput::run(a, command).await,
        Cmd::Driver(a) => tokio::task::spawn_blocking(move || commands::driver::run(a)).await?,
        Cmd::Snapshot(a) => commands::snapshot::run(a, command).await,
        Cmd::Election(a) => commands::election::run(a, command).await,
        Cmd::Compare(a) => commands::compare::run(a, command).await,
        Cmd::Scaling(a) => scaling::run(a, command).await,
    }
}
