//! [`QuicTransportBuilder`]: settings, TLS and the UDP socket.

use super::*;

/// Builds a [`QuicTransport`].
pub struct QuicTransportBuilder {
    pub(super) id: NodeId,
    pub(super) tls: Arc<NodeTls>,
    pub(super) cfg: QuicConfig,
    pub(super) sink: Option<Arc<dyn SnapshotSink>>,
    pub(super) crl_path: Option<PathBuf>,
    pub(super) cluster: Option<u128>,
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

    /// This node's cluster id: sent in every handshake, and a peer that
    /// sends another is refused (close code 10, `WRONG_CLUSTER`). A peer
    /// that sends none (the previous release, a node without one) is
    /// accepted. Without it (the default), nothing is checked.
    pub fn cluster_id(mut self, id: Option<u128>) -> Self {
        self.cluster = id;
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

        // The file's content as loaded now is what the poller compares
        // against: a change right after `bind` is a reload, however soon the
        // poller first runs.
        let (tls, crl_seen) = match &self.crl_path {
            Some(path) => {
                let load = |detail: String| TlsError::Load {
                    what: "the certificate revocation list",
                    path: path.clone(),
                    detail,
                };
                let pem = std::fs::read(path).map_err(|e| load(e.to_string()))?;
                let tls = self
                    .tls
                    .with_crl_pem(&pem)
                    .map_err(|e| load(e.to_string()))?;
                (Arc::new(tls), Some(CrlSeen::Content(content_hash(&pem))))
            }
            None => (self.tls, None),
        };
        let (server_config, client_config) = endpoint_configs(&tls, &transport, cfg.forwarding)?;

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
            cluster: Mutex::new(self.cluster),
        });
        tokio::spawn(accept_loop(shared.clone()));
        if shared.crl_path.is_some() {
            tokio::spawn(crl_poller(shared.clone(), crl_seen));
        }
        Ok((QuicTransport { shared }, inbound_rx))
    }
}

/// The quinn server and client configurations of a TLS identity.
/// With `forwarding`, [`ALPN_FORWARD`](crate::tls::ALPN_FORWARD) is offered first.
pub(super) fn endpoint_configs(
    tls: &NodeTls,
    transport: &Arc<quinn::TransportConfig>,
    forwarding: bool,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), BindError> {
    let mut server_tls = tls.server_config()?;
    let mut client_tls = tls.client_config()?;
    if forwarding {
        server_tls
            .alpn_protocols
            .insert(0, crate::tls::ALPN_FORWARD.to_vec());
        client_tls
            .alpn_protocols
            .insert(0, crate::tls::ALPN_FORWARD.to_vec());
    }
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| BindError::Tls(TlsError::Config(e.to_string())))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(transport.clone());
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
        .map_err(|e| BindError::Tls(TlsError::Config(e.to_string())))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport.clone());
    Ok((server_config, client_config))
}
