//! Watches: streams of the store's key changes from a revision on,
//! transport-neutral (the HTTP API serves them as server-sent events).
//!
//! Every change made through the store (`put_value` / `delete_value` in
//! `store/mvcc.rs`) becomes an [`Event`]. The state machine publishes a
//! batch's events on a [`WatchHub`] once the batch is written to RocksDB,
//! in apply order; publishing never waits for a watcher.
//!
//! A watch ([`Watches::watch`]) first subscribes to the hub, then reads the
//! store's revision `P`, replays the history from its start revision up to
//! `P` (in pages of at most `replay_page` events and about
//! `replay_page_bytes` bytes, so memory stays bounded; at most
//! `max_replays` pages are read at once on a node, so replays never crowd
//! out the Raft log's reads on the blocking threads), and
//! then serves the published changes above `P`: nothing published after
//! the subscription is missed, and nothing at or below `P` is sent twice.
//! A watcher that falls more than `buffer` batches or `buffer_bytes` bytes
//! of changes behind (its client reads slowly, or it is replaying a long
//! history), or whose node
//! installs a snapshot from the leader, does the same again from the
//! revision it got to (etcd's "unsynced" watchers); when the history it
//! needs was compacted meanwhile, it is canceled with the compacted
//! revision, never silently short.
//!
//! Changes of one revision are delivered together, in one
//! [`WatchResponse::Changes`]: live ones in apply order, replayed ones in
//! key order.

mod event;
mod hub;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Re-exported from [`crate::keys`], where it lives.
pub use crate::keys::prefix_end;
pub use event::{Event, EventKind, KeyRange, KeyValue, RangeEnd};
pub use hub::WatchHub;

use crate::store::{KvReader, StoreError};

/// The limits of watches on a node.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Watches open at once on this node; one more is refused.
    pub max_watchers: usize,
    /// Batches of changes a watcher may fall behind before it catches up
    /// from the history instead.
    pub buffer: usize,
    /// Changes read from the history per page when a watch replays.
    pub replay_page: usize,
    /// Bytes of keys and values (with the previous ones, and 64 more per
    /// change) read from the history per page when a watch replays; a
    /// page holds at least one whole revision whatever its size.
    pub replay_page_bytes: usize,
    /// Bytes of published changes (counted as replay pages count them) a
    /// watcher may fall behind before it lets go of them and catches up
    /// from the history instead: with `buffer`, what bounds the memory
    /// of published changes kept for slow watchers.
    pub buffer_bytes: usize,
    /// Replay pages read at once on this node (each on a blocking thread,
    /// shared with the Raft log's reads); other replaying watches wait.
    pub max_replays: usize,
    /// How often a watch with `progress_notify` reports the revision it
    /// got to (`None`: never).
    pub progress_interval: Option<Duration>,
    /// Responses queued for the consumer of a watch before the watcher
    /// waits for it.
    pub queue: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            max_watchers: 10_000,
            buffer: 1024,
            replay_page: 1000,
            replay_page_bytes: 4 << 20,
            max_replays: 4,
            buffer_bytes: 64 << 20,
            progress_interval: Some(Duration::from_secs(5)),
            queue: 16,
        }
    }
}

/// What to watch (etcd's `WatchCreateRequest`).
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// The first key.
    pub key: Bytes,
    /// etcd's `range_end`: empty for `key` alone, `"\0"` for every key from
    /// `key` on, else the end of `[key, range_end)`.
    pub range_end: Bytes,
    /// The first revision to report (0: changes after now).
    pub start_revision: u64,
    /// Include each key's previous record.
    pub prev_kv: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Report progress every [`WatchConfig::progress_interval`].
    pub progress_notify: bool,
}

impl WatchRequest {
    /// A watch of `key` alone, from now.
    pub fn key(key: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            range_end: Bytes::new(),
            start_revision: 0,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        }
    }
}

/// Why a watch was canceled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    /// The history it needed was compacted: it can start again from
    /// `compacted + 1` at the earliest (etcd's `compact_revision`).
    Compacted {
        /// The compacted revision.
        compacted: u64,
    },
    /// The store could not be read.
    Store(String),
    /// The node is stopping.
    Shutdown,
}

