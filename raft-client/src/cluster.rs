//! The cluster calls: status, readiness, leadership transfer, membership
//! changes, snapshots.

use reqwest::Method;
use serde::Deserialize;

use crate::client::{Client, Request, Safety};
use crate::error::{Error, Result};

/// A node's `GET /v1/cluster` answer: the fields most callers need, typed,
/// and the whole document in [`ClusterStatus::raw`] (per-peer progress,
/// snapshot state, ...).
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// The answering node's id.
    pub id: u64,
    /// Its cluster id (32 hex digits); `None` from a node without one (a
    /// data directory written before cluster ids) or of an older release.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// `leader`, `follower`, `candidate`, `pre-candidate` or `learner`.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// Its commit index.
    pub commit: u64,
    /// The index its key-value store applied.
    pub applied: u64,
    /// The first index still in its log (after a compaction, the one
    /// after its snapshot's).
    #[serde(default)]
    pub first_index: u64,
    /// The last index in its log.
    #[serde(default)]
    pub last_index: u64,
    /// The latest snapshot it holds (taken or installed), if any.
    #[serde(default)]
    pub snapshot: Option<SnapshotTaken>,
    /// The configuration in force.
    pub membership: Membership,
    /// Every member with its addresses (when known).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub members: Vec<MemberStatus>,
    /// With [`Client::status_with_digest`]: the key count and the digest of
    /// the replicated state.
    #[serde(default)]
    pub kv: Option<Digest>,
    /// The whole answer.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// A configuration: voters, learners, and during a joint change the
/// outgoing voters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Membership {
    /// Voters (of the incoming configuration during a joint change).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub voters: Vec<u64>,
    /// Learners.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (empty unless joint).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub outgoing_voters: Vec<u64>,
    /// Whether a joint change is in progress.
    #[serde(default)]
    pub joint: bool,
    /// The log index of the entry that made this configuration: in a
    /// status answer; `None` in a membership change's answer, which does
    /// not carry it.
    #[serde(default)]
    pub index: Option<u64>,
    /// Whether that entry is committed (a configuration is in force from
    /// the moment it is appended, before it commits): in a status answer;
    /// `None` in a membership change's answer, which does not carry it.
    #[serde(default)]
    pub committed: Option<bool>,
}

/// A member in a status answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct MemberStatus {
    /// Its id.
    pub id: u64,
    /// Its addresses, when this node knows them.
    pub addresses: Option<Addresses>,
}

/// A member's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Addresses {
    /// Peer (QUIC) address.
    pub peer: String,
    /// HTTP address, `host:port`.
    pub client: String,
}

/// The replicated state's digest (`?digest=true`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Digest {
    /// Keys in the store.
    pub keys: u64,
    /// CRC of every key, value, idempotency record and member address.
    pub digest: String,
}

/// A membership change's answer: the configuration and member addresses
/// after it.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct MembershipChange {
    /// The configuration.
    pub membership: Membership,
    /// The address records the node holds after the change (a removed
    /// member's is gone).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub members: Vec<MemberRecord>,
    /// The whole answer.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// A member's address record, as a membership change's answer lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct MemberRecord {
    /// Its id.
    pub id: u64,
    /// Peer (QUIC) address, `ip:port`.
    pub peer_addr: String,
    /// HTTP address, `host:port`.
    pub client_addr: String,
}

/// A node's readiness (`/readyz`): ready once a leader is known and it
/// applied all it knows committed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Readiness {
    /// Whether it is ready.
    pub ready: bool,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Its commit index.
    pub commit: u64,
    /// Its applied index.
    pub applied: u64,
}

/// A snapshot a node took ([`Client::snapshot`]) or holds
/// ([`ClusterStatus::snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct SnapshotTaken {
    /// The last log index it covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
}

/// `null` as an empty list (the node writes `null` for an absent one).
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Vec<T>>::deserialize(d).map(Option::unwrap_or_default)
}

#[derive(Deserialize)]
struct Leader {
    leader: u64,
}

