//! Checks of appends, reads, truncation and purging.

use bytes::Bytes;

use super::support::*;
use crate::storage::{LogStorage, StorageError, StoredState};
use crate::types::{Entry, EntryPayload, HardState, Index};

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
