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

use crate::codec::{
    self, check_frame_length, decode_frame_content, encode_frame, DecodeError, Frame, Hello,
    SnapshotChunk, SnapshotOffer, StreamKind, LENGTH_PREFIX_BYTES, PROTOCOL_VERSION,
};
use crate::config::QuicConfig;
use crate::refusal::{RefusalReason, SnapshotRefusal};
use crate::snapshot::{SnapshotSink, SnapshotSource};
use crate::tls::{certificate_names_node, node_dns_name, NodeTls, TlsError};

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
    /// Closed on request ([`QuicTransport::disconnect`](crate::QuicTransport::disconnect)).
    pub const REQUESTED: u32 = 6;
    /// The peer is not in this node's peer table (not a member it knows),
    /// or not in the allowed set
    /// ([`QuicTransport::set_allowed_peers`](crate::QuicTransport::set_allowed_peers)).
    pub const UNKNOWN_PEER: u32 = 7;
    /// The peer already holds `connections_per_peer_max` connections.
    pub const TOO_MANY_CONNECTIONS: u32 = 8;
    /// The peer's certificate is revoked (a reloaded revocation list).
    pub const REVOKED: u32 = 9;
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
        /// Its address.
        addr: SocketAddr,
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

/// A live connection and who dialed it.
#[derive(Clone)]
struct Link {
    conn: Connection,
    dialed_by: NodeId,
    since: Instant,
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
    addr: Mutex<SocketAddr>,
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
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Peer {
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
    /// Handshakes in progress per source IP (sources that are not a peer's).
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
}

/// Builds a [`QuicTransport`].
pub struct QuicTransportBuilder {
    id: NodeId,
    tls: Arc<NodeTls>,
    cfg: QuicConfig,
    sink: Option<Arc<dyn SnapshotSink>>,
    crl_path: Option<PathBuf>,
}

impl std::fmt::Debug for QuicTransportBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransportBuilder")
            .field("id", &self.id)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl QuicTransportBuilder {
    /// Replaces the default settings.
    pub fn config(mut self, cfg: QuicConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Checks every peer certificate (both roles) against the certificate
    /// revocation list(s) in the PEM file at `path`, and reloads the file
    /// when it changes: its modification time and length are polled every
    /// [`QuicConfig::crl_poll_interval`]. After a reload, connections whose
    /// peer certificate is now revoked are closed (close code 9) and new
    /// handshakes use the new lists. A file that fails to load at
    /// [`bind`](Self::bind) is an error; one that fails on a reload is
    /// logged and the lists in force are kept.
    pub fn crl_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.crl_path = Some(path.into());
        self
    }

    /// Accepts snapshots into `sink`. Without one, offered snapshots are
    /// refused.
    pub fn snapshot_sink(mut self, sink: Arc<dyn SnapshotSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Binds the UDP socket at `addr` (port 0 picks a free port) and starts
    /// accepting. Returns the transport and the receiver of inbound Raft
    /// messages, to be forwarded to the driver
    /// ([`RaftHandle::receive`](raft_core::RaftHandle::receive)).
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BindError`] for bad settings, TLS material rustls refuses, or a
    /// socket that cannot be bound.
    pub fn bind(
        self,
        addr: SocketAddr,
    ) -> Result<(QuicTransport, mpsc::Receiver<Message>), BindError> {
        self.cfg.validate().map_err(BindError::Config)?;
        let cfg = self.cfg;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(cfg.idle_timeout)
                    .map_err(|e| BindError::Config(format!("idle_timeout: {e}")))?,
            ))
            .keep_alive_interval(Some(cfg.keep_alive_interval))
            .max_concurrent_uni_streams(VarInt::from_u32(cfg.inbound_uni_streams_max))
            .max_concurrent_bidi_streams(VarInt::from_u32(cfg.inbound_bidi_streams_max));
        let transport = Arc::new(transport);

        let tls = match &self.crl_path {
            Some(path) => Arc::new(self.tls.with_crl_file(path)?),
            None => self.tls,
        };
        let (server_config, client_config) = endpoint_configs(&tls, &transport)?;

        let endpoint = quinn::Endpoint::server(server_config, addr)
            .map_err(|source| BindError::Bind { addr, source })?;
        let (inbound_tx, inbound_rx) = mpsc::channel(cfg.inbound_queue_messages_max);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            id: self.id,
            cfg,
            endpoint,
            client_config: Mutex::new(client_config),
            tls: Mutex::new(tls),
            transport_config: transport,
            crl_path: self.crl_path,
            allowed: RwLock::new(None),
            conns: Mutex::new(HashMap::new()),
            inbound_slots: Arc::new(AtomicUsize::new(0)),
            handshaking: Arc::new(AtomicUsize::new(0)),
            per_peer: Mutex::new(HashMap::new()),
            handshakes_by_ip: Mutex::new(HashMap::new()),
            retries: metrics::counter!("raft_net_retries_sent_total"),
            peers: Mutex::new(HashMap::new()),
            inbound: inbound_tx,
            sink: self.sink,
            shutdown,
            protocol_errors: metrics::counter!("raft_net_protocol_errors_total"),
            refused_connections: metrics::counter!("raft_net_connections_refused_total"),
            refusal_log: Mutex::new(HashMap::new()),
        });
        tokio::spawn(accept_loop(shared.clone()));
        if shared.crl_path.is_some() {
            tokio::spawn(crl_poller(shared.clone()));
        }
        Ok((QuicTransport { shared }, inbound_rx))
    }
}

/// The quinn server and client configurations of a TLS identity.
fn endpoint_configs(
    tls: &NodeTls,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), BindError> {
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config()?)
        .map_err(|e| BindError::Tls(TlsError::Config(e.to_string())))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(transport.clone());
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client_config()?)
        .map_err(|e| BindError::Tls(TlsError::Config(e.to_string())))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport.clone());
    Ok((server_config, client_config))
}

/// What the revocation list file held when last looked at: a hash of its
/// content, or why it could not be read. A change of either is a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CrlSeen {
    Content(u64),
    Unreadable(String),
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Reloads the revocation list file when its content changes (by content
/// hash: a rewrite within the same second and of the same length counts).
/// A file that cannot be read or parsed keeps the lists in force, warns
/// once per distinct content and counts `raft_net_crl_reload_failures_total`.
async fn crl_poller(shared: Arc<Shared>) {
    let Some(path) = shared.crl_path.clone() else {
        return;
    };
    let mut shutdown = shared.shutdown.subscribe();
    let mut seen = std::fs::read(&path)
        .map(|b| CrlSeen::Content(content_hash(&b)))
        .ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.cfg.crl_poll_interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let read = std::fs::read(&path);
        let now = match &read {
            Ok(b) => CrlSeen::Content(content_hash(b)),
            Err(e) => CrlSeen::Unreadable(e.to_string()),
        };
        if seen.as_ref() == Some(&now) {
            continue;
        }
        seen = Some(now);
        let result = match read {
            Ok(pem) => install_crl(&shared, &pem),
            Err(e) => Err(BindError::Tls(TlsError::Load {
                what: "the certificate revocation list",
                path: path.clone(),
                detail: e.to_string(),
            })),
        };
        if let Err(e) = result {
            crl_reload_failed(&path, &e);
        }
    }
}

fn crl_reload_failed(path: &std::path::Path, e: &BindError) {
    metrics::counter!("raft_net_crl_reload_failures_total").increment(1);
    tracing::warn!(path = %path.display(), error = %e, "reloading the certificate revocation list failed (half written or not a CRL from the cluster CA?); keeping the lists in force");
}

/// Loads the revocation list file again (see [`install_crl`]).
fn reload_crl(shared: &Shared) -> Result<(), BindError> {
    let Some(path) = &shared.crl_path else {
        return Ok(());
    };
    let pem = std::fs::read(path).map_err(|e| {
        BindError::Tls(TlsError::Load {
            what: "the certificate revocation list",
            path: path.clone(),
            detail: e.to_string(),
        })
    });
    let result = pem.and_then(|pem| install_crl(shared, &pem));
    if let Err(e) = &result {
        crl_reload_failed(path, e);
    }
    result
}

/// Installs the revocation lists in `pem` for new handshakes and closes
/// connections whose peer they revoke. Lists that revoke this node's own
/// certificate are installed too (they still say which peers are revoked),
/// with a loud warning and `raft_net_crl_own_certificate_revoked` at 1:
/// peers that load them refuse this node until it gets a new certificate.
fn install_crl(shared: &Shared, pem: &[u8]) -> Result<(), BindError> {
    let current = lock(&shared.tls).clone();
    let (tls, own_revoked) = current.with_crl_pem_for_reload(pem)?;
    let tls = Arc::new(tls);
    let (server_config, client_config) = endpoint_configs(&tls, &shared.transport_config)?;
    shared.endpoint.set_server_config(Some(server_config));
    *lock(&shared.client_config) = client_config;
    *lock(&shared.tls) = tls.clone();
    metrics::gauge!("raft_net_crl_own_certificate_revoked").set(if own_revoked {
        1.0
    } else {
        0.0
    });
    if own_revoked {
        tracing::error!(
            node = shared.id,
            "THE NEW REVOCATION LIST REVOKES THIS NODE'S OWN CERTIFICATE: peers that load it \
             refuse this node; issue it a new certificate and restart it (the list is in force \
             for checking peers)"
        );
    }
    tracing::info!(
        lists = tls.crl_count(),
        own_revoked,
        "certificate revocation list reloaded"
    );
    let conns: Vec<(NodeId, Connection, bool)> = lock(&shared.conns)
        .values()
        .map(|e| (e.peer, e.conn.clone(), e.inbound))
        .collect();
    for (peer, conn, inbound) in conns {
        let chain = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .map(|c| *c)
            .unwrap_or_default();
        if let Err(e) = tls.recheck_peer(&chain, peer, inbound) {
            tracing::warn!(peer, error = %e, "closing the connection of a peer whose certificate no longer passes");
            shared.refused_connections.increment(1);
            conn.close(
                VarInt::from_u32(close_code::REVOKED),
                format!("certificate refused: {e}").as_bytes(),
            );
        }
    }
    Ok(())
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

impl QuicTransport {
    /// Starts building the transport of node `id` with its TLS identity.
    ///
    /// # Panics
    ///
    /// If `tls` is for another node id (a configuration bug that would make
    /// every peer refuse this node).
    pub fn builder(id: NodeId, tls: NodeTls) -> QuicTransportBuilder {
        assert_eq!(
            tls.node(),
            id,
            "TLS identity is for node {}, not {id}",
            tls.node()
        );
        QuicTransportBuilder {
            id,
            tls: Arc::new(tls),
            cfg: QuicConfig::default(),
            sink: None,
            crl_path: None,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The bound UDP address.
    ///
    /// # Errors
    ///
    /// The socket's I/O error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// Adds a peer, or changes its address (the next connection uses it).
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) {
        let shared = &self.shared;
        let mut peers = lock(&shared.peers);
        if let Some(p) = peers.get(&id) {
            *lock(&p.addr) = addr;
            return;
        }
        let (ctx, crx) = mpsc::channel(shared.cfg.control_queue_messages_max);
        let (rtx, rrx) = mpsc::channel(shared.cfg.replication_queue_messages_max);
        let p = id.to_string();
        let peer = Arc::new(Peer {
            id,
            addr: Mutex::new(addr),
            control: ctx,
            replication: rtx,
            replication_bytes: AtomicU64::new(0),
            current: Mutex::new(None),
            dial: tokio::sync::Mutex::new(DialState {
                failures: 0,
                next_attempt: None,
            }),
            control_metrics: StreamMetrics::sent(id, "control"),
            replication_metrics: StreamMetrics::sent(id, "replication"),
            connects: metrics::counter!("raft_net_connects_total", "peer" => p.clone()),
            connect_failures: metrics::counter!("raft_net_connect_failures_total", "peer" => p.clone()),
            connected: metrics::gauge!("raft_net_peer_connected", "peer" => p.clone()),
            snapshot_bytes_sent: metrics::counter!("raft_net_snapshot_bytes_sent_total", "peer" => p),
            tasks: Mutex::new(Vec::new()),
        });
        let t1 = tokio::spawn(writer(
            shared.clone(),
            peer.clone(),
            StreamKind::Control,
            crx,
        ));
        let t2 = tokio::spawn(writer(
            shared.clone(),
            peer.clone(),
            StreamKind::Replication,
            rrx,
        ));
        lock(&peer.tasks).extend([t1, t2]);
        peers.insert(id, peer);
    }

    /// Removes a peer: its queues are dropped and its connection closed.
    pub fn remove_peer(&self, id: NodeId) {
        let peer = lock(&self.shared.peers).remove(&id);
        if let Some(peer) = peer {
            for t in lock(&peer.tasks).drain(..) {
                t.abort();
            }
            if let Some(l) = lock(&peer.current).take() {
                l.conn
                    .close(VarInt::from_u32(close_code::REQUESTED), b"peer removed");
            }
            peer.connected.set(0.0);
        }
        // Every other connection with it too (duplicates, inbound ones).
        self.close_connections_where(|p| p == id, close_code::REQUESTED, "peer removed");
    }

    /// Restricts which peers may connect and send: only `allowed` (the
    /// members of the current or joint configuration plus the learners
    /// being added), or every peer when `None` (the default: the peer
    /// table and [`QuicConfig::refuse_unknown_peers`] alone decide). The
    /// authenticated node id of every inbound connection, every message and
    /// every snapshot offer is checked against it; connections of peers no
    /// longer allowed are closed at once (close code 7).
    pub fn set_allowed_peers(&self, allowed: Option<HashSet<NodeId>>) {
        let allowed = allowed.map(Arc::new);
        *self
            .shared
            .allowed
            .write()
            .unwrap_or_else(|p| p.into_inner()) = allowed.clone();
        if let Some(set) = allowed {
            self.close_connections_where(
                |p| !set.contains(&p),
                close_code::UNKNOWN_PEER,
                "not a member of the configuration",
            );
        }
    }

    /// The allowed-peer set in force (`None`: no restriction).
    pub fn allowed_peers(&self) -> Option<HashSet<NodeId>> {
        self.shared
            .allowed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .cloned()
    }

    /// Loads the revocation list file given to
    /// [`QuicTransportBuilder::crl_file`] now (it is also reloaded on its
    /// own when it changes), and closes connections of peers it revokes.
    ///
    /// # Errors
    ///
    /// Why the file could not be loaded; the lists in force stay.
    pub fn reload_crl(&self) -> Result<(), BindError> {
        reload_crl(&self.shared)
    }

    fn close_connections_where(&self, doomed: impl Fn(NodeId) -> bool, code: u32, reason: &str) {
        let conns: Vec<(NodeId, Connection)> = lock(&self.shared.conns)
            .values()
            .filter(|e| doomed(e.peer))
            .map(|e| (e.peer, e.conn.clone()))
            .collect();
        for (peer, conn) in conns {
            tracing::info!(peer, reason, "closing peer connection");
            conn.close(VarInt::from_u32(code), reason.as_bytes());
        }
    }

    /// The peers and their addresses.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut v: Vec<_> = lock(&self.shared.peers)
            .values()
            .map(|p| (p.id, *lock(&p.addr)))
            .collect();
        v.sort();
        v
    }

    /// Connections open on this node's endpoint (all peers, both directions).
    pub fn open_connections(&self) -> usize {
        self.shared.endpoint.open_connections()
    }

    /// Whether a live connection to `peer` exists.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.peer(peer).and_then(|p| p.live()).is_some()
    }

    /// Closes the connection to `peer`, if any; the next message redials.
    /// For tests and operators.
    pub fn disconnect(&self, peer: NodeId) {
        if let Some(p) = self.peer(peer) {
            if let Some(l) = lock(&p.current).take() {
                l.conn.close(
                    VarInt::from_u32(close_code::REQUESTED),
                    b"disconnect requested",
                );
            }
            p.connected.set(0.0);
        }
    }

    /// Connects to `peer` now (normally connections are made on first use).
    ///
    /// # Errors
    ///
    /// Why the connection failed.
    pub async fn connect(&self, peer: NodeId) -> Result<(), ConnectError> {
        let p = self.peer(peer).ok_or(ConnectError::Connect {
            peer,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            detail: "unknown peer".into(),
        })?;
        connection(&self.shared, &p).await.map(|_| ())
    }

    /// Streams a snapshot to `to` on its own low-priority stream, resuming
    /// after broken connections, up to `snapshot_attempts_max` attempts.
    /// `transfer_id` names the transfer; the receiver resumes a partial
    /// transfer with the same sender and id.
    ///
    /// # Errors
    ///
    /// [`SnapshotError`] when the peer is unknown, the source fails, or every
    /// attempt failed.
    pub async fn stream_snapshot(
        &self,
        to: NodeId,
        transfer_id: u64,
        meta: Bytes,
        source: Arc<dyn SnapshotSource>,
    ) -> Result<SnapshotSent, SnapshotError> {
        let peer = self.peer(to).ok_or(SnapshotError::UnknownPeer(to))?;
        let shared = &self.shared;
        let offer = SnapshotOffer {
            transfer_id,
            total_bytes: source.len(),
            meta,
        };
        let mut stats = SnapshotSent {
            total_bytes: offer.total_bytes,
            bytes_sent: 0,
            attempts: 0,
            start_offsets: Vec::new(),
        };
        let mut last = String::new();
        while stats.attempts < shared.cfg.snapshot_attempts_max {
            if *shared.shutdown.borrow() {
                return Err(SnapshotError::Closed);
            }
            stats.attempts += 1;
            let conn = match connection(shared, &peer).await {
                Ok(c) => c,
                Err(ConnectError::Closed) => return Err(SnapshotError::Closed),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match snapshot_attempt(shared, &peer, &conn, &offer, source.as_ref(), &mut stats).await
            {
                Ok(()) => return Ok(stats),
                Err(AttemptError::Source(e)) => return Err(SnapshotError::Source(e)),
                Err(AttemptError::Refused(e)) => {
                    metrics::counter!("raft_snapshot_offers_refused_by_peer_total",
                        "peer" => to.to_string(), "reason" => e.reason.as_str())
                    .increment(1);
                    tracing::warn!(peer = to, transfer_id, attempt = stats.attempts, reason = %e.reason, detail = %e.detail, "the peer refused the snapshot");
                    if e.reason.is_permanent() {
                        return Err(SnapshotError::Refused {
                            peer: to,
                            refusal: e,
                        });
                    }
                    last = format!("refused: {e}");
                    tokio::time::sleep(backoff(&shared.cfg, stats.attempts)).await;
                }
                Err(AttemptError::Failed(e)) => {
                    tracing::info!(peer = to, transfer_id, attempt = stats.attempts, error = %e, "snapshot attempt failed; retrying");
                    last = e;
                    let delay = backoff(&shared.cfg, stats.attempts);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Err(SnapshotError::GaveUp {
            peer: to,
            attempts: stats.attempts,
            last,
        })
    }

    /// Stops accepting and sending, closes every connection and waits
    /// (briefly) for the close to reach peers.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        let _ = shared.shutdown.send(true);
        let peers: Vec<Arc<Peer>> = lock(&shared.peers).drain().map(|(_, p)| p).collect();
        for p in peers {
            for t in lock(&p.tasks).drain(..) {
                t.abort();
            }
            lock(&p.current).take();
            p.connected.set(0.0);
        }
        shared
            .endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.endpoint.wait_idle()).await;
    }

    fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        lock(&self.shared.peers).get(&id).cloned()
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), TransportError> {
        if *self.shared.shutdown.borrow() {
            return Err(TransportError::Closed);
        }
        let peer = self.peer(to).ok_or(TransportError::UnknownPeer(to))?;
        let mut dropped = false;
        for m in messages {
            if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
                // Only `send_snapshot` carries these, with their data.
                tracing::warn!(to, "InstallSnapshot without data dropped");
                dropped = true;
                continue;
            }
            match codec::stream_for(&m) {
                StreamKind::Replication => {
                    let bytes = entry_bytes(&m);
                    let queued = peer.replication_bytes.load(Ordering::Relaxed);
                    if queued + bytes > self.shared.cfg.replication_queue_bytes_max {
                        peer.replication_metrics.dropped.increment(1);
                        dropped = true;
                        continue;
                    }
                    peer.replication_bytes.fetch_add(bytes, Ordering::Relaxed);
                    if let Err(e) = peer.replication.try_send(m) {
                        peer.replication_bytes.fetch_sub(bytes, Ordering::Relaxed);
                        if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                            return Err(TransportError::Closed);
                        }
                        peer.replication_metrics.dropped.increment(1);
                        dropped = true;
                    }
                }
                _ => {
                    if let Err(e) = peer.control.try_send(m) {
                        if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                            return Err(TransportError::Closed);
                        }
                        peer.control_metrics.dropped.increment(1);
                        dropped = true;
                    }
                }
            }
        }
        if dropped {
            Err(TransportError::QueueFull(to))
        } else {
            Ok(())
        }
    }

    async fn send_snapshot(
        &self,
        to: NodeId,
        header: Message,
        data: raft_core::SnapshotData,
    ) -> Result<(), TransportError> {
        let meta = codec::encode_snapshot_header(&header, self.shared.cfg.max_frame_bytes)
            .map_err(|e| TransportError::Other(format!("snapshot header: {e}")))?;
        let transfer_id = snapshot_transfer_id(&header);
        match self.stream_snapshot(to, transfer_id, meta, data).await {
            Ok(_) => Ok(()),
            Err(SnapshotError::UnknownPeer(p)) => Err(TransportError::UnknownPeer(p)),
            Err(SnapshotError::Closed) => Err(TransportError::Closed),
            Err(e) => Err(TransportError::Other(e.to_string())),
        }
    }
}

/// A transfer id that is the same every time the same snapshot is sent in
/// the same term, so the receiver resumes a transfer a broken connection
/// cut short even when the engine sends it again.
fn snapshot_transfer_id(header: &Message) -> u64 {
    let index = match &header.body {
        MessageBody::InstallSnapshot { meta } => {
            meta.last_log_id.index ^ meta.last_log_id.term.rotate_left(40)
        }
        _ => 0,
    };
    index ^ header.term.rotate_left(20) ^ 0x5A17_0000_0000_0000
}

fn entry_bytes(m: &Message) -> u64 {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().map(|e| e.size_bytes()).sum(),
        _ => 0,
    }
}

/// Exponential backoff with full jitter: a random delay in
/// `[min, min * 2^failures]`, capped at `max`.
fn backoff(cfg: &QuicConfig, failures: u32) -> Duration {
    let ceiling = cfg
        .reconnect_backoff_min
        .saturating_mul(1u32 << failures.min(16))
        .min(cfg.reconnect_backoff_max);
    let lo = cfg.reconnect_backoff_min.as_micros() as u64;
    let hi = (ceiling.as_micros() as u64).max(lo);
    Duration::from_micros(rand::thread_rng().gen_range(lo..=hi))
}

/// The live connection to `peer`, dialing (after any backoff) if there is none.
async fn connection(shared: &Arc<Shared>, peer: &Arc<Peer>) -> Result<Connection, ConnectError> {
    if let Some(c) = peer.live() {
        return Ok(c);
    }
    let mut dial = peer.dial.lock().await;
    if let Some(c) = peer.live() {
        return Ok(c);
    }
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return Err(ConnectError::Closed);
    }
    if let Some(at) = dial.next_attempt {
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = shutdown.wait_for(|s| *s) => return Err(ConnectError::Closed),
        }
        // An inbound connection may have arrived while we waited.
        if let Some(c) = peer.live() {
            return Ok(c);
        }
    }
    let result = tokio::select! {
        r = dial_peer(shared, peer) => r,
        _ = shutdown.wait_for(|s| *s) => return Err(ConnectError::Closed),
    };
    match result {
        Ok(conn) => {
            dial.failures = 0;
            dial.next_attempt = None;
            let kept = install(shared, peer, conn.clone(), shared.id);
            tokio::spawn(serve_connection(shared.clone(), peer.id, conn, false));
            Ok(kept)
        }
        Err(e) => {
            dial.failures += 1;
            dial.next_attempt = Some(Instant::now() + backoff(&shared.cfg, dial.failures));
            peer.connect_failures.increment(1);
            if dial.failures == 1 || dial.failures.is_power_of_two() {
                tracing::warn!(peer = peer.id, failures = dial.failures, error = %e, "cannot connect to peer");
            }
            Err(e)
        }
    }
}

/// Dials `peer` and runs the handshake.
async fn dial_peer(shared: &Arc<Shared>, peer: &Peer) -> Result<Connection, ConnectError> {
    let addr = *lock(&peer.addr);
    let fail = |detail: String| ConnectError::Connect {
        peer: peer.id,
        addr,
        detail,
    };
    let connecting = shared
        .endpoint
        .connect_with(
            lock(&shared.client_config).clone(),
            addr,
            &node_dns_name(peer.id),
        )
        .map_err(|e| fail(e.to_string()))?;
    let timeout = shared.cfg.handshake_timeout;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| fail(format!("no handshake within {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let refused = |conn: &Connection, fallback: String| match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => ConnectError::Refused {
            peer: peer.id,
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        _ => fail(fallback),
    };
    let handshake = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[StreamKind::Handshake as u8]);
        let hello = Frame::Hello(Hello {
            from: shared.id,
            to: peer.id,
        });
        encode_frame(&hello, shared.cfg.max_frame_bytes, &mut buf).map_err(|e| e.to_string())?;
        send.write_all(&buf).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        match read_frame(&mut recv, HANDSHAKE_FRAME_BYTES_MAX).await {
            Ok(Some(Frame::Welcome { node })) if node == peer.id => Ok(()),
            Ok(Some(Frame::Welcome { node })) => Err(format!("answered as node {node}")),
            Ok(other) => Err(format!("unexpected handshake answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(e)) => {
            // Give a close frame from the peer a moment to arrive: it carries
            // the reason (version, identity) we want to report.
            let _ = tokio::time::timeout(Duration::from_millis(200), conn.closed()).await;
            Err(refused(&conn, e))
        }
        Err(_) => {
            conn.close(
                VarInt::from_u32(close_code::PROTOCOL),
                b"handshake timed out",
            );
            Err(fail(format!("no handshake answer within {timeout:?}")))
        }
    }
}

/// Makes `conn` the connection to `peer` unless a preferred one exists.
/// Returns the connection to use.
///
/// The connection that loses is not closed at once: messages already
/// written to it are still in flight, and the peer reads them. It is closed
/// after [`DUPLICATE_GRACE`], when they have landed.
fn install(shared: &Shared, peer: &Peer, conn: Connection, dialed_by: NodeId) -> Connection {
    let preferred = shared.id.min(peer.id);
    let mut cur = lock(&peer.current);
    if let Some(old) = cur.as_ref() {
        let old_alive = old.conn.close_reason().is_none();
        if old_alive && old.conn.stable_id() != conn.stable_id() {
            let race = old.since.elapsed() < DIAL_RACE_WINDOW;
            if race && old.dialed_by == preferred && dialed_by != preferred {
                close_later(conn, "duplicate connection");
                return old.conn.clone();
            }
            close_later(old.conn.clone(), "replaced by a newer connection");
        }
    }
    *cur = Some(Link {
        conn: conn.clone(),
        dialed_by,
        since: Instant::now(),
    });
    peer.connects.increment(1);
    peer.connected.set(1.0);
    tracing::debug!(peer = peer.id, dialed_by, "connected");
    conn
}

/// How long a superseded connection stays open so that what was already
/// written to it arrives.
const DUPLICATE_GRACE: Duration = Duration::from_secs(2);

fn close_later(conn: Connection, reason: &'static str) {
    tokio::spawn(async move {
        tokio::time::sleep(DUPLICATE_GRACE).await;
        conn.close(VarInt::from_u32(close_code::DUPLICATE), reason.as_bytes());
    });
}

async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(incoming) = incoming else { return };
        admit(&shared, incoming);
    }
}

/// Decides on a new inbound connection without waiting: a Retry, a
/// refusal, or a slot and a task that runs its handshake.
fn admit(shared: &Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let validated = incoming.remote_address_validated();
    let known = shared.is_peer_address(remote);
    let max = shared.cfg.connections_max;
    let general = max - shared.cfg.connections_reserved_for_peers;
    // Address validation under load: past the threshold, a client must
    // prove it receives at its address before it costs any state. A
    // member's address must be proven too before it takes a reserved slot
    // (a spoofed packet cannot take the member's place).
    let busy = shared.handshaking.load(Ordering::SeqCst) >= shared.cfg.retry_handshakes_threshold;
    let general_full = shared.inbound_slots.load(Ordering::SeqCst) >= general;
    if !validated && incoming.may_retry() && (busy || (known && general_full)) {
        shared.retries.increment(1);
        if let Err(e) = incoming.retry() {
            e.into_incoming().ignore();
        }
        return;
    }
    // A slot is taken from the first packet on (handshaking connections
    // count), and never beyond the limit; the reserved ones only by the
    // validated address of a peer.
    let limit = if known && validated { max } else { general };
    if shared
        .inbound_slots
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_err()
    {
        tracing::warn!(%remote, limit, known, "connection limit reached; refusing");
        shared.refused_connections.increment(1);
        incoming.refuse();
        return;
    }
    let slot = CountGuard(shared.inbound_slots.clone());
    // Handshakes per source IP, for sources that are not a peer's address.
    let per_ip = if known {
        None
    } else {
        match IpSlot::acquire(shared, remote.ip()) {
            Some(s) => Some(s),
            None => {
                tracing::warn!(%remote, limit = shared.cfg.handshakes_per_ip_max, "too many handshakes from one address; refusing");
                shared.refused_connections.increment(1);
                incoming.refuse();
                return;
            }
        }
    };
    shared.handshaking.fetch_add(1, Ordering::SeqCst);
    let handshaking = Handshaking {
        _count: CountGuard(shared.handshaking.clone()),
        _per_ip: per_ip,
    };
    tokio::spawn(accept_one(shared.clone(), incoming, slot, handshaking));
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

impl IpSlot {
    fn acquire(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let ip = ip.to_canonical();
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

/// One warning per refusal reason per this interval; the others are counted.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Shared {
    /// Whether `addr` is the address of a peer in the peer table that is
    /// allowed (a member, or a learner being added).
    fn is_peer_address(&self, addr: SocketAddr) -> bool {
        let canonical = |a: SocketAddr| (a.ip().to_canonical(), a.port());
        let addr = canonical(addr);
        let peers: Vec<(NodeId, SocketAddr)> = lock(&self.peers)
            .values()
            .map(|p| (p.id, *lock(&p.addr)))
            .collect();
        peers
            .into_iter()
            .any(|(id, a)| canonical(a) == addr && self.peer_allowed(id))
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

/// Completes an inbound connection: TLS (the client certificate is checked
/// against the CA by rustls), then the `Hello`, whose claimed node id must be
/// named by that certificate.
async fn accept_one(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    _slot: CountGuard,
    handshaking: Handshaking,
) {
    let remote = incoming.remote_address();
    let timeout = shared.cfg.handshake_timeout;
    let conn = match tokio::time::timeout(timeout, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "inbound connection failed");
            shared.refused_connections.increment(1);
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "inbound handshake timed out");
            return;
        }
    };
    let refuse = |code: u32, reason: String| {
        tracing::warn!(%remote, reason = %reason, "refusing peer connection");
        shared.refused_connections.increment(1);
        conn.close(VarInt::from_u32(code), reason.as_bytes());
    };
    let hello = async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| (close_code::PROTOCOL, e.to_string()))?;
        let mut kind = [0u8; 1];
        recv.read_exact(&mut kind)
            .await
            .map_err(|e| (close_code::PROTOCOL, format!("reading stream kind: {e}")))?;
        if StreamKind::from_byte(kind[0]) != Some(StreamKind::Handshake) {
            return Err((
                close_code::PROTOCOL,
                format!("expected a handshake stream, got kind {:#04x}", kind[0]),
            ));
        }
        match read_frame(&mut recv, HANDSHAKE_FRAME_BYTES_MAX).await {
            Ok(Some(Frame::Hello(h))) => Ok((send, h)),
            Ok(other) => Err((close_code::PROTOCOL, format!("expected Hello, got {other:?}"))),
            Err(FrameError::Decode(DecodeError::Version { got })) => Err((
                close_code::VERSION,
                format!("protocol version {got} not supported; node {} speaks version {PROTOCOL_VERSION}", shared.id),
            )),
            Err(e) => Err((close_code::PROTOCOL, format!("bad Hello: {e}"))),
        }
    };
    let (mut send, hello) = match tokio::time::timeout(timeout, hello).await {
        Ok(Ok(x)) => x,
        Ok(Err((code, reason))) => return refuse(code, reason),
        Err(_) => {
            return refuse(
                close_code::PROTOCOL,
                "no Hello within the handshake timeout".into(),
            )
        }
    };
    if hello.to != shared.id {
        return refuse(
            close_code::WRONG_NODE,
            format!("this is node {}, not node {}", shared.id, hello.to),
        );
    }
    if hello.from == shared.id {
        return refuse(
            close_code::IDENTITY,
            format!("peer claims this node's own id {}", shared.id),
        );
    }
    let leaf = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().cloned());
    let Some(leaf) = leaf else {
        return refuse(close_code::IDENTITY, "no client certificate".into());
    };
    if let Err(e) = certificate_names_node(&leaf, hello.from) {
        return refuse(
            close_code::IDENTITY,
            format!("peer claims node {}: {e}", hello.from),
        );
    }
    if shared.cfg.refuse_unknown_peers && !lock(&shared.peers).contains_key(&hello.from) {
        return refuse(
            close_code::UNKNOWN_PEER,
            format!(
                "node {} is not a peer of node {} (not a member it knows)",
                hello.from, shared.id
            ),
        );
    }
    if !shared.peer_allowed(hello.from) {
        return refuse(
            close_code::UNKNOWN_PEER,
            format!(
                "node {} is not a member of node {}'s configuration",
                hello.from, shared.id
            ),
        );
    }
    let Some(_peer_slot) = PeerSlot::acquire(&shared, hello.from) else {
        return refuse(
            close_code::TOO_MANY_CONNECTIONS,
            format!(
                "node {} already holds {} connections to node {}",
                hello.from, shared.cfg.connections_per_peer_max, shared.id
            ),
        );
    };
    let mut buf = BytesMut::new();
    if encode_frame(
        &Frame::Welcome { node: shared.id },
        shared.cfg.max_frame_bytes,
        &mut buf,
    )
    .is_err()
    {
        return;
    }
    if send.write_all(&buf).await.is_err() {
        return;
    }
    let _ = send.finish();
    drop(handshaking);
    let peer = lock(&shared.peers).get(&hello.from).cloned();
    if let Some(peer) = &peer {
        let _ = install(&shared, peer, conn.clone(), hello.from);
    } else {
        tracing::debug!(
            peer = hello.from,
            "inbound connection from a peer not (yet) configured"
        );
    }
    serve_connection(shared, hello.from, conn, true).await;
}

/// Accepts the streams a peer opens on `conn` until it closes.
async fn serve_connection(shared: Arc<Shared>, peer_id: NodeId, conn: Connection, inbound: bool) {
    lock(&shared.conns).insert(
        conn.stable_id(),
        ConnEntry {
            peer: peer_id,
            conn: conn.clone(),
            inbound,
        },
    );
    // Allowed when the handshake ran; the set may have changed since.
    if !shared.peer_allowed(peer_id) {
        conn.close(
            VarInt::from_u32(close_code::UNKNOWN_PEER),
            b"not a member of the configuration",
        );
    }
    let mut shutdown = shared.shutdown.subscribe();
    let mut rtt_tick = tokio::time::interval(Duration::from_secs(1));
    let rtt = metrics::gauge!("raft_net_peer_rtt_seconds", "peer" => peer_id.to_string());
    loop {
        tokio::select! {
            s = conn.accept_uni() => match s {
                Ok(recv) => { tokio::spawn(read_messages(shared.clone(), peer_id, conn.clone(), recv)); }
                Err(_) => break,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => { tokio::spawn(serve_bi(shared.clone(), peer_id, conn.clone(), send, recv)); }
                Err(_) => break,
            },
            _ = rtt_tick.tick() => rtt.set(conn.rtt().as_secs_f64()),
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    lock(&shared.conns).remove(&conn.stable_id());
    let reason = conn.close_reason();
    tracing::debug!(peer = peer_id, ?reason, "connection closed");
    if let Some(peer) = lock(&shared.peers).get(&peer_id) {
        let mut cur = lock(&peer.current);
        if cur
            .as_ref()
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id())
        {
            *cur = None;
            peer.connected.set(0.0);
        }
    }
}

fn protocol_error(shared: &Shared, peer: NodeId, conn: &Connection, detail: String) {
    tracing::warn!(peer, error = %detail, "peer protocol error; closing the connection");
    shared.protocol_errors.increment(1);
    conn.close(VarInt::from_u32(close_code::PROTOCOL), detail.as_bytes());
}

/// Reads Raft messages from a control or replication stream and hands them
/// to the application.
async fn read_messages(shared: Arc<Shared>, peer: NodeId, conn: Connection, mut recv: RecvStream) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    let stream = match StreamKind::from_byte(kind[0]) {
        Some(StreamKind::Control) => "control",
        Some(StreamKind::Replication) => "replication",
        _ => {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("unexpected unidirectional stream kind {:#04x}", kind[0]),
            );
        }
    };
    let p = peer.to_string();
    let messages = metrics::counter!("raft_net_messages_received_total", "peer" => p.clone(), "stream" => stream);
    let bytes = metrics::counter!("raft_net_bytes_received_total", "peer" => p, "stream" => stream);
    let mut reader = FrameReader::new(shared.cfg.max_frame_bytes);
    loop {
        let frame = match reader.next(&mut recv).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(FrameError::Stream(_)) => return, // the connection or stream went away
            Err(e) => return protocol_error(&shared, peer, &conn, format!("{stream} stream: {e}")),
        };
        let (frame, size) = frame;
        let Frame::Message(m) = frame else {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("{stream} stream: unexpected frame {frame:?}"),
            );
        };
        if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("{stream} stream: InstallSnapshot travels only with its data"),
            );
        }
        if m.from != peer || m.to != shared.id {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!(
                    "message from {} to {} on the connection of peer {peer} to node {}",
                    m.from, m.to, shared.id
                ),
            );
        }
        if !shared.peer_allowed(peer) {
            tracing::warn!(
                peer,
                "message from a node outside the configuration; closing"
            );
            shared.refused_connections.increment(1);
            conn.close(
                VarInt::from_u32(close_code::UNKNOWN_PEER),
                b"not a member of the configuration",
            );
            return;
        }
        messages.increment(1);
        bytes.increment(size as u64);
        if shared.inbound.send(m).await.is_err() {
            return; // the application stopped listening
        }
    }
}

/// A bidirectional stream opened by the peer: a snapshot transfer.
async fn serve_bi(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: Connection,
    send: SendStream,
    mut recv: RecvStream,
) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    if StreamKind::from_byte(kind[0]) != Some(StreamKind::Snapshot) {
        return protocol_error(
            &shared,
            peer,
            &conn,
            format!("unexpected bidirectional stream kind {:#04x}", kind[0]),
        );
    }
    receive_snapshot(shared, peer, conn, send, recv).await;
}

async fn write_frame(send: &mut SendStream, frame: &Frame, max: u32) -> Result<(), String> {
    let mut buf = BytesMut::new();
    encode_frame(frame, max, &mut buf).map_err(|e| e.to_string())?;
    send.write_all(&buf).await.map_err(|e| e.to_string())
}

async fn receive_snapshot(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let max = shared.cfg.max_frame_bytes;
    let offer = match read_frame(&mut recv, max).await {
        Ok(Some(Frame::SnapshotOffer(o))) => o,
        Ok(None) | Err(FrameError::Stream(_)) => return,
        Ok(Some(other)) => {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("snapshot stream: expected an offer, got {other:?}"),
            )
        }
        Err(e) => return protocol_error(&shared, peer, &conn, format!("snapshot stream: {e}")),
    };
    let reply = |error: Option<SnapshotRefusal>| Frame::SnapshotResult { error };
    let refusal = if !shared.peer_allowed(peer) {
        Some(SnapshotRefusal::new(
            RefusalReason::NotAllowed,
            format!(
                "node {peer} is not a member of node {}'s configuration",
                shared.id
            ),
        ))
    } else if offer.total_bytes > shared.cfg.snapshot_bytes_max {
        Some(SnapshotRefusal::new(
            RefusalReason::TooLarge,
            format!(
                "snapshot of {} bytes exceeds node {}'s limit of {} bytes \
                 (snapshot_bytes_max; raft-node: --max-snapshot-receive-mib)",
                offer.total_bytes, shared.id, shared.cfg.snapshot_bytes_max
            ),
        ))
    } else if shared.sink.is_none() {
        Some(SnapshotRefusal::new(
            RefusalReason::NotAccepting,
            "this node does not accept snapshots",
        ))
    } else {
        None
    };
    if let Some(e) = refusal {
        shared.note_refusal(peer, offer.transfer_id, offer.total_bytes, &e);
        let _ = write_frame(&mut send, &reply(Some(e)), max).await;
        let _ = send.finish();
        let _ = send.stopped().await;
        return;
    }
    let Some(sink) = shared.sink.clone() else {
        return;
    };
    let id = offer.transfer_id;
    let mut expected = match sink.begin(peer, &offer).await {
        Ok(offset) if offset <= offer.total_bytes => offset,
        Ok(offset) => {
            let e = SnapshotRefusal::new(
                RefusalReason::Other,
                format!("sink resumes at {offset}, past the end"),
            );
            shared.note_refusal(peer, id, offer.total_bytes, &e);
            let _ = write_frame(&mut send, &reply(Some(e)), max).await;
            return;
        }
        Err(e) => {
            shared.note_refusal(peer, id, offer.total_bytes, &e);
            let _ = write_frame(&mut send, &reply(Some(e)), max).await;
            let _ = send.finish();
            return;
        }
    };
    tracing::info!(
        peer,
        transfer_id = id,
        total_bytes = offer.total_bytes,
        from_offset = expected,
        "receiving snapshot"
    );
    if write_frame(&mut send, &Frame::SnapshotResume { offset: expected }, max)
        .await
        .is_err()
    {
        return;
    }
    let received =
        metrics::counter!("raft_net_snapshot_bytes_received_total", "peer" => peer.to_string());
    loop {
        let frame = match read_frame(&mut recv, max).await {
            Ok(Some(f)) => f,
            // The connection broke: keep the partial transfer for a resume.
            Ok(None) | Err(FrameError::Stream(_)) => return,
            Err(e) => return protocol_error(&shared, peer, &conn, format!("snapshot stream: {e}")),
        };
        let verdict = match frame {
            Frame::SnapshotChunk(SnapshotChunk {
                offset,
                crc32c,
                data,
            }) => {
                let bad =
                    |detail: String| Some(SnapshotRefusal::new(RefusalReason::Invalid, detail));
                let err = if offset != expected {
                    bad(format!("chunk at offset {offset}, expected {expected}"))
                } else if crc32c::crc32c(&data) != crc32c {
                    bad(format!("chunk at offset {offset} fails its checksum"))
                } else if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > offer.total_bytes)
                {
                    bad(format!(
                        "chunk at offset {offset} runs past the snapshot's {} bytes",
                        offer.total_bytes
                    ))
                } else {
                    let len = data.len() as u64;
                    match sink.write(peer, id, offset, data).await {
                        Ok(()) => {
                            expected += len;
                            received.increment(len);
                            None
                        }
                        Err(e) => Some(e),
                    }
                };
                match err {
                    None => continue,
                    Some(e) => Some(e),
                }
            }
            Frame::SnapshotDone {
                total_bytes,
                crc32c,
            } => sink.finish(peer, id, total_bytes, crc32c).await.err(),
            other => {
                return protocol_error(
                    &shared,
                    peer,
                    &conn,
                    format!("snapshot stream: unexpected frame {other:?}"),
                )
            }
        };
        if let Some(e) = &verdict {
            shared.note_refusal(peer, id, offer.total_bytes, e);
        } else {
            tracing::info!(
                peer,
                transfer_id = id,
                bytes = offer.total_bytes,
                "snapshot received"
            );
        }
        let _ = write_frame(&mut send, &reply(verdict), max).await;
        let _ = send.finish();
        let _ = send.stopped().await;
        return;
    }
}

enum AttemptError {
    Source(std::io::Error),
    Failed(String),
    Refused(SnapshotRefusal),
}

async fn snapshot_attempt(
    shared: &Shared,
    peer: &Peer,
    conn: &Connection,
    offer: &SnapshotOffer,
    source: &dyn SnapshotSource,
    stats: &mut SnapshotSent,
) -> Result<(), AttemptError> {
    let max = shared.cfg.max_frame_bytes;
    let failed = |e: String| AttemptError::Failed(e);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
    let _ = send.set_priority(PRIORITY_SNAPSHOT);
    send.write_all(&[StreamKind::Snapshot as u8])
        .await
        .map_err(|e| failed(e.to_string()))?;
    write_frame(&mut send, &Frame::SnapshotOffer(offer.clone()), max)
        .await
        .map_err(failed)?;
    let start = match read_frame(&mut recv, max).await {
        Ok(Some(Frame::SnapshotResume { offset })) if offset <= offer.total_bytes => offset,
        Ok(Some(Frame::SnapshotResult { error: Some(e) })) => return Err(AttemptError::Refused(e)),
        Ok(other) => return Err(failed(format!("unexpected answer to the offer: {other:?}"))),
        Err(e) => return Err(failed(e.to_string())),
    };
    stats.start_offsets.push(start);
    let chunk = shared.cfg.snapshot_chunk_bytes;
    // The whole-snapshot checksum covers the prefix the receiver already has.
    let mut crc = 0u32;
    let mut offset = 0u64;
    while offset < start {
        let data = source
            .read_at(offset, chunk.min((start - offset) as usize))
            .await
            .map_err(AttemptError::Source)?;
        if data.is_empty() {
            return Err(AttemptError::Source(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "snapshot source ended early",
            )));
        }
        crc = crc32c::crc32c_append(crc, &data);
        offset += data.len() as u64;
    }
    let mut buf = BytesMut::new();
    while offset < offer.total_bytes {
        let data = source
            .read_at(offset, chunk)
            .await
            .map_err(AttemptError::Source)?;
        if data.is_empty() {
            return Err(AttemptError::Source(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "snapshot source ended early",
            )));
        }
        crc = crc32c::crc32c_append(crc, &data);
        let len = data.len() as u64;
        let frame = Frame::SnapshotChunk(SnapshotChunk {
            offset,
            crc32c: crc32c::crc32c(&data),
            data,
        });
        buf.clear();
        encode_frame(&frame, max, &mut buf).map_err(|e| failed(e.to_string()))?;
        send.write_all(&buf)
            .await
            .map_err(|e| failed(e.to_string()))?;
        offset += len;
        stats.bytes_sent += len;
        peer.snapshot_bytes_sent.increment(len);
    }
    write_frame(
        &mut send,
        &Frame::SnapshotDone {
            total_bytes: offer.total_bytes,
            crc32c: crc,
        },
        max,
    )
    .await
    .map_err(failed)?;
    let _ = send.finish();
    match read_frame(&mut recv, max).await {
        Ok(Some(Frame::SnapshotResult { error: None })) => Ok(()),
        Ok(Some(Frame::SnapshotResult { error: Some(e) })) => Err(AttemptError::Refused(e)),
        Ok(other) => Err(failed(format!("unexpected answer: {other:?}"))),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Drains one queue of `peer` into its stream, reconnecting as needed.
async fn writer(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    kind: StreamKind,
    mut rx: mpsc::Receiver<Message>,
) {
    let (priority, metrics) = match kind {
        StreamKind::Control => (PRIORITY_CONTROL, &peer.control_metrics),
        _ => (PRIORITY_REPLICATION, &peer.replication_metrics),
    };
    let mut shutdown = shared.shutdown.subscribe();
    let mut stream: Option<(usize, SendStream)> = None;
    let mut buf = BytesMut::new();
    let mut batch = Vec::with_capacity(shared.cfg.write_batch_messages_max);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(first) = first else { return };
        batch.clear();
        batch.push(first);
        while batch.len() < shared.cfg.write_batch_messages_max {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if kind == StreamKind::Replication {
            let bytes: u64 = batch.iter().map(entry_bytes).sum();
            peer.replication_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        let conn = match connection(&shared, &peer).await {
            Ok(c) => c,
            Err(ConnectError::Closed) => return,
            Err(_) => {
                metrics.dropped.increment(batch.len() as u64);
                continue;
            }
        };
        if stream.as_ref().map(|(id, _)| *id) != Some(conn.stable_id()) {
            stream = None;
            match conn.open_uni().await {
                Ok(mut s) => {
                    let _ = s.set_priority(priority);
                    if s.write_all(&[kind as u8]).await.is_ok() {
                        stream = Some((conn.stable_id(), s));
                    }
                }
                Err(e) => tracing::debug!(peer = peer.id, error = %e, "cannot open stream"),
            }
        }
        let Some((_, s)) = stream.as_mut() else {
            metrics.dropped.increment(batch.len() as u64);
            continue;
        };
        buf.clear();
        let mut count = 0u64;
        for m in batch.drain(..) {
            let kind_name = m.body.kind();
            match encode_frame(&Frame::Message(m), shared.cfg.max_frame_bytes, &mut buf) {
                Ok(()) => count += 1,
                Err(e) => {
                    tracing::error!(peer = peer.id, kind = kind_name, error = %e, "message not sent");
                    metrics.dropped.increment(1);
                }
            }
        }
        match s.write_all(&buf).await {
            Ok(()) => {
                metrics.messages.increment(count);
                metrics.bytes.increment(buf.len() as u64);
            }
            Err(e) => {
                tracing::debug!(peer = peer.id, error = %e, "stream write failed; will reopen");
                metrics.dropped.increment(count);
                stream = None;
            }
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The stream or connection failed (not the peer's bytes' fault).
    #[error("stream: {0}")]
    Stream(String),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads frames from a long-lived message stream in large chunks: one
/// stream read serves many small frames (two exact reads per frame cost a
/// stream lock each). Each frame is copied into its own exact-size buffer,
/// so decoded payloads never pin a whole read chunk in memory.
struct FrameReader {
    buf: BytesMut,
    max: u32,
}

/// Bytes asked of the stream per read.
const READ_CHUNK_BYTES: usize = 64 << 10;

impl FrameReader {
    fn new(max: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// The next frame and its size; `Ok(None)` when the stream ended
    /// cleanly between frames.
    async fn next(&mut self, recv: &mut RecvStream) -> Result<Option<(Frame, usize)>, FrameError> {
        loop {
            if self.buf.len() >= LENGTH_PREFIX_BYTES {
                let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
                prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
                let len = check_frame_length(prefix, self.max)?;
                let total = LENGTH_PREFIX_BYTES + len;
                if self.buf.len() >= total {
                    let content = Bytes::copy_from_slice(&self.buf[LENGTH_PREFIX_BYTES..total]);
                    bytes::Buf::advance(&mut self.buf, total);
                    return Ok(Some((decode_frame_content(content)?, total)));
                }
            }
            match recv.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) if self.buf.len() < LENGTH_PREFIX_BYTES => {
                    return Err(DecodeError::Truncated("length prefix").into())
                }
                Ok(None) => {
                    return Err(
                        DecodeError::Truncated("frame shorter than its length prefix").into(),
                    )
                }
                Err(e) => return Err(FrameError::Stream(e.to_string())),
            }
        }
    }
}

async fn read_frame(recv: &mut RecvStream, max: u32) -> Result<Option<Frame>, FrameError> {
    Ok(read_frame_sized(recv, max).await?.map(|(f, _)| f))
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly between frames.
async fn read_frame_sized(
    recv: &mut RecvStream,
    max: u32,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(DecodeError::Truncated("length prefix").into())
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = check_frame_length(prefix, max)?;
    // The buffer grows as data arrives: a length prefix alone (up to
    // `max_frame_bytes`) allocates at most one read chunk.
    let mut body = BytesMut::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(DecodeError::Truncated("frame shorter than its length prefix").into())
            }
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    let frame = decode_frame_content(body.freeze())?;
    Ok(Some((frame, len + LENGTH_PREFIX_BYTES)))
}
