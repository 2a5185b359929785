//! The gRPC listener: plain or TLS (the HTTP API's `--client-tls`
//! certificate and `--client-ca`, with ALPN `h2`), the bearer-token check
//! of every call (`authorization: Bearer <token>` metadata), and the
//! limits: `--grpc-max-request-bytes`, `--grpc-max-concurrent-streams`
//! per connection and `--grpc-max-connections` (one more is closed at once),
//! and the deadlines that free a connection's slot: the HTTP/2 preface
//! within `--http-tls-handshake-timeout-ms`, and an HTTP/2 PING answered
//! within `--grpc-keepalive-ms` once nothing came for that long. What a
//! client sends goes through `authority` (etcdctl's URL `:authority`).
//! (`--grpc-max-watches-per-stream` is the Watch service's, in `watch.rs`.)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::server::Connected;

use super::pb::etcdserverpb::auth_server::AuthServer;
use super::pb::etcdserverpb::cluster_server::ClusterServer;
use super::pb::etcdserverpb::kv_server::KvServer;
use super::pb::etcdserverpb::lease_server::LeaseServer;
use super::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use super::pb::etcdserverpb::watch_server::WatchServer;
use super::{status_of, Ctx};
use crate::config::NodeConfig;
use crate::http::AppState;

/// Accepted connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;

/// The running gRPC server.
#[derive(Debug)]
pub struct GrpcServing {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The URL clients reach it at, as `Cluster.MemberList` lists it
    /// (`--grpc-advertise`, else derived from the address bound).
    pub url: String,
    /// Its task; it ends once the stop switch is set and running calls ended.
    pub task: JoinHandle<()>,
}

/// A client connection: plain TCP or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The HTTP/2 client preface (`PRI * HTTP/2.0...`), bytes.
const PREFACE_LEN: usize = 24;

/// A connection and its slot of `--grpc-max-connections`, freed when the
/// connection is dropped.
struct Conn {
    io: Io,
    _slot: OwnedSemaphorePermit,
    /// Until the preface is read: its deadline and the bytes still missing.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    /// What the client sends, with etcdctl's URL authorities mended.
    inbound: super::authority::Rewriter,
}

impl Conn {
    /// A connection whose client has `limit` to send the HTTP/2 preface; a
    /// silent one fails its read then, so the server drops it.
    fn new(io: Io, slot: OwnedSemaphorePermit, cfg: &NodeConfig) -> Self {
        let limit = cfg.http_tls_handshake_timeout;
        Self {
            io,
            _slot: slot,
            preface: Some((Box::pin(tokio::time::sleep(limit)), PREFACE_LEN)),
            inbound: super::authority::Rewriter::new(cfg.grpc_max_request_bytes),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((deadline, _)) = &mut this.preface {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within --http-tls-handshake-timeout-ms",
                )));
            }
        }
        loop {
            if this.inbound.ready() {
                let n = this.inbound.take(buf.initialize_unfilled());
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut raw = ReadBuf::new(&mut raw);
            let r = match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_read(cx, &mut raw),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut raw),
            };
            match r {
                Poll::Ready(Ok(())) if raw.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if let Some((_, missing)) = &mut this.preface {
                *missing = missing.saturating_sub(raw.filled().len());
                if *missing == 0 {
                    this.preface = None;
                }
            }
            this.inbound.feed(raw.filled())?;
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The token check of every call: a valid user or admin token when tokens
/// are configured (admin calls check the admin token again).
#[derive(Clone)]
struct Tokens(Arc<NodeConfig>);

impl Interceptor for Tokens {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        crate::http::check_bearer(&self.0, &super::headers_of(req.metadata()), false)
            .map_err(|p| status_of(&p))?;
        Ok(req)
    }
}

/// Accepts connections (a TLS handshake each on its own task, bounded by
/// `--http-tls-handshake-timeout-ms`) and hands them to the server.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cfg: Arc<NodeConfig>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let slots = Arc::new(Semaphore::new(cfg.grpc_max_connections));
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("gRPC connection refused: --grpc-max-connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls.clone() else {
            let conn = Conn::new(Io::Plain(tcp), slot, &cfg);
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        let tx = tx.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let limit = cfg.http_tls_handshake_timeout;
            if let Ok(Ok(s)) = tokio::time::timeout(limit, tls.accept(tcp)).await {
                let conn = Conn::new(Io::Tls(Box::new(s)), slot, &cfg);
                let _ = tx.send(Ok(conn)).await;
            }
        });
    }
}

/// Binds `--grpc-listen` and serves etcd's API there until `stop` is set.
///
/// # Errors
///
/// The address cannot be bound, or the TLS settings do not load.
pub async fn serve(
    state: Arc<AppState>,
    http: axum::Router,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<GrpcServing> {
    let cfg = state.cfg.clone();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the gRPC address {addr}"))?;
    let bound = listener.local_addr()?;
    let tls = if cfg.client_tls {
        let base = crate::client_tls::server_config(&cfg).context("configuring gRPC TLS")?;
        let mut config = (*base).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    } else {
        None
    };
    let url = cfg.advertise.grpc_url.clone().unwrap_or_else(|| {
        crate::config::grpc_url_of(cfg.client_tls, bound, &cfg.advertise.client_addr)
    });
    let ctx = Ctx {
        state,
        http,
        grpc_url: url.clone(),
        auth_attempts: Arc::new(super::auth::AttemptBucket::new(
            cfg.grpc_auth_failures_per_sec,
        )),
    };
    let max = cfg.grpc_max_request_bytes;
    let tokens = Tokens(cfg.clone());
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(cfg.grpc_max_concurrent_streams))
        // A connection silent this long is pinged, and dropped when the
        // ping is not answered within as long again.
        .http2_keepalive_interval(Some(cfg.grpc_keepalive))
        .http2_keepalive_timeout(Some(cfg.grpc_keepalive))
        .add_service(InterceptedService::new(
            KvServer::new(ctx.clone()).max_decoding_message_size(max),
            tokens.clone(),
        ))
        .add_service(InterceptedService::new(
            MaintenanceServer::new(ctx.clone()).max_decoding_message_size(max),
            tokens.clone(),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::new(ctx.clone()).max_decoding_message_size(max),
            tokens.clone(),
        ))
        // Logging in needs no token: it is how a client gets one.
        .add_service(AuthServer::new(ctx.clone()).max_decoding_message_size(max))
        .add_service(InterceptedService::new(
            WatchServer::new(ctx.clone()).max_decoding_message_size(max),
            tokens.clone(),
        ))
        .add_service(InterceptedService::new(
            LeaseServer::new(ctx.clone()).max_decoding_message_size(max),
            tokens,
        ));
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept(listener, tls, cfg, tx));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::warn!(error = %e, "the gRPC server stopped");
        }
    });
    Ok(GrpcServing {
        addr: bound,
        url,
        task,
    })
}
