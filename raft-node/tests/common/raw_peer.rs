//! A raw peer for the peer-port tests: a QUIC client that presents a
//! node's certificate and speaks the transport's handshake by hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft_net_quic::codec::{self, Frame, Hello, StreamKind};
use raft_net_quic::tls::node_dns_name;
use raft_net_quic::NodeTls;

/// A QUIC client endpoint presenting node `id`'s certificate.
pub fn raw_peer(certs: &std::path::Path, id: u64) -> (quinn::Endpoint, quinn::ClientConfig) {
    let tls = NodeTls::from_pem_files(
        id,
        certs.join("ca.pem"),
        certs.join(format!("node-{id}.pem")),
        certs.join(format!("node-{id}.key")),
    )
    .expect("node certificate");
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls.client_config().expect("client TLS"))
            .expect("QUIC TLS");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    (endpoint, quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Connects as `from` to node `to` and runs the handshake: the connection
/// when welcomed, else how it was refused.
pub async fn handshake(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    from: u64,
    to: u64,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let conn = endpoint
        .connect_with(cfg.clone(), addr, &node_dns_name(to))
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut hello = vec![StreamKind::Handshake as u8];
    hello.extend_from_slice(
        &codec::encode_to_bytes(
            &Frame::Hello(Hello {
                from,
                to,
                cluster: None,
            }),
            1 << 20,
        )
        .map_err(|e| e.to_string())?,
    );
    send.write_all(&hello).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(4096))
        .await
        .map_err(|_| "no handshake answer in 10 s".to_string())?;
    match answer {
        Ok(bytes) => match codec::decode_frame(bytes.into(), 1 << 20) {
            Ok(Frame::Welcome { node, .. }) if node == to => Ok(conn),
            other => Err(format!("handshake answered {other:?}")),
        },
        Err(_) => match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => Err(format!(
                "closed with code {}: {}",
                c.error_code,
                String::from_utf8_lossy(&c.reason)
            )),
            Ok(other) => Err(other.to_string()),
            Err(_) => Err("stream failed, connection open".into()),
        },
    }
}
