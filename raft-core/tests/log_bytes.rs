//! The engine's byte bounds (issue 16, item 4): proposals beyond
//! `Config::max_uncommitted_bytes` are refused with nothing appended, the
//! in-memory log holds at most `Config::max_log_cache_bytes` of applied,
//! durable payloads, and a follower that needs payloads no longer in memory
//! gets them read back from storage (`Ready::fetch_entries`), intact.
//!
//! They run on the engine test network (`raft_core::testing::network`):
//! every write is durable at once unless held, messages are delivered in
//! order unless a node is cut off.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::engine::{ProposalRefused, Role};
use raft_core::testing::network::Network;
use raft_core::{Config, Entry, EntryPayload, Membership, NodeId};

fn config(c: &mut Config, cache: u64, uncommitted: u64) {
    c.max_log_cache_bytes = cache;
    c.max_uncommitted_bytes = uncommitted;
    c.snapshot_threshold_entries = 0;
    c.snapshot_threshold_bytes = 0;
    c.max_message_entries = 4;
}

/// `n` voters on the engine test network with these byte bounds.
fn cluster(n: u64, cache: u64, uncommitted: u64) -> Network {
    Network::with_config(n, |c| config(c, cache, uncommitted))
}

/// Proposes `data` on node `id`.
fn propose(c: &mut Network, id: NodeId, data: Bytes) -> Result<(), ProposalRefused> {
    c.propose_bytes(id, data).map(|_| ())
}

/// Ticks every node once and delivers everything.
fn tick_all(c: &mut Network) {
    c.tick_all(1);
}

fn payload(i: usize, len: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; len])
}

#[test]
fn proposals_beyond_the_uncommitted_bytes_bound_are_refused_with_nothing_appended() {
    // A single voter whose writes are held back: nothing commits.
    let mut c = cluster(1, 64 << 20, 10_000);
    c.elect(1);
    c.hold_persist(1);
    let mut accepted = 0;
    let refused = loop {
        match propose(&mut c, 1, payload(accepted, 1_000)) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        c.deliver_all();
        assert!(accepted < 100, "no proposal refused");
    };
    let status = c.node(1).engine.status();
    println!("accepted {accepted} proposals of 1,000 bytes, then: {refused}");
    assert!(matches!(refused, ProposalRefused::TooManyBytesPending(_)));
    assert!(
        status.uncommitted_bytes <= 10_000,
        "uncommitted bytes {} beyond the bound",
        status.uncommitted_bytes
    );
    let last = status.last_index;
    assert!(propose(&mut c, 1, payload(0, 1_000)).is_err());
    assert_eq!(
        c.node(1).engine.last_log_id().index,
        last,
        "a refused proposal appends nothing"
    );
    // Once they commit, proposals are accepted again.
    c.release_persist(1);
    c.deliver_all();
    assert_eq!(c.node(1).engine.status().uncommitted_bytes, 0);
    propose(&mut c, 1, payload(0, 1_000)).expect("accepted once the backlog committed");
    c.deliver_all();
    // A single proposal larger than the bound is accepted when nothing waits.
    propose(&mut c, 1, payload(1, 50_000))
        .expect("one proposal is always accepted when nothing is pending");
    c.deliver_all();
    assert_eq!(
        c.node(1).applied.last().unwrap().payload.size_bytes(),
        50_000
    );
}

#[test]
fn the_in_memory_log_holds_at_most_the_cache_budget_of_applied_payloads() {
    let budget = 8_000;
    let mut c = cluster(3, budget, 64 << 20);
    c.elect(1);
    for i in 0..300 {
        propose(&mut c, 1, payload(i, 1_000)).unwrap();
        c.deliver_all();
        for id in 1..=3 {
            let s = c.node(id).engine.status();
            assert!(
                s.log_cached_bytes <= budget,
                "node {id} after {} proposals: {} payload bytes in memory, budget {budget}",
                i + 1,
                s.log_cached_bytes
            );
        }
    }
    // A heartbeat tells the followers the last commit index.
    for _ in 0..5 {
        c.tick(1, 1);
        c.deliver_all();
    }
    for id in 1..=3 {
        let node = c.node(id);
        assert_eq!(node.applied.len(), 301, "node {id} applied everything");
        assert_eq!(node.engine.status().first_index, 1, "nothing was compacted");
    }
    assert_eq!(
        c.node(1).read_back,
        0,
        "followers that keep up need no read-back"
    );
}

