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
//! - [`storage`], [`state_machine`], [`transport`]: the traits;
//!   [`snapshot`]: snapshot data as they exchange it.
//! - [`memory`]: in-memory implementations for tests and examples.
//! - [`conformance`]: a test-suite any [`LogStorage`] must pass.
//! - [`driver`]: the tokio driver and its cloneable [`RaftHandle`].
//! - [`testing`]: a linearizability checker for client histories.

pub mod config;
pub mod conformance;
pub mod driver;
pub mod engine;
pub mod membership;
pub mod memory;
pub mod message;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
pub mod testing;
pub mod transport;
pub mod types;

pub use config::{Config, ConfigError};
pub use driver::{
    DriverConfig, DriverStatus, ProposeError, Raft, RaftHandle, ReadConsistency, ReadError,
    StartError, TransferError,
};
pub use engine::{ChangeError, Engine, InitialState, MembershipChange, Role};
pub use membership::Membership;
pub use message::{AppendResult, Message, MessageBody};
pub use snapshot::{FileSource, SnapshotData, SnapshotSource};
pub use state_machine::{SnapshotBuild, StateMachine, StateMachineError};
pub use storage::{LogStorage, LogWrite, StorageError, StoredState};
pub use transport::{Transport, TransportError};
pub use types::{Entry, EntryPayload, HardState, Index, LogId, NodeId, SnapshotMeta, Term};
