//! The storage, apply and network tasks of the driver.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::forward::Retained;
use super::send_messages;
use super::ProposeError;
use crate::engine::{LogCompaction, WriteId};
use crate::message::Message;
use crate::snapshot::SnapshotData;
use crate::state_machine::StateMachine;
use crate::storage::{LogStorage, LogWrite};
use crate::transport::Transport;
use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// Work for the storage task, done strictly in order.
#[derive(Debug)]
pub(crate) enum StorageJob {
    /// A `Ready`'s write (merged with neighbours into one batch).
    Write(PersistJob),
    /// Record a snapshot and purge the log prefix.
    Compact(LogCompaction),
    /// Replace the log by an installed snapshot; reported as an event.
    Install(SnapshotMeta, SnapshotData),
}

/// What the background tasks report to the engine task. At most one build,
/// one install and one transfer per peer are outstanding at a time, so the
/// unbounded channel that carries these stays small.
pub(crate) enum Event {
    /// The state machine built a snapshot (or failed to).
    Built(Result<(SnapshotMeta, SnapshotData), String>),
    /// The state machine installed a snapshot; storage is next.
    StateMachineInstalled(SnapshotMeta, SnapshotData),
    /// Storage recorded an installed snapshot: the install is complete.
    LogInstalled(SnapshotMeta, SnapshotData),
    /// A snapshot transfer to a follower ended.
    SnapshotSent { to: NodeId, delivered: bool },
    /// Entries read back from storage for a follower (empty: the read
    /// failed). At most one read per follower is outstanding.
    Fetched(crate::engine::EntryFetch, Vec<Entry>),
}

/// One engine `Ready`'s durable write and the messages that wait for it.
#[derive(Debug)]
pub(crate) struct PersistJob {
    pub(crate) write: LogWrite,
    /// The engine's name for the write, reported once it is durable.
    pub(crate) id: Option<WriteId>,
    /// Messages to send once the write is durable.
    pub(crate) after: Vec<Message>,
}

/// A proposer waiting for the entry at `index` to be applied. The waiters
/// of an [`ApplyJob::Entries`] are in increasing index order.
pub(crate) struct Waiter<R> {
    pub(crate) index: Index,
    pub(crate) term: Term,
    pub(crate) reply: super::ticket::Reply<R>,
}

/// Work for the apply task, done strictly in order.
pub(crate) enum ApplyJob<R> {
    /// Committed entries to apply, with the proposers waiting on them.
    Entries {
        entries: Vec<Entry>,
        waiters: Vec<Waiter<R>>,
    },
    /// Build a snapshot at this metadata (everything before is applied).
    Build(SnapshotMeta),
    /// Replace the state by a received snapshot.
    Install(SnapshotMeta, SnapshotData),
    /// Keep at most this many outputs of applied entries from now on, for
    /// forwarded proposals' answers (0: keep none). See `forward.rs`.
    Retain(usize),
    /// Answer a forwarded proposal from the kept output of its entry.
    Claim(Waiter<R>),
}

/// When the storage task's current operation started, so that a write
/// that hangs (a disk that blocks instead of failing) can be seen from
/// outside: [`RaftHandle::storage_busy_for`](super::RaftHandle::storage_busy_for).
#[derive(Debug)]
pub(crate) struct StorageClock {
    origin: tokio::time::Instant,
    /// Milliseconds from `origin` to the start of the operation in
    /// progress, plus one; zero while idle.
    since: std::sync::atomic::AtomicU64,
}

impl StorageClock {
    pub(crate) fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            since: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn begin(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.since
            .store(ms + 1, std::sync::atomic::Ordering::Relaxed);
    }

