//! Errors of opening a store. Errors of operations on an open store are
//! [`raft_core::StorageError`]s.

use std::path::PathBuf;

/// Why a store could not be opened. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path exists and is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory does not exist and `create_if_missing` is off.
    #[error("{path}: no such directory (create_if_missing is off)")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The directory holds something that is not a raft-log store.
    #[error("{path}: not a raft-log store: {reason}")]
    NotAStore {
        /// The path.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The store was written in a format this build does not read.
    #[error("{path}: store format {found:?}, this build reads {expected:?}")]
    Format {
        /// The path.
        path: PathBuf,
        /// The format marker found.
        found: String,
        /// The marker this build writes.
        expected: String,
    },
    /// A stored record failed its checks.
    #[error("{path}: corrupted record at index {index}: {reason}")]
    Corruption {
        /// The path.
        path: PathBuf,
        /// The entry index (0 for metadata).
        index: u64,
        /// What did not match.
        reason: String,
    },
    /// A file-system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// RocksDB refused to open the database.
    #[error("{path}: rocksdb: {source}")]
    Rocks {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: rocksdb::Error,
    },
    /// An option is out of range.
    #[error("invalid option {0}")]
    InvalidOption(String),
}
