//! The nemesis: faults chosen from a seeded RNG, applied to the cluster for a
//! while, then healed. Network faults are nftables rules and tc qdiscs in
//! the node namespaces ([`crate::netns`]); process faults are signals
//! ([`crate::cluster`]); a membership replacement is a sequence of API
//! calls and a new node ([`replace()`]).
//!
//! The schedule (which fault, on which nodes, for how long, after how long a
//! quiet period) follows from the seed alone; where a fault targets "the
//! leader", the node is whichever one the cluster reports at that moment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::cluster::{Cluster, PEER_PORT};
use crate::error::ChaosError;
use crate::netns::{NodeFaults, Redirect};
use crate::probe::Probe;
use crate::relay::Relay;

mod replace;

pub use replace::replace;

/// A fault, resolved to concrete nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a node; restart it when healing.
    Kill {
        /// The node.
        node: u64,
        /// Whether it was chosen as the leader.
        leader: bool,
    },
    /// SIGSTOP a node; SIGCONT it when healing.
    Pause {
        /// The node.
        node: u64,
    },
    /// Cut all traffic between the groups (each node talks only within its
    /// group). Isolating the leader and majority/minority splits are this.
    Partition {
        /// Disjoint groups covering all nodes.
        groups: Vec<BTreeSet<u64>>,
        /// What kind of split, for the summary.
        kind: &'static str,
    },
    /// Two halves that cannot talk to each other, and one node both reach.
    Bridge {
        /// One half.
        left: BTreeSet<u64>,
        /// The other half.
        right: BTreeSet<u64>,
        /// The node in both.
        bridge: u64,
    },
    /// `to` drops everything `from` sends it; its own packets still go out.
    OneWay {
        /// The nodes whose packets are lost.
        from: BTreeSet<u64>,
        /// The node that does not hear them.
        to: u64,
    },
    /// Random loss of this percentage of node-to-node packets, everywhere.
    Loss {
        /// Percentage dropped.
        pct: u8,
    },
    /// Every node's egress limited to this bandwidth.
    Slow {
        /// kbit/s.
        kbit: u32,
    },
    /// Every node-to-node datagram (QUIC) delayed by `base_ms` plus a
    /// uniform draw from `0..=jitter_ms`, each on its own, so a jitter
    /// reorders them; through the relay of [`crate::relay`].
    Delay {
        /// Fixed delay, ms, each way.
        base_ms: u32,
        /// Largest extra delay, ms.
        jitter_ms: u32,
        /// Seed of the per-datagram draws.
        seed: u64,
    },
    /// Remove a voter from the membership, stop it for good, and add a
    /// fresh node (new id, empty data) as a learner, then promote it.
    Replace {
        /// The voter removed.
        node: u64,
    },
}

impl Fault {
    /// The fault's kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { leader: true, .. } => "kill-leader",
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Partition { kind, .. } => kind,
            Fault::Bridge { .. } => "bridge",
            Fault::OneWay { .. } => "one-way",
            Fault::Loss { .. } => "loss",
            Fault::Slow { .. } => "slow",
            Fault::Delay { .. } => "delay",
            Fault::Replace { .. } => "replace",
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let set = |s: &BTreeSet<u64>| format!("{s:?}");
        match self {
            Fault::Kill { node, .. } => format!("{} node {node}", self.kind()),
            Fault::Pause { node } => format!("pause node {node}"),
            Fault::Partition { groups, kind } => {
                let g: Vec<String> = groups.iter().map(set).collect();
                format!("{kind} {}", g.join(" | "))
            }
            Fault::Bridge {
                left,
                right,
                bridge,
            } => format!("bridge {} | {} via node {bridge}", set(left), set(right)),
            Fault::OneWay { from, to } => format!("one-way: node {to} drops from {}", set(from)),
            Fault::Loss { pct } => format!("loss {pct}% between nodes"),
            Fault::Slow { kbit } => format!("slow {kbit} kbit/s egress"),
            Fault::Delay {
                base_ms, jitter_ms, ..
            } => format!("delay {base_ms} ms + up to {jitter_ms} ms jitter between nodes"),
            Fault::Replace { node } => format!("replace node {node} by a fresh node"),
        }
    }
}

