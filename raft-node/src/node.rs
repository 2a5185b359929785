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
use raft_net_quic::{forward_snapshots, FileSnapshotSink, NodeTls, QuicConfig, QuicTransport};
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
/// Set once a node started with `--join` was added to a cluster.
const JOINED_KEY: &[u8] = b"joined";
const WINDOW_KEY: &[u8] = b"idempotency_window";
/// The voters the cluster was created with (`--initial-cluster`), written
/// once at creation: the configuration of a log that holds none yet.
const INITIAL_VOTERS_KEY: &[u8] = b"initial_voters";

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
    background: Vec<JoinHandle<()>>,
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

/// A JSON value of this node's own metadata (`what` names it in errors).
fn load_meta<T: serde::de::DeserializeOwned>(
    db: &rocksdb::DB,
    key: &[u8],
    what: &str,
) -> anyhow::Result<Option<T>> {
    let cf = db
        .cf_handle(NODE_META_CF)
        .context("node_meta column family missing")?;
    match db.get_cf(&cf, key)? {
        None => Ok(None),
        Some(v) => {
            Ok(Some(serde_json::from_slice(&v).with_context(|| {
                format!("the stored {what} are corrupted")
            })?))
        }
    }
}

/// Writes a JSON value of this node's own metadata, synced.
fn save_meta<T: serde::Serialize + ?Sized>(
    db: &rocksdb::DB,
    key: &[u8],
    value: &T,
) -> anyhow::Result<()> {
    let cf = db
        .cf_handle(NODE_META_CF)
        .context("node_meta column family missing")?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(&cf, key, serde_json::to_vec(value)?, &opts)?;
    Ok(())
}

fn load_members(db: &rocksdb::DB) -> anyhow::Result<Option<Vec<Member>>> {
    load_meta(db, MEMBERS_KEY, "member addresses")
}

fn save_members(db: &rocksdb::DB, members: &[Member]) -> anyhow::Result<()> {
    save_meta(db, MEMBERS_KEY, members)
}

fn load_initial_voters(db: &rocksdb::DB) -> anyhow::Result<Option<Vec<NodeId>>> {
    load_meta(db, INITIAL_VOTERS_KEY, "initial voters")
}

