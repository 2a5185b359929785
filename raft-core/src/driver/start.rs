//! [`Raft::start`] in named phases: check the configuration, recover
//! (`recover.rs`), load the log, build the engine, spawn the tasks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::recover::recover;
use super::{tasks, Driver, DriverConfig, Raft, RaftHandle, StartError};
use crate::config::Config;
use crate::engine::{Engine, InitialState};
use crate::membership::Membership;
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

impl<L: LogStorage, S: StateMachine, T: Transport> Parts<L, S, T> {
    /// Spawns the storage, apply, network and engine tasks, joined by
    /// bounded channels, and returns the handle to them.
    fn spawn(self) -> RaftHandle<S::Response> {
        let (engine, driver) = (self.engine, self.driver);
        let id = engine.id();
        let (req_tx, req_rx) = mpsc::channel(driver.request_queue_capacity);
        let (in_tx, in_rx) = mpsc::channel(driver.inbound_queue_capacity);
        let (out_tx, out_rx) = mpsc::channel(driver.outbound_queue_capacity);
        let (persist_tx, persist_rx) = mpsc::channel(driver.storage_queue_capacity);
        let (apply_tx, apply_rx) = mpsc::channel(driver.apply_queue_capacity);
        let (persisted_tx, persisted_rx) = watch::channel(None);
        let (applied_tx, applied_rx) = watch::channel(self.applied);
        let (fatal_tx, fatal_rx) = watch::channel(None::<String>);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::unbounded_channel();

        let log = Arc::new(self.log);
        let reader: Arc<dyn LogStorage> = log.clone();
        let transport = Arc::new(self.transport);
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
            self.state_machine,
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
            deadlines: Arc::new(super::deadline::Deadlines::default()),
        };
        tokio::spawn(Arc::clone(&handle.deadlines).run(handle.done.clone()));
        let mut driver_state = Driver {
            engine,
            cfg: driver,
            proposals: Default::default(),
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
            known_leader: None,
            transport,
            events_tx,
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
        handle
    }
}