/// A fault as it happened, for the summary and the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// [`Fault::kind`].
    pub kind: String,
    /// [`Fault::describe`].
    pub detail: String,
    /// When it was applied (µs since the start of the run).
    pub start_us: u64,
    /// When it was healed.
    pub end_us: Option<u64>,
}

/// Chooses a fault. `leader` is the current leader, if known.
pub fn choose(rng: &mut ChaCha8Rng, ids: &[u64], leader: Option<u64>) -> Fault {
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(rng);
    let any = shuffled.first().copied().unwrap_or(1);
    let leader_or_any = leader.unwrap_or(any);
    let n = ids.len();
    match rng.gen_range(0..110) {
        0..=11 => Fault::Kill {
            node: any,
            leader: false,
        },
        // The kind follows from the seed alone (so `--faults` filters the
        // same draws on a replay); the node is the leader when one is known.
        12..=21 => Fault::Kill {
            node: leader_or_any,
            leader: true,
        },
        22..=33 => Fault::Pause {
            node: if rng.gen_bool(0.5) {
                leader_or_any
            } else {
                any
            },
        },
        34..=45 => {
            let rest: BTreeSet<u64> = ids
                .iter()
                .copied()
                .filter(|i| *i != leader_or_any)
                .collect();
            Fault::Partition {
                groups: vec![BTreeSet::from([leader_or_any]), rest],
                kind: "isolate-leader",
            }
        }
        46..=59 => {
            let minority = rng.gen_range(1..=(n.saturating_sub(1) / 2).max(1));
            let small: BTreeSet<u64> = shuffled[..minority.min(n)].iter().copied().collect();
            let big: BTreeSet<u64> = shuffled[minority.min(n)..].iter().copied().collect();
            Fault::Partition {
                groups: vec![small, big],
                kind: "split",
            }
        }
        60..=71 if n >= 3 => {
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let half = rest.len() / 2;
            Fault::Bridge {
                left: rest[..half].iter().copied().collect(),
                right: rest[half..].iter().copied().collect(),
                bridge,
            }
        }
        72..=81 => Fault::OneWay {
            from: ids
                .iter()
                .copied()
                .filter(|i| *i != leader_or_any)
                .collect(),
            to: leader_or_any,
        },
        82..=91 => Fault::Loss {
            pct: *[10u8, 25, 40].choose(rng).unwrap_or(&10),
        },
        92..=99 => Fault::Slow {
            kbit: *[128u32, 512, 2048].choose(rng).unwrap_or(&512),
        },
        _ => {
            // From a LAN's jitter to a WAN's latency; the election timeout
            // the harness gives nodes is 500 ms.
            let (base_ms, jitter_ms) = *[(1u32, 4u32), (5, 20), (30, 30), (80, 40)]
                .choose(rng)
                .unwrap_or(&(5, 20));
            Fault::Delay {
                base_ms,
                jitter_ms,
                seed: rng.gen(),
            }
        }
    }
}

/// The network rules that `fault` needs on each node (empty for process
/// faults).
pub fn network_faults(fault: &Fault, ids: &[u64]) -> BTreeMap<u64, NodeFaults> {
    let mut out: BTreeMap<u64, NodeFaults> =
        ids.iter().map(|id| (*id, NodeFaults::default())).collect();
    let mut cut = |a: u64, b: u64| {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(f) = out.get_mut(&x) {
                f.drop_from.insert(y);
                f.drop_to.insert(y);
            }
        }
    };
    match fault {
        Fault::Partition { groups, .. } => {
            for (i, g) in groups.iter().enumerate() {
                for h in &groups[i + 1..] {
                    for &a in g {
                        for &b in h {
                            cut(a, b);
                        }
                    }
                }
            }
        }
        Fault::Bridge { left, right, .. } => {
            for &a in left {
                for &b in right {
                    cut(a, b);
                }
            }
        }
        Fault::OneWay { from, to } => {
            if let Some(f) = out.get_mut(to) {
                f.drop_from.extend(from.iter().copied());
            }
        }
        Fault::Loss { pct } => out.values_mut().for_each(|f| f.loss_pct = *pct),
        Fault::Slow { kbit } => out.values_mut().for_each(|f| f.rate_kbit = Some(*kbit)),
        // Needs the relay's ports: see [`apply`].
        Fault::Kill { .. } | Fault::Pause { .. } | Fault::Replace { .. } | Fault::Delay { .. } => {}
    }
    out
}

