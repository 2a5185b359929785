//! Global knowledge gathered over a whole run, and the Raft safety
//! properties (paper Figure 3) checked against it:
//!
//! - election safety: at most one leader per term, over the whole run;
//! - log matching: every log position `(index, term)` that ever appears in
//!   any log (in memory or durable) always carries the same payload and
//!   follows an entry of the same term. By induction, two logs holding the
//!   same `(index, term)` are identical up to it;
//! - leader completeness: an entry known committed by a node in term `t` is
//!   in the log of every leader of a term above `t`;
//! - state machine safety: no two nodes apply different entries at one
//!   index; every applied entry was known committed.
//!
//! Logs may start after a compacted prefix (a snapshot covers it): only the
//! entries a log holds are compared. The configurations known committed are
//! kept too, to tell which nodes were removed from the cluster.

use std::collections::{BTreeMap, HashMap};

use raft_core::engine::Engine;
use raft_core::{Entry, EntryPayload, Index, LogId, Membership, NodeId, Term};

/// A violation, as a readable message.
pub type Violation = String;

/// A node in one of its incarnations (it restarts as a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The node.
    pub node: NodeId,
    /// How many times it restarted before.
    pub incarnation: u32,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} (incarnation {})", self.node, self.incarnation)
    }
}

/// What one log position was first seen holding.
#[derive(Debug)]
struct Position {
    /// The term of the entry before it.
    prev_term: Term,
    /// The payload.
    payload: EntryPayload,
    /// The node that first held it.
    first_seen_on: Holder,
    /// Whether it ever left that process's memory: made durable, or sent
    /// in an AppendEntries. A position only ever handed out by a process
    /// that then crashed is gone with it (see `forget_lost`).
    kept: bool,
}

/// A committed entry as first reported.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    /// Its term.
    pub term: Term,
    /// The term of the node that reported it committed (the entry was
    /// committed in this term or an earlier one).
    pub observed_in: Term,
    /// The node that reported it.
    pub observed_by: NodeId,
}

/// Everything known across the run.
#[derive(Debug, Default)]
pub struct Observer {
    /// Term -> the leader of that term.
    pub leaders: BTreeMap<Term, Holder>,
    positions: HashMap<LogId, Position>,
    /// Committed entries by index (position `index - 1`).
    committed: Vec<Option<Committed>>,
    /// The entry first applied at each index (position `index - 1`), and by whom.
    applied: Vec<Option<(Term, NodeId)>>,
    /// Configurations known committed, by index (0: the bootstrap one).
    configs: BTreeMap<Index, Membership>,
}

impl Observer {
    /// An observer of a cluster bootstrapped with `initial`.
    pub fn new(initial: Membership) -> Self {
        let mut obs = Self::default();
        obs.configs.insert(0, initial);
        obs
    }

    /// The latest configuration known committed, with its index.
    pub fn committed_config(&self) -> (Index, &Membership) {
        let (index, m) = self
            .configs
            .last_key_value()
            .expect("the bootstrap configuration is always known");
        (*index, m)
    }

    /// Election safety: `node` is leader in `term`. A node that restarts is
    /// a new leader if it leads the same term again (its log may differ):
    /// that must not happen either, since its term was durable.
    pub fn leader(&mut self, term: Term, node: Holder) -> Result<bool, Violation> {
        match self.leaders.get(&term) {
            Some(l) if *l == node => Ok(false),
            Some(l) if l.node == node.node => Err(format!(
                "ELECTION SAFETY: {node} is leader in term {term}, which it already led in \
                 an earlier incarnation ({l}), possibly with a different log: term {term} \
                 and its vote did not survive the crash (did it lead before they were durable?)"
            )),
            Some(l) => Err(format!(
                "ELECTION SAFETY: {l} and {node} were both leader in term {term}"
            )),
            None => {
                self.leaders.insert(term, node);
                Ok(true)
            }
        }
    }

