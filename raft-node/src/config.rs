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

    /// API requests (`/v1/...`) served at once; one more is answered 503
    /// with `Retry-After` at once instead of waiting in line. Health,
    /// readiness and metrics are outside this limit. [default: 1024]
    #[arg(long, env = "RAFT_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,

    /// Largest `limit` of a range listing. [default: 1000]
    #[arg(long, env = "RAFT_MAX_LIST_LIMIT")]
    pub max_list_limit: Option<usize>,

    /// Largest range-listing answer, in bytes of JSON: a listing stops after
    /// the item that reaches it and gives a `next` cursor. [default: 8388608]
    #[arg(long, env = "RAFT_MAX_LIST_BYTES")]
    pub max_list_bytes: Option<usize>,

    /// Client connections open at once (HTTP or HTTPS). At the cap a new
    /// connection replaces the one idle the longest; when every connection
    /// is serving a request it gets 503. [default: 4096]
    #[arg(long, env = "RAFT_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,

    /// Time a client has to finish a request head once its first byte
    /// arrived. [default: 10000]
    #[arg(long, env = "RAFT_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,

    /// Time a connection may stay open with no request running and nothing
    /// received (new, or between keep-alive requests). [default: 60000]
    #[arg(long, env = "RAFT_HTTP_IDLE_TIMEOUT_MS")]
    pub http_idle_timeout_ms: Option<u64>,

    /// Time a client has to send a request's whole body; past it the answer
    /// is 408. [default: 30000]
    #[arg(long, env = "RAFT_HTTP_BODY_TIMEOUT_MS")]
    pub http_body_timeout_ms: Option<u64>,

    /// Longest an API request may run once its body is read; past it the
    /// answer is 503, or 504 for a write whose outcome is unknown.
    /// [default: 30000]
    #[arg(long, env = "RAFT_HTTP_REQUEST_DEADLINE_MS")]
    pub http_request_deadline_ms: Option<u64>,

    /// Time an HTTPS client has to finish its TLS handshake. [default: 5000]
    #[arg(long, env = "RAFT_HTTP_TLS_HANDSHAKE_TIMEOUT_MS")]
    pub http_tls_handshake_timeout_ms: Option<u64>,

    /// An answer the client takes no byte of for this long is dropped with
    /// its connection. [default: 30000]
    #[arg(long, env = "RAFT_HTTP_SEND_TIMEOUT_MS")]
    pub http_send_timeout_ms: Option<u64>,

    /// Largest request head (request line and headers), in bytes; larger
    /// heads get 431. At least 8192. [default: 65536]
    #[arg(long, env = "RAFT_HTTP_MAX_HEADER_BYTES")]
    pub http_max_header_bytes: Option<usize>,

    /// Requests whose body is being received at once; one more gets 503.
    /// Together with --max-concurrent-requests it must stay below
    /// --http-max-connections, so that a probe always finds a slot.
    /// [default: 1024]
    #[arg(long, env = "RAFT_HTTP_MAX_RECEIVING_BODIES")]
    pub http_max_receiving_bodies: Option<usize>,

    /// Memory for request bodies being received, listing answers being
    /// sent and answers relayed from the leader, in MiB; a request that
    /// would pass it gets 503. [default: 128]
    #[arg(long, env = "RAFT_HTTP_BUFFER_MIB")]
    pub http_buffer_mib: Option<u64>,

    /// Listings read at once (each scans the store on a blocking thread);
    /// one more gets 503. [default: 8]
    #[arg(long, env = "RAFT_MAX_CONCURRENT_LISTINGS")]
    pub max_concurrent_listings: Option<usize>,

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

    // Security settings (issue 16 item 6).
    /// Allow the HTTP API on a non-loopback address without any
    /// authentication (no `--auth-token-file`, `--admin-token-file` or
    /// `--client-ca`): anyone who reaches it can read, write and change the
    /// cluster. Without this flag such a node refuses to start.
    /// [default: false]
    #[arg(long, env = "RAFT_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,

    // Peer transport hardening (issue 16 items 8 to 10).
    /// PEM file of certificate revocation lists of the cluster CA: peers
    /// (in both directions) whose certificate it revokes are refused. The
    /// file is polled every 5 s and reloaded when its content changes;
    /// connections of peers it now revokes are closed. A file that does not
    /// load (half written, not a CRL of the CA) keeps the lists in force.
    /// A list revoking this node's own certificate is used for peers, with
    /// a loud warning.
    /// [default: none]
    #[arg(long, env = "RAFT_TLS_CRL", value_name = "FILE")]
    pub tls_crl: Option<PathBuf>,

    /// Largest snapshot accepted from a peer, in MiB; larger offers (and
    /// offers beyond the data directory's free space) are refused before
    /// anything is written. [default: 4096]
    #[arg(long, env = "RAFT_MAX_SNAPSHOT_RECEIVE_MIB")]
    pub max_snapshot_receive_mib: Option<u64>,

    /// Inbound peer connections one node may hold at once. [default: 4]
    #[arg(long, env = "RAFT_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,

    /// Peer handshakes in progress beyond which a new one from an address
    /// not yet validated is sent a QUIC Retry (0: always). [default: 32]
    #[arg(long, env = "RAFT_PEER_RETRY_AFTER_HANDSHAKES")]
    pub peer_retry_after_handshakes: Option<usize>,

    /// Peer handshakes in progress from one IP address that is not a
    /// member's; more are refused. [default: 8]
    #[arg(long, env = "RAFT_PEER_HANDSHAKES_PER_IP")]
    pub peer_handshakes_per_ip: Option<usize>,

    /// Of the 256 inbound peer connection slots, how many only the
    /// (validated) addresses of members and learners being added may take,
    /// so a flood from elsewhere cannot keep a member out. [default: 16]
    #[arg(long, env = "RAFT_PEER_RESERVED_CONNECTIONS")]
    pub peer_reserved_connections: Option<usize>,

    /// Seconds a joining node's recorded address lets it connect before it
    /// is a learner; a join that failed stops being let in after this.
    /// [default: 300]
    #[arg(long, env = "RAFT_JOIN_ADMISSION_SECS")]
    pub join_admission_secs: Option<u64>,
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

