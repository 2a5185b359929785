//! Watches over HTTP on real node processes: a watch on a follower from a
//! past revision while writes go through the leader, the leader killed
//! with SIGKILL and writes going on through the next one, and a reconnect
//! with `Last-Event-ID`; a follower paused while the log moves past it,
//! which catches up by a snapshot with its watch open. Every acknowledged
//! write arrives exactly once, in revision order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{leader, led_cluster, via};
use serde_json::Value;
use tokio::sync::watch;

/// One server-sent event.
#[derive(Debug, Default)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: String,
}

/// The complete events at the front of `buf`, taken out of it.
fn take_events(buf: &mut String) -> Vec<Sse> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut e = Sse::default();
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => e.id = Some(value.parse().expect("a revision id")),
                "event" => e.event = value.to_owned(),
                "data" => e.data.push_str(value),
                _ => {} // comments (keep-alive)
            }
        }
        if e.id.is_some() || !e.data.is_empty() {
            out.push(e);
        }
    }
    out
}

/// A change as the watch showed it: (revision, type, key, value).
type Change = (u64, String, String, String);

/// Reads the watch at `url` (prefix `w/` from `start`) until it has sent
/// everything up to the revision `done` announces; drops the connection
/// once after `reconnect_after` changes and resumes with `Last-Event-ID`.
async fn follow(
    url: String,
    start: u64,
    reconnect_after: usize,
    mut done: watch::Receiver<Option<u64>>,
) -> (Vec<Change>, bool) {
    let http = reqwest::Client::new();
    let mut changes = Vec::new();
    let mut last_id: Option<u64> = None;
    let mut reconnected = false;
    loop {
        let mut req = http.get(format!(
            "{url}/v1/watch?key=w/&prefix=true&progress_notify=true&start_revision={start}"
        ));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let mut resp = req.send().await.expect("the watch answers");
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut buf = String::new();
        loop {
            let chunk = resp.chunk().await.expect("the stream goes on");
            let chunk = chunk.expect("the stream does not end");
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            for e in take_events(&mut buf) {
                assert_ne!(e.event, "canceled", "{}", e.data);
                if e.event.is_empty() {
                    let v: Value = serde_json::from_str(&e.data).unwrap();
                    assert_eq!(v["revision"].as_u64(), e.id);
                    for c in v["events"].as_array().unwrap() {
                        changes.push((
                            e.id.unwrap(),
                            c["type"].as_str().unwrap().to_owned(),
                            c["kv"]["key"].as_str().unwrap().to_owned(),
                            c["kv"]["value"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
                last_id = e.id.or(last_id);
            }
            let target = *done.borrow_and_update();
            if target.is_some_and(|t| last_id.is_some_and(|l| l >= t)) {
                return (changes, reconnected);
            }
            if !reconnected && changes.len() >= reconnect_after {
                reconnected = true;
                break; // drop the connection, resume after `last_id`
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_sees_every_acknowledged_write_once_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--watch-progress-interval-ms=200".to_string()];
    let (mut procs, client, lead) = led_cluster(dir.path(), 3, &flags).await;
    let index = |id: u64| usize::try_from(id - 1).unwrap(); // ids are 1..=3, in order
    let follower = procs.iter().find(|p| p.id != lead).unwrap().http.clone();
    // Writes before the watch starts, from the first of them.
    let first = via(&client, &procs[index(lead)])
        .put("w/before-0", "b0")
        .await
        .unwrap();
    let mut acked: BTreeMap<u64, (String, String)> = BTreeMap::new();
    acked.insert(first, ("w/before-0".into(), "b0".into()));
    for i in 1..5 {
        let (k, v) = (format!("w/before-{i}"), format!("b{i}"));
        let rev = via(&client, &procs[index(lead)])
            .put(&k, v.clone())
            .await
            .unwrap();
        acked.insert(rev, (k, v));
    }
    let (done_tx, done_rx) = watch::channel(None);
    let reader = tokio::spawn(follow(follower, first, 20, done_rx));
    let mut current = lead;
    for i in 0..60 {
        if i == 30 {
            procs[index(current)].kill9();
            current = leader(&client, &procs, Some(current)).await;
        }
        let (k, v) = (format!("w/{i:03}"), format!("v{i}"));
        // A write whose outcome is unknown (the leader died under it) may
        // or may not appear; only acknowledged ones must.
        if let Ok(rev) = via(&client, &procs[index(current)])
            .put(&k, v.clone())
            .await
        {
            acked.insert(rev, (k, v));
        }
    }
    let last = *acked.keys().last().unwrap();
    done_tx.send(Some(last)).unwrap();
    let (changes, reconnected) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the watch reaches the last write")
        .unwrap();
    println!(
        "{} acknowledged writes, {} changes seen, leader {lead} killed, then {current} led",
        acked.len(),
        changes.len()
    );
    assert!(reconnected, "the watch was resumed with Last-Event-ID");
    // In revision order, each revision once (one key per write here).
    let revs: Vec<u64> = changes.iter().map(|c| c.0).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    let seen: BTreeMap<u64, (String, String)> = changes
        .iter()
        .map(|(r, t, k, v)| {
            assert_eq!(t, "put");
            (*r, (k.clone(), v.clone()))
        })
        .collect();
    for (rev, kv) in &acked {
        assert_eq!(seen.get(rev), Some(kv), "acknowledged write at {rev}");
    }
    assert_eq!(revs.first(), Some(&first), "from the start revision on");

    // Compacted history: a watch from it is refused with the revision to
    // start from, on every member still running.
    let http = reqwest::Client::new();
    let node = &procs[index(current)].http;
    let r = http
        .post(format!("{node}/v1/cluster/compact"))
        .json(&serde_json::json!({ "revision": last }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    for p in procs.iter().filter(|p| p.child.is_some()) {
        let url = format!(
            "{}/v1/watch?key=w/&prefix=true&start_revision={last}",
            p.http
        );
        // The compaction reaches each member as it applies it.
        let body: Value = loop {
            let r = http.get(&url).send().await.unwrap();
            if r.status() == 410 {
                break r.json().await.unwrap();
            }
            assert_eq!(r.status(), 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(body["type"], "urn:raft-node:problem:revision-compacted");
        assert_eq!(body["compacted_revision"], last, "{body}");
    }
    // Bad input: a problem document, no stream.
    let base = format!("{node}/v1/watch");
    for (method, query, status) in [
        (reqwest::Method::POST, "key=a", 405),
        (reqwest::Method::GET, "prefix=true", 400),
        (reqwest::Method::GET, "key=b&range_end=a", 400),
        (reqwest::Method::GET, "key=a&start_revision=x", 400),
        (reqwest::Method::GET, "key=a&unknown=1", 400),
    ] {
        let r = http
            .request(method.clone(), format!("{base}?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {query}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
}

fn signal(p: &common::Proc, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(p.child.as_ref().unwrap().id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// `name{labels}` summed over the Prometheus text of `node`.
async fn metric(node: &str, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("{node}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_that_installs_a_snapshot_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--watch-progress-interval-ms=200".to_string(),
        "--snapshot-entries=20".to_string(),
        "--snapshot-keep-entries=5".to_string(),
    ];
    let (procs, client, lead) = led_cluster(dir.path(), 3, &flags).await;
    let leader_proc = procs.iter().find(|p| p.id == lead).unwrap();
    let behind = procs.iter().find(|p| p.id != lead).unwrap();
    let first = via(&client, leader_proc).put("w/first", "f").await.unwrap();
    let mut acked = BTreeMap::from([(first, ("w/first".to_string(), "f".to_string()))]);
    let (done_tx, done_rx) = watch::channel(None);
    let reader = tokio::spawn(follow(behind.http.clone(), first, usize::MAX, done_rx));
    // Paused while the log moves past it: it catches up by a snapshot,
    // with its watch open.
    common::wait_status(&client, behind, 30, "caught up", |s| s.applied >= first).await;
    signal(behind, rustix::process::Signal::STOP);
    let put = |i: usize| {
        let node = via(&client, leader_proc);
        async move {
            let (k, v) = (format!("w/{i:03}"), format!("v{i}"));
            let rev = node.put(&k, v.clone()).await.unwrap();
            (rev, (k, v))
        }
    };
    for i in 0..30 {
        let (rev, kv) = put(i).await;
        acked.insert(rev, kv);
    }
    // Entries sent to it so far may wait in its socket buffers. Once the
    // peer connection has timed out (an election timeout of 200 ms), the
    // leader sends it nothing more; the entries written then are gone
    // from the leader's log by the time it resumes: it needs a snapshot.
    let sent_before = *acked.keys().last().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 30..90 {
        let (rev, kv) = put(i).await;
        acked.insert(rev, kv);
    }
    let purged = |s: &raft_client::ClusterStatus| s.first_index > sent_before + 1;
    common::wait_status(&client, leader_proc, 60, "log purged", purged).await;
    signal(behind, rustix::process::Signal::CONT);
    let last = *acked.keys().last().unwrap();
    done_tx.send(Some(last)).unwrap();
    let (changes, _) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the watch reaches the last write")
        .unwrap();
    assert!(
        behind.log_text().contains("snapshot loaded into the store"),
        "node {} caught up without a snapshot",
        behind.id
    );
    let caught_up = metric(&behind.http, "raft_node_watch_catchups_total", "snapshot").await;
    assert!(caught_up >= 1.0, "the watch caught up after the install");
    let seen: BTreeMap<u64, (String, String)> = changes
        .iter()
        .map(|(r, _, k, v)| (*r, (k.clone(), v.clone())))
        .collect();
    let revs: Vec<u64> = changes.iter().map(|c| c.0).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "in order, each once: {revs:?}"
    );
    assert_eq!(seen, acked, "every write, in order, exactly once");
}
