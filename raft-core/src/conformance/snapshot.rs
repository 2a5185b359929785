//! Checks of recording and installing snapshots.

use super::support::*;
use crate::membership::Membership;
use crate::storage::LogStorage;
use crate::types::{HardState, LogId, SnapshotMeta};

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
