//! What a starting node checks and repairs before its engine is built: a
//! snapshot install interrupted by a crash, and whether the state machine
//! and the log fit together.

use super::StartError;
use crate::storage::{LogStorage, StorageError, StoredState};
use crate::types::{Index, SnapshotMeta};

/// Finishes a snapshot install that a crash interrupted after the state
/// machine took the snapshot (applied up to `applied`, latest snapshot
/// `latest`) and before the log recorded it, as [`Raft::start`](super::Raft::start)
/// does first; returns the log's state after it.
///
/// For offline tools that append to a stopped node's log (`raft-node
/// recover`): finishing the install replaces the whole log by the
/// snapshot, so an entry appended before it would be lost at the node's
/// next start. Run this first, then append after the returned state.
///
/// # Errors
///
/// As [`Raft::start`](super::Raft::start): [`StartError::Inconsistent`] or
/// [`StartError::Storage`].
pub async fn complete_interrupted_install<L: LogStorage>(
    log: &L,
    applied: Index,
    latest: Option<&SnapshotMeta>,
) -> Result<StoredState, StartError> {
    let stored = log.stored_state().await?;
    recover(log, stored, applied, latest).await
}

/// Finishes a snapshot install that a crash interrupted after the state
/// machine took the snapshot and before the log recorded it, then checks
/// that the state machine (applied up to `applied`, latest snapshot
/// `latest`) and the log (`stored`) fit together. Returns the log's state
/// to start from.
///
/// # Errors
///
/// [`StartError::Inconsistent`] when the state machine is ahead of the log
/// with no snapshot to explain it, or behind its purged prefix;
/// [`StartError::Storage`] when the log has a gap after its purged prefix
/// or cannot be read.
pub(super) async fn recover<L: LogStorage>(
    log: &L,
    mut stored: StoredState,
    applied: Index,
    latest: Option<&SnapshotMeta>,
) -> Result<StoredState, StartError> {
    let log_end = stored
        .last_log_id
        .map_or(stored.purged.index, |l| l.index)
        .max(stored.snapshot.as_ref().map_or(0, |s| s.last_log_id.index));
    if applied > log_end || log_disagrees(log, &stored, applied, latest).await? {
        // Finish it.
        match latest {
            Some(meta) if meta.last_log_id.index == applied => {
                tracing::warn!(last = %meta.last_log_id, "completing an interrupted snapshot install");
                log.install_snapshot(meta.clone()).await?;
                stored = log.stored_state().await?;
            }
            _ => {
                return Err(StartError::Inconsistent(format!(
                    "the state machine applied up to {applied} but the log ends at {log_end} \
                     and no snapshot of the state machine explains it"
                )))
            }
        }
    }
    check_fit(&stored, applied)?;
    Ok(stored)
}

/// Whether the log holds another entry at the index of the state
/// machine's latest snapshot than the snapshot's: an install interrupted
/// after the state machine took it shows so (or as a state machine ahead
/// of the log).
async fn log_disagrees<L: LogStorage>(
    log: &L,
    stored: &StoredState,
    applied: Index,
    latest: Option<&SnapshotMeta>,
) -> Result<bool, StorageError> {
    let Some(meta) = latest else {
        return Ok(false);
    };
    let at = meta.last_log_id.index;
    let in_log = stored.last_log_id.is_some_and(|l| at <= l.index);
    if at == applied && at > stored.purged.index && in_log {
        let entry = log.entries(at, at + 1, 1).await?;
        return Ok(entry.first().map(|e| e.term) != Some(meta.last_log_id.term));
    }
    Ok(false)
}

/// Checks that the log resumes right after its purged prefix and that the
/// state machine applied at least that prefix.
fn check_fit(stored: &StoredState, applied: Index) -> Result<(), StartError> {
    if applied < stored.purged.index {
        return Err(StartError::Inconsistent(format!(
            "the state machine applied only up to {applied} but the log was purged up to {}: \
             the entries in between are gone (was the state machine's data lost?)",
            stored.purged.index
        )));
    }
    // The log must resume right after the purged prefix: a gap means
    // entries were lost.
    let expected_first = stored.purged.index + 1;
    if let Some(first) = stored.first_log_id {
        if first.index != expected_first {
            return Err(StartError::Storage(StorageError::Corruption {
                index: expected_first,
                reason: format!(
                    "the log starts at {} but was purged only up to {}",
                    first.index,
                    expected_first - 1
                ),
            }));
        }
    }
    Ok(())
}