    fn end(&self) {
        self.since.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the operation in progress has taken so far.
    pub(crate) fn busy_for(&self) -> Option<std::time::Duration> {
        let since = self.since.load(std::sync::atomic::Ordering::Relaxed);
        let started = since.checked_sub(1)?;
        let now = self.origin.elapsed().as_millis() as u64;
        Some(std::time::Duration::from_millis(
            now.saturating_sub(started),
        ))
    }
}

/// Records why the node fails, keeping the first reason: a failed disk
/// usually fails the storage task and then the apply task, and the first
/// error is the cause.
fn raise(fatal: &watch::Sender<Option<String>>, reason: String) {
    fatal.send_if_modified(|current| {
        if current.is_some() {
            return false;
        }
        *current = Some(reason);
        true
    });
}

/// Merges `next` into `acc` as if written after it.
fn merge(acc: &mut LogWrite, next: LogWrite) {
    if next.hard_state.is_some() {
        acc.hard_state = next.hard_state;
    }
    if let Some(from) = next.truncate_from {
        acc.entries.retain(|e| e.index < from);
        // Storage must also drop what earlier writes left at or above `from`.
        acc.truncate_from = Some(acc.truncate_from.map_or(from, |t| t.min(from)));
    }
    if let Some(first) = next.entries.first() {
        acc.entries.retain(|e| e.index < first.index);
    }
    acc.entries.extend(next.entries);
}

/// Performs writes in order, group-committing whatever queued up while the
/// previous write was syncing.
pub(crate) async fn storage_task<L: LogStorage>(
    log: Arc<L>,
    mut jobs: mpsc::Receiver<StorageJob>,
    out: mpsc::Sender<Vec<Message>>,
    persisted: watch::Sender<Option<WriteId>>,
    fatal: watch::Sender<Option<String>>,
    events: mpsc::UnboundedSender<Event>,
    clock: Arc<StorageClock>,
) {
    let mut next: Option<StorageJob> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match jobs.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        let first = match job {
            StorageJob::Write(w) => w,
            StorageJob::Compact(c) => {
                let purge_to = c.purge_to;
                let index = c.snapshot.last_log_id.index;
                clock.begin();
                let result = log.save_snapshot(c.snapshot, purge_to).await;
                clock.end();
                if let Err(e) = result {
                    tracing::error!(error = %e, "recording a snapshot failed");
                    raise(&fatal, format!("recording a snapshot failed: {e}"));
                    return;
                }
                tracing::debug!(index, purge_to, "log compacted");
                metrics::gauge!("raft_log_first_index").set((purge_to + 1) as f64);
                continue;
            }
            StorageJob::Install(meta, data) => {
                clock.begin();
                let result = log.install_snapshot(meta.clone()).await;
                clock.end();
                if let Err(e) = result {
                    tracing::error!(error = %e, "replacing the log by a snapshot failed");
                    raise(
                        &fatal,
                        format!("installing a snapshot in the log failed: {e}"),
                    );
                    return;
                }
                let _ = events.send(Event::LogInstalled(meta, data));
                continue;
            }
        };
        let mut write = first.write;
        let mut id = first.id;
        let mut after = first.after;
        while let Ok(job) = jobs.try_recv() {
            let job = match job {
                StorageJob::Write(j) => j,
                other => {
                    // Snapshot work is never merged: it runs after this batch.
                    next = Some(other);
                    break;
                }
            };
            merge(&mut write, job.write);
            if job.id.is_some() {
                id = job.id;
            }
            after.extend(job.after);
        }
        if !write.is_empty() {
            let entries = write.entries.len();
            let started = Instant::now();
            clock.begin();
            let result = log.write(write).await;
            clock.end();
            if let Err(e) = result {
                tracing::error!(error = %e, "log write failed");
                raise(&fatal, format!("log write failed: {e}"));
                return;
            }
            metrics::histogram!("raft_append_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("raft_append_batch_entries").record(entries as f64);
        }
        if !after.is_empty() {
            send_messages(&out, after);
        }
        if id.is_some() {
            persisted.send_replace(id);
        }
    }
}

/// Applies committed entries in order and answers their proposers.
pub(crate) async fn apply_task<S: StateMachine>(
    mut sm: S,
    mut jobs: mpsc::Receiver<ApplyJob<S::Response>>,
    applied: watch::Sender<Index>,
    fatal: watch::Sender<Option<String>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut tasks = ApplyTasks {
        building: None,
        retained: Retained::default(),
    };
    apply_jobs(&mut sm, &mut jobs, &applied, &fatal, &events, &mut tasks).await;
    if let Some(build) = tasks.building {
        // Stopping or failed: the build's result has no taker. Dropping it
        // tells the state machine to stop; waiting for the task means the
        // node reports itself stopped only once the build let go.
        build.abort();
        let _ = build.await;
    }
}

/// Logs and counts a finished snapshot build.
fn report_build(result: &Result<(SnapshotMeta, SnapshotData), String>, started: Instant) {
    match result {
        Ok((meta, data)) => {
            tracing::info!(
                last = %meta.last_log_id,
                bytes = data.len(),
                seconds = started.elapsed().as_secs_f64(),
                "snapshot built"
            );
            metrics::counter!("raft_snapshots_built_total").increment(1);
            metrics::gauge!("raft_snapshot_bytes").set(data.len() as f64);
            metrics::histogram!("raft_snapshot_build_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Err(e) => {
            tracing::warn!(error = %e, "building a snapshot failed");
            metrics::counter!("raft_snapshot_failures_total", "op" => "build").increment(1);
        }
    }
}

/// What the apply task holds beside the state machine.
struct ApplyTasks<R> {
    /// The snapshot build running beside the applies, if any.
    building: Option<tokio::task::JoinHandle<()>>,
    /// Outputs kept for forwarded proposals.
    retained: Retained<R>,
}

/// The apply task's loop; returns when the queue closes or applying fails.
async fn apply_jobs<S: StateMachine>(
    sm: &mut S,
    jobs: &mut mpsc::Receiver<ApplyJob<S::Response>>,
    applied: &watch::Sender<Index>,
    fatal: &watch::Sender<Option<String>>,
    events: &mpsc::UnboundedSender<Event>,
    tasks: &mut ApplyTasks<S::Response>,
) {
    let building = &mut tasks.building;
    let retained = &mut tasks.retained;
    while let Some(job) = jobs.recv().await {
        let (entries, waiters) = match job {
            ApplyJob::Entries { entries, waiters } => (entries, waiters),
            ApplyJob::Retain(cap) => {
                retained.set_cap(cap);
                continue;
            }
            ApplyJob::Claim(waiter) => {
                retained.claim(waiter);
                continue;
            }
            ApplyJob::Build(meta) => {
                // The engine asks for one build at a time; never run two.
                if let Some(previous) = building.take() {
                    let _ = previous.await;
                }
                let started = Instant::now();
                match sm.begin_snapshot(&meta).await {
                    Ok(build) => {
                        // The walk and the write run beside the applies.
                        let events = events.clone();
                        *building = Some(tokio::spawn(async move {
                            let result = build
                                .await
                                .map(|data| (meta, data))
                                .map_err(|e| e.to_string());
                            report_build(&result, started);
                            let _ = events.send(Event::Built(result));
                        }));
                    }
                    Err(e) => {
                        let result = Err(e.to_string());
                        report_build(&result, started);
                        let _ = events.send(Event::Built(result));
                    }
                }
                continue;
            }
            ApplyJob::Install(meta, data) => {
                // A build still writing its file must not race the install
                // that replaces the state and the latest snapshot.
                if let Some(previous) = building.take() {
                    let _ = previous.await;
                }
                let started = Instant::now();
                if let Err(e) = sm.install_snapshot(&meta, data.clone()).await {
                    tracing::error!(error = %e, last = %meta.last_log_id, "installing a snapshot failed");
                    raise(fatal, format!("installing a snapshot failed: {e}"));
                    return;
                }
                tracing::info!(
                    last = %meta.last_log_id,
                    bytes = data.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "snapshot installed in the state machine"
                );
                metrics::counter!("raft_snapshots_installed_total").increment(1);
                applied.send_replace(meta.last_log_id.index);
                let _ = events.send(Event::StateMachineInstalled(meta, data));
                continue;
            }
        };
        let Some(last) = entries.last().map(|e| e.index) else {
            continue;
        };
        let job_entries = entries;
        let responses = match sm.apply(&job_entries).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "state machine failed");
                raise(fatal, format!("state machine failed: {e}"));
                return;
            }
        };
        if responses.len() != job_entries.len() {
            let msg = format!(
                "state machine returned {} responses for {} entries",
                responses.len(),
                job_entries.len()
            );
            raise(fatal, msg);
            return;
        }
        metrics::histogram!("raft_apply_batch_entries").record(job_entries.len() as f64);
        answer(&job_entries, responses, waiters, retained);
        applied.send_replace(last);
    }
}

