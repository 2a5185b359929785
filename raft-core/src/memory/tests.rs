//! Tests of the in-memory implementations.

use bytes::Bytes;

use super::command::{TAG_CAS, TAG_DELETE, TAG_PUT};
use super::*;
use crate::state_machine::StateMachine;
use crate::storage::{LogStorage, LogWrite, StorageError};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, SnapshotMeta, Term};

use crate::membership::Membership;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn membership(voters: &[u64]) -> Membership {
    Membership::new(voters.iter().copied())
}

fn entry(term: Term, index: Index) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(format!("{term}/{index}"))),
    }
}

fn run(entries: impl IntoIterator<Item = (Term, Index)>) -> Vec<Entry> {
    entries.into_iter().map(|(t, i)| entry(t, i)).collect()
}

fn normal(index: Index, command: &KvCommand) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(command.encode()),
    }
}

fn put(key: &str, value: &'static [u8]) -> KvCommand {
    KvCommand::Put {
        key: key.to_owned(),
        value: Bytes::from_static(value),
    }
}

#[tokio::test]
async fn append_below_purged_prefix_is_invalid() {
    let log = MemLog::new();
    log.append(run((1..=5).map(|i| (1, i)))).await.unwrap();
    log.purge(3).await.unwrap();
    let err = log.append(run([(2, 3), (2, 4)])).await.unwrap_err();
    assert!(matches!(err, StorageError::Invalid(_)), "{err}");
    assert_eq!(log.snapshot_entries(), run([(1, 4), (1, 5)]));
    assert_eq!(log.last_purged_log_id(), Some(LogId::new(1, 3)));
}

#[tokio::test]
async fn purge_past_end_keeps_the_resume_point() {
    let log = MemLog::new();
    assert_eq!(log.last_purged_log_id(), None);
    log.append(run([(1, 1), (2, 2)])).await.unwrap();
    log.set_snapshot(SnapshotMeta {
        last_log_id: LogId::new(3, 7),
        membership: membership(&[1, 2, 3]),
    });
    log.purge(7).await.unwrap();
    assert_eq!(log.last_purged_log_id(), Some(LogId::new(3, 7)));
    let state = log.stored_state().await.unwrap();
    assert_eq!(state.first_log_id, None);
    assert_eq!(state.last_log_id, None);
    assert_eq!(
        state.snapshot.map(|s| s.last_log_id),
        Some(LogId::new(3, 7))
    );
    // The log resumes right after the purge point, not at index 1.
    assert!(matches!(
        log.append(run([(3, 2)])).await,
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.append(run([(3, 9)])).await,
        Err(StorageError::Invalid(_))
    ));
    log.append(run([(3, 8)])).await.unwrap();
    assert!(matches!(
        log.entries(7, 9, u64::MAX).await,
        Err(StorageError::Compacted { first_index: 8 })
    ));
    assert_eq!(log.entries(8, 9, u64::MAX).await.unwrap(), run([(3, 8)]));
    // Without a snapshot for the bound, the last removed entry's term is kept.
    log.purge(20).await.unwrap();
    assert_eq!(log.last_purged_log_id(), Some(LogId::new(3, 20)));
}

#[tokio::test]
async fn reappending_a_matching_prefix_drops_the_rest() {
    let log = MemLog::new();
    log.append(run((1..=4).map(|i| (1, i)))).await.unwrap();
    log.append(run([(1, 2)])).await.unwrap();
    assert_eq!(log.snapshot_entries(), run([(1, 1), (1, 2)]));
}

#[tokio::test]
async fn invalid_write_changes_nothing() {
    let log = MemLog::new();
    log.append(run((1..=4).map(|i| (1, i)))).await.unwrap();
    let hs = HardState {
        term: 9,
        vote: Some(1),
        commit: 2,
    };
    // Truncating from 3 leaves index 2 last, so an append at 4 is a gap.
    let write = LogWrite {
        hard_state: Some(hs),
        truncate_from: Some(3),
        entries: run([(2, 4)]),
    };
    assert!(matches!(
        log.write(write).await,
        Err(StorageError::Invalid(_))
    ));
    let state = log.stored_state().await.unwrap();
    assert_eq!(state.hard_state, HardState::default());
    assert_eq!(log.snapshot_entries(), run((1..=4).map(|i| (1, i))));
}

#[tokio::test]
async fn index_zero_is_rejected() {
    let log = MemLog::new();
    assert!(matches!(
        log.append(run([(1, 0)])).await,
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.truncate(0).await,
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.entries(0, 1, 10).await,
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.entries(2, 1, 10).await,
        Err(StorageError::Invalid(_))
    ));
}

