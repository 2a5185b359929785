//! From the settings as given to a [`NodeConfig`]: defaults, this node's
//! advertised addresses, and the checks that name a bad setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use raft_core::NodeId;
use raft_net_quic::PeerAddr;

use super::identity::{hostname, resolve_id, substitute_id};
use super::security::read_token;
use super::{ConfigError, Member, NodeConfig, RunArgs, ENTRY_BYTES_MAX};

/// Ceiling of `--max-keys-per-lease`.
const MAX_KEYS_PER_LEASE_CEILING: u64 = 1_000_000;
/// Ceiling of `--lease-revokes-per-second`.
const LEASE_REVOKES_PER_SECOND_CEILING: u64 = 100_000;
/// Ceiling of `--max-leases`.
const MAX_LEASES_CEILING: u64 = 10_000_000;

impl RunArgs {
    /// Applies the defaults and checks the result.
    pub(super) fn finish(self) -> Result<NodeConfig, ConfigError> {
        let id = resolve_id(self.id, self.id_from_hostname.unwrap_or(false), hostname)?;
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => Vec::new(),
        };
        let advertise = self.advertise(id, &initial_cluster)?;
        let cfg = self.into_config(id, initial_cluster, advertise)?;
        check_access(&cfg)?;
        check_timing(&cfg)?;
        check_limits(&cfg)?;
        Ok(cfg)
    }

    /// This node's addresses as others reach it: the flags, else its
    /// `--initial-cluster` entry, else the listen addresses; never an
    /// unspecified address.
    fn advertise(&self, id: NodeId, initial_cluster: &[Member]) -> Result<Member, ConfigError> {
        let (client_listen, peer_listen) = self.listen_addrs();
        let listed = initial_cluster.iter().find(|m| m.id == id);
        let advertise = Member {
            id,
            peer_addr: self
                .peer_advertise
                .clone()
                .or(listed.map(|m| m.peer_addr.clone()))
                .unwrap_or(peer_listen.into()),
            client_addr: self
                .client_advertise
                .clone()
                .or(listed.map(|m| m.client_addr.clone()))
                .unwrap_or_else(|| client_listen.to_string()),
            grpc_url: None,
        };
        check_client_addr(&advertise.client_addr)
            .map_err(|e| ConfigError(format!("--client-advertise: {e}")))?;
        let advertise = Member {
            grpc_url: self.grpc_url(&advertise.client_addr)?,
            ..advertise
        };
        if let Some(m) = listed {
            let same = m.client_addr == advertise.client_addr
                && same_place(&m.peer_addr, &advertise.peer_addr);
            if !same {
                return Err(ConfigError(format!(
                    "--initial-cluster lists this node at {}/{} but it advertises {}/{}",
                    m.peer_addr, m.client_addr, advertise.peer_addr, advertise.client_addr
                )));
            }
        }
        if advertise.peer_addr.is_unspecified() {
            return Err(ConfigError(
                "listening on an unspecified address: give --peer-advertise (or list this node in --initial-cluster)".into(),
            ));
        }
        if advertise.client_addr.starts_with("0.0.0.0:")
            || advertise.client_addr.starts_with("[::]:")
        {
            return Err(ConfigError(
                "listening on an unspecified address: give --client-advertise (or list this node in --initial-cluster)".into(),
            ));
        }
        Ok(advertise)
    }

    /// This node's gRPC URL as the others list it: `--grpc-advertise`, else
    /// derived from `--grpc-listen` (see [`grpc_url_of`]); none without
    /// `--grpc-listen`, or when it names port 0 (the node derives it once
    /// bound).
    fn grpc_url(&self, client_addr: &str) -> Result<Option<String>, ConfigError> {
        let scheme = grpc_scheme(self.client_tls.unwrap_or(false));
        match (self.grpc_listen, &self.grpc_advertise) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(ConfigError(
                "--grpc-advertise needs --grpc-listen (the gRPC API is off)".into(),
            )),
            (Some(_), Some(a)) => {
                check_client_addr(a).map_err(|e| {
                    ConfigError(format!(
                        "--grpc-advertise: {}",
                        e.replacen("client", "gRPC", 1)
                    ))
                })?;
                if a.starts_with("0.0.0.0:") || a.starts_with("[::]:") {
                    return Err(ConfigError(
                        "--grpc-advertise is an unspecified address, which no client can dial"
                            .into(),
                    ));
                }
                Ok(Some(format!("{scheme}://{a}")))
            }
            (Some(listen), None) if listen.port() == 0 => Ok(None),
            (Some(listen), None) => Ok(Some(grpc_url_of(
                self.client_tls.unwrap_or(false),
                listen,
                client_addr,
            ))),
        }
    }

    /// The client and peer listen addresses: the flags, else
    /// `127.0.0.1:8080` and `127.0.0.1:7000`.
    fn listen_addrs(&self) -> (SocketAddr, SocketAddr) {
        let client = self
            .client_listen
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal"));
        let peer = self
            .peer_listen
            .unwrap_or_else(|| "127.0.0.1:7000".parse().expect("literal"));
        (client, peer)
    }

    /// The data directory: `--data-dir` with `{id}` replaced, else
    /// `data/node-<id>`.
    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir.as_ref().map_or_else(
            || PathBuf::from(format!("data/node-{id}")),
            |d| substitute_id(d, id),
        )
    }

    /// The peer TLS files (CA, certificate, key), all required; `{id}` in
    /// the certificate's and the key's path replaced.
    fn tls_files(&self, id: NodeId) -> Result<(PathBuf, PathBuf, PathBuf), ConfigError> {
        let required = |v: &Option<PathBuf>, flag: &str, env: &str| {
            v.clone().ok_or_else(|| {
                ConfigError(format!(
                    "{flag} ({env}) is required (see `raft-node certs`)"
                ))
            })
        };
        let ca = required(&self.tls_ca, "--tls-ca", "RAFT_TLS_CA")?;
        let cert = required(&self.tls_cert, "--tls-cert", "RAFT_TLS_CERT")?;
        let key = required(&self.tls_key, "--tls-key", "RAFT_TLS_KEY")?;
        Ok((ca, substitute_id(&cert, id), substitute_id(&key, id)))
    }

    /// The watch limits with their defaults.
    fn watch_config(&self) -> crate::watch::WatchConfig {
        crate::watch::WatchConfig {
            max_watchers: self.watch_max_watchers.unwrap_or(10_000),
            buffer: self.watch_buffer_batches.unwrap_or(1024),
            replay_page: self.watch_replay_page.unwrap_or(1000),
            replay_page_bytes: self.watch_replay_page_bytes.unwrap_or(4 << 20),
            max_replays: self.watch_max_replays.unwrap_or(4),
            buffer_bytes: self.watch_buffer_bytes.unwrap_or(64 << 20),
            queue: self.watch_queue.unwrap_or(16),
            progress_interval: ms_or_off(self.watch_progress_interval_ms, 5000),
        }
    }

    /// The settings with their defaults, file sizes in bytes and tokens
    /// read.
    fn into_config(
        self,
        id: NodeId,
        initial_cluster: Vec<Member>,
        advertise: Member,
    ) -> Result<NodeConfig, ConfigError> {
        let (client_listen, peer_listen) = self.listen_addrs();
        let (tls_ca, tls_cert, tls_key) = self.tls_files(id)?;
        Ok(NodeConfig {
            advertise,
            id,
            data_dir: self.data_dir(id),
            client_listen,
            peer_listen,
            initial_cluster,
            initial_cluster_token: self
                .initial_cluster_token
                .clone()
                .unwrap_or_else(|| crate::node::cluster_id::DEFAULT_TOKEN.to_owned()),
            tls_ca,
            tls_cert,
            tls_key,
            tick: Duration::from_millis(self.tick_ms.unwrap_or(50)),
            election_ticks: self.election_ticks.unwrap_or(20),
            heartbeat_ticks: self.heartbeat_ticks.unwrap_or(2),
            request_timeout: Duration::from_millis(self.request_timeout_ms.unwrap_or(5000)),
            failure_exit_delay: Duration::from_millis(self.failure_exit_delay_ms.unwrap_or(1000)),
            storage_stall_timeout: ms_or_off(self.storage_stall_timeout_ms, 10_000),
            metrics_sample_interval: ms(self.metrics_sample_interval_ms, 5000),
            max_key_bytes: self.max_key_bytes.unwrap_or(1024),
            max_value_bytes: self.max_value_bytes.unwrap_or(1 << 20),
            max_concurrent_requests: self.max_concurrent_requests.unwrap_or(1024),
            max_list_limit: self.max_list_limit.unwrap_or(1000),
            max_list_bytes: self.max_list_bytes.unwrap_or(8 << 20),
            max_txn_ops: self.max_txn_ops.unwrap_or(128),
            max_txn_range_keys: self.max_txn_range_keys.unwrap_or(10_000),
            max_leases: self.max_leases.unwrap_or(100_000),
            max_keys_per_lease: self.max_keys_per_lease.unwrap_or(10_000),
            lease_revokes_per_second: self.lease_revokes_per_second.unwrap_or(1000),
            http_max_connections: self.http_max_connections.unwrap_or(4096),
            http_header_timeout: ms(self.http_header_timeout_ms, 10_000),
            http_idle_timeout: ms(self.http_idle_timeout_ms, 60_000),
            http_body_timeout: ms(self.http_body_timeout_ms, 30_000),
            http_request_deadline: ms(self.http_request_deadline_ms, 30_000),
            http_tls_handshake_timeout: ms(self.http_tls_handshake_timeout_ms, 5_000),
            http_send_timeout: ms(self.http_send_timeout_ms, 30_000),
            http_max_header_bytes: self.http_max_header_bytes.unwrap_or(64 << 10),
            http_max_receiving_bodies: self.http_max_receiving_bodies.unwrap_or(1024),
            http_buffer_bytes: mib_bytes("--http-buffer-mib", self.http_buffer_mib, 128)?,
            max_concurrent_listings: self.max_concurrent_listings.unwrap_or(8),
            max_concurrent_backups: self.max_concurrent_backups.unwrap_or(2),
            backup_max_duration: ms(self.backup_max_duration_ms, 3_600_000),
            idempotency_window: self.idempotency_window.unwrap_or(100_000),
            history_retention: self.history_retention.unwrap_or(100_000),
            watch: self.watch_config(),
            snapshot_entries: self.snapshot_entries.unwrap_or(100_000),
            snapshot_bytes: self.snapshot_mib.unwrap_or(256).saturating_mul(1 << 20),
            snapshot_keep_entries: self.snapshot_keep_entries.unwrap_or(5_000),
            max_promotion_lag: self.max_promotion_lag.unwrap_or(1_000),
            log_cache_bytes: mib_bytes_or_zero("--log-cache-mib", self.log_cache_mib, 64)?,
            max_uncommitted_bytes: mib_bytes("--max-uncommitted-mib", self.max_uncommitted_mib, 64)?
                as u64,
            max_unapplied_bytes: mib_bytes("--max-unapplied-mib", self.max_unapplied_mib, 64)?
                as u64,
            write_buffer_bytes: mib_bytes("--write-buffer-mib", self.write_buffer_mib, 16)?,
            block_cache_bytes: mib_bytes("--block-cache-mib", self.block_cache_mib, 64)?,
            join: self.join,
            log_format: self.log_format.unwrap_or_default(),
            unsafe_no_fsync: self.unsafe_no_fsync.unwrap_or(false),
            auth_token: read_token_file(&self.auth_token_file)?,
            admin_token: read_token_file(&self.admin_token_file)?,
            client_tls: self.client_tls.unwrap_or(false),
            client_ca: self.client_ca,
            insecure: self.insecure.unwrap_or(false),
            tls_crl: self.tls_crl,
            max_snapshot_receive_bytes: self
                .max_snapshot_receive_mib
                .unwrap_or(4096)
                .saturating_mul(1 << 20),
            max_connections_per_peer: self.max_connections_per_peer.unwrap_or(4),
            peer_retry_after_handshakes: self.peer_retry_after_handshakes.unwrap_or(32),
            peer_handshakes_per_ip: self.peer_handshakes_per_ip.unwrap_or(8),
            peer_reserved_connections: self.peer_reserved_connections.unwrap_or(16),
            join_admission: Duration::from_secs(self.join_admission_secs.unwrap_or(300)),
            grpc_listen: self.grpc_listen,
            grpc_max_request_bytes: self.grpc_max_request_bytes.unwrap_or(1_572_864),
            grpc_max_concurrent_streams: self.grpc_max_concurrent_streams.unwrap_or(128),
            grpc_max_connections: self.grpc_max_connections.unwrap_or(1024),
            grpc_max_watches_per_stream: self.grpc_max_watches_per_stream.unwrap_or(1000),
            grpc_keepalive: ms(self.grpc_keepalive_ms, 60_000),
            grpc_snapshot_send_timeout: ms(self.grpc_snapshot_send_timeout_ms, 60_000),
            grpc_url_check_interval: ms(self.grpc_url_check_interval_ms, 60_000),
            grpc_auth_failures_per_sec: self.grpc_auth_failures_per_sec.unwrap_or(10),
        })
    }
}

