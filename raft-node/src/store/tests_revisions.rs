//! Revisions on RocksDB: each key's create/mod revision and version,
//! reads and listings at past revisions, compaction (by command and by
//! retention), corrupted history refused, snapshots carrying the history,
//! and stores and snapshots of the release before revisions.

use raft_core::{EntryPayload, LogId, Membership, StateMachine};
use raft_log::RocksLog;

use super::history::history_key;
use super::records::encode_record_v1;
use super::test_support::{open_log, snapshotting};
use super::*;
use crate::command::{encode_compact, Command, Op, Precondition};

/// A store in `dir` with snapshots, compacting its history to `retention`
/// entries below the last applied (0: never on its own).
fn store(dir: &std::path::Path, retention: u64) -> (RocksLog, KvStateMachine) {
    let (log, sm) = snapshotting(dir, 100);
    (log, sm.with_history_retention(retention))
}

fn normal(index: u64, payload: Bytes) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(payload),
    }
}

fn cmd(index: u64, key: &str, op: Op, precondition: Precondition) -> Entry {
    let c = Command {
        op,
        key: Bytes::from(key.to_owned()),
        precondition,
        idempotency_key: None,
        principal: None,
    };
    normal(index, c.encode())
}

fn put(index: u64, key: &str, value: &str) -> Entry {
    cmd(
        index,
        key,
        Op::Put(Bytes::from(value.to_owned())),
        Precondition::None,
    )
}

fn del(index: u64, key: &str) -> Entry {
    cmd(index, key, Op::Delete, Precondition::None)
}

fn compact(index: u64, rev: u64) -> Entry {
    normal(index, encode_compact(rev))
}

fn blank(index: u64) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Blank,
    }
}

/// `(value, create, mod, version)` of `key` at `at`.
fn at(r: &KvReader, key: &str, at: Option<u64>) -> Option<(String, u64, u64, u64)> {
    let (v, _) = r.get_at(key.as_bytes(), at).unwrap();
    v.map(|v| {
        (
            String::from_utf8(v.value.to_vec()).unwrap(),
            v.create_rev,
            v.rev,
            v.version,
        )
    })
}

fn v(value: &str, create: u64, modified: u64, version: u64) -> Option<(String, u64, u64, u64)> {
    Some((value.to_owned(), create, modified, version))
}

/// The keys and values of a listing of `prefix` at `rev`, and the
/// revision it read.
fn listing(r: &KvReader, prefix: &str, rev: Option<u64>) -> (Vec<(String, String)>, u64) {
    let mut out = Vec::new();
    let (_, read) = r
        .scan_at(prefix.as_bytes(), None, rev, |k, v| {
            out.push((
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.value.to_vec()).unwrap(),
            ));
            true
        })
        .unwrap();
    (out, read)
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn create_and_mod_revisions_and_version_follow_put_put_delete_put() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 0);
    let r = sm.reader();
    sm.apply(&[put(1, "k", "a")]).await.unwrap();
    assert_eq!(at(&r, "k", None), v("a", 1, 1, 1));
    // A blank entry and a failed precondition make no revision.
    let out = sm
        .apply(&[
            blank(2),
            cmd(3, "k", Op::Delete, Precondition::IfMatch(9)),
            put(4, "k", "b"),
        ])
        .await
        .unwrap();
    assert_eq!(out[1], Outcome::PreconditionFailed { current: Some(1) });
    assert_eq!(at(&r, "k", None), v("b", 1, 4, 2));
    assert_eq!(r.revisions().unwrap().current, 4);
    sm.apply(&[del(5, "k"), del(6, "k")]).await.unwrap();
    assert_eq!(at(&r, "k", None), None);
    // The second delete found nothing: no revision.
    assert_eq!(r.revisions().unwrap().current, 5);
    sm.apply(&[put(7, "k", "c")]).await.unwrap();
    assert_eq!(at(&r, "k", None), v("c", 7, 7, 1), "a delete starts over");
    assert_eq!(
        r.revisions().unwrap(),
        Revisions {
            current: 7,
            compacted: 0
        }
    );
}

