//! The tokio driver under faults, on paused time: randomized clusters of
//! `Raft<_, MemKv, _>` (3 or 5 voters) with a network that loses, delays and
//! reorders messages and partitions nodes, logs whose fsync is slow and
//! that lose the writes in flight when their node crashes, state machines
//! whose apply is slow, and nodes that crash and restart from what their
//! log and state machine hold. Clients propose writes, deletes and
//! compare-and-sets and read at every consistency level through random
//! nodes; the history of each key must be linearizable, and every replica
//! must end with the same data.
//!
//! Unlike the simulation (`simulation.rs`), which drives the engine alone,
//! this runs everything a deployment runs between the engine and the
//! traits: the engine task and its tick clock, group commit in the storage
//! task, the apply task and how it answers proposers, read confirmation,
//! the queues and their drop policies, restart recovery.
//!
//! `DRIVER_SEEDS` sets the number of seeds (default 10; `scripts/test` runs
//! 300 in release), `DRIVER_SEED_START` the first; a failure prints its
//! seed and `DRIVER_SEED=<seed>` replays it alone.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::{GatedLog, LogOp, WriteGate};
use raft_core::memory::{KvCommand, KvResponse, MemKv, MemKvReader, MemLog};
use raft_core::{
    Config, DriverConfig, Entry, Membership, Message, NodeId, Raft, RaftHandle, ReadConsistency,
    SnapshotBuild, SnapshotData, SnapshotMeta, StateMachine, StateMachineError, StorageError,
    Transport, TransportError,
};
use raft_linearizability::{check, CheckLimits, History, Op, OpId, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Handle = RaftHandle<KvResponse>;

/// The shared random source of one run: every fault decision draws from it.
type Dice = Arc<Mutex<StdRng>>;

fn roll<T>(dice: &Dice, f: impl FnOnce(&mut StdRng) -> T) -> T {
    f(&mut dice.lock().expect("dice"))
}

// ----- the network --------------------------------------------------------------

struct Net {
    handles: Mutex<HashMap<NodeId, Handle>>,
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
    dice: Dice,
    loss: f64,
    max_delay_ms: u64,
}

struct ChaosTransport {
    id: NodeId,
    net: Arc<Net>,
}

#[async_trait]
impl Transport for ChaosTransport {
    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), TransportError> {
        if self.net.cut.lock().expect("cut").contains(&(self.id, to)) {
            return Ok(());
        }
        let Some(handle) = self.net.handles.lock().expect("handles").get(&to).cloned() else {
            return Err(TransportError::UnknownPeer(to));
        };
        for m in messages {
            let (lost, delay) = roll(&self.net.dice, |r| {
                (
                    r.gen_bool(self.net.loss),
                    r.gen_range(0..=self.net.max_delay_ms),
                )
            });
            if lost {
                continue;
            }
            let h = handle.clone();
            // Each message on its own delay: reordered.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = h.receive(m);
            });
        }
        Ok(())
    }
    async fn send_snapshot(
        &self,
        to: NodeId,
        header: Message,
        data: SnapshotData,
    ) -> Result<(), TransportError> {
        if self.net.cut.lock().expect("cut").contains(&(self.id, to)) {
            return Err(TransportError::Other(format!("link to {to} is cut")));
        }
        let Some(handle) = self.net.handles.lock().expect("handles").get(&to).cloned() else {
            return Err(TransportError::UnknownPeer(to));
        };
        // A transfer takes a while; the receiver may crash meanwhile.
        let ms = roll(&self.net.dice, |r| {
            r.gen_range(0..=self.net.max_delay_ms * 4)
        });
        tokio::time::sleep(Duration::from_millis(ms)).await;
        handle
            .receive_snapshot(header, data)
            .map_err(|_| TransportError::Other(format!("node {to} did not take the snapshot")))
    }
}

// ----- the log --------------------------------------------------------------------

/// A disk whose writes take a random time to become durable, and that
/// loses every write still in flight when its node crashes (the write then
/// fails, which stops the driver: nothing of it was acknowledged).
struct ChaosDisk {
    crashed: AtomicBool,
    dice: Dice,
    max_fsync_ms: u64,
}

type ChaosLog = GatedLog<ChaosDisk>;

#[async_trait]
impl WriteGate for ChaosDisk {
    async fn before(&self, _: LogOp) -> Result<(), StorageError> {
        let ms = roll(&self.dice, |r| r.gen_range(0..=self.max_fsync_ms));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if self.crashed.load(Ordering::SeqCst) {
            return Err(StorageError::Backend(
                "crashed before the write was durable".into(),
            ));
        }
        Ok(())
    }
}

// ----- the state machine ----------------------------------------------------------