/// `--join`, the peer limits, and who may reach the API.
fn check_access(cfg: &NodeConfig) -> Result<(), ConfigError> {
    if let Some(url) = &cfg.join {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "--join must be an http:// or https:// URL of a member, got {url:?}"
            )));
        }
        if !cfg.initial_cluster.is_empty() {
            return Err(ConfigError(
                "--join and --initial-cluster exclude each other: a new cluster is \
                 bootstrapped with --initial-cluster, a node joins an existing one with --join"
                    .into(),
            ));
        }
    }
    if cfg.max_snapshot_receive_bytes == 0 {
        return Err(ConfigError(
            "--max-snapshot-receive-mib must be positive".into(),
        ));
    }
    if cfg.peer_reserved_connections >= 256 {
        return Err(ConfigError(
            "--peer-reserved-connections must be below 256 (the connection limit)".into(),
        ));
    }
    if cfg.join_admission.is_zero() {
        return Err(ConfigError("--join-admission-secs must be positive".into()));
    }
    if cfg.max_connections_per_peer > 256 {
        return Err(ConfigError(
            "--max-connections-per-peer must be at most 256 (the connection limit)".into(),
        ));
    }
    check_grpc(cfg)?;
    if cfg.client_ca.is_some() && !cfg.client_tls {
        return Err(ConfigError("--client-ca needs --client-tls".into()));
    }
    if !cfg.client_listen.ip().is_loopback() && !cfg.api_authenticated() && !cfg.insecure {
        return Err(ConfigError(format!(
            "--client-listen {} is reachable beyond this machine but the API has no \
            authentication: give --auth-token-file (and --client-tls, so tokens do not \
            travel in clear) or --client-tls with --client-ca, or pass --insecure to serve \
            it open anyway",
            cfg.client_listen
        )));
    }
    Ok(())
}

