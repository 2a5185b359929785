//! The body of a Raft message frame: every message kind, entries and
//! memberships.

use super::*;

pub(super) mod body {
    pub const REQUEST_VOTE: u8 = 1;
    pub const REQUEST_VOTE_RESPONSE: u8 = 2;
    pub const APPEND_ENTRIES: u8 = 3;
    pub const APPEND_ENTRIES_RESPONSE: u8 = 4;
    pub const TIMEOUT_NOW: u8 = 5;
    pub const INSTALL_SNAPSHOT: u8 = 6;
    /// The forwarding kinds: sent only on a connection whose ALPN is
    /// `tls::ALPN_FORWARD` (a node from before them refuses the frame).
    pub const FORWARD_PROPOSE: u8 = 7;
    pub const FORWARD_PROPOSE_RESPONSE: u8 = 8;
    pub const READ_INDEX_REQUEST: u8 = 9;
    pub const READ_INDEX_RESPONSE: u8 = 10;

    /// `ForwardProposeResult` / `ForwardReadResult` tags.
    pub const FORWARD_OK: u8 = 1;
    pub const FORWARD_REFUSED: u8 = 2;
    /// `ForwardRefusal` codes.
    pub const REFUSED_NOT_LEADER: u8 = 1;
    pub const REFUSED_TRANSFER: u8 = 2;
    pub const REFUSED_OVERLOADED: u8 = 3;

    pub const RESULT_SUCCESS: u8 = 1;
    pub const RESULT_CONFLICT: u8 = 2;
    /// Added after the first release of protocol version 1: a node from
    /// before it refuses the frame (and the connection) as malformed.
    pub const RESULT_INSTALLING: u8 = 3;

    pub const PAYLOAD_BLANK: u8 = 0;
    pub const PAYLOAD_NORMAL: u8 = 1;
    pub const PAYLOAD_MEMBERSHIP: u8 = 2;
}

/// Smallest encoded entry (term, index, blank tag): bounds a claimed count.
pub(super) const ENTRY_BYTES_MIN: usize = 17;

pub(super) fn put_log_id(out: &mut BytesMut, id: LogId) {
    out.put_u64(id.term);
    out.put_u64(id.index);
}

/// Appends the body of a Raft message (without frame header) to `out`.
pub(super) fn encode_message(m: &Message, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u64(m.from);
    out.put_u64(m.to);
    out.put_u64(m.term);
    match &m.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_id,
            leadership_transfer,
        } => {
            out.put_u8(body::REQUEST_VOTE);
            out.put_u8(u8::from(*pre_vote) | u8::from(*leadership_transfer) << 1);
            put_log_id(out, *last_log_id);
        }
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            out.put_u8(body::REQUEST_VOTE_RESPONSE);
            out.put_u8(u8::from(*pre_vote) | u8::from(*granted) << 1);
        }
        MessageBody::AppendEntries {
            prev_log_id,
            entries,
            leader_commit,
            round,
            heartbeat,
        } => {
            out.put_u8(body::APPEND_ENTRIES);
            put_log_id(out, *prev_log_id);
            out.put_u64(*leader_commit);
            out.put_u64(*round);
            out.put_u8(u8::from(*heartbeat));
            put_len(out, entries.len(), "entry count")?;
            for e in entries {
                encode_entry(e, out)?;
            }
        }
        MessageBody::AppendEntriesResponse { round, result } => {
            out.put_u8(body::APPEND_ENTRIES_RESPONSE);
            out.put_u64(*round);
            match result {
                AppendResult::Success { last_index } => {
                    out.put_u8(body::RESULT_SUCCESS);
                    out.put_u64(*last_index);
                }
                AppendResult::Conflict {
                    rejected_prev,
                    hint,
                } => {
                    out.put_u8(body::RESULT_CONFLICT);
                    out.put_u64(*rejected_prev);
                    put_log_id(out, *hint);
                }
                AppendResult::Installing => out.put_u8(body::RESULT_INSTALLING),
            }
        }
        MessageBody::TimeoutNow => out.put_u8(body::TIMEOUT_NOW),
        MessageBody::InstallSnapshot { meta } => {
            out.put_u8(body::INSTALL_SNAPSHOT);
            put_log_id(out, meta.last_log_id);
            encode_membership(&meta.membership, out)?;
        }
        forward => encode_forward(forward, out)?,
    }
    Ok(())
}

