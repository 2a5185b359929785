//! Client requests to the engine task: proposals, reads, status,
//! snapshots, membership changes and leadership transfers.

use tokio::sync::oneshot;

use super::handle::{DriverStatus, ReadConsistency, Request};
use super::{
    Driver, MembershipError, PendingChange, PendingProposal, PendingTransfer, ProposeError,
    ReadError, SnapshotError, TransferError,
};
use crate::engine::{MembershipChange, ReadRefused, Role, SnapshotRequestError, TransferRefused};
use crate::membership::Membership;
use crate::message::MessageBody;
use crate::transport::Transport;
use crate::types::NodeId;

impl<R> Request<R> {
    /// Whether handling this request depends on the time (a lease read
    /// does; a proposal does not): the engine task then catches up its
    /// ticks first, even in the middle of a batch.
    pub(super) fn judges_time(&self) -> bool {
        !matches!(self, Request::Propose { .. })
    }
}

impl<R: Send + 'static, T: Transport> Driver<R, T> {
    /// After a batch of inputs: sets the gauges that count what it added
    /// (once per batch rather than once per proposal).
    pub(super) fn end_batch(&mut self) {
        self.report_pending_proposals();
    }

    pub(super) fn handle_request(&mut self, req: Request<R>) {
        let Some(req) = self.forward_request(req) else {
            return;
        };
        match req {
            Request::Propose { data, reply } => match reply.take().then(|| self.propose(data)) {
                // The caller timed out before this was taken: drop it.
                None => {}
                Some(Err(None)) => {
                    metrics::counter!("raft_proposals_rejected_total").increment(1);
                    let _ = reply.send(Err(ProposeError::Overloaded));
                }
                Some(Ok(id)) => {
                    self.proposals_counter.increment(1);
                    let pending = PendingProposal {
                        term: id.term,
                        proposed: self.now,
                        reply,
                    };
                    self.wait_for_entry(id.index, pending);
                }
                Some(Err(Some(e))) => {
                    metrics::counter!("raft_proposals_rejected_total").increment(1);
                    let _ = reply.send(Err(ProposeError::from(e)));
                }
            },
            Request::Read { consistency, reply } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                let result = match consistency {
                    ReadConsistency::Lease => match self.engine.read_lease(id) {
                        Err(ReadRefused::LeaseNotHeld) => self.engine.read_index(id),
                        other => other,
                    },
                    _ => self.engine.read_index(id),
                };
                match result {
                    Ok(()) => {
                        self.reads.insert(id, (consistency, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ReadError::from(e)));
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
                        self.engine.step(*header);
                        if !self.engine.is_installing_snapshot() {
                            // Refused (an older term, or everything it covers
                            // is already here): let the data go now, so a
                            // transport's file is deleted, not kept until the
                            // next snapshot arrives.
                            self.incoming = None;
                        }
                    }
                }
            }
        }
    }

    pub(super) fn start_change(
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
    pub(super) fn check_changes(&mut self) {
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

    pub(super) fn start_transfer(
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
            Err(TransferRefused::NotLeader { leader }) => {
                let _ = reply.send(Err(TransferError::NotLeader { leader }));
            }
            Err(TransferRefused::NotAVoter(id)) => {
                let _ = reply.send(Err(TransferError::NoTarget(format!(
                    "node {id} is not a voter"
                ))));
            }
        }
    }

    pub(super) fn fail_all(&mut self, err: ProposeError) {
        self.fail_forwards();
        for (_, p) in self.proposals.take_all() {
            let _ = p.reply.send(Err(err.clone()));
        }
        self.report_pending_proposals();
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
