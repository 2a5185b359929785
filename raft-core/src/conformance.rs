//! The `LogStorage` conformance suite: checks any [`LogStorage`]
//! implementation against the contract documented on the trait.
//!
//! [`run_all`] runs every check, each on a fresh store from a factory; each
//! `check_*` function runs one check on a store it is given, which must be new
//! and empty. A failing check panics with a message that starts with the
//! check's name and states the expectation, so the suite is meant to be
//! called from tests.
//!
//! The checks cover what can be observed through one open store; durability
//! across a crash and reopen is the implementation's own test to write.
//!
//! # Example
//!
//! Run the whole suite against [`MemLog`](crate::memory::MemLog) (a
//! persistent store would open a new one in a temporary directory per call of
//! the factory):
//!
//! ```
//! use raft_core::conformance;
//! use raft_core::memory::MemLog;
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! runtime.block_on(async {
//!     conformance::run_all(|| async { MemLog::new() }).await;
//!
//!     // Or one check at a time:
//!     conformance::check_truncate(&MemLog::new()).await;
//! });
//! ```
//!
//! In a test, with tokio's `macros` feature:
//!
//! ```ignore
//! #[tokio::test]
//! async fn rocks_log_conforms() {
//!     raft_core::conformance::run_all(|| async { open_in_temp_dir().await }).await;
//! }
//! ```

use std::fmt::Debug;
use std::future::Future;

use bytes::Bytes;

use crate::membership::Membership;
use crate::storage::{LogStorage, LogWrite, StorageError, StoredState};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, SnapshotMeta, Term};

/// Runs every check of the suite, each on a new store made by `factory`.
///
/// # Panics
///
/// On the first failing check, with a message naming it and what it expected.
pub async fn run_all<S, F, Fut>(mut factory: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: LogStorage,
{
    check_new_store_is_empty(&factory().await).await;
    check_append_and_read_back(&factory().await).await;
    check_stored_state_reports_log_ids(&factory().await).await;
    check_append_with_gap_is_invalid(&factory().await).await;
    check_append_non_consecutive_is_invalid(&factory().await).await;
    check_append_overlapping_replaces_suffix(&factory().await).await;
    check_truncate(&factory().await).await;
    check_purge(&factory().await).await;
    check_entries_max_bytes(&factory().await).await;
    check_entries_bounds(&factory().await).await;
    check_hard_state_round_trip(&factory().await).await;
    check_write_batch(&factory().await).await;
    check_membership_tracking(&factory().await).await;
    check_large_payloads(&factory().await).await;
    check_committed_entries_are_protected(&factory().await).await;
    check_save_snapshot(&factory().await).await;
    check_install_snapshot(&factory().await).await;
}

/// A new store is empty: zero hard state, no snapshot, no entries, no
/// membership; the empty range `[1, 1)` reads as nothing and `[1, 2)` is
/// [`StorageError::Invalid`].
pub async fn check_new_store_is_empty<S: LogStorage>(store: &S) {
    const CHECK: &str = "new_store_is_empty";
    let state = ok(CHECK, "stored_state", store.stored_state().await);
    assert_eq!(
        state,
        StoredState::default(),
        "{CHECK}: a new store reports the default state"
    );
    let read = ok(CHECK, "entries(1, 1)", store.entries(1, 1, u64::MAX).await);
    assert!(
        read.is_empty(),
        "{CHECK}: entries(1, 1) is empty, got {read:?}"
    );
    expect_invalid(
        CHECK,
        "entries(1, 2) on an empty log",
        store.entries(1, 2, u64::MAX).await,
    );
}

/// Entries appended in two batches read back equal, whole and as sub-ranges.
pub async fn check_append_and_read_back<S: LogStorage>(store: &S) {
    const CHECK: &str = "append_and_read_back";
    expect_empty(CHECK, store).await;
    let all = entries([(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
    ok(CHECK, "append 1..=3", store.append(all[..3].to_vec()).await);
    ok(CHECK, "append 4..=5", store.append(all[3..].to_vec()).await);
    assert_entries(CHECK, store, 1, 6, &all).await;
    assert_entries(CHECK, store, 2, 4, &all[1..3]).await;
    assert_entries(CHECK, store, 5, 6, &all[4..]).await;
}

/// `stored_state` reports the first and last log ids after appends, and
/// leaves the hard state alone.
pub async fn check_stored_state_reports_log_ids<S: LogStorage>(store: &S) {
    const CHECK: &str = "stored_state_reports_log_ids";
    expect_empty(CHECK, store).await;
    ok(
        CHECK,
        "append 1..=3",
        store.append(entries([(1, 1), (1, 2), (1, 3)])).await,
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 3))).await;
    ok(CHECK, "append 4@2", store.append(entries([(2, 4)])).await);
    assert_log_ids(CHECK, store, Some((1, 1)), Some((2, 4))).await;
    let state = ok(CHECK, "stored_state", store.stored_state().await);
    assert_eq!(
        state.hard_state,
        HardState::default(),
        "{CHECK}: appends do not touch hard state"
    );
}

/// An append that leaves a gap after the last entry is
/// [`StorageError::Invalid`] and writes nothing, on an empty log and on a
/// non-empty one.
pub async fn check_append_with_gap_is_invalid<S: LogStorage>(store: &S) {
    const CHECK: &str = "append_with_gap_is_invalid";
    expect_empty(CHECK, store).await;
    expect_invalid(
        CHECK,
        "append at 2 on an empty log",
        store.append(entries([(1, 2)])).await,
    );
    let state = ok(CHECK, "stored_state", store.stored_state().await);
    assert_eq!(
        state,
        StoredState::default(),
        "{CHECK}: the rejected append wrote nothing"
    );

    let base = entries([(1, 1), (1, 2), (1, 3)]);
    ok(CHECK, "append 1..=3", store.append(base.clone()).await);
    expect_invalid(
        CHECK,
        "append 5..=6 after 3",
        store.append(entries([(1, 5), (1, 6)])).await,
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 3))).await;
    assert_entries(CHECK, store, 1, 4, &base).await;
}

/// An append whose entries are not consecutive (a hole, a repeat, a step
/// back) is [`StorageError::Invalid`] and writes nothing.
pub async fn check_append_non_consecutive_is_invalid<S: LogStorage>(store: &S) {
    const CHECK: &str = "append_non_consecutive_is_invalid";
    expect_empty(CHECK, store).await;
    expect_invalid(
        CHECK,
        "append [1, 2, 4]",
        store.append(entries([(1, 1), (1, 2), (1, 4)])).await,
    );
    expect_invalid(
        CHECK,
        "append [1, 1]",
        store.append(entries([(1, 1), (1, 1)])).await,
    );
    let state = ok(CHECK, "stored_state", store.stored_state().await);
    assert_eq!(
        state,
        StoredState::default(),
        "{CHECK}: the rejected appends wrote nothing"
    );

    let base = entries([(1, 1), (1, 2)]);
    ok(CHECK, "append 1..=2", store.append(base.clone()).await);
    expect_invalid(
        CHECK,
        "append [3, 5]",
        store.append(entries([(1, 3), (1, 5)])).await,
    );
    expect_invalid(
        CHECK,
        "append [3, 2]",
        store.append(entries([(1, 3), (1, 2)])).await,
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 2))).await;
    assert_entries(CHECK, store, 1, 3, &base).await;
}

