//! Corruption tests: flipped bytes in stored values, records under the wrong
//! key, missing entries, and damaged or truncated database files. Each must
//! give a typed error naming the index or path, never a panic and never the
//! corrupted data.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, LogStorage, StorageError};
use raft_log::{OpenError, RocksLog, RocksLogOptions, LOG_CF};

fn entries(n: u64) -> Vec<Entry> {
    (1..=n)
        .map(|i| Entry {
            term: 1,
            index: i,
            payload: EntryPayload::Normal(Bytes::from(vec![i as u8; 100])),
        })
        .collect()
}

async fn store_with(path: &std::path::Path, n: u64) {
    let log = RocksLog::open(path, RocksLogOptions::default()).expect("open");
    log.append(entries(n)).await.expect("append");
}

/// Rewrites the stored value of entry `index` with `f` through RocksDB itself.
fn tamper(path: &std::path::Path, index: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let log = RocksLog::open(path, RocksLogOptions::default()).expect("open for tampering");
    let db = log.db();
    let cf = db.cf_handle(LOG_CF).expect("log cf");
    let key = index.to_be_bytes();
    let mut value = db.get_cf(cf, key).expect("get").expect("present");
    f(&mut value);
    db.put_cf(cf, key, value).expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_value_is_refused_on_open_naming_the_index() {
    for byte in [0usize, 3, 9, 20, 40, 120] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        store_with(&path, 10).await;
        tamper(&path, 7, |v| {
            let at = byte.min(v.len() - 1);
            v[at] ^= 0x40;
        });
        let err = RocksLog::open(&path, RocksLogOptions::default()).unwrap_err();
        match err {
            OpenError::Corruption { index, .. } => assert_eq!(index, 7, "byte {byte}"),
            other => panic!("byte {byte}: expected corruption at 7, got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_corrupted_after_open_is_refused_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let log = RocksLog::open(&path, RocksLogOptions::default()).expect("open");
    log.append(entries(10)).await.expect("append");
    let cf = log.db().cf_handle(LOG_CF).expect("cf");
    let mut value = log
        .db()
        .get_cf(cf, 4u64.to_be_bytes())
        .expect("get")
        .expect("present");
    let last = value.len() - 1;
    value[last] ^= 1;
    log.db().put_cf(cf, 4u64.to_be_bytes(), value).expect("put");
    let err = log.entries(1, 11, u64::MAX).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Corruption { index: 4, .. }),
        "{err}"
    );
    // Entries before it are still served.
    assert_eq!(log.entries(1, 4, u64::MAX).await.expect("read").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_moved_to_another_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    store_with(&path, 5).await;
    {
        let log = RocksLog::open(&path, RocksLogOptions::default()).expect("open");
        let cf = log.db().cf_handle(LOG_CF).expect("cf");
        let v2 = log
            .db()
            .get_cf(cf, 2u64.to_be_bytes())
            .expect("get")
            .expect("present");
        log.db().put_cf(cf, 3u64.to_be_bytes(), v2).expect("put");
    }
    let err = RocksLog::open(&path, RocksLogOptions::default()).unwrap_err();
    assert!(
        matches!(err, OpenError::Corruption { index: 3, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_entry_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    store_with(&path, 5).await;
    {
        let log = RocksLog::open(&path, RocksLogOptions::default()).expect("open");
        let cf = log.db().cf_handle(LOG_CF).expect("cf");
        log.db().delete_cf(cf, 3u64.to_be_bytes()).expect("delete");
    }
    let err = RocksLog::open(&path, RocksLogOptions::default()).unwrap_err();
    assert!(
        matches!(err, OpenError::Corruption { index: 3, .. }),
        "{err}"
    );
}

/// Flushes the log into SST files so file-level damage hits real data.
async fn flushed_store(path: &std::path::Path) {
    let log = RocksLog::open(path, RocksLogOptions::default()).expect("open");
    log.append(entries(200)).await.expect("append");
    let cf = log.db().cf_handle(LOG_CF).expect("cf");
    log.db().flush_cf(cf).expect("flush");
}

fn files_with_extension(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

/// Opens and reads everything; returns whether an error (not a panic, not
/// wrong data) was reported.
async fn open_and_read_all(path: &std::path::Path) -> Result<(), String> {
    let log = RocksLog::open(path, RocksLogOptions::default()).map_err(|e| e.to_string())?;
    let got = log
        .entries(1, log.last_index() + 1, u64::MAX)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        got,
        entries(200),
        "data served after damage must be the original data"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_sst_files_are_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    flushed_store(&path).await;
    let ssts = files_with_extension(&path, "sst");
    assert!(!ssts.is_empty(), "flush produced SST files");
    for sst in &ssts {
        let mut bytes = std::fs::read(sst).expect("read sst");
        // Damage the data blocks at the start of the file.
        for i in (64..bytes.len().min(4096)).step_by(97) {
            bytes[i] ^= 0xFF;
        }
        std::fs::write(sst, bytes).expect("write sst");
    }
    let result = open_and_read_all(&path).await;
    assert!(
        result.is_err(),
        "damaged SST files must not read back silently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_files_give_an_error_not_a_panic() {
    for victim in ["sst", "MANIFEST"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        flushed_store(&path).await;
        let files: Vec<_> = std::fs::read_dir(&path)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if victim == "sst" {
                    name.ends_with(".sst")
                } else {
                    name.starts_with("MANIFEST")
                }
            })
            .collect();
        assert!(!files.is_empty(), "no {victim} files");
        for f in files {
            let len = std::fs::metadata(&f).expect("meta").len();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .expect("open file");
            file.set_len(len / 2).expect("truncate");
        }
        let result = open_and_read_all(&path).await;
        assert!(result.is_err(), "{victim} cut in half must be reported");
    }
}