fn save_initial_voters(db: &rocksdb::DB, voters: &[NodeId]) -> anyhow::Result<()> {
    save_meta(db, INITIAL_VOTERS_KEY, voters)
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

/// How long a graceful stop lets running client requests finish.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    for warning in cfg.security_warnings() {
        tracing::warn!("SECURITY: {warning}");
    }
    let tls = NodeTls::from_pem_files(id, &cfg.tls_ca, &cfg.tls_cert, &cfg.tls_key)
        .context("loading the peer TLS identity")?;
    // The store, snapshots and received snapshots are this node's alone.
    crate::snapshot::create_private_dir(&cfg.data_dir)
        .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    let log = RocksLog::open(
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
    .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let db = log.db().clone();

    let joining = load_flag(&db, JOINED_KEY)?.is_none() && cfg.join.is_some();
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
        None if cfg.join.is_some() => {
            if log.last_index() > 0 {
                bail!(
                    "{} has a log but no member addresses: it was not created by raft-node",
                    cfg.data_dir.display()
                );
            }
            tracing::info!(join = ?cfg.join, "new node: joining an existing cluster");
            vec![cfg.advertise.clone()]
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
            // The voter set first: a crash between the two writes leaves a
            // store without addresses, which the next start bootstraps anew.
            let voters: Vec<NodeId> = cfg.initial_cluster.iter().map(|m| m.id).collect();
            save_initial_voters(&db, &voters)?;
            save_members(&db, &cfg.initial_cluster)?;
            tracing::info!(
                members = cfg.initial_cluster.len(),
                "bootstrapping a new cluster"
            );
            cfg.initial_cluster.clone()
        }
    };
    check_idempotency_window(&db, cfg.idempotency_window)?;
    // A node that joined (or is joining) starts with no configuration: it
    // learns it from the leader and never campaigns on its own.
    let joined = load_flag(&db, JOINED_KEY)?.is_some();
    // The configuration of a log without one (an original member whose
    // log holds no configuration entry and no snapshot) is the voter set
    // the cluster was created with. Never the address book: it also holds
    // nodes whose addresses arrived before their `AddLearner` entry, and
    // counting those as voters could elect this node with their votes.
    let bootstrap = if joined || joining {
        Membership::default()
    } else {
        match load_initial_voters(&db)? {
            Some(voters) => Membership::new(voters),
            None => {
                // A store created before the voter set was recorded. The
                // --initial-cluster it is started with, when given, names
                // the voters; otherwise its address book is all there is.
                // Record the set now, so that addresses learned from here
                // on cannot change it.
                let voters: Vec<NodeId> = if cfg.initial_cluster.is_empty() {
                    members.iter().map(|m| m.id).collect()
                } else {
                    cfg.initial_cluster.iter().map(|m| m.id).collect()
                };
                tracing::warn!(
                    ?voters,
                    "this store does not record the cluster's initial voters (created by an \
                     older raft-node); taking them from its member addresses once"
                );
                save_initial_voters(&db, &voters)?;
                Membership::new(voters)
            }
        }
    };

    let sm = KvStateMachine::new(db.clone(), cfg.idempotency_window)?
        .with_snapshot_dir(cfg.data_dir.join("snapshots"))?;
    let reader = sm.reader();
    let mut members_changed = sm.members_changed();
    // Addresses replicated through the log win over the ones stored here.
    let mut members = members;
    for m in reader.members()? {
        match members.iter_mut().find(|x| x.id == m.id) {
            Some(x) => *x = m,
            None => members.push(m),
        }
    }

    let election_timeout = cfg.tick * cfg.election_ticks as u32;
    let quic = QuicConfig {
        snapshot_bytes_max: cfg.max_snapshot_receive_bytes,
        connections_per_peer_max: cfg.max_connections_per_peer,
        retry_handshakes_threshold: cfg.peer_retry_after_handshakes,
        handshakes_per_ip_max: cfg.peer_handshakes_per_ip,
        connections_reserved_for_peers: cfg.peer_reserved_connections,
        ..QuicConfig::for_election_timeout(election_timeout)
    };
    let max_frame = quic.max_frame_bytes;
    let incoming = cfg.data_dir.join("incoming");
    crate::snapshot::create_private_dir(&incoming)
        .with_context(|| format!("creating {}", incoming.display()))?;
    // Partial and undelivered snapshots of an earlier run are deleted here.
    let (sink, received_snapshots) =
        FileSnapshotSink::new(incoming, 2).context("creating the snapshot receive directory")?;
    let mut builder = QuicTransport::builder(id, tls)
        .config(quic)
        .snapshot_sink(Arc::new(sink));
    if let Some(crl) = &cfg.tls_crl {
        builder = builder.crl_file(crl);
    }
    let (transport, mut inbound) = builder
        .bind(cfg.peer_listen)
        .with_context(|| format!("binding the peer address {}", cfg.peer_listen))?;
    for m in &members {
        if m.id != id {
            transport.add_peer(m.id, m.peer_addr);
        }
    }
    let mut config = Config::new(id);
    config.election_timeout_ticks = cfg.election_ticks;
    config.heartbeat_interval_ticks = cfg.heartbeat_ticks;
    config.lease_ticks = (cfg.election_ticks * 7 / 10)
        .min(cfg.election_ticks.saturating_sub(2))
        .max(1);
    config.seed = rand::random();
    config.snapshot_threshold_entries = cfg.snapshot_entries;
    config.snapshot_threshold_bytes = cfg.snapshot_bytes;
    config.snapshot_keep_entries = cfg.snapshot_keep_entries;
    config.max_promotion_lag = cfg.max_promotion_lag;
    config.max_log_cache_bytes = cfg.log_cache_bytes;
    config.max_uncommitted_bytes = cfg.max_uncommitted_bytes;
    let driver = DriverConfig {
        tick_interval: cfg.tick,
        request_timeout: cfg.request_timeout,
        max_unapplied_bytes: cfg.max_unapplied_bytes,
        ..DriverConfig::default()
    };
    let raft = raft_core::Raft::start(config, driver, bootstrap, log, sm, transport.clone())
        .await
        .context("starting Raft")?;
    let h = raft.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(m) = inbound.recv().await {
            let _ = h.receive(m);
        }
    });
    let mut background = vec![tokio::spawn(forward_snapshots(
        received_snapshots,
        raft.clone(),
        max_frame,
    ))];

    let listener = tokio::net::TcpListener::bind(cfg.client_listen)
        .await
        .with_context(|| format!("binding the client address {}", cfg.client_listen))?;
    let client_addr = listener.local_addr()?;
    let peer_addr = transport.local_addr()?;
    let member_map = Arc::new(RwLock::new(
        members
            .into_iter()
            .map(|m| (m.id, m))
            .collect::<HashMap<_, _>>(),
    ));
    // Say in the log when a log write runs past --storage-stall-timeout-ms
    // and when it returns: a write that hangs records no duration anywhere
    // else, and a restart by a liveness probe should leave a reason.
    if let Some(limit) = cfg.storage_stall_timeout {
        let raft = raft.clone();
        background.push(tokio::spawn(async move {
            let mut stalled = false;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let busy = raft.storage_busy_for();
                match (stalled, busy) {
                    (false, Some(b)) if b > limit => {
                        stalled = true;
                        tracing::warn!(
                            busy_seconds = b.as_secs_f64(),
                            "a log write is still running: the disk is not answering; \
                             /healthz and /readyz answer 503 until it returns"
                        );
                    }
                    (true, b) if b.is_none_or(|b| b <= limit) => {
                        stalled = false;
                        tracing::info!("the stalled log write returned; storage answers again");
                    }
                    _ => {}
                }
            }
        }));
    }
    // Follow the member addresses the log replicates: peers to dial, leaders
    // to forward to, and what a restart starts from.
    {
        let reader = reader.clone();
        let transport = transport.clone();
        let member_map = member_map.clone();
        let db = db.clone();
        background.push(tokio::spawn(async move {
            while members_changed.changed().await.is_ok() {
                let Ok(replicated) = reader.members() else {
                    continue;
                };
                let all = {
                    let Ok(mut map) = member_map.write() else {
                        break;
                    };
                    for m in replicated {
                        if m.id != id && map.get(&m.id) != Some(&m) {
                            tracing::info!(peer = m.id, addr = %m.peer_addr, "member address learned");
                            transport.add_peer(m.id, m.peer_addr);
                        }
                        map.insert(m.id, m);
                    }
                    let mut all: Vec<Member> = map.values().cloned().collect();
                    all.sort_by_key(|m| m.id);
                    all
                };
                if let Err(e) = save_members(&db, &all) {
                    tracing::warn!(error = %e, "saving member addresses failed");
                }
            }
        }));
    }
    // Follow the configuration: only its members, and nodes whose addresses
    // were recorded to be added, may connect and send; a node removed by a
    // committed configuration loses its peer entry, its connections and
    // its address record here (the replicated record is deleted when the
    // configuration is applied).
    {
        let raft = raft.clone();
        let reader = reader.clone();
        let transport = transport.clone();
        let member_map = member_map.clone();
        let db = db.clone();
        let mut admission = crate::admission::JoinAdmission::new(cfg.join_admission);
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(MEMBERSHIP_POLL);
            let mut last = None;
            loop {
                tick.tick().await;
                let Some(s) = raft.status().await else { break };
                let Ok(recorded) = reader.members() else {
                    continue;
                };
                let config = s.engine.membership.members();
                let expired = admission.expired(
                    &config,
                    recorded.iter().map(|m| m.id),
                    std::time::Instant::now(),
                );
                let seen = (
                    config.clone(),
                    s.engine.membership_committed,
                    recorded.clone(),
                    s.engine.leader,
                    expired.clone(),
                );
                if last.as_ref() == Some(&seen) {
                    continue;
                }
                last = Some(seen);
                follow_membership(
                    id,
                    &config,
                    s.engine.leader,
                    s.engine.membership_committed,
                    &recorded,
                    &expired,
                    &transport,
                    &member_map,
                    &db,
                );
            }
        }));
    }
    let state = Arc::new(AppState {
        id,
        raft: raft.clone(),
        reader: reader.clone(),
        cfg: cfg.clone(),
        members: member_map.clone(),
        client: crate::client_tls::forwarding_client(&cfg)
            .context("building the forwarding client")?,
        metrics,
        limits: Arc::new(crate::http::HttpLimits::new(&cfg)),
    });
    let (http_stop, stop_rx) = watch::channel(false);
    let app = router(state);
    let tls = if cfg.client_tls {
        let config = crate::client_tls::server_config(&cfg).context("configuring HTTPS")?;
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
    let http = tokio::spawn(crate::server::serve(listener, app, tls, limits, stop_rx));
    tracing::info!(id, %client_addr, %peer_addr, https = cfg.client_tls, "node started");
    if joining {
        if let Err(e) = join(&cfg, &transport, &member_map, &db).await {
            let _ = http_stop.send(true);
            raft.shutdown().await;
            transport.shutdown().await;
            return Err(e);
        }
    }
    Ok(RunningNode {
        raft,
        reader,
        client_addr,
        peer_addr,
        transport,
        http_stop,
        http,
        forwarder,
        background,
        log_db: db,
    })
}

