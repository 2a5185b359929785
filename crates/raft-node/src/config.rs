//! Node settings: command-line flags, `RAFT_…` environment variables and a
//! TOML file, in that order of precedence, over documented defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use raft_core::NodeId;
use serde::{Deserialize, Serialize};

/// `raft-node run` settings as given (flags and environment; clap merges
/// those two). Every field is optional here so the TOML file can fill in
/// what neither gave; [`RunArgs::resolve`] applies the defaults.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunArgs {
    /// TOML file with any of these settings (keys as the long flag names,
    /// e.g. `data-dir = "/var/lib/raft"`). Flags and environment win over it.
    #[arg(long, env = "RAFT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// This node's id (a positive integer, unique in the cluster). Required.
    #[arg(long, env = "RAFT_ID")]
    pub id: Option<NodeId>,

    /// Directory of the node's RocksDB store (log and key-value data).
    /// [default: data/node-ID]
    #[arg(long, env = "RAFT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address the HTTP API listens on. [default: 127.0.0.1:8080]
    #[arg(long, env = "RAFT_CLIENT_LISTEN", value_name = "ADDR")]
    pub client_listen: Option<SocketAddr>,

    /// Address the peer transport (QUIC, UDP) listens on. [default: 127.0.0.1:7000]
    #[arg(long, env = "RAFT_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,

    /// The peer address other nodes reach this node at. [default: this
    /// node's `--initial-cluster` entry, else `--peer-listen`]
    #[arg(long, env = "RAFT_PEER_ADVERTISE", value_name = "ADDR")]
    pub peer_advertise: Option<SocketAddr>,

    /// The HTTP address (`host:port`) other nodes forward requests to and
    /// clients are pointed at. [default: this node's `--initial-cluster`
    /// entry, else `--client-listen`]
    #[arg(long, env = "RAFT_CLIENT_ADVERTISE", value_name = "HOST:PORT")]
    pub client_advertise: Option<String>,

    /// The members of a new cluster: `ID=PEER_ADDR/CLIENT_ADDR,…`, e.g.
    /// `1=10.0.0.1:7000/10.0.0.1:8080,2=…`. CLIENT_ADDR is where followers
    /// forward requests to. Used only when the data directory is new; a
    /// restarted node uses what it stored.
    #[arg(long, env = "RAFT_INITIAL_CLUSTER", value_name = "LIST")]
    pub initial_cluster: Option<String>,

    /// PEM file of the cluster CA certificate (peer mutual TLS). Required.
    #[arg(long, env = "RAFT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// PEM file of this node's certificate (it must name `node-<id>.raft`).
    /// Required.
    #[arg(long, env = "RAFT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file of this node's private key. Required.
    #[arg(long, env = "RAFT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Length of one Raft tick in milliseconds. [default: 50]
    #[arg(long, env = "RAFT_TICK_MS")]
    pub tick_ms: Option<u64>,

    /// Election timeout in ticks (randomized between it and twice it).
    /// [default: 20]
    #[arg(long, env = "RAFT_ELECTION_TICKS")]
    pub election_ticks: Option<u64>,

    /// Heartbeat interval in ticks. [default: 2]
    #[arg(long, env = "RAFT_HEARTBEAT_TICKS")]
    pub heartbeat_ticks: Option<u64>,

    /// How long a write or read may wait for Raft before the client gets a
    /// 504 (write outcome unknown) or 503. [default: 5000]
    #[arg(long, env = "RAFT_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,

    /// After its log storage or state machine fails, how long the node keeps
    /// answering `/healthz` (503, naming the failure) before it exits with a
    /// non-zero status, so a load balancer or orchestrator sees it.
    /// [default: 1000]
    #[arg(long, env = "RAFT_FAILURE_EXIT_DELAY_MS")]
    pub failure_exit_delay_ms: Option<u64>,

    /// A log write (an fsync) still running after this long makes
    /// `/healthz` answer 503 `storage-stalled` until it returns: a disk that
    /// hangs acknowledges nothing and never fails. 0 turns the check off.
    /// [default: 10000]
    #[arg(long, env = "RAFT_STORAGE_STALL_TIMEOUT_MS")]
    pub storage_stall_timeout_ms: Option<u64>,

    /// Largest key, in bytes (after percent-decoding); longer keys get 414.
    /// [default: 1024]
    #[arg(long, env = "RAFT_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,

    /// Largest value, in bytes; larger bodies get 413. [default: 1048576]
    #[arg(long, env = "RAFT_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,

    /// Requests served at once by the HTTP API; more wait in line.
    /// [default: 1024]
    #[arg(long, env = "RAFT_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,

    /// Largest `limit` of a range listing. [default: 1000]
    #[arg(long, env = "RAFT_MAX_LIST_LIMIT")]
    pub max_list_limit: Option<usize>,

    /// Log entries an `Idempotency-Key` is remembered for. Must be equal on
    /// every node. [default: 100000]
    #[arg(long, env = "RAFT_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Option<u64>,

    /// Take a snapshot and compact the log after this many applied entries
    /// (0: never by count). [default: 100000]
    #[arg(long, env = "RAFT_SNAPSHOT_ENTRIES")]
    pub snapshot_entries: Option<u64>,

    /// Take a snapshot and compact the log after this many MiB of applied
    /// entries (0: never by size). [default: 256]
    #[arg(long, env = "RAFT_SNAPSHOT_MIB")]
    pub snapshot_mib: Option<u64>,

    /// Entries kept in the log below a snapshot, for followers that are
    /// only slightly behind. [default: 5000]
    #[arg(long, env = "RAFT_SNAPSHOT_KEEP_ENTRIES")]
    pub snapshot_keep_entries: Option<u64>,

    /// A learner is promoted to voter only within this many entries of the
    /// leader's log. [default: 1000]
    #[arg(long, env = "RAFT_MAX_PROMOTION_LAG")]
    pub max_promotion_lag: Option<u64>,

    // Memory bounds of the Raft log (issue 16, item 4).
    /// Payloads of applied log entries kept in memory for followers, MiB;
    /// older ones are read back from the store when a follower needs them
    /// (0: keep none). [default: 64]
    #[arg(long, env = "RAFT_LOG_CACHE_MIB")]
    pub log_cache_mib: Option<u64>,

    /// Bytes of writes the leader holds uncommitted, MiB; writes beyond get
    /// 503 with `Retry-After`. [default: 64]
    #[arg(long, env = "RAFT_MAX_UNCOMMITTED_MIB")]
    pub max_uncommitted_mib: Option<u64>,

    /// Bytes of committed entries waiting for the key-value store, MiB;
    /// beyond, the leader answers writes with 503 and `Retry-After` and a
    /// follower takes no new entries until it catches up. [default: 64]
    #[arg(long, env = "RAFT_MAX_UNAPPLIED_MIB")]
    pub max_unapplied_mib: Option<u64>,

    /// RocksDB memtable size per column family, MiB: a node's write memory
    /// is about twice this times the five column families at the most.
    /// [default: 16]
    #[arg(long, env = "RAFT_WRITE_BUFFER_MIB")]
    pub write_buffer_mib: Option<u64>,

    /// RocksDB block cache for reads, MiB. [default: 64]
    #[arg(long, env = "RAFT_BLOCK_CACHE_MIB")]
    pub block_cache_mib: Option<u64>,

    /// Join an existing cluster through this node's HTTP address
    /// (`http://host:port` or `https://…`, any member): a node with an empty
    /// data directory asks to be added as a learner and is brought up by a
    /// snapshot. Ignored once the node has joined.
    #[arg(long, env = "RAFT_JOIN", value_name = "URL")]
    pub join: Option<String>,

    /// File holding the bearer token every `/v1/` request must carry
    /// (`Authorization: Bearer <token>`); without it the API is open.
    /// `/metrics`, `/healthz` and `/readyz` stay open.
    #[arg(long, env = "RAFT_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// File holding the bearer token of admin routes (leadership transfer,
    /// membership, snapshots); without it they take the `--auth-token-file`
    /// token.
    #[arg(long, env = "RAFT_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the HTTP API over TLS (HTTPS) with this node's certificate
    /// (`--tls-cert`, which `raft-node certs` issues for localhost and
    /// 127.0.0.1 too). [default: false]
    #[arg(long, env = "RAFT_CLIENT_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub client_tls: Option<bool>,

    /// With `--client-tls`: require client certificates signed by this CA
    /// (PEM) or by the cluster CA (so nodes can forward to each other).
    #[arg(long, env = "RAFT_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,

    /// Log format: `human` or `json`. [default: human]
    #[arg(long, env = "RAFT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Skip fsync of the Raft log. Loses acknowledged writes on power loss:
    /// for benchmarks only. [default: false]
    #[arg(long, env = "RAFT_UNSAFE_NO_FSYNC", num_args = 0..=1, default_missing_value = "true")]
    pub unsafe_no_fsync: Option<bool>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Peer (QUIC) address.
    pub peer_addr: SocketAddr,
    /// HTTP address (`host:port`), where requests are forwarded to.
    pub client_addr: String,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node id.
    pub id: NodeId,
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub client_listen: SocketAddr,
    /// QUIC listen address.
    pub peer_listen: SocketAddr,
    /// Initial cluster (empty when not given).
    pub initial_cluster: Vec<Member>,
    /// This node's addresses as others reach it.
    pub advertise: Member,
    /// CA certificate file.
    pub tls_ca: PathBuf,
    /// Node certificate file.
    pub tls_cert: PathBuf,
    /// Node key file.
    pub tls_key: PathBuf,
    /// Tick length.
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_ticks: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u64,
    /// Request timeout.
    pub request_timeout: Duration,
    /// How long a failed node answers `/healthz` with 503 before exiting.
    pub failure_exit_delay: Duration,
    /// How long a log write may run before `/healthz` calls the node
    /// unhealthy (`None`: never).
    pub storage_stall_timeout: Option<Duration>,
    /// Key size limit.
    pub max_key_bytes: usize,
    /// Value size limit.
    pub max_value_bytes: usize,
    /// Concurrency limit of the HTTP API.
    pub max_concurrent_requests: usize,
    /// Range listing limit.
    pub max_list_limit: usize,
    /// Idempotency window in log entries.
    pub idempotency_window: u64,
    /// Snapshot after this many applied entries (0: never).
    pub snapshot_entries: u64,
    /// Snapshot after this many bytes of applied entries (0: never).
    pub snapshot_bytes: u64,
    /// Entries kept below a snapshot.
    pub snapshot_keep_entries: u64,
    /// Promotion lag limit.
    pub max_promotion_lag: u64,
    // Memory bounds of the Raft log (issue 16, item 4).
    /// Payload bytes of applied entries the in-memory log keeps.
    pub log_cache_bytes: u64,
    /// Bytes of uncommitted entries a leader takes.
    pub max_uncommitted_bytes: u64,
    /// Bytes of committed entries waiting to be applied.
    pub max_unapplied_bytes: u64,
    /// RocksDB memtable size per column family, bytes.
    pub write_buffer_bytes: usize,
    /// RocksDB block cache, bytes.
    pub block_cache_bytes: usize,
    /// A member's HTTP URL to join through, for a new node.
    pub join: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Skip fsync.
    pub unsafe_no_fsync: bool,
    /// Bearer token of the API.
    pub auth_token: Option<String>,
    /// Bearer token of admin routes.
    pub admin_token: Option<String>,
    /// HTTPS on the client API.
    pub client_tls: bool,
    /// CA of client certificates (HTTPS only).
    pub client_ca: Option<PathBuf>,
}

