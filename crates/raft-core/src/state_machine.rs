//! The `StateMachine` trait: the application that committed entries are
//! applied to, in log order, exactly once across restarts.

use async_trait::async_trait;

use crate::types::{Entry, Index};

/// A state-machine failure. The driver stops applying and shuts down: a
/// replica that cannot apply an entry must not go on serving.
#[derive(Debug, thiserror::Error)]
#[error("state machine error: {0}")]
pub struct StateMachineError(pub String);

/// The replicated application.
///
/// The driver calls [`apply`](Self::apply) from one task, in log order, with
/// committed entries only. Blank and membership entries are passed too, so
/// that the applied index can be stored with the data; they get a response
/// like any other (an implementation typically returns a unit-like value).
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// What applying one entry returns to its proposer.
    type Response: Send + 'static;

    /// The index of the last entry applied and durable in this state machine
    /// (0 for a new one). After a restart the driver re-applies entries above it.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] when the state cannot be read.
    async fn applied_index(&mut self) -> Result<Index, StateMachineError>;

    /// Applies `entries` (consecutive, starting right after the applied index)
    /// and returns one response per entry, in order.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`]; the driver then stops.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Self::Response>, StateMachineError>;
}
