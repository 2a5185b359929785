//! Messages exchanged between Raft peers (paper Figure 2, thesis §9.6 for
//! pre-vote, §3.10 for leadership transfer).
//!
//! Every message carries the sender's term; the engine handles terms
//! uniformly before it looks at the body (paper §5.1).

use bytes::Bytes;

use crate::types::{Entry, Index, LogId, NodeId, SnapshotMeta, Term};

/// A message from one peer to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The message kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote RPC (paper §5.2), or a pre-vote probe (thesis §9.6) when
    /// `pre_vote` is set; a pre-vote changes no state on the receiver.
    RequestVote {
        /// Whether this is a pre-vote.
        pre_vote: bool,
        /// The candidate's last log entry, for the up-to-date check (paper §5.4.1).
        last_log_id: LogId,
        /// Set when the campaign follows a `TimeoutNow`: voters then ignore
        /// their leader lease (thesis §3.10).
        leadership_transfer: bool,
    },
    /// The answer to `RequestVote`.
    RequestVoteResponse {
        /// Whether it answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries RPC (paper §5.3); empty for heartbeats and probes.
    AppendEntries {
        /// The entry immediately preceding `entries`.
        prev_log_id: LogId,
        /// Entries to append, consecutive from `prev_log_id.index + 1`.
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: Index,
        /// The leader's heartbeat round, echoed in the response: it confirms
        /// leadership for reads (thesis §6.4) and dates the leader's lease.
        round: u64,
        /// Set on heartbeats. A heartbeat is sent at the follower's match
        /// index, so it passes the consistency check whatever arrived before
        /// it: a transport may deliver it ahead of earlier AppendEntries
        /// (on a separate, latency-first stream). Every other AppendEntries
        /// must keep its order. The engine's handling does not depend on it.
        heartbeat: bool,
    },
    /// The answer to `AppendEntries`.
    AppendEntriesResponse {
        /// The echoed heartbeat round.
        round: u64,
        /// Success or the reason for rejection.
        result: AppendResult,
    },
    /// Tells the recipient to start an election at once (leadership transfer, thesis §3.10).
    TimeoutNow,
    /// InstallSnapshot (paper §7, thesis §5): the leader's log no longer
    /// holds the entries the recipient needs, so it sends its snapshot.
    ///
    /// This message is the snapshot's header: the data travels beside it,
    /// streamed by [`Transport::send_snapshot`](crate::Transport::send_snapshot),
    /// and the receiving driver steps the message into its engine only once
    /// the whole snapshot arrived and was verified
    /// ([`RaftHandle::receive_snapshot`](crate::RaftHandle::receive_snapshot)).
    /// The recipient answers with an `AppendEntriesResponse` once the
    /// snapshot is installed and durable.
    InstallSnapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
    },
    /// A follower forwards a client's command to the leader it knows of,
    /// which appends it as if proposed locally (same admission limits) and
    /// answers with [`ForwardProposeResponse`](Self::ForwardProposeResponse).
    /// Handled whatever the terms of sender and receiver: it changes no
    /// term and no vote.
    ForwardPropose {
        /// The follower's id for this request, echoed in the answer.
        request_id: u64,
        /// The command, as for [`Engine::propose`](crate::engine::Engine::propose).
        command: Bytes,
    },
    /// The leader's answer to `ForwardPropose`.
    ForwardProposeResponse {
        /// The request it answers.
        request_id: u64,
        /// Where the command was appended, or why it was not.
        result: ForwardProposeResult,
    },
    /// A follower asks the leader for a read index (thesis §6.4): the
    /// leader runs its own ReadIndex (first commit of its term, then a
    /// heartbeat round a quorum answers) and answers with
    /// [`ReadIndexResponse`](Self::ReadIndexResponse). The follower serves
    /// the read once it has applied that index.
    ReadIndexRequest {
        /// The follower's id for this request, echoed in the answer.
        request_id: u64,
    },
    /// The leader's answer to `ReadIndexRequest`.
    ReadIndexResponse {
        /// The request it answers.
        request_id: u64,
        /// The read index, or why there is none.
        result: ForwardReadResult,
    },
}

/// Why a leader refused a forwarded request. Nothing was appended and
/// nothing was read: the request may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardRefusal {
    /// The receiver is not the leader; `leader` is the one it knows of.
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The leader's admission limits refused it (uncommitted entries or
    /// bytes, a lagging state machine, too many pending reads).
    Overloaded,
}

/// The answer to [`MessageBody::ForwardPropose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardProposeResult {
    /// Appended at this log position (not yet committed): it is applied
    /// if and only if the entry applied at `index` has this `term`.
    Appended(LogId),
    /// Not appended.
    Refused(ForwardRefusal),
}

/// The answer to [`MessageBody::ReadIndexRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardReadResult {
    /// A read that waits until this index is applied is linearizable.
    Index(Index),
    /// No read index.
    Refused(ForwardRefusal),
}

/// The outcome of an AppendEntries on the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log now matches the leader's through `last_index`, and
    /// all of it is durable on the follower.
    Success {
        /// The index of the last entry the follower holds that matches the leader.
        last_index: Index,
    },
    /// The consistency check failed at `rejected_prev`.
    Conflict {
        /// The `prev_log_id.index` of the rejected request.
        rejected_prev: Index,
        /// A hint for fast backtracking (thesis §5.3 optimisation): the last
        /// position of the follower's log at or before `rejected_prev` whose
        /// term is at most the leader's `prev_log_id.term`.
        hint: LogId,
    },
    /// The follower is installing a snapshot and appended nothing. The
    /// answer says only that it follows this leader in this term: the
    /// leader counts it for check-quorum and for confirming reads and its
    /// lease, and learns nothing about the follower's log from it.
    Installing,
}

impl MessageBody {
    /// A short name of the message kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "pre_vote",
            MessageBody::RequestVote {
                pre_vote: false, ..
            } => "request_vote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "pre_vote_response",
            MessageBody::RequestVoteResponse {
                pre_vote: false, ..
            } => "request_vote_response",
            MessageBody::AppendEntries {
                heartbeat: true, ..
            } => "heartbeat",
            MessageBody::AppendEntries { .. } => "append_entries",
            MessageBody::AppendEntriesResponse { .. } => "append_entries_response",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::InstallSnapshot { .. } => "install_snapshot",
            MessageBody::ForwardPropose { .. } => "forward_propose",
            MessageBody::ForwardProposeResponse { .. } => "forward_propose_response",
            MessageBody::ReadIndexRequest { .. } => "read_index_request",
            MessageBody::ReadIndexResponse { .. } => "read_index_response",
        }
    }
}
