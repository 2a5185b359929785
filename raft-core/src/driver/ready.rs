//! Acting on each [`Ready`](crate::engine::Ready) of the engine, in the
//! order its contract prescribes: send, write, apply, answer reads.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::tasks::{ApplyJob, Event, PersistJob, StorageJob, Waiter};
use super::{send_messages, Driver, ProposeError, ReadError, TransferError};
use crate::engine::{EntryFetch, Role, SoftState};
use crate::message::{Message, MessageBody};
use crate::storage::LogWrite;
use crate::transport::Transport;
use crate::types::{Entry, Index};

/// `raft_proposal_commit_seconds` for the proposals of one commit: the
/// proposals of one batch of requests share their clock reading, so each
/// run of equal readings is one duration, recorded as many times as it
/// has proposals (a duration per proposal was a measurable share of its
/// cost).
struct CommitLatency<'a> {
    histogram: &'a metrics::Histogram,
    committed: tokio::time::Instant,
    /// The current run: its clock reading and its proposals.
    run: Option<(tokio::time::Instant, usize)>,
}

impl<'a> CommitLatency<'a> {
    fn new(histogram: &'a metrics::Histogram) -> Self {
        Self {
            histogram,
            committed: tokio::time::Instant::now(),
            run: None,
        }
    }

    /// Counts a proposal taken at `proposed`.
    fn add(&mut self, proposed: tokio::time::Instant) {
        match &mut self.run {
            Some((at, n)) if *at == proposed => *n += 1,
            _ => {
                self.flush();
                self.run = Some((proposed, 1));
            }
        }
    }

    /// Records the current run.
    fn flush(&mut self) {
        if let Some((at, n)) = self.run.take() {
            let seconds = self.committed.saturating_duration_since(at).as_secs_f64();
            self.histogram.record_many(seconds, n);
        }
    }
}

