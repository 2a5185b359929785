//! Starting and stopping one node: the RocksDB store (log, key-value data
//! and node metadata in one database), the QUIC transport, the Raft driver
//! and the HTTP API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use metrics_exporter_prometheus::PrometheusHandle;
use raft_core::{Config, DriverConfig, Membership, NodeId, RaftHandle, Role};
use raft_log::{RocksLog, RocksLogOptions, SyncPolicy};
use raft_net_quic::{NodeTls, QuicConfig, QuicTransport};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::command::Outcome;
use crate::config::{Member, NodeConfig};
use crate::http::{router, AppState};
use crate::store::{KvReader, KvStateMachine, KV_CF, KV_META_CF};

/// Column family of this node's own metadata (not replicated): the
/// addresses of the members.
pub const NODE_META_CF: &str = "node_meta";
const MEMBERS_KEY: &[u8] = b"members";
const WINDOW_KEY: &[u8] = b"idempotency_window";

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
    transport: QuicTransport,
    http_stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    forwarder: JoinHandle<()>,
    log_db: Arc<rocksdb::DB>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("client_addr", &self.client_addr)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

fn load_members(db: &rocksdb::DB) -> anyhow::Result<Option<Vec<Member>>> {
    let cf = db
        .cf_handle(NODE_META_CF)
        .context("node_meta column family missing")?;
    match db.get_cf(&cf, MEMBERS_KEY)? {
        None => Ok(None),
        Some(v) => Ok(Some(
            serde_json::from_slice(&v).context("stored member addresses are corrupted")?,
        )),
    }
}

fn save_members(db: &rocksdb::DB, members: &[Member]) -> anyhow::Result<()> {
    let cf = db
        .cf_handle(NODE_META_CF)
        .context("node_meta column family missing")?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(&cf, MEMBERS_KEY, serde_json::to_vec(members)?, &opts)?;
    Ok(())
}