/// Fully resolved settings. Its `Debug` output never shows the tokens.
#[derive(Clone)]
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
    /// Largest range-listing answer in bytes.
    pub max_list_bytes: usize,
    /// Client connections open at once.
    pub http_max_connections: usize,
    /// From a request head's first byte to its end.
    pub http_header_timeout: Duration,
    /// Idle connections close after this.
    pub http_idle_timeout: Duration,
    /// Time to send a request body.
    pub http_body_timeout: Duration,
    /// Longest an API request runs once its body is read.
    pub http_request_deadline: Duration,
    /// Time for an HTTPS client's TLS handshake.
    pub http_tls_handshake_timeout: Duration,
    /// An answer not taken for this long is dropped.
    pub http_send_timeout: Duration,
    /// Largest request head.
    pub http_max_header_bytes: usize,
    /// Requests receiving their body at once.
    pub http_max_receiving_bodies: usize,
    /// Memory for buffered bodies and answers, in bytes.
    pub http_buffer_bytes: usize,
    /// Listings at once.
    pub max_concurrent_listings: usize,
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
    /// The API may listen beyond loopback without authentication.
    pub insecure: bool,

    // Peer transport hardening (issue 16 items 8 to 10).
    /// Certificate revocation lists checked for peers, reloaded on change.
    pub tls_crl: Option<PathBuf>,
    /// Largest snapshot accepted from a peer, bytes.
    pub max_snapshot_receive_bytes: u64,
    /// Inbound peer connections one node may hold at once.
    pub max_connections_per_peer: usize,
    /// Peer handshakes in progress before unvalidated ones get a QUIC Retry.
    pub peer_retry_after_handshakes: usize,
    /// Peer handshakes in progress from one non-member IP address.
    pub peer_handshakes_per_ip: usize,
    /// Inbound peer connection slots reserved for members' addresses.
    pub peer_reserved_connections: usize,
    /// How long a recorded address of a node not (yet) in the
    /// configuration admits it.
    pub join_admission: Duration,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("NodeConfig")
            .field("id", &self.id)
            .field("data_dir", &self.data_dir)
            .field("client_listen", &self.client_listen)
            .field("peer_listen", &self.peer_listen)
            .field("initial_cluster", &self.initial_cluster)
            .field("advertise", &self.advertise)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tick", &self.tick)
            .field("election_ticks", &self.election_ticks)
            .field("heartbeat_ticks", &self.heartbeat_ticks)
            .field("request_timeout", &self.request_timeout)
            .field("failure_exit_delay", &self.failure_exit_delay)
            .field("storage_stall_timeout", &self.storage_stall_timeout)
            .field("max_key_bytes", &self.max_key_bytes)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_list_limit", &self.max_list_limit)
            .field("max_list_bytes", &self.max_list_bytes)
            .field("http_max_connections", &self.http_max_connections)
            .field("http_header_timeout", &self.http_header_timeout)
            .field("http_idle_timeout", &self.http_idle_timeout)
            .field("http_body_timeout", &self.http_body_timeout)
            .field("http_request_deadline", &self.http_request_deadline)
            .field(
                "http_tls_handshake_timeout",
                &self.http_tls_handshake_timeout,
            )
            .field("http_send_timeout", &self.http_send_timeout)
            .field("http_max_header_bytes", &self.http_max_header_bytes)
            .field("http_max_receiving_bodies", &self.http_max_receiving_bodies)
            .field("http_buffer_bytes", &self.http_buffer_bytes)
            .field("max_concurrent_listings", &self.max_concurrent_listings)
            .field("idempotency_window", &self.idempotency_window)
            .field("snapshot_entries", &self.snapshot_entries)
            .field("snapshot_bytes", &self.snapshot_bytes)
            .field("snapshot_keep_entries", &self.snapshot_keep_entries)
            .field("max_promotion_lag", &self.max_promotion_lag)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("join", &self.join)
            .field("log_format", &self.log_format)
            .field("unsafe_no_fsync", &self.unsafe_no_fsync)
            .field("auth_token", &secret(&self.auth_token))
            .field("admin_token", &secret(&self.admin_token))
            .field("client_tls", &self.client_tls)
            .field("client_ca", &self.client_ca)
            .field("insecure", &self.insecure)
            .field("tls_crl", &self.tls_crl)
            .field("log_cache_bytes", &self.log_cache_bytes)
            .field("max_uncommitted_bytes", &self.max_uncommitted_bytes)
            .field("max_unapplied_bytes", &self.max_unapplied_bytes)
            .field(
                "max_snapshot_receive_bytes",
                &self.max_snapshot_receive_bytes,
            )
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .field(
                "peer_retry_after_handshakes",
                &self.peer_retry_after_handshakes,
            )
            .field("peer_handshakes_per_ip", &self.peer_handshakes_per_ip)
            .field("peer_reserved_connections", &self.peer_reserved_connections)
            .field("join_admission", &self.join_admission)
            .finish_non_exhaustive()
    }
}

