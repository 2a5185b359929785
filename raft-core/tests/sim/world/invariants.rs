//! The checks a run makes as it goes (per node after every input, every
//! log now and then) and at its end (convergence, agreement of the members'
//! state machines and logs, linearizability), plus the failure report.
//!
//! Membership adds three checks: a node removed by a configuration known
//! committed never becomes leader again unless a later configuration in its
//! log brings it back; a leader that committed a configuration leaving it
//! out steps down at once (thesis §4.2.2); with pre-vote and check-quorum
//! (thesis §4.2.3), a removed node never raises a member's term to one only
//! it has reached.

use std::fmt::Write as _;

use raft_core::engine::{Engine, Role};
use raft_core::{EntryPayload, LogId, Message, Term};
use raft_linearizability::{check, CheckLimits, CheckResult};

use super::{Check, World, FULL_CHECK_EVERY};
use crate::sim::checks::{Holder, Violation};
use crate::sim::runner::replay_command;
use crate::sim::trace::MsgInfo;

/// What the receiver of a message from a removed node must not suffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct FromRemoved {
    /// Whether the sender's term is above every other node's.
    ahead: bool,
    /// Whether the receiver believed, as the message arrived, that a
    /// current leader exists ([`Engine::ignores_vote_requests`]).
    receiver_follows_a_leader: bool,
}

impl World {
    /// Per-node invariants after any input: term and commit monotonic within
    /// an incarnation, newly committed entries recorded, election safety and
    /// leader completeness for leaders, and the membership rules for them.
    pub(super) fn observe(&mut self, i: usize) -> Check {
        let Some(engine) = self.nodes[i].engine.as_ref() else {
            return Ok(());
        };
        let node = &self.nodes[i];
        let id = node.id;
        let term = engine.term();
        let commit = engine.commit_index();
        let role = engine.role();
        let last = engine.last_log_id().index;
        if term < node.seen_term {
            return Err(format!(
                "node {id}: term went back from {} to {term}",
                node.seen_term
            ));
        }
        if commit < node.seen_commit {
            return Err(format!(
                "COMMIT MONOTONICITY: node {id}: commit index went back from {} to {commit} \
                 within one incarnation",
                node.seen_commit
            ));
        }
        if commit > last {
            return Err(format!(
                "node {id}: commit index {commit} beyond last index {last}"
            ));
        }
        if commit < node.disk.hard_state.commit {
            return Err(format!(
                "COMMIT MONOTONICITY: node {id}: commit index {commit} below its durable commit {}",
                node.disk.hard_state.commit
            ));
        }
        for index in node.seen_commit + 1..=commit {
            let Some(t) = engine.term_at(index) else {
                if index < engine.first_index() {
                    continue; // covered by a snapshot this node installed
                }
                return Err(format!("node {id}: committed index {index} has no term"));
            };
            if self.obs.record_commit(id, term, index, t)? {
                for other in &self.nodes {
                    if let Some(e) = other.engine.as_ref().filter(|e| e.role() == Role::Leader) {
                        self.obs.check_leader_has(e, index)?;
                    }
                }
            }
        }
        if role == Role::Leader {
            let holder = Holder {
                node: id,
                incarnation: node.incarnation,
            };
            let new_term = self.obs.leader(term, holder)?;
            if new_term || node.seen_role != Role::Leader {
                self.obs.check_leader_complete(engine)?;
                self.check_new_leader_membership(engine)?;
            }
            let m = engine.membership();
            if !m.is_voter(id) && !m.is_joint() && engine.membership_committed() {
                return Err(format!(
                    "node {id} still leads term {term} after committing the configuration \
                     {m:?}, which leaves it out (thesis §4.2.2: it steps down once C_new is \
                     committed)"
                ));
            }
        } else if node.seen_role == Role::Leader && !engine.membership().is_voter(id) {
            self.changes.leaders_removed += 1;
        }
        let node = &mut self.nodes[i];
        node.seen_term = term;
        node.seen_commit = commit;
        node.seen_role = role;
        Ok(())
    }

