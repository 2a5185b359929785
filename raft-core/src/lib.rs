//! # raft-core
//!
//! The Raft consensus algorithm (Ongaro & Ousterhout 2014; Ongaro's thesis
//! 2014) as a deterministic, sans-IO [`Engine`], the traits it is run over
//! ([`LogStorage`], [`StateMachine`], [`Transport`]) and a tokio driver
//! ([`Raft`]) that runs the engine over them.
//!
//! Crate map:
//! - [`engine`]: the algorithm. No clock, no I/O, no runtime: time enters as
//!   [`Engine::tick`], randomness from [`Config::seed`].
//! - [`LogStorage`], [`StateMachine`], [`Transport`]: the traits, with their
//!   errors and the types they exchange ([`Entry`], [`Message`],
//!   [`Membership`], [`SnapshotMeta`], ...), all at the crate root;
//!   [`snapshot`]: snapshot data as they exchange it.
//! - [`driver`]: the tokio driver and its cloneable [`RaftHandle`].
//!
//! Every item a user needs is at the crate root. Three modules stay public
//! as namespaces, for what a root name would say too little about:
//! [`engine`] (the sans-IO engine's own API: `Ready`, `Status`,
//! `ProposalRefused`, ... for those who drive it themselves), [`driver`]
//! (the driver's status and handle types beside the root's [`Raft`]) and
//! [`snapshot`] (`snapshot::read_all`, besides the root's
//! [`SnapshotSource`] and [`FileSource`]).
//!
//! Test support, behind the `test-util` feature (off by default):
//! - `memory`: in-memory implementations of the traits, for tests and
//!   examples.
//! - `conformance`: a test-suite any [`LogStorage`] must pass.
//! - `testing`: seeds and sizes of tests from the environment.
//!
//! The linearizability checker of client histories is a crate of its own,
//! `raftkv-linearizability`.
//!
//! ```toml
//! [dependencies]
//! raftkv-core = "0.1"
//!
//! [dev-dependencies]
//! raftkv-core = { version = "0.1", features = ["test-util"] }
//! ```
//!
//! The package is `raftkv-core`; the library is `raft_core`.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
pub mod driver;
pub mod engine;
mod membership;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod memory;
mod message;
mod metrics_help;
pub mod snapshot;
mod state_machine;
mod storage;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod transport;
mod types;

pub use config::{Config, ConfigError};
pub use driver::{
    complete_interrupted_install, DriverConfig, DriverStatus, ProposeError, Raft, RaftHandle,
    ReadConsistency, ReadError, StartError, TransferError, MAX_REQUEST_TIMEOUT,
};
pub use engine::{ChangeError, Engine, InitialState, MembershipChange, Role};
pub use membership::Membership;
pub use message::{
    AppendResult, ForwardProposeResult, ForwardReadResult, ForwardRefusal, Message, MessageBody,
};
pub use metrics_help::describe_metrics;
pub use snapshot::{FileSource, SnapshotData, SnapshotSource};
pub use state_machine::{SnapshotBuild, StateMachine, StateMachineError};
pub use storage::{LogStorage, LogWrite, StorageError, StoredState};
pub use transport::{Transport, TransportError};
pub use types::{
    Entry, EntryPayload, HardState, Index, LogId, NodeId, SnapshotMeta, Term, MAX_TERM,
    MAX_TERM_JUMP,
};
