//! Snapshots and log compaction (paper §7, thesis chapter 5).
//!
//! - **Taking a snapshot.** When enough entries (or bytes) were applied since
//!   the last snapshot ([`Config::snapshot_threshold_entries`],
//!   [`Config::snapshot_threshold_bytes`]), or when asked with
//!   [`Engine::request_snapshot`], a [`Ready`](super::Ready) carries
//!   `build_snapshot`: the metadata of a snapshot at the last index handed
//!   out for applying. The driver has the state machine build it after
//!   applying those entries, then reports [`Engine::on_snapshot_built`]. The
//!   engine then drops the entries the snapshot covers, except the last
//!   [`Config::snapshot_keep_entries`], and the next `Ready` carries
//!   `compact_log` for storage (record the snapshot, purge the prefix).
//! - **Sending one.** A leader whose log no longer holds the entries a
//!   follower needs sends an `InstallSnapshot` message; the driver streams
//!   its latest snapshot beside it and reports the outcome with
//!   [`Engine::report_snapshot`]. Nothing else is sent to that follower
//!   meanwhile, but heartbeats are, so its election timer does not fire.
//! - **Installing one.** A follower that receives a snapshot covering more
//!   than it has committed asks the driver to install it (`install_snapshot`
//!   in `Ready`): the state machine replaces its state, storage replaces the
//!   log, then [`Engine::on_snapshot_installed`] resets the in-memory log and
//!   acknowledges the leader. Until then it appends nothing, applies
//!   nothing and does not campaign.
//!
//! [`Config::snapshot_threshold_entries`]: crate::Config::snapshot_threshold_entries
//! [`Config::snapshot_threshold_bytes`]: crate::Config::snapshot_threshold_bytes
//! [`Config::snapshot_keep_entries`]: crate::Config::snapshot_keep_entries

use super::{Engine, Role};
use crate::message::{AppendResult, MessageBody};
use crate::types::{Index, LogId, NodeId, SnapshotMeta};

/// What storage must record after a snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCompaction {
    /// The new snapshot's metadata, to save (reported by `stored_state` after
    /// a restart).
    pub snapshot: SnapshotMeta,
    /// Delete entries at or below this index (at most the snapshot's index;
    /// lower when entries are kept for slow followers).
    pub purge_to: Index,
}

/// Why [`Engine::request_snapshot`] did not start a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotRequestError {
    /// A snapshot is being built or installed.
    #[error("a snapshot is already being built or installed")]
    InProgress,
    /// Nothing was applied since the last snapshot, which is at `0`.
    #[error("the latest snapshot (at index {0}) is up to date")]
    UpToDate(Index),
}

