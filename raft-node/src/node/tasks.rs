//! The node's background tasks: the storage stall watch, and following the
//! member addresses and the configuration the log replicates (peers to
//! dial, peers allowed in, and the member directory).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use raft_core::{NodeId, RaftHandle};
use raft_net_quic::QuicTransport;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::command::Outcome;
use crate::config::Member;
use crate::http::AppState;
use crate::members::MemberDirectory;
use crate::store::KvReader;

/// How often the configuration in force is checked for changes.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(200);

/// The pause between two attempts to record this node's gRPC URL.
const PUBLISH_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How often the storage stall watch looks.
const STALL_POLL: Duration = Duration::from_millis(500);

/// Says in the log when a log write runs past `limit`
/// (`--storage-stall-timeout-ms`) and when it returns: a write that hangs
/// records no duration anywhere else, and a restart by a liveness probe
/// should leave a reason.
pub(super) fn watch_storage_stalls(raft: RaftHandle<Outcome>, limit: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stalled = false;
        let mut tick = tokio::time::interval(STALL_POLL);
        loop {
            tick.tick().await;
            let busy = raft.storage_busy_for();
            match (stalled, busy) {
                (false, Some(b)) if b > limit => {
                    stalled = true;
                    tracing::warn!(
                        busy_seconds = b.as_secs_f64(),
                        "a log write is still running: the disk is not answering; \
                         /healthz and /readyz answer 503 until it returns"
                    );
                }
                (true, b) if b.is_none_or(|b| b <= limit) => {
                    stalled = false;
                    tracing::info!("the stalled log write returned; storage answers again");
                }
                _ => {}
            }
        }
    })
}

/// Follows the member addresses the log replicates: peers to dial, leaders
/// to forward to, and what a restart starts from.
pub(super) fn follow_addresses(
    id: NodeId,
    mut changed: watch::Receiver<u64>,
    reader: KvReader,
    transport: QuicTransport,
    directory: MemberDirectory,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            let Ok(replicated) = reader.members() else {
                continue;
            };
            match directory.learn(replicated) {
                Ok(new) => {
                    for m in new.into_iter().filter(|m| m.id != id) {
                        tracing::info!(peer = m.id, addr = %m.peer_addr, "member address learned");
                        transport.add_peer(m.id, m.peer_addr);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "saving member addresses failed"),
            }
        }
    })
}

/// Follows the configuration: only its members, and nodes whose addresses
/// were recorded to be added, may connect and send; a node removed by a
/// committed configuration loses its peer entry, its connections and its
/// address record here (the replicated record is deleted when the
/// configuration is applied).
pub(super) fn follow_configuration(
    id: NodeId,
    raft: RaftHandle<Outcome>,
    reader: KvReader,
    transport: QuicTransport,
    directory: MemberDirectory,
    join_admission: Duration,
) -> JoinHandle<()> {
    let mut admission = crate::admission::JoinAdmission::new(join_admission);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MEMBERSHIP_POLL);
        let mut last = None;
        loop {
            tick.tick().await;
            let Some(s) = raft.status().await else { break };
            let Ok(recorded) = reader.members() else {
                continue;
            };
            let config = s.engine.membership.members();
            let expired = admission.expired(
                &config,
                recorded.iter().map(|m| m.id),
                std::time::Instant::now(),
            );
            let seen = (
                config.clone(),
                s.engine.membership_committed,
                recorded.clone(),
                s.engine.leader,
                expired.clone(),
            );
            if last.as_ref() == Some(&seen) {
                continue;
            }
            last = Some(seen);
            let view = ConfigView {
                config: &config,
                leader: s.engine.leader,
                committed: s.engine.membership_committed,
                recorded: &recorded,
                expired: &expired,
            };
            follow_membership(id, &view, &transport, &directory);
        }
    })
}

