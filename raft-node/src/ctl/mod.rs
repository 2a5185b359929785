//! `raft-node ctl`: the command-line client of the HTTP API (put, get,
//! delete, list, cluster status, leadership transfer, membership changes,
//! snapshots) on [`raft_client`], against any nodes of a cluster.

mod backup;
mod output;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use raft_client::{Client, ListOptions, Precondition, ReadConsistency, RetryPolicy, WriteOptions};

/// Largest value `put --from-file` reads (the node refuses values above
/// its `--max-value-bytes`, at most 8 MiB).
pub const VALUE_READ_MAX: u64 = 16 << 20;

/// `raft-node ctl` settings.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The nodes to talk to, comma-separated (any nodes of the cluster;
    /// followers forward to the leader, and the next one is tried when one
    /// fails).
    #[arg(
        long = "endpoints",
        visible_alias = "endpoint",
        env = "RAFT_ENDPOINT",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081"
    )]
    pub endpoints: Vec<String>,
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
    /// How long to wait for one answer, connecting included, in
    /// milliseconds; also how long requests that got no definite answer
    /// are retried. `snapshot save`: how long to wait for each piece of
    /// the backup (the whole download has no limit).
    #[arg(long, env = "RAFT_CTL_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Output: `json` (the node's answers) or `table` (for people). Without
    /// it, `get` writes the value's bytes as they are and the rest JSON.
    #[arg(short = 'w', long = "write-out", value_enum)]
    pub write_out: Option<Format>,
    /// What to do.
    #[command(subcommand)]
    pub op: CtlOp,
}

/// How `ctl` prints answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON documents.
    Json,
    /// Aligned columns.
    Table,
}

/// A `ctl` operation.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlOp {
    /// Writes a value (given, or read from a file or stdin).
    Put {
        /// The key.
        key: String,
        /// The value (or use `--from-file`).
        #[arg(required_unless_present = "from_file", conflicts_with = "from_file")]
        value: Option<String>,
        /// Read the value from this file, byte for byte (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Only if the key is at this revision.
        #[arg(long, conflicts_with = "if_absent")]
        if_match: Option<u64>,
        /// Only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
        /// The idempotency key (default: a random one, so a write whose
        /// answer was lost is retried safely).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Reads a value; without `-w`, writes its bytes to stdout as they are
    /// (and the revision to stderr).
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
        /// At most this many per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Go on from a previous answer's `next`.
        #[arg(long)]
        cursor: Option<String>,
        /// Keys and revisions only, no values.
        #[arg(long)]
        keys_only: bool,
        /// Follow `next` until the end, up to `--max-pages` pages.
        #[arg(long)]
        all: bool,
        /// Most pages `--all` reads.
        #[arg(long, default_value_t = 1000)]
        max_pages: usize,
    },
    /// Shows the cluster status.
    Status {
        /// Include the key count and digest of the replicated state (a
        /// full scan of the node's store).
        #[arg(long)]
        digest: bool,
    },
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
        /// Its peer (QUIC) address, `ip:port` or `name:port`.
        #[arg(long)]
        peer_addr: String,
        /// Its HTTP address, `host:port`.
        #[arg(long)]
        client_addr: String,
    },
    /// Records new addresses of a member (it moved), without removing it.
    UpdateMember {
        /// The member's id.
        id: u64,
        /// Its new peer (QUIC) address, `ip:port` or `name:port`.
        #[arg(long)]
        peer_addr: String,
        /// Its new HTTP address, `host:port`.
        #[arg(long)]
        client_addr: String,
        /// Record the addresses even if the node does not answer there now.
        #[arg(long)]
        force: bool,
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
    /// Without a subcommand: has the (first) node take a snapshot and
    /// compact its log now. `snapshot save FILE`: saves a backup.
    Snapshot {
        /// `save FILE`: a backup of the whole store to FILE.
        #[command(subcommand)]
        action: Option<SnapshotAction>,
    },
}

