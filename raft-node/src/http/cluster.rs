//! Membership and leadership: `POST /v1/cluster/learners`,
//! `POST /v1/cluster/voters/{id}`, `PUT /v1/cluster/members/{id}` (new
//! addresses), `DELETE /v1/cluster/members/{id}` and
//! `POST /v1/cluster/transfer-leader`. Each is forwarded to the leader when
//! this node is not it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use raft_core::driver::MembershipError;
use raft_core::{
    ChangeError, DriverStatus, Membership, MembershipChange, NodeId, ProposeError, ReadConsistency,
    ReadError, Role, TransferError,
};
use serde::Deserialize;
use serde_json::json;

use super::forwarding::{forward, Relay};
use super::ops::driver_status;
use super::{Answer, AppState, Shared};
use crate::command::Outcome;
use crate::config::Member;
use crate::problem::Problem;

#[derive(Debug, Deserialize, Default)]
struct TransferBody {
    target: Option<NodeId>,
}

/// `POST /v1/cluster/transfer-leader [{"target": id}]`: hands leadership to
/// `target` (or the most caught-up voter).
pub(super) async fn transfer_leader(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let target = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<TransferBody>(&body)
            .map_err(|e| {
                Problem::bad_request(format!(
                    "body must be {{\"target\": <node id>}} or empty: {e}"
                ))
            })?
            .target
    };
    match state.raft.transfer_leader(target).await {
        Ok(leader) => Ok(Json(json!({ "leader": leader })).into_response()),
        Err(TransferError::NotLeader { leader }) => {
            forward(&state, leader, post(&uri, &headers, body)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// An admin request to relay as it came: a change, so an answer lost on
/// the way (the leader's handler can outlast the forwarding timeout: a
/// read barrier, then a proposal) makes its outcome unknown (504), not
/// "not applied".
fn post<'a>(uri: &'a Uri, headers: &'a HeaderMap, body: Bytes) -> Relay<'a> {
    Relay::write(Method::POST, uri, headers, body)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerBody {
    id: NodeId,
    peer_addr: raft_net_quic::PeerAddr,
    client_addr: String,
    #[serde(default)]
    grpc_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressBody {
    /// With `client_addr`: new addresses. Without both: the gRPC URL alone.
    #[serde(default)]
    peer_addr: Option<raft_net_quic::PeerAddr>,
    #[serde(default)]
    client_addr: Option<String>,
    /// Absent: the member's recorded gRPC URL stays; `null`: it is
    /// cleared (the member serves no gRPC API).
    #[serde(default, deserialize_with = "present")]
    grpc_url: Option<Option<String>>,
}

/// A field that may be `null`: present (`Some`, of `None` for `null`) as
/// distinct from absent (`None`, through `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The answer to a membership change: the resulting configuration, the
/// leader's answer when this node is not it, or the problem.
async fn membership_answer(
    state: &AppState,
    result: Result<Membership, MembershipError>,
    relay: Relay<'_>,
) -> Answer {
    match result {
        Ok(m) => Ok(Json(membership_json(state, &m, &known_members(state))).into_response()),
        Err(MembershipError::Rejected(ChangeError::NotLeader { leader })) => {
            forward(state, leader, relay).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A configuration, the member addresses, the cluster id (which a node
/// joining with `--join` learns from the answer to its request) and the
/// idempotency window and history retention (which it must share).
fn membership_json(state: &AppState, m: &Membership, members: &[Member]) -> serde_json::Value {
    json!({
        "cluster_id": state.transport.cluster_id().map(crate::node::cluster_id::to_hex),
        "membership": {
            "voters": m.voters(),
            "learners": m.learners(),
            "outgoing_voters": m.voters_outgoing(),
            "joint": m.is_joint(),
        },
        "members": members,
        // Replicated rules every node must share: a node joining with
        // `--join` refuses to go on with other values.
        "idempotency_window": state.cfg.idempotency_window,
        "history_retention": state.cfg.history_retention,
    })
}

/// The member addresses this node knows (replicated records over the
/// ones it started with).
fn known_members(state: &AppState) -> Vec<Member> {
    state.members.with_replicated()
}

/// The learner a request describes, or 400.
fn learner(body: &[u8]) -> Result<Member, Problem> {
    let req: LearnerBody = serde_json::from_slice(body).map_err(|e| {
        Problem::bad_request(format!(
            "body must be {{\"id\": <node id>, \"peer_addr\": \"host:port\", \"client_addr\": \"host:port\"}}: {e}"
        ))
    })?;
    if req.id == 0 {
        return Err(Problem::bad_request("node id 0 is reserved"));
    }
    member(req.id, req.peer_addr, req.client_addr, req.grpc_url)
}

/// The member `id` at these addresses, or 400.
fn member(
    id: NodeId,
    peer_addr: raft_net_quic::PeerAddr,
    client_addr: String,
    grpc_url: Option<String>,
) -> Result<Member, Problem> {
    if let Err(e) = crate::config::check_client_addr(&client_addr) {
        return Err(Problem::bad_request(format!("client_addr: {e}")));
    }
    if let Some(url) = &grpc_url {
        check_grpc_url(url).map_err(|e| Problem::bad_request(format!("grpc_url: {e}")))?;
    }
    if peer_addr.is_unspecified() {
        return Err(Problem::bad_request(
            "peer_addr is an unspecified address (0.0.0.0 or ::), which no peer can dial",
        ));
    }
    Ok(Member {
        id,
        peer_addr,
        client_addr,
        grpc_url,
    })
}

/// Checks a gRPC URL: `http://` or `https://`, then a valid, dialable
/// `host:port`, and nothing after it.
fn check_grpc_url(url: &str) -> Result<(), String> {
    let addr = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("it must start with http:// or https://")?;
    crate::config::check_client_addr(addr).map_err(|e| e.replacen("client", "gRPC", 1))?;
    if addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:") {
        return Err("an unspecified address (0.0.0.0 or ::), which no client can dial".into());
    }
    Ok(())
}

/// How a member's addresses are recorded.
/// The member records replicated through the log, read on the leader
/// after a read barrier (ReadIndex), so they hold every record committed
/// before the request: what this leader has applied can be behind its log
/// (entries of an earlier term), and its member directory can still hold
/// a member whose removal applied (it forgets on its next poll). `Err`
/// holds the answer of the leader this was forwarded to.
async fn applied_records(
    state: &AppState,
    relay: Relay<'_>,
) -> Result<Result<Vec<Member>, axum::response::Response>, Problem> {
    match state.raft.read(ReadConsistency::Linearizable).await {
        Ok(_) => {}
        Err(ReadError::NotLeader { leader }) => {
            return forward(state, leader, relay).await.map(Err)
        }
        Err(e) => return Err(e.into()),
    }
    state
        .reader
        .members()
        .map(Ok)
        .map_err(|e| Problem::unavailable("store-error", "Could not read members", e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// A node about to become a learner: recorded as it is.
    New,
    /// New addresses of a member: recorded only if it is still a member
    /// when the entry applies (a removal may commit first).
    Update,
}

/// Records `member`'s addresses through the log, unless its replicated
/// record holds them already (read after a barrier: see
/// [`applied_records`]). With `keep_url` (a request without `grpc_url`)
/// `member.grpc_url` is not recorded: the entry keeps whatever URL is
/// recorded when it applies (a version 3 record,
/// [`crate::command::AddressRecord`]), so a URL the node publishes while
/// this request is on its way stays.
async fn record_addresses(
    state: &AppState,
    member: &Member,
    kind: Record,
    keep_url: bool,
    relay: Relay<'_>,
) -> Result<Option<axum::response::Response>, Problem> {
    let relay_again = relay.clone();
    let records = match applied_records(state, relay).await? {
        Ok(records) => records,
        Err(forwarded) => return Ok(Some(forwarded)),
    };
    let recorded = records.iter().any(|r| {
        r.id == member.id
            && r.peer_addr == member.peer_addr
            && r.client_addr == member.client_addr
            && (keep_url || r.grpc_url == member.grpc_url)
    });
    if recorded {
        return Ok(None);
    }
    let relay = relay_again;
    let entry = match (kind, keep_url) {
        (Record::New, false) => crate::command::encode_member(member),
        (Record::Update, false) => crate::command::encode_member_update(member),
        (kind, true) => crate::command::encode_member_addresses(member, kind == Record::Update),
    };
    match state.raft.propose(entry).await {
        Ok(Outcome::NotFound) => Err(not_a_member(
            member.id,
            "it was removed before its new addresses were recorded",
        )),
        Ok(_) => Ok(None),
        Err(ProposeError::NotLeader { leader }) => forward(state, leader, relay).await.map(Some),
        Err(e) => Err(Problem::unavailable(
            "propose-failed",
            "Could not record the addresses",
            e.to_string(),
        )),
    }
}

/// 404 `not-a-member`.
fn not_a_member(id: NodeId, why: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-a-member",
        "Not a member",
        format!("node {id} is not a member ({why}); add it with POST /v1/cluster/learners"),
    )
}

/// 409 when `member` is a voter already, or a member known under other
/// addresses (it must be removed first).
fn check_new_learner(s: &DriverStatus, member: &Member, known: &[Member]) -> Result<(), Problem> {
    if s.engine.membership.is_voter(member.id) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "already-voter",
            "Already a voter",
            format!("node {} is already a voter", member.id),
        ));
    }
    if known.contains(member) || !s.engine.membership.contains(member.id) {
        return Ok(());
    }
    match known.iter().find(|m| m.id == member.id) {
        Some(other) => Err(Problem::new(
            StatusCode::CONFLICT,
            "address-conflict",
            "Member has other addresses",
            format!(
                "node {} is a member with addresses {}/{}; remove it first",
                other.id, other.peer_addr, other.client_addr
            ),
        )),
        None => Ok(()),
    }
}

/// `POST /v1/cluster/learners {"id", "peer_addr", "client_addr"[, "grpc_url"]}`:
/// records the node's addresses through the log, then adds it as a learner.
/// Repeating the request for a learner with the same addresses succeeds
/// (without `grpc_url`, whatever gRPC URL it published since).
pub(super) async fn add_learner(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let mut member = learner(&body)?;
    let s = driver_status(&state).await?;
    if s.engine.role != Role::Leader {
        return forward(&state, s.engine.leader, post(&uri, &headers, body)).await;
    }
    let known = known_members(&state);
    let keep_url = member.grpc_url.is_none();
    if keep_url {
        // As for `PUT /v1/cluster/members/{id}`: without `grpc_url` the
        // recorded one stays, so a joiner repeating its request after it
        // published its gRPC URL asks for what is recorded. (Only for the
        // checks: the entry keeps the URL recorded when it applies.)
        member.grpc_url = known
            .iter()
            .find(|m| {
                m.id == member.id
                    && m.peer_addr == member.peer_addr
                    && m.client_addr == member.client_addr
            })
            .and_then(|m| m.grpc_url.clone());
    }
    check_new_learner(&s, &member, &known)?;
    let relay = post(&uri, &headers, body.clone());
    if let Some(forwarded) = record_addresses(&state, &member, Record::New, keep_url, relay).await?
    {
        return Ok(forwarded);
    }
    let result = if s.engine.membership.learners().contains(&member.id) {
        Ok(s.engine.membership.clone())
    } else {
        state
            .raft
            .change_membership(MembershipChange::AddLearner(member.id))
            .await
    };
    membership_answer(&state, result, post(&uri, &headers, body)).await
}

/// A node id of a path: a number from 1 on.
fn node_id(raw: &str) -> Result<NodeId, Problem> {
    super::path_id(raw, NodeId::MAX)
        .ok_or_else(|| Problem::bad_request(format!("{raw:?} is not a node id")))
}

/// Parses `raw` as a node id, then runs the change `make(id)` and answers
/// with the resulting configuration (or the error, forwarded to the leader
/// when this node is not it).
async fn change_by_id(
    state: &AppState,
    raw: &str,
    make: fn(NodeId) -> MembershipChange,
    relay: Relay<'_>,
) -> Answer {
    let id = node_id(raw)?;
    let result = state.raft.change_membership(make(id)).await;
    membership_answer(state, result, relay).await
}

/// `POST /v1/cluster/voters/{id}`: promotes a caught-up learner.
pub(super) async fn promote(
    State(state): State<Shared>,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    let relay = post(&uri, &headers, Bytes::new());
    change_by_id(&state, &raw, MembershipChange::Promote, relay).await
}

/// `PUT /v1/cluster/members/{id} {"peer_addr", "client_addr"[, "grpc_url"]}`:
/// records new addresses of a member (voter or learner) through the log,
/// without removing it: every node dials the new peer address from then
/// on. Without `grpc_url` the recorded one stays; `null` clears it.
/// `{"grpc_url": ...}` alone records the gRPC URL and nothing else (see
/// [`update_grpc_url`]).
/// Repeating it with the same addresses succeeds; 404 for a node that is
/// not a member; 422 `peer-unreachable` when the node does not answer as
/// itself at a new peer address (`?force=true` records it anyway).
pub(super) async fn update_member(
    State(state): State<Shared>,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let id = node_id(&raw)?;
    const SHAPE: &str = "body must be {\"peer_addr\": \"host:port\", \"client_addr\": \"host:port\"[, \"grpc_url\": \"http(s)://host:port\" or null]} or {\"grpc_url\": \"http(s)://host:port\" or null}";
    let req: AddressBody =
        serde_json::from_slice(&body).map_err(|e| Problem::bad_request(format!("{SHAPE}: {e}")))?;
    let relay = || Relay {
        method: Method::PUT,
        ..post(&uri, &headers, body.clone())
    };
    let (peer_addr, client_addr) = match (req.peer_addr, req.client_addr, &req.grpc_url) {
        (Some(p), Some(c), _) => (p, c),
        (None, None, Some(url)) => {
            return update_grpc_url(&state, id, url.clone(), relay()).await;
        }
        _ => return Err(Problem::bad_request(SHAPE)),
    };
    let mut member = member(id, peer_addr, client_addr, req.grpc_url.clone().flatten())?;
    let s = driver_status(&state).await?;
    if s.engine.role != Role::Leader {
        return forward(&state, s.engine.leader, relay()).await;
    }
    if !s.engine.membership.contains(id) {
        return Err(not_a_member(id, "not in the configuration"));
    }
    let known = known_members(&state);
    // Without `grpc_url` the URL recorded when the entry applies stays
    // (not the one read here: the node may publish another meanwhile).
    let keep_url = req.grpc_url.is_none();
    let force = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "force=true"));
    let moved = !known
        .iter()
        .any(|m| m.id == id && m.peer_addr == member.peer_addr);
    if moved && !force {
        check_reachable(&state, &member).await?;
    }
    if let Some(forwarded) =
        record_addresses(&state, &member, Record::Update, keep_url, relay()).await?
    {
        return Ok(forwarded);
    }
    tracing::info!(id, peer = %member.peer_addr, client = %member.client_addr, "member addresses updated");
    if keep_url {
        // The URL the record kept, as this leader applied it.
        member.grpc_url = state
            .reader
            .members()
            .ok()
            .and_then(|r| r.into_iter().find(|m| m.id == id))
            .map_or_else(
                || {
                    known
                        .iter()
                        .find(|m| m.id == id)
                        .and_then(|m| m.grpc_url.clone())
                },
                |m| m.grpc_url,
            );
    }
    let mut members = known_members(&state);
    if let Some(m) = members.iter_mut().find(|m| m.id == id) {
        *m = member;
    }
    Ok(Json(membership_json(&state, &s.engine.membership, &members)).into_response())
}

/// `PUT /v1/cluster/members/{id} {"grpc_url": URL or null}`: records
/// member `id`'s gRPC URL (`null`: none) and nothing else, as a version 2
/// record ([`crate::command::GrpcUrlRecord`]): the addresses recorded for
/// it stay, whatever the sender knows of them. What a node sends to
/// publish its own URL.
async fn update_grpc_url(
    state: &AppState,
    id: NodeId,
    grpc_url: Option<String>,
    relay: Relay<'_>,
) -> Answer {
    if let Some(url) = &grpc_url {
        check_grpc_url(url).map_err(|e| Problem::bad_request(format!("grpc_url: {e}")))?;
    }
    let s = driver_status(state).await?;
    if s.engine.role != Role::Leader {
        return forward(state, s.engine.leader, relay).await;
    }
    if !s.engine.membership.contains(id) {
        return Err(not_a_member(id, "not in the configuration"));
    }
    // Compared with the replicated record only, read after a barrier
    // (see `applied_records`).
    let replicated = match applied_records(state, relay.clone()).await? {
        Ok(records) => records,
        Err(forwarded) => return Ok(forwarded),
    };
    let known = known_members(state);
    let Some(mine) = known.iter().find(|m| m.id == id) else {
        return Err(not_a_member(id, "no addresses are known for it"));
    };
    let recorded = replicated.iter().find(|m| m.id == id);
    // No record is no gRPC URL: a node without a gRPC listener proposes
    // nothing for it (an HTTP-only cluster's members add no entries at
    // their first start).
    let current = recorded.and_then(|m| m.grpc_url.as_ref());
    if current != grpc_url.as_ref() {
        // The addresses go along only for a member without a replicated
        // record (an original member, or one removed and added again
        // before its directory entry was forgotten), where they are what
        // everyone knows.
        let has_record = recorded.is_some();
        let record = crate::command::GrpcUrlRecord {
            v: crate::command::GRPC_URL_RECORD_VERSION,
            id,
            grpc_url: grpc_url.clone(),
            peer_addr: (!has_record).then(|| mine.peer_addr.clone()),
            client_addr: (!has_record).then(|| mine.client_addr.clone()),
        };
        match state
            .raft
            .propose(crate::command::encode_grpc_url(&record))
            .await
        {
            Ok(Outcome::NotFound) => {
                return Err(not_a_member(
                    id,
                    "it was removed before its gRPC URL was recorded",
                ))
            }
            Ok(_) => {}
            Err(ProposeError::NotLeader { leader }) => return forward(state, leader, relay).await,
            Err(e) => {
                return Err(Problem::unavailable(
                    "propose-failed",
                    "Could not record the gRPC URL",
                    e.to_string(),
                ))
            }
        }
        tracing::info!(id, grpc_url = ?grpc_url, "member gRPC URL recorded");
    }
    let members = known_members(state);
    Ok(Json(membership_json(state, &s.engine.membership, &members)).into_response())
}

/// 422 `peer-unreachable` unless `member` answers at its new peer address
/// as itself (its certificate names it): a record of an address nobody
/// answers at would, after every node restarted from its stored
/// addresses, leave the cluster unable to reconnect.
async fn check_reachable(state: &AppState, member: &Member) -> Result<(), Problem> {
    match state.transport.probe(member.id, &member.peer_addr).await {
        Ok(found) => {
            tracing::info!(id = member.id, peer = %member.peer_addr, %found, "new member address answers");
            Ok(())
        }
        Err(e) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "peer-unreachable",
            "Node not reachable at the new address",
            format!(
                "node {} does not answer as itself at {}: {e}; start it there first, or add \
                 ?force=true to record the address anyway",
                member.id, member.peer_addr
            ),
        )),
    }
}

/// `DELETE /v1/cluster/members/{id}`: removes a learner or a voter (the
/// leader too: it hands over and steps down).
pub(super) async fn remove_member(
    State(state): State<Shared>,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    let relay = Relay {
        method: Method::DELETE,
        ..post(&uri, &headers, Bytes::new())
    };
    change_by_id(&state, &raw, MembershipChange::Remove, relay).await
}

/// Why a node's gRPC URL was not published.
#[derive(Debug)]
pub(crate) enum PublishError {
    /// The leader answered that this node is not a member (404): removed,
    /// or not yet added (joining).
    NotMember,
    /// Refused (400, 401, 403: a token the leader does not take, an older
    /// leader refusing the request): retried, with a warning when it
    /// lasts.
    Refused(StatusCode),
    /// Anything else (no leader yet, ...): retry later.
    Other(String),
}

/// Whether an answer to the publish request is a refusal (see
/// [`PublishError::Refused`]).
fn refusal(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    )
}

/// Records this node's gRPC URL (`None`: it serves none) through the log
/// as `PUT /v1/cluster/members/{id} {"grpc_url": ...}` does: the URL alone,
/// never an address (what this node knows of its own may be stale),
/// forwarded to the leader when this node is not it.
///
/// # Errors
///
/// The update was refused or could not be made.
pub(crate) async fn publish_own_grpc_url(
    state: std::sync::Arc<AppState>,
    grpc_url: Option<String>,
) -> Result<(), PublishError> {
    let id = state.cfg.advertise.id;
    let body = json!({ "grpc_url": grpc_url });
    let uri: Uri = format!("/v1/cluster/members/{id}")
        .parse()
        .map_err(|e| PublishError::Other(format!("{e}")))?;
    let mut headers = HeaderMap::new();
    if let Some(t) = state
        .cfg
        .admin_token
        .as_ref()
        .or(state.cfg.auth_token.as_ref())
    {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| PublishError::Other("the token is not a valid header value".into()))?;
        headers.insert(axum::http::header::AUTHORIZATION, value);
    }
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let answer = update_member(
        State(state.clone()),
        Path(id.to_string()),
        uri,
        headers,
        Bytes::from(body.to_string()),
    )
    .await;
    match answer {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) if resp.status() == StatusCode::NOT_FOUND => Err(PublishError::NotMember),
        Ok(resp) if refusal(resp.status()) => Err(PublishError::Refused(resp.status())),
        Ok(resp) => Err(PublishError::Other(format!("answered {}", resp.status()))),
        Err(p) if p.status() == StatusCode::NOT_FOUND => Err(PublishError::NotMember),
        Err(p) if refusal(p.status()) => Err(PublishError::Refused(p.status())),
        Err(p) => Err(PublishError::Other(format!("{p:?}"))),
    }
}
