//! `QuicTransport`: raft-core's [`Transport`] on QUIC with mutual TLS.
//!
//! One endpoint per node both dials and accepts. Each peer pair shares one
//! connection: either side dials when it has something to send and no live
//! connection; when both dialed at once, both keep the connection dialed by
//! the lower node id. On a connection, each side opens its own control and
//! replication streams (unidirectional) and one bidirectional stream per
//! snapshot transfer. Per peer, two writer tasks drain bounded queues into
//! those streams; `send` only enqueues, so the engine never waits for the
//! network.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use metrics::{Counter, Gauge};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use raft_core::{Message, MessageBody, NodeId, Transport, TransportError};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::addr::PeerAddr;
use crate::codec::{
    self, check_frame_length, decode_frame_content, encode_frame, DecodeError, Frame, Hello,
    SnapshotOffer, StreamKind, LENGTH_PREFIX_BYTES, PROTOCOL_VERSION,
};
use crate::config::QuicConfig;
use crate::refusal::{RefusalReason, SnapshotRefusal};
use crate::snapshot::{SnapshotSink, SnapshotSource};
use crate::tls::{node_dns_name, NodeTls, TlsError};

mod accept;
mod api;
mod builder;
mod crl;
mod dial;
mod error;
mod frames;
mod handshake;
mod inbound;
mod snapshot_stream;
mod transfer;
mod writer;

pub use builder::QuicTransportBuilder;
pub use error::{BindError, ConnectError, SnapshotError, SnapshotSent};
pub(crate) use frames::FrameError;

use accept::*;
use api::*;
use builder::*;
use crl::*;
use dial::*;
use frames::*;
use inbound::*;
use snapshot_stream::*;
use writer::*;

/// Application close codes on peer connections.
pub mod close_code {
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// The peer broke the protocol (a malformed, oversized or unexpected frame).
    pub const PROTOCOL: u32 = 1;
    /// The peer speaks another protocol version.
    pub const VERSION: u32 = 2;
    /// The peer's certificate does not name the node id it claims.
    pub const IDENTITY: u32 = 3;
    /// The peer meant to reach another node.
    pub const WRONG_NODE: u32 = 4;
    /// A second connection between the same pair; the other one is kept.
    pub const DUPLICATE: u32 = 5;
    /// Closed on request ([`QuicTransport::disconnect`](crate::QuicTransport::disconnect)),
    /// or after a [`QuicTransport::probe`](crate::QuicTransport::probe).
    pub const REQUESTED: u32 = 6;
    /// The peer is not in this node's peer table (not a member it knows),
    /// or not in the allowed set
    /// ([`QuicTransport::set_allowed_peers`](crate::QuicTransport::set_allowed_peers)).
    pub const UNKNOWN_PEER: u32 = 7;
    /// The peer already holds `connections_per_peer_max` connections.
    pub const TOO_MANY_CONNECTIONS: u32 = 8;
    /// The peer's certificate is revoked (a reloaded revocation list).
    pub const REVOKED: u32 = 9;
    /// The peer belongs to another cluster: both sides have a cluster id
    /// and they differ.
    pub const WRONG_CLUSTER: u32 = 10;
}

/// Stream priorities: control first, snapshots last.
const PRIORITY_CONTROL: i32 = 10;
const PRIORITY_REPLICATION: i32 = 0;
const PRIORITY_SNAPSHOT: i32 = -10;

/// Handshake frames are tiny; nothing larger is read before the peer's
/// identity is checked.
const HANDSHAKE_FRAME_BYTES_MAX: u32 = 1024;

/// Two connections established within this window are a simultaneous dial,
/// settled by node id; a later one replaces an older one (the peer restarted).
const DIAL_RACE_WINDOW: Duration = Duration::from_secs(1);

/// A live connection and who dialed it.
#[derive(Clone)]
struct Link {
    conn: Connection,
    dialed_by: NodeId,
    since: Instant,
    /// Whether both ends agreed on [`ALPN_FORWARD`](crate::tls::ALPN_FORWARD):
    /// the connection may carry the forwarding messages.
    forwarding: bool,
}

/// Whether `conn`'s handshake chose [`ALPN_FORWARD`](crate::tls::ALPN_FORWARD).
fn speaks_forwarding(conn: &Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == crate::tls::ALPN_FORWARD)
}

/// Whether `body` is one of the forwarding kinds.
fn is_forwarding(body: &MessageBody) -> bool {
    matches!(
        body,
        MessageBody::ForwardPropose { .. }
            | MessageBody::ForwardProposeResponse { .. }
            | MessageBody::ReadIndexRequest { .. }
            | MessageBody::ReadIndexResponse { .. }
    )
}