/// The forwarding kinds:
///
/// ```text
/// ForwardPropose         = 7  request_id:u64 len:u32 command
/// ForwardProposeResponse = 8  request_id:u64 (1 term:u64 index:u64 | 2 refusal)
/// ReadIndexRequest       = 9  request_id:u64
/// ReadIndexResponse      = 10 request_id:u64 (1 index:u64 | 2 refusal)
/// refusal = 1 has_leader:u8 [leader:u64] | 2 (transfer) | 3 (overloaded)
/// ```
fn encode_forward(m: &MessageBody, out: &mut BytesMut) -> Result<(), EncodeError> {
    match m {
        MessageBody::ForwardPropose {
            request_id,
            command,
        } => {
            out.put_u8(body::FORWARD_PROPOSE);
            out.put_u64(*request_id);
            put_len(out, command.len(), "forwarded command")?;
            out.put_slice(command);
        }
        MessageBody::ForwardProposeResponse { request_id, result } => {
            out.put_u8(body::FORWARD_PROPOSE_RESPONSE);
            out.put_u64(*request_id);
            match result {
                ForwardProposeResult::Appended(id) => {
                    out.put_u8(body::FORWARD_OK);
                    put_log_id(out, *id);
                }
                ForwardProposeResult::Refused(r) => put_refusal(out, *r),
            }
        }
        MessageBody::ReadIndexRequest { request_id } => {
            out.put_u8(body::READ_INDEX_REQUEST);
            out.put_u64(*request_id);
        }
        MessageBody::ReadIndexResponse { request_id, result } => {
            out.put_u8(body::READ_INDEX_RESPONSE);
            out.put_u64(*request_id);
            match result {
                ForwardReadResult::Index(index) => {
                    out.put_u8(body::FORWARD_OK);
                    out.put_u64(*index);
                }
                ForwardReadResult::Refused(r) => put_refusal(out, *r),
            }
        }
        _ => return Err(EncodeError::Unrepresentable("message kind")),
    }
    Ok(())
}

fn put_refusal(out: &mut BytesMut, r: ForwardRefusal) {
    out.put_u8(body::FORWARD_REFUSED);
    match r {
        ForwardRefusal::NotLeader { leader } => {
            out.put_u8(body::REFUSED_NOT_LEADER);
            match leader {
                None => out.put_u8(0),
                Some(l) => {
                    out.put_u8(1);
                    out.put_u64(l);
                }
            }
        }
        ForwardRefusal::TransferInProgress => out.put_u8(body::REFUSED_TRANSFER),
        ForwardRefusal::Overloaded => out.put_u8(body::REFUSED_OVERLOADED),
    }
}

fn decode_refusal(r: &mut Reader) -> Result<ForwardRefusal, DecodeError> {
    Ok(match r.u8("refusal code")? {
        body::REFUSED_NOT_LEADER => ForwardRefusal::NotLeader {
            leader: match r.u8("leader flag")? {
                0 => None,
                1 => Some(r.u64("leader")?),
                t => return Err(invalid("leader flag", format!("{t}"))),
            },
        },
        body::REFUSED_TRANSFER => ForwardRefusal::TransferInProgress,
        body::REFUSED_OVERLOADED => ForwardRefusal::Overloaded,
        t => return Err(invalid("refusal code", format!("{t}"))),
    })
}

