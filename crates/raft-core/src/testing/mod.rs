//! Tools for testing Raft systems: a linearizability checker for client
//! histories against a key-value register model.

pub mod linearizability;
