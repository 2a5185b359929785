//! `raft-node ctl snapshot save FILE`: downloads a backup
//! (`GET /v1/cluster/backup`) to `FILE.part` beside `FILE`, syncs it,
//! checks it whole ([`crate::backup::verify`]) and only then renames it to
//! `FILE`: a file at `FILE` is always a complete, verified backup.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use super::{CtlArgs, Format};

/// How the node is reached: the HTTP client and the token.
struct Http {
    client: reqwest::Client,
    token: Option<String>,
    idle: Duration,
}

fn http(a: &CtlArgs) -> anyhow::Result<Http> {
    if a.timeout_ms == 0 {
        bail!("--timeout-ms must be positive");
    }
    let idle = Duration::from_millis(a.timeout_ms);
    // No overall timeout: a backup takes as long as the store is large.
    // Each wait for bytes is bounded by --timeout-ms instead.
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(idle)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &a.cacert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem).context("--cacert")? {
            b = b.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
        let mut pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        pem.extend(std::fs::read(key).with_context(|| format!("reading {}", key.display()))?);
        b = b.identity(reqwest::Identity::from_pem(&pem).context("--cert/--key")?);
    }
    let token = match &a.token_file {
        Some(p) => Some(raft_client::read_token_file(p)?),
        None => None,
    };
    Ok(Http {
        client: b.build().context("building the HTTP client")?,
        token,
        idle,
    })
}

/// An error with its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Where one attempt ended.
enum Attempt {
    /// Saved: what the node said about it.
    Done(crate::backup::VerifiedBackup),
    /// Try this endpoint (the leader) instead.
    Leader(String),
    /// This endpoint failed; the next may do.
    Next(String),
}

/// Creates (or truncates) `path` readable and writable by its owner only,
/// whatever the umask: a backup holds every key and value of the store.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // An existing file keeps its mode through open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(file)
}

/// The answer's bytes into `part`, each wait bounded by `idle`.
async fn download(mut resp: reqwest::Response, part: &Path, idle: Duration) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, create_private(part)?);
    loop {
        let chunk = tokio::time::timeout(idle, resp.chunk())
            .await
            .map_err(|_| anyhow::anyhow!("no bytes from the node for {} ms", idle.as_millis()))?
            .context("the backup was cut off")?;
        let Some(chunk) = chunk else { break };
        out.write_all(&chunk)
            .with_context(|| format!("writing {}", part.display()))?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("syncing {}", part.display()))
}

async fn attempt(h: &Http, base: &str, stale: bool, part: &Path) -> anyhow::Result<Attempt> {
    let base = base.trim().trim_end_matches('/');
    let mut url = format!("{base}/v1/cluster/backup");
    if stale {
        url.push_str("?consistency=stale");
    }
    let mut req = h.client.get(&url);
    if let Some(t) = &h.token {
        req = req.bearer_auth(t);
    }
    let resp = match tokio::time::timeout(h.idle, req.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Ok(Attempt::Next(format!("{url}: {}", chain(&e)))),
        Err(_) => return Ok(Attempt::Next(format!("{url}: no answer in time"))),
    };
    let status = resp.status();
    if !status.is_success() {
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let detail = body["detail"].as_str().unwrap_or("").to_owned();
        if status.as_u16() == 421 {
            if let Some(addr) = body["leader_client_addr"].as_str() {
                let scheme = base.split("://").next().unwrap_or("http");
                return Ok(Attempt::Leader(format!("{scheme}://{addr}")));
            }
        }
        if status.is_server_error() || status.as_u16() == 421 {
            return Ok(Attempt::Next(format!("{url}: {status}: {detail}")));
        }
        bail!("{url}: {status}: {detail}");
    }
    let result = download(resp, part, h.idle).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(part);
        return Ok(Attempt::Next(format!("{url}: {e:#}")));
    }
    match crate::backup::verify(part) {
        Ok(v) => Ok(Attempt::Done(v)),
        Err(e) => {
            let _ = std::fs::remove_file(part);
            bail!("the downloaded backup does not verify, nothing saved: {e}")
        }
    }
}

/// `ctl snapshot save FILE [--stale]`.
///
/// # Errors
///
/// No endpoint served a backup, or the file cannot be written, or the
/// download does not verify.
pub(super) async fn save(a: &CtlArgs, file: &Path, stale: bool) -> anyhow::Result<()> {
    let h = http(a)?;
    let part = PathBuf::from(format!("{}.part", file.display()));
    let mut queue: Vec<String> = a.endpoints.clone();
    queue.reverse();
    let mut failures = Vec::new();
    let mut followed = 0;
    while let Some(endpoint) = queue.pop() {
        match attempt(&h, &endpoint, stale, &part).await? {
            Attempt::Done(v) => return finish(a, &part, file, &v),
            Attempt::Leader(l) if followed < 3 => {
                followed += 1;
                queue.push(l);
            }
            Attempt::Leader(l) => failures.push(format!("{endpoint}: not the leader ({l})")),
            Attempt::Next(why) => failures.push(why),
        }
    }
    bail!("no node served a backup: {}", failures.join("; "))
}

fn finish(
    a: &CtlArgs,
    part: &Path,
    file: &Path,
    v: &crate::backup::VerifiedBackup,
) -> anyhow::Result<()> {
    std::fs::rename(part, file)
        .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    crate::snapshot::sync_directory(dir).with_context(|| format!("syncing {}", dir.display()))?;
    let h = &v.header;
    if a.write_out == Some(Format::Table) {
        println!("FILE\tINDEX\tTERM\tBYTES\tRECORDS\tSHA256");
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            file.display(),
            h.index,
            h.term,
            v.bytes,
            v.records,
            v.sha256
        );
        return Ok(());
    }
    println!(
        "{}",
        json!({
            "file": file.display().to_string(),
            "index": h.index,
            "term": h.term,
            "bytes": v.bytes,
            "records": v.records,
            "sha256": v.sha256,
            "consistency": h.consistency,
            "read_index": h.read_index,
            "node": h.node,
            "voters": h.voters,
        })
    );
    Ok(())
}
