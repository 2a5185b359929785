//! Multi-process tests of the `raft-node` binary: three real node processes
//! on loopback (RocksDB, QUIC with mutual TLS), driven through the HTTP API
//! the way a client would, through kill -9 of the leader, a restart and a
//! graceful stop.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{client_of, cluster, leader, put, status, via};
use raft_client::{CasResult, Error, ListOptions, Precondition, ReadConsistency, WriteOptions};
use serde_json::Value;

async fn metrics_text(http: &reqwest::Client, p: &common::Proc) -> String {
    http.get(format!("{}/metrics", p.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_serves_the_api_and_survives_the_leader_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    let client = client_of(&procs);
    // Raw HTTP only for what no client call sends or shows: malformed
    // headers and queries, the problem document's content type, metrics.
    let http = reqwest::Client::new();
    let first = leader(&client, &procs, None).await;
    // Logs that go to a file or a pipe (a container's, journald's) carry
    // no terminal colour codes.
    for p in &procs {
        let log = p.log_text();
        assert!(log.contains("node started"), "node {}: log:\n{log}", p.id);
        assert!(
            !log.contains('\x1b'),
            "node {}: escape codes in a log file:\n{log}",
            p.id
        );
    }
    let follower = procs.iter().position(|p| p.id != first).unwrap();
    let other = procs
        .iter()
        .position(|p| p.id != first && p.id != procs[follower].id)
        .unwrap();

    // A write through a follower is forwarded to the leader.
    let rev = put(&client, &procs[follower], "greeting", "hello")
        .await
        .unwrap();

    // A linearizable read through the other follower sees it.
    let e = via(&client, &procs[other])
        .get("greeting")
        .await
        .unwrap()
        .expect("written");
    assert_eq!((&e.value[..], e.rev), (&b"hello"[..], rev));

    // Conditional writes.
    let at_other = via(&client, &procs[other]);
    let stale = WriteOptions::default().precondition(Precondition::Revision(999_999));
    match at_other.put_with("greeting", "nope", &stale).await {
        Err(Error::PreconditionFailed { current_rev }) => assert_eq!(current_rev, Some(rev)),
        other => panic!("a write at a stale revision: {other:?}"),
    }
    let r = http
        .put(format!("{}/v1/kv/greeting", procs[other].http))
        .header("if-match", "\"999999\"")
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:raft-node:problem:precondition-failed");
    assert_eq!(
        at_other
            .compare_and_set("greeting", None, "nope")
            .await
            .unwrap(),
        CasResult::Mismatch(Some(rev))
    );
    assert!(matches!(
        at_other
            .compare_and_set("greeting", Some(rev), "hello again")
            .await
            .unwrap(),
        CasResult::Swapped(_)
    ));

    // An idempotent retry returns the first result and applies once.
    let keyed = WriteOptions::default().idempotency_key("client-7-op-1");
    let mut revs = Vec::new();
    for p in [&procs[follower], &procs[other]] {
        revs.push(
            via(&client, p)
                .put_with("counter", "1", &keyed)
                .await
                .unwrap(),
        );
    }
    assert_eq!(revs[0], revs[1]);

    // Bad input is refused with the documented codes and changes nothing.
    let long_key = "k".repeat(65);
    let refused = |r: raft_client::Result<u64>| r.expect_err("refused").status();
    assert_eq!(
        refused(put(&client, &procs[0], &long_key, "v").await),
        Some(414)
    );
    assert_eq!(
        refused(put(&client, &procs[0], "big", &"v".repeat(5000)).await),
        Some(413)
    );
    let r = http
        .put(format!("{}/v1/kv/x", procs[0].http))
        .header("if-match", "garbage")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{}/v1/kv/x?consistency=sometimes", procs[0].http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(via(&client, &procs[0]).get("big").await.unwrap(), None);

    // Delete, then listing by prefix.
    let at_0 = via(&client, &procs[0]);
    assert!(at_0.delete("counter").await.unwrap().is_some());
    assert_eq!(at_0.delete("counter").await.unwrap(), None);
    for i in 0..5 {
        put(&client, &procs[0], &format!("list/{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let page = via(&client, &procs[1])
        .list(&ListOptions::prefix("list/").limit(3))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    assert!(page.more);
    assert_eq!(&page.items[0].key[..], b"list/0");
    assert_eq!(page.items[0].value.as_deref(), Some(&b"v0"[..]));

    // Kill -9 the leader: a new one is elected and every acknowledged write
    // is still there.
    let old = procs.iter().position(|p| p.id == first).unwrap();
    procs[old].kill9();
    let second = leader(&client, &procs, Some(first)).await;
    assert_ne!(second, first);
    let survivor = procs.iter().position(|p| p.child.is_some()).unwrap();
    let e = via(&client, &procs[survivor])
        .get("greeting")
        .await
        .unwrap();
    assert_eq!(e.map(|e| e.value), Some("hello again".into()));
    if let Err(e) = put(&client, &procs[survivor], "after-failover", "yes").await {
        panic!("no write succeeded after failover: {e}");
    }

    // The killed node restarts from its data directory and catches up.
    procs[old].start();
    let restarted = via(&client, &procs[old]).with_retry(raft_client::RetryPolicy::none());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = restarted
            .get_with("after-failover", ReadConsistency::Stale)
            .await;
        if let Ok(Some(e)) = &read {
            assert_eq!(&e.value[..], b"yes");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node did not catch up ({read:?}):\n{}",
            procs[old].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(procs[old]
        .log_text()
        .contains("--initial-cluster is ignored"));

    // Metrics and health (from the new leader, which has taken proposals).
    let new_leader = procs.iter().position(|p| p.id == second).unwrap();
    let m = metrics_text(&http, &procs[new_leader]).await;
    for name in [
        "raft_node_http_requests_total",
        "raft_net_messages_sent_total",
        "raft_proposals_total",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    // The log-position gauges follow the log, not only role changes: after
    // a quiet moment they agree with the node's own status.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics_text(&http, &procs[new_leader]).await;
        let s = status(&client, &procs[new_leader]).await.unwrap();
        // Every series carries the node's id as a label.
        let gauge = |name: &str| -> Option<u64> {
            let prefix = format!("{name}{{node=\"{}\"}} ", procs[new_leader].id);
            m.lines()
                .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        };
        let last = s.last_index;
        let seen = (
            gauge("raft_last_log_index"),
            gauge("raft_commit_index"),
            gauge("raft_applied_index"),
        );
        if seen == (Some(last), Some(last), Some(last)) && last > 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log-position gauges {seen:?} do not match the status (last index {last}):\n{:#}",
            s.raw
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http.get(format!("{}/healthz", procs[0].http))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Every replica ends with the same data.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut digests = Vec::new();
        for p in &procs {
            digests.push(status(&client, p).await.map(|s| s.kv));
        }
        if digests.iter().all(|d| d.is_some() && *d == digests[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ: {digests:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM stops each node cleanly.
    for p in &mut procs {
        let s = p.sigterm();
        assert!(
            s.success(),
            "node {} exited with {s}; log:\n{}",
            p.id,
            p.log_text()
        );
    }
}

#[test]
fn a_new_node_without_initial_cluster_or_certificates_explains_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(["run", "--id=1"])
        .arg(format!("--data-dir={}", dir.path().join("d").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-ca"), "{err}");

    let certs = dir.path().join("certs");
    raft_net_quic::certs::write_dev_certs(&certs, &[1], &[]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(["run", "--id=1"])
        .arg(format!("--data-dir={}", dir.path().join("d").display()))
        .arg(format!("--tls-ca={}", certs.join("ca.pem").display()))
        .arg(format!("--tls-cert={}", certs.join("node-1.pem").display()))
        .arg(format!("--tls-key={}", certs.join("node-1.key").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--initial-cluster"), "{err}");
}

/// A restarted member takes its configuration from its log (or snapshot),
/// and without one from the voter set the cluster was created with, never
/// from the addresses it knows. Addresses of nodes that are joining arrive
/// (through the log) before their `AddLearner` entry; a member that
/// restarted in between and counted them as voters could be elected with
/// their votes alone. Here node 1 is stopped and its address book is given
/// two such joiners (ids 4 and 5); after the restart it must still count
/// exactly 1, 2 and 3 as voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_never_takes_addresses_for_voters() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    let client = client_of(&procs);
    leader(&client, &procs, None).await;
    for p in &mut procs {
        p.sigterm();
    }
    {
        let log = raft_log::RocksLog::open(
            dir.path().join("node-1"),
            raft_log::RocksLogOptions {
                extra_column_families: vec![
                    "kv".into(),
                    "kv_meta".into(),
                    raft_node::node::NODE_META_CF.into(),
                ],
                ..raft_log::RocksLogOptions::default()
            },
        )
        .expect("open node 1's store");
        let db = log.db();
        let cf = db.cf_handle(raft_node::node::NODE_META_CF).expect("cf");
        let stored = db.get_cf(&cf, b"members").unwrap().expect("address book");
        let mut book: Vec<Value> = serde_json::from_slice(&stored).unwrap();
        assert_eq!(book.len(), 3, "{book:?}");
        for id in [4, 5] {
            book.push(serde_json::json!({
                "id": id,
                "peer_addr": "127.0.0.1:9",
                "client_addr": "127.0.0.1:9",
            }));
        }
        db.put_cf(&cf, b"members", serde_json::to_vec(&book).unwrap())
            .unwrap();
    }
    procs[0].start();
    let s = common::wait_status(&client, &procs[0], 60, "restart", |_| true).await;
    assert_eq!(s.membership.voters, [1, 2, 3], "{:#}", s.raw);
}
