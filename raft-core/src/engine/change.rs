//! Membership changes (thesis chapter 4, paper §6): learners join with a
//! configuration entry of their own, voters change through joint consensus.
//!
//! - A configuration takes effect as soon as it is appended, on every node
//!   (thesis §4.1); the engine tracks that in `membership_log`.
//! - A change of voters goes through C_old,new, in which every decision
//!   (election, commit, check-quorum, reads) needs a majority of both sets
//!   ([`Membership::is_quorum`]); once C_old,new is committed the leader
//!   appends C_new (paper §6). The single-step conveniences (add, promote,
//!   remove one voter) use the same two steps.
//! - One change at a time: a new change is refused while the latest
//!   configuration is uncommitted or joint.
//! - A leader must have committed an entry of its own term first: otherwise
//!   a configuration left uncommitted by a previous leader could combine with
//!   a new one into two disjoint majorities (the bug in the single-server
//!   algorithm Ongaro reported on raft-dev in 2015, fixed the same way).
//! - A leader that is not a voter of C_new manages the cluster until C_new is
//!   committed, then hands leadership to the most up-to-date voter and steps
//!   down (thesis §4.2.2).
//! - Learners are added and removed with a single entry: they count in no
//!   quorum. A learner is promoted only once it is within
//!   [`Config::max_promotion_lag_entries`](crate::Config::max_promotion_lag_entries) entries
//!   of the leader (thesis §4.2.1), so it cannot stall commits.

use std::collections::BTreeSet;

use super::{Engine, Role};
use crate::membership::Membership;
use crate::types::{EntryPayload, Index, LogId, NodeId};

/// A membership change asked of the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a non-voting member that receives the log.
    AddLearner(NodeId),
    /// Makes a learner a voter, through joint consensus.
    Promote(NodeId),
    /// Makes a voter a learner, through joint consensus.
    Demote(NodeId),
    /// Removes a learner, or a voter through joint consensus.
    Remove(NodeId),
    /// Replaces the voter set, through joint consensus. Every new voter must
    /// already be a member (a learner that caught up, or a voter); voters
    /// left out are removed, unless `keep_as_learners` is set.
    SetVoters {
        /// The voters of C_new.
        voters: BTreeSet<NodeId>,
        /// Keep dropped voters as learners instead of removing them.
        keep_as_learners: bool,
    },
}

