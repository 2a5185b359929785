//! The store's tests on RocksDB: preconditions, idempotency and its
//! window across batches and reopens, snapshots taken and installed, and
//! the replay property (replicas are a function of the log whatever the
//! batches).

use super::records::*;
use super::test_support::{snapshotting, snapshotting_in, store};
use super::*;
use crate::command::{Command, Op, Precondition};
use raft_core::EntryPayload;
use raft_core::FileSource;
use raft_log::RocksLog;
use rocksdb::WriteBatch;

/// What the previous release (idempotency records of version 1) left after
/// applying a put of `value` at `key` with `token` as entry `index`: the
/// value, the record `index | fingerprint | outcome` under `i/<token>`,
/// its order key and the applied index.
fn leave_version_1_put(
    log: &RocksLog,
    (key, value): (&[u8], &[u8]),
    index: u64,
    token: &str,
    fingerprint: u32,
) {
    let db = log.db();
    let kv = db.cf_handle(KV_CF).unwrap();
    let meta = db.cf_handle(KV_META_CF).unwrap();
    db.put_cf(&kv, key, encode_record_v1(index, value)).unwrap();
    let mut rec = index.to_be_bytes().to_vec();
    rec.extend_from_slice(&fingerprint.to_be_bytes());
    rec.extend_from_slice(&Outcome::Applied { rev: index }.encode());
    db.put_cf(&meta, format!("i/{token}"), &rec).unwrap();
    let mut order = b"x/".to_vec();
    order.extend_from_slice(&index.to_be_bytes());
    order.extend_from_slice(token.as_bytes());
    db.put_cf(&meta, &order, b"").unwrap();
    db.put_cf(&meta, APPLIED_KEY, index.to_be_bytes()).unwrap();
}

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(cmd.encode()),
    }
}

fn put(key: &str, value: &str, pre: Precondition, token: Option<&str>) -> Command {
    Command {
        op: Op::Put(Bytes::from(value.to_owned())),
        key: Bytes::from(key.to_owned()),
        precondition: pre,
        idempotency_key: token.map(str::to_owned),
        principal: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn preconditions_idempotency_and_the_applied_index_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = store(dir.path(), 100);
        assert_eq!(sm.applied_index().await.unwrap(), 0);
        let out = sm
            .apply(&[
                entry(1, put("a", "1", Precondition::IfNoneMatch, None)),
                entry(2, put("a", "2", Precondition::IfNoneMatch, None)),
                entry(3, put("a", "3", Precondition::IfMatch(1), Some("t1"))),
                entry(4, put("a", "3", Precondition::IfMatch(1), Some("t1"))),
                Entry {
                    term: 1,
                    index: 5,
                    payload: EntryPayload::Blank,
                },
                Entry {
                    term: 1,
                    index: 6,
                    payload: EntryPayload::Normal(Bytes::from_static(b"junk")),
                },
            ])
            .await
            .unwrap();
        assert_eq!(out[0], Outcome::Applied { rev: 1 });
        assert_eq!(out[1], Outcome::PreconditionFailed { current: Some(1) });
        assert_eq!(out[2], Outcome::Applied { rev: 3 });
        // The retry returns the first result and changes nothing.
        assert_eq!(out[3], Outcome::Applied { rev: 3 });
        assert_eq!(out[4], Outcome::Noop);
        assert!(matches!(out[5], Outcome::Malformed(_)));
    }
    let (_log, mut sm) = store(dir.path(), 100);
    assert_eq!(sm.applied_index().await.unwrap(), 6);
    let r = sm.reader();
    assert_eq!(
        r.get(b"a").unwrap(),
        Some(Versioned {
            value: Bytes::from("3"),
            rev: 3,
            create_rev: 1,
            version: 2,
            lease: 0,
        })
    );
    // The token is remembered across the restart...
    let out = sm
        .apply(&[entry(
            7,
            put("a", "3", Precondition::IfMatch(1), Some("t1")),
        )])
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::Applied { rev: 3 });
    let del = Command {
        op: Op::Delete,
        key: Bytes::from_static(b"missing"),
        precondition: Precondition::None,
        idempotency_key: None,
        principal: None,
    };
    assert_eq!(
        sm.apply(&[entry(8, del)]).await.unwrap()[0],
        Outcome::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn tokens_are_forgotten_after_the_window_and_listing_is_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 3);
    sm.apply(&[entry(1, put("p/1", "a", Precondition::None, Some("t")))])
        .await
        .unwrap();
    for i in 2..=5 {
        sm.apply(&[entry(
            i,
            put(&format!("p/{i}"), "b", Precondition::None, None),
        )])
        .await
        .unwrap();
    }
    // Index 1 is outside the window of 3 entries: the token applies anew.
    let out = sm
        .apply(&[entry(6, put("p/1", "c", Precondition::None, Some("t")))])
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::Applied { rev: 6 });
    let r = sm.reader();
    let (items, more) = r.list(b"p/", 3).unwrap();
    assert_eq!(items.len(), 3);
    assert!(more);
    assert_eq!(items[0].0, Bytes::from("p/1"));
    let (items, more) = r.list(b"p/", 10).unwrap();
    assert_eq!((items.len(), more), (5, false));
}

