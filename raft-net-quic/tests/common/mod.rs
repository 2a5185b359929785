//! Shared helpers for the loopback transport tests: certificates, nodes,
//! sample messages and a raw QUIC client that speaks the protocol by hand.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use raft_core::{
    AppendResult, Entry, EntryPayload, LogId, Membership, Message, MessageBody, NodeId,
};
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, Frame, Hello, StreamKind};
use raft_net_quic::tls::node_dns_name;
use raft_net_quic::{FileSnapshotSink, NodeTls, QuicConfig, QuicTransport, ReceivedSnapshot};
use tokio::sync::mpsc;

mod peers;
mod recorder;
// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use peers::*;
#[allow(unused_imports)]
pub use recorder::*;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Settings for tests: quick reconnects, generous liveness on a busy CI box.
/// Most tests wire peers in one direction only, so unknown peers are let in
/// here; `tests/identity.rs` checks that the default refuses them.
pub fn test_config() -> QuicConfig {
    QuicConfig {
        refuse_unknown_peers: false,
        idle_timeout: Duration::from_secs(10),
        keep_alive_interval: Duration::from_millis(500),
        reconnect_backoff_min: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(200),
        handshake_timeout: Duration::from_secs(5),
        ..QuicConfig::default()
    }
}

/// A node's TLS identity issued by `ca`.
pub fn tls(ca: &DevCa, id: NodeId) -> NodeTls {
    ca.node_tls(id).expect("node identity")
}

/// A bound transport and its inbound messages.
pub struct Node {
    pub id: NodeId,
    pub transport: QuicTransport,
    pub inbound: mpsc::Receiver<Message>,
    pub addr: SocketAddr,
}

/// Starts node `id` on `addr` (port 0 for any).
pub fn start_node(ca: &DevCa, id: NodeId, addr: SocketAddr, cfg: QuicConfig) -> Node {
    try_start_node(ca, id, addr, cfg).expect("bind")
}

pub fn try_start_node(
    ca: &DevCa,
    id: NodeId,
    addr: SocketAddr,
    cfg: QuicConfig,
) -> Result<Node, raft_net_quic::BindError> {
    let (transport, inbound) = QuicTransport::builder(id, tls(ca, id))
        .config(cfg)
        .bind(addr)?;
    let addr = transport.local_addr().expect("local addr");
    Ok(Node {
        id,
        transport,
        inbound,
        addr,
    })
}

/// Starts node `id` on `addr`, retrying while the address is still held by
/// a node that just shut down.
pub async fn restart_node(ca: &DevCa, id: NodeId, addr: SocketAddr, cfg: QuicConfig) -> Node {
    for _ in 0..100 {
        match try_start_node(ca, id, addr, cfg.clone()) {
            Ok(n) => return n,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("cannot bind {addr} again within 5 s");
}

/// The start of the tests that write files: tracing, a cluster CA and a
/// scratch directory (deleted when dropped).
pub fn ca_and_dir() -> (DevCa, tempfile::TempDir) {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    (ca, tempfile::tempdir().unwrap())
}

/// A node that receives snapshots: node `id` with `cfg`, bound to any
/// loopback port, whose [`FileSnapshotSink`] writes into `dir` and queues
/// up to `queue` completed snapshots on the returned receiver.
pub fn start_snapshot_receiver(
    ca: &DevCa,
    id: NodeId,
    cfg: QuicConfig,
    dir: &std::path::Path,
    queue: usize,
) -> (
    QuicTransport,
    mpsc::Receiver<Message>,
    mpsc::Receiver<ReceivedSnapshot>,
) {
    let (sink, completed) = FileSnapshotSink::new(dir, queue).unwrap();
    let (transport, inbound) = QuicTransport::builder(id, tls(ca, id))
        .config(cfg)
        .snapshot_sink(Arc::new(sink))
        .bind(any_addr())
        .unwrap();
    (transport, inbound, completed)
}

pub fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `n` nodes (ids 1..=n) that know each other.
pub fn mesh(ca: &DevCa, n: u64) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=n)
        .map(|id| start_node(ca, id, any_addr(), test_config()))
        .collect();
    for a in &nodes {
        for b in &nodes {
            if a.id != b.id {
                a.transport.add_peer(b.id, b.addr);
            }
        }
    }
    nodes
}

/// Waits up to `within` for the next inbound message.
pub async fn recv(rx: &mut mpsc::Receiver<Message>, within: Duration) -> Option<Message> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// One message of every kind (and every payload and flag), from `from` to `to`.
pub fn every_message(from: NodeId, to: NodeId) -> Vec<Message> {
    let m = |term, body| Message {
        from,
        to,
        term,
        body,
    };
    vec![
        m(
            3,
            MessageBody::RequestVote {
                pre_vote: true,
                last_log_id: LogId::new(2, 10),
                leadership_transfer: false,
            },
        ),
        m(
            3,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_id: LogId::new(2, 10),
                leadership_transfer: true,
            },
        ),
        m(
            3,
            MessageBody::RequestVoteResponse {
                pre_vote: true,
                granted: true,
            },
        ),
        m(
            3,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: false,
            },
        ),
        m(
            4,
            MessageBody::AppendEntries {
                prev_log_id: LogId::new(3, 10),
                entries: vec![
                    Entry {
                        term: 4,
                        index: 11,
                        payload: EntryPayload::Blank,
                    },
                    Entry {
                        term: 4,
                        index: 12,
                        payload: EntryPayload::Normal(Bytes::from_static(b"hello raft")),
                    },
                    Entry {
                        term: 4,
                        index: 13,
                        payload: EntryPayload::Membership(Box::new(Membership::joint(
                            [1, 2, 3],
                            [1, 2, 4],
                            [5],
                        ))),
                    },
                ],
                leader_commit: 10,
                round: 7,
                heartbeat: false,
            },
        ),
        m(
            4,
            MessageBody::AppendEntries {
                prev_log_id: LogId::new(4, 13),
                entries: Vec::new(),
                leader_commit: 12,
                round: 8,
                heartbeat: true,
            },
        ),
        m(
            4,
            MessageBody::AppendEntriesResponse {
                round: 8,
                result: AppendResult::Success { last_index: 13 },
            },
        ),
        m(
            4,
            MessageBody::AppendEntriesResponse {
                round: 9,
                result: AppendResult::Conflict {
                    rejected_prev: 20,
                    hint: LogId::new(3, 15),
                },
            },
        ),
        m(5, MessageBody::TimeoutNow),
    ]
}

