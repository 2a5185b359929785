//! A cluster of real `raft-node` processes, one per network namespace, with
//! development certificates and their own data directories; and the process
//! faults (kill -9 and restart, SIGSTOP and SIGCONT) the nemesis uses.
//!
//! Every node process is started through `ip netns exec`, which execs the
//! binary in place, so the child's pid is the node's pid and signals reach
//! it directly. Dropping the [`Cluster`] kills every node (continuing paused
//! ones first) before the network is torn down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use raft_client::launcher::{initial_cluster, NodeCommand};

use crate::error::ChaosError;
use crate::netns::Net;
use crate::relay::Relay;

/// Port of the HTTP API in every namespace.
pub const CLIENT_PORT: u16 = 8080;
/// Port of the peer transport (QUIC) in every namespace.
pub const PEER_PORT: u16 = 7000;
/// Port of etcd's gRPC API (`--grpc-listen`) in every namespace.
pub const GRPC_PORT: u16 = 2379;
/// Node ids certificates are made for: the initial nodes and those that
/// replace removed ones.
pub const CERT_IDS_MAX: u64 = 24;

/// How a node process is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Running (and expected to keep running).
    Running,
    /// SIGSTOPped by the nemesis.
    Paused,
    /// Killed by the nemesis (or the harness), not yet restarted.
    Down,
}

/// One node process.
#[derive(Debug)]
pub struct NodeProc {
    /// The node's Raft id.
    pub id: u64,
    /// The `raft-node run` arguments (restarts reuse them).
    args: Vec<String>,
    /// The namespace it runs in.
    namespace: String,
    /// The running process, if any.
    child: Option<Child>,
    /// What the harness did to it last.
    pub state: NodeState,
    /// Its HTTP base URL, reachable from the root namespace.
    pub url: String,
    /// Its gRPC URL (`http://<ip>:2379`), reachable from the root
    /// namespace: [`grpc_url_of`] its `url`.
    pub grpc_url: String,
    /// Its log file (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    /// How it exited on its own, when the harness found that out while
    /// killing it (reported once by [`NodeProc::unexpected_exit`]).
    crash: Option<String>,
}

impl NodeProc {
    fn start(&mut self, raft_node: &Path) -> Result<(), ChaosError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(ChaosError::io(&self.log))?;
        let log2 = log.try_clone().map_err(ChaosError::io(&self.log))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .arg(raft_node)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| ChaosError::Cluster(format!("starting node {}: {e}", self.id)))?;
        self.child = Some(child);
        self.state = NodeState::Running;
        Ok(())
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| rustix::process::Pid::from_raw(c.id() as i32))
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// SIGKILLs the node and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // It may have died on its own since the last poll: that is a
            // crash, whatever the nemesis meant to do to it.
            if self.state != NodeState::Down {
                if let Ok(Some(status)) = c.try_wait() {
                    self.crash = Some(status.to_string());
                }
            }
            // A stopped process dies on SIGKILL too, but continue it so no
            // signal waits behind the stop.
            let _ = c.kill();
            let _ = c.wait();
        }
        self.state = NodeState::Down;
    }

    /// SIGSTOPs the node.
    pub fn pause(&mut self) {
        if self.state == NodeState::Running {
            self.signal(rustix::process::Signal::STOP);
            self.state = NodeState::Paused;
        }
    }

    /// SIGCONTs the node.
    pub fn resume(&mut self) {
        if self.state == NodeState::Paused {
            self.signal(rustix::process::Signal::CONT);
            self.state = NodeState::Running;
        }
    }

    /// If the process exited although the harness did not kill it, how.
    pub fn unexpected_exit(&mut self) -> Option<String> {
        if let Some(crash) = self.crash.take() {
            return Some(crash);
        }
        if self.state == NodeState::Down {
            return None;
        }
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.state = NodeState::Down;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = read_log(&self.log);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::CONT);
        self.kill9();
    }
}

/// Timing and storage settings given to every node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// `--tick-ms`.
    pub tick_ms: u64,
    /// `--election-ticks`.
    pub election_ticks: u64,
    /// `--heartbeat-ticks`.
    pub heartbeat_ticks: u64,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: u64,
    /// `--snapshot-entries`: small, so snapshots and their installs happen
    /// during a run.
    pub snapshot_entries: u64,
    /// `--snapshot-keep-entries`.
    pub snapshot_keep_entries: u64,
    /// `--idempotency-window` (the node's default when `None`).
    pub idempotency_window: Option<u64>,
    /// `--watch-progress-interval-ms`: short, so the watchers learn soon
    /// how far they got when their keys see no change.
    pub watch_progress_interval_ms: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            tick_ms: 25,
            election_ticks: 20,
            heartbeat_ticks: 2,
            request_timeout_ms: 3000,
            snapshot_entries: 400,
            snapshot_keep_entries: 50,
            idempotency_window: None,
            watch_progress_interval_ms: 500,
        }
    }
}