#[test]
fn commands_round_trip() {
    let commands = [
        put("a", b"1"),
        put("", b""),
        KvCommand::Delete {
            key: "ключ".to_owned(),
        },
        KvCommand::CompareAndSet {
            key: "k".to_owned(),
            expected: None,
            value: Bytes::from_static(b"v"),
        },
        KvCommand::CompareAndSet {
            key: "k".to_owned(),
            expected: Some(Bytes::from(vec![0u8; 300])),
            value: Bytes::new(),
        },
    ];
    for command in commands {
        assert_eq!(KvCommand::decode(&command.encode()).unwrap(), command);
    }
}

#[test]
fn decode_rejects_truncated_and_garbage_input_without_panicking() {
    let valid = KvCommand::CompareAndSet {
        key: "key".to_owned(),
        expected: Some(Bytes::from_static(b"old")),
        value: Bytes::from_static(b"new"),
    }
    .encode();
    for len in 0..valid.len() {
        assert!(
            KvCommand::decode(&valid[..len]).is_err(),
            "prefix of {len} bytes decoded"
        );
    }
    let mut trailing = valid.to_vec();
    trailing.push(0);
    assert!(KvCommand::decode(&trailing).is_err());
    // A length prefix far larger than the input.
    assert!(KvCommand::decode(&[TAG_PUT, 0xff, 0xff, 0xff, 0xff, b'k']).is_err());
    // A key that is not UTF-8.
    assert!(KvCommand::decode(&[TAG_DELETE, 1, 0, 0, 0, 0xff]).is_err());
    assert!(KvCommand::decode(&[TAG_CAS, 0, 0, 0, 0, 2]).is_err());
    assert!(KvCommand::decode(&[0]).is_err());

    let mut rng = ChaCha8Rng::seed_from_u64(0x6b76);
    for _ in 0..20_000 {
        let len = rng.gen_range(0..24);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Bias towards well-formed headers so decoding gets past the tag.
        if let Some(tag) = bytes.first_mut() {
            *tag = rng.gen_range(0..5);
        }
        if let Ok(command) = KvCommand::decode(&bytes) {
            assert_eq!(command.encode(), bytes);
        }
    }
}

#[tokio::test]
async fn kv_applies_commands_and_reader_sees_them() {
    let mut kv = MemKv::new();
    let reader = kv.reader();
    assert_eq!(kv.applied_index().await.unwrap(), 0);
    assert!(reader.is_empty());

    let entries = vec![
        Entry {
            term: 1,
            index: 1,
            payload: EntryPayload::Blank,
        },
        normal(2, &put("a", b"1")),
        normal(3, &put("b", b"2")),
        Entry {
            term: 1,
            index: 4,
            payload: EntryPayload::Membership(Box::new(membership(&[1, 2]))),
        },
        normal(
            5,
            &KvCommand::CompareAndSet {
                key: "a".to_owned(),
                expected: Some(Bytes::from_static(b"0")),
                value: Bytes::from_static(b"x"),
            },
        ),
        normal(
            6,
            &KvCommand::CompareAndSet {
                key: "a".to_owned(),
                expected: Some(Bytes::from_static(b"1")),
                value: Bytes::from_static(b"x"),
            },
        ),
        normal(
            7,
            &KvCommand::CompareAndSet {
                key: "c".to_owned(),
                expected: None,
                value: Bytes::from_static(b"new"),
            },
        ),
        normal(
            8,
            &KvCommand::Delete {
                key: "b".to_owned(),
            },
        ),
        normal(
            9,
            &KvCommand::Delete {
                key: "b".to_owned(),
            },
        ),
        Entry {
            term: 1,
            index: 10,
            payload: EntryPayload::Normal(Bytes::from_static(b"?")),
        },
    ];
    let responses = kv.apply(&entries).await.unwrap();
    assert_eq!(responses.len(), entries.len());
    assert_eq!(responses[0], KvResponse::Done);
    assert_eq!(responses[1], KvResponse::Written { revision: 2 });
    assert_eq!(responses[2], KvResponse::Written { revision: 3 });
    assert_eq!(responses[3], KvResponse::Done);
    assert_eq!(
        responses[4],
        KvResponse::CasFailed {
            current: Some(Bytes::from_static(b"1"))
        }
    );
    assert_eq!(responses[5], KvResponse::Written { revision: 6 });
    assert_eq!(responses[6], KvResponse::Written { revision: 7 });
    assert_eq!(responses[7], KvResponse::Deleted { existed: true });
    assert_eq!(responses[8], KvResponse::Deleted { existed: false });
    assert!(
        matches!(&responses[9], KvResponse::Invalid(_)),
        "{:?}",
        responses[9]
    );

    assert_eq!(kv.applied_index().await.unwrap(), 10);
    assert_eq!(reader.applied_index(), 10);
    assert_eq!(reader.len(), 2);
    assert_eq!(reader.get("a"), Some((Bytes::from_static(b"x"), 6)));
    assert_eq!(reader.get("c"), Some((Bytes::from_static(b"new"), 7)));
    assert_eq!(reader.get("b"), None);
    assert_eq!(reader.clone().get("a").map(|(_, rev)| rev), Some(6));
}

