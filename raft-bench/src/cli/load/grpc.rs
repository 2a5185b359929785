//! The gRPC protocol of the load generator: etcd's v3 `KV.Put` and
//! linearizable `KV.Range` through a client generated from raft-node's own
//! protos (`build.rs`), the same requests to raft-node and to etcd.
//!
//! The generated client runs on an HTTP/2 connection this module opens
//! itself (hyper), not on tonic's `Channel`: a `Channel` reconnects on its
//! own, so a reconnection would land inside a request's latency and not be
//! counted, and it adds a buffer task in front of the connection. Here a
//! connection is opened before the requests that use it (a failure counts
//! as `connect`), a request that fails on the connection counts as
//! `connection` and the connection is opened again, a request slower than
//! the timeout counts as `timeout` and only its HTTP/2 stream is reset, and
//! an answer with a gRPC error counts as `gRPC <code>`. No request is sent
//! twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::MapErr;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::{http, Service};

use super::Tally;

/// The code generated from raft-node's `proto/etcd/*.proto` (lints are not
/// ours to fix).
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    rustdoc::all
)]
mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::{PutRequest, RangeRequest};

/// A failure of the connection itself (not an answer from the server).
#[derive(Debug)]
pub(crate) struct Transport(hyper::Error);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 connection: {}", self.0)
    }
}

impl std::error::Error for Transport {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

type ResponseBody = MapErr<Incoming, fn(hyper::Error) -> Transport>;

/// One HTTP/2 connection, as the service the generated client calls.
#[derive(Clone)]
pub(crate) struct H2(SendRequest<tonic::body::Body>);

impl Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<ResponseBody>;
    type Error = Transport;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Transport>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Transport>> {
        self.0.poll_ready(cx).map_err(Transport)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let sent = self.0.send_request(req);
        Box::pin(async move {
            let resp = sent.await.map_err(Transport)?;
            Ok(resp.map(|b| b.map_err(Transport as fn(hyper::Error) -> Transport)))
        })
    }
}

/// Opens an HTTP/2 connection (no TLS) to `host` and puts a KV client on it.
async fn connect(host: &str) -> anyhow::Result<KvClient<H2>> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let origin = format!("http://{host}")
        .parse()
        .with_context(|| format!("{host} is not a host:port"))?;
    Ok(KvClient::with_origin(H2(sender), origin))
}

/// A connection's generation and the client on it.
type Open = (u64, KvClient<H2>);

/// A connection to one member, opened on first use and again after it
/// fails; the clients given the same `Conn` share it (HTTP/2 streams).
pub(crate) struct Conn {
    host: String,
    /// The open connection with its generation, and the next generation.
    state: tokio::sync::Mutex<(Option<Open>, u64)>,
}

impl Conn {
    fn new(host: String) -> Self {
        Conn {
            host,
            state: tokio::sync::Mutex::new((None, 0)),
        }
    }

    /// The open connection, opened now if there is none (one attempt, at
    /// most `timeout`; `None` when it fails).
    async fn get(&self, timeout: Duration) -> Option<Open> {
        let mut s = self.state.lock().await;
        if let Some(open) = &s.0 {
            return Some(open.clone());
        }
        let c = tokio::time::timeout(timeout, connect(&self.host))
            .await
            .ok()?
            .ok()?;
        let generation = s.1;
        s.1 += 1;
        s.0 = Some((generation, c));
        s.0.clone()
    }

    /// Drops connection `generation` after a client saw it fail (unless
    /// another client already replaced it).
    async fn failed(&self, generation: u64) {
        let mut s = self.state.lock().await;
        if s.0.as_ref().is_some_and(|(g, _)| *g == generation) {
            s.0 = None;
        }
    }
}

/// The connections for `clients` clients to `hosts`: one per client when
/// `shared` is 0 (client `i` on host `i % len`, as over HTTP), else
/// `shared` (at most one per client), connection `j` on host `j % len`.
pub(super) fn connections(hosts: &[String], clients: usize, shared: usize) -> Vec<Arc<Conn>> {
    let n = if shared == 0 {
        clients
    } else {
        shared.min(clients)
    };
    (0..n.max(1))
        .map(|j| Arc::new(Conn::new(hosts[j % hosts.len()].clone())))
        .collect()
}

