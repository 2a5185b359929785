//! `complete_interrupted_install`, for offline tools that append to a
//! stopped node's log: it finishes an install a crash interrupted (the
//! state machine took the snapshot, the log did not record it), does
//! nothing more when run again, leaves a log that agrees with the state
//! machine alone, and refuses a state machine behind the log's snapshot
//! without touching the log.

use bytes::Bytes;
use raft_core::memory::MemLog;
use raft_core::{
    complete_interrupted_install, Entry, EntryPayload, LogId, LogStorage, Membership, SnapshotMeta,
    StartError, StoredState,
};

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|index| Entry {
            term,
            index,
            payload: EntryPayload::Normal(Bytes::from(format!("{term}/{index}"))),
        })
        .collect()
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: LogId { term, index },
        membership: Membership::new([1, 2, 3]),
    }
}

/// What a caller sees of the log: its snapshot, purged prefix and ends.
fn shape(s: &StoredState) -> (Option<LogId>, LogId, Option<LogId>, Option<LogId>) {
    (
        s.snapshot.as_ref().map(|m| m.last_log_id),
        s.purged,
        s.first_log_id,
        s.last_log_id,
    )
}

#[tokio::test]
async fn an_interrupted_install_is_finished_once_and_running_it_again_changes_nothing() {
    let log = MemLog::new();
    log.append(entries(1, 40, 1)).await.unwrap();
    let taken = meta(60, 2);
    let first = complete_interrupted_install(&log, 60, Some(&taken))
        .await
        .expect("finished");
    assert_eq!(
        first.snapshot.as_ref().map(|m| m.last_log_id),
        Some(taken.last_log_id)
    );
    assert_eq!(
        first.last_log_id.map_or(first.purged.index, |l| l.index),
        60
    );
    // An entry appended after it (what `recover` does) is kept by a
    // second run (a rerun after a crash, or the node's start).
    log.append(entries(61, 61, 3)).await.unwrap();
    let before = shape(&log.stored_state().await.unwrap());
    let second = complete_interrupted_install(&log, 60, Some(&taken))
        .await
        .expect("nothing left to finish");
    assert_eq!(shape(&second), before);
    assert_eq!(second.last_log_id.map(|l| l.index), Some(61));
}

#[tokio::test]
async fn a_log_that_agrees_with_the_state_machine_is_left_alone() {
    let log = MemLog::new();
    log.append(entries(1, 20, 1)).await.unwrap();
    log.append(entries(21, 80, 2)).await.unwrap();
    let before = shape(&log.stored_state().await.unwrap());
    // A snapshot the state machine built at 60, from this log.
    let after = complete_interrupted_install(&log, 60, Some(&meta(60, 2)))
        .await
        .expect("nothing to finish");
    assert_eq!(shape(&after), before);
    // Applied beyond its last snapshot, within the log.
    let after = complete_interrupted_install(&log, 70, Some(&meta(60, 2)))
        .await
        .expect("nothing to finish");
    assert_eq!(shape(&after), before);
}

#[tokio::test]
async fn a_state_machine_behind_the_logs_snapshot_is_refused_and_the_log_kept() {
    let log = MemLog::new();
    log.install_snapshot(meta(60, 2)).await.unwrap();
    log.append(entries(61, 70, 2)).await.unwrap();
    let before = shape(&log.stored_state().await.unwrap());
    let err = complete_interrupted_install(&log, 30, Some(&meta(30, 1)))
        .await
        .expect_err("entries 31..=60 are gone from both");
    assert!(matches!(err, StartError::Inconsistent(_)), "{err:?}");
    assert_eq!(shape(&log.stored_state().await.unwrap()), before);
    // Ahead of the log with no snapshot to explain it: refused too.
    let err = complete_interrupted_install(&log, 90, Some(&meta(80, 3)))
        .await
        .expect_err("nothing explains index 90");
    assert!(matches!(err, StartError::Inconsistent(_)), "{err:?}");
    assert_eq!(shape(&log.stored_state().await.unwrap()), before);
}
