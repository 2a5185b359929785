//! [`Raft::start`] in named phases: check the configuration, recover
//! (`recover.rs`), load the log, build the engine, spawn the tasks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::handle::Request;
use super::recover::recover;
use super::tasks::{ApplyJob, Event, StorageJob};
use super::{tasks, Driver, DriverConfig, Raft, RaftHandle, StartError};
use crate::config::Config;
use crate::engine::{Engine, InitialState, WriteId};
use crate::membership::Membership;
use crate::message::Message;
use crate::snapshot::SnapshotData;
use crate::state_machine::StateMachine;
use crate::storage::{LogStorage, StorageError, StoredState};
use crate::transport::Transport;
use crate::types::{Entry, EntryPayload, Index, SnapshotMeta};

/// Bytes read from the log per batch while loading it at start.
const LOAD_BATCH_BYTES: u64 = 16 * 1024 * 1024;

impl<L: LogStorage, S: StateMachine, T: Transport> Raft<L, S, T> {
    /// Loads the node's state from `log` and `state_machine`, spawns its
    /// tasks on the current tokio runtime and returns its handle.
    ///
    /// The node lives on that runtime: its tasks, including the timer that
    /// ends proposals at their deadline, stop with it. Handles may be used
    /// from other runtimes while it runs.
    ///
    /// `bootstrap` is the initial configuration of a new cluster; it is used
    /// only when the log holds no configuration yet (a restarted node uses
    /// its own).
    ///
    /// Install a `metrics` recorder first, if any: the metrics the driver
    /// updates at every proposal are registered once, here.
    ///
    /// # Errors
    ///
    /// [`StartError`] for an invalid configuration or unreadable storage.
    pub async fn start(
        config: Config,
        driver: DriverConfig,
        bootstrap: Membership,
        log: L,
        mut state_machine: S,
        transport: T,
    ) -> Result<RaftHandle<S::Response>, StartError> {
        config.validate()?;
        driver.validate().map_err(StartError::DriverConfig)?;
        let stored = log.stored_state().await?;
        let applied = state_machine.applied_index().await?;
        let latest_snapshot = state_machine.latest_snapshot().await?;
        let stored = recover(
            &log,
            stored,
            applied,
            latest_snapshot.as_ref().map(|(m, _)| m),
        )
        .await?;
        let (entries, payloads_dropped_to) =
            load_entries(&log, &stored, applied, config.max_log_cache_bytes).await?;
        let initial = InitialState {
            hard_state: stored.hard_state,
            snapshot: stored.snapshot,
            purged: stored.purged,
            entries,
            bootstrap,
            applied,
            payloads_dropped_to,
        };
        let engine = Engine::new(config, initial)?;
        tracing::info!(
            id = engine.id(),
            term = engine.term(),
            last = %engine.last_log_id(),
            commit = engine.commit_index(),
            applied,
            "raft node starting"
        );
        let parts = Parts {
            engine,
            driver,
            log,
            state_machine,
            transport,
            applied,
            latest_snapshot,
        };
        Ok(parts.spawn())
    }
}

