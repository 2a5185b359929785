//! `raft-node ctl`: a small client for the HTTP API (put, get, delete,
//! list, cluster status, leadership transfer, membership changes,
//! snapshots) against any node.

use std::path::PathBuf;
use std::time::Duration;

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
    /// File holding the bearer token to send (`Authorization: Bearer`);
    /// like the node's, it must be readable by its owner only.
    #[arg(long, env = "RAFT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the node's HTTPS certificate (for an
    /// `https://` endpoint; the cluster CA, `ca.pem`).
    #[arg(long, env = "RAFT_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// PEM file of a client certificate to present (for a node started
    /// with `--client-ca`); needs `--key`.
    #[arg(long, env = "RAFT_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM file of the private key of `--cert`.
    #[arg(long, env = "RAFT_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// How long to wait for an answer, connecting included, in
    /// milliseconds.
    #[arg(long, env = "RAFT_CTL_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
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

/// The HTTP client of `ctl`: its timeout, the CA to trust and the client
/// certificate to present.
fn client(a: &CtlArgs) -> anyhow::Result<reqwest::Client> {
    if a.timeout_ms == 0 {
        bail!("--timeout-ms must be positive");
    }
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .use_rustls_tls();
    if let Some(path) = &a.cacert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("no CA certificate in {}", path.display()))?;
        if certs.is_empty() {
            bail!("no CA certificate in {}", path.display());
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    } else if a.endpoint.starts_with("https://") {
        bail!("an https:// endpoint needs --cacert (the CA that signed the node's certificate)");
    }
    if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
        let mut pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?);
        let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
            format!(
                "{} and {} are not a certificate and its private key",
                cert.display(),
                key.display()
            )
        })?;
        builder = builder.identity(identity);
    }
    builder.build().context("building the HTTP client")
}

/// Runs one `ctl` operation and prints the answer.
///
/// # Errors
///
/// When the node cannot be reached or answers with an error status, or a
/// file given (token, CA, certificate, key) cannot be used.
pub async fn run(a: CtlArgs) -> anyhow::Result<()> {
    let token = match &a.token_file {
        Some(path) => Some(crate::config::read_token(path)?),
        None => None,
    };
    if token.is_some() && a.endpoint.starts_with("http://") {
        let rest = a.endpoint.trim_start_matches("http://");
        let loopback = ["localhost:", "localhost/", "127.", "[::1]"]
            .iter()
            .any(|p| rest.starts_with(p))
            || rest == "localhost";
        if !loopback {
            eprintln!(
                "warning: the token goes to {} over plain HTTP, where anyone on the network \
                 path can read it; use an https:// endpoint",
                a.endpoint
            );
        }
    }
    let client = client(&a)?;
    let with_token = |r: reqwest::RequestBuilder| match &token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let base = a.endpoint.trim_end_matches('/');
    let key_url = |k: &str| format!("{base}/v1/kv/{}", utf8_percent_encode(k, PATH_SAFE));
    let resp = match a.op {
        CtlOp::Put {
            key,
            value,
            if_match,
            if_absent,
        } => {
            let mut r = with_token(client.put(key_url(&key))).body(value);
            if let Some(rev) = if_match {
                r = r.header("if-match", format!("\"{rev}\""));
            }
            if if_absent {
                r = r.header("if-none-match", "*");
            }
            r.send().await
        }
        CtlOp::Get { key, consistency } => {
            with_token(client.get(key_url(&key)))
                .query(&[("consistency", consistency)])
                .send()
                .await
        }
        CtlOp::Delete { key, if_match } => {
            let mut r = with_token(client.delete(key_url(&key)));
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
            with_token(client.get(format!("{base}/v1/kv")))
                .query(&query)
                .send()
                .await
        }
        CtlOp::Status => {
            with_token(client.get(format!("{base}/v1/cluster")))
                .send()
                .await
        }
        CtlOp::AddLearner {
            id,
            peer_addr,
            client_addr,
        } => {
            with_token(client.post(format!("{base}/v1/cluster/learners")))
                .json(&serde_json::json!({
                    "id": id,
                    "peer_addr": peer_addr,
                    "client_addr": client_addr,
                }))
                .send()
                .await
        }
        CtlOp::Promote { id } => {
            with_token(client.post(format!("{base}/v1/cluster/voters/{id}")))
                .send()
                .await
        }
        CtlOp::Remove { id } => {
            with_token(client.delete(format!("{base}/v1/cluster/members/{id}")))
                .send()
                .await
        }
        CtlOp::Snapshot => {
            with_token(client.post(format!("{base}/v1/cluster/snapshot")))
                .send()
                .await
        }
        CtlOp::TransferLeader { to } => {
            let body = to
                .map(|t| serde_json::json!({ "target": t }).to_string())
                .unwrap_or_default();
            with_token(client.post(format!("{base}/v1/cluster/transfer-leader")))
                .body(body)
                .send()
                .await
        }
    }
    .with_context(|| format!("cannot reach {base}"))?;
    finish(resp).await
}
