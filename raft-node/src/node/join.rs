//! `--join`: a new node asks the cluster to add it as a learner, then
//! records the members it learned.

use std::time::Duration;

use anyhow::{bail, Context};
use raft_net_quic::QuicTransport;

use super::meta;
use crate::config::{Member, NodeConfig};
use crate::members::MemberDirectory;

/// How long a node keeps asking to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between two attempts.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Posts this node's addresses to `--join` until the cluster accepts them
/// (or refuses with a 4xx other than 409, or a minute has passed); the
/// answer's JSON.
async fn ask_to_join(cfg: &NodeConfig) -> anyhow::Result<serde_json::Value> {
    let base = cfg
        .join
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let url = format!("{base}/v1/cluster/learners");
    let client = crate::client_tls::forwarding_client(cfg).context("building the join client")?;
    let body = serde_json::json!({
        "id": cfg.id,
        "peer_addr": cfg.advertise.peer_addr,
        "client_addr": cfg.advertise.client_addr,
    });
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut req = client.post(&url).json(&body);
        if let Some(t) = cfg.admin_token.as_ref().or(cfg.auth_token.as_ref()) {
            req = req.bearer_auth(t);
        }
        let outcome = match req.send().await {
            Ok(resp) if resp.status().is_success() => match resp.json().await {
                Ok(v) => return Ok(v),
                Err(e) => format!("unreadable answer: {e}"),
            },
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status.is_client_error() && status != reqwest::StatusCode::CONFLICT {
                    bail!("joining through {url} was refused ({status}): {text}");
                }
                format!("{status}: {text}")
            }
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("could not join through {url} within 60 s; last error: {outcome}");
        }
        tracing::info!(attempt, error = %outcome, "join not accepted yet; retrying");
        tokio::time::sleep(JOIN_RETRY_PAUSE).await;
    }
}

/// Asks the cluster behind `--join` to add this node as a learner, retrying
/// for up to a minute, then records the members it learned.
pub(super) async fn join(
    cfg: &NodeConfig,
    transport: &QuicTransport,
    directory: &MemberDirectory,
    db: &rocksdb::DB,
) -> anyhow::Result<()> {
    let reply = ask_to_join(cfg).await?;
    check_replicated_rules(cfg, &reply)?;
    // The cluster id first: this node dials the members from here on.
    if let Some(hex) = reply.get("cluster_id").and_then(|v| v.as_str()) {
        let id = super::cluster_id::parse(hex).with_context(|| {
            format!("the join answer's cluster_id {hex:?} is not 32 hex digits")
        })?;
        super::cluster_id::save(db, id)?;
        transport.set_cluster_id(id);
        tracing::info!(cluster_id = %hex, "learned the cluster id");
    }
    let learned: Vec<Member> = serde_json::from_value(reply["members"].clone())
        .context("the join answer lists no members")?;
    for m in learned.iter().filter(|m| m.id != cfg.id) {
        transport.add_peer(m.id, m.peer_addr.clone());
    }
    directory.learn(learned)?;
    meta::set_flag(db, meta::JOINED_KEY)?;
    tracing::info!(
        members = directory.all().len(),
        "joined the cluster as a learner; catching up"
    );
    Ok(())
}

/// Refuses to go on when the cluster forgets idempotency tokens or
/// compacts revision history by another rule than this node's flags: both
/// are replicated state, so this node would diverge from the others (a
/// `?revision=` read answered where they answer 410, another digest).
/// An answer without the fields (a release before them) is taken as is.
fn check_replicated_rules(cfg: &NodeConfig, reply: &serde_json::Value) -> anyhow::Result<()> {
    let rules = [
        (
            "--idempotency-window",
            "idempotency_window",
            cfg.idempotency_window,
        ),
        (
            "--history-retention",
            "history_retention",
            cfg.history_retention,
        ),
    ];
    for (flag, field, ours) in rules {
        if let Some(theirs) = reply.get(field).and_then(serde_json::Value::as_u64) {
            if theirs != ours {
                bail!(
                    "the cluster runs with {flag}={theirs} but this node was started with \
                     {flag}={ours}; every node must use the same value. Node {id} is now a \
                     learner that will not start: remove it (DELETE /v1/cluster/members/{id}), \
                     then start it again with {flag}={theirs} and an empty data directory",
                    id = cfg.id
                );
            }
        }
    }
    Ok(())
}