/// Applies `fault` to the cluster.
///
/// # Errors
///
/// When a network rule cannot be written.
pub fn apply(cluster: &mut Cluster, fault: &Fault) -> Result<(), ChaosError> {
    match fault {
        Fault::Kill { node, .. } => {
            if let Some(n) = cluster.nodes.get_mut(node) {
                n.kill9();
            }
        }
        Fault::Pause { node } => {
            if let Some(n) = cluster.nodes.get_mut(node) {
                n.pause();
            }
        }
        // Asynchronous, with its own steps: see [`replace`].
        Fault::Replace { .. } => {}
        Fault::Delay {
            base_ms,
            jitter_ms,
            seed,
        } => {
            let ids = cluster.ids();
            let relay = cluster
                .relay
                .get_or_insert_with(|| Relay::new(cluster.net.client_ip()));
            relay.set_delay(
                Duration::from_millis(u64::from(*base_ms)),
                Duration::from_millis(u64::from(*jitter_ms)),
                *seed,
            );
            for &from in &ids {
                let mut redirect = Vec::new();
                for &to in ids.iter().filter(|t| **t != from) {
                    let dest = SocketAddrV4::new(cluster.net.node_ip(to), PEER_PORT);
                    redirect.push(Redirect {
                        to,
                        port: PEER_PORT,
                        via_port: relay.port_for(from, to, dest)?,
                    });
                }
                cluster.net.set_faults(
                    from,
                    &NodeFaults {
                        redirect,
                        ..NodeFaults::default()
                    },
                )?;
            }
        }
        _ => {
            let ids = cluster.ids();
            for (id, f) in network_faults(fault, &ids) {
                cluster.net.set_faults(id, &f)?;
            }
        }
    }
    Ok(())
}

/// Removes every fault: network rules, paused and killed nodes.
///
/// # Errors
///
/// When a rule cannot be removed or a node cannot be restarted.
pub fn heal(cluster: &mut Cluster) -> Result<(), ChaosError> {
    // Revive the nodes even when a rule cannot be removed.
    let net = cluster.net.heal_all();
    let nodes = cluster.revive_all();
    net.and(nodes)
}

/// Settings of the nemesis schedule.
#[derive(Debug, Clone)]
pub struct NemesisConfig {
    /// Quiet time between faults, min and max.
    pub quiet_ms: (u64, u64),
    /// How long a fault lasts, min and max.
    pub hold_ms: (u64, u64),
    /// Probability that a network fault comes with a kill or pause of a
    /// random node at the same time.
    pub combine_p: f64,
    /// Probability that the next fault is a membership change (replace a
    /// voter by a fresh node) instead; 0 disables them.
    pub replace_p: f64,
    /// The fault kinds allowed ([`FAULT_KINDS`]); `None`: all.
    pub kinds: Option<BTreeSet<String>>,
}

impl Default for NemesisConfig {
    fn default() -> Self {
        Self {
            quiet_ms: (1000, 3000),
            hold_ms: (2000, 6000),
            combine_p: 0.25,
            replace_p: 0.08,
            kinds: None,
        }
    }
}

