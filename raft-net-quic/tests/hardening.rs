//! Hostile peers (issue 16 items 8 to 10), on real sockets on loopback:
//! connection slots (exact limit, per-peer cap, QUIC Retry under a flood
//! of unanswered Initial packets), snapshot offers beyond the size limit or
//! the free space, partial transfers left by a crash, the allowed-peer set
//! and certificate revocation lists with reload.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use raft_core::{Message, MessageBody, NodeId, Transport};
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, Frame, SnapshotChunk, SnapshotOffer, StreamKind};
use raft_net_quic::{close_code, FileSnapshotSink, NodeTls, QuicConfig, QuicTransport};

fn ping(from: NodeId, to: NodeId, term: u64) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::TimeoutNow,
    }
}

/// Sends `from -> to` every 100 ms for up to `within`, stopping at the
/// first message from `from` that arrives: whether one did.
async fn arrives_within(
    sender: &QuicTransport,
    receiver: &mut tokio::sync::mpsc::Receiver<raft_core::Message>,
    from: NodeId,
    to: NodeId,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let _ = sender.send(to, vec![ping(from, to, 7)]).await;
        if let Some(m) = recv(receiver, Duration::from_millis(100)).await {
            if m.from == from {
                return true;
            }
        }
    }
    false
}

/// Sends `from -> to` every 100 ms until the receiver gets one, for up to
/// `within`. True when one arrived.
async fn delivered(
    sender: &QuicTransport,
    receiver: &mut tokio::sync::mpsc::Receiver<raft_core::Message>,
    from: NodeId,
    to: NodeId,
    within: Duration,
) -> bool {
    arrives_within(sender, receiver, from, to, within).await
}

/// Nothing arrives from `from` for `quiet` while it keeps sending.
async fn refused(
    sender: &QuicTransport,
    receiver: &mut tokio::sync::mpsc::Receiver<raft_core::Message>,
    from: NodeId,
    to: NodeId,
    quiet: Duration,
) -> bool {
    !arrives_within(sender, receiver, from, to, quiet).await
}

/// Sends QUIC Initial packets, each opening a new connection, to `target`
/// from one UDP socket at `per_second`, and never answers anything: a
/// client that does not (or cannot, with a spoofed address) complete the
/// handshake. Stops when `stop` is set or after `max`.
fn flood_initials(
    target: SocketAddr,
    per_second: u64,
    max: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        tls.alpn_protocols = vec![raft_net_quic::tls::ALPN.to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let client = quinn_proto::ClientConfig::new(Arc::new(crypto));
        let mut endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            false,
            None,
        );
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let mut buf = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
            // Keep to the rate: packet n leaves at n / per_second.
            let due = Duration::from_micros(n * 1_000_000 / per_second);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let now = Instant::now();
            let (_, mut conn) = endpoint
                .connect(now, client.clone(), target, "node-1.raft")
                .unwrap();
            buf.clear();
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                let _ = socket.send_to(&buf[..t.size], target);
                sent.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
    })
}

/// Item 10: 1,000 handshakes per second that are never completed (as from
/// spoofed addresses) do not keep a restarted member from connecting: past
/// `retry_handshakes_threshold` they get a stateless QUIC Retry, which a
/// real peer answers and a flood does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unanswered_handshakes_does_not_keep_members_out() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let cfg = QuicConfig {
        refuse_unknown_peers: true,
        ..test_config()
    };
    let mut n1 = start_node(&ca, 1, any_addr(), cfg.clone());
    let n2 = start_node(&ca, 2, any_addr(), cfg.clone());
    n1.transport.add_peer(2, n2.addr);
    n2.transport.add_peer(1, n1.addr);
    assert!(
        delivered(
            &n2.transport,
            &mut n1.inbound,
            2,
            1,
            Duration::from_secs(10)
        )
        .await
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood_started = Instant::now();
    let flood = flood_initials(
        n1.addr,
        1000,
        Duration::from_secs(30),
        stop.clone(),
        sent.clone(),
    );
    // Let the flood fill whatever it can fill.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Node 2 restarts; only it dials (node 1 sends nothing), so its
    // messages need a new inbound connection at node 1.
    let addr2 = n2.addr;
    n2.transport.shutdown().await;
    drop(n2);
    let n2 = restart_node(&ca, 2, addr2, cfg.clone()).await;
    n2.transport.add_peer(1, n1.addr);
    // A restarted member normally reconnects within its first dial attempts;
    // 3 s leave room for a loaded machine.
    let ok = delivered(&n2.transport, &mut n1.inbound, 2, 1, Duration::from_secs(3)).await;
    // The flood runs for at least 2 s in all.
    if let Some(rest) = Duration::from_secs(2).checked_sub(flood_started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood: {sent} Initial packets in {flood_secs:.1} s; node 1 holds {} connections",
        n1.transport.open_connections()
    );
    assert!(sent >= 1000, "the flood sent only {sent} packets");
    assert!(
        ok,
        "the restarted member could not reach node 1 during the flood"
    );
    n1.transport.shutdown().await;
    n2.transport.shutdown().await;
}

