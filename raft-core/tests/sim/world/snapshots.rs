//! Snapshots in the simulated cluster, modelled on the real driver
//! (`raft_core::driver`): the state machine builds them, storage records
//! compactions, leaders stream their state machine's latest snapshot to
//! followers through the simulated network (where it can be cut, dropped or
//! delayed), the leader learns how each transfer ended some time later
//! (`Engine::report_snapshot`), and followers install a snapshot into the
//! state machine first and the log second.

use std::sync::Arc;

use raft_core::engine::LogCompaction;
use raft_core::{Message, MessageBody, NodeId, SnapshotMeta};
use rand::Rng;

use super::{ApplyJob, Check, PendingWrite, World};
use crate::sim::model::Kv;
use crate::sim::network::{Packet, SnapshotData};
use crate::sim::trace::{Event, Loss, MsgInfo};

/// The outcome of a snapshot transfer, due at its sender.
#[derive(Debug)]
pub(in crate::sim) struct SnapshotReport {
    /// The tick it is due at.
    at: u64,
    /// The sender (0-based).
    node: usize,
    /// The sender's incarnation: a restarted process knows nothing of it.
    incarnation: u32,
    /// The recipient.
    to: NodeId,
    /// Whether all of the data arrived.
    delivered: bool,
}

/// Chance that the state machine fails to build a requested snapshot.
const BUILD_FAILURE: f64 = 0.05;

impl World {
    /// Leader `i` sends a snapshot: its state machine's latest one, whatever
    /// the engine's header says (a restarted node's state machine may hold
    /// a newer one than its log recorded), one transfer per follower.
    pub(super) fn send_snapshot(&mut self, i: usize, mut header: Message) -> Check {
        let id = self.nodes[i].id;
        let to = header.to;
        if header.from != id || to == id || to == 0 || to > self.nodes.len() as NodeId {
            return Err(format!("node {id} sent a misaddressed snapshot {header:?}"));
        }
        let MessageBody::InstallSnapshot { meta: announced } = &header.body else {
            unreachable!("only InstallSnapshot headers come here");
        };
        let Some((meta, kv)) = self.nodes[i].snapshot.clone() else {
            return Err(format!(
                "node {id} sends snapshot {} to {to} but its state machine never built or \
                 installed one",
                announced.last_log_id
            ));
        };
        if meta.last_log_id.index < announced.last_log_id.index {
            return Err(format!(
                "node {id} announces snapshot {} to {to} but its state machine's latest \
                 snapshot is the older {}",
                announced.last_log_id, meta.last_log_id
            ));
        }
        if !self.nodes[i].sending.insert(to) {
            return Ok(()); // a transfer to `to` is still running
        }
        header.body = MessageBody::InstallSnapshot { meta };
        self.snapshot_stats.sent += 1;
        let info = MsgInfo::of(&header);
        self.record(Event::Send {
            msg: info,
            persisted: false,
        });
        let incarnation = self.nodes[i].incarnation;
        if self.net.is_cut(id, to) {
            self.record(Event::Lost {
                msg: info,
                why: Loss::Partition,
            });
            self.snapshot_lost(i, incarnation, to);
            return Ok(());
        }
        let at = self.now + self.latency();
        self.net.push(
            Packet::snapshot(
                header,
                SnapshotData {
                    kv,
                    sender_incarnation: incarnation,
                },
            ),
            at,
        );
        Ok(())
    }

    /// The transfer from node `i` to `to` failed: the sender hears of it
    /// after a transport timeout.
    fn snapshot_lost(&mut self, i: usize, incarnation: u32, to: NodeId) {
        self.snapshot_stats.lost += 1;
        let at = self.now + self.rng.gen_range(1..=5);
        self.reports.push(SnapshotReport {
            at,
            node: i,
            incarnation,
            to,
            delivered: false,
        });
    }

