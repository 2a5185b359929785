//! The Raft engine: the whole algorithm as a deterministic state machine
//! with no I/O, no clock and no runtime (the design of `quinn-proto` and of
//! raft-rs's `RawNode`).
//!
//! # Inputs and outputs
//!
//! Inputs are method calls:
//! - [`Engine::tick`]: one unit of logical time passed;
//! - [`Engine::step`]: a message arrived from a peer;
//! - [`Engine::propose`], [`Engine::read_index`], [`Engine::read_lease`],
//!   [`Engine::transfer_leader`]: client requests;
//! - [`Engine::on_persisted`]: storage made a write durable;
//! - [`Engine::on_applied`]: the state machine applied entries.
//!
//! The output is a [`Ready`], taken with [`Engine::ready`] whenever
//! [`Engine::has_ready`] says there is one. Nothing happens outside until the
//! driver acts on it.
//!
//! # What a driver must do with each `Ready`, in order
//!
//! 1. Send [`Ready::messages`] at once; they depend on nothing unpersisted
//!    (a leader replicates while its own append is in flight, thesis §10.2.1).
//! 2. Write [`Ready::hard_state`], [`Ready::truncate_from`] and
//!    [`Ready::entries`] durably, in that order (one [`LogWrite`](crate::LogWrite)),
//!    after every write of earlier `Ready`s.
//! 3. Only when that write (and so every earlier one) is durable: send
//!    [`Ready::persisted_messages`] (vote grants, a candidate's vote requests,
//!    append acknowledgements: promises about what is on disk), then call
//!    [`Engine::on_persisted`] with [`Ready::write_id`]. A `Ready` without a
//!    write still holds its `persisted_messages` until every earlier write
//!    is durable.
//! 4. Apply [`Ready::committed_entries`] to the state machine in order, then
//!    call [`Engine::on_applied`]. They are committed and durable locally.
//! 5. Serve each [`ReadState`] once the state machine has applied its index;
//!    answer each of [`Ready::failed_reads`] with its error.
//!
//! Steps 2–5 may overlap with new inputs and new `Ready`s (pipelining), as
//! long as writes stay in order and step 3 waits for its write.
//!
//! # Example
//!
//! A single-voter cluster elects itself and commits a proposal once its own
//! append is durable. `drive` is a minimal driver: it "persists" instantly.
//!
//! ```
//! use bytes::Bytes;
//! use raft_core::engine::{Engine, InitialState, Role};
//! use raft_core::{Config, Index, Membership};
//!
//! /// Acts on every Ready in the order the engine requires.
//! fn drive(node: &mut Engine, applied: &mut Vec<Index>) {
//!     while node.has_ready() {
//!         let ready = node.ready();
//!         // 1. send ready.messages (none here: there are no peers)
//!         // 2. write ready.hard_state, ready.truncate_from, ready.entries durably
//!         // 3. then send ready.persisted_messages and report the write
//!         if let Some(write) = ready.write_id {
//!             node.on_persisted(write);
//!         }
//!         // 4. apply committed entries
//!         for entry in &ready.committed_entries {
//!             applied.push(entry.index);
//!             node.on_applied(entry.index);
//!         }
//!     }
//! }
//!
//! let mut node = Engine::new(Config::new(1), InitialState::bootstrap(Membership::new([1])))
//!     .expect("valid configuration");
//! let mut applied = Vec::new();
//! while node.role() != Role::Leader {
//!     node.tick();
//!     drive(&mut node, &mut applied);
//! }
//! let id = node.propose(Bytes::from_static(b"x=1")).expect("leader accepts proposals");
//! drive(&mut node, &mut applied);
//! assert!(applied.contains(&id.index), "the proposal was committed and applied");
//! ```

mod change;
mod compaction;
mod election;
mod log;
mod progress;
mod read;
mod replication;

use std::collections::{BTreeMap, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, ConfigError};
use crate::membership::Membership;
use crate::message::Message;
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, NodeId, SnapshotMeta, Term};
pub use change::{ChangeError, MembershipChange};
pub use compaction::{LogCompaction, SnapshotRequestError};
use log::RaftLog;
use progress::Progress;
pub use progress::ReplicationState;

