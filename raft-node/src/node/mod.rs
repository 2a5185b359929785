//! Starting and stopping one node: the RocksDB store (log, key-value data
//! and node metadata in one database), the QUIC transport, the Raft driver
//! and the HTTP API.
//!
//! [`start`] runs named phases, in order: validate the configuration, open
//! the store, resolve the members (`resolve`), bind the transport, start
//! the driver, serve the API, and join a cluster when `--join` asks to
//! (`join`). `tasks` holds what runs beside them; `meta` the node's
//! own metadata.

pub mod cluster_id;
mod join;
pub(crate) mod meta;
mod resolve;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use raft_core::{Config, DriverConfig, Membership, Message, RaftHandle, Role};
use raft_log::{RocksLog, RocksLogOptions, SyncPolicy};
use raft_net_quic::{forward_snapshots, FileSnapshotSink, NodeTls, QuicConfig, QuicTransport};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::command::Outcome;
use crate::config::NodeConfig;
use crate::http::{router, AppState};
use crate::members::MemberDirectory;
use crate::store::{KvReader, KvStateMachine, KV_CF, KV_META_CF};

pub use meta::NODE_META_CF;

/// A running node.
pub struct RunningNode {
    /// The Raft handle.
    pub raft: RaftHandle<Outcome>,
    /// Reads of the store.
    pub reader: KvReader,
    /// The HTTP address actually bound.
    pub client_addr: SocketAddr,
    /// The peer address actually bound.
    pub peer_addr: SocketAddr,
    /// The limits of transactions (from the settings).
    pub txn_limits: crate::txn::TxnLimits,
    /// The etcd gRPC address actually bound (with `--grpc-listen`).
    pub grpc_addr: Option<SocketAddr>,
    transport: QuicTransport,
    http_stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    forwarder: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    log_db: Arc<rocksdb::DB>,
    /// Watches of the store, ended at shutdown.
    watches: crate::watch::Watches,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("client_addr", &self.client_addr)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

/// How long a graceful stop lets running client requests finish.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Snapshots received from peers and not yet handed to the driver.
const RECEIVED_SNAPSHOTS_MAX: usize = 2;

/// Phase 1: logs what is unsafe in `cfg` and loads the peer TLS identity.
fn validate(cfg: &NodeConfig) -> anyhow::Result<NodeTls> {
    for warning in cfg.security_warnings() {
        tracing::warn!("SECURITY: {warning}");
    }
    NodeTls::from_pem_files(cfg.id, &cfg.tls_ca, &cfg.tls_cert, &cfg.tls_key)
        .context("loading the peer TLS identity")
}

/// Phase 2: the data directory (this node's alone) and the RocksDB store
/// with its column families.
fn open_store(cfg: &NodeConfig) -> anyhow::Result<RocksLog> {
    // The store, snapshots and received snapshots are this node's alone.
    crate::snapshot::create_private_dir(&cfg.data_dir)
        .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    crate::restore::refuse_unfinished_restore(&cfg.data_dir)?;
    RocksLog::open(
        &cfg.data_dir,
        RocksLogOptions {
            sync: if cfg.unsafe_no_fsync {
                SyncPolicy::UnsafeNoSync
            } else {
                SyncPolicy::Always
            },
            extra_column_families: vec![KV_CF.into(), KV_META_CF.into(), NODE_META_CF.into()],
            write_buffer_bytes: cfg.write_buffer_bytes,
            block_cache_bytes: cfg.block_cache_bytes,
            ..RocksLogOptions::default()
        },
    )
    .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))
}

/// The bound transport and what it delivers.
struct Peers {
    transport: QuicTransport,
    inbound: mpsc::Receiver<Message>,
    received_snapshots: mpsc::Receiver<raft_net_quic::ReceivedSnapshot>,
    frame_bytes_max: u32,
}

