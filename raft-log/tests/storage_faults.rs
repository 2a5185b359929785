//! Storage faults under a real RocksDB: a flush (`fdatasync`) that fails,
//! a write torn at a crash, and a record damaged on disk.
//!
//! - A failed fsync fails the write that needed it, and the store refuses
//!   every write after it, even once the disk works again: after a failed
//!   flush the kernel may have dropped the dirty pages, so retrying the
//!   flush and calling the data safe would acknowledge what may be lost.
//!   The failure comes from a preload library (`support/failsync.c`) in a
//!   child process, so RocksDB sees a real `EIO` from the C library.
//! - A write torn at a crash was never acknowledged, and whatever shape
//!   the tear takes (the WAL cut short, its last pages left as zeros by a
//!   preallocated file, unsynced writes of other column families after the
//!   last synced one damaged in the middle) the store opens with every
//!   synced write and none of the torn one: a crash must never stop a node
//!   from starting.
//! - A record damaged before a synced write (bit rot, a misdirected write)
//!   is not a torn write: the store refuses to open, naming the WAL file,
//!   instead of replaying up to the damage and dropping acknowledged
//!   writes after it.

#[path = "support/failsync.rs"]
mod failsync;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, LogStorage, LogWrite};
use raft_log::{RocksLog, RocksLogOptions};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "RAFT_LOG_FAILSYNC_CHILD";

fn entry(index: u64) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(Bytes::from(format!("entry {index} ").repeat(8))),
    }
}

fn write_of(range: std::ops::RangeInclusive<u64>) -> LogWrite {
    LogWrite {
        hard_state: Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0,
        }),
        truncate_from: None,
        entries: range.map(entry).collect(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The child's body, run by `a_failed_fsync_...` with the preload library:
/// it trips the fault itself between its steps and prints what it saw.
#[test]
fn failsync_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let trigger = PathBuf::from(std::env::var("FAILSYNC_TRIGGER").expect("trigger path"));
    runtime().block_on(async move {
        let log = RocksLog::open(&dir, RocksLogOptions::default()).expect("child opens the store");
        log.write(write_of(1..=10)).await.expect("healthy write");
        println!("ACK 10");
        std::fs::write(&trigger, b"").expect("trip the fault");
        match log.write(write_of(11..=12)).await {
            Ok(()) => println!("ACKED-DESPITE-FAILED-FSYNC"),
            Err(e) => println!("FAILED {e}"),
        }
        std::fs::remove_file(&trigger).expect("heal the disk");
        for attempt in [11..=12, 11..=11] {
            match log.write(write_of(attempt)).await {
                Ok(()) => println!("ACKED-AFTER-FAILURE"),
                Err(e) => println!("REFUSED {e}"),
            }
        }
        assert_eq!(
            log.last_index(),
            10,
            "the store still reports only acknowledged entries"
        );
        println!("DONE");
    });
}

#[test]
fn a_failed_fsync_fails_the_write_and_the_store_refuses_every_write_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = failsync::FailSync::build(dir.path());
    let db = dir.path().join("db");
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "failsync_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .envs(lib.env(&dir.path().join("fail-flushes")))
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("DONE"),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("ACK 10"), "{stdout}");
    assert!(
        !stdout.contains("ACKED"),
        "a write whose fsync failed, or any write after it, was acknowledged:\n{stdout}"
    );
    let failed = stdout
        .lines()
        .find(|l| l.starts_with("FAILED "))
        .unwrap_or_else(|| panic!("no failed write in:\n{stdout}"));
    assert!(
        failed.contains("I/O error") || failed.contains("IO error") || failed.contains("EIO"),
        "the error names the I/O failure: {failed}"
    );
    let refused: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("REFUSED "))
        .collect();
    assert_eq!(refused.len(), 2, "{stdout}");
    for line in refused {
        assert!(
            line.contains("refuses writes after an earlier failure"),
            "a write after the failure says why it is refused: {line}"
        );
    }

    // Reopened on a healthy disk: the acknowledged entries are there and
    // intact; the failed write left all of its entries or none.
    runtime().block_on(async {
        let log = RocksLog::open(&db, RocksLogOptions::default()).expect("reopen");
        let last = log.last_index();
        assert!(
            last == 10 || last == 12,
            "the failed write is all there or not at all, last index {last}"
        );
        let got = log.entries(1, last + 1, u64::MAX).await.expect("read back");
        let want: Vec<Entry> = (1..=last).map(entry).collect();
        assert_eq!(got, want);
    });
}

