//! The scenario tests' harness is raft-core's engine test network
//! (`raft_core::testing::network`): every engine driven as the driver
//! contract says, with a controllable queue and controllable persistence,
//! checking election safety, state machine safety and the contract itself.

pub use raft_core::testing::network::*;
