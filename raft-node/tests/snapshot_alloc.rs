//! A snapshot or backup file's records declare their key and value
//! lengths (up to 64 MiB each) before the bytes; reading one must allocate
//! for the bytes that actually arrive, not for the declared length. A few
//! bytes of a hostile or corrupt file (`raft-node restore`, a received
//! snapshot) must not make the node allocate 64 MiB.
//!
//! Its own test binary: the process's allocator (the `cap` crate over the
//! system allocator) is capped a few MiB above what it holds while a file
//! is read, so an allocation of the declared length fails (and aborts the
//! test) instead of passing unseen.

use std::io::Write;

use raft_node::snapshot::{verify, verify_stream, SnapshotFileError};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// More than the reader needs for the bytes of these files (its file
/// buffer is 1 MiB), far less than one declared field.
const BOUND: usize = 4 << 20;

/// Held by each test: the cap is process-wide, the tests run in threads.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with at most [`BOUND`] more bytes allocated than now.
fn capped<T>(f: impl FnOnce() -> T) -> T {
    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + BOUND)
        .expect("set the limit");
    let out = f();
    ALLOCATOR.set_limit(usize::MAX).expect("lift the limit");
    out
}

/// The magic, then one record of tag `tag` declaring a key and a value of
/// 64 MiB each, then `data` bytes of key and nothing more.
fn declaring_huge_fields(tag: u8, data: usize) -> Vec<u8> {
    let mut f = b"RKVSNAP1".to_vec();
    f.push(tag);
    f.extend_from_slice(&(64u32 << 20).to_be_bytes());
    f.extend_from_slice(&(64u32 << 20).to_be_bytes());
    f.extend(std::iter::repeat_n(b'k', data));
    f
}

fn detail(e: SnapshotFileError) -> String {
    match e {
        SnapshotFileError::Corrupted { detail, .. } => detail,
        other => panic!("not a corrupted-file error: {other}"),
    }
}

#[test]
fn a_file_declaring_huge_fields_without_their_bytes_is_refused_without_allocating_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    for (tag, data) in [(1u8, 0usize), (2, 0), (1, 1000), (1, 100_000)] {
        let bytes = declaring_huge_fields(tag, data);
        eprintln!("tag {tag}, {data} bytes of a declared 64 MiB key, from memory");
        let result = capped(|| verify_stream(&bytes[..], "hostile".as_ref()));
        let d = detail(result.expect_err("a truncated record must be refused"));
        assert!(d.contains("ends inside a key"), "{d}");

        // The same from a file (`raft-node restore`, an install).
        let path = dir.path().join(format!("hostile-{tag}-{data}.snap"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        eprintln!("the same from a file of {} bytes", bytes.len());
        let result = capped(|| verify(&path));
        let d = detail(result.expect_err("a truncated file must be refused"));
        assert!(d.contains("ends inside a key"), "{d}");
    }
}

#[test]
fn a_whole_large_value_is_still_read() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A record with a 5 MiB value reads back whole: allocation follows the
    // bytes, it does not stop at the first chunk.
    let key = b"key".to_vec();
    let value = vec![7u8; 5 << 20];
    let mut f = b"RKVSNAP1".to_vec();
    let mut head = vec![1u8];
    head.extend_from_slice(&(key.len() as u32).to_be_bytes());
    head.extend_from_slice(&(value.len() as u32).to_be_bytes());
    let mut crc = crc32c::crc32c(&head);
    crc = crc32c::crc32c_append(crc, &key);
    crc = crc32c::crc32c_append(crc, &value);
    f.extend_from_slice(&head);
    f.extend_from_slice(&key);
    f.extend_from_slice(&value);
    f.extend_from_slice(&crc.to_be_bytes());
    let mut trailer = vec![0xFFu8];
    trailer.extend_from_slice(&1u64.to_be_bytes());
    let tcrc = crc32c::crc32c(&trailer);
    f.extend_from_slice(&trailer);
    f.extend_from_slice(&tcrc.to_be_bytes());
    assert_eq!(verify_stream(&f[..], "large".as_ref()).unwrap(), 1);
}
