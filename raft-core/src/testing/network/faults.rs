//! Faults beyond the links: a random delivery order with losses, and
//! storage that answers read-backs late, with a failure, or never.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Delivery, Network};
use crate::engine::EntryFetch;
use crate::NodeId;

/// What happens to one read-back a leader asks for
/// ([`Ready::fetch_entries`](crate::engine::Ready::fetch_entries)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFate {
    /// Answered at the next delivery step after the write before it is
    /// done, as a driver's storage task answers after the `Ready` that
    /// asked (the default).
    Prompt,
    /// Answered by the first delivery round once [`Network::now`] has
    /// advanced this many ticks.
    Late(u64),
    /// Answered with no entries (a failed read), by the next delivery round.
    Fail,
    /// Never answered (a read that hangs, or whose answer is lost).
    Lost,
}

/// How a node's storage answers its read-backs
/// ([`Node::fetch_policy`](super::Node::fetch_policy)).
#[derive(Debug, Clone, Copy)]
pub enum FetchPolicy {
    /// Every read-back meets this fate.
    Always(FetchFate),
    /// Each read-back's fate is drawn from the network's
    /// [`rng`](Network::rng) by this function.
    Draw(fn(&mut ChaCha8Rng) -> FetchFate),
}

impl Network {
    /// Delivers messages in a random order from now on, drawn from
    /// [`rng`](Self::rng) seeded with `seed` (print it: the seed replays
    /// the run), losing each with probability `drop_rate`.
    ///
    /// # Panics
    ///
    /// When `drop_rate` is not within `[0, 1]`.
    pub fn random_delivery(&mut self, seed: u64, drop_rate: f64) {
        assert!(
            (0.0..=1.0).contains(&drop_rate),
            "drop rate {drop_rate} is not a probability"
        );
        self.delivery = Delivery::Random;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self.drop_rate = drop_rate;
    }

    /// Sets every node's [`fetch_policy`](super::Node::fetch_policy).
    pub fn set_fetch_policy(&mut self, policy: FetchPolicy) {
        for node in self.nodes.values_mut() {
            node.fetch_policy = policy;
        }
    }

    /// Queues node `id`'s read-backs, once the write before them is done:
    /// due now (answered by the next delivery step, never inside this
    /// `Ready`), later, or never.
    pub(super) fn fetch(&mut self, id: NodeId, fetches: Vec<EntryFetch>) {
        for fetch in fetches {
            let fate = match self.node(id).fetch_policy {
                FetchPolicy::Always(fate) => fate,
                FetchPolicy::Draw(draw) => draw(&mut self.rng),
            };
            let now = self.now;
            let node = self.node_mut(id);
            match fate {
                FetchFate::Prompt => node.fetches.push((fetch, now, false)),
                FetchFate::Late(ticks) => node.fetches.push((fetch, now + ticks, false)),
                FetchFate::Fail => node.fetches.push((fetch, now, true)),
                FetchFate::Lost => {}
            }
        }
    }

