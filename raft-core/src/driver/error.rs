//! The errors the driver answers with: why a node could not start, and
//! why a request through [`RaftHandle`](super::RaftHandle) failed.

use crate::config::ConfigError;
use crate::engine::{ChangeError, ProposalRefused, ReadRefused};
use crate::state_machine::StateMachineError;
use crate::storage::StorageError;
use crate::types::{Index, NodeId};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Invalid engine configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Invalid driver configuration ([`DriverConfig::validate`](super::DriverConfig::validate)).
    #[error("invalid driver configuration: {} {}", .0.setting, .0.reason)]
    DriverConfig(#[source] ConfigError),
    /// The log could not be loaded.
    #[error("cannot load the log: {0}")]
    Storage(#[from] StorageError),
    /// The state machine could not report its applied index.
    #[error("cannot open the state machine: {0}")]
    StateMachine(#[from] StateMachineError),
    /// The state machine and the log do not fit together.
    #[error("state machine and log disagree: {0}")]
    Inconsistent(String),
}

/// Why a proposal failed. [`may_have_committed`](Self::may_have_committed)
/// tells whether the entry could still be (or have been) applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; nothing was appended.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, to retry there.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; nothing was appended.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Too many proposals in flight; nothing was appended.
    #[error("too many pending proposals")]
    Overloaded,
    /// The entry was appended but overwritten by another leader's entry:
    /// it will never be applied.
    #[error("proposal superseded by another leader's entry at index {index}")]
    Superseded {
        /// The index the entry had.
        index: Index,
    },
    /// The entry left this node's log while it waited: a snapshot from the
    /// leader replaced the log, or a new leader's entries overwrote it
    /// after this node stepped down. It may or may not be applied (another
    /// node may still hold it and commit it).
    #[error("the proposal's entry at index {index} left this node's log (replaced by a snapshot or a new leader's entries); it may or may not be applied")]
    OutcomeUnknown {
        /// The index the entry had.
        index: Index,
    },
    /// No answer within the timeout after the entry was appended: it may
    /// or may not be applied later.
    #[error("proposal timed out; it may still be applied")]
    Timeout,
    /// The node is shutting down. `appended` tells whether the entry had
    /// been appended (then it may still commit).
    #[error("node shutting down")]
    ShuttingDown {
        /// Whether the entry was appended before shutdown.
        appended: bool,
    },
    /// Storage or the state machine failed; the node stopped.
    #[error("node failed: {0}")]
    Fatal(String),
}

impl ProposeError {
    /// Whether the entry might be applied despite this error (so a client
    /// must treat the outcome as unknown).
    pub fn may_have_committed(&self) -> bool {
        match self {
            ProposeError::Timeout
            | ProposeError::Fatal(_)
            | ProposeError::OutcomeUnknown { .. } => true,
            ProposeError::ShuttingDown { appended } => *appended,
            _ => false,
        }
    }
}

impl From<ProposalRefused> for ProposeError {
    fn from(e: ProposalRefused) -> Self {
        match e {
            ProposalRefused::NotLeader { leader } => ProposeError::NotLeader { leader },
            ProposalRefused::TransferInProgress(_) => ProposeError::TransferInProgress,
            ProposalRefused::TooManyPending(_) | ProposalRefused::TooManyBytesPending(_) => {
                ProposeError::Overloaded
            }
        }
    }
}

/// Why a read failed. A failed read observed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// This node is not (or stopped being) the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// Too many reads pending.
    #[error("too many pending reads")]
    Overloaded,
    /// Leadership was not confirmed within the timeout.
    #[error("read timed out")]
    Timeout,
    /// The node is shutting down.
    #[error("node shutting down")]
    ShuttingDown,
}

impl From<ReadRefused> for ReadError {
    fn from(e: ReadRefused) -> Self {
        match e {
            ReadRefused::NotLeader { leader } => ReadError::NotLeader { leader },
            ReadRefused::TooManyPending(_) => ReadError::Overloaded,
            // The driver falls back to ReadIndex, so a caller never sees this.
            ReadRefused::LeaseNotHeld => ReadError::Timeout,
        }
    }
}

/// Why a leadership transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// This node is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The target is not a voter, or there is no other voter to transfer to.
    #[error("no eligible transfer target: {0}")]
    NoTarget(String),
    /// The target did not take over within an election timeout (thesis §3.10).
    #[error("leadership transfer aborted")]
    Aborted,
    /// The node is shutting down.
    #[error("node shutting down")]
    ShuttingDown,
}

/// Why a membership change failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The engine refused the change; nothing changed.
    #[error(transparent)]
    Rejected(#[from] ChangeError),
    /// This node lost leadership before the change completed: it may or may
    /// not complete under the next leader (check the configuration).
    #[error("leadership lost before the change completed; it may still complete")]
    LeadershipLost,
    /// The change did not complete within the timeout; it may still complete.
    #[error("membership change timed out; it may still complete")]
    Timeout,
    /// The node is shutting down.
    #[error("node shutting down")]
    ShuttingDown,
}

/// Why a requested snapshot failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The state machine could not build it.
    #[error("snapshot failed: {0}")]
    Failed(String),
    /// It did not finish within the timeout; it may still finish.
    #[error("snapshot timed out")]
    Timeout,
    /// The node is installing a snapshot from the leader.
    #[error("a snapshot is being installed")]
    Installing,
    /// The node is shutting down.
    #[error("node shutting down")]
    ShuttingDown,
}
