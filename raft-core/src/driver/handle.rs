//! The cloneable handle to a running [`Raft`](super::Raft) node and the
//! requests it sends to the driver task (the errors it answers with are in
//! `error.rs`).

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::deadline::{until_expired, Deadlines};
use super::ticket::{Reply, Ticket};
use super::{MembershipError, ProposeError, ReadError, SnapshotError, TransferError};
use crate::engine::{MembershipChange, Status};
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::snapshot::SnapshotData;
use crate::types::{Index, NodeId, SnapshotMeta};

/// Read consistency levels (thesis §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// ReadIndex: the leader confirms it still leads with a heartbeat round.
    #[default]
    Linearizable,
    /// The leader lease: no round trip while the lease holds, otherwise
    /// falls back to ReadIndex. Relies on bounded clock drift.
    Lease,
    /// Whatever this node has applied, possibly stale; works on any node.
    Stale,
}

/// A request from a handle to the driver task.
#[derive(Debug)]
pub(crate) enum Request<R> {
    Propose {
        data: Bytes,
        /// The driver's end of the caller's ticket (see `ticket.rs`).
        reply: Reply<R>,
    },
    Read {
        consistency: ReadConsistency,
        reply: oneshot::Sender<Result<Index, ReadError>>,
    },
    Transfer {
        to: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId, TransferError>>,
    },
    Status {
        reply: oneshot::Sender<DriverStatus>,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<Membership, MembershipError>>,
    },
    Snapshot {
        reply: oneshot::Sender<Result<SnapshotMeta, SnapshotError>>,
    },
    /// Boxed: the largest variant otherwise, and every proposal moved
    /// through the queue would copy its size.
    IncomingSnapshot {
        header: Box<Message>,
        data: SnapshotData,
    },
}

/// The engine's status plus what the driver knows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStatus {
    /// Role, term, leader, indexes and per-peer progress.
    pub engine: Status,
    /// Highest index the state machine has applied.
    pub applied: Index,
    /// Proposals waiting to be applied.
    pub pending_proposals: usize,
    /// Reads waiting for confirmation.
    pub pending_reads: usize,
    /// The latest snapshot the driver can send to followers.
    pub snapshot: Option<SnapshotMeta>,
    /// Followers a snapshot is being streamed to right now.
    pub snapshots_sending: Vec<NodeId>,
}

/// A cheap, cloneable handle to a running node.
#[derive(Debug)]
pub struct RaftHandle<R> {
    pub(crate) id: NodeId,
    pub(crate) requests: mpsc::Sender<Request<R>>,
    pub(crate) inbound: mpsc::Sender<Message>,
    pub(crate) applied: watch::Receiver<Index>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) done: watch::Receiver<bool>,
    pub(crate) failure: watch::Receiver<Option<String>>,
    pub(crate) storage_clock: std::sync::Arc<super::tasks::StorageClock>,
    pub(crate) request_timeout: Duration,
    /// The node's proposals' deadlines, on one timer (see `deadline.rs`).
    pub(crate) deadlines: Arc<Deadlines>,
}

impl<R> Clone for RaftHandle<R> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            requests: self.requests.clone(),
            inbound: self.inbound.clone(),
            applied: self.applied.clone(),
            shutdown: self.shutdown.clone(),
            done: self.done.clone(),
            failure: self.failure.clone(),
            storage_clock: self.storage_clock.clone(),
            request_timeout: self.request_timeout,
            deadlines: self.deadlines.clone(),
        }
    }
}

/// Abandons a proposal's ticket when dropped: a no-op once the driver
/// took the proposal (see `Ticket::abandon`).
struct GiveUpOnDrop<'a, R>(&'a Ticket<R>);

