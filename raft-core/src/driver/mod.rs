//! The tokio driver: one task owns the [`Engine`] and executes its output
//! over a [`LogStorage`], a [`StateMachine`](crate::StateMachine) and a [`Transport`](crate::Transport).
//!
//! Four tasks, joined by bounded channels:
//! - the **engine task** (`run.rs`) takes requests, inbound
//!   messages and ticks, and turns each [`Ready`](crate::engine::Ready) into work;
//! - the **storage task** performs writes strictly in order, merging every
//!   write that queued up meanwhile into one durable batch (group commit),
//!   then releases the messages that waited for it and reports the durable
//!   position through a `watch` channel;
//! - the **apply task** applies committed entries and answers proposers;
//!   a snapshot is built beside it ([`StateMachine::begin_snapshot`](crate::StateMachine::begin_snapshot));
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
//! the engine a message, a request other than a proposal, a batch of
//! proposals or a timer wake-up, it ticks the engine once for every tick
//! interval that passed since the last one it counted (a proposal judges
//! no time, so the proposals of one batch share one clock reading).
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
//! factor (E − 1) / (L + 1) of each other ([`Config::lease_ticks`](crate::Config::lease_ticks)); for the
//! defaults (E = 20, L = 14) that is 19/15, or about ±11% each.

//!
//! # Files
//!
//! - `config.rs`: [`DriverConfig`] and its checks; `error.rs`: the errors;
//! - `start.rs`: [`Raft::start`] in phases (check, recover, load, spawn);
//!   `recover.rs`: an interrupted snapshot install and the checks that
//!   the state machine and the log fit together;
//! - `run.rs`: the engine task's loop, its clock and background events;
//!   `requests.rs`: client requests; `ready.rs`: acting on each `Ready`;
//!   `wake.rs`: its wait for the next input; `armed.rs`: its waits on
//!   `watch` channels, registered once rather than at every wait;
//! - `tasks.rs`: the storage, apply and network tasks;
//! - `handle.rs`: [`RaftHandle`]; `ticket.rs`: a proposal's ticket, which
//!   carries its answer; `deadline.rs`: proposals' deadlines on one shared
//!   timer per node;
//! - `forward.rs`: a follower forwarding proposals and reads to its
//!   leader over the transport, and the outputs kept for their answers;
//! - `pending.rs`: the proposals waiting for their entries, by index.

mod armed;
mod config;
mod deadline;
mod error;
mod forward;
mod handle;
mod pending;
mod ready;
mod recover;
mod requests;
mod run;
mod start;
mod tasks;
mod ticket;
mod wake;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

pub use config::{DriverConfig, MAX_REQUEST_TIMEOUT};
pub use error::{
    MembershipError, ProposeError, ReadError, SnapshotError, StartError, TransferError,
};
pub use handle::{DriverStatus, RaftHandle, ReadConsistency};
pub use recover::complete_interrupted_install;
use tasks::{ApplyJob, Event, StorageJob};

use crate::engine::{Engine, ReadId, SoftState};
use crate::membership::Membership;
use crate::message::Message;
use crate::snapshot::SnapshotData;
use crate::storage::LogStorage;
use crate::types::{Index, NodeId, SnapshotMeta, Term};

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
    /// When the driver took it (the clock reading of its batch):
    /// `raft_proposal_commit_seconds` measures from here to the commit.
    proposed: tokio::time::Instant,
    reply: ticket::Reply<R>,
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

/// State of the engine task.
struct Driver<R, T> {
    engine: Engine,
    cfg: DriverConfig,
    /// Proposals appended but not yet handed to the apply task, by index.
    proposals: pending::ByIndex<PendingProposal<R>>,
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
    /// The last leader this process learned of, and its term:
    /// `raft_leader_changes_total` counts a leader of another term (or
    /// another node), never the first one after the start nor the time
    /// between two leaders when none is known.
    known_leader: Option<(NodeId, Term)>,
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
    /// `raft_proposals_pending`, set after every batch of requests: the
    /// handle, not a registry lookup each time.
    pending_gauge: metrics::Gauge,
    /// `raft_proposals_total`, counted at every proposal (the handle, as
    /// for `pending_gauge`).
    proposals_counter: metrics::Counter,
    /// The engine task's latest clock reading (when it last caught up the
    /// engine's ticks).
    now: tokio::time::Instant,
    /// `raft_proposal_commit_seconds`, recorded for every proposal.
    commit_latency: metrics::Histogram,
    /// Requests forwarded to the leader, waiting for its answer.
    forwards: forward::Forwards<R>,
}

/// Queues messages for the network task, dropping them when it is behind.
fn send_messages(out: &mpsc::Sender<Vec<Message>>, msgs: Vec<Message>) {
    let n = msgs.len() as u64;
    if out.try_send(msgs).is_err() {
        metrics::counter!("raft_outbound_dropped_total").increment(n);
    }
}
