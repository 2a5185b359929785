//! Membership churn in the fault phase: the current leader is asked, at
//! random times, to add a spare (or a removed node) as a learner, promote a
//! learner (again later when it was refused as lagging), demote or remove a
//! voter (the leader itself included), remove a learner, replace the voter
//! set, or remove the last voter. Every answer is checked: an accepted
//! change appends one configuration entry that takes effect at once
//! (thesis §4.1); a refused one changes nothing and says why; a change that
//! would leave no voter is always refused.

use raft_core::engine::{ChangeError, MembershipChange};
use raft_core::{LogId, Membership, NodeId};
use rand::seq::SliceRandom;
use rand::Rng;

use super::{Check, World};
use crate::sim::checks::Violation;
use crate::sim::trace::Event;

/// Voters a change may bring the cluster to at most.
const MAX_VOTERS: usize = 5;

/// Whether `change` would leave `m` without a voter.
fn leaves_no_voter(m: &Membership, change: &MembershipChange) -> bool {
    match change {
        MembershipChange::Remove(id) | MembershipChange::Demote(id) => {
            !m.is_joint() && m.voters().len() == 1 && m.voters().contains(id)
        }
        MembershipChange::SetVoters { voters, .. } => voters.is_empty(),
        _ => false,
    }
}

impl World {
    /// Runs at every tick of the fault phase: maybe asks the leader for a change.
    pub(super) fn churn(&mut self) -> Check {
        let ask = self.rng.gen_bool((self.intensity * 0.03).min(1.0));
        let retry = self.retry_promotion.is_some() && self.rng.gen_bool(0.1);
        if !ask && !retry {
            return Ok(());
        }
        let Some(l) = self.leader().filter(|l| self.nodes[*l].stalled_until == 0) else {
            return Ok(());
        };
        let change = match self.retry_promotion.take() {
            Some(id) if retry => MembershipChange::Promote(id),
            _ => self.pick_change(l),
        };
        // The answer was checked; the churn goes on either way.
        let _ = self.request_change(l, change)?;
        self.drain(l)
    }

    /// A random change for leader `l`'s configuration.
    fn pick_change(&mut self, l: usize) -> MembershipChange {
        let engine = self.nodes[l].engine.as_ref().expect("live leader");
        let m = engine.membership().clone();
        let n = self.nodes.len() as NodeId;
        let voters: Vec<NodeId> = m.voters().iter().copied().collect();
        let learners: Vec<NodeId> = m.learners().iter().copied().collect();
        let members: Vec<NodeId> = m.members().into_iter().collect();
        let outsiders: Vec<NodeId> = (1..=n).filter(|id| !m.contains(*id)).collect();
        let rng = &mut self.rng;
        let any = rng.gen_range(1..=n);
        let one_of =
            |v: &[NodeId], rng: &mut rand_chacha::ChaCha8Rng| v.choose(rng).copied().unwrap_or(any);
        match rng.gen_range(0..100) {
            0..25 => MembershipChange::AddLearner(one_of(&outsiders, rng)),
            25..50 if voters.len() < MAX_VOTERS => {
                MembershipChange::Promote(one_of(&learners, rng))
            }
            25..58 => MembershipChange::Demote(one_of(&voters, rng)),
            58..72 => MembershipChange::Remove(one_of(&voters, rng)),
            72..82 => MembershipChange::Remove(one_of(&learners, rng)),
            82..95 => {
                let mut pool = members.clone();
                pool.shuffle(rng);
                let size = rng.gen_range(1..=pool.len().clamp(1, MAX_VOTERS));
                MembershipChange::SetVoters {
                    voters: pool.into_iter().take(size).collect(),
                    keep_as_learners: rng.gen_bool(0.5),
                }
            }
            _ if voters.len() == 1 => {
                let last = voters[0];
                if rng.gen_bool(0.5) {
                    MembershipChange::Remove(last)
                } else {
                    MembershipChange::Demote(last)
                }
            }
            _ => MembershipChange::SetVoters {
                voters: Default::default(),
                keep_as_learners: rng.gen_bool(0.5),
            },
        }
    }

    /// Asks leader `l` for `change` and checks the answer against what
    /// the engine did.
    pub(super) fn request_change(
        &mut self,
        l: usize,
        change: MembershipChange,
    ) -> Result<Result<LogId, ChangeError>, Violation> {
        let leader = self.nodes[l].id;
        let engine = self.nodes[l].engine.as_mut().expect("live leader");
        let before = engine.membership().clone();
        let last_before = engine.last_log_id();
        let result = engine.change_membership(change.clone());
        self.changes.requested += 1;
        let changed = *engine.membership() != before || engine.last_log_id() != last_before;
        match &result {
            Ok(id) => {
                let after = engine.membership();
                let status = engine.status();
                if *id != engine.last_log_id()
                    || id.index != last_before.index + 1
                    || id.term != engine.term()
                {
                    return Err(format!(
                        "node {leader}: change {change:?} reports entry {id} but the log went \
                         from {last_before} to {} in term {}",
                        engine.last_log_id(),
                        engine.term()
                    ));
                }
                // Thesis §4.1: a configuration takes effect when appended.
                if status.membership_index != id.index || *after == before {
                    return Err(format!(
                        "node {leader}: change {change:?} appended {id} but the configuration \
                         in force is still {:?} from index {} (thesis §4.1: in force as soon \
                         as appended)",
                        after, status.membership_index
                    ));
                }
                if after.voters().is_empty() {
                    return Err(format!(
                        "node {leader}: change {change:?} was accepted and leaves no voter: \
                         {after:?}"
                    ));
                }
                if after
                    .voters_outgoing()
                    .is_some_and(|old| old != before.voters())
                {
                    return Err(format!(
                        "node {leader}: change {change:?} from {before:?} appended the joint \
                         configuration {after:?}, whose old half is not the configuration it \
                         started from"
                    ));
                }
                self.changes.started += 1;
            }
            Err(e) => {
                if changed {
                    return Err(format!(
                        "node {leader}: change {change:?} was refused ({e}) but the log or the \
                         configuration changed: {before:?} at {last_before} -> {:?} at {}",
                        engine.membership(),
                        engine.last_log_id()
                    ));
                }
                match e {
                    ChangeError::InProgress { .. } => self.changes.in_progress += 1,
                    ChangeError::LeaderNotReady | ChangeError::TransferInProgress(_) => {
                        self.changes.not_ready += 1
                    }
                    ChangeError::Lagging { id, .. } => {
                        self.changes.lagging += 1;
                        self.retry_promotion = Some(*id);
                    }
                    ChangeError::NoVoters => self.changes.no_voters += 1,
                    _ => self.changes.other_refusals += 1,
                }
            }
        }
        if leaves_no_voter(&before, &change) {
            let clear = matches!(
                result,
                Err(ChangeError::NoVoters
                    | ChangeError::InProgress { .. }
                    | ChangeError::LeaderNotReady
                    | ChangeError::TransferInProgress(_))
            );
            if !clear {
                return Err(format!(
                    "node {leader}: change {change:?} would leave {before:?} without a voter but \
                     the answer is {result:?}, not ChangeError::NoVoters"
                ));
            }
        }
        self.record(Event::Change {
            leader,
            change: format!("{change:?}"),
            result: result
                .as_ref()
                .map(|id| (id.term, id.index))
                .map_err(|e| e.to_string()),
        });
        Ok(result)
    }
}