/// Dial bookkeeping, behind an async mutex so only one dial runs per peer.
struct DialState {
    failures: u32,
    next_attempt: Option<Instant>,
}

struct StreamMetrics {
    messages: Counter,
    bytes: Counter,
    dropped: Counter,
}

impl StreamMetrics {
    fn sent(peer: NodeId, stream: &'static str) -> Self {
        let p = peer.to_string();
        Self {
            messages: metrics::counter!("raft_net_messages_sent_total", "peer" => p.clone(), "stream" => stream),
            bytes: metrics::counter!("raft_net_bytes_sent_total", "peer" => p.clone(), "stream" => stream),
            dropped: metrics::counter!("raft_net_send_dropped_total", "peer" => p, "stream" => stream),
        }
    }
}

struct Peer {
    id: NodeId,
    /// Where to dial it, as given (a name is resolved at every attempt).
    addr: Mutex<PeerAddr>,
    /// For a name: the address it resolved to that answered as this peer
    /// (TLS and handshake passed) at the last successful dial. An inbound
    /// connection from it may take a reserved slot; other addresses in a
    /// DNS answer may not (whoever controls an answer must not gain slots).
    resolved: Mutex<Vec<SocketAddr>>,
    control: mpsc::Sender<Message>,
    replication: mpsc::Sender<Message>,
    /// Entry bytes waiting in `replication`, for `replication_queue_bytes_max`.
    replication_bytes: AtomicU64,
    current: Mutex<Option<Link>>,
    dial: tokio::sync::Mutex<DialState>,
    control_metrics: StreamMetrics,
    replication_metrics: StreamMetrics,
    connects: Counter,
    connect_failures: Counter,
    connected: Gauge,
    snapshot_bytes_sent: Counter,
    /// The last permanent refusal of a snapshot by this peer, if any.
    snapshot_refused: Mutex<Option<RefusedSnapshot>>,
    /// Woken when a remembered refusal is forgotten (see `forget_refusal`).
    snapshot_reset: tokio::sync::Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Peer {
    /// Whether the live connection carries the forwarding messages.
    fn forwards(&self) -> bool {
        lock(&self.current)
            .as_ref()
            .is_some_and(|l| l.forwarding && l.conn.close_reason().is_none())
    }

    fn live(&self) -> Option<Connection> {
        let cur = lock(&self.current);
        cur.as_ref()
            .filter(|l| l.conn.close_reason().is_none())
            .map(|l| l.conn.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections leaves the
    // data consistent (plain assignments), so poisoning is not fatal.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection being served, for closing it when its peer is removed,
/// no longer allowed or revoked.
struct ConnEntry {
    peer: NodeId,
    conn: Connection,
    /// The peer dialed it (we checked its certificate as a client's).
    inbound: bool,
}

/// Decrements a counter when dropped: a held slot.
struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of a peer's inbound connection slots (`connections_per_peer_max`).
struct PeerSlot {
    shared: Arc<Shared>,
    peer: NodeId,
}

impl PeerSlot {
    fn acquire(shared: &Arc<Shared>, peer: NodeId) -> Option<Self> {
        let mut per = lock(&shared.per_peer);
        let n = per.entry(peer).or_insert(0);
        if *n >= shared.cfg.connections_per_peer_max {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut per = lock(&self.shared.per_peer);
        if let Some(n) = per.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.peer);
            }
        }
    }
}

struct Shared {
    id: NodeId,
    cfg: QuicConfig,
    endpoint: quinn::Endpoint,
    client_config: Mutex<quinn::ClientConfig>,
    /// The TLS identity in force (with the revocation lists last loaded).
    tls: Mutex<Arc<NodeTls>>,
    transport_config: Arc<quinn::TransportConfig>,
    crl_path: Option<PathBuf>,
    /// Peers allowed to connect and send; `None` allows every peer (the
    /// peer table alone decides, see `refuse_unknown_peers`).
    allowed: RwLock<Option<Arc<HashSet<NodeId>>>>,
    /// Connections being served, by `stable_id`.
    conns: Mutex<HashMap<usize, ConnEntry>>,
    /// Inbound connections holding a slot (handshaking or established).
    inbound_slots: Arc<AtomicUsize>,
    /// Inbound connections still in their handshake.
    handshaking: Arc<AtomicUsize>,
    /// Inbound connections per authenticated peer.
    per_peer: Mutex<HashMap<NodeId, usize>>,
    /// Handshakes in progress per source (an IPv4 address or an IPv6 /64,
    /// see `handshake_source`; sources that are not a peer's).
    handshakes_by_ip: Mutex<HashMap<IpAddr, usize>>,
    retries: Counter,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    inbound: mpsc::Sender<Message>,
    sink: Option<Arc<dyn SnapshotSink>>,
    shutdown: watch::Sender<bool>,
    protocol_errors: Counter,
    refused_connections: Counter,
    /// When each refusal reason was last logged, and how many since.
    refusal_log: Mutex<HashMap<RefusalReason, (Instant, u64)>>,
    /// This node's cluster id, sent in the handshake and checked against
    /// the peer's; `None` checks nothing (see `handshake::check_cluster`).
    cluster: Mutex<Option<u128>>,
}

/// A handshake in progress: counted globally and per source IP until the
/// peer is welcomed or the attempt ends.
struct Handshaking {
    _count: CountGuard,
    _per_ip: Option<IpSlot>,
}

/// One of an IP address's handshake slots (`handshakes_per_ip_max`).
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

/// The source that `handshakes_per_ip_max` counts for `ip`: an IPv4
/// address itself (an IPv4-mapped IPv6 address counts as its IPv4), an
/// IPv6 address's /64 prefix (the rest zeroed). One host usually holds a
/// whole /64, so counting single IPv6 addresses would not limit it.
pub(super) fn handshake_source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
    }
}