    /// A node just took office: unless a configuration at least as new as
    /// every one known committed makes it a voter again, it must not have
    /// been removed by one of them.
    fn check_new_leader_membership(&self, engine: &Engine) -> Check {
        let id = engine.id();
        let (ci, cm) = self.obs.committed_config();
        if !cm.is_voter(id) {
            let mine = engine.status().membership_index;
            if mine < ci {
                return Err(format!(
                    "REMOVED NODE LEADS: node {id} became leader in term {} although the \
                     configuration at index {ci} ({cm:?}), known committed, removed it; its own \
                     configuration is from index {mine}",
                    engine.term()
                ));
            }
        }
        Ok(())
    }

    /// Whether `msg`, about to reach node `to`, comes from a node that a
    /// configuration known committed removed and that the receiver's own
    /// configuration leaves out.
    pub(super) fn sender_if_removed(&mut self, to: usize, msg: &Message) -> Option<FromRemoved> {
        let (_, committed) = self.obs.committed_config();
        if committed.contains(msg.from) {
            return None;
        }
        let engine = self.nodes[to].engine.as_ref()?;
        if engine.membership().contains(msg.from) {
            return None;
        }
        self.changes.removed_messages += 1;
        let others = self
            .nodes
            .iter()
            .filter(|n| n.id != msg.from)
            .map(|n| {
                n.engine
                    .as_ref()
                    .map_or(n.disk.hard_state.term, Engine::term)
            })
            .max()
            .unwrap_or(0);
        Some(FromRemoved {
            ahead: msg.term > others,
            receiver_follows_a_leader: engine.ignores_vote_requests(),
        })
    }

    /// Node `to` took a message from a removed node (see
    /// [`sender_if_removed`](Self::sender_if_removed)): its term must not
    /// have risen because of it if it believed a current leader exists.
    ///
    /// That is what thesis §4.2.3 promises, and all it can: a member that
    /// heard from no leader for an election timeout (a leader that removed
    /// itself has stepped down, say, and the members have not elected the
    /// next) treats a vote request from outside its configuration like any
    /// other. It cannot refuse it: its own configuration may be behind, and
    /// the candidate a voter of a newer one that this member has not seen
    /// yet, whose vote the cluster needs (a member refusing would then
    /// block every election until it catches up, which it cannot without a
    /// leader). The removed node raises the term of a cluster without a
    /// leader at most; it cannot depose one.
    pub(super) fn check_not_disrupted(
        &self,
        to: usize,
        msg: MsgInfo,
        from: FromRemoved,
        term_before: Term,
    ) -> Check {
        let Some(engine) = self.nodes[to].engine.as_ref() else {
            return Ok(());
        };
        if engine.term() <= term_before {
            return Ok(());
        }
        let cfg = engine.config();
        if cfg.pre_vote && cfg.check_quorum && from.ahead && from.receiver_follows_a_leader {
            return Err(format!(
                "DISRUPTION: node {} went from term {term_before} to {} on {msg:?} from a node \
                 that a committed configuration removed and that its own configuration {:?} \
                 leaves out (thesis §4.2.3: removed servers must not disrupt the cluster)",
                engine.id(),
                engine.term(),
                engine.membership()
            ));
        }
        Ok(())
    }

