//! One simulated cluster: N engines, their durable storage and state
//! machines, the network and the clients, all driven by one seeded RNG in
//! virtual time.
//!
//! # The driver contract, per node
//!
//! After every input the node's `Ready`s are drained at once:
//! 1. `messages` go to the network;
//! 2. the write (`hard_state`, `truncate_from`, `entries`) is queued as a
//!    pending durable write, together with `persisted_messages` (a write is
//!    queued even when empty if it carries messages: they must wait for
//!    every earlier write);
//! 3. `committed_entries` are queued for applying;
//! 4. `read_states` wait for the state machine, `failed_reads` fail.
//!
//! Pending writes complete later, at random, in order (one at a time or
//! several at once, like a group commit). Only then does the model's
//! durable storage (hard state + log) change, the write's
//! `persisted_messages` go out and `on_persisted(last entry id)` is called.
//! Queued entries are applied later, at random, in order, then
//! `on_applied` is called. A crash drops every pending write (with its
//! unsent messages), the apply queue and pending reads; the node restarts
//! from its durable hard state, log and state machine (`InitialState::
//! applied` = the state machine's applied index). Each write is atomic (the
//! storage contract: a write is either fully visible or not at all).
//!
//! # Time
//!
//! One virtual clock: a tick event ticks every live node once (in random
//! order). Nodes never drift apart, which leader leases need (thesis
//! §6.4.1: leases assume bounded clock drift); everything else (message
//! delivery, disk writes, applying, client requests) is randomly
//! interleaved between ticks, and ticks get rarer while messages and writes
//! are pending (networks and disks are much faster than a tick).
//!
//! # Faults (second phase only)
//!
//! Per message: 4% dropped, 4% duplicated, 8% delayed by 3-25 ticks (the
//! others take 0-1 tick), plus random reordering. Per tick, scaled by a
//! per-run intensity: crashes (back at once or after up to 30 ticks; at
//! most a bare majority down), partitions lasting 3-50 ticks (a node
//! isolated, a random split, a node that can only receive or only send, a
//! single one-way link), leadership transfers.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};

use raft_core::engine::{Engine, InitialState, ReadError, ReadId, ReadState, Ready, Role, WriteId};
use raft_core::testing::linearizability::{check, CheckLimits, CheckResult, Op, OpId, Outcome};
use raft_core::{
    AppendResult, Config, Entry, HardState, Index, Membership, Message, MessageBody, NodeId,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checks::{Holder, Observer, Violation};
use super::clients::{ClientStats, Clients, Outstanding, Waiting};
use super::model::{encode, Kv};
use super::network::Network;
use super::runner::{panic_message, replay_command};
use super::trace::{Event, Loss, MsgInfo, Trace};

/// The outcome of a check: `Err` carries the violation.
pub type Check = Result<(), Violation>;

/// The size of one run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Voters in the cluster.
    pub nodes: usize,
    /// Steps of the first phase, without faults.
    pub clean_steps: u64,
    /// Steps of the second phase, with faults.
    pub chaos_steps: u64,
    /// Steps allowed for the cluster to converge after healing.
    pub converge_steps: u64,
}

/// Fault counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Node crashes.
    pub crashes: u64,
    /// Partition changes (each a new set of cut links).
    pub partitions: u64,
    /// Messages dropped at random.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Messages given a long delay.
    pub delayed: u64,
    /// Leadership transfers requested.
    pub transfers: u64,
}

impl Faults {
    /// Total faults injected.
    pub fn total(&self) -> u64 {
        self.crashes
            + self.partitions
            + self.dropped
            + self.duplicated
            + self.delayed
            + self.transfers
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Faults) {
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.delayed += other.delayed;
        self.transfers += other.transfers;
    }
}

/// What a successful run reports.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Digest of the whole event trace and final state.
    pub digest: u64,
    /// Steps taken.
    pub steps: u64,
    /// Ticks elapsed.
    pub ticks: u64,
    /// Terms that had a leader.
    pub elections: u64,
    /// Writes acknowledged during the fault-free first phase.
    pub clean_writes_ok: u64,
    /// Client counters.
    pub clients: ClientStats,
    /// Fault counters.
    pub faults: Faults,
    /// The final commit index.
    pub commit: Index,
    /// Whether the linearizability check ran out of budget.
    pub lin_unknown: bool,
}

/// One simulated node: the engine (when up) and what a real node keeps on
/// disk and in memory around it.
#[derive(Debug)]
struct Node {
    id: NodeId,
    cfg: Config,
    engine: Option<Engine>,
    incarnation: u32,
    /// Durable hard state.
    hard_state: HardState,
    /// Durable log; `log[i]` has index `i + 1`.
    log: Vec<Entry>,
    /// The state machine, durable with its applied index.
    kv: Kv,
    /// Writes handed out and not yet durable, oldest first.
    writes: VecDeque<PendingWrite>,
    /// Committed entries handed out and not yet applied.
    to_apply: VecDeque<Entry>,
    /// Reads released by the engine, waiting for the state machine.
    reads_ready: Vec<(ReadState, usize, OpId)>,
    /// Read ids handed to this incarnation and not yet answered.
    reads_asked: BTreeSet<ReadId>,
    /// Last observed term, commit index and role of this incarnation.
    seen_term: u64,
    seen_commit: Index,
    seen_role: Role,
    /// While down: the tick to restart at.
    restart_at: u64,
}

