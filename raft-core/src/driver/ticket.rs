//! A proposal's [`Ticket`]: the one allocation a proposal makes between
//! its caller and the driver. It decides whether the driver takes the
//! proposal or the caller abandons it, carries the driver's answer back to
//! the caller (in place of a `oneshot` channel of its own), and is where
//! the node's shared timer (`deadline.rs`) tells the caller that its
//! deadline passed. The caller and the timer wake the caller's task
//! through the same waker slot, so a proposal costs one allocation and one
//! wake-up for its answer.
//!
//! The driver's end is a [`Reply`]: dropped without an answer (the driver
//! stopped with the proposal still queued or waiting), it tells the caller
//! so, as a dropped `oneshot` sender did.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::ProposeError;

const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// What the caller of a proposal waits for.
pub(crate) type Answer<R> = Result<R, ProposeError>;

/// The caller's end of a proposal: see the module docs.
pub(crate) struct Ticket<R>(Arc<TicketState<R>>);

impl<R> Clone for Ticket<R> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<R> std::fmt::Debug for Ticket<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<R> std::fmt::Debug for TicketState<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct TicketState<R> {
    /// `PENDING`, then `TAKEN` by the driver or `ABANDONED` by the caller.
    state: AtomicU8,
    slot: Mutex<Slot<R>>,
}

/// What the driver, the timer and the caller share.
struct Slot<R> {
    /// Whether the deadline passed.
    expired: bool,
    answer: Outcome<R>,
    /// The caller's waker while it waits.
    waker: Option<Waker>,
}

enum Outcome<R> {
    /// No answer yet.
    Waiting,
    /// The driver's answer, not yet taken by the caller.
    Answered(Answer<R>),
    /// The driver dropped its end without answering.
    Dropped,
    /// The caller took the answer.
    Taken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock: a poisoned one is intact.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Something the shared timer can expire.
pub(crate) trait Expire: Send + Sync + std::fmt::Debug {
    /// The deadline passed: wakes the caller.
    fn expire(&self);
}

impl<R: Send> Expire for TicketState<R> {
    fn expire(&self) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.expired = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<R> Default for Ticket<R> {
    fn default() -> Self {
        Self(Arc::new(TicketState {
            state: AtomicU8::new(PENDING),
            slot: Mutex::new(Slot {
                expired: false,
                answer: Outcome::Waiting,
                waker: None,
            }),
        }))
    }
}

impl<R: Send + 'static> Ticket<R> {
    /// What the shared timer holds to expire this ticket.
    pub(crate) fn expirable(&self) -> Arc<dyn Expire> {
        self.0.clone()
    }
}

impl<R> Ticket<R> {
    /// The driver's end of this ticket.
    pub(crate) fn reply(&self) -> Reply<R> {
        Reply(Some(self.clone()))
    }

