//! The driver loop's wait for its next input: the inputs polled in a fixed
//! order of priority, as `tokio::select! { biased; ... }` would, without the
//! macro (it needs tokio's `macros` feature, which raft-core does not ask
//! tokio for on behalf of its users).

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use tokio::sync::{mpsc, watch};
use tokio::time::Interval;

use super::armed::Armed;
use super::handle::Request;
use super::tasks::Event;
use crate::engine::WriteId;
use crate::message::Message;
use crate::types::Index;

/// What woke the driver loop. `P` is what waiting for a slot in the apply
/// queue gave (a permit, or the error of a closed queue).
pub(super) enum Wake<P, R> {
    /// Shutdown was requested (or its sender is gone).
    Shutdown,
    /// A task reported a fatal failure (or the sender is gone).
    Fatal,
    /// The persisted watermark moved.
    Persisted,
    /// The applied index moved.
    Applied,
    /// The tick timer fired.
    Tick,
    /// The apply queue has room (or is closed).
    ApplySlot(P),
    /// A task's event.
    Event(Event),
    /// A message from a peer.
    Inbound(Message),
    /// A request from a [`RaftHandle`](super::RaftHandle).
    Request(Request<R>),
}

/// The loop's waits on its `watch` channels, kept registered from one wait
/// to the next (see `armed.rs`).
pub(super) struct Watches {
    shutdown: Armed,
    fatal: Armed,
    persisted: Armed,
    applied: Armed,
}

impl Default for Watches {
    fn default() -> Self {
        Self {
            shutdown: Armed::new(),
            fatal: Armed::new(),
            persisted: Armed::new(),
            applied: Armed::new(),
        }
    }
}

/// The inputs of the driver loop, borrowed for one wait.
pub(super) struct Inputs<'a, R> {
    pub(super) watches: &'a mut Watches,
    pub(super) shutdown: &'a mut watch::Receiver<bool>,
    pub(super) fatal: &'a mut watch::Receiver<Option<String>>,
    pub(super) persisted: &'a mut watch::Receiver<Option<WriteId>>,
    pub(super) applied: &'a mut watch::Receiver<Index>,
    pub(super) ticker: &'a mut Interval,
    pub(super) events: &'a mut mpsc::UnboundedReceiver<Event>,
    pub(super) inbound: &'a mut mpsc::Receiver<Message>,
    pub(super) requests: &'a mut mpsc::Receiver<Request<R>>,
}

