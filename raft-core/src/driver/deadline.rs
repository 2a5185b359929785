//! Proposals' deadlines on one shared timer per node, instead of a tokio
//! timer per proposal: registering a proposal is a push onto a queue
//! ordered by deadline, and its answer takes it off again; one task sleeps
//! until the earliest deadline and wakes the proposals that reach it.
//!
//! Every proposal of a node waits [`DriverConfig::request_timeout`](super::DriverConfig::request_timeout)
//! from the moment it registers, and the clock is read under the queue's
//! lock, so deadlines come in increasing order: the queue is a FIFO whose
//! front is always the earliest deadline. A proposal answered before its
//! deadline leaves a hole (found by binary search on its sequence number);
//! holes at the front go at once, and the queue is compacted whenever holes
//! outnumber live entries, so it holds at most about twice the proposals
//! waiting, however long one of them waits.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::ticket::{Expire, Ticket};

/// Entries the queue may hold beyond twice the live ones before it is
/// compacted (so a small queue is never compacted at each answer).
const SLACK: usize = 32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock: a poisoned one is intact.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One registered deadline.
#[derive(Debug)]
struct Entry {
    seq: u64,
    deadline: Instant,
    /// `None` once answered (a hole).
    ticket: Option<Arc<dyn Expire>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// In increasing `seq`, hence increasing `deadline`.
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// Entries that are not holes.
    live: usize,
}

impl Queue {
    /// Drops the holes at the front, and all of them when they outnumber
    /// the live entries.
    fn tidy(&mut self) {
        while self.entries.front().is_some_and(|e| e.ticket.is_none()) {
            self.entries.pop_front();
        }
        if self.entries.len() > 2 * self.live + SLACK {
            self.entries.retain(|e| e.ticket.is_some());
        }
    }
}

/// The deadlines of one node's waiting proposals, shared by its handles
/// and its timer task.
#[derive(Debug)]
pub(crate) struct Deadlines {
    queue: Mutex<Queue>,
    /// Wakes the timer task when the queue goes from empty to not.
    changed: Notify,
    /// How long every proposal waits: one for all, so that deadlines come
    /// in the order of registration (the queue is a FIFO).
    timeout: Duration,
}

/// A proposal's place in the queue; dropping it takes the proposal off.
#[derive(Debug)]
pub(crate) struct Registration<'a> {
    deadlines: &'a Deadlines,
    seq: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.deadlines.queue);
        let Some(front) = q.entries.front() else {
            return;
        };
        // Sequence numbers increase along the queue; an entry already
        // expired (popped by the timer) or compacted away is not found.
        let Some(at) = self.seq.checked_sub(front.seq) else {
            return;
        };
        let at = match q.entries.get(at as usize) {
            // No compaction since: the entry is at its offset.
            Some(e) if e.seq == self.seq => Some(at as usize),
            _ => q.entries.binary_search_by_key(&self.seq, |e| e.seq).ok(),
        };
        if let Some(at) = at {
            if q.entries[at].ticket.take().is_some() {
                q.live -= 1;
            }
            q.tidy();
        }
    }
}

impl Deadlines {
    /// A node's deadlines, each `timeout` after its registration.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            queue: Mutex::default(),
            changed: Notify::new(),
            timeout,
        }
    }

    /// Registers `ticket` to expire the node's request timeout from now.
    pub(crate) fn register<R: Send + 'static>(&self, ticket: &Ticket<R>) -> Registration<'_> {
        let mut q = lock(&self.queue);
        let seq = q.next_seq;
        q.next_seq += 1;
        let was_empty = q.live == 0;
        q.entries.push_back(Entry {
            seq,
            deadline: Instant::now() + self.timeout,
            ticket: Some(ticket.expirable()),
        });
        q.live += 1;
        drop(q);
        if was_empty {
            self.changed.notify_one();
        }
        Registration {
            deadlines: self,
            seq,
        }
    }

    /// Expires the entries whose deadline is at or before `now`; returns the
    /// earliest deadline left.
    fn expire_until(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = {
            let mut q = lock(&self.queue);
            q.tidy();
            while let Some(e) = q.entries.front() {
                if e.deadline > now {
                    break;
                }
                if let Some(t) = q.entries.pop_front().and_then(|e| e.ticket) {
                    q.live -= 1;
                    expired.push(t);
                }
                q.tidy();
            }
            q.entries.front().map(|e| e.deadline)
        };
        for t in expired {
            t.expire();
        }
        next
    }

    /// The timer task: sleeps until the earliest deadline, expires what
    /// reached it, until `done` says the node stopped and no deadline is
    /// left. It outlives the node's stop while deadlines remain: a
    /// proposal that entered the request queue as the engine task stopped
    /// reading it is never answered (nor dropped while a handle holds the
    /// queue), and only its deadline ends its caller's wait. Nothing
    /// registers a deadline that could be so stranded after the stop: the
    /// queue is closed by then.
    pub(crate) async fn run(self: Arc<Self>, mut done: watch::Receiver<bool>) {
        let mut stop = std::pin::pin!(async move {
            let _ = done.wait_for(|d| *d).await;
        });
        let mut stopped = false;
        loop {
            let next = self.expire_until(Instant::now());
            if stopped && next.is_none() {
                return;
            }
            // Whichever comes first: the earliest deadline (or, with none,
            // a first registration), or the node's stop.
            let mut woken = std::pin::pin!(async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => self.changed.notified().await,
                }
            });
            std::future::poll_fn(|cx| {
                if !stopped && stop.as_mut().poll(cx).is_ready() {
                    stopped = true;
                    return Poll::Ready(());
                }
                woken.as_mut().poll(cx)
            })
            .await;
        }
    }
}