    /// Answers every queued read-back that is due at [`now`](Self::now),
    /// on every node, and handles the output. Returns whether any was.
    pub(super) fn serve_fetches(&mut self) -> bool {
        let now = self.now;
        let mut served = false;
        for id in self.ids() {
            let node = self.node_mut(id);
            if node.fetches.iter().all(|(_, at, _)| *at > now) {
                continue;
            }
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut node.fetches)
                .into_iter()
                .partition(|(_, at, _)| *at <= now);
            node.fetches = later;
            for (fetch, _, fail) in due {
                let entries = if fail {
                    Vec::new()
                } else {
                    node.disk.read_back(&fetch)
                };
                node.read_back += entries.len() as u64;
                node.engine.on_entries_fetched(fetch, entries);
            }
            served = true;
            self.process(id);
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Role;
    use crate::testing::network::Network;

    /// Node 3 misses `n` entries while refusing them, then accepts again.
    fn lagging_follower(n: u64) -> Network {
        let mut net = Network::with_config(3, |c| {
            c.max_message_entries = 4;
            c.max_log_cache_bytes = 0;
        });
        net.elect(1);
        net.node_mut(3).refuse_entries = true;
        for i in 0..n {
            net.propose(1, &format!("e{i}")).unwrap();
            net.tick_all(1);
        }
        assert!(net.node(3).applied_index < net.node(1).applied_index);
        net.node_mut(3).refuse_entries = false;
        net
    }

    #[test]
    fn a_node_refusing_entries_falls_behind_and_catches_up_with_read_backs() {
        let mut net = lagging_follower(10);
        let before = net.node(1).read_back;
        net.tick_all(20);
        assert_eq!(net.node(3).applied_index, net.node(1).applied_index);
        assert!(
            net.node(1).read_back > before,
            "the leader read entries back"
        );
    }

    /// A prompt read-back is not answered inside the `Ready` that asked for
    /// it (the driver's storage task answers after the engine has moved
    /// on): it waits, queued, for the next delivery step, which answers it.
    #[test]
    fn a_prompt_read_back_waits_for_the_next_step() {
        let mut net = lagging_follower(10);
        let before = net.node(1).read_back;
        // The first read-back seen queued, before any was answered.
        let queued = |n: &Network| n.node(1).pending_fetches() > 0 && n.node(1).read_back == before;
        let mut waited = false;
        for _ in 0..50 {
            net.now += 1;
            for id in net.ids() {
                net.tick(id, 1);
                waited |= queued(&net);
            }
            while net.deliver_one() {
                waited |= queued(&net);
            }
            if net.node(3).applied_index == net.node(1).applied_index {
                break;
            }
        }
        assert_eq!(net.node(3).applied_index, net.node(1).applied_index);
        assert!(
            net.node(1).read_back > before,
            "the leader read entries back"
        );
        assert!(
            waited,
            "the read-back was answered inside the write that asked for it"
        );
    }

    #[test]
    fn late_read_backs_wait_for_virtual_time() {
        let mut net = lagging_follower(10);
        net.set_fetch_policy(FetchPolicy::Always(FetchFate::Late(5)));
        net.tick_all_until(50, |n| n.node(1).pending_fetches() > 0);
        let applied = net.node(3).applied_index;
        net.tick_all(4);
        assert_eq!(
            net.node(3).applied_index,
            applied,
            "nothing arrives before the read-back is due"
        );
        net.tick_all_until(200, |n| n.node(3).applied_index == n.node(1).applied_index);
    }

    #[test]
    fn failed_and_lost_read_backs_bring_nothing() {
        for fate in [FetchFate::Fail, FetchFate::Lost] {
            let mut net = lagging_follower(10);
            let applied = net.node(3).applied_index;
            let read_back = net.node(1).read_back;
            net.set_fetch_policy(FetchPolicy::Always(fate));
            net.tick_all(10);
            assert_eq!(net.node(3).applied_index, applied, "{fate:?}");
            assert_eq!(net.node(1).read_back, read_back, "{fate:?}");
            net.set_fetch_policy(FetchPolicy::Always(FetchFate::Prompt));
            net.tick_all_until(500, |n| n.node(3).applied_index == n.node(1).applied_index);
        }
    }

    /// Without losses the order alone must depend on the seed (a random
    /// mode that delivered in FIFO order passed every other test), and a
    /// drop rate of 1 must lose everything (one that never dropped did too).
    #[test]
    fn random_delivery_reorders_and_loses() {
        let run = |seed, drop_rate| {
            let mut net = Network::new(3);
            net.elect(1);
            let applied = net.node(2).applied_index;
            net.random_delivery(seed, drop_rate);
            for i in 0..20 {
                let _ = net.propose(1, &format!("e{i}"));
                net.tick_all(1);
            }
            let sent: Vec<_> = net
                .sent
                .iter()
                .map(|s| (s.msg.from, s.msg.to, s.msg.body.kind()))
                .collect();
            (sent, applied, net.node(2).applied_index)
        };
        let orders: std::collections::BTreeSet<_> = (0..6).map(|s| run(s, 0.0).0).collect();
        assert!(orders.len() > 1, "the delivery order depends on the seed");
        let (_, before, after) = run(3, 1.0);
        assert_eq!(before, after, "every message is lost at a drop rate of 1");
    }

    #[test]
    fn random_delivery_with_losses_replays_per_seed() {
        let run = |seed| {
            let mut net = Network::new(3);
            net.elect(1);
            net.random_delivery(seed, 0.2);
            for i in 0..20 {
                let _ = net.propose(1, &format!("e{i}"));
                net.tick_all(1);
            }
            let sent: Vec<_> = net.sent.iter().map(|s| (s.msg.from, s.msg.to)).collect();
            (sent, net.node(2).applied_index, net.role(1))
        };
        let a = run(11);
        assert_eq!(a, run(11), "a seed replays the same run");
        assert_eq!(a.2, Role::Leader);
        let runs: std::collections::BTreeSet<_> = (0..6).map(|s| run(s).0).collect();
        assert!(runs.len() > 1, "the order and losses depend on the seed");
    }
}
