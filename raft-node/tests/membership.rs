//! Multi-process tests of membership changes and snapshots on the
//! `raft-node` binary (real processes, RocksDB, QUIC with mutual TLS): a new
//! node joins with `--join`, is brought up by a snapshot and promoted; the
//! leader removes itself; a killed node is replaced; nodes restart after
//! compaction; bad changes get clear errors. No acknowledged write is lost.

mod common;

use std::time::{Duration, Instant};

use common::raw_http::{send_json, wait_listed};
use common::{builder_of, by_id, cluster_with, joiner, leader, status_of, via, wait_status, Proc};
use raft_client::{Client, RetryPolicy};

fn flags(extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--max-key-bytes=64".to_string(),
        "--max-value-bytes=1048576".to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// A client of the cluster whose attempts may take a minute: 1 MiB writes
/// while snapshots are built can take long on a loaded machine.
fn client_of(procs: &[Proc]) -> Client {
    builder_of(procs)
        .request_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Writes `count` values of `size` bytes under `prefix`, through `p`, and
/// returns them (every write acknowledged).
async fn write_values(
    client: &Client,
    p: &Proc,
    prefix: &str,
    count: usize,
    size: usize,
) -> Vec<(String, Vec<u8>)> {
    let node = via(client, p);
    let mut out = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{i:05}");
        let value: Vec<u8> = (0..size).map(|j| ((i * 31 + j) % 251) as u8).collect();
        if let Err(e) = node.put(&key, value.clone()).await {
            panic!("write {key} through node {}: {e}", p.id);
        }
        out.push((key, value));
    }
    out
}

async fn assert_values(client: &Client, p: &Proc, values: &[(String, Vec<u8>)]) {
    let node = via(client, p);
    for (key, value) in values {
        let e = node.get(key).await.unwrap_or_else(|e| {
            panic!("node {}: read {key}: {e}", p.id);
        });
        assert_eq!(
            e.map(|e| e.value).as_deref(),
            Some(value.as_slice()),
            "node {}: value of {key}",
            p.id
        );
    }
}

/// Waits until every node reports the same key digest at the same applied index.
async fn assert_same_digest(client: &Client, procs: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut seen = Vec::new();
        for p in procs {
            // The digest is a full scan: with 200 MiB on a debug build and
            // a busy machine it takes longer than `status` waits.
            let s = via(client, p)
                .with_retry(RetryPolicy::none())
                .with_request_timeout(Duration::from_secs(60))
                .status_with_digest()
                .await;
            seen.push(s.ok().map(|s| (s.applied, s.kv)));
        }
        if seen.iter().all(|s| s.is_some() && *s == seen[0]) {
            return;
        }
        assert!(Instant::now() < deadline, "replicas differ: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts node `id` with `--join` through `leader`, waits until it caught
/// up, promotes it and returns it.
async fn join_and_promote(
    client: &Client,
    dir: &std::path::Path,
    procs: &[Proc],
    leader: u64,
    id: u64,
    extra: &[String],
) -> Proc {
    let via_leader = by_id(procs, leader);
    let new = joiner(dir, id, &via_leader.http, extra);
    let target = status_of(client, via_leader).await.commit;
    wait_status(client, &new, 60, "catch-up", |s| s.applied >= target).await;
    let m = via(client, via_leader)
        .promote(id)
        .await
        .unwrap_or_else(|e| panic!("promote {id}: {e}"));
    assert!(m.membership.voters.contains(&id), "{:#}", m.raw);
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_brought_up_by_a_snapshot_and_promoted() {
    // The data the new learner must catch up on (MB); the figure is
    // 200, which `RAFT_TEST_LEARNER_MB` can ask for.
    let mb: usize = raft_core::testing::env_or("RAFT_TEST_LEARNER_MB", 200);
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB writes while 64-entry snapshots are built: on a loaded machine
    // one may take longer than the default 5 s request timeout.
    let extra = flags(&[
        "--snapshot-entries=64",
        "--snapshot-keep-entries=8",
        "--request-timeout-ms=30000",
    ]);
    let mut procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    let started = Instant::now();
    let values = write_values(&client, by_id(&procs, l), "big/", mb, 1 << 20).await;
    eprintln!("wrote {mb} MiB in {:.1} s", started.elapsed().as_secs_f64());
    let s = wait_status(&client, by_id(&procs, l), 30, "compaction", |s| {
        s.first_index > 1
    })
    .await;
    let target = s.commit;

    // Node 4 joins through a follower (forwarded to the leader).
    let follower = procs.iter().find(|p| p.id != l).unwrap();
    let started = Instant::now();
    let new = joiner(dir.path(), 4, &follower.http, &extra);
    let s4 = wait_status(&client, &new, 300, "catch-up as a learner", |s| {
        s.applied >= target
    })
    .await;
    eprintln!(
        "learner caught up on {mb} MiB in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        s4.snapshot.is_some(),
        "the learner installed a snapshot: {:#}",
        s4.raw
    );
    assert!(s4.membership.learners.contains(&4), "{:#}", s4.raw);

    // Promote it (through any node).
    let m = via(&client, follower).promote(4).await.unwrap();
    assert_eq!(m.membership.voters, [1, 2, 3, 4], "{:#}", m.raw);
    assert!(!m.membership.joint, "{:#}", m.raw);
    procs.push(new);
    // The new voter serves linearizable reads of everything written.
    let more = write_values(&client, by_id(&procs, 4), "after/", 5, 100).await;
    assert_values(&client, by_id(&procs, 4), &values[values.len() - 3..]).await;
    assert_values(&client, by_id(&procs, 4), &more).await;
    assert_same_digest(&client, &procs.iter().collect::<Vec<_>>()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_itself_and_a_killed_node_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // Elections of 50 ticks (1–2 s): the term check below must not be
    // tripped by an ordinary election after a scheduling stall of a loaded
    // machine, which a 400 ms timeout invites.
    let extra = flags(&[
        "--snapshot-entries=50",
        "--snapshot-keep-entries=5",
        "--election-ticks=50",
    ]);
    let mut procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    let mut written = write_values(&client, by_id(&procs, l), "a/", 80, 200).await;

    // The leader removes itself: it commits C_new, hands over, steps down.
    let m = via(&client, by_id(&procs, l)).remove(l).await.unwrap();
    assert_eq!(m.membership.voters.len(), 2, "{:#}", m.raw);
    let idx = procs.iter().position(|p| p.id == l).unwrap();
    let mut removed = procs.remove(idx);
    let l2 = leader(&client, &procs, Some(l)).await;
    written.extend(write_values(&client, by_id(&procs, l2), "b/", 20, 200).await);
    // The removed node does not disrupt: the term stays put.
    let term = status_of(&client, by_id(&procs, l2)).await.term;
    // Longer than the removed node's longest election timeout (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = status_of(&client, by_id(&procs, l2)).await;
    assert_eq!(s.term, term, "the removed node raised the term");
    assert_eq!(s.role, "leader");
    removed.sigterm();

    // Back to three voters: node 4 joins and is promoted.
    let survivor = via(&client, by_id(&procs, l2));
    let new = join_and_promote(&client, dir.path(), &procs, l2, 4, &extra).await;
    procs.push(new);
    written.extend(write_values(&client, by_id(&procs, 4), "c/", 20, 200).await);

    // Kill a follower, remove it (the other two are a quorum of the three,
    // and of the two left), and replace it by node 5.
    let dead = procs.iter().position(|p| p.id != l2 && p.id != 4).unwrap();
    let dead_id = procs[dead].id;
    procs[dead].kill9();
    procs.remove(dead);
    survivor.remove(dead_id).await.unwrap();
    let new = join_and_promote(&client, dir.path(), &procs, l2, 5, &extra).await;
    procs.push(new);
    written.extend(write_values(&client, by_id(&procs, 5), "d/", 20, 200).await);
    for p in &procs {
        assert_values(&client, p, &written).await;
    }
    assert_same_digest(&client, &procs.iter().collect::<Vec<_>>()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_restart_after_compaction_without_losing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let extra = flags(&["--snapshot-entries=0", "--snapshot-keep-entries=3"]);
    let mut procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    let written = write_values(&client, by_id(&procs, l), "k/", 60, 300).await;
    // Every node takes a snapshot on demand and compacts its log.
    for p in &procs {
        wait_status(&client, p, 30, "apply", |s| s.applied >= 60).await;
        let taken = via(&client, p).snapshot().await.unwrap();
        assert!(taken.index >= 60, "{taken:?}");
        let s = status_of(&client, p).await;
        assert!(s.first_index > 50, "node {}: {:#}", p.id, s.raw);
    }
    // Restart all of them: they come back from snapshot plus kept entries.
    for p in procs.iter_mut() {
        let code = p.sigterm();
        assert!(code.success(), "node {} exit {code:?}", p.id);
    }
    for p in procs.iter_mut() {
        p.start();
    }
    let l = leader(&client, &procs, None).await;
    let more = write_values(&client, by_id(&procs, l), "m/", 5, 300).await;
    for p in &procs {
        assert_values(&client, p, &written).await;
        assert_values(&client, p, &more).await;
    }
    assert_same_digest(&client, &procs.iter().collect::<Vec<_>>()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let extra = flags(&["--max-promotion-lag=10"]);
    let procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    // Answered once: a lagging learner's 409 asks to be retried.
    let at_leader = via(&client, by_id(&procs, l)).with_retry(RetryPolicy::none());
    let problem = |e: &raft_client::Error| e.problem().map(|p| p.kind.clone());

    let err = at_leader.promote(9).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(problem(&err).as_deref(), Some("unknown-member"));
    // Malformed requests no client call sends: raw HTTP.
    let http = reqwest::Client::new();
    let base = by_id(&procs, l).http.clone();
    let r = http
        .post(format!("{base}/v1/cluster/voters/zero"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for bad in [
        "",
        "{}",
        "{\"id\": 0, \"peer_addr\": \"127.0.0.1:1\", \"client_addr\": \"127.0.0.1:2\"}",
        "{\"id\": 5, \"peer_addr\": \"nowhere\", \"client_addr\": \"127.0.0.1:2\"}",
        "[1, 2]",
    ] {
        let r = http
            .post(format!("{base}/v1/cluster/learners"))
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "body {bad:?}: {:?}", r.text().await);
    }
    // A learner that never comes up is too far behind to be promoted.
    at_leader
        .add_learner(9, "127.0.0.1:9", "127.0.0.1:9")
        .await
        .unwrap();
    write_values(&client, by_id(&procs, l), "x/", 20, 10).await;
    let err = at_leader.promote(9).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert_eq!(problem(&err).as_deref(), Some("learner-lagging"));
    let lag = err.problem().and_then(|p| p.number("lag"));
    assert!(lag > Some(10), "{err}: lag {lag:?}");
    // Adding a voter as a learner is refused.
    let err = at_leader
        .add_learner(l, "127.0.0.1:9", "127.0.0.1:9")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    // The learner is removed; the cluster is unaffected throughout.
    at_leader.remove(9).await.unwrap();
    let s = status_of(&client, by_id(&procs, l)).await;
    assert_eq!(s.membership.voters, [1, 2, 3]);
    assert_eq!(s.membership.learners, Vec::<u64>::new());
    assert_eq!(s.role, "leader");
}

/// A node that joins through a leader which itself joined after the
/// cluster's last snapshot: the joiner installs that snapshot, whose
/// configuration does not hold the leader, and must still take the
/// leader's entries (the allowed-peer set follows only a configuration
/// that already holds the node itself, and never shuts out the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_through_a_leader_newer_than_the_snapshot_it_installs() {
    let dir = tempfile::tempdir().unwrap();
    let extra = flags(&[
        "--snapshot-entries=200",
        "--snapshot-keep-entries=5",
        "--election-ticks=50",
    ]);
    let mut procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    write_values(&client, by_id(&procs, l), "small/", 200, 10).await;
    wait_status(&client, by_id(&procs, l), 60, "compaction", |s| {
        s.first_index > 1
    })
    .await;
    // Entries after the snapshot, too few for another one.
    write_values(&client, by_id(&procs, l), "mid/", 150, 64 << 10).await;
    let four = join_and_promote(&client, dir.path(), &procs, l, 4, &extra).await;
    procs.push(four);
    via(&client, by_id(&procs, l))
        .transfer_leader(None)
        .await
        .unwrap();
    // Move leadership to node 4 (the transfer picks the most up-to-date
    // voter; ask until it is node 4).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = leader(&client, &procs, None).await;
        if now == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "leadership never reached node 4");
        let asked = via(&client, by_id(&procs, now))
            .with_retry(RetryPolicy::none())
            .transfer_leader(Some(4))
            .await;
        if let Err(e) = asked {
            assert_eq!(e.status(), Some(503), "{e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let five = join_and_promote(&client, dir.path(), &procs, 4, 5, &extra).await;
    let s5 = status_of(&client, &five).await;
    assert!(
        s5.snapshot.is_some(),
        "node 5 caught up through the snapshot: {:#}",
        s5.raw
    );
    procs.push(five);
    let more = write_values(&client, by_id(&procs, 5), "after/", 5, 100).await;
    assert_values(&client, by_id(&procs, 5), &more).await;
}

/// Members created with `--initial-cluster` and started again with
/// `--join` (a deployment template switched to joining, as one that adds
/// members later is) come back as the voters they were: no node tries to
/// join again, the cluster elects a leader and every node has every
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_members_restarted_with_join_come_back_as_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster_with(dir.path(), 3, &flags(&[]), &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    let written = write_values(&client, by_id(&procs, l), "k/", 10, 100).await;
    let join_url = procs[0].http.clone();
    for p in procs.iter_mut() {
        let code = p.sigterm();
        assert!(code.success(), "node {} exit {code:?}", p.id);
        p.args = p
            .args
            .iter()
            .map(|a| {
                if a.starts_with("--initial-cluster=") {
                    format!("--join={join_url}")
                } else {
                    a.clone()
                }
            })
            .collect();
    }
    for p in procs.iter_mut() {
        p.start();
    }
    let l = leader(&client, &procs, None).await;
    let more = write_values(&client, by_id(&procs, l), "m/", 5, 100).await;
    for p in &procs {
        assert_values(&client, p, &written).await;
        assert_values(&client, p, &more).await;
        let s = status_of(&client, p).await;
        assert_eq!(
            s.membership.voters,
            vec![1, 2, 3],
            "node {} after its restart with --join: {:#}",
            p.id,
            s.raw
        );
    }
    assert_same_digest(&client, &procs.iter().collect::<Vec<_>>()).await;
}

/// Learner 9's `POST /v1/cluster/learners` body: addresses nobody listens
/// at (it is never started).
fn join_nine() -> serde_json::Value {
    serde_json::json!({
        "id": 9, "peer_addr": "127.0.0.1:9", "client_addr": "127.0.0.1:9",
    })
}

/// A 3-node cluster over HTTP to which learner 9 ([`join_nine`]) was
/// added through its leader; the nodes and the leader's URL.
async fn cluster_with_learner_nine(dir: &std::path::Path) -> (Vec<Proc>, String) {
    let procs = cluster_with(dir, 3, &flags(&[]), &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    let base = by_id(&procs, l).http.clone();
    let (status, body) = send_json(
        reqwest::Client::new().post(format!("{base}/v1/cluster/learners")),
        &join_nine(),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
    (procs, base)
}

/// A joiner repeats its `POST /v1/cluster/learners` (its first answer was
/// lost, or it restarted before recording that it joined) after it already
/// published its gRPC URL (`PUT /v1/cluster/members/{id}` with `grpc_url`,
/// which a node serving gRPC does as soon as it is a member): the repeat,
/// with the same addresses and no URL, succeeds and keeps the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_join_after_the_grpc_url_was_published_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (_procs, base) = cluster_with_learner_nine(dir.path()).await;
    let http = reqwest::Client::new();
    let publish = serde_json::json!({
        "peer_addr": "127.0.0.1:9", "client_addr": "127.0.0.1:9",
        "grpc_url": "http://127.0.0.1:9",
    });
    let (status, body) =
        send_json(http.put(format!("{base}/v1/cluster/members/9")), &publish).await;
    assert!(status.is_success(), "{status}: {body}");
    let r = http
        .post(format!("{base}/v1/cluster/learners"))
        .json(&join_nine())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let answer: serde_json::Value = r.json().await.unwrap();
    assert!(status.is_success(), "{status}: {answer:#}");
    let nine = answer["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == 9))
        .cloned()
        .unwrap_or_default();
    assert_eq!(nine["grpc_url"], "http://127.0.0.1:9", "{answer:#}");
}

/// Review finding (MEDIUM): a learner removed and at once added again with
/// the same addresses got no address record: the leader's member
/// directory still held it (it forgets a removed member on its next poll),
/// so the leader took the addresses as recorded, while the followers, which
/// had forgotten it, knew no addresses for it. Tried several times, since
/// the window is a poll's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_removed_and_added_again_at_once_is_known_to_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, base) = cluster_with_learner_nine(dir.path()).await;
    let http = reqwest::Client::new();
    for round in 0..12 {
        // Let every node's directory catch up with the addition.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = http
            .delete(format!("{base}/v1/cluster/members/9"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
        // Within a poll's length of the removal: some nodes' directories
        // have forgotten the learner, some not yet.
        tokio::time::sleep(Duration::from_millis(60 + 11 * round)).await;
        let (status, body) = send_json(
            http.post(format!("{base}/v1/cluster/learners")),
            &join_nine(),
        )
        .await;
        assert!(status.is_success(), "{status}: {body}");
        // Every node learns the addresses again (polls run every 200 ms).
        wait_listed(
            &http,
            &procs,
            9,
            &format!("round {round}: its addresses"),
            |nine| nine["addresses"]["peer"] == "127.0.0.1:9",
        )
        .await;
    }
}