#[derive(Debug)]
struct PendingWrite {
    /// The engine's name for the write, reported when it completes.
    write_id: Option<WriteId>,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    entries: Vec<Entry>,
    persisted_messages: Vec<Message>,
}

/// What a step does.
#[derive(Debug, Clone, Copy)]
enum Action {
    Tick,
    Deliver,
    CompleteWrite(usize),
    Apply(usize),
    Client,
}

/// Client timeout, in ticks.
const CLIENT_TIMEOUT: u64 = 40;
/// Steps between full log checks of every node.
const FULL_CHECK_EVERY: u64 = 50;

/// The whole simulated cluster.
#[derive(Debug)]
pub struct World {
    seed: u64,
    params: Params,
    rng: ChaCha8Rng,
    /// Steps taken; also the clock of the client history.
    step: u64,
    /// Virtual time in ticks.
    now: u64,
    nodes: Vec<Node>,
    net: Network,
    clients: Clients,
    obs: Observer,
    faults: Faults,
    trace: Trace,
    membership: Membership,
    faulty: bool,
    /// Scales the node-level fault rates of this run.
    intensity: f64,
    /// When the current partition heals.
    heal_at: Option<u64>,
    clients_active: bool,
    next_read: ReadId,
    choices: Vec<(u32, Action)>,
}

impl World {
    /// A new cluster for `seed`.
    pub fn new(seed: u64, params: Params, verbose: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = params.nodes;
        let membership = Membership::new(1..=n as NodeId);
        // One configuration per run, varied across runs.
        let heartbeat = rng.gen_range(1..=3);
        let lease = rng.gen_range(4..=8);
        let pre_vote = rng.gen_bool(0.8);
        let check_quorum = rng.gen_bool(0.8);
        let max_entries = *[1, 2, 8, 1024].choose(&mut rng).unwrap();
        let max_inflight = *[1, 2, 64].choose(&mut rng).unwrap();
        let max_uncommitted = *[4, 64, 65_536].choose(&mut rng).unwrap();
        let nodes = (1..=n as NodeId)
            .map(|id| {
                let mut cfg = Config::new(id);
                cfg.election_timeout_ticks = 10;
                cfg.heartbeat_interval_ticks = heartbeat;
                cfg.lease_ticks = lease;
                cfg.pre_vote = pre_vote;
                cfg.check_quorum = check_quorum;
                cfg.max_entries_per_message = max_entries;
                cfg.max_inflight_messages = max_inflight;
                cfg.max_uncommitted_entries = max_uncommitted;
                cfg.seed = rng.gen();
                let engine = Engine::new(cfg.clone(), InitialState::bootstrap(membership.clone()))
                    .expect("valid configuration");
                Node {
                    id,
                    cfg,
                    engine: Some(engine),
                    incarnation: 0,
                    hard_state: HardState::default(),
                    log: Vec::new(),
                    kv: Kv::default(),
                    writes: VecDeque::new(),
                    to_apply: VecDeque::new(),
                    reads_ready: Vec::new(),
                    reads_asked: BTreeSet::new(),
                    seen_term: 0,
                    seen_commit: 0,
                    seen_role: Role::Follower,
                    restart_at: 0,
                }
            })
            .collect();
        let clients = Clients::new(rng.gen_range(3..=6), rng.gen_range(3..=5));
        let intensity = rng.gen_range(0.3..2.0);
        let mut world = Self {
            seed,
            params,
            rng,
            step: 0,
            now: 0,
            nodes,
            net: Network::default(),
            clients,
            obs: Observer::default(),
            faults: Faults::default(),
            trace: Trace::new(verbose),
            membership,
            faulty: false,
            intensity,
            heal_at: None,
            clients_active: true,
            next_read: 1,
            choices: Vec::new(),
        };
        if verbose {
            let c = &world.nodes[0].cfg;
            println!(
                "seed {seed}, {n} nodes: heartbeat {} ticks, election timeout {}, lease {}, \
                 pre_vote {}, check_quorum {}, max_entries_per_message {}, \
                 max_inflight_messages {}, max_uncommitted_entries {}, {} clients on {} keys, \
                 fault intensity {intensity:.2}",
                c.heartbeat_interval_ticks,
                c.election_timeout_ticks,
                c.lease_ticks,
                c.pre_vote,
                c.check_quorum,
                c.max_entries_per_message,
                c.max_inflight_messages,
                c.max_uncommitted_entries,
                world.clients.list.len(),
                world.clients.keys.len()
            );
        }
        world.trace.mix((
            heartbeat,
            lease,
            pre_vote,
            check_quorum,
            max_entries,
            max_inflight,
        ));
        world
    }

