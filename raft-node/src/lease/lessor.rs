//! The leader's lease deadlines, in memory, and the task that revokes
//! expired leases (like etcd's lessor).
//!
//! - Only the leader keeps deadlines (monotonic [`Instant`]s). When a
//!   node becomes leader, every lease gets its full TTL and an election
//!   timeout from then on (etcd extends leases so on a leader change: the
//!   old leader's clock is gone, and a keep-alive it answered just before
//!   the election must still hold).
//!   A node that stops leading forgets them.
//! - A keep-alive on the leader ([`Lessor::keep_alive`]) resets a lease's
//!   deadline to now + its TTL; nothing goes through the log. It is refused
//!   while the lease's revoke is proposed and may still apply (as etcd's
//!   lessor refuses to renew an expired lease): a keep-alive never promises
//!   a TTL that a revoke already in the log takes away.
//! - Every [`TICK`], the task proposes a [`LeaseRevoke`] for each lease
//!   past its deadline, at most `--lease-revokes-per-second`, and retries
//!   one whose proposal was certainly not appended on a later tick. One
//!   whose outcome is unknown (a timeout: it may still commit) stays
//!   "being revoked" until the store shows the lease gone or the term
//!   ends. The revoke names the leader's term (see [`crate::lease`]).
//! - The task reads the leases from the store every [`RESCAN`] (and when
//!   it becomes leader): a lease granted since gets its TTL from when it is
//!   seen, so it may live up to [`RESCAN`] longer than asked; a lease
//!   revoked since is dropped.
//!
//! Followers never expire anything.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_core::{RaftHandle, Role};
use tokio::task::JoinHandle;

use super::{LeaseLimits, LeaseRevoke};
use crate::command::Outcome;
use crate::store::KvReader;

/// How often deadlines are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// How often the leader reads the leases from the store.
pub const RESCAN: Duration = Duration::from_secs(1);

/// The leader's deadlines; empty on a follower.
#[derive(Debug, Default)]
struct Deadlines {
    /// The term this node leads, as the lessor knows it.
    term: Option<u64>,
    /// Each lease's deadline and TTL.
    leases: HashMap<u64, (Instant, Duration)>,
    /// Leases of this term whose revoke is proposed and may still apply.
    revoking: HashSet<u64>,
}

/// How the proposal of an expiry's revoke ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RevokeEnd {
    /// Applied: the lease no longer exists.
    Gone,
    /// Certainly not applied (never appended, superseded, or a no-op):
    /// the lease may be kept alive, and is revoked again once expired.
    NotApplied,
    /// It may still apply later (a timeout): still being revoked.
    Unknown,
}

impl RevokeEnd {
    fn of(result: &Result<Outcome, raft_core::ProposeError>) -> Self {
        use raft_core::ProposeError as E;
        match result {
            Ok(Outcome::LeaseRevoked { .. } | Outcome::LeaseRefused(_)) => RevokeEnd::Gone,
            Ok(_)
            | Err(
                E::NotLeader { .. }
                | E::TransferInProgress
                | E::Overloaded
                | E::Superseded { .. }
                | E::ShuttingDown { appended: false },
            ) => RevokeEnd::NotApplied,
            Err(_) => RevokeEnd::Unknown,
        }
    }
}

/// The lease deadlines of this node (shared by the API and the expiry
/// task).
#[derive(Debug, Clone, Default)]
pub struct Lessor {
    inner: Arc<Mutex<Deadlines>>,
}

impl Lessor {
    /// A lessor that holds no deadline yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// On the leader of `term` (the caller checked it, after a ReadIndex):
    /// lease `id`, whose TTL is `ttl_secs`, lives `ttl_secs` from now.
    /// Answers `false`, changing nothing, when the lease expired and its
    /// revoke may still apply, or when this node already leads a later
    /// term: the caller must not promise the TTL.
    #[must_use]
    pub fn keep_alive(&self, term: u64, id: u64, ttl_secs: u64) -> bool {
        let mut d = self.lock();
        if d.term.is_some_and(|t| t > term) {
            return false;
        }
        if d.term != Some(term) {
            // Leadership the task has not seen yet: start over.
            d.term = Some(term);
            d.leases.clear();
            d.revoking.clear();
        }
        if d.revoking.contains(&id) {
            return false;
        }
        let ttl = Duration::from_secs(ttl_secs);
        d.leases.insert(id, (Instant::now() + ttl, ttl));
        true
    }

    /// What is left of lease `id`'s TTL, when this node leads in `term`
    /// and holds its deadline.
    pub fn remaining(&self, term: u64, id: u64) -> Option<Duration> {
        let d = self.lock();
        if d.term != Some(term) {
            return None;
        }
        d.leases
            .get(&id)
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }

    /// Not the leader: forgets every deadline.
    fn step_down(&self) {
        let mut d = self.lock();
        d.term = None;
        d.leases.clear();
        d.revoking.clear();
    }

    /// The leader of `term`: answers whether it just became it (its
    /// deadlines start over).
    fn lead(&self, term: u64) -> bool {
        let mut d = self.lock();
        if d.term == Some(term) {
            return false;
        }
        d.term = Some(term);
        d.leases.clear();
        d.revoking.clear();
        true
    }

