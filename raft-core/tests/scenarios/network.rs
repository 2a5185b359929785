//! A simulated cluster of [`Engine`]s for the scenario tests.
//!
//! Every node is driven exactly as the engine's driver contract says
//! (`raft_core::engine` module docs): for each `Ready` the harness sends
//! `messages`, writes hard state / truncation / entries to the node's
//! "durable" log, sends `persisted_messages` only once that write is done,
//! reports the write with `on_persisted`, applies `committed_entries` and
//! reports them with `on_applied`.
//!
//! Storage is instant by default. [`Network::hold_persist`] queues a node's
//! writes (and so its `persisted_messages`) until
//! [`Network::release_persist`], which lets tests watch what a node does
//! before its state is durable. A `Ready`'s committed entries are applied
//! when its write is done; [`Network::apply_before_persist`] applies them
//! at once instead (the contract lets steps 2–5 overlap).
//! [`Network::restart`] rebuilds a node from its durable state only.
//!
//! Messages go through one FIFO queue. Links can be dropped one way
//! ([`Network::drop_link`]), cut both ways ([`Network::cut`]), a node can be
//! isolated, a message kind ignored, or an arbitrary predicate installed
//! ([`Network::drop_if`]); [`Network::recover`] heals everything. Filters are
//! checked both when a message is sent and when it is delivered, so a cut
//! also loses the messages already in flight on it.
//!
//! The harness checks invariants on every step and panics when one breaks:
//! - election safety (paper §5.2, Figure 3): at most one leader per term;
//! - state machine safety (paper §5.4.3): every node applies the same entry
//!   at a given index (can be switched off for tests that forge messages);
//! - the driver contract itself: writes continue the durable log, applied
//!   entries are durable locally and applied in order, the persisted commit
//!   index never exceeds the durable log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raft_core::engine::{
    Engine, InitialState, ProposeError, ReadError, ReadId, ReadState, Ready, Role, SoftState,
    TransferError, WriteId,
};
use raft_core::{
    Config, Entry, EntryPayload, HardState, Index, LogId, Membership, Message, MessageBody, NodeId,
    SnapshotMeta, Term,
};

/// Upper bound on messages delivered by one [`Network::deliver_all`].
pub const MAX_DELIVERIES: usize = 100_000;
/// Upper bound on `Ready`s handled in a row for one node by [`Network::process`].
pub const MAX_READY_LOOPS: usize = 10_000;

/// One durable write waiting for storage (only while persistence is held).
#[derive(Debug)]
struct Write {
    /// The engine's name for the write, reported when it is done.
    write_id: Option<WriteId>,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    entries: Vec<Entry>,
    persisted_messages: Vec<Message>,
    /// Committed entries of the same `Ready`, applied once the write is
    /// done (unless [`Network::apply_before_persist`]).
    committed: Vec<Entry>,
}

/// A node: its engine, its durable storage and its state machine.
#[derive(Debug)]
pub struct Node {
    /// The engine under test.
    pub engine: Engine,
    /// The durable log: `log[i].index == i + 1`.
    pub log: Vec<Entry>,
    /// The durable hard state.
    pub hard_state: HardState,
    /// The state machine: every entry applied, in order.
    pub applied: Vec<Entry>,
    /// Whether writes are queued instead of done at once.
    pub hold_persist: bool,
    pending: VecDeque<Write>,
    /// Reads released by the engine.
    pub read_states: Vec<ReadState>,
    /// Reads failed by the engine.
    pub failed_reads: Vec<(ReadId, ReadError)>,
    /// Every soft state reported, in order.
    pub soft_states: Vec<SoftState>,
    /// A snapshot install the engine asked for. The harness never finishes
    /// one: it models an install still in progress.
    pub installing: Option<SnapshotMeta>,
    cfg: Config,
    bootstrap: Membership,
}

impl Node {
    /// The data of every applied normal entry, in order.
    pub fn applied_data(&self) -> Vec<Bytes> {
        self.applied
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    /// The durable log's (term, index) pairs.
    pub fn log_ids(&self) -> Vec<LogId> {
        self.log.iter().map(Entry::log_id).collect()
    }

    /// Number of writes waiting while persistence is held.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }
}

/// A message as it left a node, with the `Ready` field it came from.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The message.
    pub msg: Message,
    /// Whether it came from `persisted_messages` (sent only after a write).
    pub after_persist: bool,
}

