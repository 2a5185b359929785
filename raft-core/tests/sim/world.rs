//! One simulated cluster: N engines, their durable storage and state
//! machines, the network and the clients, all driven by one seeded RNG in
//! virtual time.
//!
//! # The driver contract, per node
//!
//! After every input the node's `Ready`s are drained at once:
//! 1. `messages` go to the network (an `InstallSnapshot` header leaves with
//!    the data of the node's latest snapshot beside it, see `snapshots.rs`);
//! 2. the write (`hard_state`, `truncate_from`, `entries`) is queued as a
//!    pending durable write, together with `persisted_messages` (a write is
//!    queued even when empty if it carries messages: they must wait for
//!    every earlier write), then `compact_log` behind it;
//! 3. `committed_entries` are queued for applying, then `build_snapshot`
//!    and `install_snapshot` behind them (an install moves on to the write
//!    queue once the state machine took it: state machine first, then log,
//!    as the real driver does);
//! 4. `read_states` wait for the state machine, `failed_reads` fail.
//!
//! Pending writes complete later, at random, in order (one at a time or
//! several at once, like a group commit). Only then does the model's
//! durable storage (`raft_core::testing::DurableLog`) change, the write's `persisted_messages`
//! go out and `on_persisted` is called (`on_snapshot_installed` for an
//! install). Queued entries are applied later, at random, in order, then
//! `on_applied` is called. A crash drops every pending write (with its
//! unsent messages), the apply queue, pending reads and snapshot transfers;
//! the node restarts from its durable storage and state machine like
//! `Raft::start` (an install the crash interrupted after the state machine
//! took the snapshot is completed first). Each write is atomic.
//!
//! # Time
//!
//! One true clock: a tick event advances it by one unit, and every live
//! node's own clock by its rate (ticks per 1000 units, fixed per node for
//! a run): equal for all in half the runs, in the others spread over
//! [1, B] with B = (E - 1) / (L + 1), the drift bound the lease assumes
//! (`Config::lease_ticks`; `SIM_DRIFT_PERMILLE` scales B, and beyond 1000
//! breaks it on purpose). Everything else (message delivery, disk writes,
//! applying, client requests) is randomly interleaved between tick events,
//! and those get rarer while messages and writes are pending (networks and
//! disks are much faster than a tick). A stalled node (a fault) takes no
//! input while its clock goes on; when it resumes, the ticks it missed come
//! first, up to three election timeouts, as the driver's tick clock replays
//! them (`SIM_STALL_REPLAY=0` loses them instead: a negative control).

//! # Faults (second phase only)
//!
//! Per message: 4% dropped, 4% duplicated, 8% delayed by 3-25 ticks (the
//! others take 0-1 tick), plus random reordering; snapshots are dropped or
//! delayed too, never duplicated (they travel on a stream). Per tick,
//! scaled by a per-run intensity: crashes (back at once or after up to 30
//! ticks; at most a bare majority of all nodes down), failed disk flushes
//! (the node stops as the driver does on a storage error; the failed write
//! landed whole or not at all, its messages never sent; back after 5-40
//! ticks), restarts that fail to read the disk (10% of delayed restarts;
//! the node stays down up to 20 more ticks), partitions lasting
//! 3-50 ticks (a node isolated, a random split, a node that can only
//! receive or only send, a single one-way link), leadership transfers,
//! membership changes asked of the leader (`churn.rs`), snapshots asked
//! of any node, and stalls of 1-40 ticks (half the time of the leader).

mod churn;
mod faults;
mod invariants;
pub use invariants::history_verdict;
mod snapshots;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use raft_core::engine::{
    Engine, InitialState, LogCompaction, ReadId, ReadRefused, ReadState, Ready, Role, WriteId,
};
use raft_core::{
    AppendResult, Config, Entry, HardState, Index, Membership, Message, MessageBody, NodeId,
    SnapshotMeta,
};
use raft_linearizability::{Op, OpId, Outcome};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checks::{Holder, Observer, Violation};
use super::clients::{ClientStats, Clients, Outstanding, Waiting};
use super::model::{encode, Kv, Reference};
use super::network::{Network, Packet};
use super::runner::panic_message;
use super::stats::{ChangeStats, Faults, SnapshotStats};
use super::trace::{Event, Loss, MsgInfo, Trace};
use raft_core::testing::DurableLog as Disk;
use raft_core::testing::{ReadySteps, ReadyWrite};
use snapshots::SnapshotReport;

/// The outcome of a check: `Err` carries the violation.
pub type Check = Result<(), Violation>;

