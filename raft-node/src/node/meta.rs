//! This node's own metadata (not replicated), in the `node_meta` column
//! family: the member addresses it knows, whether it joined a cluster, the
//! idempotency window its store was created with, and the voters the
//! cluster was created with.

use anyhow::{bail, Context};
use raft_core::NodeId;

/// Column family of this node's own metadata (not replicated): the
/// addresses of the members.
pub const NODE_META_CF: &str = "node_meta";
/// The member addresses ([`crate::members::MemberDirectory`]).
pub(crate) const MEMBERS_KEY: &[u8] = b"members";
/// Set once a node started with `--join` was added to a cluster.
pub(super) const JOINED_KEY: &[u8] = b"joined";
const WINDOW_KEY: &[u8] = b"idempotency_window";
const RETENTION_KEY: &[u8] = b"history_retention";
/// The voters the cluster was created with (`--initial-cluster`), written
/// once at creation: the configuration of a log that holds none yet.
const INITIAL_VOTERS_KEY: &[u8] = b"initial_voters";

fn cf(db: &rocksdb::DB) -> anyhow::Result<&rocksdb::ColumnFamily> {
    db.cf_handle(NODE_META_CF)
        .context("node_meta column family missing")
}

fn put_synced(db: &rocksdb::DB, key: &[u8], value: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(cf(db)?, key, value, &opts)?;
    Ok(())
}

/// A JSON value of this node's own metadata (`what` names it in errors).
pub(crate) fn load<T: serde::de::DeserializeOwned>(
    db: &rocksdb::DB,
    key: &[u8],
    what: &str,
) -> anyhow::Result<Option<T>> {
    match db.get_cf(cf(db)?, key)? {
        None => Ok(None),
        Some(v) => {
            Ok(Some(serde_json::from_slice(&v).with_context(|| {
                format!("the stored {what} are corrupted")
            })?))
        }
    }
}

/// Writes a JSON value of this node's own metadata, synced.
pub(crate) fn save<T: serde::Serialize + ?Sized>(
    db: &rocksdb::DB,
    key: &[u8],
    value: &T,
) -> anyhow::Result<()> {
    put_synced(db, key, serde_json::to_vec(value)?)
}

/// Whether the flag `key` is set.
pub(super) fn flag(db: &rocksdb::DB, key: &[u8]) -> anyhow::Result<bool> {
    Ok(db.get_cf(cf(db)?, key)?.is_some())
}

/// Sets the flag `key`, synced.
pub(super) fn set_flag(db: &rocksdb::DB, key: &[u8]) -> anyhow::Result<()> {
    put_synced(db, key, b"1")
}

pub(crate) fn load_initial_voters(db: &rocksdb::DB) -> anyhow::Result<Option<Vec<NodeId>>> {
    load(db, INITIAL_VOTERS_KEY, "initial voters")
}

pub(crate) fn save_initial_voters(db: &rocksdb::DB, voters: &[NodeId]) -> anyhow::Result<()> {
    save(db, INITIAL_VOTERS_KEY, voters)
}

/// Forgetting idempotency tokens is part of the replicated state, so the
/// window must never change under a store: the first start records it.
pub(super) fn check_idempotency_window(db: &rocksdb::DB, window: u64) -> anyhow::Result<()> {
    check_fixed(db, WINDOW_KEY, "--idempotency-window", window)
}

/// Automatic compaction is part of the replicated state too: the history
/// retention never changes under a store either.
pub(super) fn check_history_retention(db: &rocksdb::DB, entries: u64) -> anyhow::Result<()> {
    check_fixed(db, RETENTION_KEY, "--history-retention", entries)
}

/// Records `value` of `flag` at the first start; refuses another later.
fn check_fixed(db: &rocksdb::DB, key: &[u8], flag: &str, value: u64) -> anyhow::Result<()> {
    let Some(v) = db.get_cf(cf(db)?, key)? else {
        return put_synced(db, key, value.to_be_bytes());
    };
    let stored = <[u8; 8]>::try_from(v.as_slice())
        .map(u64::from_be_bytes)
        .map_err(|_| anyhow::anyhow!("stored {flag} is corrupted"))?;
    if stored != value {
        bail!(
            "{flag} is {value} but this store was created with {stored}; \
             every node must keep the value the cluster started with"
        );
    }
    Ok(())
}