/// A token used at entry 1 and used again at 6 (past the window of
/// 3) and 7 (a retry of 6): every replica must answer entry 7 with the
/// outcome of 6, whether 6 was applied alone or in one batch with 5.
/// (The cleanup at the end of a batch once deleted the token's new
/// record along with its expired one when both fell in one batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_token_reused_past_its_window_is_remembered_whatever_the_batches() {
    let cmd = |i: u64| match i {
        1 => put("p/1", "a", Precondition::None, Some("t")),
        6 | 7 => put("p/1", "c", Precondition::None, Some("t")),
        _ => put(&format!("p/{i}"), "b", Precondition::None, None),
    };
    let mut outcomes = Vec::new();
    let mut digests = Vec::new();
    for batches in [
        vec![
            vec![1],
            vec![2],
            vec![3],
            vec![4],
            vec![5],
            vec![6],
            vec![7],
        ],
        vec![vec![1], vec![2], vec![3], vec![4], vec![5, 6], vec![7]],
        vec![vec![1, 2, 3, 4, 5, 6, 7]],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = store(dir.path(), 3);
        let mut out = Vec::new();
        for b in &batches {
            let entries: Vec<Entry> = b.iter().map(|&i| entry(i, cmd(i))).collect();
            out.extend(sm.apply(&entries).await.unwrap());
        }
        assert_eq!(out[5], Outcome::Applied { rev: 6 }, "{batches:?}");
        assert_eq!(
            out[6],
            Outcome::Applied { rev: 6 },
            "{batches:?}: the retry"
        );
        assert_eq!(sm.reader().get(b"p/1").unwrap().unwrap().rev, 6);
        outcomes.push(out);
        digests.push(sm.reader().digest().unwrap());
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: raft_core::LogId::new(1, index),
        membership: raft_core::Membership::new([1, 2, 3]),
    }
}

#[tokio::test]
async fn applies_go_on_while_a_snapshot_is_written_and_it_holds_its_own_point() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = snapshotting(dir.path(), 100);
    for i in 1..=20 {
        let cmd = put(
            &format!("k{i}"),
            "old",
            Precondition::None,
            Some(&format!("t{i}")),
        );
        sm.apply(&[entry(i, cmd)]).await.unwrap();
    }
    let at_20 = sm.reader().digest().unwrap();
    // The build starts: the state machine is free again at once.
    let build = sm.begin_snapshot(&meta(20)).await.unwrap();
    for i in 21..=40 {
        let cmd = put(&format!("k{}", i - 20), "new", Precondition::None, None);
        sm.apply(&[entry(i, cmd)]).await.unwrap();
    }
    let data = build.await.unwrap();
    let (latest, _) = sm.latest_snapshot().await.unwrap().expect("recorded");
    assert_eq!(latest, meta(20));

    // Installed elsewhere, it is the state at 20, none of 21..=40.
    let b_dir = tempfile::tempdir().unwrap();
    let (_b_log, mut b) = snapshotting(b_dir.path(), 100);
    b.install_snapshot(&meta(20), data).await.unwrap();
    let r = b.reader();
    assert_eq!(r.applied().unwrap(), 20);
    assert_eq!(r.get(b"k7").unwrap().unwrap().value, Bytes::from("old"));
    assert_eq!(r.digest().unwrap(), at_20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_dropped_unfinished_stops_and_lets_go_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    {
        let (log, mut sm) = snapshotting_in(dir.path(), 100, &snapshots);
        sm.apply(&[entry(1, put("a", "1", Precondition::None, None))])
            .await
            .unwrap();
        // A store large enough that writing its snapshot takes a while.
        let kv = log.db().cf_handle(KV_CF).unwrap();
        for chunk in 0..40u32 {
            let mut batch = WriteBatch::default();
            for i in 0..5_000u32 {
                batch.put_cf(kv, format!("bulk-{chunk:03}-{i:05}"), [7u8; 64]);
            }
            log.db().write(batch).unwrap();
        }
        let build = sm.begin_snapshot(&meta(1)).await.unwrap();
        // The node stops: the build is dropped before it finished.
        drop(build);
        drop(sm);
        drop(log);
    }
    // Nothing holds the database any more: it opens again at once.
    let (_log, sm) = snapshotting_in(dir.path(), 100, &snapshots);
    assert_eq!(
        sm.reader().snapshot_meta().unwrap(),
        None,
        "no snapshot recorded"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&snapshots).unwrap().collect();
    assert!(leftovers.is_empty(), "no partial file left: {leftovers:?}");
}