#[tokio::test]
async fn past_revisions_read_as_they_were_after_overwrites_and_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 0);
    let r = sm.reader();
    sm.apply(&[put(1, "a", "1"), put(2, "a", "2"), put(3, "b", "x")])
        .await
        .unwrap();
    sm.apply(&[put(4, "a", "3"), del(5, "b"), put(6, "ab", "y")])
        .await
        .unwrap();
    assert_eq!(at(&r, "a", Some(1)), v("1", 1, 1, 1));
    assert_eq!(at(&r, "a", Some(2)), v("2", 1, 2, 2));
    assert_eq!(at(&r, "a", Some(3)), v("2", 1, 2, 2));
    assert_eq!(at(&r, "a", Some(6)), v("3", 1, 4, 3));
    assert_eq!(at(&r, "b", Some(2)), None, "not created yet");
    assert_eq!(at(&r, "b", Some(4)), v("x", 3, 3, 1));
    assert_eq!(at(&r, "b", Some(5)), None, "deleted");
    assert_eq!(at(&r, "b", None), None);
    // Listings as of a revision, including a key deleted since.
    assert_eq!(
        listing(&r, "", Some(3)),
        (pairs(&[("a", "2"), ("b", "x")]), 3)
    );
    assert_eq!(listing(&r, "a", Some(5)), (pairs(&[("a", "3")]), 5));
    assert_eq!(
        listing(&r, "a", None),
        (pairs(&[("a", "3"), ("ab", "y")]), 6)
    );
    // Paging at a revision goes on after the cursor, keys deleted since
    // included.
    let mut page = Vec::new();
    let (more, _) = r
        .scan_at(b"", None, Some(4), |k, _| {
            page.push(k.to_vec());
            false
        })
        .unwrap();
    assert!(more);
    let mut rest = Vec::new();
    r.scan_at(b"", Some(&page[0]), Some(4), |k, _| {
        rest.push(k.to_vec());
        true
    })
    .unwrap();
    assert_eq!((page, rest), (vec![b"a".to_vec()], vec![b"b".to_vec()]));
}

#[tokio::test]
async fn compacted_revisions_are_gone_and_future_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 0);
    let r = sm.reader();
    let out = sm
        .apply(&[
            put(1, "a", "1"),
            put(2, "a", "2"),
            del(3, "a"),
            put(4, "b", "1"),
            compact(5, 3),
            compact(6, 3),
            compact(7, 9),
        ])
        .await
        .unwrap();
    assert_eq!(out[4], Outcome::Compacted { revision: 3 });
    let refused = Outcome::CompactRefused {
        compacted: 3,
        current: 4,
    };
    assert_eq!(out[5], refused, "already compacted");
    assert_eq!(out[6], refused, "in the future");
    assert!(matches!(
        r.get_at(b"a", Some(2)),
        Err(StoreError::Compacted {
            requested: 2,
            compacted: 3
        })
    ));
    assert!(matches!(
        r.scan_at(b"", None, Some(1), |_, _| true),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        r.get_at(b"a", Some(5)),
        Err(StoreError::FutureRevision {
            requested: 5,
            current: 4
        })
    ));
    // At the compacted revision itself, reads still answer.
    assert_eq!(at(&r, "a", Some(3)), None);
    assert_eq!(listing(&r, "", Some(3)), (vec![], 3));
    // Nothing of the history before is left: no `h/` nor `g/` record.
    let meta = r.db.cf_handle(KV_META_CF).unwrap();
    let left =
        r.db.iterator_cf(meta, rocksdb::IteratorMode::Start)
            .filter(|i| {
                let (k, _) = i.as_ref().unwrap();
                k.starts_with(b"h/") || k.starts_with(b"g/")
            })
            .count();
    assert_eq!(left, 0);
}

/// The history records of `r` (`h/`) and their compaction order keys (`g/`).
fn history_records(r: &KvReader) -> (usize, usize) {
    let meta = r.db.cf_handle(KV_META_CF).unwrap();
    let mut counts = (0, 0);
    for item in r.db.iterator_cf(meta, rocksdb::IteratorMode::Start) {
        let (k, _) = item.unwrap();
        if k.starts_with(b"h/") {
            counts.0 += 1;
        } else if k.starts_with(b"g/") {
            counts.1 += 1;
        }
    }
    counts
}