/// The write-ahead log files of the store at `db`, oldest first.
fn wal_files(db: &Path) -> Vec<PathBuf> {
    let mut wals: Vec<PathBuf> = std::fs::read_dir(db)
        .expect("read the store directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".log") && name[..name.len() - 4].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    wals.sort();
    wals
}

/// Writes `batches` synced writes of 1..=8 entries each and closes the
/// store (RocksDB keeps them in its WAL: nothing is flushed on close).
/// Returns the last index of every batch and the WAL's length after each.
fn store_in_wal(db: &Path, batches: usize, rng: &mut rand::rngs::StdRng) -> Vec<(u64, u64)> {
    runtime().block_on(async {
        let log = RocksLog::open(db, RocksLogOptions::default()).expect("open");
        let mut next = 1;
        let mut ends = Vec::new();
        for _ in 0..batches {
            let n = rng.gen_range(1..=8u64);
            log.write(write_of(next..=next + n - 1))
                .await
                .expect("write");
            next += n;
            let wal = wal_files(db).pop().expect("a WAL file");
            ends.push((next - 1, std::fs::metadata(&wal).expect("wal").len()));
        }
        ends
    })
}

#[test]
fn a_write_torn_at_a_crash_is_dropped_whole_and_everything_before_survives() {
    let seed: u64 =
        raft_core::testing::env_or("RAFT_LOG_TORN_SEED", u64::from(rand::random::<u32>()));
    println!("torn-write seed {seed} (replay with RAFT_LOG_TORN_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..8 {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db");
        let ends = store_in_wal(&db, 12, &mut rng);
        let wal = wal_files(&db).pop().expect("a WAL file");
        let (before_last, start_of_last) = ends[ends.len() - 2];
        let (_, end_of_last) = ends[ends.len() - 1];
        assert_eq!(
            std::fs::metadata(&wal).expect("wal").len(),
            end_of_last,
            "the WAL ends with the last write"
        );
        // Cut anywhere inside the last record: its header, its payload, or
        // just its final byte.
        let cut = rng.gen_range(start_of_last..end_of_last);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .expect("open the WAL")
            .set_len(cut)
            .expect("tear the tail");
        let log = RocksLog::open(&db, RocksLogOptions::default()).unwrap_or_else(|e| {
            panic!("seed {seed} round {round}: a torn tail must not stop the store: {e}")
        });
        assert_eq!(
            log.last_index(),
            before_last,
            "seed {seed} round {round}: cut at {cut} in {start_of_last}..{end_of_last}: the \
             torn write is gone whole, every earlier one is there"
        );
        let got = runtime()
            .block_on(log.entries(1, before_last + 1, u64::MAX))
            .expect("read back");
        assert_eq!(got, (1..=before_last).map(entry).collect::<Vec<_>>());
    }
}

/// Zeroes `range` of `file`, keeping its length (pages a crash left
/// unwritten in a preallocated file).
fn zero(file: &Path, range: std::ops::Range<u64>) {
    let mut bytes = std::fs::read(file).expect("read the WAL");
    for b in &mut bytes[range.start as usize..range.end as usize] {
        *b = 0;
    }
    std::fs::write(file, bytes).expect("write the WAL");
}

fn assert_opens_with(db: &Path, last: u64, context: &str) {
    let log = RocksLog::open(db, RocksLogOptions::default())
        .unwrap_or_else(|e| panic!("{context}: a torn tail must not stop the store: {e}"));
    assert_eq!(
        log.last_index(),
        last,
        "{context}: every synced write survives"
    );
    let got = runtime()
        .block_on(log.entries(1, last + 1, u64::MAX))
        .expect("read back");
    assert_eq!(got, (1..=last).map(entry).collect::<Vec<_>>(), "{context}");
}

#[test]
fn a_last_write_left_as_zeros_is_dropped_and_everything_before_survives() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let ends = store_in_wal(&db, 12, &mut rng);
    let wal = wal_files(&db).pop().expect("a WAL file");
    let (before_last, start_of_last) = ends[ends.len() - 2];
    let (_, end_of_last) = ends[ends.len() - 1];
    // The last 50 bytes of the last record, the file length kept.
    zero(
        &wal,
        end_of_last.saturating_sub(50).max(start_of_last)..end_of_last,
    );
    assert_opens_with(&db, before_last, "last record's end zeroed");
}

