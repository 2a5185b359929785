//! The cluster id in the handshake, between transports: the same id
//! connects, another is refused on both sides (close code 10, both ids in
//! the reason), no id on either side connects as before; and a node with
//! an id still reaches a peer of the previous release, whose strict
//! decoder refuses the id as trailing bytes.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use raft_core::NodeId;
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, Frame};
use raft_net_quic::{close_code, ConnectError, QuicTransport};

const A: u128 = 0xaaaa_0000_0000_0000_0000_0000_0000_0001;
const B: u128 = 0xbbbb_0000_0000_0000_0000_0000_0000_0002;

fn node(ca: &DevCa, id: NodeId, cluster: Option<u128>) -> QuicTransport {
    let (t, _inbound) = QuicTransport::builder(id, tls(ca, id))
        .config(test_config())
        .cluster_id(cluster)
        .bind(any_addr())
        .unwrap();
    t
}

async fn connect(from: &QuicTransport, to: &QuicTransport) -> Result<(), ConnectError> {
    from.add_peer(to.id(), to.local_addr().unwrap());
    tokio::time::timeout(Duration::from_secs(10), from.connect(to.id()))
        .await
        .expect("an answer within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_cluster_connects_another_is_refused_and_no_id_checks_nothing() {
    init_tracing();
    let (ca, _dir) = ca_and_dir();
    let (a1, a2, b3, none4) = (
        node(&ca, 1, Some(A)),
        node(&ca, 2, Some(A)),
        node(&ca, 3, Some(B)),
        node(&ca, 4, None),
    );
    connect(&a1, &a2).await.expect("same cluster");
    for (from, to) in [(&a1, &b3), (&b3, &a2)] {
        let e = connect(from, to).await.expect_err("another cluster");
        let text = e.to_string();
        assert!(matches!(e, ConnectError::Refused { .. }), "{text}");
        assert!(text.contains("wrong cluster"), "{text}");
        assert!(text.contains(&format!("{A:032x}")), "{text}");
        assert!(text.contains(&format!("{B:032x}")), "{text}");
    }
    connect(&a1, &none4)
        .await
        .expect("an acceptor without an id");
    connect(&none4, &b3).await.expect("a dialer without an id");
    // Learning the id later (a node that joined) makes it count.
    none4.set_cluster_id(A);
    assert_eq!(none4.cluster_id(), Some(A));
    none4.disconnect(3);
    assert!(
        connect(&none4, &b3).await.is_err(),
        "node 4 is of cluster A now"
    );
    for t in [a1, a2, b3, none4] {
        t.shutdown().await;
    }
}

/// Node 2 as the previous release answers: a `Hello` longer than 18 bytes
/// (version, kind, two ids) is refused as the strict decoder did; one
/// without an id is welcomed. Returns the Hello lengths it read.
async fn previous_release_node(server: quinn::Endpoint, connections: usize) -> Vec<usize> {
    let mut seen = Vec::new();
    for _ in 0..connections {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut head = [0u8; 5];
        recv.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut content = vec![0u8; len];
        recv.read_exact(&mut content).await.unwrap();
        seen.push(len);
        if len > 18 {
            let reason = format!(
                "bad Hello: {} unexpected bytes after the frame body",
                len - 18
            );
            conn.close(close_code::PROTOCOL.into(), reason.as_bytes());
            continue;
        }
        let mut buf = BytesMut::new();
        let welcome = Frame::Welcome {
            node: 2,
            cluster: None,
        };
        codec::encode_frame(&welcome, 1 << 20, &mut buf).unwrap();
        send.write_all(&buf).await.unwrap();
        let _ = send.finish();
        // Keep it open until the dialer is done.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_id_still_reaches_a_peer_of_the_previous_release() {
    init_tracing();
    let (ca, _dir) = ca_and_dir();
    let tls2 = tls(&ca, 2);
    let (server, addr2) = raw_server(&tls2);
    let old = tokio::spawn(previous_release_node(server.clone(), 2));
    let t1 = node(&ca, 1, Some(A));
    t1.add_peer(2, addr2);
    tokio::time::timeout(Duration::from_secs(10), t1.connect(2))
        .await
        .expect("an answer within 10 s")
        .expect("connected without the id");
    t1.shutdown().await;
    let seen = tokio::time::timeout(Duration::from_secs(10), old)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec![34, 18], "with the id, then without");
    server.close(0u32.into(), b"done");
}

/// A `Hello` whose bytes after the two ids are neither nothing nor exactly
/// 16 (a cluster id cut short, or followed by more) is refused with a
/// protocol error that says which, never read as an id and never a panic;
/// the node then still welcomes its own cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_a_cut_or_overlong_cluster_id_is_refused() {
    init_tracing();
    let (ca, _dir) = ca_and_dir();
    let (a1, a2) = (node(&ca, 1, Some(A)), node(&ca, 2, Some(A)));
    let (endpoint, cfg) = raw_client(&ca, 2);
    for extra in [1usize, 8, 15, 17, 24, 32, 40] {
        let mut bytes = vec![codec::StreamKind::Handshake as u8];
        bytes.extend_from_slice(&(18 + extra as u32).to_be_bytes());
        bytes.extend_from_slice(&[codec::PROTOCOL_VERSION, 0x01]);
        bytes.extend_from_slice(&2u64.to_be_bytes());
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend((0..extra).map(|i| 0xa0 ^ i as u8));
        let conn = raw_connect(&endpoint, &cfg, 1, a1.local_addr().unwrap())
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let _ = send.finish();
        let reason = closed_reason(&conn).await;
        let expected = if extra < 16 {
            "bad Hello: frame truncated: hello cluster id".to_string()
        } else {
            format!(
                "bad Hello: {} unexpected bytes after the frame body",
                extra - 16
            )
        };
        assert_eq!(
            reason,
            format!("code {}: {expected}", close_code::PROTOCOL),
            "{extra} bytes after the ids"
        );
    }
    connect(&a2, &a1)
        .await
        .expect("its own cluster, after all that");
    for t in [a1, a2] {
        t.shutdown().await;
    }
}

