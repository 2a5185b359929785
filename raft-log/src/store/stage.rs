//! Validation of each mutation against the cache: append, truncation,
//! purge, snapshot records and installs. A request is staged whole or
//! refused, before any byte of it reaches RocksDB.

use raft_core::{Entry, Index, StorageError};

use super::writer::{BatchOp, Op};
use super::{KEY_HARD_STATE, KEY_PURGED, KEY_SNAPSHOT};
use crate::cache::Cache;
use crate::record;

/// Validates `op` against `cache`, applies it there and lists its batch
/// operations. On error, `cache` and `ops` may be half-updated: the caller
/// stages on a copy and drops it.
pub(super) fn stage(cache: &mut Cache, ops: &mut Vec<BatchOp>, op: Op) -> Result<(), StorageError> {
    match op {
        Op::Write(w) => {
            // Committed entries are protected by the commit index saved
            // before this write: the write's own hard state may commit the
            // very entries it appends after a truncation.
            let commit = cache.hard_state.commit;
            if let Some(hs) = w.hard_state {
                cache.hard_state = hs;
                ops.push(BatchOp::Put {
                    meta: true,
                    key: KEY_HARD_STATE.to_vec(),
                    value: record::encode_hard_state(&hs),
                });
            }
            if let Some(from) = w.truncate_from {
                truncate(cache, ops, from, commit)?;
            }
            if !w.entries.is_empty() {
                append(cache, ops, w.entries, commit)?;
            }
        }
        Op::Purge(up_to) => {
            if up_to > cache.purged.index {
                let end = up_to.min(cache.last.index) + 1;
                if cache.first_index() < end {
                    ops.push(BatchOp::DeleteRange {
                        from: cache.first_index(),
                        to: end,
                    });
                }
                cache.purge(up_to);
                ops.push(BatchOp::Put {
                    meta: true,
                    key: KEY_PURGED.to_vec(),
                    value: record::encode_log_id(cache.purged),
                });
            }
        }
        Op::Snapshot(meta) => {
            ops.push(BatchOp::Put {
                meta: true,
                key: KEY_SNAPSHOT.to_vec(),
                value: record::encode_snapshot_meta(&meta),
            });
            cache.snapshot = Some(meta);
        }
        Op::SaveSnapshot(meta, purge_to) => {
            if purge_to > meta.last_log_id.index {
                return Err(StorageError::Invalid(format!(
                    "purge to {purge_to} past the snapshot's last index {}",
                    meta.last_log_id.index
                )));
            }
            stage(cache, ops, Op::Snapshot(meta))?;
            stage(cache, ops, Op::Purge(purge_to))?;
        }
        Op::InstallSnapshot(meta) => {
            let id = meta.last_log_id;
            if !cache.is_empty() {
                ops.push(BatchOp::DeleteRange {
                    from: cache.first_index(),
                    to: Index::MAX,
                });
            }
            cache.runs.clear();
            cache.memberships.clear();
            cache.purged = id;
            cache.last = id;
            ops.push(BatchOp::Put {
                meta: true,
                key: KEY_PURGED.to_vec(),
                value: record::encode_log_id(id),
            });
            if cache.hard_state.commit < id.index {
                // The snapshot is committed: never let the saved commit
                // index point below it.
                cache.hard_state.commit = id.index;
                ops.push(BatchOp::Put {
                    meta: true,
                    key: KEY_HARD_STATE.to_vec(),
                    value: record::encode_hard_state(&cache.hard_state),
                });
            }
            stage(cache, ops, Op::Snapshot(meta))?;
        }
    }
    Ok(())
}

fn truncate(
    cache: &mut Cache,
    ops: &mut Vec<BatchOp>,
    from: Index,
    commit: Index,
) -> Result<(), StorageError> {
    if from <= cache.purged.index || from == 0 {
        return Err(StorageError::Invalid(format!(
            "truncate from {from} reaches into the purged prefix (first index {})",
            cache.first_index()
        )));
    }
    if from <= commit && from <= cache.last.index {
        // Raft never removes a committed entry (Leader Completeness); a
        // caller that tries is broken, and obeying would lose data.
        return Err(StorageError::Invalid(format!(
            "truncate from {from} would remove committed entries (commit index {commit})"
        )));
    }
    if from <= cache.last.index {
        // Open-ended, so nothing past the cached end can survive either.
        ops.push(BatchOp::DeleteRange {
            from,
            to: Index::MAX,
        });
        cache.cut(from);
    }
    Ok(())
}

fn append(
    cache: &mut Cache,
    ops: &mut Vec<BatchOp>,
    entries: Vec<Entry>,
    commit: Index,
) -> Result<(), StorageError> {
    let first = entries[0].index;
    if first <= cache.purged.index || first == 0 {
        return Err(StorageError::Invalid(format!(
            "append at {first} is at or below the purged prefix (first index {})",
            cache.first_index()
        )));
    }
    if first > cache.last.index + 1 {
        return Err(StorageError::Invalid(format!(
            "append at {first} leaves a gap after the last index {}",
            cache.last.index
        )));
    }
    for (i, e) in entries.iter().enumerate() {
        if e.index != first + i as u64 {
            return Err(StorageError::Invalid(format!(
                "entries are not consecutive: {} follows {}",
                e.index,
                first + i as u64 - 1
            )));
        }
    }
    truncate(cache, ops, first, commit)?;
    for e in &entries {
        if e.term < cache.last.term {
            return Err(StorageError::Invalid(format!(
                "entry {} has term {} below the previous entry's {}",
                e.index, e.term, cache.last.term
            )));
        }
        let value = record::encode_entry(e);
        // Pair the check: what is written must read back as the same entry.
        debug_assert_eq!(
            record::decode_entry(&value, e.index).as_ref(),
            Ok(e),
            "record round trip"
        );
        ops.push(BatchOp::Put {
            meta: false,
            key: record::entry_key(e.index).to_vec(),
            value,
        });
        cache.push(e);
    }
    Ok(())
}