/// Opens a TLS connection with `cert_node`'s certificate to node 1 and runs
/// the handshake; the Welcome or the refusal.
async fn hello_as(
    ca: &DevCa,
    cert_node: NodeId,
    addr: SocketAddr,
) -> (
    quinn::Endpoint,
    Option<quinn::Connection>,
    Result<Frame, String>,
) {
    let (endpoint, cfg) = raw_client(ca, cert_node);
    let conn = match raw_connect(&endpoint, &cfg, 1, addr).await {
        Ok(c) => c,
        Err(e) => return (endpoint, None, Err(e.to_string())),
    };
    let answer = raw_hello(&conn, cert_node, 1, 1).await;
    (endpoint, Some(conn), answer)
}

/// Item 10: the global limit is exact. With `connections_max = 3`, three
/// peers get in and the fourth and fifth are refused (the old check let one
/// extra through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_lets_exactly_connections_max_in() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let cfg = QuicConfig {
        connections_max: 3,
        connections_per_peer_max: 3,
        ..test_config()
    };
    let n1 = start_node(&ca, 1, any_addr(), cfg);
    let mut held = Vec::new();
    let mut welcomed = 0;
    for peer in 2..=6 {
        let (ep, conn, answer) = hello_as(&ca, peer, n1.addr).await;
        if answer == Ok(Frame::Welcome { node: 1 }) {
            welcomed += 1;
        }
        held.push((ep, conn));
    }
    assert_eq!(welcomed, 3, "connections_max is 3");
    n1.transport.shutdown().await;
}

/// Item 10: one authenticated peer cannot take every slot: past
/// `connections_per_peer_max` its connections are refused (close code 8),
/// and another peer still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_every_connection_slot() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let cfg = QuicConfig {
        connections_max: 6,
        connections_per_peer_max: 2,
        ..test_config()
    };
    let n1 = start_node(&ca, 1, any_addr(), cfg);
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..6 {
        let (ep, conn, answer) = hello_as(&ca, 2, n1.addr).await;
        answers.push(answer);
        held.push((ep, conn));
    }
    let welcomed = answers
        .iter()
        .filter(|a| **a == Ok(Frame::Welcome { node: 1 }))
        .count();
    assert_eq!(welcomed, 2, "answers: {answers:?}");
    assert!(
        answers
            .iter()
            .any(|a| matches!(a, Err(e) if e.contains(&format!("code {}", close_code::TOO_MANY_CONNECTIONS)))),
        "answers: {answers:?}"
    );
    let (_ep, _conn, answer) = hello_as(&ca, 3, n1.addr).await;
    assert_eq!(answer, Ok(Frame::Welcome { node: 1 }));
    n1.transport.shutdown().await;
}