/// Node 2 answering its i-th `Hello` with a `Welcome` followed by
/// `extra[i]` bytes (16 would be a cluster id).
async fn bad_welcome_node(server: quinn::Endpoint, extra: Vec<usize>) {
    for n in extra {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut head = [0u8; 5];
        recv.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        recv.read_exact(&mut vec![0u8; len]).await.unwrap();
        let mut welcome = (10 + n as u32).to_be_bytes().to_vec();
        welcome.extend_from_slice(&[codec::PROTOCOL_VERSION, 0x02]);
        welcome.extend_from_slice(&2u64.to_be_bytes());
        welcome.extend((0..n).map(|i| 0xaa ^ i as u8));
        send.write_all(&welcome).await.unwrap();
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
}

/// A `Welcome` with 1..15 bytes after the node id (a cluster id cut
/// short) or 17+ (an id followed by more) fails the dial with an error
/// that says which; it is never read as an id, nor retried without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_with_a_cut_or_overlong_cluster_id_fails_the_dial() {
    init_tracing();
    let (ca, _dir) = ca_and_dir();
    let tls2 = tls(&ca, 2);
    let (server, addr2) = raw_server(&tls2);
    let extra = vec![1usize, 15, 17, 33];
    let fake = tokio::spawn(bad_welcome_node(server.clone(), extra.clone()));
    let t1 = node(&ca, 1, Some(A));
    t1.add_peer(2, addr2);
    for n in extra {
        let e = tokio::time::timeout(Duration::from_secs(10), t1.connect(2))
            .await
            .expect("an answer within 10 s")
            .expect_err("a malformed Welcome");
        let text = e.to_string();
        let expected = if n < 16 {
            "frame truncated: welcome cluster id".to_string()
        } else {
            format!("{} unexpected bytes after the frame body", n - 16)
        };
        assert!(text.contains(&expected), "{n} bytes: {text}");
    }
    tokio::time::timeout(Duration::from_secs(10), fake)
        .await
        .expect("one dial per Welcome, none again without the id")
        .unwrap();
    t1.shutdown().await;
    server.close(0u32.into(), b"done");
}
