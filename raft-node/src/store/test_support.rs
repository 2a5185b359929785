//! Stores on RocksDB for the tests, as the node opens them: a log with the
//! store's column families, and its state machine.

use std::path::Path;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload};
use raft_log::{RocksLog, RocksLogOptions};

use super::{KvStateMachine, KV_CF, KV_META_CF};
use crate::command::{Command, Op, Precondition};

/// A RocksDB log in `dir` with the store's column families.
pub(crate) fn open_log(dir: &Path) -> RocksLog {
    RocksLog::open(
        dir,
        RocksLogOptions {
            extra_column_families: vec![KV_CF.into(), KV_META_CF.into()],
            ..RocksLogOptions::default()
        },
    )
    .unwrap()
}

/// A store in `dir` and its state machine, which remembers idempotency
/// tokens for `window` entries.
pub(crate) fn store(dir: &Path, window: u64) -> (RocksLog, KvStateMachine) {
    let log = open_log(dir);
    let sm = KvStateMachine::new(log.db().clone(), window).unwrap();
    (log, sm)
}

/// [`store`] with snapshots enabled, in `snapshots`.
pub(crate) fn snapshotting_in(
    dir: &Path,
    window: u64,
    snapshots: &Path,
) -> (RocksLog, KvStateMachine) {
    let (log, sm) = store(dir, window);
    (log, sm.with_snapshot_dir(snapshots).unwrap())
}

/// [`store`] with snapshots enabled, in `dir/snapshots`.
pub(crate) fn snapshotting(dir: &Path, window: u64) -> (RocksLog, KvStateMachine) {
    snapshotting_in(dir, window, &dir.join("snapshots"))
}

/// Log entry `index` (term 1) of the command `op` on `key`, without a
/// precondition, an idempotency key or a principal.
pub(crate) fn entry(index: u64, key: &str, op: Op) -> Entry {
    let c = Command {
        op,
        key: Bytes::from(key.to_owned()),
        precondition: Precondition::None,
        idempotency_key: None,
        principal: None,
    };
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(c.encode()),
    }
}

/// Log entry `index` ([`entry`]) that puts `v{index}` at `key`.
pub(crate) fn put(index: u64, key: &str) -> Entry {
    entry(index, key, Op::Put(Bytes::from(format!("v{index}"))))
}
