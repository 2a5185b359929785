//! What the engine hands its driver: each [`Ready`] and the ids and
//! requests in it.

use super::ReadRefused;
use super::{LogCompaction, Role};
use crate::message::Message;
use crate::types::{Entry, HardState, Index, LogId, NodeId, SnapshotMeta, Term};

/// Names one durable write handed out in a [`Ready`]; see
/// [`Engine::on_persisted`](super::Engine::on_persisted). Ids increase with each write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub(super) u64);

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

/// A leader's request to read entries back from storage: a follower needs
/// entries whose payloads the in-memory log no longer holds
/// ([`Config::max_log_cache_bytes`](crate::Config::max_log_cache_bytes)). The driver reads
/// `[start, end)` from its log storage, at most `max_bytes` of them (at
/// least one entry), and hands the result to [`Engine::on_entries_fetched`](super::Engine::on_entries_fetched)
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

/// One batch of engine output. See the [module docs](super) for what a driver
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
    /// has one: report it to [`Engine::on_persisted`](super::Engine::on_persisted) once it is durable.
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
    pub failed_reads: Vec<(ReadId, ReadRefused)>,
    /// Answers from the leader to requests this node forwarded
    /// ([`Engine::forward_propose`](super::Engine::forward_propose),
    /// [`Engine::forward_read_index`](super::Engine::forward_read_index)).
    pub forward_responses: Vec<super::ForwardResponse>,
    /// Build a snapshot of the state machine at this metadata's index, once
    /// the committed entries up to it (handed out in this or an earlier
    /// `Ready`) are applied; report [`Engine::on_snapshot_built`](super::Engine::on_snapshot_built) or
    /// [`Engine::on_snapshot_build_failed`](super::Engine::on_snapshot_build_failed).
    pub build_snapshot: Option<SnapshotMeta>,
    /// Install the snapshot received with this metadata: into the state
    /// machine (after every earlier apply), then storage (after every
    /// earlier write); then report [`Engine::on_snapshot_installed`](super::Engine::on_snapshot_installed).
    pub install_snapshot: Option<SnapshotMeta>,
    /// Entries to read back from storage for followers; answer each with
    /// [`Engine::on_entries_fetched`](super::Engine::on_entries_fetched).
    pub fetch_entries: Vec<EntryFetch>,
}