impl<R: Send + 'static, T: Transport> Driver<R, T> {
    /// Drains the engine's output. Returns false when the node must stop.
    pub(super) async fn process_ready(&mut self) -> bool {
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
            if let Some(from) = ready.truncate_from {
                self.answer_overwritten(from);
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
            if !ready.committed_entries.is_empty()
                && !self.hand_out_committed(ready.committed_entries)
            {
                return false;
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
                    let _ = reply.send(Err(ReadError::from(err)));
                }
            }
            // After the committed entries were handed out (see forward.rs).
            self.on_forward_responses(ready.forward_responses);
        }
        self.check_changes();
        true
    }

    /// Hands committed entries to the apply task, with the proposals that
    /// wait for them; answers proposals below them as of unknown outcome. Returns
    /// false when the apply task is gone.
    pub(super) fn hand_out_committed(&mut self, entries: Vec<Entry>) -> bool {
        let last = entries.last().map_or(0, |e| e.index);
        let first = entries.first().map_or(0, |e| e.index);
        let mut waiters = Vec::new();
        if self.proposals.lowest().is_some_and(|lowest| lowest <= last) {
            // The proposals up to `last` leave in one go (in increasing
            // index order, as the apply task expects), those above stay.
            let mut latency = CommitLatency::new(&self.commit_latency);
            for (index, p) in self.proposals.take_upto(last) {
                if index < first {
                    // Below this batch, yet never handed out with its
                    // entry: this node cannot tell whether the entry there
                    // is the proposal's.
                    let _ = p.reply.send(Err(ProposeError::OutcomeUnknown { index }));
                    continue;
                }
                latency.add(p.proposed);
                waiters.push(Waiter {
                    index,
                    term: p.term,
                    reply: p.reply,
                });
            }
            latency.flush();
            self.report_pending_proposals();
        }
        metrics::gauge!("raft_commit_index").set(self.engine.commit_index() as f64);
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        self.unapplied.push_back((last, bytes));
        self.unapplied_bytes += bytes;
        let job = ApplyJob::Entries { entries, waiters };
        self.queue_apply(job)
    }

    /// Hands `job` to the apply task, or to the backlog behind the jobs
    /// already waiting. Returns false when the apply task is gone.
    pub(super) fn queue_apply(&mut self, job: ApplyJob<R>) -> bool {
        self.apply_backlog.push_back(job);
        self.flush_apply_backlog()
    }

    /// Moves backlog jobs to the apply queue while it has room. Returns
    /// false when the apply task is gone.
    pub(super) fn flush_apply_backlog(&mut self) -> bool {
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

    /// Reads entries back from storage for a follower, on a task of its
    /// own (the engine dropped their payloads from memory); the result
    /// comes back as [`Event::Fetched`].
    pub(super) fn fetch_entries(&self, fetch: EntryFetch) {
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
    pub(super) fn send_snapshot(&mut self, mut header: Message) {
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

    pub(super) fn on_soft_state(&mut self, soft: SoftState) {
        let prev = self.last_soft.replace(soft);
        if prev.is_none_or(|p| p.leader != soft.leader) {
            tracing::info!(leader = ?soft.leader, term = soft.term, role = soft.role.as_str(), "leader changed");
        }
        if let Some(leader) = soft.leader {
            let now = (leader, soft.term);
            if self.known_leader.replace(now).is_some_and(|k| k != now) {
                metrics::counter!("raft_leader_changes_total").increment(1);
            }
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

    pub(super) fn publish_metrics(&self) {
        let status = self.engine.status();
        metrics::gauge!("raft_term").set(status.term as f64);
        metrics::gauge!("raft_is_leader").set(if status.role == Role::Leader {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("raft_has_leader").set(if status.leader.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("raft_role").set(match status.role {
            Role::Follower => 0.0,
            Role::PreCandidate => 1.0,
            Role::Candidate => 2.0,
            Role::Leader => 3.0,
        });
        metrics::gauge!("raft_commit_index").set(status.commit as f64);
        metrics::gauge!("raft_last_log_index").set(status.last_index as f64);
        metrics::gauge!("raft_apply_backlog_jobs").set(self.backlog_reported as f64);
        self.report_pending_proposals();
    }

    /// Answers the proposals at `from` and above: a new leader's entries
    /// overwrote them in this node's log after it stepped down. Nothing in
    /// this log would ever answer them (the count of pending proposals
    /// would stay up on an idle cluster), yet another node may still hold
    /// them and commit them: their outcome is unknown.
    fn answer_overwritten(&mut self, from: Index) {
        let gone = self.proposals.take_from(from);
        if gone.is_empty() {
            return;
        }
        // An entry of the current term is never overwritten (Log Matching):
        // a forwarded proposal the leader appended in this term still waits.
        let term = self.engine.term();
        for (index, p) in gone {
            if p.term == term {
                self.proposals.insert(index, p);
                continue;
            }
            let _ = p.reply.send(Err(ProposeError::OutcomeUnknown { index }));
        }
        self.report_pending_proposals();
    }

    /// `raft_proposals_pending`: proposals appended and not yet committed
    /// (or answered otherwise).
    pub(super) fn report_pending_proposals(&self) {
        self.pending_gauge.set(self.proposals.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::CommitLatency;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::time::Duration;

    /// Every proposal is one sample of its own commit latency, also when
    /// the proposals of one batch (one clock reading) are recorded together.
    #[tokio::test(start_paused = true)]
    async fn each_committed_proposal_is_one_sample_of_its_own_latency() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let histogram = metrics::with_local_recorder(&recorder, || metrics::histogram!("h"));
        let t0 = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        let t1 = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(2)).await;
        let mut latency = CommitLatency::new(&histogram);
        for at in [t0, t0, t1, t1, t1, t0] {
            latency.add(at);
        }
        latency.flush();
        let mut samples: Vec<f64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .flat_map(|(.., value)| match value {
                DebugValue::Histogram(h) => {
                    h.into_iter().map(|v| v.into_inner()).collect::<Vec<_>>()
                }
                other => panic!("not a histogram: {other:?}"),
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        assert_eq!(samples, [0.002, 0.002, 0.002, 0.003, 0.003, 0.003]);
    }
}