/// An append that starts inside the log replaces every entry at or above its
/// first index: the conflicting entries are overwritten and those past the
/// new end are gone (paper §5.3).
pub async fn check_append_overlapping_replaces_suffix<S: LogStorage>(store: &S) {
    const CHECK: &str = "append_overlapping_replaces_suffix";
    expect_empty(CHECK, store).await;
    ok(
        CHECK,
        "append 1..=5 in term 1",
        store.append(terms(1..=5, 1)).await,
    );
    ok(
        CHECK,
        "append 3..=4 in term 2",
        store.append(terms(3..=4, 2)).await,
    );
    let expected = entries([(1, 1), (1, 2), (2, 3), (2, 4)]);
    assert_log_ids(CHECK, store, Some((1, 1)), Some((2, 4))).await;
    assert_entries(CHECK, store, 1, 5, &expected).await;
    expect_invalid(
        CHECK,
        "entries(1, 6) after the tail was replaced",
        store.entries(1, 6, u64::MAX).await,
    );

    // The contract replaces the suffix even when the new entries match it.
    ok(
        CHECK,
        "re-append 2@1",
        store.append(entries([(1, 2)])).await,
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 2))).await;
    assert_entries(CHECK, store, 1, 3, &expected[..2]).await;

    // Replacing from the very first entry.
    ok(
        CHECK,
        "append 1..=3 in term 3",
        store.append(terms(1..=3, 3)).await,
    );
    assert_log_ids(CHECK, store, Some((3, 1)), Some((3, 3))).await;
    assert_entries(CHECK, store, 1, 4, &terms(1..=3, 3)).await;
}

