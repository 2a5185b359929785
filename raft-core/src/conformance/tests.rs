//! The suite run against the reference store, and against a broken one.

use super::*;
use crate::memory::MemLog;
use crate::storage::StorageError;
use crate::storage::StoredState;
use crate::types::{Entry, HardState, Index};

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