/// A node's role (paper §5.1; pre-candidate from thesis §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Probing with a pre-vote whether an election could be won.
    PreCandidate,
    /// Campaigning for votes.
    Candidate,
    /// Leading the cluster.
    Leader,
}

impl Role {
    /// A lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre_candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// Names one durable write handed out in a [`Ready`]; see
/// [`Engine::on_persisted`]. Ids increase with each write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(u64);

/// Opaque identifier of a read request, chosen by the driver.
pub type ReadId = u64;

/// A read that is now safe: serve it once the state machine has applied `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The request it answers.
    pub id: ReadId,
    /// The commit index at the time of the request (thesis §6.4).
    pub index: Index,
}

/// Why a proposal was refused. A refused proposal was never appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the one it knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; retry on the new leader.
    #[error("leadership transfer to {0} in progress")]
    TransferInProgress(NodeId),
    /// Too many entries are waiting to commit ([`Config::max_uncommitted_entries`]).
    #[error("too many uncommitted entries ({0})")]
    TooManyPending(usize),
    /// Too many bytes are waiting to commit ([`Config::max_uncommitted_bytes`]):
    /// the bytes pending, which with this proposal would exceed the limit.
    #[error("too many uncommitted bytes ({0})")]
    TooManyBytesPending(u64),
}

/// A leader's request to read entries back from storage: a follower needs
/// entries whose payloads the in-memory log no longer holds
/// ([`Config::max_log_cache_bytes`]). The driver reads
/// `[start, end)` from its log storage, at most `max_bytes` of them (at
/// least one entry), and hands the result to [`Engine::on_entries_fetched`]
/// with this request; an empty result says the read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFetch {
    /// Names this request (increasing).
    pub id: u64,
    /// The follower the entries are for.
    pub to: NodeId,
    /// The leader's term when it asked.
    pub term: Term,
    /// The entry before `start`, which the follower must hold.
    pub prev: LogId,
    /// The first index to read.
    pub start: Index,
    /// One past the last index to read.
    pub end: Index,
    /// Entries to read at most.
    pub max_entries: usize,
    /// Bytes ([`Entry::size_bytes`]) to read at most.
    pub max_bytes: u64,
}

/// Why a read could not be started or completed. The read observed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// This node is not (or no longer) the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The leader lease is not held (or lease reads are disabled); use a
    /// ReadIndex read instead.
    #[error("leader lease not held")]
    LeaseNotHeld,
    /// Too many reads pending ([`Config::max_pending_reads`]).
    #[error("too many pending reads ({0})")]
    TooManyPending(usize),
}

/// Why a leadership transfer could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This node is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
}

/// What a node restarts from (or starts with, for a new cluster).
#[derive(Debug, Clone, Default)]
pub struct InitialState {
    /// The saved hard state.
    pub hard_state: HardState,
    /// The latest snapshot, if one was installed or taken.
    pub snapshot: Option<SnapshotMeta>,
    /// The last entry of the purged prefix of the log (zero when nothing
    /// was purged). It may be below the snapshot's index when entries were
    /// kept for slow followers ([`Config::snapshot_keep_entries`]).
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
    /// keep a restart within [`Config::max_log_cache_bytes`]: the engine
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

/// Role, leader and term, reported when one of them changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The leader this node knows of in `term`.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: Term,
    /// The target of a leadership transfer in progress on this leader.
    pub transferee: Option<NodeId>,
}

