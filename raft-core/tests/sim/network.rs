//! The simulated network: a bag of messages in flight, each deliverable from
//! a virtual time on, delivered in random order (so reordered), plus a set
//! of cut directed links (symmetric partitions cut both directions,
//! asymmetric ones a single direction). A snapshot travels as its
//! `InstallSnapshot` header with the data beside it (a real transport
//! streams the data and hands the header over once all of it arrived).

use std::collections::BTreeSet;
use std::sync::Arc;

use raft_core::{Message, NodeId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::model::Kv;

/// The data of a snapshot in flight, beside its `InstallSnapshot` header.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    /// The sender's state machine at the snapshot's index.
    pub kv: Arc<Kv>,
    /// The sender's incarnation: the outcome of the transfer is reported
    /// to that process only (a restarted node forgot the transfer).
    pub sender_incarnation: u32,
}

/// A message in flight.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The message.
    pub msg: Message,
    /// The first tick at which it may be delivered.
    pub deliver_at: u64,
    /// For an `InstallSnapshot` header: the data.
    pub snapshot: Option<SnapshotData>,
}

/// Messages in flight and the link state.
#[derive(Debug, Default)]
pub struct Network {
    /// Messages in flight, in no particular order.
    queue: Vec<Packet>,
    /// Cut directed links `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl Network {
    /// Whether messages from `from` to `to` are currently lost.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.is_empty() && self.cut.contains(&(from, to))
    }

    /// Cuts the directed link `from -> to`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The cut links as a bitmask over `(from - 1) * 8 + (to - 1)`, for traces.
    pub fn cut_mask(&self) -> u64 {
        self.cut
            .iter()
            .fold(0, |m, (f, t)| m | 1 << ((f - 1) * 8 + (t - 1)))
    }

    /// Readable list of the cut links.
    pub fn describe_cuts(&self) -> String {
        if self.cut.is_empty() {
            return "none".into();
        }
        self.cut
            .iter()
            .map(|(f, t)| format!("{f}->{t}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Puts a message in flight.
    pub fn push(&mut self, msg: Message, deliver_at: u64) {
        self.queue.push(Packet {
            msg,
            deliver_at,
            snapshot: None,
        });
    }

    /// Puts a snapshot (header and data) in flight.
    pub fn push_snapshot(&mut self, msg: Message, deliver_at: u64, data: SnapshotData) {
        self.queue.push(Packet {
            msg,
            deliver_at,
            snapshot: Some(data),
        });
    }

    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// How many messages may be delivered at `now`.
    pub fn deliverable(&self, now: u64) -> usize {
        self.queue.iter().filter(|p| p.deliver_at <= now).count()
    }

    /// Removes and returns a random deliverable message.
    pub fn take_random(&mut self, now: u64, rng: &mut ChaCha8Rng) -> Option<Packet> {
        let count = self.deliverable(now);
        if count == 0 {
            return None;
        }
        let mut pick = rng.gen_range(0..count);
        let pos = self.queue.iter().position(|p| {
            if p.deliver_at > now {
                return false;
            }
            if pick == 0 {
                return true;
            }
            pick -= 1;
            false
        })?;
        Some(self.queue.swap_remove(pos))
    }
}
