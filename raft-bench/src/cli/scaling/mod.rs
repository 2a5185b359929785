//! `raft-bench scaling`: how cost grows. Three sweeps, each point on a
//! fresh raft-node cluster started like every other command's:
//!
//! - value size (`--value-sizes`): closed-loop writers (the load
//!   generator, as `throughput` runs it) with values of each size; ops/s,
//!   MB/s of values, latency, and the MB/s as a share of the disk's
//!   sequential fsync bandwidth, measured once in the work directory
//!   ([`disk`]).
//! - members (`--member-counts`): the same writers against clusters of
//!   each size; ops/s, latency, and each member's CPU per write.
//! - stored keys (`--key-counts`): the store filled with that many keys
//!   ([`fill`]), then writes and linearizable reads measured on them, each
//!   member's RSS, disk bytes per key, the time to build a snapshot on
//!   the leader, and the time a new learner takes to catch up ([`keys`]).
//!
//! Tables go to stdout (stderr with `--json`), `scaling.json` and the SVG
//! plots ([`plot`]) to `--out`.

mod disk;
mod fill;
mod keys;
mod plot;
mod sweeps;
mod table;

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Serialize;

use super::args::{ScalingArgs, Sweep, CLIENTS_MAX};
use super::commands::new_report;
use super::report::Machine;
use super::System;

/// raft-node's limits that bound what a sweep may ask for: its defaults,
/// or the values passed with `--raft-arg`.
#[derive(Debug, Clone, Copy)]
pub(super) struct NodeLimits {
    /// `--max-value-bytes`: the largest value, and the largest request
    /// body (a fill transaction's JSON too).
    pub(super) max_value_bytes: u64,
    /// `--max-txn-ops`: the most puts in one fill transaction.
    pub(super) max_txn_ops: u64,
}

impl NodeLimits {
    fn from_raft_args(args: &[String]) -> anyhow::Result<Self> {
        let flag = |name: &str, default: u64| -> anyhow::Result<u64> {
            let prefix = format!("--{name}=");
            match args.iter().rev().find_map(|a| a.strip_prefix(&prefix)) {
                None => Ok(default),
                Some(v) => v.parse().with_context(|| {
                    format!("--raft-arg=--{name}={v}: not a number of the right size")
                }),
            }
        };
        Ok(NodeLimits {
            max_value_bytes: flag("max-value-bytes", 1 << 20)?,
            max_txn_ops: flag("max-txn-ops", 128)?,
        })
    }
}

/// The most keys the keys sweep fills (the load generator's key names
/// have 8 digits).
pub(super) const KEYS_MAX: u64 = 100_000_000;
/// The most members a local cluster has (ports, and one spare for the
/// learner).
const MEMBERS_MAX: u64 = 9;

/// Refuses settings that cannot run, before any cluster starts.
fn check(a: &ScalingArgs) -> anyhow::Result<NodeLimits> {
    let limits = NodeLimits::from_raft_args(&a.common.raft_arg)?;
    let list = |name: &str, v: &[u64], lo: u64, hi: u64| -> anyhow::Result<()> {
        if v.is_empty() {
            bail!("{name} needs at least one value");
        }
        if let Some(x) = v.iter().find(|&&x| x < lo || x > hi) {
            bail!("{name} values must be between {lo} and {hi}, got {x}");
        }
        let mut sorted = v.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != v.len() {
            bail!("{name} lists a value twice");
        }
        Ok(())
    };
    if a.sweep.is_empty() {
        bail!("--sweep needs at least one of value-size, members, keys");
    }
    let on = |s: Sweep| a.sweep.contains(&s);
    let max_value = limits.max_value_bytes;
    if on(Sweep::ValueSize) {
        list("--value-sizes", &a.value_sizes, 1, max_value).map_err(|e| {
            e.context(format!(
                "raft-node takes values up to --max-value-bytes={max_value} \
                 (pass --raft-arg=--max-value-bytes=N for more)"
            ))
        })?;
    }
    if on(Sweep::Members) {
        list("--member-counts", &a.member_counts, 1, MEMBERS_MAX)?;
    }
    if on(Sweep::Keys) {
        list("--key-counts", &a.key_counts, 1, KEYS_MAX)?;
        if fill::batch_size(a.value_bytes, limits) == 0 {
            bail!(
                "--value-bytes {} is too large to fill the store with: a put of it does not \
                 fit in a transaction of raft-node's --max-value-bytes={max_value}",
                a.value_bytes
            );
        }
    }
    if a.clients == 0 || a.clients > CLIENTS_MAX {
        bail!(
            "--clients must be between 1 and {CLIENTS_MAX}, got {}",
            a.clients
        );
    }
    if a.value_bytes == 0 || a.value_bytes > max_value {
        bail!(
            "--value-bytes must be between 1 and raft-node's --max-value-bytes={max_value}, got {}",
            a.value_bytes
        );
    }
    if a.keys == 0 || a.keys > KEYS_MAX {
        bail!("--keys must be between 1 and {KEYS_MAX}, got {}", a.keys);
    }
    if !(1..=MEMBERS_MAX as usize).contains(&a.common.nodes) {
        bail!("--nodes must be between 1 and {MEMBERS_MAX}");
    }
    if a.common.base_port > u16::MAX - 500 {
        bail!("--base-port must be at most {}", u16::MAX - 500);
    }
    Ok(limits)
}

