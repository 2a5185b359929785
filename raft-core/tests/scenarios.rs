//! Scenario tests of the Raft engine against the rules of the Raft paper
//! (Ongaro & Ousterhout 2014, "In Search of an Understandable Consensus
//! Algorithm (Extended Version)", cited as "paper §x") and of Ongaro's
//! thesis (2014, "Consensus: Bridging Theory and Practice", cited as
//! "thesis §x"). Each test's doc comment names the section it checks.
//!
//! The tests drive a simulated cluster, [`network::Network`], that runs
//! every engine exactly as the driver contract of `raft_core::engine`
//! prescribes, with instant durable storage by default, a controllable
//! message queue (drops, cuts, isolation, kind and predicate filters) and
//! controllable persistence (to observe a node before its writes are
//! durable). The harness itself checks election safety, state machine
//! safety and the driver contract on every step.
//!
//! Layout:
//! - `network`: the harness;
//! - `election`: leader election, terms, pre-vote, check-quorum;
//! - `persistence`: what must be durable before a node promises anything;
//! - `replication`: log matching, conflicts, Figure 8, stale leaders,
//!   retransmission, flow control and batching;
//! - `reads`: ReadIndex and lease reads;
//! - `forward`: proposals and reads a follower forwards to its leader;
//! - `transfer`: leadership transfer;
//! - `membership`: membership changes (learners, joint consensus, removed
//!   servers);
//! - `robustness`: malformed and hostile input, and property tests.

#[path = "scenarios/network.rs"]
mod network;

#[path = "scenarios/election.rs"]
mod election;
#[path = "scenarios/forward.rs"]
mod forward;
#[path = "scenarios/membership.rs"]
mod membership;
#[path = "scenarios/persistence.rs"]
mod persistence;
#[path = "scenarios/reads.rs"]
mod reads;
#[path = "scenarios/replication.rs"]
mod replication;
#[path = "scenarios/robustness.rs"]
mod robustness;
#[path = "scenarios/transfer.rs"]
mod transfer;
