//! The network half: sending through the filters, and delivering.

use super::{Network, Sent, MAX_DELIVERIES};
use crate::{Message, NodeId};

impl Network {
    fn blocked(&self, m: &Message) -> bool {
        self.dropped_links.contains(&(m.from, m.to))
            || self.ignored_kinds.contains(m.body.kind())
            || self.filters.iter().any(|f| f(m))
    }

    pub(super) fn send(&mut self, msg: Message, after_persist: bool) {
        if self.record_sent {
            self.sent.push(Sent {
                msg: msg.clone(),
                after_persist,
            });
        }
        if !self.blocked(&msg) {
            self.queue.push_back(msg);
        }
    }

    /// Drops messages from `from` to `to` (one way).
    pub fn drop_link(&mut self, from: NodeId, to: NodeId) {
        self.dropped_links.insert((from, to));
    }

    /// Drops messages between `a` and `b` both ways.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.drop_link(a, b);
        self.drop_link(b, a);
    }

    /// Cuts `id` from every other node.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Drops every message of this kind ([`MessageBody::kind`](crate::MessageBody::kind)).
    pub fn ignore(&mut self, kind: &'static str) {
        self.ignored_kinds.insert(kind);
    }

    /// Drops every message for which `pred` returns true.
    pub fn drop_if(&mut self, pred: impl Fn(&Message) -> bool + 'static) {
        self.filters.push(Box::new(pred));
    }

    /// Removes every cut, ignored kind and filter.
    pub fn recover(&mut self) {
        self.dropped_links.clear();
        self.ignored_kinds.clear();
        self.filters.clear();
    }

    /// Puts a message in flight as if a node had sent it (not filtered now,
    /// but still subject to the filters at delivery).
    pub fn inject(&mut self, msg: Message) {
        self.queue.push_back(msg);
    }

    /// Hands `msg` straight to its recipient (no filters) and handles the output.
    pub fn step(&mut self, msg: Message) {
        let to = msg.to;
        if let Some(node) = self.nodes.get_mut(&to) {
            node.engine.step(msg);
            self.process(to);
        }
    }

    /// Delivers the front message of the queue. Returns false when the queue is empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(msg) = self.queue.pop_front() else {
            return false;
        };
        if !self.blocked(&msg) {
            self.step(msg);
        }
        true
    }

    /// Delivers messages until none is in flight.
    ///
    /// # Panics
    ///
    /// After [`MAX_DELIVERIES`] messages: the cluster is not quiescent.
    pub fn deliver_all(&mut self) {
        self.deliver_all_except(|_, _| false);
    }

    /// Like [`deliver_all`](Self::deliver_all), but loses each message for
    /// which `lose(network, message)` holds at the moment it would arrive.
    ///
    /// # Panics
    ///
    /// After [`MAX_DELIVERIES`] messages: the cluster is not quiescent.
    pub fn deliver_all_except(&mut self, lose: impl Fn(&Network, &Message) -> bool) {
        for _ in 0..MAX_DELIVERIES {
            let Some(msg) = self.queue.pop_front() else {
                return;
            };
            if !self.blocked(&msg) && !lose(self, &msg) {
                self.step(msg);
            }
        }
        panic!("deliver_all: still delivering after {MAX_DELIVERIES} messages (not quiescent)");
    }
}