/// The settings every point shares.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    /// Members of the value-size and keys sweeps' clusters.
    nodes: usize,
    /// Concurrent clients of every measurement.
    clients: usize,
    /// Value bytes of the members and keys sweeps.
    value_bytes: u64,
    /// Keys the value-size and members sweeps write to.
    keys: u64,
    warmup_s: u64,
    duration_s: u64,
    heartbeat_ms: u64,
    election_ms: u64,
    /// raft-node's version.
    versions: BTreeMap<String, String>,
}

/// Everything a run measured: `scaling.json` and the `--json` output.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ScalingReport {
    command: String,
    machine: Machine,
    settings: Settings,
    /// The disk's sequential fsync bandwidth (with the value-size sweep).
    disk: Option<disk::FsyncBandwidth>,
    value_size: Vec<sweeps::ValuePoint>,
    members: Vec<sweeps::MembersPoint>,
    keys: Vec<keys::KeysPoint>,
}

/// Runs `raft-bench scaling`.
pub(super) async fn run(a: ScalingArgs, command: String) -> anyhow::Result<()> {
    let limits = check(&a)?;
    let base = new_report(command, &a.common, &[System::Raft])?;
    let mut r = ScalingReport {
        command: base.command,
        machine: base.machine,
        settings: Settings {
            nodes: a.common.nodes,
            clients: a.clients,
            value_bytes: a.value_bytes,
            keys: a.keys,
            warmup_s: a.warmup_s,
            duration_s: a.duration_s,
            heartbeat_ms: a.common.heartbeat_ms,
            election_ms: a.common.election_ms,
            versions: base.settings.versions,
        },
        disk: None,
        value_size: Vec::new(),
        members: Vec::new(),
        keys: Vec::new(),
    };
    if a.sweep.contains(&Sweep::ValueSize) {
        let dir = a.common.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        let bw = disk::fsync_bandwidth(&dir)?;
        eprintln!(
            "sequential fsync bandwidth in {}: {:.1} MB/s",
            dir.display(),
            bw.mb_per_s
        );
        r.disk = Some(bw);
        for &v in &a.value_sizes {
            let p = sweeps::value_size(&a, v, r.disk.as_ref()).await?;
            r.value_size.push(p);
        }
    }
    if a.sweep.contains(&Sweep::Members) {
        for &m in &a.member_counts {
            r.members.push(sweeps::members(&a, m as usize).await?);
        }
    }
    if a.sweep.contains(&Sweep::Keys) {
        for &n in &a.key_counts {
            r.keys.push(keys::point(&a, limits, n).await?);
        }
    }
    finish(&r, &a)
}

/// Prints the tables and writes `scaling.json` and the plots.
fn finish(r: &ScalingReport, a: &ScalingArgs) -> anyhow::Result<()> {
    let out = &a.common.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("scaling.json");
    std::fs::write(&path, serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", path.display()))?;
    plot::write_all(r, out)?;
    let text = table::tables(r);
    if a.common.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{text}");
        println!("\nreport and plots in {}", out.display());
    }
    Ok(())
}
