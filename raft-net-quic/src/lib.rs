//! The peer transport of the raft workspace: raft-core's
//! [`Transport`](raft_core::Transport) on QUIC ([quinn]) with mandatory
//! mutual TLS ([rustls], ring provider).
//!
//! - **Identity.** Every node presents a certificate signed by the cluster CA
//!   that names `node-<id>.raft`. The dialer checks the acceptor's
//!   certificate for the id it dials; the acceptor checks the dialer's
//!   certificate against the CA and against the id the dialer claims.
//!   Anything else is refused with a reason the other side logs.
//! - **Streams.** One connection per peer pair. Votes, heartbeats, responses
//!   and `TimeoutNow` travel on a high-priority control stream; AppendEntries
//!   with entries keep their order on a replication stream; each snapshot
//!   transfer gets its own low-priority stream, in checksummed chunks, and
//!   resumes after a broken connection.
//! - **Wire format.** Length-prefixed frames with a protocol version
//!   ([`codec`]); the version is checked in the handshake, so a mismatch is a
//!   clear error at connection time. Golden byte vectors pin the format.
//! - **Limits.** Bounded per-peer queues (a full queue drops the newest
//!   message and `send` says so: Raft retransmits, the engine never blocks),
//!   frame size, inbound streams and connections, all in [`QuicConfig`].
//! - **Liveness.** QUIC keep-alives and an idle timeout at the election
//!   timeout; reconnects with exponential backoff and jitter.
//! - **Metrics** through the `metrics` facade, per peer: messages and bytes
//!   sent and received, drops, connects, RTT (see the crate README).
//!
//! # Modules
//!
//! Every item of the transport, its configuration and snapshot sinks is at
//! the crate root. Three modules stay public as namespaces of their own:
//! [`certs`] (development certificates: a CA and node certificates, what
//! `raft-node certs` writes), [`codec`] (the wire format: frames, stream
//! kinds, encode and decode, for tools and tests that speak it raw) and
//! [`tls`] (a node's TLS identity, and what a raw peer needs to present
//! one: `tls::ALPN`, `tls::node_dns_name`).
//!
//! # Certificates
//!
//! For development, [`certs`] creates a CA and node certificates (this is what
//! `raft-node certs` runs); [`NodeTls::from_pem_files`] loads them:
//!
//! ```no_run
//! use raft_net_quic::{certs, NodeTls};
//!
//! let dir = std::path::Path::new("certs");
//! let files = certs::write_dev_certs(dir, &[1, 2, 3], &["localhost".into()])?;
//! let tls = NodeTls::from_pem_files(1, &files.ca_cert, dir.join("node-1.pem"), dir.join("node-1.key"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Plugging the transport into the driver
//!
//! The transport is created first, the driver second; inbound messages are
//! forwarded to the driver's handle.
//!
//! ```
//! use raft_core::memory::{MemKv, MemLog};
//! use raft_core::{Config, DriverConfig, Membership, Raft};
//! use raft_net_quic::{certs::DevCa, NodeTls, QuicTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = DevCa::generate("doc cluster")?;
//! let cert = ca.issue_node(1, &[])?;
//! let tls = NodeTls::from_pem(1, ca.cert_pem().as_bytes(), cert.cert_pem.as_bytes(),
//!                             cert.key_pem.as_bytes())?;
//! let (transport, mut inbound) =
//!     QuicTransport::builder(1, tls).bind("127.0.0.1:0".parse()?)?;
//! // transport.add_peer(2, "10.0.0.2:7000".parse::<raft_net_quic::PeerAddr>()?); ...
//!
//! let raft = Raft::start(Config::new(1), DriverConfig::default(), Membership::new([1]),
//!                        MemLog::new(), MemKv::new(), transport.clone()).await?;
//! let handle = raft.clone();
//! tokio::spawn(async move {
//!     while let Some(msg) = inbound.recv().await {
//!         // A full driver inbox drops the message; Raft retransmits.
//!         let _ = handle.receive(msg);
//!     }
//! });
//! # raft.shutdown().await;
//! # transport.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod addr;
pub mod certs;
pub mod codec;
mod config;
mod metrics_help;
mod refusal;
mod snapshot;
pub mod tls;
mod transport;

pub use addr::{PeerAddr, PeerAddrError, HOST_NAME_BYTES_MAX};
pub use config::QuicConfig;
pub use metrics_help::describe_metrics;
pub use refusal::{RefusalReason, SnapshotRefusal};
pub use snapshot::{
    forward_snapshots, FileSnapshotSink, FileSource, ReceivedSnapshot, SnapshotSink,
    SnapshotSource, FREE_SPACE_MARGIN_BYTES_DEFAULT, RESERVATION_IDLE_DEFAULT,
};
pub use tls::{NodeTls, TlsError};
pub use transport::{
    close_code, BindError, ConnectError, QuicTransport, QuicTransportBuilder, SnapshotError,
    SnapshotSent,
};
