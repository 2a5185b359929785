//! Transport behaviour on loopback: every message kind between three nodes,
//! per-stream ordering, reconnection to a restarted peer, the full-queue
//! policy, and a Raft cluster running over the transport.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use raft_core::memory::{KvCommand, MemKv, MemLog};
use raft_core::{
    Config, DriverConfig, Membership, Message, MessageBody, NodeId, Raft, ReadConsistency, Role,
    Transport, TransportError,
};
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{stream_for, StreamKind};
use raft_net_quic::QuicConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_every_message_kind_in_order_per_stream() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let mut nodes = mesh(&ca, 3);
    let rounds = 5;
    for _ in 0..rounds {
        for a in &nodes {
            for b in &nodes {
                if a.id != b.id {
                    a.transport
                        .send(b.id, every_message(a.id, b.id))
                        .await
                        .unwrap();
                }
            }
        }
    }
    let per_sender = every_message(0, 0).len() * rounds;
    for node in &mut nodes {
        let mut got: HashMap<NodeId, Vec<Message>> = HashMap::new();
        while got.values().map(Vec::len).sum::<usize>() < 2 * per_sender {
            let m = recv(&mut node.inbound, Duration::from_secs(20))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "node {} got only {:?} messages",
                        node.id,
                        got.values().map(Vec::len).collect::<Vec<_>>()
                    )
                });
            assert_eq!(m.to, node.id);
            got.entry(m.from).or_default().push(m);
        }
        for (from, msgs) in got {
            assert_eq!(msgs.len(), per_sender, "from {from}");
            let expected: Vec<Message> = (0..rounds)
                .flat_map(|_| every_message(from, node.id))
                .collect();
            // Each stream keeps its order; the two streams interleave freely.
            for stream in [StreamKind::Control, StreamKind::Replication] {
                let want: Vec<&Message> = expected
                    .iter()
                    .filter(|m| stream_for(m) == stream)
                    .collect();
                let have: Vec<&Message> = msgs.iter().filter(|m| stream_for(m) == stream).collect();
                assert_eq!(have, want, "{stream:?} stream from {from} to {}", node.id);
            }
        }
    }
    for n in &nodes {
        n.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_pair_even_when_both_dial() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let mut nodes = mesh(&ca, 2);
    // Both dial at once.
    let (a, b) = (&nodes[0].transport, &nodes[1].transport);
    let (ra, rb) = tokio::join!(a.connect(2), b.connect(1));
    ra.unwrap();
    rb.unwrap();
    // Whatever raced, messages flow both ways and both sides settle on one
    // live connection.
    for _ in 0..20 {
        a.send(2, every_message(1, 2)).await.unwrap();
        b.send(1, every_message(2, 1)).await.unwrap();
    }
    let n = every_message(0, 0).len() * 20;
    for node in &mut nodes {
        for _ in 0..n {
            recv(&mut node.inbound, Duration::from_secs(20))
                .await
                .expect("message");
        }
    }
    assert!(nodes[0].transport.is_connected(2));
    assert!(nodes[1].transport.is_connected(1));
    // The losing connection is closed after its grace period.
    let settled = tokio::time::timeout(Duration::from_secs(15), async {
        while nodes.iter().any(|n| n.transport.open_connections() != 1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "open connections: {:?}",
        nodes
            .iter()
            .map(|n| n.transport.open_connections())
            .collect::<Vec<_>>()
    );
    for n in &nodes {
        n.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_on_the_same_address_is_reconnected_to() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let mut nodes = mesh(&ca, 2);
    let vote = |from, to| every_message(from, to).remove(0);
    nodes[0].transport.send(2, vec![vote(1, 2)]).await.unwrap();
    assert!(recv(&mut nodes[1].inbound, Duration::from_secs(10))
        .await
        .is_some());

    let addr = nodes[1].addr;
    let old = nodes.pop().unwrap();
    old.transport.shutdown().await;
    drop(old);
    let mut restarted = restart_node(&ca, 2, addr, test_config()).await;
    restarted.transport.add_peer(1, nodes[0].addr);

    // The old connection is dead; the sender notices and redials. Keep
    // sending (Raft would, on every heartbeat) until a message lands.
    let mut delivered = None;
    for _ in 0..100 {
        let _ = nodes[0].transport.send(2, vec![vote(1, 2)]).await;
        if let Some(m) = recv(&mut restarted.inbound, Duration::from_millis(200)).await {
            delivered = Some(m);
            break;
        }
    }
    let m = delivered.expect("no message reached the restarted peer within 20 s");
    assert_eq!((m.from, m.to), (1, 2));
    // And the restarted node can answer on its own.
    restarted.transport.send(1, vec![vote(2, 1)]).await.unwrap();
    let back = recv(&mut nodes[0].inbound, Duration::from_secs(10))
        .await
        .expect("answer");
    assert_eq!(back.from, 2);
    nodes[0].transport.shutdown().await;
    restarted.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_reports_instead_of_blocking() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let cfg = QuicConfig {
        control_queue_messages_max: 16,
        write_batch_messages_max: 4,
        ..test_config()
    };
    let node = start_node(&ca, 1, any_addr(), cfg);
    // A peer address where nothing answers: the writer waits on the dial.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    node.transport.add_peer(2, silent.local_addr().unwrap());
    let vote = every_message(1, 2).remove(0);
    let mut full = 0;
    let sends = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..200 {
            match node.transport.send(2, vec![vote.clone()]).await {
                Ok(()) => {}
                Err(TransportError::QueueFull(2)) => full += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    })
    .await;
    assert!(sends.is_ok(), "send blocked on an unreachable peer");
    assert!(
        full >= 200 - 16 - 4 - 1,
        "only {full} of 200 sends reported a full queue"
    );
    assert!(matches!(
        node.transport.send(9, vec![vote]).await,
        Err(TransportError::UnknownPeer(9))
    ));
    node.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_dropped_and_later_ones_still_flow() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let cfg = QuicConfig {
        max_frame_bytes: 64 << 10,
        snapshot_chunk_bytes: 16 << 10,
        ..test_config()
    };
    let a = start_node(&ca, 1, any_addr(), cfg.clone());
    let mut b = start_node(&ca, 2, any_addr(), cfg);
    a.transport.add_peer(2, b.addr);
    let mut big = every_message(1, 2).remove(4);
    if let MessageBody::AppendEntries { entries, .. } = &mut big.body {
        entries[1].payload = raft_core::EntryPayload::Normal(Bytes::from(vec![7u8; 100 << 10]));
    }
    let small = every_message(1, 2).remove(0);
    a.transport.send(2, vec![big]).await.unwrap();
    a.transport.send(2, vec![small.clone()]).await.unwrap();
    let got = recv(&mut b.inbound, Duration::from_secs(10))
        .await
        .expect("small message");
    assert_eq!(got, small);
    assert!(recv(&mut b.inbound, Duration::from_millis(300))
        .await
        .is_none());
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_cluster_elects_and_replicates_over_quic() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let nodes = mesh(&ca, 3);
    let members = Membership::new([1, 2, 3]);
    let mut handles = Vec::new();
    let mut readers = Vec::new();
    for mut node in nodes {
        let kv = MemKv::new();
        readers.push(kv.reader());
        let handle = Raft::start(
            Config::new(node.id),
            DriverConfig::default(),
            members.clone(),
            MemLog::new(),
            kv,
            node.transport.clone(),
        )
        .await
        .unwrap();
        let h = handle.clone();
        tokio::spawn(async move {
            while let Some(m) = node.inbound.recv().await {
                let _ = h.receive(m);
            }
        });
        handles.push((handle, node.transport));
    }
    let leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            for (h, _) in &handles {
                if h.status()
                    .await
                    .is_some_and(|s| s.engine.role == Role::Leader)
                {
                    return h.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no leader within 30 s");
    for i in 0..50 {
        let cmd = KvCommand::Put {
            key: format!("k{i}"),
            value: Bytes::from(format!("v{i}")),
        };
        leader.propose(cmd.encode()).await.unwrap();
    }
    let applied = leader.read(ReadConsistency::Linearizable).await.unwrap();
    // Every replica applies everything the leader committed.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if handles.iter().all(|(h, _)| h.applied_index() >= applied) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("replicas did not catch up");
    for r in &readers {
        assert_eq!(r.get("k49").map(|(v, _)| v), Some(Bytes::from("v49")));
    }
    for (h, t) in &handles {
        h.shutdown().await;
        t.shutdown().await;
    }
}