/// One batch of engine output. See the [module docs](self) for what a driver
/// must do with each field and in which order.
#[derive(Debug, Default)]
#[must_use = "a Ready holds work the driver must do"]
pub struct Ready {
    /// Role/leader/term after this batch, when it changed.
    pub soft_state: Option<SoftState>,
    /// Hard state to persist, when it changed.
    pub hard_state: Option<HardState>,
    /// Storage must delete entries at or above this index before appending.
    pub truncate_from: Option<Index>,
    /// Entries to append durably.
    pub entries: Vec<Entry>,
    /// A snapshot was taken: record it and purge the log prefix (after this
    /// batch's write; it needs no `on_persisted` report).
    pub compact_log: Option<LogCompaction>,
    /// Names this batch's write (hard state, truncation, entries) when it
    /// has one: report it to [`Engine::on_persisted`] once it is durable.
    pub write_id: Option<WriteId>,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Messages that may be sent only after this batch's write is durable.
    pub persisted_messages: Vec<Message>,
    /// Entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads that became safe.
    pub read_states: Vec<ReadState>,
    /// Reads that can no longer complete.
    pub failed_reads: Vec<(ReadId, ReadError)>,
    /// Build a snapshot of the state machine at this metadata's index, once
    /// the committed entries up to it (handed out in this or an earlier
    /// `Ready`) are applied; report [`Engine::on_snapshot_built`] or
    /// [`Engine::on_snapshot_build_failed`].
    pub build_snapshot: Option<SnapshotMeta>,
    /// Install the snapshot received with this metadata: into the state
    /// machine (after every earlier apply), then storage (after every
    /// earlier write); then report [`Engine::on_snapshot_installed`].
    pub install_snapshot: Option<SnapshotMeta>,
    /// Entries to read back from storage for followers; answer each with
    /// [`Engine::on_entries_fetched`].
    pub fetch_entries: Vec<EntryFetch>,
}

/// Per-peer replication status, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub id: NodeId,
    /// Highest index known replicated and durable on the peer.
    pub matched: Index,
    /// Next index the leader will send.
    pub next: Index,
    /// Probe or pipelined replication.
    pub state: ReplicationState,
    /// AppendEntries messages in flight.
    pub inflight: usize,
    /// Whether the peer answered since the last check-quorum round.
    pub recent_active: bool,
    /// The index of the snapshot being sent to it, in the snapshot state.
    pub pending_snapshot: Option<Index>,
}

/// A snapshot of the engine's state, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// Its vote in `term`.
    pub vote: Option<NodeId>,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: Index,
    /// Highest index handed out for applying.
    pub applied: Index,
    /// Last log index.
    pub last_index: Index,
    /// Highest locally durable index.
    pub persisted: Index,
    /// The configuration in force.
    pub membership: Membership,
    /// The index of the entry holding it (0 for the bootstrap configuration).
    pub membership_index: Index,
    /// Whether it is committed.
    pub membership_committed: bool,
    /// The latest snapshot taken or installed.
    pub snapshot: Option<LogId>,
    /// The first index of the in-memory log.
    pub first_index: Index,
    /// A snapshot being installed.
    pub installing_snapshot: Option<LogId>,
    /// Payload bytes the in-memory log holds ([`Config::max_log_cache_bytes`]
    /// bounds those of applied, durable entries).
    pub log_cached_bytes: u64,
    /// Bytes of the entries above the commit index
    /// ([`Config::max_uncommitted_bytes`] bounds a leader's proposals).
    pub uncommitted_bytes: u64,
    /// Replication progress of each peer (leader only).
    pub peers: Vec<PeerStatus>,
    /// Messages refused because their term exceeds
    /// [`MAX_TERM`](crate::types::MAX_TERM), since the engine started.
    pub invalid_term_messages: u64,
}

/// A pending ReadIndex read.
#[derive(Debug, Clone, Copy)]
struct PendingRead {
    id: ReadId,
    /// The commit index when the read arrived.
    index: Index,
    /// The heartbeat round that confirms it; 0 until one is started.
    round: u64,
}

/// How a campaign starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Campaign {
    PreVote,
    Election,
    Transfer,
}

