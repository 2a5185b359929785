//! The engine test network: a simulated cluster of [`Engine`]s. One network
//! serves every engine-level test that drives whole clusters: raft-core's
//! scenario tests (`tests/scenarios/`), its catch-up tests
//! (`tests/catch_up.rs`: random order, losses, slow and failing storage,
//! snapshots), its byte-bound tests (`tests/log_bytes.rs`) and the engine
//! benchmark (`raftkv-bench`'s `EngineCluster`). The deterministic
//! simulation (`tests/sim/`) shares its message queue and link state
//! ([`Links`]) and its durable-log model ([`DurableLog`]); its world (nodes
//! that crash and restart, disks that complete writes one by one, state
//! machines that apply later, clients, and checks that report a violation
//! with a replayable trace instead of panicking) stays its own: it decides
//! per step what happens next from one seeded generator, where this network
//! settles synchronously.
//!
//! Every node is driven exactly as the engine's driver contract says
//! (`raft_core::engine` module docs): for each `Ready` the harness sends
//! `messages`, writes hard state / truncation / entries to the node's
//! "durable" log, sends `persisted_messages` only once that write is done,
//! reports the write with `on_persisted`, applies `committed_entries` and
//! reports them with `on_applied`.
//!
//! # Storage
//!
//! Each node's durable storage is a [`DurableLog`]; entries a leader asks
//! to read back ([`Ready::fetch_entries`](crate::engine::Ready::fetch_entries)) are read from it. Storage is
//! instant by default. [`Network::hold_persist`] queues a node's
//! writes (and so its `persisted_messages`) until
//! [`Network::release_persist`], which lets tests watch what a node does
//! before its state is durable. A `Ready`'s committed entries are applied
//! when its write is done; [`Network::apply_before_persist`] applies them
//! at once instead (the contract lets steps 2–5 overlap).
//! [`Network::restart`] rebuilds a node from its durable state only.
//!
//! Read-backs are answered by the next delivery step after their write is
//! done ([`Network::deliver_one`], each round of [`Network::deliver_all`]),
//! never inside the `Ready` that asked for them: in the driver the storage
//! task answers later, after the engine has moved on. A node's
//! [`fetch_policy`](Node::fetch_policy) can make them later still ([`FetchFate`]):
//! late by a number of ticks of virtual time ([`Network::now`], advanced by
//! [`Network::tick_all`]), failed (an empty answer), or lost (never
//! answered); [`FetchPolicy::Draw`] draws each read-back's fate.
//! [`Node::refuse_entries`] makes a follower drop every AppendEntries that
//! carries entries, as the driver does while its state machine lags.
//!
//! # Messages
//!
//! Messages in flight are a [`Links`] queue, delivered in the order they
//! were sent, or in a random order drawn from a seed
//! ([`Network::random_delivery`], which also loses each message with a
//! given probability). Links can be dropped one way
//! ([`Network::drop_link`]), cut both ways ([`Network::cut`]), a node can be
//! isolated, a message kind ignored, or an arbitrary predicate installed
//! ([`Network::drop_if`]); [`Network::recover`] heals everything. Filters are
//! checked both when a message is sent and when it is delivered, so a cut
//! also loses the messages already in flight on it.
//!
//! # Snapshots
//!
//! By default a snapshot build fails the test (raise the thresholds);
//! [`Network::allow_snapshot_requests`] records builds and never completes
//! them, and leaves an install in progress ([`Node::installing`]).
//! [`Network::complete_snapshots`] does them for real: a build completes
//! once its entries are applied (its data: the entries applied through its
//! index, kept in [`Network::snapshot_data`]), the leader's
//! `InstallSnapshot` carries it, the sender hears how the transfer ended
//! (`report_snapshot`: delivered, or lost), and the receiver installs it at
//! once (state machine, then log).
//!
//! # Checks
//!
//! The harness checks invariants on every step and panics when one breaks:
//! - election safety (paper §5.2, Figure 3): at most one leader per term;
//! - state machine safety (paper §5.4.3): every node applies the same entry
//!   at a given index (can be switched off for tests that forge messages);
//! - the driver contract itself: writes continue the durable log, applied
//!   entries are durable locally and applied in order, the persisted commit
//!   index never exceeds the durable log, a leader sends its latest
//!   snapshot.
//!
//! A benchmark switches off what costs memory per message or entry:
//! [`Network::record_sent`], [`Network::keep_applied`] and
//! [`Network::check_applied_agreement`].

mod driver;
mod faults;
mod links;
pub mod msg;
mod snapshots;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use faults::{FetchFate, FetchPolicy};
pub use wire::Links;