#[tokio::test]
async fn kv_rejects_out_of_order_entries_and_applies_none() {
    let mut kv = MemKv::new();
    kv.apply(&[normal(1, &put("a", b"1"))]).await.unwrap();
    let batch = [normal(2, &put("b", b"2")), normal(4, &put("c", b"3"))];
    assert!(kv.apply(&batch).await.is_err());
    assert!(kv.apply(&[normal(1, &put("a", b"2"))]).await.is_err());
    assert_eq!(kv.applied_index().await.unwrap(), 1);
    let reader = kv.reader();
    assert_eq!(reader.len(), 1);
    assert_eq!(reader.get("a"), Some((Bytes::from_static(b"1"), 1)));
    assert!(kv.apply(&[]).await.unwrap().is_empty());
}

/// An entry that is not a command (the 8 bytes a load test might send) is
/// skipped with a reason a caller can match on and print, and the next
/// valid command still applies.
#[tokio::test]
async fn mem_kv_names_why_it_skipped_an_invalid_command() {
    let mut kv = MemKv::new();
    let reader = kv.reader();
    let entries = vec![
        Entry {
            term: 1,
            index: 1,
            payload: EntryPayload::Normal(Bytes::from_static(&[7u8; 8])),
        },
        Entry {
            term: 1,
            index: 2,
            payload: EntryPayload::Normal(Bytes::from_static(&[TAG_DELETE, 1, 0, 0, 0, 0xff])),
        },
        Entry {
            term: 1,
            index: 3,
            payload: EntryPayload::Normal(
                KvCommand::Put {
                    key: "k".to_owned(),
                    value: Bytes::from_static(b"v"),
                }
                .encode(),
            ),
        },
    ];
    let responses = kv.apply(&entries).await.unwrap();
    assert_eq!(responses[0], KvResponse::Invalid(KvInvalid::UnknownTag(7)));
    assert_eq!(
        responses[1],
        KvResponse::Invalid(KvInvalid::KeyNotUtf8 { valid_up_to: 0 })
    );
    let KvResponse::Invalid(reason) = &responses[0] else {
        unreachable!()
    };
    assert_eq!(reason.to_string(), "kv command: unknown tag 7");
    assert_eq!(responses[2], KvResponse::Written { revision: 3 });
    assert_eq!(reader.get("k"), Some((Bytes::from_static(b"v"), 3)));
    assert_eq!(reader.applied_index(), 3);
}

/// Writing a key again replaces its value and revision, whatever the
/// command that wrote it before.
#[tokio::test]
async fn mem_kv_overwrites_a_key_with_the_latest_value() {
    let mut kv = MemKv::new();
    let reader = kv.reader();
    let put = |index, value: &'static [u8]| Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(
            KvCommand::Put {
                key: "k".to_owned(),
                value: Bytes::from_static(value),
            }
            .encode(),
        ),
    };
    kv.apply(&[put(1, b"one"), put(2, b"two")]).await.unwrap();
    assert_eq!(reader.get("k"), Some((Bytes::from_static(b"two"), 2)));
    assert_eq!(reader.len(), 1);
}

/// The reader's dump and a snapshot list the keys in key order, whatever
/// order they were written in, so equal states give equal snapshots.
#[tokio::test]
async fn mem_kv_dumps_and_snapshots_keys_in_order() {
    let put = |index, key: &str| Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(
            KvCommand::Put {
                key: key.to_owned(),
                value: Bytes::from_static(b"v"),
            }
            .encode(),
        ),
    };
    let mut one = MemKv::new();
    one.apply(&[put(1, "b"), put(2, "a"), put(3, "c")])
        .await
        .unwrap();
    let keys: Vec<String> = one.reader().dump().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    let meta = SnapshotMeta {
        last_log_id: LogId { term: 1, index: 3 },
        membership: membership(&[1]),
    };
    let a = one.build_snapshot(&meta).await.unwrap();
    let mut reopened = MemKv::new();
    reopened.install_snapshot(&meta, a.clone()).await.unwrap();
    assert_eq!(reopened.reader().dump(), one.reader().dump());
    let again = reopened.build_snapshot(&meta).await.unwrap();
    let all = |d| async move { crate::snapshot::read_all(d, 1 << 20).await.unwrap() };
    assert_eq!(all(a.as_ref()).await, all(again.as_ref()).await);
}

