//! Log replication (paper §5.3): proposals, the follower's side of
//! AppendEntries, the leader's flow control and hint-driven backtracking,
//! and the commit rule (paper §5.4.2, Figure 8).

use std::collections::BTreeSet;

use bytes::Bytes;

use super::log::AppendRefusal;
use super::progress::{Progress, ReplicationState};
use super::{Engine, EntryFetch, ProposalRefused, Role, WriteId};
use crate::message::{AppendResult, Message, MessageBody};
use crate::types::{Entry, EntryPayload, Index, LogId, NodeId};

impl Engine {
    /// Proposes `data` as a new log entry. Only a leader accepts proposals.
    /// Returns the entry's id: the proposal succeeded if and only if an entry
    /// with this id is later applied.
    ///
    /// # Errors
    ///
    /// [`ProposalRefused`]; nothing was appended.
    pub fn propose(&mut self, data: Bytes) -> Result<LogId, ProposalRefused> {
        self.propose_payload(EntryPayload::Normal(data))
    }

    pub(super) fn propose_payload(
        &mut self,
        payload: EntryPayload,
    ) -> Result<LogId, ProposalRefused> {
        if self.role != Role::Leader {
            return Err(ProposalRefused::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = self.transferee {
            return Err(ProposalRefused::TransferInProgress(t));
        }
        let uncommitted = (self.log.last_index() - self.log.committed()) as usize;
        if uncommitted >= self.cfg.max_uncommitted_entries {
            return Err(ProposalRefused::TooManyPending(uncommitted));
        }
        // One entry is always accepted when nothing is pending, however
        // large: otherwise an entry above the limit could never commit.
        let pending = self.log.uncommitted_bytes();
        let size = Entry::OVERHEAD_BYTES + payload.size_bytes();
        if pending > 0 && pending.saturating_add(size) > self.cfg.max_uncommitted_bytes {
            return Err(ProposalRefused::TooManyBytesPending(pending));
        }
        Ok(self.append_entry(payload))
    }

    pub(super) fn append_entry(&mut self, payload: EntryPayload) -> LogId {
        let id = LogId::new(self.term, self.log.last_index() + 1);
        let membership = match &payload {
            EntryPayload::Membership(m) => Some((**m).clone()),
            _ => None,
        };
        self.log.append_own(Entry {
            term: id.term,
            index: id.index,
            payload,
        });
        if let Some(m) = membership {
            // Thesis §4.1: a configuration takes effect as soon as it is appended.
            self.membership_log.push((id.index, m));
            self.sync_progress_with_membership();
        }
        id
    }

    /// Tells the engine that the write [`Ready::write_id`](super::Ready::write_id)
    /// named, and so every earlier write, is durable. Writes complete in the
    /// order they were handed out; a driver may report only the latest of
    /// several completed writes. Unknown or repeated ids are ignored.
    ///
    /// Writes are named by id rather than by their last entry because the
    /// same entry id can be written twice (a suffix truncated by one leader
    /// and sent again by the next): only the id says which write finished.
    pub fn on_persisted(&mut self, write: WriteId) {
        if !self.log.on_persisted(write.0) {
            return;
        }
        if let Some(id) = self.self_election {
            if self.role == Role::Candidate
                && self.term == id.term
                && self.log.persisted() >= id.index
                && self.log.matches(id)
            {
                // The vote and the term's first entry are durable together.
                self.become_leader(true);
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Tells the engine that the state machine applied entries up to `index`.
    pub fn on_applied(&mut self, index: Index) {
        // The engine decides snapshots on what it handed out for applying
        // (a snapshot request is queued behind those entries), so it only
        // needs to know that applying keeps up. Kept as an input so drivers
        // report it.
        let _ = index;
    }

    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev: LogId,
        entries: Vec<Entry>,
        leader_commit: Index,
        round: u64,
    ) {
        if self.role != Role::Follower {
            // A candidate of the same term learns that a leader won (paper §5.2).
            self.become_follower(self.term, Some(from));
        }
        self.heard_from_leader(from);
        if self.installing.is_some() {
            // The log is about to be replaced by a snapshot: appending (or
            // acknowledging, or learning a commit index for) entries now
            // would be undone. The leader sends again once it hears back.
            // The answer still tells it that this node follows it, or it
            // would take this node for dead while the install runs (check-
            // quorum, reads).
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    round,
                    result: AppendResult::Installing,
                },
            );
            return;
        }
        // The log takes the entries over (no copy); the membership ones,
        // rare, are kept aside to update the membership history.
        let appends = !entries.is_empty();
        let memberships: Vec<Entry> = entries
            .iter()
            .filter(|e| matches!(e.payload, EntryPayload::Membership(_)))
            .cloned()
            .collect();
        match self.log.try_append(prev, entries) {
            Ok(last_new) => {
                if appends {
                    self.track_membership_entries(&memberships);
                }
                if self.installing.is_none() {
                    self.log.commit_to(leader_commit.min(last_new));
                }
                let reply = Message {
                    from: self.cfg.id,
                    to: from,
                    term: self.term,
                    body: MessageBody::AppendEntriesResponse {
                        round,
                        result: AppendResult::Success {
                            last_index: last_new,
                        },
                    },
                };
                // Acknowledges durable entries: send after persisting.
                self.persisted_msgs.push(reply);
            }
            Err(AppendRefusal::Mismatch(hint)) => {
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        round,
                        result: AppendResult::Conflict {
                            rejected_prev: prev.index,
                            hint,
                        },
                    },
                );
            }
            Err(AppendRefusal::Malformed) => {
                tracing::warn!(from, %prev, "malformed AppendEntries dropped");
            }
            Err(AppendRefusal::ConflictsWithCommitted(index)) => {
                tracing::error!(
                    from,
                    index,
                    commit = self.log.committed(),
                    "leader tried to overwrite a committed entry; request dropped"
                );
            }
        }
    }

