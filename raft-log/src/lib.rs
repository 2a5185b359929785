//! # raft-log
//!
//! A durable Raft log on RocksDB: [`RocksLog`] implements raft-core's
//! [`LogStorage`](raft_core::LogStorage).
//!
//! - **Durability**: a write returns only once it is synced (WAL on, one
//!   `fsync` per batch). Concurrent writes are group-committed: whatever
//!   queues while a sync is in flight goes into the next single batch.
//! - **Atomicity**: each write (hard state, truncation, append, purge) is one
//!   RocksDB `WriteBatch`, so after a crash it is there whole or not at all.
//! - **Integrity**: every record carries a format version and a CRC-32C and
//!   repeats its own index; a mismatch is a typed
//!   [`StorageError::Corruption`](raft_core::StorageError::Corruption) naming
//!   the index, and the store refuses to open or serve it.
//! - **Layout**: entries in column family [`LOG_CF`] keyed by big-endian
//!   index; hard state, purge point, snapshot metadata and a format marker in
//!   [`META_CF`]. Other column families can live in the same database
//!   ([`RocksLogOptions::extra_column_families`], [`RocksLog::db`]).
//!
//! Everything else a user needs is at the crate root. The [`record`]
//! module stays public as a namespace: the encode and decode functions of
//! each record kind of the on-disk format (`record::encode_snapshot_meta`,
//! ...), for a program that keeps such records in its own column families,
//! as raft-node does with snapshot metadata.
//!
//! # Example: open a store and run a node on it
//!
//! ```no_run
//! use raft_core::memory::{MemKv, MemNetwork};
//! use raft_core::{Config, DriverConfig, Membership, Raft};
//! use raft_log::{RocksLog, RocksLogOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let log = RocksLog::open("/var/lib/raft/node-1", RocksLogOptions::default())?;
//! let net = MemNetwork::new();
//! let node = Raft::start(
//!     Config::new(1),
//!     DriverConfig::default(),
//!     Membership::new([1]),
//!     log,
//!     MemKv::new(),
//!     net.transport(1),
//! )
//! .await?;
//! node.propose(bytes::Bytes::from_static(b"hello")).await?;
//! # Ok(()) }
//! ```
//!
//! # Options
//!
//! See [`RocksLogOptions`]: sync policy ([`SyncPolicy::Always`] by default;
//! [`SyncPolicy::UnsafeNoSync`] only for benchmarks), block cache size
//! (64 MiB), memtable size (64 MiB), compression (LZ4), group-commit and
//! queue limits.

mod cache;
mod error;
mod metrics_help;
mod options;
pub mod record;
mod store;
mod wal_check;

pub use error::OpenError;
pub use metrics_help::describe_metrics;
pub use options::{Compression, RocksLogOptions, SyncPolicy};
pub use store::{RocksLog, FORMAT, LOG_CF, META_CF};
