//! Revisions over HTTP on real node processes: the `Raft-Revision` header
//! on every key-value answer, a key's revisions on `GET`, `?revision=` on
//! a key and on listings (as of a past revision, after overwrites and a
//! delete), compaction through `POST /v1/cluster/compact` (410 Gone
//! below it, 400 above the current revision), the same answers from
//! every member, and a node that installs a snapshot holding the same
//! history.

mod common;

use std::time::Duration;

use common::{leader, led_cluster, raw_http};
use reqwest::{Client, Response};
use serde_json::{json, Value};

fn header(r: &Response, name: &str) -> u64 {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {r:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn put(c: &Client, base: &str, key: &str, value: &str) -> u64 {
    let r = c
        .put(format!("{base}/v1/kv/{key}"))
        .body(value.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "put {key}");
    let rev = header(&r, "raft-revision");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rev"], rev, "the write's revision is its header");
    rev
}

/// `GET` of `key` at `query` through `p`: status, value, and the headers
/// (revision, create, mod, version; 0 when absent).
async fn get(c: &Client, base: &str, key: &str, query: &str) -> (u16, String, [u64; 4]) {
    let r = c
        .get(format!("{base}/v1/kv/{key}?{query}"))
        .send()
        .await
        .unwrap();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map_or(0, |v| v.to_str().unwrap().parse().unwrap())
    };
    let heads = [
        h("raft-revision"),
        h("raft-create-revision"),
        h("raft-mod-revision"),
        h("raft-version"),
    ];
    let status = r.status().as_u16();
    (status, r.text().await.unwrap(), heads)
}

async fn json_of(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_over_http_on_every_member_and_after_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--snapshot-entries=20".to_string(),
        "--snapshot-keep-entries=5".to_string(),
    ];
    let (mut procs, client, lead) = led_cluster(dir.path(), 3, &flags).await;
    let c = raw_http::client();
    let l = &procs.iter().find(|p| p.id == lead).unwrap().http.clone();
    let f = &procs.iter().find(|p| p.id != lead).unwrap().http.clone();

    let r1 = put(&c, f, "k", "one").await;
    let r2 = put(&c, l, "k", "two").await;
    let rk = put(&c, l, "other", "x").await;
    let d = c.delete(format!("{}/v1/kv/k", l)).send().await.unwrap();
    assert_eq!(d.status(), 200);
    let rd = header(&d, "raft-revision");
    let r3 = put(&c, f, "k", "three").await;
    assert!(
        r1 < r2 && r2 < rk && rk < rd && rd < r3,
        "{r1} {r2} {rk} {rd} {r3}"
    );

    // The current value: create/mod revisions, version started over.
    let (s, v, h) = get(&c, l, "k", "").await;
    assert_eq!((s, v.as_str(), h), (200, "three", [r3, r3, r3, 1]));
    // Through a follower (forwarded to the leader), the same headers.
    assert_eq!(
        get(&c, f, "k", "").await,
        (200, "three".into(), [r3, r3, r3, 1])
    );
    // Past values, from the leader and (stale) from every member once
    // it has caught up.
    for p in &procs {
        common::wait_status(&client, p, 30, "caught up", |s| s.applied >= r3).await;
        let q = |rev: u64| format!("revision={rev}&consistency=stale");
        assert_eq!(
            get(&c, &p.http, "k", &q(r1)).await,
            (200, "one".into(), [r1, r1, r1, 1])
        );
        assert_eq!(
            get(&c, &p.http, "k", &q(rk)).await,
            (200, "two".into(), [rk, r1, r2, 2])
        );
        let (s, _, h) = get(&c, &p.http, "k", &q(rd)).await;
        assert_eq!(
            (s, h[0]),
            (404, rd),
            "deleted at {rd}: 404 at that revision"
        );
    }

    // A listing as of a revision carries each key's revisions.
    let (s, page) = json_of(
        c.get(format!("{}/v1/kv?revision={rk}", f))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(page["revision"], rk);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["key"], "k");
    assert_eq!(items[0]["value"], "two");
    assert_eq!(
        (
            &items[0]["create_revision"],
            &items[0]["mod_revision"],
            &items[0]["version"]
        ),
        (&json!(r1), &json!(r2), &json!(2))
    );
    assert_eq!(items[0]["rev"], r2);

    // A future revision: 400 with its type.
    let (s, p) = json_of(
        c.get(format!("{}/v1/kv/k?revision={}", l, r3 + 1000))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, &p["type"]),
        (400, &json!("urn:raft-node:problem:future-revision"))
    );
    assert_eq!(p["current_revision"], r3);
    // Malformed revisions: 400.
    for bad in ["0", "-1", "x"] {
        let r = c
            .get(format!("{}/v1/kv?revision={bad}", l))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "revision={bad}");
    }

    // Compaction through a follower (forwarded), then 410 below it.
    let (s, body) = json_of(
        c.post(format!("{}/v1/cluster/compact", f))
            .json(&json!({ "revision": rk }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, &body["compacted"]), (200, &json!(rk)), "{body}");
    for p in &procs {
        let r = c
            .get(format!("{}/v1/kv/k?revision={r1}", p.http))
            .send()
            .await
            .unwrap();
        let (s, body) = json_of(r).await;
        assert_eq!(s, 410, "{body}");
        assert_eq!(body["type"], "urn:raft-node:problem:revision-compacted");
        assert_eq!(body["compacted_revision"], rk);
        // From the compacted revision on, history answers.
        let (s, v, _) = get(&c, &p.http, "k", &format!("revision={rk}")).await;
        assert_eq!((s, v.as_str()), (200, "two"));
    }
    // Compacting again below, or above the current revision, is refused.
    for (rev, status) in [(r1, 410), (r3 + 1000, 400)] {
        let r = c
            .post(format!("{}/v1/cluster/compact", l))
            .json(&json!({ "revision": rev }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "compact to {rev}");
    }

    // A node that was down catches up by a snapshot (the log moved past
    // it) and answers the same history.
    let behind = procs.iter().position(|p| p.id != lead).unwrap();
    procs[behind].kill9();
    let mut last = r3;
    for i in 0..60 {
        last = put(&c, l, &format!("fill/{i}"), "v").await;
    }
    procs[behind].start();
    leader(&client, &procs, None).await;
    let p = &procs[behind];
    common::wait_status(&client, p, 60, "caught up", |s| s.applied >= last).await;
    assert!(
        p.log_text().contains("snapshot loaded into the store"),
        "node {} caught up without a snapshot",
        p.id
    );
    let q = format!("revision={rk}&consistency=stale");
    assert_eq!(
        get(&c, &p.http, "k", &q).await,
        (200, "two".into(), [rk, r1, r2, 2])
    );
    let digests: Vec<_> = {
        let mut out = Vec::new();
        for p in &procs {
            out.push(common::status_of(&client, p).await.kv.unwrap());
        }
        out
    };
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    common::assert_running_without_panic(&mut procs, "after the revisions test");
}

/// Automatic compaction is replicated state: a node that joins with
/// another `--history-retention` than the cluster's would keep another
/// history (answer `?revision=` where the others answer 410, and differ
/// in the digest). It stops with an error naming the flag instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_with_another_history_retention_stops_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, _client, l) =
        led_cluster(dir.path(), 1, &["--history-retention=5".to_string()]).await;
    let lead = procs.iter().find(|p| p.id == l).unwrap();
    let mut new = common::joiner(dir.path(), 2, &lead.http, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = new.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the joiner with --history-retention=100000 (cluster: 5) still runs; log:\n{}",
            new.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "exit status {status}");
    let log = new.log_text();
    assert!(
        log.contains("--history-retention") && log.contains('5'),
        "the error names the flag and the cluster's value; log:\n{log}"
    );
}