/// `truncate(from)` removes every entry at or above `from`; from past the
/// end is a no-op; truncating from the first entry empties the log, which
/// then accepts an append at the same index again.
pub async fn check_truncate<S: LogStorage>(store: &S) {
    const CHECK: &str = "truncate";
    expect_empty(CHECK, store).await;
    let all = terms(1..=5, 1);
    ok(CHECK, "append 1..=5", store.append(all.clone()).await);
    ok(CHECK, "truncate(4)", store.truncate(4).await);
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 3))).await;
    assert_entries(CHECK, store, 1, 4, &all[..3]).await;
    expect_invalid(
        CHECK,
        "entries(1, 5) after truncate(4)",
        store.entries(1, 5, u64::MAX).await,
    );

    ok(CHECK, "truncate(4) at last + 1", store.truncate(4).await);
    ok(CHECK, "truncate(10) past the end", store.truncate(10).await);
    assert_log_ids(CHECK, store, Some((1, 1)), Some((1, 3))).await;
    assert_entries(CHECK, store, 1, 4, &all[..3]).await;

    ok(
        CHECK,
        "append 4@2 after the truncation",
        store.append(entries([(2, 4)])).await,
    );
    assert_log_ids(CHECK, store, Some((1, 1)), Some((2, 4))).await;

    ok(CHECK, "truncate(1)", store.truncate(1).await);
    assert_log_ids(CHECK, store, None, None).await;
    ok(
        CHECK,
        "append 1..=2 after truncate(1)",
        store.append(terms(1..=2, 3)).await,
    );
    assert_log_ids(CHECK, store, Some((3, 1)), Some((3, 2))).await;
    assert_entries(CHECK, store, 1, 3, &terms(1..=2, 3)).await;
}

/// `purge(up_to)` removes the prefix: the first log id moves, reads below it
/// are [`StorageError::Compacted`] naming the new first index, a truncate
/// into the purged prefix is [`StorageError::Invalid`], a purge below the
/// first entry is a no-op, appends continue after the last entry, and a purge
/// past the end empties the log.
pub async fn check_purge<S: LogStorage>(store: &S) {
    const CHECK: &str = "purge";
    expect_empty(CHECK, store).await;
    let all = entries([(1, 1), (1, 2), (2, 3), (2, 4), (3, 5)]);
    ok(CHECK, "append 1..=5", store.append(all.clone()).await);
    ok(CHECK, "purge(2)", store.purge(2).await);
    assert_log_ids(CHECK, store, Some((2, 3)), Some((3, 5))).await;
    assert_entries(CHECK, store, 3, 6, &all[2..]).await;
    for start in [1, 2] {
        match store.entries(start, 6, u64::MAX).await {
            Err(StorageError::Compacted { first_index }) => assert_eq!(
                first_index, 3,
                "{CHECK}: entries({start}, 6) after purge(2) reports first index 3"
            ),
            other => panic!(
                "{CHECK}: entries({start}, 6) after purge(2) is Compacted {{ first_index: 3 }}, \
                 got {other:?}"
            ),
        }
    }
    expect_invalid(
        CHECK,
        "truncate(2) into the purged prefix",
        store.truncate(2).await,
    );
    expect_invalid(
        CHECK,
        "truncate(1) into the purged prefix",
        store.truncate(1).await,
    );
    assert_log_ids(CHECK, store, Some((2, 3)), Some((3, 5))).await;

    ok(
        CHECK,
        "purge(1) below the first entry",
        store.purge(1).await,
    );
    assert_log_ids(CHECK, store, Some((2, 3)), Some((3, 5))).await;

    let next = entries([(3, 6)]);
    ok(
        CHECK,
        "append 6 after the purge",
        store.append(next.clone()).await,
    );
    assert_log_ids(CHECK, store, Some((2, 3)), Some((3, 6))).await;
    assert_entries(CHECK, store, 6, 7, &next).await;

    ok(CHECK, "purge(5)", store.purge(5).await);
    assert_log_ids(CHECK, store, Some((3, 6)), Some((3, 6))).await;

    ok(CHECK, "purge(10) past the end", store.purge(10).await);
    assert_log_ids(CHECK, store, None, None).await;
    match store.entries(6, 7, u64::MAX).await {
        Err(StorageError::Compacted { .. }) => {}
        other => {
            panic!("{CHECK}: entries(6, 7) after purging everything is Compacted, got {other:?}")
        }
    }
}