/// `MemKv` with applies that sometimes take a while (a busy disk, a big
/// batch), so the apply queue fills and work waits in the engine task's
/// backlog, and snapshots whose background build sometimes takes seconds
/// (so crashes, installs and shutdowns land during builds).
struct SlowKv {
    inner: MemKv,
    dice: Dice,
}

#[async_trait]
impl StateMachine for SlowKv {
    type Response = KvResponse;
    async fn applied_index(&mut self) -> Result<u64, StateMachineError> {
        StateMachine::applied_index(&mut self.inner).await
    }
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<KvResponse>, StateMachineError> {
        let ms = roll(&self.dice, |r| {
            if r.gen_bool(0.05) {
                r.gen_range(20..=300)
            } else {
                0
            }
        });
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        StateMachine::apply(&mut self.inner, entries).await
    }
    async fn build_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotData, StateMachineError> {
        StateMachine::build_snapshot(&mut self.inner, meta).await
    }
    async fn begin_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotBuild, StateMachineError> {
        let build = StateMachine::begin_snapshot(&mut self.inner, meta).await?;
        let ms = roll(&self.dice, |r| {
            if r.gen_bool(0.3) {
                r.gen_range(100..=3000)
            } else {
                0
            }
        });
        Ok(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            build.await
        }))
    }
    async fn latest_snapshot(
        &mut self,
    ) -> Result<Option<(SnapshotMeta, SnapshotData)>, StateMachineError> {
        StateMachine::latest_snapshot(&mut self.inner).await
    }
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), StateMachineError> {
        StateMachine::install_snapshot(&mut self.inner, meta, data).await
    }
}

// ----- the cluster ----------------------------------------------------------------

struct Node {
    handle: Handle,
    log: Arc<ChaosLog>,
    reader: MemKvReader,
}

struct Cluster {
    voters: Vec<NodeId>,
    net: Arc<Net>,
    dice: Dice,
    max_fsync_ms: u64,
    /// Per node: the durable log and state machine that survive crashes.
    disks: Vec<(Arc<MemLog>, MemKvReader)>,
    nodes: Mutex<Vec<Option<Node>>>,
}