/// How often the configuration in force is checked for changes.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(200);

/// Applies the configuration in force (`config`, whether `committed`) and
/// the replicated address records to the transport and the address book.
#[allow(clippy::too_many_arguments)]
fn follow_membership(
    id: NodeId,
    config: &std::collections::BTreeSet<NodeId>,
    leader: Option<NodeId>,
    committed: bool,
    recorded: &[Member],
    expired: &std::collections::BTreeSet<NodeId>,
    transport: &QuicTransport,
    member_map: &RwLock<HashMap<NodeId, Member>>,
    db: &rocksdb::DB,
) {
    if config.is_empty() || !config.contains(&id) {
        // A joining node that has not yet applied the configuration adding
        // it: what it holds (an old snapshot's, or an entry replayed on the
        // way) may predate the leader that is bringing it up, so it narrows
        // nothing; its peer table (the members it joined through) decides.
        transport.set_allowed_peers(None);
        return;
    }
    let Ok(mut map) = member_map.write() else {
        return;
    };
    // While the configuration is not committed it may still be undone, and
    // the nodes of the one before still count (an original member removed
    // by it has no address record): everyone in the address book stays.
    let keep_known = if committed {
        Vec::new()
    } else {
        map.keys().copied().collect()
    };
    // The leader this node follows is never cut off: its configuration
    // may be newer than what this node has applied. A recorded node not in
    // the configuration past `--join-admission-secs` (a failed join) is
    // no longer let in; its record and address stay for a later join.
    let allowed: std::collections::HashSet<NodeId> = config
        .iter()
        .copied()
        .chain(
            recorded
                .iter()
                .map(|m| m.id)
                .filter(|p| !expired.contains(p)),
        )
        .chain(keep_known)
        .chain(leader)
        .filter(|p| *p != id)
        .collect();
    transport.set_allowed_peers(Some(allowed.clone()));
    let mut changed = false;
    if committed {
        // Removed for good: no configuration holds it and its address
        // record is gone. (Before the commit the removal may still be
        // undone, and the address would be needed again.)
        let gone: Vec<NodeId> = map
            .keys()
            .copied()
            .chain(transport.peers().into_iter().map(|(p, _)| p))
            .filter(|p| *p != id && !allowed.contains(p) && !expired.contains(p))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for p in gone {
            tracing::info!(
                peer = p,
                "member removed: dropping its address and connections"
            );
            transport.remove_peer(p);
            changed |= map.remove(&p).is_some();
        }
    }
    // A member the transport lost (a removal that was undone): dial it again.
    let known: std::collections::HashSet<NodeId> =
        transport.peers().into_iter().map(|(p, _)| p).collect();
    for p in config {
        if *p != id && !known.contains(p) {
            if let Some(m) = map.get(p) {
                transport.add_peer(*p, m.peer_addr);
            }
        }
    }
    if changed {
        let mut all: Vec<Member> = map.values().cloned().collect();
        all.sort_by_key(|m| m.id);
        if let Err(e) = save_members(db, &all) {
            tracing::warn!(error = %e, "saving member addresses failed");
        }
    }
}

