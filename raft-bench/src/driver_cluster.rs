//! The whole in-memory stack under load (`raft-bench driver` and `cargo
//! bench --bench driver`): raft-core's
//! [`testing::driver_cluster`](raft_core::testing::driver_cluster), shared
//! with raft-core's `driver_load` example.

pub use raft_core::testing::driver_cluster::{DriverCluster, DriverRun};
