//! Node-level faults of the fault phase, in virtual time: crashes with a
//! random downtime and the restart that follows, disks whose flush fails,
//! restarts that fail to read the disk, partitions that last a random
//! number of ticks, leadership transfers, snapshots asked for out of turn,
//! and membership changes (`churn.rs`).

use raft_core::engine::{Engine, Role};
use raft_core::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;

use super::{ApplyJob, Check, Holder, PendingWrite, World};
use crate::sim::trace::Event;

impl World {
    /// Runs at every tick of the fault phase.
    pub(super) fn inject_faults(&mut self) -> Check {
        let n = self.nodes.len();
        for i in 0..n {
            if self.nodes[i].engine.is_none() && self.nodes[i].restart_at <= self.now {
                if self.rng.gen_bool(0.1) {
                    // Reading the disk fails (`Raft::start` returns
                    // `StartError::Storage`): the node stays down until
                    // its operator tries again.
                    self.faults.read_errors += 1;
                    let id = self.nodes[i].id;
                    self.nodes[i].restart_at = self.now + self.rng.gen_range(1..=20);
                    self.record(Event::RestartFailed { node: id });
                    continue;
                }
                self.restart(i)?;
            }
        }
        if self.heal_at == Some(self.now) {
            self.heal_at = None;
            self.net.heal();
            self.record(Event::Heal);
        }
        let down = self.nodes.iter().filter(|n| n.engine.is_none()).count();
        // At most a bare majority down at once (all of a 1-node cluster).
        if down < n / 2 + 1 && self.rng.gen_bool(self.intensity * 0.03) {
            self.crash()?;
        }
        let down = self.nodes.iter().filter(|n| n.engine.is_none()).count();
        if down < n / 2 + 1 && self.rng.gen_bool(self.intensity * 0.01) {
            self.disk_fails()?;
        }
        if n > 1 && self.heal_at.is_none() && self.rng.gen_bool(self.intensity * 0.05) {
            self.partition();
        }
        if n > 1 && self.rng.gen_bool(self.intensity * 0.01) {
            self.transfer()?;
        }
        if self.rng.gen_bool(self.intensity * 0.01) {
            self.stall();
        }
        if self.rng.gen_bool(0.01) {
            self.request_snapshot()?;
        }
        if self.churn {
            self.churn()?;
        }
        Ok(())
    }

