//! The tokio driver: one task owns the [`Engine`] and executes its output
//! over a [`LogStorage`], a [`StateMachine`] and a [`Transport`].
//!
//! Four tasks, joined by bounded channels:
//! - the **engine task** (this module's `run`) takes requests, inbound
//!   messages and ticks, and turns each [`Ready`](crate::engine::Ready) into work;
//! - the **storage task** performs writes strictly in order, merging every
//!   write that queued up meanwhile into one durable batch (group commit),
//!   then releases the messages that waited for it and reports the durable
//!   position through a `watch` channel;
//! - the **apply task** applies committed entries and answers proposers;
//!   a snapshot is built beside it ([`StateMachine::begin_snapshot`]);
//! - the **network task** hands outgoing messages to the transport.
//!
//! Results flow back through `watch` channels (latest value wins), so no
//! task ever waits on a full queue of another that waits on it.
//!
//! The engine task never waits for the state machine: apply work that
//! does not fit in the apply queue waits in the engine task's own backlog,
//! so a slow apply, a long snapshot build or an install keeps neither
//! heartbeats nor elections nor answers to peers from going on. What
//! bounds that backlog is [`DriverConfig::max_unapplied_entries`] and
//! [`DriverConfig::max_unapplied_bytes`]: beyond
//! either, a leader refuses new proposals as [`ProposeError::Overloaded`] and
//! a follower takes heartbeats but no new entries. The
//! engine task does wait on a full storage queue: a leader whose disk
//! stops must not go on heartbeating as if it could still append.
//!
//! # Time
//!
//! The engine counts time in ticks; the driver derives them from the
//! monotonic clock, not from how often its timer fired. Before it hands
//! the engine a request, a message or a timer wake-up, it ticks the engine
//! once for every tick interval that passed since the last one it counted.
//! So an engine task that was held up (waiting on a full storage queue,
//! starved of CPU, or the whole process stopped with SIGSTOP)
//! learns how much time went by before it does anything else: a leader
//! stopped for longer than its lease runs its check-quorum and finds its
//! lease expired before it can answer a lease read. A stall longer than
//! three election timeouts replays only that many ticks, which is enough
//! for every timeout to fire.
//!
//! A lease read relies on this, and on clocks that agree on rates: with
//! `lease_ticks` = L and `election_timeout_ticks` = E, the lease stays inside
//! the followers' promise while any two nodes' clocks run at rates within a
//! factor (E − 1) / (L + 1) of each other ([`Config::lease_ticks`]); for the
//! defaults (E = 20, L = 14) that is 19/15, or about ±11% each.

mod handle;
mod tasks;
mod wake;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use handle::Request;
pub use handle::{
    DriverStatus, MembershipError, ProposeError, RaftHandle, ReadConsistency, ReadError,
    SnapshotError, TransferError,
};
use tasks::{ApplyJob, Event, PersistJob, StorageJob, Waiter};
use wake::{Inputs, Wake};

use crate::config::{Config, ConfigError};
use crate::engine::{
    Engine, InitialState, MembershipChange, ReadId, Role, SnapshotRequestError, SoftState, WriteId,
};
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::snapshot::SnapshotData;
use crate::state_machine::{StateMachine, StateMachineError};
use crate::storage::{LogStorage, LogWrite, StorageError};
use crate::transport::Transport;
use crate::types::{Index, NodeId, SnapshotMeta, Term};