#[test]
fn a_lagging_follower_catches_up_from_payloads_read_back_from_storage() {
    let mut c = cluster(3, 2_000, 64 << 20);
    c.elect(1);
    c.isolate(3);
    for i in 0..100 {
        propose(&mut c, 1, payload(i, 500)).unwrap();
        c.deliver_all();
    }
    assert!(c.node(1).engine.status().log_cached_bytes <= 2_000);
    assert!(c.node(3).applied.len() <= 1, "node 3 was cut off");
    c.recover();
    for _ in 0..200 {
        if c.node(3).applied.len() == 101 {
            break;
        }
        tick_all(&mut c);
    }
    let leader_applied = c.node(1).applied.clone();
    let node3 = c.node(3);
    assert_eq!(node3.applied.len(), 101, "node 3 caught up");
    assert_eq!(
        node3.applied, leader_applied,
        "node 3 applied the same entries, payloads intact"
    );
    assert!(
        c.node(1).read_back >= 90,
        "the leader read the payloads back ({} entries)",
        c.node(1).read_back
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random payload sizes, bounds and a follower cut off and reconnected
    /// at random points: every node's in-memory payloads stay within the
    /// cache budget once settled, the leader's uncommitted bytes within
    /// their bound (plus one entry), and all nodes apply the same entries.
    #[test]
    fn byte_bounds_hold_and_replicas_agree(
        sizes in proptest::collection::vec(0usize..3_000, 1..120),
        cache in prop_oneof![Just(0u64), 1u64..10_000, Just(64u64 << 20)],
        uncommitted in 1u64..20_000,
        cut_at in 0usize..120,
        heal_at in 0usize..160,
    ) {
        let mut c = cluster(3, cache, uncommitted);
        c.elect(1);
        let mut accepted = 0;
        for (i, size) in sizes.iter().enumerate() {
            if i == cut_at { c.isolate(3); }
            if i == heal_at { c.recover(); }
            match propose(&mut c, 1, payload(i, *size)) {
                Ok(()) => accepted += 1,
                Err(ProposalRefused::TooManyBytesPending(p)) => {
                    prop_assert!(p > 0 && p + *size as u64 + Entry::OVERHEAD_BYTES > uncommitted);
                }
                Err(e) => prop_assert!(false, "unexpected refusal {e}"),
            }
            let s = c.node(1).engine.status();
            prop_assert!(
                s.uncommitted_bytes <= uncommitted.max(*size as u64 + Entry::OVERHEAD_BYTES),
                "uncommitted {} beyond {uncommitted}", s.uncommitted_bytes
            );
            c.deliver_all();
            for id in 1..=3 {
                let node = c.node(id);
                let s = node.engine.status();
                // Entries not yet applied are held whatever the budget.
                let unapplied: u64 = node.disk.log[(s.applied as usize).min(node.disk.log.len())..]
                    .iter()
                    .map(Entry::size_bytes)
                    .sum();
                prop_assert!(s.log_cached_bytes <= cache + unapplied,
                    "node {id}: {} bytes cached, budget {cache}, {unapplied} unapplied",
                    s.log_cached_bytes);
            }
        }
        c.recover();
        for _ in 0..300 {
            if c.nodes.values().all(|n| n.applied.len() == accepted + 1) { break; }
            tick_all(&mut c);
        }
        let reference = c.node(1).applied.clone();
        prop_assert_eq!(reference.len(), accepted + 1);
        for id in 2..=3 {
            prop_assert_eq!(&c.node(id).applied, &reference, "node {} differs", id);
        }
        for e in &reference[1..] {
            prop_assert!(matches!(e.payload, EntryPayload::Normal(_)));
        }
    }
}

/// Through the tokio driver: a node restarted on a log of applied entries
/// larger than its cache loads no more payloads than the budget (the rest
/// are read back when needed), and still serves.
#[tokio::test(start_paused = true)]
async fn a_restart_loads_at_most_the_cache_budget_of_applied_payloads() {
    use std::sync::Arc;
    use std::time::Duration;

    use raft_core::memory::{KvCommand, MemKv, MemLog, MemNetwork};
    use raft_core::{DriverConfig, Raft};

    let budget = 20_000;
    let log = Arc::new(MemLog::new());
    let kv = MemKv::new();
    let reader = kv.reader();
    let start = |kv: MemKv| {
        let mut cfg = Config::new(1);
        cfg.max_log_cache_bytes = budget;
        cfg.snapshot_threshold_entries = 0;
        cfg.snapshot_threshold_bytes = 0;
        Raft::start(
            cfg,
            DriverConfig::default(),
            Membership::new(vec![1]),
            log.clone(),
            kv,
            MemNetwork::new().transport(1),
        )
    };
    let leader = |h: raft_core::RaftHandle<_>| async move {
        while !h
            .status()
            .await
            .is_some_and(|s| s.engine.role == Role::Leader)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h
    };
    let put = |i: usize| {
        KvCommand::Put {
            key: format!("k{i}"),
            value: payload(i, 1_000),
        }
        .encode()
    };
    let handle = leader(start(kv).await.expect("node starts")).await;
    for i in 0..100 {
        handle.propose(put(i)).await.expect("write");
    }
    let s = handle.status().await.unwrap();
    assert!(
        s.engine.log_cached_bytes <= budget,
        "{}",
        s.engine.log_cached_bytes
    );
    handle.shutdown().await;

    let handle = start(MemKv::reopen(&reader)).await.expect("node restarts");
    let s = handle.status().await.unwrap();
    println!(
        "after the restart: {} payload bytes in memory of {} entries, budget {budget}",
        s.engine.log_cached_bytes, s.engine.last_index
    );
    assert!(s.engine.last_index >= 101);
    assert!(
        s.engine.log_cached_bytes <= budget,
        "the restart loaded {} payload bytes, budget {budget}",
        s.engine.log_cached_bytes
    );
    let handle = leader(handle).await;
    handle
        .propose(put(100))
        .await
        .expect("serves after the restart");
}