/// `entries` stops at the byte budget: it returns the longest prefix of the
/// range whose [`Entry::size_bytes`] total fits in `max_bytes`, but always at
/// least one entry, however large.
pub async fn check_entries_max_bytes<S: LogStorage>(store: &S) {
    const CHECK: &str = "entries_max_bytes";
    expect_empty(CHECK, store).await;
    let all: Vec<Entry> = (1..=5)
        .map(|index| Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(Bytes::from(vec![index as u8; 100])),
        })
        .collect();
    let size = all[0].size_bytes();
    ok(
        CHECK,
        "append 5 entries of equal size",
        store.append(all.clone()).await,
    );

    let cases: [(Index, u64, usize); 8] = [
        (1, 0, 1),
        (1, 1, 1),
        (1, size, 1),
        (1, 2 * size - 1, 1),
        (1, 2 * size, 2),
        (2, 3 * size, 3),
        (1, 5 * size, 5),
        (1, u64::MAX, 5),
    ];
    for (start, max_bytes, count) in cases {
        let got = ok(CHECK, "entries", store.entries(start, 6, max_bytes).await);
        let from = (start - 1) as usize;
        assert_eq!(
            got,
            all[from..from + count],
            "{CHECK}: entries({start}, 6, max_bytes = {max_bytes}) with {size}-byte entries \
             returns {count} entries"
        );
    }

    // The budget never cuts below one entry, even one larger than the budget.
    ok(CHECK, "truncate(1)", store.truncate(1).await);
    let big = Entry {
        term: 2,
        index: 1,
        payload: EntryPayload::Normal(Bytes::from(vec![7; 4096])),
    };
    let small = entries([(2, 2)]);
    ok(
        CHECK,
        "append a big then a small entry",
        store.append([vec![big.clone()], small].concat()).await,
    );
    let got = ok(CHECK, "entries", store.entries(1, 3, 10).await);
    assert_eq!(
        got,
        [big],
        "{CHECK}: an entry larger than max_bytes is still returned, alone"
    );
}

/// `entries` respects its end bound: `[start, end)` excludes `end`, an empty
/// range up to `last + 1` is `Ok` and empty, and any `end` past `last + 1` is
/// [`StorageError::Invalid`].
pub async fn check_entries_bounds<S: LogStorage>(store: &S) {
    const CHECK: &str = "entries_bounds";
    expect_empty(CHECK, store).await;
    let all = terms(1..=3, 1);
    ok(CHECK, "append 1..=3", store.append(all.clone()).await);
    assert_entries(CHECK, store, 1, 3, &all[..2]).await;
    assert_entries(CHECK, store, 2, 3, &all[1..2]).await;
    assert_entries(CHECK, store, 2, 2, &[]).await;
    assert_entries(CHECK, store, 4, 4, &[]).await;
    expect_invalid(
        CHECK,
        "entries(1, 5) with last index 3",
        store.entries(1, 5, u64::MAX).await,
    );
    expect_invalid(
        CHECK,
        "entries(4, 5) with last index 3",
        store.entries(4, 5, u64::MAX).await,
    );
    expect_invalid(
        CHECK,
        "entries(3, 100) with last index 3",
        store.entries(3, 100, u64::MAX).await,
    );
}

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

