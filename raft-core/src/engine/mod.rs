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
//! - [`Engine::forward_propose`], [`Engine::forward_read_index`]: client
//!   requests a follower forwards to its leader (`forward.rs`);
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
//! 6. Match each of [`Ready::forward_responses`] to the request this node
//!    forwarded (ignore it when no request waits for it).
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
mod error;
mod forward;
mod log;
mod output;
mod progress;
mod read;
mod replication;
mod restore;
mod status;

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::membership::Membership;
use crate::message::Message;
use crate::types::{Entry, HardState, Index, LogId, NodeId, SnapshotMeta, Term};
pub use change::{ChangeError, MembershipChange};
pub use compaction::{LogCompaction, SnapshotRequestError};
pub use error::{ProposalRefused, ReadRefused, TransferRefused};
pub use forward::{ForwardResponse, ForwardResult, REMOTE_READ_ID_BASE};
use log::RaftLog;
pub use output::{EntryFetch, ReadId, ReadState, Ready, SoftState, WriteId};
use progress::Progress;
pub use progress::ReplicationState;
pub use restore::InitialState;
pub use status::{PeerStatus, Status};

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
    failed_reads: Vec<(ReadId, ReadRefused)>,
    /// Leader only: reads forwarded by followers, by the engine's own read
    /// id, with the follower and its request id.
    remote_reads: BTreeMap<ReadId, (NodeId, u64)>,
    /// The next id for a forwarded read (from [`REMOTE_READ_ID_BASE`]).
    next_remote_read: ReadId,
    /// Answers to requests this node forwarded, for the next `Ready`.
    forward_responses: Vec<ForwardResponse>,
    last_hard_state: HardState,
    last_soft_state: SoftState,
}

/// How many recent heartbeat rounds keep their start time for lease checks.
pub(super) const MAX_ROUND_HISTORY: usize = 1024;

impl Engine {
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
            || !self.forward_responses.is_empty()
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
        self.route_remote_reads();
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
            forward_responses: std::mem::take(&mut self.forward_responses),
            compact_log: self.pending_compaction.take(),
            build_snapshot: self.build_request.take(),
            install_snapshot: self.install_request.take(),
            fetch_entries: std::mem::take(&mut self.fetches),
        }
    }
}
