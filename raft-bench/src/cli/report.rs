//! Results: the structures written as JSON, the human tables, and the
//! comparison ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cluster::NodeUsage;
use super::election::{Fault, Trial};
use super::System;

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn from_histogram_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1e3;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1e3,
        }
    }

    /// From samples in milliseconds (nearest rank).
    pub fn from_samples_ms(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }
}

/// One throughput measurement (one system, one client count).
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    /// The system measured.
    pub system: System,
    /// Round of a `compare` run (0 otherwise).
    pub round: u32,
    /// Concurrent clients.
    pub clients: usize,
    /// Value size, bytes.
    pub value_bytes: usize,
    /// Share of reads.
    pub read_percent: u8,
    /// Which members the clients used.
    pub via: super::Via,
    /// The API the clients used.
    pub protocol: super::load::Protocol,
    /// Measured seconds.
    pub duration_s: f64,
    /// Successful operations in the window.
    pub ops: u64,
    /// `ops / duration_s`.
    pub ops_per_s: f64,
    /// Latency of successful operations, ms.
    pub latency_ms: Percentiles,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Per member CPU seconds and peak RSS (local clusters only).
    pub nodes: Vec<NodeUsage>,
    /// CPU seconds of the load generator.
    pub loadgen_cpu_s: f64,
    /// Latency CDF points `(ms, quantile)` for plots.
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
}

/// The trials of one fault on one system.
#[derive(Debug, Clone, Serialize)]
pub struct ElectionResult {
    /// The system measured.
    pub system: System,
    /// The fault injected.
    pub fault: Fault,
    /// Successful trials.
    pub trials: Vec<Trial>,
    /// Trials that failed, with the reason.
    pub failures: Vec<String>,
    /// Fault → new leader named, ms.
    pub elected_ms: Percentiles,
    /// Fault → write through a survivor succeeded, ms.
    pub write_ms: Percentiles,
}

impl ElectionResult {
    /// Summarizes trials.
    pub fn new(system: System, fault: Fault, trials: Vec<Trial>, failures: Vec<String>) -> Self {
        let elected: Vec<f64> = trials.iter().map(|t| t.elected_ms).collect();
        let wrote: Vec<f64> = trials.iter().map(|t| t.write_ms).collect();
        ElectionResult {
            system,
            fault,
            elected_ms: Percentiles::from_samples_ms(&elected),
            write_ms: Percentiles::from_samples_ms(&wrote),
            trials,
            failures,
        }
    }
}

/// Everything one invocation measured; the `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// Cluster settings.
    pub settings: Settings,
    /// Throughput measurements.
    pub throughput: Vec<ThroughputResult>,
    /// Election measurements.
    pub elections: Vec<ElectionResult>,
}

/// Cluster settings shared by every measurement of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Members per cluster.
    pub nodes: usize,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Election timeout lower end, ms (randomized up to twice it).
    pub election_ms: u64,
    /// Whether the servers fsync (always true for local clusters).
    pub fsync: bool,
    /// raft-node version or etcd version strings.
    pub versions: BTreeMap<String, String>,
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model from /proc/cpuinfo.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description from /proc.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

pub(crate) fn fmt_errors(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The throughput table.
pub fn throughput_table(results: &[ThroughputResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>13} {:>12}  errors",
        "system",
        "clients",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "leader CPU s",
        "leader RSS"
    );
    for r in results {
        let leader = r.nodes.iter().find(|n| n.leader);
        let _ = writeln!(
            out,
            "{:<6} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>13} {:>12}  {}",
            r.system.to_string(),
            r.clients,
            r.ops_per_s,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.p999,
            r.latency_ms.max,
            leader.map_or("-".into(), |n| format!("{:.1}", n.cpu_s)),
            leader.map_or("-".into(), |n| format!("{:.0} MiB", n.peak_rss_mib)),
            fmt_errors(&r.errors)
        );
        if !r.nodes.is_empty() {
            let nodes: Vec<String> = r
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}{} {:.1} s {:.0} MiB",
                        n.node,
                        if n.leader { "*" } else { "" },
                        n.cpu_s,
                        n.peak_rss_mib
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "{:>14} CPU and peak RSS by member (* leader): {}; load generator {:.1} s CPU",
                "",
                nodes.join(", "),
                r.loadgen_cpu_s
            );
        }
    }
    out
}

/// The election table.
pub fn election_table(results: &[ElectionResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<9} {:>6}  {:>26}  {:>26}  failed",
        "system", "fault", "trials", "new leader p50/p90/p99/max", "write OK p50/p90/p99/max"
    );
    for r in results {
        let p = |p: &Percentiles| format!("{:.0}/{:.0}/{:.0}/{:.0} ms", p.p50, p.p90, p.p99, p.max);
        let _ = writeln!(
            out,
            "{:<6} {:<9} {:>6}  {:>26}  {:>26}  {}",
            r.system.to_string(),
            r.fault.to_string(),
            r.trials.len(),
            p(&r.elected_ms),
            p(&r.write_ms),
            r.failures.len()
        );
    }
    out
}