/// A put or compare-and-set whose key is not UTF-8 writes nothing and says
/// why, like a delete of such a key.
#[tokio::test]
async fn mem_kv_writes_no_key_that_is_not_utf8() {
    let mut kv = MemKv::new();
    let reader = kv.reader();
    let bad_put = [TAG_PUT, 1, 0, 0, 0, 0xff, 1, 0, 0, 0, b'v'];
    let bad_cas = [TAG_CAS, 1, 0, 0, 0, 0xfe, 0, 1, 0, 0, 0, b'v'];
    let entries: Vec<Entry> = [&bad_put[..], &bad_cas[..]]
        .iter()
        .enumerate()
        .map(|(i, p)| Entry {
            term: 1,
            index: i as Index + 1,
            payload: EntryPayload::Normal(Bytes::copy_from_slice(p)),
        })
        .collect();
    let responses = kv.apply(&entries).await.unwrap();
    let not_utf8 = KvResponse::Invalid(KvInvalid::KeyNotUtf8 { valid_up_to: 0 });
    assert_eq!(responses, vec![not_utf8.clone(), not_utf8]);
    assert!(reader.is_empty());
    assert!(KvCommand::decode(&bad_put).is_err());
}

/// MemKv holds copies of the keys and values it applies, never parts of
/// the entries' payloads: a payload may be a slice of a much larger buffer
/// (a transport's frame of many entries), which a key or value written
/// once would otherwise keep in memory, whole, for as long as it lives.
#[tokio::test]
async fn mem_kv_keeps_no_part_of_the_buffers_its_entries_came_in() {
    use bytes::{BufMut, BytesMut};
    let put = put("k", b"v").encode();
    let cas = KvCommand::CompareAndSet {
        key: "c".to_owned(),
        expected: None,
        value: Bytes::from_static(b"w"),
    }
    .encode();
    let mut frame = BytesMut::new();
    frame.put_slice(&put);
    frame.put_slice(&cas);
    frame.put_bytes(0, 1 << 20);
    let frame = frame.freeze();
    let entry = |index, payload| Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(payload),
    };
    let entries = vec![
        entry(1, frame.slice(..put.len())),
        entry(2, frame.slice(put.len()..put.len() + cas.len())),
    ];
    let mut kv = MemKv::new();
    let reader = kv.reader();
    kv.apply(&entries).await.unwrap();
    drop(entries);
    assert_eq!(reader.get("k"), Some((Bytes::from_static(b"v"), 1)));
    assert_eq!(reader.get("c"), Some((Bytes::from_static(b"w"), 2)));
    assert!(
        frame.is_unique(),
        "MemKv keeps the 1 MiB buffer its 2 small entries came in"
    );
}

/// A value read before its key is written again keeps what it read, and
/// the key then holds the new value, whether it is as long as the old one,
/// much longer or much shorter (MemKv writes over its own copy of a value
/// in place when it fits).
#[tokio::test]
async fn mem_kv_overwrites_leave_values_already_read_as_they_were() {
    let mut kv = MemKv::new();
    let reader = kv.reader();
    let put = |index, value: Vec<u8>| Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(
            KvCommand::Put {
                key: "k".to_owned(),
                value: Bytes::from(value),
            }
            .encode(),
        ),
    };
    kv.apply(&[put(1, b"one".to_vec())]).await.unwrap();
    let first = reader.get("k");
    let values = [
        b"two".to_vec(),
        vec![7; 4096],
        b"x".to_vec(),
        b"end".to_vec(),
    ];
    let mut read = Vec::new();
    for (i, v) in values.iter().enumerate() {
        kv.apply(&[put(i as Index + 2, v.clone())]).await.unwrap();
        read.push(reader.get("k"));
    }
    assert_eq!(first, Some((Bytes::from_static(b"one"), 1)));
    let expected: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Some((Bytes::from(v.clone()), i as Index + 2)))
        .collect();
    assert_eq!(read, expected);
}
