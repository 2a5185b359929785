//! `raft-node ctl`: a small client for the HTTP API (put, get, delete,
//! list, cluster status, leadership transfer, membership changes,
//! snapshots) against any node.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

const PATH_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// `raft-node ctl` settings.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The node to talk to (any node; followers forward to the leader).
    #[arg(long, env = "RAFT_ENDPOINT", default_value = "http://127.0.0.1:8081")]
    pub endpoint: String,
    /// What to do.
    #[command(subcommand)]
    pub op: CtlOp,
}

/// A `ctl` operation.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlOp {
    /// Writes a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Only if the key is at this revision.
        #[arg(long)]
        if_match: Option<u64>,
        /// Only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
    },
    /// Reads a value.
    Get {
        /// The key.
        key: String,
        /// linearizable (default), lease or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Deletes a key.
    Delete {
        /// The key.
        key: String,
        /// Only if the key is at this revision.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Lists keys by prefix.
    List {
        /// The prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Go on from a previous answer's `next`.
        #[arg(long)]
        cursor: Option<String>,
        /// Keys and revisions only, no values.
        #[arg(long)]
        keys_only: bool,
    },
    /// Shows the cluster status.
    Status,
    /// Moves leadership (to a node, or to the most up-to-date one).
    TransferLeader {
        /// The new leader.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Adds a node as a learner (it receives the log but does not vote).
    AddLearner {
        /// The new node's id.
        id: u64,
        /// Its peer (QUIC) address, `ip:port`.
        #[arg(long)]
        peer_addr: String,
        /// Its HTTP address, `host:port`.
        #[arg(long)]
        client_addr: String,
    },
    /// Promotes a caught-up learner to voter (joint consensus).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Removes a member (learner or voter; the leader too).
    Remove {
        /// The member's id.
        id: u64,
    },
    /// Has the node take a snapshot and compact its log now.
    Snapshot,
}

async fn finish(resp: reqwest::Response) -> anyhow::Result<()> {
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.context("reading the answer")?;
    if status.is_success() {
        if let Some(e) = etag {
            eprintln!("revision {}", e.trim_matches('"'));
        }
        println!("{body}");
        Ok(())
    } else {
        bail!("{status}: {body}")
    }
}

/// Runs one `ctl` operation and prints the answer.
///
/// # Errors
///
/// When the node cannot be reached or answers with an error status.
pub async fn run(a: CtlArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = a.endpoint.trim_end_matches('/');
    let key_url = |k: &str| format!("{base}/v1/kv/{}", utf8_percent_encode(k, PATH_SAFE));
    let resp = match a.op {
        CtlOp::Put {
            key,
            value,
            if_match,
            if_absent,
        } => {
            let mut r = client.put(key_url(&key)).body(value);
            if let Some(rev) = if_match {
                r = r.header("if-match", format!("\"{rev}\""));
            }
            if if_absent {
                r = r.header("if-none-match", "*");
            }
            r.send().await
        }
        CtlOp::Get { key, consistency } => {
            client
                .get(key_url(&key))
                .query(&[("consistency", consistency)])
                .send()
                .await
        }
        CtlOp::Delete { key, if_match } => {
            let mut r = client.delete(key_url(&key));
            if let Some(rev) = if_match {
                r = r.header("if-match", format!("\"{rev}\""));
            }
            r.send().await
        }
        CtlOp::List {
            prefix,
            limit,
            cursor,
            keys_only,
        } => {
            let mut query = vec![("prefix", prefix), ("limit", limit.to_string())];
            if let Some(c) = cursor {
                query.push(("cursor", c));
            }
            if keys_only {
                query.push(("keys_only", "true".to_string()));
            }
            client
                .get(format!("{base}/v1/kv"))
                .query(&query)
                .send()
                .await
        }
        CtlOp::Status => client.get(format!("{base}/v1/cluster")).send().await,
        CtlOp::AddLearner {
            id,
            peer_addr,
            client_addr,
        } => {
            client
                .post(format!("{base}/v1/cluster/learners"))
                .json(&serde_json::json!({
                    "id": id,
                    "peer_addr": peer_addr,
                    "client_addr": client_addr,
                }))
                .send()
                .await
        }
        CtlOp::Promote { id } => {
            client
                .post(format!("{base}/v1/cluster/voters/{id}"))
                .send()
                .await
        }
        CtlOp::Remove { id } => {
            client
                .delete(format!("{base}/v1/cluster/members/{id}"))
                .send()
                .await
        }
        CtlOp::Snapshot => {
            client
                .post(format!("{base}/v1/cluster/snapshot"))
                .send()
                .await
        }
        CtlOp::TransferLeader { to } => {
            let body = to
                .map(|t| serde_json::json!({ "target": t }).to_string())
                .unwrap_or_default();
            client
                .post(format!("{base}/v1/cluster/transfer-leader"))
                .body(body)
                .send()
                .await
        }
    }
    .with_context(|| format!("cannot reach {base}"))?;
    finish(resp).await
}