    /// Log matching: records the entries `node` holds (just appended to its
    /// log), the first one following an entry of term `prev_term`.
    pub fn record_entries(
        &mut self,
        node: Holder,
        mut prev_term: Term,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        for e in entries {
            self.record_position(node, prev_term, e)?;
            prev_term = e.term;
        }
        Ok(())
    }

    fn record_position(
        &mut self,
        node: Holder,
        prev_term: Term,
        e: &Entry,
    ) -> Result<(), Violation> {
        if e.term < prev_term {
            return Err(format!(
                "LOG MATCHING: {node} holds entry {} after an entry of term {prev_term}: \
                 terms must not decrease along a log",
                e.log_id()
            ));
        }
        match self.positions.get(&e.log_id()) {
            None => {
                self.positions.insert(
                    e.log_id(),
                    Position {
                        prev_term,
                        payload: e.payload.clone(),
                        first_seen_on: node,
                        kept: false,
                    },
                );
                Ok(())
            }
            Some(p) if p.prev_term != prev_term => Err(format!(
                "LOG MATCHING: entry {} follows an entry of term {prev_term} on {node}, \
                 but one of term {} on {}",
                e.log_id(),
                p.prev_term,
                p.first_seen_on
            )),
            Some(p) if p.payload != e.payload => Err(format!(
                "LOG MATCHING: entry {} holds {:?} on {node} but {:?} on {}: two different \
                 entries with one log id",
                e.log_id(),
                e.payload,
                p.payload,
                p.first_seen_on
            )),
            Some(_) => Ok(()),
        }
    }

    /// The payload first seen at `id`, if any.
    pub fn payload(&self, id: LogId) -> Option<&EntryPayload> {
        self.positions.get(&id).map(|p| &p.payload)
    }

    /// How many configurations are known committed (not counting the
    /// bootstrap one).
    pub fn committed_configs(&self) -> u64 {
        self.configs.len() as u64 - 1
    }

    /// The positions of `entries` left the memory of the process that made
    /// them: they were made durable or sent.
    pub fn keep(&mut self, entries: &[Entry]) {
        for e in entries {
            if let Some(p) = self.positions.get_mut(&e.log_id()) {
                p.kept = true;
            }
        }
    }

    /// `holder` crashed: the positions only it ever held, in memory, are
    /// gone (a single voter appends its term's first entry as candidate and
    /// may crash before that write is durable; after the restart it may
    /// campaign for the same term again and give the same log id to a
    /// different entry, which nothing ever saw).
    pub fn forget_lost(&mut self, holder: Holder) {
        self.positions
            .retain(|_, p| p.kept || p.first_seen_on != holder);
    }

    /// Whether `id` was ever seen in a log, with this payload.
    pub fn known_entry(&self, e: &Entry) -> bool {
        self.positions
            .get(&e.log_id())
            .is_some_and(|p| p.payload == e.payload)
    }

    /// Checks the whole in-memory log of `engine` against the recorded
    /// positions (entries can only enter a log through `Ready::entries`, so
    /// every position must be known, after the same term).
    pub fn check_log(&self, engine: &Engine) -> Result<(), Violation> {
        let node = engine.id();
        let last = engine.last_log_id().index;
        // The log starts after its compacted prefix, whose last entry (the
        // offset) must itself have been in some log.
        let offset = engine.first_index() - 1;
        let Some(mut prev) = engine.term_at(offset) else {
            return Err(format!(
                "node {node}: no term for the compacted prefix's last entry {offset}"
            ));
        };
        if offset > 0 && !self.positions.contains_key(&LogId::new(prev, offset)) {
            return Err(format!(
                "LOG MATCHING: node {node}'s log starts after {offset}@{prev}, which was never \
                 handed out in Ready::entries"
            ));
        }
        for index in offset + 1..=last {
            let Some(term) = engine.term_at(index) else {
                return Err(format!(
                    "node {node}: no term at index {index} <= last index {last}"
                ));
            };
            match self.positions.get(&LogId::new(term, index)) {
                None => {
                    return Err(format!(
                        "LOG MATCHING: node {node} holds {index}@{term}, which was never \
                         handed out in Ready::entries"
                    ))
                }
                Some(p) if p.prev_term != prev => {
                    return Err(format!(
                        "LOG MATCHING: node {node} holds {index}@{term} after an entry of \
                         term {prev}, {} after one of term {}",
                        p.first_seen_on, p.prev_term
                    ))
                }
                Some(_) => {}
            }
            prev = term;
        }
        Ok(())
    }