/// The configuration in force, as [`follow_membership`] applies it.
struct ConfigView<'a> {
    /// Its members.
    config: &'a BTreeSet<NodeId>,
    /// The leader this node follows.
    leader: Option<NodeId>,
    /// Whether it is committed (before, it may still be undone).
    committed: bool,
    /// The replicated address records.
    recorded: &'a [Member],
    /// Recorded nodes not in the configuration past
    /// `--join-admission-secs`: failed joins, no longer let in.
    expired: &'a BTreeSet<NodeId>,
}

/// Applies the configuration in force and the replicated address records
/// to the transport and the member directory.
fn follow_membership(
    id: NodeId,
    view: &ConfigView<'_>,
    transport: &QuicTransport,
    directory: &MemberDirectory,
) {
    let config = view.config;
    if config.is_empty() || !config.contains(&id) {
        // A joining node that has not yet applied the configuration adding
        // it: what it holds (an old snapshot's, or an entry replayed on the
        // way) may predate the leader that is bringing it up, so it narrows
        // nothing; its peer table (the members it joined through) decides.
        transport.set_allowed_peers(None);
        return;
    }
    let known = directory.ids();
    // While the configuration is not committed it may still be undone, and
    // the nodes of the one before still count (an original member removed
    // by it has no address record): everyone in the directory stays.
    let keep_known = if view.committed {
        Vec::new()
    } else {
        known.clone()
    };
    // The leader this node follows is never cut off: its configuration
    // may be newer than what this node has applied. A recorded node not in
    // the configuration past `--join-admission-secs` (a failed join) is
    // no longer let in; its record and address stay for a later join.
    let allowed: HashSet<NodeId> = config
        .iter()
        .copied()
        .chain(
            view.recorded
                .iter()
                .map(|m| m.id)
                .filter(|p| !view.expired.contains(p)),
        )
        .chain(keep_known)
        .chain(view.leader)
        .filter(|p| *p != id)
        .collect();
    transport.set_allowed_peers(Some(allowed.clone()));
    if view.committed {
        // Removed for good: no configuration holds it and its address
        // record is gone. (Before the commit the removal may still be
        // undone, and the address would be needed again.)
        let gone: Vec<NodeId> = known
            .into_iter()
            .chain(transport.peers().into_iter().map(|(p, _)| p))
            .filter(|p| *p != id && !allowed.contains(p) && !view.expired.contains(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for p in &gone {
            tracing::info!(
                peer = p,
                "member removed: dropping its address and connections"
            );
            transport.remove_peer(*p);
        }
        if let Err(e) = directory.forget(&gone) {
            tracing::warn!(error = %e, "saving member addresses failed");
        }
    }
    // A member the transport lost (a removal that was undone): dial it again.
    let dialed: HashSet<NodeId> = transport.peers().into_iter().map(|(p, _)| p).collect();
    for p in config {
        if *p != id && !dialed.contains(p) {
            if let Some(m) = directory.get(*p) {
                transport.add_peer(*p, m.peer_addr);
            }
        }
    }
}

/// Records this node's gRPC URL (`url`) with its addresses through the log
/// (as `PUT /v1/cluster/members/{id}` does), retrying until it is recorded,
/// so every member's `Cluster.MemberList` lists it. Nothing is proposed
/// when the member directory has it already (a restart with the same
/// address).
pub(super) fn publish_grpc_url(state: Arc<AppState>, url: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let id = state.id;
        let mut attempt = 0u32;
        loop {
            let recorded = state.members.with_replicated();
            let mine = recorded.iter().find(|m| m.id == id);
            if mine.is_some_and(|m| m.grpc_url.as_deref() == Some(url.as_str())) {
                tracing::debug!(id, %url, "the gRPC URL is recorded");
                return;
            }
            attempt += 1;
            match crate::http::publish_own_addresses(state.clone(), Some(url.clone())).await {
                Ok(()) => {
                    tracing::info!(id, %url, "recorded this node's gRPC URL");
                    return;
                }
                // Expected while there is no leader yet or this node is
                // still joining.
                Err(e) => tracing::debug!(id, attempt, error = %e, "gRPC URL not recorded yet"),
            }
            tokio::time::sleep(PUBLISH_RETRY_PAUSE).await;
        }
    })
}