/// The largest key plus value a node accepts: an entry must fit, with
/// room for framing, in one frame of the peer transport (16 MiB by default)
/// and well within its per-peer replication queue.
pub const ENTRY_BYTES_MAX: usize = 8 << 20;

/// A setting that is missing or wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl RunArgs {
    /// Fills unset fields from the TOML file named by `--config` (if any),
    /// then applies defaults and checks the result.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the setting or the file.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        let merged = match file {
            Some(file) => self.merge(file),
            None => self,
        };
        merged.finish()
    }

    /// `self` over `file`: a field set here wins.
    fn merge(self, file: RunArgs) -> RunArgs {
        macro_rules! pick {
            ($($f:ident),*) => { RunArgs { config: self.config, $($f: self.$f.or(file.$f)),* } };
        }
        pick!(
            id,
            data_dir,
            client_listen,
            peer_listen,
            peer_advertise,
            client_advertise,
            initial_cluster,
            tls_ca,
            tls_cert,
            tls_key,
            tick_ms,
            election_ticks,
            heartbeat_ticks,
            request_timeout_ms,
            failure_exit_delay_ms,
            storage_stall_timeout_ms,
            max_key_bytes,
            max_value_bytes,
            max_concurrent_requests,
            max_list_limit,
            idempotency_window,
            snapshot_entries,
            snapshot_mib,
            snapshot_keep_entries,
            max_promotion_lag,
            log_cache_mib,
            max_uncommitted_mib,
            max_unapplied_mib,
            write_buffer_mib,
            block_cache_mib,
            join,
            log_format,
            unsafe_no_fsync,
            auth_token_file,
            admin_token_file,
            client_tls,
            client_ca
        )
    }

    fn finish(self) -> Result<NodeConfig, ConfigError> {
        let id = self
            .id
            .ok_or_else(|| ConfigError("--id (RAFT_ID) is required".into()))?;
        if id == 0 {
            return Err(ConfigError("--id must be a positive integer".into()));
        }
        let required = |v: Option<PathBuf>, flag: &str, env: &str| {
            v.ok_or_else(|| {
                ConfigError(format!(
                    "{flag} ({env}) is required (see `raft-node certs`)"
                ))
            })
        };
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => Vec::new(),
        };
        let client_listen = self
            .client_listen
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal"));
        let peer_listen = self
            .peer_listen
            .unwrap_or_else(|| "127.0.0.1:7000".parse().expect("literal"));
        let listed = initial_cluster.iter().find(|m| m.id == id);
        let advertise = Member {
            id,
            peer_addr: self
                .peer_advertise
                .or(listed.map(|m| m.peer_addr))
                .unwrap_or(peer_listen),
            client_addr: self
                .client_advertise
                .clone()
                .or(listed.map(|m| m.client_addr.clone()))
                .unwrap_or_else(|| client_listen.to_string()),
        };
        if let Some(m) = listed {
            if *m != advertise {
                return Err(ConfigError(format!(
                    "--initial-cluster lists this node at {}/{} but it advertises {}/{}",
                    m.peer_addr, m.client_addr, advertise.peer_addr, advertise.client_addr
                )));
            }
        }
        if advertise.peer_addr.ip().is_unspecified() {
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
        let cfg = NodeConfig {
            advertise,
            id,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("data/node-{id}"))),
            client_listen: self
                .client_listen
                .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal")),
            peer_listen: self
                .peer_listen
                .unwrap_or_else(|| "127.0.0.1:7000".parse().expect("literal")),
            initial_cluster,
            tls_ca: required(self.tls_ca, "--tls-ca", "RAFT_TLS_CA")?,
            tls_cert: required(self.tls_cert, "--tls-cert", "RAFT_TLS_CERT")?,
            tls_key: required(self.tls_key, "--tls-key", "RAFT_TLS_KEY")?,
            tick: Duration::from_millis(self.tick_ms.unwrap_or(50)),
            election_ticks: self.election_ticks.unwrap_or(20),
            heartbeat_ticks: self.heartbeat_ticks.unwrap_or(2),
            request_timeout: Duration::from_millis(self.request_timeout_ms.unwrap_or(5000)),
            failure_exit_delay: Duration::from_millis(self.failure_exit_delay_ms.unwrap_or(1000)),
            storage_stall_timeout: match self.storage_stall_timeout_ms.unwrap_or(10_000) {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            max_key_bytes: self.max_key_bytes.unwrap_or(1024),
            max_value_bytes: self.max_value_bytes.unwrap_or(1 << 20),
            max_concurrent_requests: self.max_concurrent_requests.unwrap_or(1024),
            max_list_limit: self.max_list_limit.unwrap_or(1000),
            idempotency_window: self.idempotency_window.unwrap_or(100_000),
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
            auth_token: self
                .auth_token_file
                .as_deref()
                .map(read_token)
                .transpose()?,
            admin_token: self
                .admin_token_file
                .as_deref()
                .map(read_token)
                .transpose()?,
            client_tls: self.client_tls.unwrap_or(false),
            client_ca: self.client_ca,
        };
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
        if cfg.client_ca.is_some() && !cfg.client_tls {
            return Err(ConfigError("--client-ca needs --client-tls".into()));
        }
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
        if cfg.failure_exit_delay > Duration::from_secs(600) {
            return Err(ConfigError(
                "--failure-exit-delay-ms must be at most 600000".into(),
            ));
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
            ("--max-list-limit", cfg.max_list_limit),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("{name} must be positive")));
            }
        }
        if !cfg.initial_cluster.is_empty() && !cfg.initial_cluster.iter().any(|m| m.id == id) {
            return Err(ConfigError(format!(
                "--initial-cluster does not list this node ({id})"
            )));
        }
        Ok(cfg)
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

fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read token file {}: {e}", path.display())))?;
    let token = text.trim().to_owned();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "token file {} must hold one token of at least 16 visible ASCII characters",
            path.display()
        )));
    }
    Ok(token)
}

fn read_file(path: &Path) -> Result<RunArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}

/// Parses `ID=PEER_ADDR/CLIENT_ADDR,…`.
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
        let peer_addr = peer
            .trim()
            .to_socket_addrs()
            .map_err(|e| bad(&format!("peer address: {e}")))?
            .next()
            .ok_or_else(|| bad("the peer address resolves to nothing"))?;
        let client_addr = client.trim().to_owned();
        if client_addr.is_empty() || !client_addr.contains(':') {
            return Err(bad("the client address needs host:port"));
        }
        if members.iter().any(|m| m.id == id) {
            return Err(bad("the id appears twice"));
        }
        members.push(Member {
            id,
            peer_addr,
            client_addr,
        });
    }
    if members.is_empty() {
        return Err(ConfigError("--initial-cluster lists no member".into()));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RunArgs {
        RunArgs {
            id: Some(1),
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("n.pem".into()),
            tls_key: Some("n.key".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "data-dir = \"/from/file\"\ntick-ms = 10\nmax-value-bytes = 99\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(file),
            tick_ms: Some(25),
            ..base()
        };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.tick, Duration::from_millis(25)); // flag
        assert_eq!(cfg.data_dir, PathBuf::from("/from/file")); // file
        assert_eq!(cfg.max_value_bytes, 99); // file
        assert_eq!(cfg.max_key_bytes, 1024); // default
    }

    #[test]
    fn bad_settings_are_named() {
        let err = RunArgs { id: None, ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--id"), "{err}");
        let err = RunArgs {
            tls_ca: None,
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("--tls-ca"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "no-such-setting = 1\n").unwrap();
        let err = RunArgs {
            config: Some(file),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("no-such-setting"), "{err}");
        let err = RunArgs {
            initial_cluster: Some("2=127.0.0.1:7002/127.0.0.1:8002".into()),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("does not list this node"), "{err}");
    }

    #[test]
    fn rocksdb_memory_sizes_default_and_are_bounded() {
        let cfg = base().resolve().unwrap();
        assert_eq!(cfg.write_buffer_bytes, 16 << 20);
        assert_eq!(cfg.block_cache_bytes, 64 << 20);
        let cfg = RunArgs {
            write_buffer_mib: Some(4),
            block_cache_mib: Some(8),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (cfg.write_buffer_bytes, cfg.block_cache_bytes),
            (4 << 20, 8 << 20)
        );
        for bad in [0, 65_537] {
            let err = RunArgs {
                write_buffer_mib: Some(bad),
                ..base()
            }
            .resolve()
            .unwrap_err();
            assert!(err.0.contains("--write-buffer-mib"), "{err}");
        }
    }

    #[test]
    fn advertised_addresses_default_to_the_cluster_entry_and_must_agree_with_it() {
        let cluster = "1=127.0.0.1:7001/127.0.0.1:8001,2=127.0.0.1:7002/127.0.0.1:8002";
        let cfg = RunArgs {
            initial_cluster: Some(cluster.into()),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.advertise.peer_addr, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(cfg.advertise.client_addr, "127.0.0.1:8001");
        let err = RunArgs {
            initial_cluster: Some(cluster.into()),
            peer_advertise: Some("127.0.0.1:9999".parse().unwrap()),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("advertises"), "{err}");
        let err = RunArgs {
            peer_listen: Some("0.0.0.0:7000".parse().unwrap()),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("--peer-advertise"), "{err}");
        let cfg = RunArgs {
            peer_listen: Some("0.0.0.0:7000".parse().unwrap()),
            client_listen: Some("0.0.0.0:8000".parse().unwrap()),
            peer_advertise: Some("10.0.0.1:7000".parse().unwrap()),
            client_advertise: Some("node1.example:8000".into()),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.advertise.client_addr, "node1.example:8000");
    }

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let m = parse_initial_cluster(
            "1=127.0.0.1:7001/127.0.0.1:8001, 2=127.0.0.1:7002/localhost:8002",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].client_addr, "localhost:8002");
        for bad in [
            "",
            "1",
            "x=127.0.0.1:1/a:1",
            "1=127.0.0.1:7001",
            "1=nope/a:1",
            "1=127.0.0.1:1/a:1,1=127.0.0.1:2/a:2",
            "0=127.0.0.1:1/a:1",
        ] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad}");
        }
    }
}