    /// Takes the store's leases: a new one gets its full TTL and `extend`
    /// from now, a gone one is dropped.
    fn sync(&self, term: u64, leases: &[crate::lease::LeaseInfo], extend: Duration) {
        let now = Instant::now();
        let mut d = self.lock();
        if d.term != Some(term) {
            return;
        }
        let live: HashSet<u64> = leases.iter().map(|l| l.id).collect();
        d.leases.retain(|id, _| live.contains(id));
        d.revoking.retain(|id| live.contains(id));
        for l in leases {
            let ttl = Duration::from_secs(l.ttl_secs);
            d.leases.entry(l.id).or_insert((now + ttl + extend, ttl));
        }
    }

    /// Up to `max` expired leases not being revoked yet, marked as being
    /// revoked.
    fn take_expired(&self, term: u64, max: usize) -> Vec<u64> {
        let now = Instant::now();
        let mut d = self.lock();
        if d.term != Some(term) {
            return Vec::new();
        }
        let mut expired: Vec<(Instant, u64)> = d
            .leases
            .iter()
            .filter(|(id, (at, _))| *at <= now && !d.revoking.contains(*id))
            .map(|(id, (at, _))| (*at, *id))
            .collect();
        expired.sort_unstable();
        expired.truncate(max);
        let ids: Vec<u64> = expired.into_iter().map(|(_, id)| id).collect();
        d.revoking.extend(ids.iter().copied());
        ids
    }

    /// The revoke of `id` proposed in `term` ended so. A revoke of an
    /// older term changes nothing: the term's start cleared its marks.
    fn revoked(&self, term: u64, id: u64, end: RevokeEnd) {
        let mut d = self.lock();
        if d.term != Some(term) {
            return;
        }
        match end {
            RevokeEnd::Gone => {
                d.revoking.remove(&id);
                d.leases.remove(&id);
            }
            RevokeEnd::NotApplied => {
                d.revoking.remove(&id);
            }
            RevokeEnd::Unknown => {}
        }
    }

    /// Starts the expiry task.
    pub fn spawn(
        &self,
        raft: RaftHandle<Outcome>,
        reader: KvReader,
        limits: LeaseLimits,
    ) -> JoinHandle<()> {
        let lessor = self.clone();
        tokio::spawn(async move { lessor.run(raft, reader, limits).await })
    }