/// Phase 4: binds the QUIC transport and gives it the members' peer
/// addresses.
fn bind_transport(
    cfg: &NodeConfig,
    tls: NodeTls,
    directory: &MemberDirectory,
    cluster: Option<u128>,
) -> anyhow::Result<Peers> {
    let election_timeout = cfg.tick * cfg.election_ticks as u32;
    let quic = QuicConfig {
        snapshot_bytes_max: cfg.max_snapshot_receive_bytes,
        connections_per_peer_max: cfg.max_connections_per_peer,
        retry_handshakes_threshold: cfg.peer_retry_after_handshakes,
        handshakes_per_ip_max: cfg.peer_handshakes_per_ip,
        connections_reserved_for_peers: cfg.peer_reserved_connections,
        ..QuicConfig::for_election_timeout(election_timeout)
    };
    let frame_bytes_max = quic.max_frame_bytes;
    let incoming = cfg.data_dir.join("incoming");
    crate::snapshot::create_private_dir(&incoming)
        .with_context(|| format!("creating {}", incoming.display()))?;
    // Partial and undelivered snapshots of an earlier run are deleted here.
    let (sink, received_snapshots) = FileSnapshotSink::new(incoming, RECEIVED_SNAPSHOTS_MAX)
        .context("creating the snapshot receive directory")?;
    let mut builder = QuicTransport::builder(cfg.id, tls)
        .config(quic)
        .cluster_id(cluster)
        .snapshot_sink(Arc::new(sink));
    if let Some(crl) = &cfg.tls_crl {
        builder = builder.crl_file(crl);
    }
    let (transport, inbound) = builder
        .bind(cfg.peer_listen)
        .with_context(|| format!("binding the peer address {}", cfg.peer_listen))?;
    for m in directory.all() {
        if m.id != cfg.id {
            transport.add_peer(m.id, m.peer_addr);
        }
    }
    Ok(Peers {
        transport,
        inbound,
        received_snapshots,
        frame_bytes_max,
    })
}

/// The engine's settings from `cfg`.
fn engine_config(cfg: &NodeConfig) -> Config {
    let mut config = Config::new(cfg.id);
    config.election_timeout_ticks = cfg.election_ticks;
    config.heartbeat_interval_ticks = cfg.heartbeat_ticks;
    config.lease_ticks = (cfg.election_ticks * 7 / 10)
        .min(cfg.election_ticks.saturating_sub(2))
        .max(1);
    config.seed = rand::random();
    config.snapshot_threshold_entries = cfg.snapshot_entries;
    config.snapshot_threshold_bytes = cfg.snapshot_bytes;
    config.snapshot_keep_entries = cfg.snapshot_keep_entries;
    config.max_promotion_lag_entries = cfg.max_promotion_lag;
    config.max_log_cache_bytes = cfg.log_cache_bytes;
    config.max_uncommitted_bytes = cfg.max_uncommitted_bytes;
    config
}

/// The running driver and the tasks that feed it what peers send.
struct Driver {
    raft: RaftHandle<Outcome>,
    forwarder: JoinHandle<()>,
    snapshots: JoinHandle<()>,
}

/// Phase 5: starts the Raft driver on the store, the state machine and the
/// transport, and feeds it the messages and snapshots peers send.
async fn start_driver(
    cfg: &NodeConfig,
    bootstrap: Membership,
    log: RocksLog,
    sm: KvStateMachine,
    peers: Peers,
) -> anyhow::Result<Driver> {
    let mut driver = DriverConfig::default();
    driver.tick_interval = cfg.tick;
    driver.request_timeout = cfg.request_timeout;
    driver.max_unapplied_bytes = cfg.max_unapplied_bytes;
    let raft = raft_core::Raft::start(
        engine_config(cfg),
        driver,
        bootstrap,
        log,
        sm,
        peers.transport.clone(),
    )
    .await
    .context("starting Raft")?;
    let h = raft.clone();
    let mut inbound = peers.inbound;
    let forwarder = tokio::spawn(async move {
        while let Some(m) = inbound.recv().await {
            let _ = h.receive(m);
        }
    });
    let snapshots = tokio::spawn(forward_snapshots(
        peers.received_snapshots,
        raft.clone(),
        peers.frame_bytes_max,
    ));
    Ok(Driver {
        raft,
        forwarder,
        snapshots,
    })
}