impl Cluster {
    async fn start_node(&self, id: NodeId, fresh: Option<MemKv>) -> Node {
        let (inner, reader) = &self.disks[(id - 1) as usize];
        let kv = fresh.unwrap_or_else(|| MemKv::reopen(reader));
        let log = Arc::new(ChaosLog {
            inner: inner.clone(),
            gate: ChaosDisk {
                crashed: AtomicBool::new(false),
                dice: self.dice.clone(),
                max_fsync_ms: self.max_fsync_ms,
            },
        });
        let mut cfg = Config::new(id);
        cfg.seed = roll(&self.dice, |r| r.gen());
        // Snapshots and log compaction during a run, so followers that
        // fall behind get installs.
        cfg.snapshot_threshold_entries = roll(&self.dice, |r| r.gen_range(30..=200));
        cfg.snapshot_keep_entries = 10;
        // The in-memory log's payload budget, from the seed just drawn (no
        // draw of its own, so every seed's schedule stays as it was): none
        // in a third of the nodes, so followers that fall behind get their
        // entries read back from the log; a few entries' worth in another.
        cfg.max_log_cache_bytes = [0, 2_000, 64 << 20][(cfg.seed % 3) as usize];
        let handle = Raft::start(
            cfg,
            DriverConfig::default(),
            Membership::new(self.voters.clone()),
            log.clone(),
            SlowKv {
                inner: kv,
                dice: self.dice.clone(),
            },
            ChaosTransport {
                id,
                net: self.net.clone(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("node {id} restarts from its storage: {e}"));
        self.net
            .handles
            .lock()
            .expect("handles")
            .insert(id, handle.clone());
        Node {
            handle,
            log,
            reader: reader.clone(),
        }
    }

    fn live(&self) -> Vec<(Handle, MemKvReader)> {
        self.nodes
            .lock()
            .expect("nodes")
            .iter()
            .flatten()
            .map(|n| (n.handle.clone(), n.reader.clone()))
            .collect()
    }

    /// Crashes node `id`: the writes its log has in flight are lost, the
    /// driver stops on the failure, the network forgets it.
    async fn crash(&self, id: NodeId) {
        let node = self.nodes.lock().expect("nodes")[(id - 1) as usize].take();
        let Some(node) = node else { return };
        node.log.gate.crashed.store(true, Ordering::SeqCst);
        self.net.handles.lock().expect("handles").remove(&id);
        node.handle.shutdown().await;
    }

    async fn restart(&self, id: NodeId) {
        if self.nodes.lock().expect("nodes")[(id - 1) as usize].is_some() {
            return;
        }
        let node = self.start_node(id, None).await;
        self.nodes.lock().expect("nodes")[(id - 1) as usize] = Some(node);
    }
}

// ----- clients --------------------------------------------------------------------

const KEYS: [&str; 3] = ["a", "b", "c"];

struct Recorder {
    history: Mutex<History>,
    clock: AtomicU64,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
    fn invoke(&self, client: u64, key: &str, op: Op) -> OpId {
        let t = self.now();
        self.history
            .lock()
            .expect("history")
            .invoke(client, key.as_bytes().to_vec(), op, t)
    }
    fn complete(&self, id: OpId, outcome: Outcome) {
        let t = self.now();
        self.history
            .lock()
            .expect("history")
            .complete(id, t, outcome);
    }
}

async fn client(id: u64, cluster: Arc<Cluster>, rec: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let live = cluster.live();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let (pick, key, kind, expected) = roll(&cluster.dice, |r| {
            (
                r.gen_range(0..live.len()),
                KEYS[r.gen_range(0..KEYS.len())],
                r.gen_range(0..100u32),
                r.gen_bool(0.5),
            )
        });
        let (handle, reader) = &live[pick];
        seq += 1;
        let value = format!("c{id}.{seq}");
        if kind < 40 {
            let consistency = match kind % 3 {
                0 => ReadConsistency::Linearizable,
                1 => ReadConsistency::Lease,
                _ => ReadConsistency::Linearizable,
            };
            let op = rec.invoke(id, key, Op::Read);
            let outcome = match handle.read(consistency).await {
                Ok(index) => {
                    // Served once this replica applied up to the index.
                    let mut waited = 0;
                    while handle.applied_index() < index && waited < 500 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        waited += 1;
                    }
                    if handle.applied_index() >= index {
                        Outcome::ReadOk(reader.get(key).map(|(v, _)| v.to_vec()))
                    } else {
                        Outcome::Failed
                    }
                }
                Err(_) => Outcome::Failed,
            };
            rec.complete(op, outcome);
        } else {
            let (op, cmd) = if kind < 75 {
                (
                    Op::Write(value.clone().into_bytes()),
                    KvCommand::Put {
                        key: key.into(),
                        value: Bytes::from(value.clone()),
                    },
                )
            } else if kind < 85 {
                (Op::Delete, KvCommand::Delete { key: key.into() })
            } else {
                let current = reader.get(key).map(|(v, _)| v);
                let expect = if expected { current } else { None };
                (
                    Op::Cas {
                        expected: expect.as_ref().map(|b| b.to_vec()),
                        new: value.clone().into_bytes(),
                    },
                    KvCommand::CompareAndSet {
                        key: key.into(),
                        expected: expect,
                        value: Bytes::from(value.clone()),
                    },
                )
            };
            let id_ = rec.invoke(id, key, op.clone());
            let outcome = match handle.propose(cmd.encode()).await {
                Ok(KvResponse::CasFailed { .. }) => Outcome::CasFailed,
                Ok(_) => match op {
                    Op::Write(_) => Outcome::WriteOk,
                    Op::Delete => Outcome::DeleteOk,
                    Op::Cas { .. } => Outcome::CasOk,
                    Op::Read => unreachable!("a write"),
                },
                Err(e) if e.may_have_committed() => Outcome::Indeterminate,
                Err(_) => Outcome::Failed,
            };
            rec.complete(id_, outcome);
        }
        let pause = roll(&cluster.dice, |r| r.gen_range(0..=20));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

// ----- one run --------------------------------------------------------------------

/// What one run did, to show the faults and clients were exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    ops: u64,
    acknowledged: u64,
    indeterminate: u64,
    crashes: u64,
    partitions: u64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.ops += o.ops;
        self.acknowledged += o.acknowledged;
        self.indeterminate += o.indeterminate;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
    }
}

