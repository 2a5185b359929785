//! etcd's gRPC Watch stream (`--grpc-listen`) on a real 3-node cluster,
//! through the `etcd-client` crate: a prefix watched on a follower from a
//! past revision while the leader writes (every event once, in revision
//! order, with its previous value), cancel, progress requests (also for a
//! watch whose keys do not change), a compacted start revision, several
//! watches on one stream and the per-stream limit.

mod common;

use common::etcd::Cluster;
use etcd_client::{
    Client, EventType, GetOptions, PutOptions, WatchOptions, WatchResponse, WatchStream,
};

/// The next response of a watch stream (the stream must not end).
async fn next(w: &mut WatchStream) -> WatchResponse {
    w.message()
        .await
        .expect("a watch response")
        .expect("the stream goes on")
}

/// What a test expects of one event: (revision, put?, key, value, previous value).
type Expected = (i64, bool, String, String, Option<String>);

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_streams_a_prefix_from_a_past_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let mut l = cluster.client(cluster.leader, None).await;
    let mut f = cluster.client(cluster.follower(), None).await;

    // History before the watch opens: replayed from `start`.
    let start = put(&mut l, "k/a", "a1").await;
    let mut expected: Vec<Expected> = vec![(start, true, "k/a".into(), "a1".into(), None)];
    let r = put(&mut l, "k/b", "b1").await;
    expected.push((r, true, "k/b".into(), "b1".into(), None));
    put(&mut l, "other", "not watched").await;
    let r = put(&mut l, "k/a", "a2").await;
    expected.push((r, true, "k/a".into(), "a2".into(), Some("a1".into())));

    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_prev_key();
    let mut w = f.watch("k/", Some(opts)).await.unwrap();
    let created = next(&mut w).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    let id = created.watch_id();

    // Live writes through the leader while the follower replays.
    for i in 0..20 {
        let value = format!("c{i}");
        let prev = (i > 0).then(|| format!("c{}", i - 1));
        let r = put(&mut l, "k/c", &value).await;
        expected.push((r, true, "k/c".into(), value, prev));
        put(&mut l, "other", "not watched").await;
    }
    let r = l
        .delete("k/b", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    expected.push((r, false, "k/b".into(), String::new(), Some("b1".into())));
    let last = r;

    let mut got: Vec<Expected> = Vec::new();
    let mut header_rev = 0;
    while got.last().is_none_or(|e| e.0 < last) {
        let m = next(&mut w).await;
        assert_eq!(m.watch_id(), id);
        assert!(!m.canceled(), "{m:?}");
        if m.events().is_empty() {
            continue;
        }
        let rev = m.header().unwrap().revision();
        assert!(rev > header_rev, "revisions rise: {rev} after {header_rev}");
        header_rev = rev;
        for e in m.events() {
            let kv = e.kv().unwrap();
            assert_eq!(kv.mod_revision(), rev);
            got.push((
                kv.mod_revision(),
                e.event_type() == EventType::Put,
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_owned()),
            ));
        }
    }
    assert_eq!(got, expected, "every event once, in revision order");

    // A progress request: etcd 3.4's watch id -1, at the revision reached.
    w.request_progress().await.unwrap();
    let p = next(&mut w).await;
    assert_eq!(p.watch_id(), -1);
    assert!(p.events().is_empty() && !p.canceled());
    assert!(p.header().unwrap().revision() >= last);

    // Cancel: the watch's id, canceled.
    w.cancel(id).await.unwrap();
    let c = next(&mut w).await;
    assert!(c.canceled() && c.watch_id() == id, "{c:?}");
    common::assert_running_without_panic(&mut cluster.procs, "watch");
}

