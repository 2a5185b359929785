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
//! timeout, request deadline, see `http/limits.rs`), not here.
//!
//! `registry.rs` keeps the facts about each connection the cap and the
//! watchdog decide on; `body.rs` holds a guard until an answer is sent.

mod body;
mod registry;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
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
    /// An answer that the client takes none of for this long is dropped
    /// with its connection.
    pub send_timeout: Duration,
    /// An HTTPS connection's TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Largest request head (hyper's read buffer), at least 8 KiB.
    pub max_header_bytes: usize,
    /// How long a graceful stop waits for running requests.
    pub shutdown_grace: Duration,
}

pub use body::GuardedBody;
use registry::{Admission, Busy, Conn, Registry, Table, Tracked, EVICTED};

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
        table: Mutex::new(Table::default()),
    });
    let mut tasks = JoinSet::new();
    let mut accept_errors = 0u64;
    let mut last_warned: Option<Instant> = None;
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
                accept_errors += 1;
                // Out of file descriptors: make room by closing the
                // connection idle the longest, as the cap would.
                let out_of_files = matches!(e.raw_os_error(), Some(23 | 24));
                let evicted = out_of_files && {
                    // A few at once: connections wait in the backlog.
                    let mut table = registry.lock();
                    (0..8)
                        .filter(|_| Registry::evict_oldest(&mut table))
                        .count()
                        > 0
                };
                if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        error = %e,
                        failures = accept_errors,
                        evicted_an_idle_connection = evicted,
                        "accepting a client connection failed (repeats are counted, not \
                         logged, for 10 s); when the process is out of file descriptors, \
                         raise its limit or lower --http-max-connections"
                    );
                    last_warned = Some(Instant::now());
                    accept_errors = 0;
                }
                let pause = if evicted { 1 } else { 50 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
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
    SendTimeout,
    Handshake,
}

impl Closed {
    fn reason(self) -> Option<&'static str> {
        match self {
            Closed::Done => None,
            Closed::Evicted => None, // counted when chosen
            Closed::IdleTimeout => Some("idle_timeout"),
            Closed::HeaderTimeout => Some("header_timeout"),
            Closed::SendTimeout => Some("send_timeout"),
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
                    registry.idle(&conn, registry.now_ms());
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

/// What a request on a connection chosen for eviction gets.
fn closing_response() -> axum::response::Response {
    let mut resp = crate::problem::Problem::unavailable(
        "too-many-connections",
        "Too many connections",
        "this connection was closed to make room for another; retry on a new one",
    )
    .into_response();
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
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
                let Some(busy) = busy else {
                    return Ok::<_, std::convert::Infallible>(closing_response());
                };
                let resp = tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new)).await?;
                busy.responding();
                Ok(resp.map(|body| axum::body::Body::new(GuardedBody::new(body, busy))))
            }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(registry.limits.max_header_bytes)
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
                        return match conn.state.load(Ordering::Acquire) {
                            EVICTED => Closed::Evicted,
                            0 if conn.head_started.load(Ordering::Acquire) > 0 => {
                                Closed::HeaderTimeout
                            }
                            0 => Closed::IdleTimeout,
                            _ => Closed::SendTimeout,
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

/// Descriptors kept for RocksDB's files, the peer transport and the rest
/// of the process beside client connections.
pub const RESERVED_FILES: u64 = 1024;

/// Raises this process's soft limit on open files to its hard limit (as Go
/// programs do at start) and answers how many client connections fit
/// beside [`RESERVED_FILES`]: `max_connections`, or fewer (with a warning)
/// when the limit is lower.
pub fn raise_open_files_limit(max_connections: usize) -> usize {
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
    let Some(soft) = getrlimit(Resource::Nofile).current else {
        return max_connections;
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    if room < max_connections {
        let lowered = room.max(16);
        tracing::warn!(
            open_files_limit = soft,
            http_max_connections = max_connections,
            lowered_to = lowered,
            "the open-files limit leaves room for fewer client connections than \
             --http-max-connections beside {RESERVED_FILES} descriptors for the store and \
             the peers; the cap is lowered (raise the limit with ulimit -n or LimitNOFILE=)"
        );
        return lowered;
    }
    max_connections
}
