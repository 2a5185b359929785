//! Helpers shared by the multi-process tests: real `raft-node` processes on
//! loopback with free ports and development certificates.
//!
//! The tests talk to the nodes the way an application does: through
//! `raft_client`, the workspace's typed client ([`client_of`], [`via`],
//! [`status`], [`leader`], [`put`], [`wait_status`]). Raw HTTP (reqwest and
//! `serde_json::Value`) is kept only in tests whose point is the raw HTTP:
//! status codes, headers and malformed input (`fuzz_http.rs`,
//! `security.rs`, `api.rs` and the contract checks in `cluster.rs`);
//! [`status_past_503`] is theirs.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use raft_client::launcher::{initial_cluster, NodeCommand};
use raft_client::{Client, ClientBuilder, ClusterStatus, RetryPolicy};

pub mod etcd;
pub mod raw_http;
pub mod raw_peer;

pub struct Proc {
    pub id: u64,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub http: String,
    pub log: PathBuf,
    /// Environment variables the process starts with.
    pub env: Vec<(String, PathBuf)>,
}

impl Proc {
    pub fn start(&mut self) {
        self.spawn(Command::new(env!("CARGO_BIN_EXE_raft-node")));
    }

    /// Starts `program` (`raft-node`, or a command that ends by running
    /// it, as [`namespace_command`]'s) with this process's arguments and
    /// environment, logging to its log.
    pub fn spawn(&mut self, mut program: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = program
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start raft-node (unshare: util-linux)");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not stop after SIGTERM; log:\n{}",
                self.id,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback port for a node to bind later, free when this returns.
///
/// It comes from below the kernel's ephemeral range: a port the kernel
/// hands out for `bind(0)` or `connect` (every HTTP client and QUIC
/// endpoint of the tests running in parallel) could be taken between this
/// check and the node's own bind, which happens hundreds of milliseconds
/// later in a debug process. Ports below that range are taken only by
/// explicit binds: this sequence, spread over processes by their id.
fn free_port(bindable: impl Fn(SocketAddr) -> bool) -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(11_000, 65_535);
    let (first, span) = (10_000u32, low - 10_000);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = u16::try_from(first + n % span).expect("below 65536");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if bindable(addr) {
            return addr;
        }
    }
    panic!("no free loopback port in {first}..{low}");
}

pub fn free_tcp() -> SocketAddr {
    free_port(|a| TcpListener::bind(a).is_ok())
}

pub fn free_udp() -> SocketAddr {
    free_port(|a| UdpSocket::bind(a).is_ok())
}

pub fn cluster(dir: &Path, n: u64) -> Vec<Proc> {
    let limits = [
        "--max-key-bytes=64".to_string(),
        "--max-value-bytes=4096".to_string(),
    ];
    cluster_with(dir, n, &limits, &[], "http")
}

/// Starts `n` nodes (ids 1..=n) with development certificates that also
/// name `names`, fast ticks, and the `extra` flags; `scheme` is `http` or
/// `https` (for `--client-tls`).
pub fn cluster_with(
    dir: &Path,
    n: u64,
    extra: &[String],
    names: &[String],
    scheme: &str,
) -> Vec<Proc> {
    cluster_with_env(dir, n, extra, names, scheme, |_| Vec::new())
}

/// `cluster_with`, each node started with the environment `env(id)`.
pub fn cluster_with_env(
    dir: &Path,
    n: u64,
    extra: &[String],
    names: &[String],
    scheme: &str,
    env: impl Fn(u64) -> Vec<(String, PathBuf)>,
) -> Vec<Proc> {
    let ids: Vec<u64> = (1..=n).collect();
    let certs = dir.join("certs");
    // Certificates for three spare ids too, for nodes that join later.
    let cert_ids: Vec<u64> = (1..=n + 3).collect();
    raft_net_quic::certs::write_dev_certs(&certs, &cert_ids, names).unwrap();
    let addrs: Vec<(SocketAddr, SocketAddr)> =
        ids.iter().map(|_| (free_udp(), free_tcp())).collect();
    let initial = initial_cluster(ids.iter().zip(&addrs).map(|(id, (p, c))| (*id, p, c)));
    ids.iter()
        .zip(&addrs)
        .map(|(&id, (peer, client))| {
            let cmd = node_command(dir, id, *peer, *client)
                .initial_cluster(initial.clone())
                .args(extra.iter().cloned());
            let mut p = proc_for(dir, &cmd, format!("{scheme}://{client}"));
            p.env = env(id);
            p.start();
            p
        })
        .collect()
}