impl Client {
    /// The cluster as the first node that answers sees it (the leader's
    /// endpoint first, when known). Teaches the client which endpoint is
    /// which node, and the leader.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn status(&self) -> Result<ClusterStatus> {
        self.status_at("/v1/cluster").await
    }

    /// [`Client::status`] with the key count and digest of the replicated
    /// state (a full scan of the node's store).
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn status_with_digest(&self) -> Result<ClusterStatus> {
        self.status_at("/v1/cluster?digest=true").await
    }

    async fn status_at(&self, path: &str) -> Result<ClusterStatus> {
        let a = self
            .execute(&Request::new(Method::GET, path.into(), Safety::Read))
            .await?;
        if !a.status.is_success() {
            return Err(a.into_error());
        }
        let raw: serde_json::Value = a.json()?;
        let mut s: ClusterStatus = serde_json::from_value(raw.clone())
            .map_err(|e| Error::InvalidAnswer(format!("cluster status: {e}")))?;
        s.raw = raw;
        if let Some(i) = a.endpoint {
            self.learned(i, Some(s.id), s.leader);
        }
        Ok(s)
    }

    /// The first endpoint's readiness (`/readyz`; a 503 is an answer too:
    /// `ready` false). Not retried.
    ///
    /// # Errors
    ///
    /// When the node cannot be reached or its answer is not a readiness
    /// document.
    pub async fn ready(&self) -> Result<Readiness> {
        let a = self
            .pinned(0)
            .with_retry(crate::RetryPolicy::none())
            .execute(&Request::new(Method::GET, "/readyz".into(), Safety::Read))
            .await?;
        a.json()
    }

    /// Moves leadership to `target`, or to the most up-to-date voter;
    /// returns the new leader. Not sent again once it may have happened.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn transfer_leader(&self, target: Option<u64>) -> Result<u64> {
        let body = target
            .map(|t| serde_json::json!({ "target": t }).to_string())
            .unwrap_or_default();
        let req = Request::new(
            Method::POST,
            "/v1/cluster/transfer-leader".into(),
            Safety::Write,
        )
        .body(body);
        let a = self.execute(&req).await?;
        if !a.status.is_success() {
            return Err(a.into_error());
        }
        Ok(a.json::<Leader>()?.leader)
    }

    /// Adds node `id` as a learner with its peer (`ip:port` or
    /// `name:port`) and client (`host:port`) addresses. Asking again for
    /// the same learner succeeds, so this is sent again after a lost answer.
    ///
    /// # Errors
    ///
    /// See [`Error`]; 409 when `id` is a voter.
    pub async fn add_learner(
        &self,
        id: u64,
        peer_addr: &str,
        client_addr: &str,
    ) -> Result<MembershipChange> {
        let body = serde_json::json!({
            "id": id,
            "peer_addr": peer_addr,
            "client_addr": client_addr,
        });
        self.membership_json(Method::POST, "/v1/cluster/learners".into(), body)
            .await
    }

    /// Records new addresses of member `id` (a voter or a learner) through
    /// the log, without removing it: every node dials the new peer address
    /// (`ip:port` or `name:port`) from then on. Asking again with the same
    /// addresses succeeds. The leader first checks that the node answers as
    /// itself at a new peer address; `force` skips that check (for a node
    /// that is down and will start there).
    ///
    /// # Errors
    ///
    /// See [`Error`]; 404 when `id` is not a member, 400 for a malformed
    /// address, 422 `peer-unreachable` when the node does not answer at the
    /// new peer address.
    pub async fn update_member(
        &self,
        id: u64,
        peer_addr: &str,
        client_addr: &str,
        force: bool,
    ) -> Result<MembershipChange> {
        let body = serde_json::json!({
            "peer_addr": peer_addr,
            "client_addr": client_addr,
        });
        let query = if force { "?force=true" } else { "" };
        self.membership_json(
            Method::PUT,
            format!("/v1/cluster/members/{id}{query}"),
            body,
        )
        .await
    }

    /// A membership request with a JSON body; sent again after a lost
    /// answer (repeating it changes nothing).
    async fn membership_json(
        &self,
        method: Method,
        path: String,
        body: serde_json::Value,
    ) -> Result<MembershipChange> {
        let req = Request::new(method, path, Safety::Read)
            .header("content-type", "application/json")?
            .body(body.to_string());
        self.membership(req).await
    }

    /// Promotes a caught-up learner to voter (joint consensus).
    ///
    /// # Errors
    ///
    /// See [`Error`]; 404 for an unknown node, 409 `learner-lagging`.
    pub async fn promote(&self, id: u64) -> Result<MembershipChange> {
        let path = format!("/v1/cluster/voters/{id}");
        self.membership(Request::new(Method::POST, path, Safety::Write))
            .await
    }

    /// Removes a member (a learner, or a voter through joint consensus;
    /// the leader too).
    ///
    /// # Errors
    ///
    /// See [`Error`]; 409 `last-voter`.
    pub async fn remove(&self, id: u64) -> Result<MembershipChange> {
        let path = format!("/v1/cluster/members/{id}");
        self.membership(Request::new(Method::DELETE, path, Safety::Write))
            .await
    }

    async fn membership(&self, req: Request) -> Result<MembershipChange> {
        let a = self.execute(&req).await?;
        if !a.status.is_success() {
            return Err(a.into_error());
        }
        let raw: serde_json::Value = a.json()?;
        let mut m: MembershipChange = serde_json::from_value(raw.clone())
            .map_err(|e| Error::InvalidAnswer(format!("membership answer: {e}")))?;
        m.raw = raw;
        Ok(m)
    }

    /// Has the first endpoint's node take a snapshot and compact its log
    /// now (each node snapshots on its own: this goes to one node).
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn snapshot(&self) -> Result<SnapshotTaken> {
        let req = Request::new(Method::POST, "/v1/cluster/snapshot".into(), Safety::Read);
        let a = self.pinned(0).execute(&req).await?;
        if !a.status.is_success() {
            return Err(a.into_error());
        }
        a.json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_answer_with_null_lists_is_read() {
        let raw = r#"{"id":1,"role":"leader","term":2,"leader":1,"commit":5,"applied":5,
            "last_index":5,"membership":{"voters":[1,2],"learners":[],"outgoing_voters":null,
            "joint":false,"index":1,"committed":true},"members":[{"id":1,"addresses":null}],
            "peers":[],"kv":null}"#;
        let s: ClusterStatus = serde_json::from_str(raw).unwrap();
        assert_eq!(
            (s.id, s.leader, s.membership.voters),
            (1, Some(1), vec![1, 2])
        );
        assert!(s.membership.outgoing_voters.is_empty() && s.kv.is_none());
        assert_eq!(
            (s.membership.index, s.membership.committed),
            (Some(1), Some(true))
        );
        assert_eq!((s.first_index, s.last_index, s.snapshot), (0, 5, None));
    }

    #[test]
    fn a_membership_change_answer_has_no_index_nor_commit_state() {
        let raw = r#"{"membership":{"voters":[1,2,3],"learners":[4],"outgoing_voters":[],
            "joint":false},"members":[]}"#;
        let m: MembershipChange = serde_json::from_str(raw).unwrap();
        assert_eq!(m.membership.learners, vec![4]);
        assert_eq!((m.membership.index, m.membership.committed), (None, None));
    }

    #[test]
    fn a_status_answer_names_the_log_bounds_and_the_snapshot() {
        let raw = r#"{"id":2,"role":"follower","term":3,"leader":1,"commit":90,"applied":90,
            "last_index":91,"first_index":61,"snapshot":{"index":60,"term":3},
            "membership":{"voters":[1,2,3]},"members":null}"#;
        let s: ClusterStatus = serde_json::from_str(raw).unwrap();
        assert_eq!((s.first_index, s.last_index), (61, 91));
        assert_eq!(s.snapshot, Some(SnapshotTaken { index: 60, term: 3 }));
    }

    #[test]
    fn a_membership_answer_lists_the_address_records() {
        let raw = r#"{"membership":{"voters":[1,2],"learners":[5],"outgoing_voters":[],
            "joint":false},"members":[{"id":5,"peer_addr":"127.0.0.1:9",
            "client_addr":"localhost:9"}]}"#;
        let m: MembershipChange = serde_json::from_str(raw).unwrap();
        assert_eq!(m.membership.learners, vec![5]);
        assert_eq!(
            m.members,
            vec![MemberRecord {
                id: 5,
                peer_addr: "127.0.0.1:9".into(),
                client_addr: "localhost:9".into(),
            }]
        );
    }
}
