//! [`ReadySteps`]: a [`Ready`] taken apart by the steps of the driver
//! contract, for the harnesses that drive engines by hand (the engine test
//! [`network`](super::network) and the simulation).

use crate::engine::{
    EntryFetch, ForwardResponse, LogCompaction, ReadId, ReadRefused, ReadState, Ready, SoftState,
    WriteId,
};
use crate::{Entry, HardState, Index, Message, SnapshotMeta};

/// A [`Ready`]'s fields grouped by the step of the driver contract
/// (`raft_core::engine` module docs) that handles them. The conversion
/// names every field of `Ready`, so a field added to it fails to compile
/// here, the one place the harnesses take a `Ready` apart.
#[derive(Debug)]
pub struct ReadySteps {
    /// Role, leader and term, when they changed.
    pub soft_state: Option<SoftState>,
    /// Step 1: messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Steps 2 and 3: the write and what waits for it.
    pub write: ReadyWrite,
    /// Step 4: entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Step 5: reads that became safe.
    pub read_states: Vec<ReadState>,
    /// Step 5: reads that can no longer complete.
    pub failed_reads: Vec<(ReadId, ReadRefused)>,
    /// Step 6: answers to requests this node forwarded to its leader.
    pub forward_responses: Vec<ForwardResponse>,
    /// A compaction to record after the write.
    pub compact_log: Option<LogCompaction>,
    /// A snapshot to build once its entries are applied.
    pub build_snapshot: Option<SnapshotMeta>,
    /// A received snapshot to install.
    pub install_snapshot: Option<SnapshotMeta>,
    /// Entries to read back from storage for followers.
    pub fetch_entries: Vec<EntryFetch>,
}

/// A `Ready`'s durable write and the messages that wait for it.
#[derive(Debug, Default)]
pub struct ReadyWrite {
    /// The engine's name for the write, reported when it is durable.
    pub write_id: Option<WriteId>,
    /// The hard state to persist.
    pub hard_state: Option<HardState>,
    /// Delete the entries at or after this index first.
    pub truncate_from: Option<Index>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// Messages sent only once the write is durable.
    pub persisted_messages: Vec<Message>,
}

impl From<Ready> for ReadySteps {
    fn from(ready: Ready) -> Self {
        let Ready {
            soft_state,
            hard_state,
            truncate_from,
            entries,
            write_id,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
            failed_reads,
            forward_responses,
            compact_log,
            build_snapshot,
            install_snapshot,
            fetch_entries,
        } = ready;
        Self {
            soft_state,
            messages,
            write: ReadyWrite {
                write_id,
                hard_state,
                truncate_from,
                entries,
                persisted_messages,
            },
            committed_entries,
            read_states,
            failed_reads,
            forward_responses,
            compact_log,
            build_snapshot,
            install_snapshot,
            fetch_entries,
        }
    }
}