/// Whether `host` (a host name or address, without port) names this
/// machine only.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of `host:port` (IPv6 in brackets).
fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host,
        None => addr,
    }
}

impl NodeConfig {
    /// Whether the HTTP API authenticates the callers of its data routes:
    /// a user bearer token or client certificates. An admin token alone
    /// guards only the admin routes and leaves `/v1/kv` open.
    pub fn api_authenticated(&self) -> bool {
        self.auth_token.is_some() || (self.client_tls && self.client_ca.is_some())
    }

    /// What is unsafe about these settings, one sentence each, for the log
    /// at start (empty when nothing is): an API exposed with no token and
    /// no TLS, tokens that travel in clear between nodes or to `--join`,
    /// and a data API left open beside an admin token.
    pub fn security_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let exposed = !self.client_listen.ip().is_loopback();
        let tokens = self.auth_token.is_some() || self.admin_token.is_some();
        if exposed && !tokens && !self.client_tls {
            out.push(format!(
                "the HTTP API listens on {} with no bearer token and no TLS (--insecure): anyone \
                who can reach it can read and write every key and change the cluster",
                self.client_listen
            ));
        } else if exposed && !self.api_authenticated() {
            out.push(format!(
                "the HTTP API listens on {} without authentication (--insecure): anyone who can \
                reach it can read and write every key and change the cluster",
                self.client_listen
            ));
        }
        let members_remote = exposed
            || !is_loopback_host(host_of(&self.advertise.client_addr))
            || self
                .initial_cluster
                .iter()
                .any(|m| !is_loopback_host(host_of(&m.client_addr)));
        if tokens && !self.client_tls && members_remote {
            out.push(
                "bearer tokens without --client-tls: clients send them, and followers forward \
                them to the leader in the Authorization header, over plain HTTP, where anyone on \
                the network path can read them; use --client-tls"
                    .to_string(),
            );
        }
        if let Some(join) = &self.join {
            if tokens && join.starts_with("http://") {
                out.push(format!(
                    "--join {join} sends the admin token in clear (plain HTTP); join through an \
                    https:// URL"
                ));
            }
        }
        if self.admin_token.is_some() && self.auth_token.is_none() {
            out.push(
                "only --admin-token-file is set: the admin routes need its token, but /v1/kv and \
                GET /v1/cluster are open to anyone; set --auth-token-file too"
                    .to_string(),
            );
        }
        out
    }
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
            max_list_bytes,
            http_max_connections,
            http_header_timeout_ms,
            http_idle_timeout_ms,
            http_body_timeout_ms,
            http_request_deadline_ms,
            http_tls_handshake_timeout_ms,
            http_send_timeout_ms,
            http_max_header_bytes,
            http_max_receiving_bodies,
            http_buffer_mib,
            max_concurrent_listings,
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
            client_ca,
            insecure,
            tls_crl,
            max_snapshot_receive_mib,
            max_connections_per_peer,
            peer_retry_after_handshakes,
            peer_handshakes_per_ip,
            peer_reserved_connections,
            join_admission_secs
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
            max_list_bytes: self.max_list_bytes.unwrap_or(8 << 20),
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
            ("--max-list-limit", cfg.max_list_limit),
            ("--max-connections-per-peer", cfg.max_connections_per_peer),
            ("--peer-handshakes-per-ip", cfg.peer_handshakes_per_ip),
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
fn ms(v: Option<u64>, default_ms: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default_ms))
}

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

