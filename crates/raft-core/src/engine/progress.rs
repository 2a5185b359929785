//! What a leader knows about each follower's log (paper Figure 2's
//! `nextIndex`/`matchIndex`) and the flow control around it: a follower is
//! probed one message at a time until its log position is found, then
//! entries are pipelined to it, bounded by in-flight messages and bytes.

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
        }
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
            ReplicationState::Replicate => {
                self.inflight.len() >= max_msgs || self.inflight_bytes >= max_bytes
            }
            ReplicationState::Snapshot => true,
        }
    }

    pub(crate) fn inflight_full(&self, max_msgs: usize, max_bytes: u64) -> bool {
        self.inflight.len() >= max_msgs || self.inflight_bytes >= max_bytes
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

    /// Frees in-flight slots for messages up to `index`.
    pub(crate) fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
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

    /// Handles a successful append up to `index`. Returns whether `matched` moved.
    pub(crate) fn on_success(&mut self, index: Index) -> bool {
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
                self.state = ReplicationState::Replicate;
                self.next = self.matched + 1;
                self.probe_sent = false;
                self.inflight.clear();
                self.inflight_bytes = 0;
            }
            // An answer to a heartbeat below the probe point says nothing
            // about the probe: keep waiting for it.
            // No probe outstanding: resume from what the follower has (a
            // snapshot it reported delivered but did not install leaves
            // `next` past what it holds).
            ReplicationState::Probe if !self.probe_sent => self.next = index + 1,
            ReplicationState::Probe => {}
            ReplicationState::Replicate => self.free_to(index),
            // The follower installed the snapshot (or already had what it
            // covers): its position is known, start pipelining.
            ReplicationState::Snapshot if index >= self.pending_snapshot => {
                self.state = ReplicationState::Replicate;
                self.next = self.matched + 1;
                self.pending_snapshot = 0;
            }
            ReplicationState::Snapshot => {}
        }
        moved
    }

    /// Handles a rejection of the request whose previous index was
    /// `rejected_prev`; `next_hint` is where the leader's hint arithmetic
    /// says to resume. Returns false for a stale rejection that changes nothing.
    pub(crate) fn on_reject(&mut self, rejected_prev: Index, next_hint: Index) -> bool {
        match self.state {
            ReplicationState::Replicate => {
                if rejected_prev <= self.matched {
                    return false; // answers an older request, already superseded
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
        self.state = ReplicationState::Probe;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.probe_sent = false;
        // Move back at least one, never at or below what is known to match.
        self.next = next_hint.min(rejected_prev).max(self.matched + 1);
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
        p.on_success(10);
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
        p.on_success(14);
        assert_eq!(p.inflight_count(), 2);
        assert_eq!(p.next, 19);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(5);
        p.on_success(8);
        p.sent(12, 1);
        assert!(!p.on_reject(7, 3), "rejected_prev below match is stale");
        assert!(p.on_reject(10, 9));
        assert_eq!(p.state, ReplicationState::Probe);
        assert_eq!(p.next, 9);
        assert!(!p.on_reject(4, 2), "not the outstanding probe");
        // A hint below the match index is clamped.
        assert!(p.on_reject(8, 1));
        assert_eq!(p.next, 9);
    }
}
