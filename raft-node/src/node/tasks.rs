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

/// The pause after a first attempt to record this node's gRPC URL that did
/// not show it recorded; it doubles after each, up to
/// [`PUBLISH_MAX_PAUSE`].
const PUBLISH_FIRST_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause between two attempts to record this node's gRPC URL.
const PUBLISH_MAX_PAUSE: Duration = Duration::from_secs(60);

/// How many times in a row the leader may accept this node's gRPC URL
/// without the URL showing up recorded in this node's store before the
/// node warns (it goes on trying): something else changes the URL each
/// time (an admin's `PUT /v1/cluster/members/{id}`), or this node's store
/// is far behind. (A leader of an earlier release refuses the request
/// with a 400; that counts as a failure and is retried, backing off.)
const PUBLISH_MAX_ACCEPTED: u32 = 5;

/// How many times a node records its gRPC URL again after it saw another
/// one replace it before it stops, with a warning, until its next start:
/// two processes with one node id (an old instance left running after a
/// move) would otherwise take turns for good, two log entries a check.
const PUBLISH_MAX_REPLACED: u32 = 3;

/// How many checks in a row must find this node's gRPC URL still recorded
/// before the replacements counted against [`PUBLISH_MAX_REPLACED`] are
/// forgotten: replacements weeks apart (an admin's `PUT` now and then)
/// are not two processes taking turns, and must not end the self-repair.
const PUBLISH_QUIET_CHECKS: u32 = 10;

/// How many refusals in a row (400, 401, 403: a token the leader does not
/// take, a leader of an earlier release) before the node warns, once per
/// run of refusals (it goes on trying).
const PUBLISH_MAX_REFUSED: u32 = 5;

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

/// What the publishing task does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublishStep {
    /// Not seen recorded: try again after this pause.
    Retry(Duration),
    /// Seen recorded after an attempt the leader accepted: check again
    /// after this pause (`--grpc-url-check-interval-ms`), in case another
    /// URL committed since (a request of an earlier run of this node that
    /// was still on its way, an admin's `PUT`).
    Recorded(Duration),
    /// This node was in a committed configuration and its own committed
    /// configuration no longer holds it: wait until it is a member again,
    /// then publish anew.
    Removed,
    /// Stop: another URL replaced this node's [`PUBLISH_MAX_REPLACED`]
    /// times.
    Contested,
}

/// The publishing task's state.
#[derive(Debug, Clone)]
struct PublishPolicy {
    /// The pause between two checks once the URL is recorded.
    check: Duration,
    /// Attempts made since the URL was last seen recorded.
    attempts: u32,
    /// Attempts the leader accepted since the URL was last seen recorded.
    unseen: u32,
    /// Whether the leader has accepted an attempt of this process.
    confirmed: bool,
    /// Whether the URL was seen recorded at the last step.
    seen: bool,
    /// How many times another URL replaced it after it was seen (forgotten
    /// after [`PUBLISH_QUIET_CHECKS`] checks without one).
    replaced: u32,
    /// Checks in a row that found the URL recorded.
    quiet: u32,
    /// Attempts refused in a row (400, 401, 403).
    refused: u32,
}

/// Where this node stands in the configuration, as its publishing task
/// sees it: only a removal its own committed configuration shows makes a
/// 404 from the leader a removal (the leader answers from its latest
/// configuration, which may never commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Never seen in a committed configuration: still joining.
    Joining,
    /// In its committed configuration, or it was and its latest
    /// configuration is not committed yet (a removal that may be undone).
    Member,
    /// It was in a committed configuration, and its latest one, committed,
    /// does not hold it.
    Removed,
}

impl PublishPolicy {
    /// A policy that checks a recorded URL again every `check`.
    fn new(check: Duration) -> Self {
        Self {
            check,
            attempts: 0,
            unseen: 0,
            confirmed: false,
            seen: false,
            replaced: 0,
            quiet: 0,
            refused: 0,
        }
    }

    /// The pause after `attempts` attempts: doubling from
    /// [`PUBLISH_FIRST_PAUSE`], at most [`PUBLISH_MAX_PAUSE`].
    fn pause(attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(16);
        PUBLISH_FIRST_PAUSE
            .saturating_mul(1 << doublings)
            .min(PUBLISH_MAX_PAUSE)
    }

