//! Snapshot streaming: a transfer arrives intact, resumes after the
//! connection breaks, lets votes and heartbeats through while it runs, and
//! refuses chunks that fail their checksum or arrive out of order.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use raft_core::{NodeId, Transport};
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, Frame, SnapshotChunk, SnapshotOffer};
use raft_net_quic::{
    FileSnapshotSink, QuicConfig, QuicTransport, RefusalReason, SnapshotRefusal, SnapshotSink,
    SnapshotSource,
};
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, Semaphore};

/// A source that takes its time, so a test can act mid-transfer.
struct SlowSource {
    data: Bytes,
    delay: Duration,
}

#[async_trait]
impl SnapshotSource for SlowSource {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    async fn read_at(&self, offset: u64, max: usize) -> std::io::Result<Bytes> {
        tokio::time::sleep(self.delay).await;
        self.data.read_at(offset, max).await
    }
}

/// Wraps a sink: counts chunks, wakes the test after `trigger_after` and
/// holds that chunk's write until the test adds a permit to `release`, so
/// the transfer cannot finish before the test has acted on it.
struct Watched {
    inner: FileSnapshotSink,
    chunks: AtomicU64,
    trigger_after: u64,
    triggered: Notify,
    release: Semaphore,
}

#[async_trait]
impl SnapshotSink for Watched {
    async fn begin(&self, from: NodeId, offer: &SnapshotOffer) -> Result<u64, SnapshotRefusal> {
        self.inner.begin(from, offer).await
    }

    async fn write(
        &self,
        from: NodeId,
        id: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<(), SnapshotRefusal> {
        self.inner.write(from, id, offset, data).await?;
        if self.chunks.fetch_add(1, Ordering::SeqCst) + 1 == self.trigger_after {
            self.triggered.notify_one();
            let permit = self
                .release
                .acquire()
                .await
                .map_err(|e| SnapshotRefusal::new(RefusalReason::Other, e.to_string()))?;
            permit.forget();
        }
        Ok(())
    }

    async fn finish(
        &self,
        from: NodeId,
        id: u64,
        total: u64,
        crc: u32,
    ) -> Result<(), SnapshotRefusal> {
        self.inner.finish(from, id, total, crc).await
    }
}

fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Bytes::from((0..len).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>())
}

