//! `raft-node dev`: a local cluster of real node processes in one command,
//! with generated certificates, for trying the API.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raft_client::launcher::{initial_cluster, NodeCommand};
use raft_client::{Client, RetryPolicy};
use tokio::process::{Child, Command};

/// `raft-node dev` settings.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Directory for data, certificates and logs (reused across runs: a
    /// second run restarts the same cluster).
    #[arg(long, default_value = "raft-dev")]
    pub dir: PathBuf,
    /// HTTP port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 8081)]
    pub client_port: u16,
    /// Peer (QUIC) port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 7001)]
    pub peer_port: u16,
    /// etcd gRPC port of node 1; node N listens on this + N - 1 (0: no
    /// gRPC API).
    #[arg(long, default_value_t = 2379)]
    pub grpc_port: u16,
}

/// Node `id`'s gRPC address, when the dev cluster serves gRPC.
fn grpc_addr(a: &DevArgs, id: u64) -> Option<String> {
    (a.grpc_port != 0).then(|| format!("127.0.0.1:{}", a.grpc_port as u64 + id - 1))
}

fn node_command(a: &DevArgs, dir: &Path, id: u64, cluster: &str) -> NodeCommand {
    NodeCommand::new(id, dir.join(format!("node-{id}")))
        .listen(
            format!("127.0.0.1:{}", a.client_port as u64 + id - 1),
            format!("127.0.0.1:{}", a.peer_port as u64 + id - 1),
        )
        .initial_cluster(cluster)
        .dev_certs(dir.join("certs"))
        .args(grpc_addr(a, id).map(|g| format!("--grpc-listen={g}")))
}

/// Runs the dev cluster until Ctrl-C.
///
/// # Errors
///
/// When the directory, certificates or processes cannot be set up, or a
/// node exits on its own.
pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    if a.nodes == 0 || a.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    let ids: Vec<u64> = (1..=a.nodes).collect();
    let certs = dir.join("certs");
    if !certs.join(format!("node-{}.pem", a.nodes)).exists() {
        raft_net_quic::certs::write_dev_certs(
            &certs,
            &ids,
            &["localhost".into(), "127.0.0.1".into()],
        )
        .context("creating development certificates")?;
    }
    let cluster = initial_cluster(ids.iter().map(|&id| {
        (
            id,
            format!("127.0.0.1:{}", a.peer_port as u64 + id - 1),
            format!("127.0.0.1:{}", a.client_port as u64 + id - 1),
        )
    }));
    let exe = std::env::current_exe().context("locating the raft-node binary")?;
    let mut children: Vec<(u64, Child)> = Vec::new();
    for &id in &ids {
        children.push((
            id,
            spawn(&node_command(&a, &dir, id, &cluster), &exe, &dir)?,
        ));
    }
    println!(
        "raft-node dev: {} nodes, data, certificates and logs in {}",
        a.nodes,
        dir.display()
    );
    let first = format!("http://127.0.0.1:{}", a.client_port);
    let started = Instant::now();
    let leader = wait_for_leader(&first, &mut children, &dir).await?;
    println!(
        "leader: node {leader} (elected in {:.1} s)\n",
        started.elapsed().as_secs_f64()
    );
    for &id in &ids {
        println!(
            "  node {id}: http://127.0.0.1:{}  (peer 127.0.0.1:{}, log {})",
            a.client_port as u64 + id - 1,
            a.peer_port as u64 + id - 1,
            dir.join(format!("node-{id}.log")).display()
        );
    }
    if a.grpc_port != 0 {
        let endpoints: Vec<String> = ids.iter().filter_map(|&id| grpc_addr(&a, id)).collect();
        println!(
            "\netcd v3 API (gRPC): etcdctl --endpoints={} member list -w table",
            endpoints.join(",")
        );
    }
    println!(
        "\nTry:\n  curl -X PUT --data-binary 'world' {first}/v1/kv/hello\n  curl -i {first}/v1/kv/hello\n  curl -X PUT -H 'If-Match: \"1\"' --data-binary 'again' {first}/v1/kv/hello   # 412 unless rev is 1\n  curl '{first}/v1/kv?prefix=he'\n  curl {first}/v1/cluster\n  curl -X POST {first}/v1/cluster/transfer-leader\n  curl {first}/metrics\n\nCtrl-C stops the cluster (data stays in {}).",
        dir.display()
    );
    let mut exited = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = wait_any(&mut children) => exited = Some(r),
    }
    println!("\nstopping...");
    for (_, c) in &children {
        if let Some(pid) = c
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            // SIGTERM: each node hands leadership over and stops cleanly.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for (id, c) in &mut children {
        match tokio::time::timeout(Duration::from_secs(15), c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {id} did not stop in 15 s; killing it");
                let _ = c.kill().await;
            }
        }
    }
    if let Some((id, status)) = exited {
        bail!(
            "node {id} exited on its own ({status}); see {}",
            dir.join(format!("node-{id}.log")).display()
        );
    }
    Ok(())
}

/// Starts one node, its output appended to `dir/node-<id>.log`.
fn spawn(cmd: &NodeCommand, exe: &Path, dir: &Path) -> anyhow::Result<Child> {
    let log_path = dir.join(format!("node-{}.log", cmd.id()));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    Command::from(cmd.command(exe))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting a node process")
}

/// Asks `first` for the leader until it names one (30 s at most), failing
/// when a node exits meanwhile.
async fn wait_for_leader(
    first: &str,
    children: &mut [(u64, Child)],
    dir: &Path,
) -> anyhow::Result<u64> {
    let client = Client::builder([first])
        .retry(RetryPolicy::none())
        .build()?;
    let started = Instant::now();
    loop {
        if let Ok(Some(l)) = client.status().await.map(|s| s.leader) {
            return Ok(l);
        }
        for (id, c) in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "node {id} exited ({status}); see {}",
                    dir.join(format!("node-{id}.log")).display()
                );
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no leader after 30 s; see the logs in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_any(children: &mut [(u64, Child)]) -> (u64, String) {
    loop {
        for (id, c) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return (*id, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
