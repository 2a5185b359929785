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

mod log;
mod snapshot;
mod state;
mod support;

use std::future::Future;

pub use log::{
    check_append_and_read_back, check_append_non_consecutive_is_invalid,
    check_append_overlapping_replaces_suffix, check_append_with_gap_is_invalid,
    check_entries_bounds, check_entries_max_bytes, check_new_store_is_empty, check_purge,
    check_stored_state_reports_log_ids, check_truncate,
};
pub use snapshot::{check_install_snapshot, check_save_snapshot};
pub use state::{
    check_committed_entries_are_protected, check_hard_state_round_trip, check_large_payloads,
    check_membership_tracking, check_write_batch,
};

use crate::storage::LogStorage;

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

#[cfg(test)]
mod tests;
