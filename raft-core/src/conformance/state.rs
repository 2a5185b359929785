//! Checks of the hard state, batched writes, membership tracking, large
//! payloads and the protection of committed entries.

use bytes::Bytes;

use super::support::*;
use crate::membership::Membership;
use crate::storage::{LogStorage, LogWrite, StorageError};
use crate::types::{Entry, EntryPayload, HardState, Index};

/// The hard state round-trips through `save_hard_state`, and a later save
/// overwrites an earlier one (twice), independently of the log.
pub async fn check_hard_state_round_trip<S: LogStorage>(store: &S) {
    const CHECK: &str = "hard_state_round_trip";
    expect_empty(CHECK, store).await;
    ok(CHECK, "append 1..=3", store.append(terms(1..=3, 1)).await);
    let states = [
        HardState {
            term: 1,
            vote: Some(2),
            commit: 0,
        },
        HardState {
            term: 3,
            vote: None,
            commit: 2,
        },
        HardState {
            term: u64::MAX,
            vote: Some(u64::MAX),
            commit: 3,
        },
    ];
    for hs in states {
        ok(CHECK, "save_hard_state", store.save_hard_state(hs).await);
        let state = ok(CHECK, "stored_state", store.stored_state().await);
        assert_eq!(
            state.hard_state, hs,
            "{CHECK}: stored_state returns the last saved hard state"
        );
    }
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 3))).await;
}

/// `write(LogWrite)` saves the hard state, truncates and appends together,
/// and applies partial writes (any field absent) and empty ones correctly.
pub async fn check_write_batch<S: LogStorage>(store: &S) {
    const CHECK: &str = "write_batch";
    expect_empty(CHECK, store).await;
    let hs1 = HardState {
        term: 1,
        vote: Some(1),
        commit: 0,
    };
    let write = LogWrite {
        hard_state: Some(hs1),
        truncate_from: None,
        entries: terms(1..=5, 1),
    };
    ok(
        CHECK,
        "write hard state + append 1..=5",
        store.write(write).await,
    );
    assert_hard_state(CHECK, store, hs1).await;
    assert_entries(CHECK, store, 1, 6, &terms(1..=5, 1)).await;

    let hs2 = HardState {
        term: 2,
        vote: Some(3),
        commit: 2,
    };
    let write = LogWrite {
        hard_state: Some(hs2),
        truncate_from: Some(4),
        entries: terms(4..=6, 2),
    };
    ok(
        CHECK,
        "write hard state + truncate(4) + append 4..=6",
        store.write(write).await,
    );
    assert_hard_state(CHECK, store, hs2).await;
    assert_log_ids(CHECK, store, Some((1, 1)), Some((2, 6))).await;
    assert_entries(
        CHECK,
        store,
        1,
        7,
        &[terms(1..=3, 1), terms(4..=6, 2)].concat(),
    )
    .await;

    let write = LogWrite {
        hard_state: None,
        truncate_from: Some(3),
        entries: terms(3..=4, 3),
    };
    ok(
        CHECK,
        "write truncate(3) + append 3..=4",
        store.write(write).await,
    );
    assert_hard_state(CHECK, store, hs2).await;
    let expected = [terms(1..=2, 1), terms(3..=4, 3)].concat();
    assert_entries(CHECK, store, 1, 5, &expected).await;

    let hs3 = HardState {
        term: 4,
        vote: None,
        commit: 3,
    };
    let write = LogWrite {
        hard_state: Some(hs3),
        ..LogWrite::default()
    };
    ok(CHECK, "write hard state only", store.write(write).await);
    assert_hard_state(CHECK, store, hs3).await;
    assert_entries(CHECK, store, 1, 5, &expected).await;

    let write = LogWrite {
        truncate_from: Some(4),
        ..LogWrite::default()
    };
    ok(CHECK, "write truncate(4) only", store.write(write).await);
    assert_log_ids(CHECK, store, Some((1, 1)), Some((3, 3))).await;

    ok(CHECK, "empty write", store.write(LogWrite::default()).await);
    assert_hard_state(CHECK, store, hs3).await;
    assert_entries(CHECK, store, 1, 4, &expected[..3]).await;
}

