//! What a leader knows about each follower's log (paper Figure 2's
//! `nextIndex`/`matchIndex`) and the flow control around it: a follower is
//! probed one message at a time until its log position is found, then
//! entries are pipelined to it, bounded by in-flight messages and bytes.
//!
//! # The flow-control rule
//!
//! The network may lose, duplicate, delay and reorder messages without
//! bound, and a follower keeps no entry that does not extend its log: an
//! append that overtakes an earlier one is rejected, and what it carried
//! must be sent again. The rule: the leader sends a bounded number of
//! messages per entry the follower gains, plus a constant number per
//! heartbeat round, and once messages get through, within two rounds the
//! follower's match index moves or the pipeline restarts where the follower
//! needs entries.
//!
//! A rejection carries the `prev` index of the request it refuses
//! (`rejected_prev`), a hint, and the leader's heartbeat `round` when the
//! request was sent. From the hint the leader derives the `hole`, the first
//! index the follower lacked (at most `rejected_prev`).
//!
//! - **Stale**: `hole <= matched` (which includes `rejected_prev <= matched`). The
//!   follower answered before it held what it has since acknowledged as
//!   durable. Ignored in every state.
//! - **Probe**: one probe is outstanding. Another is sent after each
//!   heartbeat (at most one a round), or at once when a rejection of the
//!   outstanding probe (`rejected_prev == next - 1`) moves `next` back to
//!   the hole, which strictly lowers `next`. Other rejections are ignored.
//!   An acknowledgement at or past `next - 1` starts a pipeline.
//! - **Replicate**: the pipeline started at `pipeline_from` (`matched + 1`
//!   then) in round `pipeline_round`, and every entry from there to
//!   `next - 1` has been sent since. A rejection that is not stale restarts
//!   the pipeline (Probe at the hole) only if it is news:
//!   - `hole > pipeline_from`: the follower got past the pipeline's start,
//!     then missed an entry. The next pipeline starts after an
//!     acknowledgement at or past the hole, so each such restart moves
//!     `pipeline_from` forward: at most one per entry gained;
//!   - or `round > pipeline_round`: a request sent at least a round after
//!     the pipeline started found its first entry still missing: it was
//!     lost (or is that late). The restarted pipeline starts in the current
//!     round, so this happens at most once a round.
//!
//!   Any other rejection (`hole == pipeline_from`, same round) shows only
//!   that the pipeline's first message has not arrived yet. It, its
//!   duplicates and the rejections of older pipelines' messages change
//!   nothing: restarting on them is what piled burst upon burst onto a
//!   reordering network.
//! - **Window**: a restart of a pipeline (not a probe backing off) allows
//!   one message in flight; each message
//!   acknowledged allows one more (doubling every round trip) up to
//!   `max_inflight_messages` and `max_inflight_bytes`. On a network that
//!   keeps order the window stays wide; on one that reorders, messages that
//!   overtake others are wasted, and the window keeps them to about the
//!   number of entries gained.
//! - **Loss** (a lost message gets no answer, and the rejections of what
//!   followed it may all be old news): the first answer of each round that
//!   shows the follower at `matched`, behind our log, makes the leader send
//!   one empty append at `next - 1` (and give up on the oldest message in
//!   flight when the window is full). Its rejection is news by its round
//!   unless the pipeline started in that very round.

use std::collections::VecDeque;

use crate::types::Index;

/// How the leader currently sends to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationState {
    /// The follower's position is unknown: one AppendEntries at a time, until
    /// one is accepted.
    Probe,
    /// The follower's position is known: entries are sent optimistically,
    /// pipelined up to the in-flight limits.
    Replicate,
    /// The follower needs entries the leader compacted away: a snapshot is
    /// on its way, and nothing else is sent until it is installed or fails.
    Snapshot,
}

impl ReplicationState {
    /// A lowercase name for logs, metrics and the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationState::Probe => "probe",
            ReplicationState::Replicate => "replicate",
            ReplicationState::Snapshot => "snapshot",
        }
    }
}