impl<R> Inputs<'_, R> {
    /// Waits for the first input that is ready, polling them in the order of
    /// [`Wake`]'s variants. `apply_slot` is the wait for room in the apply
    /// queue, `None` when there is nothing to send.
    ///
    /// A source found closed (a watch whose sender is gone, a channel with
    /// no sender left) is not polled again in this wait, and the others are,
    /// as `select!` disables a branch whose pattern does not match. Shutdown,
    /// a fatal failure and the timer always wake the loop, so the wait
    /// cannot find every source closed.
    pub(super) async fn next<A: Future>(self, apply_slot: Option<A>) -> Wake<A::Output, R> {
        let mut apply_slot = pin!(apply_slot);
        let mut open = Open::default();
        let (ticker, events, inbound, requests, watches) = (
            self.ticker,
            self.events,
            self.inbound,
            self.requests,
            self.watches,
        );
        // First, without waiting: a loaded driver finds an input ready on
        // almost every turn, and a `watch` checked for a change costs an
        // atomic load where waiting on it registers with (and then leaves)
        // the channel's list of waiters under its lock. Same order; a
        // closed watch leaves the decision to the wait below.
        let (shutdown, fatal, persisted, applied) =
            (self.shutdown, self.fatal, self.persisted, self.applied);
        let ready = poll_fn(|cx| {
            let (Ok(stop), Ok(failed), Ok(wrote), Ok(moved)) = (
                shutdown.has_changed(),
                fatal.has_changed(),
                persisted.has_changed(),
                applied.has_changed(),
            ) else {
                return Poll::Ready(None);
            };
            let wake = if stop {
                Wake::Shutdown
            } else if failed {
                Wake::Fatal
            } else if wrote {
                Wake::Persisted
            } else if moved {
                Wake::Applied
            } else if ticker.poll_tick(cx).is_ready() {
                Wake::Tick
            } else if let Some(Poll::Ready(slot)) =
                apply_slot.as_mut().as_pin_mut().map(|s| s.poll(cx))
            {
                Wake::ApplySlot(slot)
            } else if let Some(event) = recv(&mut open.events, |cx| events.poll_recv(cx), cx) {
                Wake::Event(event)
            } else if let Some(msg) = recv(&mut open.inbound, |cx| inbound.poll_recv(cx), cx) {
                Wake::Inbound(msg)
            } else if let Some(req) = recv(&mut open.requests, |cx| requests.poll_recv(cx), cx) {
                Wake::Request(req)
            } else {
                return Poll::Ready(None);
            };
            Poll::Ready(Some(wake))
        })
        .await;
        if let Some(wake) = ready {
            return wake;
        }
        poll_fn(|cx| {
            if watches.shutdown.poll(shutdown, cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            if watches.fatal.poll(fatal, cx).is_ready() {
                return Poll::Ready(Wake::Fatal);
            }
            if open.persisted {
                if let Poll::Ready(changed) = watches.persisted.poll(persisted, cx) {
                    if changed.is_ok() {
                        return Poll::Ready(Wake::Persisted);
                    }
                    open.persisted = false;
                }
            }
            if open.applied {
                if let Poll::Ready(changed) = watches.applied.poll(applied, cx) {
                    if changed.is_ok() {
                        return Poll::Ready(Wake::Applied);
                    }
                    open.applied = false;
                }
            }
            if ticker.poll_tick(cx).is_ready() {
                return Poll::Ready(Wake::Tick);
            }
            if let Some(slot) = apply_slot.as_mut().as_pin_mut() {
                if let Poll::Ready(slot) = slot.poll(cx) {
                    return Poll::Ready(Wake::ApplySlot(slot));
                }
            }
            if let Some(event) = recv(&mut open.events, |cx| events.poll_recv(cx), cx) {
                return Poll::Ready(Wake::Event(event));
            }
            if let Some(msg) = recv(&mut open.inbound, |cx| inbound.poll_recv(cx), cx) {
                return Poll::Ready(Wake::Inbound(msg));
            }
            if let Some(req) = recv(&mut open.requests, |cx| requests.poll_recv(cx), cx) {
                return Poll::Ready(Wake::Request(req));
            }
            Poll::Pending
        })
        .await
    }
}

/// Which of the sources that can close are still polled in this wait.
struct Open {
    persisted: bool,
    applied: bool,
    events: bool,
    inbound: bool,
    requests: bool,
}

impl Default for Open {
    fn default() -> Self {
        Self {
            persisted: true,
            applied: true,
            events: true,
            inbound: true,
            requests: true,
        }
    }
}