#[tokio::test]
async fn a_snapshot_installs_on_another_store_and_a_corrupted_one_is_refused() {
    let a_dir = tempfile::tempdir().unwrap();
    let (_a_log, mut a) = snapshotting(a_dir.path(), 100);
    for i in 1..=20 {
        a.apply(&[entry(
            i,
            put(
                &format!("k{i}"),
                &format!("v{i}"),
                Precondition::None,
                Some(&format!("t{i}")),
            ),
        )])
        .await
        .unwrap();
    }
    let data = a.build_snapshot(&meta(20)).await.unwrap();
    let (latest, _) = a.latest_snapshot().await.unwrap().expect("recorded");
    assert_eq!(latest, meta(20));

    // A store with other data takes the snapshot over completely.
    let b_dir = tempfile::tempdir().unwrap();
    let (_b_log, mut b) = snapshotting(b_dir.path(), 100);
    b.apply(&[entry(1, put("stale", "x", Precondition::None, None))])
        .await
        .unwrap();
    let bytes = raft_core::snapshot::read_all(data.as_ref(), 1 << 30)
        .await
        .unwrap();
    b.install_snapshot(&meta(20), Arc::new(bytes.clone()))
        .await
        .unwrap();
    let r = b.reader();
    assert_eq!(r.applied().unwrap(), 20);
    assert!(r.get(b"stale").unwrap().is_none());
    assert_eq!(r.get(b"k7").unwrap().unwrap().value, Bytes::from("v7"));
    assert_eq!(r.digest().unwrap(), a.reader().digest().unwrap());
    // Idempotency records travel with the snapshot: a retry gets the
    // first outcome (revision 3), not a new write at 21.
    let out = b
        .apply(&[entry(21, put("k3", "v3", Precondition::None, Some("t3")))])
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::Applied { rev: 3 });

    // A flipped byte is refused before anything is touched.
    let c_dir = tempfile::tempdir().unwrap();
    let (_c_log, mut c) = snapshotting(c_dir.path(), 100);
    c.apply(&[entry(1, put("mine", "x", Precondition::None, None))])
        .await
        .unwrap();
    let mut bad = bytes.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let err = c
        .install_snapshot(&meta(20), Arc::new(Bytes::from(bad)))
        .await
        .expect_err("corrupted snapshot refused");
    assert!(err.to_string().contains("corrupted"), "{err}");
    assert_eq!(c.reader().applied().unwrap(), 1);
    assert!(c.reader().get(b"mine").unwrap().is_some());
}