/// What `ctl snapshot` does besides compacting.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotAction {
    /// Saves a consistent backup of the store to FILE (through FILE.part,
    /// verified, synced, renamed), for `raft-node restore`; prints its
    /// index, term, size and SHA-256. Needs the admin token.
    Save {
        /// Where to write the backup.
        file: PathBuf,
        /// Back up the first node's own applied state instead of asking
        /// the leader for a linearizable one.
        #[arg(long)]
        stale: bool,
    },
}

/// The client of `ctl`: endpoints, timeout, CA, client certificate, token.
fn client(a: &CtlArgs) -> anyhow::Result<Client> {
    if a.timeout_ms == 0 {
        bail!("--timeout-ms must be positive");
    }
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut b = Client::builder(a.endpoints.iter().cloned())
        .connect_timeout(timeout)
        .request_timeout(timeout)
        .retry(RetryPolicy::default().budget(timeout));
    if let Some(path) = &a.cacert {
        b = b.ca_file(path)?;
    }
    if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
        b = b.identity_files(cert, key)?;
    }
    if let Some(path) = &a.token_file {
        b = b.token_file(path)?;
        for e in &a.endpoints {
            if plain_beyond_loopback(e) {
                eprintln!(
                    "warning: the token goes to {e} over plain HTTP, where anyone on the \
                     network path can read it; use an https:// endpoint"
                );
            }
        }
    }
    Ok(b.build()?)
}

/// Whether `endpoint` is `http://` to a host other than this one.
fn plain_beyond_loopback(endpoint: &str) -> bool {
    let Some(rest) = endpoint.trim().strip_prefix("http://") else {
        return false;
    };
    let loopback = ["localhost:", "localhost/", "127.", "[::1]"]
        .iter()
        .any(|p| rest.starts_with(p))
        || rest == "localhost";
    !loopback
}

/// Reads a value file (`-`: stdin), at most [`VALUE_READ_MAX`] bytes.
fn read_value(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut value = Vec::new();
    let limit = VALUE_READ_MAX + 1;
    if path == Path::new("-") {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut value)
            .context("reading the value from stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut value))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if value.len() as u64 > VALUE_READ_MAX {
        bail!("the value is larger than {VALUE_READ_MAX} bytes");
    }
    Ok(value)
}

/// What a transport failure means to someone at a terminal.
fn reach(e: raft_client::Error, c: &Client) -> anyhow::Error {
    match &e {
        raft_client::Error::Connect { .. }
        | raft_client::Error::OutcomeUnknown { problem: None, .. } => {
            anyhow::Error::new(e).context(format!("cannot reach {}", c.endpoints().join(", ")))
        }
        _ => e.into(),
    }
}

/// Runs one `ctl` operation and prints the answer.
///
/// # Errors
///
/// When no node can be reached or the node answers with an error, or a
/// file given (token, CA, certificate, key, value) cannot be used.
pub async fn run(a: CtlArgs) -> anyhow::Result<()> {
    if let CtlOp::Snapshot {
        action: Some(SnapshotAction::Save { file, stale }),
    } = &a.op
    {
        return backup::save(&a, &client(&a)?, file, *stale).await;
    }
    let c = client(&a)?;
    let out = output::Printer::new(a.write_out);
    match a.op {
        CtlOp::Put {
            key,
            value,
            from_file,
            if_match,
            if_absent,
            idempotency_key,
        } => {
            let value = match (value, from_file) {
                (_, Some(path)) => read_value(&path)?,
                (Some(v), None) => v.into_bytes(),
                (None, None) => bail!("give a value or --from-file"),
            };
            let precondition = match (if_match, if_absent) {
                (Some(rev), _) => Precondition::Revision(rev),
                (None, true) => Precondition::Absent,
                (None, false) => Precondition::None,
            };
            let mut opts = WriteOptions::default().precondition(precondition);
            if let Some(k) = idempotency_key {
                opts = opts.idempotency_key(k);
            }
            let rev = c.put_with(key.as_bytes(), value, &opts).await;
            out.revision(rev.map_err(|e| reach(e, &c))?)
        }
        CtlOp::Get { key, consistency } => {
            let consistency: ReadConsistency = consistency.parse()?;
            match c.get_with(key.as_bytes(), consistency).await {
                Ok(Some(entry)) => out.entry(&key, &entry),
                Ok(None) => bail!("404 not-found: no key {key:?}"),
                Err(e) => Err(reach(e, &c)),
            }
        }
        CtlOp::Delete { key, if_match } => {
            let precondition = if_match.map_or(Precondition::None, Precondition::Revision);
            let opts = WriteOptions::default().precondition(precondition);
            match c.delete_with(key.as_bytes(), &opts).await {
                Ok(Some(rev)) => out.revision(rev),
                Ok(None) => bail!("404 not-found: no key {key:?}"),
                Err(e) => Err(reach(e, &c)),
            }
        }
        CtlOp::List {
            prefix,
            limit,
            cursor,
            keys_only,
            all,
            max_pages,
        } => {
            let mut opts = ListOptions::prefix(prefix)
                .limit(limit)
                .keys_only(keys_only);
            opts.cursor = cursor;
            list(&c, &out, opts, all, max_pages).await
        }
        op => cluster_op(&c, &out, op).await,
    }
}

