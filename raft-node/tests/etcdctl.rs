//! `etcdctl` 3.4 (Debian's `etcd-client` package: a client written for
//! etcd, not for raft-node) against a 3-node cluster's etcd gRPC API:
//! put, get with prefixes and past revisions, del, txn in its interactive
//! syntax, a prefix delete with previous values, member list, endpoint
//! status, compaction, and writes through the surviving members after the
//! leader is killed.
//!
//! `scripts/deps.sh` installs etcdctl; set `ETCDCTL` to use another binary.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{cluster_with_env, free_tcp, leader};
use tokio::io::AsyncWriteExt;

/// What one etcdctl run printed.
#[derive(Debug)]
struct Run {
    ok: bool,
    out: String,
    err: String,
}

/// Runs `etcdctl --endpoints=<endpoints> ARGS`, with `input` on its stdin.
async fn etcdctl(endpoints: &[SocketAddr], args: &[&str], input: Option<&str>) -> Run {
    let program = std::env::var("ETCDCTL").unwrap_or_else(|_| "etcdctl".into());
    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", list.join(",")))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {program}: {e}; install Debian's etcd-client package \
             (scripts/deps.sh does) or set ETCDCTL"
        )
    });
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(text) = input {
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("etcdctl ends within a minute")
        .unwrap();
    Run {
        ok: out.status.success(),
        out: String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
        err: String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
    }
}

/// Runs etcdctl and answers its output, failing the test when it fails.
async fn ok(endpoints: &[SocketAddr], args: &[&str]) -> String {
    let r = etcdctl(endpoints, args, None).await;
    assert!(r.ok, "etcdctl {args:?} failed: {r:?}");
    r.out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_a_three_node_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let grpc: Vec<SocketAddr> = (0..3).map(|_| free_tcp()).collect();
    let listen = grpc.clone();
    let mut procs = cluster_with_env(dir.path(), 3, &[], &[], "http", move |id| {
        let addr = listen[usize::try_from(id - 1).unwrap()];
        vec![("RAFT_GRPC_LISTEN".into(), PathBuf::from(addr.to_string()))]
    });
    let http = common::client_of(&procs);
    let first_leader = leader(&http, &procs, None).await;
    let all = grpc.clone();

    // put, get with a prefix, get as JSON (etcd's revisions).
    assert_eq!(ok(&all, &["put", "greeting", "hello"]).await, "OK");
    assert_eq!(ok(&all, &["put", "greet2", "hi"]).await, "OK");
    assert_eq!(
        ok(&all, &["get", "--prefix", "gree"]).await,
        "greet2\nhi\ngreeting\nhello"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&all, &["get", "greeting", "-w", "json"]).await).unwrap();
    let first = json["kvs"][0]["mod_revision"].as_i64().unwrap();
    assert!(first > 0, "{json}");
    assert_eq!(json["kvs"][0]["version"], 1, "{json}");

    // A past revision reads the value then.
    assert_eq!(ok(&all, &["put", "greeting", "bye"]).await, "OK");
    let rev = first.to_string();
    assert_eq!(
        ok(&all, &["get", "greeting", "--rev", &rev]).await,
        "greeting\nhello"
    );
    assert_eq!(ok(&all, &["get", "greeting"]).await, "greeting\nbye");

    // del: one key, then none.
    assert_eq!(ok(&all, &["del", "greet2"]).await, "1");
    assert_eq!(ok(&all, &["del", "greet2"]).await, "0");

    // txn in etcdctl's interactive syntax: the compares, a blank line, the
    // success operations, a blank line, the failure operations.
    assert_eq!(ok(&all, &["put", "color", "red"]).await, "OK");
    let script = "value(\"color\") = \"red\"\n\nput color blue\n\nget color\n\n";
    let r = etcdctl(&all, &["txn"], Some(script)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out, "SUCCESS\n\nOK");
    let r = etcdctl(&all, &["txn"], Some(script)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out, "FAILURE\n\ncolor\nblue");

    // A prefix delete with the previous values.
    assert_eq!(ok(&all, &["put", "colour", "grey"]).await, "OK");
    assert_eq!(
        ok(&all, &["del", "--prefix", "--prev-kv", "col"]).await,
        "2\ncolor\nblue\ncolour\ngrey"
    );

    // member list and endpoint status.
    let members = ok(&all, &["member", "list"]).await;
    let mut ids: Vec<&str> = members
        .lines()
        .map(|l| l.split(',').next().unwrap().trim())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "2", "3"], "{members}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&all, &["endpoint", "status", "-w", "json"]).await).unwrap();
    let statuses = status.as_array().unwrap();
    assert_eq!(statuses.len(), 3, "{status}");
    let leaders: Vec<u64> = statuses
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert_eq!(leaders, [first_leader; 3], "{status}");

    // Compaction: the past revision is gone, with etcd's message.
    let now = serde_json::from_str::<serde_json::Value>(
        &ok(&all, &["get", "greeting", "-w", "json"]).await,
    )
    .unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    ok(&all, &["compaction", &now.to_string()]).await;
    let r = etcdctl(&all, &["get", "greeting", "--rev", &rev], None).await;
    assert!(!r.ok, "{r:?}");
    assert!(
        r.err.contains("required revision has been compacted"),
        "{r:?}"
    );

    // The leader killed: the other members elect one and take writes.
    procs[usize::try_from(first_leader - 1).unwrap()].kill9();
    let survivors: Vec<SocketAddr> = (1..=3u64)
        .filter(|id| *id != first_leader)
        .map(|id| grpc[usize::try_from(id - 1).unwrap()])
        .collect();
    let mut wrote = None;
    for _ in 0..30 {
        let r = etcdctl(&survivors, &["put", "after", "failover"], None).await;
        if r.ok {
            wrote = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(wrote.expect("a write after the failover").out, "OK");
    assert_eq!(ok(&survivors, &["get", "after"]).await, "after\nfailover");
    assert_eq!(ok(&survivors, &["get", "greeting"]).await, "greeting\nbye");
}
