//! Time for a new learner to catch up on a cluster holding N MiB (200 by
//! default): three `raft-node` nodes in this process (RocksDB with fsync,
//! QUIC with mutual TLS on 127.0.0.1, HTTP API), N one-MiB values written
//! through the leader, log compaction every 64 entries; then node 4 starts
//! with `--join` and an empty data directory. Reported: the write phase,
//! and the time from node 4's start until it applied the leader's commit
//! index (snapshot streamed, verified, installed into RocksDB, then the
//! remaining entries).
//!
//! Run with `cargo bench -p raftkv-bench --bench catchup` (set
//! `CATCHUP_MIB` to change the size). Not a Criterion benchmark: one
//! catch-up takes seconds and needs a fresh node each time; it runs
//! `CATCHUP_RUNS` times (default 3) and prints each run.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use raft_client::launcher::{initial_cluster, NodeCommand};
use raft_node::command::{Command, Op, Precondition};
use raft_node::config::RunArgs;
use raft_node::node::{start, RunningNode};

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    run: RunArgs,
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn command(dir: &std::path::Path, id: u64, peer: SocketAddr, client: SocketAddr) -> NodeCommand {
    NodeCommand::new(id, dir.join(format!("node-{id}")))
        .listen(client, peer)
        .dev_certs(dir.join("certs"))
        .flag("max-value-bytes", 1_048_576)
        .flag("snapshot-entries", 64)
        .flag("snapshot-keep-entries", 8)
}

async fn node(cmd: NodeCommand) -> RunningNode {
    // The flags of `raft-node run`, parsed in this process.
    let argv = std::iter::once("node".to_string()).chain(cmd.flags());
    let cfg = Wrapper::parse_from(argv).run.resolve().expect("settings");
    start(cfg, None).await.expect("node starts")
}

async fn run_once(mib: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    raft_net_quic::certs::write_dev_certs(&dir.path().join("certs"), &[1, 2, 3, 4], &[])
        .expect("certificates");
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..4).map(|_| (free_udp(), free_tcp())).collect();
    let initial = initial_cluster((1..=3u64).map(|id| {
        let (p, c) = addrs[id as usize - 1];
        (id, p, c)
    }));
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let (p, c) = addrs[id as usize - 1];
        nodes.push(node(command(dir.path(), id, p, c).initial_cluster(initial.clone())).await);
    }
    let leader = loop {
        let mut found = None;
        for n in &nodes {
            if let Some(s) = n.raft.status().await {
                if s.engine.role == raft_core::Role::Leader {
                    found = Some(n.raft.clone());
                }
            }
        }
        if let Some(l) = found {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let value = Bytes::from(vec![0x5a; 1 << 20]);
    let started = Instant::now();
    for i in 0..mib {
        let cmd = Command {
            op: Op::Put(value.clone()),
            key: Bytes::from(format!("big/{i:06}")),
            precondition: Precondition::None,
            idempotency_key: None,
            principal: None,
        };
        leader.propose(cmd.encode()).await.expect("write");
    }
    let write_s = started.elapsed().as_secs_f64();
    let target = leader.status().await.expect("running").engine.commit;
    let (p, c) = addrs[3];
    let joiner = command(dir.path(), 4, p, c).join(format!("http://{}", addrs[0].1));
    let started = Instant::now();
    let new = node(joiner).await;
    while new.raft.applied_index() < target {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let catchup_s = started.elapsed().as_secs_f64();
    new.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    (write_s, catchup_s)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let mib: usize = raft_core::testing::env_or("CATCHUP_MIB", 200);
    let runs: usize = raft_core::testing::env_or("CATCHUP_RUNS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "learner catch-up: 3 in-process raft-node nodes + 1 joining, {mib} x 1 MiB values, \
         fsync on, snapshot every 64 entries, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for run in 1..=runs {
        let (write_s, catchup_s) = rt.block_on(run_once(mib));
        println!(
            "run {run}: wrote {mib} MiB in {write_s:.2} s ({:.0} MiB/s); \
             new learner caught up in {catchup_s:.2} s ({:.0} MiB/s)",
            mib as f64 / write_s,
            mib as f64 / catchup_s
        );
    }
}