    /// A snapshot arrives (or is lost on the way).
    pub(super) fn deliver_snapshot(&mut self, msg: Message, data: SnapshotData) -> Check {
        let from = msg.from as usize - 1;
        let to = msg.to as usize - 1;
        let info = MsgInfo::of(&msg);
        let lost = if self.net.is_cut(msg.from, msg.to) {
            Some(Loss::Partition)
        } else if self.nodes[to].engine.is_none() {
            Some(Loss::Down)
        } else if self.faulty && self.rng.gen_bool(0.04) {
            self.faults.dropped += 1;
            Some(Loss::Random)
        } else {
            None
        };
        if let Some(why) = lost {
            self.record(Event::Lost { msg: info, why });
            self.snapshot_lost(from, data.sender_incarnation, msg.to);
            return Ok(());
        }
        self.record(Event::Deliver {
            msg: info,
            dup: false,
        });
        let at = self.now + self.rng.gen_range(0..=1);
        self.reports.push(SnapshotReport {
            at,
            node: from,
            incarnation: data.sender_incarnation,
            to: msg.to,
            delivered: true,
        });
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            unreachable!("snapshot data travels with an InstallSnapshot header");
        };
        if data.kv.applied != meta.last_log_id.index {
            return Err(format!(
                "the simulation sent snapshot data at index {} under header {}",
                data.kv.applied, meta.last_log_id
            ));
        }
        // As the driver: a snapshot that arrives while another is being
        // installed is dropped; otherwise the engine decides.
        if self.nodes[to]
            .engine
            .as_ref()
            .is_some_and(|e| !e.is_installing_snapshot())
        {
            self.nodes[to].incoming = Some((meta.clone(), data.kv));
            let from_removed = self.sender_if_removed(to, &msg);
            let term_before = self.nodes[to].engine.as_ref().map_or(0, |e| e.term());
            if let Some(engine) = self.nodes[to].engine.as_mut() {
                engine.step(msg);
            }
            if let Some(from) = from_removed {
                self.check_not_disrupted(to, info, from, term_before)?;
            }
        }
        self.drain(to)
    }

    /// Tells senders how their transfers ended, when due.
    pub(super) fn deliver_reports(&mut self) -> Check {
        if self.reports.is_empty() {
            return Ok(());
        }
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reports)
            .into_iter()
            .partition(|r| r.at <= now);
        self.reports = later;
        for mut r in due {
            let node = &mut self.nodes[r.node];
            if node.incarnation != r.incarnation {
                continue; // the process that sent it is gone
            }
            if node.stalled_until != 0 {
                // Handled once the node resumes.
                r.at = node.stalled_until.max(now + 1);
                self.reports.push(r);
                continue;
            }
            let Some(engine) = node.engine.as_mut() else {
                continue;
            };
            node.sending.remove(&r.to);
            engine.report_snapshot(r.to, r.delivered);
            let id = node.id;
            self.record(Event::SnapshotReport {
                node: id,
                to: r.to,
                delivered: r.delivered,
            });
            self.drain(r.node)?;
        }
        Ok(())
    }

    /// Node `i`'s state machine reached a snapshot job in its queue.
    pub(super) fn snapshot_job(&mut self, i: usize, job: ApplyJob) -> Check {
        match job {
            ApplyJob::Build(meta) => self.build_snapshot(i, meta),
            ApplyJob::Install(meta, kv) => self.install_in_state_machine(i, meta, kv),
            ApplyJob::Entry(_) => unreachable!("entries are applied by the caller"),
        }
    }

    /// `Ready::build_snapshot`: the state machine applied every entry handed
    /// out before the request, so it is exactly at the snapshot's index.
    fn build_snapshot(&mut self, i: usize, meta: SnapshotMeta) -> Check {
        let node = &self.nodes[i];
        let id = node.id;
        let index = meta.last_log_id.index;
        if node.kv.applied != index {
            return Err(format!(
                "node {id}: Ready::build_snapshot asks for a snapshot at {} but the state \
                 machine is at {} after applying every entry handed out before the request",
                meta.last_log_id, node.kv.applied
            ));
        }
        if self.rng.gen_bool(BUILD_FAILURE) {
            self.snapshot_stats.build_failed += 1;
            self.record(Event::Snapshot {
                node: id,
                what: "build failed (injected)",
                index,
            });
            if let Some(engine) = self.nodes[i].engine.as_mut() {
                engine.on_snapshot_build_failed();
            }
            return Ok(());
        }
        self.reference.check(
            &node.kv,
            &format!("node {id}'s snapshot {}", meta.last_log_id),
        )?;
        let kv = Arc::new(node.kv.clone());
        self.nodes[i].snapshot = Some((meta.clone(), kv));
        self.snapshot_stats.built += 1;
        self.record(Event::Snapshot {
            node: id,
            what: "built",
            index,
        });
        if let Some(engine) = self.nodes[i].engine.as_mut() {
            engine.on_snapshot_built(meta);
        }
        Ok(())
    }

    /// `Ready::install_snapshot`, first half: the state machine replaces its
    /// state (after every earlier apply); the log follows in the write
    /// queue (after every earlier write).
    fn install_in_state_machine(&mut self, i: usize, meta: SnapshotMeta, kv: Arc<Kv>) -> Check {
        let id = self.nodes[i].id;
        let index = meta.last_log_id.index;
        if index <= self.nodes[i].kv.applied {
            return Err(format!(
                "node {id}: asked to install snapshot {} but its state machine already applied \
                 up to {}: an install must only move the state machine forward",
                meta.last_log_id, self.nodes[i].kv.applied
            ));
        }
        self.reference.check(
            &kv,
            &format!("snapshot {} installed on node {id}", meta.last_log_id),
        )?;
        let node = &mut self.nodes[i];
        node.kv = (*kv).clone();
        node.snapshot = Some((meta.clone(), kv));
        node.writes.push_back(PendingWrite::Install(meta));
        self.record(Event::Snapshot {
            node: id,
            what: "installed in the state machine",
            index,
        });
        // This node will not apply the covered entries one by one: writes
        // proposed here for them can no longer be answered (they may or may
        // not be in the snapshot).
        for client in self.clients.skipped(i, index) {
            self.record(Event::GiveUp {
                client: client as u64,
                why: "snapshot installed over the proposal",
            });
        }
        if let Some(engine) = self.nodes[i].engine.as_mut() {
            engine.on_applied(index);
        }
        self.serve_reads(i);
        Ok(())
    }

    /// `Ready::install_snapshot`, second half: storage replaces the log by
    /// the snapshot; the install is complete.
    pub(super) fn complete_install(&mut self, i: usize, meta: SnapshotMeta) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        node.disk.install(&meta);
        node.installed += 1;
        self.snapshot_stats.installed += 1;
        self.record(Event::Snapshot {
            node: id,
            what: "installed in the log",
            index: meta.last_log_id.index,
        });
        if let Some(engine) = self.nodes[i].engine.as_mut() {
            engine.on_snapshot_installed(meta);
        }
        self.drain(i)
    }

    /// `Ready::compact_log`, once the writes before it are durable.
    pub(super) fn complete_compaction(&mut self, i: usize, c: LogCompaction) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        node.disk
            .compact(&c)
            .map_err(|e| format!("node {id}: {e}"))?;
        if node.disk.purged.index > node.kv.applied {
            return Err(format!(
                "node {id}: the log was purged up to {} but the state machine applied only up \
                 to {}: the entries in between are lost",
                node.disk.purged, node.kv.applied
            ));
        }
        self.snapshot_stats.compactions += 1;
        self.record(Event::Snapshot {
            node: id,
            what: "log compacted up to",
            index: c.purge_to,
        });
        Ok(())
    }
}