/// A compaction over many overwrites takes effect at once but deletes its
/// records a bounded number per entry, and reads at or above the
/// compacted revision answer right while records are left.
#[tokio::test]
async fn a_large_compaction_is_collected_a_bounded_number_per_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = store(dir.path(), 0);
    let mut sm = sm.with_collect_per_entry(3);
    let r = sm.reader();
    // 19 past versions of k, then d put, overwritten and deleted.
    let mut writes: Vec<Entry> = (1..=20).map(|i| put(i, "k", &format!("v{i}"))).collect();
    writes.extend([put(21, "d", "1"), put(22, "d", "2"), del(23, "d")]);
    sm.apply(&writes).await.unwrap();
    assert_eq!(history_records(&r), (22, 22));
    let out = sm.apply(&[compact(24, 23)]).await.unwrap();
    assert_eq!(out, vec![Outcome::Compacted { revision: 23 }]);
    assert!(matches!(
        r.get_at(b"k", Some(22)),
        Err(StoreError::Compacted { compacted: 23, .. })
    ));
    let mut left = 22 - 3;
    let mut index = 24;
    loop {
        assert_eq!(history_records(&r), (left, left), "after entry {index}");
        assert_eq!(at(&r, "k", Some(23)), v("v20", 1, 20, 20), "after {index}");
        assert_eq!(at(&r, "d", Some(23)), None, "after entry {index}");
        assert_eq!(
            listing(&r, "", Some(23)),
            (pairs(&[("k", "v20")]), 23),
            "after entry {index}"
        );
        if left == 0 {
            break;
        }
        index += 1;
        sm.apply(&[blank(index)]).await.unwrap();
        left = left.saturating_sub(3);
    }
    assert_eq!(index, 31, "22 records at 3 per entry: entries 24 to 31");
}

#[tokio::test]
async fn retention_compacts_history_older_than_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 3);
    let r = sm.reader();
    let entries: Vec<Entry> = (1..=10).map(|i| put(i, "k", &format!("v{i}"))).collect();
    sm.apply(&entries).await.unwrap();
    assert_eq!(
        r.revisions().unwrap(),
        Revisions {
            current: 10,
            compacted: 7
        }
    );
    assert_eq!(at(&r, "k", Some(7)), v("v7", 1, 7, 7));
    assert!(matches!(
        r.get_at(b"k", Some(6)),
        Err(StoreError::Compacted { compacted: 7, .. })
    ));
    // Entries that change nothing do not compact past the current revision.
    let blanks: Vec<Entry> = (11..=20).map(blank).collect();
    sm.apply(&blanks).await.unwrap();
    assert_eq!(r.revisions().unwrap().compacted, 10);
    assert_eq!(at(&r, "k", Some(10)), v("v10", 1, 10, 10));
}

#[tokio::test]
async fn a_corrupted_history_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 0);
    let r = sm.reader();
    sm.apply(&[put(1, "k", "old"), put(2, "k", "new")])
        .await
        .unwrap();
    let meta = r.db.cf_handle(KV_META_CF).unwrap();
    let hk = history_key(b"k", 1);
    let mut rec = r.db.get_cf(meta, &hk).unwrap().unwrap();
    *rec.last_mut().unwrap() ^= 0x20;
    r.db.put_cf(meta, &hk, &rec).unwrap();
    assert!(matches!(
        r.get_at(b"k", Some(1)),
        Err(StoreError::Corruption { .. })
    ));
    assert!(matches!(
        r.scan_at(b"", None, Some(1), |_, _| true),
        Err(StoreError::Corruption { .. })
    ));
    // The current value does not need the history.
    assert_eq!(at(&r, "k", None), v("new", 1, 2, 2));
}

fn snapshot_meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: LogId::new(1, index),
        membership: Membership::new(vec![1]),
    }
}

#[tokio::test]
async fn a_snapshot_carries_the_history_and_the_compaction_point() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 0);
    sm.apply(&[
        put(1, "a", "1"),
        put(2, "a", "2"),
        del(3, "a"),
        put(4, "b", "1"),
        put(5, "b", "2"),
        compact(6, 2),
    ])
    .await
    .unwrap();
    let data = sm.build_snapshot(&snapshot_meta(6)).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_l2, mut follower) = store(other.path(), 0);
    follower
        .install_snapshot(&snapshot_meta(6), data)
        .await
        .unwrap();
    let (a, b) = (sm.reader(), follower.reader());
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    assert_eq!(b.revisions().unwrap(), a.revisions().unwrap());
    assert_eq!(at(&b, "a", Some(2)), v("2", 1, 2, 2));
    assert_eq!(at(&b, "b", Some(4)), v("1", 4, 4, 1));
    assert!(matches!(
        b.get_at(b"a", Some(1)),
        Err(StoreError::Compacted { .. })
    ));
    // Both go on alike.
    sm.apply(&[put(7, "a", "3")]).await.unwrap();
    follower.apply(&[put(7, "a", "3")]).await.unwrap();
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    assert_eq!(at(&b, "a", None), v("3", 7, 7, 1));
}