/// Whether a failed call failed on the connection rather than in the
/// server.
fn is_transport(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<Transport>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// How an error answer is counted: `gRPC <code>: ` and the message's first
/// two `: `-separated parts (etcd's `etcdserver: request timed out`,
/// raft-node's `raft-node: <problem kind>`), without the details that
/// vary from one answer to the next.
fn answer_kind(status: &tonic::Status) -> String {
    let msg: Vec<&str> = status.message().splitn(3, ": ").take(2).collect();
    let msg: String = msg.join(": ").chars().take(60).collect();
    format!("gRPC {:?}: {msg}", status.code())
}

/// One client's closed loop until the run ends: one call outstanding, each
/// sent once.
pub(super) async fn client(conn: &Conn, val: Bytes, timeout: Duration, tally: &mut Tally) {
    let mut kv: Option<Open> = None;
    while !tally.over() {
        let (generation, c) = match &mut kv {
            Some(k) => k,
            None => match conn.get(timeout).await {
                Some(k) => kv.insert(k),
                None => {
                    tally.error("connect", Instant::now());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let generation = *generation;
        let (key, write) = tally.next_op();
        let key = Bytes::from(key.into_bytes());
        let sent = Instant::now();
        let result = tokio::time::timeout(timeout, async {
            if write {
                let put = PutRequest {
                    key,
                    value: val.clone(),
                    ..PutRequest::default()
                };
                c.put(put).await.map(drop)
            } else {
                // `serializable: false`: a linearizable read.
                let range = RangeRequest {
                    key,
                    ..RangeRequest::default()
                };
                c.range(range).await.map(drop)
            }
        })
        .await;
        let done = Instant::now();
        match result {
            Ok(Ok(())) => tally.success(sent, done),
            Ok(Err(status)) if is_transport(&status) => {
                tally.error("connection", done);
                conn.failed(generation).await;
                kv = None;
            }
            Ok(Err(status)) => tally.error(answer_kind(&status), done),
            Err(_) => tally.error("timeout", done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_a_connection_each_or_share_the_ones_asked_for() {
        let hosts: Vec<String> = ["a:1", "b:1", "c:1"].map(String::from).to_vec();
        let own = connections(&hosts, 5, 0);
        let on: Vec<&str> = own.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(on, ["a:1", "b:1", "c:1", "a:1", "b:1"]);
        let shared = connections(&hosts, 64, 2);
        let on: Vec<&str> = shared.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(on, ["a:1", "b:1"]);
        assert_eq!(
            connections(&hosts, 2, 8).len(),
            2,
            "never more than clients"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_counts_as_connect_and_a_dropped_one_as_connection() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = free.local_addr().unwrap().to_string();
        drop(free);
        // A server that accepts and closes every connection at once.
        let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closing_at = closing.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = closing.accept().await {
                drop(s);
            }
        });
        for (host, kind) in [(refused, "connect"), (closing_at, "connection")] {
            let w = super::super::Workload {
                clients: 1,
                value_bytes: 8,
                keys: 10,
                read_percent: 50,
                warmup: Duration::ZERO,
                duration: Duration::from_millis(300),
                request_timeout: Duration::from_secs(5),
                seed: 1,
                protocol: super::super::Protocol::Grpc,
                grpc_connections: 0,
            };
            let now = Instant::now();
            let window = (now, now + w.duration);
            let (mut tally, val) = Tally::new(&w, 0, window, Arc::default());
            client(&Conn::new(host), val, w.request_timeout, &mut tally).await;
            assert_eq!(tally.ops, 0);
            assert!(
                tally.errors.get(kind).is_some_and(|&n| n > 0),
                "{kind}: {:?}",
                tally.errors
            );
            assert!(
                tally.errors.keys().all(|k| !k.starts_with("gRPC")),
                "a transport failure counted as an answer: {:?}",
                tally.errors
            );
        }
        assert!(!is_transport(&tonic::Status::unavailable(
            "etcdserver: no leader"
        )));
    }

    #[test]
    fn answers_are_counted_by_code_and_stable_message() {
        let kind = |s: tonic::Status| answer_kind(&s);
        assert_eq!(
            kind(tonic::Status::unavailable("etcdserver: request timed out")),
            "gRPC Unavailable: etcdserver: request timed out"
        );
        assert_eq!(
            kind(tonic::Status::unavailable(
                "raft-node: overloaded: 512 proposals waiting"
            )),
            "gRPC Unavailable: raft-node: overloaded"
        );
    }
}
