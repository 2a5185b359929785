//! A follower's side of forwarding: client proposals and linearizable
//! reads sent to the leader over the peer transport
//! ([`Engine::forward_propose`](crate::engine::Engine::forward_propose),
//! [`Engine::forward_read_index`](crate::engine::Engine::forward_read_index)),
//! and the leader's refusal of forwarded proposals while its state
//! machine lags.
//!
//! # Proposals
//!
//! The leader answers with the entry's [`LogId`]. The follower then
//! waits for its own apply of that index, exactly as for a local
//! proposal: the entry applied there has the leader's term if and only if
//! the command took effect, and the caller gets the state machine's
//! output from this node's apply (so a read on this node afterwards sees
//! the write). The answer may arrive after the entry was already handed
//! to the state machine here; for that, while any forwarded proposal
//! waits for its answer, the apply task keeps the outputs of the entries
//! it applies ([`Retained`], at most
//! [`DriverConfig::max_retained_outputs`](super::DriverConfig::max_retained_outputs)),
//! and the answer claims its output from there ([`ApplyJob::Claim`]).
//!
//! Outcomes: a refusal or no leader to send to is a definite "not
//! applied" (`NotLeader`, `Overloaded`, `TransferInProgress`); no answer
//! within [`DriverConfig::forward_timeout`](super::DriverConfig::forward_timeout)
//! is unknown ([`ProposeError::Timeout`]), as is an output lost to the
//! retention bound or to a snapshot install ([`ProposeError::OutcomeUnknown`]).
//!
//! # Reads
//!
//! The leader answers with a read index; the caller's
//! [`RaftHandle::read`](super::RaftHandle::read) then waits until this
//! node applied it and reads locally.

use std::collections::{HashMap, VecDeque};
use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::handle::{ReadConsistency, Request};
use super::tasks::{ApplyJob, Waiter};
use super::{Driver, PendingProposal, ProposeError, ReadError};
use crate::engine::{ForwardResponse, ForwardResult, Role};
use crate::message::{
    ForwardProposeResult, ForwardReadResult, ForwardRefusal, Message, MessageBody,
};
use crate::transport::Transport;
use crate::types::{Index, NodeId, Term};

/// A reply channel of a proposal.
type ProposeReply<R> = super::ticket::Reply<R>;
/// A reply channel of a read.
type ReadReply = oneshot::Sender<Result<Index, ReadError>>;

/// Requests this follower forwarded and waits to hear about.
pub(super) struct Forwards<R> {
    /// The next request id. A run starts at a random point of a 2^62
    /// range, so an answer addressed to a previous run of this node (still
    /// on its way when it restarted) names no request of this one: taken
    /// for a new read, its older index would serve a stale read.
    next_id: u64,
    proposals: HashMap<u64, Sent<ProposeReply<R>>>,
    reads: HashMap<u64, Sent<ReadReply>>,
    /// Whether the apply task was told to keep outputs.
    retaining: bool,
    /// When expired requests were last looked for.
    last_expiry: Instant,
    /// Bytes of the commands of forwarded proposals not yet answered.
    pending_bytes: u64,
}

/// One forwarded request.
struct Sent<T> {
    to: NodeId,
    at: Instant,
    reply: T,
    /// The command's bytes (0 for a read).
    bytes: u64,
}

impl<R> Default for Forwards<R> {
    fn default() -> Self {
        Self {
            next_id: 1 + (rand::random::<u64>() >> 2),
            proposals: HashMap::new(),
            reads: HashMap::new(),
            retaining: false,
            last_expiry: Instant::now(),
            pending_bytes: 0,
        }
    }
}

impl<R> Forwards<R> {
    fn pending(&self) -> usize {
        self.proposals.len() + self.reads.len()
    }
}

impl From<ForwardRefusal> for ProposeError {
    fn from(r: ForwardRefusal) -> Self {
        match r {
            ForwardRefusal::NotLeader { leader } => ProposeError::NotLeader { leader },
            ForwardRefusal::TransferInProgress => ProposeError::TransferInProgress,
            ForwardRefusal::Overloaded => ProposeError::Overloaded,
        }
    }
}