/// What the release before revisions left: a version-1 record and the
/// applied index, no revisions.
fn leave_previous_release(db: &rocksdb::DB, key: &[u8], value: &[u8], index: u64) {
    let kv = db.cf_handle(KV_CF).unwrap();
    let meta = db.cf_handle(KV_META_CF).unwrap();
    db.put_cf(kv, key, encode_record_v1(index, value)).unwrap();
    db.put_cf(meta, b"applied", index.to_be_bytes()).unwrap();
}

#[tokio::test]
async fn a_store_of_the_release_before_revisions_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path());
        leave_previous_release(log.db(), b"k", b"old", 3);
    }
    let (_log, mut sm) = store(dir.path(), 0);
    let r = sm.reader();
    assert_eq!(
        r.revisions().unwrap(),
        Revisions {
            current: 3,
            compacted: 3
        }
    );
    assert_eq!(at(&r, "k", None), v("old", 3, 3, 1));
    assert!(matches!(
        r.get_at(b"k", Some(2)),
        Err(StoreError::Compacted { .. })
    ));
    sm.apply(&[put(4, "k", "new")]).await.unwrap();
    assert_eq!(at(&r, "k", None), v("new", 3, 4, 2));
    assert_eq!(at(&r, "k", Some(3)), v("old", 3, 3, 1));
}

#[tokio::test]
async fn a_snapshot_of_the_release_before_revisions_installs_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.snap");
    {
        let log = open_log(&dir.path().join("old"));
        leave_previous_release(log.db(), b"k", b"old", 5);
        crate::snapshot::write(
            log.db(),
            KV_CF,
            KV_META_CF,
            super::records::is_replicated_meta,
            &path,
            || {},
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    }
    // That release's magic (the records are the same format).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(b"RKVSNAP1");
    std::fs::write(&path, bytes).unwrap();
    let (_log, mut sm) = store(&dir.path().join("new"), 0);
    let data: raft_core::SnapshotData =
        std::sync::Arc::new(raft_core::FileSource::open(&path).unwrap());
    sm.install_snapshot(&snapshot_meta(5), data).await.unwrap();
    let r = sm.reader();
    assert_eq!(at(&r, "k", None), v("old", 5, 5, 1));
    assert_eq!(
        r.revisions().unwrap(),
        Revisions {
            current: 5,
            compacted: 5
        }
    );
}

/// Keys holding the bytes of the history key encoding (`0x00`, the escape
/// `0xFF` after it, the terminator `0x00 0x01`), each with a deep history:
/// no key's past leaks into another's, at any revision, in reads and in
/// listings of every prefix (a listing skips each key's history at once).
#[tokio::test]
async fn hostile_keys_keep_their_own_history() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 0);
    let r = sm.reader();
    let keys = ["a", "a\0", "a\0\u{1}", "a\0\u{ff}", "a\u{1}", "a\u{ff}\0"];
    let mut index = 0;
    // Six rounds: every key overwritten with its name and the round.
    for round in 0..6 {
        let entries: Vec<Entry> = keys
            .iter()
            .map(|k| {
                index += 1;
                put(index, k, &format!("{k:?}/{round}"))
            })
            .collect();
        sm.apply(&entries).await.unwrap();
    }
    index += 1;
    sm.apply(&[del(index, "a\0")]).await.unwrap();
    let n = keys.len() as u64;
    for round in 0..6u64 {
        let rev = (round + 1) * n;
        for (i, k) in keys.iter().enumerate() {
            let modified = round * n + i as u64 + 1;
            assert_eq!(
                at(&r, k, Some(rev)),
                v(&format!("{k:?}/{round}"), i as u64 + 1, modified, round + 1),
                "{k:?} at {rev}"
            );
        }
        let all: Vec<(String, String)> = keys
            .iter()
            .map(|k| ((*k).to_owned(), format!("{k:?}/{round}")))
            .collect();
        assert_eq!(listing(&r, "a", Some(rev)), (all.clone(), rev));
        assert_eq!(listing(&r, "a\0", Some(rev)), (all[1..4].to_vec(), rev));
        assert_eq!(
            listing(&r, "a\0\u{1}", Some(rev)),
            (all[2..3].to_vec(), rev)
        );
    }
    // The deleted key is gone from the listing; its neighbours stay.
    let (now, _) = listing(&r, "a\0", Some(index));
    let names: Vec<&str> = now.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["a\0\u{1}", "a\0\u{ff}"]);
}
