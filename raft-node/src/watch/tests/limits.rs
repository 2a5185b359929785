//! Watch limits against a client: replay pages read at once, the ring's
//! byte budget for watchers that are not read, no progress below a future
//! start; and released history not yet deleted never served.

use super::*;
use crate::store::test_support;

/// Finding: the ring of published changes was bounded in batches only,
/// and a published change is kept until every watcher has taken it, so a
/// single watch whose client does not read (or that is replaying a long
/// history) kept the last `buffer` batches of every key's changes, with
/// their values and previous values, in memory: gigabytes with large
/// values. Now a watcher more than `buffer_bytes` of published changes
/// behind lets go of the ring and catches up from the history later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_is_not_read_lets_go_of_changes_past_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(1024, 1000, 1);
    cfg.buffer_bytes = 2000;
    let (_log, mut sm) = store(dir.path(), cfg);
    let watches = sm.watches();
    let mut w = watches.watch(WatchRequest::key("k")).unwrap();
    let mut model = Model::default();
    // Changes to other keys count too: the ring holds every change.
    for i in 1..=300 {
        let key = if i % 10 == 0 { "k" } else { "other" };
        model.put(i, key);
        sm.apply(&[put(i, key)]).await.unwrap();
    }
    // Nothing read: the ring lets go of what the watcher did not take but
    // the last 2,000 bytes at most (a change counts 82 here: 64, the key
    // and the value, the previous key and value), and one batch more.
    let mut tries = 0;
    while watches.hub.queued() > 2000 / 82 + 1 {
        tries += 1;
        assert!(
            tries < 6000,
            "the ring still holds {} batches",
            watches.hub.queued()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And the watch still gets every change, from the history.
    let got = changes_through(&mut w, 300).await;
    let range = KeyRange::etcd(Bytes::from("k"), Bytes::new()).unwrap();
    assert_eq!(got, model.expected(&range, 1, false));
}

/// Finding: every replaying watch read its pages on a blocking thread of
/// its own, so a client opening thousands of watches from revision 1 over
/// a long history filled tokio's blocking pool (512 threads on a node of a
/// few cores), and the Raft log's reads, which run there too, waited
/// behind them: the leader stopped replicating. Now at most
/// `max_replays` pages are read at once on a node; other watches wait
/// their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_read_at_most_the_nodes_limit_of_pages_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(8, 1, 8);
    cfg.max_replays = 1;
    let (_log, mut sm) = store(dir.path(), cfg);
    for i in 1..=3 {
        sm.apply(&[put(i, "a")]).await.unwrap();
    }
    let watches = sm.watches();
    // Another watch's page being read holds the only place.
    let busy = watches.hub.replays.clone().acquire_owned().await.unwrap();
    let mut req = WatchRequest::key("a");
    req.start_revision = 1;
    let mut w = watches.watch(req).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        matches!(w.rx.try_recv(), Err(mpsc::error::TryRecvError::Empty)),
        "nothing is read while the replay places are taken"
    );
    drop(busy);
    assert_eq!(changes_through(&mut w, 3).await.len(), 3);
    // A watch waiting for a place still ends at shutdown.
    let busy = watches.hub.replays.clone().acquire_owned().await.unwrap();
    let mut req = WatchRequest::key("a");
    req.start_revision = 1;
    let mut waiting = watches.watch(req).unwrap();
    watches.close_all();
    assert_eq!(
        next(&mut waiting).await,
        Some(WatchResponse::Canceled(CancelReason::Shutdown))
    );
    drop(busy);
}

/// Records a compaction released but did not delete yet (a bounded number
/// go after each entry) are never served: not as changes, not as the
/// previous value of a change above the compacted revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_history_not_yet_deleted_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = test_support::store(dir.path(), 100);
    let mut sm = sm
        .with_collect_per_entry(1)
        .with_watch_config(small(8, 2, 8));
    let mut model = Model::default();
    for i in 1..=10 {
        model.put(i, "k");
        sm.apply(&[put(i, "k")]).await.unwrap();
    }
    model.del(11, "k");
    sm.apply(&[del(11, "k")]).await.unwrap();
    for i in 12..=13 {
        model.put(i, "k");
        sm.apply(&[put(i, "k")]).await.unwrap();
    }
    // Releases the ten old values and the tombstone; one goes per entry.
    sm.apply(&[compact(14, 11), put(15, "x")]).await.unwrap();
    model.put(15, "x");
    let mut req = WatchRequest::key("k");
    req.range_end = Bytes::from("z");
    req.start_revision = 12;
    req.prev_kv = true;
    let mut w = sm.watches().watch(req).unwrap();
    let range = KeyRange::etcd(Bytes::from("k"), Bytes::from("z")).unwrap();
    assert_eq!(
        changes_through(&mut w, 15).await,
        model.expected(&range, 12, true)
    );
    let r = sm.reader();
    assert_eq!(r.get_at(b"k", Some(11)).unwrap().0, None);
    assert_eq!(r.get_at(b"k", Some(12)).unwrap().0.unwrap().rev, 12);
}

/// Finding: a watch starting past the current revision reported
/// progress at the current revision, below its start; over HTTP that is
/// the event id a client resumes after (`Last-Event-ID`), so a reconnect
/// got changes from before the start it asked for. Now a watch reports
/// progress only once the store reached its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_future_revision_reports_no_progress_below_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(8, 8, 8);
    cfg.progress_interval = Some(Duration::from_millis(5));
    let (_log, mut sm) = store(dir.path(), cfg);
    for i in 1..=3 {
        sm.apply(&[put(i, "other")]).await.unwrap();
    }
    let mut req = WatchRequest::key("k");
    req.start_revision = 10;
    req.progress_notify = true;
    let mut w = sm.watches().watch(req).unwrap();
    // Many progress periods pass before the store gets to the start.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 4..=10 {
        sm.apply(&[put(i, "k")]).await.unwrap();
    }
    match next(&mut w).await {
        Some(WatchResponse::Changes { revision, .. }) => assert_eq!(revision, 10),
        Some(WatchResponse::Progress { revision }) => {
            assert!(revision >= 9, "progress at {revision}, below the start 10")
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Finding: a watch opened while a snapshot install was loading read the
/// store's revisions without the install guard; the load had deleted the
/// compacted revision, so a compacted start revision was accepted (200)
/// and the watch then canceled, instead of a 410 (or a 503 to retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_opened_during_a_snapshot_install_is_refused_or_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), small(8, 8, 8));
    for i in 1..=3 {
        sm.apply(&[put(i, "a")]).await.unwrap();
    }
    sm.apply(&[compact(4, 2)]).await.unwrap();
    let saved = sm.begin_install_halfway();
    let mut req = WatchRequest::key("a");
    req.start_revision = 1;
    let during = sm.watches().watch(req);
    sm.end_install_halfway(saved);
    match during {
        Err(WatchError::Store(crate::store::StoreError::Installing)) => {}
        Err(WatchError::Compacted { compacted: 2, .. }) => {}
        Err(e) => panic!("unexpected refusal: {e}"),
        Ok(mut w) => panic!("accepted, then {:?}", next(&mut w).await),
    }
    // Once installed, a watch from now on opens.
    let mut w = sm.watches().watch(WatchRequest::key("a")).unwrap();
    sm.apply(&[put(5, "a")]).await.unwrap();
    assert_eq!(changes_through(&mut w, 5).await.len(), 1);
}
