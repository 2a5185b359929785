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
//! - [`Engine::on_persisted`]: storage made entries durable;
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
//!    [`Engine::on_persisted`] with the id of the last entry written.
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
//! append is durable:
//!
//! ```
//! use bytes::Bytes;
//! use raft_core::engine::{Engine, InitialState, Role};
//! use raft_core::{Config, Membership};
//!
//! let mut node = Engine::new(Config::new(1), InitialState::bootstrap(Membership::new([1])))
//!     .expect("valid configuration");
//! while node.role() != Role::Leader {
//!     node.tick();
//! }
//! let id = node.propose(Bytes::from_static(b"x=1")).expect("leader accepts proposals");
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let ready = node.ready();
//!     // 1. send ready.messages (none: no peers)
//!     // 2. persist ready.hard_state / truncate_from / entries durably ...
//!     if let Some(last) = ready.entries.last() {
//!         // 3. ... then send ready.persisted_messages and report the write.
//!         node.on_persisted(last.log_id());
//!     }
//!     // 4. apply
//!     for entry in &ready.committed_entries {
//!         applied.push(entry.index);
//!         node.on_applied(entry.index);
//!     }
//! }
//! assert!(applied.contains(&id.index), "the proposal was committed and applied");
//! ```

mod log;
mod progress;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, ConfigError};
use crate::membership::Membership;
use crate::message::{AppendResult, Message, MessageBody};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, NodeId, SnapshotMeta, Term};
use log::{AppendRefusal, RaftLog};
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
    /// The compacted prefix, if a snapshot was installed or taken.
    pub snapshot: Option<SnapshotMeta>,
    /// Every log entry after the snapshot, consecutive, all durable.
    pub entries: Vec<Entry>,
    /// The configuration to use when neither the log nor the snapshot holds
    /// one: the initial cluster of a new deployment.
    pub bootstrap: Membership,
    /// The state machine's durable applied index; applying resumes after it.
    pub applied: Index,
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
    /// Replication progress of each peer (leader only).
    pub peers: Vec<PeerStatus>,
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
    /// Membership entries of the log, in index order; the last one is in force.
    membership_log: Vec<(Index, Membership)>,
    rng: ChaCha8Rng,
    /// Logical clock: ticks since the engine was created.
    now: u64,
    election_elapsed: u64,
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
    // Output buffers, drained by `ready`.
    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    read_states: Vec<ReadState>,
    failed_reads: Vec<(ReadId, ReadError)>,
    last_hard_state: HardState,
    last_soft_state: SoftState,
}

