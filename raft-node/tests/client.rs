//! raftkv-client (`raft_client`) against real three-node clusters: what a
//! crate user sees through the client, and `raft-node ctl` on it.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use raft_client::{
    CasResult, Client, Error, IdempotencyKeys, ListOptions, Precondition, ReadConsistency,
    RetryPolicy, WriteOptions,
};

/// A node's status through the client, once it names a leader.
async fn wait_leader(c: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = c.status().await;
        if let Ok(Some(l)) = status.as_ref().map(|s| s.leader) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no leader within 60 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_writes_and_pages_binary_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let procs = cluster(dir.path(), 3);
    let c = client_of(&procs);
    wait_leader(&c).await;

    // Binary keys and values travel byte for byte, `/` and `%` included.
    let key: &[u8] = b"bin/\x00\xff%2F ..";
    let value: &[u8] = &[0, 1, 2, 0xfe, 0xff, b'\n'];
    let rev = c.put(key, value.to_vec()).await.unwrap();
    let e = c.get(key).await.unwrap().expect("written");
    assert_eq!((&e.value[..], e.rev), (value, rev));
    for consistency in [ReadConsistency::Lease, ReadConsistency::Stale] {
        // A stale read through one node may lag: ask until it has it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = c.get_with(key, consistency).await.unwrap();
            if got.as_ref().map(|e| e.rev) == Some(rev) {
                break;
            }
            assert!(Instant::now() < deadline, "{consistency:?}: {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(c.get("absent").await.unwrap(), None);

    // Compare-and-set by revision, and preconditions on put and delete.
    assert_eq!(
        c.compare_and_set(key, Some(rev + 1000), "x").await.unwrap(),
        CasResult::Mismatch(Some(rev))
    );
    let CasResult::Swapped(rev2) = c.compare_and_set(key, Some(rev), "new").await.unwrap() else {
        panic!("the swap at the current revision failed");
    };
    assert!(rev2 > rev);
    assert_eq!(
        c.compare_and_set("fresh", None, "1").await.unwrap(),
        CasResult::Swapped(c.get("fresh").await.unwrap().unwrap().rev)
    );
    let absent = WriteOptions::default().precondition(Precondition::Absent);
    match c.put_with("fresh", "2", &absent).await {
        Err(Error::PreconditionFailed { current_rev }) => assert!(current_rev.is_some()),
        other => panic!("{other:?}"),
    }
    let stale = WriteOptions::default().precondition(Precondition::Revision(rev));
    assert!(matches!(
        c.delete_with(key, &stale).await,
        Err(Error::PreconditionFailed { .. })
    ));
    assert!(c.delete(key).await.unwrap().is_some());
    assert_eq!(
        c.delete(key).await.unwrap(),
        None,
        "a second delete finds nothing"
    );
    assert_eq!(c.get(key).await.unwrap(), None);

    // The same idempotency key twice: the second answer is the first.
    let once = WriteOptions::default().idempotency_key("once-1");
    let first = c.put_with("idem", "v", &once).await.unwrap();
    assert_eq!(c.put_with("idem", "v", &once).await.unwrap(), first);
    let reused = c.put_with("idem", "other", &once).await.unwrap_err();
    assert_eq!(reused.status(), Some(422), "{reused}");

    // A listing walked page by page visits every key once, in order.
    let keys: BTreeSet<String> = (0..25).map(|i| format!("page/{i:02}")).collect();
    for k in &keys {
        c.put(k, format!("value of {k}")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut lister = c.lister(ListOptions::prefix("page/").limit(7));
    while let Some(page) = lister.next_page().await.unwrap() {
        pages += 1;
        for item in page.items {
            let k = String::from_utf8(item.key.to_vec()).unwrap();
            assert_eq!(
                item.value.as_deref(),
                Some(format!("value of {k}").as_bytes())
            );
            seen.push(k);
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, keys.iter().cloned().collect::<Vec<_>>());
    let keys_only = c
        .list(&ListOptions::prefix("page/").limit(100).keys_only(true))
        .await
        .unwrap();
    assert_eq!(keys_only.items.len(), 25);
    assert!(!keys_only.more && keys_only.items.iter().all(|i| i.value.is_none()));
    // A limit beyond the node's maximum is refused, not retried.
    let err = c
        .list(&ListOptions::prefix("").limit(1_000_000))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rides_out_a_killed_endpoint_and_a_leadership_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    let c = client_of(&procs);
    let leader = wait_leader(&c).await;
    let status = c.status().await.unwrap();
    assert_eq!(status.membership.voters, vec![1, 2, 3]);
    assert_eq!(status.members.len(), 3);

    // The leader moves; writes through the client keep working.
    let target = if leader == 1 { 2 } else { 1 };
    let new = c.transfer_leader(Some(target)).await.unwrap();
    assert_eq!(new, target);
    c.put("after-transfer", "1").await.unwrap();

    // A follower is killed and listed first: requests move on to the next
    // endpoints, and a write without an idempotency key goes through (a
    // refused connection sent nothing).
    let victim = procs.iter().position(|p| p.id != target).unwrap();
    procs[victim].kill9();
    let mut order: Vec<String> = vec![procs[victim].http.clone()];
    order.extend(
        procs
            .iter()
            .filter(|p| p.child.is_some())
            .map(|p| p.http.clone()),
    );
    let plain = Client::builder(order)
        .idempotency_keys(IdempotencyKeys::Off)
        .retry(RetryPolicy::default().budget(Duration::from_secs(60)))
        .build()
        .unwrap();
    for i in 0..20 {
        plain.put(format!("k{i}"), "v").await.unwrap();
    }
    assert_eq!(&plain.get("k19").await.unwrap().unwrap().value[..], b"v");
    let s = plain.status_with_digest().await.unwrap();
    assert!(s.kv.is_some(), "{:?}", s.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_uses_several_endpoints_tables_and_values_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    wait_leader(&client_of(&procs)).await;
    procs[0].kill9();
    let endpoints = format!(
        "--endpoints={}",
        procs
            .iter()
            .map(|p| p.http.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .arg("ctl")
            .arg(&endpoints)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // A binary value from a file comes back byte for byte.
    let file = dir.path().join("value.bin");
    let bytes: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let out = ctl(&["put", "blob", "--from-file", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out).contains("\"rev\""));
    assert_eq!(ctl(&["get", "blob"]), bytes);
    let json: serde_json::Value =
        serde_json::from_slice(&ctl(&["-w", "json", "get", "blob"])).unwrap();
    assert!(json["value_base64"].is_string(), "{json}");
    // Tables for people.
    ctl(&["put", "t/1", "one"]);
    let table = String::from_utf8(ctl(&["-w", "table", "list", "--prefix", "t/"])).unwrap();
    assert!(
        table.starts_with("KEY") && table.contains("t/1") && table.contains("one"),
        "{table}"
    );
    let status = String::from_utf8(ctl(&["-w", "table", "status"])).unwrap();
    assert!(
        status.contains("LEADER") && status.contains("MEMBER"),
        "{status}"
    );
    // The cluster id, in the table and in the JSON, the same.
    let json: serde_json::Value = serde_json::from_slice(&ctl(&["status"])).unwrap();
    let id = json["cluster_id"]
        .as_str()
        .expect("a cluster id")
        .to_owned();
    assert_eq!(id.len(), 32, "{json}");
    assert!(status.contains(&format!("cluster id {id}")), "{status}");
}
