//! Cluster configurations and quorum arithmetic.
//!
//! A configuration is a set of voters, optionally the set of the outgoing
//! configuration while a joint-consensus change is in progress (thesis §4.3),
//! and a set of learners that receive the log but never vote. Every quorum
//! question the engine asks goes through this module, so a joint
//! configuration needs majorities in both voter sets everywhere at once.

use std::collections::BTreeSet;

use crate::types::{Index, NodeId};

/// A cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// The voters of the (incoming) configuration.
    voters: BTreeSet<NodeId>,
    /// The voters of the outgoing configuration while a joint change is in
    /// progress; `None` outside a change.
    voters_outgoing: Option<BTreeSet<NodeId>>,
    /// Non-voting members that receive the log.
    learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration with these voters and no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            voters: voters.into_iter().collect(),
            voters_outgoing: None,
            learners: BTreeSet::new(),
        }
    }

    /// A configuration with voters and learners. A node listed in both is a voter.
    pub fn with_learners(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        let learners = learners
            .into_iter()
            .filter(|l| !voters.contains(l))
            .collect();
        Self {
            voters,
            voters_outgoing: None,
            learners,
        }
    }

    /// A joint configuration (C_old,new): decisions need a majority of `old`
    /// and a majority of `new`.
    pub fn joint(
        old: impl IntoIterator<Item = NodeId>,
        new: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        let voters: BTreeSet<NodeId> = new.into_iter().collect();
        let old: BTreeSet<NodeId> = old.into_iter().collect();
        let learners = learners
            .into_iter()
            .filter(|l| !voters.contains(l) && !old.contains(l))
            .collect();
        Self {
            voters,
            voters_outgoing: Some(old),
            learners,
        }
    }

    /// Voters of the incoming (or only) configuration.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// Voters of the outgoing configuration during a joint change.
    pub fn voters_outgoing(&self) -> Option<&BTreeSet<NodeId>> {
        self.voters_outgoing.as_ref()
    }

    /// The learners.
    pub fn learners(&self) -> &BTreeSet<NodeId> {
        &self.learners
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        self.voters_outgoing.is_some()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
            || self
                .voters_outgoing
                .as_ref()
                .is_some_and(|o| o.contains(&id))
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member (voters of both halves and learners), sorted, without duplicates.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        if let Some(o) = &self.voters_outgoing {
            all.extend(o.iter().copied());
        }
        all.extend(self.learners.iter().copied());
        all
    }

    /// Number of distinct members.
    pub fn node_count(&self) -> usize {
        self.members().len()
    }

    /// Whether the nodes for which `granted` returns true form a quorum: a
    /// majority of the voters, and during a joint change also a majority of
    /// the outgoing voters. An empty voter set never has a quorum.
    pub fn is_quorum(&self, granted: impl Fn(NodeId) -> bool) -> bool {
        let majority = |set: &BTreeSet<NodeId>| {
            !set.is_empty() && set.iter().filter(|id| granted(**id)).count() > set.len() / 2
        };
        majority(&self.voters) && self.voters_outgoing.as_ref().is_none_or(majority)
    }

    /// Whether the nodes for which `rejected` returns true make a quorum
    /// impossible for the rest.
    pub fn is_quorum_lost(&self, rejected: impl Fn(NodeId) -> bool) -> bool {
        let lost = |set: &BTreeSet<NodeId>| {
            set.iter().filter(|id| rejected(**id)).count() >= set.len().div_ceil(2)
                && !set.is_empty()
        };
        lost(&self.voters) || self.voters_outgoing.as_ref().is_some_and(lost)
    }

    /// The highest value `v` such that a quorum of voters has `value(id) >= v`
    /// (for match indexes: the highest index replicated on a quorum).
    pub fn quorum_value(&self, value: impl Fn(NodeId) -> Index) -> Index {
        let of = |set: &BTreeSet<NodeId>| {
            if set.is_empty() {
                return 0;
            }
            let mut values: Vec<Index> = set.iter().map(|id| value(*id)).collect();
            values.sort_unstable_by(|a, b| b.cmp(a));
            values[set.len() / 2]
        };
        let incoming = of(&self.voters);
        match &self.voters_outgoing {
            Some(old) => incoming.min(of(old)),
            None => incoming,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_three_is_two() {
        let m = Membership::new([1, 2, 3]);
        assert!(m.is_quorum(|id| id == 1 || id == 2));
        assert!(!m.is_quorum(|id| id == 1));
        assert_eq!(m.quorum_value(|id| [0, 5, 7, 9][id as usize]), 7);
    }

    #[test]
    fn joint_needs_both_majorities() {
        let m = Membership::joint([1, 2, 3], [3, 4, 5], []);
        assert!(!m.is_quorum(|id| [1, 2, 3].contains(&id)));
        assert!(m.is_quorum(|id| [1, 3, 4].contains(&id)));
        assert_eq!(m.quorum_value(|id| id * 10), 20);
        assert!(m.is_quorum_lost(|id| id == 4 || id == 5));
    }

    #[test]
    fn empty_configuration_has_no_quorum() {
        let m = Membership::default();
        assert!(!m.is_quorum(|_| true));
        assert_eq!(m.quorum_value(|_| 9), 0);
    }
}
