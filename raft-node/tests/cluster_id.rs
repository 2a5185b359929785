//! The cluster id, on real processes: nodes of two clusters signed by the
//! same CA that name each other in `--initial-cluster`, and nodes of one
//! cluster restored from two different backup files, refuse each other as
//! peers ("wrong cluster" in both logs) and elect no leader together; a
//! node that joins learns its cluster's id; after `recover
//! --force-new-cluster`, a survivor started on its old data is refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_tcp, free_udp, node_command, proc_for, Proc};
use raft_client::launcher::initial_cluster;
use raft_client::{BackupConsistency, Client};

/// Node `id` under `dir`, bootstrapped with `cluster` (or restored:
/// `None`), started.
fn node(
    dir: &Path,
    id: u64,
    (peer, http): (SocketAddr, SocketAddr),
    cluster: Option<&str>,
) -> Proc {
    let mut cmd = node_command(dir, id, peer, http);
    if let Some(c) = cluster {
        cmd = cmd.initial_cluster(c);
    }
    let mut p = proc_for(dir, &cmd, format!("http://{http}"));
    p.start();
    p
}

/// For `secs` seconds, neither node names a leader, and then both logs
/// say "wrong cluster" with both ids.
async fn refuse_each_other(client: &Client, procs: &[Proc], secs: u64) {
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for p in procs {
            let s = common::wait_status(client, p, 30, "status", |_| true).await;
            ids.push(s.cluster_id.clone().expect("a cluster id"));
        }
        ids
    };
    assert_ne!(ids[0], ids[1], "two clusters, two ids");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        for p in procs {
            let s = common::status_of(client, p).await;
            assert_eq!(
                s.leader,
                None,
                "node {} follows a leader of another cluster: {:#}\nlog:\n{}",
                p.id,
                s.raw,
                p.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in procs {
        let log = p.log_text();
        assert!(
            log.contains("wrong cluster") && ids.iter().all(|id| log.contains(id.as_str())),
            "node {}'s log names no wrong cluster with both ids {ids:?}:\n{log}",
            p.id
        );
    }
}

/// Cluster A is node 1 with `--initial-cluster` {1, 2}; cluster B is node
/// 2 with {1, 2, 3}: each names the other's node, with the same CA. Without
/// a cluster id node 2 won node 1's vote and led both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_two_clusters_that_name_each_other_refuse_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    raft_net_quic::certs::write_dev_certs(&dir.join("certs"), &[1, 2, 3], &[]).unwrap();
    let addrs: Vec<_> = (1..=3u64).map(|id| (id, free_udp(), free_tcp())).collect();
    let a = initial_cluster(addrs[..2].iter().map(|(id, p, c)| (*id, p, c)));
    let b = initial_cluster(addrs.iter().map(|(id, p, c)| (*id, p, c)));
    let procs = vec![
        node(dir, 1, (addrs[0].1, addrs[0].2), Some(&a)),
        node(dir, 2, (addrs[1].1, addrs[1].2), Some(&b)),
    ];
    let client = common::client_of(&procs);
    refuse_each_other(&client, &procs, 4).await;
}

/// A backup of `client`'s cluster into `file`.
async fn save(client: &Client, file: &Path) {
    let mut b = client
        .backup(BackupConsistency::Linearizable)
        .await
        .expect("a backup");
    let mut bytes = Vec::new();
    while let Some(chunk) = b.chunk().await.expect("the whole backup") {
        bytes.extend_from_slice(&chunk);
    }
    std::fs::write(file, &bytes).unwrap();
}