    /// The next step once the URL is seen `recorded` or not in this
    /// node's store, after an attempt that answered `outcome` (none when
    /// no attempt was made yet); `standing` says where this node stands
    /// (a 404 is a removal only when it is [`Standing::Removed`]).
    ///
    /// The URL counts as recorded only after the leader accepted an
    /// attempt of this process: this node's own store can be behind the
    /// log (another URL committed while it was down or cut off), so the
    /// URL is published at least once per start, and the leader compares
    /// it with its replicated record after a read barrier.
    fn next(
        &mut self,
        recorded: bool,
        outcome: Option<&Result<(), crate::http::PublishError>>,
        standing: Standing,
    ) -> PublishStep {
        let accepted = matches!(outcome, Some(Ok(())));
        match outcome {
            None => return PublishStep::Retry(Duration::ZERO),
            Some(Err(crate::http::PublishError::NotMember)) if standing == Standing::Removed => {
                return PublishStep::Removed
            }
            Some(Err(crate::http::PublishError::Refused(_))) => self.refused += 1,
            Some(_) => self.refused = 0,
        }
        self.confirmed |= accepted;
        if recorded && self.confirmed {
            self.attempts = 0;
            self.unseen = 0;
            if std::mem::replace(&mut self.seen, true) {
                self.quiet += 1;
                if self.quiet >= PUBLISH_QUIET_CHECKS {
                    self.replaced = 0;
                }
            }
            return PublishStep::Recorded(self.check);
        }
        if std::mem::take(&mut self.seen) {
            self.quiet = 0;
            self.replaced += 1;
            if self.replaced >= PUBLISH_MAX_REPLACED {
                return PublishStep::Contested;
            }
        }
        self.unseen += u32::from(accepted);
        self.attempts += 1;
        PublishStep::Retry(Self::pause(self.attempts))
    }

    /// Whether the leader has just accepted the URL
    /// [`PUBLISH_MAX_ACCEPTED`] times in a row without this node seeing
    /// it recorded (worth a warning, once).
    fn stuck(&self) -> bool {
        self.unseen == PUBLISH_MAX_ACCEPTED
    }

    /// Whether the leader has just refused the URL
    /// [`PUBLISH_MAX_REFUSED`] times in a row (worth a warning, once per
    /// run of refusals).
    fn refusing(&self) -> bool {
        self.refused == PUBLISH_MAX_REFUSED
    }
}

/// Whether a configuration (`membership`, `committed` or not) holds node
/// `id` for good: only then does a 404 from the leader mean it was
/// removed. A configuration not yet committed (a joiner's learner entry)
/// can still be truncated by a new leader, and the node added again later.
fn counts_as_member(membership: &raft_core::Membership, committed: bool, id: NodeId) -> bool {
    committed && membership.contains(id)
}

/// Where node `id` stands given its latest configuration (`membership`,
/// `committed` or not) and whether it `was_member` of a committed one
/// before. A latest configuration without it that is not committed yet
/// (the leader appended its removal) may still be truncated: it stays a
/// member until the removal commits.
fn standing(
    membership: &raft_core::Membership,
    committed: bool,
    id: NodeId,
    was_member: bool,
) -> Standing {
    if counts_as_member(membership, committed, id) {
        Standing::Member
    } else if !was_member {
        Standing::Joining
    } else if committed {
        Standing::Removed
    } else {
        Standing::Member
    }
}

