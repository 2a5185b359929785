//! The client API's connections: accepting, TLS handshakes, timeouts and
//! the connection cap.
//!
//! The accept loop never waits: every connection is accepted at once and
//! handed to a task of its own. Open connections are capped
//! (`--http-max-connections`); a connection arriving at the cap replaces
//! the connection that has been idle the longest (one with no request
//! running: waiting for its first request, between requests, or in its TLS
//! handshake), and when every connection is serving a request it is turned
//! away with `503` and `Retry-After`. So connections that open and send
//! nothing, or half a request, cannot lock well-behaved clients out.
//!
//! Each connection has a watchdog:
//! - idle (no request running, nothing received): closed after
//!   `--http-idle-timeout-ms`;
//! - a request head started but not complete: closed
//!   `--http-header-timeout-ms` after its first byte;
//! - HTTPS: the handshake must end within `--http-tls-handshake-timeout-ms`.
//!
//! A request that is running is bounded by the API's own layers (body
//! timeout, request deadline, see `http.rs`), not here.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Connection limits of the client API.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From a request head's first byte to its end.
    pub header_timeout: Duration,
    /// A connection with no request running and nothing received.
    pub idle_timeout: Duration,
    /// An HTTPS connection's TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// How long a graceful stop waits for running requests.
    pub shutdown_grace: Duration,
}

/// What the cap and the watchdog know of one connection.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests running (0 or 1 for HTTP/1.1).
    busy: AtomicUsize,
    /// When the connection last became idle (opened or answered), in ms
    /// since the registry's start.
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived while idle, in
    /// ms since the registry's start plus one; 0 when none has.
    head_started: AtomicU64,
    /// Wakes the watchdog to look again (its state changed).
    rearm: Notify,
    /// Tells the connection to close: it was chosen to make room.
    evict: Notify,
}

#[derive(Debug)]
struct Registry {
    start: Instant,
    limits: ConnectionLimits,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

enum Admission {
    Admitted(Arc<Conn>),
    Refused,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Room for a new connection: below the cap, or by evicting the
    /// connection idle the longest.
    fn admit(&self) -> Admission {
        let now = self.now_ms();
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            rearm: Notify::new(),
            evict: Notify::new(),
        });
        let Ok(mut open) = self.open.lock() else {
            return Admission::Refused;
        };
        if open.len() >= self.limits.max_connections {
            let victim = open
                .values()
                .filter(|c| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|c| c.idle_since.load(Ordering::Acquire))
                .map(|c| c.id);
            let Some(victim) = victim else {
                return Admission::Refused;
            };
            if let Some(v) = open.remove(&victim) {
                v.evict.notify_one();
                metrics::counter!("raft_node_http_connections_closed_total", "reason" => "evicted")
                    .increment(1);
            }
        }
        open.insert(conn.id, conn.clone());
        metrics::gauge!("raft_node_http_connections_open").set(open.len() as f64);
        Admission::Admitted(conn)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
            metrics::gauge!("raft_node_http_connections_open").set(open.len() as f64);
        }
    }

    /// When the connection's watchdog must act, or `None` while a request
    /// runs.
    fn deadline(&self, c: &Conn) -> Option<Instant> {
        if c.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = c.head_started.load(Ordering::Acquire);
        let at = if head > 0 {
            Duration::from_millis(head - 1) + self.limits.header_timeout
        } else {
            Duration::from_millis(c.idle_since.load(Ordering::Acquire)) + self.limits.idle_timeout
        };
        Some(self.start + at)
    }
}