fn load_flag(db: &rocksdb::DB, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let cf = db
        .cf_handle(NODE_META_CF)
        .context("node_meta column family missing")?;
    Ok(db.get_cf(&cf, key)?)
}

/// Asks the cluster behind `--join` to add this node as a learner, retrying
/// for up to a minute, then records the members it learned.
async fn join(
    cfg: &NodeConfig,
    transport: &QuicTransport,
    members: &Arc<RwLock<HashMap<NodeId, Member>>>,
    db: &rocksdb::DB,
) -> anyhow::Result<()> {
    let base = cfg
        .join
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let url = format!("{base}/v1/cluster/learners");
    let client = crate::client_tls::forwarding_client(cfg).context("building the join client")?;
    let body = serde_json::json!({
        "id": cfg.id,
        "peer_addr": cfg.advertise.peer_addr,
        "client_addr": cfg.advertise.client_addr,
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut attempt = 0u32;
    let reply: serde_json::Value = loop {
        attempt += 1;
        let mut req = client.post(&url).json(&body);
        if let Some(t) = cfg.admin_token.as_ref().or(cfg.auth_token.as_ref()) {
            req = req.bearer_auth(t);
        }
        let outcome = match req.send().await {
            Ok(resp) if resp.status().is_success() => match resp.json().await {
                Ok(v) => break v,
                Err(e) => format!("unreadable answer: {e}"),
            },
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status.is_client_error() && status != reqwest::StatusCode::CONFLICT {
                    bail!("joining through {url} was refused ({status}): {text}");
                }
                format!("{status}: {text}")
            }
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("could not join through {url} within 60 s; last error: {outcome}");
        }
        tracing::info!(attempt, error = %outcome, "join not accepted yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let learned: Vec<Member> = serde_json::from_value(reply["members"].clone())
        .context("the join answer lists no members")?;
    let all = {
        let mut map = members
            .write()
            .map_err(|_| anyhow::anyhow!("member table poisoned"))?;
        for m in learned {
            if m.id != cfg.id {
                transport.add_peer(m.id, m.peer_addr);
            }
            map.insert(m.id, m);
        }
        let mut all: Vec<Member> = map.values().cloned().collect();
        all.sort_by_key(|m| m.id);
        all
    };
    save_members(db, &all)?;
    let cf = db
        .cf_handle(NODE_META_CF)
        .context("node_meta column family missing")?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(&cf, JOINED_KEY, b"1", &opts)?;
    tracing::info!(
        members = all.len(),
        "joined the cluster as a learner; catching up"
    );
    Ok(())
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
        // The server lets running requests finish for HTTP_SHUTDOWN_GRACE,
        // then drops them.
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
