//! Convergence after healing: the replicas are the members of the
//! committed configuration; they agree on a leader, answer a final read of
//! every key, and hold the same data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::verdict::Findings;
use crate::check::{self, Violation};
use crate::client::{final_read, node_client, Recorder};
use crate::cluster::Cluster;
use crate::error::ChaosError;
use crate::probe::Probe;

/// Time for the final reads of every key after healing, all keys together.
const FINAL_READS_BUDGET: Duration = Duration::from_secs(60);

/// Longest time for one key's final read, within the budget.
const FINAL_READ_MAX: Duration = Duration::from_secs(30);

/// Time for a leader the committed configuration is read from.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(30);

/// Time for the replicas to agree on a leader, and then on their data.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks that the healed cluster converges, into `found`; returns the
/// value each key was read to have at the end (absent: `None`), for the
/// keys some node answered a read of.
///
/// # Errors
///
/// When the reads' client cannot be built.
pub(super) async fn converge(
    cluster: &Cluster,
    probe: &Probe,
    rec: &Recorder,
    found: &mut Findings,
) -> Result<BTreeMap<Vec<u8>, Option<Vec<u8>>>, ChaosError> {
    let urls = replicas(cluster, probe, found).await;
    if let Err(e) = probe.wait_for_leader(&urls, CONVERGENCE_TIMEOUT).await {
        found.violation("no-convergence", format!("after healing: {e}"));
    }
    let finals = final_reads(&urls, rec, found).await?;
    match check::replicas_converge(probe, &urls, CONVERGENCE_TIMEOUT).await {
        Ok(note) => found.notes.push(note),
        Err(v) => found.violations.push(v),
    }
    Ok(finals)
}

/// The nodes there are now (replaced ones are gone), less those the
/// committed configuration leaves out: a node whose removal the harness
/// gave up on but which committed later is no replica either.
async fn replicas(cluster: &Cluster, probe: &Probe, found: &mut Findings) -> Vec<(u64, String)> {
    let mut urls = cluster.urls();
    if let Some(members) = committed_members(probe, &urls, MEMBERS_TIMEOUT).await {
        let gone: Vec<u64> = urls
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !members.contains(id))
            .collect();
        if !gone.is_empty() {
            found.notes.push(format!(
                "nodes {gone:?} are no longer members: left out of the convergence checks"
            ));
            urls.retain(|(id, _)| members.contains(id));
        }
    }
    urls
}

/// The members (voters and learners) of the configuration the leader
/// reports as committed, once a majority of the nodes follow that leader.
async fn committed_members(
    probe: &Probe,
    urls: &[(u64, String)],
    timeout: Duration,
) -> Option<BTreeSet<u64>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut statuses = Vec::new();
        for (_, url) in urls {
            statuses.extend(probe.status(url).await);
        }
        // The leader of the highest term, and only once most nodes follow
        // it: a leader that was just unpaused may not know it was deposed.
        let leader = statuses
            .iter()
            .filter(|s| s.role == "leader" && s.membership.committed == Some(true))
            .max_by_key(|s| s.term);
        if let Some(l) = leader {
            let following = statuses
                .iter()
                .filter(|s| s.leader == Some(l.id) && s.term == l.term)
                .count();
            if following * 2 > urls.len() {
                let m = &l.membership;
                return Some(
                    m.voters
                        .iter()
                        .chain(&m.learners)
                        .chain(&m.outgoing_voters)
                        .copied()
                        .collect(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Reads every key of the history once more, through the nodes in turn,
/// within [`FINAL_READS_BUDGET`] for all of them (a cluster that cannot
/// answer fails them all within it, instead of costing 30 s per key). A
/// key no node answered for is a `no-convergence` violation.
async fn final_reads(
    urls: &[(u64, String)],
    rec: &Recorder,
    found: &mut Findings,
) -> Result<BTreeMap<Vec<u8>, Option<Vec<u8>>>, ChaosError> {
    let node_urls: Vec<String> = urls.iter().map(|(_, u)| u.clone()).collect();
    let keys: BTreeSet<Vec<u8>> = rec.history().ops().iter().map(|o| o.key.clone()).collect();
    let mut finals = BTreeMap::new();
    let deadline = Instant::now() + FINAL_READS_BUDGET;
    // Its settings are those of the harness's other requests.
    let reader = node_urls
        .first()
        .map(|u| node_client(u, Duration::from_secs(5), 4))
        .transpose()?;
    for key in &keys {
        let key_s = String::from_utf8_lossy(key).into_owned();
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(FINAL_READ_MAX);
        let read = match &reader {
            Some(r) if !left.is_zero() => final_read(r, rec, &node_urls, &key_s, left).await,
            _ => None,
        };
        match read {
            Some(v) => {
                finals.insert(key.clone(), v);
            }
            None => found.violations.push(Violation {
                check: "no-convergence",
                detail: format!(
                    "no node answered a read of {key_s} after healing (within {} s for all final reads)",
                    FINAL_READS_BUDGET.as_secs()
                ),
                key: Some(key.clone()),
                focus: Vec::new(),
            }),
        }
    }
    Ok(finals)
}
