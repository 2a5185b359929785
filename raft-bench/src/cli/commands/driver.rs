//! `raft-bench driver`: the whole in-memory stack in this process.

use std::time::Duration;

use crate::cli::args::{DriverArgs, CLIENTS_MAX};
use crate::cli::report::Machine;

/// `raft-bench driver`: runs on a runtime of its own (`--workers`
/// threads), in a thread of its own, one fresh cluster per client count.
pub(in crate::cli) fn run(a: DriverArgs) -> anyhow::Result<()> {
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