async fn run(seed: u64) -> Result<Stats, String> {
    let mut stats = Stats::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let voters: u64 = if rng.gen_bool(0.5) { 3 } else { 5 };
    let loss = rng.gen_range(0.0..0.1);
    let max_delay_ms = rng.gen_range(1..=30);
    let max_fsync_ms = rng.gen_range(0..=20);
    let dice: Dice = Arc::new(Mutex::new(StdRng::seed_from_u64(rng.gen())));
    let net = Arc::new(Net {
        handles: Mutex::new(HashMap::new()),
        cut: Mutex::new(BTreeSet::new()),
        dice: dice.clone(),
        loss,
        max_delay_ms,
    });
    let cluster = Arc::new(Cluster {
        voters: (1..=voters).collect(),
        net: net.clone(),
        dice: dice.clone(),
        max_fsync_ms,
        disks: (1..=voters)
            .map(|_| {
                let kv = MemKv::new();
                (Arc::new(MemLog::new()), kv.reader())
            })
            .collect(),
        nodes: Mutex::new(Vec::new()),
    });
    // The first incarnation of each state machine, behind its reader.
    for id in 1..=voters {
        let reader = &cluster.disks[(id - 1) as usize].1;
        let node = cluster.start_node(id, Some(MemKv::reopen(reader))).await;
        cluster.nodes.lock().expect("nodes").push(Some(node));
    }
    let rec = Arc::new(Recorder {
        history: Mutex::new(History::new()),
        clock: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| tokio::spawn(client(c, cluster.clone(), rec.clone(), stop.clone())))
        .collect();

    // Faults for 8 s of virtual time: crashes (at most a minority down),
    // partitions, restarts.
    let mut down: BTreeSet<NodeId> = BTreeSet::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let choice = roll(&dice, |r| r.gen_range(0..10u32));
        let target = roll(&dice, |r| r.gen_range(1..=voters));
        match choice {
            0 | 1 if (down.len() as u64) < (voters - 1) / 2 => {
                cluster.crash(target).await;
                down.insert(target);
                stats.crashes += 1;
            }
            2 | 3 => {
                if let Some(&id) = down.iter().next() {
                    cluster.restart(id).await;
                    down.remove(&id);
                }
            }
            4 => {
                stats.partitions += 1;
                let mut cut = net.cut.lock().expect("cut");
                cut.clear();
                for other in 1..=voters {
                    if other != target {
                        cut.insert((target, other));
                        cut.insert((other, target));
                    }
                }
            }
            5 => {
                stats.partitions += 1;
                let mut cut = net.cut.lock().expect("cut");
                cut.clear();
                let other = target % voters + 1;
                cut.insert((target, other));
            }
            6 | 7 => net.cut.lock().expect("cut").clear(),
            _ => {}
        }
    }
    // Heal everything and let the cluster settle with clients running.
    net.cut.lock().expect("cut").clear();
    for id in std::mem::take(&mut down) {
        cluster.restart(id).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
    }

    // Every replica converges to the same data.
    let mut converged = false;
    let mut last_seen = String::new();
    for _ in 0..300 {
        let live = cluster.live();
        let dumps: Vec<_> = live.iter().map(|(_, r)| r.dump()).collect();
        let applied: Vec<u64> = live.iter().map(|(h, _)| h.applied_index()).collect();
        if dumps.windows(2).all(|w| w[0] == w[1]) && applied.windows(2).all(|w| w[0] == w[1]) {
            converged = true;
            break;
        }
        last_seen = format!(
            "applied {applied:?}, keys {:?}",
            dumps.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (h, _) in cluster.live() {
        h.shutdown().await;
    }
    let history = rec.history.lock().expect("history").clone();
    for op in history.ops() {
        stats.ops += 1;
        match op.outcome {
            Outcome::Failed => {}
            Outcome::Indeterminate => stats.indeterminate += 1,
            _ => stats.acknowledged += 1,
        }
    }
    let verdict = check(&history, CheckLimits::default());
    if !verdict.is_ok() {
        return Err(format!(
            "seed {seed} ({voters} voters, loss {loss:.2}, delay <= {max_delay_ms} ms, fsync <= \
             {max_fsync_ms} ms): {verdict}"
        ));
    }
    if !converged {
        return Err(format!(
            "seed {seed} ({voters} voters): the replicas did not converge within 30 s after \
             healing ({last_seen})"
        ));
    }
    Ok(stats)
}

#[test]
fn randomized_clusters_stay_linearizable_through_the_driver() {
    let seeds: u64 = raft_core::testing::env_or("DRIVER_SEEDS", 10);
    let start: u64 = raft_core::testing::env_or("DRIVER_SEED_START", 1);
    let only: Option<u64> = std::env::var("DRIVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let list: Vec<u64> = match only {
        Some(s) => vec![s],
        None => (start..start + seeds).collect(),
    };
    let mut failures = Vec::new();
    let mut total = Stats::default();
    for seed in &list {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        // A panic (a node that cannot restart from its storage, an engine
        // assertion) fails the seed like a violation, with its replay line.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(*seed))))
                .unwrap_or_else(|panic| {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!("seed {seed}: panicked: {text}"))
                });
        match outcome {
            Ok(s) => total.add(s),
            Err(e) => {
                println!("FAILED {e}\n  replay: DRIVER_SEED={seed} cargo test -p raftkv-core --test driver_chaos -- --nocapture");
                failures.push(*seed);
            }
        }
    }
    println!(
        "driver chaos: {} seeds, {} failed {failures:?}; {} operations ({} acknowledged, {} \
         indeterminate), {} crashes, {} partitions",
        list.len(),
        failures.len(),
        total.ops,
        total.acknowledged,
        total.indeterminate,
        total.crashes,
        total.partitions
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}