/// A normal entry whose payload names its term and index, so that entries of
/// different terms at one index never compare equal.
fn entry(term: Term, index: Index) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(format!("entry {index}@{term}"))),
    }
}

/// Normal entries from `(term, index)` pairs.
fn entries<const N: usize>(ids: [(Term, Index); N]) -> Vec<Entry> {
    ids.into_iter()
        .map(|(term, index)| entry(term, index))
        .collect()
}

/// Normal entries at `indexes`, all in `term`.
fn terms(indexes: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    indexes.map(|index| entry(term, index)).collect()
}

/// Unwraps `result`, panicking with the check's name and the operation.
#[track_caller]
fn ok<T>(check: &str, what: &str, result: Result<T, StorageError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{check}: {what} succeeds, got error: {e}"),
    }
}

/// Asserts that `result` is [`StorageError::Invalid`].
#[track_caller]
fn expect_invalid<T: Debug>(check: &str, what: &str, result: Result<T, StorageError>) {
    match result {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{check}: {what} is StorageError::Invalid, got {other:?}"),
    }
}

/// `save_snapshot` records the snapshot and purges up to the given index
/// (which may be below the snapshot's, keeping entries); `stored_state`
/// reports both; the kept entries still read back; purging past the
/// snapshot's index is `Invalid`.
pub async fn check_save_snapshot<S: LogStorage>(store: &S) {
    const CHECK: &str = "save_snapshot";
    expect_empty(CHECK, store).await;
    let mut all = terms(1..=5, 1);
    all.extend(terms(6..=10, 2));
    ok(CHECK, "append 1..=10", store.append(all.clone()).await);
    let meta = SnapshotMeta {
        last_log_id: LogId::new(2, 8),
        membership: Membership::new([1, 2, 3]),
    };
    ok(
        CHECK,
        "save_snapshot at 8, purge to 6",
        store.save_snapshot(meta.clone(), 6).await,
    );
    let state = ok(CHECK, "stored_state", store.stored_state().await);
    assert_eq!(
        state.snapshot,
        Some(meta.clone()),
        "{CHECK}: the snapshot is recorded"
    );
    assert_eq!(
        state.purged,
        LogId::new(2, 6),
        "{CHECK}: the purge point with its term"
    );
    assert_log_ids(CHECK, store, Some((2, 7)), Some((2, 10))).await;
    assert_entries(CHECK, store, 7, 11, &all[6..]).await;
    let bad = SnapshotMeta {
        last_log_id: LogId::new(2, 9),
        membership: Membership::new([1]),
    };
    expect_invalid(
        CHECK,
        "purge past the snapshot",
        store.save_snapshot(bad, 10).await,
    );
    let state = ok(CHECK, "stored_state", store.stored_state().await);
    assert_eq!(
        state.snapshot,
        Some(meta),
        "{CHECK}: a refused save changes nothing"
    );
}

/// `install_snapshot` replaces the whole log, committed entries included:
/// afterwards the log is empty, the purge point is the snapshot's last
/// entry, the commit index is at least it, and appends resume right after.
pub async fn check_install_snapshot<S: LogStorage>(store: &S) {
    const CHECK: &str = "install_snapshot";
    expect_empty(CHECK, store).await;
    let hs = HardState {
        term: 3,
        vote: Some(1),
        commit: 4,
    };
    ok(CHECK, "save_hard_state", store.save_hard_state(hs).await);
    ok(CHECK, "append 1..=6", store.append(terms(1..=6, 1)).await);
    let meta = SnapshotMeta {
        last_log_id: LogId::new(3, 20),
        membership: Membership::with_learners([1, 2, 3], [4]),
    };
    ok(
        CHECK,
        "install_snapshot at 20@3",
        store.install_snapshot(meta.clone()).await,
    );
    let state = ok(CHECK, "stored_state", store.stored_state().await);
    assert_eq!(
        state.snapshot,
        Some(meta),
        "{CHECK}: the snapshot is recorded"
    );
    assert_eq!(
        state.purged,
        LogId::new(3, 20),
        "{CHECK}: purged to the snapshot"
    );
    assert_eq!(state.first_log_id, None, "{CHECK}: no entry is left");
    assert_eq!(state.last_log_id, None, "{CHECK}: no entry is left");
    assert_eq!(state.hard_state.term, 3, "{CHECK}: the term is kept");
    assert_eq!(state.hard_state.vote, Some(1), "{CHECK}: the vote is kept");
    assert!(
        state.hard_state.commit >= 20,
        "{CHECK}: the commit index covers the snapshot, got {}",
        state.hard_state.commit
    );
    expect_invalid(
        CHECK,
        "append below the snapshot",
        store.append(entries([(3, 20)])).await,
    );
    ok(CHECK, "append 21", store.append(entries([(3, 21)])).await);
    assert_log_ids(CHECK, store, Some((3, 21)), Some((3, 21))).await;
}

