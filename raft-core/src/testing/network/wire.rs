//! [`Links`]: messages in flight and the state of the links between nodes,
//! shared by the engine test network ([`Network`](super::Network)) and
//! raft-core's deterministic simulation (`raft-core/tests/sim`).
//!
//! A packet is anything that carries a message (the engine network sends
//! bare [`Message`]s; the simulation adds a snapshot's data beside its
//! header). Each packet is deliverable from a virtual time on (`0`: at
//! once). Packets can be taken in the order they were put in flight
//! ([`Links::pop_front`], FIFO) or at random among the deliverable ones
//! ([`Links::take_random`], drawn from the caller's generator, so a seed
//! replays the same order). Directed links can be cut and healed; the
//! owner decides what a cut loses (checking [`Links::is_cut`] when it sends
//! and when it delivers).

use std::collections::{BTreeSet, VecDeque};

use rand::Rng;

use crate::{Message, NodeId};

/// A packet in flight and the first virtual time it may be delivered at.
#[derive(Debug, Clone)]
struct InFlight<P> {
    packet: P,
    deliver_at: u64,
}

/// Packets in flight and the cut directed links, shared by the engine test
/// [`Network`](super::Network) and raft-core's deterministic simulation.
///
/// A packet is anything that carries a message (the engine network sends
/// bare [`Message`]s; the simulation adds a snapshot's data beside its
/// header), deliverable from a virtual time on (`0`: at once). Packets are
/// taken in the order they were put in flight ([`Links::pop_front`]) or at
/// random among the deliverable ones ([`Links::take_random`], drawn from
/// the caller's generator, so a seed replays the same order). Directed
/// links can be cut and healed; the owner decides what a cut loses
/// (checking [`Links::is_cut`] when it sends and when it delivers).
#[derive(Debug, Clone)]
pub struct Links<P = Message> {
    in_flight: VecDeque<InFlight<P>>,
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl<P> Default for Links<P> {
    fn default() -> Self {
        Self {
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
        }
    }
}

impl<P> Links<P> {
    /// No packet in flight and every link up.
    pub fn new() -> Self {
        Self::default()
    }

    // ----- links -------------------------------------------------------------

    /// Whether the directed link `from -> to` is cut.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.is_empty() && self.cut.contains(&(from, to))
    }

    /// Cuts the directed link `from -> to` (a node's link to itself is
    /// never cut).
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Cuts the links between `a` and `b`, both ways.
    pub fn cut_both(&mut self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The cut links as a bitmask over `(from - 1) * 8 + (to - 1)` (ids 1 to
    /// 8), for compact traces.
    ///
    /// # Panics
    ///
    /// When a cut link involves an id outside `1..=8`.
    pub fn cut_mask(&self) -> u64 {
        self.cut.iter().fold(0, |m, &(f, t)| {
            assert!(
                (1..=8).contains(&f) && (1..=8).contains(&t),
                "cut_mask covers ids 1 to 8, not the link {f}->{t}"
            );
            m | 1 << ((f - 1) * 8 + (t - 1))
        })
    }

    /// The cut links, readable: `"1->2 2->1"`, or `"none"`.
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

    // ----- packets -----------------------------------------------------------

    /// Puts a packet in flight, deliverable at once.
    pub fn push_back(&mut self, packet: P) {
        self.push(packet, 0);
    }

    /// Puts a packet in flight, deliverable from virtual time `deliver_at` on.
    pub fn push(&mut self, packet: P, deliver_at: u64) {
        self.in_flight.push_back(InFlight { packet, deliver_at });
    }

    /// Takes the oldest packet in flight (whatever its delivery time).
    pub fn pop_front(&mut self) -> Option<P> {
        self.in_flight.pop_front().map(|f| f.packet)
    }

    /// The oldest packet in flight.
    pub fn front(&self) -> Option<&P> {
        self.in_flight.front().map(|f| &f.packet)
    }

    /// Packets in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether no packet is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The packets in flight, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &P> {
        self.in_flight.iter().map(|f| &f.packet)
    }

    /// Takes every packet in flight, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = P> + '_ {
        self.in_flight.drain(..).map(|f| f.packet)
    }

    /// How many packets may be delivered at virtual time `now`.
    pub fn deliverable(&self, now: u64) -> usize {
        self.in_flight
            .iter()
            .filter(|f| f.deliver_at <= now)
            .count()
    }

    /// Takes a packet deliverable at `now`, picked uniformly with `rng`
    /// (one draw when any is deliverable, none otherwise). The last packet
    /// in flight takes the place of the one taken, so the order left behind
    /// depends on the draws only.
    pub fn take_random(&mut self, now: u64, rng: &mut impl Rng) -> Option<P> {
        let count = self.deliverable(now);
        if count == 0 {
            return None;
        }
        let mut pick = rng.gen_range(0..count);
        let pos = self.in_flight.iter().position(|f| {
            if f.deliver_at > now {
                return false;
            }
            if pick == 0 {
                return true;
            }
            pick -= 1;
            false
        })?;
        self.in_flight.swap_remove_back(pos).map(|f| f.packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn fifo_order_is_the_order_packets_were_put_in_flight() {
        let mut l = Links::<u32>::new();
        l.push_back(1);
        l.push(2, 50);
        l.push_back(3);
        assert_eq!(l.front(), Some(&1));
        assert_eq!(l.len(), 3);
        assert_eq!(l.deliverable(0), 2);
        assert_eq!(l.pop_front(), Some(1));
        assert_eq!(l.drain().collect::<Vec<_>>(), vec![2, 3]);
        assert!(l.is_empty());
        assert_eq!(l.pop_front(), None);
    }

    #[test]
    fn take_random_takes_only_deliverable_packets_and_replays_per_seed() {
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut l = Links::<u32>::new();
            for p in 0..20 {
                l.push(p, u64::from(p % 4));
            }
            assert_eq!(l.deliverable(0), 5);
            let mut early = Vec::new();
            while let Some(p) = l.take_random(0, &mut rng) {
                early.push(p);
            }
            assert_eq!(l.len(), 15, "packets not yet deliverable stay");
            let mut sorted = early.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 4, 8, 12, 16]);
            let mut rest = Vec::new();
            while let Some(p) = l.take_random(3, &mut rng) {
                rest.push(p);
            }
            (early, rest)
        };
        assert_eq!(run(7), run(7), "a seed replays the same order");
        let orders: BTreeSet<_> = (0..8).map(run).collect();
        assert!(orders.len() > 1, "the order depends on the seed");
    }

    #[test]
    fn cuts_are_directed_and_heal_together() {
        let mut l = Links::<Message>::new();
        assert_eq!(l.describe_cuts(), "none");
        l.cut(1, 2);
        l.cut(3, 3);
        assert!(l.is_cut(1, 2));
        assert!(!l.is_cut(2, 1));
        assert!(!l.is_cut(3, 3), "a node's link to itself is never cut");
        l.cut_both(2, 3);
        assert_eq!(l.describe_cuts(), "1->2 2->3 3->2");
        assert_eq!(l.cut_mask(), 1 << 1 | 1 << 10 | 1 << 17);
        l.heal();
        assert!(!l.is_cut(1, 2));
        assert_eq!(l.cut_mask(), 0);
    }
}