impl From<ForwardRefusal> for ReadError {
    fn from(r: ForwardRefusal) -> Self {
        match r {
            ForwardRefusal::NotLeader { leader } => ReadError::NotLeader { leader },
            // The leader's transfer: as for a leader's own read, retry.
            ForwardRefusal::TransferInProgress | ForwardRefusal::Overloaded => {
                ReadError::Overloaded
            }
        }
    }
}

impl<R: Send + 'static, T: Transport> Driver<R, T> {
    /// The leader to forward a client request to, when this node forwards:
    /// a follower that knows its leader, can reach it through the
    /// transport, and whose own state machine keeps up (the answer waits
    /// for this node's apply; one that lags beyond
    /// [`DriverConfig::max_unapplied_entries`](super::DriverConfig::max_unapplied_entries)
    /// answers `NotLeader` so the caller goes to the leader another way).
    fn forward_target(&mut self) -> Option<NodeId> {
        if !self.cfg.forward_to_leader || self.engine.role() == Role::Leader {
            return None;
        }
        let leader = self.engine.leader().filter(|l| *l != self.engine.id())?;
        (self.transport.can_forward(leader) && !self.apply_lags()).then_some(leader)
    }

    /// Forwards a client proposal or linearizable read to the leader when
    /// this node is a follower that forwards; gives every other request
    /// back, to be handled here.
    pub(super) fn forward_request(&mut self, req: Request<R>) -> Option<Request<R>> {
        match req {
            Request::Propose { data, reply } if self.forward_target().is_some() => {
                // A caller that timed out before this was taken: drop it.
                if reply.take() {
                    self.forward_proposal(data, reply);
                }
                None
            }
            Request::Read { consistency, reply }
                if consistency != ReadConsistency::Stale && self.forward_target().is_some() =>
            {
                self.forward_read(reply);
                None
            }
            other => Some(other),
        }
    }

    fn forward_proposal(&mut self, data: Bytes, reply: ProposeReply<R>) {
        self.expire_forwards();
        let bytes = data.len() as u64;
        let pending_bytes = self.forwards.pending_bytes;
        // One command is always taken when none waits, however large.
        let too_many_bytes = pending_bytes > 0
            && pending_bytes.saturating_add(bytes) > self.cfg.max_pending_forward_bytes;
        if self.forwards.pending() >= self.cfg.max_pending_forwards || too_many_bytes {
            metrics::counter!("raft_forward_refused_total", "kind" => "propose").increment(1);
            let _ = reply.send(Err(ProposeError::Overloaded));
            return;
        }
        let id = self.forwards.next_id;
        // Outputs are kept from before the leader can append the entry.
        self.retain_outputs(true);
        match self.engine.forward_propose(id, data) {
            Ok(to) => {
                self.forwards.next_id += 1;
                let at = Instant::now();
                let sent = Sent {
                    to,
                    at,
                    reply,
                    bytes,
                };
                self.forwards.proposals.insert(id, sent);
                self.forwards.pending_bytes += bytes;
                metrics::counter!("raft_forwarded_total", "kind" => "propose").increment(1);
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::from(e)));
                self.retain_outputs(!self.forwards.proposals.is_empty());
            }
        }
    }

    fn forward_read(&mut self, reply: ReadReply) {
        self.expire_forwards();
        if self.forwards.pending() >= self.cfg.max_pending_forwards {
            metrics::counter!("raft_forward_refused_total", "kind" => "read").increment(1);
            let _ = reply.send(Err(ReadError::Overloaded));
            return;
        }
        let id = self.forwards.next_id;
        match self.engine.forward_read_index(id) {
            Ok(to) => {
                self.forwards.next_id += 1;
                let at = Instant::now();
                let sent = Sent {
                    to,
                    at,
                    reply,
                    bytes: 0,
                };
                self.forwards.reads.insert(id, sent);
                metrics::counter!("raft_forwarded_total", "kind" => "read").increment(1);
            }
            Err(e) => {
                let _ = reply.send(Err(ReadError::from(e)));
            }
        }
    }

    /// Matches the leader's answers to the requests they answer; an
    /// answer to a request no longer waiting (answered, timed out) or from
    /// another node than the one asked is ignored. Call after the `Ready`'s
    /// committed entries were handed out.
    pub(super) fn on_forward_responses(&mut self, responses: Vec<ForwardResponse>) {
        if responses.is_empty() {
            return;
        }
        for r in responses {
            match r.result {
                ForwardResult::Propose(result) => self.on_propose_answer(&r, result),
                ForwardResult::Read(result) => self.on_read_answer(&r, result),
            }
        }
        self.expire_forwards();
    }

    fn on_propose_answer(&mut self, r: &ForwardResponse, result: ForwardProposeResult) {
        let Some(sent) = take_if_from(&mut self.forwards.proposals, r) else {
            metrics::counter!("raft_forward_ignored_total").increment(1);
            return;
        };
        self.forwards.pending_bytes -= sent.bytes;
        record_latency("propose", sent.at);
        match result {
            ForwardProposeResult::Refused(reason) => {
                let _ = sent.reply.send(Err(ProposeError::from(reason)));
            }
            ForwardProposeResult::Appended(id) if id.index > self.engine.apply_emitted() => {
                // Not applied here yet: wait like a local proposal.
                let pending = PendingProposal {
                    term: id.term,
                    proposed: sent.at,
                    reply: sent.reply,
                };
                self.wait_for_entry(id.index, pending);
            }
            ForwardProposeResult::Appended(id) => {
                // Already handed to the state machine: claim its output.
                self.commit_latency.record(sent.at.elapsed().as_secs_f64());
                let waiter = Waiter {
                    index: id.index,
                    term: id.term,
                    reply: sent.reply,
                };
                self.queue_apply(ApplyJob::Claim(waiter));
            }
        }
        self.retain_outputs(!self.forwards.proposals.is_empty());
    }

    fn on_read_answer(&mut self, r: &ForwardResponse, result: ForwardReadResult) {
        let Some(sent) = take_if_from(&mut self.forwards.reads, r) else {
            metrics::counter!("raft_forward_ignored_total").increment(1);
            return;
        };
        record_latency("read", sent.at);
        let answer = match result {
            ForwardReadResult::Index(index) => Ok(index),
            ForwardReadResult::Refused(reason) => Err(ReadError::from(reason)),
        };
        let _ = sent.reply.send(answer);
    }

    /// Makes `pending` wait for the apply of `index`. A proposal already
    /// waiting there (appended by a leader of another term: a forwarded
    /// one whose answer came first or later, or this node's own) is
    /// answered [`ProposeError::OutcomeUnknown`]: an entry another leader
    /// put at the same index does not prove that it will not commit (it
    /// may itself be overwritten), and one index holds one waiter.
    pub(super) fn wait_for_entry(&mut self, index: Index, pending: PendingProposal<R>) {
        if let Some(old) = self.proposals.insert(index, pending) {
            let _ = old.reply.send(Err(ProposeError::OutcomeUnknown { index }));
        }
        // The pending gauge is set once per batch of inputs (`end_batch`).
    }

    /// Gives up on requests unanswered for longer than the forward
    /// timeout: answers them, counts them in `raft_forward_timeouts_total`
    /// and, once no forwarded proposal waits, has the apply task drop the
    /// outputs it kept. Runs at every new forward and answer, and on the
    /// engine task's tick (so without any further forward traffic).
    pub(super) fn expire_forwards(&mut self) {
        if self.forwards.pending() == 0 {
            return;
        }
        let timeout = self.cfg.forward_timeout;
        let now = Instant::now();
        // A scan at most every eighth of the timeout: a request is given
        // up at most that much late, and a busy follower does not walk
        // every waiting request for each new one.
        if now.saturating_duration_since(self.forwards.last_expiry) < timeout / 8 {
            return;
        }
        self.forwards.last_expiry = now;
        let expired = |s: &Instant| now.saturating_duration_since(*s) > timeout;
        let before = self.forwards.pending();
        let proposals = &mut self.forwards.proposals;
        for id in keys_where(proposals, |s| expired(&s.at)) {
            if let Some(s) = proposals.remove(&id) {
                self.forwards.pending_bytes -= s.bytes;
                let _ = s.reply.send(Err(ProposeError::Timeout));
            }
        }
        let reads = &mut self.forwards.reads;
        for id in keys_where(reads, |s| expired(&s.at)) {
            if let Some(s) = reads.remove(&id) {
                let _ = s.reply.send(Err(ReadError::Timeout));
            }
        }
        let gone = before - self.forwards.pending();
        if gone > 0 {
            metrics::counter!("raft_forward_timeouts_total").increment(gone as u64);
            self.retain_outputs(!self.forwards.proposals.is_empty());
        }
    }

    /// Tells the apply task to keep outputs (or to stop and drop them).
    fn retain_outputs(&mut self, on: bool) {
        if self.forwards.retaining == on {
            return;
        }
        self.forwards.retaining = on;
        let cap = if on { self.cfg.max_retained_outputs } else { 0 };
        self.queue_apply(ApplyJob::Retain(cap));
    }

    /// A leader whose state machine lags refuses forwarded proposals as
    /// it refuses its own; true when `msg` was answered so.
    pub(super) fn refuse_forwarded(&mut self, msg: &Message) -> bool {
        let MessageBody::ForwardPropose { request_id, .. } = msg.body else {
            return false;
        };
        if self.engine.role() != Role::Leader || !self.apply_lags() {
            return false;
        }
        metrics::counter!("raft_proposals_rejected_total").increment(1);
        self.engine
            .refuse_forwarded(msg.from, request_id, ForwardRefusal::Overloaded);
        true
    }

    /// Answers every forwarded request on shutdown.
    pub(super) fn fail_forwards(&mut self) {
        self.forwards.pending_bytes = 0;
        for (_, s) in self.forwards.proposals.drain() {
            let _ = s
                .reply
                .send(Err(ProposeError::ShuttingDown { appended: true }));
        }
        for (_, s) in self.forwards.reads.drain() {
            let _ = s.reply.send(Err(ReadError::ShuttingDown));
        }
    }
}