/// Records this node's gRPC URL (`url`; none for a node without a gRPC
/// listener, which clears a URL recorded before) through the log, the URL
/// alone (`PUT /v1/cluster/members/{id} {"grpc_url": ...}`), so every
/// member's `Cluster.MemberList` lists it. Published at least once per
/// start (this node's own store may be behind the log); the leader
/// proposes nothing when its replicated record, read after a read
/// barrier, has it already (a restart with the same address). Retries
/// with a doubling pause (up to [`PUBLISH_MAX_PAUSE`]) until the URL shows
/// up recorded, then checks again every `--grpc-url-check-interval-ms`
/// (no log entry unless another URL was recorded since: the node's own
/// URL wins); stops when this node was removed from a committed
/// configuration. Warns when the leader accepted it
/// [`PUBLISH_MAX_ACCEPTED`] times in a row without this node seeing it.
pub(super) fn publish_grpc_url(state: Arc<AppState>, url: Option<String>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let id = state.id;
        let mut policy = PublishPolicy::new(state.cfg.grpc_url_check_interval);
        let mut outcome = None;
        let mut was_member = false;
        let mut seen = false;
        // Where this node stands, from its own configuration (`None`: the
        // driver did not answer).
        let standing_now = |was_member: bool| {
            let state = state.clone();
            async move {
                let s = state.raft.status().await?;
                Some(standing(
                    &s.engine.membership,
                    s.engine.membership_committed,
                    id,
                    was_member,
                ))
            }
        };
        loop {
            let recorded = state
                .members
                .with_replicated()
                .iter()
                .any(|m| m.id == id && m.grpc_url == url);
            let now = standing_now(was_member).await.unwrap_or(if was_member {
                Standing::Member
            } else {
                Standing::Joining
            });
            was_member |= now == Standing::Member;
            match policy.next(recorded, outcome.as_ref(), now) {
                PublishStep::Recorded(pause) => {
                    if !seen {
                        tracing::info!(id, grpc_url = ?url, "this node's gRPC URL is recorded");
                    }
                    seen = true;
                    tokio::time::sleep(pause).await;
                }
                PublishStep::Removed => {
                    tracing::info!(
                        id,
                        "not a member any more: this node's gRPC URL is not published \
                         until it is added again"
                    );
                    // A node removed and added again (with the same
                    // addresses, while it runs) publishes its URL anew.
                    while standing_now(true).await != Some(Standing::Member) {
                        tokio::time::sleep(PUBLISH_FIRST_PAUSE).await;
                    }
                    tracing::info!(id, "a member again: publishing this node's gRPC URL");
                    policy = PublishPolicy::new(state.cfg.grpc_url_check_interval);
                    outcome = None;
                    seen = false;
                    continue;
                }
                PublishStep::Contested => {
                    tracing::warn!(
                        id,
                        grpc_url = ?url,
                        times = PUBLISH_MAX_REPLACED,
                        "another gRPC URL was recorded for this node {PUBLISH_MAX_REPLACED} times \
                         after its own (another process with this node's id? an admin's PUT?); \
                         not recording it again until this node restarts"
                    );
                    return;
                }
                PublishStep::Retry(pause) => {
                    if seen {
                        tracing::info!(
                            id,
                            grpc_url = ?url,
                            "another gRPC URL was recorded for this node; recording its own again"
                        );
                    }
                    seen = false;
                    if policy.refusing() {
                        tracing::warn!(
                            id,
                            grpc_url = ?url,
                            refused = PUBLISH_MAX_REFUSED,
                            "the leader refused this node's gRPC URL {PUBLISH_MAX_REFUSED} \
                             times in a row (a token it does not take, --admin-token? a \
                             leader of an earlier release?); still trying"
                        );
                    }
                    if policy.stuck() {
                        tracing::warn!(
                            id,
                            grpc_url = ?url,
                            accepted = PUBLISH_MAX_ACCEPTED,
                            "the leader accepted this node's gRPC URL {PUBLISH_MAX_ACCEPTED} \
                             times and this node never saw it recorded (changed again by \
                             someone else, or this node's store is far behind?); still trying"
                        );
                    }
                    tokio::time::sleep(pause).await;
                }
            }
            let answer = crate::http::publish_own_grpc_url(state.clone(), url.clone()).await;
            if let Err(e) = &answer {
                // Expected while there is no leader yet or this node is
                // still joining.
                let why = match e {
                    crate::http::PublishError::NotMember => "not a member (yet)".to_owned(),
                    crate::http::PublishError::Refused(status) => format!("refused: {status}"),
                    crate::http::PublishError::Other(why) => why.clone(),
                };
                tracing::debug!(id, error = %why, "gRPC URL not recorded yet");
            }
            outcome = Some(answer);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        counts_as_member, standing, PublishPolicy, PublishStep, Standing, PUBLISH_MAX_ACCEPTED,
        PUBLISH_MAX_PAUSE, PUBLISH_MAX_REFUSED, PUBLISH_MAX_REPLACED, PUBLISH_QUIET_CHECKS,
    };
    use crate::http::PublishError;

    const CHECK: Duration = Duration::from_secs(60);

    /// Review finding (MEDIUM): the URL found in this node's own store
    /// ended the publishing before any attempt, but that store can be
    /// behind the log. It counts only after an attempt the leader accepted.
    #[test]
    fn the_own_store_is_not_trusted_before_an_accepted_attempt() {
        let mut p = PublishPolicy::new(CHECK);
        assert_eq!(
            p.next(true, None, Standing::Member),
            PublishStep::Retry(Duration::ZERO)
        );
        let failed = Err(PublishError::Other("no leader".into()));
        assert!(matches!(
            p.next(true, Some(&failed), Standing::Member),
            PublishStep::Retry(_)
        ));
        assert_eq!(
            p.next(true, Some(&Ok(())), Standing::Member),
            PublishStep::Recorded(CHECK)
        );
    }

    /// Review finding (MEDIUM): two processes with one node id (an old
    /// instance left running after a move) each recorded its URL again
    /// after every check, for good: a node stops after its URL was
    /// replaced [`PUBLISH_MAX_REPLACED`] times.
    #[test]
    fn a_node_whose_url_keeps_being_replaced_stops_recording_it() {
        let mut p = PublishPolicy::new(CHECK);
        assert_eq!(
            p.next(false, None, Standing::Member),
            PublishStep::Retry(Duration::ZERO)
        );
        let mut steps = Vec::new();
        for _ in 0..PUBLISH_MAX_REPLACED {
            // Recorded, then replaced at the next check.
            assert_eq!(
                p.next(true, Some(&Ok(())), Standing::Member),
                PublishStep::Recorded(CHECK)
            );
            steps.push(p.next(false, Some(&Ok(())), Standing::Member));
        }
        let last = steps.pop();
        assert!(
            steps.iter().all(|s| matches!(s, PublishStep::Retry(_))),
            "{steps:?}"
        );
        assert_eq!(last, Some(PublishStep::Contested));
    }

    /// Review finding (MEDIUM): a joiner whose learner entry was not yet
    /// committed (a new leader may truncate it) took the leader's 404 for
    /// a removal and stopped publishing for good.
    #[test]
    fn only_a_committed_configuration_makes_a_404_a_removal() {
        let with_joiner = raft_core::Membership::with_learners([1, 2, 3], [4]);
        assert!(!counts_as_member(&with_joiner, false, 4));
        assert!(counts_as_member(&with_joiner, true, 4));
        assert!(!counts_as_member(
            &raft_core::Membership::new([1, 2, 3]),
            true,
            4
        ));
    }

    /// Finding B3: the publish retried every second forever, also for a
    /// removed node. Review finding (MEDIUM): once recorded it stopped, so
    /// a URL committed after it (a request of the node's earlier run still
    /// on its way) stayed; it checks again every interval, and publishes
    /// again when another URL shows up.
    #[test]
    fn publishing_backs_off_stops_when_removed_and_checks_again_once_recorded() {
        let other = || Err(PublishError::Other("no leader".into()));
        // Failures back off, doubling up to the cap.
        let mut p = PublishPolicy::new(CHECK);
        assert_eq!(
            p.next(false, None, Standing::Member),
            PublishStep::Retry(Duration::ZERO)
        );
        let pauses: Vec<Duration> = (0..10)
            .map(|_| match p.next(false, Some(&other()), Standing::Member) {
                PublishStep::Retry(d) => d,
                s => panic!("{s:?}"),
            })
            .collect();
        let secs: Vec<u64> = pauses.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert!(pauses.iter().all(|d| *d <= PUBLISH_MAX_PAUSE));
        // Recorded: check again after the interval; a failed check of a
        // recorded URL waits for the next one.
        assert_eq!(
            p.next(true, Some(&Ok(())), Standing::Member),
            PublishStep::Recorded(CHECK)
        );
        assert_eq!(
            p.next(true, Some(&other()), Standing::Member),
            PublishStep::Recorded(CHECK)
        );
        // Another URL shows up: publish again, from the first pause.
        assert_eq!(
            p.next(false, Some(&Ok(())), Standing::Member),
            PublishStep::Retry(Duration::from_secs(1))
        );
        // A 404 for a node that was a member: removed, stop.
        let mut p = PublishPolicy::new(CHECK);
        assert_eq!(
            p.next(
                false,
                Some(&Err(PublishError::NotMember)),
                Standing::Removed
            ),
            PublishStep::Removed
        );
        // A 404 before it ever was one: still joining, retry.
        assert!(matches!(
            p.next(
                false,
                Some(&Err(PublishError::NotMember)),
                Standing::Joining
            ),
            PublishStep::Retry(_)
        ));
        // Accepted and never seen recorded: a warning once, after the
        // limit, and it goes on.
        let mut p = PublishPolicy::new(CHECK);
        let stuck: Vec<bool> = (0..PUBLISH_MAX_ACCEPTED + 2)
            .map(|_| {
                assert!(matches!(
                    p.next(false, Some(&Ok(())), Standing::Member),
                    PublishStep::Retry(_)
                ));
                p.stuck()
            })
            .collect();
        let at = usize::try_from(PUBLISH_MAX_ACCEPTED - 1).unwrap();
        assert!(stuck[at] && stuck.iter().filter(|s| **s).count() == 1);
    }

    /// Review finding (MEDIUM): the leader answers 404 from its latest
    /// configuration, which may not commit (a removal truncated later):
    /// the task ended for good and the node, still a member, never
    /// repaired its URL. A 404 is a removal only when the node's own
    /// committed configuration no longer holds it.
    #[test]
    fn a_404_while_the_own_committed_configuration_holds_the_node_is_retried() {
        let mut p = PublishPolicy::new(CHECK);
        assert_eq!(
            p.next(false, None, Standing::Member),
            PublishStep::Retry(Duration::ZERO)
        );
        let not_member = Err(PublishError::NotMember);
        assert!(matches!(
            p.next(false, Some(&not_member), Standing::Member),
            PublishStep::Retry(_)
        ));
        // The leader appended Remove(4); node 4 has it, not committed: still
        // a member (the entry may be truncated).
        let without = raft_core::Membership::new([1, 2, 3]);
        let with = raft_core::Membership::new([1, 2, 3, 4]);
        assert_eq!(standing(&without, false, 4, true), Standing::Member);
        assert_eq!(standing(&with, true, 4, true), Standing::Member);
        assert_eq!(standing(&with, false, 4, true), Standing::Member);
        // Committed: removed.
        assert_eq!(standing(&without, true, 4, true), Standing::Removed);
        assert_eq!(
            p.next(false, Some(&not_member), Standing::Removed),
            PublishStep::Removed
        );
        // Never a member of a committed configuration: joining.
        assert_eq!(standing(&without, true, 4, false), Standing::Joining);
        assert_eq!(standing(&with, false, 4, false), Standing::Joining);
    }

    /// Review finding (LOW): the replacement count never went down, so 3
    /// replacements weeks apart (an admin's `PUT` now and then) ended the
    /// self-repair until the next restart. It is forgotten after
    /// [`PUBLISH_QUIET_CHECKS`] checks that found the URL recorded.
    #[test]
    fn replacements_far_apart_do_not_stop_the_checks() {
        let mut p = PublishPolicy::new(CHECK);
        p.next(false, None, Standing::Member);
        for round in 0..3 * PUBLISH_MAX_REPLACED {
            for _ in 0..=PUBLISH_QUIET_CHECKS {
                assert_eq!(
                    p.next(true, Some(&Ok(())), Standing::Member),
                    PublishStep::Recorded(CHECK),
                    "round {round}"
                );
            }
            // Replaced by someone else: recorded again.
            assert!(
                matches!(
                    p.next(false, Some(&Ok(())), Standing::Member),
                    PublishStep::Retry(_)
                ),
                "round {round}"
            );
        }
    }

    /// Review finding (LOW): refusals of the publish request (a token the
    /// leader does not take) were only logged at debug level. The node
    /// warns after [`PUBLISH_MAX_REFUSED`] in a row, once per run.
    #[test]
    fn refusals_in_a_row_are_worth_one_warning_per_run() {
        let refused = || Err(PublishError::Refused(axum::http::StatusCode::FORBIDDEN));
        let other = || Err(PublishError::Other("no leader".into()));
        let mut p = PublishPolicy::new(CHECK);
        p.next(false, None, Standing::Member);
        let warn = |p: &mut PublishPolicy, outcome: Result<(), PublishError>| {
            assert!(matches!(
                p.next(false, Some(&outcome), Standing::Member),
                PublishStep::Retry(_)
            ));
            p.refusing()
        };
        let warnings: Vec<bool> = (0..2 * PUBLISH_MAX_REFUSED)
            .map(|_| warn(&mut p, refused()))
            .collect();
        let at = usize::try_from(PUBLISH_MAX_REFUSED - 1).unwrap();
        assert!(warnings[at] && warnings.iter().filter(|w| **w).count() == 1);
        // Another answer ends the run; the next run warns again.
        assert!(!warn(&mut p, other()));
        let again: Vec<bool> = (0..PUBLISH_MAX_REFUSED)
            .map(|_| warn(&mut p, refused()))
            .collect();
        assert_eq!(again.iter().filter(|w| **w).count(), 1);
        // Refusals not in a row: no warning.
        let mut p = PublishPolicy::new(CHECK);
        p.next(false, None, Standing::Member);
        for _ in 0..3 * PUBLISH_MAX_REFUSED {
            assert!(!warn(&mut p, refused()));
            assert!(!warn(&mut p, other()));
        }
    }
}
