//! Loopback throughput of `QuicTransport` beside a raw quinn stream carrying
//! the same bytes, so the transport's own overhead (queues, writer and reader
//! tasks, framing, decode, the inbound channel) reads as a ratio.
//!
//! Two endpoints on 127.0.0.1 in one process, one tokio multi-thread runtime
//! (2 workers) per group, mutual TLS on both (the same `NodeTls` configs).
//! Two workloads, each one Criterion iteration:
//!
//! - `heartbeat`: 1000 AppendEntries with no entries and `heartbeat: true`
//!   (the control stream);
//! - `64KiB`: 64 AppendEntries carrying one 64 KiB `Normal` entry each (the
//!   replication stream).
//!
//! `quic_transport` sends every message with its own `Transport::send` call
//! (a `QueueFull` is retried, never lost, and counted; the queue limits are
//! raised so it should not happen) and the iteration ends when the receiver
//! has taken all of them, in order, off the transport's inbound channel.
//! `raw_quinn` writes the same encoded frames (same sizes and count) on one
//! unidirectional stream, 64 frames per `write_all` (the transport's
//! `write_batch_messages_max`), and the iteration ends when the receiver has
//! `read_exact` their total.
//!
//! Group `transport_messages` reports messages per second, group
//! `transport_bytes` the same runs in bytes of encoded frames (length prefix
//! included) per second.
//!
//! Run: `cargo bench -p raftkv-bench --bench transport`.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_core::{
    Entry, EntryPayload, LogId, Message, MessageBody, NodeId, Transport, TransportError,
};
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, Frame};
use raft_net_quic::tls::node_dns_name;
use raft_net_quic::{NodeTls, QuicConfig, QuicTransport};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const SENDER: NodeId = 1;
const RECEIVER: NodeId = 2;
const ENTRY_BYTES: usize = 64 << 10;
/// A batch that has not fully arrived by then is lost: fail loudly.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Workload {
    Heartbeat,
    Entry64KiB,
}

impl Workload {
    const ALL: [Workload; 2] = [Workload::Heartbeat, Workload::Entry64KiB];

    fn name(self) -> &'static str {
        match self {
            Workload::Heartbeat => "heartbeat",
            Workload::Entry64KiB => "64KiB",
        }
    }

    /// Messages per Criterion iteration.
    fn batch(self) -> u64 {
        match self {
            Workload::Heartbeat => 1000,
            Workload::Entry64KiB => 64,
        }
    }

    /// Message number `seq`; its `round` is `seq`, which the receiver checks.
    fn message(self, seq: u64, payload: &Bytes) -> Message {
        let (entries, heartbeat) = match self {
            Workload::Heartbeat => (Vec::new(), true),
            Workload::Entry64KiB => (
                vec![Entry {
                    term: 1,
                    index: seq + 1,
                    payload: EntryPayload::Normal(payload.clone()),
                }],
                false,
            ),
        };
        Message {
            from: SENDER,
            to: RECEIVER,
            term: 1,
            body: MessageBody::AppendEntries {
                prev_log_id: LogId::new(1, seq),
                entries,
                leader_commit: seq,
                round: seq,
                heartbeat,
            },
        }
    }
}

