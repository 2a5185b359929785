//! Watches on a RocksDB store: the seam between replay and live changes
//! under concurrent writes (randomized; `WATCH_SEED=<n>` replays a run),
//! a compacted start refused, a slow watcher caught up from the history
//! (or canceled when its history is compacted), and a snapshot install.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, LogId, Membership, SnapshotMeta, StateMachine};
use raft_log::RocksLog;
use rand::{Rng, SeedableRng};

use super::*;
use crate::command::{encode_compact, Op};
use crate::store::test_support::{self, entry, put};
use crate::store::KvStateMachine;

mod limits;

fn store(dir: &std::path::Path, cfg: WatchConfig) -> (RocksLog, KvStateMachine) {
    let (log, sm) = test_support::snapshotting(dir, 100);
    (log, sm.with_watch_config(cfg))
}

fn small(buffer: usize, page: usize, queue: usize) -> WatchConfig {
    WatchConfig {
        max_watchers: 1000,
        buffer,
        replay_page: page,
        replay_page_bytes: usize::MAX,
        max_replays: 4,
        buffer_bytes: usize::MAX,
        progress_interval: None,
        queue,
    }
}

fn del(index: u64, key: &str) -> Entry {
    entry(index, key, Op::Delete)
}

fn compact(index: u64, rev: u64) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(encode_compact(rev)),
    }
}

/// A change as the tests compare them: revision, put or delete, key,
/// value, and the previous value.
type Seen = (u64, EventKind, String, String, Option<String>);

fn seen(e: &Event) -> Seen {
    let s = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    (
        e.revision,
        e.kind,
        s(&e.kv.key),
        s(&e.kv.value),
        e.prev_kv.as_ref().map(|p| s(&p.value)),
    )
}

/// The next response, or a failure after a minute (a hang, not a timing).
async fn next(w: &mut WatchStream) -> Option<WatchResponse> {
    tokio::time::timeout(Duration::from_secs(60), w.next())
        .await
        .expect("the watch answers")
}

/// Every change up to and including revision `last`; panics on a cancel.
async fn changes_through(w: &mut WatchStream, last: u64) -> Vec<Seen> {
    let mut out = Vec::new();
    loop {
        match next(w).await {
            Some(WatchResponse::Changes { revision, events }) => {
                assert!(events.iter().all(|e| e.revision == revision));
                out.extend(events.iter().map(seen));
                if revision >= last {
                    return out;
                }
            }
            Some(WatchResponse::Progress { .. }) => {}
            other => panic!("watch ended with {other:?} before revision {last}"),
        }
    }
}

/// The model: every change in order, and what a watch should see.
#[derive(Default)]
struct Model {
    changes: Vec<Seen>,
    values: BTreeMap<String, String>,
}

impl Model {
    fn put(&mut self, rev: u64, key: &str) {
        let value = format!("v{rev}");
        let prev = self.values.insert(key.to_owned(), value.clone());
        self.changes
            .push((rev, EventKind::Put, key.to_owned(), value, prev));
    }

    fn del(&mut self, rev: u64, key: &str) -> bool {
        let Some(prev) = self.values.remove(key) else {
            return false;
        };
        self.changes.push((
            rev,
            EventKind::Delete,
            key.to_owned(),
            String::new(),
            Some(prev),
        ));
        true
    }

    fn expected(&self, range: &KeyRange, from: u64, prev_kv: bool) -> Vec<Seen> {
        self.changes
            .iter()
            .filter(|c| c.0 >= from && range.contains(c.2.as_bytes()))
            .map(|c| {
                let mut c = c.clone();
                if !prev_kv {
                    c.4 = None;
                }
                c
            })
            .collect()
    }
}