/// Answers the proposers of `entries` with their entries' `responses`, or
/// `Superseded` when their entry was replaced by another term's (or is
/// missing from the batch).
/// An output no proposer here took is kept in `retained` while it is on.
fn answer<R>(
    entries: &[Entry],
    responses: Vec<R>,
    waiters: Vec<Waiter<R>>,
    retained: &mut Retained<R>,
) {
    if waiters.is_empty() && !retained.is_on() {
        // Nobody waits on these entries here and no forwarded proposal
        // wants their outputs (a follower's batch): nothing to walk.
        return;
    }
    // Waiters come in increasing index order, as the entries do: walk
    // both together.
    let mut waiters = waiters.into_iter().peekable();
    for (e, response) in entries.iter().zip(responses) {
        while let Some(w) = waiters.next_if(|w| w.index < e.index) {
            let _ = w
                .reply
                .send(Err(ProposeError::Superseded { index: w.index }));
        }
        let mut left = Some(response);
        if let Some(w) = waiters.next_if(|w| w.index == e.index) {
            let result = if w.term == e.term {
                left.take()
                    .ok_or(ProposeError::Superseded { index: w.index })
            } else {
                Err(ProposeError::Superseded { index: w.index })
            };
            let _ = w.reply.send(result);
        }
        if retained.is_on() {
            retained.keep(e.index, e.term, left);
        }
    }
    for w in waiters {
        let _ = w
            .reply
            .send(Err(ProposeError::Superseded { index: w.index }));
    }
}