/// A progress request on a stream whose watch covers keys nobody writes
/// tells the revision the store reached (every change up to it was
/// looked at and none is the watch's), not the revision the watch opened
/// at: a client learns how current its view is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_request_reaches_past_a_quiet_watch() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let mut c = cluster.client(cluster.leader, None).await;
    let mut w = c.watch("quiet", None).await.unwrap();
    let created = next(&mut w).await;
    assert!(created.created(), "{created:?}");
    let opened = created.header().unwrap().revision();
    let mut last = 0;
    for i in 0..5 {
        last = put(&mut c, "busy", &format!("v{i}")).await;
    }
    assert!(last > opened);
    // The watch takes the changes in the background: ask until it has
    // looked at all of them (or give up after 10 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut reached = 0;
    while reached < last && std::time::Instant::now() < deadline {
        w.request_progress().await.unwrap();
        let p = next(&mut w).await;
        assert_eq!(p.watch_id(), -1, "{p:?}");
        assert!(p.events().is_empty(), "the quiet key has no events: {p:?}");
        reached = p.header().unwrap().revision();
        assert!(
            reached <= last,
            "progress {reached} past the store's {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        reached, last,
        "progress stayed at {reached} (opened at {opened}), the store is at {last}"
    );
    // A change of the watched key still arrives after that progress.
    let r = put(&mut c, "quiet", "now").await;
    let m = next(&mut w).await;
    assert_eq!(m.header().unwrap().revision(), r, "{m:?}");
    assert_eq!(m.events().len(), 1, "{m:?}");
    common::assert_running_without_panic(&mut cluster.procs, "watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_starts_and_many_watches_on_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let limit = ["--grpc-max-watches-per-stream=2".to_owned()];
    let mut cluster = Cluster::start(dir.path(), &limit).await;
    let mut c = cluster.client(cluster.follower(), None).await;
    let old = put(&mut c, "x", "x1").await;
    let compacted = put(&mut c, "x", "x2").await;
    c.compact(compacted, None).await.unwrap();

    // A compacted start: created, then canceled with the revision to
    // start from instead.
    let opts = WatchOptions::new().with_start_revision(old);
    let mut w = c.watch("x", Some(opts)).await.unwrap();
    let created = next(&mut w).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    let canceled = next(&mut w).await;
    assert!(canceled.canceled(), "{canceled:?}");
    assert_eq!(canceled.watch_id(), created.watch_id());
    assert_eq!(canceled.compact_revision(), compacted + 1);
    assert!(canceled.cancel_reason().contains("compacted"));

    // Retrying from compact_revision works, on the same stream; a second
    // watch with the id the client chose shares the stream.
    let retry = WatchOptions::new().with_start_revision(canceled.compact_revision());
    w.watch("x", Some(retry)).await.unwrap();
    let x = next(&mut w).await;
    assert!(x.created() && !x.canceled(), "{x:?}");
    w.watch("y", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let y = next(&mut w).await;
    assert!(y.created() && !y.canceled() && y.watch_id() == 7, "{y:?}");
    assert_ne!(x.watch_id(), y.watch_id());

    // The stream's limit of 2 watches: a third is refused with a reason.
    w.watch("z", None).await.unwrap();
    let z = next(&mut w).await;
    assert!(z.created() && z.canceled(), "{z:?}");
    assert!(z.cancel_reason().contains("--grpc-max-watches-per-stream"));

    // A create with an id in use is refused with watch_id -1, as etcd
    // does: the live watch 7 is not reported canceled, and goes on.
    w.watch("y2", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let dup = next(&mut w).await;
    assert!(dup.created() && dup.canceled(), "{dup:?}");
    assert_eq!(dup.watch_id(), -1, "{dup:?}");

    // Each watch's events carry its id.
    let ry = c
        .put("y", "y1", Some(PutOptions::new()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let rx = put(&mut c, "x", "x3").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = next(&mut w).await;
        for e in m.events() {
            let kv = e.kv().unwrap();
            seen.push((
                m.watch_id(),
                kv.key_str().unwrap().to_owned(),
                kv.mod_revision(),
            ));
        }
    }
    seen.sort_unstable();
    let mut want = vec![(x.watch_id(), "x".to_owned(), rx), (7, "y".to_owned(), ry)];
    want.sort_unstable();
    assert_eq!(seen, want);
    assert_eq!(
        c.get("y", Some(GetOptions::new()))
            .await
            .unwrap()
            .kvs()
            .len(),
        1
    );
    common::assert_running_without_panic(&mut cluster.procs, "watch");
}
