//! RocksDB errors as [`StorageError`]s.

use std::path::Path;

use raft_core::{Index, StorageError};

/// Maps a RocksDB error to a storage error, keeping "disk full" recognisable.
pub(super) fn storage_error(path: &Path, e: rocksdb::Error) -> StorageError {
    let msg = e.to_string();
    match e.kind() {
        rocksdb::ErrorKind::Corruption => {
            metrics::counter!("raft_log_corruptions_total").increment(1);
            StorageError::Corruption {
                index: 0,
                reason: format!("{}: {msg}", path.display()),
            }
        }
        _ if msg.contains("No space left") => StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{}: {msg}", path.display()),
        )),
        rocksdb::ErrorKind::IOError => {
            StorageError::Io(std::io::Error::other(format!("{}: {msg}", path.display())))
        }
        _ => StorageError::backend(format!("{}: {msg}", path.display())),
    }
}

/// A copy of `e` for each caller of a failed group write, keeping its kind
/// (`StorageError` is not `Clone` because `io::Error` is not).
pub(super) fn copy_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Corruption { index, reason } => StorageError::Corruption {
            index: *index,
            reason: reason.clone(),
        },
        StorageError::Invalid(m) => StorageError::Invalid(m.clone()),
        StorageError::Compacted { first_index } => StorageError::Compacted {
            first_index: *first_index,
        },
        StorageError::Io(io) => StorageError::Io(std::io::Error::new(io.kind(), io.to_string())),
        StorageError::Unsupported(m) => StorageError::Unsupported(m.clone()),
        // The cause is not `Clone`: each copy keeps its description.
        other => StorageError::backend(other.to_string()),
    }
}

pub(super) fn corruption(index: Index, reason: impl Into<String>) -> StorageError {
    metrics::counter!("raft_log_corruptions_total").increment(1);
    StorageError::Corruption {
        index,
        reason: reason.into(),
    }
}
