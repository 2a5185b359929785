//! Issue 16, item 4: the in-memory log is bounded in bytes, not only in
//! entries. A real 3-node cluster of the binary with its default settings
//! takes PUTs of 1 MiB values from several concurrent clients; every
//! node's peak resident memory (`VmHWM` in `/proc/PID/status`) must stay
//! under the documented bound of 512 MiB.
//!
//! `RAFT_MEM_PUTS` sets the number of PUTs (default 1,500, enough to hold
//! more than a GiB per node before the byte bounds existed; the issue's
//! full run is `RAFT_MEM_PUTS=10000`), `RAFT_MEM_CLIENTS` the number of
//! concurrent clients (default 8). `RAFT_MEM_RUST_LOG` sets the nodes'
//! `RUST_LOG` (default `info`), to trace a run that stalls.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{builder_of, cluster_with_env, leader, status_of, via};
use raft_client::{Error, IdempotencyKeys, RetryPolicy};

/// The documented bound on a node's peak RSS with default settings
/// (raft-node README, "Limits").
const PEAK_RSS_BOUND_KIB: u64 = 512 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// `VmHWM` (peak resident set) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_puts_of_one_mib_keep_every_nodes_peak_rss_under_the_documented_bound() {
    let puts = env_u64("RAFT_MEM_PUTS", 1_500);
    let clients = env_u64("RAFT_MEM_CLIENTS", 8).max(1);
    let dir = tempfile::tempdir().unwrap();
    // Default settings: no limit flag is passed. Only the revision history
    // is kept short: by default every 1 MiB value overwritten stays on
    // disk (1.5 GiB here), which the digest below reads whole, slower than
    // a status request may take in a debug build; memory does not hold it.
    let flags = ["--history-retention=100".to_string()];
    let log_filter = std::env::var("RAFT_MEM_RUST_LOG").unwrap_or_else(|_| "info".into());
    let procs = cluster_with_env(dir.path(), 3, &flags, &[], "http", |_| {
        vec![("RUST_LOG".into(), log_filter.clone().into())]
    });
    // One attempt per request, so that the test counts the 503s; no
    // idempotency keys, whose records would add to what is measured.
    let client = builder_of(&procs)
        .request_timeout(Duration::from_secs(60))
        .retry(RetryPolicy::none())
        .idempotency_keys(IdempotencyKeys::Off)
        .build()
        .unwrap();
    leader(&client, &procs, None).await;
    let nodes: Arc<Vec<_>> = Arc::new(procs.iter().map(|p| via(&client, p)).collect());

    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (nodes, next) = (nodes.clone(), next.clone());
        let (refused, unknown) = (refused.clone(), unknown.clone());
        tasks.push(tokio::spawn(async move {
            // Each client has a value of its own: 1 MiB, the default limit.
            let value = bytes::Bytes::from(vec![b'a' + (c % 26) as u8; 1 << 20]);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= puts {
                    return;
                }
                // 64 keys, rewritten: the store stays small, the log does not.
                let key = format!("k{}", i % 64);
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut last_outcome: String;
                loop {
                    // Every node in turn: followers forward to the leader.
                    let node = &nodes[((i + c) % nodes.len() as u64) as usize];
                    match node.put(&key, value.clone()).await {
                        Ok(_) => break,
                        Err(e @ Error::Unavailable { .. }) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            assert!(
                                matches!(e, Error::Unavailable { retry_after: Some(_), .. }),
                                "a 503 carries Retry-After: {e:?}"
                            );
                            last_outcome = e.to_string();
                        }
                        // 504, or a timeout or lost connection.
                        Err(e @ Error::OutcomeUnknown { .. }) => {
                            unknown.fetch_add(1, Ordering::Relaxed);
                            if e.status().is_none() {
                                eprintln!("PUT {key}: {e}");
                            }
                            last_outcome = e.to_string();
                        }
                        Err(e) => panic!("PUT {key}: unexpected answer {e}"),
                    }
                    assert!(
                        Instant::now() < deadline,
                        "PUT {key} (#{i}) to {} not accepted within 120 s; last answer: {last_outcome}",
                        node.endpoints()[0]
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            for p in &procs {
                eprintln!(
                    "node {} status: {:?}",
                    p.id,
                    common::status(&client, p).await
                );
            }
            let logs: Vec<String> = procs
                .iter()
                .map(|p| {
                    let text = p.log_text();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    format!("--- node {} (last 40 lines)\n{tail}", p.id)
                })
                .collect();
            panic!("a client failed: {e}\n{}", logs.join("\n"));
        }
    }
    let elapsed = started.elapsed();

    // Every node holds the same data afterwards.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut seen = Vec::new();
        for p in &procs {
            let s = status_of(&client, p).await;
            seen.push((s.applied, s.kv));
        }
        if seen.iter().all(|s| *s == seen[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let peaks: Vec<(u64, u64)> = procs
        .iter()
        .map(|p| (p.id, peak_rss_kib(p.child.as_ref().unwrap().id())))
        .collect();
    eprintln!(
        "{puts} PUTs of 1 MiB by {clients} clients in {:.1} s ({} refused with 503, {} outcome unknown); \
         peak RSS per node: {}",
        elapsed.as_secs_f64(),
        refused.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
        peaks
            .iter()
            .map(|(id, kib)| format!("node {id}: {} MiB", kib / 1024))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (id, kib) in &peaks {
        assert!(
            *kib <= PEAK_RSS_BOUND_KIB,
            "node {id}: peak RSS {} MiB exceeds the documented bound of {} MiB",
            kib / 1024,
            PEAK_RSS_BOUND_KIB / 1024
        );
    }
}
