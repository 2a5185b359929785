//! The storage, apply and network tasks of the driver.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::handle::ProposeError;
use super::send_messages;
use crate::engine::WriteId;
use crate::message::Message;
use crate::state_machine::StateMachine;
use crate::storage::{LogStorage, LogWrite};
use crate::transport::Transport;
use crate::types::{Entry, Index, NodeId, Term};

/// One engine `Ready`'s durable write and the messages that wait for it.
#[derive(Debug)]
pub(crate) struct PersistJob {
    pub(crate) write: LogWrite,
    /// The engine's name for the write, reported once it is durable.
    pub(crate) id: Option<WriteId>,
    /// Messages to send once the write is durable.
    pub(crate) after: Vec<Message>,
}

/// A proposer waiting for the entry at `index` to be applied.
pub(crate) struct Waiter<R> {
    pub(crate) index: Index,
    pub(crate) term: Term,
    pub(crate) reply: oneshot::Sender<Result<R, ProposeError>>,
}

/// Committed entries to apply, with the proposers waiting on them.
pub(crate) struct ApplyJob<R> {
    pub(crate) entries: Vec<Entry>,
    pub(crate) waiters: Vec<Waiter<R>>,
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
    mut jobs: mpsc::Receiver<PersistJob>,
    out: mpsc::Sender<Vec<Message>>,
    persisted: watch::Sender<Option<WriteId>>,
    fatal: watch::Sender<Option<String>>,
) {
    while let Some(first) = jobs.recv().await {
        let mut write = first.write;
        let mut id = first.id;
        let mut after = first.after;
        while let Ok(job) = jobs.try_recv() {
            merge(&mut write, job.write);
            if job.id.is_some() {
                id = job.id;
            }
            after.extend(job.after);
        }
        if !write.is_empty() {
            let entries = write.entries.len();
            let started = Instant::now();
            if let Err(e) = log.write(write).await {
                tracing::error!(error = %e, "log write failed");
                let _ = fatal.send(Some(format!("log write failed: {e}")));
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
) {
    while let Some(job) = jobs.recv().await {
        let Some(last) = job.entries.last().map(|e| e.index) else {
            continue;
        };
        let responses = match sm.apply(&job.entries).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "state machine failed");
                let _ = fatal.send(Some(e.to_string()));
                return;
            }
        };
        if responses.len() != job.entries.len() {
            let msg = format!(
                "state machine returned {} responses for {} entries",
                responses.len(),
                job.entries.len()
            );
            let _ = fatal.send(Some(msg));
            return;
        }
        metrics::histogram!("raft_apply_batch_entries").record(job.entries.len() as f64);
        let mut by_index: BTreeMap<Index, (Term, S::Response)> = job
            .entries
            .iter()
            .zip(responses)
            .map(|(e, r)| (e.index, (e.term, r)))
            .collect();
        for w in job.waiters {
            let result = match by_index.remove(&w.index) {
                Some((term, response)) if term == w.term => Ok(response),
                _ => Err(ProposeError::Superseded { index: w.index }),
            };
            let _ = w.reply.send(result);
        }
        applied.send_replace(last);
    }
}

/// Hands outgoing messages to the transport, grouped by recipient.
pub(crate) async fn network_task<T: Transport>(
    transport: T,
    mut batches: mpsc::Receiver<Vec<Message>>,
) {
    while let Some(batch) = batches.recv().await {
        let mut by_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for m in batch {
            by_peer.entry(m.to).or_default().push(m);
        }
        for (to, msgs) in by_peer {
            let n = msgs.len() as u64;
            if let Err(e) = transport.send(to, msgs).await {
                tracing::debug!(to, error = %e, "send failed");
                metrics::counter!("raft_send_failures_total").increment(n);
            } else {
                metrics::counter!("raft_messages_sent_total").increment(n);
            }
        }
    }
}
