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
use crate::node::{meta, NODE_META_CF};
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
    RocksLog::open(
        dir,
        RocksLogOptions {
            extra_column_families: vec![KV_CF.into(), KV_META_CF.into(), NODE_META_CF.into()],
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

/// Refuses a data directory that holds anything.
fn refuse_non_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "refusing to restore into {}: it is not empty (a restore seeds a new \
                     node's directory; move the old one away first)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// `raft-node restore`: checks the file, builds the store in a temporary
/// directory beside `--data-dir` and renames it into place once complete.
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
    refuse_non_empty(&a.data_dir)?;
    // A symlink (a disk mounted elsewhere) is restored through: the store
    // is built beside the directory it names, on the same filesystem, and
    // renamed over it.
    let data_dir = match std::fs::canonicalize(&a.data_dir) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => a.data_dir.clone(),
        Err(e) => return Err(e).with_context(|| format!("resolving {}", a.data_dir.display())),
    };
    let verified = crate::backup::verify(&a.from)
        .with_context(|| format!("refusing to restore from {}", a.from.display()))?;
    let h = &verified.header;
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let tmp = data_dir.with_file_name(format!(".{name}.restoring"));
    if tmp.exists() {
        bail!(
            "{} exists (left by an interrupted restore?); delete it and retry",
            tmp.display()
        );
    }
    let voters: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    let meta = SnapshotMeta {
        last_log_id: LogId {
            term: h.term,
            index: h.index,
        },
        membership: Membership::new(voters.iter().copied()),
    };
    let records = match seed(&tmp, &a.from, &verified, &meta, &members).await {
        // rename(2) replaces an empty directory atomically.
        Ok(records) => std::fs::rename(&tmp, &data_dir)
            .with_context(|| format!("moving the restored store to {}", data_dir.display()))
            .map(|()| records),
        Err(e) => Err(e),
    }
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    if let Some(parent) = data_dir.parent() {
        crate::snapshot::sync_directory(parent)
            .with_context(|| format!("syncing {}", parent.display()))?;
    }
    println!(
        "restored {} ({} bytes, sha256 {}) into {}: index {}, term {}, {records} records; \
         node {} of a new cluster of voters {voters:?}. Start it with `raft-node run --id {} \
         --data-dir {}` and its usual flags (--initial-cluster is no longer read)",
        a.from.display(),
        verified.bytes,
        verified.sha256,
        a.data_dir.display(),
        h.index,
        h.term,
        a.id,
        a.id,
        a.data_dir.display()
    );
    Ok(())
}

