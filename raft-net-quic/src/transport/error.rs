//! The transport's errors and the outcome of a snapshot transfer.

use super::*;

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The settings are inconsistent.
    #[error("invalid transport settings: {0}")]
    Config(String),
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// QUIC or TLS failed (unreachable, timed out, certificate refused).
    #[error("connecting to node {peer} at {addr}: {detail}")]
    Connect {
        /// The peer.
        peer: NodeId,
        /// Its address, as given (a name is resolved at every attempt).
        addr: PeerAddr,
        /// What went wrong.
        detail: String,
    },
    /// The peer refused the handshake and said why.
    #[error("node {peer} refused the connection: {reason}")]
    Refused {
        /// The peer.
        peer: NodeId,
        /// Its reason.
        reason: String,
    },
    /// The transport is shutting down.
    #[error("transport closed")]
    Closed,
}

/// Why a snapshot transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The peer is not known to the transport.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// Reading the source failed.
    #[error("reading the snapshot: {0}")]
    Source(std::io::Error),
    /// Every attempt failed; the last error is given.
    #[error("snapshot to node {peer} failed after {attempts} attempts: {last}")]
    GaveUp {
        /// The peer.
        peer: NodeId,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The receiver refused the snapshot for a reason that another attempt
    /// cannot change (too large for its limit, not a member, no sink).
    #[error("node {peer} refused the snapshot: {refusal}")]
    Refused {
        /// The peer.
        peer: NodeId,
        /// Its reason.
        refusal: SnapshotRefusal,
    },
    /// The transport is shutting down.
    #[error("transport closed")]
    Closed,
}

/// How a completed snapshot transfer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSent {
    /// Snapshot size.
    pub total_bytes: u64,
    /// Bytes put on the wire over all attempts.
    pub bytes_sent: u64,
    /// Attempts used (1 when nothing broke).
    pub attempts: u32,
    /// The offset each attempt started from, as the receiver reported it.
    pub start_offsets: Vec<u64>,
}
