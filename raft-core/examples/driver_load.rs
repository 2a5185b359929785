//! The driver under load, for working on its cost: three `Raft<MemLog,
//! MemKv, MemNetwork>` nodes in one process on a tokio runtime with 2
//! worker threads, closed-loop clients each awaiting `RaftHandle::propose`
//! on the leader of a `KvCommand::Put` of an 8-byte value under a key of
//! its own (as `raft-bench driver` does),
//! printing per client count the committed proposals per second, the p50
//! and p99 latency, and the process's CPU time (user + system) per
//! committed proposal. On a machine shared with other work the wall-clock
//! figures are noisy; the CPU time per proposal is not.
//!
//! Run it with `cargo run --release -p raftkv-core --features test-util
//! --example driver_load -- [CLIENTS,...] [SECONDS] [SNAPSHOT_EVERY]
//! [WARM_UP_SECONDS]` (defaults: `1,64,256,1024 3 0 1`; the warm-up comes
//! before each measurement). Like `raft-bench driver`, it takes no snapshots unless
//! `SNAPSHOT_EVERY` (entries applied between two) is set, so the in-memory
//! logs grow for the whole run.
//!
//! Under valgrind (`valgrind --tool=callgrind --fair-sched=yes`), which
//! counts instructions repeatably on a busy machine, set
//! `DRIVER_LOAD_TICK_MS=100` so that the slowed-down leader's heartbeats
//! stay ahead of the followers' election timeouts (10 ms ticks otherwise).

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::testing::driver_cluster::DriverCluster;

/// The process's CPU time so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here,
    // in clock ticks of 1/100 s on Linux.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,64,256,1024".into())
        .split(',')
        .map(|c| c.parse().expect("a client count"))
        .collect();
    let seconds: f64 = args.next().map_or(3.0, |s| s.parse().expect("seconds"));
    let snapshot_every: u64 = args
        .next()
        .map_or(0, |s| s.parse().expect("entries between snapshots"));
    let warm_up: f64 = args
        .next()
        .map_or(1.0, |s| s.parse().expect("warm-up seconds"));
    let tick = Duration::from_millis(std::env::var("DRIVER_LOAD_TICK_MS").map_or(10, |t| {
        t.parse().expect("DRIVER_LOAD_TICK_MS: milliseconds")
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let payload = Bytes::from_static(&[7u8; 8]);
    for n in clients {
        rt.block_on(async {
            let cluster = DriverCluster::start_with(snapshot_every, tick).await;
            let warm = cluster
                .run_for(n, Duration::from_secs_f64(warm_up), payload.clone())
                .await;
            let cpu0 = cpu_time();
            let t0 = Instant::now();
            let run = cluster
                .run_for(n, Duration::from_secs_f64(seconds), payload.clone())
                .await;
            let elapsed = t0.elapsed();
            let cpu = cpu_time().zip(cpu0).map(|(a, b)| a - b);
            let us = |q| run.latency_ns.value_at_quantile(q) as f64 / 1e3;
            println!(
                "{n:>5} clients: {:>10.0} committed/s, p50 {:>7.1} µs, p99 {:>7.1} µs, CPU {} µs/proposal ({} committed, {} failed; {} more in the warm-up)",
                run.committed as f64 / elapsed.as_secs_f64(),
                us(0.5),
                us(0.99),
                cpu.map_or("?".into(), |c| format!(
                    "{:.2}",
                    c.as_secs_f64() * 1e6 / run.committed.max(1) as f64
                )),
                run.committed,
                run.failed,
                warm.committed,
            );
            cluster.shutdown().await;
        });
    }
}