fn snapshot_config() -> QuicConfig {
    QuicConfig {
        snapshot_chunk_bytes: 64 << 10,
        ..test_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_survives_a_connection_drop_and_resumes() {
    let (ca, dir) = ca_and_dir();
    let (file_sink, mut completed) = FileSnapshotSink::new(dir.path(), 4).unwrap();
    let sink = Arc::new(Watched {
        inner: file_sink,
        chunks: AtomicU64::new(0),
        trigger_after: 8,
        triggered: Notify::new(),
        release: Semaphore::new(0),
    });
    let sender = start_node(&ca, 1, any_addr(), snapshot_config());
    let (receiver, _inbound) = QuicTransport::builder(2, tls(&ca, 2))
        .config(snapshot_config())
        .snapshot_sink(sink.clone())
        .bind(any_addr())
        .unwrap();
    sender.transport.add_peer(2, receiver.local_addr().unwrap());

    let data = random_bytes(2 << 20, 7);
    let source = Arc::new(SlowSource {
        data: data.clone(),
        delay: Duration::from_millis(10),
    });
    let t = sender.transport.clone();
    let transfer = tokio::spawn(async move {
        t.stream_snapshot(2, 42, Bytes::from_static(b"meta: last=100@3"), source)
            .await
    });
    // Break the connection once part of the snapshot is stored.
    tokio::time::timeout(Duration::from_secs(20), sink.triggered.notified())
        .await
        .expect("transfer did not start");
    sender.transport.disconnect(2);
    sink.release.add_permits(1);

    let sent = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .expect("transfer hung")
        .unwrap()
        .expect("transfer failed");
    assert!(sent.attempts >= 2, "{sent:?}");
    assert_eq!(sent.start_offsets[0], 0);
    assert!(
        sent.start_offsets[1] > 0,
        "the second attempt did not resume: {sent:?}"
    );
    assert!(sent.bytes_sent < 2 * data.len() as u64, "{sent:?}");

    let got = completed.recv().await.unwrap();
    assert_eq!(
        (got.from, got.transfer_id, got.bytes),
        (1, 42, data.len() as u64)
    );
    assert_eq!(got.meta, Bytes::from_static(b"meta: last=100@3"));
    assert!(got.resumes >= 1);
    assert_eq!(std::fs::read(&got.path).unwrap(), data.to_vec());
    sender.transport.shutdown().await;
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_and_heartbeats_keep_flowing_during_a_snapshot_transfer() {
    let (ca, dir) = ca_and_dir();
    let (receiver, mut inbound, mut completed) =
        start_snapshot_receiver(&ca, 2, snapshot_config(), dir.path(), 4);
    let sender = start_node(&ca, 1, any_addr(), snapshot_config());
    sender.transport.add_peer(2, receiver.local_addr().unwrap());
    let data = random_bytes(8 << 20, 9);
    let t = sender.transport.clone();
    let source = Arc::new(SlowSource {
        data: data.clone(),
        delay: Duration::from_millis(2),
    });
    let transfer = tokio::spawn(async move { t.stream_snapshot(2, 1, Bytes::new(), source).await });
    // While the snapshot streams, control traffic gets through.
    let mut delivered_during = 0;
    for _ in 0..20 {
        let msgs = every_message(1, 2);
        let n = msgs.len();
        sender.transport.send(2, msgs).await.unwrap();
        for _ in 0..n {
            recv(&mut inbound, Duration::from_secs(10))
                .await
                .expect("control traffic stalled");
        }
        if !transfer.is_finished() {
            delivered_during += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = transfer.await.unwrap().unwrap();
    assert_eq!(sent.total_bytes, data.len() as u64);
    let got = completed.recv().await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data.to_vec());
    assert!(
        delivered_during > 0,
        "no control traffic was delivered during the transfer"
    );
    sender.transport.shutdown().await;
    receiver.shutdown().await;
}

/// Opens a raw snapshot stream as node 2 to node 1 and sends `frames`;
/// returns the frames the receiver answered.
async fn raw_snapshot(
    server_addr: std::net::SocketAddr,
    ca: &DevCa,
    frames: Vec<Frame>,
) -> Vec<Frame> {
    let (_endpoint, _conn, mut send, mut recv) =
        raw_snapshot_stream(ca, 2, (1, server_addr), &frames).await;
    let _ = send.finish();
    let data = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("no answer")
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut rest = Bytes::from(data);
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let f = rest.split_to(4 + len);
        out.push(codec::decode_frame(f, 1 << 24).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_with_a_bad_checksum_or_out_of_order_are_refused() {
    let (ca, dir) = ca_and_dir();
    let (receiver, _inbound, mut completed) =
        start_snapshot_receiver(&ca, 1, snapshot_config(), dir.path(), 4);
    let addr = receiver.local_addr().unwrap();
    let offer = |id| {
        Frame::SnapshotOffer(SnapshotOffer {
            transfer_id: id,
            total_bytes: 8,
            meta: Bytes::new(),
        })
    };
    let chunk = |offset: u64, data: &'static [u8], crc: Option<u32>| {
        Frame::SnapshotChunk(SnapshotChunk {
            offset,
            crc32c: crc.unwrap_or_else(|| crc32c::crc32c(data)),
            data: Bytes::from_static(data),
        })
    };
    let result = |answers: &[Frame]| match answers.last() {
        Some(Frame::SnapshotResult { error }) => error.as_ref().map(|e| e.detail.clone()),
        other => panic!("no result: {other:?}"),
    };

    let answers = raw_snapshot(addr, &ca, vec![offer(1), chunk(0, b"abcd", Some(12345))]).await;
    assert_eq!(answers[0], Frame::SnapshotResume { offset: 0 });
    let e = result(&answers).expect("accepted a corrupt chunk");
    assert!(e.contains("checksum"), "{e}");

    let answers = raw_snapshot(addr, &ca, vec![offer(2), chunk(4, b"efgh", None)]).await;
    let e = result(&answers).expect("accepted an out-of-order chunk");
    assert!(e.contains("expected 0"), "{e}");

    let answers = raw_snapshot(
        addr,
        &ca,
        vec![
            offer(3),
            chunk(0, b"abcd", None),
            chunk(4, b"efgh", None),
            Frame::SnapshotDone {
                total_bytes: 8,
                crc32c: 1,
            },
        ],
    )
    .await;
    let e = result(&answers).expect("accepted a snapshot with a wrong checksum");
    assert!(e.contains("checksum mismatch"), "{e}");

    // Nothing was published; a correct transfer still is.
    let whole = crc32c::crc32c(b"abcdefgh");
    let answers = raw_snapshot(
        addr,
        &ca,
        vec![
            offer(4),
            chunk(0, b"abcd", None),
            chunk(4, b"efgh", None),
            Frame::SnapshotDone {
                total_bytes: 8,
                crc32c: whole,
            },
        ],
    )
    .await;
    assert_eq!(result(&answers), None);
    let got = completed.recv().await.unwrap();
    assert_eq!(got.transfer_id, 4);
    assert_eq!(std::fs::read(&got.path).unwrap(), b"abcdefgh");
    assert!(completed.try_recv().is_err());
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_snapshot_sink_refuses_snapshots() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let a = start_node(
        &ca,
        1,
        any_addr(),
        QuicConfig {
            snapshot_attempts_max: 2,
            ..snapshot_config()
        },
    );
    let b = start_node(&ca, 2, any_addr(), snapshot_config());
    a.transport.add_peer(2, b.addr);
    let err = a
        .transport
        .stream_snapshot(2, 1, Bytes::new(), Arc::new(Bytes::from_static(b"data")))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not accept snapshots"),
        "{err}"
    );
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}