impl Engine {
    /// The latest snapshot this node took or installed, as far as the engine
    /// was told.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// The index of the first entry still in the in-memory log.
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.last_log_id.index)
    }

    /// Asks for a snapshot at the last index handed out for applying, now.
    /// The next [`Ready`](super::Ready) carries it in `build_snapshot`.
    ///
    /// # Errors
    ///
    /// [`SnapshotRequestError`] when one is in progress or the latest is
    /// up to date.
    pub fn request_snapshot(&mut self) -> Result<(), SnapshotRequestError> {
        if self.snapshot_building || self.installing.is_some() || self.build_request.is_some() {
            return Err(SnapshotRequestError::InProgress);
        }
        let at = self.log.apply_emitted();
        if at <= self.snapshot_index() || at == 0 {
            return Err(SnapshotRequestError::UpToDate(self.snapshot_index()));
        }
        self.queue_build(at);
        Ok(())
    }

    fn queue_build(&mut self, at: Index) {
        let Some(term) = self.log.term(at) else {
            return;
        };
        self.build_request = Some(SnapshotMeta {
            last_log_id: LogId::new(term, at),
            membership: self.membership_at(at),
        });
        self.snapshot_building = true;
        self.applied_bytes_since_snapshot = 0;
    }

    /// Called by `ready` after handing out committed entries: starts a
    /// snapshot when the policy says so.
    pub(super) fn maybe_request_snapshot(&mut self, applied_bytes: u64) {
        self.applied_bytes_since_snapshot += applied_bytes;
        if self.snapshot_building || self.installing.is_some() || self.build_request.is_some() {
            return;
        }
        let at = self.log.apply_emitted();
        let entries = at.saturating_sub(self.snapshot_index());
        let by_count = self.cfg.snapshot_threshold_entries > 0
            && entries >= self.cfg.snapshot_threshold_entries;
        let by_bytes = self.cfg.snapshot_threshold_bytes > 0
            && self.applied_bytes_since_snapshot >= self.cfg.snapshot_threshold_bytes;
        if entries > 0 && (by_count || by_bytes) {
            self.queue_build(at);
        }
    }

    /// The state machine built the snapshot described by `meta` (from a
    /// `build_snapshot` request) and it is durable. Compacts the in-memory
    /// log; the next `Ready` carries `compact_log` for storage.
    pub fn on_snapshot_built(&mut self, meta: SnapshotMeta) {
        self.snapshot_building = false;
        if self.installing.is_some() || meta.last_log_id.index <= self.snapshot_index() {
            return; // superseded by an install or a newer snapshot
        }
        if self.log.term(meta.last_log_id.index) != Some(meta.last_log_id.term)
            && meta.last_log_id.index > self.log.offset().index
        {
            tracing::warn!(%meta.last_log_id, "built snapshot does not match the log; ignored");
            return;
        }
        let keep_from = meta
            .last_log_id
            .index
            .saturating_sub(self.cfg.snapshot_keep_entries);
        self.snapshot = Some(meta.clone());
        self.compact_to(keep_from);
        self.pending_compaction = Some(LogCompaction {
            snapshot: meta,
            purge_to: self.log.offset().index,
        });
    }

    /// Building the requested snapshot failed: the policy asks again after
    /// the next threshold's worth of entries.
    pub fn on_snapshot_build_failed(&mut self) {
        self.snapshot_building = false;
        self.applied_bytes_since_snapshot = 0;
    }

    /// Drops in-memory entries up to `to` and folds the configurations they
    /// held into the base configuration.
    fn compact_to(&mut self, to: Index) {
        let Some(offset) = self.log.compact(to) else {
            return;
        };
        if let Some(pos) = self
            .membership_log
            .iter()
            .rposition(|(i, _)| *i <= offset.index)
        {
            let (index, m) = self.membership_log[pos].clone();
            self.base_membership = m;
            self.base_membership_index = index;
            self.membership_log.drain(..=pos);
        }
    }

    /// Leader: tells the engine how sending a snapshot to `to` ended
    /// (`delivered`: the transport handed over all of it). The follower's
    /// acknowledgement, once it installed the snapshot, resumes replication;
    /// after a failure a new snapshot is sent after the next heartbeat.
    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.snapshot_done(delivered);
        }
    }

    /// Leader: sends the latest snapshot to `to`. Returns whether it did.
    pub(super) fn send_snapshot(&mut self, to: NodeId) -> bool {
        let Some(meta) = self.snapshot.clone() else {
            tracing::warn!(
                to,
                "follower needs compacted entries but there is no snapshot"
            );
            return false;
        };
        let index = meta.last_log_id.index;
        tracing::info!(to, %meta.last_log_id, "sending snapshot");
        self.send(to, MessageBody::InstallSnapshot { meta });
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        true
    }

    /// Follower: a complete snapshot arrived from the leader `from`.
    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if self.role != Role::Follower {
            self.become_follower(self.term, Some(from));
        }
        self.heard_from_leader(from);
        if self.installing.is_some() {
            return; // one at a time; the leader sends again if needed
        }
        let index = meta.last_log_id.index;
        // Paper §7: a follower that already holds the snapshot's last entry
        // keeps its log (and what it acknowledged beyond it); that entry
        // is committed.
        if self.log.matches(meta.last_log_id) {
            self.log.commit_to(index);
        }
        if index <= self.log.committed() {
            // We already hold everything it covers: say how far we are.
            let reply = crate::message::Message {
                from: self.cfg.id,
                to: from,
                term: self.term,
                body: MessageBody::AppendEntriesResponse {
                    round: 0,
                    result: AppendResult::Success {
                        last_index: self.log.committed(),
                    },
                },
            };
            self.persisted_msgs.push(reply);
            return;
        }
        tracing::info!(id = self.cfg.id, from, %meta.last_log_id, "installing snapshot");
        self.installing = Some(meta.clone());
        self.install_request = Some(meta);
    }

    /// The snapshot from an `install_snapshot` request is installed in the
    /// state machine and storage, durably. Resets the log to it and
    /// acknowledges the leader.
    pub fn on_snapshot_installed(&mut self, meta: SnapshotMeta) {
        if self.installing.as_ref() != Some(&meta) {
            tracing::warn!(%meta.last_log_id, "unexpected snapshot install report ignored");
            return;
        }
        self.installing = None;
        let id = meta.last_log_id;
        self.log.install(id);
        self.base_membership = meta.membership.clone();
        self.base_membership_index = id.index;
        self.membership_log.clear();
        self.snapshot = Some(meta);
        self.applied_bytes_since_snapshot = 0;
        self.sync_progress_with_membership();
        if let Some(leader) = self.leader {
            self.send(
                leader,
                MessageBody::AppendEntriesResponse {
                    round: 0,
                    result: AppendResult::Success {
                        last_index: id.index,
                    },
                },
            );
        }
    }

    /// Whether a snapshot is being installed.
    pub fn is_installing_snapshot(&self) -> bool {
        self.installing.is_some()
    }
}
