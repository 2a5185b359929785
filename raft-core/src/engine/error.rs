//! Why the engine refused a request.

use crate::types::NodeId;

/// Why a proposal was refused. A refused proposal was never appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalRefused {
    /// This node is not the leader; `leader` is the one it knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; retry on the new leader.
    #[error("leadership transfer to {0} in progress")]
    TransferInProgress(NodeId),
    /// Too many entries are waiting to commit ([`Config::max_uncommitted_entries`](crate::Config::max_uncommitted_entries)).
    #[error("too many uncommitted entries ({0})")]
    TooManyPending(usize),
    /// Too many bytes are waiting to commit ([`Config::max_uncommitted_bytes`](crate::Config::max_uncommitted_bytes)):
    /// the bytes pending, which with this proposal would exceed the limit.
    #[error("too many uncommitted bytes ({0})")]
    TooManyBytesPending(u64),
}

/// Why a read could not be started or completed. The read observed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadRefused {
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
    /// Too many reads pending ([`Config::max_pending_reads`](crate::Config::max_pending_reads)).
    #[error("too many pending reads ({0})")]
    TooManyPending(usize),
}

/// Why a leadership transfer could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferRefused {
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
