//! Jepsen-style fault injection on real `raft-node` processes.
//!
//! A run ([`run::run_seed`]) starts a cluster of `raft-node` binaries, each
//! in its own Linux network namespace ([`netns`], [`cluster`]) with RocksDB
//! and QUIC with mutual TLS as in production; concurrent clients
//! ([`client`]) read, write, delete and compare-and-set a small key set
//! through different nodes and record a history; a nemesis ([`nemesis`])
//! kills, pauses, partitions, drops, delays ([`relay`]) and reorders
//! packets, throttles bandwidth and replaces members on a schedule drawn
//! from a seed, asking the nodes for their status and changing the
//! membership through [`probe`]; after healing, the checks ([`check`]) decide
//! whether the history is linearizable, whether an acknowledged write was
//! lost, and whether all replicas hold the same data; watchers ([`watch`])
//! follow the changes over `GET /v1/watch` throughout, and must have seen
//! every acknowledged write exactly once, in revision order. What a failing run
//! leaves (history JSON, node logs, an HTML timeline) is written by
//! [`report`]; [`summary`] adds up the seeds of a soak.
//!
//! It needs root (namespaces, nftables); [`netns::preflight`] says why not
//! when it cannot run, and installs `nftables` through apt-get when `nft` is
//! missing.

pub mod check;
pub mod client;
pub mod cluster;
pub mod error;
pub mod lease;
pub mod nemesis;
pub mod netns;
pub mod probe;
pub mod relay;
pub mod report;
pub mod run;
pub mod summary;
pub mod watch;

pub use error::ChaosError;
