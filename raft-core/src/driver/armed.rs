//! A wait for the next change of a `watch` channel that stays registered
//! with the channel from one wait of the driver loop to the next.
//!
//! The loop waits on four `watch` channels (shutdown, failure, the
//! persisted and the applied watermarks) besides its queues and its timer.
//! A `changed()` future made for each wait registers with the channel's
//! list of waiters and leaves it again when dropped, each under the list's
//! lock: eight lock round trips per wait of a loop that waits thousands of
//! times a second, for channels of which two almost never change. An
//! [`Armed`] wait registers once and is only made again after its channel
//! changed (or its registration was spent, see [`Relay`]); while the
//! channel has not changed, nothing woke the registration and the waker is
//! the same, checking it is two atomic loads.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::watch;

/// What an armed wait resolves to: `changed()`'s result.
type Changed = Result<(), watch::error::RecvError>;

/// The registered wait for the next change of one `watch` channel.
pub(super) struct Armed {
    /// `changed()` on a clone of the loop's receiver, made when the loop
    /// last found the channel changed (or never polled).
    wait: Option<Pin<Box<dyn Future<Output = Changed> + Send>>>,
    /// The waker `wait` was last polled with.
    relay: Option<Arc<Relay>>,
}

/// The waker an armed wait registers with the channel: it wakes the task
/// and notes that the registration is used up. A change wakes a waiter
/// once and unregisters it; the loop may then take the change without
/// polling the wait (its first look at its inputs does not wait), and
/// without this note would go on taking the spent registration for a live
/// one, asleep through every later change until something else woke it.
struct Relay {
    task: Waker,
    fired: AtomicBool,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Armed {
    pub(super) fn new() -> Self {
        Self {
            wait: None,
            relay: None,
        }
    }

    /// Like polling `rx.changed()`: ready with `Ok` when `rx` holds a value
    /// it has not seen (also when its sender is gone since), with `Err`
    /// when the sender is gone and there is nothing new; otherwise pending,
    /// with `cx`'s task woken at the next change.
    pub(super) fn poll<T: Send + Sync + 'static>(
        &mut self,
        rx: &watch::Receiver<T>,
        cx: &mut Context<'_>,
    ) -> Poll<Changed> {
        loop {
            // Registered for this task, and not woken since.
            let registered = self.wait.is_some()
                && self.relay.as_ref().is_some_and(|r| {
                    !r.fired.load(Ordering::Acquire) && r.task.will_wake(cx.waker())
                });
            if registered && matches!(rx.has_changed(), Ok(false)) {
                // The channel wakes the task when it changes.
                return Poll::Pending;
            }
            let wait = self.wait.get_or_insert_with(|| {
                // A clone has seen what the loop's receiver has seen.
                let mut rx = rx.clone();
                // Unconstrained: out of cooperative budget, `changed()`
                // returns pending without registering, and the polls that
                // follow only look at the channel.
                Box::pin(tokio::task::unconstrained(
                    async move { rx.changed().await },
                ))
            });
            let relay = match &self.relay {
                Some(r) if r.task.will_wake(cx.waker()) => {
                    // Cleared before the poll: a change after it either
                    // shows in the poll or fires the relay again.
                    r.fired.store(false, Ordering::Release);
                    Arc::clone(r)
                }
                _ => {
                    let r = Arc::new(Relay {
                        task: cx.waker().clone(),
                        fired: AtomicBool::new(false),
                    });
                    self.relay = Some(Arc::clone(&r));
                    r
                }
            };
            let waker = Waker::from(relay);
            let Poll::Ready(result) = wait.as_mut().poll(&mut Context::from_waker(&waker)) else {
                return Poll::Pending;
            };
            self.wait = None;
            if result.is_ok() && matches!(rx.has_changed(), Ok(false)) {
                // A change the loop has taken meanwhile (through a check
                // that did not wait): wait for the next one.
                continue;
            }
            return Poll::Ready(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    /// Whether the armed wait is ready within a millisecond.
    async fn ready(armed: &mut Armed, rx: &watch::Receiver<u64>) -> Option<bool> {
        let wait = poll_fn(|cx| armed.poll(rx, cx));
        let changed = tokio::time::timeout(Duration::from_millis(1), wait).await;
        changed.ok().map(|c| c.is_ok())
    }

    #[tokio::test(start_paused = true)]
    async fn an_armed_wait_sees_each_change_once_and_then_the_closed_channel() {
        let (tx, mut rx) = watch::channel(0u64);
        let mut armed = Armed::new();
        assert_eq!(ready(&mut armed, &rx).await, None, "nothing new yet");
        assert_eq!(ready(&mut armed, &rx).await, None, "still registered");
        tx.send(1).unwrap();
        assert_eq!(ready(&mut armed, &rx).await, Some(true));
        // Until the loop takes the value, it stays new.
        assert_eq!(ready(&mut armed, &rx).await, Some(true));
        assert_eq!(*rx.borrow_and_update(), 1);
        assert_eq!(ready(&mut armed, &rx).await, None);
        // A change the loop took without waiting does not wake it again.
        tx.send(2).unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);
        assert_eq!(ready(&mut armed, &rx).await, None);
        // A value sent before the sender went is still new; then closed.
        tx.send(3).unwrap();
        drop(tx);
        assert_eq!(ready(&mut armed, &rx).await, Some(true));
        assert_eq!(*rx.borrow_and_update(), 3);
        assert_eq!(ready(&mut armed, &rx).await, Some(false));
    }

    /// A wait first polled when its task has spent its cooperative budget
    /// (tokio's `changed()` then returns at once without registering) must
    /// still register: later polls only look at the channel.
    #[tokio::test]
    async fn an_armed_wait_first_polled_out_of_budget_still_wakes_its_task() {
        let (tx, rx) = watch::channel(0u64);
        let waiter = tokio::spawn(async move {
            let mut armed = Armed::new();
            let mut spent = false;
            poll_fn(|cx| {
                if !spent {
                    spent = true;
                    // `consume_budget` is pending once none is left.
                    loop {
                        let mut unit = std::pin::pin!(tokio::task::consume_budget());
                        if unit.as_mut().poll(cx).is_pending() {
                            break;
                        }
                    }
                }
                armed.poll(&rx, cx)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(1).unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(woke.is_ok(), "the change did not wake the waiting task");
    }

    /// As the loop waits: looks first, waits through `armed` if nothing is
    /// new; takes the value.
    async fn next(armed: &mut Armed, rx: &mut watch::Receiver<u64>) -> u64 {
        poll_fn(|cx| {
            if rx.has_changed().unwrap_or(true) {
                return Poll::Ready(*rx.borrow_and_update());
            }
            armed.poll(rx, cx).map(|_| *rx.borrow_and_update())
        })
        .await
    }

    /// The loop's first look at its inputs takes a change without polling
    /// the armed wait (`has_changed`, then `borrow_and_update`). The wait
    /// registered before that change was woken by it and is registered no
    /// more: the next change must still wake the task.
    #[tokio::test]
    async fn a_change_after_one_taken_without_the_armed_wait_still_wakes_its_task() {
        let (tx, mut rx) = watch::channel(0u64);
        let (took_tx, took_rx) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn(async move {
            let mut armed = Armed::new();
            assert_eq!(next(&mut armed, &mut rx).await, 1);
            let _ = took_tx.send(());
            next(&mut armed, &mut rx).await
        });
        tokio::task::yield_now().await;
        tx.send(1).unwrap();
        took_rx.await.expect("the waiter took the first change");
        // The waiter is parked in its second wait (a current-thread
        // runtime runs this task only once it is).
        tx.send(2).unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert_eq!(
            woke.expect("the second change did not wake the waiting task")
                .expect("task"),
            2
        );
    }

    #[tokio::test]
    async fn a_change_wakes_a_task_waiting_on_an_armed_wait() {
        let (tx, rx) = watch::channel(0u64);
        let waiter = tokio::spawn(async move {
            let mut armed = Armed::new();
            poll_fn(|cx| armed.poll(&rx, cx)).await
        });
        tokio::task::yield_now().await;
        tx.send(1).unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert!(woke.expect("woken").expect("task").is_ok());
    }
}
