//! Elections: timeouts, pre-vote (thesis §9.6), votes (paper §5.2, §5.4.1),
//! term handling for every incoming message (paper §5.1), role changes,
//! check-quorum (thesis §6.2) and leadership transfer (thesis §3.10).

use std::collections::BTreeSet;

use rand::Rng;

use super::{Campaign, Engine, Role, TransferRefused};
use crate::message::{AppendResult, Message, MessageBody};
use crate::types::{EntryPayload, LogId, NodeId, Term};

impl Engine {
    /// Advances logical time by one tick: drives election timeouts,
    /// heartbeats, check-quorum and the leadership-transfer timeout.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.is_promotable()
                && self.installing.is_none()
                && self.election_elapsed >= self.randomized_election_timeout
            {
                self.election_elapsed = 0;
                let kind = if self.cfg.pre_vote {
                    Campaign::PreVote
                } else {
                    Campaign::Election
                };
                self.campaign(kind);
            }
        }
    }

    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_timeout_ticks {
                // Thesis §3.10: abort a transfer that did not finish within an
                // election timeout, and accept proposals again.
                tracing::info!(target = ?self.transferee, "leadership transfer timed out");
                self.transferee = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let id = self.cfg.id;
                let active = self.membership().is_quorum(|n| {
                    n == id || self.progress.get(&n).is_some_and(|p| p.recent_active)
                });
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
                if !active {
                    tracing::info!(term = self.term, "check-quorum failed: stepping down");
                    self.become_follower(self.term, None);
                    return;
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Starts a leadership transfer to `to` (thesis §3.10): the target is
    /// caught up, then told to campaign at once with `TimeoutNow`. Proposals
    /// are refused meanwhile; the transfer is abandoned after an election
    /// timeout. Watch [`SoftState`](super::SoftState) for the outcome.
    ///
    /// # Errors
    ///
    /// [`TransferRefused`] when this node is not the leader or `to` is not a voter.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferRefused> {
        if self.role != Role::Leader {
            return Err(TransferRefused::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.cfg.id {
            return Ok(());
        }
        // A voter of the outgoing half only is on its way out: refuse.
        if !self.membership().voters().contains(&to) {
            return Err(TransferRefused::NotAVoter(to));
        }
        if self.transferee == Some(to) {
            return Ok(());
        }
        self.transferee = Some(to);
        self.transfer_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        }
        Ok(())
    }

    /// Handles a message from a peer. Messages with stale terms, from unknown
    /// nodes, or out of order are handled as the algorithm requires; none of
    /// them panics. A message whose term exceeds
    /// [`MAX_TERM`](crate::types::MAX_TERM) is refused and counted
    /// ([`Status::invalid_term_messages`](super::Status::invalid_term_messages)): it changes nothing.
    pub fn step(&mut self, msg: Message) {
        if !self.admits(&msg) {
            return;
        }
        let Some(msg) = self.step_forward(msg) else {
            return;
        };
        if msg.term > self.term {
            match &msg.body {
                MessageBody::RequestVote {
                    pre_vote,
                    leadership_transfer,
                    ..
                } => {
                    if !self.transfer_bypasses_lease(*leadership_transfer, msg.from)
                        && self.in_leader_lease_against(msg.from)
                    {
                        // Thesis §4.2.3: a node that heard from a leader within
                        // the minimum election timeout ignores vote requests,
                        // so a removed or partitioned node cannot disrupt.
                        tracing::debug!(from = msg.from, "ignoring vote request within lease");
                        if *pre_vote {
                            self.send(
                                msg.from,
                                MessageBody::RequestVoteResponse {
                                    pre_vote: true,
                                    granted: false,
                                },
                            );
                        }
                        return;
                    }
                    if !pre_vote {
                        self.become_follower(msg.term, None);
                    }
                }
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {
                    // Answered at the term we would campaign in; not a newer term.
                }
                MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(msg.term, Some(msg.from))
                }
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            self.step_stale(msg);
            return;
        }

        match msg.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_id,
                leadership_transfer,
            } => self.handle_vote_request(
                msg.from,
                msg.term,
                pre_vote,
                last_log_id,
                leadership_transfer,
            ),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(msg.from, msg.term, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_log_id,
                entries,
                leader_commit,
                round,
                ..
            } => self.handle_append(msg.from, prev_log_id, entries, leader_commit, round),
            MessageBody::AppendEntriesResponse { round, result } => {
                self.handle_append_response(msg.from, round, result)
            }
            MessageBody::InstallSnapshot { meta } => self.handle_install_snapshot(msg.from, meta),
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.is_promotable() && self.installing.is_none() {
                    tracing::info!(from = msg.from, "TimeoutNow: campaigning at once");
                    self.campaign(Campaign::Transfer);
                }
            }
            // Handled by `step_forward` above.
            MessageBody::ForwardPropose { .. }
            | MessageBody::ForwardProposeResponse { .. }
            | MessageBody::ReadIndexRequest { .. }
            | MessageBody::ReadIndexResponse { .. } => {}
        }
    }

    /// Whether `msg` may be stepped at all: it is addressed to this node
    /// from another, its term (and its entries') is one an election could
    /// follow, and a higher-term response comes from a member. Counts and
    /// logs what it refuses.
    fn admits(&mut self, msg: &Message) -> bool {
        if msg.to != self.cfg.id || msg.from == self.cfg.id || msg.from == 0 {
            tracing::debug!(
                from = msg.from,
                to = msg.to,
                "dropping misaddressed message"
            );
            return false;
        }
        if self.refuses_term(msg) {
            // No election could ever follow such a term (or an entry of
            // it): adopting it would end this node's ability to campaign.
            // Refuse it whole.
            self.invalid_term_messages += 1;
            if self.invalid_term_messages.is_power_of_two() {
                tracing::warn!(
                    from = msg.from,
                    term = msg.term,
                    own_term = self.term,
                    max_term = crate::types::MAX_TERM,
                    refused = self.invalid_term_messages,
                    "refusing a message whose term (or an entry's) no election could follow"
                );
            }
            return false;
        }
        if msg.term > self.term
            && matches!(
                msg.body,
                MessageBody::AppendEntriesResponse { .. } | MessageBody::RequestVoteResponse { .. }
            )
            && !self.membership().contains(msg.from)
        {
            // A response from outside our configuration (a node removed
            // since we wrote to it) cannot count toward anything we do, and
            // its higher term must not depose us (thesis §4.2.3). A newer
            // leader, should there be one, reaches us itself.
            tracing::debug!(
                from = msg.from,
                term = msg.term,
                "higher-term response from a non-member ignored"
            );
            return false;
        }
        true
    }

    /// A message from an older term: answer so that a stale leader or
    /// candidate learns the newer term (with pre-vote and check-quorum the
    /// stale node would otherwise never hear it), otherwise drop.
    pub(super) fn step_stale(&mut self, msg: Message) {
        match msg.body {
            MessageBody::AppendEntries {
                prev_log_id, round, ..
            } => {
                self.send(
                    msg.from,
                    MessageBody::AppendEntriesResponse {
                        round,
                        result: AppendResult::Conflict {
                            rejected_prev: prev_log_id.index,
                            hint: LogId::default(),
                        },
                    },
                );
            }
            MessageBody::RequestVote { pre_vote, .. } => {
                self.send(
                    msg.from,
                    MessageBody::RequestVoteResponse {
                        pre_vote,
                        granted: false,
                    },
                );
            }
            MessageBody::InstallSnapshot { meta } => {
                self.send(
                    msg.from,
                    MessageBody::AppendEntriesResponse {
                        round: 0,
                        result: AppendResult::Conflict {
                            rejected_prev: meta.last_log_id.index,
                            hint: LogId::default(),
                        },
                    },
                );
            }
            _ => {}
        }
    }

    /// Whether this node now ignores ordinary vote requests and keeps its
    /// term when one arrives from a higher term (thesis §4.2.3): with
    /// check-quorum, a leader within its election timeout, a follower within
    /// an election timeout of hearing from its leader (whatever term
    /// changes came since), or a node in its first election timeout after
    /// a restart. A leadership transfer's campaign is not ignored.
    pub fn ignores_vote_requests(&self) -> bool {
        self.in_leader_lease()
    }

    /// Follower: `leader` spoke to this node (AppendEntries or a snapshot)
    /// in the current term. Its answer may count toward `leader`'s lease,
    /// so this node promises to help elect nobody else for an election
    /// timeout from now.
    pub(super) fn heard_from_leader(&mut self, leader: NodeId) {
        self.leader = Some(leader);
        self.election_elapsed = 0;
        self.lease_until = self.now + self.cfg.election_timeout_ticks;
        self.lease_leader = Some(leader);
    }

    /// Whether this node must ignore ordinary vote requests (only with
    /// check-quorum, thesis §4.2.3): as a leader within its election timeout
    /// (its lease), or as a follower within the promise it made when it last
    /// acknowledged a leader ([`heard_from_leader`](Self::heard_from_leader)),
    /// which outlives any change of term: a message at a higher term may
    /// clear the leader this node knows of, but that leader may still be
    /// serving lease reads on the strength of the acknowledgement.
    ///
    /// A node that restarted with state counts as in a lease for its first
    /// election timeout: it may have acknowledged a leader just before it
    /// went down, and that leader may be serving lease reads on the strength
    /// of it. (A brand-new node has acknowledged nobody.)
    pub(super) fn in_leader_lease(&self) -> bool {
        let timeout = self.cfg.election_timeout_ticks;
        self.cfg.check_quorum
            && ((self.role == Role::Leader && self.election_elapsed < timeout)
                || self.now < self.lease_until
                || (self.restarted && self.now < timeout))
    }

    /// Whether a vote request may bypass this node's lease as a leadership
    /// transfer's campaign (thesis §3.10): only from a voter of this node's
    /// configuration. A node that a configuration this node has seen
    /// removed may still hold a `TimeoutNow` sent before its removal; its
    /// campaign is an ordinary one here, which a member that follows a
    /// leader ignores (thesis §4.2.3).
    fn transfer_bypasses_lease(&self, leadership_transfer: bool, candidate: NodeId) -> bool {
        leadership_transfer && self.membership().is_voter(candidate)
    }

    /// [`in_leader_lease`](Self::in_leader_lease) as it applies to a vote
    /// request from `candidate`: a follower's promise protects the lease of
    /// the leader it was made to from other candidates, not from that
    /// leader's own new campaign (it campaigns only once it has stepped
    /// down, which ends its lease), so that leader may be voted for at once
    /// while it is still a voter here. A leader that removed itself is not:
    /// its campaign must not disrupt the members it left (thesis §4.2.3).
    pub(super) fn in_leader_lease_against(&self, candidate: NodeId) -> bool {
        let timeout = self.cfg.election_timeout_ticks;
        let own_leader =
            self.lease_leader == Some(candidate) && self.membership().is_voter(candidate);
        self.cfg.check_quorum
            && ((self.role == Role::Leader && self.election_elapsed < timeout)
                || (self.now < self.lease_until && !own_leader)
                || (self.restarted && self.now < timeout))
    }

    pub(super) fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last: LogId,
        leadership_transfer: bool,
    ) {
        // Paper §5.4.1: grant only to a candidate whose log is at least as
        // up-to-date as ours.
        let up_to_date = last >= self.log.last_log_id();
        // A request at our own term reaches here without the lease check of
        // `step` (a higher-term message may have moved us to the candidate's
        // term and cleared our leader): the promise still holds.
        let promised = !self.transfer_bypasses_lease(leadership_transfer, from)
            && self.in_leader_lease_against(from);
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none() && !promised)
            || (pre_vote && term > self.term && !promised);
        let granted = can_vote && up_to_date;
        let reply_term = if granted && pre_vote { term } else { self.term };
        let reply = Message {
            from: self.cfg.id,
            to: from,
            term: reply_term,
            body: MessageBody::RequestVoteResponse { pre_vote, granted },
        };
        if granted && !pre_vote {
            self.vote = Some(from);
            self.election_elapsed = 0;
            // The grant is a promise about durable state: send after persisting.
            self.persisted_msgs.push(reply);
        } else {
            self.msgs.push(reply);
        }
    }

    pub(super) fn handle_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        granted: bool,
    ) {
        let expected = match self.role {
            // Grants come back at the term we would campaign in, refusals at
            // the voter's own term.
            Role::PreCandidate if pre_vote => {
                Some(term) == self.term.checked_add(1) || (!granted && term == self.term)
            }
            Role::Candidate if !pre_vote => term == self.term,
            _ => false,
        };
        if !expected || !self.membership().is_voter(from) {
            return;
        }
        self.votes.insert(from, granted);
        if self.votes_won() {
            if pre_vote {
                self.campaign(Campaign::Election);
            } else {
                self.become_leader(false);
            }
        } else {
            let votes = &self.votes;
            if self
                .membership()
                .is_quorum_lost(|n| votes.get(&n) == Some(&false))
            {
                self.become_follower(self.term, None);
            }
        }
    }

    pub(super) fn send_timeout_now(&mut self, to: NodeId) {
        self.timeout_now_sent = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let min = self.cfg.election_timeout_ticks;
        self.randomized_election_timeout = self.rng.gen_range(min..2 * min);
    }

    /// Whether the votes granted so far form a quorum.
    fn votes_won(&self) -> bool {
        let votes = &self.votes;
        self.membership()
            .is_quorum(|n| votes.get(&n) == Some(&true))
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            self.fail_pending_reads(leader);
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.transferee = None;
        self.commit_advanced = false;
        self.self_election = None;
        self.reset_election_timer();
    }

    /// Whether `msg` carries a term this node refuses: at or above
    /// [`MAX_TERM`](crate::types::MAX_TERM), more than
    /// [`MAX_TERM_JUMP`](crate::types::MAX_TERM_JUMP) above its own, or
    /// entries (or a snapshot) of a term above the message's own, which no
    /// correct leader sends.
    pub fn refuses_term(&self, msg: &Message) -> bool {
        use crate::types::{MAX_TERM, MAX_TERM_JUMP};
        if msg.term >= MAX_TERM || msg.term > self.term.saturating_add(MAX_TERM_JUMP) {
            return true;
        }
        match &msg.body {
            MessageBody::AppendEntries {
                entries,
                prev_log_id,
                ..
            } => prev_log_id.term > msg.term || entries.iter().any(|e| e.term > msg.term),
            MessageBody::InstallSnapshot { meta } => meta.last_log_id.term > msg.term,
            _ => false,
        }
    }

    pub(super) fn campaign(&mut self, kind: Campaign) {
        if self.term.saturating_add(1) >= crate::types::MAX_TERM {
            // Only a corrupt or hostile message can have brought us here;
            // refusing to campaign is better than wrapping the term.
            tracing::error!(id = self.cfg.id, "term space exhausted; not campaigning");
            return;
        }
        let (term, pre_vote) = match kind {
            Campaign::PreVote => {
                self.role = Role::PreCandidate;
                (self.term + 1, true)
            }
            Campaign::Election | Campaign::Transfer => {
                self.term += 1;
                self.vote = Some(self.cfg.id);
                self.role = Role::Candidate;
                (self.term, false)
            }
        };
        tracing::debug!(id = self.cfg.id, term, pre_vote, "campaigning");
        self.leader = None;
        self.votes.clear();
        self.progress.clear();
        self.reset_election_timer();
        self.votes.insert(self.cfg.id, true);
        if self.votes_won() {
            // This node alone is a quorum.
            if pre_vote {
                self.campaign(Campaign::Election);
            } else {
                // Its own vote is its whole election, and that vote is not
                // durable yet: if it led now and crashed, it could lead this
                // term again after a restart and give the same log id to two
                // different entries. So it appends the new term's first entry
                // as a candidate, in the same write as its vote, and takes
                // office only once that write is durable (`on_persisted`).
                let id = self.append_entry(EntryPayload::Blank);
                self.self_election = Some(id);
            }
            return;
        }
        let last_log_id = self.log.last_log_id();
        let voters: Vec<NodeId> = {
            let m = self.membership();
            let mut v: BTreeSet<NodeId> = m.voters().clone();
            if let Some(o) = m.voters_outgoing() {
                v.extend(o.iter().copied());
            }
            v.into_iter().filter(|n| *n != self.cfg.id).collect()
        };
        for to in voters {
            let msg = Message {
                from: self.cfg.id,
                to,
                term,
                body: MessageBody::RequestVote {
                    pre_vote,
                    last_log_id,
                    leadership_transfer: kind == Campaign::Transfer,
                },
            };
            if pre_vote {
                self.msgs.push(msg);
            } else {
                // Our own vote must be durable before anyone can count on it.
                self.persisted_msgs.push(msg);
            }
        }
    }

    /// Takes office. `first_entry_appended` is true when the new term's first
    /// entry is already in the log (a single voter appends it as candidate).
    pub(super) fn become_leader(&mut self, first_entry_appended: bool) {
        tracing::info!(id = self.cfg.id, term = self.term, "became leader");
        self.self_election = None;
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.votes.clear();
        self.transferee = None;
        self.timeout_now_sent = false;
        self.round = 0;
        self.round_started.clear();
        self.reset_election_timer();
        self.progress.clear();
        self.sync_progress_with_membership();
        // Followers most likely hold the whole log already (paper §5.3):
        // probe after its end, so nothing is resent that they have.
        let next = self.log.last_index() + u64::from(!first_entry_appended);
        for p in self.progress.values_mut() {
            p.next = next;
        }
        // Paper §5.4.2 and §8: commit an entry of the new term, which also
        // commits everything before it and enables reads.
        if !first_entry_appended {
            self.append_entry(EntryPayload::Blank);
        }
        // Start the first round now so followers learn of the leader at once.
        self.broadcast_heartbeat();
    }
}
