//! The simulated network: raft-core's shared [`Links`] (the engine test
//! network's, `raft_core::testing::network`) carrying the simulation's
//! packets. Messages are in flight from a virtual delivery time on and are
//! delivered in random order among the deliverable ones (so reordered),
//! drawn from the run's generator; cut directed links model symmetric
//! partitions (both directions) and asymmetric ones (a single direction).
//! A snapshot travels as its `InstallSnapshot` header with the data
//! beside it (a real transport streams the data and hands the header over
//! once all of it arrived): that packet type, and what a cut, a crash or a
//! random loss does to a packet, are the simulation's own (`world.rs`).

use std::sync::Arc;

use raft_core::testing::network::Links;
use raft_core::Message;

use super::model::Kv;

/// Messages in flight and the link state.
pub type Network = Links<Packet>;

/// The data of a snapshot in flight, beside its `InstallSnapshot` header.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    /// The sender's state machine at the snapshot's index.
    pub kv: Arc<Kv>,
    /// The sender's incarnation: the outcome of the transfer is reported
    /// to that process only (a restarted node forgot the transfer).
    pub sender_incarnation: u32,
}

/// A message in flight.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The message.
    pub msg: Message,
    /// For an `InstallSnapshot` header: the data.
    pub snapshot: Option<SnapshotData>,
}

impl Packet {
    /// A message without data.
    pub fn message(msg: Message) -> Self {
        Self {
            msg,
            snapshot: None,
        }
    }

    /// A snapshot's header and data.
    pub fn snapshot(msg: Message, data: SnapshotData) -> Self {
        Self {
            msg,
            snapshot: Some(data),
        }
    }
}
