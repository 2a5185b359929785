//! The promise behind `ProposeError::Overloaded` ("nothing was appended")
//! under a real race between threads: the caller's deadline giving the
//! proposal up (`Ticket::abandon`) against the engine task taking it
//! (`Ticket::take`), on a multi-threaded runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{put, GatedLog, Handle, LogOp, WriteGate};
use raft_core::memory::{MemKv, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, ProposeError, Raft, Role, StorageError};
use tokio::sync::watch;

/// Storage whose writes wait while `held` is set, as a disk that stalls.
struct Stalling {
    held: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl WriteGate for Stalling {
    async fn before(&self, op: LogOp) -> Result<(), StorageError> {
        if op == LogOp::Write {
            let mut held = self.held.clone();
            let _ = held.wait_for(|held| !held).await;
        }
        Ok(())
    }
}

/// 256 proposers on a single voter with a 20 ms request timeout and a
/// request queue of 8, while its storage stalls and recovers every few
/// milliseconds: many proposals reach their deadline just as the engine
/// task takes them. Whichever side wins, a proposal answered `Overloaded`
/// is never applied, and one answered with its result is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_proposals_are_never_applied_under_a_thread_race() {
    let (hold, held) = watch::channel(false);
    let kv = MemKv::new();
    let reader = kv.reader();
    let mut driver = DriverConfig::default();
    driver.request_queue_capacity = 8;
    driver.storage_queue_capacity = 1;
    driver.max_batch_inputs = 4;
    driver.request_timeout = Duration::from_millis(20);
    let handle: Handle = Raft::start(
        Config::new(1),
        driver,
        Membership::new(vec![1]),
        Arc::new(GatedLog::new(Stalling { held })),
        kv,
        MemNetwork::new().transport(1),
    )
    .await
    .expect("node starts");
    let mut leads = false;
    for _ in 0..1000 {
        leads = handle
            .status()
            .await
            .is_some_and(|s| s.engine.role == Role::Leader);
        if leads {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(leads, "the single voter did not lead within 10 s");

    let stop = Arc::new(AtomicBool::new(false));
    let stalls = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            while !stop.load(Ordering::SeqCst) {
                hold.send_replace(true);
                tokio::time::sleep(Duration::from_millis(3)).await;
                hold.send_replace(false);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            hold.send_replace(false);
        }
    });
    let proposers: Vec<_> = (0..256)
        .map(|p| {
            let h = handle.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..10 {
                    let key = format!("p{p}-{n}");
                    let answer = h.propose(put(&key, "v")).await;
                    answers.push((key, answer));
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for p in proposers {
        answers.extend(p.await.expect("proposer"));
    }
    stop.store(true, Ordering::SeqCst);
    stalls.await.expect("stalls");

    // The request queue is FIFO: a proposal still queued (taken after its
    // caller was answered) is applied before a write proposed after it.
    let mut after = Err(ProposeError::Timeout);
    for _ in 0..500 {
        after = handle.propose(put("after", "1")).await;
        if after.is_ok() {
            break;
        }
    }
    assert!(
        after.is_ok(),
        "no write succeeded after the stalls: {after:?}"
    );

    let (mut overloaded, mut written) = (0, 0);
    for (key, answer) in &answers {
        match answer {
            Err(ProposeError::Overloaded) => {
                overloaded += 1;
                assert_eq!(
                    reader.get(key),
                    None,
                    "{key} was refused as Overloaded but applied"
                );
            }
            Ok(_) => {
                written += 1;
                assert!(
                    reader.get(key).is_some(),
                    "{key} was answered but not applied"
                );
            }
            _ => {}
        }
    }
    assert!(
        overloaded > 0 && written > 0,
        "the race was not exercised: {overloaded} overloaded, {written} written of {}",
        answers.len()
    );
}