/// The HTTP server's task and its stop switch, and the gRPC server's.
struct Serving {
    client_addr: SocketAddr,
    /// The gRPC server, and the task publishing its URL to the cluster.
    grpc: Option<(crate::grpc::GrpcServing, JoinHandle<()>)>,
    /// Without a gRPC server: the task publishing "no gRPC URL".
    publish_none: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Phase 6: binds the client address and serves the API.
async fn serve(cfg: &Arc<NodeConfig>, state: AppState) -> anyhow::Result<Serving> {
    let listener = tokio::net::TcpListener::bind(cfg.client_listen)
        .await
        .with_context(|| format!("binding the client address {}", cfg.client_listen))?;
    let client_addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let state = Arc::new(state);
    let app = router(state.clone());
    let grpc = match cfg.grpc_listen {
        Some(addr) => {
            let g = crate::grpc::serve(state.clone(), app.clone(), addr, stop_rx.clone()).await?;
            let publish = tasks::publish_grpc_url(state.clone(), Some(g.url.clone()));
            Some((g, publish))
        }
        None => None,
    };
    // Without a gRPC listener: "no gRPC URL", so a URL recorded before
    // (a restart without `--grpc-listen`) is cleared.
    let publish_none = grpc
        .is_none()
        .then(|| tasks::publish_grpc_url(state.clone(), None));
    let tls = if cfg.client_tls {
        let config = crate::client_tls::server_config(cfg).context("configuring HTTPS")?;
        Some(tokio_rustls::TlsAcceptor::from(config))
    } else {
        None
    };
    let limits = crate::server::ConnectionLimits {
        max_connections: cfg.http_max_connections,
        header_timeout: cfg.http_header_timeout,
        idle_timeout: cfg.http_idle_timeout,
        send_timeout: cfg.http_send_timeout,
        tls_handshake_timeout: cfg.http_tls_handshake_timeout,
        max_header_bytes: cfg.http_max_header_bytes,
        shutdown_grace: HTTP_SHUTDOWN_GRACE,
    };
    let task = tokio::spawn(crate::server::serve(listener, app, tls, limits, stop_rx));
    Ok(Serving {
        client_addr,
        grpc,
        publish_none,
        stop,
        task,
    })
}

/// Phase 3, after the members are resolved: the key-value state machine on
/// the store, with its history retention, snapshot directory and watch
/// limits.
fn open_state_machine(cfg: &NodeConfig, db: &Arc<rocksdb::DB>) -> anyhow::Result<KvStateMachine> {
    Ok(KvStateMachine::new(db.clone(), cfg.idempotency_window)?
        .with_history_retention(cfg.history_retention)
        .with_snapshot_dir(cfg.data_dir.join("snapshots"))?
        .with_watch_config(cfg.watch.clone()))
}

/// What runs beside the driver until shutdown, in this order: the metrics
/// sampler, the storage stall watch (with `--storage-stall-timeout-ms`),
/// the tasks following the members' addresses and the configuration, and
/// the lessor revoking expired leases.
fn spawn_background(
    cfg: &Arc<NodeConfig>,
    raft: &RaftHandle<Outcome>,
    reader: &KvReader,
    members_changed: tokio::sync::watch::Receiver<u64>,
    transport: &QuicTransport,
    directory: &MemberDirectory,
    lessor: &crate::lease::Lessor,
) -> Vec<JoinHandle<()>> {
    let id = cfg.id;
    let mut background = vec![crate::monitoring::spawn_sampler(
        crate::monitoring::SamplerConfig {
            id,
            data_dir: cfg.data_dir.clone(),
            tls_cert: cfg.tls_cert.clone(),
            tls_ca: cfg.tls_ca.clone(),
            interval: cfg.metrics_sample_interval,
        },
        raft.clone(),
    )];
    if let Some(limit) = cfg.storage_stall_timeout {
        background.push(tasks::watch_storage_stalls(raft.clone(), limit));
    }
    background.push(tasks::follow_addresses(
        id,
        members_changed,
        reader.clone(),
        transport.clone(),
        directory.clone(),
    ));
    background.push(tasks::follow_configuration(
        id,
        raft.clone(),
        reader.clone(),
        transport.clone(),
        directory.clone(),
        cfg.join_admission,
    ));
    background.push(lessor.spawn(
        raft.clone(),
        reader.clone(),
        crate::lease::LeaseLimits::of(cfg),
    ));
    background
}

/// Stops what [`start`] started when it fails after serving: the API, Raft
/// and the transport.
async fn stop_started(
    http_stop: &watch::Sender<bool>,
    raft: &RaftHandle<Outcome>,
    transport: &QuicTransport,
) {
    let _ = http_stop.send(true);
    raft.shutdown().await;
    transport.shutdown().await;
}

/// Opens the store, joins the cluster and serves the API until
/// [`RunningNode::shutdown`].
///
/// # Errors
///
/// Anything that keeps the node from starting, with context: an unreadable
/// or corrupted store, bad TLS files, an address in use, a new data
/// directory without `--initial-cluster`.
pub async fn start(
    cfg: NodeConfig,
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<RunningNode> {
    let cfg = Arc::new(cfg);
    let id = cfg.id;
    let tls = validate(&cfg)?;
    let log = open_store(&cfg)?;
    let db = log.db().clone();
    if let Some(record) = crate::restore::forced_record(&db)? {
        tracing::warn!(%record, "this store was recovered with `raft-node recover --force-new-cluster`: its cluster was rebuilt around this node alone");
    }
    let resolved = resolve::resolve_members(&cfg, &log)?;
    let sm = open_state_machine(&cfg, &db)?;
    let reader = sm.reader();
    let watches = sm.watches();
    let watches_of_node = watches.clone();
    let members_changed = sm.members_changed();
    // Addresses replicated through the log win over the ones stored here.
    let directory = MemberDirectory::new(db.clone(), reader.clone(), resolved.members)?;
    let cluster = cluster_id::load_at_start(&db, resolved.joining)?;
    let peers = bind_transport(&cfg, tls, &directory, cluster)?;
    let transport = peers.transport.clone();
    let peer_addr = transport.local_addr()?;
    let driver = start_driver(&cfg, resolved.bootstrap, log, sm, peers).await?;
    let raft = driver.raft.clone();
    let lessor = crate::lease::Lessor::new();
    let mut background = vec![driver.snapshots];
    background.extend(spawn_background(
        &cfg,
        &raft,
        &reader,
        members_changed,
        &transport,
        &directory,
        &lessor,
    ));
    let state = AppState {
        id,
        raft: raft.clone(),
        reader: reader.clone(),
        cfg: cfg.clone(),
        members: directory.clone(),
        transport: transport.clone(),
        client: crate::client_tls::forwarding_client(&cfg)
            .context("building the forwarding client")?,
        metrics,
        limits: Arc::new(crate::http::HttpLimits::new(&cfg)),
        watches,
        lessor: lessor.clone(),
    };
    let mut http = serve(&cfg, state).await?;
    let client_addr = http.client_addr;
    let grpc_addr = http.grpc.as_ref().map(|(g, _)| g.addr);
    if let Some((g, publish)) = http.grpc.take() {
        background.push(g.task);
        background.push(publish);
    }
    if let Some(publish) = http.publish_none.take() {
        background.push(publish);
    }
    tracing::info!(id, %client_addr, %peer_addr, ?grpc_addr, https = cfg.client_tls, "node started");
    if resolved.joining {
        if let Err(e) = join::join(&cfg, &transport, &directory, &db).await {
            stop_started(&http.stop, &raft, &transport).await;
            return Err(e);
        }
    }
    Ok(RunningNode {
        raft,
        reader,
        client_addr,
        peer_addr,
        txn_limits: crate::txn::TxnLimits::of(&cfg),
        grpc_addr,
        transport,
        http_stop: http.stop,
        http: http.task,
        forwarder: driver.forwarder,
        background,
        log_db: db,
        watches: watches_of_node,
    })
}

impl RunningNode {
    /// Runs a transaction ([`crate::txn`]) through this node: proposed like
    /// every write (forwarded to the leader inside Raft from a follower),
    /// answered from this node's apply of it.
    ///
    /// # Errors
    ///
    /// [`crate::txn::TxnError`].
    pub async fn txn(
        &self,
        req: crate::txn::TxnRequest,
    ) -> Result<crate::txn::TxnResponse, crate::txn::TxnError> {
        crate::txn::propose(&self.raft, &self.txn_limits, req).await
    }

    /// Graceful stop: a leader hands leadership to another voter first; the
    /// HTTP server stops taking requests and lets in-flight ones finish
    /// (they fail with 503 once Raft stops), then Raft, the transport and
    /// the store shut down, with the store flushed.
    pub async fn shutdown(self) {
        if let Some(s) = self.raft.status().await {
            if s.engine.role == Role::Leader && s.engine.membership.voters().len() > 1 {
                match tokio::time::timeout(Duration::from_secs(3), self.raft.transfer_leader(None))
                    .await
                {
                    Ok(Ok(to)) => tracing::info!(to, "handed leadership over before shutting down"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "leadership transfer before shutdown failed")
                    }
                    Err(_) => tracing::warn!("leadership transfer before shutdown timed out"),
                }
            }
        }
        // Watches end (a `canceled` event), so their connections finish;
        // the server lets running requests finish for HTTP_SHUTDOWN_GRACE,
        // then drops them.
        self.watches.close_all();
        let _ = self.http_stop.send(true);
        let _ = self.http.await;
        self.raft.shutdown().await;
        self.transport.shutdown().await;
        self.forwarder.abort();
        for task in self.background {
            task.abort();
        }
        if let Err(e) = self.log_db.flush_wal(true) {
            tracing::warn!(error = %e, "flushing the store at shutdown failed");
        }
        tracing::info!("node stopped");
    }
}
