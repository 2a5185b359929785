//! Random bytes on the peer port of a real `raft-node` process, from a peer
//! with a valid certificate after a correct handshake: the node must close
//! such a connection with a protocol error (or keep it, when the bytes
//! happen to be whole frames it accepts), never crash, hang or stop serving.
//!
//! The peer is node 4: a learner added through the API that never runs, so
//! its certificate (issued with the cluster's) is a member's and the
//! garbage reaches the frame decoders, without taking a real member's
//! connection away. Seeded: a failure prints the seed, `RAFT_FUZZ_SEED`
//! replays it and `RAFT_FUZZ_CASES` sets the number of connections.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw_peer::{handshake, raw_peer};
use common::*;
use raft_net_quic::close_code;
use raft_net_quic::codec::{self, StreamKind};
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_peer_port_of_a_real_node_break_nothing() {
    let seed = raft_core::testing::seed_from_env("RAFT_FUZZ_SEED");
    let cases: usize = raft_core::testing::env_or("RAFT_FUZZ_CASES", 40);
    eprintln!("fuzz_peer: seed {seed}, {cases} connections (replay: RAFT_FUZZ_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    let client = client_of(&procs);
    leader(&client, &procs, None).await;
    // Node 4 becomes a member every node knows (a learner that never runs).
    via(&client, &procs[0])
        .add_learner(4, "127.0.0.1:9", "127.0.0.1:9")
        .await
        .unwrap();
    let target = &procs[0];
    let peer_addr: SocketAddr = target
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--peer-listen="))
        .expect("--peer-listen")
        .parse()
        .unwrap();
    let (endpoint, cfg) = raw_peer(&dir.path().join("certs"), 4);
    // Node 1 learns of node 4 when it applies the change: until then it
    // refuses the handshake as an unknown peer.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match handshake(&endpoint, &cfg, 4, target.id, peer_addr).await {
            Ok(conn) => {
                conn.close(0u32.into(), b"probe");
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "node {} never accepted node 4: {e}",
                target.id
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let kinds = [
        StreamKind::Control as u8,
        StreamKind::Replication as u8,
        StreamKind::Snapshot as u8,
    ];
    let (mut closed, mut kept) = (0, 0);
    for i in 0..cases {
        let conn = handshake(&endpoint, &cfg, 4, target.id, peer_addr)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}, case {i}: {e}"));
        let kind = if rng.gen_bool(0.9) {
            kinds[rng.gen_range(0..kinds.len())]
        } else {
            rng.gen()
        };
        let mut bytes = vec![kind];
        if rng.gen_bool(0.3) {
            // A plausible frame head: this version and a small length.
            bytes.extend_from_slice(&rng.gen_range(0u32..64).to_be_bytes());
            bytes.push(codec::PROTOCOL_VERSION);
        }
        let n = rng.gen_range(0..4096);
        bytes.extend((0..n).map(|_| rng.gen::<u8>()));
        let mut s = conn.open_uni().await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.finish();
        match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
                assert_eq!(
                    c.error_code,
                    quinn::VarInt::from_u32(close_code::PROTOCOL),
                    "seed {seed}, case {i}: closed with {c:?}"
                );
                closed += 1;
            }
            Ok(other) => panic!("seed {seed}, case {i}: connection ended by {other:?}"),
            Err(_) => {
                kept += 1;
                conn.close(0u32.into(), b"done");
            }
        }
    }
    endpoint.wait_idle().await;
    eprintln!("fuzz_peer: {closed} connections closed with a protocol error, {kept} kept");
    assert!(closed > 0, "seed {seed}: no random input was refused");

    assert_running_without_panic(&mut procs, &format!("seed {seed}"));
    // The cluster still serves, through the node that took the garbage.
    leader(&client, &procs, None).await;
    if let Err(e) = put(&client, &procs[0], "after-peer-fuzz", "ok").await {
        panic!("seed {seed}: {e}");
    }
    let v = via(&client, &procs[1]).get("after-peer-fuzz").await;
    let v = v.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(v.map(|e| e.value), Some("ok".into()), "seed {seed}");
}