/// The process of `cmd` (not started), logging to `dir/node-ID.log`, whose
/// HTTP API is at `http`.
pub fn proc_for(dir: &Path, cmd: &NodeCommand, http: String) -> Proc {
    Proc {
        id: cmd.id(),
        args: cmd.to_args(),
        child: None,
        http,
        log: dir.join(format!("node-{}.log", cmd.id())),
        env: Vec::new(),
    }
}

/// A client of every node in `procs`, the way an application would build
/// one ([`builder_of`] with nothing added).
pub fn client_of(procs: &[Proc]) -> Client {
    builder_of(procs).build().expect("a client of the cluster")
}

/// The builder of [`client_of`], for a test to add a CA, a client
/// certificate or a token. Requests that changed nothing (refused
/// connection, 503) are sent again for up to 30 s, long enough to ride out
/// an election on a loaded machine.
pub fn builder_of(procs: &[Proc]) -> ClientBuilder {
    Client::builder(procs.iter().map(|p| p.http.clone())).retry(
        RetryPolicy::default()
            .max_attempts(200)
            .budget(Duration::from_secs(30)),
    )
}

/// `client`, sending to node `p` only (a write through a follower is
/// forwarded by that node, not by the client).
pub fn via(client: &Client, p: &Proc) -> Client {
    client.at(&p.http).expect("a node's URL")
}

/// `client` on node `p`, one attempt of at most `secs` seconds: for polls.
fn poll(client: &Client, p: &Proc, secs: u64) -> Client {
    via(client, p)
        .with_retry(RetryPolicy::none())
        .with_request_timeout(Duration::from_secs(secs))
}

/// `p`'s status with the store digest, or `None` when it does not answer
/// within 2 s.
pub async fn status(client: &Client, p: &Proc) -> Option<ClusterStatus> {
    poll(client, p, 2).status_with_digest().await.ok()
}