/// The etcd gRPC API's limits, and that it listens no more openly than the
/// HTTP API: beyond loopback only with authentication (or `--insecure`).
fn check_grpc(cfg: &NodeConfig) -> Result<(), ConfigError> {
    if cfg.grpc_url_check_interval < Duration::from_secs(1) {
        // Each check is a forwarded request and a read barrier on the
        // leader.
        return Err(ConfigError(
            "--grpc-url-check-interval-ms must be at least 1000".into(),
        ));
    }
    if !(1024..=64 << 20).contains(&cfg.grpc_max_request_bytes) {
        return Err(ConfigError(
            "--grpc-max-request-bytes must be between 1024 and 67108864".into(),
        ));
    }
    if cfg.grpc_max_concurrent_streams == 0
        || cfg.grpc_max_connections == 0
        || cfg.grpc_max_watches_per_stream == 0
        || cfg.grpc_snapshot_send_timeout.is_zero()
        || cfg.grpc_auth_failures_per_sec == 0
    {
        return Err(ConfigError(
            "--grpc-max-concurrent-streams, --grpc-max-connections, \
             --grpc-max-watches-per-stream, --grpc-snapshot-send-timeout-ms and \
             --grpc-auth-failures-per-sec must be positive"
                .into(),
        ));
    }
    if let Some(addr) = cfg.grpc_listen {
        if !addr.ip().is_loopback() && !cfg.api_authenticated() && !cfg.insecure {
            return Err(ConfigError(format!(
                "--grpc-listen {addr} is reachable beyond this machine but the API has no \
                authentication: give --auth-token-file (and --client-tls) or --client-tls \
                with --client-ca, or pass --insecure to serve it open anyway"
            )));
        }
    }
    Ok(())
}