fn round_of(m: &Message) -> u64 {
    match &m.body {
        MessageBody::AppendEntries { round, .. } => *round,
        other => panic!("unexpected message {other:?}"),
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Queues large enough that a whole batch fits (nothing is dropped), and a
/// relaxed idle timeout so a busy 2-core box does not break the connection.
fn bench_config() -> QuicConfig {
    QuicConfig {
        control_queue_messages_max: 1 << 16,
        replication_queue_messages_max: 1 << 12,
        replication_queue_bytes_max: 1 << 30,
        idle_timeout: Duration::from_secs(10),
        keep_alive_interval: Duration::from_secs(1),
        ..QuicConfig::default()
    }
}

fn identity(ca: &DevCa, id: NodeId) -> NodeTls {
    ca.node_tls(id).expect("node identity")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// Two transports, node 1 sending to node 2.
struct TransportPair {
    sender: QuicTransport,
    receiver: QuicTransport,
    inbound: Option<mpsc::Receiver<Message>>,
    next_seq: u64,
    delivered: u64,
    queue_full_retries: u64,
}

impl TransportPair {
    async fn start(ca: &DevCa) -> Self {
        let (sender, _sender_inbound) = QuicTransport::builder(SENDER, identity(ca, SENDER))
            .config(bench_config())
            .bind(loopback())
            .expect("bind sender");
        let (receiver, inbound) = QuicTransport::builder(RECEIVER, identity(ca, RECEIVER))
            .config(bench_config())
            .bind(loopback())
            .expect("bind receiver");
        sender.add_peer(RECEIVER, receiver.local_addr().expect("addr"));
        receiver.add_peer(SENDER, sender.local_addr().expect("addr"));
        sender.connect(RECEIVER).await.expect("connect");
        Self {
            sender,
            receiver,
            inbound: Some(inbound),
            next_seq: 0,
            delivered: 0,
            queue_full_retries: 0,
        }
    }

    /// Sends one batch and waits until all of it came out of the receiver's
    /// inbound channel, in order. Returns the time taken.
    async fn run_batch(&mut self, workload: Workload, payload: &Bytes) -> Duration {
        let n = workload.batch();
        let first = self.next_seq;
        self.next_seq += n;
        let mut inbound = self.inbound.take().expect("inbound receiver");

        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256);
            let mut expected = first;
            while expected < first + n {
                match tokio::time::timeout(ARRIVAL_TIMEOUT, inbound.recv_many(&mut buf, 256)).await
                {
                    Ok(0) => panic!("inbound channel closed"),
                    Ok(_) => {
                        for m in buf.drain(..) {
                            let round = round_of(&m);
                            assert_eq!(round, expected, "message lost, duplicated or reordered");
                            expected += 1;
                        }
                    }
                    Err(_) => panic!(
                        "only {} of {n} messages arrived within {ARRIVAL_TIMEOUT:?}",
                        expected - first
                    ),
                }
            }
            inbound
        });
        for seq in first..first + n {
            loop {
                match self
                    .sender
                    .send(RECEIVER, vec![workload.message(seq, payload)])
                    .await
                {
                    Ok(()) => break,
                    Err(TransportError::QueueFull(_)) => {
                        self.queue_full_retries += 1;
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("send failed: {e}"),
                }
            }
        }
        let inbound = reader.await.expect("reader task");
        let elapsed = start.elapsed();

        self.inbound = Some(inbound);
        self.delivered += n;
        elapsed
    }

    async fn shutdown(self) {
        self.sender.shutdown().await;
        self.receiver.shutdown().await;
    }
}

/// A raw quinn connection with the nodes' TLS configs and one
/// unidirectional stream from node 1 to node 2.
struct RawPair {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: Option<quinn::RecvStream>,
    buf: Option<Vec<u8>>,
}

impl RawPair {
    async fn start(ca: &DevCa) -> Self {
        let cfg = bench_config();
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(cfg.idle_timeout).expect("idle timeout"),
            ))
            .keep_alive_interval(Some(cfg.keep_alive_interval))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(cfg.inbound_uni_streams_max))
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(cfg.inbound_bidi_streams_max));
        let transport = Arc::new(transport);

        let server_tls = identity(ca, RECEIVER).server_config().expect("server tls");
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).expect("quic server");
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_tls = identity(ca, SENDER).client_config().expect("client tls");
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).expect("quic client");
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);

        let server = quinn::Endpoint::server(server_config, loopback()).expect("server endpoint");
        let client = quinn::Endpoint::client(loopback()).expect("client endpoint");
        let server_addr = server.local_addr().expect("addr");

        let accept = async {
            let incoming = server.accept().await.expect("incoming");
            incoming.await.expect("server handshake")
        };
        let connect = async {
            client
                .connect_with(client_config, server_addr, &node_dns_name(RECEIVER))
                .expect("connect")
                .await
                .expect("client handshake")
        };
        let (server_conn, conn) = tokio::join!(accept, connect);

        // The peer sees a stream once bytes are written: one kind byte, as
        // the transport does.
        let mut send = conn.open_uni().await.expect("open stream");
        send.write_all(&[0]).await.expect("write kind");
        let mut recv = server_conn.accept_uni().await.expect("accept stream");
        let mut kind = [0u8; 1];
        recv.read_exact(&mut kind).await.expect("read kind");
        Self {
            server,
            client,
            conn,
            send,
            recv: Some(recv),
            buf: Some(Vec::new()),
        }
    }

    /// Writes `chunks` and waits until the receiver has read all of it.
    async fn run_batch(&mut self, chunks: &[Bytes], total: usize) -> Duration {
        let mut recv = self.recv.take().expect("recv stream");
        let mut buf = self.buf.take().expect("buffer");
        buf.resize(total, 0);

        let start = Instant::now();
        let reader = tokio::spawn(async move {
            match tokio::time::timeout(ARRIVAL_TIMEOUT, recv.read_exact(&mut buf)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("raw read failed: {e}"),
                Err(_) => panic!("raw batch did not arrive within {ARRIVAL_TIMEOUT:?}"),
            }
            (recv, buf)
        });
        for chunk in chunks {
            self.send.write_all(chunk).await.expect("raw write");
        }
        let (recv, buf) = reader.await.expect("reader task");
        let elapsed = start.elapsed();

        self.recv = Some(recv);
        self.buf = Some(buf);
        elapsed
    }

    async fn shutdown(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        self.client.close(quinn::VarInt::from_u32(0), b"done");
        self.server.close(quinn::VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.wait_idle()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.server.wait_idle()).await;
    }
}