    /// Records that `node` (in `node_term`) knows `index` committed with
    /// `term`. Returns whether this is news.
    pub fn record_commit(
        &mut self,
        node: NodeId,
        node_term: Term,
        index: Index,
        term: Term,
    ) -> Result<bool, Violation> {
        let slot = index as usize - 1;
        if self.committed.len() <= slot {
            self.committed.resize(slot + 1, None);
        }
        match self.committed[slot] {
            Some(c) if c.term != term => Err(format!(
                "COMMITTED ENTRY CONFLICT: node {node} (term {node_term}) has index {index} \
                 committed with term {term}, node {} (term {}) with term {}",
                c.observed_by, c.observed_in, c.term
            )),
            Some(_) => Ok(false),
            None => {
                self.committed[slot] = Some(Committed {
                    term,
                    observed_in: node_term,
                    observed_by: node,
                });
                if let Some(p) = self.positions.get(&LogId::new(term, index)) {
                    if let EntryPayload::Membership(m) = &p.payload {
                        self.configs.insert(index, (**m).clone());
                    }
                }
                Ok(true)
            }
        }
    }

    /// The committed entry at `index`, if known.
    pub fn committed(&self, index: Index) -> Option<Committed> {
        self.committed.get(index as usize - 1).copied().flatten()
    }

    /// The highest index known committed.
    pub fn max_committed(&self) -> Index {
        self.committed.len() as Index
    }

    /// Leader completeness for one committed entry and one leader.
    pub fn check_leader_has(&self, engine: &Engine, index: Index) -> Result<(), Violation> {
        let Some(c) = self.committed(index) else {
            return Ok(());
        };
        // Entries below the leader's compacted prefix are covered by its
        // snapshot (the prefix's last entry itself is still checked).
        if engine.term() <= c.observed_in || index + 1 < engine.first_index() {
            return Ok(());
        }
        let have = engine.term_at(index);
        if have != Some(c.term) {
            return Err(format!(
                "LEADER COMPLETENESS: node {} is leader in term {} but holds {:?} at index \
                 {index}, where entry {index}@{} was known committed by node {} in term {}",
                engine.id(),
                engine.term(),
                have,
                c.term,
                c.observed_by,
                c.observed_in
            ));
        }
        Ok(())
    }

    /// Leader completeness for every committed entry and one leader.
    pub fn check_leader_complete(&self, engine: &Engine) -> Result<(), Violation> {
        for index in 1..=self.max_committed() {
            self.check_leader_has(engine, index)?;
        }
        Ok(())
    }

    /// State machine safety: `node` applies `e`.
    pub fn record_applied(&mut self, node: NodeId, e: &Entry) -> Result<(), Violation> {
        match self.committed(e.index) {
            Some(c) if c.term == e.term => {}
            other => {
                return Err(format!(
                    "STATE MACHINE SAFETY: node {node} applies {} but the committed entry \
                     at that index is {other:?}",
                    e.log_id()
                ))
            }
        }
        if !self.known_entry(e) {
            return Err(format!(
                "STATE MACHINE SAFETY: node {node} applies {} with a payload never seen in a log",
                e.log_id()
            ));
        }
        let slot = e.index as usize - 1;
        if self.applied.len() <= slot {
            self.applied.resize(slot + 1, None);
        }
        match self.applied[slot] {
            Some((term, first)) if term != e.term => Err(format!(
                "STATE MACHINE SAFETY: node {node} applies {} but node {first} applied {}@{term}",
                e.log_id(),
                e.index
            )),
            Some(_) => Ok(()),
            None => {
                self.applied[slot] = Some((e.term, node));
                Ok(())
            }
        }
    }
}