/// The size of one run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Voters of the initial configuration (ids `1..=nodes`).
    pub nodes: usize,
    /// Spare nodes (the next ids), outside the initial configuration;
    /// `None`: chosen per run.
    pub spares: Option<usize>,
    /// `(snapshot_threshold_entries, snapshot_keep_entries)`; `None`:
    /// chosen per run (`(0, 0)`: no snapshots).
    pub snapshot_policy: Option<(u64, u64)>,
    /// Whether the leader is asked for membership changes in the fault phase.
    pub churn: bool,
    /// Steps of the first phase, without faults.
    pub clean_steps: u64,
    /// Steps of the second phase, with faults.
    pub chaos_steps: u64,
    /// Steps allowed for the cluster to converge after healing.
    pub converge_steps: u64,
    /// How far apart clock rates may be, in thousandths of the drift bound
    /// the lease assumes (`Config::lease_ticks`): 1000 is the bound.
    pub drift_permille: u64,
    /// Whether a node resuming from a stall is given the ticks it missed
    /// first (as the driver's tick clock does, up to three election
    /// timeouts); `false` reproduces a driver that loses them.
    pub replay_missed_ticks: bool,
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
    /// Snapshot counters.
    pub snapshots: SnapshotStats,
    /// Membership change counters.
    pub changes: ChangeStats,
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
    /// The configuration a brand-new node starts with: the initial voters,
    /// or none for a spare (which must then neither campaign nor vote).
    bootstrap: Membership,
    engine: Option<Engine>,
    incarnation: u32,
    /// Durable log storage.
    disk: Disk,
    /// The state machine, durable with its applied index.
    kv: Kv,
    /// The state machine's latest snapshot (built or installed), durable
    /// with it: what this node streams to followers that need one.
    snapshot: Option<(SnapshotMeta, Arc<Kv>)>,
    /// Writes handed out and not yet durable, oldest first.
    writes: VecDeque<PendingWrite>,
    /// Work handed out to the state machine and not yet done, oldest first.
    to_apply: VecDeque<ApplyJob>,
    /// A received snapshot waiting for the engine's decision to install it.
    incoming: Option<(SnapshotMeta, Arc<Kv>)>,
    /// Followers a snapshot is being streamed to (one transfer each at a time).
    sending: BTreeSet<NodeId>,
    /// Read-backs of entries from the disk the engine asked for.
    fetches: Vec<raft_core::engine::EntryFetch>,
    /// Snapshots this node installed completely.
    installed: u64,
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
    /// This node's clock rate, in ticks per 1000 units of true time.
    clock_rate: u64,
    /// Thousandths of a tick accumulated towards the next one.
    clock_acc: u64,
    /// While stalled (its process paused, its engine task held up): the
    /// true time it resumes at; it takes no input before.
    stalled_until: u64,
    /// Ticks its clock counted while it was stalled, given to it first
    /// when it resumes.
    missed_ticks: u64,
}

impl Node {
    /// The index the next committed entry handed out must have.
    fn next_to_apply(&self) -> Index {
        for job in self.to_apply.iter().rev() {
            match job {
                ApplyJob::Entry(e) => return e.index + 1,
                ApplyJob::Install(meta, _) => return meta.last_log_id.index + 1,
                ApplyJob::Build(_) => {}
            }
        }
        self.kv.applied + 1
    }
}

/// A durable write handed out and not done yet.
#[derive(Debug)]
enum PendingWrite {
    /// A `Ready`'s write and the messages waiting for it.
    Log(ReadyWrite),
    /// Record a snapshot and purge the log prefix (`Ready::compact_log`).
    Compact(LogCompaction),
    /// Replace the log by a snapshot the state machine installed.
    Install(SnapshotMeta),
}

/// Work for the state machine, done in order.
#[derive(Debug)]
enum ApplyJob {
    /// Apply a committed entry.
    Entry(Entry),
    /// Build a snapshot at this index (`Ready::build_snapshot`).
    Build(SnapshotMeta),
    /// Replace the state by a received snapshot (`Ready::install_snapshot`).
    Install(SnapshotMeta, Arc<Kv>),
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

/// Every node's election timeout, in ticks.
const ELECTION_TIMEOUT: u64 = 10;
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
    /// The data every replica must hold at each index.
    reference: Reference,
    faults: Faults,
    snapshot_stats: SnapshotStats,
    changes: ChangeStats,
    trace: Trace,
    faulty: bool,
    /// Scales the node-level fault rates of this run.
    intensity: f64,
    /// When the current partition heals.
    heal_at: Option<u64>,
    clients_active: bool,
    /// Whether membership changes are asked for during the fault phase.
    churn: bool,
    /// A learner whose promotion was refused as lagging: asked again later.
    retry_promotion: Option<NodeId>,
    /// Outcomes of snapshot transfers, reported to their senders when due.
    reports: Vec<SnapshotReport>,
    next_read: ReadId,
    choices: Vec<(u32, Action)>,
    /// For a scripted scenario: the test that reproduces a failure.
    scripted: Option<String>,
    /// Ticks a client waits for an answer before it gives up.
    client_timeout: u64,
}

