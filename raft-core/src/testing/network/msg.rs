//! Helpers to build messages for injection.

use crate::{Entry, EntryPayload, Index, LogId, Message, MessageBody, NodeId, Term};

/// A message.
pub fn new(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// An AppendEntries.
pub fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: LogId,
    entries: Vec<Entry>,
    leader_commit: Index,
) -> Message {
    new(
        from,
        to,
        term,
        MessageBody::AppendEntries {
            prev_log_id: prev,
            entries,
            leader_commit,
            round: 0,
            heartbeat: false,
        },
    )
}

/// A RequestVote (not a pre-vote).
pub fn vote(from: NodeId, to: NodeId, term: Term, last: LogId) -> Message {
    new(
        from,
        to,
        term,
        MessageBody::RequestVote {
            pre_vote: false,
            last_log_id: last,
            leadership_transfer: false,
        },
    )
}

/// A blank entry.
pub fn blank(term: Term, index: Index) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Blank,
    }
}