type Filter = Box<dyn Fn(&Message) -> bool>;

/// The simulated cluster. See the [module docs](self).
pub struct Network {
    /// The nodes, by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages in flight, delivered front first.
    pub queue: VecDeque<Message>,
    /// Every message any node sent, in order (filtered or not).
    pub sent: Vec<Sent>,
    dropped_links: BTreeSet<(NodeId, NodeId)>,
    ignored_kinds: BTreeSet<&'static str>,
    filters: Vec<Filter>,
    /// The leader of each term seen so far (election safety).
    pub leaders: BTreeMap<Term, NodeId>,
    /// The entry applied at each index by anyone (state machine safety).
    applied_anywhere: BTreeMap<Index, Entry>,
    /// Whether to check state machine safety across nodes.
    pub check_applied_agreement: bool,
    /// Whether to apply a `Ready`'s committed entries at once, before its
    /// own write is durable (the contract lets steps 2–5 overlap). By
    /// default they are applied once that write is done.
    pub apply_before_persist: bool,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("queue", &self.queue.len())
            .field("dropped_links", &self.dropped_links)
            .field("ignored_kinds", &self.ignored_kinds)
            .field("filters", &self.filters.len())
            .finish()
    }
}

/// Payload bytes from a string.
pub fn data(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl Network {
    /// `n` voters with ids `1..=n` and default configurations.
    pub fn new(n: u64) -> Self {
        Self::with_config(n, |_| {})
    }

    /// `n` voters with ids `1..=n`; `tweak` adjusts each default configuration.
    pub fn with_config(n: u64, tweak: impl Fn(&mut Config)) -> Self {
        let membership = Membership::new(1..=n);
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let mut cfg = Config::new(id);
            tweak(&mut cfg);
            let engine = Engine::new(cfg.clone(), InitialState::bootstrap(membership.clone()))
                .expect("valid test configuration");
            nodes.insert(
                id,
                Node {
                    engine,
                    log: Vec::new(),
                    hard_state: HardState::default(),
                    applied: Vec::new(),
                    hold_persist: false,
                    pending: VecDeque::new(),
                    read_states: Vec::new(),
                    failed_reads: Vec::new(),
                    soft_states: Vec::new(),
                    installing: None,
                    cfg,
                    bootstrap: membership.clone(),
                },
            );
        }
        Self {
            nodes,
            queue: VecDeque::new(),
            sent: Vec::new(),
            dropped_links: BTreeSet::new(),
            ignored_kinds: BTreeSet::new(),
            filters: Vec::new(),
            leaders: BTreeMap::new(),
            applied_anywhere: BTreeMap::new(),
            check_applied_agreement: true,
            apply_before_persist: false,
        }
    }

    // ----- access ------------------------------------------------------------

    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// A node, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// A node's engine.
    pub fn engine(&self, id: NodeId) -> &Engine {
        &self.node(id).engine
    }

    /// A node's role.
    pub fn role(&self, id: NodeId) -> Role {
        self.engine(id).role()
    }

    /// A node's term.
    pub fn term(&self, id: NodeId) -> Term {
        self.engine(id).term()
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The leader with the highest term, if any node is a leader.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.engine.role() == Role::Leader)
            .max_by_key(|n| n.engine.term())
            .map(|n| n.engine.id())
    }

    /// Messages sent from `from` to `to` so far.
    pub fn sent_between(&self, from: NodeId, to: NodeId) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|s| s.msg.from == from && s.msg.to == to)
            .collect()
    }

    /// Forgets the record of sent messages.
    pub fn clear_sent(&mut self) {
        self.sent.clear();
    }

    // ----- the driver ----------------------------------------------------------

    /// Handles every `Ready` of node `id` until it has none.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..MAX_READY_LOOPS {
            if !self.node(id).engine.has_ready() {
                self.check_election_safety(id);
                return;
            }
            let ready = self.node_mut(id).engine.ready();
            self.handle_ready(id, ready);
        }
        panic!("node {id} still has a Ready after {MAX_READY_LOOPS} in a row");
    }

    fn check_election_safety(&mut self, id: NodeId) {
        let e = self.engine(id);
        if e.role() == Role::Leader {
            let term = e.term();
            let leader = *self.leaders.entry(term).or_insert(id);
            assert_eq!(
                leader, id,
                "election safety: two leaders ({leader} and {id}) in term {term}"
            );
        }
    }

    fn handle_ready(&mut self, id: NodeId, ready: Ready) {
        let Ready {
            soft_state,
            hard_state,
            truncate_from,
            entries,
            write_id,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
            failed_reads,
            compact_log,
            build_snapshot,
            install_snapshot,
            fetch_entries,
        } = ready;
        // The log cache is large enough here that no payload leaves memory
        // (the simulation reads them back).
        assert!(
            fetch_entries.is_empty(),
            "node {id}: entries read back from storage in the scenario harness"
        );
        // This harness keeps whole logs; snapshots are exercised by the
        // simulation (tests/sim) and the driver tests. An install a test
        // provokes is recorded and left in progress.
        assert!(
            compact_log.is_none() && build_snapshot.is_none(),
            "node {id}: snapshot work in the scenario harness (raise the thresholds)"
        );
        if let Some(meta) = install_snapshot {
            self.node_mut(id).installing = Some(meta);
        }
        if let Some(ss) = soft_state {
            self.node_mut(id).soft_states.push(ss);
        }
        // 1. Messages that depend on nothing unpersisted.
        for m in messages {
            assert_eq!(m.from, id, "node {id} sent a message as {}", m.from);
            self.send(m, false);
        }
        // 2./3. The write, then what waited for it; 4. apply, after the
        // write by default, or at once when the test asks for overlap.
        let (apply_now, committed) = if self.apply_before_persist {
            (committed_entries, Vec::new())
        } else {
            (Vec::new(), committed_entries)
        };
        let write = Write {
            write_id,
            hard_state,
            truncate_from,
            entries,
            persisted_messages,
            committed,
        };
        let node = self.node_mut(id);
        if node.hold_persist || !node.pending.is_empty() {
            node.pending.push_back(write);
        } else {
            self.do_write(id, write);
        }
        if !apply_now.is_empty() {
            self.apply(id, apply_now);
        }
        // 5. Reads.
        let node = self.node_mut(id);
        node.read_states.extend(read_states);
        node.failed_reads.extend(failed_reads);
    }

    fn do_write(&mut self, id: NodeId, w: Write) {
        let node = self.node_mut(id);
        let durable_commit = node.hard_state.commit;
        if let Some(hs) = w.hard_state {
            node.hard_state = hs;
        }
        if let Some(from) = w.truncate_from {
            assert!(from >= 1, "node {id}: truncate_from 0");
            assert!(
                from > durable_commit,
                "node {id}: truncation from {from} removes committed entries (commit {durable_commit})",
            );
            node.log.truncate((from - 1) as usize);
        }
        for (i, e) in w.entries.iter().enumerate() {
            assert_eq!(
                e.index,
                node.log.len() as u64 + 1 + i as u64,
                "node {id}: written entries do not continue the durable log consecutively"
            );
        }
        node.log.extend(w.entries.iter().cloned());
        assert!(
            node.hard_state.commit <= node.log.len() as u64,
            "node {id}: durable commit {} beyond durable log {}",
            node.hard_state.commit,
            node.log.len()
        );
        for m in w.persisted_messages {
            assert_eq!(m.from, id, "node {id} sent a message as {}", m.from);
            self.send(m, true);
        }
        if let Some(write_id) = w.write_id {
            self.node_mut(id).engine.on_persisted(write_id);
        }
        if !w.committed.is_empty() {
            self.apply(id, w.committed);
        }
    }

    fn apply(&mut self, id: NodeId, entries: Vec<Entry>) {
        let last = entries.last().map(|e| e.index).unwrap_or_default();
        for e in entries {
            let node = self.node_mut(id);
            assert_eq!(
                e.index,
                node.applied.len() as u64 + 1,
                "node {id}: entry handed out for applying out of order or again \
                 (the state machine has applied through {})",
                node.applied.len()
            );
            assert_eq!(
                node.log.get((e.index - 1) as usize),
                Some(&e),
                "node {id}: applying entry {} that is not durable locally",
                e.log_id()
            );
            node.applied.push(e.clone());
            if self.check_applied_agreement {
                let first = self
                    .applied_anywhere
                    .entry(e.index)
                    .or_insert_with(|| e.clone());
                assert_eq!(
                    *first, e,
                    "state machine safety: node {id} applied a different entry at index {}",
                    e.index
                );
            }
        }
        self.node_mut(id).engine.on_applied(last);
    }

    // ----- persistence control -------------------------------------------------

    /// Queues node `id`'s writes (and the messages waiting for them) from now on.
    pub fn hold_persist(&mut self, id: NodeId) {
        self.node_mut(id).hold_persist = true;
    }

    /// Completes every queued write of node `id`, in order, and stops holding.
    pub fn release_persist(&mut self, id: NodeId) {
        self.node_mut(id).hold_persist = false;
        while let Some(w) = self.node_mut(id).pending.pop_front() {
            self.do_write(id, w);
        }
        self.process(id);
    }

    /// Completes only the oldest queued write of node `id` (persistence
    /// stays held). Returns false when none was queued.
    pub fn persist_next(&mut self, id: NodeId) -> bool {
        let Some(w) = self.node_mut(id).pending.pop_front() else {
            return false;
        };
        self.do_write(id, w);
        self.process(id);
        true
    }

    /// Restarts node `id` from its durable log, hard state and state
    /// machine; queued (non-durable) writes are lost.
    pub fn restart(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        node.pending.clear();
        node.hold_persist = false;
        node.installing = None;
        let initial = InitialState {
            hard_state: node.hard_state,
            snapshot: None,
            purged: Default::default(),
            entries: node.log.clone(),
            bootstrap: node.bootstrap.clone(),
            applied: node.applied.len() as u64,
            payloads_dropped_to: 0,
        };
        node.engine = Engine::new(node.cfg.clone(), initial).expect("valid test configuration");
        self.process(id);
    }

    // ----- the network ------------------------------------------------------

    fn blocked(&self, m: &Message) -> bool {
        self.dropped_links.contains(&(m.from, m.to))
            || self.ignored_kinds.contains(m.body.kind())
            || self.filters.iter().any(|f| f(m))
    }

    fn send(&mut self, msg: Message, after_persist: bool) {
        self.sent.push(Sent {
            msg: msg.clone(),
            after_persist,
        });
        if !self.blocked(&msg) {
            self.queue.push_back(msg);
        }
    }

    /// Drops messages from `from` to `to` (one way).
    pub fn drop_link(&mut self, from: NodeId, to: NodeId) {
        self.dropped_links.insert((from, to));
    }

    /// Drops messages between `a` and `b` both ways.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.drop_link(a, b);
        self.drop_link(b, a);
    }

    /// Cuts `id` from every other node.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Drops every message of this kind ([`MessageBody::kind`]).
    pub fn ignore(&mut self, kind: &'static str) {
        self.ignored_kinds.insert(kind);
    }

    /// Drops every message for which `pred` returns true.
    pub fn drop_if(&mut self, pred: impl Fn(&Message) -> bool + 'static) {
        self.filters.push(Box::new(pred));
    }

    /// Removes every cut, ignored kind and filter.
    pub fn recover(&mut self) {
        self.dropped_links.clear();
        self.ignored_kinds.clear();
        self.filters.clear();
    }

    /// Puts a message in flight as if a node had sent it (not filtered now,
    /// but still subject to the filters at delivery).
    pub fn inject(&mut self, msg: Message) {
        self.queue.push_back(msg);
    }

    /// Hands `msg` straight to its recipient (no filters) and handles the output.
    pub fn step(&mut self, msg: Message) {
        let to = msg.to;
        if let Some(node) = self.nodes.get_mut(&to) {
            node.engine.step(msg);
            self.process(to);
        }
    }

    /// Delivers the front message of the queue. Returns false when the queue is empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(msg) = self.queue.pop_front() else {
            return false;
        };
        if !self.blocked(&msg) {
            self.step(msg);
        }
        true
    }

    /// Delivers messages until none is in flight.
    ///
    /// # Panics
    ///
    /// After [`MAX_DELIVERIES`] messages: the cluster is not quiescent.
    pub fn deliver_all(&mut self) {
        self.deliver_all_except(|_, _| false);
    }

    /// Like [`deliver_all`](Self::deliver_all), but loses each message for
    /// which `lose(network, message)` holds at the moment it would arrive.
    ///
    /// # Panics
    ///
    /// After [`MAX_DELIVERIES`] messages: the cluster is not quiescent.
    pub fn deliver_all_except(&mut self, lose: impl Fn(&Network, &Message) -> bool) {
        for _ in 0..MAX_DELIVERIES {
            let Some(msg) = self.queue.pop_front() else {
                return;
            };
            if !self.blocked(&msg) && !lose(self, &msg) {
                self.step(msg);
            }
        }
        panic!("deliver_all: still delivering after {MAX_DELIVERIES} messages (not quiescent)");
    }

    // ----- time ------------------------------------------------------------------

    /// Ticks node `id` `n` times, handling its output but delivering nothing.
    pub fn tick(&mut self, id: NodeId, n: u64) {
        for _ in 0..n {
            self.node_mut(id).engine.tick();
            self.process(id);
        }
    }

    /// `n` rounds of: tick every node once, then deliver everything.
    pub fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            for id in self.ids() {
                self.tick(id, 1);
            }
            self.deliver_all();
        }
    }

    /// Ticks every node (delivering after each round) until `done` holds;
    /// returns the number of rounds.
    ///
    /// # Panics
    ///
    /// When `done` does not hold after `max` rounds.
    pub fn tick_all_until(&mut self, max: u64, done: impl Fn(&Network) -> bool) -> u64 {
        for round in 0..=max {
            if done(self) {
                return round;
            }
            self.tick_all(1);
        }
        panic!("condition not reached after {max} rounds of tick_all");
    }

    /// Ticks only node `id` until it campaigns, then delivers everything;
    /// repeats until it is leader.
    ///
    /// Followers that heard from a leader within the election timeout refuse
    /// (check-quorum, thesis §4.2.3): let their lease lapse first, or disable
    /// `check_quorum`.
    ///
    /// # Panics
    ///
    /// When `id` is not leader after 10 maximal election timeouts.
    pub fn elect(&mut self, id: NodeId) {
        let bound = 10 * 2 * self.node(id).cfg.election_timeout_ticks;
        for _ in 0..bound {
            self.tick(id, 1);
            if self.role(id) != Role::Follower {
                self.deliver_all();
            }
            if self.role(id) == Role::Leader {
                return;
            }
        }
        panic!("elect: node {id} did not become leader within {bound} ticks");
    }

    // ----- client requests ------------------------------------------------------

    /// Proposes `d` on node `id` and handles its output (delivers nothing).
    pub fn propose(&mut self, id: NodeId, d: &str) -> Result<LogId, ProposeError> {
        let r = self.node_mut(id).engine.propose(data(d));
        self.process(id);
        r
    }

    /// Starts a ReadIndex read on node `id` and handles its output.
    pub fn read_index(&mut self, id: NodeId, rid: ReadId) -> Result<(), ReadError> {
        let r = self.node_mut(id).engine.read_index(rid);
        self.process(id);
        r
    }

    /// Tries a lease read on node `id` and handles its output.
    pub fn read_lease(&mut self, id: NodeId, rid: ReadId) -> Result<(), ReadError> {
        let r = self.node_mut(id).engine.read_lease(rid);
        self.process(id);
        r
    }

    /// Asks leader `id` to transfer leadership to `to` and handles its output.
    pub fn transfer_leader(&mut self, id: NodeId, to: NodeId) -> Result<(), TransferError> {
        let r = self.node_mut(id).engine.transfer_leader(to);
        self.process(id);
        r
    }
}

/// Helpers to build messages for injection.
pub mod msg {
    use super::*;

    /// A message.
    pub fn new(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
        Message {
            from,
            to,
            term,
            body,
        }
    }

    /// An AppendEntries.
    pub fn append(
        from: NodeId,
        to: NodeId,
        term: Term,
        prev: LogId,
        entries: Vec<Entry>,
        leader_commit: Index,
    ) -> Message {
        new(
            from,
            to,
            term,
            MessageBody::AppendEntries {
                prev_log_id: prev,
                entries,
                leader_commit,
                round: 0,
                heartbeat: false,
            },
        )
    }

    /// A RequestVote (not a pre-vote).
    pub fn vote(from: NodeId, to: NodeId, term: Term, last: LogId) -> Message {
        new(
            from,
            to,
            term,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_id: last,
                leadership_transfer: false,
            },
        )
    }

    /// A blank entry.
    pub fn blank(term: Term, index: Index) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Blank,
        }
    }
}