/// The Raft state machine of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    /// Persistent state (paper Figure 2): current term and vote.
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// The configuration from the snapshot or bootstrap, under any in the log.
    base_membership: Membership,
    /// The index that configuration is from (0 for the bootstrap one).
    base_membership_index: Index,
    /// The latest snapshot taken or installed.
    snapshot: Option<SnapshotMeta>,
    /// A snapshot build was requested and not reported yet.
    snapshot_building: bool,
    /// A snapshot build to hand out in the next `Ready`.
    build_request: Option<SnapshotMeta>,
    /// Bytes of entries handed out for applying since the last snapshot request.
    applied_bytes_since_snapshot: u64,
    /// A compaction to hand out in the next `Ready`.
    pending_compaction: Option<LogCompaction>,
    /// Follower: the snapshot being installed.
    installing: Option<SnapshotMeta>,
    /// An install to hand out in the next `Ready`.
    install_request: Option<SnapshotMeta>,
    /// Membership entries of the log, in index order; the last one is in force.
    membership_log: Vec<(Index, Membership)>,
    rng: ChaCha8Rng,
    /// Logical clock: ticks since the engine was created.
    now: u64,
    election_elapsed: u64,
    /// Follower: until this tick (exclusive) it keeps its promise to the
    /// leader it last heard from to help elect nobody else (thesis §4.2.3,
    /// §6.4.1): that leader counts its acknowledgement toward a lease. No
    /// term change clears it; only time ends it.
    lease_until: u64,
    /// The leader `lease_until` was promised to: the promise protects its
    /// lease from other candidates, not from its own new campaign.
    lease_leader: Option<NodeId>,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    /// Votes received in the current (pre-)campaign.
    votes: BTreeMap<NodeId, bool>,
    /// Leader only: each other member's progress.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader only: the current heartbeat round and when recent rounds started.
    round: u64,
    round_started: VecDeque<(u64, u64)>,
    /// Leader only: reads waiting for a heartbeat round.
    pending_reads: VecDeque<PendingRead>,
    /// Leader only: reads waiting for the first commit of this term.
    reads_before_commit: Vec<ReadId>,
    /// Whether a new heartbeat round must be started for pending reads.
    read_round_needed: bool,
    /// Whether followers should hear about a commit advance.
    commit_advanced: bool,
    transferee: Option<NodeId>,
    transfer_elapsed: u64,
    /// Leader only: a `TimeoutNow` went out in this term. Its target's
    /// campaign bypasses the voters' lease, so this leader's lease can no
    /// longer be trusted for the rest of the term.
    timeout_now_sent: bool,
    /// A single voter's own election, waiting for its vote and first entry
    /// (this id) to be durable before it takes office.
    self_election: Option<LogId>,
    /// Whether the engine started from saved state rather than as a new node.
    restarted: bool,
    /// Messages refused for a term above [`crate::types::MAX_TERM`].
    invalid_term_messages: u64,
    // Output buffers, drained by `ready`.
    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    /// Read-backs from storage for the next `Ready`.
    fetches: Vec<EntryFetch>,
    /// Id of the next read-back.
    next_fetch: u64,
    read_states: Vec<ReadState>,
    failed_reads: Vec<(ReadId, ReadError)>,
    last_hard_state: HardState,
    last_soft_state: SoftState,
}