    /// Updates the membership history after a follower append of entries
    /// (of which `entries` are the membership ones, if any): they may have
    /// replaced a suffix that held membership entries.
    pub(super) fn track_membership_entries(&mut self, entries: &[Entry]) {
        let before = self.membership_log.clone();
        let log = &self.log;
        self.membership_log.retain(|(i, m)| {
            matches!(log.get(*i).map(|e| &e.payload), Some(EntryPayload::Membership(x)) if **x == *m)
        });
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                if log.get(e.index).is_some_and(|x| x == e)
                    && !self.membership_log.iter().any(|(i, _)| *i == e.index)
                {
                    self.membership_log.push((e.index, (**m).clone()));
                }
            }
        }
        self.membership_log.sort_by_key(|(i, _)| *i);
        if before != self.membership_log {
            self.sync_progress_with_membership();
        }
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        round: u64,
        result: AppendResult,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        // The first answer of a round (usually to its heartbeat) checks the
        // pipeline; later ones do not (see the progress module docs).
        let first_of_round = round <= self.round && round > pr.acked_round;
        if round <= self.round {
            pr.acked_round = pr.acked_round.max(round);
        }
        match result {
            AppendResult::Success { last_index: acked } => {
                if acked > last_index {
                    tracing::warn!(from, acked, last_index, "ack beyond our log ignored");
                    return;
                }
                let was_full = pr.inflight_full(max_msgs, max_bytes);
                let moved = pr.on_success(acked, self.round);
                if first_of_round && !moved && acked == pr.matched && pr.matched < last_index {
                    // A heartbeat answer from a follower that is behind what
                    // we think is in flight: a message may have been lost.
                    if was_full {
                        pr.free_first();
                    }
                    if pr.state == ReplicationState::Replicate {
                        // An empty append at `next - 1` succeeds if the data
                        // arrived and is rejected (news by its round: moving
                        // to probe) if not.
                        self.send_empty_append(from);
                    }
                }
                if moved {
                    self.maybe_commit();
                }
                if self.transferee == Some(from)
                    && self
                        .progress
                        .get(&from)
                        .is_some_and(|p| p.matched == last_index)
                {
                    self.send_timeout_now(from);
                }
            }
            // Liveness and the round only, recorded above.
            AppendResult::Installing => {}
            AppendResult::Conflict {
                rejected_prev,
                hint,
            } => {
                // A hint past our log is out of range: clamp it.
                let hint_index = hint.index.min(last_index);
                let next = if hint.term == 0 {
                    hint_index + 1
                } else {
                    self.log.find_conflict_by_term(hint_index, hint.term).index + 1
                };
                let offset = self.log.offset().index;
                if let Some(pr) = self.progress.get_mut(&from) {
                    if !pr.on_reject(rejected_prev, next, round)
                        && pr.state == ReplicationState::Probe
                        && !pr.probe_sent
                        && offset > 0
                        && rejected_prev == offset
                        && pr.matched < offset
                    {
                        // A heartbeat at the compacted prefix was refused:
                        // the follower is behind it and needs the snapshot.
                        pr.next = pr.matched + 1;
                    }
                }
            }
        }
        self.release_confirmed_reads();
    }

    pub(super) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    /// Paper §5.3/§5.4.2 (Figure 8): commit the highest index replicated on a
    /// quorum, but only by counting replicas of an entry of the current term.
    /// The leader counts itself only for what is durable on its own disk.
    pub(super) fn maybe_commit(&mut self) {
        let id = self.cfg.id;
        let persisted = self.log.persisted();
        let progress = &self.progress;
        let quorum_index = self.membership().quorum_value(|n| {
            if n == id {
                persisted
            } else {
                progress.get(&n).map_or(0, |p| p.matched)
            }
        });
        if quorum_index > self.log.committed() && self.log.term(quorum_index) == Some(self.term) {
            let first_in_term = !self.committed_in_current_term();
            self.log.commit_to(quorum_index);
            self.commit_advanced = true;
            if first_in_term {
                for id in std::mem::take(&mut self.reads_before_commit) {
                    self.queue_read(id);
                }
            }
            self.advance_membership();
        }
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        self.start_round();
        for r in self.pending_reads.iter_mut().filter(|r| r.round == 0) {
            r.round = self.round;
        }
        self.read_round_needed = false;
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        let (now, fetch_timeout) = (self.now, self.cfg.election_timeout_ticks);
        for peer in peers {
            if let Some(pr) = self.progress.get_mut(&peer) {
                if pr.state == ReplicationState::Probe {
                    pr.probe_sent = false;
                }
                if pr.fetch_expired(now, fetch_timeout) {
                    tracing::warn!(
                        to = peer,
                        ticks = fetch_timeout,
                        "no answer to a read-back from storage; asking again"
                    );
                }
            }
            self.send_heartbeat(peer);
        }
    }

    /// An empty AppendEntries at the follower's match index: it always passes
    /// the consistency check, carries the commit index the follower can
    /// safely learn, and echoes the round for reads and the lease.
    pub(super) fn send_heartbeat(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        // A follower behind the compacted prefix still needs heartbeats (its
        // election timer must not fire while a snapshot is on its way): send
        // one at the prefix, which it rejects, without a commit index.
        let (prev_log_id, commit) = match self.log.term(pr.matched) {
            Some(term) => (
                LogId::new(term, pr.matched),
                self.log.committed().min(pr.matched),
            ),
            None => (self.log.offset(), 0),
        };
        let body = MessageBody::AppendEntries {
            prev_log_id,
            entries: Vec::new(),
            leader_commit: commit,
            round: self.round,
            heartbeat: true,
        };
        self.send(to, body);
    }

    /// An empty AppendEntries at `next - 1`: checks whether everything sent
    /// so far arrived.
    pub(super) fn send_empty_append(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        let prev_index = pr.next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            return;
        };
        let body = MessageBody::AppendEntries {
            prev_log_id: LogId::new(prev_term, prev_index),
            entries: Vec::new(),
            leader_commit: self.log.committed().min(prev_index),
            round: self.round,
            heartbeat: false,
        };
        self.send(to, body);
    }

    /// Sends entries to `to` while its flow control allows.
    pub(super) fn replicate_to(&mut self, to: NodeId) {
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
        loop {
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            if pr.is_paused(max_msgs, max_bytes) || pr.next > self.log.last_index() {
                return;
            }
            let prev_index = pr.next - 1;
            let Some(prev_term) = self.log.term(prev_index) else {
                // The entries it needs were compacted: send the snapshot.
                self.send_snapshot(to);
                return;
            };
            if pr.fetching.is_some() {
                return; // entries are being read back from storage
            }
            if pr.next <= self.log.evicted_to() {
                // Their payloads are no longer in memory: read them back.
                let fetch = EntryFetch {
                    id: self.next_fetch,
                    to,
                    term: self.term,
                    prev: LogId::new(prev_term, prev_index),
                    start: pr.next,
                    end: self.log.evicted_to() + 1,
                    max_entries: self.cfg.max_message_entries,
                    max_bytes: self.cfg.max_message_bytes,
                };
                self.next_fetch += 1;
                let now = self.now;
                if let Some(pr) = self.progress.get_mut(&to) {
                    pr.fetch_started(fetch.id, now);
                }
                self.fetches.push(fetch);
                return;
            }
            let entries = self.log.slice(
                pr.next,
                self.cfg.max_message_entries,
                self.cfg.max_message_bytes,
            );
            let Some(last) = entries.last().map(|e| e.index) else {
                return;
            };
            let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
            let body = MessageBody::AppendEntries {
                prev_log_id: LogId::new(prev_term, prev_index),
                entries,
                leader_commit: self.log.committed(),
                round: self.round,
                heartbeat: false,
            };
            self.send(to, body);
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.sent(last, bytes);
            }
        }
    }

    /// Hands the engine the entries the driver read back from storage for
    /// `fetch` (a request from [`Ready::fetch_entries`](super::Ready::fetch_entries));
    /// an empty `entries` says the read failed. A leader sends them to the
    /// follower when it still needs them (and reads further entries the same
    /// way); a failed or outdated read is dropped, and replication to that
    /// follower resumes with its next probe. A read the leader gave up on
    /// (outstanding for an election timeout) is still used when it arrives
    /// while the follower needs exactly those entries.
    pub fn on_entries_fetched(&mut self, fetch: EntryFetch, entries: Vec<Entry>) {
        if self.role != Role::Leader || self.term != fetch.term {
            return;
        }
        let Some(pr) = self.progress.get_mut(&fetch.to) else {
            return;
        };
        let current = pr.fetching == Some(fetch.id);
        if current {
            pr.fetching = None;
        }
        let log = &self.log;
        let valid = entries.first().is_some_and(|e| e.index == fetch.start)
            && entries.len() <= fetch.max_entries.max(1)
            && entries.iter().enumerate().all(|(i, e)| {
                e.index == fetch.start + i as u64 && log.term(e.index) == Some(e.term)
            })
            && log.matches(fetch.prev);
        if !valid {
            if !entries.is_empty() {
                tracing::warn!(
                    to = fetch.to,
                    start = fetch.start,
                    "entries read back from storage do not match the log; dropped"
                );
            }
            if current {
                // Wait for the next heartbeat before trying again (a
                // failing read is not retried in a tight loop).
                pr.fetch_failed();
            }
            return;
        }
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
        if pr.is_paused(max_msgs, max_bytes) || pr.next != fetch.start {
            return; // the follower's position moved meanwhile; replicate anew
        }
        // A late answer to a read given up on: it is what the follower
        // needs now, so the read asked again instead is not waited for.
        pr.fetching = None;
        let last = entries.last().map_or(0, |e| e.index);
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let body = MessageBody::AppendEntries {
            prev_log_id: fetch.prev,
            entries,
            leader_commit: self.log.committed(),
            round: self.round,
            heartbeat: false,
        };
        self.send(fetch.to, body);
        if let Some(pr) = self.progress.get_mut(&fetch.to) {
            pr.sent(last, bytes);
        }
        self.replicate_to(fetch.to);
    }

    pub(super) fn flush_leader(&mut self) {
        if self.read_round_needed {
            self.broadcast_heartbeat();
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        let commit_advanced = std::mem::take(&mut self.commit_advanced);
        for peer in peers {
            let sent_before = self.msgs.len();
            self.replicate_to(peer);
            let sent = self.msgs.len() > sent_before;
            if commit_advanced && !sent {
                // Nothing new to send: tell the follower the commit index
                // anyway, so it applies without waiting for a heartbeat.
                if self.progress.get(&peer).is_some_and(|p| p.matched > 0) {
                    self.send_heartbeat(peer);
                }
            }
        }
    }

    pub(super) fn sync_progress_with_membership(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let members: BTreeSet<NodeId> = self
            .membership()
            .members()
            .into_iter()
            .filter(|n| *n != self.cfg.id)
            .collect();
        self.progress.retain(|id, _| members.contains(id));
        // Start a new member's probe at the last entry (not after it), so the
        // first round of replication already finds its position.
        let next = self.log.last_index().max(1);
        for id in members {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(next));
        }
    }

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.msgs.push(Message {
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        });
    }
}