/// Polls a channel while `open`: its next item, if one is ready; a closed
/// channel clears `open`.
fn recv<T>(
    open: &mut bool,
    poll_recv: impl FnOnce(&mut std::task::Context<'_>) -> Poll<Option<T>>,
    cx: &mut std::task::Context<'_>,
) -> Option<T> {
    if !*open {
        return None;
    }
    match poll_recv(cx) {
        Poll::Ready(Some(item)) => Some(item),
        Poll::Ready(None) => {
            *open = false;
            None
        }
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The sending ends of a loop's inputs.
    struct Senders {
        shutdown: watch::Sender<bool>,
        fatal: watch::Sender<Option<String>>,
        persisted: watch::Sender<Option<WriteId>>,
        applied: watch::Sender<Index>,
        events: mpsc::UnboundedSender<Event>,
        inbound: mpsc::Sender<Message>,
        requests: mpsc::Sender<Request<()>>,
    }

    /// The receiving ends, and the timer (it fires every hour).
    struct Receivers {
        watches: Watches,
        shutdown: watch::Receiver<bool>,
        fatal: watch::Receiver<Option<String>>,
        persisted: watch::Receiver<Option<WriteId>>,
        applied: watch::Receiver<Index>,
        ticker: Interval,
        events: mpsc::UnboundedReceiver<Event>,
        inbound: mpsc::Receiver<Message>,
        requests: mpsc::Receiver<Request<()>>,
    }

    fn sources() -> (Senders, Receivers) {
        let hour = Duration::from_secs(3600);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (fatal, fatal_rx) = watch::channel(None);
        let (persisted, persisted_rx) = watch::channel(None);
        let (applied, applied_rx) = watch::channel(0);
        let (events, events_rx) = mpsc::unbounded_channel();
        let (inbound, inbound_rx) = mpsc::channel(4);
        let (requests, requests_rx) = mpsc::channel(4);
        let senders = Senders {
            shutdown,
            fatal,
            persisted,
            applied,
            events,
            inbound,
            requests,
        };
        let receivers = Receivers {
            watches: Watches::default(),
            shutdown: shutdown_rx,
            fatal: fatal_rx,
            persisted: persisted_rx,
            applied: applied_rx,
            ticker: tokio::time::interval_at(tokio::time::Instant::now() + hour, hour),
            events: events_rx,
            inbound: inbound_rx,
            requests: requests_rx,
        };
        (senders, receivers)
    }

    impl Receivers {
        /// Which input wakes a wait within a millisecond ("pending" if none
        /// does), with `slot` as the wait for the apply queue.
        async fn woken_by<A: Future>(&mut self, slot: Option<A>) -> &'static str {
            let inputs = Inputs {
                watches: &mut self.watches,
                shutdown: &mut self.shutdown,
                fatal: &mut self.fatal,
                persisted: &mut self.persisted,
                applied: &mut self.applied,
                ticker: &mut self.ticker,
                events: &mut self.events,
                inbound: &mut self.inbound,
                requests: &mut self.requests,
            };
            let woke = tokio::time::timeout(Duration::from_millis(1), inputs.next(slot)).await;
            match woke {
                Err(_) => "pending",
                Ok(Wake::Shutdown) => "shutdown",
                Ok(Wake::Fatal) => "fatal",
                Ok(Wake::Persisted) => "persisted",
                Ok(Wake::Applied) => "applied",
                Ok(Wake::Tick) => "tick",
                Ok(Wake::ApplySlot(_)) => "slot",
                Ok(Wake::Event(_)) => "event",
                Ok(Wake::Inbound(_)) => "inbound",
                Ok(Wake::Request(_)) => "request",
            }
        }
    }

    fn no_slot() -> Option<std::future::Ready<()>> {
        None
    }

    fn slot() -> Option<std::future::Ready<()>> {
        Some(std::future::ready(()))
    }

    fn message() -> Message {
        Message {
            from: 1,
            to: 2,
            term: 1,
            body: crate::message::MessageBody::TimeoutNow,
        }
    }

    fn request() -> Request<()> {
        Request::Status {
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn inputs_wake_the_loop_in_their_order_of_priority() {
        let (tx, mut rx) = sources();
        assert_eq!(rx.woken_by(no_slot()).await, "pending");
        tx.inbound.try_send(message()).unwrap();
        tx.applied.send(3).unwrap();
        tx.persisted.send(None).unwrap();
        assert_eq!(rx.woken_by(slot()).await, "persisted");
        rx.persisted.borrow_and_update();
        assert_eq!(rx.woken_by(slot()).await, "applied");
        rx.applied.borrow_and_update();
        assert_eq!(rx.woken_by(slot()).await, "slot");
        assert_eq!(rx.woken_by(no_slot()).await, "inbound");
        assert_eq!(rx.woken_by(no_slot()).await, "pending");
        tx.requests.try_send(request()).unwrap();
        tx.fatal.send(Some("disk".into())).unwrap();
        tx.shutdown.send(true).unwrap();
        assert_eq!(rx.woken_by(no_slot()).await, "shutdown");
        rx.shutdown.borrow_and_update();
        assert_eq!(rx.woken_by(no_slot()).await, "fatal");
        rx.fatal.borrow_and_update();
        assert_eq!(rx.woken_by(no_slot()).await, "request");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(rx.woken_by(no_slot()).await, "tick");
        assert_eq!(rx.woken_by(no_slot()).await, "pending");
    }

    /// The loop as the driver runs it, in a task of its own: waits, and
    /// reports what woke it (taking a watermark's new value); after a
    /// request it is busy until `go` says so (handling a batch, it yields
    /// or runs on another thread meanwhile).
    fn spawn_loop(
        mut rx: Receivers,
        mut go: mpsc::UnboundedReceiver<()>,
    ) -> mpsc::UnboundedReceiver<&'static str> {
        let (woke_tx, woke) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let inputs = Inputs {
                    watches: &mut rx.watches,
                    shutdown: &mut rx.shutdown,
                    fatal: &mut rx.fatal,
                    persisted: &mut rx.persisted,
                    applied: &mut rx.applied,
                    ticker: &mut rx.ticker,
                    events: &mut rx.events,
                    inbound: &mut rx.inbound,
                    requests: &mut rx.requests,
                };
                let wake = match inputs.next(no_slot()).await {
                    Wake::Persisted => {
                        rx.persisted.borrow_and_update();
                        "persisted"
                    }
                    Wake::Request(_) => "request",
                    Wake::Tick => "tick",
                    _ => "other",
                };
                if woke_tx.send(wake).is_err() {
                    return;
                }
                if wake == "request" && go.recv().await.is_none() {
                    return;
                }
            }
        });
        woke
    }

    /// A watermark that moves while the loop is busy is taken by the loop's
    /// first look, without its registered wait (which that move woke, and
    /// so unregistered): the next move must still wake the parked loop, not
    /// wait for its timer (an hour here, on paused time).
    #[tokio::test(start_paused = true)]
    async fn a_watermark_moving_while_the_loop_is_busy_still_wakes_it_next_time() {
        let (tx, rx) = sources();
        let (go, go_rx) = mpsc::unbounded_channel();
        let mut woke = spawn_loop(rx, go_rx);
        let t0 = tokio::time::Instant::now();
        // Parked, its waits registered; a request comes.
        tokio::task::yield_now().await;
        tx.requests.try_send(request()).unwrap();
        assert_eq!(woke.recv().await, Some("request"));
        // Busy with the request: the write it started becomes durable.
        tx.persisted.send(None).unwrap();
        go.send(()).unwrap();
        assert_eq!(woke.recv().await, Some("persisted"));
        // Parked now; the next write becomes durable.
        tokio::task::yield_now().await;
        tx.persisted.send(None).unwrap();
        assert_eq!(woke.recv().await, Some("persisted"));
        assert_eq!(t0.elapsed(), Duration::ZERO, "woken at once, not by a tick");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_sources_neither_wake_the_loop_nor_hide_the_others() {
        let (tx, mut rx) = sources();
        drop((tx.persisted, tx.applied, tx.events, tx.inbound));
        assert_eq!(rx.woken_by(no_slot()).await, "pending");
        tx.requests.try_send(request()).unwrap();
        assert_eq!(rx.woken_by(no_slot()).await, "request");
        drop(tx.requests);
        assert_eq!(rx.woken_by(no_slot()).await, "pending");
        // A closed shutdown or failure watch stops the loop.
        drop(tx.fatal);
        assert_eq!(rx.woken_by(no_slot()).await, "fatal");
        drop(tx.shutdown);
        assert_eq!(rx.woken_by(no_slot()).await, "shutdown");
    }
}