/// A received snapshot moved into place survives a power loss: the
/// rename is followed by a sync of both directories it touched, and
/// the snapshot directory is the node's alone (0700).
#[tokio::test]
async fn a_snapshot_install_syncs_the_directories_of_its_rename_and_they_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let a_dir = tempfile::tempdir().unwrap();
    let (_a_log, mut a) = snapshotting(a_dir.path(), 100);
    for i in 1..=5 {
        a.apply(&[entry(
            i,
            put(&format!("k{i}"), "v", Precondition::None, None),
        )])
        .await
        .unwrap();
    }
    let data = a.build_snapshot(&meta(5)).await.unwrap();
    let bytes = raft_core::snapshot::read_all(data.as_ref(), 1 << 30)
        .await
        .unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let (_b_log, mut b) = snapshotting(b_dir.path(), 100);
    let snapshots = b_dir.path().join("snapshots");
    let mode = std::fs::metadata(&snapshots).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        format!("{mode:04o}"),
        "0700",
        "the snapshot directory is created 0700"
    );
    // As the transport leaves a received snapshot: a file in another
    // directory, taken over by a rename.
    let incoming = b_dir.path().join("incoming");
    std::fs::create_dir(&incoming).unwrap();
    let received = incoming.join("received.snap");
    std::fs::write(&received, &bytes).unwrap();
    let source = FileSource::open(&received).unwrap();
    let (before_in, before_snap) = (
        crate::snapshot::synced::count(&incoming),
        crate::snapshot::synced::count(&snapshots),
    );
    b.install_snapshot(&meta(5), Arc::new(source))
        .await
        .unwrap();
    assert!(!received.exists(), "the received file was moved");
    assert!(super::snapshots::snapshot_path(&snapshots, 5).exists());
    assert!(
        crate::snapshot::synced::count(&incoming) > before_in,
        "the directory the snapshot left was not synced"
    );
    assert!(
        crate::snapshot::synced::count(&snapshots) > before_snap,
        "the directory the snapshot entered was not synced"
    );
    assert_eq!(b.reader().digest().unwrap(), a.reader().digest().unwrap());
}

/// Idempotency records written by the previous release (version 1:
/// `index | crc32c | outcome` under `i/<token>`, and their order keys)
/// still read: a retry within the window gets the first outcome, another
/// request with that token is refused, and the window still forgets
/// them. The same token from a principal is another request.
#[tokio::test]
async fn idempotency_records_of_the_previous_version_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut sm) = store(dir.path(), 10);
    let first = put("k", "v1", Precondition::None, Some("old"));
    // The previous release's fingerprint: a CRC-32C of the request
    // without its token.
    let anonymous = Command {
        idempotency_key: None,
        ..first.clone()
    };
    // What the previous release left after applying `first` at 3.
    let fingerprint = crc32c::crc32c(&anonymous.encode());
    leave_version_1_put(&log, (b"k", b"v1"), 3, "old", fingerprint);
    let out = sm
        .apply(&[
            entry(4, first.clone()),
            entry(5, put("k", "other", Precondition::None, Some("old"))),
            entry(
                6,
                Command {
                    principal: Some("user".into()),
                    ..put("k", "scoped", Precondition::None, Some("old"))
                },
            ),
        ])
        .await
        .unwrap();
    // The scoped request finds the record written before scoping
    // existed (a retry across the upgrade must not apply twice), and
    // it is another request: 422.
    assert_eq!(
        out,
        vec![
            Outcome::Applied { rev: 3 },
            Outcome::IdempotencyConflict,
            Outcome::IdempotencyConflict,
        ]
    );
    // Past the window, the old record is forgotten with its order key.
    sm.apply(&[entry(20, put("z", "z", Precondition::None, None))])
        .await
        .unwrap();
    let meta = log.db().cf_handle(KV_META_CF).unwrap();
    assert!(log.db().get_cf(&meta, b"i/old").unwrap().is_none());
    let out = sm.apply(&[entry(21, first)]).await.unwrap();
    assert_eq!(out, vec![Outcome::Applied { rev: 21 }]);
}

