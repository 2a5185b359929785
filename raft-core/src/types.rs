//! The basic vocabulary of the engine: node ids, terms, indexes, log entries and
//! the hard state that must survive a crash.

use bytes::Bytes;

use crate::membership::Membership;

/// Identifies a node of the cluster. Zero is reserved and never a valid id.
pub type NodeId = u64;

/// A Raft term (paper §5.1). Terms start at 0 on a fresh node; the first
/// election moves the cluster to term 1.
pub type Term = u64;

/// The highest term a node accepts from a peer is just below 2^62. A
/// message carrying this term or a higher one is refused by [`Engine::step`](crate::Engine::step) (logged,
/// and counted in [`Status::invalid_term_messages`](crate::engine::Status))
/// and changes nothing. Raft cannot follow a term it adopted with an
/// election unless `term + 1` exists, so a peer (buggy, or holding a stolen
/// certificate) sending `u64::MAX` would otherwise leave every receiver
/// unable to ever campaign again. Below the limit there remain 2^62
/// elections of room: at one election per millisecond, 146 million years.
pub const MAX_TERM: Term = 1 << 62;

/// The largest step above its own term a node accepts from a peer: 2^32.
/// A correct cluster raises its term by one per election (pre-vote keeps
/// partitioned nodes from raising it at all), so 2^32 elections at one per
/// 100 ms take 13 years; a peer sending ever larger terms needs 2^30
/// messages to reach [`MAX_TERM`] instead of one.
pub const MAX_TERM_JUMP: Term = 1 << 32;

/// A position in the replicated log. The first entry has index 1; index 0 means
/// "before the first entry".
pub type Index = u64;

/// The (term, index) pair that names one log position unambiguously
/// (Log Matching Property, paper §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogId {
    /// Term of the entry.
    pub term: Term,
    /// Index of the entry.
    pub index: Index,
}

impl LogId {
    /// Builds a log id.
    pub const fn new(term: Term, index: Index) -> Self {
        Self { term, index }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.index, self.term)
    }
}

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPayload {
    /// An entry with no command. A new leader appends one to commit an entry of
    /// its own term (paper §5.4.2, §8).
    Blank,
    /// An application command, opaque to Raft.
    Normal(Bytes),
    /// A cluster configuration. It takes effect as soon as it is appended
    /// (thesis §4.1), not when committed.
    Membership(Box<Membership>),
}

impl EntryPayload {
    /// Bytes this payload weighs for batching and flow-control limits. An
    /// estimate: fixed-size metadata is counted as a few bytes.
    pub fn size_bytes(&self) -> u64 {
        match self {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(data) => data.len() as u64,
            EntryPayload::Membership(m) => 8 * m.node_count() as u64,
        }
    }
}

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The term of the leader that created it.
    pub term: Term,
    /// Its position in the log.
    pub index: Index,
    /// What it carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Fixed per-entry overhead counted by [`Entry::size_bytes`].
    pub const OVERHEAD_BYTES: u64 = 24;

    /// The entry's log id.
    pub fn log_id(&self) -> LogId {
        LogId::new(self.term, self.index)
    }

    /// Bytes this entry weighs for batching and flow-control limits.
    pub fn size_bytes(&self) -> u64 {
        Self::OVERHEAD_BYTES + self.payload.size_bytes()
    }
}

/// The state a node must persist before it answers a vote or acknowledges
/// entries (paper Figure 2, "Persistent state on all servers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known to be committed. Persisting it is an
    /// optimisation (a restarted node can apply without waiting for the
    /// leader); it is never ahead of what the log holds.
    pub commit: Index,
}

/// What a snapshot covers: everything up to and including `last_log_id`, and
/// the membership in force at that point (paper §7). The snapshot's data is
/// the state machine's business; this is what Raft needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    /// The last entry the snapshot includes.
    pub last_log_id: LogId,
    /// The configuration in force at `last_log_id`.
    pub membership: Membership,
}
