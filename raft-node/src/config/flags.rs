//! The settings as given: [`RunArgs`], the `raft-node run` flags (each with
//! its `RAFT_…` variable and its TOML key), and their merge with the file
//! named by `--config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use raft_core::NodeId;
use serde::Deserialize;

use super::{ConfigError, LogFormat, NodeConfig};

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

    /// This node's id (a positive integer, unique in the cluster). Required,
    /// unless --id-from-hostname is given.
    #[arg(long, env = "RAFT_ID")]
    pub id: Option<NodeId>,

    /// Take the id from the host name instead of --id: the number the host
    /// name (its first label) ends with, plus one (`raft-0` → 1, `node-2`
    /// → 3), for the pods of a Kubernetes StatefulSet. [default: false]
    #[arg(long, env = "RAFT_ID_FROM_HOSTNAME", num_args = 0..=1, default_missing_value = "true")]
    pub id_from_hostname: Option<bool>,

    /// Directory of the node's RocksDB store (log and key-value data).
    /// `{id}` in it is replaced by the node id, as in --tls-cert and
    /// --tls-key. [default: data/node-ID]
    #[arg(long, env = "RAFT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address the HTTP API listens on. [default: 127.0.0.1:8080]
    #[arg(long, env = "RAFT_CLIENT_LISTEN", value_name = "ADDR")]
    pub client_listen: Option<SocketAddr>,

    /// Address the peer transport (QUIC, UDP) listens on. [default: 127.0.0.1:7000]
    #[arg(long, env = "RAFT_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,

    /// The peer address other nodes reach this node at: `ip:port` or
    /// `name:port` (a DNS name is looked up at every connection attempt).
    /// [default: this node's `--initial-cluster` entry, else `--peer-listen`]
    #[arg(long, env = "RAFT_PEER_ADVERTISE", value_name = "HOST:PORT")]
    pub peer_advertise: Option<raft_net_quic::PeerAddr>,

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

    /// Part of the cluster id a new cluster derives from its members
    /// (with `--initial-cluster`; `restore` takes it too): give each
    /// cluster that could share members' addresses its own (staging,
    /// production). [default: raftkv-cluster]
    #[arg(long, env = "RAFT_INITIAL_CLUSTER_TOKEN", value_name = "TOKEN")]
    pub initial_cluster_token: Option<String>,

    /// PEM file of the cluster CA certificate (peer mutual TLS). Required.
    #[arg(long, env = "RAFT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// PEM file of this node's certificate (it must name `node-<id>.raft`).
    /// `{id}` in it is replaced by the node id (`/certs/node-{id}.pem`), so
    /// one setting serves every node. Required.
    #[arg(long, env = "RAFT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file of this node's private key (`{id}` is replaced by the node
    /// id). Required.
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

    /// How often the metrics only a sampler can see are refreshed: the data
    /// directory's size (a walk of its files), its filesystem's free space,
    /// the certificates' expiry and the followers' lag. 100 to 3600000.
    /// [default: 5000]
    #[arg(long, env = "RAFT_METRICS_SAMPLE_INTERVAL_MS")]
    pub metrics_sample_interval_ms: Option<u64>,

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

    /// Most compares, and most operations in each branch, of a
    /// transaction; a nested transaction gets what its parent's largest
    /// list leaves (etcd's --max-txn-ops). [default: 128]
    #[arg(long, env = "RAFT_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,

    /// Most keys the ranges of one transaction (compares, range reads and
    /// range deletes) may cover, all together; a transaction whose ranges
    /// cover more is refused and changes nothing. [default: 10000]
    #[arg(long, env = "RAFT_MAX_TXN_RANGE_KEYS")]
    pub max_txn_range_keys: Option<u32>,

    /// Most leases the cluster holds at once; a grant beyond it is refused
    /// (the limit travels in the grant's log entry, so every replica
    /// decides alike). [default: 100000]
    #[arg(long, env = "RAFT_MAX_LEASES")]
    pub max_leases: Option<u64>,

    /// Most keys attached to one lease; a put that would attach one more
    /// is refused and changes nothing (the limit travels in the put's log
    /// entry). [default: 10000]
    #[arg(long, env = "RAFT_MAX_KEYS_PER_LEASE")]
    pub max_keys_per_lease: Option<u32>,

    /// Most expired leases the leader revokes per second (etcd: 1000);
    /// the rest wait for the next second. [default: 1000]
    #[arg(long, env = "RAFT_LEASE_REVOKES_PER_SECOND")]
    pub lease_revokes_per_second: Option<u32>,

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

    /// Backups (`GET /v1/cluster/backup`) served at once; one more gets
    /// 503. Each holds a blocking thread and a RocksDB view of the store
    /// (which keeps the data it sees on disk while it runs). [default: 2]
    #[arg(long, env = "RAFT_MAX_CONCURRENT_BACKUPS")]
    pub max_concurrent_backups: Option<usize>,

    /// Longest a backup may run, in ms: a client that reads it slower is
    /// cut off, which lets go of the store view it holds. [default: 3600000]
    #[arg(long, env = "RAFT_BACKUP_MAX_DURATION_MS")]
    pub backup_max_duration_ms: Option<u64>,

    /// Log entries an `Idempotency-Key` is remembered for. Must be equal on
    /// every node. [default: 100000]
    #[arg(long, env = "RAFT_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Option<u64>,

    /// Log entries of revision history kept: past values stay readable
    /// (`?revision=`) down to this many entries below the last applied,
    /// older history is compacted (0: only `POST /v1/kv/compact`
    /// compacts, and history grows until it does). Must be equal on every
    /// node. [default: 100000]
    #[arg(long, env = "RAFT_HISTORY_RETENTION")]
    pub history_retention: Option<u64>,

    /// Watches (`GET /v1/watch`) open at once on this node; one more gets
    /// 503. [default: 10000]
    #[arg(long, env = "RAFT_WATCH_MAX_WATCHERS")]
    pub watch_max_watchers: Option<usize>,

    /// Applied batches a watch may fall behind before it catches up from
    /// the revision history instead (memory: this many batches of changes,
    /// shared by all watches). [default: 1024]
    #[arg(long, env = "RAFT_WATCH_BUFFER_BATCHES")]
    pub watch_buffer_batches: Option<usize>,

    /// Bytes of changes (keys and values, previous ones included, 64 more
    /// per change) a watch may fall behind before it lets go of them and
    /// catches up from the revision history instead; with
    /// --watch-buffer-batches, bounds the memory kept for slow watches.
    /// [default: 67108864]
    #[arg(long, env = "RAFT_WATCH_BUFFER_BYTES")]
    pub watch_buffer_bytes: Option<usize>,

    /// Changes read from the history per page when a watch replays or
    /// catches up. [default: 1000]
    #[arg(long, env = "RAFT_WATCH_REPLAY_PAGE")]
    pub watch_replay_page: Option<usize>,

    /// Bytes of keys and values (previous ones included) read from the
    /// history per page when a watch replays or catches up; a page holds
    /// at least one whole revision. [default: 4194304]
    #[arg(long, env = "RAFT_WATCH_REPLAY_PAGE_BYTES")]
    pub watch_replay_page_bytes: Option<usize>,

    /// Replay pages read at once on this node (each on a blocking thread,
    /// beside the Raft log's reads); other replaying watches wait their
    /// turn. [default: 4]
    #[arg(long, env = "RAFT_WATCH_MAX_REPLAYS")]
    pub watch_max_replays: Option<usize>,

    /// Responses queued per watch for a client that reads slowly, before
    /// the watch waits (and, past the buffer, catches up later from the
    /// history). [default: 16]
    #[arg(long, env = "RAFT_WATCH_QUEUE")]
    pub watch_queue: Option<usize>,

    /// How often a watch with `progress_notify=true` reports the revision
    /// it got to, in ms (0: never). [default: 5000]
    #[arg(long, env = "RAFT_WATCH_PROGRESS_INTERVAL_MS")]
    pub watch_progress_interval_ms: Option<u64>,

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

    /// Serve etcd's v3 gRPC API (KV, Maintenance, Cluster) on this
    /// address, beside the HTTP API, with the same TLS and tokens (a token
    /// as `authorization: Bearer <token>` metadata). [default: off]
    #[arg(long, env = "RAFT_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,

    /// The gRPC address (`host:port`) other members list in
    /// `Cluster.MemberList` for clients to reach this node's gRPC API at.
    /// [default: `--grpc-listen`, with the host of the client advertise
    /// address when it listens on an unspecified address]
    #[arg(long, env = "RAFT_GRPC_ADVERTISE", value_name = "HOST:PORT")]
    pub grpc_advertise: Option<String>,

    /// Largest gRPC request message, bytes; larger ones fail with
    /// RESOURCE_EXHAUSTED. [default: 1572864 (etcd's 1.5 MiB)]
    #[arg(long, env = "RAFT_GRPC_MAX_REQUEST_BYTES")]
    pub grpc_max_request_bytes: Option<usize>,

    /// Calls (HTTP/2 streams) one gRPC connection may run at once.
    /// [default: 128]
    #[arg(long, env = "RAFT_GRPC_MAX_CONCURRENT_STREAMS")]
    pub grpc_max_concurrent_streams: Option<u32>,

    /// gRPC connections open at once; one more is closed at once.
    /// [default: 1024]
    #[arg(long, env = "RAFT_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,

    /// Watches one gRPC Watch stream may hold open at once; one more is
    /// refused (created, then canceled). [default: 1000]
    #[arg(long, env = "RAFT_GRPC_MAX_WATCHES_PER_STREAM")]
    pub grpc_max_watches_per_stream: Option<usize>,
    /// A gRPC connection that sent nothing for this long is sent an HTTP/2
    /// PING, and closed when it does not answer within as long again (a
    /// new connection must send the HTTP/2 preface within
    /// `--http-tls-handshake-timeout-ms`). [default: 60000]
    #[arg(long, env = "RAFT_GRPC_KEEPALIVE_MS")]
    pub grpc_keepalive_ms: Option<u64>,
    /// A gRPC Snapshot stream whose client takes no chunk for this long
    /// ends with an error (UNAVAILABLE), and the snapshot it held is
    /// released. [default: 60000]
    #[arg(long, env = "RAFT_GRPC_SNAPSHOT_SEND_TIMEOUT_MS")]
    pub grpc_snapshot_send_timeout_ms: Option<u64>,
    /// How often a node checks, once its gRPC URL is recorded, that it
    /// still is (no log entry unless another URL was recorded since; the
    /// node's own URL wins, up to 3 times). At least 1000.
    /// [default: 60000]
    #[arg(long, env = "RAFT_GRPC_URL_CHECK_INTERVAL_MS")]
    pub grpc_url_check_interval_ms: Option<u64>,
    /// Failed gRPC `Auth.Authenticate` calls a node answers per second
    /// (with a burst of as many); more fail at once with
    /// RESOURCE_EXHAUSTED, so tokens cannot be guessed quickly.
    /// [default: 10]
    #[arg(long, env = "RAFT_GRPC_AUTH_FAILURES_PER_SEC")]
    pub grpc_auth_failures_per_sec: Option<u32>,

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
    /// member's (IPv6 addresses count per /64); more are refused. [default: 8]
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
            id_from_hostname,
            data_dir,
            client_listen,
            peer_listen,
            peer_advertise,
            client_advertise,
            initial_cluster,
            initial_cluster_token,
            tls_ca,
            tls_cert,
            tls_key,
            tick_ms,
            election_ticks,
            heartbeat_ticks,
            request_timeout_ms,
            failure_exit_delay_ms,
            storage_stall_timeout_ms,
            metrics_sample_interval_ms,
            max_key_bytes,
            max_value_bytes,
            max_concurrent_requests,
            max_list_limit,
            max_list_bytes,
            max_txn_ops,
            max_txn_range_keys,
            max_leases,
            max_keys_per_lease,
            lease_revokes_per_second,
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
            max_concurrent_backups,
            backup_max_duration_ms,
            idempotency_window,
            history_retention,
            watch_max_watchers,
            watch_buffer_batches,
            watch_replay_page,
            watch_replay_page_bytes,
            watch_max_replays,
            watch_buffer_bytes,
            watch_queue,
            watch_progress_interval_ms,
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
            join_admission_secs,
            grpc_listen,
            grpc_advertise,
            grpc_max_request_bytes,
            grpc_max_concurrent_streams,
            grpc_max_connections,
            grpc_max_watches_per_stream,
            grpc_keepalive_ms,
            grpc_snapshot_send_timeout_ms,
            grpc_url_check_interval_ms,
            grpc_auth_failures_per_sec
        )
    }
}

fn read_file(path: &Path) -> Result<RunArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}