/// `stored_state` reports the latest membership entry in the log, and falls
/// back to the previous one (or `None`) when truncation or an overwriting
/// append removes it.
pub async fn check_membership_tracking<S: LogStorage>(store: &S) {
    const CHECK: &str = "membership_tracking";
    expect_empty(CHECK, store).await;
    let m1 = Membership::new([1]);
    let m2 = Membership::with_learners([1, 2, 3], [4]);
    let m3 = Membership::joint([1, 2, 3], [2, 3, 4], []);
    let log = vec![
        Entry {
            term: 1,
            index: 1,
            payload: EntryPayload::Blank,
        },
        Entry {
            term: 1,
            index: 2,
            payload: EntryPayload::Membership(Box::new(m1.clone())),
        },
        entry(1, 3),
        Entry {
            term: 2,
            index: 4,
            payload: EntryPayload::Membership(Box::new(m2.clone())),
        },
        entry(2, 5),
    ];
    ok(CHECK, "append 1..=5", store.append(log[..3].to_vec()).await);
    assert_membership(CHECK, store, Some((2, &m1)), "after appending m1 at 2").await;
    ok(CHECK, "append 4..=5", store.append(log[3..].to_vec()).await);
    assert_membership(CHECK, store, Some((4, &m2)), "after appending m2 at 4").await;
    assert_entries(CHECK, store, 1, 6, &log).await;

    ok(CHECK, "truncate(4)", store.truncate(4).await);
    assert_membership(CHECK, store, Some((2, &m1)), "after truncating m2 away").await;

    let m3_entry = Entry {
        term: 3,
        index: 4,
        payload: EntryPayload::Membership(Box::new(m3.clone())),
    };
    ok(CHECK, "append m3 at 4", store.append(vec![m3_entry]).await);
    assert_membership(CHECK, store, Some((4, &m3)), "after appending m3 at 4").await;
    ok(
        CHECK,
        "append 4@4 over m3",
        store.append(entries([(4, 4)])).await,
    );
    assert_membership(
        CHECK,
        store,
        Some((2, &m1)),
        "after overwriting m3 with a normal entry",
    )
    .await;

    ok(CHECK, "truncate(2)", store.truncate(2).await);
    assert_membership(
        CHECK,
        store,
        None,
        "after truncating every membership entry away",
    )
    .await;
}

/// Large and unusual payloads round-trip byte-exact: empty, 1 MiB, sizes
/// around a power of two, and every byte value.
pub async fn check_large_payloads<S: LogStorage>(store: &S) {
    const CHECK: &str = "large_payloads";
    expect_empty(CHECK, store).await;
    let sizes = [0usize, 1 << 20, (1 << 16) + 1, 1 << 16, 255, 3 << 20];
    let log: Vec<Entry> = sizes
        .iter()
        .zip(1..)
        .map(|(&size, index)| {
            // A pattern that differs per entry and covers every byte value, so
            // that a swapped, shifted or re-encoded payload cannot compare equal.
            let data: Vec<u8> = (0..size)
                .map(|i| (i as u64 * 31 + index * 7) as u8)
                .collect();
            Entry {
                term: index,
                index,
                payload: EntryPayload::Normal(Bytes::from(data)),
            }
        })
        .collect();
    ok(
        CHECK,
        "append large entries",
        store.append(log.clone()).await,
    );
    let end = log.len() as Index + 1;
    assert_entries(CHECK, store, 1, end, &log).await;
    for expected in &log {
        let got = ok(
            CHECK,
            "entries",
            store.entries(expected.index, end, 0).await,
        );
        assert_eq!(
            got.first(),
            Some(expected),
            "{CHECK}: entry {} ({} bytes) reads back byte-exact",
            expected.index,
            expected.payload.size_bytes()
        );
    }
}

/// Entries at or below the saved commit index are never removed: a
/// truncation or an overlapping append that would is `Invalid` and changes
/// nothing (Raft's Leader Completeness: a committed entry is never undone).
pub async fn check_committed_entries_are_protected<S: LogStorage>(store: &S) {
    const CHECK: &str = "committed_entries_are_protected";
    expect_empty(CHECK, store).await;
    let hs = HardState {
        term: 1,
        vote: None,
        commit: 3,
    };
    let write = LogWrite {
        hard_state: Some(hs),
        truncate_from: None,
        entries: terms(1..=5, 1),
    };
    ok(CHECK, "write 1..=5 with commit 3", store.write(write).await);
    let err = store.truncate(3).await;
    assert!(
        matches!(err, Err(StorageError::Invalid(_))),
        "{CHECK}: truncate(3) with commit 3 must be Invalid, got {err:?}"
    );
    let err = store.append(terms(2..=2, 2)).await;
    assert!(
        matches!(err, Err(StorageError::Invalid(_))),
        "{CHECK}: append at 2 with commit 3 must be Invalid, got {err:?}"
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 5))).await;
    ok(
        CHECK,
        "truncate(4) above the commit index",
        store.truncate(4).await,
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 3))).await;
    // A follower's write replaces an uncommitted suffix and, in the same
    // write, saves a commit index covering the new entries: the previous
    // commit index is what protects entries.
    let hs = HardState {
        term: 2,
        vote: None,
        commit: 5,
    };
    let write = LogWrite {
        hard_state: Some(hs),
        truncate_from: Some(4),
        entries: terms(4..=5, 2),
    };
    ok(
        CHECK,
        "write commit 5 + truncate(4) + append 4..=5",
        store.write(write).await,
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((2, 5))).await;
    assert_hard_state(CHECK, store, hs).await;
}