/// `raft-node restore` of node `id` into `dir/node-<id>`.
fn restore(file: &Path, dir: &Path, id: u64, cluster: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .arg("restore")
        .arg(format!("--from={}", file.display()))
        .arg(format!(
            "--data-dir={}",
            dir.join(format!("node-{id}")).display()
        ))
        .arg(format!("--id={id}"))
        .arg(format!("--initial-cluster={cluster}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore of node {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node joining a cluster learns its id. Two backups of that cluster
/// (a write apart), restored into the two nodes of a new cluster, one
/// file each: different files, different ids, refused (without a cluster
/// id they formed one cluster, each sure its own snapshot was committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_learns_the_id_and_nodes_restored_from_different_files_refuse_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    raft_net_quic::certs::write_dev_certs(&old.join("certs"), &[1, 2], &[]).unwrap();
    let (peer, http) = (free_udp(), free_tcp());
    let mut procs = vec![node(
        &old,
        1,
        (peer, http),
        Some(&initial_cluster([(1, peer, http)])),
    )];
    let client = common::client_of(&procs);
    common::leader(&client, &procs, None).await;
    let url = procs[0].http.clone();
    procs.push(common::joiner(&old, 2, &url, &[]));
    let first = common::status_of(&client, &procs[0]).await;
    let id = first
        .cluster_id
        .clone()
        .expect("a bootstrapped node has an id");
    let joined = common::wait_status(&client, &procs[1], 60, "joined", |s| {
        s.cluster_id.is_some() && s.leader == Some(1)
    })
    .await;
    assert_eq!(joined.cluster_id, Some(id), "the joiner learned the id");

    let (f1, f2) = (tmp.path().join("one.bak"), tmp.path().join("two.bak"));
    client.put("k", "1").await.unwrap();
    save(&client, &f1).await;
    client.put("k", "2").await.unwrap();
    save(&client, &f2).await;
    drop(procs);

    let new = tmp.path().join("new");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::rename(old.join("certs"), new.join("certs")).unwrap();
    let addrs: Vec<_> = (1..=2u64).map(|id| (id, free_udp(), free_tcp())).collect();
    let cluster = initial_cluster(addrs.iter().map(|(id, p, c)| (*id, p, c)));
    restore(&f1, &new, 1, &cluster);
    restore(&f2, &new, 2, &cluster);
    let procs: Vec<Proc> = addrs
        .iter()
        .map(|(id, p, c)| node(&new, *id, (*p, *c), None))
        .collect();
    let client = common::client_of(&procs);
    refuse_each_other(&client, &procs, 4).await;
}

/// Copies the certificates under `from` to `to`.
fn copy_certs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("certs")).unwrap();
    for e in std::fs::read_dir(from.join("certs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("certs").join(e.file_name())).unwrap();
    }
}

/// A cluster of three loses nodes 2 and 3; node 1 is recovered with
/// `--force-new-cluster` and a new node takes id 2. Node 2's old data
/// directory, which should have been wiped, is started anyway: it still
/// counts {1, 2, 3} as voters and id 2 is in the recovered configuration,
/// so only the cluster id tells them apart. Recovery gives a new id, and
/// node 1 refuses the old node 2 ("wrong cluster" with both ids); with the
/// id kept, it was let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_started_on_its_old_data_after_a_recovery_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut procs = common::cluster(dir, 3);
    let client = common::client_of(&procs);
    common::leader(&client, &procs, None).await;
    client.put("k", "1").await.unwrap();
    let before = common::status_of(&client, &procs[0]).await.cluster_id;
    let before = before.expect("a bootstrapped node has an id");
    for p in &mut procs {
        p.kill9();
    }
    std::fs::remove_dir_all(dir.join("node-3")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .arg("recover")
        .arg(format!("--data-dir={}", dir.join("node-1").display()))
        .arg("--id=1")
        .arg("--force-new-cluster")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut old2 = procs.remove(1);
    let mut all = vec![procs.remove(0)];
    all[0].start();
    let client = common::client_of(&all);
    let recovered = common::wait_status(&client, &all[0], 60, "leader alone", |s| {
        s.leader == Some(1) && s.membership.voters == vec![1]
    })
    .await;
    let after = recovered.cluster_id.expect("a recovered node has an id");
    assert_ne!(after, before, "recover kept the old cluster's id");
    let new = dir.join("new");
    copy_certs(dir, &new);
    all.push(common::joiner(&new, 2, &all[0].http.clone(), &[]));
    common::wait_status(&client, &all[0], 60, "node 2 added", |s| {
        s.membership.learners.contains(&2) || s.membership.voters.contains(&2)
    })
    .await;
    old2.start();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        if let Some(s) = common::status(&client, &old2).await {
            assert_eq!(
                s.leader, None,
                "the old node 2 follows the recovered leader"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = all[0].log_text();
    assert!(
        log.contains("wrong cluster") && log.contains(&before) && log.contains(&after),
        "node 1 did not refuse the old node 2 as of another cluster:\n{log}"
    );
}