    async fn run(self, raft: RaftHandle<Outcome>, reader: KvReader, limits: LeaseLimits) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rate = f64::from(limits.revokes_per_second.max(1));
        let mut tokens = rate;
        let mut last = Instant::now();
        let mut scanned: Option<Instant> = None;
        loop {
            tick.tick().await;
            if raft.is_stopped() {
                return;
            }
            let now = Instant::now();
            tokens = (tokens + rate * now.duration_since(last).as_secs_f64()).min(rate);
            last = now;
            let status = match tokio::time::timeout(TICK * 5, raft.status()).await {
                Ok(Some(s)) => s.engine,
                _ => continue,
            };
            if status.role != Role::Leader {
                self.step_down();
                scanned = None;
                continue;
            }
            let term = status.term;
            if self.lead(term) {
                scanned = None;
                tracing::info!(
                    term,
                    "leading: every lease gets its full TTL and an election timeout from now"
                );
            }
            if scanned.is_none_or(|at| at.elapsed() >= RESCAN) {
                match reader.leases() {
                    Ok(leases) => {
                        metrics::gauge!("raft_node_leases").set(leases.len() as f64);
                        // The first reading of this term extends every
                        // lease; later ones only add new leases.
                        let extend = if scanned.is_none() {
                            limits.election
                        } else {
                            Duration::ZERO
                        };
                        self.sync(term, &leases, extend);
                        scanned = Some(Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the leases failed");
                        continue;
                    }
                }
            }
            // Whole tokens only: the rate bounds proposals, never rounds up.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let budget = tokens.floor() as usize;
            let ids = self.take_expired(term, budget);
            tokens -= ids.len() as f64;
            for id in ids {
                let lessor = self.clone();
                let raft = raft.clone();
                tokio::spawn(async move {
                    let revoke = LeaseRevoke {
                        id,
                        expiry_term: term,
                    };
                    let result = raft.propose(revoke.encode()).await;
                    match &result {
                        Ok(Outcome::LeaseRevoked { .. }) => {
                            metrics::counter!("raft_node_leases_expired_total").increment(1);
                            tracing::debug!(lease = id, "expired lease revoked");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(lease = id, error = %e, "revoking an expired lease failed");
                        }
                    }
                    lessor.revoked(term, id, RevokeEnd::of(&result));
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseInfo;

    fn info(id: u64, ttl_secs: u64) -> LeaseInfo {
        LeaseInfo {
            id,
            ttl_secs,
            keys: 0,
        }
    }

    #[test]
    fn only_the_leader_of_the_current_term_holds_deadlines() {
        let l = Lessor::new();
        assert!(l.lead(3));
        l.sync(3, &[info(1, 0), info(2, 100)], Duration::ZERO);
        // A TTL of 0 is past at once; one of 100 s is not.
        assert_eq!(l.take_expired(3, 10), vec![1]);
        // Being revoked: not taken again until its revoke ends.
        assert!(l.take_expired(3, 10).is_empty());
        l.revoked(3, 1, RevokeEnd::NotApplied);
        assert_eq!(l.take_expired(3, 10), vec![1]);
        l.revoked(3, 1, RevokeEnd::Gone);
        assert!(l.take_expired(3, 10).is_empty());
        assert!(l.remaining(3, 2).is_some());
        // Another term, or a follower: nothing.
        assert!(l.remaining(4, 2).is_none());
        assert!(l.take_expired(4, 10).is_empty());
        l.step_down();
        assert!(l.remaining(3, 2).is_none());
        // Leading again: the deadlines start over.
        assert!(l.lead(5));
        assert!(!l.lead(5));
        assert!(l.remaining(5, 2).is_none());
        assert!(l.keep_alive(5, 2, 100));
        assert!(l
            .remaining(5, 2)
            .is_some_and(|r| r > Duration::from_secs(90)));
    }

    #[test]
    fn the_rate_bounds_the_revokes_taken() {
        let l = Lessor::new();
        l.lead(1);
        let many: Vec<LeaseInfo> = (1..=10).map(|id| info(id, 0)).collect();
        l.sync(1, &many, Duration::ZERO);
        assert_eq!(l.take_expired(1, 3).len(), 3);
        assert_eq!(l.take_expired(1, 100).len(), 7);
        // A lease gone from the store is dropped.
        l.sync(1, &[], Duration::ZERO);
        for id in 1..=10 {
            l.revoked(1, id, RevokeEnd::NotApplied);
        }
        assert!(l.take_expired(1, 100).is_empty());
    }

    /// A keep-alive that lands while an expiry's revoke is proposed must
    /// not promise a TTL: the revoke may still apply and delete the keys.
    #[test]
    fn a_lease_whose_revoke_may_still_apply_is_not_kept_alive() {
        let l = Lessor::new();
        assert!(l.lead(3));
        l.sync(3, &[info(1, 0), info(2, 0)], Duration::ZERO);
        assert_eq!(l.take_expired(3, 10), vec![1, 2]);
        assert!(!l.keep_alive(3, 1, 100), "promised a TTL while revoking");
        // Timed out (it may still commit): still refused, not proposed twice.
        l.revoked(3, 1, RevokeEnd::Unknown);
        assert!(!l.keep_alive(3, 1, 100));
        // Certainly not applied: a keep-alive may extend it again.
        l.revoked(3, 2, RevokeEnd::NotApplied);
        assert!(l.keep_alive(3, 2, 100));
        assert!(l.take_expired(3, 10).is_empty());
        // The store shows lease 1 gone: forgotten.
        l.sync(3, &[info(2, 100)], Duration::ZERO);
        assert!(l.remaining(3, 1).is_none());
        // A revoke of an older term ending changes nothing of this term.
        assert!(l.lead(4));
        l.sync(4, &[info(2, 0)], Duration::ZERO);
        assert_eq!(l.take_expired(4, 10), vec![2]);
        l.revoked(3, 2, RevokeEnd::NotApplied);
        assert!(!l.keep_alive(4, 2, 100));
        // A keep-alive confirmed in an older term is refused.
        assert!(!l.keep_alive(3, 7, 100));
        assert_eq!(l.remaining(4, 2), Some(Duration::ZERO));
    }

    #[test]
    fn only_certain_failures_let_a_revoke_be_retried() {
        use raft_core::ProposeError as E;
        let gone = Ok(Outcome::LeaseRevoked { rev: 3 });
        assert_eq!(RevokeEnd::of(&gone), RevokeEnd::Gone);
        assert_eq!(RevokeEnd::of(&Ok(Outcome::Noop)), RevokeEnd::NotApplied);
        let not_leader = Err(E::NotLeader { leader: None });
        assert_eq!(RevokeEnd::of(&not_leader), RevokeEnd::NotApplied);
        assert_eq!(RevokeEnd::of(&Err(E::Timeout)), RevokeEnd::Unknown);
        let unknown = Err(E::OutcomeUnknown { index: 4 });
        assert_eq!(RevokeEnd::of(&unknown), RevokeEnd::Unknown);
    }

    /// A new leader's first reading of the leases gives each its TTL and an
    /// election timeout, as etcd's promotion does.
    #[test]
    fn a_new_leader_extends_every_lease_by_an_election_timeout() {
        let l = Lessor::new();
        assert!(l.lead(2));
        l.sync(2, &[info(1, 0)], Duration::from_secs(100));
        assert!(l.take_expired(2, 10).is_empty(), "expired at once");
        assert!(l
            .remaining(2, 1)
            .is_some_and(|r| r > Duration::from_secs(90)));
        // The longest TTL does not overflow the clock.
        l.sync(
            2,
            &[info(2, crate::lease::MAX_TTL_SECS)],
            Duration::from_secs(100),
        );
        assert!(l.keep_alive(2, 2, crate::lease::MAX_TTL_SECS));
    }
}
