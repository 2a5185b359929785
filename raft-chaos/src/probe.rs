//! The harness's own requests to the nodes, besides the clients'
//! operations: status (`GET /v1/cluster`), the leader, and the membership
//! changes of a replacement.
//!
//! They go through [`raft_client`], one attempt each
//! ([`RetryPolicy::none`]) and to the node the harness names: the harness
//! acts on what that node answered, and a retry inside the client (after a
//! wait, or on another node) would hide it. A request that fails is `None`
//! or `false`, and the caller asks again on its own schedule.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft_client::{Client, ClusterStatus, Error, IdempotencyKeys, RetryPolicy};

use crate::error::ChaosError;

/// Longest wait for one status answer, connecting included.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for the answer to one membership change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients for the harness's requests to the nodes of a run. Each request
/// names its node; clones share the connections.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Status requests.
    status: Client,
    /// Membership changes.
    change: Client,
}

impl Probe {
    /// Clients for the nodes of a cluster, one of which is at `any_url`
    /// (a client starts from an endpoint; every request names its own).
    ///
    /// # Errors
    ///
    /// [`ChaosError::Cluster`] when `any_url` is not an `http://` URL.
    pub fn new(any_url: &str) -> Result<Self, ChaosError> {
        let build = |timeout: Duration| {
            Client::builder([any_url])
                .connect_timeout(timeout)
                .request_timeout(timeout)
                .retry(RetryPolicy::none())
                .idempotency_keys(IdempotencyKeys::Off)
                .build()
                .map_err(|e| ChaosError::Cluster(format!("client of {any_url}: {e}")))
        };
        Ok(Self {
            status: build(STATUS_TIMEOUT)?,
            change: build(CHANGE_TIMEOUT)?,
        })
    }

    /// `GET /v1/cluster` of the node at `url`; `None` when it does not
    /// answer with its status.
    pub async fn status(&self, url: &str) -> Option<ClusterStatus> {
        self.status.at(url).ok()?.status().await.ok()
    }

    /// [`Probe::status`] with the key count and digest of the node's
    /// key-value state (`?digest=true`).
    pub async fn status_with_digest(&self, url: &str) -> Option<ClusterStatus> {
        self.status.at(url).ok()?.status_with_digest().await.ok()
    }

    /// The status of the first node in `urls` that answers.
    pub async fn any_status(&self, urls: &[(u64, String)]) -> Option<ClusterStatus> {
        for (_, url) in urls {
            if let Some(s) = self.status(url).await {
                return Some(s);
            }
        }
        None
    }

    /// The leader most nodes report right now, if any.
    pub async fn current_leader(&self, urls: &[(u64, String)]) -> Option<u64> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, url) in urls {
            if let Some(l) = self.status(url).await.and_then(|s| s.leader) {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
    }

    /// Waits until every node in `urls` reports the same leader.
    ///
    /// # Errors
    ///
    /// [`ChaosError::Cluster`] after `timeout`.
    pub async fn wait_for_leader(
        &self,
        urls: &[(u64, String)],
        timeout: Duration,
    ) -> Result<u64, ChaosError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for (_, url) in urls {
                seen.push(self.status(url).await.and_then(|s| s.leader));
            }
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) {
                    return Ok(*l);
                }
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Cluster(format!(
                    "no leader all nodes agree on within {timeout:?}: {seen:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the node at `via` (which forwards to the leader) to remove
    /// member `id`. Returns whether the node answered, whatever it
    /// answered: the status shows what came of it.
    pub async fn remove(&self, via: &str, id: u64) -> bool {
        match self.change.at(via) {
            Ok(c) => answered(&c.remove(id).await),
            Err(_) => false,
        }
    }

    /// Asks the node at `via` to promote learner `id` to voter. Returns
    /// whether the node answered, as [`Probe::remove`].
    pub async fn promote(&self, via: &str, id: u64) -> bool {
        match self.change.at(via) {
            Ok(c) => answered(&c.promote(id).await),
            Err(_) => false,
        }
    }
}

/// Whether a request got an answer (any status): not when it could not be
/// sent or its answer was lost.
fn answered<T>(result: &Result<T, Error>) -> bool {
    !matches!(
        result,
        Err(Error::Connect { .. } | Error::OutcomeUnknown { problem: None, .. })
    )
}

/// Whether `id` is in `status`'s configuration: a voter (incoming or
/// outgoing) or a learner.
pub fn is_member(status: &ClusterStatus, id: u64) -> bool {
    let m = &status.membership;
    m.voters.contains(&id) || m.learners.contains(&id) || m.outgoing_voters.contains(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_request_without_an_answer_is_unanswered() {
        let refused: Result<(), Error> = Err(Error::Connect {
            attempts: 1,
            detail: "refused".into(),
        });
        let lost: Result<(), Error> = Err(Error::OutcomeUnknown {
            problem: None,
            detail: "timeout".into(),
        });
        let gateway_timeout: Result<(), Error> = Err(Error::OutcomeUnknown {
            problem: Some(Box::new(raft_client::Problem::parse(504, b""))),
            detail: "504".into(),
        });
        let refused_change: Result<(), Error> = Err(Error::Api {
            problem: Box::new(raft_client::Problem::parse(409, b"")),
        });
        assert!(!answered(&refused) && !answered(&lost));
        assert!(answered(&gateway_timeout) && answered(&refused_change) && answered(&Ok(())));
    }
}
