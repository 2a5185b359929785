//! `MemNetwork`: an in-process [`Transport`] that delivers messages straight
//! into other nodes' [`RaftHandle`]s, with switches to cut links for tests.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::driver::RaftHandle;
use crate::message::Message;
use crate::snapshot::SnapshotData;
use crate::transport::{Transport, TransportError};
use crate::types::NodeId;

type Deliver = Arc<dyn Fn(Message) + Send + Sync>;
type DeliverSnapshot = Arc<dyn Fn(Message, SnapshotData) + Send + Sync>;

#[derive(Default)]
struct Inner {
    nodes: HashMap<NodeId, (Deliver, DeliverSnapshot)>,
    /// Directed links that drop everything: (from, to).
    blocked: HashSet<(NodeId, NodeId)>,
    /// Message kinds ([`MessageBody::kind`](crate::MessageBody::kind))
    /// held back until [`MemNetwork::release`].
    held_kinds: HashSet<&'static str>,
    /// Messages held back, in order.
    held: Vec<Message>,
    /// Whether [`Transport::can_forward`] says no.
    no_forwarding: bool,
}

/// A set of in-process nodes that can message each other.
#[derive(Clone, Default)]
pub struct MemNetwork {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        let mut nodes: Vec<_> = inner.nodes.keys().copied().collect();
        nodes.sort_unstable();
        f.debug_struct("MemNetwork")
            .field("nodes", &nodes)
            .field("blocked", &inner.blocked)
            .finish()
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here can be left half-updated by a panic: recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transport node `id` sends through.
    pub fn transport(&self, id: NodeId) -> MemTransport {
        MemTransport {
            id,
            net: self.clone(),
        }
    }

    /// Routes messages addressed to `handle`'s node into it (replacing an
    /// earlier registration, as after a restart).
    pub fn register<R: Send + 'static>(&self, handle: &RaftHandle<R>) {
        let h = handle.clone();
        let hs = handle.clone();
        self.lock().nodes.insert(
            handle.id(),
            (
                Arc::new(move |m| {
                    let _ = h.receive(m);
                }),
                Arc::new(move |m, data| {
                    let _ = hs.receive_snapshot(m, data);
                }),
            ),
        );
    }

    /// Stops routing to `id` (a crashed node).
    pub fn unregister(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Drops every message from `from` to `to` until healed.
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        let mut inner = self.lock();
        let others: Vec<NodeId> = inner.nodes.keys().copied().filter(|n| *n != id).collect();
        for o in others {
            inner.blocked.insert((id, o));
            inner.blocked.insert((o, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }

    /// Holds back every message of this kind
    /// ([`MessageBody::kind`](crate::MessageBody::kind)) until [`release`](Self::release).
    pub fn hold(&self, kind: &'static str) {
        self.lock().held_kinds.insert(kind);
    }

    /// Stops holding messages back and delivers those held, in order.
    pub fn release(&self) {
        let (held, nodes) = {
            let mut inner = self.lock();
            inner.held_kinds.clear();
            let nodes = inner.nodes.clone();
            (std::mem::take(&mut inner.held), nodes)
        };
        for m in held {
            if let Some((deliver, _)) = nodes.get(&m.to) {
                deliver(m);
            }
        }
    }

    /// Whether the transports say they can forward requests to a leader
    /// ([`Transport::can_forward`]; yes by default, like a transport that
    /// speaks the forwarding messages).
    pub fn set_forwarding(&self, on: bool) {
        self.lock().no_forwarding = !on;
    }
}

/// One node's end of a [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    id: NodeId,
    net: MemNetwork,
}

#[async_trait]
impl Transport for MemTransport {
    async fn send(&self, to: NodeId, messages: Vec<Message>) -> Result<(), TransportError> {
        let (deliver, messages) = {
            let mut inner = self.net.lock();
            if inner.blocked.contains(&(self.id, to)) {
                return Ok(()); // a cut link loses messages silently, like a network
            }
            // Nothing held back (the usual case): the messages go on in
            // the vector they came in, with no kind looked up.
            let messages = if inner.held_kinds.is_empty() {
                messages
            } else {
                let (held, messages): (Vec<Message>, Vec<Message>) = messages
                    .into_iter()
                    .partition(|m| inner.held_kinds.contains(m.body.kind()));
                inner.held.extend(held);
                messages
            };
            let deliver = inner
                .nodes
                .get(&to)
                .map(|(d, _)| d.clone())
                .ok_or(TransportError::UnknownPeer(to))?;
            (deliver, messages)
        };
        for m in messages {
            deliver(m);
        }
        Ok(())
    }

    fn can_forward(&self, to: NodeId) -> bool {
        let inner = self.net.lock();
        !inner.no_forwarding && inner.nodes.contains_key(&to)
    }

    async fn send_snapshot(
        &self,
        to: NodeId,
        header: Message,
        data: SnapshotData,
    ) -> Result<(), TransportError> {
        let deliver = {
            let inner = self.net.lock();
            if inner.blocked.contains(&(self.id, to)) {
                return Err(TransportError::Other(format!("link to {to} is cut")));
            }
            inner
                .nodes
                .get(&to)
                .map(|(_, d)| d.clone())
                .ok_or(TransportError::UnknownPeer(to))?
        };
        deliver(header, data);
        Ok(())
    }
}
