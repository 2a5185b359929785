//! Building an engine: from the state a node restarts from, or a new
//! cluster's bootstrap configuration.

use std::collections::{BTreeMap, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::log::RaftLog;
use super::{Engine, Role, SoftState};
use crate::config::{Config, ConfigError};
use crate::membership::Membership;
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, SnapshotMeta};

/// What a node restarts from (or starts with, for a new cluster).
#[derive(Debug, Clone, Default)]
pub struct InitialState {
    /// The saved hard state.
    pub hard_state: HardState,
    /// The latest snapshot, if one was installed or taken.
    pub snapshot: Option<SnapshotMeta>,
    /// The last entry of the purged prefix of the log (zero when nothing
    /// was purged). It may be below the snapshot's index when entries were
    /// kept for slow followers ([`Config::snapshot_keep_entries`](crate::Config::snapshot_keep_entries)).
    pub purged: LogId,
    /// Every log entry after the purged prefix, consecutive, all durable.
    pub entries: Vec<Entry>,
    /// The configuration to use when neither the log nor the snapshot holds
    /// one: the initial cluster of a new deployment.
    pub bootstrap: Membership,
    /// The state machine's durable applied index; applying resumes after it.
    pub applied: Index,
    /// Normal entries at or below this index (and at or below `applied`)
    /// in `entries` were loaded without their payloads (empty ones), to
    /// keep a restart within [`Config::max_log_cache_bytes`](crate::Config::max_log_cache_bytes): the engine
    /// reads them back from storage when a follower needs them. 0: every
    /// payload was loaded.
    pub payloads_dropped_to: Index,
}

impl InitialState {
    /// The state of a brand-new node of a new cluster with these members.
    pub fn bootstrap(membership: Membership) -> Self {
        Self {
            bootstrap: membership,
            ..Self::default()
        }
    }
}

impl Engine {
    /// Creates an engine from its configuration and restored state.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the configuration is inconsistent.
    ///
    /// # Panics
    ///
    /// When `initial.entries` are not consecutive after the snapshot (an
    /// invariant of [`LogStorage`](crate::LogStorage)).
    pub fn new(cfg: Config, initial: InitialState) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let snapshot_id = initial
            .snapshot
            .as_ref()
            .map(|s| s.last_log_id)
            .unwrap_or_default();
        let offset = log_offset(&initial, snapshot_id);
        let base_membership = initial
            .snapshot
            .as_ref()
            .map(|s| s.membership.clone())
            .unwrap_or_else(|| initial.bootstrap.clone());
        let base_membership_index = snapshot_id.index;
        let membership_log = membership_log(&initial.entries, snapshot_id.index);
        // Whatever the state machine applied was committed, even if the hard
        // state's (lazily saved) commit index lags behind it.
        let committed = initial.hard_state.commit.max(initial.applied);
        let mut log = RaftLog::restore(offset, initial.entries, committed);
        log.set_applied(initial.applied.max(offset.index));
        log.restored_without_payloads(initial.payloads_dropped_to.min(initial.applied));
        let last_term = log.last_log_id().term;
        let (term, vote) = if last_term > initial.hard_state.term {
            // The log's write landed but the hard state's did not: never go
            // back to a term the log has already seen.
            (last_term, None)
        } else {
            (initial.hard_state.term, initial.hard_state.vote)
        };
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let soft = SoftState {
            role: Role::Follower,
            leader: None,
            term,
            transferee: None,
        };
        let mut engine = Self {
            term,
            vote,
            role: Role::Follower,
            leader: None,
            base_membership,
            base_membership_index,
            snapshot: initial.snapshot.clone(),
            snapshot_building: false,
            build_request: None,
            applied_bytes_since_snapshot: 0,
            pending_compaction: None,
            installing: None,
            install_request: None,
            membership_log,
            rng,
            now: 0,
            election_elapsed: 0,
            lease_until: 0,
            lease_leader: None,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_timeout_ticks,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            round: 0,
            round_started: VecDeque::new(),
            pending_reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            read_round_needed: false,
            commit_advanced: false,
            transferee: None,
            transfer_elapsed: 0,
            timeout_now_sent: false,
            self_election: None,
            restarted: term > 0,
            invalid_term_messages: 0,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            fetches: Vec::new(),
            next_fetch: 1,
            read_states: Vec::new(),
            failed_reads: Vec::new(),
            remote_reads: BTreeMap::new(),
            next_remote_read: super::REMOTE_READ_ID_BASE,
            forward_responses: Vec::new(),
            last_hard_state: HardState {
                term,
                vote,
                commit: log.committed(),
            },
            last_soft_state: soft,
            log,
            cfg,
        };
        engine.reset_election_timer();
        Ok(engine)
    }
}

/// Where the restored log starts: it follows the purged prefix; with
/// nothing after it, the later of the purge point and the snapshot is
/// where it resumes.
fn log_offset(initial: &InitialState, snapshot_id: LogId) -> LogId {
    match initial.entries.first() {
        Some(first) if first.index == snapshot_id.index + 1 => snapshot_id,
        Some(_) => initial.purged,
        None if initial.purged.index > snapshot_id.index => initial.purged,
        None => snapshot_id,
    }
}

/// The configurations in `entries` above the snapshot's index `above`, in
/// index order (those at or below it are part of the snapshot's membership).
fn membership_log(entries: &[Entry], above: Index) -> Vec<(Index, Membership)> {
    entries
        .iter()
        .filter(|e| e.index > above)
        .filter_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some((e.index, (**m).clone())),
            _ => None,
        })
        .collect()
}
