//! `etcdctl` 3.4 (Debian's `etcd-client` package: a client written for
//! etcd, not for raft-node) against a 3-node cluster's etcd gRPC API:
//! put, get with prefixes and past revisions, del, txn in its interactive
//! syntax, a prefix delete with previous values, member list, endpoint
//! status, snapshot save (restored by `raft-node restore`), compaction, writes through the surviving members after the
//! leader is killed, and `etcdctl watch` on a follower across that kill.
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

/// A 3-node cluster serving etcd's API: its processes, the gRPC address
/// of each node, and the leader's id.
async fn start(dir: &std::path::Path) -> (Vec<common::Proc>, Vec<SocketAddr>, u64) {
    let grpc: Vec<SocketAddr> = (0..3).map(|_| free_tcp()).collect();
    let listen = grpc.clone();
    let procs = cluster_with_env(dir, 3, &[], &[], "http", move |id| {
        let addr = listen[usize::try_from(id - 1).unwrap()];
        vec![("RAFT_GRPC_LISTEN".into(), PathBuf::from(addr.to_string()))]
    });
    let http = common::client_of(&procs);
    let leader = leader(&http, &procs, None).await;
    (procs, grpc, leader)
}

/// Puts `key` through `endpoints` until one attempt is acknowledged, each
/// attempt with its own value (an attempt that timed out may still have
/// been applied); answers the acknowledged value.
async fn put_until_acknowledged(endpoints: &[SocketAddr], key: &str) -> String {
    for attempt in 0..30 {
        let value = format!("{key}-{attempt}");
        let r = etcdctl(endpoints, &["put", key, &value], None).await;
        if r.ok {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no write of {key} acknowledged in 30 attempts");
}

/// The gRPC client URLs `member list -w json` through `endpoint` shows,
/// sorted, once every member shows one (each member records its own after
/// it started; a minute at most, then what is there).
async fn all_client_urls(endpoint: &[SocketAddr]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&ok(endpoint, &["member", "list", "-w", "json"]).await).unwrap();
        let members = list["members"].as_array().unwrap();
        let mut urls: Vec<String> = members
            .iter()
            .flat_map(|m| m["clientURLs"].as_array().cloned().unwrap_or_default())
            .map(|u| u.as_str().unwrap().to_owned())
            .collect();
        urls.sort();
        if urls.len() == members.len() || tokio::time::Instant::now() >= deadline {
            return urls;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `etcdctl snapshot save FILE` from `endpoint`, then `raft-node restore`
/// of FILE into a new data directory.
async fn snapshot_save_and_restore(dir: &std::path::Path, endpoint: SocketAddr) {
    let file = dir.join("etcdctl.snapshot");
    let path = file.to_str().unwrap();
    let r = etcdctl(&[endpoint], &["snapshot", "save", path], None).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.out.contains(&format!("Snapshot saved at {path}")),
        "{r:?}"
    );
    let restored = std::process::Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .arg("restore")
        .arg(format!("--from={path}"))
        .arg(format!("--data-dir={}", dir.join("restored").display()))
        .args(["--id=1", "--initial-cluster=1=127.0.0.1:1/127.0.0.1:2"])
        .output()
        .unwrap();
    assert!(restored.status.success(), "{restored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_a_three_node_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, grpc, first_leader) = start(dir.path()).await;
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
    // Every member records its gRPC URL through the log, so any member's
    // list shows all three (each member records its own once it has
    // started: wait for that).
    let urls = all_client_urls(&grpc[..1]).await;
    let want: Vec<String> = grpc.iter().map(|a| format!("http://{a}")).collect();
    assert_eq!(urls, want);
    // --cluster: etcdctl dials the member list's URLs, sending each whole
    // URL as HTTP/2 :authority.
    let r = etcdctl(
        &grpc[..1],
        &["endpoint", "status", "--cluster", "-w", "json"],
        None,
    )
    .await;
    assert!(r.ok, "{r:?}");
    let status: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    let mut endpoints: Vec<String> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Endpoint"].as_str().unwrap().to_owned())
        .collect();
    endpoints.sort();
    assert_eq!(endpoints, want, "{status}");
    for s in status.as_array().unwrap() {
        assert_eq!(s["Status"]["leader"], first_leader, "{status}");
    }

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

    // snapshot save through one member (etcdctl asks exactly one): the
    // download is in etcd's envelope, which `raft-node restore` reads.
    snapshot_save_and_restore(dir.path(), grpc[0]).await;

    // The leader killed: the other members elect one and take writes.
    procs[usize::try_from(first_leader - 1).unwrap()].kill9();
    let survivors: Vec<SocketAddr> = (1..=3u64)
        .filter(|id| *id != first_leader)
        .map(|id| grpc[usize::try_from(id - 1).unwrap()])
        .collect();
    let value = put_until_acknowledged(&survivors, "after").await;
    assert_eq!(
        ok(&survivors, &["get", "after"]).await,
        format!("after\n{value}")
    );
    assert_eq!(ok(&survivors, &["get", "greeting"]).await, "greeting\nbye");
}

/// `etcdctl watch` on a follower from a revision, while writes go through
/// the leader, the leader is killed, and writes go on through the new one:
/// every acknowledged write appears exactly once, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_on_a_follower_sees_every_write_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, grpc, first_leader) = start(dir.path()).await;
    let follower = (1..=3u64).find(|id| *id != first_leader).unwrap();
    let at = |id: u64| grpc[usize::try_from(id - 1).unwrap()];
    let json: serde_json::Value =
        serde_json::from_str(&ok(&grpc, &["get", "none", "-w", "json"]).await).unwrap();
    // etcd leaves a zero revision out of its JSON.
    let from = (json["header"]["revision"].as_i64().unwrap_or(0) + 1).to_string();

    let program = std::env::var("ETCDCTL").unwrap_or_else(|_| "etcdctl".into());
    let mut watch = tokio::process::Command::new(&program)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", at(follower)))
        .args(["watch", "--prefix", "w/", "--rev", &from, "-w", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl starts (scripts/deps.sh installs Debian's etcd-client)");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let stdout = watch.stdout.take().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let key = format!("w/{i}");
        acknowledged.push((key.clone(), put_until_acknowledged(&grpc, &key).await));
    }
    procs[usize::try_from(first_leader - 1).unwrap()].kill9();
    let survivors: Vec<SocketAddr> = (1..=3u64)
        .filter(|id| *id != first_leader)
        .map(at)
        .collect();
    for i in 5..10 {
        let key = format!("w/{i}");
        acknowledged.push((key.clone(), put_until_acknowledged(&survivors, &key).await));
    }

    // Every event the watch printed, as (key, value, mod_revision).
    let events = || -> Vec<(String, String, i64)> {
        let b64 = |v: &serde_json::Value| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap();
            String::from_utf8(bytes).unwrap()
        };
        let mut out = Vec::new();
        for line in lines.lock().unwrap().iter() {
            let Ok(resp) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for e in resp["Events"].as_array().into_iter().flatten() {
                let kv = &e["kv"];
                out.push((
                    b64(&kv["key"]),
                    b64(&kv["value"]),
                    kv["mod_revision"].as_i64().unwrap(),
                ));
            }
        }
        out
    };
    for _ in 0..100 {
        let seen = events();
        if acknowledged
            .iter()
            .all(|(k, v)| seen.iter().any(|(sk, sv, _)| sk == k && sv == v))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = watch.kill().await;
    let seen = events();
    for (k, v) in &acknowledged {
        let n = seen.iter().filter(|(sk, sv, _)| sk == k && sv == v).count();
        assert_eq!(n, 1, "{k}={v} seen {n} times in {seen:?}");
    }
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "events in revision order: {seen:?}"
    );
}

/// The lease id (hex, as etcdctl prints it) of `lease grant`'s output
/// `lease <hex> granted with TTL(<n>s)`.
fn granted_id(out: &str) -> String {
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some("lease"), "{out}");
    words.next().expect("an id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_leases() {
    let dir = tempfile::tempdir().unwrap();
    let (_procs, grpc, _leader) = start(dir.path()).await;
    let all = grpc.clone();

    // grant, put with the lease, keep-alive once, time to live with keys,
    // list, revoke: the key goes with the lease.
    let out = ok(&all, &["lease", "grant", "30"]).await;
    assert!(out.ends_with("granted with TTL(30s)"), "{out}");
    let id = granted_id(&out);
    let lease = format!("--lease={id}");
    assert_eq!(ok(&all, &["put", &lease, "leased", "v"]).await, "OK");
    assert_eq!(ok(&all, &["put", &lease, "leased2", "v"]).await, "OK");
    let out = ok(&all, &["lease", "keep-alive", "--once", &id]).await;
    assert_eq!(out, format!("lease {id} keepalived with TTL(30)"));
    let out = ok(&all, &["lease", "timetolive", &id, "--keys"]).await;
    assert!(
        out.starts_with(&format!("lease {id} granted with TTL(30s), remaining(")),
        "{out}"
    );
    assert!(out.ends_with("attached keys([leased leased2])"), "{out}");
    let out = ok(&all, &["lease", "list"]).await;
    assert_eq!(out, format!("found 1 leases\n{id}"));
    let out = ok(&all, &["lease", "revoke", &id]).await;
    assert_eq!(out, format!("lease {id} revoked"));
    assert_eq!(ok(&all, &["get", "leased"]).await, "");
    assert_eq!(ok(&all, &["get", "leased2"]).await, "");
    let r = etcdctl(&all, &["lease", "revoke", &id], None).await;
    assert!(
        !r.ok && r.err.contains("requested lease not found"),
        "{r:?}"
    );
    let r = etcdctl(&all, &["put", &lease, "nope", "v"], None).await;
    assert!(
        !r.ok && r.err.contains("requested lease not found"),
        "{r:?}"
    );

    // A key with a short lease expires on its own.
    let id = granted_id(&ok(&all, &["lease", "grant", "2"]).await);
    let lease = format!("--lease={id}");
    assert_eq!(ok(&all, &["put", &lease, "short", "v"]).await, "OK");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ok(&all, &["get", "short"]).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "short never expired");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = ok(&all, &["lease", "timetolive", &id]).await;
    assert_eq!(out, format!("lease {id} already expired"));
}
