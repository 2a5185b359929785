//! The connection registry: what the cap and the watchdog know of each
//! open connection (requests running, idle since, head started, last
//! write), which connection makes room at the cap, and the socket wrapper
//! and guard that keep those facts current.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::ConnectionLimits;
/// `Conn::state` of a connection chosen to make room.
pub(super) const EVICTED: usize = usize::MAX;

/// What the cap and the watchdog know of one connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: u64,
    /// Requests running, from the head's arrival until the answer is sent
    /// (0 or 1 for HTTP/1.1), or [`EVICTED`]. Eviction swaps 0 for
    /// `EVICTED`, so a connection that starts a request cannot be chosen.
    pub(super) state: AtomicUsize,
    /// When the connection last became idle (opened or answered), in ms
    /// since the registry's start.
    pub(super) idle_since: AtomicU64,
    /// When the first byte of the next request head arrived while idle, in
    /// ms since the registry's start plus one; 0 when none has.
    pub(super) head_started: AtomicU64,
    /// Set once the handler answered: the answer is being sent.
    pub(super) responding: std::sync::atomic::AtomicBool,
    /// When bytes were last written to the client, in ms since the
    /// registry's start.
    pub(super) last_write: AtomicU64,
    /// Wakes the watchdog to look again (its state changed).
    pub(super) rearm: Notify,
    /// Tells the connection to close: it was chosen to make room.
    pub(super) evict: Notify,
}

/// The open connections and, oldest first, when each became idle.
#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) open: HashMap<u64, Arc<Conn>>,
    /// `(id, idle_since)` in the order connections became idle; entries
    /// whose connection closed or has been busy since are stale and
    /// skipped.
    pub(super) idle: VecDeque<(u64, u64)>,
}

#[derive(Debug)]
pub(super) struct Registry {
    pub(super) start: Instant,
    pub(super) limits: ConnectionLimits,
    pub(super) next_id: AtomicU64,
    pub(super) table: Mutex<Table>,
}

pub(super) enum Admission {
    Admitted(Arc<Conn>),
    Refused,
}

impl Registry {
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds no invariant a panic could break halfway.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for a new connection: below the cap, or by evicting the
    /// connection idle the longest.
    pub(super) fn admit(&self) -> Admission {
        let now = self.now_ms();
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            state: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            responding: std::sync::atomic::AtomicBool::new(false),
            last_write: AtomicU64::new(now),
            rearm: Notify::new(),
            evict: Notify::new(),
        });
        let mut table = self.lock();
        if table.open.len() >= self.limits.max_connections && !Self::evict_oldest(&mut table) {
            return Admission::Refused;
        }
        table.open.insert(conn.id, conn.clone());
        table.idle.push_back((conn.id, now));
        metrics::gauge!("raft_node_http_connections_open").set(table.open.len() as f64);
        Admission::Admitted(conn)
    }

    /// Closes the connection idle the longest; `false` when every open
    /// connection is running a request.
    pub(super) fn evict_oldest(table: &mut Table) -> bool {
        while let Some((id, since)) = table.idle.pop_front() {
            let Some(c) = table.open.get(&id) else {
                continue;
            };
            if c.idle_since.load(Ordering::Acquire) != since {
                continue;
            }
            if c.state
                .compare_exchange(0, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Busy now; it queues itself again when idle.
                continue;
            }
            c.evict.notify_one();
            table.open.remove(&id);
            metrics::counter!("raft_node_http_connections_closed_total", "reason" => "evicted")
                .increment(1);
            metrics::gauge!("raft_node_http_connections_open").set(table.open.len() as f64);
            return true;
        }
        false
    }

    /// Notes that `c` became idle at `now`.
    pub(super) fn idle(&self, c: &Conn, now: u64) {
        let mut table = self.lock();
        c.idle_since.store(now, Ordering::Release);
        table.idle.push_back((c.id, now));
        // Drop stale entries when they outnumber the connections.
        if table.idle.len() > 2 * table.open.len() + 64 {
            let Table { open, idle } = &mut *table;
            idle.retain(|(id, since)| {
                open.get(id).is_some_and(|c| {
                    c.state.load(Ordering::Acquire) == 0
                        && c.idle_since.load(Ordering::Acquire) == *since
                })
            });
        }
    }

    pub(super) fn remove(&self, id: u64) {
        let mut table = self.lock();
        table.open.remove(&id);
        metrics::gauge!("raft_node_http_connections_open").set(table.open.len() as f64);
    }

    /// When the connection's watchdog must act: the head or idle deadline
    /// of an idle connection, the send deadline of an answer being sent,
    /// `None` while a handler runs (the API's own timeouts bound it).
    pub(super) fn deadline(&self, c: &Conn) -> Option<Instant> {
        let at = match c.state.load(Ordering::Acquire) {
            0 => {
                let head = c.head_started.load(Ordering::Acquire);
                if head > 0 {
                    Duration::from_millis(head - 1) + self.limits.header_timeout
                } else {
                    Duration::from_millis(c.idle_since.load(Ordering::Acquire))
                        + self.limits.idle_timeout
                }
            }
            EVICTED => return Some(self.start),
            _ if c.responding.load(Ordering::Acquire) => {
                Duration::from_millis(c.last_write.load(Ordering::Acquire))
                    + self.limits.send_timeout
            }
            _ => return None,
        };
        Some(self.start + at)
    }
}

/// The socket, noting when a new request head starts arriving and when
/// the client takes bytes of an answer.
pub(super) struct Tracked<IO> {
    pub(super) io: IO,
    pub(super) conn: Arc<Conn>,
    pub(super) registry: Arc<Registry>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let out = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.conn.state.load(Ordering::Acquire) == 0
            && self.conn.head_started.load(Ordering::Acquire) == 0
        {
            let now = self.registry.now_ms() + 1;
            self.conn.head_started.store(now, Ordering::Release);
            self.conn.rearm.notify_one();
        }
        out
    }
}

impl<IO: AsyncWrite + Unpin> Tracked<IO> {
    pub(super) fn wrote(&self, out: &Poll<io::Result<usize>>) {
        if matches!(out, Poll::Ready(Ok(n)) if *n > 0) {
            self.conn
                .last_write
                .store(self.registry.now_ms(), Ordering::Release);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let out = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&out);
        out
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let out = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&out);
        out
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Marks a request running on its connection, from its head to the end of
/// its answer (or the answer's drop), until dropped.
pub(super) struct Busy {
    pub(super) conn: Arc<Conn>,
    pub(super) registry: Arc<Registry>,
}

impl Busy {
    /// `None` when the connection was evicted.
    pub(super) fn new(conn: Arc<Conn>, registry: Arc<Registry>) -> Option<Self> {
        conn.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != EVICTED).then_some(s + 1)
            })
            .ok()?;
        conn.head_started.store(0, Ordering::Release);
        conn.responding.store(false, Ordering::Release);
        Some(Self { conn, registry })
    }

    /// The handler answered: from now on the client must take the answer.
    pub(super) fn responding(&self) {
        self.conn
            .last_write
            .store(self.registry.now_ms(), Ordering::Release);
        self.conn.responding.store(true, Ordering::Release);
        self.conn.rearm.notify_one();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.head_started.store(0, Ordering::Release);
        self.conn.responding.store(false, Ordering::Release);
        if self.conn.state.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.registry.idle(&self.conn, self.registry.now_ms());
        }
        self.conn.rearm.notify_one();
    }
}
