//! raft-core's `LogStorage` conformance suite, run against `RocksLog`, plus
//! recovery checks: reopening restores exactly what was synced.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, LogStorage, LogWrite, Membership};
use raft_log::{OpenError, RocksLog, RocksLogOptions};

fn entry(term: u64, index: u64, data: &str) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(data.to_owned())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocks_log_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    raft_core::conformance::run_all(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RocksLog::open(dir.path().join("db"), RocksLogOptions::default()).expect("open");
        dirs.lock().expect("lock").push(dir);
        async move { log }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_restores_exactly_what_was_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let hs = HardState {
        term: 3,
        vote: Some(2),
        commit: 4,
    };
    {
        let log = RocksLog::open(&path, RocksLogOptions::default()).expect("open");
        let mut entries: Vec<Entry> = (1..=6)
            .map(|i| entry(1 + i / 3, i, &format!("v{i}")))
            .collect();
        entries.push(Entry {
            term: 3,
            index: 7,
            payload: EntryPayload::Membership(Box::new(Membership::new([1, 2, 3]))),
        });
        log.write(LogWrite {
            hard_state: Some(hs),
            truncate_from: None,
            entries,
        })
        .await
        .expect("write");
        log.truncate(6).await.expect("truncate");
        log.append(vec![entry(3, 6, "new6")]).await.expect("append");
        log.purge(2).await.expect("purge");
    }
    let log = RocksLog::open(&path, RocksLogOptions::default()).expect("reopen");
    let state = log.stored_state().await.expect("state");
    assert_eq!(state.hard_state, hs);
    assert_eq!(state.first_log_id.map(|l| l.index), Some(3));
    assert_eq!(state.last_log_id.map(|l| (l.index, l.term)), Some((6, 3)));
    assert_eq!(
        state.membership, None,
        "the membership entry at 7 was truncated"
    );
    let got = log.entries(3, 7, u64::MAX).await.expect("read");
    let data: Vec<_> = got.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(data, vec![(3, 2), (4, 2), (5, 2), (6, 3)]);
    assert_eq!(
        got[3].payload,
        EntryPayload::Normal(Bytes::from_static(b"new6"))
    );
    assert_eq!(
        (
            log.first_index(),
            log.last_index(),
            log.term(4),
            log.term(2)
        ),
        (3, 6, Some(2), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_entries_cannot_be_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = RocksLog::open(dir.path().join("db"), RocksLogOptions::default()).expect("open");
    let entries = (1..=5).map(|i| entry(1, i, "x")).collect();
    let hs = HardState {
        term: 1,
        vote: None,
        commit: 3,
    };
    log.write(LogWrite {
        hard_state: Some(hs),
        truncate_from: None,
        entries,
    })
    .await
    .expect("write");
    let err = log.truncate(3).await.unwrap_err();
    assert!(matches!(err, raft_core::StorageError::Invalid(_)), "{err}");
    let err = log.append(vec![entry(2, 2, "y")]).await.unwrap_err();
    assert!(matches!(err, raft_core::StorageError::Invalid(_)), "{err}");
    assert_eq!(log.last_index(), 5, "nothing was removed");
    log.truncate(4).await.expect("uncommitted entries can go");
    assert_eq!(log.last_index(), 3);
}

#[test]
fn bad_directories_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let err = RocksLog::open(&file, RocksLogOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotADirectory { .. }), "{err}");
    assert!(
        err.to_string().contains("file"),
        "the error names the path: {err}"
    );

    let missing = dir.path().join("missing");
    let opts = RocksLogOptions {
        create_if_missing: false,
        ..RocksLogOptions::default()
    };
    let err = RocksLog::open(&missing, opts).unwrap_err();
    assert!(matches!(err, OpenError::Missing { .. }), "{err}");

    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("notes.txt"), b"hello").expect("write");
    let err = RocksLog::open(&other, RocksLogOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err}");
}

#[test]
fn a_new_store_is_created_beside_the_files_the_options_name_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let beside = || RocksLogOptions {
        new_store_beside: vec!["MARKER".into()],
        ..RocksLogOptions::default()
    };
    let path = dir.path().join("db");
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::write(path.join("MARKER"), b"").expect("write");
    let err = RocksLog::open(&path, RocksLogOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err}");
    drop(RocksLog::open(&path, beside()).expect("a new store beside the marker"));
    assert!(path.join("MARKER").exists(), "the marker is kept");
    drop(RocksLog::open(&path, RocksLogOptions::default()).expect("the store reopens"));

    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("MARKER"), b"").expect("write");
    std::fs::write(other.join("notes.txt"), b"hello").expect("write");
    let err = RocksLog::open(&other, beside()).unwrap_err();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err}");
    let sub = dir.path().join("sub");
    std::fs::create_dir_all(sub.join("MARKER")).expect("mkdir");
    let err = RocksLog::open(&sub, beside()).unwrap_err();
    assert!(
        matches!(err, OpenError::NotAStore { .. }),
        "a directory named so: {err}"
    );
}

#[test]
fn a_rocksdb_database_of_another_kind_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, &path).expect("open plain rocksdb");
        db.put(b"k", b"v").expect("put");
    }
    let err = RocksLog::open(&path, RocksLogOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err}");
}

#[test]
fn a_store_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    drop(RocksLog::open(&path, RocksLogOptions::default()).expect("create"));
    {
        let log = RocksLog::open(&path, RocksLogOptions::default()).expect("open");
        let meta = log.db().cf_handle(raft_log::META_CF).expect("meta cf");
        log.db()
            .put_cf(meta, b"format", b"raft-log/99")
            .expect("put");
    }
    let err = RocksLog::open(&path, RocksLogOptions::default()).unwrap_err();
    match err {
        OpenError::Format { found, .. } => assert_eq!(found, "raft-log/99"),
        other => panic!("expected a format error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(
        RocksLog::open(dir.path().join("db"), RocksLogOptions::default()).expect("open"),
    );
    // Hard-state writes from many tasks at once: every one must succeed and
    // the last state must be one of them.
    let tasks: Vec<_> = (1..=64u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                log.save_hard_state(HardState {
                    term: t,
                    vote: None,
                    commit: 0,
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("write");
    }
    let term = log.hard_state().term;
    assert!((1..=64).contains(&term));
}
