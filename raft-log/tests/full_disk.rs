//! A full disk: appends on a small tmpfs until it fills must fail with a
//! typed I/O error (kind `StorageFull`), never a panic, and every entry
//! acknowledged before stays readable.
//!
//! Mounting a tmpfs needs root (as CI runs); elsewhere the test says it was
//! skipped and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, LogStorage, StorageError};
use raft_log::{RocksLog, RocksLogOptions};

/// Unmounts the tmpfs when the test ends, whatever happens.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(dir.to_path_buf()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_typed_error_and_acknowledged_entries_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_mount) = mount_tmpfs(dir.path(), "6m") else {
        println!("skipped: mounting a tmpfs needs root");
        return;
    };
    let opts = RocksLogOptions {
        write_buffer_bytes: 1 << 20,
        ..RocksLogOptions::default()
    };
    let log = RocksLog::open(dir.path().join("db"), opts).expect("open on the small disk");
    let payload = Bytes::from(vec![7u8; 64 * 1024]);
    let mut acked = 0u64;
    let err = loop {
        let index = acked + 1;
        let entry = Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(payload.clone()),
        };
        match log.append(vec![entry]).await {
            Ok(()) => acked = index,
            Err(e) => break e,
        }
        assert!(
            acked < 10_000,
            "a 6 MiB disk cannot hold {acked} entries of 64 KiB"
        );
    };
    println!("disk full after {acked} entries: {err}");
    assert!(acked > 0, "some entries fit before the disk filled");
    match &err {
        StorageError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{err}"),
        other => panic!("expected an I/O error of kind StorageFull, got {other:?}"),
    }
    assert!(
        err.to_string().contains("db"),
        "the error names the path: {err}"
    );
    let back = log
        .entries(1, acked + 1, u64::MAX)
        .await
        .expect("acknowledged entries are readable");
    assert_eq!(back.len() as u64, acked);
    assert!(back
        .iter()
        .all(|e| e.payload == EntryPayload::Normal(payload.clone())));
}