/// Loads the log after its purged prefix. Payloads of applied entries
/// beyond the log cache's budget (`max_cache_bytes`) are dropped as they
/// load (oldest first), so a restart holds no more than a running node
/// would: the engine reads them back when a follower needs them. Returns
/// the entries and the highest index whose payload was dropped (0: none).
async fn load_entries<L: LogStorage>(
    log: &L,
    stored: &StoredState,
    applied: Index,
    max_cache_bytes: u64,
) -> Result<(Vec<Entry>, Index), StorageError> {
    let first = (stored.purged.index + 1).max(stored.first_log_id.map_or(1, |f| f.index));
    let end = stored.last_log_id.map_or(first, |l| l.index + 1);
    let mut entries: Vec<Entry> = Vec::new();
    let mut next = first;
    let mut held = 0u64;
    let mut dropped = 0usize;
    let mut payloads_dropped_to = 0;
    while next < end {
        let batch = log.entries(next, end, LOAD_BATCH_BYTES).await?;
        let Some(last) = batch.last() else { break };
        next = last.index + 1;
        held += batch
            .iter()
            .filter(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .map(Entry::size_bytes)
            .sum::<u64>();
        entries.extend(batch);
        while held > max_cache_bytes && dropped < entries.len() && entries[dropped].index <= applied
        {
            let e = &mut entries[dropped];
            if let EntryPayload::Normal(data) = &e.payload {
                held -= Entry::OVERHEAD_BYTES + data.len() as u64;
                e.payload = EntryPayload::Normal(bytes::Bytes::new());
            }
            payloads_dropped_to = e.index;
            dropped += 1;
        }
    }
    Ok((entries, payloads_dropped_to))
}

/// What a node's tasks are spawned from.
struct Parts<L, S: StateMachine, T> {
    engine: Engine,
    driver: DriverConfig,
    log: L,
    state_machine: S,
    transport: T,
    applied: Index,
    latest_snapshot: Option<(SnapshotMeta, SnapshotData)>,
}

/// The channels joining a node's tasks and its handle.
struct Channels<R> {
    req: (mpsc::Sender<Request<R>>, mpsc::Receiver<Request<R>>),
    inbound: (mpsc::Sender<Message>, mpsc::Receiver<Message>),
    out: (mpsc::Sender<Vec<Message>>, mpsc::Receiver<Vec<Message>>),
    persist: (mpsc::Sender<StorageJob>, mpsc::Receiver<StorageJob>),
    apply: (mpsc::Sender<ApplyJob<R>>, mpsc::Receiver<ApplyJob<R>>),
    persisted: (
        watch::Sender<Option<WriteId>>,
        watch::Receiver<Option<WriteId>>,
    ),
    applied: (watch::Sender<Index>, watch::Receiver<Index>),
    fatal: (
        watch::Sender<Option<String>>,
        watch::Receiver<Option<String>>,
    ),
    shutdown: (watch::Sender<bool>, watch::Receiver<bool>),
    done: (watch::Sender<bool>, watch::Receiver<bool>),
    events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
}

impl<R> Channels<R> {
    /// The channels, bounded as `driver` says; `applied` starts the
    /// applied watermark.
    fn new(driver: &DriverConfig, applied: Index) -> Self {
        Self {
            req: mpsc::channel(driver.request_queue_capacity),
            inbound: mpsc::channel(driver.inbound_queue_capacity),
            out: mpsc::channel(driver.outbound_queue_capacity),
            persist: mpsc::channel(driver.storage_queue_capacity),
            apply: mpsc::channel(driver.apply_queue_capacity),
            persisted: watch::channel(None),
            applied: watch::channel(applied),
            fatal: watch::channel(None),
            shutdown: watch::channel(false),
            done: watch::channel(false),
            events: mpsc::unbounded_channel(),
        }
    }
}

/// The receiving ends the engine task's loop waits on.
struct EngineInputs<R> {
    requests: mpsc::Receiver<Request<R>>,
    inbound: mpsc::Receiver<Message>,
    events: mpsc::UnboundedReceiver<Event>,
    persisted: watch::Receiver<Option<WriteId>>,
    fatal: watch::Receiver<Option<String>>,
    shutdown: watch::Receiver<bool>,
}

/// The storage, apply and network tasks, which the engine task waits for
/// (or stops) when it ends.
struct Background {
    storage: JoinHandle<()>,
    apply: JoinHandle<()>,
    network: JoinHandle<()>,
}

impl<L: LogStorage, S: StateMachine, T: Transport> Parts<L, S, T> {
    /// Spawns the storage, apply, network and engine tasks, joined by
    /// bounded channels, and returns the handle to them.
    fn spawn(self) -> RaftHandle<S::Response> {
        let ch = Channels::new(&self.driver, self.applied);
        let log = Arc::new(self.log);
        let reader: Arc<dyn LogStorage> = log.clone();
        let transport = Arc::new(self.transport);
        let storage_clock = Arc::new(tasks::StorageClock::new());
        let background = Background {
            storage: tokio::spawn(tasks::storage_task(
                log,
                ch.persist.1,
                ch.out.0.clone(),
                ch.persisted.0,
                ch.fatal.0.clone(),
                ch.events.0.clone(),
                storage_clock.clone(),
            )),
            apply: tokio::spawn(tasks::apply_task(
                self.state_machine,
                ch.apply.1,
                ch.applied.0,
                ch.fatal.0,
                ch.events.0.clone(),
            )),
            network: tokio::spawn(tasks::network_task(Arc::clone(&transport), ch.out.1)),
        };
        let handle = RaftHandle {
            id: self.engine.id(),
            requests: ch.req.0,
            inbound: ch.inbound.0,
            applied: ch.applied.1.clone(),
            shutdown: ch.shutdown.0,
            done: ch.done.1,
            failure: ch.fatal.1.clone(),
            storage_clock,
            request_timeout: self.driver.request_timeout,
            deadlines: Arc::new(super::deadline::Deadlines::new(self.driver.request_timeout)),
        };
        tokio::spawn(Arc::clone(&handle.deadlines).run(handle.done.clone()));
        let driver = Driver {
            engine: self.engine,
            cfg: self.driver,
            proposals: Default::default(),
            reads: HashMap::new(),
            next_read_id: 1,
            transfer: None,
            out_tx: ch.out.0,
            persist_tx: ch.persist.0,
            apply_tx: ch.apply.0,
            apply_backlog: VecDeque::new(),
            backlog_reported: 0,
            unapplied: VecDeque::new(),
            unapplied_bytes: 0,
            reader,
            applied: ch.applied.1,
            last_soft: None,
            known_leader: None,
            transport,
            events_tx: ch.events.0,
            snapshot: self.latest_snapshot,
            snapshot_waiters: Vec::new(),
            incoming: None,
            sending: BTreeSet::new(),
            changes: Vec::new(),
            pending_gauge: metrics::gauge!("raft_proposals_pending"),
            proposals_counter: metrics::counter!("raft_proposals_total"),
            now: tokio::time::Instant::now(),
            commit_latency: metrics::histogram!("raft_proposal_commit_seconds"),
            forwards: Default::default(),
        };
        let inputs = EngineInputs {
            requests: ch.req.1,
            inbound: ch.inbound.1,
            events: ch.events.1,
            persisted: ch.persisted.1,
            fatal: ch.fatal.1,
            shutdown: ch.shutdown.1,
        };
        tokio::spawn(run_engine(driver, inputs, background, ch.done.0));
        handle
    }
}

/// The engine task: runs the loop, then lets the storage task finish what
/// it holds, waits for the apply task, stops the network task and reports
/// the node stopped through `done`.
async fn run_engine<R: Send + 'static, T: Transport>(
    mut driver: Driver<R, T>,
    inputs: EngineInputs<R>,
    background: Background,
    done: watch::Sender<bool>,
) {
    let id = driver.engine.id();
    driver
        .run(
            inputs.requests,
            inputs.inbound,
            inputs.events,
            inputs.persisted,
            inputs.fatal,
            inputs.shutdown,
        )
        .await;
    // Closing the queues lets the storage task finish what it holds.
    drop(driver);
    let _ = background.storage.await;
    let _ = background.apply.await;
    background.network.abort();
    let _ = done.send(true);
    tracing::info!(id, "raft node stopped");
}
