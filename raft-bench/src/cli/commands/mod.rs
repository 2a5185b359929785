//! Each subcommand's run, and what they share: starting a cluster,
//! the report's header, the tables and the files written at the end.

pub(super) mod compare;
pub(super) mod driver;
pub(super) mod election;
pub(super) mod snapshot;
pub(super) mod throughput;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;

use super::args::{Common, Via};
use super::cluster::{self, ClusterOptions, LocalCluster};
use super::load::Protocol;
use super::report::{self, Machine, Report, Settings};
use super::{plot, System};

pub(super) fn new_report(
    command: String,
    c: &Common,
    systems: &[System],
) -> anyhow::Result<Report> {
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

pub(super) fn binary(c: &Common, s: System) -> anyhow::Result<PathBuf> {
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

pub(super) async fn start(c: &Common, system: System) -> anyhow::Result<LocalCluster> {
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

/// Prints the tables, writes report.json and the plots.
pub(super) fn finish(r: &Report, c: &Common) -> anyhow::Result<()> {
    let mut text = String::new();
    if !r.throughput.is_empty() {
        text.push_str(&format!(
            "\nthroughput: {} members, {} B values, {}% reads, clients on {}, protocol {}, fsync {}\n",
            r.settings.nodes,
            r.throughput[0].value_bytes,
            r.throughput[0].read_percent,
            match r.throughput[0].via {
                Via::All => "every member",
                Via::Leader => "the leader",
            },
            protocol_name(r.throughput[0].protocol),
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

/// How a report names the protocol the clients used.
pub(super) fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http (raft-node /v1/kv, etcd v3 JSON gateway)",
        Protocol::Grpc => "grpc (etcd v3 KV.Put / KV.Range on both)",
    }
}

fn write_outputs(r: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", out.join("report.json").display()))?;
    plot::write_all(r, out)?;
    Ok(())
}