#[test]
fn a_large_last_write_with_a_block_left_as_zeros_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let start_of_last = runtime().block_on(async {
        let log = RocksLog::open(&db, RocksLogOptions::default()).expect("open");
        log.write(write_of(1..=10)).await.expect("write");
        let wal = wal_files(&db).pop().expect("a WAL file");
        let start = std::fs::metadata(&wal).expect("wal").len();
        // One 40 KB entry: its record spans two 32 KiB WAL blocks.
        let big = Entry {
            term: 1,
            index: 11,
            payload: EntryPayload::Normal(Bytes::from(vec![0xAB; 40_000])),
        };
        log.write(LogWrite {
            hard_state: None,
            truncate_from: None,
            entries: vec![big],
        })
        .await
        .expect("write");
        start
    });
    let wal = wal_files(&db).pop().expect("a WAL file");
    let len = std::fs::metadata(&wal).expect("wal").len();
    assert!(
        len > 32_768 && start_of_last < 32_768,
        "the record spans two blocks"
    );
    // Its second block never reached the disk.
    zero(&wal, 32_768..len);
    assert_opens_with(&db, 10, "second block of the last record zeroed");
}

#[test]
fn unsynced_writes_after_the_last_synced_one_may_be_torn_anywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let options = || RocksLogOptions {
        extra_column_families: vec!["state".into()],
        ..RocksLogOptions::default()
    };
    // A state machine sharing the store writes without sync (as
    // raft-node's does): three batches after the last synced log write.
    let (synced_end, ends) = runtime().block_on(async {
        let log = RocksLog::open(&db, options()).expect("open");
        log.write(write_of(1..=10)).await.expect("write");
        let wal = wal_files(&db).pop().expect("a WAL file");
        let synced_end = std::fs::metadata(&wal).expect("wal").len();
        let cf = log.db().cf_handle("state").expect("state cf");
        let mut ends = Vec::new();
        for k in 0..3u8 {
            log.db()
                .put_cf(cf, [k], vec![k; 3000])
                .expect("unsynced write");
            ends.push(std::fs::metadata(&wal).expect("wal").len());
        }
        (synced_end, ends)
    });
    assert!(synced_end < ends[0] && ends[0] < ends[1] && ends[1] < ends[2]);
    let wal = wal_files(&db).pop().expect("a WAL file");
    // The middle batch's pages never reached the disk; the last one did.
    zero(&wal, ends[0]..ends[1]);
    let log = RocksLog::open(&db, options())
        .unwrap_or_else(|e| panic!("a torn unsynced tail must not stop the store: {e}"));
    assert_eq!(log.last_index(), 10, "every synced write survives");
}

#[test]
fn a_record_damaged_before_a_synced_write_is_refused_not_dropped() {
    // Bit rot in the middle of the WAL is not a torn write: the synced
    // writes after it were acknowledged, and replaying up to the damage
    // (RocksDB's point-in-time recovery) would drop them without a word.
    let seed: u64 =
        raft_core::testing::env_or("RAFT_LOG_ROT_SEED", u64::from(rand::random::<u32>()));
    println!("damaged-record seed {seed} (replay with RAFT_LOG_ROT_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..6 {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db");
        let ends = store_in_wal(&db, 12, &mut rng);
        let wal = wal_files(&db).pop().expect("a WAL file");
        // A byte inside one of the records before the last.
        let k = rng.gen_range(1..ends.len() - 1);
        let (start, end) = (ends[k - 1].1, ends[k].1);
        let at = rng.gen_range(start + 8..end);
        let mut bytes = std::fs::read(&wal).expect("read the WAL");
        bytes[at as usize] ^= 1 << rng.gen_range(0..8);
        std::fs::write(&wal, bytes).expect("write the WAL");
        match RocksLog::open(&db, RocksLogOptions::default()) {
            Err(e @ raft_log::OpenError::Corruption { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(".log") && text.contains("synced write"),
                    "seed {seed} round {round}: the error names the WAL and why: {text}"
                );
            }
            Err(e) => panic!("seed {seed} round {round}: refused, but not as corruption: {e}"),
            Ok(log) => panic!(
                "seed {seed} round {round}: a byte flipped at {at} (record {k} of 12) and the \
                 store opened with {} of {} entries",
                log.last_index(),
                ends[ends.len() - 1].0
            ),
        }
    }
}