/// Settings of the driver around the engine. Every queue is bounded here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// Wall-clock length of one engine tick.
    pub tick_interval: Duration,
    /// How long `propose` and `read` wait before answering `Timeout`.
    pub request_timeout: Duration,
    /// Capacity of the queue of client requests into the engine task.
    pub request_queue_capacity: usize,
    /// Capacity of the queue of inbound peer messages (full: dropped).
    pub inbound_queue_capacity: usize,
    /// Capacity of the queue of outbound message batches (full: dropped).
    pub outbound_queue_capacity: usize,
    /// Writes queued for the storage task at most (full: the engine task waits).
    pub storage_queue_capacity: usize,
    /// Apply batches queued for the state machine task at most. Batches
    /// beyond it wait in the engine task's own backlog: the engine task
    /// never waits for the state machine, so it keeps ticking, answering
    /// heartbeats and sending them while applies are slow or a snapshot is
    /// built or installed.
    pub apply_queue_capacity: usize,
    /// Committed entries not yet applied at most. Beyond it a leader
    /// refuses new proposals with [`ProposeError::Overloaded`] and a
    /// follower takes no new entries (heartbeats still), so what waits for
    /// a lagging state machine stays bounded on every node.
    pub max_unapplied_entries: u64,
    /// Bytes ([`Entry::size_bytes`](crate::Entry::size_bytes)) of entries
    /// handed out for applying and not yet applied at most: beyond it, as
    /// beyond `max_unapplied_entries`, a leader refuses new proposals with
    /// [`ProposeError::Overloaded`] and a follower takes no new entries.
    /// Default: 64 MiB.
    pub max_unapplied_bytes: u64,
    /// Requests or messages taken per loop turn before producing output, so
    /// proposals that arrive together share one append.
    pub max_batch_inputs: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
            request_queue_capacity: 8192,
            inbound_queue_capacity: 8192,
            outbound_queue_capacity: 4096,
            storage_queue_capacity: 64,
            apply_queue_capacity: 64,
            max_unapplied_entries: 50_000,
            max_unapplied_bytes: 64 * 1024 * 1024,
            max_batch_inputs: 4096,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid engine configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Invalid driver configuration.
    #[error("invalid driver configuration: {0}")]
    DriverConfig(String),
    /// The log could not be loaded.
    #[error("cannot load the log: {0}")]
    Storage(#[from] StorageError),
    /// The state machine could not report its applied index.
    #[error("cannot open the state machine: {0}")]
    StateMachine(#[from] StateMachineError),
    /// The state machine and the log do not fit together.
    #[error("state machine and log disagree: {0}")]
    Inconsistent(String),
}

/// A Raft node: the engine driven on tokio over storage `L`, state machine
/// `S` and transport `T`. Start it with [`Raft::start`]; talk to it through
/// the returned [`RaftHandle`].
#[derive(Debug)]
pub struct Raft<L, S, T> {
    _marker: std::marker::PhantomData<(L, S, T)>,
}

/// What a waiting proposal is keyed by until its entry is applied.
struct PendingProposal<R> {
    term: Term,
    reply: oneshot::Sender<Result<R, ProposeError>>,
}

/// A membership change waiting to complete.
struct PendingChange {
    /// The index of the entry that started it.
    index: Index,
    /// The leader's term when it started.
    term: Term,
    reply: oneshot::Sender<Result<Membership, MembershipError>>,
}

/// A transfer waiting for its outcome.
struct PendingTransfer {
    target: NodeId,
    /// Every caller waiting for this transfer (a repeated request joins it).
    replies: Vec<oneshot::Sender<Result<NodeId, TransferError>>>,
}

impl<L: LogStorage, S: StateMachine, T: Transport> Raft<L, S, T> {
    /// Loads the node's state from `log` and `state_machine`, spawns its
    /// tasks on the current tokio runtime and returns its handle.
    ///
    /// `bootstrap` is the initial configuration of a new cluster; it is used
    /// only when the log holds no configuration yet (a restarted node uses
    /// its own).
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
        for (name, v) in [
            ("request_queue_capacity", driver.request_queue_capacity),
            ("inbound_queue_capacity", driver.inbound_queue_capacity),
            ("outbound_queue_capacity", driver.outbound_queue_capacity),
            ("storage_queue_capacity", driver.storage_queue_capacity),
            ("apply_queue_capacity", driver.apply_queue_capacity),
            ("max_batch_inputs", driver.max_batch_inputs),
            (
                "max_unapplied_bytes",
                usize::try_from(driver.max_unapplied_bytes).unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                return Err(StartError::DriverConfig(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        if driver.tick_interval.is_zero() {
            return Err(StartError::DriverConfig(
                "tick_interval must be positive".into(),
            ));
        }
        let mut stored = log.stored_state().await?;
        let applied = state_machine.applied_index().await?;
        let latest_snapshot = state_machine.latest_snapshot().await?;
        let log_end = stored
            .last_log_id
            .map_or(stored.purged.index, |l| l.index)
            .max(stored.snapshot.as_ref().map_or(0, |s| s.last_log_id.index));
        // A snapshot install interrupted after the state machine took it and
        // before the log recorded it shows as a state machine ahead of the
        // log, or as a log whose entry at the applied index is another one.
        let mut log_disagrees = false;
        if let Some((meta, _)) = &latest_snapshot {
            let at = meta.last_log_id.index;
            let in_log = stored.last_log_id.is_some_and(|l| at <= l.index);
            if at == applied && at > stored.purged.index && in_log {
                let entry = log.entries(at, at + 1, 1).await?;
                log_disagrees = entry.first().map(|e| e.term) != Some(meta.last_log_id.term);
            }
        }
        if applied > log_end || log_disagrees {
            // Finish it.
            match &latest_snapshot {
                Some((meta, _)) if meta.last_log_id.index == applied => {
                    tracing::warn!(last = %meta.last_log_id, "completing an interrupted snapshot install");
                    log.install_snapshot(meta.clone()).await?;
                    stored = log.stored_state().await?;
                }
                _ => {
                    return Err(StartError::Inconsistent(format!(
                        "the state machine applied up to {applied} but the log ends at {log_end} \
                         and no snapshot of the state machine explains it"
                    )))
                }
            }
        }
        if applied < stored.purged.index {
            return Err(StartError::Inconsistent(format!(
                "the state machine applied only up to {applied} but the log was purged up to {}: \
                 the entries in between are gone (was the state machine's data lost?)",
                stored.purged.index
            )));
        }
        // The log must resume right after the purged prefix: a gap means
        // entries were lost.
        let expected_first = stored.purged.index + 1;
        if let Some(first) = stored.first_log_id {
            if first.index != expected_first {
                return Err(StartError::Storage(StorageError::Corruption {
                    index: expected_first,
                    reason: format!(
                        "the log starts at {} but was purged only up to {}",
                        first.index,
                        expected_first - 1
                    ),
                }));
            }
        }
        let first = expected_first.max(stored.first_log_id.map_or(1, |f| f.index));
        let end = stored.last_log_id.map_or(first, |l| l.index + 1);
        // Payloads of applied entries beyond the log cache's budget are
        // dropped as they load (oldest first), so a restart holds no more
        // than a running node would: the engine reads them back when a
        // follower needs them.
        let mut entries: Vec<crate::types::Entry> = Vec::new();
        let mut next = first;
        let mut held = 0u64;
        let mut dropped = 0usize;
        let mut payloads_dropped_to = 0;
        while next < end {
            let batch = log.entries(next, end, 16 * 1024 * 1024).await?;
            let Some(last) = batch.last() else { break };
            next = last.index + 1;
            held += batch
                .iter()
                .filter(|e| matches!(e.payload, crate::types::EntryPayload::Normal(_)))
                .map(crate::types::Entry::size_bytes)
                .sum::<u64>();
            entries.extend(batch);
            while held > config.max_log_cache_bytes
                && dropped < entries.len()
                && entries[dropped].index <= applied
            {
                let e = &mut entries[dropped];
                if let crate::types::EntryPayload::Normal(data) = &e.payload {
                    held -= crate::types::Entry::OVERHEAD_BYTES + data.len() as u64;
                    e.payload = crate::types::EntryPayload::Normal(bytes::Bytes::new());
                }
                payloads_dropped_to = e.index;
                dropped += 1;
            }
        }
        let id = config.id;
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
            id,
            term = engine.term(),
            last = %engine.last_log_id(),
            commit = engine.commit_index(),
            applied,
            "raft node starting"
        );

        let (req_tx, req_rx) = mpsc::channel(driver.request_queue_capacity);
        let (in_tx, in_rx) = mpsc::channel(driver.inbound_queue_capacity);
        let (out_tx, out_rx) = mpsc::channel(driver.outbound_queue_capacity);
        let (persist_tx, persist_rx) = mpsc::channel(driver.storage_queue_capacity);
        let (apply_tx, apply_rx) = mpsc::channel(driver.apply_queue_capacity);
        let (persisted_tx, persisted_rx) = watch::channel(None);
        let (applied_tx, applied_rx) = watch::channel(applied);
        let (fatal_tx, fatal_rx) = watch::channel(None::<String>);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::unbounded_channel();

        let log = Arc::new(log);
        let reader: Arc<dyn LogStorage> = log.clone();
        let transport = Arc::new(transport);
        let storage_clock = Arc::new(tasks::StorageClock::new());
        let storage_task = tokio::spawn(tasks::storage_task(
            log,
            persist_rx,
            out_tx.clone(),
            persisted_tx,
            fatal_tx.clone(),
            events_tx.clone(),
            storage_clock.clone(),
        ));
        let apply_task = tokio::spawn(tasks::apply_task(
            state_machine,
            apply_rx,
            applied_tx,
            fatal_tx,
            events_tx.clone(),
        ));
        let network_task = tokio::spawn(tasks::network_task(Arc::clone(&transport), out_rx));

        let handle = RaftHandle {
            id,
            requests: req_tx,
            inbound: in_tx,
            applied: applied_rx.clone(),
            shutdown: shutdown_tx,
            done: done_rx,
            failure: fatal_rx.clone(),
            storage_clock,
            request_timeout: driver.request_timeout,
        };
        let mut driver_state = Driver {
            engine,
            cfg: driver,
            proposals: BTreeMap::new(),
            reads: HashMap::new(),
            next_read_id: 1,
            transfer: None,
            out_tx,
            persist_tx,
            apply_tx,
            apply_backlog: VecDeque::new(),
            backlog_reported: 0,
            unapplied: VecDeque::new(),
            unapplied_bytes: 0,
            reader,
            applied: applied_rx,
            last_soft: None,
            transport,
            events_tx,
            snapshot: latest_snapshot,
            snapshot_waiters: Vec::new(),
            incoming: None,
            sending: BTreeSet::new(),
            changes: Vec::new(),
        };
        tokio::spawn(async move {
            driver_state
                .run(
                    req_rx,
                    in_rx,
                    events_rx,
                    persisted_rx,
                    fatal_rx,
                    shutdown_rx,
                )
                .await;
            // Closing the queues lets the storage task finish what it holds.
            drop(driver_state);
            let _ = storage_task.await;
            let _ = apply_task.await;
            network_task.abort();
            let _ = done_tx.send(true);
            tracing::info!(id, "raft node stopped");
        });
        Ok(handle)
    }
}

/// State of the engine task.
struct Driver<R, T> {
    engine: Engine,
    cfg: DriverConfig,
    /// Proposals appended but not yet handed to the apply task, by index.
    proposals: BTreeMap<Index, PendingProposal<R>>,
    /// Reads waiting for the engine to confirm them.
    reads: HashMap<ReadId, (ReadConsistency, oneshot::Sender<Result<Index, ReadError>>)>,
    next_read_id: ReadId,
    transfer: Option<PendingTransfer>,
    out_tx: mpsc::Sender<Vec<Message>>,
    persist_tx: mpsc::Sender<StorageJob>,
    apply_tx: mpsc::Sender<ApplyJob<R>>,
    /// Apply work that did not fit in the apply queue, in order.
    apply_backlog: VecDeque<ApplyJob<R>>,
    /// The backlog length last set on `raft_apply_backlog_jobs`.
    backlog_reported: usize,
    /// Batches handed out for applying and not known applied: their last
    /// index and their bytes, in order.
    unapplied: VecDeque<(Index, u64)>,
    /// The sum of the bytes in `unapplied`.
    unapplied_bytes: u64,
    /// The log storage, to read entries back for followers.
    reader: Arc<dyn LogStorage>,
    applied: watch::Receiver<Index>,
    last_soft: Option<SoftState>,
    transport: Arc<T>,
    events_tx: mpsc::UnboundedSender<Event>,
    /// The latest snapshot built or installed: what followers are sent.
    snapshot: Option<(SnapshotMeta, SnapshotData)>,
    /// Callers of `RaftHandle::snapshot` waiting for the next build.
    snapshot_waiters: Vec<oneshot::Sender<Result<SnapshotMeta, SnapshotError>>>,
    /// A received snapshot waiting for the engine's decision to install it.
    incoming: Option<(SnapshotMeta, SnapshotData)>,
    /// Followers a snapshot is being streamed to.
    sending: BTreeSet<NodeId>,
    /// Membership changes waiting to complete.
    changes: Vec<PendingChange>,
}

/// Engine ticks from the monotonic clock: how many tick intervals passed
/// since the ones already given to the engine.
#[derive(Debug)]
struct TickClock {
    /// When tick 0 was due.
    start: tokio::time::Instant,
    /// Length of one tick.
    interval: Duration,
    /// Ticks accounted for so far (given to the engine or skipped).
    done: u64,
    /// Most ticks replayed at once; the rest of a longer stall is skipped.
    replay_max: u64,
}

impl TickClock {
    fn new(interval: Duration, replay_max: u64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            interval,
            done: 0,
            replay_max,
        }
    }

    /// The ticks due at `now` and not given yet, as (ticks to give, ticks
    /// skipped beyond `replay_max`). Both are accounted for.
    fn due(&mut self, now: tokio::time::Instant) -> (u64, u64) {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let total = u64::try_from(elapsed / self.interval.as_nanos().max(1)).unwrap_or(u64::MAX);
        let missing = total.saturating_sub(self.done);
        self.done = self.done.max(total);
        let ticks = missing.min(self.replay_max);
        (ticks, missing - ticks)
    }
}

impl<R: Send + 'static, T: Transport> Driver<R, T> {
    async fn run(
        &mut self,
        mut requests: mpsc::Receiver<Request<R>>,
        mut inbound: mpsc::Receiver<Message>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut persisted: watch::Receiver<Option<WriteId>>,
        mut fatal: watch::Receiver<Option<String>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut clock = TickClock::new(
            self.cfg.tick_interval,
            3 * self.engine.config().election_timeout_ticks,
        );
        // The timer only wakes the task, in phase with the clock's ticks.
        let mut ticker =
            tokio::time::interval_at(clock.start + self.cfg.tick_interval, self.cfg.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut applied = self.applied.clone();
        let apply_tx = self.apply_tx.clone();
        self.publish_metrics();
        loop {
            let inputs = Inputs {
                shutdown: &mut shutdown,
                fatal: &mut fatal,
                persisted: &mut persisted,
                applied: &mut applied,
                ticker: &mut ticker,
                events: &mut events,
                inbound: &mut inbound,
                requests: &mut requests,
            };
            let apply_slot = (!self.apply_backlog.is_empty()).then(|| apply_tx.reserve());
            match inputs.next(apply_slot).await {
                Wake::Shutdown => break,
                Wake::Fatal => {
                    let reason = fatal.borrow().clone().unwrap_or_default();
                    tracing::error!(%reason, "raft node failed; stopping");
                    self.fail_all(ProposeError::Fatal(reason));
                    break;
                }
                Wake::Persisted => {
                    if let Some(write) = *persisted.borrow_and_update() {
                        self.engine.on_persisted(write);
                    }
                }
                Wake::Applied => {
                    let index = *applied.borrow_and_update();
                    self.engine.on_applied(index);
                    metrics::gauge!("raft_applied_index").set(index as f64);
                }
                Wake::Tick => self.catch_up(&mut clock),
                Wake::ApplySlot(permit) => {
                    let Ok(permit) = permit else { break };
                    if let Some(job) = self.apply_backlog.pop_front() {
                        permit.send(job);
                    }
                    if !self.flush_apply_backlog() {
                        break;
                    }
                }
                Wake::Event(event) => {
                    if !self.handle_event(event).await {
                        break;
                    }
                }
                Wake::Inbound(msg) => {
                    self.take_batch(msg, &mut inbound, &mut clock, Self::step_inbound);
                }
                Wake::Request(req) => {
                    self.take_batch(req, &mut requests, &mut clock, Self::handle_request);
                }
            }
            if !self.process_ready().await {
                break;
            }
        }
        self.fail_all(ProposeError::ShuttingDown { appended: true });
    }

    /// Handles `first`, then up to `max_batch_inputs - 1` more inputs
    /// already queued in `queue`. Time is caught up before every input, also
    /// those taken in a batch: the task may have been held up (SIGSTOP, a
    /// starved CPU) between two of them, and a lease read or a heartbeat
    /// (which starts a follower's promise) must be judged at the time it is
    /// handled.
    fn take_batch<I>(
        &mut self,
        first: I,
        queue: &mut mpsc::Receiver<I>,
        clock: &mut TickClock,
        handle: fn(&mut Self, I),
    ) {
        self.catch_up(clock);
        handle(self, first);
        for _ in 1..self.cfg.max_batch_inputs {
            let Ok(input) = queue.try_recv() else { break };
            self.catch_up(clock);
            handle(self, input);
        }
    }

    /// Ticks the engine for every tick interval that passed since the last
    /// one it was given (see the module docs on time).
    fn catch_up(&mut self, clock: &mut TickClock) {
        let (ticks, skipped) = clock.due(tokio::time::Instant::now());
        if ticks > 1 {
            metrics::counter!("raft_ticks_late_total").increment(ticks - 1);
        }
        if skipped > 0 || ticks > self.engine.config().election_timeout_ticks {
            tracing::warn!(
                ticks = ticks + skipped,
                "the engine task was held up for more than an election timeout"
            );
        }
        for _ in 0..ticks {
            self.engine.tick();
        }
    }

    /// Proposes `data` unless the state machine lags too far behind
    /// (`Err(None)`: [`DriverConfig::max_unapplied_entries`]).
    fn propose(
        &mut self,
        data: bytes::Bytes,
    ) -> Result<crate::types::LogId, Option<crate::engine::ProposeError>> {
        // A follower answers NotLeader, so the caller goes to the leader.
        if self.engine.role() == Role::Leader && self.apply_lags() {
            return Err(None);
        }
        self.engine.propose(data).map_err(Some)
    }

    /// Whether more than [`DriverConfig::max_unapplied_entries`] committed
    /// entries, or more than [`DriverConfig::max_unapplied_bytes`] bytes of
    /// entries handed out for applying, wait for the state machine.
    fn apply_lags(&mut self) -> bool {
        let applied = *self.applied.borrow();
        while let Some(&(last, bytes)) = self.unapplied.front() {
            if last > applied {
                break;
            }
            self.unapplied.pop_front();
            self.unapplied_bytes -= bytes;
        }
        self.engine.commit_index().saturating_sub(applied) > self.cfg.max_unapplied_entries
            || self.unapplied_bytes > self.cfg.max_unapplied_bytes
    }

    /// Steps an inbound message, except new entries while the state
    /// machine lags too far behind: a follower then takes heartbeats (so it
    /// neither campaigns nor looks gone) but not entries, which the leader
    /// sends again later, as after a loss. That bounds what it holds for
    /// the state machine, as the leader's refusal of proposals does.
    fn step_inbound(&mut self, msg: Message) {
        if self.engine.refuses_term(&msg) {
            // The engine refuses it (and logs); count it for operators.
            metrics::counter!("raft_messages_invalid_term_total").increment(1);
        }
        if let MessageBody::AppendEntries { entries, .. } = &msg.body {
            if !entries.is_empty() && self.engine.role() != Role::Leader && self.apply_lags() {
                metrics::counter!("raft_appends_deferred_total").increment(1);
                return;
            }
        }
        self.engine.step(msg);
    }

    fn handle_request(&mut self, req: Request<R>) {
        match req {
            Request::Propose {
                data,
                reply,
                ticket,
            } => match ticket.take().then(|| self.propose(data)) {
                // The caller timed out before this was taken: drop it.
                None => {}
                Some(Err(None)) => {
                    metrics::counter!("raft_proposals_rejected_total").increment(1);
                    let _ = reply.send(Err(ProposeError::Overloaded));
                }
                Some(Ok(id)) => {
                    metrics::counter!("raft_proposals_total").increment(1);
                    let pending = PendingProposal {
                        term: id.term,
                        reply,
                    };
                    if let Some(old) = self.proposals.insert(id.index, pending) {
                        // The old entry at this index was overwritten, so it
                        // was never committed.
                        let _ = old
                            .reply
                            .send(Err(ProposeError::Superseded { index: id.index }));
                    }
                }
                Some(Err(Some(e))) => {
                    metrics::counter!("raft_proposals_rejected_total").increment(1);
                    let _ = reply.send(Err(ProposeError::from_engine(e)));
                }
            },
            Request::Read { consistency, reply } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                let result = match consistency {
                    ReadConsistency::Lease => match self.engine.read_lease(id) {
                        Err(crate::engine::ReadError::LeaseNotHeld) => self.engine.read_index(id),
                        other => other,
                    },
                    _ => self.engine.read_index(id),
                };
                match result {
                    Ok(()) => {
                        self.reads.insert(id, (consistency, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ReadError::from_engine(e)));
                    }
                }
            }
            Request::Transfer { to, reply } => self.start_transfer(to, reply),
            Request::Status { reply } => {
                let _ = reply.send(DriverStatus {
                    engine: self.engine.status(),
                    applied: *self.applied.borrow(),
                    pending_proposals: self.proposals.len(),
                    pending_reads: self.reads.len(),
                    snapshot: self.snapshot.as_ref().map(|(m, _)| m.clone()),
                    snapshots_sending: self.sending.iter().copied().collect(),
                });
            }
            Request::ChangeMembership { change, reply } => self.start_change(change, reply),
            Request::Snapshot { reply } => match self.engine.request_snapshot() {
                Ok(()) => self.snapshot_waiters.push(reply),
                Err(SnapshotRequestError::InProgress) => {
                    if self.engine.is_installing_snapshot() {
                        let _ = reply.send(Err(SnapshotError::Installing));
                    } else {
                        self.snapshot_waiters.push(reply);
                    }
                }
                Err(SnapshotRequestError::UpToDate(_)) => match &self.snapshot {
                    Some((meta, _)) => {
                        let _ = reply.send(Ok(meta.clone()));
                    }
                    None => {
                        let _ = reply
                            .send(Err(SnapshotError::Failed("nothing was applied yet".into())));
                    }
                },
            },
            Request::IncomingSnapshot { header, data } => {
                if let MessageBody::InstallSnapshot { meta } = &header.body {
                    if !self.engine.is_installing_snapshot() {
                        self.incoming = Some((meta.clone(), data));
                        self.engine.step(header);
                    }
                }
            }
        }
    }

    fn start_change(
        &mut self,
        change: MembershipChange,
        reply: oneshot::Sender<Result<Membership, MembershipError>>,
    ) {
        match self.engine.change_membership(change) {
            Ok(id) => {
                tracing::info!(index = id.index, membership = ?self.engine.membership(), "membership change started");
                metrics::counter!("raft_membership_changes_total").increment(1);
                self.changes.push(PendingChange {
                    index: id.index,
                    term: id.term,
                    reply,
                });
            }
            Err(e) => {
                let _ = reply.send(Err(MembershipError::Rejected(e)));
            }
        }
    }

    /// Answers membership changes that completed or can no longer be tracked.
    fn check_changes(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        let status = self.engine.status();
        let done = !status.membership.is_joint() && status.membership_committed;
        let lost = status.role != Role::Leader || status.term != self.changes[0].term;
        let mut keep = Vec::new();
        for c in std::mem::take(&mut self.changes) {
            if done && status.membership_index >= c.index {
                let _ = c.reply.send(Ok(status.membership.clone()));
            } else if lost || c.term != status.term {
                let _ = c.reply.send(Err(MembershipError::LeadershipLost));
            } else {
                keep.push(c);
            }
        }
        self.changes = keep;
    }

    /// Acts on a background task's report. Returns false when the node must stop.
    async fn handle_event(&mut self, event: Event) -> bool {
        match event {
            Event::Built(Ok((meta, data))) => {
                self.engine.on_snapshot_built(meta.clone());
                self.snapshot = Some((meta.clone(), data));
                for w in self.snapshot_waiters.drain(..) {
                    let _ = w.send(Ok(meta.clone()));
                }
            }
            Event::Built(Err(e)) => {
                self.engine.on_snapshot_build_failed();
                for w in self.snapshot_waiters.drain(..) {
                    let _ = w.send(Err(SnapshotError::Failed(e.clone())));
                }
            }
            Event::StateMachineInstalled(meta, data) => {
                if self
                    .persist_tx
                    .send(StorageJob::Install(meta, data))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Event::LogInstalled(meta, data) => {
                tracing::info!(last = %meta.last_log_id, "snapshot installed");
                self.engine.on_snapshot_installed(meta.clone());
                // Proposals below the snapshot can no longer be answered
                // here: they may or may not be in the snapshot.
                let stale: Vec<Index> = self
                    .proposals
                    .range(..=meta.last_log_id.index)
                    .map(|(k, _)| *k)
                    .collect();
                for index in stale {
                    if let Some(p) = self.proposals.remove(&index) {
                        let _ = p.reply.send(Err(ProposeError::OutcomeUnknown { index }));
                    }
                }
                self.snapshot = Some((meta, data));
                self.publish_metrics();
            }
            Event::SnapshotSent { to, delivered } => {
                self.sending.remove(&to);
                self.engine.report_snapshot(to, delivered);
            }
            Event::Fetched(fetch, entries) => {
                metrics::counter!("raft_entries_read_back_total").increment(entries.len() as u64);
                self.engine.on_entries_fetched(fetch, entries);
            }
        }
        true
    }

    /// Reads entries back from storage for a follower, on a task of its
    /// own (the engine dropped their payloads from memory); the result
    /// comes back as [`Event::Fetched`].
    fn fetch_entries(&self, fetch: crate::engine::EntryFetch) {
        let reader = Arc::clone(&self.reader);
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let entries = match reader
                .entries(fetch.start, fetch.end, fetch.max_bytes)
                .await
            {
                Ok(mut entries) => {
                    entries.truncate(fetch.max_entries.max(1));
                    entries
                }
                Err(e) => {
                    tracing::warn!(to = fetch.to, start = fetch.start, error = %e, "reading entries back from storage failed");
                    Vec::new()
                }
            };
            let _ = events.send(Event::Fetched(fetch, entries));
        });
    }

    /// Streams the latest snapshot to a follower on its own task.
    fn send_snapshot(&mut self, mut header: Message) {
        let to = header.to;
        let Some((meta, data)) = self.snapshot.clone() else {
            tracing::warn!(
                to,
                "a follower needs a snapshot but the state machine has none"
            );
            self.engine.report_snapshot(to, false);
            return;
        };
        if !self.sending.insert(to) {
            return; // one transfer per follower at a time
        }
        // The data's own metadata (the engine's may be older after a restart).
        header.body = MessageBody::InstallSnapshot { meta: meta.clone() };
        let transport = Arc::clone(&self.transport);
        let events = self.events_tx.clone();
        metrics::counter!("raft_snapshots_sent_total").increment(1);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let delivered = match transport.send_snapshot(to, header, data.clone()).await {
                Ok(()) => {
                    tracing::info!(
                        to,
                        last = %meta.last_log_id,
                        bytes = data.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "snapshot sent"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(to, error = %e, "sending a snapshot failed");
                    metrics::counter!("raft_snapshot_failures_total", "op" => "send").increment(1);
                    false
                }
            };
            let _ = events.send(Event::SnapshotSent { to, delivered });
        });
    }

    fn start_transfer(
        &mut self,
        to: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId, TransferError>>,
    ) {
        let status = self.engine.status();
        if status.role != Role::Leader {
            let _ = reply.send(Err(TransferError::NotLeader {
                leader: status.leader,
            }));
            return;
        }
        let target = match to {
            Some(t) => t,
            None => {
                // The most up-to-date other voter needs the least catching up.
                let best = status
                    .peers
                    .iter()
                    .filter(|p| status.membership.is_voter(p.id))
                    .max_by_key(|p| (p.matched, std::cmp::Reverse(p.id)));
                match best {
                    Some(p) => p.id,
                    None => {
                        let _ = reply.send(Err(TransferError::NoTarget(
                            "no other voter in the configuration".into(),
                        )));
                        return;
                    }
                }
            }
        };
        if target == status.id {
            let _ = reply.send(Ok(target));
            return;
        }
        match self.engine.transfer_leader(target) {
            Ok(()) => match &mut self.transfer {
                Some(t) if t.target == target => t.replies.push(reply),
                _ => {
                    let pending = PendingTransfer {
                        target,
                        replies: vec![reply],
                    };
                    if let Some(old) = self.transfer.replace(pending) {
                        // The engine replaced the earlier target with this one.
                        for r in old.replies {
                            let _ = r.send(Err(TransferError::Aborted));
                        }
                    }
                }
            },
            Err(crate::engine::TransferError::NotLeader { leader }) => {
                let _ = reply.send(Err(TransferError::NotLeader { leader }));
            }
            Err(crate::engine::TransferError::NotAVoter(id)) => {
                let _ = reply.send(Err(TransferError::NoTarget(format!(
                    "node {id} is not a voter"
                ))));
            }
        }
    }

    /// Hands `job` to the apply task, or to the backlog behind the jobs
    /// already waiting. Returns false when the apply task is gone.
    fn queue_apply(&mut self, job: ApplyJob<R>) -> bool {
        self.apply_backlog.push_back(job);
        self.flush_apply_backlog()
    }

    /// Moves backlog jobs to the apply queue while it has room. Returns
    /// false when the apply task is gone.
    fn flush_apply_backlog(&mut self) -> bool {
        while let Some(job) = self.apply_backlog.pop_front() {
            match self.apply_tx.try_send(job) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(job)) => {
                    self.apply_backlog.push_front(job);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        // Set only on change: this runs for every apply batch.
        if self.apply_backlog.len() != self.backlog_reported {
            self.backlog_reported = self.apply_backlog.len();
            metrics::gauge!("raft_apply_backlog_jobs").set(self.backlog_reported as f64);
        }
        true
    }

    /// Drains the engine's output. Returns false when the node must stop.
    async fn process_ready(&mut self) -> bool {
        while self.engine.has_ready() {
            let ready = self.engine.ready();
            if let Some(soft) = ready.soft_state {
                self.on_soft_state(soft);
            }
            if !ready.messages.is_empty() {
                let (snapshots, messages): (Vec<Message>, Vec<Message>) = ready
                    .messages
                    .into_iter()
                    .partition(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }));
                if !messages.is_empty() {
                    send_messages(&self.out_tx, messages);
                }
                for header in snapshots {
                    self.send_snapshot(header);
                }
            }
            let write = LogWrite {
                hard_state: ready.hard_state,
                truncate_from: ready.truncate_from,
                entries: ready.entries,
            };
            if !write.entries.is_empty() || write.truncate_from.is_some() {
                // Appends and truncations move the end of the log; the
                // soft-state path alone would leave this gauge at the value
                // of the last role change.
                metrics::gauge!("raft_last_log_index").set(self.engine.last_log_id().index as f64);
            }
            if !write.is_empty() || !ready.persisted_messages.is_empty() {
                let job = PersistJob {
                    write,
                    id: ready.write_id,
                    after: ready.persisted_messages,
                };
                if self.persist_tx.send(StorageJob::Write(job)).await.is_err() {
                    return false;
                }
            }
            if let Some(compaction) = ready.compact_log {
                if self
                    .persist_tx
                    .send(StorageJob::Compact(compaction))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            if !ready.committed_entries.is_empty() {
                let mut waiters = Vec::new();
                let last = ready.committed_entries.last().map_or(0, |e| e.index);
                let first = ready.committed_entries.first().map_or(0, |e| e.index);
                let keys: Vec<Index> = self
                    .proposals
                    .range(first..=last)
                    .map(|(k, _)| *k)
                    .collect();
                for index in keys {
                    if let Some(p) = self.proposals.remove(&index) {
                        waiters.push(Waiter {
                            index,
                            term: p.term,
                            reply: p.reply,
                        });
                    }
                }
                // Anything below `first` can no longer be applied by us.
                let stale: Vec<Index> = self.proposals.range(..first).map(|(k, _)| *k).collect();
                for index in stale {
                    if let Some(p) = self.proposals.remove(&index) {
                        let _ = p.reply.send(Err(ProposeError::Superseded { index }));
                    }
                }
                metrics::gauge!("raft_commit_index").set(self.engine.commit_index() as f64);
                let bytes: u64 = ready
                    .committed_entries
                    .iter()
                    .map(crate::types::Entry::size_bytes)
                    .sum();
                self.unapplied.push_back((last, bytes));
                self.unapplied_bytes += bytes;
                let job = ApplyJob::Entries {
                    entries: ready.committed_entries,
                    waiters,
                };
                if !self.queue_apply(job) {
                    return false;
                }
            }
            if let Some(meta) = ready.build_snapshot {
                if !self.queue_apply(ApplyJob::Build(meta)) {
                    return false;
                }
            }
            if let Some(meta) = ready.install_snapshot {
                match self.incoming.take() {
                    Some((m, data)) if m == meta => {
                        if !self.queue_apply(ApplyJob::Install(meta, data)) {
                            return false;
                        }
                    }
                    _ => {
                        // Cannot happen: the engine asks to install only the
                        // snapshot it was just given.
                        tracing::error!(last = %meta.last_log_id, "asked to install a snapshot whose data is gone");
                        return false;
                    }
                }
            }
            for fetch in ready.fetch_entries {
                self.fetch_entries(fetch);
            }
            for rs in ready.read_states {
                if let Some((_, reply)) = self.reads.remove(&rs.id) {
                    let _ = reply.send(Ok(rs.index));
                }
            }
            for (id, err) in ready.failed_reads {
                if let Some((_, reply)) = self.reads.remove(&id) {
                    let _ = reply.send(Err(ReadError::from_engine(err)));
                }
            }
        }
        self.check_changes();
        true
    }

    fn on_soft_state(&mut self, soft: SoftState) {
        let prev = self.last_soft.replace(soft);
        if prev.is_none_or(|p| p.leader != soft.leader) {
            metrics::counter!("raft_leader_changes_total").increment(1);
            tracing::info!(leader = ?soft.leader, term = soft.term, role = soft.role.as_str(), "leader changed");
        }
        if matches!(soft.role, Role::PreCandidate | Role::Candidate)
            && prev.is_none_or(|p| p.role != soft.role || p.term != soft.term)
        {
            metrics::counter!("raft_elections_started_total", "kind" => soft.role.as_str())
                .increment(1);
        }
        self.publish_metrics();
        if let Some(t) = &self.transfer {
            let outcome = match (soft.role, soft.leader) {
                // Done only when the target is known to lead.
                (_, Some(l)) if l == t.target => Some(Ok(l)),
                // Still leading with no transfer in progress: it timed out.
                (Role::Leader, _) if soft.transferee.is_none() => Some(Err(TransferError::Aborted)),
                // Someone else leads: the transfer did not happen as asked.
                (_, Some(other)) if other != self.engine.id() => Some(Err(TransferError::Aborted)),
                // Stepped down, new leader not known yet: wait.
                _ => None,
            };
            if let Some(outcome) = outcome {
                if let Some(t) = self.transfer.take() {
                    for r in t.replies {
                        let _ = r.send(outcome.clone());
                    }
                }
            }
        }
    }

    fn publish_metrics(&self) {
        let status = self.engine.status();
        metrics::gauge!("raft_term").set(status.term as f64);
        metrics::gauge!("raft_is_leader").set(if status.role == Role::Leader {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("raft_role").set(match status.role {
            Role::Follower => 0.0,
            Role::PreCandidate => 1.0,
            Role::Candidate => 2.0,
            Role::Leader => 3.0,
        });
        metrics::gauge!("raft_commit_index").set(status.commit as f64);
        metrics::gauge!("raft_last_log_index").set(status.last_index as f64);
    }

    fn fail_all(&mut self, err: ProposeError) {
        for (_, p) in std::mem::take(&mut self.proposals) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, (_, reply)) in self.reads.drain() {
            let _ = reply.send(Err(ReadError::ShuttingDown));
        }
        if let Some(t) = self.transfer.take() {
            for r in t.replies {
                let _ = r.send(Err(TransferError::ShuttingDown));
            }
        }
        for c in self.changes.drain(..) {
            let _ = c.reply.send(Err(MembershipError::ShuttingDown));
        }
        for w in self.snapshot_waiters.drain(..) {
            let _ = w.send(Err(SnapshotError::ShuttingDown));
        }
    }
}

