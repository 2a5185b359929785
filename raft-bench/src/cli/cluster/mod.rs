//! Local clusters of real server processes on loopback — `raft-node` or
//! etcd — that the benchmarks start, load, and attack: find the leader,
//! kill or pause a member and bring it back, transfer leadership, read each
//! process's CPU time and peak memory.
//!
//! Both systems get the same timing (a 30 ms heartbeat, election timeouts
//! randomized from 150 ms), data in a directory on the same disk, fsync on,
//! and pre-vote on.

mod learner;
mod members;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub use super::binaries::{find_binary, install_etcd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

pub use learner::{CatchUp, Learner};
use members::{etcd_members, raft_members};
use serde_json::Value;

use super::procstat::{self, ProcSample};
use super::System;

/// How a cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Which server.
    pub system: System,
    /// Number of members (3 or 5).
    pub nodes: usize,
    /// Ports used: raft-node clients at `base`, peers at `base + 100`,
    /// gRPC at `base + 400`; etcd clients (HTTP and gRPC on one port) at
    /// `base + 200`, peers at `base + 300` (plus the member index).
    pub base_port: u16,
    /// The server binary.
    pub binary: PathBuf,
    /// Parent directory of the cluster's data directory (a temporary
    /// directory is made in it and removed afterwards).
    pub work_dir: PathBuf,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower end of the election timeout (randomized up to about twice it).
    pub election_ms: u64,
    /// Extra arguments for every member.
    pub extra_args: Vec<String>,
}

/// One member process.
#[derive(Debug)]
struct Member {
    /// 1-based index (raft-node's node id).
    id: u64,
    /// Base URL of its client API.
    url: String,
    /// URL of its etcd v3 gRPC API (etcd serves it on the client port).
    grpc_url: String,
    /// Command-line arguments, kept for restarts.
    args: Vec<String>,
    /// Where its stdout and stderr go.
    log: PathBuf,
    /// The running process, if any.
    child: Option<Child>,
    /// Whether it was stopped with SIGSTOP.
    paused: bool,
    /// etcd's member id (raft-node's is `id`).
    member_id: u64,
}

/// A running local cluster; dropping it kills every member.
#[derive(Debug)]
pub struct LocalCluster {
    opts: ClusterOptions,
    /// Owns the data directory; removed on drop.
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// etcd's control requests.
    http: reqwest::Client,
    /// raft-node's control requests, one client per member (one attempt
    /// each: the benchmark times what each member answers).
    raft: Vec<raft_client::Client>,
}

/// CPU and memory of one member over a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct NodeUsage {
    /// 1-based member index.
    pub node: u64,
    /// Whether it was the leader when the measurement began.
    pub leader: bool,
    /// CPU seconds (user + system) spent during the measurement.
    pub cpu_s: f64,
    /// Peak resident set size during the measurement, MiB.
    pub peak_rss_mib: f64,
}

const CONTROL_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a leadership transfer may take to be answered.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