/// Builds the restored store in `dir`: the snapshot file in its place,
/// loaded, the log starting after it, the new cluster's voters and
/// addresses recorded.
async fn seed(
    dir: &Path,
    from: &Path,
    verified: &crate::backup::VerifiedBackup,
    meta: &SnapshotMeta,
    members: &[Member],
) -> anyhow::Result<u64> {
    crate::snapshot::create_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let log = open(dir)?;
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
    let record = serde_json::json!({
        "at_unix_ms": now_ms(),
        "index": index,
        "voters_before": current.voters(),
        "learners_before": current.learners(),
    });
    meta::save(&db, FORCED_KEY, &record)?;
    db.flush_wal(true).context("syncing the store")?;
    tracing::warn!(
        id = a.id,
        index,
        term,
        "FORCED NEW CLUSTER: this node is now the only voter"
    );
    eprintln!(
        "WARNING: forced a new cluster: node {} is now the ONLY voter (configuration entry at \
         index {index}, term {term}; voters before: {:?}, learners before: {:?}). Its log and \
         data are kept. Never run recover on another survivor (split brain), never start the \
         other members on their old data directories: wipe them, then add them back as new \
         members (`--join`, `ctl promote`). Start this node \
         with `raft-node run` and its usual flags.",
        a.id,
        current.voters(),
        current.learners()
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
mod tests {
    use super::tests_support::backup;
    use super::*;

    fn args(from: &Path, data_dir: &Path) -> RestoreArgs {
        RestoreArgs {
            from: from.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            id: 1,
            initial_cluster: "1=127.0.0.1:7000/127.0.0.1:8080".into(),
        }
    }

    /// A well-formed file (checksums and SHA-256 right) whose header names
    /// an index or term no log can hold, or a term of 0 at an index above
    /// 0, is refused with an error, not a panic, and nothing is created.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_backup_with_an_impossible_index_or_term_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (index, term) in [(u64::MAX, 3), (u64::MAX - 1, 3), (5, u64::MAX), (5, 0)] {
            let from = backup(dir.path(), index, term);
            let data = dir.path().join(format!("data-{index}-{term}"));
            let task = tokio::spawn(restore(args(&from, &data)));
            let result = task
                .await
                .unwrap_or_else(|e| panic!("index {index} term {term}: restore panicked: {e}"));
            let e = result.expect_err("an impossible header must be refused");
            assert!(
                format!("{e:#}").contains("corrupted"),
                "index {index} term {term}: {e:#}"
            );
            assert!(
                !data.exists(),
                "index {index} term {term}: nothing is created"
            );
        }
    }

    /// A store restored from a backup of term 7 and then recovered with
    /// `--force-new-cluster` (its log holds no entry, only the snapshot)
    /// gets its configuration entry at a term no lower than 7: terms never
    /// go down along a log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn recover_after_restore_appends_at_a_term_no_lower_than_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let data = dir.path().join("data");
        restore(args(&from, &data)).await.unwrap();
        recover(recover_args(&data, false)).await.unwrap();
        let log = open(&data).unwrap();
        let stored = log.stored_state().await.unwrap();
        let last = stored.last_log_id.expect("the configuration entry");
        assert_eq!(last.index, 41);
        assert!(
            last.term >= 7,
            "entry 41 at term {} after term 7",
            last.term
        );
    }

    fn recover_args(data: &Path, again: bool) -> RecoverArgs {
        RecoverArgs {
            data_dir: data.to_path_buf(),
            id: 1,
            force_new_cluster: true,
            again,
        }
    }

    /// A store recovered once whose cluster then gained voters (members
    /// that rejoined) is not recovered again without `--again`: those
    /// members may still run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_second_recovery_after_members_rejoined_needs_again() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let data = dir.path().join("data");
        restore(args(&from, &data)).await.unwrap();
        recover(recover_args(&data, false)).await.unwrap();
        // Recovering again while it is still alone is harmless.
        recover(recover_args(&data, false)).await.unwrap();
        // Members 4 and 5 join and are promoted.
        {
            let log = open(&data).unwrap();
            let last = log.stored_state().await.unwrap().last_log_id.unwrap();
            log.append(vec![Entry {
                term: last.term,
                index: last.index + 1,
                payload: EntryPayload::Membership(Box::new(Membership::new([1, 4, 5]))),
            }])
            .await
            .unwrap();
        }
        let err = recover(recover_args(&data, false)).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("[4, 5]") && text.contains("--again"),
            "{text}"
        );
        recover(recover_args(&data, true)).await.unwrap();
        let log = open(&data).unwrap();
        let stored = log.stored_state().await.unwrap();
        let (_, m) = stored.membership.expect("a configuration");
        assert_eq!(m.voters().iter().copied().collect::<Vec<_>>(), vec![1]);
    }
}

#[cfg(test)]
mod symlink_tests {
    use super::tests_support::backup;
    use super::*;

    /// A data directory that is a symlink to an empty directory elsewhere
    /// (a disk mounted away from /var/lib) is restored into, through the
    /// link, and nothing is left behind beside either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_symlinked_empty_data_dir_is_restored_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let (disk, link_dir) = (dir.path().join("disk"), dir.path().join("etc"));
        std::fs::create_dir_all(disk.join("data")).unwrap();
        std::fs::create_dir_all(&link_dir).unwrap();
        let link = link_dir.join("data");
        std::os::unix::fs::symlink(disk.join("data"), &link).unwrap();
        restore(RestoreArgs {
            from,
            data_dir: link.clone(),
            id: 1,
            initial_cluster: "1=127.0.0.1:7000/127.0.0.1:8080".into(),
        })
        .await
        .expect("restore through a symlink");
        assert!(
            link.join("CURRENT").is_file(),
            "the store is behind the link"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        for d in [&disk, &link_dir] {
            let names: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["data"], "left in {}", d.display());
        }
    }
}

#[cfg(test)]
mod tests_support {
    use std::path::{Path, PathBuf};

    use crate::backup::{BackupHeader, FORMAT};

    /// A backup of an empty store whose header says `index` and `term`.
    pub(super) fn backup(dir: &Path, index: u64, term: u64) -> PathBuf {
        let path = dir.join(format!("b-{index}-{term}.bak"));
        let header = BackupHeader {
            format: FORMAT,
            index,
            term,
            voters: vec![1],
            learners: vec![],
            members: vec![],
            node: 1,
            consistency: "linearizable".into(),
            read_index: Some(index),
            created_unix_ms: 1,
            version: "test".into(),
        };
        crate::backup::write_empty_backup(&path, &header);
        path
    }
}

#[cfg(test)]
#[path = "restore_interrupted_tests.rs"]
mod interrupted_tests;
