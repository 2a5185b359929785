//! [`Fault::Replace`](super::Fault::Replace): a voter removed through the
//! API and replaced by a fresh node that joins, catches up and is promoted.

use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::error::ChaosError;
use crate::probe::{is_member, Probe};

/// Runs [`Fault::Replace`](super::Fault::Replace): removes `node` through
/// the cluster's API, stops it for good, starts a fresh node that joins as
/// a learner, waits for it to catch up and promotes it. Returns what
/// happened; a step that the cluster refuses (no leader, a change in
/// progress) ends it early, which is not a violation: the cluster must stay
/// correct either way.
///
/// # Errors
///
/// When the harness cannot start the new node.
pub async fn replace(
    cluster: &mut Cluster,
    probe: &Probe,
    node: u64,
    budget: Duration,
) -> Result<String, ChaosError> {
    if !cluster.can_join() {
        return Ok(format!(
            "no ids left for a new node; node {node} was not replaced"
        ));
    }
    let deadline = Instant::now() + budget;
    let others: Vec<(u64, String)> = cluster
        .urls()
        .into_iter()
        .filter(|(id, _)| *id != node)
        .collect();
    // 1. Remove it, until the membership no longer has it.
    if !remove_member(probe, &others, node, deadline).await {
        return Ok(format!(
            "node {node} could not be removed in {budget:?}; left as it was"
        ));
    }
    cluster.remove(node);
    // 2. A fresh node joins through a remaining member.
    let Some((_, via)) = others.first().cloned() else {
        return Ok(format!(
            "removed node {node}; no member left to join through"
        ));
    };
    let new = cluster.join_new(&via)?;
    let new_url = cluster
        .nodes
        .get(&new)
        .map(|n| n.url.clone())
        .unwrap_or_default();
    // 3. Catch up: applied at least the commit index seen now.
    let target = commit_index(probe, &others, deadline).await;
    if !applied_up_to(probe, &new_url, target, deadline).await {
        let joined = probe
            .any_status(&others)
            .await
            .is_some_and(|s| is_member(&s, new));
        if !joined {
            // Still trying to join (it gives up and exits after 60 s, which
            // is not a crash): the harness takes it away.
            cluster.remove_expecting_exit(new);
            return Ok(format!(
                "removed node {node}; node {new} did not get to join in {budget:?} and was stopped"
            ));
        }
        return Ok(format!(
            "removed node {node}; node {new} joined but did not catch up to {target}; left a learner"
        ));
    }
    // 4. Promote it.
    if promote_to_voter(probe, &via, &others, new, deadline).await {
        return Ok(format!("replaced node {node} by node {new}"));
    }
    Ok(format!(
        "removed node {node}; node {new} joined but was not promoted in time; left a learner"
    ))
}

/// Asks the `others` in turn (any node forwards to the leader) to remove
/// `node` until one of them reports a committed configuration without it;
/// whether that happened before `deadline`.
async fn remove_member(
    probe: &Probe,
    others: &[(u64, String)],
    node: u64,
    deadline: Instant,
) -> bool {
    let mut attempt = 0usize;
    while Instant::now() < deadline {
        // Another member each attempt: one may be restarting.
        attempt += 1;
        if let Some((_, via)) = others.get(attempt % others.len().max(1)) {
            probe.remove(via, node).await;
        }
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(s) = probe.any_status(others).await {
                if !is_member(&s, node) && s.membership.committed != Some(false) {
                    return true;
                }
            }
        }
    }
    false
}

/// The commit index the first of `others` to answer reports, asking until
/// one does; `u64::MAX` when none does before `deadline` (with no target,
/// an empty node would pass for caught up).
async fn commit_index(probe: &Probe, others: &[(u64, String)], deadline: Instant) -> u64 {
    while Instant::now() < deadline {
        if let Some(s) = probe.any_status(others).await {
            return s.commit;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    u64::MAX
}

/// Whether the node at `url` applied `target` before `deadline`.
async fn applied_up_to(probe: &Probe, url: &str, target: u64, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if probe.status(url).await.is_some_and(|s| s.applied >= target) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Asks the node at `via` to promote `new` until one of the `others`
/// reports it a voter; whether that happened before `deadline`.
async fn promote_to_voter(
    probe: &Probe,
    via: &str,
    others: &[(u64, String)],
    new: u64,
    deadline: Instant,
) -> bool {
    while Instant::now() < deadline {
        let answered = probe.promote(via, new).await;
        if let Some(s) = probe.any_status(others).await {
            if s.membership.voters.contains(&new) {
                return true;
            }
        }
        let pause = if answered { 200 } else { 300 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    false
}