/// The encoded frames of one batch, grouped `frames_per_write` to a write,
/// and their total size in bytes.
fn raw_chunks(workload: Workload, payload: &Bytes, frames_per_write: usize) -> (Vec<Bytes>, u64) {
    let max = bench_config().max_frame_bytes;
    let frames: Vec<Bytes> = (0..workload.batch())
        .map(|seq| {
            codec::encode_to_bytes(&Frame::Message(workload.message(seq, payload)), max)
                .expect("encode")
        })
        .collect();
    let total: usize = frames.iter().map(Bytes::len).sum();
    let chunks = frames
        .chunks(frames_per_write)
        .map(|group| {
            let mut b = BytesMut::with_capacity(group.iter().map(Bytes::len).sum());
            for f in group {
                b.extend_from_slice(f);
            }
            b.freeze()
        })
        .collect();
    (chunks, total as u64)
}

/// One group: both workloads on both paths, with `throughput` deciding the
/// unit (messages or frame bytes per iteration).
fn run_group(c: &mut Criterion, name: &str, throughput: fn(Workload, u64) -> Throughput) {
    let rt = runtime();
    let ca = DevCa::generate("bench cluster").expect("CA");
    let mut transport = rt.block_on(TransportPair::start(&ca));
    let mut raw = rt.block_on(RawPair::start(&ca));
    let payload = Bytes::from(vec![0xA5u8; ENTRY_BYTES]);
    let frames_per_write = bench_config().write_batch_messages_max;

    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    for workload in Workload::ALL {
        let (chunks, total_bytes) = raw_chunks(workload, &payload, frames_per_write);
        group.throughput(throughput(workload, total_bytes));
        group.bench_function(BenchmarkId::new("quic_transport", workload.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(transport.run_batch(workload, &payload));
                }
                total
            });
        });
        group.bench_function(BenchmarkId::new("raw_quinn", workload.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(raw.run_batch(&chunks, total_bytes as usize));
                }
                total
            });
        });
        eprintln!(
            "{name}/{}: {} B per batch of {} frames",
            workload.name(),
            total_bytes,
            workload.batch()
        );
    }
    group.finish();

    eprintln!(
        "{name}: quic_transport delivered {} messages, all in order; {} QueueFull retries",
        transport.delivered, transport.queue_full_retries
    );
    rt.block_on(async {
        transport.shutdown().await;
        raw.shutdown().await;
    });
}

fn messages_per_second(c: &mut Criterion) {
    run_group(c, "transport_messages", |w, _| {
        Throughput::Elements(w.batch())
    });
}

fn bytes_per_second(c: &mut Criterion) {
    run_group(c, "transport_bytes", |_, bytes| Throughput::Bytes(bytes));
}

criterion_group!(benches, messages_per_second, bytes_per_second);
criterion_main!(benches);
