//! The public API of [`QuicTransport`] and its [`Transport`] implementation.

use super::*;

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
            cluster: None,
        }
    }

    /// Sets this node's cluster id (a node that joined learns it from the
    /// leader): handshakes from here on send and check it. Connections
    /// already established are kept.
    pub fn set_cluster_id(&self, id: u128) {
        *lock(&self.shared.cluster) = Some(id);
    }

    /// This node's cluster id, if it has one.
    pub fn cluster_id(&self) -> Option<u128> {
        *lock(&self.shared.cluster)
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
    /// A DNS name is kept as given and looked up again at every connection
    /// attempt, so a peer that comes back under the same name at another
    /// IP address is found again.
    pub fn add_peer(&self, id: NodeId, addr: impl Into<PeerAddr>) {
        let addr = addr.into();
        let shared = &self.shared;
        let mut peers = lock(&shared.peers);
        if let Some(p) = peers.get(&id) {
            if *lock(&p.addr) != addr {
                *lock(&p.addr) = addr;
                // What the old address resolved to no longer names this peer.
                lock(&p.resolved).clear();
                p.forget_refusal();
            }
            return;
        }
        let (ctx, crx) = mpsc::channel(shared.cfg.control_queue_messages_max);
        let (rtx, rrx) = mpsc::channel(shared.cfg.replication_queue_messages_max);
        let p = id.to_string();
        let peer = Arc::new(Peer {
            id,
            addr: Mutex::new(addr),
            resolved: Mutex::new(Vec::new()),
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
            snapshot_refused: Mutex::new(None),
            snapshot_reset: tokio::sync::Notify::new(),
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
            peer.forget_refusal();
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
        let previous = std::mem::replace(
            &mut *self
                .shared
                .allowed
                .write()
                .unwrap_or_else(|p| p.into_inner()),
            allowed.clone(),
        );
        if previous != allowed {
            // A membership change: a refused snapshot may be taken now.
            for peer in lock(&self.shared.peers).values() {
                peer.forget_refusal();
            }
        }
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

    pub(super) fn close_connections_where(
        &self,
        doomed: impl Fn(NodeId) -> bool,
        code: u32,
        reason: &str,
    ) {
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

    /// Checks that node `id` answers at `addr` now, before its address is
    /// changed to it: resolves `addr` (up to 3 addresses of a name, as a dial
    /// does), connects, and verifies that the certificate presented names
    /// `id` (TLS, as every dial does). Closes the connection right after,
    /// before the peer handshake, so the peer never takes it as its
    /// connection to this node. Returns the address that answered.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Connect`] saying why: the name does not resolve,
    /// nothing answers, or the node there is not `id` (its certificate is
    /// refused).
    pub async fn probe(&self, id: NodeId, addr: &PeerAddr) -> Result<SocketAddr, ConnectError> {
        let shared = &self.shared;
        let timeout = shared.cfg.handshake_timeout;
        let fail = |detail: String| ConnectError::Connect {
            peer: id,
            addr: addr.clone(),
            detail,
        };
        let mut last = String::new();
        for target in resolve(shared, addr, timeout).await.map_err(fail)? {
            let connecting = shared
                .endpoint
                .connect_with(
                    lock(&shared.client_config).clone(),
                    target,
                    &node_dns_name(id),
                )
                .map_err(|e| fail(e.to_string()))?;
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => {
                    conn.close(VarInt::from_u32(close_code::REQUESTED), b"probe");
                    return Ok(target);
                }
                Ok(Err(e)) => last = format!("{target}: {e}"),
                Err(_) => last = format!("{target}: no answer within {timeout:?}"),
            }
        }
        Err(fail(last))
    }

    /// The peers and their addresses, as given.
    pub fn peers(&self) -> Vec<(NodeId, PeerAddr)> {
        let mut v: Vec<_> = lock(&self.shared.peers)
            .values()
            .map(|p| (p.id, lock(&p.addr).clone()))
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
            addr: SocketAddr::from(([0, 0, 0, 0], 0)).into(),
            detail: "unknown peer".into(),
        })?;
        connection(&self.shared, &p).await.map(|_| ())
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

    pub(super) fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
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
        let mut forwards: Option<bool> = None;
        for m in messages {
            if is_forwarding(&m.body) && !*forwards.get_or_insert_with(|| peer.forwards()) {
                // The peer would refuse the frame (and the connection).
                tracing::debug!(
                    to,
                    kind = m.body.kind(),
                    "peer does not speak forwarding: dropped"
                );
                dropped = true;
                continue;
            }
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

    fn can_forward(&self, to: NodeId) -> bool {
        self.peer(to).is_some_and(|p| p.forwards())
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
pub(super) fn snapshot_transfer_id(header: &Message) -> u64 {
    let index = match &header.body {
        MessageBody::InstallSnapshot { meta } => {
            meta.last_log_id.index ^ meta.last_log_id.term.rotate_left(40)
        }
        _ => 0,
    };
    index ^ header.term.rotate_left(20) ^ 0x5A17_0000_0000_0000
}

pub(super) fn entry_bytes(m: &Message) -> u64 {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().map(|e| e.size_bytes()).sum(),
        MessageBody::ForwardPropose { command, .. } => command.len() as u64,
        _ => 0,
    }
}