/// Decodes the body of a forwarding kind `tag`; `None` for another tag.
fn decode_forward(tag: u8, r: &mut Reader) -> Result<Option<MessageBody>, DecodeError> {
    let result_tag = |r: &mut Reader| r.u8("forward result tag");
    Ok(Some(match tag {
        body::FORWARD_PROPOSE => {
            let request_id = r.u64("request id")?;
            let len = r.len("forwarded command length")?;
            MessageBody::ForwardPropose {
                request_id,
                command: r.bytes(len, "forwarded command")?,
            }
        }
        body::FORWARD_PROPOSE_RESPONSE => {
            let request_id = r.u64("request id")?;
            let result = match result_tag(r)? {
                body::FORWARD_OK => ForwardProposeResult::Appended(r.log_id("appended at")?),
                body::FORWARD_REFUSED => ForwardProposeResult::Refused(decode_refusal(r)?),
                t => return Err(invalid("forward result tag", format!("{t}"))),
            };
            MessageBody::ForwardProposeResponse { request_id, result }
        }
        body::READ_INDEX_REQUEST => MessageBody::ReadIndexRequest {
            request_id: r.u64("request id")?,
        },
        body::READ_INDEX_RESPONSE => {
            let request_id = r.u64("request id")?;
            let result = match result_tag(r)? {
                body::FORWARD_OK => ForwardReadResult::Index(r.u64("read index")?),
                body::FORWARD_REFUSED => ForwardReadResult::Refused(decode_refusal(r)?),
                t => return Err(invalid("forward result tag", format!("{t}"))),
            };
            MessageBody::ReadIndexResponse { request_id, result }
        }
        _ => return Ok(None),
    }))
}

pub(super) fn encode_entry(e: &Entry, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u64(e.term);
    out.put_u64(e.index);
    match &e.payload {
        EntryPayload::Blank => out.put_u8(body::PAYLOAD_BLANK),
        EntryPayload::Normal(data) => {
            out.put_u8(body::PAYLOAD_NORMAL);
            put_len(out, data.len(), "entry payload")?;
            out.put_slice(data);
        }
        EntryPayload::Membership(m) => {
            out.put_u8(body::PAYLOAD_MEMBERSHIP);
            encode_membership(m, out)?;
        }
    }
    Ok(())
}

pub(super) fn put_set<'a>(
    out: &mut BytesMut,
    ids: impl ExactSizeIterator<Item = &'a u64>,
) -> Result<(), EncodeError> {
    put_len(out, ids.len(), "membership set")?;
    for id in ids {
        out.put_u64(*id);
    }
    Ok(())
}

pub(super) fn encode_membership(m: &Membership, out: &mut BytesMut) -> Result<(), EncodeError> {
    put_set(out, m.voters().iter())?;
    match m.voters_outgoing() {
        None => out.put_u8(0),
        Some(old) => {
            out.put_u8(1);
            put_set(out, old.iter())?;
        }
    }
    put_set(out, m.learners().iter())
}