/// Ticks, timeouts and deadlines.
fn check_timing(cfg: &NodeConfig) -> Result<(), ConfigError> {
    if cfg.tick.is_zero() || cfg.tick > Duration::from_secs(60) {
        return Err(ConfigError("--tick-ms must be between 1 and 60000".into()));
    }
    if cfg.election_ticks > 100_000 {
        return Err(ConfigError(
            "--election-ticks must be at most 100000".into(),
        ));
    }
    if cfg.request_timeout.is_zero() || cfg.request_timeout > Duration::from_secs(3600) {
        return Err(ConfigError(
            "--request-timeout-ms must be between 1 and 3600000".into(),
        ));
    }
    if cfg
        .storage_stall_timeout
        .is_some_and(|t| t < Duration::from_millis(100))
    {
        return Err(ConfigError(
            "--storage-stall-timeout-ms must be 0 (off) or at least 100: a healthy fsync \
             can take tens of milliseconds"
                .into(),
        ));
    }
    if cfg.metrics_sample_interval < Duration::from_millis(100)
        || cfg.metrics_sample_interval > Duration::from_secs(3600)
    {
        return Err(ConfigError(
            "--metrics-sample-interval-ms must be between 100 and 3600000".into(),
        ));
    }
    if cfg.failure_exit_delay > Duration::from_secs(600) {
        return Err(ConfigError(
            "--failure-exit-delay-ms must be at most 600000".into(),
        ));
    }
    for (name, value) in [
        ("--http-header-timeout-ms", cfg.http_header_timeout),
        ("--http-idle-timeout-ms", cfg.http_idle_timeout),
        ("--http-body-timeout-ms", cfg.http_body_timeout),
        ("--http-request-deadline-ms", cfg.http_request_deadline),
        (
            "--http-tls-handshake-timeout-ms",
            cfg.http_tls_handshake_timeout,
        ),
    ] {
        if value < Duration::from_millis(100) || value > Duration::from_secs(3600) {
            return Err(ConfigError(format!(
                "{name} must be between 100 and 3600000"
            )));
        }
    }
    Ok(())
}

