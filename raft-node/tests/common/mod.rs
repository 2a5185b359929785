//! Helpers shared by the multi-process tests: real `raft-node` processes on
//! loopback with free ports and development certificates.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use raft_client::launcher::{initial_cluster, NodeCommand};
use serde_json::Value;

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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start raft-node");
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
            let mut p = Proc {
                id,
                args: cmd.to_args(),
                child: None,
                http: format!("{scheme}://{client}"),
                log: dir.join(format!("node-{id}.log")),
                env: env(id),
            };
            p.start();
            p
        })
        .collect()
}

pub async fn status(client: &reqwest::Client, p: &Proc) -> Option<Value> {
    let r = client
        .get(format!("{}/v1/cluster?digest=true", p.http))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// `p`'s status with the store digest, asked again for up to 30 s while the
/// node does not answer (a loaded machine may take longer than one
/// request's 2 s); panics with the node's log after that.
pub async fn status_of(client: &reqwest::Client, p: &Proc) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(client, p).await {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "node {}: no status within 30 s; log:\n{}",
            p.id,
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every running node agrees on a leader (not `except`).
pub async fn leader(client: &reqwest::Client, procs: &[Proc], except: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for p in procs.iter().filter(|p| p.child.is_some()) {
            seen.push(status(client, p).await.and_then(|s| s["leader"].as_u64()));
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

pub async fn put(client: &reqwest::Client, p: &Proc, key: &str, value: &str) -> reqwest::Response {
    client
        .put(format!("{}/v1/kv/{key}", p.http))
        .body(value.to_owned())
        .send()
        .await
        .unwrap()
}

/// The `raft-node run` command of node `id` under `dir` (data,
/// certificates from `dir/certs`, fast ticks), without cluster flags.
fn node_command(dir: &Path, id: u64, peer: SocketAddr, client: SocketAddr) -> NodeCommand {
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
    let mut p = Proc {
        id,
        args: cmd.to_args(),
        child: None,
        http: format!("http://{client}"),
        log: dir.join(format!("node-{id}.log")),
        env: Vec::new(),
    };
    p.start();
    p
}

/// Polls `check` on `p`'s status until it holds, for up to `secs` seconds.
pub async fn wait_status(
    client: &reqwest::Client,
    p: &Proc,
    secs: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // Without `digest=true`: polling must not scan the whole store.
        let s = match client
            .get(format!("{}/v1/cluster", p.http))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r.json::<Value>().await.ok(),
            Err(_) => None,
        };
        if let Some(s) = s {
            if check(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "node {}: {what} not reached within {secs} s; status {s:#}\nlog:\n{}",
                    p.id,
                    p.log_text()
                );
            }
        } else if Instant::now() > deadline {
            panic!(
                "node {}: no status within {secs} s ({what}); log:\n{}",
                p.id,
                p.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// The status of `request`, sent again while it is 503 (no leader for a
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