pub(super) fn decode_message(r: &mut Reader) -> Result<Message, DecodeError> {
    let from = r.u64("message from")?;
    let to = r.u64("message to")?;
    let term = r.u64("message term")?;
    let body = match r.u8("message body tag")? {
        body::REQUEST_VOTE => {
            let f = r.flags("vote flags", 0b11)?;
            MessageBody::RequestVote {
                pre_vote: f & 1 != 0,
                leadership_transfer: f & 2 != 0,
                last_log_id: r.log_id("last log id")?,
            }
        }
        body::REQUEST_VOTE_RESPONSE => {
            let f = r.flags("vote response flags", 0b11)?;
            MessageBody::RequestVoteResponse {
                pre_vote: f & 1 != 0,
                granted: f & 2 != 0,
            }
        }
        body::APPEND_ENTRIES => {
            let prev_log_id = r.log_id("prev log id")?;
            let leader_commit = r.u64("leader commit")?;
            let round = r.u64("round")?;
            let heartbeat = r.flags("append flags", 0b1)? & 1 != 0;
            let count = r.u32("entry count")? as usize;
            if count > r.0.remaining() / ENTRY_BYTES_MIN {
                return Err(DecodeError::Truncated("entries"));
            }
            let mut entries = Vec::with_capacity(count);
            for i in 0..count {
                let e = decode_entry(r)?;
                let expected = prev_log_id.index.checked_add(i as u64 + 1);
                if Some(e.index) != expected {
                    return Err(invalid(
                        "entry index",
                        format!(
                            "entry {i} has index {} but follows {} (entries must be consecutive)",
                            e.index, prev_log_id.index
                        ),
                    ));
                }
                entries.push(e);
            }
            if heartbeat && !entries.is_empty() {
                return Err(invalid("append flags", "a heartbeat carries no entries"));
            }
            MessageBody::AppendEntries {
                prev_log_id,
                entries,
                leader_commit,
                round,
                heartbeat,
            }
        }
        body::APPEND_ENTRIES_RESPONSE => {
            let round = r.u64("round")?;
            let result = match r.u8("append result tag")? {
                body::RESULT_SUCCESS => AppendResult::Success {
                    last_index: r.u64("last index")?,
                },
                body::RESULT_CONFLICT => AppendResult::Conflict {
                    rejected_prev: r.u64("rejected prev")?,
                    hint: r.log_id("hint")?,
                },
                body::RESULT_INSTALLING => AppendResult::Installing,
                t => return Err(invalid("append result tag", format!("{t}"))),
            };
            MessageBody::AppendEntriesResponse { round, result }
        }
        body::TIMEOUT_NOW => MessageBody::TimeoutNow,
        body::INSTALL_SNAPSHOT => MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                last_log_id: r.log_id("snapshot last log id")?,
                membership: decode_membership(r)?,
            },
        },
        t => match decode_forward(t, r)? {
            Some(body) => body,
            None => return Err(invalid("message body tag", format!("{t}"))),
        },
    };
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

pub(super) fn decode_entry(r: &mut Reader) -> Result<Entry, DecodeError> {
    let term = r.u64("entry term")?;
    let index = r.u64("entry index")?;
    let payload = match r.u8("payload tag")? {
        body::PAYLOAD_BLANK => EntryPayload::Blank,
        body::PAYLOAD_NORMAL => {
            let len = r.len("payload length")?;
            EntryPayload::Normal(r.bytes(len, "payload")?)
        }
        body::PAYLOAD_MEMBERSHIP => EntryPayload::Membership(Box::new(decode_membership(r)?)),
        t => return Err(invalid("payload tag", format!("{t}"))),
    };
    Ok(Entry {
        term,
        index,
        payload,
    })
}

pub(super) fn decode_set(r: &mut Reader, what: &'static str) -> Result<Vec<u64>, DecodeError> {
    let n = r.u32(what)? as usize;
    if n > r.0.remaining() / 8 {
        return Err(DecodeError::Truncated(what));
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.u64(what)?;
        if ids.last().is_some_and(|last| *last >= id) {
            return Err(invalid(what, "node ids must be strictly increasing"));
        }
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn decode_membership(r: &mut Reader) -> Result<Membership, DecodeError> {
    let voters = decode_set(r, "voters")?;
    let outgoing = match r.u8("joint tag")? {
        0 => None,
        1 => Some(decode_set(r, "outgoing voters")?),
        t => return Err(invalid("joint tag", format!("{t}"))),
    };
    let learners = decode_set(r, "learners")?;
    // The sets are sorted (checked above): binary search keeps this
    // O(n log n) for a frame full of ids. A learner must not be a voter of
    // either half; the constructors would silently drop it.
    let is_voter = |l: &u64| {
        voters.binary_search(l).is_ok()
            || outgoing
                .as_ref()
                .is_some_and(|o| o.binary_search(l).is_ok())
    };
    if let Some(l) = learners.iter().find(|l| is_voter(l)) {
        return Err(invalid(
            "learners",
            format!("node {l} is both voter and learner"),
        ));
    }
    Ok(match outgoing {
        Some(old) => Membership::joint(old, voters, learners),
        None => Membership::with_learners(voters, learners),
    })
}
