//! One watch's task: replay from the history, then the published
//! changes, catching up from the history again whenever it fell behind.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};

use super::hub::Published;
use super::{
    CancelReason, Event, EventKind, KeyRange, WatchConfig, WatchHub, WatchRequest, WatchResponse,
};
use crate::store::{KvReader, PageLimit, StoreError};

/// A watch's place among the node's open watches; given back on drop.
pub(super) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A place when fewer than `limit` watches are open.
    pub(super) fn take(open: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()?;
        metrics::gauge!("raft_node_watchers").increment(1.0);
        Some(Self(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("raft_node_watchers").decrement(1.0);
    }
}

/// How a watcher's live phase ended.
enum Live {
    /// It fell behind, or a snapshot replaced the data: catch up.
    CatchUp,
    /// The consumer went away.
    Gone,
    /// Canceled (sent).
    Canceled,
}

/// Counts a watcher that fell behind the ring and catches up.
fn count_lagged() {
    metrics::counter!("raft_node_watch_catchups_total", "reason" => "lagged").increment(1);
}

/// How sending changes ended.
enum Sent {
    /// All sent.
    All,
    /// The watcher fell more than `buffer_bytes` behind the ring while it
    /// waited for its consumer: it catches up from the history.
    Lagging,
    /// The consumer went away.
    Gone,
}

/// What woke a live watcher.
enum Wake {
    Published(Result<Arc<Published>, RecvError>),
    Tick,
    Gone,
    Stop,
}

/// Waits between tries while a snapshot install replaces the data.
const INSTALL_RETRY: Duration = Duration::from_millis(50);

pub(super) struct Watcher {
    pub(super) hub: WatchHub,
    pub(super) reader: KvReader,
    pub(super) cfg: Arc<WatchConfig>,
    pub(super) range: KeyRange,
    pub(super) req: WatchRequest,
    pub(super) tx: mpsc::Sender<WatchResponse>,
    /// The first revision not sent yet.
    pub(super) next: u64,
    /// `next - 1`, for the consumer: every change through it is in `tx`
    /// (stored after the send).
    pub(super) sent_through: Arc<AtomicU64>,
    /// The latest store revision this watcher knows of.
    pub(super) seen: u64,
    /// The bytes of changes published up to what this watcher took from
    /// the ring (or up to its subscription).
    pub(super) pos: u64,
    /// The bytes of changes published so far.
    pub(super) total: tokio::sync::watch::Receiver<u64>,
    /// Becomes `true` when the node stops.
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
    pub(super) _slot: Slot,
}

impl Watcher {
    /// Runs the watch: `rx` was subscribed before the store was at `upto`.
    pub(super) async fn run(mut self, rx: broadcast::Receiver<Arc<Published>>, mut upto: u64) {
        let mut rx = Some(rx);
        loop {
            self.seen = self.seen.max(upto);
            match self.replay(upto, &mut rx).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(reason) => return self.cancel(reason).await,
            }
            // Without the ring (let go of while replaying), catch up again.
            if let Some(rx) = rx.as_mut() {
                match self.live(rx).await {
                    Live::CatchUp => {}
                    Live::Gone | Live::Canceled => return,
                }
            }
            rx = Some(self.hub.subscribe());
            self.pos = *self.total.borrow();
            upto = loop {
                match self.reader.revisions() {
                    Ok(r) => break r.current,
                    // Its end is published: caught up again after it.
                    Err(StoreError::Installing) => tokio::time::sleep(INSTALL_RETRY).await,
                    Err(e) => return self.cancel(CancelReason::Store(e.to_string())).await,
                }
            };
        }
    }

    async fn cancel(&self, reason: CancelReason) {
        metrics::counter!("raft_node_watchers_canceled_total", "reason" => reason.label())
            .increment(1);
        let _ = self.tx.send(WatchResponse::Canceled(reason)).await;
    }

    /// More than `buffer_bytes` of changes were published past what this
    /// watcher took from the ring.
    fn lagging(&self) -> bool {
        self.total.borrow().saturating_sub(self.pos) > self.cfg.buffer_bytes as u64
    }

    /// Lets go of the ring: what it holds for this watcher is freed.
    fn let_go(rx: &mut Option<broadcast::Receiver<Arc<Published>>>) {
        if rx.take().is_some() {
            count_lagged();
        }
    }

    /// Sends the changes from `next` to `upto` out of the history, page by
    /// page; `false` when the consumer went away. Lets go of the ring `rx`
    /// when it falls too far behind meanwhile.
    async fn replay(
        &mut self,
        upto: u64,
        rx: &mut Option<broadcast::Receiver<Arc<Published>>>,
    ) -> Result<bool, CancelReason> {
        while self.next <= upto {
            if *self.stop.borrow() {
                return Err(CancelReason::Shutdown);
            }
            let (reader, range) = (self.reader.clone(), self.range.clone());
            let page = PageLimit {
                events: self.cfg.replay_page,
                bytes: self.cfg.replay_page_bytes,
            };
            let after = self.next - 1;
            let Some(place) = self.replay_place().await? else {
                return Ok(false);
            };
            let read = tokio::task::spawn_blocking(move || {
                let _place = place;
                reader.changes(&range, after, upto, page)
            })
            .await
            .map_err(|e| CancelReason::Store(format!("replay task failed: {e}")))?;
            match read {
                Ok(p) => match self.send_changes(&p.events, p.through, rx.is_some()).await {
                    Sent::All => {
                        if self.lagging() {
                            Self::let_go(rx);
                        }
                    }
                    Sent::Lagging => Self::let_go(rx),
                    Sent::Gone => return Ok(false),
                },
                Err(StoreError::Installing) => tokio::time::sleep(INSTALL_RETRY).await,
                Err(StoreError::Compacted { compacted, .. }) => {
                    return Err(CancelReason::Compacted { compacted })
                }
                Err(e) => return Err(CancelReason::Store(e.to_string())),
            }
        }
        Ok(true)
    }

    /// A place to read a replay page (one of the node's `max_replays`);
    /// `None` when the consumer went away meanwhile.
    async fn replay_place(&mut self) -> Result<Option<OwnedSemaphorePermit>, CancelReason> {
        let places = self.hub.replays.clone();
        let (tx, stop) = (&self.tx, &mut self.stop);
        tokio::select! {
            place = places.acquire_owned() => place.map(Some).map_err(|_| CancelReason::Shutdown),
            () = tx.closed() => Ok(None),
            Ok(_) = stop.wait_for(|s| *s) => Err(CancelReason::Shutdown),
        }
    }

    /// Sends `events` (by revision, from `next` on) grouped by revision,
    /// filtered by the request; then every revision through `through` is
    /// done. Stops early when the consumer went away, or, while
    /// `holding` the ring, when it falls too far behind waiting for the
    /// consumer.
    async fn send_changes(&mut self, events: &[Event], through: u64, holding: bool) -> Sent {
        let mut rest = events;
        while let Some(first) = rest.first() {
            let rev = first.revision;
            let n = rest.iter().take_while(|e| e.revision == rev).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            if rev < self.next {
                continue;
            }
            let shown: Vec<Event> = group.iter().filter_map(|e| self.shown(e)).collect();
            if !shown.is_empty() {
                let count = shown.len() as u64;
                let resp = WatchResponse::Changes {
                    revision: rev,
                    events: shown,
                };
                let (pos, budget) = (self.pos, self.cfg.buffer_bytes as u64);
                let (tx, total) = (&self.tx, &mut self.total);
                tokio::select! {
                    sent = tx.send(resp) => if sent.is_err() {
                        return Sent::Gone;
                    },
                    Ok(_) = total.wait_for(|t| t.saturating_sub(pos) > budget), if holding => {
                        return Sent::Lagging;
                    }
                }
                metrics::counter!("raft_node_watch_events_sent_total").increment(count);
            }
            self.advance(rev + 1);
        }
        self.advance(self.next.max(through + 1));
        Sent::All
    }

    /// Every revision before `next` was sent (or is not this watch's).
    fn advance(&mut self, next: u64) {
        self.next = next;
        self.sent_through
            .store(next.saturating_sub(1), Ordering::Release);
    }

    /// `e` as this watch shows it, if it does.
    fn shown(&self, e: &Event) -> Option<Event> {
        let wanted = match e.kind {
            EventKind::Put => !self.req.no_put,
            EventKind::Delete => !self.req.no_delete,
        };
        if !wanted || !self.range.contains(&e.kv.key) {
            return None;
        }
        let mut e = e.clone();
        if !self.req.prev_kv {
            e.prev_kv = None;
        }
        Some(e)
    }

    /// Serves published changes until the watcher must catch up, is
    /// canceled or its consumer goes away.
    async fn live(&mut self, rx: &mut broadcast::Receiver<Arc<Published>>) -> Live {
        let period = self
            .cfg
            .progress_interval
            .filter(|_| self.req.progress_notify);
        let mut ticks = period.map(|p| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let tick = async {
                match ticks.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            let wake = {
                let (tx, stop) = (&self.tx, &mut self.stop);
                tokio::select! {
                    msg = rx.recv() => Wake::Published(msg),
                    _ = tick => Wake::Tick,
                    () = tx.closed() => Wake::Gone,
                    // Without its sender (all `Watches` dropped), never.
                    Ok(_) = stop.wait_for(|s| *s) => Wake::Stop,
                }
            };
            match wake {
                Wake::Published(Ok(p)) => match &*p {
                    Published::Changes {
                        revision,
                        events,
                        end,
                    } => {
                        self.pos = *end;
                        if self.lagging() {
                            count_lagged();
                            return Live::CatchUp;
                        }
                        self.seen = self.seen.max(*revision);
                        match self.send_changes(events, *revision, true).await {
                            Sent::All => {}
                            Sent::Lagging => {
                                count_lagged();
                                return Live::CatchUp;
                            }
                            Sent::Gone => return Live::Gone,
                        }
                    }
                    Published::Replaced => {
                        metrics::counter!("raft_node_watch_catchups_total", "reason" => "snapshot")
                            .increment(1);
                        return Live::CatchUp;
                    }
                },
                Wake::Published(Err(RecvError::Lagged(_))) => {
                    count_lagged();
                    return Live::CatchUp;
                }
                Wake::Published(Err(RecvError::Closed)) | Wake::Stop => {
                    self.cancel(CancelReason::Shutdown).await;
                    return Live::Canceled;
                }
                // Not before the store got to the watch's start: a client
                // resumes after the revision reported.
                Wake::Tick if self.seen.saturating_add(1) < self.next => {}
                Wake::Tick => {
                    // Live, everything up to the revision known was sent.
                    let revision = self.seen;
                    if self
                        .tx
                        .send(WatchResponse::Progress { revision })
                        .await
                        .is_err()
                    {
                        return Live::Gone;
                    }
                }
                Wake::Gone => return Live::Gone,
            }
        }
    }
}