fn keys_where<T>(map: &HashMap<u64, Sent<T>>, pred: impl Fn(&Sent<T>) -> bool) -> Vec<u64> {
    map.iter()
        .filter(|(_, s)| pred(s))
        .map(|(k, _)| *k)
        .collect()
}

fn take_if_from<T>(map: &mut HashMap<u64, Sent<T>>, r: &ForwardResponse) -> Option<Sent<T>> {
    match map.get(&r.request_id) {
        Some(s) if s.to == r.from => map.remove(&r.request_id),
        _ => None,
    }
}

fn record_latency(kind: &'static str, at: Instant) {
    metrics::histogram!("raft_forward_seconds", "kind" => kind).record(at.elapsed().as_secs_f64());
}

/// Outputs of applied entries the apply task keeps while forwarded
/// proposals wait for their answer (see the [module docs](self)): the
/// entry's index and term, and its output unless a local proposer took it.
pub(crate) struct Retained<R> {
    cap: usize,
    outputs: VecDeque<(Index, Term, Option<R>)>,
}

impl<R> Default for Retained<R> {
    fn default() -> Self {
        Self {
            cap: 0,
            outputs: VecDeque::new(),
        }
    }
}

impl<R> Retained<R> {
    /// Keeps at most `cap` outputs from now on (0: none, and drops all).
    pub(crate) fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
        while self.outputs.len() > cap {
            self.outputs.pop_front();
        }
    }

    /// Whether outputs are kept at all.
    pub(crate) fn is_on(&self) -> bool {
        self.cap > 0
    }

    /// Keeps the output of the entry at `index`, dropping the oldest
    /// beyond the bound.
    pub(crate) fn keep(&mut self, index: Index, term: Term, output: Option<R>) {
        if self.cap == 0 {
            return;
        }
        if self.outputs.back().is_some_and(|(i, _, _)| *i >= index) {
            // A snapshot install moved the state machine: start afresh.
            self.outputs.clear();
        }
        if self.outputs.len() == self.cap {
            self.outputs.pop_front();
        }
        self.outputs.push_back((index, term, output));
    }

    /// Answers `w` from the kept output of its entry.
    pub(crate) fn claim(&mut self, w: Waiter<R>) {
        let found = self
            .outputs
            .binary_search_by_key(&w.index, |(i, _, _)| *i)
            .ok();
        let result = match found.map(|at| &mut self.outputs[at]) {
            Some((_, term, _)) if *term != w.term => {
                Err(ProposeError::Superseded { index: w.index })
            }
            Some((_, _, output)) => output
                .take()
                .ok_or(ProposeError::OutcomeUnknown { index: w.index }),
            // Dropped by the bound, or the entry came in a snapshot.
            None => Err(ProposeError::OutcomeUnknown { index: w.index }),
        };
        let _ = w.reply.send(result);
    }
}