/// Chooses the next faults (one, or a network fault plus a process fault),
/// asking the nodes for their leader.
pub async fn next_faults(
    rng: &mut ChaCha8Rng,
    cfg: &NemesisConfig,
    probe: &Probe,
    cluster: &Cluster,
) -> Vec<Fault> {
    let ids = cluster.ids();
    let leader = probe.current_leader(&cluster.urls()).await;
    let allowed = |kind: &str| cfg.kinds.as_ref().is_none_or(|k| k.contains(kind));
    if rng.gen_bool(cfg.replace_p) && allowed("replace") {
        return vec![Fault::Replace {
            node: ids[rng.gen_range(0..ids.len())],
        }];
    }
    // Draw until a fault of an allowed kind comes up (bounded: with no
    // allowed kind but `replace`, there is no fault this time).
    let Some(first) = (0..FAULT_DRAWS_MAX)
        .map(|_| choose(rng, &ids, leader))
        .find(|f| allowed(f.kind()))
    else {
        return Vec::new();
    };
    let mut faults = vec![first.clone()];
    let is_network = !matches!(first, Fault::Kill { .. } | Fault::Pause { .. });
    if is_network && rng.gen_bool(cfg.combine_p) {
        let node = ids[rng.gen_range(0..ids.len())];
        let extra = if rng.gen_bool(0.5) {
            // A random node, the leader or not: a plain kill.
            Fault::Kill {
                node,
                leader: false,
            }
        } else {
            Fault::Pause { node }
        };
        if allowed(extra.kind()) {
            faults.push(extra);
        }
    }
    faults
}

/// Draws of [`choose`] before giving up on finding an allowed kind.
const FAULT_DRAWS_MAX: usize = 1000;

/// Every fault kind, as [`Fault::kind`] names them.
pub const FAULT_KINDS: [&str; 11] = [
    "kill",
    "kill-leader",
    "pause",
    "isolate-leader",
    "split",
    "bridge",
    "one-way",
    "loss",
    "slow",
    "delay",
    "replace",
];

/// A duration in `range` (milliseconds), from the RNG.
pub fn pick_ms(rng: &mut ChaCha8Rng, range: (u64, u64)) -> Duration {
    Duration::from_millis(rng.gen_range(range.0..=range.1.max(range.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn partitions_cut_both_directions_between_groups_only() {
        let ids = [1, 2, 3, 4, 5];
        let f = Fault::Partition {
            groups: vec![BTreeSet::from([1, 2]), BTreeSet::from([3, 4, 5])],
            kind: "split",
        };
        let rules = network_faults(&f, &ids);
        assert_eq!(rules[&1].drop_from, BTreeSet::from([3, 4, 5]));
        assert_eq!(rules[&1].drop_to, BTreeSet::from([3, 4, 5]));
        assert_eq!(rules[&4].drop_from, BTreeSet::from([1, 2]));
    }

    #[test]
    fn a_bridge_node_hears_both_halves() {
        let ids = [1, 2, 3, 4, 5];
        let f = Fault::Bridge {
            left: BTreeSet::from([1, 2]),
            right: BTreeSet::from([4, 5]),
            bridge: 3,
        };
        let rules = network_faults(&f, &ids);
        assert!(rules[&3].drop_from.is_empty() && rules[&3].drop_to.is_empty());
        assert_eq!(rules[&1].drop_from, BTreeSet::from([4, 5]));
        assert_eq!(rules[&5].drop_to, BTreeSet::from([1, 2]));
    }

    #[test]
    fn the_schedule_follows_from_the_seed() {
        let ids = [1, 2, 3];
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..50)
                .map(|_| choose(&mut rng, &ids, Some(2)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // Every kind drawn is one `--faults` accepts.
        for f in run(10) {
            assert!(FAULT_KINDS.contains(&f.kind()), "{f:?}");
        }
        // Every split leaves a group with a majority-or-less and covers all.
        for f in run(9) {
            if let Fault::Partition { groups, .. } = f {
                let all: BTreeSet<u64> = groups.iter().flatten().copied().collect();
                assert_eq!(all, BTreeSet::from(ids));
            }
        }
    }
}