/// The nodes of one run. Field order matters: nodes are dropped (killed)
/// before the network.
#[derive(Debug)]
pub struct Cluster {
    /// The node processes by id.
    pub nodes: BTreeMap<u64, NodeProc>,
    /// The network they live in.
    pub net: Net,
    /// The delay relay, made by the first delay fault.
    pub relay: Option<Relay>,
    /// The `raft-node` binary.
    raft_node: PathBuf,
    /// The run's directory (certificates, data, logs).
    dir: PathBuf,
    /// Flags given to every node.
    settings: NodeSettings,
    /// The id the next joining node gets.
    next_id: u64,
    /// Removed nodes found to have exited on their own, not yet reported.
    removed_crashes: Vec<(u64, String)>,
}

impl Cluster {
    /// Creates the network, certificates and data directories under `dir`
    /// and starts `n` nodes (ids 1..=n).
    ///
    /// # Errors
    ///
    /// When any of it fails; what was made is torn down.
    pub fn start(
        dir: &Path,
        n: u64,
        raft_node: &Path,
        settings: &NodeSettings,
    ) -> Result<Self, ChaosError> {
        let ids: Vec<u64> = (1..=n).collect();
        let net = Net::create(&ids)?;
        let certs = dir.join("certs");
        // Certificates for the ids of nodes that join later, too.
        let cert_ids: Vec<u64> = (1..=CERT_IDS_MAX.max(n)).collect();
        let names: Vec<String> = cert_ids
            .iter()
            .map(|id| net.node_ip(*id).to_string())
            .collect();
        raft_net_quic::certs::write_dev_certs(&certs, &cert_ids, &names)?;
        let initial = initial_cluster(ids.iter().map(|id| {
            let ip = net.node_ip(*id);
            (
                *id,
                format!("{ip}:{PEER_PORT}"),
                format!("{ip}:{CLIENT_PORT}"),
            )
        }));
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            net,
            relay: None,
            raft_node: raft_node.to_path_buf(),
            dir: dir.to_path_buf(),
            settings: settings.clone(),
            next_id: n + 1,
            removed_crashes: Vec::new(),
        };
        for &id in &ids {
            cluster.spawn(id, |c| c.initial_cluster(initial.clone()))?;
        }
        Ok(cluster)
    }

    /// Starts node `id` (its namespace must exist) with the cluster flag
    /// `bootstrap` adds (`--initial-cluster=…` or `--join=…`).
    fn spawn(
        &mut self,
        id: u64,
        bootstrap: impl FnOnce(NodeCommand) -> NodeCommand,
    ) -> Result<(), ChaosError> {
        let ip = self.net.node_ip(id);
        let st = &self.settings;
        let mut cmd = NodeCommand::new(id, self.dir.join(format!("data/node-{id}")))
            .listen(format!("{ip}:{CLIENT_PORT}"), format!("{ip}:{PEER_PORT}"))
            .dev_certs(self.dir.join("certs"))
            .tick_ms(st.tick_ms)
            .election_ticks(st.election_ticks)
            .heartbeat_ticks(st.heartbeat_ticks)
            .flag("request-timeout-ms", st.request_timeout_ms)
            .flag("snapshot-entries", st.snapshot_entries)
            .flag("snapshot-keep-entries", st.snapshot_keep_entries)
            .flag("watch-progress-interval-ms", st.watch_progress_interval_ms)
            // etcd's gRPC API beside it, for the gRPC watchers.
            .flag("grpc-listen", format!("{ip}:{GRPC_PORT}"))
            // The APIs listen on the namespace's 10.x address, open: the
            // test network is this machine's own, and the checker's
            // clients carry no token.
            .arg("--insecure");
        if let Some(w) = st.idempotency_window {
            cmd = cmd.flag("idempotency-window", w);
        }
        let cmd = bootstrap(cmd);
        let mut node = NodeProc {
            id,
            args: cmd.to_args(),
            namespace: self.net.namespace(id),
            child: None,
            state: NodeState::Down,
            url: format!("http://{ip}:{CLIENT_PORT}"),
            grpc_url: format!("http://{ip}:{GRPC_PORT}"),
            log: self.dir.join(format!("node-{id}.log")),
            crash: None,
        };
        node.start(&self.raft_node)?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Starts a fresh node with the next unused id in a new namespace,
    /// joining through `via` (a member's URL); returns its id.
    ///
    /// # Errors
    ///
    /// When the ids are used up or the node cannot be started.
    pub fn join_new(&mut self, via: &str) -> Result<u64, ChaosError> {
        let id = self.next_id;
        if !self.can_join() {
            return Err(ChaosError::Cluster(format!(
                "no ids left for new nodes (max {CERT_IDS_MAX})"
            )));
        }
        self.next_id += 1;
        self.net.add_node(id)?;
        let via = via.to_owned();
        self.spawn(id, |c| c.join(via))?;
        Ok(id)
    }

    /// Whether [`Cluster::join_new`] has an id (and a certificate) left.
    pub fn can_join(&self) -> bool {
        self.next_id <= CERT_IDS_MAX
    }

    /// Kills node `id` and removes it and its namespace for good (after it
    /// was removed from the membership). If it had exited on its own, the
    /// next [`Cluster::unexpected_exits`] reports it.
    pub fn remove(&mut self, id: u64) {
        if let Some(mut n) = self.nodes.remove(&id) {
            n.kill9();
            if let Some(crash) = n.unexpected_exit() {
                let tail = n.log_tail(30);
                self.removed_crashes.push((
                    id,
                    format!("{crash}, found when it was removed; last log lines:\n{tail}"),
                ));
            }
        }
        self.net.remove_node(id);
    }

    /// Like [`Cluster::remove`], for a node that may have exited on its own
    /// by design (a joining node whose join was refused gives up and exits).
    pub fn remove_expecting_exit(&mut self, id: u64) {
        if let Some(mut n) = self.nodes.remove(&id) {
            n.kill9();
            let _ = n.unexpected_exit();
        }
        self.net.remove_node(id);
    }

    /// The log files of every node this run started, removed ones too.
    pub fn logs(&self) -> Vec<(u64, PathBuf)> {
        (1..self.next_id)
            .map(|id| (id, self.dir.join(format!("node-{id}.log"))))
            .filter(|(_, p)| p.exists())
            .collect()
    }

    /// The ids of the nodes.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The HTTP base URLs of the nodes, by id.
    pub fn urls(&self) -> Vec<(u64, String)> {
        self.nodes
            .iter()
            .map(|(id, n)| (*id, n.url.clone()))
            .collect()
    }

    /// Restarts node `id` after a kill (same data directory).
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn restart(&mut self, id: u64) -> Result<(), ChaosError> {
        let raft_node = self.raft_node.clone();
        match self.nodes.get_mut(&id) {
            Some(n) if n.state == NodeState::Down => n.start(&raft_node),
            _ => Ok(()),
        }
    }

    /// Continues paused nodes and restarts killed ones.
    ///
    /// # Errors
    ///
    /// When a node cannot be started.
    pub fn revive_all(&mut self) -> Result<(), ChaosError> {
        // Every node gets its chance; the first failure is returned.
        let mut first = None;
        for id in self.ids() {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.resume();
            }
            if let Err(e) = self.restart(id) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Nodes that exited without the harness killing them: (id, status).
    pub fn unexpected_exits(&mut self) -> Vec<(u64, String)> {
        let mut out = std::mem::take(&mut self.removed_crashes);
        out.extend(
            self.nodes
                .values_mut()
                .filter_map(|n| n.unexpected_exit().map(|s| (n.id, s))),
        );
        out
    }
}

/// The gRPC URL of the node whose HTTP base URL is `url`
/// (`http://<ip>:8080`): every node serves both at the same ports of its
/// own namespace's address. `None` for a URL of another form.
pub fn grpc_url_of(url: &str) -> Option<String> {
    let host = url
        .strip_prefix("http://")?
        .strip_suffix(&format!(":{CLIENT_PORT}"))?;
    (!host.is_empty() && !host.contains(['/', ':', '@']))
        .then(|| format!("http://{host}:{GRPC_PORT}"))
}

/// A node's log as text; bytes that are not UTF-8 become U+FFFD instead of
/// hiding the rest.
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn proc_running(program: &str, args: &[&str]) -> NodeProc {
        NodeProc {
            id: 1,
            args: Vec::new(),
            namespace: String::new(),
            child: Some(Command::new(program).args(args).spawn().expect("spawn")),
            state: NodeState::Running,
            url: String::new(),
            grpc_url: String::new(),
            log: PathBuf::new(),
            crash: None,
        }
    }

    #[test]
    fn a_node_found_dead_when_the_nemesis_kills_it_is_reported_once() {
        let mut n = proc_running("sh", &["-c", "exit 3"]);
        // Wait (without reaping it) until the process has exited: a zombie
        // in /proc. A fixed sleep could end before a loaded machine ran it.
        let pid = n.child.as_ref().expect("spawned").id();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        }) {
            assert!(std::time::Instant::now() < deadline, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        n.kill9();
        let crash = n.unexpected_exit().expect("the earlier exit is reported");
        assert!(crash.contains('3'), "{crash}");
        assert_eq!(n.unexpected_exit(), None);
    }

    #[test]
    fn the_grpc_url_is_the_http_urls_host_at_the_grpc_port() {
        assert_eq!(
            grpc_url_of("http://10.77.3.2:8080").as_deref(),
            Some("http://10.77.3.2:2379")
        );
        for other in [
            "https://10.77.3.2:8080",
            "http://10.77.3.2:8081",
            "http://10.77.3.2",
            "http://:8080",
            "http://a/b:8080",
        ] {
            assert_eq!(grpc_url_of(other), None, "{other}");
        }
    }

    #[test]
    fn a_node_killed_while_running_is_no_crash() {
        let mut n = proc_running("sleep", &["30"]);
        n.kill9();
        assert_eq!(n.unexpected_exit(), None);
        assert_eq!(n.state, NodeState::Down);
    }
}