fn seed() -> u64 {
    let seed = std::env::var("WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("WATCH_SEED={seed}");
    seed
}

/// The ranges of the seam test: each covers `p/~`, the last key written.
fn ranges() -> [(&'static str, &'static str); 3] {
    [("p/", "p0"), ("p/m", "\0"), ("p/~", "")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_live_changes_meet_without_gap_or_duplicate_under_concurrent_writes() {
    let seed = seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(rng.gen_range(1..4), rng.gen_range(1..5), 2);
    // A change counts about 70 bytes: watchers let go of the ring often.
    cfg.buffer_bytes = rng.gen_range(70..1000);
    cfg.replay_page_bytes = rng.gen_range(70..600);
    let (_log, mut sm) = store(dir.path(), cfg);
    let watches = sm.watches();
    let keys = ["a", "p/a", "p/m", "p/n", "p/z", "p/~", "q"];
    let mut model = Model::default();
    let mut open = Vec::new();
    let mut index = 0u64;
    for _ in 0..60 {
        // A batch of 1 to 4 entries, some changing nothing.
        let mut batch = Vec::new();
        for _ in 0..rng.gen_range(1..5) {
            index += 1;
            let key = keys[rng.gen_range(0..keys.len())];
            if rng.gen_bool(0.25) && model.del(index, key) {
                batch.push(del(index, key));
            } else if rng.gen_bool(0.1) {
                batch.push(compact(index, 0)); // refused: changes nothing
            } else {
                model.put(index, key);
                batch.push(put(index, key));
            }
        }
        // Watches open while the batch is applied on another task.
        let apply = tokio::spawn(async move {
            sm.apply(&batch).await.unwrap();
            sm
        });
        for _ in 0..rng.gen_range(0..3) {
            let (k, end) = ranges()[rng.gen_range(0..3)];
            let mut req = WatchRequest::key(Bytes::from(k));
            req.range_end = Bytes::from(end);
            req.prev_kv = rng.gen_bool(0.5);
            // From now, or from a revision up to just past the batch.
            req.start_revision = if rng.gen_bool(0.2) {
                0
            } else {
                rng.gen_range(1..=index + 1)
            };
            let range = KeyRange::etcd(req.key.clone(), req.range_end.clone()).unwrap();
            open.push((req.clone(), range, watches.watch(req).unwrap()));
            tokio::task::yield_now().await;
        }
        sm = apply.await.unwrap();
    }
    index += 1;
    model.put(index, "p/~");
    sm.apply(&[put(index, "p/~")]).await.unwrap();
    println!("{} watches, {index} entries", open.len());
    for (req, range, mut w) in open {
        let got = changes_through(&mut w, index).await;
        let from = match req.start_revision {
            // From now: a suffix of the changes, starting wherever "now" was.
            0 => got.first().map_or(index, |c| c.0),
            n => n,
        };
        let want = model.expected(&range, from, req.prev_kv);
        assert_eq!(got, want, "seed {seed}: watch {req:?}");
    }
}

#[tokio::test]
async fn a_start_revision_at_or_below_the_compaction_is_refused_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), small(8, 8, 8));
    sm.apply(&[
        put(1, "k"),
        put(2, "k"),
        del(3, "k"),
        put(4, "k"),
        put(5, "j"),
    ])
    .await
    .unwrap();
    sm.apply(&[compact(6, 3)]).await.unwrap();
    let watches = sm.watches();
    for start in [1, 3] {
        let mut req = WatchRequest::key("k");
        req.start_revision = start;
        match watches.watch(req) {
            Err(WatchError::Compacted {
                requested,
                compacted,
            }) => assert_eq!((requested, compacted), (start, 3)),
            other => panic!("start {start}: {other:?}"),
        }
    }
    let mut req = WatchRequest::key("k");
    req.start_revision = 4;
    req.prev_kv = true;
    let mut w = watches.watch(req).unwrap();
    sm.apply(&[put(7, "k")]).await.unwrap();
    let got = changes_through(&mut w, 7).await;
    let want = vec![
        (4, EventKind::Put, "k".into(), "v4".into(), None),
        (
            7,
            EventKind::Put,
            "k".into(),
            "v7".into(),
            Some("v4".into()),
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(watches.open(), 1);
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_catches_up_from_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), small(1, 3, 1));
    let mut w = sm.watches().watch(WatchRequest::key("k")).unwrap();
    let mut model = Model::default();
    // Far more batches than the watcher's buffer, none read meanwhile.
    for i in 1..=100 {
        model.put(i, "k");
        sm.apply(&[put(i, "k")]).await.unwrap();
    }
    let got = changes_through(&mut w, 100).await;
    let range = KeyRange::etcd(Bytes::from("k"), Bytes::new()).unwrap();
    assert_eq!(got, model.expected(&range, 1, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_whose_history_was_compacted_is_canceled_with_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), small(1, 3, 1));
    let mut w = sm.watches().watch(WatchRequest::key("k")).unwrap();
    for i in 1..=50 {
        sm.apply(&[put(i, "k")]).await.unwrap();
    }
    sm.apply(&[compact(51, 40)]).await.unwrap();
    // Whatever arrives before the cancel is the changes from 1 on, in
    // order, none skipped; then the cancel names the compacted revision.
    let mut expect = 1;
    loop {
        match next(&mut w).await {
            Some(WatchResponse::Changes { revision, .. }) => {
                assert_eq!(revision, expect);
                expect += 1;
            }
            Some(WatchResponse::Canceled(reason)) => {
                assert_eq!(reason, CancelReason::Compacted { compacted: 40 });
                assert!(expect <= 40, "a cancel, not the changes after 40");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(next(&mut w).await, None, "nothing after the cancel");
}

fn snapshot_meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: LogId::new(1, index),
        membership: Membership::new(vec![1]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_catches_live_watchers_up_or_cancels_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_l1, mut leader) = store(&dir.path().join("leader"), small(8, 2, 8));
    let (_l2, mut follower) = store(&dir.path().join("follower"), small(8, 2, 8));
    let watches = follower.watches();
    let mut req = WatchRequest::key("k");
    req.prev_kv = true;
    let mut live = watches.watch(req.clone()).unwrap();
    let mut model = Model::default();
    for i in 1..=6 {
        model.put(i, "k");
        leader.apply(&[put(i, "k")]).await.unwrap();
    }
    model.del(7, "k");
    leader.apply(&[del(7, "k")]).await.unwrap();
    let data = leader.build_snapshot(&snapshot_meta(7)).await.unwrap();
    follower
        .install_snapshot(&snapshot_meta(7), data)
        .await
        .unwrap();
    // Changes the snapshot covers arrive from its history, then new ones.
    model.put(8, "k");
    follower.apply(&[put(8, "k")]).await.unwrap();
    let range = KeyRange::etcd(Bytes::from("k"), Bytes::new()).unwrap();
    assert_eq!(
        changes_through(&mut live, 8).await,
        model.expected(&range, 1, true)
    );

    // A snapshot whose history starts past a watcher's revision cancels it.
    let other = tempfile::tempdir().unwrap();
    let (_l3, mut behind) = store(other.path(), small(8, 2, 8));
    let mut w = behind.watches().watch(WatchRequest::key("k")).unwrap();
    leader.apply(&[compact(9, 6)]).await.unwrap();
    let data = leader.build_snapshot(&snapshot_meta(9)).await.unwrap();
    behind
        .install_snapshot(&snapshot_meta(9), data)
        .await
        .unwrap();
    assert_eq!(
        next(&mut w).await,
        Some(WatchResponse::Canceled(CancelReason::Compacted {
            compacted: 6
        }))
    );
}

#[tokio::test]
async fn watches_past_the_limit_and_bad_ranges_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(8, 8, 8);
    cfg.max_watchers = 1;
    let (_log, sm) = store(dir.path(), cfg);
    let watches = sm.watches();
    let first = watches.watch(WatchRequest::key("a")).unwrap();
    // The limit is the node's, whatever opens the watch.
    assert!(matches!(
        sm.watches().watch(WatchRequest::key("b")),
        Err(WatchError::TooManyWatchers { limit: 1 })
    ));
    drop(first);
    let mut bad = WatchRequest::key("b");
    bad.range_end = Bytes::from("a");
    assert!(matches!(watches.watch(bad), Err(WatchError::InvalidRange)));
    // The dropped watch's place is free again once its task ends.
    let mut tries = 0;
    while watches.watch(WatchRequest::key("c")).is_err() {
        tries += 1;
        assert!(tries < 1000, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn closing_ends_every_watch_with_a_shutdown_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = store(dir.path(), small(8, 8, 8));
    let mut w = sm.watches().watch(WatchRequest::key("a")).unwrap();
    sm.watches().close_all();
    assert_eq!(
        next(&mut w).await,
        Some(WatchResponse::Canceled(CancelReason::Shutdown))
    );
    assert_eq!(next(&mut w).await, None);
}

/// Replay speed: `cargo test -p raftkv-node --lib watch::tests::replay_speed
/// -- --ignored --nocapture` (changes from the history per second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn replay_speed() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), small(1024, 1000, 64));
    let n = 20_000u64;
    for start in (1..=n).step_by(500) {
        let batch: Vec<Entry> = (start..start + 500)
            .map(|i| put(i, &format!("p/{:03}", i % 100)))
            .collect();
        sm.apply(&batch).await.unwrap();
    }
    let mut req = WatchRequest::key("p/");
    req.range_end = Bytes::from("p0");
    req.start_revision = 1;
    let started = std::time::Instant::now();
    let mut w = sm.watches().watch(req).unwrap();
    let got = changes_through(&mut w, n).await.len();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replayed {got} changes of 100 keys in {secs:.2} s: {:.0}/s",
        got as f64 / secs
    );
    assert_eq!(got as u64, n);
}