/// Sizes and counts.
fn check_limits(cfg: &NodeConfig) -> Result<(), ConfigError> {
    if cfg.http_max_connections == 0 || cfg.http_max_connections > 1_000_000 {
        return Err(ConfigError(
            "--http-max-connections must be between 1 and 1000000".into(),
        ));
    }
    if cfg.max_concurrent_requests == 0 {
        return Err(ConfigError(
            "--max-concurrent-requests must be at least 1".into(),
        ));
    }
    if cfg.max_list_bytes < 1024 {
        return Err(ConfigError("--max-list-bytes must be at least 1024".into()));
    }
    if cfg.max_key_bytes.saturating_add(cfg.max_value_bytes) > ENTRY_BYTES_MAX {
        return Err(ConfigError(format!(
            "--max-key-bytes plus --max-value-bytes must be at most {ENTRY_BYTES_MAX} bytes: \
             one entry must fit in a peer transport frame"
        )));
    }
    if cfg.heartbeat_ticks == 0 || cfg.election_ticks <= cfg.heartbeat_ticks {
        return Err(ConfigError(
            "--election-ticks must exceed --heartbeat-ticks, which must be positive".into(),
        ));
    }
    for (name, v) in [
        ("--max-key-bytes", cfg.max_key_bytes),
        ("--max-value-bytes", cfg.max_value_bytes),
        ("--max-concurrent-requests", cfg.max_concurrent_requests),
        ("--max-concurrent-backups", cfg.max_concurrent_backups),
        (
            "--backup-max-duration-ms",
            usize::from(!cfg.backup_max_duration.is_zero()),
        ),
        ("--max-list-limit", cfg.max_list_limit),
        ("--max-txn-ops", cfg.max_txn_ops),
        ("--max-txn-range-keys", cfg.max_txn_range_keys as usize),
        ("--max-leases", usize::from(cfg.max_leases != 0)),
        ("--max-keys-per-lease", cfg.max_keys_per_lease as usize),
        (
            "--lease-revokes-per-second",
            cfg.lease_revokes_per_second as usize,
        ),
        ("--max-connections-per-peer", cfg.max_connections_per_peer),
        ("--peer-handshakes-per-ip", cfg.peer_handshakes_per_ip),
        ("--watch-max-watchers", cfg.watch.max_watchers),
        ("--watch-buffer-batches", cfg.watch.buffer),
        ("--watch-replay-page", cfg.watch.replay_page),
        ("--watch-replay-page-bytes", cfg.watch.replay_page_bytes),
        ("--watch-max-replays", cfg.watch.max_replays),
        ("--watch-buffer-bytes", cfg.watch.buffer_bytes),
        ("--watch-queue", cfg.watch.queue),
    ] {
        if v == 0 {
            return Err(ConfigError(format!("{name} must be positive")));
        }
    }
    // A revoke deletes every key of its lease in one entry's apply, and the
    // leader proposes up to the revoke rate each second: past these, one
    // entry could stall every replica. An id-0 grant looks past the ids in
    // use, fewer than `--max-leases`.
    for (name, v, max) in [
        (
            "--max-keys-per-lease",
            u64::from(cfg.max_keys_per_lease),
            MAX_KEYS_PER_LEASE_CEILING,
        ),
        (
            "--lease-revokes-per-second",
            u64::from(cfg.lease_revokes_per_second),
            LEASE_REVOKES_PER_SECOND_CEILING,
        ),
        ("--max-leases", cfg.max_leases, MAX_LEASES_CEILING),
    ] {
        if v > max {
            return Err(ConfigError(format!(
                "{name} must be at most {max}, got {v}"
            )));
        }
    }
    if !cfg.initial_cluster.is_empty() && !cfg.initial_cluster.iter().any(|m| m.id == cfg.id) {
        return Err(ConfigError(format!(
            "--initial-cluster does not list this node ({})",
            cfg.id
        )));
    }
    Ok(())
}

