//! Node settings: command-line flags, `RAFT_…` environment variables and a
//! TOML file, in that order of precedence, over documented defaults.
//!
//! [`flags`] holds the settings as given ([`RunArgs`]) and their merge with
//! the file; `validate.rs` applies the defaults and checks the result into
//! a [`NodeConfig`]; `security.rs` reads token files and names what is
//! unsafe in a configuration.

pub mod flags;
pub mod identity;
mod security;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;

use raft_net_quic::PeerAddr;
use std::path::PathBuf;
use std::time::Duration;

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

pub use flags::RunArgs;
pub use security::read_token;
pub use validate::{check_client_addr, grpc_url_of, parse_initial_cluster};

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
    /// Peer (QUIC) address: an IP address or a DNS name (looked up at every
    /// connection attempt), and a port.
    pub peer_addr: PeerAddr,
    /// HTTP address (`host:port`), where requests are forwarded to.
    pub client_addr: String,
    /// etcd gRPC client URL (`http://host:port` or `https://host:port`)
    /// when the member serves the gRPC API and has published it; records
    /// from earlier releases have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_url: Option<String>,
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
    /// Part of a new cluster's id (`--initial-cluster-token`).
    pub initial_cluster_token: String,
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
    /// How often the sampled metrics (data directory size, free space,
    /// certificate expiry, follower lag) are refreshed.
    pub metrics_sample_interval: Duration,
    /// Key size limit.
    pub max_key_bytes: usize,
    /// Value size limit.
    pub max_value_bytes: usize,
    /// Concurrency limit of the HTTP API.
    pub max_concurrent_requests: usize,
    /// Range listing limit.
    pub max_list_limit: usize,
    /// Largest range-listing answer in bytes; also the most bytes of keys
    /// and values a transaction reads or deletes.
    pub max_list_bytes: usize,
    /// Most compares, and operations per branch, of a transaction.
    pub max_txn_ops: usize,
    /// Most keys the ranges of one transaction may cover, together.
    pub max_txn_range_keys: u32,
    /// Most leases at once (`--max-leases`).
    pub max_leases: u64,
    /// Most keys attached to one lease (`--max-keys-per-lease`).
    pub max_keys_per_lease: u32,
    /// Expired leases the leader revokes per second, at most.
    pub lease_revokes_per_second: u32,
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
    /// Backups served at once.
    pub max_concurrent_backups: usize,
    /// Longest a backup may run.
    pub backup_max_duration: Duration,
    /// Idempotency window in log entries.
    pub idempotency_window: u64,
    /// Revision history kept, in log entries below the last applied (0:
    /// compacted only by command).
    pub history_retention: u64,
    /// The limits of watches.
    pub watch: crate::watch::WatchConfig,
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
    /// Peer handshakes in progress from one non-member IP address (IPv6: one /64).
    pub peer_handshakes_per_ip: usize,
    /// Inbound peer connection slots reserved for members' addresses.
    pub peer_reserved_connections: usize,
    /// How long a recorded address of a node not (yet) in the
    /// configuration admits it.
    pub join_admission: Duration,

    // etcd's v3 gRPC API (raft-node/src/grpc).
    /// Where etcd's v3 gRPC API listens (`None`: off).
    pub grpc_listen: Option<SocketAddr>,
    /// Largest gRPC request message, bytes.
    pub grpc_max_request_bytes: usize,
    /// Concurrent HTTP/2 streams (calls) one gRPC connection may hold.
    pub grpc_max_concurrent_streams: u32,
    /// gRPC connections open at once.
    pub grpc_max_connections: usize,
    /// Watches one gRPC Watch stream may hold open at once.
    pub grpc_max_watches_per_stream: usize,
    /// Silence after which a gRPC connection is pinged, and the time it has
    /// to answer.
    pub grpc_keepalive: Duration,
    /// How long a gRPC Snapshot stream may wait for its client to take a
    /// chunk before it ends with an error.
    pub grpc_snapshot_send_timeout: Duration,
    /// How often a node checks that its recorded gRPC URL is still its
    /// own.
    pub grpc_url_check_interval: Duration,
    /// Failed `Auth.Authenticate` calls answered per second (and burst).
    pub grpc_auth_failures_per_sec: u32,
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
            .field("initial_cluster_token", &self.initial_cluster_token)
            .field("advertise", &self.advertise)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("grpc_listen", &self.grpc_listen)
            .field("tick", &self.tick)
            .field("election_ticks", &self.election_ticks)
            .field("heartbeat_ticks", &self.heartbeat_ticks)
            .field("request_timeout", &self.request_timeout)
            .field("failure_exit_delay", &self.failure_exit_delay)
            .field("storage_stall_timeout", &self.storage_stall_timeout)
            .field("metrics_sample_interval", &self.metrics_sample_interval)
            .field("max_key_bytes", &self.max_key_bytes)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_list_limit", &self.max_list_limit)
            .field("max_list_bytes", &self.max_list_bytes)
            .field("max_txn_ops", &self.max_txn_ops)
            .field("max_txn_range_keys", &self.max_txn_range_keys)
            .field("max_leases", &self.max_leases)
            .field("max_keys_per_lease", &self.max_keys_per_lease)
            .field("lease_revokes_per_second", &self.lease_revokes_per_second)
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
            .field("max_concurrent_backups", &self.max_concurrent_backups)
            .field("backup_max_duration", &self.backup_max_duration)
            .field("idempotency_window", &self.idempotency_window)
            .field("history_retention", &self.history_retention)
            .field("watch", &self.watch)
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

/// The largest key plus value a node accepts: an entry must fit, with
/// room for framing, in one frame of the peer transport (16 MiB by default)
/// and well within its per-peer replication queue.
pub const ENTRY_BYTES_MAX: usize = 8 << 20;

/// A setting that is missing or wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
