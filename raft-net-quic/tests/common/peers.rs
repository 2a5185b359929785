//! Set-up shared by the hostile-peer tests (hardening, handshake floods,
//! review findings, refusal metrics): reachability probes, connected and
//! restarted members, a raw QUIC client that never completes its
//! handshakes, identities from issued certificates, revocation list files
//! and a receiver with a snapshot size limit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::{Message, MessageBody, NodeId, Transport};
use raft_net_quic::certs::{DevCa, NodeCert};
use raft_net_quic::{FileSnapshotSink, NodeTls, QuicConfig, QuicTransport, ReceivedSnapshot};
use tokio::sync::mpsc;

use super::{any_addr, recv, restart_node, start_node, test_config, tls, Node};

/// How long a message between members may take to arrive when nothing
/// keeps it out (a loaded CI machine included).
pub const DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// Sends a `TimeoutNow` `from -> to` (term 7) every 100 ms for up to
/// `within`, stopping at the first message from `from` that arrives:
/// whether one did.
pub async fn delivered(
    sender: &QuicTransport,
    receiver: &mut mpsc::Receiver<Message>,
    from: NodeId,
    to: NodeId,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let ping = Message {
            from,
            to,
            term: 7,
            body: MessageBody::TimeoutNow,
        };
        let _ = sender.send(to, vec![ping]).await;
        if let Some(m) = recv(receiver, Duration::from_millis(100)).await {
            if m.from == from {
                return true;
            }
        }
    }
    false
}

/// Nothing arrives from `from` for `quiet` while it keeps sending.
pub async fn refused(
    sender: &QuicTransport,
    receiver: &mut mpsc::Receiver<Message>,
    from: NodeId,
    to: NodeId,
    quiet: Duration,
) -> bool {
    !delivered(sender, receiver, from, to, quiet).await
}

/// A sans-I/O QUIC client endpoint and a client configuration that trusts
/// nothing: enough to send Initial packets (and answer a Retry), never to
/// complete a handshake.
pub fn unvalidated_quic_client() -> (quinn_proto::Endpoint, quinn_proto::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tls.alpn_protocols = vec![raft_net_quic::tls::ALPN.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let client = quinn_proto::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    (endpoint, client)
}

/// Node `id`'s TLS identity from a certificate `ca` issued (so that the
/// test can later revoke that very certificate).
pub fn tls_from_cert(ca: &DevCa, id: NodeId, cert: &NodeCert) -> NodeTls {
    NodeTls::from_pem(
        id,
        ca.cert_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .unwrap()
}

/// Writes `cluster.crl` in `dir`, a revocation list from `ca` that revokes
/// nothing yet, and returns its path.
pub fn empty_crl_file(ca: &DevCa, dir: &Path) -> PathBuf {
    let crl = dir.join("cluster.crl");
    std::fs::write(&crl, ca.revocation_list(&[]).unwrap()).unwrap();
    crl
}

/// [`test_config`] polling the revocation list every 100 ms.
pub fn crl_test_config() -> QuicConfig {
    QuicConfig {
        crl_poll_interval: Duration::from_millis(100),
        ..test_config()
    }
}

/// Nodes 1 and 2 started with `cfg`, each knowing the other, once a
/// message from 2 has reached 1 (within 10 s).
pub async fn connected_pair(ca: &DevCa, cfg: &QuicConfig) -> (Node, Node) {
    let mut n1 = start_node(ca, 1, any_addr(), cfg.clone());
    let n2 = start_node(ca, 2, any_addr(), cfg.clone());
    n1.transport.add_peer(2, n2.addr);
    n2.transport.add_peer(1, n1.addr);
    assert!(delivered(&n2.transport, &mut n1.inbound, 2, 1, DELIVERY_WAIT).await);
    (n1, n2)
}

/// Shuts `node` down and starts it again on the same address with `cfg`,
/// knowing only `peer` at `peer_addr`.
pub async fn restart_knowing(
    ca: &DevCa,
    node: Node,
    cfg: &QuicConfig,
    peer: NodeId,
    peer_addr: SocketAddr,
) -> Node {
    let (id, addr) = (node.id, node.addr);
    node.transport.shutdown().await;
    drop(node);
    let node = restart_node(ca, id, addr, cfg.clone()).await;
    node.transport.add_peer(peer, peer_addr);
    node
}

/// Node 2 receiving snapshots into `dir/in` with `snapshot_bytes_max` set
/// to `bytes_max`, and node 1 (test settings) knowing it.
pub struct SnapshotLimitPair {
    pub receiver: QuicTransport,
    pub sender: Node,
    /// Kept open for the receiver's lifetime.
    pub inbound: mpsc::Receiver<Message>,
    /// Kept open for the receiver's lifetime.
    pub completed: mpsc::Receiver<ReceivedSnapshot>,
}

/// Starts a [`SnapshotLimitPair`] receiving into `dir/in`.
pub fn snapshot_limit_pair(ca: &DevCa, dir: &Path, bytes_max: u64) -> SnapshotLimitPair {
    let (sink, completed) = FileSnapshotSink::new(dir.join("in"), 2).unwrap();
    let (receiver, inbound) = QuicTransport::builder(2, tls(ca, 2))
        .config(QuicConfig {
            snapshot_bytes_max: bytes_max,
            ..test_config()
        })
        .snapshot_sink(Arc::new(sink))
        .bind(any_addr())
        .unwrap();
    let sender = start_node(ca, 1, any_addr(), test_config());
    sender.transport.add_peer(2, receiver.local_addr().unwrap());
    SnapshotLimitPair {
        receiver,
        sender,
        inbound,
        completed,
    }
}
