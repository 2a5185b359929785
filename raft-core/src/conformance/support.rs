//! What the checks share: entry builders and assertions that name the
//! failing check.

use std::fmt::Debug;

use bytes::Bytes;

use crate::membership::Membership;
use crate::storage::{LogStorage, StorageError, StoredState};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, Term};

/// A normal entry whose payload names its term and index, so that entries of
/// different terms at one index never compare equal.
pub(super) fn entry(term: Term, index: Index) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(format!("entry {index}@{term}"))),
    }
}

/// Normal entries from `(term, index)` pairs.
pub(super) fn entries<const N: usize>(ids: [(Term, Index); N]) -> Vec<Entry> {
    ids.into_iter()
        .map(|(term, index)| entry(term, index))
        .collect()
}

/// Normal entries at `indexes`, all in `term`.
pub(super) fn terms(indexes: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    indexes.map(|index| entry(term, index)).collect()
}

/// Unwraps `result`, panicking with the check's name and the operation.
#[track_caller]
pub(super) fn ok<T>(check: &str, what: &str, result: Result<T, StorageError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{check}: {what} succeeds, got error: {e}"),
    }
}

/// Asserts that `result` is [`StorageError::Invalid`].
#[track_caller]
pub(super) fn expect_invalid<T: Debug>(check: &str, what: &str, result: Result<T, StorageError>) {
    match result {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{check}: {what} is StorageError::Invalid, got {other:?}"),
    }
}

/// Asserts the precondition of every check: the store it was given is new.
pub(super) async fn expect_empty<S: LogStorage>(check: &str, store: &S) {
    let state = ok(check, "stored_state", store.stored_state().await);
    assert_eq!(
        state,
        StoredState::default(),
        "{check}: the check is given a new, empty store"
    );
}

/// Asserts that `entries(start, end, u64::MAX)` returns `expected`.
pub(super) async fn assert_entries<S: LogStorage>(
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
pub(super) async fn assert_log_ids<S: LogStorage>(
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
pub(super) async fn assert_hard_state<S: LogStorage>(check: &str, store: &S, expected: HardState) {
    let state = ok(check, "stored_state", store.stored_state().await);
    assert_eq!(
        state.hard_state, expected,
        "{check}: stored_state.hard_state"
    );
}

/// Asserts the membership `stored_state` reports.
pub(super) async fn assert_membership<S: LogStorage>(
    check: &str,
    store: &S,
    expected: Option<(Index, &Membership)>,
    when: &str,
) {
    let state = ok(check, "stored_state", store.stored_state().await);
    let got = state.membership.as_ref().map(|(index, m)| (*index, m));
    assert_eq!(got, expected, "{check}: stored_state.membership {when}");
}