/// Forgetting idempotency tokens is part of the replicated state, so the
/// window must never change under a store: the first start records it.
fn check_idempotency_window(db: &rocksdb::DB, window: u64) -> anyhow::Result<()> {
    let cf = db
        .cf_handle(NODE_META_CF)
        .context("node_meta column family missing")?;
    match db.get_cf(&cf, WINDOW_KEY)? {
        Some(v) => {
            let stored = <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| anyhow::anyhow!("stored idempotency window is corrupted"))?;
            if stored != window {
                bail!(
                    "--idempotency-window is {window} but this store was created with {stored}; \
                     every node must keep the value the cluster started with"
                );
            }
        }
        None => {
            let mut opts = rocksdb::WriteOptions::default();
            opts.set_sync(true);
            db.put_cf_opt(&cf, WINDOW_KEY, window.to_be_bytes(), &opts)?;
        }
    }
    Ok(())
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
    let tls = NodeTls::from_pem_files(id, &cfg.tls_ca, &cfg.tls_cert, &cfg.tls_key)
        .context("loading the peer TLS identity")?;
    let log = RocksLog::open(
        &cfg.data_dir,
        RocksLogOptions {
            sync: if cfg.unsafe_no_fsync {
                SyncPolicy::UnsafeNoSync
            } else {
                SyncPolicy::Always
            },
            extra_column_families: vec![KV_CF.into(), KV_META_CF.into(), NODE_META_CF.into()],
            ..RocksLogOptions::default()
        },
    )
    .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let db = log.db().clone();

    let members = match load_members(&db)? {
        Some(stored) => {
            if !cfg.initial_cluster.is_empty() {
                tracing::info!(
                    "restarting from {}: --initial-cluster is ignored",
                    cfg.data_dir.display()
                );
            }
            if let Some(me) = stored.iter().find(|m| m.id == id) {
                if *me != cfg.advertise {
                    tracing::warn!(
                        stored = %format!("{}/{}", me.peer_addr, me.client_addr),
                        advertised = %format!("{}/{}", cfg.advertise.peer_addr, cfg.advertise.client_addr),
                        "this node's addresses changed since the cluster was formed; peers keep the stored ones"
                    );
                }
            }
            stored
        }
        None => {
            if cfg.initial_cluster.is_empty() {
                bail!(
                    "{} holds no cluster yet: give --initial-cluster to bootstrap a new one",
                    cfg.data_dir.display()
                );
            }
            if log.last_index() > 0 {
                bail!(
                    "{} has a log but no member addresses: it was not created by raft-node",
                    cfg.data_dir.display()
                );
            }
            save_members(&db, &cfg.initial_cluster)?;
            tracing::info!(
                members = cfg.initial_cluster.len(),
                "bootstrapping a new cluster"
            );
            cfg.initial_cluster.clone()
        }
    };
    check_idempotency_window(&db, cfg.idempotency_window)?;
    let voters: Vec<NodeId> = members.iter().map(|m| m.id).collect();

    let election_timeout = cfg.tick * cfg.election_ticks as u32;
    let (transport, mut inbound) = QuicTransport::builder(id, tls)
        .config(QuicConfig::for_election_timeout(election_timeout))
        .bind(cfg.peer_listen)
        .with_context(|| format!("binding the peer address {}", cfg.peer_listen))?;
    for m in &members {
        if m.id != id {
            transport.add_peer(m.id, m.peer_addr);
        }
    }

    let sm = KvStateMachine::new(db.clone(), cfg.idempotency_window)?;
    let reader = sm.reader();
    let mut config = Config::new(id);
    config.election_timeout_ticks = cfg.election_ticks;
    config.heartbeat_interval_ticks = cfg.heartbeat_ticks;
    config.lease_ticks = (cfg.election_ticks * 7 / 10)
        .min(cfg.election_ticks.saturating_sub(2))
        .max(1);
    config.seed = rand::random();
    let driver = DriverConfig {
        tick_interval: cfg.tick,
        request_timeout: cfg.request_timeout,
        ..DriverConfig::default()
    };
    let raft = raft_core::Raft::start(
        config,
        driver,
        Membership::new(voters),
        log,
        sm,
        transport.clone(),
    )
    .await
    .context("starting Raft")?;
    let h = raft.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(m) = inbound.recv().await {
            let _ = h.receive(m);
        }
    });

    let listener = tokio::net::TcpListener::bind(cfg.client_listen)
        .await
        .with_context(|| format!("binding the client address {}", cfg.client_listen))?;
    let client_addr = listener.local_addr()?;
    let peer_addr = transport.local_addr()?;
    let state = Arc::new(AppState {
        id,
        raft: raft.clone(),
        reader: reader.clone(),
        cfg: cfg.clone(),
        members: Arc::new(RwLock::new(
            members
                .into_iter()
                .map(|m| (m.id, m))
                .collect::<HashMap<_, _>>(),
        )),
        client: crate::client_tls::forwarding_client(&cfg)
            .context("building the forwarding client")?,
        metrics,
    });
    let (http_stop, mut stop_rx) = watch::channel(false);
    let app = router(state);
    let stopped = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let http = if cfg.client_tls {
        let tls = crate::client_tls::server_config(&cfg).context("configuring HTTPS")?;
        let listener = crate::client_tls::TlsListener::new(listener, tls)?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "HTTPS server failed");
            }
        })
    } else {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    tracing::info!(id, %client_addr, %peer_addr, https = cfg.client_tls, "node started");
    Ok(RunningNode {
        raft,
        reader,
        client_addr,
        peer_addr,
        transport,
        http_stop,
        http,
        forwarder,
        log_db: db,
    })
}

impl RunningNode {
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
        let _ = self.http_stop.send(true);
        let abort = self.http.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), self.http)
            .await
            .is_err()
        {
            tracing::warn!("HTTP requests still running after 10 s; dropping them");
            abort.abort();
        }
        self.raft.shutdown().await;
        self.transport.shutdown().await;
        self.forwarder.abort();
        if let Err(e) = self.log_db.flush_wal(true) {
            tracing::warn!(error = %e, "flushing the store at shutdown failed");
        }
        tracing::info!("node stopped");
    }
}
