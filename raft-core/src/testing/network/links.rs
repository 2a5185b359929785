//! The network half: sending through the filters, and delivering.

use rand::Rng;

use super::{Delivery, Network, Sent, MAX_DELIVERIES};
use crate::engine::Role;
use crate::{Message, MessageBody, NodeId};

impl Network {
    fn blocked(&self, m: &Message) -> bool {
        self.links.is_cut(m.from, m.to)
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
        if self.complete_snapshots {
            self.check_snapshot_sent(&msg);
        }
        if self.blocked(&msg) {
            self.lost(&msg);
        } else {
            self.links.push_back(msg);
        }
    }

    /// Drops messages from `from` to `to` (one way).
    pub fn drop_link(&mut self, from: NodeId, to: NodeId) {
        self.links.cut(from, to);
    }

    /// Drops messages between `a` and `b` both ways.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.links.cut_both(a, b);
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
        self.links.heal();
        self.ignored_kinds.clear();
        self.filters.clear();
    }

    /// Puts a message in flight as if a node had sent it (not filtered now,
    /// but still subject to the filters at delivery).
    pub fn inject(&mut self, msg: Message) {
        self.links.push_back(msg);
    }

    /// Hands `msg` straight to its recipient (no filters) and handles the output.
    pub fn step(&mut self, msg: Message) {
        let to = msg.to;
        if let Some(node) = self.nodes.get_mut(&to) {
            node.engine.step(msg);
            self.process(to);
        }
    }

    /// The next message to deliver, in the [`delivery`](Self::delivery) order.
    fn next_message(&mut self) -> Option<Message> {
        match self.delivery {
            Delivery::Fifo => self.links.pop_front(),
            Delivery::Random => self.links.take_random(self.now, &mut self.rng),
        }
    }

    /// Delivers `msg` unless it is lost: filtered, lost by `lose`, drawn
    /// lost at [`drop_rate`](Self::drop_rate), or refused by a node that
    /// [refuses entries](super::Node::refuse_entries).
    fn deliver(&mut self, msg: Message, lose: &impl Fn(&Network, &Message) -> bool) {
        let lost = self.blocked(&msg)
            || lose(self, &msg)
            || (self.drop_rate > 0.0 && self.rng.gen_bool(self.drop_rate));
        if lost {
            self.lost(&msg);
            return;
        }
        let Some(node) = self.nodes.get(&msg.to) else {
            return;
        };
        match &msg.body {
            MessageBody::AppendEntries { entries, .. }
                if node.refuse_entries
                    && !entries.is_empty()
                    && node.engine.role() != Role::Leader => {}
            MessageBody::InstallSnapshot { meta } if self.complete_snapshots => {
                // The transport reports how the transfer ended.
                self.report_snapshot(msg.from, msg.to, true);
                let meta = meta.clone();
                self.receive_snapshot(msg, meta);
            }
            _ => self.step(msg),
        }
    }

    /// A message is lost: a snapshot's sender hears of it.
    fn lost(&mut self, msg: &Message) {
        if self.complete_snapshots && matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
            self.report_snapshot(msg.from, msg.to, false);
        }
    }

    /// Answers the read-backs that are due, then delivers the next message
    /// (see [`delivery`](Self::delivery)). Returns false when there was
    /// nothing to do: no read-back due and no message in flight.
    pub fn deliver_one(&mut self) -> bool {
        let served = self.serve_fetches();
        let Some(msg) = self.next_message() else {
            return served;
        };
        self.deliver(msg, &|_, _| false);
        true
    }

    /// Delivers messages until none is in flight, answering the read-backs
    /// that fall due in between.
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
            let served = self.serve_fetches();
            match self.next_message() {
                Some(msg) => self.deliver(msg, &lose),
                None if served => {}
                None => return,
            }
        }
        panic!("deliver_all: still delivering after {MAX_DELIVERIES} messages (not quiescent)");
    }
}