impl<R> Drop for GiveUpOnDrop<'_, R> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl<R: Send + 'static> RaftHandle<R> {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes a command and waits until it is applied, returning the state
    /// machine's response.
    ///
    /// Dropping the returned future before the node took the proposal out
    /// of its request queue gives the proposal up (it is never appended);
    /// dropping it later leaves the outcome unknown.
    ///
    /// # Errors
    ///
    /// A [`ProposeError`]; [`ProposeError::may_have_committed`] says whether
    /// the command may still take effect.
    pub async fn propose(&self, data: Bytes) -> Result<R, ProposeError> {
        // One allocation carries the answer, the deadline and whether the
        // driver took the proposal (see `ticket.rs`).
        let ticket = Ticket::default();
        // The deadline on the node's shared timer, from now on: taken off
        // again when this returns (or is dropped).
        let _deadline = self.deadlines.register(&ticket);
        // A caller that stops waiting (drops this future) before the driver
        // took the proposal gives it up: it is then never proposed.
        let _give_up = GiveUpOnDrop(&ticket);
        let req = Request::Propose {
            data,
            reply: ticket.reply(),
        };
        // A queue with room takes it at once; a full one is waited on until
        // the deadline.
        match self.requests.try_send(req) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Counts against the task's cooperative budget, as waiting on
                // the queue did: a caller that retries in a loop after the
                // driver stopped still lets the runtime's other tasks run.
                tokio::task::consume_budget().await;
                return Err(ProposeError::ShuttingDown { appended: false });
            }
            Err(mpsc::error::TrySendError::Full(req)) => {
                let mut send = std::pin::pin!(self.requests.send(req));
                match until_expired(&mut send, &ticket).await {
                    Some(Ok(())) => {}
                    Some(Err(_)) => return Err(ProposeError::ShuttingDown { appended: false }),
                    // Never reached the driver: nothing was appended.
                    None => return Err(ProposeError::Overloaded),
                }
            }
        }
        match ticket.answer().await {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ProposeError::ShuttingDown {
                appended: !ticket.abandon() && ticket.taken(),
            }),
            None => {
                if !ticket.abandon() {
                    Err(ProposeError::Timeout)
                } else if self.requests.is_closed() {
                    // Queued just as the node stopped reading its queue
                    // (stranded there, neither taken nor dropped): the
                    // node stopped, not overloaded. Never appended.
                    Err(ProposeError::ShuttingDown { appended: false })
                } else {
                    // The driver never took it and now never will.
                    Err(ProposeError::Overloaded)
                }
            }
        }
    }

    /// Waits until it is safe to read this node's state machine at the given
    /// consistency, and returns the index the read reflects at least: once
    /// this returns, the state machine has applied that index, so a read of
    /// it now observes every write that completed before this call.
    ///
    /// # Errors
    ///
    /// A [`ReadError`].
    pub async fn read(&self, consistency: ReadConsistency) -> Result<Index, ReadError> {
        if consistency == ReadConsistency::Stale {
            return Ok(*self.applied.borrow());
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let (reply, rx) = oneshot::channel();
        let req = Request::Read { consistency, reply };
        match tokio::time::timeout_at(deadline, self.requests.send(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ReadError::ShuttingDown),
            Err(_) => return Err(ReadError::Overloaded),
        }
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(ReadError::ShuttingDown),
            Err(_) => return Err(ReadError::Timeout),
        };
        let mut applied = self.applied.clone();
        let caught_up = async move { applied.wait_for(|a| *a >= index).await.is_ok() };
        match tokio::time::timeout_at(deadline, caught_up).await {
            Ok(true) => Ok(index),
            Ok(false) => Err(ReadError::ShuttingDown),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Transfers leadership to `to`, or to the most up-to-date other voter
    /// when `None`, and waits for the outcome. Returns the new leader.
    ///
    /// # Errors
    ///
    /// A [`TransferError`].
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Transfer { to, reply })
            .await
            .map_err(|_| TransferError::ShuttingDown)?;
        // A follower that stepped down may never learn the new leader (if,
        // say, it is cut off): bound the wait.
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(result) => result.map_err(|_| TransferError::ShuttingDown)?,
            Err(_) => Err(TransferError::Aborted),
        }
    }

    /// Changes the cluster's membership and waits until the change is
    /// complete: for a voter change, until C_new is committed (thesis §4.3);
    /// for a learner change, until its entry is committed. Returns the
    /// resulting configuration. Must be called on the leader.
    ///
    /// # Errors
    ///
    /// A [`MembershipError`]: [`MembershipError::Rejected`] means nothing
    /// changed; `Timeout` and `LeadershipLost` mean the outcome is unknown.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Membership, MembershipError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::ChangeMembership { change, reply })
            .await
            .map_err(|_| MembershipError::ShuttingDown)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(result) => result.map_err(|_| MembershipError::ShuttingDown)?,
            Err(_) => Err(MembershipError::Timeout),
        }
    }

    /// Takes a snapshot of the state machine now (unless the latest one is
    /// up to date) and compacts the log; returns what the snapshot covers.
    ///
    /// # Errors
    ///
    /// A [`SnapshotError`].
    pub async fn snapshot(&self) -> Result<SnapshotMeta, SnapshotError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Snapshot { reply })
            .await
            .map_err(|_| SnapshotError::ShuttingDown)?;
        // Building a large snapshot takes a while: allow more than a proposal.
        match tokio::time::timeout(self.request_timeout * 12, rx).await {
            Ok(result) => result.map_err(|_| SnapshotError::ShuttingDown)?,
            Err(_) => Err(SnapshotError::Timeout),
        }
    }

    /// Hands a complete, verified snapshot from a peer to the node: `header`
    /// is the leader's `InstallSnapshot` message, `data` the snapshot's bytes
    /// (a transport calls this once a transfer finished). Never waits.
    ///
    /// # Errors
    ///
    /// Gives the header back when it is not an `InstallSnapshot` message or
    /// the node's request queue is full (the leader sends it again).
    pub fn receive_snapshot(&self, header: Message, data: SnapshotData) -> Result<(), Message> {
        if !matches!(header.body, MessageBody::InstallSnapshot { .. }) {
            return Err(header);
        }
        let copy = header.clone();
        self.requests
            .try_send(Request::IncomingSnapshot {
                header: Box::new(header),
                data,
            })
            .map_err(|_| {
                metrics::counter!("raft_inbound_dropped_total").increment(1);
                copy
            })
    }

    /// The node's current status, or `None` once it has stopped.
    pub async fn status(&self) -> Option<DriverStatus> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Status { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Hands a message from a peer to the node. Never waits: when the
    /// inbound queue is full the message is dropped (Raft tolerates loss).
    ///
    /// # Errors
    ///
    /// Gives the message back when it was dropped.
    pub fn receive(&self, msg: Message) -> Result<(), Message> {
        self.inbound.try_send(msg).map_err(|e| {
            metrics::counter!("raft_inbound_dropped_total").increment(1);
            e.into_inner()
        })
    }

    /// The highest index applied to the state machine.
    pub fn applied_index(&self) -> Index {
        *self.applied.borrow()
    }

    /// Stops the node: the driver stops taking requests, finishes the
    /// storage writes it started, and exits. Waits until it has.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Whether the node has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.done.borrow()
    }

    /// How long the log storage's current operation (a write, recording or
    /// installing a snapshot) has been running, or `None` while it is idle.
    /// A disk that blocks instead of failing shows here as a duration that
    /// keeps growing, while nothing is acknowledged: a health check can
    /// call that unhealthy.
    pub fn storage_busy_for(&self) -> Option<Duration> {
        self.storage_clock.busy_for()
    }

    /// Why the node stopped on its own, set the moment its storage or state
    /// machine failed (the driver is then stopping, and never acknowledges
    /// anything again). `None` while it runs and after a requested
    /// [`shutdown`](Self::shutdown).
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Waits until the node fails, and returns why (see
    /// [`failure`](Self::failure)); also when the driver stops without
    /// having been asked to and without a reason (one of its tasks ended
    /// unexpectedly). Never returns for a node that stops because it was
    /// asked to ([`shutdown`](Self::shutdown)): select it against your own
    /// shutdown signal.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        let mut done = self.done.clone();
        // Whether a task can still raise a failure.
        let mut raisable = true;
        loop {
            if let Some(reason) = failure.borrow_and_update().clone() {
                return reason;
            }
            // The driver sets `done` when it stops; a driver task that
            // panicked drops it unset.
            let ended = match done.has_changed() {
                Err(_) => true,
                Ok(_) => *done.borrow_and_update(),
            };
            if ended {
                if let Some(reason) = self.failure.borrow().clone() {
                    return reason;
                }
                if !*self.shutdown.borrow() {
                    return "the raft driver stopped unexpectedly".to_string();
                }
                std::future::pending::<()>().await;
            }
            // Whichever comes first: a failure raised, or the driver done.
            let raised = raisable.then(|| failure.changed());
            let mut raised = std::pin::pin!(raised);
            let mut done_changed = std::pin::pin!(done.changed());
            std::future::poll_fn(|cx| {
                if let Some(raised) = raised.as_mut().as_pin_mut() {
                    if let Poll::Ready(changed) = raised.poll(cx) {
                        raisable = changed.is_ok();
                        return Poll::Ready(());
                    }
                }
                done_changed.as_mut().poll(cx).map(|_| ())
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle on queues no engine task reads, with the receiving end of
    /// its request queue, and the node's deadline timer running.
    fn unserved(timeout: Duration) -> (RaftHandle<()>, mpsc::Receiver<Request<()>>) {
        let (requests, engine_end) = mpsc::channel(4);
        let (inbound, _) = mpsc::channel(1);
        let (_, applied) = watch::channel(0);
        let (shutdown, _) = watch::channel(false);
        let (_, done) = watch::channel(false);
        let (_, failure) = watch::channel(None);
        let handle = RaftHandle {
            id: 1,
            requests,
            inbound,
            applied,
            shutdown,
            done,
            failure,
            storage_clock: Arc::new(super::super::tasks::StorageClock::new()),
            request_timeout: timeout,
            deadlines: Arc::new(Deadlines::new(timeout)),
        };
        tokio::spawn(Arc::clone(&handle.deadlines).run(handle.done.clone()));
        (handle, engine_end)
    }

    /// A proposal that reached the request queue just as the node stopped
    /// reading it (the queue closed with the proposal inside, neither
    /// taken nor dropped) ends at its deadline as `ShuttingDown`, not as
    /// `Overloaded`: the node stopped, and nothing was appended.
    #[tokio::test(start_paused = true)]
    async fn a_proposal_stranded_at_shutdown_reports_shutting_down() {
        let timeout = Duration::from_secs(2);
        let (handle, mut engine_end) = unserved(timeout);
        let mut proposal = std::pin::pin!(handle.propose(Bytes::from_static(b"x")));
        let first = std::future::poll_fn(|cx| Poll::Ready(proposal.as_mut().poll(cx)));
        assert!(first.await.is_pending(), "queued, waiting for an answer");
        // The node stops taking requests; what is queued stays there.
        engine_end.close();
        let started = tokio::time::Instant::now();
        let answer = proposal.await;
        assert_eq!(answer, Err(ProposeError::ShuttingDown { appended: false }));
        assert_eq!(started.elapsed(), timeout, "ended by its deadline");
    }

    /// The same proposal on a node that still reads its queue but never
    /// got to it is refused as `Overloaded` at its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_proposal_never_taken_by_a_running_node_is_overloaded() {
        let timeout = Duration::from_secs(2);
        let (handle, _engine_end) = unserved(timeout);
        let answer = handle.propose(Bytes::from_static(b"x")).await;
        assert_eq!(answer, Err(ProposeError::Overloaded));
    }
}