/// Asserts the precondition of every check: the store it was given is new.
async fn expect_empty<S: LogStorage>(check: &str, store: &S) {
    let state = ok(check, "stored_state", store.stored_state().await);
    assert_eq!(
        state,
        StoredState::default(),
        "{check}: the check is given a new, empty store"
    );
}

/// Asserts that `entries(start, end, u64::MAX)` returns `expected`.
async fn assert_entries<S: LogStorage>(
    check: &str,
    store: &S,
    start: Index,
    end: Index,
    expected: &[Entry],
) {
    let what = format!("entries({start}, {end})");
    let got = ok(check, &what, store.entries(start, end, u64::MAX).await);
    assert_eq!(
        got, expected,
        "{check}: {what} returns the entries written there"
    );
}

/// Asserts the first and last log ids, given as `(term, index)`.
async fn assert_log_ids<S: LogStorage>(
    check: &str,
    store: &S,
    first: Option<(Term, Index)>,
    last: Option<(Term, Index)>,
) {
    let state = ok(check, "stored_state", store.stored_state().await);
    let id = |pair: Option<(Term, Index)>| pair.map(|(term, index)| LogId::new(term, index));
    assert_eq!(
        state.first_log_id,
        id(first),
        "{check}: stored_state.first_log_id"
    );
    assert_eq!(
        state.last_log_id,
        id(last),
        "{check}: stored_state.last_log_id"
    );
}

/// Asserts the hard state `stored_state` reports.
async fn assert_hard_state<S: LogStorage>(check: &str, store: &S, expected: HardState) {
    let state = ok(check, "stored_state", store.stored_state().await);
    assert_eq!(
        state.hard_state, expected,
        "{check}: stored_state.hard_state"
    );
}

/// Asserts the membership `stored_state` reports.
async fn assert_membership<S: LogStorage>(
    check: &str,
    store: &S,
    expected: Option<(Index, &Membership)>,
    when: &str,
) {
    let state = ok(check, "stored_state", store.stored_state().await);
    let got = state.membership.as_ref().map(|(index, m)| (*index, m));
    assert_eq!(got, expected, "{check}: stored_state.membership {when}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemLog;

    #[tokio::test]
    async fn memlog_passes_every_check() {
        run_all(|| async { MemLog::new() }).await;
    }

    /// A store that ignores truncation must fail the suite, naming the check.
    #[tokio::test]
    #[should_panic(expected = "truncate: stored_state.last_log_id")]
    async fn a_broken_store_fails_with_the_check_name() {
        #[derive(Debug, Default)]
        struct NoTruncate(MemLog);

        #[async_trait::async_trait]
        impl LogStorage for NoTruncate {
            async fn stored_state(&self) -> Result<StoredState, StorageError> {
                self.0.stored_state().await
            }
            async fn append(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
                self.0.append(entries).await
            }
            async fn truncate(&self, _from: Index) -> Result<(), StorageError> {
                Ok(())
            }
            async fn purge(&self, up_to: Index) -> Result<(), StorageError> {
                self.0.purge(up_to).await
            }
            async fn entries(
                &self,
                start: Index,
                end: Index,
                max_bytes: u64,
            ) -> Result<Vec<Entry>, StorageError> {
                self.0.entries(start, end, max_bytes).await
            }
            async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
                self.0.save_hard_state(hard_state).await
            }
        }

        check_truncate(&NoTruncate::default()).await;
    }
}
