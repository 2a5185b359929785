//! The value-size and members sweeps: one `throughput` measurement per
//! point, on a fresh cluster each, and what each point reports.

use std::collections::BTreeMap;

use serde::Serialize;

use super::disk::FsyncBandwidth;
use crate::cli::args::{Common, LoadArgs, ScalingArgs, Via};
use crate::cli::cluster::NodeUsage;
use crate::cli::commands::start;
use crate::cli::commands::throughput::{endpoints, measure};
use crate::cli::load::Protocol;
use crate::cli::report::{Percentiles, ThroughputResult};
use crate::cli::System;

/// One measurement's outcome, as the scaling report gives it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Load {
    /// Concurrent clients.
    pub(super) clients: usize,
    /// Measured seconds.
    pub(super) duration_s: f64,
    /// Successful operations in the window.
    pub(super) ops: u64,
    /// `ops / duration_s`.
    pub(super) ops_per_s: f64,
    /// Latency of the successful operations, ms.
    pub(super) latency_ms: Percentiles,
    /// Failed requests by kind.
    pub(super) errors: BTreeMap<String, u64>,
}

impl From<&ThroughputResult> for Load {
    fn from(t: &ThroughputResult) -> Self {
        Load {
            clients: t.clients,
            duration_s: t.duration_s,
            ops: t.ops,
            ops_per_s: t.ops_per_s,
            latency_ms: t.latency_ms,
            errors: t.errors.clone(),
        }
    }
}

/// One point of the value-size sweep.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ValuePoint {
    /// Bytes per value.
    pub(super) value_bytes: u64,
    /// Members.
    pub(super) members: usize,
    /// The writes.
    #[serde(flatten)]
    pub(super) load: Load,
    /// MB/s (10^6 bytes) of values written.
    pub(super) mb_per_s: f64,
    /// `mb_per_s` over the disk's sequential fsync bandwidth.
    pub(super) fsync_bandwidth_fraction: Option<f64>,
    /// CPU and peak RSS of each member over the window.
    pub(super) nodes: Vec<NodeUsage>,
}

/// One member's CPU over a members-sweep point.
#[derive(Debug, Clone, Serialize)]
pub(super) struct MemberCpu {
    /// 1-based member index.
    pub(super) node: u64,
    /// Whether it led.
    pub(super) leader: bool,
    /// CPU seconds over the window.
    pub(super) cpu_s: f64,
    /// CPU microseconds per successful write.
    pub(super) cpu_us_per_write: f64,
    /// Peak RSS over the window, MiB.
    pub(super) peak_rss_mib: f64,
}

/// One point of the members sweep.
#[derive(Debug, Clone, Serialize)]
pub(super) struct MembersPoint {
    /// Members.
    pub(super) members: usize,
    /// Bytes per value.
    pub(super) value_bytes: u64,
    /// The writes.
    #[serde(flatten)]
    pub(super) load: Load,
    /// Each member's CPU.
    pub(super) nodes: Vec<MemberCpu>,
}

/// The load generator's settings for a point: `--clients` clients on
/// every member, `value_bytes` values, `keys` keys, `read_percent` reads.
pub(super) fn load_args(
    a: &ScalingArgs,
    value_bytes: u64,
    keys: u64,
    read_percent: u8,
) -> LoadArgs {
    LoadArgs {
        clients: vec![a.clients],
        value_bytes: value_bytes as usize,
        keys,
        read_percent,
        warmup_s: a.warmup_s,
        duration_s: a.duration_s,
        request_timeout_ms: a.request_timeout_ms,
        via: Via::All,
        protocol: Protocol::Http,
        grpc_connections: 0,
    }
}

/// `--nodes` set to `members`.
pub(super) fn common_with(a: &ScalingArgs, members: usize) -> Common {
    let mut c = a.common.clone();
    c.nodes = members;
    c
}

/// Writes of `value_bytes` on a fresh cluster of `members`.
async fn writes(
    a: &ScalingArgs,
    members: usize,
    value_bytes: u64,
) -> anyhow::Result<ThroughputResult> {
    let common = common_with(a, members);
    eprintln!("\n{members} members, {value_bytes} B values");
    let mut c = start(&common, System::Raft).await?;
    let load = load_args(a, value_bytes, a.keys, 0);
    let urls = endpoints(&c, Protocol::Http);
    let t = measure(Some(&c), System::Raft, &urls, &load, &common, a.clients, 0).await;
    c.shutdown();
    t
}

/// The value-size sweep's point for `value_bytes`.
pub(super) async fn value_size(
    a: &ScalingArgs,
    value_bytes: u64,
    disk: Option<&FsyncBandwidth>,
) -> anyhow::Result<ValuePoint> {
    let t = writes(a, a.common.nodes, value_bytes).await?;
    let mb_per_s = t.ops_per_s * value_bytes as f64 / 1e6;
    Ok(ValuePoint {
        value_bytes,
        members: a.common.nodes,
        load: Load::from(&t),
        mb_per_s,
        fsync_bandwidth_fraction: disk
            .filter(|d| d.mb_per_s > 0.0)
            .map(|d| mb_per_s / d.mb_per_s),
        nodes: t.nodes,
    })
}

/// The members sweep's point for `members`.
pub(super) async fn members(a: &ScalingArgs, members: usize) -> anyhow::Result<MembersPoint> {
    let t = writes(a, members, a.value_bytes).await?;
    let nodes = t
        .nodes
        .iter()
        .map(|n| MemberCpu {
            node: n.node,
            leader: n.leader,
            cpu_s: n.cpu_s,
            cpu_us_per_write: if t.ops == 0 {
                0.0
            } else {
                n.cpu_s * 1e6 / t.ops as f64
            },
            peak_rss_mib: n.peak_rss_mib,
        })
        .collect();
    Ok(MembersPoint {
        members,
        value_bytes: a.value_bytes,
        load: Load::from(&t),
        nodes,
    })
}