/// The socket, noting when a new request head starts arriving.
struct Tracked<IO> {
    io: IO,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
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
            && self.conn.busy.load(Ordering::Acquire) == 0
            && self.conn.head_started.load(Ordering::Acquire) == 0
        {
            let now = self.registry.now_ms() + 1;
            self.conn.head_started.store(now, Ordering::Release);
            self.conn.rearm.notify_one();
        }
        out
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Marks a request running on its connection until dropped.
struct Busy {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Busy {
    fn new(conn: Arc<Conn>, registry: Arc<Registry>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        conn.head_started.store(0, Ordering::Release);
        Self { conn, registry }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.registry.now_ms(), Ordering::Release);
        self.conn.head_started.store(0, Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
        self.conn.rearm.notify_one();
    }
}

/// The answer to a connection turned away at the cap, written without
/// reading its request.
fn refused_response() -> Vec<u8> {
    let body = format!(
        "{{\"type\":\"{}too-many-connections\",\"title\":\"Too many connections\",\
         \"status\":503,\"detail\":\"every connection slot is serving a request; retry \
         shortly\"}}",
        crate::problem::TYPE_PREFIX
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop`
/// turns true, then lets running requests finish for
/// [`ConnectionLimits::shutdown_grace`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let registry = Arc::new(Registry {
        start: Instant::now(),
        limits,
        next_id: AtomicU64::new(1),
        open: Mutex::new(HashMap::new()),
    });
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
            // Reap finished connection tasks so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, most likely: wait a little
                // rather than spin, and keep serving the open connections.
                tracing::warn!(error = %e, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = match registry.admit() {
            Admission::Admitted(c) => c,
            Admission::Refused => {
                metrics::counter!("raft_node_http_connections_refused_total").increment(1);
                if tls.is_none() {
                    // One non-blocking write into an empty socket buffer.
                    let _ = tcp.try_write(&refused_response());
                }
                tracing::debug!(%peer, "connection refused: every slot is serving a request");
                continue;
            }
        };
        tasks.spawn(connection(
            tcp,
            conn,
            registry.clone(),
            app.clone(),
            tls.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    // Stopping: every connection finishes its running request and closes.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = limits.shutdown_grace.as_secs_f64(),
            "client requests still running at the end of the grace period; closing them"
        );
        tasks.abort_all();
    }
}

#[derive(Clone, Copy)]
enum Closed {
    Done,
    Evicted,
    IdleTimeout,
    HeaderTimeout,
    Handshake,
}

impl Closed {
    fn reason(self) -> Option<&'static str> {
        match self {
            Closed::Done => None,
            Closed::Evicted => None, // counted when chosen
            Closed::IdleTimeout => Some("idle_timeout"),
            Closed::HeaderTimeout => Some("header_timeout"),
            Closed::Handshake => Some("tls_handshake"),
        }
    }
}

async fn connection(
    tcp: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    app: Router,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let id = conn.id;
    let io = Tracked {
        io: tcp,
        conn: conn.clone(),
        registry: registry.clone(),
    };
    let closed = match tls {
        None => http(io, conn, registry.clone(), app, stop).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(registry.limits.tls_handshake_timeout, acceptor.accept(io));
            let outcome = tokio::select! {
                r = handshake => Some(r),
                _ = conn.evict.notified() => None,
            };
            match outcome {
                None => Closed::Evicted,
                Some(Ok(Ok(stream))) => {
                    conn.head_started.store(0, Ordering::Release);
                    conn.idle_since.store(registry.now_ms(), Ordering::Release);
                    http(stream, conn, registry.clone(), app, stop).await
                }
                Some(Ok(Err(e))) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    Closed::Handshake
                }
                Some(Err(_)) => Closed::Handshake,
            }
        }
    };
    if let Some(reason) = closed.reason() {
        metrics::counter!("raft_node_http_connections_closed_total", "reason" => reason)
            .increment(1);
    }
    registry.remove(id);
}

async fn http<IO>(
    io: IO,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> Closed
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let conn = conn.clone();
        let registry = registry.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = Busy::new(conn.clone(), registry.clone());
            let app = app.clone();
            async move {
                let resp = tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new)).await;
                drop(busy);
                resp
            }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // The watchdog below times heads; hyper's own timer is not set.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut stopping = false;
    loop {
        let deadline = registry.deadline(&conn);
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return Closed::Done;
            }
            _ = conn.evict.notified() => return Closed::Evicted,
            _ = conn.rearm.notified() => {}
            _ = sleep => {
                // Look again: the state may have changed since.
                if let Some(at) = registry.deadline(&conn) {
                    if Instant::now() >= at {
                        return if conn.head_started.load(Ordering::Acquire) > 0 {
                            Closed::HeaderTimeout
                        } else {
                            Closed::IdleTimeout
                        };
                    }
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit (as Go
/// programs do at start), and warns when the result leaves too little room
/// for `max_connections` client connections beside the store's files and
/// the peer transport. Answers the soft limit in force.
pub fn raise_open_files_limit(max_connections: usize) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum) {
        if cur < max {
            limit.current = Some(max);
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(error = %e, "raising the open-files limit failed");
            }
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    // RocksDB's files, the peer transport and the rest of the process.
    const RESERVE: u64 = 1024;
    if let Some(soft) = soft {
        if soft < max_connections as u64 + RESERVE {
            tracing::warn!(
                open_files_limit = soft,
                http_max_connections = max_connections,
                "the open-files limit leaves less than {RESERVE} files beside \
                 --http-max-connections client connections; raise the limit \
                 (ulimit -n, LimitNOFILE=) or lower --http-max-connections"
            );
        }
    }
    soft
}