/// The leader's view of one follower.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log (durable on the follower).
    pub(crate) matched: Index,
    /// Next index to send.
    pub(crate) next: Index,
    pub(crate) state: ReplicationState,
    /// In Probe: whether a probe is outstanding (cleared by a response or a heartbeat).
    pub(crate) probe_sent: bool,
    /// In Replicate: the last index and byte size of each message in flight.
    inflight: VecDeque<(Index, u64)>,
    inflight_bytes: u64,
    /// Whether the follower answered since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// The highest heartbeat round the follower answered in this term.
    pub(crate) acked_round: u64,
    /// In Snapshot: the last index of the snapshot being sent.
    pub(crate) pending_snapshot: Index,
    /// In Replicate: the first index of the current pipeline and the
    /// leader's round when it started (see the module docs).
    pipeline_from: Index,
    pipeline_round: u64,
    /// In Replicate: how many messages may be in flight, besides the
    /// configured limits: one after a restart, widened by one for each
    /// message acknowledged.
    window: usize,
    /// The read-back from storage outstanding for this follower, if any
    /// ([`EntryFetch::id`](super::EntryFetch::id)): nothing else is sent
    /// to it (but heartbeats) until it is answered, or given up on after
    /// an election timeout ([`Progress::fetch_expired`]).
    pub(crate) fetching: Option<u64>,
    /// The leader's tick when `fetching` was asked for.
    pub(crate) fetch_asked_at: u64,
}

impl Progress {
    pub(crate) fn new(next: Index) -> Self {
        Self {
            matched: 0,
            next,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            acked_round: 0,
            pending_snapshot: 0,
            pipeline_from: 0,
            pipeline_round: 0,
            window: usize::MAX,
            fetching: None,
            fetch_asked_at: 0,
        }
    }

    /// Records the read-back `id`, asked for at tick `now`.
    pub(crate) fn fetch_started(&mut self, id: u64, now: u64) {
        self.fetching = Some(id);
        self.fetch_asked_at = now;
    }

    /// Gives up on a read-back outstanding for `timeout` ticks or more at
    /// tick `now`: a read that hangs, or whose answer was lost, must not
    /// stop replication to this follower for good. Replication asks again
    /// (a late answer is still used if it fits). Returns whether it gave up.
    pub(crate) fn fetch_expired(&mut self, now: u64, timeout: u64) -> bool {
        if self.fetching.is_some() && now.saturating_sub(self.fetch_asked_at) >= timeout {
            self.fetching = None;
            return true;
        }
        false
    }

    /// A read-back from storage failed: probe from the match index after
    /// the next heartbeat.
    pub(crate) fn fetch_failed(&mut self) {
        if self.state == ReplicationState::Snapshot {
            return;
        }
        self.state = ReplicationState::Probe;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.next = self.matched + 1;
        self.probe_sent = true;
    }

    /// The follower's position (`matched`) is known: pipeline from after it.
    fn become_replicate(&mut self, round: u64) {
        self.state = ReplicationState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.pending_snapshot = 0;
        self.pipeline_from = self.next;
        self.pipeline_round = round;
    }

    /// A snapshot ending at `index` is being sent: pause until it lands.
    pub(crate) fn become_snapshot(&mut self, index: Index) {
        self.state = ReplicationState::Snapshot;
        self.pending_snapshot = index;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.probe_sent = false;
    }

    /// The snapshot transfer ended: probe from after what it covers (when
    /// it was delivered) or from the match index (when it failed, so a new
    /// snapshot is sent after the next heartbeat).
    pub(crate) fn snapshot_done(&mut self, delivered: bool) {
        if self.state != ReplicationState::Snapshot {
            return;
        }
        self.state = ReplicationState::Probe;
        self.next = if delivered {
            self.pending_snapshot.max(self.matched) + 1
        } else {
            self.matched + 1
        };
        self.pending_snapshot = 0;
        // Wait for the next heartbeat before probing (a failing transfer is
        // not retried in a tight loop).
        self.probe_sent = !delivered;
    }