    fn crash(&mut self) -> Check {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some())
            .collect();
        let Some(&i) = live.choose(&mut self.rng) else {
            return Ok(());
        };
        self.faults.crashes += 1;
        self.take_down(i);
        // Back at once (a process restart) or after up to 30 ticks.
        if self.rng.gen_bool(0.4) {
            self.restart(i)?;
        } else {
            self.nodes[i].restart_at = self.now + self.rng.gen_range(1..=30);
        }
        Ok(())
    }

    /// A flush of a node's disk fails. The storage task reports the error
    /// for the oldest pending log write and stops; the driver stops with
    /// it: nothing more is sent, acknowledged or reported as durable (the
    /// messages waiting for that write are never sent), and the process
    /// exits. The failed write may have reached the disk whole or not at
    /// all: a batch is atomic, and a failed flush says nothing about which.
    /// The node comes back when its operator restarts it.
    fn disk_fails(&mut self) -> Check {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].engine.is_some()
                    && matches!(self.nodes[*i].writes.front(), Some(PendingWrite::Log(_)))
            })
            .collect();
        let Some(&i) = candidates.choose(&mut self.rng) else {
            return Ok(());
        };
        self.faults.disk_failures += 1;
        let failed = self.nodes[i].writes.pop_front().expect("checked above");
        let landed = self.rng.gen_bool(0.5);
        self.take_down(i);
        self.record(Event::DiskFailed {
            node: self.nodes[i].id,
            landed,
        });
        if landed {
            if let PendingWrite::Log(w) = failed {
                // Durable, but never reported: no message goes out and the
                // engine (gone) never learns it.
                self.complete_log_write(
                    i,
                    None,
                    w.hard_state,
                    w.truncate_from,
                    w.entries,
                    Vec::new(),
                )?;
            }
        }
        self.nodes[i].restart_at = self.now + self.rng.gen_range(5..=40);
        Ok(())
    }

    /// A node stops taking any input for 1-40 ticks of true time (its
    /// process paused by SIGSTOP, its engine task held up, its host
    /// starved), half the time the leader: no ticks, no messages (they wait
    /// in its queue), no storage or apply work, no client requests. Its
    /// clock goes on counting; when it resumes, the ticks it missed come
    /// first (see `tick`).
    fn stall(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some() && self.nodes[*i].stalled_until == 0)
            .collect();
        let leader = self
            .leader()
            .filter(|l| running.contains(l) && self.rng.gen_bool(0.5));
        let Some(i) = leader.or_else(|| running.choose(&mut self.rng).copied()) else {
            return;
        };
        let ticks = self.rng.gen_range(1..=40);
        self.faults.stalls += 1;
        self.nodes[i].stalled_until = self.now + ticks;
        let id = self.nodes[i].id;
        self.record(Event::Stall { node: id, ticks });
    }

    /// Node `i`'s process ends: everything not on its disk or in its state
    /// machine is gone.
    fn take_down(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.stalled_until = 0;
        node.missed_ticks = 0;
        let installing = node
            .to_apply
            .iter()
            .any(|j| matches!(j, ApplyJob::Install(..)))
            || node
                .writes
                .iter()
                .any(|w| matches!(w, PendingWrite::Install(_)));
        node.engine = None;
        let writes = node.writes.len();
        node.writes.clear();
        node.to_apply.clear();
        node.reads_ready.clear();
        node.reads_asked.clear();
        node.incoming = None;
        node.sending.clear();
        let lost = Holder {
            node: node.id,
            incarnation: node.incarnation,
        };
        node.incarnation += 1;
        let id = node.id;
        self.obs.forget_lost(lost);
        if installing {
            self.snapshot_stats.interrupted += 1;
        }
        self.record(Event::Crash { node: id, writes });
        for client in self.clients.node_crashed(i) {
            self.record(Event::GiveUp {
                client: client as u64,
                why: "node crashed",
            });
        }
    }

    /// Restarts node `i` from what survived: its log storage and its state
    /// machine, as `Raft::start` does.
    pub(super) fn restart(&mut self, i: usize) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        let applied = node.kv.applied;
        // As `Raft::start`: the log holding another entry at the applied
        // index than the state machine's snapshot also shows an install
        // interrupted between its halves (the log kept a conflicting suffix).
        let log_disagrees = match &node.snapshot {
            Some((meta, _)) => {
                let at = meta.last_log_id.index;
                at == applied
                    && at > node.disk.purged.index
                    && node.disk.last_index() >= at
                    && node.disk.term(at) != Some(meta.last_log_id.term)
            }
            None => false,
        };
        if applied > node.disk.end_index() || log_disagrees {
            // The state machine took a snapshot the log never recorded: an
            // install was interrupted between its two halves. Finish it.
            match &node.snapshot {
                Some((meta, _)) if meta.last_log_id.index == applied => {
                    node.disk.install(meta);
                    self.snapshot_stats.repaired += 1;
                    self.record(Event::Snapshot {
                        node: id,
                        what: "interrupted install completed at restart",
                        index: applied,
                    });
                }
                _ => {
                    return Err(format!(
                        "RESTART: node {id}'s state machine applied up to {applied} but its log \
                         ends at {} and no snapshot of the state machine explains it",
                        node.disk.end_index()
                    ))
                }
            }
        }
        let node = &mut self.nodes[i];
        if applied < node.disk.purged.index {
            return Err(format!(
                "RESTART: node {id}'s state machine applied only up to {applied} but its log \
                 was purged up to {}: the entries in between are gone",
                node.disk.purged
            ));
        }
        let mut cfg = node.cfg.clone();
        cfg.seed ^= u64::from(node.incarnation).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let initial =
            node.disk
                .initial_state(&node.bootstrap, applied, node.cfg.max_log_cache_bytes);
        let engine =
            Engine::new(cfg, initial).map_err(|e| format!("node {id}: restart refused: {e}"))?;
        let durable = node.disk.hard_state;
        if engine.term() < durable.term {
            return Err(format!(
                "node {id} restarted in term {} below its durable term {}",
                engine.term(),
                durable.term
            ));
        }
        if engine.commit_index() < durable.commit {
            return Err(format!(
                "node {id} restarted with commit {} below its durable commit {}",
                engine.commit_index(),
                durable.commit
            ));
        }
        let event = Event::Restart {
            node: id,
            term: engine.term(),
            commit: engine.commit_index(),
            last: (engine.last_log_id().index, engine.last_log_id().term),
            applied,
        };
        node.engine = Some(engine);
        node.seen_term = 0;
        node.seen_commit = 0;
        node.seen_role = Role::Follower;
        self.record(event);
        self.drain(i)
    }

    fn partition(&mut self) {
        let n = self.nodes.len() as NodeId;
        let x = self.rng.gen_range(1..=n);
        let kind = match self.rng.gen_range(0..5) {
            0 => {
                self.net.heal();
                for y in 1..=n {
                    self.net.cut(x, y);
                    self.net.cut(y, x);
                }
                "isolate"
            }
            1 => {
                self.net.heal();
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                for a in 1..=n {
                    for b in 1..=n {
                        if side[a as usize - 1] != side[b as usize - 1] {
                            self.net.cut(a, b);
                        }
                    }
                }
                "split"
            }
            2 => {
                self.net.heal();
                for y in 1..=n {
                    self.net.cut(x, y);
                }
                "mute (one-way out)"
            }
            3 => {
                self.net.heal();
                for y in 1..=n {
                    self.net.cut(y, x);
                }
                "deaf (one-way in)"
            }
            _ => {
                let y = self.rng.gen_range(1..=n);
                self.net.cut(x, y);
                "one-way link"
            }
        };
        self.faults.partitions += 1;
        self.heal_at = Some(self.now + self.rng.gen_range(3..=50));
        let cuts = self.net.cut_mask();
        if self.trace.verbose() {
            println!("    cut links: {}", self.net.describe_cuts());
        }
        self.record(Event::Partition { kind, cuts });
    }

    fn transfer(&mut self) -> Check {
        let Some(l) = self.leader().filter(|l| self.nodes[*l].stalled_until == 0) else {
            return Ok(());
        };
        let n = self.nodes.len() as NodeId;
        let to = self.rng.gen_range(1..=n);
        let from = self.nodes[l].id;
        let Some(engine) = self.nodes[l].engine.as_mut() else {
            return Ok(());
        };
        // Not to a voter that is on its way out (a voter of C_old only): it
        // would campaign in a configuration about to drop it.
        let m = engine.membership();
        if m.is_voter(to) && !m.voters().contains(&to) {
            return Ok(());
        }
        let ok = engine.transfer_leader(to).is_ok();
        self.faults.transfers += 1;
        self.record(Event::Transfer { from, to, ok });
        self.drain(l)
    }

    /// A snapshot asked of a random live node out of turn
    /// (`Engine::request_snapshot`).
    fn request_snapshot(&mut self) -> Check {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some() && self.nodes[*i].stalled_until == 0)
            .collect();
        let Some(&i) = live.choose(&mut self.rng) else {
            return Ok(());
        };
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return Ok(());
        };
        if engine.request_snapshot().is_ok() {
            self.snapshot_stats.requested += 1;
            let id = self.nodes[i].id;
            self.record(Event::Snapshot {
                node: id,
                what: "requested",
                index: 0,
            });
        }
        self.drain(i)
    }
}
