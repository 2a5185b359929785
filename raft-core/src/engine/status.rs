//! The engine's state for monitoring: [`Status`] and [`PeerStatus`].

use super::{Engine, ReplicationState, Role};
use crate::membership::Membership;
use crate::types::{Index, LogId, NodeId, Term};

/// Per-peer replication status, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// Payload bytes the in-memory log holds ([`Config::max_log_cache_bytes`](crate::Config::max_log_cache_bytes)
    /// bounds those of applied, durable entries).
    pub log_cached_bytes: u64,
    /// Bytes of the entries above the commit index
    /// ([`Config::max_uncommitted_bytes`](crate::Config::max_uncommitted_bytes) bounds a leader's proposals).
    pub uncommitted_bytes: u64,
    /// Replication progress of each peer (leader only).
    pub peers: Vec<PeerStatus>,
    /// Messages refused because their term exceeds
    /// [`MAX_TERM`](crate::types::MAX_TERM), since the engine started.
    pub invalid_term_messages: u64,
}

impl Engine {
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
}