/// Reads a bearer token file: one token of at least 16 visible ASCII
/// characters, in a file that only its owner can read (a mode that lets
/// the group or others read it is refused, naming the fix).
///
/// # Errors
///
/// [`ConfigError`] naming the file: unreadable, readable by others, or
/// not holding a valid token.
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cannot =
        |e: std::io::Error| ConfigError(format!("cannot read token file {}: {e}", path.display()));
    // One open file for the checks and the read: the path cannot be
    // swapped in between.
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError(format!(
            "token file {} has mode {mode:04o}: other users can read or change it; make it \
            readable by its owner only (`chmod 600 {}`; in Kubernetes, `defaultMode: 0400` \
            on the secret volume)",
            path.display(),
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(ConfigError(format!(
            "token file {} belongs to user {}, not to this process's user ({me}) or root: \
            whoever owns it can change the token",
            path.display(),
            meta.uid()
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(cannot)?;
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
    fn peer_hardening_limits_default_and_are_checked() {
        let cfg = base().resolve().unwrap();
        assert_eq!(cfg.tls_crl, None);
        assert_eq!(cfg.max_snapshot_receive_bytes, 4 << 30);
        assert_eq!(cfg.max_connections_per_peer, 4);
        assert_eq!(cfg.peer_retry_after_handshakes, 32);
        assert_eq!(cfg.peer_handshakes_per_ip, 8);
        assert_eq!(cfg.peer_reserved_connections, 16);
        assert_eq!(cfg.join_admission, Duration::from_secs(300));
        let cfg = RunArgs {
            tls_crl: Some("crl.pem".into()),
            max_snapshot_receive_mib: Some(10),
            max_connections_per_peer: Some(2),
            peer_retry_after_handshakes: Some(0),
            peer_handshakes_per_ip: Some(2),
            peer_reserved_connections: Some(4),
            join_admission_secs: Some(7),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.peer_handshakes_per_ip, 2);
        assert_eq!(cfg.peer_reserved_connections, 4);
        assert_eq!(cfg.join_admission, Duration::from_secs(7));
        assert_eq!(cfg.tls_crl, Some("crl.pem".into()));
        assert_eq!(cfg.max_snapshot_receive_bytes, 10 << 20);
        assert_eq!(cfg.max_connections_per_peer, 2);
        assert_eq!(cfg.peer_retry_after_handshakes, 0);
        for (args, flag) in [
            (
                RunArgs {
                    max_snapshot_receive_mib: Some(0),
                    ..base()
                },
                "--max-snapshot-receive-mib",
            ),
            (
                RunArgs {
                    max_connections_per_peer: Some(0),
                    ..base()
                },
                "--max-connections-per-peer",
            ),
            (
                RunArgs {
                    max_connections_per_peer: Some(257),
                    ..base()
                },
                "--max-connections-per-peer",
            ),
            (
                RunArgs {
                    peer_handshakes_per_ip: Some(0),
                    ..base()
                },
                "--peer-handshakes-per-ip",
            ),
            (
                RunArgs {
                    peer_reserved_connections: Some(256),
                    ..base()
                },
                "--peer-reserved-connections",
            ),
            (
                RunArgs {
                    join_admission_secs: Some(0),
                    ..base()
                },
                "--join-admission-secs",
            ),
        ] {
            let err = args.resolve().unwrap_err();
            assert!(err.0.contains(flag), "{err}");
        }
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
            insecure: Some(true),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.advertise.client_addr, "node1.example:8000");
    }

    #[test]
    fn review_an_exposed_node_whose_data_api_is_open_needs_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let admin = private_token(dir.path(), "admin", "an-admin-token-0123456789");
        let r = RunArgs {
            admin_token_file: Some(admin),
            ..exposed()
        }
        .resolve();
        assert!(
            r.is_err(),
            "0.0.0.0 with only --admin-token-file (every key readable and writable by anyone) \
             started without --insecure"
        );
    }

    fn private_token(dir: &Path, name: &str, token: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Listening beyond loopback, as a node of a real cluster does.
    fn exposed() -> RunArgs {
        RunArgs {
            client_listen: Some("0.0.0.0:8080".parse().unwrap()),
            client_advertise: Some("10.0.0.1:8080".into()),
            peer_advertise: Some("10.0.0.1:7000".parse().unwrap()),
            ..base()
        }
    }

    #[test]
    fn an_api_exposed_beyond_loopback_without_auth_is_refused_unless_insecure() {
        let err = exposed().resolve().unwrap_err();
        assert!(
            err.0.contains("--insecure") && err.0.contains("--auth-token-file"),
            "{err}"
        );
        // TLS alone authenticates nobody.
        let err = RunArgs {
            client_tls: Some(true),
            ..exposed()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("--insecure"), "{err}");
        // Said explicitly: it starts, with a loud warning.
        let cfg = RunArgs {
            insecure: Some(true),
            ..exposed()
        }
        .resolve()
        .unwrap();
        let warnings = cfg.security_warnings().join("\n");
        assert!(
            warnings.contains("no bearer token and no TLS"),
            "{warnings}"
        );
        // A token or client certificates are enough.
        let dir = tempfile::tempdir().unwrap();
        let token = private_token(dir.path(), "t", "a-token-of-enough-length");
        let cfg = RunArgs {
            auth_token_file: Some(token),
            ..exposed()
        }
        .resolve()
        .unwrap();
        let warnings = cfg.security_warnings().join("\n");
        assert!(
            warnings.contains("Authorization") && warnings.contains("plain HTTP"),
            "followers forward the token in clear: {warnings}"
        );
        RunArgs {
            client_tls: Some(true),
            client_ca: Some("ca.pem".into()),
            ..exposed()
        }
        .resolve()
        .unwrap();
        // Loopback needs nothing and warns of nothing.
        let cfg = base().resolve().unwrap();
        assert!(!cfg.insecure);
        assert_eq!(cfg.security_warnings(), Vec::<String>::new());
    }

    #[test]
    fn cleartext_tokens_and_an_open_data_api_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let admin = private_token(dir.path(), "admin", "an-admin-token-0123456789");
        // Only the admin token: /v1/kv stays open.
        let cfg = RunArgs {
            admin_token_file: Some(admin.clone()),
            ..base()
        }
        .resolve()
        .unwrap();
        let warnings = cfg.security_warnings().join("\n");
        assert!(
            warnings.contains("/v1/kv") && warnings.contains("--auth-token-file"),
            "{warnings}"
        );
        // --join over http:// sends the admin token in clear.
        let cfg = RunArgs {
            admin_token_file: Some(admin),
            join: Some("http://10.0.0.1:8080".into()),
            ..base()
        }
        .resolve()
        .unwrap();
        let warnings = cfg.security_warnings().join("\n");
        assert!(
            warnings.contains("--join") && warnings.contains("in clear"),
            "{warnings}"
        );
    }

    #[test]
    fn token_files_owned_by_another_user_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = private_token(dir.path(), "other", "a-token-of-another-user-0123");
        // Needs root (the tests run as root in CI): give the file away.
        std::os::unix::fs::chown(&path, Some(65534), None)
            .expect("changing the token file's owner (run the tests as root)");
        let err = read_token(&path).unwrap_err();
        assert!(err.0.contains("belongs to user 65534"), "{err}");
    }

    #[test]
    fn token_files_others_can_read_are_refused_and_tokens_never_printed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = private_token(dir.path(), "user.token", "secret-token-0123456789");
        for loose in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = RunArgs {
                auth_token_file: Some(path.clone()),
                ..base()
            }
            .resolve()
            .unwrap_err();
            let mode = format!("{loose:04o}");
            assert!(
                err.0.contains("user.token")
                    && err.0.contains(&mode)
                    && err.0.contains("chmod 600"),
                "{err}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let cfg = RunArgs {
            auth_token_file: Some(path.clone()),
            admin_token_file: Some(path),
            ..base()
        }
        .resolve()
        .unwrap();
        assert!(cfg.auth_token.is_some() && cfg.admin_token.is_some());
        let shown = format!("{cfg:?} {cfg:#?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("auth_token"), "{shown}");
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
