//! Requests a follower forwards to its leader over the peer transport
//! instead of a client retrying elsewhere: proposals
//! ([`MessageBody::ForwardPropose`]) and linearizable reads
//! ([`MessageBody::ReadIndexRequest`], thesis §6.4).
//!
//! The leader treats a forwarded proposal exactly as a local one (same
//! admission limits) and a forwarded read exactly as its own ReadIndex
//! read (an entry of its term committed, then a heartbeat round a quorum
//! answers). The follower learns the entry's [`LogId`] or the read index
//! and waits for its own apply: the entry applied at that index has the
//! leader's term if and only if the command took effect there.
//!
//! These messages change no term and no vote on either side: a forwarded
//! request from a node with another term is served (or refused) as it
//! is, and an answer is handed to the driver in
//! [`Ready::forward_responses`](super::Ready::forward_responses) whatever
//! its term. Matching answers to requests (and ignoring answers to
//! requests it no longer waits for) is the driver's part.

use bytes::Bytes;

use super::{Engine, ProposalRefused, ReadId, ReadRefused, Role};
use crate::message::{
    ForwardProposeResult, ForwardReadResult, ForwardRefusal, Message, MessageBody,
};
use crate::types::{Index, NodeId, Term};

/// [`ReadId`]s at or above this value are the engine's own, for reads
/// forwarded by followers; a driver numbers its reads below it.
pub const REMOTE_READ_ID_BASE: ReadId = 1 << 63;

/// A leader's answer to a request this node forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardResponse {
    /// The node that answered.
    pub from: NodeId,
    /// Its term when it answered.
    pub term: Term,
    /// The request it answers.
    pub request_id: u64,
    /// The answer.
    pub result: ForwardResult,
}

/// The answer in a [`ForwardResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardResult {
    /// To a forwarded proposal.
    Propose(ForwardProposeResult),
    /// To a forwarded read.
    Read(ForwardReadResult),
}

impl From<ProposalRefused> for ForwardRefusal {
    fn from(e: ProposalRefused) -> Self {
        match e {
            ProposalRefused::NotLeader { leader } => ForwardRefusal::NotLeader { leader },
            ProposalRefused::TransferInProgress(_) => ForwardRefusal::TransferInProgress,
            ProposalRefused::TooManyPending(_) | ProposalRefused::TooManyBytesPending(_) => {
                ForwardRefusal::Overloaded
            }
        }
    }
}

impl From<ReadRefused> for ForwardRefusal {
    fn from(e: ReadRefused) -> Self {
        match e {
            ReadRefused::NotLeader { leader } => ForwardRefusal::NotLeader { leader },
            ReadRefused::LeaseNotHeld | ReadRefused::TooManyPending(_) => {
                ForwardRefusal::Overloaded
            }
        }
    }
}

impl Engine {
    /// Sends `command` to the leader this node knows of, to be appended
    /// there ([`MessageBody::ForwardPropose`]); its answer comes back in a
    /// later [`Ready::forward_responses`](super::Ready::forward_responses).
    /// Returns the leader it was sent to.
    ///
    /// # Errors
    ///
    /// [`ProposalRefused::NotLeader`] with `leader: None` when no leader is
    /// known, or with this node when it is the leader (propose locally).
    pub fn forward_propose(
        &mut self,
        request_id: u64,
        command: Bytes,
    ) -> Result<NodeId, ProposalRefused> {
        let leader = self.forward_target().ok_or(ProposalRefused::NotLeader {
            leader: self.leader,
        })?;
        self.send(
            leader,
            MessageBody::ForwardPropose {
                request_id,
                command,
            },
        );
        Ok(leader)
    }

    /// Asks the leader this node knows of for a read index
    /// ([`MessageBody::ReadIndexRequest`]); the answer comes back in a
    /// later [`Ready::forward_responses`](super::Ready::forward_responses).
    /// Returns the leader it was sent to.
    ///
    /// # Errors
    ///
    /// [`ReadRefused::NotLeader`], as for [`forward_propose`](Self::forward_propose).
    pub fn forward_read_index(&mut self, request_id: u64) -> Result<NodeId, ReadRefused> {
        let leader = self.forward_target().ok_or(ReadRefused::NotLeader {
            leader: self.leader,
        })?;
        self.send(leader, MessageBody::ReadIndexRequest { request_id });
        Ok(leader)
    }

    /// Answers a forwarded proposal from `to` with a refusal without
    /// looking at it: for a driver whose own limits (a state machine that
    /// lags) refuse it before the engine sees it.
    pub fn refuse_forwarded(&mut self, to: NodeId, request_id: u64, refusal: ForwardRefusal) {
        self.send(
            to,
            MessageBody::ForwardProposeResponse {
                request_id,
                result: ForwardProposeResult::Refused(refusal),
            },
        );
    }

    /// The last index handed out for applying (in committed entries or
    /// an installed snapshot): an entry at or below it is applied, or
    /// about to be, from output this node already took.
    pub fn apply_emitted(&self) -> Index {
        self.log.apply_emitted()
    }

    fn forward_target(&self) -> Option<NodeId> {
        if self.role == Role::Leader {
            return None;
        }
        self.leader.filter(|l| *l != self.cfg.id)
    }

    /// Handles the forwarding messages, which bypass the term rules.
    /// Returns any other message untouched.
    pub(super) fn step_forward(&mut self, msg: Message) -> Option<Message> {
        let from = msg.from;
        match msg.body {
            MessageBody::ForwardPropose {
                request_id,
                command,
            } => {
                let result = match self.propose(command) {
                    Ok(id) => ForwardProposeResult::Appended(id),
                    Err(e) => ForwardProposeResult::Refused(e.into()),
                };
                self.send(
                    from,
                    MessageBody::ForwardProposeResponse { request_id, result },
                );
            }
            MessageBody::ReadIndexRequest { request_id } => {
                let id = self.next_remote_read;
                match self.read_index(id) {
                    Ok(()) => {
                        self.next_remote_read += 1;
                        self.remote_reads.insert(id, (from, request_id));
                    }
                    Err(e) => {
                        let result = ForwardReadResult::Refused(e.into());
                        self.send(from, MessageBody::ReadIndexResponse { request_id, result });
                    }
                }
            }
            MessageBody::ForwardProposeResponse { request_id, result } => {
                self.forward_responses.push(super::ForwardResponse {
                    from,
                    term: msg.term,
                    request_id,
                    result: ForwardResult::Propose(result),
                });
            }
            MessageBody::ReadIndexResponse { request_id, result } => {
                self.forward_responses.push(super::ForwardResponse {
                    from,
                    term: msg.term,
                    request_id,
                    result: ForwardResult::Read(result),
                });
            }
            body => return Some(Message { body, ..msg }),
        }
        None
    }

    /// Turns released or failed reads that followers forwarded into
    /// answers to them; the driver sees only its own reads.
    pub(super) fn route_remote_reads(&mut self) {
        if self.remote_reads.is_empty() {
            return;
        }
        let mut answers = Vec::new();
        self.read_states.retain(|rs| {
            if rs.id < REMOTE_READ_ID_BASE {
                return true;
            }
            answers.push((rs.id, ForwardReadResult::Index(rs.index)));
            false
        });
        self.failed_reads.retain(|(id, e)| {
            if *id < REMOTE_READ_ID_BASE {
                return true;
            }
            answers.push((*id, ForwardReadResult::Refused(e.clone().into())));
            false
        });
        for (id, result) in answers {
            if let Some((to, request_id)) = self.remote_reads.remove(&id) {
                self.send(to, MessageBody::ReadIndexResponse { request_id, result });
            }
        }
    }
}