    /// Runs the three phases and the final checks.
    pub fn run(mut self) -> Result<Report, String> {
        match catch_unwind(AssertUnwindSafe(|| self.run_phases())) {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(violation)) => Err(self.failure_report(&violation)),
            Err(panic) => Err(self.failure_report(&format!(
                "PANIC (in the engine or the simulation): {}",
                panic_message(&*panic)
            ))),
        }
    }

    fn run_phases(&mut self) -> Result<Report, Violation> {
        self.record(Event::Phase("clean"));
        for _ in 0..self.params.clean_steps {
            self.step()?;
        }
        let clean_writes_ok = self.clients.stats.writes_ok;
        if clean_writes_ok == 0 {
            return Err(format!(
                "NO PROGRESS: no write was acknowledged in the fault-free first phase \
                 ({} steps, {} ticks); terms with a leader so far: {:?}",
                self.params.clean_steps,
                self.now,
                self.obs.leaders.keys().collect::<Vec<_>>()
            ));
        }
        self.record(Event::Phase("chaos"));
        self.faulty = true;
        for _ in 0..self.params.chaos_steps {
            self.step()?;
        }
        self.record(Event::Phase("converge"));
        self.faulty = false;
        self.clients_active = false;
        self.net.heal();
        self.heal_at = None;
        self.record(Event::Heal);
        for i in 0..self.nodes.len() {
            if self.nodes[i].engine.is_none() {
                self.restart(i)?;
            }
        }
        self.converge()?;
        self.final_checks()?;
        let lin_unknown = self.check_history()?;
        let commit = self.nodes[0]
            .engine
            .as_ref()
            .map_or(0, Engine::commit_index);
        for node in &self.nodes {
            self.trace.mix((
                node.id,
                node.hard_state.term,
                node.hard_state.commit,
                node.kv.applied,
            ));
        }
        Ok(Report {
            digest: self.trace.digest(),
            steps: self.step,
            ticks: self.now,
            elections: self.obs.leaders.len() as u64,
            clean_writes_ok,
            clients: self.clients.stats,
            faults: self.faults,
            commit,
            lin_unknown,
        })
    }

    fn record(&mut self, event: Event) {
        self.trace.record(self.step, self.now, event);
    }

    // ----- the step loop ------------------------------------------------------

    fn step(&mut self) -> Check {
        self.step += 1;
        let action = self.pick();
        match action {
            Action::Tick => self.tick()?,
            Action::Deliver => self.deliver()?,
            Action::CompleteWrite(i) => {
                // Group commit: sometimes every pending write at once.
                let pending = self.nodes[i].writes.len();
                let count = if self.rng.gen_bool(0.5) {
                    1
                } else {
                    self.rng.gen_range(1..=pending)
                };
                for _ in 0..count {
                    self.complete_write(i)?;
                }
            }
            Action::Apply(i) => self.apply(i)?,
            Action::Client => self.client_request()?,
        }
        self.check_all()
    }

    fn pick(&mut self) -> Action {
        let mut choices = std::mem::take(&mut self.choices);
        choices.clear();
        // Ticks are rarer while messages and writes are pending: a network
        // and a disk are much faster than the tick (50-100 ms in practice).
        let deliverable = self.net.deliverable(self.now).min(20) as u32;
        let writes: u32 = self
            .nodes
            .iter()
            .map(|n| n.writes.len().min(5) as u32)
            .sum();
        choices.push((
            120u32.saturating_sub(15 * deliverable + 10 * writes).max(4),
            Action::Tick,
        ));
        if deliverable > 0 {
            choices.push((100 + 60 * deliverable, Action::Deliver));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.engine.is_none() {
                continue;
            }
            if !node.writes.is_empty() {
                choices.push((
                    60 + 20 * node.writes.len().min(5) as u32,
                    Action::CompleteWrite(i),
                ));
            }
            if !node.to_apply.is_empty() {
                choices.push((40, Action::Apply(i)));
            }
        }
        if self.clients_active && self.clients.list.iter().any(|c| c.outstanding.is_none()) {
            choices.push((80, Action::Client));
        }
        let total: u32 = choices.iter().map(|(w, _)| w).sum();
        let mut pick = self.rng.gen_range(0..total);
        let mut action = Action::Tick;
        for (w, a) in &choices {
            if pick < *w {
                action = *a;
                break;
            }
            pick -= w;
        }
        self.choices = choices;
        action
    }

    fn tick(&mut self) -> Check {
        self.now += 1;
        self.record(Event::Tick(self.now));
        if self.faulty {
            self.inject_faults()?;
        }
        let mut order: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some())
            .collect();
        order.shuffle(&mut self.rng);
        for i in order {
            if let Some(engine) = self.nodes[i].engine.as_mut() {
                engine.tick();
            }
            self.drain(i)?;
        }
        for c in 0..self.clients.list.len() {
            let expired = self.clients.list[c]
                .outstanding
                .as_ref()
                .is_some_and(|o| o.since + CLIENT_TIMEOUT < self.now);
            if expired {
                self.clients.give_up(c);
                self.record(Event::GiveUp {
                    client: c as u64,
                    why: "timeout",
                });
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> Check {
        let Some(packet) = self.net.take_random(self.now, &mut self.rng) else {
            return Ok(());
        };
        let msg = packet.msg;
        let info = MsgInfo::of(&msg);
        let to = msg.to as usize - 1;
        if self.net.is_cut(msg.from, msg.to) {
            self.record(Event::Lost {
                msg: info,
                why: Loss::Partition,
            });
            return Ok(());
        }
        if self.nodes[to].engine.is_none() {
            self.record(Event::Lost {
                msg: info,
                why: Loss::Down,
            });
            return Ok(());
        }
        if self.faulty && self.rng.gen_bool(0.04) {
            self.faults.dropped += 1;
            self.record(Event::Lost {
                msg: info,
                why: Loss::Random,
            });
            return Ok(());
        }
        let dup = self.faulty && self.rng.gen_bool(0.04);
        if dup {
            self.faults.duplicated += 1;
            let at = self.now + self.rng.gen_range(0..=6);
            self.net.push(msg.clone(), at);
        }
        self.record(Event::Deliver { msg: info, dup });
        if let Some(engine) = self.nodes[to].engine.as_mut() {
            engine.step(msg);
        }
        self.drain(to)
    }

    // ----- the driver -----------------------------------------------------------

    /// Handles every `Ready` node `i` has.
    fn drain(&mut self, i: usize) -> Check {
        for _ in 0..1000 {
            self.observe(i)?;
            let Some(engine) = self.nodes[i].engine.as_mut() else {
                return Ok(());
            };
            if !engine.has_ready() {
                return Ok(());
            }
            let ready = engine.ready();
            self.handle_ready(i, ready)?;
        }
        Err(format!(
            "node {}: has_ready() still true after 1000 Readys",
            i + 1
        ))
    }

    fn handle_ready(&mut self, i: usize, ready: Ready) -> Check {
        let id = self.nodes[i].id;
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
        } = ready;
        if compact_log.is_some() || build_snapshot.is_some() || install_snapshot.is_some() {
            return Err(format!(
                "node {id}: snapshot work, but the simulation sets no snapshot policy"
            ));
        }
        if let Some(s) = soft_state {
            self.record(Event::Role {
                node: id,
                role: s.role,
                term: s.term,
                leader: s.leader,
            });
        }
        if let Some(first) = entries.first() {
            let engine = self.nodes[i].engine.as_ref().expect("live");
            let Some(prev_term) = engine.term_at(first.index - 1) else {
                return Err(format!(
                    "node {id}: Ready::entries start at {} but the log has no entry before it",
                    first.log_id()
                ));
            };
            for (k, e) in entries.iter().enumerate() {
                if e.index != first.index + k as u64 {
                    return Err(format!(
                        "node {id}: Ready::entries not consecutive: {entries:?}"
                    ));
                }
            }
            let holder = Holder {
                node: id,
                incarnation: self.nodes[i].incarnation,
            };
            self.obs.record_entries(holder, prev_term, &entries)?;
        }
        for msg in messages {
            self.send(i, msg, false)?;
        }
        // Committed entries: consecutive after what was handed out, and
        // already durable here ("committed and durable locally").
        let node = &mut self.nodes[i];
        for e in committed_entries {
            let expected = node.to_apply.back().map_or(node.kv.applied, |x| x.index) + 1;
            if e.index != expected {
                return Err(format!(
                    "node {id}: Ready::committed_entries hands out {} but the next entry to \
                     apply is {expected} (state machine applied index {}, {} queued; \
                     durable hard state {:?}, incarnation {}). Entries must be applied exactly \
                     once: after a restart applying must resume after InitialState::applied",
                    e.log_id(),
                    node.kv.applied,
                    node.to_apply.len(),
                    node.hard_state,
                    node.incarnation
                ));
            }
            if node.log.get(e.index as usize - 1) != Some(&e) {
                return Err(format!(
                    "node {id}: committed entry {} handed out for applying is not in the \
                     durable log (durable last {:?})",
                    e.log_id(),
                    node.log.last().map(Entry::log_id)
                ));
            }
            node.to_apply.push_back(e);
        }
        if hard_state.is_some()
            || truncate_from.is_some()
            || !entries.is_empty()
            || !persisted_messages.is_empty()
        {
            node.writes.push_back(PendingWrite {
                write_id,
                hard_state,
                truncate_from,
                entries,
                persisted_messages,
            });
        }
        for rs in read_states {
            if !self.nodes[i].reads_asked.remove(&rs.id) {
                return Err(format!(
                    "node {id}: ReadState for read {} that is not pending (answered twice?)",
                    rs.id
                ));
            }
            if let Some(client) = self.clients.take_read(i, rs.id) {
                let (op, _) = self.clients.waiting_op(client).expect("waiting");
                self.nodes[i].reads_ready.push((rs, client, op));
            }
        }
        for (read, err) in failed_reads {
            if !self.nodes[i].reads_asked.remove(&read) {
                return Err(format!(
                    "node {id}: failed read {read} ({err}) that is not pending (answered twice?)"
                ));
            }
            if let Some(client) = self.clients.take_read(i, read) {
                self.clients.complete(client, self.step, Outcome::Failed);
                self.record(Event::Complete {
                    client: client as u64,
                    outcome: "read failed".into(),
                });
            }
        }
        self.serve_reads(i);
        Ok(())
    }

    /// Puts a message from node `i` on the network, after checking the
    /// promises it makes about durable state.
    fn send(&mut self, i: usize, msg: Message, persisted: bool) -> Check {
        let node = &self.nodes[i];
        let id = node.id;
        if msg.from != id || msg.to == id || msg.to == 0 || msg.to > self.nodes.len() as NodeId {
            return Err(format!("node {id} sent a misaddressed message {msg:?}"));
        }
        let durable = node.hard_state;
        match &msg.body {
            MessageBody::RequestVote {
                pre_vote: false, ..
            } if durable.term != msg.term || durable.vote != Some(id) => {
                return Err(format!(
                    "DURABILITY: node {id} asks for votes in term {} before its own vote is \
                     durable (durable hard state {durable:?}; persisted_messages: {persisted})",
                    msg.term
                ));
            }
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } if durable.term != msg.term || durable.vote != Some(msg.to) => {
                return Err(format!(
                    "DURABILITY: node {id} grants its vote to {} in term {} before the vote is \
                     durable (durable hard state {durable:?}; persisted_messages: {persisted})",
                    msg.to, msg.term
                ));
            }
            MessageBody::AppendEntriesResponse {
                result: AppendResult::Success { last_index },
                ..
            } if (node.log.len() as u64) < *last_index => {
                return Err(format!(
                    "DURABILITY: node {id} acknowledges entries up to {last_index} to {} but \
                     only {} are durable (persisted_messages: {persisted})",
                    msg.to,
                    node.log.len()
                ));
            }
            _ => {}
        }
        let info = MsgInfo::of(&msg);
        self.record(Event::Send {
            msg: info,
            persisted,
        });
        if self.net.is_cut(msg.from, msg.to) {
            self.record(Event::Lost {
                msg: info,
                why: Loss::Partition,
            });
            return Ok(());
        }
        let latency = if self.faulty && self.rng.gen_bool(0.08) {
            self.faults.delayed += 1;
            self.rng.gen_range(3..=25)
        } else {
            self.rng.gen_range(0..=1)
        };
        self.net.push(msg, self.now + latency);
        Ok(())
    }

    /// The oldest pending write of node `i` becomes durable.
    fn complete_write(&mut self, i: usize) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        let Some(write) = node.writes.pop_front() else {
            return Ok(());
        };
        if let Some(hs) = write.hard_state {
            let old = node.hard_state;
            if hs.term < old.term {
                return Err(format!(
                    "node {id}: durable term goes back: {old:?} -> {hs:?}"
                ));
            }
            if hs.term == old.term && old.vote.is_some() && hs.vote != old.vote {
                return Err(format!(
                    "ELECTION SAFETY: node {id} changes its vote within term {}: {old:?} -> {hs:?}",
                    hs.term
                ));
            }
            if hs.commit < old.commit {
                return Err(format!(
                    "node {id}: durable commit goes back: {old:?} -> {hs:?}"
                ));
            }
            node.hard_state = hs;
        }
        if let Some(from) = write.truncate_from {
            if from == 0 {
                return Err(format!("node {id}: truncate_from 0"));
            }
            for e in node.log.iter().skip(from as usize - 1) {
                if self
                    .obs
                    .committed(e.index)
                    .is_some_and(|c| c.term == e.term)
                {
                    return Err(format!(
                        "node {id}: truncation from {from} deletes committed entry {}",
                        e.log_id()
                    ));
                }
            }
            node.log.truncate(from as usize - 1);
        }
        if let Some(first) = write.entries.first() {
            if first.index != node.log.len() as u64 + 1 {
                return Err(format!(
                    "node {id}: write appends from {} but the durable log ends at {} after \
                     truncate_from {:?} (LogWrite: entries must directly follow the log)",
                    first.log_id(),
                    node.log.len(),
                    write.truncate_from
                ));
            }
            let prev_term = node.log.last().map_or(0, |e| e.term);
            let holder = Holder {
                node: id,
                incarnation: node.incarnation,
            };
            self.obs.record_entries(holder, prev_term, &write.entries)?;
            node.log.extend(write.entries.iter().cloned());
        }
        if node.hard_state.commit > node.log.len() as u64 {
            return Err(format!(
                "node {id}: durable commit {} is beyond the durable log (last index {})",
                node.hard_state.commit,
                node.log.len()
            ));
        }
        let last = write.entries.last().map(Entry::log_id);
        self.record(Event::WriteDone {
            node: id,
            hard_state: write.hard_state.map(|h| (h.term, h.vote, h.commit)),
            truncate_from: write.truncate_from,
            entries: last.map_or((0, 0), |l| (write.entries.len() as u64, l.index)),
            messages: write.persisted_messages.len(),
        });
        for msg in write.persisted_messages {
            self.send(i, msg, true)?;
        }
        if let Some(write_id) = write.write_id {
            if let Some(engine) = self.nodes[i].engine.as_mut() {
                engine.on_persisted(write_id);
            }
        }
        self.drain(i)
    }

    /// Node `i` applies some of its queued committed entries.
    fn apply(&mut self, i: usize) -> Check {
        let count = self.rng.gen_range(1..=4).min(self.nodes[i].to_apply.len());
        if count == 0 {
            return Ok(());
        }
        let id = self.nodes[i].id;
        let mut first = 0;
        let mut last = 0;
        for _ in 0..count {
            let e = self.nodes[i].to_apply.pop_front().expect("counted");
            self.obs.record_applied(id, &e)?;
            let outcome = self.nodes[i]
                .kv
                .apply(&e)
                .map_err(|err| format!("node {id}: {err}"))?;
            for (client, outcome) in
                self.clients
                    .applied(i, e.log_id(), outcome.as_ref(), self.step)
            {
                self.record(Event::Complete {
                    client: client as u64,
                    outcome: format!("{outcome:?}"),
                });
            }
            if first == 0 {
                first = e.index;
            }
            last = e.index;
        }
        self.record(Event::Apply {
            node: id,
            first,
            last,
        });
        if let Some(engine) = self.nodes[i].engine.as_mut() {
            engine.on_applied(last);
        }
        self.serve_reads(i);
        self.drain(i)
    }

    /// Answers the released reads of node `i` its state machine has caught up with.
    fn serve_reads(&mut self, i: usize) {
        let applied = self.nodes[i].kv.applied;
        let mut k = 0;
        while k < self.nodes[i].reads_ready.len() {
            let (rs, client, op) = self.nodes[i].reads_ready[k];
            if rs.index > applied {
                k += 1;
                continue;
            }
            self.nodes[i].reads_ready.swap_remove(k);
            // The client may have given up on this read and moved on.
            if let Some((_, key)) = self.clients.waiting_op(client).filter(|(o, _)| *o == op) {
                let value = self.nodes[i].kv.read(&key);
                let shown = value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                self.clients
                    .complete(client, self.step, Outcome::ReadOk(value));
                self.record(Event::Complete {
                    client: client as u64,
                    outcome: format!("read {shown:?} at index {} (applied {applied})", rs.index),
                });
            }
        }
    }

    // ----- clients ----------------------------------------------------------------

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.role() == Role::Leader)
            })
            .max_by_key(|i| self.nodes[*i].engine.as_ref().map_or(0, Engine::term))
    }

    fn client_request(&mut self) -> Check {
        let idle = self.clients.idle();
        let Some(&c) = idle.choose(&mut self.rng) else {
            return Ok(());
        };
        let key = self.rng.gen_range(0..self.clients.keys.len());
        // Mostly a node that believes it leads (possibly a stale leader of
        // an older term: where stale reads would show), sometimes any node.
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.role() == Role::Leader)
            })
            .collect();
        let node = match leaders.choose(&mut self.rng) {
            Some(&l) if self.rng.gen_bool(0.85) => l,
            _ => self.rng.gen_range(0..self.nodes.len()),
        };
        let roll = self.rng.gen_range(0..100);
        self.clients.list[c].seq += 1;
        let value = format!("c{c}.{}", self.clients.list[c].seq).into_bytes();
        let (op, name) = match roll {
            0..35 => (Op::Read, "read"),
            35..65 => (Op::Write(value.clone()), "write"),
            65..75 => (Op::Delete, "delete"),
            _ => {
                let expected = match self.rng.gen_range(0..10) {
                    0..6 => self.clients.last_proposed[key].clone(),
                    6..8 => None,
                    _ => Some(format!("c{}.1", self.rng.gen_range(0..5)).into_bytes()),
                };
                (
                    Op::Cas {
                        expected,
                        new: value.clone(),
                    },
                    "cas",
                )
            }
        };
        let time = self.step;
        let op_id = self.clients.invoke(c, key, op.clone(), time);
        let id = self.nodes[node].id;
        let Some(engine) = self.nodes[node].engine.as_mut() else {
            self.clients.complete_now(op_id, time, Outcome::Failed);
            self.record(Event::Invoke {
                client: c as u64,
                node: id,
                op: name,
                key: key as u8,
                result: Err("node down"),
            });
            return Ok(());
        };
        let lease_ok = engine.config().check_quorum;
        let result = if op == Op::Read {
            let read = self.next_read;
            self.next_read += 1;
            let lease = lease_ok && self.rng.gen_bool(0.5);
            let r = if lease {
                match engine.read_lease(read) {
                    Ok(()) => {
                        self.clients.stats.lease_reads += 1;
                        Ok(())
                    }
                    Err(ReadError::LeaseNotHeld) => engine.read_index(read),
                    Err(e) => Err(e),
                }
            } else {
                engine.read_index(read)
            };
            match r {
                Ok(()) => {
                    self.nodes[node].reads_asked.insert(read);
                    Ok((Waiting::Read(read), (0, read)))
                }
                Err(ReadError::NotLeader { .. }) => Err("not leader"),
                Err(ReadError::LeaseNotHeld) => Err("lease not held"),
                Err(ReadError::TooManyPending(_)) => Err("too many reads"),
            }
        } else {
            let key_bytes = self.clients.keys[key].clone();
            match engine.propose(encode(&key_bytes, &op)) {
                Ok(log_id) => {
                    self.clients.last_proposed[key] = match &op {
                        Op::Delete => None,
                        _ => Some(value),
                    };
                    Ok((Waiting::Write(log_id), (log_id.term, log_id.index)))
                }
                Err(e) => Err(match e {
                    raft_core::engine::ProposeError::NotLeader { .. } => "not leader",
                    raft_core::engine::ProposeError::TransferInProgress(_) => "transfer",
                    raft_core::engine::ProposeError::TooManyPending(_) => "too many pending",
                }),
            }
        };
        self.record(Event::Invoke {
            client: c as u64,
            node: id,
            op: name,
            key: key as u8,
            result: result.as_ref().map(|(_, r)| *r).map_err(|e| *e),
        });
        match result {
            Ok((waiting, _)) => {
                self.clients.wait(
                    c,
                    Outstanding {
                        op: op_id,
                        node,
                        since: self.now,
                        waiting,
                    },
                );
            }
            Err(_) => self.clients.complete_now(op_id, time, Outcome::Failed),
        }
        self.drain(node)
    }

    // ----- faults -----------------------------------------------------------------

    /// Node-level faults, in virtual time: crashes with a random downtime,
    /// partitions that last a random number of ticks, leadership transfers.
    fn inject_faults(&mut self) -> Check {
        let n = self.nodes.len();
        for i in 0..n {
            if self.nodes[i].engine.is_none() && self.nodes[i].restart_at <= self.now {
                self.restart(i)?;
            }
        }
        if self.heal_at == Some(self.now) {
            self.heal_at = None;
            self.net.heal();
            self.record(Event::Heal);
        }
        let down = self.nodes.iter().filter(|n| n.engine.is_none()).count();
        // At most a bare majority down at once (all of a 1-node cluster).
        if down < n / 2 + 1 && self.rng.gen_bool(self.intensity * 0.03) {
            self.crash()?;
        }
        if n > 1 && self.heal_at.is_none() && self.rng.gen_bool(self.intensity * 0.05) {
            self.partition();
        }
        if n > 1 && self.rng.gen_bool(self.intensity * 0.01) {
            self.transfer()?;
        }
        Ok(())
    }

    fn crash(&mut self) -> Check {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some())
            .collect();
        let Some(&i) = live.choose(&mut self.rng) else {
            return Ok(());
        };
        self.faults.crashes += 1;
        let node = &mut self.nodes[i];
        node.engine = None;
        let writes = node.writes.len();
        node.writes.clear();
        node.to_apply.clear();
        node.reads_ready.clear();
        node.reads_asked.clear();
        node.incarnation += 1;
        let id = node.id;
        self.record(Event::Crash { node: id, writes });
        for client in self.clients.node_crashed(i) {
            self.record(Event::GiveUp {
                client: client as u64,
                why: "node crashed",
            });
        }
        // Back at once (a process restart) or after up to 30 ticks.
        if self.rng.gen_bool(0.4) {
            self.restart(i)?;
        } else {
            self.nodes[i].restart_at = self.now + self.rng.gen_range(1..=30);
        }
        Ok(())
    }

    fn restart(&mut self, i: usize) -> Check {
        let node = &mut self.nodes[i];
        let mut cfg = node.cfg.clone();
        cfg.seed ^= u64::from(node.incarnation).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let initial = InitialState {
            hard_state: node.hard_state,
            snapshot: None,
            purged: Default::default(),
            entries: node.log.clone(),
            bootstrap: self.membership.clone(),
            applied: node.kv.applied,
        };
        let engine = Engine::new(cfg, initial)
            .map_err(|e| format!("node {}: restart refused: {e}", node.id))?;
        let id = node.id;
        if engine.term() < node.hard_state.term {
            return Err(format!(
                "node {id} restarted in term {} below its durable term {}",
                engine.term(),
                node.hard_state.term
            ));
        }
        if engine.commit_index() < node.hard_state.commit {
            return Err(format!(
                "node {id} restarted with commit {} below its durable commit {}",
                engine.commit_index(),
                node.hard_state.commit
            ));
        }
        let event = Event::Restart {
            node: id,
            term: engine.term(),
            commit: engine.commit_index(),
            last: (engine.last_log_id().index, engine.last_log_id().term),
            applied: node.kv.applied,
        };
        node.engine = Some(engine);
        node.seen_term = 0;
        node.seen_commit = 0;
        node.seen_role = Role::Follower;
        self.record(event);
        self.drain(i)
    }

    fn partition(&mut self) {
        let n = self.nodes.len() as NodeId;
        let x = self.rng.gen_range(1..=n);
        let kind = match self.rng.gen_range(0..5) {
            0 => {
                self.net.heal();
                for y in 1..=n {
                    self.net.cut(x, y);
                    self.net.cut(y, x);
                }
                "isolate"
            }
            1 => {
                self.net.heal();
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                for a in 1..=n {
                    for b in 1..=n {
                        if side[a as usize - 1] != side[b as usize - 1] {
                            self.net.cut(a, b);
                        }
                    }
                }
                "split"
            }
            2 => {
                self.net.heal();
                for y in 1..=n {
                    self.net.cut(x, y);
                }
                "mute (one-way out)"
            }
            3 => {
                self.net.heal();
                for y in 1..=n {
                    self.net.cut(y, x);
                }
                "deaf (one-way in)"
            }
            _ => {
                let y = self.rng.gen_range(1..=n);
                self.net.cut(x, y);
                "one-way link"
            }
        };
        self.faults.partitions += 1;
        self.heal_at = Some(self.now + self.rng.gen_range(3..=50));
        let cuts = self.net.cut_mask();
        if self.trace.verbose() {
            println!("    cut links: {}", self.net.describe_cuts());
        }
        self.record(Event::Partition { kind, cuts });
    }

    fn transfer(&mut self) -> Check {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let n = self.nodes.len() as NodeId;
        let to = self.rng.gen_range(1..=n);
        let from = self.nodes[l].id;
        let Some(engine) = self.nodes[l].engine.as_mut() else {
            return Ok(());
        };
        let ok = engine.transfer_leader(to).is_ok();
        self.faults.transfers += 1;
        self.record(Event::Transfer { from, to, ok });
        self.drain(l)
    }

    // ----- invariants ---------------------------------------------------------------

    /// Per-node invariants after any input: term and commit monotonic within
    /// an incarnation, newly committed entries recorded, election safety and
    /// leader completeness for leaders.
    fn observe(&mut self, i: usize) -> Check {
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
        if commit < node.hard_state.commit {
            return Err(format!(
                "COMMIT MONOTONICITY: node {id}: commit index {commit} below its durable commit {}",
                node.hard_state.commit
            ));
        }
        for index in node.seen_commit + 1..=commit {
            let Some(t) = engine.term_at(index) else {
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
            }
        }
        let node = &mut self.nodes[i];
        node.seen_term = term;
        node.seen_commit = commit;
        node.seen_role = role;
        Ok(())
    }

    fn check_all(&mut self) -> Check {
        for i in 0..self.nodes.len() {
            self.observe(i)?;
        }
        if self.step % FULL_CHECK_EVERY == 0 {
            for node in &self.nodes {
                if let Some(engine) = &node.engine {
                    self.obs.check_log(engine)?;
                }
            }
        }
        Ok(())
    }

    // ----- the end of a run -----------------------------------------------------------

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let leader = self.nodes[l].engine.as_ref().expect("live");
        let target = leader.last_log_id().index;
        let max_term = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .map(Engine::term)
            .max();
        max_term == Some(leader.term())
            && self.nodes.iter().all(|n| {
                n.engine
                    .as_ref()
                    .is_some_and(|e| e.commit_index() == target)
                    && n.kv.applied == target
            })
    }

    fn converge(&mut self) -> Check {
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

    fn final_checks(&mut self) -> Check {
        for node in &self.nodes {
            if let Some(engine) = &node.engine {
                self.obs.check_log(engine)?;
            }
        }
        let first = &self.nodes[0];
        for node in &self.nodes[1..] {
            if node.kv != first.kv {
                return Err(format!(
                    "STATE MACHINE SAFETY: after convergence nodes {} and {} differ:\n{:?}\n{:?}",
                    first.id, node.id, first.kv, node.kv
                ));
            }
            let upto = node.kv.applied as usize;
            if node.log.len() < upto
                || first.log.len() < upto
                || node.log[..upto] != first.log[..upto]
            {
                return Err(format!(
                    "LOG MATCHING: after convergence the durable logs of nodes {} and {} \
                     differ in the committed prefix (up to {upto})",
                    first.id, node.id
                ));
            }
        }
        Ok(())
    }

    /// Checks the client history; returns whether the checker gave up.
    fn check_history(&mut self) -> Result<bool, Violation> {
        let outstanding: Vec<usize> = (0..self.clients.list.len())
            .filter(|c| self.clients.list[*c].outstanding.is_some())
            .collect();
        for c in outstanding {
            self.clients.give_up(c);
        }
        match check(&self.clients.history, CheckLimits::default()) {
            CheckResult::Ok => Ok(false),
            CheckResult::Unknown { .. } => Ok(true),
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

    // ----- reporting ------------------------------------------------------------------

    fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match &node.engine {
                Some(e) => {
                    let s = e.status();
                    let _ = writeln!(
                        out,
                        "  node {}: {:?} term {} vote {:?} leader {:?} commit {} last {} \
                         persisted {} | durable {:?}, log last {:?} | applied {} | {} writes \
                         pending, {} to apply, incarnation {}",
                        node.id,
                        s.role,
                        s.term,
                        s.vote,
                        s.leader,
                        s.commit,
                        e.last_log_id(),
                        s.persisted,
                        node.hard_state,
                        node.log.last().map(Entry::log_id),
                        node.kv.applied,
                        node.writes.len(),
                        node.to_apply.len(),
                        node.incarnation
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  node {}: DOWN | durable {:?}, log last {:?} | applied {}",
                        node.id,
                        node.hard_state,
                        node.log.last().map(Entry::log_id),
                        node.kv.applied
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "  network: {} in flight, cut links: {}",
            self.net.len(),
            self.net.describe_cuts()
        );
        out
    }

    fn failure_report(&self, violation: &str) -> String {
        let n = self.nodes.len();
        format!(
            "simulation failed: seed {seed}, {n} nodes, step {step}, tick {now}\n\
             {violation}\n\
             replay: {replay}\n\
             nodes:\n{nodes}last events:\n{recent}",
            seed = self.seed,
            step = self.step,
            now = self.now,
            nodes = self.describe_nodes(),
            recent = self.trace.recent(),
            replay = replay_command(self.seed, n),
        )
    }
}
