//! The `StateMachine` trait: the application that committed entries are
//! applied to, in log order, exactly once across restarts.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::snapshot::SnapshotData;
use crate::types::{Entry, Index, SnapshotMeta};

/// A state-machine failure. The driver stops applying and shuts down: a
/// replica that cannot apply an entry must not go on serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateMachineError {
    /// Data handed to the state machine (a command, a snapshot) failed its
    /// checks; names what and why.
    #[error("state machine error: invalid input: {0}")]
    Invalid(String),
    /// The state machine does not support the operation (the trait's
    /// default snapshot methods).
    #[error("state machine error: {0}")]
    Unsupported(String),
    /// An I/O error of the state machine's own files.
    #[error("state machine I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A failure of the state machine's backend: the cause is the source.
    #[error("state machine error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StateMachineError {
    /// A [`Backend`](Self::Backend) error from any cause (an error, or a
    /// message as a `String` or `&str`).
    pub fn backend<E: Into<Box<dyn std::error::Error + Send + Sync>>>(cause: E) -> Self {
        Self::Backend(cause.into())
    }
}

/// A snapshot being built off the apply task: see
/// [`StateMachine::begin_snapshot`].
pub type SnapshotBuild =
    Pin<Box<dyn Future<Output = Result<SnapshotData, StateMachineError>> + Send + 'static>>;

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

    /// Builds a snapshot of the state, which is at `meta.last_log_id` (the
    /// driver calls this right after applying that entry). Before it
    /// returns, the snapshot and the state it captures must be durable: the
    /// log entries it covers are deleted next. It replaces the previous
    /// snapshot as what [`latest_snapshot`](Self::latest_snapshot) returns.
    ///
    /// The default refuses: snapshots are then never taken and the log is
    /// never compacted.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`]; the driver logs it and tries again later.
    async fn build_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotData, StateMachineError> {
        Err(StateMachineError::Unsupported(format!(
            "this state machine does not take snapshots (asked for one at {})",
            meta.last_log_id
        )))
    }

    /// Starts a snapshot of the state, which is at `meta.last_log_id`, and
    /// returns the rest of the work as a future that the driver runs on a
    /// task of its own while [`apply`](Self::apply) goes on. Whatever this
    /// method does before it returns holds up applying (and so every
    /// proposer): it should only capture a point-in-time view of the state
    /// (a storage engine's snapshot, a copy-on-write clone) and leave the
    /// walk, the encoding and the writing to the future. The future's
    /// result must capture the state exactly at `meta.last_log_id`, however
    /// many entries are applied meanwhile, and be durable when it
    /// completes, as [`build_snapshot`](Self::build_snapshot) says.
    ///
    /// The driver runs at most one build at a time and lets it finish
    /// before it installs a snapshot from the leader.
    ///
    /// The default calls [`build_snapshot`](Self::build_snapshot) here, so
    /// applying waits for the whole build.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] from either part; the driver logs it and
    /// tries again later.
    async fn begin_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotBuild, StateMachineError> {
        let built = self.build_snapshot(meta).await;
        Ok(Box::pin(std::future::ready(built)))
    }

    /// The latest snapshot built or installed, with its metadata, if any
    /// (the driver asks once at start, to serve followers that need it).
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] when it cannot be read.
    async fn latest_snapshot(
        &mut self,
    ) -> Result<Option<(SnapshotMeta, SnapshotData)>, StateMachineError> {
        Ok(None)
    }

    /// Replaces the whole state by the snapshot's, atomically and durably:
    /// afterwards [`applied_index`](Self::applied_index) is
    /// `meta.last_log_id.index` and [`latest_snapshot`](Self::latest_snapshot)
    /// returns this snapshot. Data that fails its checks must be refused.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`]; the driver then stops (the state may be
    /// half-replaced only if the implementation is not atomic).
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), StateMachineError> {
        let _ = data;
        Err(StateMachineError::Unsupported(format!(
            "this state machine cannot install snapshots (got one at {})",
            meta.last_log_id
        )))
    }
}
