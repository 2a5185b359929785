//! Offline commands on a data directory (the node stopped):
//!
//! - `raft-node restore`: seeds a NEW node's data directory from a backup
//!   file ([`crate::backup`]). Every node of the new cluster is restored
//!   from the same file with the same `--initial-cluster`; they start with
//!   the backup's data at its index and term, as a cluster of the voters
//!   named there (the backup's own configuration and member addresses are
//!   replaced by the new cluster's).
//! - `raft-node recover --force-new-cluster`: after losing quorum for
//!   good, makes one survivor the single voter of its cluster, keeping its
//!   log and data; members are then added back through the membership API.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use raft_core::{
    Entry, EntryPayload, LogId, LogStorage, Membership, NodeId, SnapshotMeta, StateMachine,
};
use raft_log::{RocksLog, RocksLogOptions};

use crate::config::Member;
use crate::members::MemberDirectory;
use crate::node::{cluster_id, meta, NODE_META_CF};
use crate::store::{KvStateMachine, KV_CF, KV_META_CF};

/// `raft-node restore` settings.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file (`raft-node ctl snapshot save FILE`).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The new node's data directory; it must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// This node's id in the new cluster.
    #[arg(long)]
    pub id: NodeId,
    /// The new cluster, `ID=PEER_ADDR/CLIENT_ADDR,…`, as `run` takes it:
    /// every node of it is restored from the same file with the same value.
    #[arg(long)]
    pub initial_cluster: String,
    /// Part of the new cluster's id, with the backup's SHA-256 and
    /// `--initial-cluster` (the same on every node of it).
    #[arg(long, default_value = crate::node::cluster_id::DEFAULT_TOKEN)]
    pub initial_cluster_token: String,
}

/// `raft-node recover` settings.
#[derive(Debug, Clone, Args)]
pub struct RecoverArgs {
    /// The survivor's data directory (the node must be stopped).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The survivor's node id.
    #[arg(long)]
    pub id: NodeId,
    /// Required: makes this node the single voter of its cluster. Run it
    /// on ONE survivor only (two make two clusters: split brain); every
    /// other member's copy of the data must never run again.
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Required to recover a store that was recovered before and has
    /// gained other voters since: they may still run (see the message).
    #[arg(long)]
    pub again: bool,
}

/// Marks a store recovered with `--force-new-cluster` (when, at which
/// index, the voters before), in `node_meta`.
const FORCED_KEY: &[u8] = b"forced_new_cluster";

/// Opens a stopped node's store with its column families.
fn open(dir: &Path) -> anyhow::Result<RocksLog> {
    open_with(dir, Vec::new())
}

/// [`open`], creating the store beside a restore's [`RESTORING_MARKER`].
fn open_beside_marker(dir: &Path) -> anyhow::Result<RocksLog> {
    open_with(dir, vec![RESTORING_MARKER.into()])
}

fn open_with(dir: &Path, new_store_beside: Vec<String>) -> anyhow::Result<RocksLog> {
    RocksLog::open(
        dir,
        RocksLogOptions {
            extra_column_families: vec![KV_CF.into(), KV_META_CF.into(), NODE_META_CF.into()],
            new_store_beside,
            ..RocksLogOptions::default()
        },
    )
    .with_context(|| {
        format!(
            "opening the store in {} (is a node still running on it? stop it first)",
            dir.display()
        )
    })
}

/// A file in a data directory whose restore has not finished: `run` and
/// `recover` refuse the directory while it is there. A restore builds the
/// store in place (the data directory may be a mount point, which nothing
/// can be renamed over), so a crash mid-way leaves a partial store that no
/// node may start on.
pub const RESTORING_MARKER: &str = "RESTORE-IN-PROGRESS";

/// Refuses a data directory that holds anything; whether it exists.
fn refuse_non_empty(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "refusing to restore into {}: it is not empty (a restore seeds a new \
                     node's directory; move the old one away first)",
                    dir.display()
                );
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Refuses a data directory a restore did not finish in.
///
/// # Errors
///
/// [`RESTORING_MARKER`] is in `dir`.
pub fn refuse_unfinished_restore(dir: &Path) -> anyhow::Result<()> {
    if dir.join(RESTORING_MARKER).exists() {
        bail!(
            "{} holds a restore that did not finish ({RESTORING_MARKER} is there): empty the \
             directory and run raft-node restore again",
            dir.display()
        );
    }
    Ok(())
}