impl CancelReason {
    /// The reason as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Compacted { .. } => "compacted",
            Self::Store(_) => "store_error",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What a watch sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchResponse {
    /// The changes of one revision that the watch covers.
    Changes {
        /// Their revision.
        revision: u64,
        /// The changes.
        events: Vec<Event>,
    },
    /// Every change up to `revision` was sent.
    Progress {
        /// The revision.
        revision: u64,
    },
    /// The watch ends; nothing follows.
    Canceled(CancelReason),
}

/// Why a watch was refused.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The node has as many watches as it allows.
    #[error("this node serves its limit of {limit} watches")]
    TooManyWatchers {
        /// The limit.
        limit: usize,
    },
    /// `range_end` is neither empty, `"\0"` nor above `key`.
    #[error("range_end must be empty, \"\\0\" or above the key")]
    InvalidRange,
    /// The start revision is compacted: changes from
    /// `compacted + 1` on can be watched.
    #[error("revision {requested} is compacted: watches can start from revision {} on", compacted + 1)]
    Compacted {
        /// The start revision asked for.
        requested: u64,
        /// The compacted revision.
        compacted: u64,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The receiving end of a watch; dropping it ends the watch.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<WatchResponse>,
    sent_through: Arc<std::sync::atomic::AtomicU64>,
}

impl WatchStream {
    /// The next response; `None` after a cancel or when the node stops.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        self.rx.recv().await
    }

    /// The next response if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<WatchResponse> {
        self.rx.try_recv().ok()
    }

    /// The revision through which the watch has put every change of its
    /// keys in this stream: read it, then take what is waiting (at most
    /// the stream's queue length, see [`WatchStream::try_next`]), and
    /// every change of the watch up to it was delivered. Past the store's
    /// current revision while a watch waits for its start revision.
    pub fn sent_through(&self) -> u64 {
        self.sent_through.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl futures::Stream for WatchStream {
    type Item = WatchResponse;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WatchResponse>> {
        self.rx.poll_recv(cx)
    }
}

/// Opens watches on a node's store.
#[derive(Debug, Clone)]
pub struct Watches {
    hub: WatchHub,
    reader: KvReader,
    cfg: Arc<WatchConfig>,
}

impl Watches {
    /// Watches of the store `reader` reads, fed by `hub`.
    pub fn new(hub: WatchHub, reader: KvReader, cfg: WatchConfig) -> Self {
        Self {
            hub,
            reader,
            cfg: Arc::new(cfg),
        }
    }

    /// Ends every watch of the node, open now or later, with
    /// [`CancelReason::Shutdown`]: the node is stopping, and their
    /// connections can finish.
    pub fn close_all(&self) {
        self.hub.stopping.send_replace(true);
    }

    /// The watches open now on the node (through every `Watches` of its
    /// store).
    pub fn open(&self) -> usize {
        self.hub.open.load(Ordering::Acquire)
    }

    /// Opens a watch; its changes come from a task of its own until the
    /// stream is dropped or the watch is canceled.
    ///
    /// # Errors
    ///
    /// [`WatchError`]: the limit of watches, a bad range, a compacted
    /// start revision, or a store that cannot be read.
    pub fn watch(&self, req: WatchRequest) -> Result<WatchStream, WatchError> {
        let range = KeyRange::etcd(req.key.clone(), req.range_end.clone())
            .ok_or(WatchError::InvalidRange)?;
        let slot = stream::Slot::take(&self.hub.open, self.cfg.max_watchers).ok_or(
            WatchError::TooManyWatchers {
                limit: self.cfg.max_watchers,
            },
        )?;
        // Subscribed before the revision is read: nothing published after
        // it is missed.
        let rx = self.hub.subscribe();
        let revs = self.reader.revisions()?;
        if req.start_revision != 0 && req.start_revision <= revs.compacted {
            return Err(WatchError::Compacted {
                requested: req.start_revision,
                compacted: revs.compacted,
            });
        }
        let next = match req.start_revision {
            0 => revs.current + 1,
            n => n,
        };
        let (tx, out) = mpsc::channel(self.cfg.queue.max(1));
        let sent_through = Arc::new(std::sync::atomic::AtomicU64::new(next - 1));
        let watcher = stream::Watcher {
            hub: self.hub.clone(),
            reader: self.reader.clone(),
            cfg: self.cfg.clone(),
            range,
            req,
            tx,
            next,
            sent_through: sent_through.clone(),
            seen: 0,
            pos: *self.hub.total.borrow(),
            total: self.hub.total.subscribe(),
            stop: self.hub.stopping.subscribe(),
            _slot: slot,
        };
        tokio::spawn(watcher.run(rx, revs.current));
        Ok(WatchStream {
            rx: out,
            sent_through,
        })
    }
}