/// A listing at a past revision reads the history of keys that no longer
/// exist then: that work counts toward `--max-list-bytes` like the values
/// read, so a prefix of many deleted keys is paged (short pages with a
/// cursor), not read whole by one request whatever its `limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_at_a_revision_pages_through_deleted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, _client, l) =
        led_cluster(dir.path(), 1, &["--max-list-bytes=1024".to_string()]).await;
    let base = &procs.iter().find(|p| p.id == l).unwrap().http;
    let c = raw_http::client();
    for i in 0..60 {
        put(&c, base, &format!("d%2F{i:03}"), "v").await;
    }
    for i in 0..60 {
        let r = c
            .delete(format!("{base}/v1/kv/d%2F{i:03}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let now = put(&c, base, "e", "v").await;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{base}/v1/kv?prefix=d%2F&limit=1000&revision={now}");
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let (status, page) = json_of(c.get(url).send().await.unwrap()).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["items"], json!([]), "every d/ key is deleted at {now}");
        pages += 1;
        if page["more"] != json!(true) {
            break;
        }
        cursor = Some(page["next"].as_str().expect("a cursor").to_owned());
        assert!(pages < 100, "the cursor moves on");
    }
    assert!(
        pages > 1,
        "60 deleted keys read in one page of a 1,024-byte listing"
    );
}
