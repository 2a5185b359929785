//! A three-node cluster in one process, on the in-memory log, state machine
//! and network: writes through the leader, cuts the leader off, watches a new
//! one take over, and shows that every write survived.
//!
//! Run it with `cargo run -p raftkv-core --example cluster`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::memory::{KvCommand, KvResponse, MemKv, MemKvReader, MemLog, MemNetwork};
use raft_core::{
    Config, DriverConfig, Membership, NodeId, Raft, RaftHandle, ReadConsistency, Role,
};

async fn leader(nodes: &[(RaftHandle<KvResponse>, MemKvReader)], except: Option<NodeId>) -> NodeId {
    loop {
        for (h, _) in nodes {
            if Some(h.id()) == except {
                continue;
            }
            if let Some(s) = h.status().await {
                if s.engine.role == Role::Leader {
                    return h.id();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = MemNetwork::new();
    let members = Membership::new([1, 2, 3]);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let kv = MemKv::new();
        let reader = kv.reader();
        let handle = Raft::start(
            Config::new(id),
            DriverConfig::default(),
            members.clone(),
            MemLog::new(),
            kv,
            net.transport(id),
        )
        .await?;
        net.register(&handle);
        nodes.push((handle, reader));
    }

    let started = Instant::now();
    let first = leader(&nodes, None).await;
    println!("node {first} elected leader after {:?}", started.elapsed());
    let h = &nodes[(first - 1) as usize].0;
    for i in 0..100 {
        let cmd = KvCommand::Put {
            key: format!("key-{i}"),
            value: Bytes::from(format!("{i}")),
        };
        h.propose(cmd.encode()).await?;
    }
    let index = h.read(ReadConsistency::Linearizable).await?;
    println!("100 writes committed; linearizable read at index {index}");

    println!("isolating node {first}");
    net.isolate(first);
    let cut = Instant::now();
    let second = leader(&nodes, Some(first)).await;
    println!("node {second} took over after {:?}", cut.elapsed());
    let (h2, reader2) = &nodes[(second - 1) as usize];
    let r = h2
        .propose(
            KvCommand::Put {
                key: "after".into(),
                value: "failover".into(),
            }
            .encode(),
        )
        .await?;
    println!("write on the new leader: {r:?}");
    h2.read(ReadConsistency::Linearizable).await?;
    println!(
        "node {second} holds {} keys (100 before the failover + 1 after)",
        reader2.len()
    );

    net.heal();
    for (h, _) in &nodes {
        h.shutdown().await;
    }
    Ok(())
}