/// Hands outgoing messages to the transport, grouped by recipient.
pub(crate) async fn network_task<T: Transport>(
    transport: Arc<T>,
    mut batches: mpsc::Receiver<Vec<Message>>,
) {
    while let Some(batch) = batches.recv().await {
        match single_recipient(&batch) {
            Some(to) => send_to(&*transport, to, batch).await,
            None => {
                for (to, msgs) in by_peer(batch) {
                    send_to(&*transport, to, msgs).await;
                }
            }
        }
    }
}

/// Hands `msgs` to the transport for `to`, counting them.
async fn send_to<T: Transport>(transport: &T, to: NodeId, msgs: Vec<Message>) {
    let n = msgs.len() as u64;
    if let Err(e) = transport.send(to, msgs).await {
        tracing::debug!(to, error = %e, "send failed");
        metrics::counter!("raft_send_failures_total").increment(n);
    } else {
        metrics::counter!("raft_messages_sent_total").increment(n);
    }
}

/// The recipient of every message of `batch`, when they all have the same
/// one (a follower's answers to its leader, a leader's appends in a
/// cluster of two): the batch then goes to the transport as it is.
fn single_recipient(batch: &[Message]) -> Option<NodeId> {
    let to = batch.first()?.to;
    batch.iter().all(|m| m.to == to).then_some(to)
}

/// `batch` grouped by recipient, in increasing recipient order, each
/// group in the batch's order. The groups are found by a linear search:
/// the recipients are a handful of peers, and a map allocated per batch
/// cost more than the search.
fn by_peer(batch: Vec<Message>) -> Vec<(NodeId, Vec<Message>)> {
    let mut groups: Vec<(NodeId, Vec<Message>)> = Vec::new();
    for m in batch {
        match groups.iter_mut().find(|(to, _)| *to == m.to) {
            Some((_, msgs)) => msgs.push(m),
            None => groups.push((m.to, vec![m])),
        }
    }
    groups.sort_unstable_by_key(|(to, _)| *to);
    groups
}

