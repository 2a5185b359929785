//! Messages exchanged between Raft peers (paper Figure 2, thesis §9.6 for
//! pre-vote, §3.10 for leadership transfer).
//!
//! Every message carries the sender's term; the engine handles terms
//! uniformly before it looks at the body (paper §5.1).

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
        }
    }
}
