//! # raft-bench
//!
//! Benchmarks of the raft workspace. This library holds the harnesses the
//! Criterion benchmarks (`cargo bench -p raftkv-bench`) share (see
//! [`engine_cluster`] for the in-process engine cluster, [`driver_cluster`]
//! for the whole in-memory stack on tokio) and the
//! `raft-bench` command line ([`cli`]), which measures clusters of real
//! `raft-node` processes side by side with etcd.

pub mod cli;
pub mod driver_cluster;
pub mod engine_cluster;