/// Undoes a failed restore: the data directory is removed if the restore
/// created it, else emptied.
fn undo(dir: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let marker = dir.join(RESTORING_MARKER);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p == marker {
            continue;
        }
        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    // Last: a directory that could not be emptied stays refused.
    let _ = std::fs::remove_file(marker);
}

/// `dir` created, or made, private (0700): the store holds every key and
/// value.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let made = if dir.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    } else {
        crate::snapshot::create_private_dir(dir)
    };
    made.with_context(|| format!("making {} a private directory", dir.display()))
}

#[cfg(test)]
thread_local! {
    /// Set by a test: the restore on this thread panics (a crash: nothing
    /// is undone) once the first of the marker and the store is written.
    static CRASH_AFTER_FIRST_WRITE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Where a test makes the restore crash.
fn crash_point() {
    #[cfg(test)]
    if CRASH_AFTER_FIRST_WRITE.get() {
        panic!("crash after the first write of the restore");
    }
}

/// Creates `dir`'s marker file, durably.
fn mark(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(RESTORING_MARKER);
    std::fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("creating {}", marker.display()))?;
    crate::snapshot::sync_directory(dir).with_context(|| format!("syncing {}", dir.display()))
}

/// `raft-node restore`: checks the file, then builds the store in
/// `--data-dir` itself (created, or empty: it may be a mount point),
/// marked by [`RESTORING_MARKER`] until the store is complete.
///
/// # Errors
///
/// A corrupted or truncated file, a non-empty data directory, this id not
/// in `--initial-cluster`, or a store that cannot be written.
pub async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let members =
        crate::config::parse_initial_cluster(&a.initial_cluster).context("--initial-cluster")?;
    if !members.iter().any(|m| m.id == a.id) {
        bail!("--id {} is not in --initial-cluster", a.id);
    }
    let existed = refuse_non_empty(&a.data_dir)?;
    let verified = crate::backup::verify(&a.from)
        .with_context(|| format!("refusing to restore from {}", a.from.display()))?;
    let h = &verified.header;
    if let Some(w) = consistency_warning(h) {
        eprintln!("{w}");
    }
    let voters: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    let meta = SnapshotMeta {
        last_log_id: LogId {
            term: h.term,
            index: h.index,
        },
        membership: Membership::new(voters.iter().copied()),
    };
    // Nodes restored from other files, or into another cluster, differ.
    let cluster = cluster_id::for_restore(&verified.sha256, &members, &a.initial_cluster_token);
    let dir = &a.data_dir;
    private_dir(dir)?;
    let built = async {
        // The marker first, then the store beside it: a crash at any point
        // leaves the marker, and `run` and `recover` refuse the directory
        // (an empty store without it was taken for a new node).
        mark(dir)?;
        crash_point();
        let log = open_beside_marker(dir)?;
        let records = seed(log, dir, &a.from, &verified, &meta, &members).await?;
        // Before the marker goes: a finished restore has its id.
        let log = open(dir)?;
        cluster_id::save(log.db(), cluster)?;
        log.db().flush_wal(true).context("syncing the store")?;
        drop(log);
        std::fs::remove_file(dir.join(RESTORING_MARKER))
            .and_then(|()| crate::snapshot::sync_directory(dir))
            .with_context(|| format!("finishing the restore in {}", dir.display()))?;
        anyhow::Ok(records)
    };
    let records = built.await.inspect_err(|_| undo(dir, existed))?;
    println!(
        "restored {} ({} bytes, sha256 {}) into {}: index {}, term {}, {records} records; \
         node {} of a new cluster of voters {voters:?}, cluster id {}. Start it with `raft-node run --id {} \
         --data-dir {}` and its usual flags (--initial-cluster is no longer read)",
        a.from.display(),
        verified.bytes,
        verified.sha256,
        a.data_dir.display(),
        h.index,
        h.term,
        a.id,
        cluster_id::to_hex(cluster),
        a.id,
        a.data_dir.display()
    );
    Ok(())
}

