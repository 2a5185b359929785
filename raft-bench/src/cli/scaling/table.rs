//! The scaling report as Markdown tables, one per sweep.

use std::fmt::Write as _;

use super::ScalingReport;
use crate::cli::report::fmt_errors;

/// The tables of the sweeps that ran.
pub(super) fn tables(r: &ScalingReport) -> String {
    let mut s = String::new();
    if !r.value_size.is_empty() {
        let disk = r.disk.as_ref().map_or(String::new(), |d| {
            format!(", disk fsync bandwidth {:.1} MB/s", d.mb_per_s)
        });
        let _ = writeln!(
            s,
            "\nagainst value size: {} members, {} clients{disk}\n",
            r.settings.nodes, r.settings.clients
        );
        s += "| value B | ops/s | MB/s | of fsync bandwidth | p50 ms | p99 ms | errors |\n";
        s += "|---|---|---|---|---|---|---|\n";
        for p in &r.value_size {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {} | {:.2} | {:.2} | {} |",
                p.value_bytes,
                p.load.ops_per_s,
                p.mb_per_s,
                p.fsync_bandwidth_fraction
                    .map_or("-".into(), |f| format!("{:.1}%", f * 100.0)),
                p.load.latency_ms.p50,
                p.load.latency_ms.p99,
                fmt_errors(&p.load.errors)
            );
        }
    }
    if !r.members.is_empty() {
        let _ = writeln!(
            s,
            "\nagainst members: {} B values, {} clients\n",
            r.settings.value_bytes, r.settings.clients
        );
        s += "| members | ops/s | p50 ms | p99 ms | leader CPU µs/write | follower CPU µs/write | errors |\n";
        s += "|---|---|---|---|---|---|---|\n";
        for p in &r.members {
            let cpu = |leader: bool| {
                let v: Vec<f64> = p
                    .nodes
                    .iter()
                    .filter(|n| n.leader == leader)
                    .map(|n| n.cpu_us_per_write)
                    .collect();
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.0}", v.iter().sum::<f64>() / v.len() as f64)
                }
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
                p.members,
                p.load.ops_per_s,
                p.load.latency_ms.p50,
                p.load.latency_ms.p99,
                cpu(true),
                cpu(false),
                fmt_errors(&p.load.errors)
            );
        }
    }
    if !r.keys.is_empty() {
        keys_table(r, &mut s);
    }
    s
}

fn keys_table(r: &ScalingReport, s: &mut String) {
    let _ = writeln!(
        s,
        "\nagainst stored keys: {} members, {} B values, {} clients\n",
        r.settings.nodes, r.settings.value_bytes, r.settings.clients
    );
    *s += "| keys | fill s | write p99 ms | read p99 ms | RSS MiB (largest) | disk B/key | snapshot build s | learner added s | learner catch-up s | errors |\n";
    *s += "|---|---|---|---|---|---|---|---|---|---|\n";
    for p in &r.keys {
        let rss = p.nodes.iter().map(|n| n.peak_rss_mib).fold(0.0, f64::max);
        let errors: u64 = p.write.errors.values().chain(p.read.errors.values()).sum();
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1}{} | {} |",
            p.keys,
            p.fill_s,
            p.write.latency_ms.p99,
            p.read.latency_ms.p99,
            rss,
            p.disk_bytes_per_key,
            p.snapshot.build_s,
            p.learner.added_s,
            p.learner.catch_up_s,
            if p.learner.snapshot_index.is_some() {
                " (snapshot)"
            } else {
                ""
            },
            errors
        );
    }
}