/// Why a membership change was refused. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// This node is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Another change is still in progress (its configuration is not
    /// committed yet, or the cluster is in a joint configuration).
    #[error("a membership change is already in progress (configuration at index {index})")]
    InProgress {
        /// The index of the configuration in progress.
        index: Index,
    },
    /// The leader has not committed an entry of its term yet; retry shortly.
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    LeaderNotReady,
    /// A leadership transfer is in progress.
    #[error("leadership transfer to {0} in progress")]
    TransferInProgress(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    /// The node is already a member (for an add), or already a voter (for
    /// a promotion).
    #[error("node {0} is already a {1}")]
    AlreadyMember(NodeId, &'static str),
    /// The node is not a learner (promotion) or not a voter (demotion).
    #[error("node {0} is not a {1}")]
    WrongRole(NodeId, &'static str),
    /// The learner is too far behind to be promoted.
    #[error("node {id} is {lag} entries behind the leader (at most {max} allowed); wait until it catches up")]
    Lagging {
        /// The learner.
        id: NodeId,
        /// Entries it is behind.
        lag: u64,
        /// [`Config::max_promotion_lag_entries`](crate::Config::max_promotion_lag_entries).
        max: u64,
    },
    /// The change would leave no voter.
    #[error("the change would leave the cluster without voters")]
    NoVoters,
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    InvalidId,
    /// The change would change nothing.
    #[error("the configuration already is the requested one")]
    NoChange,
}

impl Engine {
    /// Starts a membership change on the leader and returns the id of the
    /// configuration entry it appended. Learner changes finish when that
    /// entry commits; voter changes append C_old,new, and the leader appends
    /// C_new when C_old,new commits (watch [`Engine::membership`] and
    /// [`Engine::membership_committed`]).
    ///
    /// # Errors
    ///
    /// [`ChangeError`]; nothing was appended.
    pub fn change_membership(&mut self, change: MembershipChange) -> Result<LogId, ChangeError> {
        if self.role != Role::Leader {
            return Err(ChangeError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = self.transferee {
            return Err(ChangeError::TransferInProgress(t));
        }
        let (index, current) = self.membership_entry();
        if index > self.log.committed() || current.is_joint() {
            return Err(ChangeError::InProgress { index });
        }
        if !self.committed_in_current_term() {
            return Err(ChangeError::LeaderNotReady);
        }
        let next = self.next_membership(&current, change)?;
        if next == current {
            return Err(ChangeError::NoChange);
        }
        Ok(self.append_entry(EntryPayload::Membership(Box::new(next))))
    }

    /// Computes the configuration a change leads to (C_old,new for voter
    /// changes), or why it cannot be made.
    fn next_membership(
        &self,
        current: &Membership,
        change: MembershipChange,
    ) -> Result<Membership, ChangeError> {
        let voters = current.voters().clone();
        let mut learners = current.learners().clone();
        let id = match &change {
            MembershipChange::AddLearner(id)
            | MembershipChange::Promote(id)
            | MembershipChange::Demote(id)
            | MembershipChange::Remove(id) => *id,
            MembershipChange::SetVoters { .. } => 1,
        };
        if id == 0 {
            return Err(ChangeError::InvalidId);
        }
        let joint = |new: BTreeSet<NodeId>, learners: BTreeSet<NodeId>| {
            if new.is_empty() {
                return Err(ChangeError::NoVoters);
            }
            Ok(Membership::joint(voters.iter().copied(), new, learners))
        };
        match change {
            MembershipChange::AddLearner(id) => {
                if current.is_voter(id) {
                    return Err(ChangeError::AlreadyMember(id, "voter"));
                }
                if !learners.insert(id) {
                    return Err(ChangeError::AlreadyMember(id, "learner"));
                }
                Ok(Membership::with_learners(voters, learners))
            }
            MembershipChange::Promote(id) => {
                if current.is_voter(id) {
                    return Err(ChangeError::AlreadyMember(id, "voter"));
                }
                if !learners.remove(&id) {
                    return Err(ChangeError::UnknownNode(id));
                }
                self.check_caught_up(id)?;
                let mut new = voters.clone();
                new.insert(id);
                joint(new, learners)
            }
            MembershipChange::Demote(id) => {
                if !current.contains(id) {
                    return Err(ChangeError::UnknownNode(id));
                }
                if !current.is_voter(id) {
                    return Err(ChangeError::WrongRole(id, "voter"));
                }
                let mut new = voters.clone();
                new.remove(&id);
                learners.insert(id);
                joint(new, learners)
            }
            MembershipChange::Remove(id) => {
                if learners.remove(&id) {
                    return Ok(Membership::with_learners(voters, learners));
                }
                if !current.is_voter(id) {
                    return Err(ChangeError::UnknownNode(id));
                }
                let mut new = voters.clone();
                new.remove(&id);
                joint(new, learners)
            }
            MembershipChange::SetVoters {
                voters: new,
                keep_as_learners,
            } => {
                if new.contains(&0) {
                    return Err(ChangeError::InvalidId);
                }
                for n in &new {
                    if !current.contains(*n) {
                        return Err(ChangeError::UnknownNode(*n));
                    }
                    if !current.is_voter(*n) {
                        self.check_caught_up(*n)?;
                    }
                }
                learners.retain(|l| !new.contains(l));
                if keep_as_learners {
                    learners.extend(voters.iter().filter(|v| !new.contains(v)).copied());
                }
                if new == voters {
                    return Ok(Membership::with_learners(voters, learners));
                }
                joint(new, learners)
            }
        }
    }

    fn check_caught_up(&self, id: NodeId) -> Result<(), ChangeError> {
        let matched = self.progress.get(&id).map_or(0, |p| p.matched);
        let lag = self.log.last_index().saturating_sub(matched);
        let max = self.cfg.max_promotion_lag_entries;
        if lag > max {
            return Err(ChangeError::Lagging { id, lag, max });
        }
        Ok(())
    }

    /// The configuration in force and the index of the entry that holds it
    /// (0 when it comes from the bootstrap configuration; the snapshot's
    /// index when it comes from a snapshot).
    pub(super) fn membership_entry(&self) -> (Index, Membership) {
        match self.membership_log.last() {
            Some((i, m)) => (*i, m.clone()),
            None => (self.base_membership_index, self.base_membership.clone()),
        }
    }

    /// Whether the configuration in force is committed.
    pub fn membership_committed(&self) -> bool {
        self.membership_log
            .last()
            .is_none_or(|(i, _)| *i <= self.log.committed())
    }

    /// The configuration in force at `index` (for a snapshot's metadata).
    pub(super) fn membership_at(&self, index: Index) -> Membership {
        self.membership_log
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.base_membership.clone(), |(_, m)| m.clone())
    }

    /// Leader: after the commit index moved, finish a joint change (append
    /// C_new once C_old,new committed) and step down once a configuration
    /// without this node as voter is committed.
    pub(super) fn advance_membership(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let (index, current) = self.membership_entry();
        if index > self.log.committed() {
            return;
        }
        if let Some(old) = current.voters_outgoing() {
            let _ = old;
            let next = Membership::with_learners(
                current.voters().iter().copied(),
                current.learners().iter().copied(),
            );
            tracing::info!(
                id = self.cfg.id,
                index,
                voters = ?next.voters(),
                "joint configuration committed: appending the new configuration"
            );
            self.append_entry(EntryPayload::Membership(Box::new(next)));
            return;
        }
        if !current.is_voter(self.cfg.id) {
            // Thesis §4.2.2: the leader of C_old,new that is not in C_new
            // steps down once C_new is committed. Hand over to the most
            // up-to-date voter so the cluster does not wait for a timeout.
            let best = self
                .progress
                .iter()
                .filter(|(id, _)| current.is_voter(**id))
                .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
                .map(|(id, p)| (*id, p.matched));
            tracing::info!(
                id = self.cfg.id,
                index,
                handover = ?best.map(|b| b.0),
                "no longer a voter: stepping down"
            );
            if let Some((to, matched)) = best {
                if matched == self.log.last_index() {
                    self.send_timeout_now(to);
                }
            }
            self.become_follower(self.term, None);
        }
    }
}