/// An authenticated client's write made through the previous release
/// (no principal in the command: record under `i/<token>`), retried
/// after the upgrade (now carried with principal `user`): the retry
/// must get the first outcome, not be applied again over a later write.
#[tokio::test]
async fn review_a_retry_across_the_upgrade_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut sm) = store(dir.path(), 100);
    let first = put("k", "v1", Precondition::None, Some("t"));
    // What the previous release left after applying `first` at 3.
    leave_version_1_put(&log, (b"k", b"v1"), 3, "t", first.legacy_fingerprint());
    // Another client writes after it; then the first client's retry
    // arrives at an upgraded leader.
    let out = sm
        .apply(&[
            entry(4, put("k", "v2", Precondition::None, None)),
            entry(
                5,
                Command {
                    principal: Some("user".into()),
                    ..first.clone()
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        out[1],
        Outcome::Applied { rev: 3 },
        "the retry was applied again"
    );
    assert_eq!(&sm.reader().get(b"k").unwrap().unwrap().value[..], b"v2");
}

#[tokio::test]
async fn reads_overlapping_a_snapshot_install_are_refused() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store(dir.path(), 100);
    sm.apply(&[entry(1, put("k", "v", Precondition::None, None))])
        .await
        .unwrap();
    let r = sm.reader();
    assert!(r.get(b"k").unwrap().is_some());
    // What `finish_install` does around replacing the data.
    r.install_seq.fetch_add(1, Ordering::AcqRel);
    assert!(matches!(r.get(b"k"), Err(StoreError::Installing)));
    assert!(matches!(r.list(b"", 10), Err(StoreError::Installing)));
    r.install_seq.fetch_add(1, Ordering::AcqRel);
    assert!(r.get(b"k").unwrap().is_some());
}

/// A random log for the replay property: puts, deletes and CAS on a
/// few keys, idempotency tokens retried inside and past the window
/// (and reused for other commands), member records, blanks and junk.
fn random_log(rng: &mut rand_chacha::ChaCha8Rng, len: u64) -> Vec<Entry> {
    use rand::Rng;
    let mut log: Vec<Entry> = Vec::new();
    for index in 1..=len {
        let payload = match rng.gen_range(0..100) {
            0..=3 => EntryPayload::Blank,
            4..=5 => EntryPayload::Normal(Bytes::from_static(b"\x07junk")),
            6..=10 => EntryPayload::Normal(crate::command::encode_member(&crate::config::Member {
                id: rng.gen_range(1..=4),
                peer_addr: format!("127.0.0.1:{}", rng.gen_range(7000..7004))
                    .parse()
                    .unwrap(),
                client_addr: format!("127.0.0.1:{}", rng.gen_range(8000..8004)),
                grpc_url: None,
            })),
            // A compaction, often refused (compacted, or in the future).
            11..=13 => EntryPayload::Normal(crate::command::encode_compact(
                rng.gen_range(index.saturating_sub(30)..=index),
            )),
            // A transaction (sometimes refused: duplicate keys, limits).
            31..=45 => EntryPayload::Normal(super::tests_txn::random_txn(rng, index)),
            // A lease grant: a chosen id (often in use), or one chosen at
            // apply; often beyond a small lease limit.
            46..=50 => EntryPayload::Normal(
                crate::lease::LeaseGrant {
                    id: rng.gen_range(0..=3),
                    ttl_secs: rng.gen_range(1..=10),
                    max_leases: rng.gen_range(1..=4),
                }
                .encode(),
            ),
            // A revoke of a small id or one chosen at apply, by a client or
            // for an expiry (of this term or another: then it is a no-op).
            51..=55 => EntryPayload::Normal(
                crate::lease::LeaseRevoke {
                    id: if rng.gen_bool(0.7) {
                        rng.gen_range(1..=3)
                    } else {
                        rng.gen_range(index.saturating_sub(20).max(1)..=index)
                    },
                    expiry_term: rng.gen_range(0..=2),
                }
                .encode(),
            ),
            // A retry of an earlier command, same token and all.
            14..=30 if !log.is_empty() => {
                let back = rng.gen_range(1..=log.len().min(12));
                log[log.len() - back].payload.clone()
            }
            _ => {
                let key = format!("k{}", rng.gen_range(0..4));
                let op = match rng.gen_range(0..8) {
                    0 | 1 => Op::Delete,
                    2 => Op::PutLeased {
                        value: Bytes::from(format!("v{index}")),
                        lease: rng.gen_range(1..=3),
                        max_keys: rng.gen_range(1..=3),
                    },
                    _ => Op::Put(Bytes::from(format!("v{index}"))),
                };
                let precondition = match rng.gen_range(0..6) {
                    0 => Precondition::IfNoneMatch,
                    1 | 2 => Precondition::IfMatch(rng.gen_range(index.saturating_sub(8)..=index)),
                    _ => Precondition::None,
                };
                let token = rng
                    .gen_bool(0.6)
                    .then(|| format!("t{}", rng.gen_range(0..5)));
                // The same tokens from up to two principals, and none.
                let principal = match rng.gen_range(0..3) {
                    0 => None,
                    1 => Some("user".to_owned()),
                    _ => Some("admin".to_owned()),
                };
                EntryPayload::Normal(
                    Command {
                        op,
                        key: Bytes::from(key),
                        precondition,
                        idempotency_key: token,
                        principal,
                    }
                    .encode(),
                )
            }
        };
        log.push(Entry {
            term: 1,
            index,
            payload,
        });
    }
    log
}

/// Splits `from..=to` into random consecutive batches.
fn random_batches(rng: &mut rand_chacha::ChaCha8Rng, from: u64, to: u64) -> Vec<(u64, u64)> {
    use rand::Rng;
    let mut out = Vec::new();
    let mut next = from;
    while next <= to {
        let end = (next + rng.gen_range(0..16)).min(to);
        out.push((next, end));
        next = end + 1;
    }
    out
}

fn slice(log: &[Entry], from: u64, to: u64) -> &[Entry] {
    &log[(from - 1) as usize..to as usize]
}

/// One seed of the replay property.
async fn replicas_agree_whatever_the_batches(seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let window = rng.gen_range(1..=6);
    // History kept for a few entries, or until compacted by command.
    let retention = [0, 1, 5, 20][rng.gen_range(0..4)];
    // Released history deleted a few records per entry, so that deletion
    // spans entries, batches and restarts; or all at once.
    let collect = [1, 2, 3, crate::store::mvcc::COLLECT_PER_ENTRY][rng.gen_range(0..4)];
    let len = rng.gen_range(60..=200);
    let log = random_log(&mut rng, len);
    let ctx = format!(
        "seed {seed} (replay: KV_REPLAY_SEED={seed}), window {window}, \
         retention {retention}, collect {collect}, {len} entries"
    );
    let store = |dir: &std::path::Path, window| {
        let (log, sm) = store(dir, window);
        (
            log,
            sm.with_history_retention(retention)
                .with_collect_per_entry(collect),
        )
    };
    let snapshotting = |dir: &std::path::Path, window| {
        let (log, sm) = snapshotting(dir, window);
        (
            log,
            sm.with_history_retention(retention)
                .with_collect_per_entry(collect),
        )
    };

    // Replica A applies one entry at a time: the reference.
    let a_dir = tempfile::tempdir().unwrap();
    let (_a_log, mut a) = store(a_dir.path(), window);
    let mut outcomes = Vec::new();
    let mut digests = vec![a.reader().digest().unwrap()];
    for e in &log {
        outcomes.extend(a.apply(std::slice::from_ref(e)).await.unwrap());
        digests.push(a.reader().digest().unwrap());
    }

    // Replica B: random batches, and restarts (the store closed and
    // reopened, resuming after its applied index).
    let b_dir = tempfile::tempdir().unwrap();
    let (mut b_log, mut b) = store(b_dir.path(), window);
    for (from, to) in random_batches(&mut rng, 1, len) {
        let got = b.apply(slice(&log, from, to)).await.unwrap();
        assert_eq!(
            got,
            outcomes[(from - 1) as usize..to as usize],
            "{ctx}: batch {from}..={to} answered differently"
        );
        assert_eq!(
            b.reader().digest().unwrap(),
            digests[to as usize],
            "{ctx}: after the batch {from}..={to} the store differs from one applied entry by entry"
        );
        if rng.gen_bool(0.15) {
            drop(b);
            drop(b_log);
            (b_log, b) = store(b_dir.path(), window);
            assert_eq!(b.applied_index().await.unwrap(), to, "{ctx}");
        }
    }

    // Replica C starts from a snapshot that D took at a random point,
    // then applies the rest in random batches.
    let k = rng.gen_range(1..=len);
    let d_dir = tempfile::tempdir().unwrap();
    let (_d_log, mut d) = snapshotting(d_dir.path(), window);
    for (from, to) in random_batches(&mut rng, 1, k) {
        d.apply(slice(&log, from, to)).await.unwrap();
    }
    let data = d.build_snapshot(&meta(k)).await.unwrap();
    let c_dir = tempfile::tempdir().unwrap();
    let (_c_log, mut c) = snapshotting(c_dir.path(), window);
    c.install_snapshot(&meta(k), data).await.unwrap();
    assert_eq!(
        c.reader().digest().unwrap(),
        digests[k as usize],
        "{ctx}: snapshot at {k}"
    );
    for (from, to) in random_batches(&mut rng, k + 1, len) {
        let got = c.apply(slice(&log, from, to)).await.unwrap();
        assert_eq!(
            got,
            outcomes[(from - 1) as usize..to as usize],
            "{ctx}: after the snapshot at {k}, batch {from}..={to} answered differently"
        );
    }
    assert_eq!(
        c.reader().digest().unwrap(),
        digests[len as usize],
        "{ctx}: the replica restored from the snapshot at {k} differs"
    );
}

/// The state machine is a function of the log alone: replicas that
/// apply the same random log in different batches, with restarts, or
/// from a snapshot plus the rest of the log, answer every entry the
/// same and hold byte-identical state (data, idempotency records,
/// member records, revisions, history and its compaction, by command
/// and by retention) after every batch; random transactions included. `KV_SEEDS` sets how many seeds
/// (40), `KV_REPLAY_SEED` replays one.
#[tokio::test]
async fn replicas_are_a_function_of_the_log_whatever_the_batches() {
    if let Ok(seed) = std::env::var("KV_REPLAY_SEED") {
        let seed = seed.parse().expect("KV_REPLAY_SEED is a number");
        replicas_agree_whatever_the_batches(seed).await;
        return;
    }
    let seeds: u64 = raft_core::testing::env_or("KV_SEEDS", 40);
    let start = raft_core::testing::seed_from_env("KV_SEED_START");
    eprintln!("{seeds} seeds from {start} (KV_SEED_START={start} repeats them)");
    for i in 0..seeds {
        replicas_agree_whatever_the_batches(start.wrapping_add(i)).await;
    }
}

/// A follower's backup in the window between the key-value install of a
/// leader's snapshot and the log's record of it: its log still holds
/// entries at and below the snapshot's index from an old leader, one of
/// them an uncommitted configuration. The header names the snapshot's
/// term and configuration, not theirs.
#[tokio::test]
async fn a_backup_between_the_install_and_the_logs_record_names_the_snapshots_configuration() {
    use crate::store::ExportRequest;
    use raft_core::LogStorage;
    let a_dir = tempfile::tempdir().unwrap();
    let (_a_log, mut a) = snapshotting(a_dir.path(), 100);
    for i in 1..=20 {
        let cmd = put(&format!("k{i}"), "v", Precondition::None, None);
        a.apply(&[entry(i, cmd)]).await.unwrap();
    }
    let leaders = SnapshotMeta {
        last_log_id: raft_core::LogId::new(3, 20),
        membership: raft_core::Membership::new([1, 2, 3]),
    };
    let data = a.build_snapshot(&leaders).await.unwrap();

    let b_dir = tempfile::tempdir().unwrap();
    let (b_log, mut b) = snapshotting(b_dir.path(), 100);
    // An old leader's entries, never committed: a configuration at 18.
    let stale: Vec<Entry> = (1..=20)
        .map(|i| Entry {
            term: 2,
            index: i,
            payload: if i == 18 {
                EntryPayload::Membership(Box::new(raft_core::Membership::new([1, 2, 4])))
            } else {
                EntryPayload::Blank
            },
        })
        .collect();
    b_log.append(stale).await.unwrap();
    b.install_snapshot(&leaders, data).await.unwrap();

    let req = ExportRequest {
        node: 2,
        consistency: "stale".into(),
        read_index: None,
    };
    let mut seen = None;
    let begin = |h: &crate::backup::BackupHeader| {
        seen = Some(h.clone());
        None::<Vec<u8>>
    };
    let label = std::path::Path::new("test");
    b.reader()
        .export(
            &req,
            label,
            begin,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    let h = seen.expect("the header");
    assert_eq!((h.index, h.term), (20, 3), "{h:?}");
    assert_eq!(h.voters, vec![1, 2, 3], "{h:?}");
    assert!(h.learners.is_empty(), "{h:?}");
}
