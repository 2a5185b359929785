//! # raft-bench
//!
//! Benchmarks of the raft workspace. This library holds the harnesses the
//! Criterion benchmarks (`cargo bench -p raft-bench`) share; see
//! [`engine_cluster`] for the in-process engine cluster.

pub mod engine_cluster;
