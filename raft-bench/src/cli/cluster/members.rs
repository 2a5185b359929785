//! The members of a local cluster as started: each one's command line,
//! addresses and log file (raft-node through [`NodeCommand`], etcd by
//! hand), and the command line of a raft-node that joins later as a
//! learner.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use raft_client::launcher::{initial_cluster, NodeCommand};

use super::{ClusterOptions, Member};

/// The ports of raft-node `id` (1-based) of a cluster at `base`: HTTP
/// clients, peers (QUIC), gRPC.
fn raft_ports(base: u16, id: u64) -> (u64, u64, u64) {
    let b = u64::from(base) + id - 1;
    (b, b + 100, b + 400)
}

/// Node `id`'s command line without its bootstrap (`--initial-cluster` or
/// `--join`): listeners, the development certificates in `dir/certs`,
/// the cluster's timing and extra arguments.
fn raft_command(opts: &ClusterOptions, dir: &Path, id: u64) -> NodeCommand {
    let (client, peer, grpc) = raft_ports(opts.base_port, id);
    // Ticks of 10 ms give the heartbeat and the election timeout a 10 ms
    // resolution (raft-node randomizes the timeout in [E, 2E) ticks).
    let tick_ms = 10;
    NodeCommand::new(id, dir.join(format!("node-{id}")))
        .listen(format!("127.0.0.1:{client}"), format!("127.0.0.1:{peer}"))
        .dev_certs(dir.join("certs"))
        .tick_ms(tick_ms)
        .heartbeat_ticks((opts.heartbeat_ms / tick_ms).max(1))
        .election_ticks((opts.election_ms / tick_ms).max(2))
        .flag("grpc-listen", format!("127.0.0.1:{grpc}"))
        .args(opts.extra_args.iter().cloned())
}

/// The member record of raft-node `cmd`, logging to `dir/node-ID.log`.
fn raft_member(opts: &ClusterOptions, dir: &Path, cmd: &NodeCommand) -> Member {
    let id = cmd.id();
    let (client, _, grpc) = raft_ports(opts.base_port, id);
    Member {
        id,
        url: format!("http://127.0.0.1:{client}"),
        grpc_url: format!("http://127.0.0.1:{grpc}"),
        args: cmd.to_args(),
        log: dir.join(format!("node-{id}.log")),
        child: None,
        paused: false,
        member_id: id,
    }
}

pub(super) fn raft_members(opts: &ClusterOptions, dir: &Path) -> anyhow::Result<Vec<Member>> {
    let ids: Vec<u64> = (1..=opts.nodes as u64).collect();
    let certs = dir.join("certs");
    // One spare certificate, for a node that joins later as a learner.
    let id_list: Vec<String> = (1..=opts.nodes as u64 + 1).map(|i| i.to_string()).collect();
    let out = Command::new(&opts.binary)
        .args(["certs", "--dir"])
        .arg(&certs)
        .args(["--nodes", &id_list.join(",")])
        .output()
        .with_context(|| format!("running {} certs", opts.binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} certs failed: {}",
            opts.binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cluster = initial_cluster(ids.iter().map(|&id| {
        let (client, peer, _) = raft_ports(opts.base_port, id);
        (
            id,
            format!("127.0.0.1:{peer}"),
            format!("127.0.0.1:{client}"),
        )
    }));
    Ok(ids
        .iter()
        .map(|&id| {
            let cmd = raft_command(opts, dir, id).initial_cluster(cluster.clone());
            raft_member(opts, dir, &cmd)
        })
        .collect())
}

/// The member record of a new raft-node, id one above the last member's
/// (whose certificate [`raft_members`] wrote as a spare), that joins the
/// cluster through `join_url` as a learner.
pub(super) fn raft_joiner(opts: &ClusterOptions, dir: &Path, join_url: &str) -> Member {
    let cmd = raft_command(opts, dir, opts.nodes as u64 + 1).join(join_url);
    raft_member(opts, dir, &cmd)
}

pub(super) fn etcd_members(opts: &ClusterOptions, dir: &Path) -> Vec<Member> {
    let client = |id: u64| opts.base_port as u64 + 200 + id - 1;
    let peer = |id: u64| opts.base_port as u64 + 300 + id - 1;
    let ids: Vec<u64> = (1..=opts.nodes as u64).collect();
    let cluster: Vec<String> = ids
        .iter()
        .map(|&id| format!("e{id}=http://127.0.0.1:{}", peer(id)))
        .collect();
    let cluster = cluster.join(",");
    ids.iter()
        .map(|&id| {
            let mut args: Vec<String> = vec![
                "--name".into(),
                format!("e{id}"),
                "--data-dir".into(),
                dir.join(format!("etcd-{id}")).display().to_string(),
                "--listen-client-urls".into(),
                format!("http://127.0.0.1:{}", client(id)),
                "--advertise-client-urls".into(),
                format!("http://127.0.0.1:{}", client(id)),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{}", peer(id)),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{}", peer(id)),
                "--initial-cluster".into(),
                cluster.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                "raft-bench".into(),
                // etcd randomizes the election timeout in [E, 2E) with the
                // heartbeat as its tick, like raft-node.
                "--heartbeat-interval".into(),
                opts.heartbeat_ms.to_string(),
                "--election-timeout".into(),
                opts.election_ms.to_string(),
                "--pre-vote=true".into(),
                "--logger=zap".into(),
                "--log-outputs=stderr".into(),
            ];
            args.extend(opts.extra_args.iter().cloned());
            Member {
                id,
                url: format!("http://127.0.0.1:{}", client(id)),
                grpc_url: format!("http://127.0.0.1:{}", client(id)),
                args,
                log: dir.join(format!("etcd-{id}.log")),
                child: None,
                paused: false,
                member_id: 0,
            }
        })
        .collect()
}