    pub(super) fn check_all(&mut self) -> Check {
        for i in 0..self.nodes.len() {
            self.observe(i)?;
        }
        if self.step % FULL_CHECK_EVERY == 0 {
            for node in &self.nodes {
                if let Some(engine) = &node.engine {
                    self.obs.check_log(engine)?;
                    if engine.role() == Role::Leader {
                        self.check_one_change_at_a_time(engine)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A leader's log holds at most one configuration entry above the
    /// highest index known committed: changes go one at a time.
    fn check_one_change_at_a_time(&self, engine: &Engine) -> Check {
        let from = self.obs.max_committed().max(engine.first_index() - 1) + 1;
        let last = engine.last_log_id().index;
        let mut configs = Vec::new();
        for index in from..=last {
            let Some(term) = engine.term_at(index) else {
                continue;
            };
            if let Some(EntryPayload::Membership(m)) = self.obs.payload(LogId::new(term, index)) {
                configs.push((index, m.clone()));
            }
        }
        if configs.len() > 1 {
            return Err(format!(
                "ONE CHANGE AT A TIME: leader {} holds {} uncommitted configurations above \
                 index {}: {configs:?}",
                engine.id(),
                configs.len(),
                from - 1
            ));
        }
        Ok(())
    }

    // ----- the end of a run -----------------------------------------------------------

    /// The members of the leader's configuration, once it is final
    /// (committed, not joint, the leader among its voters).
    fn final_members(&self) -> Option<Vec<usize>> {
        let l = self.leader()?;
        let leader = self.nodes[l].engine.as_ref()?;
        let m = leader.membership();
        if m.is_joint() || !leader.membership_committed() || !m.is_voter(leader.id()) {
            return None;
        }
        Some(m.members().iter().map(|id| *id as usize - 1).collect())
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let Some(members) = self.final_members() else {
            return false;
        };
        let leader = self.nodes[l].engine.as_ref().expect("live");
        let target = leader.last_log_id().index;
        let max_term = members
            .iter()
            .filter_map(|i| self.nodes[*i].engine.as_ref())
            .map(Engine::term)
            .max();
        max_term == Some(leader.term())
            && members.iter().all(|i| {
                let n = &self.nodes[*i];
                n.engine
                    .as_ref()
                    .is_some_and(|e| e.commit_index() == target && !e.is_installing_snapshot())
                    && n.kv.applied == target
            })
    }

    pub(super) fn converge(&mut self) -> Check {
        for _ in 0..self.params.converge_steps {
            self.step()?;
            if self.converged() {
                return Ok(());
            }
        }
        Err(format!(
            "LIVENESS: the cluster did not converge within {} steps after healing every \
             partition and restarting every node (no faults meanwhile)\n{}",
            self.params.converge_steps,
            self.describe_nodes()
        ))
    }

    /// After convergence: every log is consistent, the members' state
    /// machines are equal, every state machine (members or not) holds the
    /// reference data at its index, and the members' durable logs agree
    /// wherever two of them hold an entry up to what they applied.
    pub(super) fn final_checks(&mut self) -> Check {
        for node in &self.nodes {
            if let Some(engine) = &node.engine {
                self.obs.check_log(engine)?;
            }
            self.reference
                .check(&node.kv, &format!("node {}'s state machine", node.id))?;
        }
        let members = self.final_members().expect("converged");
        let first = &self.nodes[members[0]];
        for &m in &members[1..] {
            let node = &self.nodes[m];
            if node.kv != first.kv {
                return Err(format!(
                    "STATE MACHINE SAFETY: after convergence nodes {} and {} differ:\n{:?}\n{:?}",
                    first.id, node.id, first.kv, node.kv
                ));
            }
            let from = first.disk.purged.index.max(node.disk.purged.index) + 1;
            let upto = node.kv.applied;
            for index in from..=upto {
                let (a, b) = (first.disk.get(index), node.disk.get(index));
                if a.is_some() && b.is_some() && a != b {
                    return Err(format!(
                        "LOG MATCHING: after convergence the durable logs of nodes {} and {} \
                         differ at committed index {index}: {a:?} vs {b:?}",
                        first.id, node.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the client history. A history the checker cannot decide
    /// within its budget fails the run as inconclusive: a seed never passes
    /// because its check gave up. (Returns `false`, "decided", otherwise;
    /// kept as a value for the run's report.)
    pub(super) fn check_history(&mut self) -> Result<bool, Violation> {
        let outstanding: Vec<usize> = (0..self.clients.list.len())
            .filter(|c| self.clients.list[*c].outstanding.is_some())
            .collect();
        for c in outstanding {
            self.clients.give_up(c);
        }
        history_verdict(check(&self.clients.history, CheckLimits::default())).map(|()| false)
    }

    // ----- reporting ------------------------------------------------------------------

    pub(super) fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let disk = &node.disk;
            let durable = format!(
                "durable {:?}, log {}..={}, snapshot {:?} | applied {}, sm snapshot {:?}",
                disk.hard_state,
                disk.purged.index + 1,
                disk.last_log_id(),
                disk.snapshot.as_ref().map(|s| s.last_log_id),
                node.kv.applied,
                node.snapshot.as_ref().map(|(m, _)| m.last_log_id),
            );
            match &node.engine {
                Some(e) => {
                    let s = e.status();
                    let _ = writeln!(
                        out,
                        "  node {}: {:?} term {} vote {:?} leader {:?} commit {} first {} last {} \
                         persisted {} config {:?} at {}{} | {durable} | {} writes pending, {} \
                         jobs to apply, installing {:?}, incarnation {}",
                        node.id,
                        s.role,
                        s.term,
                        s.vote,
                        s.leader,
                        s.commit,
                        s.first_index,
                        e.last_log_id(),
                        s.persisted,
                        s.membership,
                        s.membership_index,
                        if s.membership_committed {
                            ""
                        } else {
                            " (uncommitted)"
                        },
                        node.writes.len(),
                        node.to_apply.len(),
                        s.installing_snapshot,
                        node.incarnation
                    );
                }
                None => {
                    let _ = writeln!(out, "  node {}: DOWN | {durable}", node.id);
                }
            }
        }
        let (ci, cm) = self.obs.committed_config();
        let _ = writeln!(
            out,
            "  latest configuration known committed: {cm:?} at {ci}\n  network: {} in flight, \
             cut links: {}",
            self.net.len(),
            self.net.describe_cuts()
        );
        out
    }

    pub(super) fn failure_report(&self, violation: &str) -> String {
        let n = self.params.nodes;
        format!(
            "simulation failed: seed {seed}, {n} voters + {spares} spares, step {step}, tick \
             {now}\n\
             {violation}\n\
             replay: {replay}\n\
             nodes:\n{nodes}last events:\n{recent}",
            seed = self.seed,
            spares = self.nodes.len() - n,
            step = self.step,
            now = self.now,
            nodes = self.describe_nodes(),
            recent = self.trace.recent(),
            replay = match &self.scripted {
                Some(test) =>
                    format!("cargo test -p raftkv-core --test simulation {test} -- --nocapture"),
                None => replay_command(self.seed, n),
            },
        )
    }
}

/// A run's verdict from the checker's result on its client history: a
/// violation or a malformed history fails it, and so does a history the
/// checker could not decide within its budget (a run never passes because
/// its check gave up).
pub fn history_verdict(result: CheckResult) -> Result<(), Violation> {
    match result {
        CheckResult::Ok => Ok(()),
        CheckResult::Unknown { key, reason } => Err(format!(
            "INCONCLUSIVE: the linearizability checker could not decide the history of key \
             {:?} within its budget ({reason}); a run whose check gives up proves nothing, \
             so it fails (shorten the run or spread the clients over more keys)",
            String::from_utf8_lossy(&key)
        )),
        CheckResult::Violation {
            key,
            explanation,
            ops,
        } => {
            let mut text = format!(
                "LINEARIZABILITY: the client history of key {:?} is not linearizable \
                 (times are simulation steps):\n{explanation}\nOperations on that key:\n",
                String::from_utf8_lossy(&key)
            );
            for (i, op) in ops.iter().enumerate() {
                let _ = writeln!(text, "  #{i} {op}");
            }
            Err(text)
        }
        other => Err(format!("the client history is malformed: {other}")),
    }
}
