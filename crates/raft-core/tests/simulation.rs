//! Deterministic simulation of whole Raft clusters (1, 3 and 5 voters): the
//! acceptance test of the engine.
//!
//! # What a run does
//!
//! One seeded RNG (`ChaCha8Rng`) drives everything in virtual time. Each
//! step picks one random event: a tick (every live node ticks once, so
//! clocks never drift: leader leases rely on that), delivery of a random
//! deliverable message (so messages are reordered), completion of a node's
//! oldest pending disk write (or of several: group commit), applying some
//! committed entries on a node, or a client request. In the fault phase,
//! messages are also dropped, duplicated and delayed, and at each tick
//! nodes may crash (back at once or after up to 30 ticks), partitions
//! (symmetric, or one-way) start and heal after 3-50 ticks, and leadership
//! transfers start. Each node is driven exactly as the `Engine` docs
//! require (messages at once; writes durable later, in order;
//! `persisted_messages` and `on_persisted` only after the write; see
//! `sim/world.rs`). The state machine is a key-value map kept *durable with
//! its applied index*: it survives crashes and the node restarts with
//! `InitialState::applied`. Clients (3-6, closed loop, on 3-5 keys) send
//! writes, deletes, compare-and-sets and reads (ReadIndex, or the lease)
//! mostly to a node that believes it leads (possibly a stale leader),
//! sometimes to any node.
//!
//! A run has three phases: fault-free (which must acknowledge at least one
//! write: a cluster that never elects a leader fails), faults, then heal
//! everything and let the cluster converge (which it must, within a bound).
//!
//! # What is checked
//!
//! After every step: election safety (one leader per term over the whole
//! run; a node leading a term again after a restart counts as a second
//! leader), log matching (every `(index, term)` ever in any log, in memory
//! or durable, always has the same payload and predecessor term), leader
//! completeness, state machine safety (one entry per index over all nodes,
//! applied exactly once and in order, only committed and locally durable
//! entries), commit monotonicity (per incarnation, never below the durable
//! commit), durable hard-state sanity (terms never go back, a vote never
//! changes within a term), each read answered at most once, and the
//! durability promises of messages (a vote grant or a vote request is sent
//! only once the vote is durable, an append acknowledgement only for
//! durable entries). At the end: every node applied the same entries and
//! holds the same data, and the clients' history is linearizable
//! (`raft_core::testing::linearizability`).
//!
//! # Running
//!
//! - `cargo test -p raft-core --test simulation`: the default seeds (2,000
//!   runs; about a minute in debug on two cores). Each test prints a
//!   summary line (visible with `-- --nocapture`);
//! - soak: `SIM_SEEDS=20000 SIM_SEED_START=100000 cargo test -p raft-core
//!   --release --test simulation seeds_3 -- --nocapture` (`SIM_SEEDS` seeds
//!   per test from `SIM_SEED_START`; `SIM_STEPS` changes the fault-phase
//!   length, in steps);
//! - replay one run with its full event trace (a failure prints the exact
//!   command):
//!   `SIM_SEED=1234 SIM_NODES=3 cargo test -p raft-core --test simulation replay -- --nocapture`.

mod sim;

use sim::{env_u64, run_one, run_seeds};

#[test]
fn seeds_1_voter() {
    run_seeds("seeds_1_voter", 1, 400);
}

#[test]
fn seeds_3_voters() {
    run_seeds("seeds_3_voters", 3, 1100);
}

#[test]
fn seeds_5_voters() {
    run_seeds("seeds_5_voters", 5, 500);
}

/// Replays `SIM_SEED` on `SIM_NODES` voters (default 3), printing every event.
#[test]
fn replay() {
    let Some(seed) = env_u64("SIM_SEED") else {
        println!("replay: skipped (set SIM_SEED, and optionally SIM_NODES, to replay a run)");
        return;
    };
    let nodes = env_u64("SIM_NODES").unwrap_or(3) as usize;
    match run_one(seed, nodes, true) {
        Ok(report) => println!("replay: seed {seed}, {nodes} nodes passed: {report:?}"),
        Err(text) => panic!("{text}"),
    }
}

/// The same seed gives the same run, event for event (whether it passes or
/// fails: a failing run must fail identically, or it could not be replayed).
#[test]
fn same_seed_same_run() {
    let mut outcomes = Vec::new();
    for (seed, nodes) in [(7, 3), (8, 3), (9, 5), (10, 1)] {
        let first = run_one(seed, nodes, false).map(|r| (r.digest, r.steps));
        let second = run_one(seed, nodes, false).map(|r| (r.digest, r.steps));
        assert_eq!(
            first, second,
            "seed {seed} ({nodes} nodes) is not deterministic"
        );
        outcomes.push(format!("{first:?}"));
    }
    outcomes.sort_unstable();
    outcomes.dedup();
    assert_eq!(
        outcomes.len(),
        4,
        "different seeds should give different runs"
    );
}