/// `p`'s status with the store digest, asked again for up to 30 s while the
/// node does not answer (a loaded machine may take longer than one
/// request's 2 s); panics with the node's log after that.
pub async fn status_of(client: &Client, p: &Proc) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = match poll(client, p, 2).status_with_digest().await {
            Ok(s) => return s,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "node {}: no status within 30 s ({err}); log:\n{}",
            p.id,
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every running node agrees on a leader (not `except`).
pub async fn leader(client: &Client, procs: &[Proc], except: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for p in procs.iter().filter(|p| p.child.is_some()) {
            // Without the digest: polling must not scan the whole store.
            let s = poll(client, p, 2).status().await;
            seen.push(s.ok().and_then(|s| s.leader));
        }
        if let Some(Some(l)) = seen.first() {
            if Some(*l) != except && seen.iter().all(|s| *s == Some(*l)) {
                return *l;
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- node {}\n{}", p.id, p.log_text()))
                .collect();
            panic!(
                "no agreed leader within 60 s: {seen:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node of `procs` whose id is `id`.
pub fn by_id(procs: &[Proc], id: u64) -> &Proc {
    procs
        .iter()
        .find(|p| p.id == id)
        .expect("a node of this cluster")
}

/// `n` nodes over HTTP with the `extra` flags ([`cluster_with`]), a client
/// of them ([`client_of`]) and the leader they agree on.
pub async fn led_cluster(dir: &Path, n: u64, extra: &[String]) -> (Vec<Proc>, Client, u64) {
    let procs = cluster_with(dir, n, extra, &[], "http");
    let client = client_of(&procs);
    let lead = leader(&client, &procs, None).await;
    (procs, client, lead)
}

/// Writes `value` at `key` through node `p` (sent again while nothing was
/// applied, as `client`'s retry policy allows); its revision.
pub async fn put(client: &Client, p: &Proc, key: &str, value: &str) -> raft_client::Result<u64> {
    via(client, p).put(key, value.to_owned()).await
}

/// The `raft-node run` command of node `id` under `dir` (data,
/// certificates from `dir/certs`, fast ticks), without cluster flags.
/// Node `id`'s command line: listening on `peer` / `client`, with the
/// development certificates in `dir/certs`, 20 ms ticks.
pub fn node_command(dir: &Path, id: u64, peer: SocketAddr, client: SocketAddr) -> NodeCommand {
    NodeCommand::new(id, dir.join(format!("node-{id}")))
        .listen(client, peer)
        .dev_certs(dir.join("certs"))
        .tick_ms(20)
}

/// A new node `id` (whose certificate `cluster_with` wrote as a spare) that
/// joins the cluster through `join_url`, with the `extra` flags. Started.
pub fn joiner(dir: &Path, id: u64, join_url: &str, extra: &[String]) -> Proc {
    let (peer, client) = (free_udp(), free_tcp());
    let cmd = node_command(dir, id, peer, client)
        .join(join_url)
        .args(extra.iter().cloned());
    let mut p = proc_for(dir, &cmd, format!("http://{client}"));
    p.start();
    p
}

/// Polls `check` on `p`'s status until it holds, for up to `secs` seconds.
pub async fn wait_status(
    client: &Client,
    p: &Proc,
    secs: u64,
    what: &str,
    check: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // Without the digest: polling must not scan the whole store.
        match poll(client, p, 5).status().await {
            Ok(s) if check(&s) => return s,
            Ok(s) if Instant::now() > deadline => panic!(
                "node {}: {what} not reached within {secs} s; status {:#}\nlog:\n{}",
                p.id,
                s.raw,
                p.log_text()
            ),
            Err(e) if Instant::now() > deadline => panic!(
                "node {}: no status within {secs} s ({what}): {e}; log:\n{}",
                p.id,
                p.log_text()
            ),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a failure needs to say about each node: its process (running,
/// with its scheduler state from `/proc`, or its exit status) and the
/// last `lines` lines of its log.
pub fn nodes_report(procs: &mut [Proc], lines: usize) -> String {
    let mut out = String::new();
    for p in procs {
        let state = match p.child.as_mut() {
            None => "not running (stopped by the test)".to_string(),
            Some(c) => match c.try_wait() {
                Ok(Some(status)) => format!("exited: {status}"),
                Ok(None) => {
                    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id()))
                        .unwrap_or_default();
                    // The state follows the command name, which is in
                    // parentheses.
                    let state = stat
                        .rsplit_once(") ")
                        .and_then(|(_, rest)| rest.split(' ').next())
                        .unwrap_or("?");
                    format!("running (pid {}, state {state})", c.id())
                }
                Err(e) => format!("unknown: {e}"),
            },
        };
        let text = p.log_text();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        out.push_str(&format!(
            "--- node {} at {}: {state}; last {lines} log lines:\n{tail}\n",
            p.id, p.http
        ));
    }
    out
}

/// Every node is still running and its log shows no panic; `context` (the
/// seed) starts each failure message.
pub fn assert_running_without_panic(procs: &mut [Proc], context: &str) {
    for p in procs {
        let exited = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "{context}: node {} exited ({exited:?}); log:\n{}",
            p.id,
            p.log_text()
        );
        assert!(
            !p.log_text().contains("panicked"),
            "{context}: node {} panicked; log:\n{}",
            p.id,
            p.log_text()
        );
    }
}

/// Raw HTTP: the status of `request`, sent again while it is 503 (no leader for a
/// moment, e.g. after a leadership transfer), for up to 20 s.
pub async fn status_past_503<F, Fut>(mut request: F) -> reqwest::StatusCode
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = request().await.status();
        if s != 503 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The environment variable CI sets to turn a skip for lack of root into a
/// failure.
pub const REQUIRE_ROOT_ENV: &str = "CI_REQUIRE_NETNS";

/// Skips a test that cannot run here for `reason` (a missing privilege or
/// tool): a line on stderr. Where CI requires it to run (`require_env` is
/// set), fails instead.
pub fn skip_unless_required(require_env: &str, reason: &str) {
    assert!(
        std::env::var_os(require_env).is_none(),
        "this test {reason}; {require_env} is set"
    );
    eprintln!("skipped: this test {reason}");
}

/// Whether this test runs as root, which it needs for `what` (namespaces
/// of its own); if not, it is skipped ([`skip_unless_required`] with
/// [`REQUIRE_ROOT_ENV`]).
pub fn has_root_for(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip_unless_required(REQUIRE_ROOT_ENV, &format!("needs root ({what})"));
    false
}

/// A command that runs `raft-node` in new namespaces: `unshare` with
/// `unshare_args`, then the shell line `setup` (its `$1`, `$2`, ... are
/// `setup_args`), then `raft-node` with the arguments the caller adds.
pub fn namespace_command(unshare_args: &[&str], setup: &str, setup_args: &[&OsStr]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(unshare_args)
        .args(["sh", "-c"])
        .arg(format!(
            "{setup} && shift {} && exec \"$@\"",
            setup_args.len()
        ))
        .arg("sh")
        .args(setup_args)
        .arg(env!("CARGO_BIN_EXE_raft-node"));
    cmd
}

/// Starts `p` in new namespaces, after `setup` ([`namespace_command`]).
pub fn start_in_namespace(p: &mut Proc, unshare_args: &[&str], setup: &str, setup_args: &[&OsStr]) {
    p.spawn(namespace_command(unshare_args, setup, setup_args));
}

/// What a finished process wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that a `raft-node` command failed with exit status 1 and that
/// its stderr names `what` (the reason a user reads).
pub fn assert_fails_naming(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(what), "stderr does not name {what:?}: {err}");
}