/// Queues messages for the network task, dropping them when it is behind.
fn send_messages(out: &mpsc::Sender<Vec<Message>>, msgs: Vec<Message>) {
    let n = msgs.len() as u64;
    if out.try_send(msgs).is_err() {
        metrics::counter!("raft_outbound_dropped_total").increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::TickClock;
    use std::time::Duration;

    #[test]
    fn the_tick_clock_counts_every_interval_and_caps_a_long_stall() {
        let mut c = TickClock::new(Duration::from_millis(50), 60);
        let t0 = c.start;
        assert_eq!(c.due(t0), (0, 0));
        assert_eq!(c.due(t0 + Duration::from_millis(49)), (0, 0));
        assert_eq!(c.due(t0 + Duration::from_millis(50)), (1, 0));
        assert_eq!(
            c.due(t0 + Duration::from_millis(60)),
            (0, 0),
            "counted once"
        );
        // A stall of 1 s: 19 more ticks, all replayed.
        assert_eq!(c.due(t0 + Duration::from_millis(1000)), (19, 0));
        // A stall of 10 s: 200 ticks due, 60 replayed, 140 skipped.
        assert_eq!(c.due(t0 + Duration::from_millis(11_000)), (60, 140));
        assert_eq!(c.due(t0 + Duration::from_millis(11_049)), (0, 0));
        // Time that runs backwards (it cannot, but) gives nothing.
        assert_eq!(c.due(t0), (0, 0));
    }
}
