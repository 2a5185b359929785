//! `raft-node`: the deployable node of the raft workspace, a replicated
//! key-value store. Library and binary.
//!
//! - [`config`]: settings from flags, `RAFT_…` variables and a TOML file.
//! - [`command`] and [`store`]: the key-value state machine on RocksDB, its
//!   column families beside the Raft log in one database; the applied index,
//!   the data and the idempotency table are written in one batch;
//!   [`snapshot`]: its snapshot files; [`backup`]: backup files, and
//!   [`restore`]: `raft-node restore` and `recover --force-new-cluster`.
//! - [`txn`]: multi-key transactions like etcd's `Txn`, transport-neutral
//!   (`POST /v1/txn` and an etcd gRPC server map onto it).
//! - [`watch`]: streams of the store's changes from a revision on.
//! - [`grpc`]: etcd's v3 gRPC API (`--grpc-listen`), beside the HTTP API.
//! - [`http`]: the HTTP API of docs/architecture.md, with leader forwarding and
//!   `application/problem+json` errors ([`problem`]).
//! - [`node`]: start and graceful stop of a node, in named phases;
//!   [`members`]: the member addresses it knows; [`client_tls`]: optional
//!   HTTPS on the API.
//! - [`monitoring`]: the Prometheus exporter and the metrics only the node
//!   knows (build, process, disk, certificates, follower lag).
//! - [`dev`] and [`ctl`]: the `raft-node dev` local cluster and the
//!   `raft-node ctl` client; [`health`]: the `raft-node health` probe of a
//!   container's `HEALTHCHECK`.

mod admission;
pub mod backup;
pub mod client_tls;
pub mod command;
pub mod config;
pub mod ctl;
pub mod dev;
pub mod grpc;
pub mod health;
pub mod http;
pub mod keys;
pub mod lease;
pub mod members;
pub mod monitoring;
pub mod node;
pub mod problem;
pub mod restore;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod txn;
pub mod watch;