/// A raw QUIC client endpoint presenting `cert_node`'s certificate from `ca`
/// and trusting `ca`.
pub fn raw_client(ca: &DevCa, cert_node: NodeId) -> (quinn::Endpoint, quinn::ClientConfig) {
    raw_client_with(tls(ca, cert_node))
}

pub fn raw_client_with(identity: NodeTls) -> (quinn::Endpoint, quinn::ClientConfig) {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config().unwrap())
            .unwrap();
    let cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client(any_addr()).unwrap();
    (endpoint, cfg)
}

/// A raw QUIC server endpoint on a free loopback port presenting
/// `identity`: a node a test writes by hand (it accepts and answers
/// itself).
pub fn raw_server(identity: &NodeTls) -> (quinn::Endpoint, SocketAddr) {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config().unwrap())
            .unwrap();
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        any_addr(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    (server, addr)
}

/// Connects the raw client to node `server` at `addr` (TLS only).
pub async fn raw_connect(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    server: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    endpoint
        .connect_with(cfg.clone(), addr, &node_dns_name(server))
        .unwrap()
        .await
}

/// The bytes of a handshake stream: kind byte and a Hello frame, with the
/// frame's version byte replaced by `version`.
pub fn hello_bytes(from: NodeId, to: NodeId, version: u8) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[StreamKind::Handshake as u8]);
    codec::encode_frame(
        &Frame::Hello(Hello {
            from,
            to,
            cluster: None,
        }),
        1 << 20,
        &mut buf,
    )
    .unwrap();
    buf[1 + codec::LENGTH_PREFIX_BYTES] = version;
    buf.to_vec()
}

/// Runs the handshake by hand; returns the answer frame (a Welcome) or the
/// reason the server closed the connection.
pub async fn raw_hello(
    conn: &quinn::Connection,
    from: NodeId,
    to: NodeId,
    version: u8,
) -> Result<Frame, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&hello_bytes(from, to, version))
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let mut data = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 256];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => data.extend_from_slice(&buf[..n]),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_string())?;
    match read {
        Ok(()) => codec::decode_frame(Bytes::from(data), 1 << 20).map_err(|e| e.to_string()),
        Err(_) => Err(closed_reason(conn).await),
    }
}

/// Runs a hello by hand over a new raw connection from `client` to node
/// `server` at `addr`, claiming to be `from`, addressed to `to` and at
/// `version`; asserts that it is refused with close `code` and a reason
/// naming each of `reasons`.
pub async fn assert_hello_refused(
    (endpoint, cfg): &(quinn::Endpoint, quinn::ClientConfig),
    (server, addr): (NodeId, SocketAddr),
    (from, to, version): (NodeId, NodeId, u8),
    code: u32,
    reasons: &[&str],
) {
    let conn = raw_connect(endpoint, cfg, server, addr).await.unwrap();
    let err = raw_hello(&conn, from, to, version).await.unwrap_err();
    assert!(err.starts_with(&format!("code {code}")), "{err}");
    for reason in reasons {
        assert!(err.contains(reason), "{err}");
    }
}

/// Runs a hello by hand over a new raw connection from `client` to node
/// `server` at `addr`, as node `from` to node `server` at version 1;
/// asserts that it is welcomed.
pub async fn assert_hello_welcomed(
    (endpoint, cfg): &(quinn::Endpoint, quinn::ClientConfig),
    (server, addr): (NodeId, SocketAddr),
    from: NodeId,
) {
    let conn = raw_connect(endpoint, cfg, server, addr).await.unwrap();
    assert_eq!(
        raw_hello(&conn, from, server, 1).await.unwrap(),
        Frame::Welcome {
            node: server,
            cluster: None
        }
    );
}

/// Connects a raw client certified as `from` to node `server` at `addr`,
/// runs the handshake (which must be welcomed), opens a snapshot stream
/// and writes `frames` on it: the endpoint, the connection and the
/// stream's two halves.
pub async fn raw_snapshot_stream(
    ca: &DevCa,
    from: NodeId,
    (server, addr): (NodeId, SocketAddr),
    frames: &[Frame],
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let (endpoint, cfg) = raw_client(ca, from);
    let conn = raw_connect(&endpoint, &cfg, server, addr).await.unwrap();
    assert_eq!(
        raw_hello(&conn, from, server, 1).await.unwrap(),
        Frame::Welcome {
            node: server,
            cluster: None
        }
    );
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[StreamKind::Snapshot as u8]);
    for f in frames {
        codec::encode_frame(f, 1 << 24, &mut buf).unwrap();
    }
    send.write_all(&buf).await.unwrap();
    (endpoint, conn, send, recv)
}

/// Waits for the connection to close and describes how.
pub async fn closed_reason(conn: &quinn::Connection) -> String {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            format!(
                "code {}: {}",
                c.error_code,
                String::from_utf8_lossy(&c.reason)
            )
        }
        Ok(other) => other.to_string(),
        Err(_) => "still open".to_string(),
    }
}
