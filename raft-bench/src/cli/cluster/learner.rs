//! A raft-node that joins a running local cluster as a learner: how long
//! it takes to be added and to catch up (on a compacted log, by installing
//! the leader's snapshot), and its removal afterwards.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::members::raft_joiner;
use super::{check_running, start_process, LocalCluster, Member, CONTROL_TIMEOUT};
use crate::cli::System;

/// A learner process started by [`LocalCluster::add_learner`]; killed on
/// drop.
#[derive(Debug)]
pub struct Learner {
    member: Member,
}

impl Learner {
    /// Its node id.
    pub fn id(&self) -> u64 {
        self.member.id
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        if let Some(mut c) = self.member.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a new learner caught up.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUp {
    /// Its node id.
    pub id: u64,
    /// Seconds from its start to the leader listing it as a learner (its
    /// `POST /v1/cluster/learners` through `--join` committed).
    pub added_s: f64,
    /// Seconds from being added to having applied `target_index`.
    pub catch_up_s: f64,
    /// The leader's commit index when the learner was added.
    pub target_index: u64,
    /// The learner's applied index when it was seen caught up.
    pub applied_index: u64,
    /// The index of the snapshot it holds once caught up (installed from
    /// the leader; `None`: it caught up from the log alone).
    pub snapshot_index: Option<u64>,
}

impl LocalCluster {
    /// Starts one more raft-node (id one above the members'), which asks
    /// the leader to add it as a learner (`--join`, i.e. `POST
    /// /v1/cluster/learners`), and waits until it has applied everything
    /// the leader had committed when it was added.
    ///
    /// # Errors
    ///
    /// When the cluster is not raft-node, the process exits, or it is not
    /// caught up within `limit`.
    pub async fn add_learner(&self, limit: Duration) -> anyhow::Result<(Learner, CatchUp)> {
        if self.opts.system != System::Raft {
            bail!("only raft-node clusters take a learner");
        }
        let leader = self.leader().await?;
        let mut l = Learner {
            member: raft_joiner(&self.opts, self.dir(), &self.members[leader].url),
        };
        let id = l.id();
        let client = raft_client::Client::builder([l.member.url.as_str()])
            .request_timeout(CONTROL_TIMEOUT)
            .retry(raft_client::RetryPolicy::none())
            .build()?;
        let t0 = Instant::now();
        start_process(&self.opts.binary, &mut l.member)?;
        let mut added: Option<(f64, u64)> = None;
        loop {
            check_running(&mut l.member)?;
            if t0.elapsed() > limit {
                bail!(
                    "learner {id} did not catch up within {limit:?}; its log is {}",
                    l.member.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Some((added_s, target)) = added else {
                added = self.learner_added(leader, id).await.map(|commit| {
                    let s = t0.elapsed().as_secs_f64();
                    (s, commit)
                });
                continue;
            };
            let Ok(s) = client.status().await else {
                continue;
            };
            if s.applied >= target {
                let c = CatchUp {
                    id,
                    added_s,
                    catch_up_s: t0.elapsed().as_secs_f64() - added_s,
                    target_index: target,
                    applied_index: s.applied,
                    snapshot_index: s.snapshot.map(|s| s.index),
                };
                return Ok((l, c));
            }
        }
    }

    /// The leader's commit index once it lists `id` as a learner.
    async fn learner_added(&self, leader: usize, id: u64) -> Option<u64> {
        let s = tokio::time::timeout(CONTROL_TIMEOUT, self.raft[leader].status())
            .await
            .ok()?
            .ok()?;
        s.membership.learners.contains(&id).then_some(s.commit)
    }

    /// Removes the learner from the configuration (`DELETE
    /// /v1/cluster/members/{id}` through the leader) and stops it.
    ///
    /// # Errors
    ///
    /// When the removal is refused.
    pub async fn remove_learner(&self, l: Learner) -> anyhow::Result<()> {
        let leader = self.leader().await?;
        self.raft[leader]
            .remove(l.id())
            .await
            .with_context(|| format!("removing learner {}", l.id()))?;
        drop(l);
        Ok(())
    }
}