use super::{DurableLog, ReadyWrite};
use crate::engine::{
    Engine, EntryFetch, InitialState, LogCompaction, ProposalRefused, ReadId, ReadRefused,
    ReadState, Role, SoftState, TransferRefused,
};
use crate::{
    Config, Entry, EntryPayload, Index, LogId, Membership, Message, NodeId, SnapshotMeta, Term,
};

/// Upper bound on messages delivered by one [`Network::deliver_all`].
pub const MAX_DELIVERIES: usize = 100_000;
/// Upper bound on `Ready`s handled in a row for one node by [`Network::process`].
pub const MAX_READY_LOOPS: usize = 10_000;

/// One durable write waiting for storage (only while persistence is held).
#[derive(Debug)]
struct Write {
    /// The write and the messages waiting for it.
    log: ReadyWrite,
    /// Committed entries of the same `Ready`, applied once the write is
    /// done (unless [`Network::apply_before_persist`]).
    committed: Vec<Entry>,
    /// A compaction to record after the write.
    compact_log: Option<LogCompaction>,
    /// Entries to read back once the write is done.
    fetch_entries: Vec<EntryFetch>,
}

/// A node: its engine, its durable storage and its state machine.
#[derive(Debug)]
pub struct Node {
    /// The engine under test.
    pub engine: Engine,
    /// The durable log and hard state.
    pub disk: DurableLog,
    /// The state machine: every entry applied, in order (unless
    /// [`Network::keep_applied`] is off).
    pub applied: Vec<Entry>,
    /// The index of the last entry applied.
    pub applied_index: Index,
    /// Normal (client) entries applied.
    pub applied_normal: u64,
    /// Entries read back from `disk` for followers.
    pub read_back: u64,
    /// Snapshot builds the engine asked for and not completed (only with
    /// [`Network::allow_snapshot_requests`], which never completes them,
    /// or [`Network::complete_snapshots`], until the entries are applied).
    pub snapshot_requests: Vec<SnapshotMeta>,
    /// The latest snapshot of the state machine, built or installed (with
    /// [`Network::complete_snapshots`]); its data is
    /// [`Network::snapshot_data`].
    pub snapshot: Option<SnapshotMeta>,
    /// Snapshots installed (with [`Network::complete_snapshots`]).
    pub snapshots_installed: u64,
    /// A snapshot delivered and not yet installed.
    incoming: Option<SnapshotMeta>,
    /// How this node's storage answers read-backs
    /// ([`Ready::fetch_entries`](crate::engine::Ready::fetch_entries)).
    pub fetch_policy: FetchPolicy,
    /// Read-backs waiting for their answer: the fetch, the virtual time it
    /// is due at ([`Network::now`]) and whether it fails.
    fetches: Vec<(EntryFetch, u64, bool)>,
    /// Whether the node drops every AppendEntries that carries entries
    /// while it is not leader, as the driver does while its state machine
    /// lags behind `max_unapplied_bytes`.
    pub refuse_entries: bool,
    /// Whether writes are queued instead of done at once.
    pub hold_persist: bool,
    pending: VecDeque<Write>,
    /// Reads released by the engine.
    pub read_states: Vec<ReadState>,
    /// Reads failed by the engine.
    pub failed_reads: Vec<(ReadId, ReadRefused)>,
    /// Answers to requests this node forwarded to its leader.
    pub forward_responses: Vec<crate::engine::ForwardResponse>,
    /// Every soft state reported, in order.
    pub soft_states: Vec<SoftState>,
    /// A snapshot install the engine asked for and the harness left in
    /// progress (always, unless [`Network::complete_snapshots`]).
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
        self.disk.log.iter().map(Entry::log_id).collect()
    }

    /// Number of writes waiting while persistence is held.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// Number of read-backs asked for and not answered yet (lost ones
    /// excluded: they are never answered).
    pub fn pending_fetches(&self) -> usize {
        self.fetches.len()
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

/// A predicate on messages: true drops the message.
type Filter = Box<dyn Fn(&Message) -> bool>;

/// The order messages in flight are delivered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The order they were sent in (the default).
    Fifo,
    /// A message picked at random among those in flight each time, drawn
    /// from [`Network::rng`] (so a seed replays the same order).
    Random,
}

