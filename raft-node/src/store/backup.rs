//! Exporting the store as a backup ([`crate::backup`]): one RocksDB view
//! of the data, the applied index stored with it, the term of that entry
//! and the configuration in force there, all read from the same view.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use raft_core::{EntryPayload, Index, Membership, NodeId, Term};
use rocksdb::{Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};

use super::records::{
    decode_u64, is_replicated_meta, APPLIED_KEY, MEMBER_PREFIX, SNAPSHOT_META_KEY,
};
use super::{KvReader, KV_CF, KV_META_CF};
use crate::backup::{BackupError, BackupHeader, BackupWritten};
use crate::config::Member;

/// What the caller asks of an export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The serving node.
    pub node: NodeId,
    /// `linearizable` or `stale`.
    pub consistency: String,
    /// The read index the data must be at least at.
    pub read_index: Option<Index>,
}

type View<'a> = SnapshotWithThreadMode<'a, DB>;

fn other(label: &Path, e: impl std::fmt::Display) -> BackupError {
    BackupError::Io {
        path: label.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn get(db: &DB, view: &View<'_>, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let cf = db
        .cf_handle(cf)
        .ok_or_else(|| format!("{cf} column family missing"))?;
    let mut opts = ReadOptions::default();
    opts.set_snapshot(view);
    db.get_cf_opt(cf, key, &opts).map_err(|e| e.to_string())
}

/// The snapshot metadata under `key` of `cf`, as the view sees it.
fn snapshot_meta_in(
    db: &DB,
    view: &View<'_>,
    cf: &str,
    key: &[u8],
) -> Result<Option<raft_core::SnapshotMeta>, String> {
    match get(db, view, cf, key)? {
        None => Ok(None),
        Some(v) => raft_log::record::decode_snapshot_meta(&v)
            .map(Some)
            .map_err(|e| format!("snapshot metadata in {cf}: {}", e.0)),
    }
}

/// The term of entry `index` and the configuration in force there: those
/// of the state machine's snapshot when `index` is its index (a follower
/// that has installed a leader's snapshot may not have recorded it in its
/// log yet, whose entries at and below it, an old leader's, may name
/// another term and an uncommitted configuration); else the latest
/// configuration entry at or below it in the log, else the one of the
/// log's snapshot, else the voters the cluster was created with.
fn term_and_membership(
    db: &DB,
    view: &View<'_>,
    index: Index,
) -> Result<(Term, Option<Membership>), String> {
    let sm_snapshot = snapshot_meta_in(db, view, KV_META_CF, SNAPSHOT_META_KEY)?;
    if let Some(meta) = sm_snapshot.filter(|m| m.last_log_id.index == index && index > 0) {
        return Ok((meta.last_log_id.term, Some(meta.membership)));
    }
    let log_cf = db
        .cf_handle(raft_log::LOG_CF)
        .ok_or("log column family missing")?;
    let mut opts = ReadOptions::default();
    opts.set_snapshot(view);
    let key = raft_log::record::entry_key(index);
    let mut term = None;
    let mut membership = None;
    for item in db.iterator_cf_opt(log_cf, opts, IteratorMode::From(&key, Direction::Reverse)) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let at = raft_log::record::key_index(&k).map_err(|e| e.0)?;
        let entry = raft_log::record::decode_entry(&v, at).map_err(|e| e.0)?;
        if at == index {
            term = Some(entry.term);
        }
        if let EntryPayload::Membership(m) = entry.payload {
            membership = Some(*m);
            break;
        }
    }
    let log_snapshot = snapshot_meta_in(db, view, raft_log::META_CF, b"snapshot")?;
    if let Some(meta) = log_snapshot.as_ref().filter(|_| term.is_none()) {
        if meta.last_log_id.index == index {
            term = Some(meta.last_log_id.term);
        }
    }
    if membership.is_none() {
        membership = log_snapshot.map(|m| m.membership);
    }
    match term {
        Some(t) => Ok((t, membership)),
        None if index == 0 => Ok((0, membership)),
        None => Err(format!(
            "the term of applied entry {index} is in neither the log nor a snapshot"
        )),
    }
}

/// The replicated member addresses, as the view sees them.
fn members_in(db: &DB, view: &View<'_>) -> Result<Vec<Member>, String> {
    let cf = db
        .cf_handle(KV_META_CF)
        .ok_or("kv_meta column family missing")?;
    let mut opts = ReadOptions::default();
    opts.set_snapshot(view);
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(
        cf,
        opts,
        IteratorMode::From(MEMBER_PREFIX, Direction::Forward),
    ) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if !k.starts_with(MEMBER_PREFIX) {
            break;
        }
        out.push(serde_json::from_slice(&v).map_err(|e| format!("member record: {e}"))?);
    }
    Ok(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl KvReader {
    /// Writes a backup of the store as one RocksDB view sees it. `begin`
    /// gets the header once the view is taken (the index it is at, its term
    /// and configuration) and answers where to write, or `None` to stop.
    /// Setting `cancel` stops the write.
    ///
    /// # Errors
    ///
    /// [`BackupError`]; a view overlapping a snapshot install, or below
    /// `req.read_index`, is refused.
    pub fn export<W: Write>(
        &self,
        req: &ExportRequest,
        label: &Path,
        begin: impl FnOnce(&BackupHeader) -> Option<W>,
        cancel: &AtomicBool,
    ) -> Result<Option<BackupWritten>, BackupError> {
        let db = &*self.db;
        let seq = self.install_seq.load(Ordering::Acquire);
        let view = db.snapshot();
        if seq % 2 == 1 || self.install_seq.load(Ordering::Acquire) != seq {
            return Err(other(
                label,
                "a snapshot from the leader is being installed; retry shortly",
            ));
        }
        let applied = get(db, &view, KV_META_CF, APPLIED_KEY)
            .map_err(|e| other(label, e))?
            .map_or(Some(0), |v| decode_u64(&v))
            .ok_or_else(|| other(label, "the stored applied index is not 8 bytes"))?;
        if let Some(r) = req.read_index.filter(|r| applied < *r) {
            return Err(other(
                label,
                format!("applied index {applied} below the read index {r}"),
            ));
        }
        let (term, membership) =
            term_and_membership(db, &view, applied).map_err(|e| other(label, e))?;
        let membership = match membership {
            Some(m) => m,
            // A log that holds no configuration yet: the cluster's first.
            None => Membership::new(
                crate::node::meta::load_initial_voters(db)
                    .map_err(|e| other(label, e))?
                    .unwrap_or_default(),
            ),
        };
        let header = BackupHeader {
            format: crate::backup::FORMAT,
            index: applied,
            term,
            voters: membership.voters().iter().copied().collect(),
            learners: membership.learners().iter().copied().collect(),
            members: members_in(db, &view).map_err(|e| other(label, e))?,
            node: req.node,
            consistency: req.consistency.clone(),
            read_index: req.read_index,
            created_unix_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let Some(out) = begin(&header) else {
            return Ok(None);
        };
        let mut w = crate::backup::start(out, &header, label)?;
        let source = crate::snapshot::RecordSource {
            db,
            view: &view,
            kv_cf: KV_CF,
            meta_cf: KV_META_CF,
        };
        crate::snapshot::write_records(&source, is_replicated_meta, &mut w, label, cancel)?;
        crate::backup::finish(w, label).map(Some)
    }
}

/// The path of the snapshot file at `index` in a node's snapshot
/// directory: where a restore puts the backup's snapshot, so that the
/// restored node can send it to members that join later.
pub fn snapshot_file(snapshot_dir: &Path, index: Index) -> std::path::PathBuf {
    super::snapshots::snapshot_path(snapshot_dir, index)
}

impl super::KvStateMachine {
    /// Seeds an empty store from the snapshot file of `meta` (already at
    /// [`snapshot_file`]): checks it, loads it as an install from a
    /// leader would, then replaces the replicated member addresses by
    /// `members` (the new cluster's), on every restored node alike, and
    /// writes the snapshot file again from the store, so that a member
    /// that joins later installs the same state. Returns the records
    /// loaded.
    ///
    /// # Errors
    ///
    /// The file fails its checks, or the store cannot be written.
    pub fn seed(&self, meta: &raft_core::SnapshotMeta, members: &[Member]) -> Result<u64, String> {
        let dir = self.snapshot_dir.as_ref().ok_or("no snapshot directory")?;
        let path = snapshot_file(dir, meta.last_log_id.index);
        let records = crate::snapshot::verify(&path).map_err(|e| e.to_string())?;
        super::snapshots::put_meta_synced(&self.reader.db, super::records::INSTALLING_KEY, meta)?;
        self.finish_install(meta)?;
        let db = &self.reader.db;
        let cf = db
            .cf_handle(KV_META_CF)
            .ok_or("kv_meta column family missing")?;
        let mut batch = rocksdb::WriteBatch::default();
        for item in db.iterator_cf(cf, IteratorMode::From(MEMBER_PREFIX, Direction::Forward)) {
            let (k, _) = item.map_err(|e| e.to_string())?;
            if !k.starts_with(MEMBER_PREFIX) {
                break;
            }
            batch.delete_cf(cf, k);
        }
        for m in members {
            let record = serde_json::to_vec(m).map_err(|e| e.to_string())?;
            batch.put_cf(cf, super::records::member_key(m.id), record);
        }
        let ids = serde_json::to_vec(&meta.membership.members()).map_err(|e| e.to_string())?;
        batch.put_cf(cf, super::records::APPLIED_MEMBERS_KEY, ids);
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts).map_err(|e| e.to_string())?;
        // The snapshot file is what members that join later install: it
        // must hold the new addresses too, so it is written again from
        // the store.
        crate::snapshot::write(
            db,
            KV_CF,
            KV_META_CF,
            is_replicated_meta,
            &path,
            || {},
            &AtomicBool::new(false),
        )
        .map_err(|e| e.to_string())?;
        Ok(records)
    }
}