async fn list(
    c: &Client,
    out: &output::Printer,
    opts: ListOptions,
    all: bool,
    max_pages: usize,
) -> anyhow::Result<()> {
    if !all {
        let page = c.list(&opts).await.map_err(|e| reach(e, c))?;
        return out.page(&page);
    }
    let mut pages = c.lister(opts);
    let mut n = 0;
    while let Some(page) = pages.next_page().await.map_err(|e| reach(e, c))? {
        out.page(&page)?;
        n += 1;
        if n >= max_pages && page.more {
            bail!("stopped after --max-pages {max_pages} pages; more keys follow");
        }
    }
    Ok(())
}

async fn cluster_op(c: &Client, out: &output::Printer, op: CtlOp) -> anyhow::Result<()> {
    let e = |err| reach(err, c);
    match op {
        CtlOp::Status { digest } => {
            let s = if digest {
                c.status_with_digest().await
            } else {
                c.status().await
            };
            out.status(&s.map_err(e)?)
        }
        CtlOp::TransferLeader { to } => out.leader(c.transfer_leader(to).await.map_err(e)?),
        CtlOp::AddLearner {
            id,
            peer_addr,
            client_addr,
        } => out.membership(
            &c.add_learner(id, &peer_addr, &client_addr)
                .await
                .map_err(e)?,
        ),
        CtlOp::UpdateMember {
            id,
            peer_addr,
            client_addr,
            force,
        } => out.membership(
            &c.update_member(id, &peer_addr, &client_addr, force)
                .await
                .map_err(e)?,
        ),
        CtlOp::Promote { id } => out.membership(&c.promote(id).await.map_err(e)?),
        CtlOp::Remove { id } => out.membership(&c.remove(id).await.map_err(e)?),
        CtlOp::Snapshot { action: None } => out.snapshot(c.snapshot().await.map_err(e)?),
        CtlOp::Put { .. }
        | CtlOp::Get { .. }
        | CtlOp::Delete { .. }
        | CtlOp::List { .. }
        | CtlOp::Snapshot { action: Some(_) } => {
            bail!("not a cluster operation")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_over_plain_http_beyond_this_host_is_flagged() {
        assert!(plain_beyond_loopback("http://10.0.0.1:8080"));
        assert!(!plain_beyond_loopback("http://127.0.0.1:8080"));
        assert!(!plain_beyond_loopback("http://localhost:8080"));
        assert!(!plain_beyond_loopback("https://10.0.0.1:8080"));
    }

    #[test]
    fn a_value_file_is_read_byte_for_byte_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        std::fs::write(&path, [0u8, 0xff, b'\n']).unwrap();
        assert_eq!(read_value(&path).unwrap(), vec![0u8, 0xff, b'\n']);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(VALUE_READ_MAX + 1).unwrap();
        assert!(read_value(&path)
            .unwrap_err()
            .to_string()
            .contains("larger"));
    }
}
