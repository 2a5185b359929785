//! Linearizable reads (thesis §6.4): ReadIndex confirmed by a quorum's
//! answer to a heartbeat round, and the leader lease (thesis §6.4.1).

use super::{Engine, PendingRead, ReadId, ReadRefused, ReadState, Role, MAX_ROUND_HISTORY};
use crate::types::NodeId;

impl Engine {
    /// Starts a linearizable read (ReadIndex, thesis §6.4): the read's index
    /// is the current commit index, released in a [`ReadState`] once a
    /// quorum confirms this node is still leader. A new leader first commits
    /// an entry of its own term.
    ///
    /// # Errors
    ///
    /// [`ReadRefused::NotLeader`] or [`ReadRefused::TooManyPending`].
    pub fn read_index(&mut self, id: ReadId) -> Result<(), ReadRefused> {
        if self.role != Role::Leader {
            return Err(ReadRefused::NotLeader {
                leader: self.leader,
            });
        }
        let pending = self.pending_reads.len() + self.reads_before_commit.len();
        if pending >= self.cfg.max_pending_reads {
            return Err(ReadRefused::TooManyPending(pending));
        }
        if !self.committed_in_current_term() {
            self.reads_before_commit.push(id);
            return Ok(());
        }
        self.queue_read(id);
        Ok(())
    }

    pub(super) fn queue_read(&mut self, id: ReadId) {
        let id_self = self.cfg.id;
        if self.membership().is_quorum(|n| n == id_self) {
            // This node alone is a quorum: nobody else can be leader.
            self.read_states.push(ReadState {
                id,
                index: self.log.committed(),
            });
            return;
        }
        self.pending_reads.push_back(PendingRead {
            id,
            index: self.log.committed(),
            round: 0,
        });
        self.read_round_needed = true;
    }

    /// Serves a read from the leader lease (thesis §6.4.1) without a round
    /// trip: succeeds only while a quorum answered a heartbeat round that
    /// started less than [`Config::lease_ticks`](crate::Config::lease_ticks) ago, with check-quorum on, an
    /// entry of this term committed and no leadership transfer in progress.
    /// The [`ReadState`] is in the next [`Ready`](super::Ready).
    ///
    /// # Errors
    ///
    /// [`ReadRefused::NotLeader`] or [`ReadRefused::LeaseNotHeld`] (fall back to
    /// [`read_index`](Self::read_index)).
    pub fn read_lease(&mut self, id: ReadId) -> Result<(), ReadRefused> {
        if self.role != Role::Leader {
            return Err(ReadRefused::NotLeader {
                leader: self.leader,
            });
        }
        if !self.lease_valid() {
            return Err(ReadRefused::LeaseNotHeld);
        }
        self.read_states.push(ReadState {
            id,
            index: self.log.committed(),
        });
        Ok(())
    }

    /// Whether this leader currently holds its lease.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || !self.cfg.check_quorum
            || self.transferee.is_some()
            || self.timeout_now_sent
            || !self.committed_in_current_term()
        {
            return false;
        }
        let id = self.cfg.id;
        if self.membership().is_quorum(|n| n == id) {
            return true;
        }
        let round = self.quorum_round();
        // The start of the newest round at or below the quorum's: a lower
        // bound on when each quorum member last heard from this leader.
        let started = self
            .round_started
            .iter()
            .rev()
            .find(|(r, _)| *r <= round)
            .map(|(_, t)| *t);
        started.is_some_and(|t| self.now < t + self.cfg.lease_ticks)
    }

    pub(super) fn quorum_round(&self) -> u64 {
        let id = self.cfg.id;
        let round = self.round;
        let progress = &self.progress;
        self.membership().quorum_value(|n| {
            if n == id {
                round
            } else {
                progress.get(&n).map_or(0, |p| p.acked_round)
            }
        })
    }

    pub(super) fn release_confirmed_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let confirmed = self.quorum_round();
        while let Some(r) = self.pending_reads.front() {
            if r.round == 0 || r.round > confirmed {
                break;
            }
            self.read_states.push(ReadState {
                id: r.id,
                index: r.index,
            });
            self.pending_reads.pop_front();
        }
    }

    pub(super) fn start_round(&mut self) {
        self.round += 1;
        self.round_started.push_back((self.round, self.now));
        if self.round_started.len() > MAX_ROUND_HISTORY {
            self.round_started.pop_front();
        }
    }

    pub(super) fn fail_pending_reads(&mut self, leader: Option<NodeId>) {
        let err = ReadRefused::NotLeader { leader };
        for r in self.pending_reads.drain(..) {
            self.failed_reads.push((r.id, err.clone()));
        }
        for id in self.reads_before_commit.drain(..) {
            self.failed_reads.push((id, err.clone()));
        }
        self.read_round_needed = false;
    }
}