    /// The driver takes the proposal; false when the caller gave up on it.
    pub(crate) fn take(&self) -> bool {
        self.0
            .state
            .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller gives up; false when the driver already took it.
    pub(crate) fn abandon(&self) -> bool {
        self.0
            .state
            .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the driver took the proposal.
    pub(crate) fn taken(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == TAKEN
    }

    /// Whether the deadline passed; otherwise the timer will wake `waker`
    /// when it does.
    pub(crate) fn expired_or_wake(&self, waker: &Waker) -> bool {
        let mut slot = lock(&self.0.slot);
        if slot.expired {
            return true;
        }
        register(&mut slot.waker, waker);
        false
    }

    /// Polls for the driver's answer or the deadline, whichever came
    /// first (the answer when both did): `Some(Ok(answer))`, `Some(Err(()))`
    /// when the driver dropped its end unanswered, `None` when the
    /// deadline passed.
    pub(crate) fn poll_answer(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Answer<R>, ()>>> {
        let mut slot = lock(&self.0.slot);
        match std::mem::replace(&mut slot.answer, Outcome::Taken) {
            Outcome::Answered(answer) => return Poll::Ready(Some(Ok(answer))),
            Outcome::Dropped => return Poll::Ready(Some(Err(()))),
            Outcome::Taken => panic!("a proposal's answer polled after it was taken"),
            Outcome::Waiting => slot.answer = Outcome::Waiting,
        }
        if slot.expired {
            return Poll::Ready(None);
        }
        register(&mut slot.waker, cx.waker());
        Poll::Pending
    }

    /// Waits for the driver's answer until the deadline (see
    /// [`poll_answer`](Self::poll_answer)).
    pub(crate) async fn answer(&self) -> Option<Result<Answer<R>, ()>> {
        std::future::poll_fn(|cx| self.poll_answer(cx)).await
    }

    /// Leaves `outcome` for the caller and wakes it.
    fn settle(&self, outcome: Outcome<R>) {
        let waker = {
            let mut slot = lock(&self.0.slot);
            slot.answer = outcome;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Keeps `waker` in `slot` unless the one there wakes the same task.
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// The driver's end of a proposal's [`Ticket`]: answers the caller once;
/// dropped unanswered, tells the caller that the driver stopped.
pub(crate) struct Reply<R>(Option<Ticket<R>>);

impl<R> std::fmt::Debug for Reply<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Reply").field(&self.0).finish()
    }
}

impl<R> Reply<R> {
    /// The driver takes the proposal; false when the caller gave up on it
    /// (see [`Ticket::take`]).
    pub(crate) fn take(&self) -> bool {
        self.0.as_ref().is_some_and(Ticket::take)
    }

    /// Answers the caller; gives the answer back when the caller is known
    /// to have stopped waiting (as a `oneshot` sender does).
    ///
    /// Best effort: `Ok` does not promise that anyone reads the answer (the
    /// deadline timer may briefly hold the ticket of a caller already
    /// gone), so nothing may count on an `Ok` to hand an answer over.
    pub(crate) fn send(mut self, answer: Answer<R>) -> Result<(), Answer<R>> {
        match self.0.take() {
            // Nobody else holds the ticket: the caller and its deadline
            // are gone.
            Some(t) if Arc::strong_count(&t.0) > 1 => {
                t.settle(Outcome::Answered(answer));
                Ok(())
            }
            _ => Err(answer),
        }
    }
}

impl<R> Drop for Reply<R> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.settle(Outcome::Dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    /// Whether the caller's wait ends within a millisecond, and how.
    async fn outcome(t: &Ticket<u32>) -> Option<Option<Result<Answer<u32>, ()>>> {
        tokio::time::timeout(Duration::from_millis(1), t.answer())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn the_caller_gets_the_answer_the_driver_sent() {
        let t = Ticket::<u32>::default();
        let reply = t.reply();
        assert!(reply.take() && t.taken() && !t.abandon());
        assert_eq!(outcome(&t).await, None, "nothing answered yet");
        assert_eq!(reply.send(Ok(7)), Ok(()));
        assert_eq!(outcome(&t).await, Some(Some(Ok(Ok(7)))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_dropped_unanswered_ends_the_wait() {
        let t = Ticket::<u32>::default();
        drop(t.reply());
        assert_eq!(outcome(&t).await, Some(Some(Err(()))));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_wait_unless_the_answer_came_first() {
        let t = Ticket::<u32>::default();
        let reply = t.reply();
        t.expirable().expire();
        assert_eq!(outcome(&t).await, Some(None));
        let t = Ticket::<u32>::default();
        t.reply().send(Err(ProposeError::Overloaded)).unwrap();
        t.expirable().expire();
        assert_eq!(
            outcome(&t).await,
            Some(Some(Ok(Err(ProposeError::Overloaded))))
        );
        drop(reply);
    }

    #[test]
    fn an_answer_to_a_caller_that_is_gone_comes_back() {
        let reply = Ticket::<u32>::default().reply();
        assert_eq!(reply.send(Ok(1)), Err(Ok(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_proposal_is_not_taken() {
        let t = Ticket::<u32>::default();
        let reply = t.reply();
        assert!(t.abandon());
        assert!(!reply.take() && !t.taken());
    }

    /// The answer wakes a caller parked on it (from another task).
    #[tokio::test]
    async fn an_answer_wakes_the_waiting_caller() {
        let t = Ticket::<u32>::default();
        let reply = t.reply();
        let waiter = tokio::spawn(async move { poll_fn(|cx| t.poll_answer(cx)).await });
        tokio::task::yield_now().await;
        reply.send(Ok(3)).unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert_eq!(woke.expect("woken").expect("task"), Some(Ok(Ok(3))));
    }
}