/// The simulated cluster. See the [module docs](self).
pub struct Network {
    /// The nodes, by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages in flight and the cut links (see [`Network::cut`]).
    pub links: Links<Message>,
    /// The order messages are delivered in ([`Delivery::Fifo`] by default).
    pub delivery: Delivery,
    /// The probability that a message in flight is lost instead of
    /// delivered (0 by default; drawn from [`rng`](Self::rng)).
    pub drop_rate: f64,
    /// The network's random generator (random delivery order, losses and
    /// [`FetchPolicy::Draw`]); seeded with 0 unless
    /// [`random_delivery`](Self::random_delivery) seeds it.
    pub rng: ChaCha8Rng,
    /// Virtual time: rounds of [`tick_all`](Self::tick_all) so far. Late
    /// read-backs ([`FetchFate::Late`]) are due in it.
    pub now: u64,
    /// Every message any node sent, in order (filtered or not).
    pub sent: Vec<Sent>,
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
    /// Whether to keep every sent message in [`sent`](Self::sent) (on by
    /// default).
    pub record_sent: bool,
    /// Whether nodes keep their applied entries in [`Node::applied`] (on by
    /// default; the counters are kept either way).
    pub keep_applied: bool,
    /// Whether the engines may ask for snapshots and compact their logs
    /// (off by default: a request then fails the test, whose thresholds
    /// should be raised). Requests are recorded and never completed.
    pub allow_snapshot_requests: bool,
    /// Whether snapshots are built, sent and installed for real (off by
    /// default; implies [`allow_snapshot_requests`](Self::allow_snapshot_requests)
    /// and needs [`keep_applied`](Self::keep_applied)). See the
    /// [module docs](self#snapshots).
    pub complete_snapshots: bool,
    /// The data of every snapshot built, by index: the entries applied
    /// through it (the same on every node, by state machine safety).
    pub snapshot_data: BTreeMap<Index, Vec<Entry>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("in_flight", &self.links.len())
            .field("cut", &self.links.describe_cuts())
            .field("delivery", &self.delivery)
            .field("now", &self.now)
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
                    disk: DurableLog::default(),
                    applied: Vec::new(),
                    applied_index: 0,
                    applied_normal: 0,
                    read_back: 0,
                    snapshot_requests: Vec::new(),
                    snapshot: None,
                    snapshots_installed: 0,
                    incoming: None,
                    fetch_policy: FetchPolicy::Always(FetchFate::Prompt),
                    fetches: Vec::new(),
                    refuse_entries: false,
                    hold_persist: false,
                    pending: VecDeque::new(),
                    read_states: Vec::new(),
                    failed_reads: Vec::new(),
                    forward_responses: Vec::new(),
                    soft_states: Vec::new(),
                    installing: None,
                    cfg,
                    bootstrap: membership.clone(),
                },
            );
        }
        Self {
            nodes,
            links: Links::new(),
            delivery: Delivery::Fifo,
            drop_rate: 0.0,
            rng: ChaCha8Rng::seed_from_u64(0),
            now: 0,
            sent: Vec::new(),
            ignored_kinds: BTreeSet::new(),
            filters: Vec::new(),
            leaders: BTreeMap::new(),
            applied_anywhere: BTreeMap::new(),
            check_applied_agreement: true,
            apply_before_persist: false,
            record_sent: true,
            keep_applied: true,
            allow_snapshot_requests: false,
            complete_snapshots: false,
            snapshot_data: BTreeMap::new(),
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

    /// Ticks node `id` `n` times, handling its output but delivering nothing.
    pub fn tick(&mut self, id: NodeId, n: u64) {
        for _ in 0..n {
            self.node_mut(id).engine.tick();
            self.process(id);
        }
    }

    /// `n` rounds of: advance [`now`](Self::now), tick every node once,
    /// then deliver everything (answering the read-backs that fall due).
    pub fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            self.now += 1;
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

    /// Proposes `d` on node `id` and handles its output (delivers nothing).
    pub fn propose(&mut self, id: NodeId, d: &str) -> Result<LogId, ProposalRefused> {
        self.propose_bytes(id, data(d))
    }

    /// Proposes `payload` on node `id` and handles its output (delivers nothing).
    pub fn propose_bytes(&mut self, id: NodeId, payload: Bytes) -> Result<LogId, ProposalRefused> {
        let r = self.node_mut(id).engine.propose(payload);
        self.process(id);
        r
    }

    /// Starts a ReadIndex read on node `id` and handles its output.
    pub fn read_index(&mut self, id: NodeId, rid: ReadId) -> Result<(), ReadRefused> {
        let r = self.node_mut(id).engine.read_index(rid);
        self.process(id);
        r
    }

    /// Tries a lease read on node `id` and handles its output.
    pub fn read_lease(&mut self, id: NodeId, rid: ReadId) -> Result<(), ReadRefused> {
        let r = self.node_mut(id).engine.read_lease(rid);
        self.process(id);
        r
    }

    /// Asks leader `id` to transfer leadership to `to` and handles its output.
    pub fn transfer_leader(&mut self, id: NodeId, to: NodeId) -> Result<(), TransferRefused> {
        let r = self.node_mut(id).engine.transfer_leader(to);
        self.process(id);
        r
    }
}