impl IpSlot {
    fn acquire(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let ip = handshake_source(ip);
        let mut per = lock(&shared.handshakes_by_ip);
        let n = per.entry(ip).or_insert(0);
        if *n >= shared.cfg.handshakes_per_ip_max {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per = lock(&self.shared.handshakes_by_ip);
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// raft-core's [`Transport`] over QUIC with mutual TLS. Cheap to clone.
///
/// Call [`QuicTransport::shutdown`] when done: background tasks hold the
/// transport alive until then.
#[derive(Clone)]
pub struct QuicTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.shared.id)
            .field("local_addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// One warning per refusal reason per this interval; the others are counted.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Shared {
    /// Whether `addr` is the address of a peer in the peer table that is
    /// allowed (a member, or a learner being added).
    fn is_peer_address(&self, addr: SocketAddr) -> bool {
        let canonical = |a: SocketAddr| (a.ip().to_canonical(), a.port());
        let addr = canonical(addr);
        let peers: Vec<(NodeId, Vec<SocketAddr>)> = lock(&self.peers)
            .values()
            .map(|p| {
                let mut known = lock(&p.resolved).clone();
                known.extend(lock(&p.addr).socket_addr());
                (p.id, known)
            })
            .collect();
        peers.into_iter().any(|(id, known)| {
            known.into_iter().any(|a| canonical(a) == addr) && self.peer_allowed(id)
        })
    }

    /// Counts a snapshot this node refused (`raft_snapshot_offers_refused_total`)
    /// and warns, at most once per [`REFUSAL_LOG_INTERVAL`] per reason.
    fn note_refusal(&self, peer: NodeId, transfer_id: u64, total_bytes: u64, e: &SnapshotRefusal) {
        metrics::counter!("raft_snapshot_offers_refused_total", "reason" => e.reason.as_str())
            .increment(1);
        let suppressed = {
            let mut log = lock(&self.refusal_log);
            match log.get_mut(&e.reason) {
                Some((at, n)) if at.elapsed() < REFUSAL_LOG_INTERVAL => {
                    *n += 1;
                    return;
                }
                Some((at, n)) => {
                    *at = Instant::now();
                    std::mem::take(n)
                }
                None => {
                    log.insert(e.reason, (Instant::now(), 0));
                    0
                }
            }
        };
        tracing::warn!(
            peer,
            transfer_id,
            total_bytes,
            limit = self.cfg.snapshot_bytes_max,
            reason = %e.reason,
            detail = %e.detail,
            suppressed,
            "snapshot refused; the sender cannot complete it until this is fixed"
        );
    }

    /// Whether `peer` may connect and send (the allowed set, when one is set).
    fn peer_allowed(&self, peer: NodeId) -> bool {
        match &*self.allowed.read().unwrap_or_else(|p| p.into_inner()) {
            Some(set) => set.contains(&peer),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::handshake_source;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        // Two addresses of one /64 share a count; another /64 does not.
        assert_eq!(
            handshake_source(ip("2001:db8:1:2::1")),
            handshake_source(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"))
        );
        assert_eq!(
            handshake_source(ip("2001:db8:1:2::1")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            handshake_source(ip("2001:db8:1:2::1")),
            handshake_source(ip("2001:db8:1:3::1"))
        );
        // An IPv4-mapped address counts as its IPv4 address, which is its own.
        assert_eq!(handshake_source(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(handshake_source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(
            handshake_source(ip("192.0.2.7")),
            handshake_source(ip("192.0.2.8"))
        );
    }
}
