//! Mutual TLS and node identity: certificates from another CA, certificates
//! naming another node, a dialer that reaches the wrong node, a peer that
//! lies about its id, and a protocol version mismatch are all refused with a
//! clear reason, and nothing they send is delivered.

mod common;

use std::time::Duration;

use common::*;
use raft_core::{NodeId, Transport};
use raft_net_quic::certs::{DevCa, NodeCert};
use raft_net_quic::{close_code, ConnectError, NodeTls, QuicConfig, TlsError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_certificate_from_another_ca_is_refused_by_the_dialer() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let rogue = DevCa::generate("rogue").unwrap();
    let a = start_node(&ca, 1, any_addr(), test_config());
    let mut b = start_node(&rogue, 2, any_addr(), test_config());
    a.transport.add_peer(2, b.addr);
    let err = a.transport.connect(2).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Connect { .. }), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    // Messages queued for it never arrive.
    let _ = a.transport.send(2, every_message(1, 2)).await;
    assert!(recv(&mut b.inbound, Duration::from_millis(500))
        .await
        .is_none());
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let rogue = DevCa::generate("rogue").unwrap();
    let mut server = start_node(&ca, 1, any_addr(), test_config());
    // The client trusts the cluster CA (so it accepts the server) but
    // presents a certificate for node 2 issued by another CA.
    let cert = rogue.issue_node(2, &[]).unwrap();
    let both_cas = format!("{}{}", ca.cert_pem(), rogue.cert_pem());
    let identity = NodeTls::from_pem(
        2,
        both_cas.as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .unwrap();
    let (endpoint, cfg) = raw_client_with(identity);
    let outcome = match raw_connect(&endpoint, &cfg, 1, server.addr).await {
        Err(e) => e.to_string(),
        // TLS 1.3 lets the client finish before the server has judged its
        // certificate; the server then closes the connection.
        Ok(conn) => match raw_hello(&conn, 2, 1, 1).await {
            Ok(frame) => panic!("server accepted a foreign client certificate: {frame:?}"),
            Err(e) => e,
        },
    };
    assert!(
        outcome.to_lowercase().contains("certificate") || outcome.contains("UnknownIssuer"),
        "{outcome}"
    );
    assert!(recv(&mut server.inbound, Duration::from_millis(300))
        .await
        .is_none());
    server.transport.shutdown().await;
}

/// Node 1 (with `cfg`) and a raw client presenting node `cert`'s
/// certificate, whose handshake `hello` (from, to, version) node 1 refuses
/// with `code`, naming each of `reasons`. Returns both, for what a test
/// checks next.
async fn node_1_refuses(
    cfg: QuicConfig,
    cert: NodeId,
    hello: (NodeId, NodeId, u8),
    code: u32,
    reasons: &[&str],
) -> (Node, (quinn::Endpoint, quinn::ClientConfig)) {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let server = start_node(&ca, 1, any_addr(), cfg);
    let client = raw_client(&ca, cert);
    assert_hello_refused(&client, (1, server.addr), hello, code, reasons).await;
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_a_node_id_its_certificate_does_not_name_is_refused() {
    // A valid certificate for node 3, used to claim to be node 2.
    let (mut server, _client) = node_1_refuses(
        test_config(),
        3,
        (2, 1, 1),
        close_code::IDENTITY,
        &["does not name node 2"],
    )
    .await;
    assert!(recv(&mut server.inbound, Duration::from_millis(300))
        .await
        .is_none());
    server.transport.shutdown().await;
}

#[test]
fn a_certificate_for_another_node_cannot_be_loaded_as_this_nodes_identity() {
    let ca = DevCa::generate("cluster").unwrap();
    let load_as_node_2 = |cert: NodeCert| {
        NodeTls::from_pem(
            2,
            ca.cert_pem().as_bytes(),
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )
        .unwrap_err()
    };
    let err = load_as_node_2(ca.issue_node(3, &[]).unwrap());
    assert!(matches!(err, TlsError::Invalid { node: 2, .. }), "{err}");
    assert!(err.to_string().contains("node-2.raft"), "{err}");
    // And one from another CA.
    let rogue = DevCa::generate("rogue").unwrap();
    let err = load_as_node_2(rogue.issue_node(2, &[]).unwrap());
    assert!(matches!(err, TlsError::Invalid { node: 2, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_an_address_where_another_node_listens_fails_the_handshake() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let a = start_node(&ca, 1, any_addr(), test_config());
    let c = start_node(&ca, 3, any_addr(), test_config());
    // Node 1 believes node 2 lives where node 3 does.
    a.transport.add_peer(2, c.addr);
    let err = a.transport.connect(2).await.unwrap_err().to_string();
    assert!(err.contains("node 2"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    a.transport.shutdown().await;
    c.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_addressed_to_another_node_is_refused() {
    let (server, _client) = node_1_refuses(
        test_config(),
        2,
        (2, 5, 1),
        close_code::WRONG_NODE,
        &["this is node 1, not node 5"],
    )
    .await;
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_version_mismatch_is_refused_at_connection_time() {
    let (server, client) = node_1_refuses(
        test_config(),
        2,
        (2, 1, 2),
        close_code::VERSION,
        &["protocol version 2 not supported", "speaks version 1"],
    )
    .await;
    // The same handshake at version 1 is welcomed.
    assert_hello_welcomed(&client, (1, server.addr), 2).await;
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_node_that_is_not_a_peer_is_refused_by_default() {
    let cfg = QuicConfig {
        refuse_unknown_peers: QuicConfig::default().refuse_unknown_peers,
        ..test_config()
    };
    assert!(cfg.refuse_unknown_peers, "refusing is the default");
    let (server, client) = node_1_refuses(
        cfg,
        2,
        (2, 1, 1),
        close_code::UNKNOWN_PEER,
        &["node 2 is not a peer of node 1"],
    )
    .await;
    // Once node 1 knows node 2 (it was added to the cluster), it is welcomed.
    server
        .transport
        .add_peer(2, "127.0.0.1:9".parse::<raft_net_quic::PeerAddr>().unwrap());
    assert_hello_welcomed(&client, (1, server.addr), 2).await;
    server.transport.shutdown().await;
}

#[test]
fn a_wildcard_certificate_does_not_speak_for_a_node() {
    let ca = DevCa::generate("cluster").unwrap();
    // Signed by the cluster CA, but naming `*.raft` rather than node-2.raft:
    // refused when loaded (and by acceptors, which want the exact name).
    let cert = ca.issue_with_names(2, vec!["*.raft".into()]).unwrap();
    let err = NodeTls::from_pem(
        2,
        ca.cert_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
}