/// A raw snapshot stream as node 2 to node 1: sends `frames`, returns the
/// first answer frame (after `hold` more time with the stream open).
async fn raw_snapshot_answer(
    ca: &DevCa,
    addr: SocketAddr,
    frames: Vec<Frame>,
) -> (quinn::Endpoint, quinn::Connection, Option<Frame>) {
    let (endpoint, cfg) = raw_client(ca, 2);
    let conn = raw_connect(&endpoint, &cfg, 1, addr).await.unwrap();
    assert_eq!(
        raw_hello(&conn, 2, 1, 1).await.unwrap(),
        Frame::Welcome { node: 1 }
    );
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[StreamKind::Snapshot as u8]);
    for f in &frames {
        codec::encode_frame(f, 1 << 24, &mut buf).unwrap();
    }
    send.write_all(&buf).await.unwrap();
    let mut prefix = [0u8; 4];
    let answer =
        match tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut prefix)).await {
            Ok(Ok(())) => {
                let len = u32::from_be_bytes(prefix) as usize;
                let mut body = vec![0u8; len];
                recv.read_exact(&mut body).await.unwrap();
                let mut frame = prefix.to_vec();
                frame.extend_from_slice(&body);
                Some(codec::decode_frame(Bytes::from(frame), 1 << 24).unwrap())
            }
            _ => None,
        };
    // Keep the stream open (no finish): the caller decides when it ends.
    std::mem::forget(send);
    (endpoint, conn, answer)
}

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn offer(total_bytes: u64) -> Frame {
    Frame::SnapshotOffer(SnapshotOffer {
        transfer_id: 77,
        total_bytes,
        meta: Bytes::new(),
    })
}

/// Item 9: a peer offering a 10 GiB snapshot is refused at the offer (the
/// default `snapshot_bytes_max` is 4 GiB), before a byte is written; one
/// offering more than the free space of the directory too, whatever the
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_snapshot_offers_are_refused_before_anything_is_written() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    for (limit, total, want) in [
        (
            QuicConfig::default().snapshot_bytes_max,
            10u64 << 30,
            "limit",
        ),
        (u64::MAX, 1u64 << 60, "free"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let incoming = dir.path().join("incoming");
        let (sink, _completed) = FileSnapshotSink::new(&incoming, 2).unwrap();
        let (receiver, _inbound) = QuicTransport::builder(1, tls(&ca, 1))
            .config(QuicConfig {
                snapshot_bytes_max: limit,
                ..test_config()
            })
            .snapshot_sink(Arc::new(sink))
            .bind(any_addr())
            .unwrap();
        let addr = receiver.local_addr().unwrap();
        let (_ep, _conn, answer) = raw_snapshot_answer(&ca, addr, vec![offer(total)]).await;
        match answer {
            Some(Frame::SnapshotResult { error: Some(e) }) => {
                assert!(e.contains(want), "refusal {e:?} does not mention {want}")
            }
            other => panic!("an offer of {total} bytes was answered with {other:?}"),
        }
        assert!(
            dir_entries(&incoming).is_empty(),
            "files were created: {:?}",
            dir_entries(&incoming)
        );
        receiver.shutdown().await;
    }
}

/// Item 9: a transfer cut mid-way (the receiving node stops with a
/// `.partial` file on disk) leaves nothing once the node starts again on
/// the same directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_mid_way_leaves_nothing_after_a_restart() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let incoming = dir.path().join("incoming");
    let (sink, _completed) = FileSnapshotSink::new(&incoming, 2).unwrap();
    let (receiver, _inbound) = QuicTransport::builder(1, tls(&ca, 1))
        .config(test_config())
        .snapshot_sink(Arc::new(sink))
        .bind(any_addr())
        .unwrap();
    let addr = receiver.local_addr().unwrap();
    let data = Bytes::from(vec![7u8; 64 << 10]);
    let (ep, conn, answer) = raw_snapshot_answer(
        &ca,
        addr,
        vec![
            offer(1 << 20),
            Frame::SnapshotChunk(SnapshotChunk {
                offset: 0,
                crc32c: crc32c::crc32c(&data),
                data,
            }),
        ],
    )
    .await;
    assert_eq!(answer, Some(Frame::SnapshotResume { offset: 0 }));
    // Wait for the chunk to land, then "crash": the sender vanishes and the
    // receiving node stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir_entries(&incoming).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dir_entries(&incoming).len(), 1, "the partial file");
    drop(conn);
    drop(ep);
    receiver.shutdown().await;
    // A stray file from an earlier run, too.
    std::fs::write(incoming.join("9-9.snap"), b"old").unwrap();

    let (_sink, _completed) = FileSnapshotSink::new(&incoming, 2).unwrap();
    assert!(
        dir_entries(&incoming).is_empty(),
        "left after the restart: {:?}",
        dir_entries(&incoming)
    );
}