impl LocalCluster {
    /// Starts the members and waits until they agree on a leader and accept
    /// a write.
    ///
    /// # Errors
    ///
    /// When a process cannot start, exits, or no leader emerges in 30 s.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Self> {
        if !(1..=9).contains(&opts.nodes) {
            bail!("--nodes must be between 1 and 9");
        }
        std::fs::create_dir_all(&opts.work_dir)
            .with_context(|| format!("creating {}", opts.work_dir.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(match opts.system {
                System::Raft => "raft-bench-raft-",
                System::Etcd => "raft-bench-etcd-",
            })
            .tempdir_in(&opts.work_dir)
            .with_context(|| format!("creating a directory in {}", opts.work_dir.display()))?;
        let members = match opts.system {
            System::Raft => raft_members(&opts, dir.path())?,
            System::Etcd => etcd_members(&opts, dir.path()),
        };
        let http = reqwest::Client::builder()
            .timeout(CONTROL_TIMEOUT)
            .build()
            .context("building an HTTP client")?;
        let mut raft = Vec::new();
        if opts.system == System::Raft {
            for m in &members {
                raft.push(
                    raft_client::Client::builder([m.url.as_str()])
                        .request_timeout(TRANSFER_TIMEOUT)
                        .retry(raft_client::RetryPolicy::none())
                        .build()?,
                );
            }
        }
        let mut c = LocalCluster {
            opts,
            dir,
            members,
            http,
            raft,
        };
        for i in 0..c.members.len() {
            c.spawn(i)?;
        }
        c.wait_stable(Duration::from_secs(30)).await?;
        if c.opts.system == System::Etcd {
            for i in 0..c.members.len() {
                let s = c.etcd_status(i).await?;
                c.members[i].member_id = s.0;
            }
        }
        Ok(c)
    }

    /// The system under test.
    pub fn system(&self) -> System {
        self.opts.system
    }

    /// Client base URLs, by member index.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    /// etcd v3 gRPC URLs (`http://host:port`), by member index.
    pub fn grpc_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.grpc_url.clone()).collect()
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The directory holding data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        start_process(&self.opts.binary, &mut self.members[i])
    }

    /// Where member `i` keeps its data.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        let id = self.members[i].id;
        self.dir().join(match self.opts.system {
            System::Raft => format!("node-{id}"),
            System::Etcd => format!("etcd-{id}"),
        })
    }

    /// Fails when a member that should be running has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.members.iter_mut().try_for_each(check_running)
    }

    /// Sends `signal` to member `i`.
    fn signal(&self, i: usize, signal: rustix::process::Signal) -> anyhow::Result<()> {
        let child = self.members[i]
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("member {} is not running", i + 1))?;
        let pid =
            rustix::process::Pid::from_raw(child.id() as i32).ok_or_else(|| anyhow!("bad pid"))?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("signalling member {}", i + 1))
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, rustix::process::Signal::KILL)?;
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.wait();
        }
        self.members[i].paused = false;
        Ok(())
    }

    /// SIGSTOP of member `i`.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, rustix::process::Signal::STOP)?;
        self.members[i].paused = true;
        Ok(())
    }

    /// Brings member `i` back: SIGCONT if paused, a restart on the same
    /// data if killed; then waits until it serves again.
    ///
    /// # Errors
    ///
    /// When it cannot restart or is not ready within 30 s.
    pub async fn recover(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].paused {
            self.signal(i, rustix::process::Signal::CONT)?;
            self.members[i].paused = false;
        }
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        self.wait_stable(Duration::from_secs(30)).await
    }

    /// Waits until every member reports the same leader and is caught up
    /// (raft-node's `/readyz`; etcd's `/health` and status).
    ///
    /// # Errors
    ///
    /// When a member exits or this takes longer than `limit`.
    pub async fn wait_stable(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if self.stable_now().await {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "the {} cluster did not settle on a leader within {:?}; logs in {}",
                    self.opts.system,
                    limit,
                    self.dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stable_now(&self) -> bool {
        let mut leader = None;
        for i in 0..self.members.len() {
            let l = match self.opts.system {
                System::Raft => {
                    match tokio::time::timeout(CONTROL_TIMEOUT, self.raft[i].ready()).await {
                        Ok(Ok(r)) if r.ready => r.leader,
                        _ => return false,
                    }
                }
                System::Etcd => match self.etcd_status(i).await {
                    Ok((_, l)) => Some(l),
                    Err(_) => return false,
                },
            };
            match (l, leader) {
                (None, _) | (Some(0), _) => return false,
                (Some(l), None) => leader = Some(l),
                (Some(l), Some(prev)) if l != prev => return false,
                _ => {}
            }
        }
        true
    }

    /// etcd's `(member id, leader id)` as member `i` sees them.
    async fn etcd_status(&self, i: usize) -> anyhow::Result<(u64, u64)> {
        let v: Value = self
            .http
            .post(format!("{}/v3/maintenance/status", self.members[i].url))
            .body("{}")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let num = |v: &Value| -> Option<u64> {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_u64())
        };
        let me = num(&v["header"]["member_id"]).ok_or_else(|| anyhow!("no member_id"))?;
        let leader = num(&v["leader"]).unwrap_or(0);
        Ok((me, leader))
    }

    /// The leader as member `i` sees it, as a member index; `None` when it
    /// knows none or does not answer within `timeout`.
    pub async fn leader_seen_by(&self, i: usize, timeout: Duration) -> Option<usize> {
        let fut = async {
            match self.opts.system {
                System::Raft => {
                    let id = self.raft[i].status().await.ok()?.leader?;
                    self.members.iter().position(|m| m.id == id)
                }
                System::Etcd => {
                    let (_, l) = self.etcd_status(i).await.ok()?;
                    self.members.iter().position(|m| m.member_id == l)
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    /// The current leader, asked of every member until one answers.
    ///
    /// # Errors
    ///
    /// When no member names a leader.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() && !self.members[i].paused {
                if let Some(l) = self.leader_seen_by(i, CONTROL_TIMEOUT).await {
                    return Ok(l);
                }
            }
        }
        bail!("no member names a leader")
    }

    /// Asks the leader (member `leader`) to hand leadership to another
    /// member; returns without waiting for the outcome to be observed.
    ///
    /// # Errors
    ///
    /// When the request is refused.
    pub async fn transfer(&self, leader: usize) -> anyhow::Result<()> {
        let url = &self.members[leader].url;
        let r = match self.opts.system {
            System::Raft => {
                return match self.raft[leader].transfer_leader(None).await {
                    Ok(_) => Ok(()),
                    Err(e) => bail!("leadership transfer refused: {e}"),
                };
            }
            System::Etcd => {
                let target = (leader + 1) % self.members.len();
                self.http
                    .post(format!("{url}/v3/maintenance/transfer-leadership"))
                    .timeout(TRANSFER_TIMEOUT)
                    .body(format!(
                        "{{\"targetID\":\"{}\"}}",
                        self.members[target].member_id
                    ))
                    .send()
                    .await?
            }
        };
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            bail!("leadership transfer refused: {status} {body}");
        }
        Ok(())
    }

    /// Samples every running member's CPU time and resets its peak RSS
    /// (`/proc/PID/clear_refs`), to begin a measurement.
    pub fn usage_begin(&self) -> Vec<Option<ProcSample>> {
        self.members
            .iter()
            .map(|m| {
                let pid = m.child.as_ref()?.id();
                procstat::reset_peak_rss(pid);
                procstat::sample(pid).ok()
            })
            .collect()
    }

    /// CPU seconds and peak RSS of every member since `begin`.
    pub fn usage_end(&self, begin: &[Option<ProcSample>], leader: usize) -> Vec<NodeUsage> {
        self.members
            .iter()
            .zip(begin)
            .enumerate()
            .filter_map(|(i, (m, b))| {
                let b = b.as_ref()?;
                let e = procstat::sample(m.child.as_ref()?.id()).ok()?;
                Some(NodeUsage {
                    node: m.id,
                    leader: i == leader,
                    cpu_s: e.cpu_s - b.cpu_s,
                    peak_rss_mib: e.peak_rss_kib as f64 / 1024.0,
                })
            })
            .collect()
    }

    /// Stops every member (SIGTERM, then SIGKILL after 5 s).
    pub fn shutdown(&mut self) {
        for m in &mut self.members {
            if let Some(c) = &m.child {
                if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                    if m.paused {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
                    }
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() > deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }
}

/// Starts `m`'s process, its output appended to its log.
fn start_process(binary: &Path, m: &mut Member) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.log)
        .with_context(|| format!("opening {}", m.log.display()))?;
    let child = Command::new(binary)
        .args(&m.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    m.child = Some(child);
    m.paused = false;
    Ok(())
}

/// Fails, with the end of its log, when `m` should be running and has
/// exited.
fn check_running(m: &mut Member) -> anyhow::Result<()> {
    if let Some(c) = &mut m.child {
        if let Some(status) = c.try_wait()? {
            m.child = None;
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "member {} exited ({status}); the end of its log:\n  {}",
                m.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            );
        }
    }
    Ok(())
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