/// Builds the restored store in `dir`: the snapshot file in its place,
/// loaded, the log starting after it, the new cluster's voters and
/// addresses recorded.
async fn seed(
    log: RocksLog,
    dir: &Path,
    from: &Path,
    verified: &crate::backup::VerifiedBackup,
    meta: &SnapshotMeta,
    members: &[Member],
) -> anyhow::Result<u64> {
    let db = log.db().clone();
    let snapshots = dir.join("snapshots");
    let sm = KvStateMachine::new(db.clone(), 1)?.with_snapshot_dir(&snapshots)?;
    let file = crate::store::snapshot_file(&snapshots, meta.last_log_id.index);
    crate::backup::extract_snapshot(from, verified, &file)?;
    crate::snapshot::sync_directory(&snapshots)?;
    let records = sm
        .seed(meta, members)
        .map_err(|e| anyhow::anyhow!("loading the backup into the store: {e}"))?;
    log.install_snapshot(meta.clone())
        .await
        .context("recording the snapshot in the log")?;
    let voters: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    meta::save_initial_voters(&db, &voters)?;
    MemberDirectory::save_initial(&db, members)?;
    db.flush_wal(true).context("syncing the store")?;
    drop(sm);
    drop(db);
    drop(log);
    Ok(records)
}

/// The warning `restore` prints for a backup that is not linearizable
/// (`ctl snapshot save --stale`, `?consistency=stale`): it is the serving
/// node's applied state, which may be behind the leader's.
fn consistency_warning(h: &crate::backup::BackupHeader) -> Option<String> {
    if h.consistency == "linearizable" {
        return None;
    }
    Some(format!(
        "WARNING: this backup is not linearizable (consistency: {}): it is node {}'s applied \
         state at index {}, which may have been behind the leader's, so it may miss writes \
         acknowledged before it was taken. Restore from a linearizable backup (`raft-node ctl \
         snapshot save FILE` without --stale, served by the leader) unless that is acceptable.",
        h.consistency, h.node, h.index
    ))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `raft-node recover --force-new-cluster`: appends a configuration entry
/// naming this node the only voter to its log (its log and data are kept;
/// entries not yet committed are committed by it alone once it leads).
///
/// # Errors
///
/// Without `--force-new-cluster`; a store that cannot be opened (a node
/// running on it); this node not a voter of the store's configuration.
pub async fn recover(a: RecoverArgs) -> anyhow::Result<()> {
    if !a.force_new_cluster {
        bail!(
            "recover rewrites this node's cluster to itself alone: use it only when a majority \
             of the voters is lost for good, on the survivor with the most recent data, and \
             give --force-new-cluster to confirm"
        );
    }
    refuse_unfinished_restore(&a.data_dir)?;
    if !a.data_dir.join("CURRENT").is_file() {
        bail!("{} holds no raft-node store", a.data_dir.display());
    }
    let log = open(&a.data_dir)?;
    let db = log.db().clone();
    if MemberDirectory::load_saved(&db)?.is_none() {
        bail!(
            "{} holds no cluster (no member addresses): nothing to recover",
            a.data_dir.display()
        );
    }
    // A snapshot install a crash interrupted is finished first, as the
    // node's start would finish it: that replaces the whole log by the
    // snapshot, the configuration entry appended here included.
    let stored = finish_interrupted_install(&a.data_dir, &log).await?;
    let current = match (&stored.membership, &stored.snapshot) {
        (Some((_, m)), _) => m.clone(),
        (None, Some(s)) => s.membership.clone(),
        (None, None) => Membership::new(meta::load_initial_voters(&db)?.unwrap_or_default()),
    };
    let was_voter = current.voters().contains(&a.id)
        || current.voters_outgoing().is_some_and(|v| v.contains(&a.id));
    if !was_voter {
        bail!(
            "node {} is not a voter of this store's configuration (voters {:?}, learners {:?}): \
             recover a node that was a voter",
            a.id,
            current.voters(),
            current.learners()
        );
    }
    refuse_second_recovery(&db, &a, &current)?;
    let last = stored
        .last_log_id
        .map_or(stored.purged.index, |l| l.index)
        .max(stored.snapshot.as_ref().map_or(0, |s| s.last_log_id.index));
    // Terms never go down along a log: a log that holds no entry (a store
    // restored from a backup, or purged up to its snapshot) is at the
    // snapshot's term, which its hard state may not have reached.
    let last_term = stored
        .last_log_id
        .map_or(0, |l| l.term)
        .max(stored.snapshot.as_ref().map_or(0, |s| s.last_log_id.term))
        .max(stored.purged.term);
    let entry = Entry {
        term: stored.hard_state.term.max(last_term),
        index: last + 1,
        payload: EntryPayload::Membership(Box::new(Membership::new([a.id]))),
    };
    let (index, term) = (entry.index, entry.term);
    log.append(vec![entry])
        .await
        .context("appending the new configuration")?;
    let at_unix_ms = now_ms();
    let record = serde_json::json!({
        "at_unix_ms": at_unix_ms,
        "index": index,
        "voters_before": current.voters(),
        "learners_before": current.learners(),
    });
    meta::save(&db, FORCED_KEY, &record)?;
    // A new id: survivors started on their old data are refused.
    let previous = cluster_id::load(&db)?;
    let cluster = cluster_id::for_recover(previous, a.id, index, term, at_unix_ms);
    cluster_id::save(&db, cluster)?;
    db.flush_wal(true).context("syncing the store")?;
    tracing::warn!(
        id = a.id,
        index,
        term,
        cluster_id = %cluster_id::to_hex(cluster),
        "FORCED NEW CLUSTER: this node is now the only voter"
    );
    eprintln!(
        "WARNING: forced a new cluster: node {} is now the ONLY voter (configuration entry at \
         index {index}, term {term}; voters before: {:?}, learners before: {:?}), new cluster id {}. Its \
         log and data are kept. Never run recover on another survivor (split brain), never start the \
         other members on their old data directories: wipe them, then add them back as new \
         members (`--join`, `ctl promote`). Start this node \
         with `raft-node run` and its usual flags.",
        a.id,
        current.voters(),
        current.learners(),
        cluster_id::to_hex(cluster)
    );
    Ok(())
}

/// Finishes a snapshot install that a crash interrupted (the state
/// machine took the snapshot, the log did not record it), as the node's
/// start does; returns the log's state after it.
async fn finish_interrupted_install(
    dir: &Path,
    log: &RocksLog,
) -> anyhow::Result<raft_core::StoredState> {
    let mut sm =
        KvStateMachine::new(log.db().clone(), 1)?.with_snapshot_dir(dir.join("snapshots"))?;
    let applied = sm
        .applied_index()
        .await
        .context("reading the state machine's applied index")?;
    let latest = sm
        .latest_snapshot()
        .await
        .context("reading the state machine's latest snapshot")?;
    raft_core::complete_interrupted_install(log, applied, latest.as_ref().map(|(m, _)| m))
        .await
        .context("finishing a snapshot install a crash interrupted")
}

/// Refuses, without `--again`, a second recovery of a store whose
/// configuration gained voters since the first: those members joined the
/// recovered cluster, and if any of them still runs, they and this node
/// would each go on as a cluster of their own.
fn refuse_second_recovery(
    db: &rocksdb::DB,
    a: &RecoverArgs,
    current: &Membership,
) -> anyhow::Result<()> {
    let Some(previous) = forced_record(db)? else {
        return Ok(());
    };
    let others: Vec<NodeId> = current
        .voters()
        .iter()
        .copied()
        .filter(|v| *v != a.id)
        .collect();
    if others.is_empty() || a.again {
        return Ok(());
    }
    bail!(
        "this store was recovered with --force-new-cluster before (configuration entry at \
         index {}), and its cluster has gained the voters {others:?} since: if any of them \
         still runs, recovering this node again makes two clusters (split brain). Stop those \
         members for good and wipe their data directories, then run recover again with \
         --again",
        previous
            .get("index")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    )
}

/// The record [`recover`] left in `node_meta`, if it ran on this store.
///
/// # Errors
///
/// The store cannot be read.
pub fn forced_record(db: &rocksdb::DB) -> anyhow::Result<Option<serde_json::Value>> {
    meta::load(db, FORCED_KEY, "forced-new-cluster record")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod interrupted_tests;