/// Waits for `rx` until `ticket` expires: `None` when it did first.
pub(crate) async fn until_expired<F: Future + Unpin, R>(
    rx: &mut F,
    ticket: &Ticket<R>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(out) = Pin::new(&mut *rx).poll(cx) {
            return Poll::Ready(Some(out));
        }
        if ticket.expired_or_wake(cx.waker()) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(d: &Deadlines) -> usize {
        lock(&d.queue).entries.len()
    }

    /// Answered proposals leave the queue (or are compacted away), even
    /// while an older one keeps waiting at its front.
    #[test]
    fn the_queue_holds_about_the_waiting_proposals_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let d = Deadlines::new(Duration::from_secs(5));
            let stuck = Ticket::<()>::default();
            let _held = d.register(&stuck);
            for _ in 0..10_000 {
                let t = Ticket::<()>::default();
                let r = d.register(&t);
                drop(r);
            }
            assert!(len(&d) <= 2 + SLACK, "{} entries for 1 waiting", len(&d));
            drop(_held);
            assert_eq!(len(&d), 0);
        });
    }

    /// Each ticket expires at its own deadline, in order, and not before.
    #[test]
    fn tickets_expire_at_their_own_deadlines() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let d = Deadlines::new(Duration::from_secs(1));
            let start = Instant::now();
            let a = Ticket::<()>::default();
            let _ra = d.register(&a);
            tokio::time::advance(Duration::from_millis(300)).await;
            let b = Ticket::<()>::default();
            let _rb = d.register(&b);
            let expired = |t: &Ticket<()>| t.expired_or_wake(std::task::Waker::noop());
            assert_eq!(
                d.expire_until(start + Duration::from_millis(999)),
                Some(start + Duration::from_secs(1))
            );
            assert!(!expired(&a) && !expired(&b));
            assert_eq!(
                d.expire_until(start + Duration::from_secs(1)),
                Some(start + Duration::from_millis(1300))
            );
            assert!(expired(&a) && !expired(&b));
            assert_eq!(d.expire_until(start + Duration::from_millis(1300)), None);
            assert!(expired(&b));
        });
    }

    /// A proposal can reach the request queue after the engine task
    /// stopped reading it (its send took a place in the queue just before
    /// the queue closed): then nothing answers it, nor drops it, while a
    /// handle holds the queue. Its deadline still ends the caller's wait,
    /// also when it falls after the node reported itself stopped; the
    /// timer task then ends once no deadline is left.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_a_wait_that_outlives_the_node() {
        let d = Arc::new(Deadlines::new(Duration::from_secs(5)));
        let (done_tx, done_rx) = watch::channel(false);
        let timer = tokio::spawn(Arc::clone(&d).run(done_rx));
        let (requests, engine_end) = tokio::sync::mpsc::channel(1);
        let ticket = Ticket::<()>::default();
        let registration = d.register(&ticket);
        let place = requests.reserve().await.expect("queue open");
        drop(engine_end);
        done_tx.send(true).expect("timer listens");
        tokio::task::yield_now().await;
        place.send(ticket.reply());
        let waited = tokio::time::timeout(Duration::from_secs(60), ticket.answer()).await;
        assert_eq!(waited, Ok(None), "the deadline ended the wait");
        drop(registration);
        tokio::time::timeout(Duration::from_secs(60), timer)
            .await
            .expect("the timer task ends")
            .expect("timer task");
        drop(requests);
    }
}