/// How many recent heartbeat rounds keep their start time for lease checks.
pub(super) const ROUND_HISTORY_MAX: usize = 1024;

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
        // The log follows the purged prefix; with nothing after it, the
        // later of the purge point and the snapshot is where it resumes.
        let offset = match initial.entries.first() {
            Some(first) if first.index == snapshot_id.index + 1 => snapshot_id,
            Some(_) => initial.purged,
            None if initial.purged.index > snapshot_id.index => initial.purged,
            None => snapshot_id,
        };
        let base_membership = initial
            .snapshot
            .as_ref()
            .map(|s| s.membership.clone())
            .unwrap_or_else(|| initial.bootstrap.clone());
        let base_membership_index = snapshot_id.index;
        // Configurations at or below the snapshot are part of its membership.
        let membership_log = initial
            .entries
            .iter()
            .filter(|e| e.index > snapshot_id.index)
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, (**m).clone())),
                _ => None,
            })
            .collect();
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

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The commit index.
    pub fn commit_index(&self) -> Index {
        self.log.committed()
    }

    /// The id of the last log entry.
    pub fn last_log_id(&self) -> LogId {
        self.log.last_log_id()
    }

    /// The configuration in force (the latest one appended, thesis §4.1).
    /// See [`Engine::change_membership`] to change it.
    pub fn membership(&self) -> &Membership {
        self.membership_log
            .last()
            .map_or(&self.base_membership, |(_, m)| m)
    }

    /// The term of the entry at `index`, when it is in the in-memory log.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// A monitoring snapshot of the engine.
    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.committed(),
            applied: self.log.apply_emitted(),
            last_index: self.log.last_index(),
            persisted: self.log.persisted(),
            membership: self.membership().clone(),
            membership_index: self.membership_entry().0,
            membership_committed: self.membership_committed(),
            snapshot: self.snapshot.as_ref().map(|s| s.last_log_id),
            first_index: self.log.first_index(),
            installing_snapshot: self.installing.as_ref().map(|s| s.last_log_id),
            log_cached_bytes: self.log.cached_bytes(),
            uncommitted_bytes: self.log.uncommitted_bytes(),
            peers: self
                .progress
                .iter()
                .map(|(id, p)| PeerStatus {
                    id: *id,
                    matched: p.matched,
                    next: p.next,
                    state: p.state,
                    inflight: p.inflight_count(),
                    recent_active: p.recent_active,
                    pending_snapshot: (p.state == ReplicationState::Snapshot)
                        .then_some(p.pending_snapshot),
                })
                .collect(),
            invalid_term_messages: self.invalid_term_messages,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
            transferee: self.transferee,
        }
    }

    /// Whether this node may campaign: it is a voter of the configuration in
    /// force, or of the one before it while that one is not committed. (A
    /// leader that appended a C_new without itself and lost office before
    /// C_new committed may be the only node whose vote, and whose log, the
    /// others need to finish the change.)
    fn is_promotable(&self) -> bool {
        let id = self.cfg.id;
        if self.membership().is_voter(id) {
            return true;
        }
        let (index, _) = self.membership_entry();
        !self.membership_committed() && index > 0 && self.membership_at(index - 1).is_voter(id)
    }

    /// Whether [`ready`](Self::ready) has anything to return.
    pub fn has_ready(&self) -> bool {
        if !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || !self.fetches.is_empty()
            || !self.read_states.is_empty()
            || !self.failed_reads.is_empty()
            || self.log.has_unpersisted()
            || (self.log.has_committed() && self.installing.is_none())
            || self.build_request.is_some()
            || self.install_request.is_some()
            || self.pending_compaction.is_some()
            || self.hard_state() != self.last_hard_state
            || self.soft_state() != self.last_soft_state
        {
            return true;
        }
        if self.role == Role::Leader {
            if self.read_round_needed || self.commit_advanced {
                return true;
            }
            let (max_msgs, max_bytes) =
                (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
            let last = self.log.last_index();
            return self.progress.values().any(|p| {
                // Same test as `replicate_to`: a follower that needs
                // compacted entries gets the snapshot, if there is one.
                !p.is_paused(max_msgs, max_bytes)
                    && p.fetching.is_none()
                    && p.next <= last
                    && (self.log.term(p.next - 1).is_some() || self.snapshot.is_some())
            });
        }
        false
    }

    /// Takes the pending output. See the [module docs](self) for what the
    /// driver must do with it.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.flush_leader();
        }
        let hard_state = self.hard_state();
        let hard_state = (hard_state != self.last_hard_state).then(|| {
            self.last_hard_state = hard_state;
            hard_state
        });
        let soft = self.soft_state();
        let soft_state = (soft != self.last_soft_state).then(|| {
            self.last_soft_state = soft;
            soft
        });
        let (truncate_from, entries) = self.log.take_unpersisted();
        let has_write = hard_state.is_some() || truncate_from.is_some() || !entries.is_empty();
        let write_id = has_write.then(|| WriteId(self.log.register_write()));
        // Nothing is applied while a snapshot replaces the state machine.
        let committed_entries = if self.installing.is_none() {
            self.log.take_committed(usize::MAX)
        } else {
            Vec::new()
        };
        let applied_bytes = committed_entries.iter().map(Entry::size_bytes).sum();
        if !committed_entries.is_empty() {
            self.maybe_request_snapshot(applied_bytes);
        }
        // What was applied and is durable may leave memory now.
        self.log.evict(self.cfg.max_log_cache_bytes);
        Ready {
            soft_state,
            hard_state,
            truncate_from,
            entries,
            write_id,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            failed_reads: std::mem::take(&mut self.failed_reads),
            compact_log: self.pending_compaction.take(),
            build_snapshot: self.build_request.take(),
            install_snapshot: self.install_request.take(),
            fetch_entries: std::mem::take(&mut self.fetches),
        }
    }
}
