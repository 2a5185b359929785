//! Property test: random sequences of appends, truncations, purges and
//! hard-state writes give the same results on `RocksLog` as on the in-memory
//! model `MemLog`, including after reopening the store.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::memory::MemLog;
use raft_core::{Entry, EntryPayload, HardState, LogStorage, LogWrite};
use raft_log::{RocksLog, RocksLogOptions};

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` entries of term `term` starting `back` positions before the end.
    Append {
        back: u64,
        n: u64,
        term_bump: u64,
    },
    Truncate {
        back: u64,
    },
    Purge {
        ahead: u64,
    },
    HardState {
        term: u64,
        commit_back: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4u64, 1..6u64, 0..2u64).prop_map(|(back, n, term_bump)| Op::Append { back, n, term_bump }),
        1 => (0..5u64).prop_map(|back| Op::Truncate { back }),
        1 => (0..6u64).prop_map(|ahead| Op::Purge { ahead }),
        1 => (0..9u64, 0..3u64).prop_map(|(term, commit_back)| Op::HardState { term, commit_back }),
        1 => Just(Op::Reopen),
    ]
}

fn kind(r: &Result<(), raft_core::StorageError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(raft_core::StorageError::Invalid(_)) => "invalid",
        Err(_) => "other error",
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let mut rocks = Some(RocksLog::open(&path, RocksLogOptions::default()).expect("open"));
    let model = MemLog::new();
    let mut term = 1u64;
    for op in ops {
        let store = rocks.as_ref().expect("open store");
        let state = model.stored_state().await.expect("model state");
        let last = state
            .last_log_id
            .map_or(store.first_index() - 1, |l| l.index);
        let first = state.first_log_id.map_or(last + 1, |f| f.index);
        // Like Raft, never rewrite committed entries.
        let floor = state.hard_state.commit + 1;
        let (a, b) = match op.clone() {
            Op::Append { back, n, term_bump } => {
                term += term_bump;
                let start = (last + 1).saturating_sub(back).max(floor);
                let entries: Vec<Entry> = (start..start + n)
                    .map(|i| Entry {
                        term,
                        index: i,
                        payload: EntryPayload::Normal(Bytes::from(format!("{i}/{term}"))),
                    })
                    .collect();
                (
                    model.append(entries.clone()).await,
                    store.append(entries).await,
                )
            }
            Op::Truncate { back } => {
                let from = (last + 1).saturating_sub(back).max(floor);
                (model.truncate(from).await, store.truncate(from).await)
            }
            Op::Purge { ahead } => {
                let up_to = first.saturating_sub(1) + ahead;
                (model.purge(up_to).await, store.purge(up_to).await)
            }
            Op::HardState {
                term: t,
                commit_back,
            } => {
                let commit = last
                    .saturating_sub(commit_back)
                    .max(state.hard_state.commit);
                let hs = HardState {
                    term: t,
                    vote: Some(t % 3),
                    commit,
                };
                let w = LogWrite {
                    hard_state: Some(hs),
                    ..LogWrite::default()
                };
                (model.write(w.clone()).await, store.write(w).await)
            }
            Op::Reopen => {
                // Close the store (joining its writer) before reopening.
                drop(rocks.take());
                rocks = Some(RocksLog::open(&path, RocksLogOptions::default()).expect("reopen"));
                (Ok(()), Ok(()))
            }
        };
        prop_assert_eq!(kind(&a), kind(&b), "{:?}: model {:?}, rocks {:?}", op, a, b);
        let store = rocks.as_ref().expect("open store");
        let ms = model.stored_state().await.expect("model state");
        let rs = store.stored_state().await.expect("rocks state");
        prop_assert_eq!(ms.hard_state, rs.hard_state);
        prop_assert_eq!(ms.last_log_id, rs.last_log_id, "after {:?}", op);
        prop_assert_eq!(
            ms.first_log_id.map(|f| f.index),
            rs.first_log_id.map(|f| f.index),
            "after {:?}",
            op
        );
        if let (Some(f), Some(l)) = (ms.first_log_id, ms.last_log_id) {
            let me = model
                .entries(f.index, l.index + 1, u64::MAX)
                .await
                .expect("model read");
            let re = store
                .entries(f.index, l.index + 1, u64::MAX)
                .await
                .expect("rocks read");
            prop_assert_eq!(me, re);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(raft_core::testing::proptest_seed()),
        ..ProptestConfig::default()
    })]

    #[test]
    fn rocks_log_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(run(ops))?;
    }
}