/// Item 8: with an allowed-peer set, a peer outside it (here still in the
/// peer table) is cut off at once and refused after; allowed again, it
/// gets back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_outside_the_allowed_set_are_cut_off() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let mut nodes = mesh(&ca, 3);
    let n3 = nodes.pop().unwrap();
    let n2 = nodes.pop().unwrap();
    let mut n1 = nodes.pop().unwrap();
    assert!(
        delivered(
            &n2.transport,
            &mut n1.inbound,
            2,
            1,
            Duration::from_secs(10)
        )
        .await
    );
    assert!(
        delivered(
            &n3.transport,
            &mut n1.inbound,
            3,
            1,
            Duration::from_secs(10)
        )
        .await
    );

    n1.transport.set_allowed_peers(Some(HashSet::from([2])));
    assert!(
        refused(&n3.transport, &mut n1.inbound, 3, 1, Duration::from_secs(2)).await,
        "node 3 still reaches node 1"
    );
    assert!(
        delivered(
            &n2.transport,
            &mut n1.inbound,
            2,
            1,
            Duration::from_secs(10)
        )
        .await
    );

    n1.transport.set_allowed_peers(Some(HashSet::from([2, 3])));
    assert!(
        delivered(
            &n3.transport,
            &mut n1.inbound,
            3,
            1,
            Duration::from_secs(10)
        )
        .await
    );
    for n in [n1, n2, n3] {
        n.transport.shutdown().await;
    }
}

/// Item 8: a certificate revocation list, reloaded when its file changes:
/// a peer whose certificate gets revoked loses its connection and cannot
/// come back (in either direction), the others carry on; a node whose own
/// certificate is revoked refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_after_a_crl_reload() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("cluster.crl");
    std::fs::write(&crl, ca.revocation_list(&[]).unwrap()).unwrap();
    let cert2 = ca.issue_node(2, &[]).unwrap();
    let tls2 = NodeTls::from_pem(
        2,
        ca.cert_pem().as_bytes(),
        cert2.cert_pem.as_bytes(),
        cert2.key_pem.as_bytes(),
    )
    .unwrap();
    let cfg = QuicConfig {
        crl_poll_interval: Duration::from_millis(100),
        ..test_config()
    };
    let (t1, mut in1) = QuicTransport::builder(1, tls(&ca, 1))
        .config(cfg.clone())
        .crl_file(&crl)
        .bind(any_addr())
        .unwrap();
    let (t2, mut in2) = QuicTransport::builder(2, tls2)
        .config(cfg.clone())
        .bind(any_addr())
        .unwrap();
    let mut n3 = start_node(&ca, 3, any_addr(), cfg.clone());
    let a1 = t1.local_addr().unwrap();
    t1.add_peer(2, t2.local_addr().unwrap());
    t1.add_peer(3, n3.addr);
    t2.add_peer(1, a1);
    n3.transport.add_peer(1, a1);
    assert!(delivered(&t2, &mut in1, 2, 1, Duration::from_secs(10)).await);
    assert!(delivered(&n3.transport, &mut in1, 3, 1, Duration::from_secs(10)).await);

    // Revoke node 2's certificate: a new file (the poller sees it change).
    std::fs::write(&crl, ca.revocation_list(&[&cert2.cert_pem]).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        refused(&t2, &mut in1, 2, 1, Duration::from_secs(2)).await,
        "revoked node 2 still reaches node 1"
    );
    assert!(
        refused(&t1, &mut in2, 1, 2, Duration::from_secs(2)).await,
        "node 1 still talks to revoked node 2"
    );
    assert!(delivered(&n3.transport, &mut in1, 3, 1, Duration::from_secs(10)).await);
    assert!(delivered(&t1, &mut n3.inbound, 1, 3, Duration::from_secs(10)).await);

    // A node whose own certificate the list revokes does not start.
    let own = NodeTls::from_pem(
        2,
        ca.cert_pem().as_bytes(),
        cert2.cert_pem.as_bytes(),
        cert2.key_pem.as_bytes(),
    )
    .unwrap();
    let err = QuicTransport::builder(2, own)
        .crl_file(&crl)
        .bind(any_addr())
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    t1.shutdown().await;
    t2.shutdown().await;
    n3.transport.shutdown().await;
}