#[cfg(test)]
mod tests {
    use super::merge;
    use crate::storage::LogWrite;
    use crate::types::{Entry, EntryPayload, HardState, Index};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn entry(term: u64, index: Index) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Normal(Bytes::from(format!("{term}/{index}"))),
        }
    }

    /// The apply task answers each waiter with the response to its own
    /// entry, and as superseded a waiter whose entry is not in the batch
    /// or has another term (walking waiters and entries together).
    #[tokio::test]
    async fn the_apply_task_answers_each_waiter_with_its_own_entrys_response() {
        use super::{apply_task, ApplyJob, Waiter};
        use crate::driver::ProposeError;
        use crate::memory::{KvCommand, KvResponse, MemKv};
        use tokio::sync::{mpsc, watch};

        let put = |term, index: Index| Entry {
            term,
            index,
            payload: EntryPayload::Normal(
                KvCommand::Put {
                    key: format!("k{index}"),
                    value: Bytes::new(),
                }
                .encode(),
            ),
        };
        let (jobs_tx, jobs) = mpsc::channel(4);
        let (applied_tx, mut applied) = watch::channel(0);
        let (fatal, _fatal_rx) = watch::channel(None);
        let (events, _events_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(apply_task(MemKv::new(), jobs, applied_tx, fatal, events));
        let mut answers = Vec::new();
        let mut wait = |index, term| {
            let ticket = crate::driver::ticket::Ticket::default();
            let reply = ticket.reply();
            answers.push((index, ticket));
            Waiter { index, term, reply }
        };
        let first = ApplyJob::Entries {
            entries: vec![put(1, 1), put(1, 2)],
            waiters: vec![wait(1, 1)],
        };
        // 2 was in the previous batch, 5 was overwritten by another term,
        // 7 is beyond this batch.
        let waiters = vec![wait(2, 1), wait(3, 1), wait(5, 1), wait(6, 2), wait(7, 2)];
        let second = ApplyJob::Entries {
            entries: vec![put(1, 3), put(1, 4), put(2, 5), put(2, 6)],
            waiters,
        };
        jobs_tx.send(first).await.unwrap();
        jobs_tx.send(second).await.unwrap();
        let mut got = Vec::new();
        for (index, ticket) in answers {
            let answer = ticket.answer().await.expect("no deadline");
            got.push((index, answer.expect("answered")));
        }
        assert_eq!(
            got,
            vec![
                (1, Ok(KvResponse::Written { revision: 1 })),
                (2, Err(ProposeError::Superseded { index: 2 })),
                (3, Ok(KvResponse::Written { revision: 3 })),
                (5, Err(ProposeError::Superseded { index: 5 })),
                (6, Ok(KvResponse::Written { revision: 6 })),
                (7, Err(ProposeError::Superseded { index: 7 })),
            ]
        );
        applied.wait_for(|a| *a == 6).await.unwrap();
        drop(jobs_tx);
        task.await.unwrap();
    }

    /// The network task hands each recipient its messages in the order
    /// the engine emitted them, recipients in increasing id order, and a
    /// batch for a single recipient whole.
    #[test]
    fn a_batch_goes_out_grouped_by_recipient_in_order() {
        use super::{by_peer, single_recipient};
        use crate::message::{Message, MessageBody};
        let msg = |to, term| Message {
            from: 1,
            to,
            term,
            body: MessageBody::TimeoutNow,
        };
        let batch = vec![msg(3, 1), msg(2, 2), msg(3, 3), msg(5, 4), msg(2, 5)];
        assert_eq!(single_recipient(&batch), None);
        let grouped: Vec<(u64, Vec<u64>)> = by_peer(batch)
            .into_iter()
            .map(|(to, msgs)| {
                assert!(msgs.iter().all(|m| m.to == to));
                (to, msgs.iter().map(|m| m.term).collect())
            })
            .collect();
        assert_eq!(
            grouped,
            vec![(2, vec![2, 5]), (3, vec![1, 3]), (5, vec![4])]
        );
        assert_eq!(single_recipient(&[msg(4, 1), msg(4, 2)]), Some(4));
        assert_eq!(single_recipient(&[]), None);
    }

    /// A model of durable storage applying writes one at a time, as
    /// `LogStorage::write` specifies (hard state, truncate, append).
    #[derive(Debug, Default, PartialEq)]
    struct Model {
        hard_state: HardState,
        log: Vec<Entry>,
    }

    impl Model {
        fn apply(&mut self, w: &LogWrite) {
            if let Some(hs) = w.hard_state {
                self.hard_state = hs;
            }
            if let Some(from) = w.truncate_from {
                self.log.retain(|e| e.index < from);
            }
            if let Some(first) = w.entries.first() {
                assert_eq!(
                    first.index,
                    self.log.len() as Index + 1,
                    "a write appends right after the log: {w:?} on {:?}",
                    self.log
                );
            }
            self.log.extend(w.entries.iter().cloned());
        }
    }

    /// A valid write for a log of `len` entries: maybe a hard state, maybe
    /// a truncation to some index, then entries of term `term` that follow.
    fn write_for(len: Index, term: u64, cut: Option<Index>, n: u64, hs: bool) -> LogWrite {
        let truncate_from = cut.map(|c| 1 + c % (len + 1));
        let end = truncate_from.map_or(len, |t| t - 1).min(len);
        LogWrite {
            hard_state: hs.then_some(HardState {
                term,
                vote: Some(term % 3 + 1),
                commit: end.min(term),
            }),
            truncate_from,
            entries: (end + 1..end + 1 + n).map(|i| entry(term, i)).collect(),
        }
    }

    #[test]
    fn a_truncation_in_a_later_write_drops_what_earlier_ones_appended() {
        let mut acc = LogWrite {
            hard_state: None,
            truncate_from: None,
            entries: (5..=7).map(|i| entry(1, i)).collect(),
        };
        merge(
            &mut acc,
            LogWrite {
                hard_state: Some(HardState {
                    term: 2,
                    vote: Some(2),
                    commit: 4,
                }),
                truncate_from: Some(6),
                entries: vec![entry(2, 6)],
            },
        );
        assert_eq!(acc.entries, vec![entry(1, 5), entry(2, 6)]);
        assert_eq!(acc.truncate_from, Some(6));
        assert_eq!(acc.hard_state.map(|h| h.term), Some(2));
    }

    #[test]
    fn the_lowest_truncation_wins_and_a_later_hard_state_replaces_an_earlier_one() {
        let mut acc = LogWrite {
            hard_state: Some(HardState {
                term: 3,
                vote: Some(1),
                commit: 2,
            }),
            truncate_from: Some(4),
            entries: vec![entry(3, 4)],
        };
        merge(
            &mut acc,
            LogWrite {
                hard_state: None,
                truncate_from: Some(2),
                entries: vec![entry(3, 2), entry(3, 3)],
            },
        );
        assert_eq!(acc.truncate_from, Some(2));
        assert_eq!(acc.entries, vec![entry(3, 2), entry(3, 3)]);
        assert_eq!(
            acc.hard_state.map(|h| h.term),
            Some(3),
            "kept when the next has none"
        );
    }

    proptest! {
        /// Group commit is invisible: any run of valid writes merged into
        /// one leaves storage exactly as the writes one by one would.
        #[test]
        fn merged_writes_leave_storage_as_the_writes_one_by_one(
            start in 0u64..6,
            steps in proptest::collection::vec(
                (proptest::option::weighted(0.3, 0u64..20), 0u64..4, any::<bool>()),
                1..12,
            ),
        ) {
            let mut base = Model::default();
            base.apply(&write_for(0, 1, None, start, true));
            let mut one_by_one = Model {
                hard_state: base.hard_state,
                log: base.log.clone(),
            };
            let mut acc: Option<LogWrite> = None;
            for (k, (cut, n, hs)) in steps.into_iter().enumerate() {
                let w = write_for(one_by_one.log.len() as Index, 2 + k as u64, cut, n, hs);
                one_by_one.apply(&w);
                match acc.as_mut() {
                    None => acc = Some(w),
                    Some(a) => merge(a, w),
                }
            }
            let mut merged = base;
            merged.apply(&acc.expect("at least one write"));
            prop_assert_eq!(merged, one_by_one);
        }
    }
}