/// A duration in milliseconds, or its default.
fn ms(v: Option<u64>, default_ms: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default_ms))
}

/// A duration in milliseconds where 0 turns the feature off (`None`).
fn ms_or_off(v: Option<u64>, default_ms: u64) -> Option<Duration> {
    match v.unwrap_or(default_ms) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// A size in MiB between 1 and 65536, as bytes.
fn mib_bytes(name: &str, v: Option<u64>, default: u64) -> Result<usize, ConfigError> {
    let mib = v.unwrap_or(default);
    if !(1..=65_536).contains(&mib) {
        return Err(ConfigError(format!("{name} must be between 1 and 65536")));
    }
    usize::try_from(mib << 20).map_err(|_| ConfigError(format!("{name} is too large here")))
}

/// A size in MiB between 0 and 65536, as bytes.
fn mib_bytes_or_zero(name: &str, v: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    let mib = v.unwrap_or(default);
    if mib > 65_536 {
        return Err(ConfigError(format!("{name} must be between 0 and 65536")));
    }
    Ok(mib << 20)
}

/// The gRPC URL of a node listening on `listen`: that address, or the
/// host of `client_addr` with its port when it is unspecified
/// (`0.0.0.0`, `::`).
pub fn grpc_url_of(tls: bool, listen: std::net::SocketAddr, client_addr: &str) -> String {
    let scheme = grpc_scheme(tls);
    if !listen.ip().is_unspecified() {
        return format!("{scheme}://{listen}");
    }
    let host = client_addr
        .rsplit_once(':')
        .map_or(client_addr, |(host, _)| host);
    format!("{scheme}://{host}:{}", listen.port())
}

fn grpc_scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Checks a client address, kept as written: `host:port` as a peer
/// address is written (a host name, an IPv4 address or a bracketed IPv6
/// one, a port from 1 to 65535). It goes into URLs (a follower forwards to
/// `http(s)://CLIENT_ADDR/...`, a 421 names it), where anything else would
/// send the request, and its bearer token, elsewhere (`user@host:port`,
/// `host:port#`) or to port 80 (`host`).
///
/// # Errors
///
/// What is wrong with it.
pub fn check_client_addr(addr: &str) -> Result<(), String> {
    addr.parse::<PeerAddr>()
        .map(|_| ())
        .map_err(|e| e.to_string().replacen("peer address", "client address", 1))
}

/// Whether two peer addresses name the same place: equal, or a name and
/// an IP address the name resolves to now (the one lookup at start: an
/// `--initial-cluster` entry by name with `--peer-advertise` by IP, or the
/// other way round, was accepted when names were resolved at start).
fn same_place(a: &PeerAddr, b: &PeerAddr) -> bool {
    use std::net::ToSocketAddrs;
    if a == b {
        return true;
    }
    let (name, ip) = match (a.ip(), b.socket_addr()) {
        (None, Some(ip)) => (a, ip),
        (Some(_), None) => (b, a.socket_addr().expect("an IP address")),
        _ => return false,
    };
    (name.host().as_str(), name.port())
        .to_socket_addrs()
        .is_ok_and(|mut found| {
            found.any(|f| f.ip().to_canonical() == ip.ip() && f.port() == ip.port())
        })
}

/// Parses `ID=PEER_ADDR/CLIENT_ADDR,…`; a peer address is `ip:port`,
/// `[ipv6]:port` or `name:port`, kept as written (not looked up here).
///
/// # Errors
///
/// [`ConfigError`] naming the bad item.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<Member>, ConfigError> {
    let mut members: Vec<Member> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = |why: &str| {
            ConfigError(format!(
                "--initial-cluster item {item:?}: {why} (expected ID=PEER_ADDR/CLIENT_ADDR)"
            ))
        };
        let (id, addrs) = item.split_once('=').ok_or_else(|| bad("no '='"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| bad("the id is not a number"))?;
        if id == 0 {
            return Err(bad("ids are positive"));
        }
        let (peer, client) = addrs
            .split_once('/')
            .ok_or_else(|| bad("no '/' between the peer and client addresses"))?;
        // Kept as written: a name is looked up at every connection attempt.
        let peer_addr: PeerAddr = peer.trim().parse().map_err(|e| bad(&format!("{e}")))?;
        let client_addr = client.trim().to_owned();
        check_client_addr(&client_addr).map_err(|e| bad(&e))?;
        if members.iter().any(|m| m.id == id) {
            return Err(bad("the id appears twice"));
        }
        members.push(Member {
            id,
            peer_addr,
            client_addr,
            grpc_url: None,
        });
    }
    if members.is_empty() {
        return Err(ConfigError("--initial-cluster lists no member".into()));
    }
    Ok(members)
}

/// The token in `path`'s file, when a path is given.
fn read_token_file(path: &Option<PathBuf>) -> Result<Option<String>, ConfigError> {
    path.as_deref().map(read_token).transpose()
}
