//! The `Transport` trait: how messages reach peers. Inbound messages are
//! handed to the driver with [`RaftHandle::receive`](crate::RaftHandle::receive).

use async_trait::async_trait;

use crate::message::Message;
use crate::snapshot::SnapshotData;
use crate::types::NodeId;

/// A send failure. Raft tolerates lost messages, so the driver only counts
/// and logs these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is not known to the transport.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The peer's send queue is full; the message was dropped.
    #[error("send queue to peer {0} is full")]
    QueueFull(NodeId),
    /// The transport is closed.
    #[error("transport closed")]
    Closed,
    /// Anything else, described.
    #[error("transport error: {0}")]
    Other(String),
}

/// Sends Raft messages to peers.
///
/// # Contract
///
/// `send` must not wait for the network: it enqueues and returns. Delivery is
/// best effort (a message may be dropped, duplicated or delayed), but messages
/// to one peer should keep their order when they do arrive, or replication
/// falls back to slower probing.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Queues `messages`, all addressed to `to`, for delivery in order.
    ///
    /// # Errors
    ///
    /// A [`TransportError`]; the messages are then dropped.
    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), TransportError>;

    /// Whether messages to `to` can carry the forwarding kinds
    /// ([`ForwardPropose`](crate::MessageBody::ForwardPropose),
    /// [`ReadIndexRequest`](crate::MessageBody::ReadIndexRequest) and
    /// their answers) right now: the peer understands them and is
    /// reachable. A follower forwards a client's request to its leader
    /// only when this holds; otherwise it answers `NotLeader`, so the
    /// caller can reach the leader another way.
    ///
    /// The default says no (a transport from before forwarding existed).
    fn can_forward(&self, to: NodeId) -> bool {
        let _ = to;
        false
    }

    /// Streams a snapshot to `to`: `header` is the engine's
    /// [`InstallSnapshot`](crate::MessageBody::InstallSnapshot) message and
    /// `data` its bytes. The receiving side hands both to its driver with
    /// [`RaftHandle::receive_snapshot`](crate::RaftHandle::receive_snapshot)
    /// once all the data arrived intact. Returns when the receiver has it
    /// all, or the transfer failed; it runs on its own task and must not
    /// hold up [`send`](Self::send).
    ///
    /// The default refuses: a leader on such a transport cannot bring a
    /// follower back that needs compacted entries.
    ///
    /// # Errors
    ///
    /// A [`TransportError`]; the engine sends the snapshot again later.
    async fn send_snapshot(
        &self,
        to: NodeId,
        header: Message,
        data: SnapshotData,
    ) -> Result<(), TransportError> {
        let _ = (header, data);
        Err(TransportError::Other(format!(
            "this transport cannot send snapshots (to node {to})"
        )))
    }
}
