//! In-memory implementations of the traits, for tests and examples.
//!
//! - [`MemLog`] is a [`LogStorage`](crate::LogStorage) that keeps the log and the hard state in
//!   memory. Every write is "durable" as soon as it returns, which makes it
//!   the reference implementation the [`conformance`](crate::conformance)
//!   suite is run against; nothing survives the process.
//! - [`MemNetwork`] connects in-process nodes, with switches to cut links.
//! - [`MemKv`] is a tiny key-value [`StateMachine`](crate::StateMachine) whose commands
//!   ([`KvCommand`]) travel in [`EntryPayload::Normal`](crate::EntryPayload::Normal) entries. A
//!   [`MemKvReader`] handle reads its data while the driver owns the machine.

mod command;
mod kv;
mod log;
mod network;

pub use command::{KvCommand, KvInvalid};
pub use kv::{KvResponse, MemKv, MemKvReader};
pub use log::MemLog;
pub use network::{MemNetwork, MemTransport};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering the guard if a previous holder panicked.
///
/// Recovering is sound here because every method of this module validates its
/// input before it mutates anything and performs no fallible step while
/// mutating, so a poisoned lock still guards a consistent state.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
