//! Where the store publishes its changes once they are in RocksDB: a
//! broadcast ring of bounded length, so publishing never waits for a
//! watcher; a watcher that falls more than the ring behind is told so and
//! catches up from the history.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Event, WatchConfig};
use crate::store::event_bytes;

/// What the store publishes.
#[derive(Debug)]
pub(crate) enum Published {
    /// The key changes of one applied batch, in apply order, and the
    /// store's revision after it.
    Changes {
        /// The store's revision after the batch.
        revision: u64,
        /// The changes, by revision.
        events: Vec<Event>,
        /// The bytes of changes published so far, this batch's included.
        end: u64,
    },
    /// A snapshot replaced the data: changes it covers were never
    /// published, so every watcher catches up from the history.
    Replaced,
}

/// The publishing side, held by the state machine.
/// Shared by every [`super::Watches`] of the node: the count of open
/// watches (for the node's limit) and the stop switch.
#[derive(Debug, Clone)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Published>>,
    pub(super) open: Arc<AtomicUsize>,
    pub(super) stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Places for replay pages read at once.
    pub(super) replays: Arc<tokio::sync::Semaphore>,
    /// The bytes of changes published so far.
    pub(super) total: Arc<tokio::sync::watch::Sender<u64>>,
}

impl WatchHub {
    /// A hub whose watchers may fall `cfg.buffer` batches behind before
    /// they catch up from the history (at least 1), and read at most
    /// `cfg.max_replays` replay pages at once (at least 1).
    pub fn new(cfg: &WatchConfig) -> Self {
        Self {
            tx: broadcast::channel(cfg.buffer.max(1)).0,
            open: Arc::new(AtomicUsize::new(0)),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            replays: Arc::new(tokio::sync::Semaphore::new(cfg.max_replays.max(1))),
            total: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Batches published and not yet taken by every watcher.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Publishes the changes of a batch now in the store. Never waits.
    pub(crate) fn publish(&self, events: Vec<Event>) {
        let Some(revision) = events.last().map(|e| e.revision) else {
            return;
        };
        if self.tx.receiver_count() > 0 {
            let bytes: usize = events.iter().map(event_bytes).sum();
            let mut end = 0;
            self.total.send_modify(|t| {
                *t = t.saturating_add(bytes as u64);
                end = *t;
            });
            let _ = self.tx.send(Arc::new(Published::Changes {
                revision,
                events,
                end,
            }));
        }
    }

    /// Tells every watcher that a snapshot replaced the data.
    pub(crate) fn replaced(&self) {
        let _ = self.tx.send(Arc::new(Published::Replaced));
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }
}