/// A text histogram of each result's fault-to-write times: ten bins from
/// the fastest to the slowest trial.
pub fn election_histograms(results: &[ElectionResult]) -> String {
    let mut out = String::new();
    for r in results {
        let v: Vec<f64> = r.trials.iter().map(|t| t.write_ms).collect();
        let (Some(lo), Some(hi)) = (
            v.iter().copied().reduce(f64::min),
            v.iter().copied().reduce(f64::max),
        ) else {
            continue;
        };
        let _ = writeln!(
            out,
            "\n{} {}: fault → write OK, ms ({} trials)",
            r.system,
            r.fault,
            v.len()
        );
        let bins = if hi - lo > 1e-3 { 10usize } else { 1 };
        let width = if bins > 1 {
            (hi - lo) / bins as f64
        } else {
            1.0
        };
        let mut counts = vec![0usize; bins];
        for x in &v {
            counts[(((x - lo) / width) as usize).min(bins - 1)] += 1;
        }
        let most = counts.iter().copied().max().unwrap_or(1).max(1);
        for (i, c) in counts.iter().enumerate() {
            let from = lo + width * i as f64;
            let _ = writeln!(
                out,
                "  {:>7.1} – {:<7.1} |{:<40}| {c}",
                from,
                from + width,
                "#".repeat(c * 40 / most)
            );
        }
    }
    out
}

/// Ratios of raft-node to etcd, matched by client count and fault; the
/// mean over rounds of each side is used.
pub fn ratio_table(report: &Report) -> String {
    let mut out = String::new();
    let mean = |sys: System, clients: usize, f: &dyn Fn(&ThroughputResult) -> f64| -> Option<f64> {
        let v: Vec<f64> = report
            .throughput
            .iter()
            .filter(|r| r.system == sys && r.clients == clients)
            .map(f)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut clients: Vec<usize> = report.throughput.iter().map(|r| r.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    if !clients.is_empty() {
        let _ = writeln!(
            out,
            "{:>7} {:>11} {:>11} {:>9} {:>15} {:>15} {:>9}",
            "clients",
            "raft ops/s",
            "etcd ops/s",
            "ops ratio",
            "p50 raft/etcd",
            "p99 raft/etcd",
            "p99 ratio"
        );
    }
    for c in clients {
        let (Some(ro), Some(eo)) = (
            mean(System::Raft, c, &|r| r.ops_per_s),
            mean(System::Etcd, c, &|r| r.ops_per_s),
        ) else {
            continue;
        };
        let rp50 = mean(System::Raft, c, &|r| r.latency_ms.p50).unwrap_or(0.0);
        let ep50 = mean(System::Etcd, c, &|r| r.latency_ms.p50).unwrap_or(0.0);
        let rp99 = mean(System::Raft, c, &|r| r.latency_ms.p99).unwrap_or(0.0);
        let ep99 = mean(System::Etcd, c, &|r| r.latency_ms.p99).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{:>7} {:>11.0} {:>11.0} {:>8.2}x {:>7.2}/{:<7.2} {:>7.2}/{:<7.2} {:>8.2}x",
            c,
            ro,
            eo,
            ro / eo.max(1e-9),
            rp50,
            ep50,
            rp99,
            ep99,
            rp99 / ep99.max(1e-9)
        );
    }
    let mut first = true;
    for f in [Fault::Kill, Fault::Pause, Fault::Transfer] {
        let get = |s: System| {
            report
                .elections
                .iter()
                .find(|e| e.system == s && e.fault == f)
        };
        let (Some(r), Some(e)) = (get(System::Raft), get(System::Etcd)) else {
            continue;
        };
        if first {
            let _ = writeln!(
                out,
                "\n{:<9} {:>24} {:>24}",
                "fault", "write OK p50 raft/etcd", "write OK p99 raft/etcd"
            );
            first = false;
        }
        let _ = writeln!(
            out,
            "{:<9} {:>10.0}/{:<6.0} ms {:>3.2}x {:>6.0}/{:<6.0} ms {:>3.2}x",
            f.to_string(),
            r.write_ms.p50,
            e.write_ms.p50,
            r.write_ms.p50 / e.write_ms.p50.max(1e-9),
            r.write_ms.p99,
            e.write_ms.p99,
            r.write_ms.p99 / e.write_ms.p99.max(1e-9)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_trials() {
        let samples: Vec<f64> = (1..=30).map(f64::from).collect();
        let p = Percentiles::from_samples_ms(&samples);
        assert_eq!(p.p50, 15.0);
        assert_eq!(p.p90, 27.0);
        // With 30 trials the 99th percentile is the largest.
        assert_eq!(p.p99, 30.0);
        assert_eq!(p.max, 30.0);
        assert_eq!(p.mean, 15.5);
        assert_eq!(Percentiles::from_samples_ms(&[]).max, 0.0);
    }

    #[test]
    fn histogram_percentiles_are_in_milliseconds() {
        let mut h = crate::cli::load::new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let p = Percentiles::from_histogram_us(&h);
        assert!((p.p50 - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.p99 - 9.9).abs() < 0.02, "{p:?}");
        assert!((p.max - 10.0).abs() < 0.01, "{p:?}");
    }
}
