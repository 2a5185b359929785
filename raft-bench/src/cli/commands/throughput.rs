//! `raft-bench throughput`: the load generator against a cluster it starts,
//! or against running endpoints, one measurement per client count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::{finish, new_report, start};
use crate::cli::args::{check_load, Common, LoadArgs, ThroughputArgs, Via};
use crate::cli::cluster::LocalCluster;
use crate::cli::load::{self, Protocol, Workload};
use crate::cli::report::{Percentiles, ThroughputResult};
use crate::cli::System;

/// Runs `raft-bench throughput`.
pub(in crate::cli) async fn run(a: ThroughputArgs, command: String) -> anyhow::Result<()> {
    check_load(&a.load)?;
    let mut r = new_report(command, &a.common, &[a.target])?;
    if a.endpoints.is_empty() {
        let mut c = start(&a.common, a.target).await?;
        let urls = endpoints(&c, a.load.protocol);
        for &n in &a.load.clients {
            let t = measure(Some(&c), a.target, &urls, &a.load, &a.common, n, 0).await?;
            r.throughput.push(t);
        }
        c.shutdown();
    } else {
        r.settings.fsync = false;
        r.settings.nodes = a.endpoints.len();
        for &n in &a.load.clients {
            let t = measure(None, a.target, &a.endpoints, &a.load, &a.common, n, 0).await?;
            r.throughput.push(t);
        }
    }
    finish(&r, &a.common)
}

/// The endpoints the load generator uses on `c` for `protocol`.
pub(in crate::cli) fn endpoints(c: &LocalCluster, protocol: Protocol) -> Vec<String> {
    match protocol {
        Protocol::Http => c.urls(),
        Protocol::Grpc => c.grpc_urls(),
    }
}

/// One throughput measurement with `clients` clients.
pub(in crate::cli) async fn measure(
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
        protocol: l.protocol,
        grpc_connections: l.grpc_connections,
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
        protocol: l.protocol,
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