    pub(crate) fn is_paused(&self, max_msgs: usize, max_bytes: u64) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Replicate => self.inflight_full(max_msgs, max_bytes),
            ReplicationState::Snapshot => true,
        }
    }

    pub(crate) fn inflight_full(&self, max_msgs: usize, max_bytes: u64) -> bool {
        self.inflight.len() >= max_msgs.min(self.window) || self.inflight_bytes >= max_bytes
    }

    pub(crate) fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    /// Records a message carrying entries up to `last` (of `bytes`) as sent.
    pub(crate) fn sent(&mut self, last: Index, bytes: u64) {
        match self.state {
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Snapshot => {}
            ReplicationState::Replicate => {
                self.next = last + 1;
                self.inflight.push_back((last, bytes));
                self.inflight_bytes += bytes;
            }
        }
    }

    /// Frees in-flight slots for messages up to `index`, widening the
    /// window by one for each.
    pub(crate) fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
            self.window = self.window.saturating_add(1);
        }
    }

    /// Frees the oldest in-flight slot: a heartbeat answer while the window is
    /// full suggests a message was lost, and this lets the next send discover
    /// it through a rejection instead of stalling.
    pub(crate) fn free_first(&mut self) {
        if let Some((_, bytes)) = self.inflight.pop_front() {
            self.inflight_bytes -= bytes;
        }
    }

    /// Handles a successful append up to `index`; `round` is the leader's
    /// current round. Returns whether `matched` moved.
    pub(crate) fn on_success(&mut self, index: Index, round: u64) -> bool {
        let moved = index > self.matched;
        if moved {
            self.matched = index;
        }
        if self.state == ReplicationState::Replicate {
            self.next = self.next.max(index + 1);
        }
        match self.state {
            ReplicationState::Probe if index + 1 >= self.next => {
                // The probe was accepted: the position is known, start pipelining.
                self.become_replicate(round);
            }
            // An answer to a heartbeat below the probe point says nothing
            // about the probe: keep waiting for it.
            // No probe outstanding: resume from what the follower has (a
            // snapshot it reported delivered but did not install leaves
            // `next` past what it holds). Not while the probe waits for a
            // read-back: `index` may be a new leader's 0, and the probe's
            // position (found by backtracking) would be lost, so the
            // follower's whole log would be sent again.
            ReplicationState::Probe if !self.probe_sent && self.fetching.is_none() => {
                self.next = index + 1
            }
            ReplicationState::Probe => {}
            ReplicationState::Replicate => self.free_to(index),
            // The follower installed the snapshot (or already had what it
            // covers): its position is known, start pipelining.
            ReplicationState::Snapshot if index >= self.pending_snapshot => {
                self.become_replicate(round);
            }
            ReplicationState::Snapshot => {}
        }
        moved
    }

    /// Handles a rejection of the request whose previous index was
    /// `rejected_prev`, sent in the leader's round `request_round`;
    /// `next_hint` is where the leader's hint arithmetic says to resume.
    /// Returns false for a rejection that changes nothing: stale, or no news
    /// to the pipeline (see the module docs).
    pub(crate) fn on_reject(
        &mut self,
        rejected_prev: Index,
        next_hint: Index,
        request_round: u64,
    ) -> bool {
        let hole = next_hint.min(rejected_prev);
        if hole <= self.matched {
            // The follower answered before it held what it has since
            // acknowledged (`hole <= rejected_prev`): an older request.
            return false;
        }
        match self.state {
            ReplicationState::Replicate => {
                if hole <= self.pipeline_from && request_round <= self.pipeline_round {
                    // This pipeline's first message is still on its way.
                    return false;
                }
            }
            ReplicationState::Probe => {
                if rejected_prev.checked_add(1) != Some(self.next) {
                    return false; // not the outstanding probe
                }
            }
            // Heartbeats to a follower waiting for a snapshot are rejected;
            // only the transfer's outcome moves it.
            ReplicationState::Snapshot => return false,
        }
        // Only a pipeline that broke closes the window: a probe that backs
        // off to where a lagging follower is (a new leader's first probe,
        // say) is ordinary backtracking, after which the whole window goes.
        if self.state == ReplicationState::Replicate {
            self.window = 1;
        }
        self.state = ReplicationState::Probe;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.probe_sent = false;
        // Back at least one (`hole <= rejected_prev`), above what matches.
        self.next = hole;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_becomes_replicate_on_success_and_pipelines() {
        let mut p = Progress::new(11);
        p.sent(12, 10);
        assert!(p.is_paused(4, 1000));
        p.on_success(10, 0);
        assert_eq!(p.state, ReplicationState::Replicate);
        assert_eq!(p.next, 11);
        for last in [12, 14, 16, 18] {
            assert!(!p.is_paused(4, 1000));
            p.sent(last, 10);
        }
        assert!(
            p.is_paused(4, 1000),
            "four messages in flight fill the window"
        );
        p.on_success(14, 0);
        assert_eq!(p.inflight_count(), 2);
        assert_eq!(p.next, 19);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(5);
        p.on_success(8, 0);
        p.sent(12, 1);
        assert!(!p.on_reject(7, 3, 0), "rejected_prev below match is stale");
        assert!(
            !p.on_reject(10, 8, 1),
            "a hint below what the follower acknowledged is stale"
        );
        assert!(p.on_reject(10, 10, 0), "a hole past the pipeline's start");
        assert_eq!(p.state, ReplicationState::Probe);
        assert_eq!(p.next, 10);
        assert!(!p.on_reject(11, 9, 0), "not the outstanding probe");
        assert!(!p.on_reject(9, 1, 0), "stale, even for the probe's prev");
        assert!(p.on_reject(9, 9, 0));
        assert_eq!(p.next, 9);
    }

    #[test]
    fn a_rejection_restarts_the_pipeline_only_with_news() {
        let mut p = Progress::new(5);
        p.on_success(8, 3); // pipelining from 9, started in round 3
        for last in 9..=20 {
            p.sent(last, 1);
        }
        // Overtaken by later messages: the follower still lacks 9, which
        // this pipeline sent in this round.
        assert!(!p.on_reject(15, 9, 3));
        assert!(!p.on_reject(12, 9, 2), "older pipelines' rejections too");
        assert_eq!(p.state, ReplicationState::Replicate);
        // The follower got past 9 and misses 11: restart there.
        assert!(p.on_reject(14, 11, 3));
        assert_eq!((p.state, p.next), (ReplicationState::Probe, 11));
        // Its duplicate (and the rest of that pipeline) changes nothing.
        assert!(!p.on_reject(14, 11, 3));
        p.on_success(11, 4);
        assert_eq!((p.state, p.next), (ReplicationState::Replicate, 12));
        assert!(!p.on_reject(14, 11, 3), "stale: 11 is acknowledged");
        assert!(!p.on_reject(16, 12, 4), "12 is on its way");
        // A request sent a round after the pipeline started finds 12 still
        // missing: lost, send it again.
        assert!(p.on_reject(19, 12, 5));
        assert_eq!((p.state, p.next), (ReplicationState::Probe, 12));
    }

    #[test]
    fn probe_backtracking_keeps_the_window_open() {
        let mut p = Progress::new(11);
        p.sent(12, 1); // the probe at prev 10
        assert!(p.on_reject(10, 6, 0)); // the follower holds up to 5
        p.sent(6, 1);
        p.on_success(6, 0); // pipelining from 7
        for last in 7..=10 {
            assert!(!p.is_paused(4, 1000), "the whole window after a probe");
            p.sent(last, 1);
        }
    }

    #[test]
    fn a_restart_closes_the_window_and_acknowledgements_widen_it() {
        let mut p = Progress::new(5);
        p.on_success(8, 0);
        for last in 9..=12 {
            assert!(!p.is_paused(4, 1000));
            p.sent(last, 1);
        }
        assert!(p.is_paused(4, 1000), "the configured limit");
        assert!(p.on_reject(11, 10, 1));
        p.on_success(10, 1);
        assert_eq!(p.state, ReplicationState::Replicate);
        p.sent(11, 1);
        assert!(p.is_paused(4, 1000), "one message after a restart");
        p.on_success(11, 1);
        p.sent(12, 1);
        p.sent(13, 1);
        assert!(p.is_paused(4, 1000), "two after one acknowledgement");
        p.on_success(13, 1);
        for last in 14..=17 {
            assert!(!p.is_paused(4, 1000));
            p.sent(last, 1);
        }
        assert!(p.is_paused(4, 1000), "then the configured limit again");
    }
}
