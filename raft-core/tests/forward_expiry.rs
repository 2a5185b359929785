//! A forwarded request the leader never answers is given up by the
//! follower's driver on its own clock (the engine task's tick), not only
//! when the next forward or answer happens to come: the timeout is counted
//! (`raft_forward_timeouts_total`) and the outputs the apply task kept for
//! the request's answer are released, with no further forward traffic.
//! Its own test binary: the metrics recorder is process-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use raft_core::memory::{KvCommand, KvResponse, MemKv, MemLog, MemNetwork};
use raft_core::{
    Config, DriverConfig, Entry, Index, Membership, NodeId, ProposeError, Raft, RaftHandle, Role,
    StateMachine, StateMachineError,
};

/// An output whose drop is counted: how many the node still holds.
#[derive(Debug)]
struct Output {
    _response: KvResponse,
    live: Arc<AtomicUsize>,
}

impl Drop for Output {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// [`MemKv`] whose outputs count themselves in `live`.
struct Counted {
    kv: MemKv,
    live: Arc<AtomicUsize>,
}

#[async_trait]
impl StateMachine for Counted {
    type Response = Output;

    async fn applied_index(&mut self) -> Result<Index, StateMachineError> {
        self.kv.applied_index().await
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Output>, StateMachineError> {
        let responses = self.kv.apply(entries).await?;
        self.live.fetch_add(responses.len(), Ordering::SeqCst);
        Ok(responses
            .into_iter()
            .map(|r| Output {
                _response: r,
                live: self.live.clone(),
            })
            .collect())
    }
}

fn forward_timeouts(snapshotter: &Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "raft_forward_timeouts_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(c) => c,
            other => panic!("raft_forward_timeouts_total is a {other:?}"),
        })
        .sum()
}

fn put(key: &str) -> bytes::Bytes {
    KvCommand::Put {
        key: key.into(),
        value: bytes::Bytes::from_static(b"v"),
    }
    .encode()
}

/// A follower that knows its leader, and the leader.
async fn leader_and_follower(handles: &[RaftHandle<Output>]) -> (NodeId, NodeId) {
    for _ in 0..400 {
        for h in handles {
            let Some(s) = h.status().await else { continue };
            if s.engine.role == Role::Follower {
                if let Some(leader) = s.engine.leader {
                    return (leader, s.engine.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no follower learned of a leader");
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_forward_expires_on_the_tick_and_releases_kept_outputs() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install recorder");

    let net = MemNetwork::new();
    let mut driver = DriverConfig::default();
    driver.forward_timeout = Duration::from_secs(1);
    driver.request_timeout = Duration::from_secs(2);
    let mut handles = Vec::new();
    let mut live = Vec::new();
    for id in 1..=3 {
        let counter = Arc::new(AtomicUsize::new(0));
        let sm = Counted {
            kv: MemKv::new(),
            live: counter.clone(),
        };
        let h = Raft::start(
            Config::new(id),
            driver.clone(),
            Membership::new([1, 2, 3]),
            Arc::new(MemLog::new()),
            sm,
            net.transport(id),
        )
        .await
        .expect("node starts");
        net.register(&h);
        handles.push(h);
        live.push(counter);
    }
    let (leader, follower) = leader_and_follower(&handles).await;
    let (leader_h, follower_h) = (
        handles[(leader - 1) as usize].clone(),
        handles[(follower - 1) as usize].clone(),
    );

    // The leader never hears of the forwarded write.
    net.hold("forward_propose");
    let waiting = tokio::spawn({
        let h = follower_h.clone();
        async move { h.propose(put("forwarded")).await }
    });
    // Meanwhile writes through the leader apply on the follower, which
    // keeps their outputs for the forwarded write's answer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut last = 0;
    for k in 0..3 {
        leader_h
            .propose(put(&format!("k{k}")))
            .await
            .expect("write");
        last = leader_h.applied_index();
    }
    while follower_h.applied_index() < last {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kept = live[(follower - 1) as usize].load(Ordering::SeqCst);
    assert!(
        kept > 0,
        "the follower keeps outputs while the forward waits"
    );
    assert_eq!(forward_timeouts(&snapshotter), 0);

    // No forward and no answer from now on: the follower's own clock
    // gives the request up.
    let err = waiting.await.expect("proposer task").unwrap_err();
    assert_eq!(err, ProposeError::Timeout);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        forward_timeouts(&snapshotter),
        1,
        "the unanswered forward is counted without further forward traffic"
    );
    assert_eq!(
        live[(follower - 1) as usize].load(Ordering::SeqCst),
        0,
        "the outputs kept for the unanswered forward are released"
    );
    for h in &handles {
        h.shutdown().await;
    }
}