/// How many recent heartbeat rounds keep their start time for lease checks.
const ROUND_HISTORY_MAX: usize = 1024;

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
        let offset = initial
            .snapshot
            .as_ref()
            .map(|s| s.last_log_id)
            .unwrap_or_default();
        let base_membership = initial
            .snapshot
            .as_ref()
            .map(|s| s.membership.clone())
            .unwrap_or_else(|| initial.bootstrap.clone());
        let membership_log = initial
            .entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        let mut log = RaftLog::restore(offset, initial.entries, initial.hard_state.commit);
        log.set_applied(initial.applied.max(offset.index));
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
            membership_log,
            rng,
            now: 0,
            election_elapsed: 0,
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
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
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

    // ----- accessors -------------------------------------------------------

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
                })
                .collect(),
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

    fn is_promotable(&self) -> bool {
        self.membership().is_voter(self.cfg.id)
    }

    // ----- inputs ------------------------------------------------------------

    /// Advances logical time by one tick: drives election timeouts,
    /// heartbeats, check-quorum and the leadership-transfer timeout.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.is_promotable() && self.election_elapsed >= self.randomized_election_timeout {
                self.election_elapsed = 0;
                let kind = if self.cfg.pre_vote {
                    Campaign::PreVote
                } else {
                    Campaign::Election
                };
                self.campaign(kind);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_timeout_ticks {
                // Thesis §3.10: abort a transfer that did not finish within an
                // election timeout, and accept proposals again.
                tracing::info!(target = ?self.transferee, "leadership transfer timed out");
                self.transferee = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let id = self.cfg.id;
                let active = self.membership().is_quorum(|n| {
                    n == id || self.progress.get(&n).is_some_and(|p| p.recent_active)
                });
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
                if !active {
                    tracing::info!(term = self.term, "check-quorum failed: stepping down");
                    self.become_follower(self.term, None);
                    return;
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Proposes `data` as a new log entry. Only a leader accepts proposals.
    /// Returns the entry's id: the proposal succeeded if and only if an entry
    /// with this id is later applied.
    ///
    /// # Errors
    ///
    /// [`ProposeError`]; nothing was appended.
    pub fn propose(&mut self, data: Bytes) -> Result<LogId, ProposeError> {
        self.propose_payload(EntryPayload::Normal(data))
    }

    fn propose_payload(&mut self, payload: EntryPayload) -> Result<LogId, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = self.transferee {
            return Err(ProposeError::TransferInProgress(t));
        }
        let uncommitted = (self.log.last_index() - self.log.committed()) as usize;
        if uncommitted >= self.cfg.max_uncommitted_entries {
            return Err(ProposeError::TooManyPending(uncommitted));
        }
        Ok(self.append_entry(payload))
    }

    fn append_entry(&mut self, payload: EntryPayload) -> LogId {
        let id = LogId::new(self.term, self.log.last_index() + 1);
        let membership = match &payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        };
        self.log.append_own(Entry {
            term: id.term,
            index: id.index,
            payload,
        });
        if let Some(m) = membership {
            // Thesis §4.1: a configuration takes effect as soon as it is appended.
            self.membership_log.push((id.index, m));
            self.sync_progress_with_membership();
        }
        id
    }

    /// Starts a linearizable read (ReadIndex, thesis §6.4): the read's index
    /// is the current commit index, released in a [`ReadState`] once a
    /// quorum confirms this node is still leader. A new leader first commits
    /// an entry of its own term.
    ///
    /// # Errors
    ///
    /// [`ReadError::NotLeader`] or [`ReadError::TooManyPending`].
    pub fn read_index(&mut self, id: ReadId) -> Result<(), ReadError> {
        if self.role != Role::Leader {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        }
        let pending = self.pending_reads.len() + self.reads_before_commit.len();
        if pending >= self.cfg.max_pending_reads {
            return Err(ReadError::TooManyPending(pending));
        }
        if !self.committed_in_current_term() {
            self.reads_before_commit.push(id);
            return Ok(());
        }
        self.queue_read(id);
        Ok(())
    }

    fn queue_read(&mut self, id: ReadId) {
        let id_self = self.cfg.id;
        if self.membership().is_quorum(|n| n == id_self) {
            // This node alone is a quorum: nobody else can be leader.
            self.read_states.push(ReadState {
                id,
                index: self.log.committed(),
            });
            return;
        }
        self.pending_reads.push_back(PendingRead {
            id,
            index: self.log.committed(),
            round: 0,
        });
        self.read_round_needed = true;
    }

    /// Serves a read from the leader lease (thesis §6.4.1) without a round
    /// trip: succeeds only while a quorum answered a heartbeat round that
    /// started less than [`Config::lease_ticks`] ago, with check-quorum on, an
    /// entry of this term committed and no leadership transfer in progress.
    /// The [`ReadState`] is in the next [`Ready`].
    ///
    /// # Errors
    ///
    /// [`ReadError::NotLeader`] or [`ReadError::LeaseNotHeld`] (fall back to
    /// [`read_index`](Self::read_index)).
    pub fn read_lease(&mut self, id: ReadId) -> Result<(), ReadError> {
        if self.role != Role::Leader {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        }
        if !self.lease_valid() {
            return Err(ReadError::LeaseNotHeld);
        }
        self.read_states.push(ReadState {
            id,
            index: self.log.committed(),
        });
        Ok(())
    }

    /// Whether this leader currently holds its lease.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || !self.cfg.check_quorum
            || self.transferee.is_some()
            || !self.committed_in_current_term()
        {
            return false;
        }
        let id = self.cfg.id;
        if self.membership().is_quorum(|n| n == id) {
            return true;
        }
        let round = self.quorum_round();
        // The start of the newest round at or below the quorum's: a lower
        // bound on when each quorum member last heard from this leader.
        let started = self
            .round_started
            .iter()
            .rev()
            .find(|(r, _)| *r <= round)
            .map(|(_, t)| *t);
        started.is_some_and(|t| self.now < t + self.cfg.lease_ticks)
    }

    /// Starts a leadership transfer to `to` (thesis §3.10): the target is
    /// caught up, then told to campaign at once with `TimeoutNow`. Proposals
    /// are refused meanwhile; the transfer is abandoned after an election
    /// timeout. Watch [`SoftState`] for the outcome.
    ///
    /// # Errors
    ///
    /// [`TransferError`] when this node is not the leader or `to` is not a voter.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.cfg.id {
            return Ok(());
        }
        if !self.membership().is_voter(to) {
            return Err(TransferError::NotAVoter(to));
        }
        if self.transferee == Some(to) {
            return Ok(());
        }
        self.transferee = Some(to);
        self.transfer_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        }
        Ok(())
    }

    /// Tells the engine that storage made every entry up to `last` durable
    /// (the last entry of a completed write). Stale notices, for entries
    /// overwritten since, are ignored.
    pub fn on_persisted(&mut self, last: LogId) {
        if self.log.on_persisted(last) && self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Tells the engine that the state machine applied entries up to `index`.
    pub fn on_applied(&mut self, index: Index) {
        // Applying is tracked by the driver; the engine only needs it once
        // snapshots decide what can be compacted. Kept as an input so the
        // driver contract does not change when they land.
        let _ = index;
    }

    /// Handles a message from a peer. Messages with stale terms, from unknown
    /// nodes, or out of order are handled as the algorithm requires; none of
    /// them panics.
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.cfg.id || msg.from == self.cfg.id || msg.from == 0 {
            tracing::debug!(
                from = msg.from,
                to = msg.to,
                "dropping misaddressed message"
            );
            return;
        }
        if let MessageBody::RequestVote { .. } = msg.body {
            if !self.membership().is_voter(msg.from) {
                tracing::debug!(from = msg.from, "ignoring vote request from a non-voter");
                return;
            }
        }
        if msg.term > self.term {
            match &msg.body {
                MessageBody::RequestVote {
                    pre_vote,
                    leadership_transfer,
                    ..
                } => {
                    if !leadership_transfer && self.in_leader_lease() {
                        // Thesis §4.2.3: a node that heard from a leader within
                        // the minimum election timeout ignores vote requests,
                        // so a removed or partitioned node cannot disrupt.
                        tracing::debug!(from = msg.from, "ignoring vote request within lease");
                        if *pre_vote {
                            self.send(
                                msg.from,
                                MessageBody::RequestVoteResponse {
                                    pre_vote: true,
                                    granted: false,
                                },
                            );
                        }
                        return;
                    }
                    if !pre_vote {
                        self.become_follower(msg.term, None);
                    }
                }
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {
                    // Answered at the term we would campaign in; not a newer term.
                }
                MessageBody::AppendEntries { .. } => self.become_follower(msg.term, Some(msg.from)),
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            self.step_stale(msg);
            return;
        }

        match msg.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_id,
                ..
            } => self.handle_vote_request(msg.from, msg.term, pre_vote, last_log_id),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(msg.from, msg.term, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_log_id,
                entries,
                leader_commit,
                round,
            } => self.handle_append(msg.from, prev_log_id, &entries, leader_commit, round),
            MessageBody::AppendEntriesResponse { round, result } => {
                self.handle_append_response(msg.from, round, result)
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.is_promotable() {
                    tracing::info!(from = msg.from, "TimeoutNow: campaigning at once");
                    self.campaign(Campaign::Transfer);
                }
            }
        }
    }

    /// A message from an older term: answer so that a stale leader or
    /// candidate learns the newer term (with pre-vote and check-quorum the
    /// stale node would otherwise never hear it), otherwise drop.
    fn step_stale(&mut self, msg: Message) {
        match msg.body {
            MessageBody::AppendEntries {
                prev_log_id, round, ..
            } => {
                self.send(
                    msg.from,
                    MessageBody::AppendEntriesResponse {
                        round,
                        result: AppendResult::Conflict {
                            rejected_prev: prev_log_id.index,
                            hint: LogId::default(),
                        },
                    },
                );
            }
            MessageBody::RequestVote { pre_vote, .. } => {
                self.send(
                    msg.from,
                    MessageBody::RequestVoteResponse {
                        pre_vote,
                        granted: false,
                    },
                );
            }
            _ => {}
        }
    }

    /// Whether this node heard from a live leader within the minimum election
    /// timeout (only meaningful with check-quorum).
    fn in_leader_lease(&self) -> bool {
        self.cfg.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.cfg.election_timeout_ticks
    }

    fn handle_vote_request(&mut self, from: NodeId, term: Term, pre_vote: bool, last: LogId) {
        // Paper §5.4.1: grant only to a candidate whose log is at least as
        // up-to-date as ours.
        let up_to_date = last >= self.log.last_log_id();
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        let granted = can_vote && up_to_date;
        let reply_term = if granted && pre_vote { term } else { self.term };
        let reply = Message {
            from: self.cfg.id,
            to: from,
            term: reply_term,
            body: MessageBody::RequestVoteResponse { pre_vote, granted },
        };
        if granted && !pre_vote {
            self.vote = Some(from);
            self.election_elapsed = 0;
            // The grant is a promise about durable state: send after persisting.
            self.persisted_msgs.push(reply);
        } else {
            self.msgs.push(reply);
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, term: Term, pre_vote: bool, granted: bool) {
        let expected = match self.role {
            // Grants come back at the term we would campaign in, refusals at
            // the voter's own term.
            Role::PreCandidate if pre_vote => {
                term == self.term + 1 || (!granted && term == self.term)
            }
            Role::Candidate if !pre_vote => term == self.term,
            _ => false,
        };
        if !expected || !self.membership().is_voter(from) {
            return;
        }
        self.votes.insert(from, granted);
        let votes = &self.votes;
        if self
            .membership()
            .is_quorum(|n| votes.get(&n) == Some(&true))
        {
            if pre_vote {
                self.campaign(Campaign::Election);
            } else {
                self.become_leader();
            }
        } else if self
            .membership()
            .is_quorum_lost(|n| votes.get(&n) == Some(&false))
        {
            self.become_follower(self.term, None);
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev: LogId,
        entries: &[Entry],
        leader_commit: Index,
        round: u64,
    ) {
        if self.role != Role::Follower {
            // A candidate of the same term learns that a leader won (paper §5.2).
            self.become_follower(self.term, Some(from));
        }
        self.leader = Some(from);
        self.election_elapsed = 0;
        match self.log.try_append(prev, entries) {
            Ok(last_new) => {
                self.track_membership_entries(entries);
                self.log.commit_to(leader_commit.min(last_new));
                let reply = Message {
                    from: self.cfg.id,
                    to: from,
                    term: self.term,
                    body: MessageBody::AppendEntriesResponse {
                        round,
                        result: AppendResult::Success {
                            last_index: last_new,
                        },
                    },
                };
                // Acknowledges durable entries: send after persisting.
                self.persisted_msgs.push(reply);
            }
            Err(AppendRefusal::Mismatch(hint)) => {
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        round,
                        result: AppendResult::Conflict {
                            rejected_prev: prev.index,
                            hint,
                        },
                    },
                );
            }
            Err(AppendRefusal::ConflictsWithCommitted(index)) => {
                tracing::error!(
                    from,
                    index,
                    commit = self.log.committed(),
                    "leader tried to overwrite a committed entry; request dropped"
                );
            }
        }
    }

    /// Updates the membership history after a follower append: entries may
    /// have replaced a suffix that held membership entries.
    fn track_membership_entries(&mut self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let before = self.membership_log.clone();
        let log = &self.log;
        self.membership_log.retain(|(i, m)| {
            matches!(log.get(*i).map(|e| &e.payload), Some(EntryPayload::Membership(x)) if x == m)
        });
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                if log.get(e.index).is_some_and(|x| x == e)
                    && !self.membership_log.iter().any(|(i, _)| *i == e.index)
                {
                    self.membership_log.push((e.index, m.clone()));
                }
            }
        }
        self.membership_log.sort_by_key(|(i, _)| *i);
        if before != self.membership_log {
            self.sync_progress_with_membership();
        }
    }

    fn handle_append_response(&mut self, from: NodeId, round: u64, result: AppendResult) {
        if self.role != Role::Leader {
            return;
        }
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if round <= self.round {
            pr.acked_round = pr.acked_round.max(round);
        }
        match result {
            AppendResult::Success { last_index: acked } => {
                if acked > last_index {
                    tracing::warn!(from, acked, last_index, "ack beyond our log ignored");
                    return;
                }
                let was_full = pr.inflight_full(max_msgs, max_bytes);
                let moved = pr.on_success(acked);
                if !moved && acked == pr.matched && pr.matched < last_index {
                    // A heartbeat answer from a follower that is behind what
                    // we think is in flight: a message may have been lost.
                    if was_full {
                        pr.free_first();
                    }
                    if pr.state == ReplicationState::Replicate {
                        // An empty append at `next - 1` succeeds if the data
                        // arrived and is rejected (moving to probe) if not.
                        self.send_empty_append(from);
                    }
                }
                if moved {
                    self.maybe_commit();
                }
                if self.transferee == Some(from)
                    && self
                        .progress
                        .get(&from)
                        .is_some_and(|p| p.matched == last_index)
                {
                    self.send(from, MessageBody::TimeoutNow);
                }
            }
            AppendResult::Conflict {
                rejected_prev,
                hint,
            } => {
                let next = if hint.term == 0 {
                    hint.index + 1
                } else {
                    self.log.find_conflict_by_term(hint.index, hint.term).index + 1
                };
                if let Some(pr) = self.progress.get_mut(&from) {
                    pr.on_reject(rejected_prev, next);
                }
            }
        }
        self.release_confirmed_reads();
    }

    // ----- leader helpers ---------------------------------------------------

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    /// Paper §5.3/§5.4.2 (Figure 8): commit the highest index replicated on a
    /// quorum, but only by counting replicas of an entry of the current term.
    /// The leader counts itself only for what is durable on its own disk.
    fn maybe_commit(&mut self) {
        let id = self.cfg.id;
        let persisted = self.log.persisted();
        let progress = &self.progress;
        let quorum_index = self.membership().quorum_value(|n| {
            if n == id {
                persisted
            } else {
                progress.get(&n).map_or(0, |p| p.matched)
            }
        });
        if quorum_index > self.log.committed() && self.log.term(quorum_index) == Some(self.term) {
            let first_in_term = !self.committed_in_current_term();
            self.log.commit_to(quorum_index);
            self.commit_advanced = true;
            if first_in_term {
                for id in std::mem::take(&mut self.reads_before_commit) {
                    self.queue_read(id);
                }
            }
        }
    }

    fn quorum_round(&self) -> u64 {
        let id = self.cfg.id;
        let round = self.round;
        let progress = &self.progress;
        self.membership().quorum_value(|n| {
            if n == id {
                round
            } else {
                progress.get(&n).map_or(0, |p| p.acked_round)
            }
        })
    }

    fn release_confirmed_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let confirmed = self.quorum_round();
        while let Some(r) = self.pending_reads.front() {
            if r.round == 0 || r.round > confirmed {
                break;
            }
            self.read_states.push(ReadState {
                id: r.id,
                index: r.index,
            });
            self.pending_reads.pop_front();
        }
    }

    fn start_round(&mut self) {
        self.round += 1;
        self.round_started.push_back((self.round, self.now));
        if self.round_started.len() > ROUND_HISTORY_MAX {
            self.round_started.pop_front();
        }
    }

    fn broadcast_heartbeat(&mut self) {
        self.start_round();
        for r in self.pending_reads.iter_mut().filter(|r| r.round == 0) {
            r.round = self.round;
        }
        self.read_round_needed = false;
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            if let Some(pr) = self.progress.get_mut(&peer) {
                if pr.state == ReplicationState::Probe {
                    pr.probe_sent = false;
                }
            }
            self.send_heartbeat(peer);
        }
    }

    /// An empty AppendEntries at the follower's match index: it always passes
    /// the consistency check, carries the commit index the follower can
    /// safely learn, and echoes the round for reads and the lease.
    fn send_heartbeat(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        let Some(term) = self.log.term(pr.matched) else {
            return;
        };
        let body = MessageBody::AppendEntries {
            prev_log_id: LogId::new(term, pr.matched),
            entries: Vec::new(),
            leader_commit: self.log.committed().min(pr.matched),
            round: self.round,
        };
        self.send(to, body);
    }

    /// An empty AppendEntries at `next - 1`: checks whether everything sent
    /// so far arrived.
    fn send_empty_append(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        let prev_index = pr.next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            return;
        };
        let body = MessageBody::AppendEntries {
            prev_log_id: LogId::new(prev_term, prev_index),
            entries: Vec::new(),
            leader_commit: self.log.committed().min(prev_index),
            round: self.round,
        };
        self.send(to, body);
    }

    /// Sends entries to `to` while its flow control allows.
    fn replicate_to(&mut self, to: NodeId) {
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
        loop {
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            if pr.is_paused(max_msgs, max_bytes) || pr.next > self.log.last_index() {
                return;
            }
            let prev_index = pr.next - 1;
            let Some(prev_term) = self.log.term(prev_index) else {
                // Needs a snapshot, which lands with log compaction.
                tracing::warn!(to, prev_index, "follower needs compacted entries");
                return;
            };
            let entries = self.log.slice(
                pr.next,
                self.cfg.max_entries_per_message,
                self.cfg.max_bytes_per_message,
            );
            let Some(last) = entries.last().map(|e| e.index) else {
                return;
            };
            let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
            let body = MessageBody::AppendEntries {
                prev_log_id: LogId::new(prev_term, prev_index),
                entries,
                leader_commit: self.log.committed(),
                round: self.round,
            };
            self.send(to, body);
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.sent(last, bytes);
            }
        }
    }

    fn flush_leader(&mut self) {
        if self.read_round_needed {
            self.broadcast_heartbeat();
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        let commit_advanced = std::mem::take(&mut self.commit_advanced);
        for peer in peers {
            let sent_before = self.msgs.len();
            self.replicate_to(peer);
            let sent = self.msgs.len() > sent_before;
            if commit_advanced && !sent {
                // Nothing new to send: tell the follower the commit index
                // anyway, so it applies without waiting for a heartbeat.
                if self.progress.get(&peer).is_some_and(|p| p.matched > 0) {
                    self.send_heartbeat(peer);
                }
            }
        }
    }

    fn sync_progress_with_membership(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let members: BTreeSet<NodeId> = self
            .membership()
            .members()
            .into_iter()
            .filter(|n| *n != self.cfg.id)
            .collect();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for id in members {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(next));
        }
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.msgs.push(Message {
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        });
    }

    // ----- role transitions ---------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let min = self.cfg.election_timeout_ticks;
        self.randomized_election_timeout = self.rng.gen_range(min..2 * min);
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            self.fail_pending_reads(leader);
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.transferee = None;
        self.commit_advanced = false;
        self.reset_election_timer();
    }

    fn fail_pending_reads(&mut self, leader: Option<NodeId>) {
        let err = ReadError::NotLeader { leader };
        for r in self.pending_reads.drain(..) {
            self.failed_reads.push((r.id, err.clone()));
        }
        for id in self.reads_before_commit.drain(..) {
            self.failed_reads.push((id, err.clone()));
        }
        self.read_round_needed = false;
    }

    fn campaign(&mut self, kind: Campaign) {
        let (term, pre_vote) = match kind {
            Campaign::PreVote => {
                self.role = Role::PreCandidate;
                (self.term + 1, true)
            }
            Campaign::Election | Campaign::Transfer => {
                self.term += 1;
                self.vote = Some(self.cfg.id);
                self.role = Role::Candidate;
                (self.term, false)
            }
        };
        tracing::debug!(id = self.cfg.id, term, pre_vote, "campaigning");
        self.leader = None;
        self.votes.clear();
        self.progress.clear();
        self.reset_election_timer();
        self.votes.insert(self.cfg.id, true);
        let votes = &self.votes;
        if self
            .membership()
            .is_quorum(|n| votes.get(&n) == Some(&true))
        {
            // A single-voter configuration wins at once.
            if pre_vote {
                self.campaign(Campaign::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let last_log_id = self.log.last_log_id();
        let voters: Vec<NodeId> = {
            let m = self.membership();
            let mut v: BTreeSet<NodeId> = m.voters().clone();
            if let Some(o) = m.voters_outgoing() {
                v.extend(o.iter().copied());
            }
            v.into_iter().filter(|n| *n != self.cfg.id).collect()
        };
        for to in voters {
            let msg = Message {
                from: self.cfg.id,
                to,
                term,
                body: MessageBody::RequestVote {
                    pre_vote,
                    last_log_id,
                    leadership_transfer: kind == Campaign::Transfer,
                },
            };
            if pre_vote {
                self.msgs.push(msg);
            } else {
                // Our own vote must be durable before anyone can count on it.
                self.persisted_msgs.push(msg);
            }
        }
    }

    fn become_leader(&mut self) {
        tracing::info!(id = self.cfg.id, term = self.term, "became leader");
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.votes.clear();
        self.transferee = None;
        self.round = 0;
        self.round_started.clear();
        self.reset_election_timer();
        self.progress.clear();
        self.sync_progress_with_membership();
        // Paper §5.4.2 and §8: commit an entry of the new term, which also
        // commits everything before it and enables reads.
        self.append_entry(EntryPayload::Blank);
        // Start the first round now so followers learn of the leader at once.
        self.broadcast_heartbeat();
    }

    // ----- output ----------------------------------------------------------------

    /// Whether [`ready`](Self::ready) has anything to return.
    pub fn has_ready(&self) -> bool {
        if !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || !self.read_states.is_empty()
            || !self.failed_reads.is_empty()
            || self.log.has_unpersisted()
            || self.log.has_committed()
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
            return self
                .progress
                .values()
                .any(|p| !p.is_paused(max_msgs, max_bytes) && p.next <= last);
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
        Ready {
            soft_state,
            hard_state,
            truncate_from,
            entries,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed_entries: self.log.take_committed(usize::MAX),
            read_states: std::mem::take(&mut self.read_states),
            failed_reads: std::mem::take(&mut self.failed_reads),
        }
    }
}