impl World {
    /// A new cluster for `seed`.
    pub fn new(seed: u64, params: Params, verbose: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let voters = params.nodes;
        let initial = Membership::new(1..=voters as NodeId);
        // One configuration per run, varied across runs.
        let heartbeat = rng.gen_range(1..=3);
        let lease = rng.gen_range(2..=8);
        let pre_vote = rng.gen_bool(0.8);
        let check_quorum = rng.gen_bool(0.8);
        let max_entries = *[1, 2, 8, 1024].choose(&mut rng).unwrap();
        let max_inflight = *[1, 2, 64].choose(&mut rng).unwrap();
        let max_uncommitted = *[4, 64, 65_536].choose(&mut rng).unwrap();
        let max_promotion_lag_entries = *[0, 2, 10, 1000].choose(&mut rng).unwrap();
        // Snapshots often: every 5-40 entries (or by size), keeping up to 10
        // entries below each; now and then never.
        let (threshold_entries, keep_entries) = params.snapshot_policy.unwrap_or_else(|| {
            let threshold = if rng.gen_bool(0.1) {
                0
            } else {
                rng.gen_range(5..=40)
            };
            (threshold, rng.gen_range(0..=10))
        });
        let threshold_bytes = if params.snapshot_policy.is_none() && rng.gen_bool(0.2) {
            rng.gen_range(300..=1500)
        } else {
            0
        };
        // The in-memory log's payload budget, from a stream of its own so
        // the schedules the other draws give each seed stay as they were:
        // often none at all (every applied payload is read back from the
        // disk when a follower needs it), sometimes a few entries' worth.
        // The uncommitted bytes a leader takes: a few entries' worth or plenty.
        let (log_cache_bytes, max_uncommitted_bytes) = {
            let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x6c6f_6762_7974_6573);
            let cache = *[0, 0, 100, 1_000, 64 << 20].choose(&mut r).unwrap();
            (cache, *[200, 2_000, 64 << 20].choose(&mut r).unwrap())
        };
        let spares = params
            .spares
            .unwrap_or_else(|| rng.gen_range(usize::from(voters > 1)..=2));
        let n = voters + spares;
        // Clock rates: in half the runs all equal, in the others spread
        // over [1, B] times true time, B the drift bound (E - 1) / (L + 1)
        // the lease assumes, but at most 1.5 (`drift_permille` scales B:
        // beyond 1000 the rates break the bound, a negative control).
        // Clocks 2-3 times apart are not what a lease has to survive, and
        // they break liveness without pre-vote: a node with a stale log
        // whose clock runs twice as fast campaigns (in vain) before any
        // other times out, and every campaign resets the others' election
        // timers (seed 2157 with 5 voters did that with B = 3).
        let fastest = if rng.gen_bool(0.5) {
            let bound = 1000 * (ELECTION_TIMEOUT - 1) / (lease + 1);
            // The negative control may go to 3 times apart.
            let cap = if params.drift_permille <= 1000 {
                1500
            } else {
                3000
            };
            (bound * params.drift_permille / 1000).clamp(1000, cap)
        } else {
            1000
        };
        let rates: Vec<u64> = (0..n).map(|_| rng.gen_range(1000..=fastest)).collect();
        let nodes = (1..=n as NodeId)
            .map(|id| {
                let mut cfg = Config::new(id);
                cfg.election_timeout_ticks = ELECTION_TIMEOUT;
                cfg.heartbeat_interval_ticks = heartbeat;
                cfg.lease_ticks = lease;
                cfg.pre_vote = pre_vote;
                cfg.check_quorum = check_quorum;
                cfg.max_message_entries = max_entries;
                cfg.max_inflight_messages = max_inflight;
                cfg.max_uncommitted_entries = max_uncommitted;
                cfg.max_promotion_lag_entries = max_promotion_lag_entries;
                cfg.snapshot_threshold_entries = threshold_entries;
                cfg.snapshot_threshold_bytes = threshold_bytes;
                cfg.snapshot_keep_entries = keep_entries;
                cfg.max_log_cache_bytes = log_cache_bytes;
                cfg.max_uncommitted_bytes = max_uncommitted_bytes;
                cfg.seed = rng.gen();
                let bootstrap = if id as usize <= voters {
                    initial.clone()
                } else {
                    Membership::default()
                };
                let engine = Engine::new(cfg.clone(), InitialState::bootstrap(bootstrap.clone()))
                    .expect("valid configuration");
                Node {
                    id,
                    cfg,
                    bootstrap,
                    engine: Some(engine),
                    incarnation: 0,
                    disk: Disk::default(),
                    kv: Kv::default(),
                    snapshot: None,
                    writes: VecDeque::new(),
                    to_apply: VecDeque::new(),
                    incoming: None,
                    sending: BTreeSet::new(),
                    fetches: Vec::new(),
                    installed: 0,
                    reads_ready: Vec::new(),
                    reads_asked: BTreeSet::new(),
                    seen_term: 0,
                    seen_commit: 0,
                    seen_role: Role::Follower,
                    restart_at: 0,
                    clock_rate: rates[id as usize - 1],
                    clock_acc: 0,
                    stalled_until: 0,
                    missed_ticks: 0,
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
            obs: Observer::new(initial),
            reference: Reference::new(),
            faults: Faults::default(),
            snapshot_stats: SnapshotStats::default(),
            changes: ChangeStats::default(),
            trace: Trace::new(verbose),
            faulty: false,
            intensity,
            heal_at: None,
            clients_active: true,
            churn: params.churn,
            retry_promotion: None,
            reports: Vec::new(),
            next_read: 1,
            choices: Vec::new(),
            scripted: None,
            client_timeout: CLIENT_TIMEOUT,
        };
        if verbose {
            let c = &world.nodes[0].cfg;
            println!(
                "seed {seed}, {voters} voters + {spares} spares: heartbeat {} ticks, election \
                 timeout {}, lease {}, pre_vote {}, check_quorum {}, max_message_entries {}, \
                 max_inflight_messages {}, max_uncommitted_entries {}, max_promotion_lag_entries {}, \
                 snapshots every {} entries / {} bytes keeping {}, log cache {} bytes, \
                 max_uncommitted_bytes {}, {} clients on {} keys, fault \
                 intensity {intensity:.2}, clock rates (ticks per 1000) {:?}",
                c.heartbeat_interval_ticks,
                c.election_timeout_ticks,
                c.lease_ticks,
                c.pre_vote,
                c.check_quorum,
                c.max_message_entries,
                c.max_inflight_messages,
                c.max_uncommitted_entries,
                c.max_promotion_lag_entries,
                c.snapshot_threshold_entries,
                c.snapshot_threshold_bytes,
                c.snapshot_keep_entries,
                c.max_log_cache_bytes,
                c.max_uncommitted_bytes,
                world.clients.list.len(),
                world.clients.keys.len(),
                world.nodes.iter().map(|n| n.clock_rate).collect::<Vec<_>>()
            );
        }
        for node in &world.nodes {
            world.trace.mix(node.clock_rate);
        }
        world.trace.mix((
            heartbeat,
            lease,
            pre_vote,
            check_quorum,
            max_entries,
            max_inflight,
            (
                max_promotion_lag_entries,
                threshold_entries,
                threshold_bytes,
                keep_entries,
            ),
            spares,
        ));
        world
    }

    /// Runs the three phases and the final checks.
    pub fn run(mut self) -> Result<Report, String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_phases())) {
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
        self.finish()?;
        let lin_unknown = self.check_history()?;
        self.changes.committed = self.obs.committed_configs();
        let commit = self.leader().map_or(0, |l| {
            self.nodes[l]
                .engine
                .as_ref()
                .map_or(0, Engine::commit_index)
        });
        for node in &self.nodes {
            self.trace.mix((
                node.id,
                node.disk.hard_state.term,
                node.disk.hard_state.commit,
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
            snapshots: self.snapshot_stats,
            changes: self.changes,
            commit,
            lin_unknown,
        })
    }

    /// The last phase: heal everything, restart every node, let the
    /// cluster converge, then check the final state.
    fn finish(&mut self) -> Check {
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
        self.final_checks()
    }

    fn record(&mut self, event: Event) {
        self.trace.record(self.step, self.now, event);
    }

    // ----- control, for scripted scenarios --------------------------------------

    /// A cluster for the scripted scenario `test` (named in failure
    /// reports): fault-free and without membership churn unless the script
    /// does it.
    pub fn scripted(test: &str, seed: u64, mut params: Params) -> Self {
        params.churn = false;
        let mut world = Self::new(seed, params, false);
        world.scripted = Some(test.to_string());
        world
    }

    /// Takes `steps` steps (fault-free unless the fault phase runs).
    pub fn run_steps(&mut self, steps: u64) -> Result<(), String> {
        for _ in 0..steps {
            if let Err(v) = self.step() {
                return Err(self.failure_report(&v));
            }
        }
        Ok(())
    }

    /// Takes steps until `done` holds; fails after `max_steps`.
    pub fn run_until(
        &mut self,
        max_steps: u64,
        what: &str,
        done: impl Fn(&World) -> bool,
    ) -> Result<(), String> {
        for _ in 0..max_steps {
            if done(self) {
                return Ok(());
            }
            self.run_steps(1)?;
        }
        Err(self.failure_report(&format!("not reached within {max_steps} steps: {what}")))
    }

    /// Heals, restarts every node, converges and runs the final checks,
    /// the linearizability of the client histories included.
    pub fn finish_scripted(&mut self) -> Result<(), String> {
        match self
            .finish()
            .and_then(|()| self.check_history().map(|_| ()))
        {
            Ok(()) => Ok(()),
            Err(v) => Err(self.failure_report(&v)),
        }
    }

    /// Cuts node `id` off from every other node, both ways, until
    /// [`heal`](Self::heal).
    pub fn isolate(&mut self, id: NodeId) {
        for other in 1..=self.nodes.len() as NodeId {
            self.net.cut(id, other);
            self.net.cut(other, id);
        }
        self.record(Event::Partition {
            kind: "isolate (scripted)",
            cuts: self.net.cut_mask(),
        });
    }

    /// Changes every node's configuration before the run starts (the
    /// engines are built again from it).
    pub fn configure(&mut self, f: impl Fn(&mut Config)) {
        assert_eq!(self.step, 0, "configure before the first step");
        for node in &mut self.nodes {
            f(&mut node.cfg);
            let engine = Engine::new(
                node.cfg.clone(),
                InitialState::bootstrap(node.bootstrap.clone()),
            )
            .expect("valid configuration");
            node.engine = Some(engine);
        }
    }

    /// Sets how many ticks a client waits for an answer before giving up.
    pub fn set_client_timeout(&mut self, ticks: u64) {
        self.client_timeout = ticks;
    }

    /// Stalls node `id` for `ticks` ticks of true time (see the stall
    /// fault).
    pub fn stall_node(&mut self, id: NodeId, ticks: u64) {
        let i = id as usize - 1;
        self.nodes[i].stalled_until = self.now + ticks;
        self.record(Event::Stall { node: id, ticks });
    }

    /// Sets node `id`'s clock rate, in ticks per 1000 units of true time.
    pub fn set_clock_rate(&mut self, id: NodeId, rate: u64) {
        self.nodes[id as usize - 1].clock_rate = rate;
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.net.heal();
        self.record(Event::Heal);
    }

    /// The node with the highest term among those that believe they lead.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader().map(|i| self.nodes[i].id)
    }

    /// Node `id`'s engine, when it is up.
    pub fn engine(&self, id: NodeId) -> Option<&Engine> {
        self.nodes.get(id as usize - 1)?.engine.as_ref()
    }

    /// The index of node `id`'s last durable log entry.
    pub fn durable_last_index(&self, id: NodeId) -> Index {
        self.nodes[id as usize - 1].disk.last_index()
    }

    /// Snapshots node `id` installed completely.
    pub fn installs_on(&self, id: NodeId) -> u64 {
        self.nodes[id as usize - 1].installed
    }

    /// Node `id`'s state machine.
    pub fn kv(&self, id: NodeId) -> &Kv {
        &self.nodes[id as usize - 1].kv
    }

    /// The snapshot counters so far.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        self.snapshot_stats
    }

    /// Asks the current leader for a membership change (and handles its
    /// output). `None` when there is no leader.
    pub fn change_membership(
        &mut self,
        change: raft_core::engine::MembershipChange,
    ) -> Option<Result<raft_core::LogId, raft_core::engine::ChangeError>> {
        let l = self.leader()?;
        let result = self.request_change(l, change);
        if let Err(v) = self.drain(l) {
            panic!("{}", self.failure_report(&v));
        }
        match result {
            Ok(r) => Some(r),
            Err(v) => panic!("{}", self.failure_report(&v)),
        }
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
            Action::Client => self.client_request(None)?,
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
            if node.engine.is_none() || node.stalled_until != 0 {
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
        self.deliver_reports()?;
        let mut order: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some())
            .collect();
        order.shuffle(&mut self.rng);
        let replay = self.params.replay_missed_ticks;
        let mut resumed = Vec::new();
        for i in order {
            let now = self.now;
            let node = &mut self.nodes[i];
            // Each node's clock runs at its own rate.
            node.clock_acc += node.clock_rate;
            let mut due = node.clock_acc / 1000;
            node.clock_acc %= 1000;
            if node.stalled_until > now {
                node.missed_ticks += due;
                continue;
            }
            if node.stalled_until > 0 {
                // Resuming: the ticks that passed come first, before any
                // input, as the driver's tick clock replays them (up to
                // three election timeouts).
                node.stalled_until = 0;
                let missed = std::mem::take(&mut node.missed_ticks);
                let replayed = if replay {
                    missed.min(3 * ELECTION_TIMEOUT)
                } else {
                    0
                };
                due += replayed;
                let id = node.id;
                self.record(Event::Resume {
                    node: id,
                    missed,
                    replayed,
                });
                resumed.push(i);
            }
            if let Some(engine) = self.nodes[i].engine.as_mut() {
                for _ in 0..due {
                    engine.tick();
                }
            }
            self.drain(i)?;
        }
        // Requests that waited for a stalled node (clients retrying the
        // leader they knew) reach it as it resumes, before what its peers
        // sent meanwhile: where a resumed leader with a stale clock would
        // serve a stale lease read.
        for i in resumed {
            for _ in 0..3 {
                if self.clients_active && self.rng.gen_bool(0.7) {
                    self.client_request(Some(i))?;
                }
            }
        }
        for c in 0..self.clients.list.len() {
            let expired = self.clients.list[c]
                .outstanding
                .as_ref()
                .is_some_and(|o| o.since + self.client_timeout < self.now);
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
        let to = packet.msg.to as usize - 1;
        if self.nodes[to].engine.is_some() && self.nodes[to].stalled_until != 0 {
            // Waits in the stalled node's queue until it resumes.
            let at = self.nodes[to].stalled_until;
            self.net.push(packet, at);
            return Ok(());
        }
        if let Some(data) = packet.snapshot {
            return self.deliver_snapshot(packet.msg, data);
        }
        let msg = packet.msg;
        let info = MsgInfo::of(&msg);
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
            self.net.push(Packet::message(msg.clone()), at);
        }
        self.record(Event::Deliver { msg: info, dup });
        let from_removed = self.sender_if_removed(to, &msg);
        let term_before = self.nodes[to].engine.as_ref().map_or(0, Engine::term);
        if let Some(engine) = self.nodes[to].engine.as_mut() {
            engine.step(msg);
        }
        if let Some(from) = from_removed {
            self.check_not_disrupted(to, info, from, term_before)?;
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
            self.serve_fetches(i)?;
        }
        Err(format!(
            "node {}: has_ready() still true after 1000 Readys",
            i + 1
        ))
    }

    /// Answers the engine's read-backs from what node `i`'s disk holds
    /// (the payloads it dropped from memory), as the driver does.
    fn serve_fetches(&mut self, i: usize) -> Check {
        let id = self.nodes[i].id;
        for fetch in std::mem::take(&mut self.nodes[i].fetches) {
            let node = &mut self.nodes[i];
            if fetch.start <= node.disk.purged.index || fetch.end > node.disk.last_index() + 1 {
                // Purged meanwhile (or not durable, which the engine never asks):
                // a failed read.
                if fetch.end > node.disk.last_index() + 1 {
                    return Err(format!(
                        "node {id}: asked to read back {}..{} but the disk ends at {}",
                        fetch.start,
                        fetch.end,
                        node.disk.last_index()
                    ));
                }
                if let Some(engine) = node.engine.as_mut() {
                    engine.on_entries_fetched(fetch, Vec::new());
                }
                continue;
            }
            let mut out = Vec::new();
            let mut bytes = 0;
            for e in node.disk.entries_from(fetch.start) {
                if e.index >= fetch.end
                    || out.len() >= fetch.max_entries.max(1)
                    || (!out.is_empty() && bytes + e.size_bytes() > fetch.max_bytes)
                {
                    break;
                }
                bytes += e.size_bytes();
                out.push(e.clone());
            }
            self.snapshot_stats.read_back += out.len() as u64;
            if let Some(engine) = self.nodes[i].engine.as_mut() {
                engine.on_entries_fetched(fetch, out);
            }
        }
        Ok(())
    }

    fn handle_ready(&mut self, i: usize, ready: Ready) -> Check {
        let id = self.nodes[i].id;
        let steps = ReadySteps::from(ready);
        let write = steps.write;
        if let Some(s) = steps.soft_state {
            self.record(Event::Role {
                node: id,
                role: s.role,
                term: s.term,
                leader: s.leader,
            });
        }
        if let Some(first) = write.entries.first() {
            let engine = self.nodes[i].engine.as_ref().expect("live");
            let Some(prev_term) = engine.term_at(first.index - 1) else {
                return Err(format!(
                    "node {id}: Ready::entries start at {} but the log has no entry before it",
                    first.log_id()
                ));
            };
            for (k, e) in write.entries.iter().enumerate() {
                if e.index != first.index + k as u64 {
                    return Err(format!(
                        "node {id}: Ready::entries not consecutive: {:?}",
                        write.entries
                    ));
                }
            }
            let holder = Holder {
                node: id,
                incarnation: self.nodes[i].incarnation,
            };
            self.obs.record_entries(holder, prev_term, &write.entries)?;
        }
        for msg in steps.messages {
            if matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
                self.send_snapshot(i, msg)?;
            } else {
                self.send(i, msg, false)?;
            }
        }
        // Committed entries: consecutive after what was handed out, and
        // already durable here ("committed and durable locally").
        let node = &mut self.nodes[i];
        for e in steps.committed_entries {
            let expected = node.next_to_apply();
            if e.index != expected {
                return Err(format!(
                    "node {id}: Ready::committed_entries hands out {} but the next entry to \
                     apply is {expected} (state machine applied index {}, {} jobs queued; \
                     durable hard state {:?}, incarnation {}). Entries must be applied exactly \
                     once: after a restart applying must resume after InitialState::applied",
                    e.log_id(),
                    node.kv.applied,
                    node.to_apply.len(),
                    node.disk.hard_state,
                    node.incarnation
                ));
            }
            if node.disk.get(e.index) != Some(&e) {
                return Err(format!(
                    "node {id}: committed entry {} handed out for applying is not in the \
                     durable log (durable log {}..={})",
                    e.log_id(),
                    node.disk.purged.index + 1,
                    node.disk.last_log_id()
                ));
            }
            node.to_apply.push_back(ApplyJob::Entry(e));
        }
        if write.hard_state.is_some()
            || write.truncate_from.is_some()
            || !write.entries.is_empty()
            || !write.persisted_messages.is_empty()
        {
            node.writes.push_back(PendingWrite::Log(write));
        }
        if let Some(c) = steps.compact_log {
            node.writes.push_back(PendingWrite::Compact(c));
        }
        if let Some(meta) = steps.build_snapshot {
            node.to_apply.push_back(ApplyJob::Build(meta));
        }
        if let Some(meta) = steps.install_snapshot {
            match node.incoming.take() {
                Some((m, kv)) if m == meta => node.to_apply.push_back(ApplyJob::Install(meta, kv)),
                other => {
                    return Err(format!(
                        "node {id}: Ready::install_snapshot asks to install {} but the snapshot \
                         received is {:?} (the engine must ask only for the one just stepped in)",
                        meta.last_log_id,
                        other.map(|(m, _)| m.last_log_id)
                    ))
                }
            }
        }
        self.nodes[i].fetches.extend(steps.fetch_entries);
        for rs in steps.read_states {
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
        for (read, err) in steps.failed_reads {
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
        let durable = node.disk.hard_state;
        // A candidate's own vote in term T is promised durable when the
        // durable hard state holds it, or a later term: a node never acts in
        // an earlier term again. (Several ticks handed over at once, as
        // after a stall, can campaign twice in one `Ready`; the first
        // campaign's requests then leave behind the second's write.) A vote
        // granted must be durable exactly as sent: the simulation never
        // produces a grant behind a later term, and the strict check keeps
        // a double grant in one term visible.
        match &msg.body {
            MessageBody::RequestVote {
                pre_vote: false, ..
            } if durable.term < msg.term
                || (durable.term == msg.term && durable.vote != Some(id)) =>
            {
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
            } if node.disk.last_index() < *last_index => {
                return Err(format!(
                    "DURABILITY: node {id} acknowledges entries up to {last_index} to {} but \
                     only up to {} are durable (persisted_messages: {persisted})",
                    msg.to,
                    node.disk.last_index()
                ));
            }
            _ => {}
        }
        if let MessageBody::AppendEntries { entries, .. } = &msg.body {
            self.obs.keep(entries);
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
        let latency = self.latency();
        self.net.push(Packet::message(msg), self.now + latency);
        Ok(())
    }

    /// The delay of a message sent now, in ticks.
    fn latency(&mut self) -> u64 {
        if self.faulty && self.rng.gen_bool(0.08) {
            self.faults.delayed += 1;
            self.rng.gen_range(3..=25)
        } else {
            self.rng.gen_range(0..=1)
        }
    }

    /// The oldest pending write of node `i` becomes durable.
    fn complete_write(&mut self, i: usize) -> Check {
        let Some(write) = self.nodes[i].writes.pop_front() else {
            return Ok(());
        };
        match write {
            PendingWrite::Log(w) => self.complete_log_write(
                i,
                w.write_id,
                w.hard_state,
                w.truncate_from,
                w.entries,
                w.persisted_messages,
            ),
            PendingWrite::Compact(c) => self.complete_compaction(i, c),
            PendingWrite::Install(meta) => self.complete_install(i, meta),
        }
    }

    fn complete_log_write(
        &mut self,
        i: usize,
        write_id: Option<WriteId>,
        hard_state: Option<HardState>,
        truncate_from: Option<Index>,
        entries: Vec<Entry>,
        persisted_messages: Vec<Message>,
    ) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        if let Some(hs) = hard_state {
            let old = node.disk.hard_state;
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
            node.disk.hard_state = hs;
        }
        if let Some(from) = truncate_from {
            if from == 0 {
                return Err(format!("node {id}: truncate_from 0"));
            }
            for e in node.disk.entries_from(from) {
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
            node.disk
                .truncate(from)
                .map_err(|e| format!("node {id}: {e}"))?;
        }
        if !entries.is_empty() {
            let prev_term = node.disk.last_log_id().term;
            node.disk
                .append(&entries)
                .map_err(|e| format!("node {id}: {e} after truncate_from {truncate_from:?}"))?;
            let holder = Holder {
                node: id,
                incarnation: node.incarnation,
            };
            self.obs.record_entries(holder, prev_term, &entries)?;
            self.obs.keep(&entries);
        }
        let node = &self.nodes[i];
        if node.disk.hard_state.commit > node.disk.last_index() {
            return Err(format!(
                "node {id}: durable commit {} is beyond the durable log (last index {})",
                node.disk.hard_state.commit,
                node.disk.last_index()
            ));
        }
        let last = entries.last().map(Entry::log_id);
        self.record(Event::WriteDone {
            node: id,
            hard_state: hard_state.map(|h| (h.term, h.vote, h.commit)),
            truncate_from,
            entries: last.map_or((0, 0), |l| (entries.len() as u64, l.index)),
            messages: persisted_messages.len(),
        });
        for msg in persisted_messages {
            self.send(i, msg, true)?;
        }
        if let Some(write_id) = write_id {
            if let Some(engine) = self.nodes[i].engine.as_mut() {
                engine.on_persisted(write_id);
            }
        }
        self.drain(i)
    }

    /// Node `i`'s state machine does some of its queued work.
    fn apply(&mut self, i: usize) -> Check {
        let count = self.rng.gen_range(1..=4).min(self.nodes[i].to_apply.len());
        let id = self.nodes[i].id;
        let mut first = 0;
        let mut last = 0;
        for _ in 0..count {
            let job = self.nodes[i].to_apply.pop_front().expect("counted");
            let e = match job {
                ApplyJob::Entry(e) => e,
                other => {
                    // Snapshot work waits for the entries before it, and
                    // the entries after it wait for it.
                    self.report_applied(i, first, last)?;
                    first = 0;
                    self.snapshot_job(i, other)?;
                    continue;
                }
            };
            self.obs.record_applied(id, &e)?;
            self.reference.advance(&e)?;
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
        self.report_applied(i, first, last)?;
        self.serve_reads(i);
        self.drain(i)
    }

    /// Records that node `i` applied `first..=last` (nothing when `first` is 0).
    fn report_applied(&mut self, i: usize, first: Index, last: Index) -> Check {
        if first == 0 {
            return Ok(());
        }
        let id = self.nodes[i].id;
        self.reference
            .check(&self.nodes[i].kv, &format!("node {id}'s state machine"))?;
        self.record(Event::Apply {
            node: id,
            first,
            last,
        });
        if let Some(engine) = self.nodes[i].engine.as_mut() {
            engine.on_applied(last);
        }
        Ok(())
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

    /// A client invokes an operation: at `to`, or at a node it picks.
    fn client_request(&mut self, to: Option<usize>) -> Check {
        let idle = self.clients.idle();
        let Some(&c) = idle.choose(&mut self.rng) else {
            return Ok(());
        };
        let key = self.rng.gen_range(0..self.clients.keys.len());
        // Mostly a node that believes it leads (possibly a stale leader of
        // an older term: where stale reads would show), sometimes any node.
        // A stalled node takes requests only once it resumes: clients
        // pick among the others.
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].stalled_until == 0
                    && self.nodes[*i]
                        .engine
                        .as_ref()
                        .is_some_and(|e| e.role() == Role::Leader)
            })
            .collect();
        let others: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].stalled_until == 0)
            .collect();
        let node = match (to, leaders.choose(&mut self.rng)) {
            (Some(to), _) => to,
            (None, Some(&l)) if self.rng.gen_bool(0.85) => l,
            _ => match others.choose(&mut self.rng) {
                Some(&n) => n,
                None => return Ok(()),
            },
        };
        // A request that waited for a stalled node is a read half the time
        // (the case a stale clock would get wrong).
        let roll = if to.is_some() && self.rng.gen_bool(0.5) {
            0
        } else {
            self.rng.gen_range(0..100)
        };
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
            // A read that waited for a stalled node asks for its lease.
            let lease = lease_ok && (to.is_some() || self.rng.gen_bool(0.5));
            let r = if lease {
                match engine.read_lease(read) {
                    Ok(()) => {
                        self.clients.stats.lease_reads += 1;
                        Ok(())
                    }
                    Err(ReadRefused::LeaseNotHeld) => engine.read_index(read),
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
                Err(ReadRefused::NotLeader { .. }) => Err("not leader"),
                Err(ReadRefused::LeaseNotHeld) => Err("lease not held"),
                Err(ReadRefused::TooManyPending(_)) => Err("too many reads"),
                Err(_) => Err("read refused"),
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
                    raft_core::engine::ProposalRefused::NotLeader { .. } => "not leader",
                    raft_core::engine::ProposalRefused::TransferInProgress(_) => "transfer",
                    raft_core::engine::ProposalRefused::TooManyPending(_) => "too many pending",
                    raft_core::engine::ProposalRefused::TooManyBytesPending(_) => {
                        "too many bytes pending"
                    }
                    _ => "refused",
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
}
