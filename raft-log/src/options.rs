//! Settings of a [`RocksLog`](crate::RocksLog), with the reasons for each default.

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every write batch is synced to disk (fsync of the WAL) before
    /// `append` returns. The only setting under which Raft's promises hold.
    #[default]
    Always,
    /// UNSAFE: writes go to the WAL without a sync. They survive a process
    /// crash but not a power loss or kernel crash, so acknowledged entries
    /// can be lost. For benchmarks only; the store logs a warning when opened
    /// this way and reports it in [`RocksLog::sync_policy`](crate::RocksLog::sync_policy).
    UnsafeNoSync,
}

/// Block compression of the log's SST files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4: cheap on CPU, worthwhile on text-like payloads. The default.
    #[default]
    Lz4,
}

/// Options for opening a [`RocksLog`](crate::RocksLog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksLogOptions {
    /// When a write is acknowledged. Default: [`SyncPolicy::Always`].
    pub sync: SyncPolicy,
    /// Create the directory and the store when missing. Default: true.
    pub create_if_missing: bool,
    /// Size of RocksDB's block cache for reads. Default: 64 MiB.
    pub block_cache_bytes: usize,
    /// Size of a memtable before it is flushed. Default: 64 MiB.
    pub write_buffer_bytes: usize,
    /// Compression of SST files. Default: LZ4.
    pub compression: Compression,
    /// Writes merged into one synced batch at most (group commit). Default: 4096.
    pub max_group_commit_requests: usize,
    /// Writes queued for the writer thread at most; `append` waits when full.
    /// Default: 4096.
    pub write_queue_capacity: usize,
    /// More column families to create and open in the same database (the
    /// node keeps its key-value data beside the log this way).
    pub extra_column_families: Vec<String>,
    /// Names of files a directory without a database may hold: a new store
    /// is created beside them (a caller's own marker, written first).
    /// Anything else there is refused as before. Default: none.
    pub new_store_beside: Vec<String>,
}

impl Default for RocksLogOptions {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Always,
            create_if_missing: true,
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 64 << 20,
            compression: Compression::Lz4,
            max_group_commit_requests: 4096,
            write_queue_capacity: 4096,
            extra_column_families: Vec::new(),
            new_store_beside: Vec::new(),
        }
    }
}
