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

use bytes::Bytes;
use common::*;
use raft_core::NodeId;
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, Frame, SnapshotChunk, SnapshotOffer};
use raft_net_quic::{close_code, FileSnapshotSink, QuicConfig, QuicTransport, RefusalReason};

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
        let (mut endpoint, client) = unvalidated_quic_client();
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
    let (mut n1, n2) = connected_pair(&ca, &cfg).await;

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
    let n2 = restart_knowing(&ca, n2, &cfg, 1, n1.addr).await;
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

/// A cluster CA and node 1 with `max` connection slots, at most `per_peer`
/// of them for one peer, none reserved for peers.
fn node_1_with_slots(max: usize, per_peer: usize) -> (DevCa, Node) {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let cfg = QuicConfig {
        connections_max: max,
        connections_per_peer_max: per_peer,
        connections_reserved_for_peers: 0,
        ..test_config()
    };
    let n1 = start_node(&ca, 1, any_addr(), cfg);
    (ca, n1)
}

/// Item 10: the global limit is exact. With `connections_max = 3`, three
/// peers get in and the fourth and fifth are refused (the old check let one
/// extra through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_lets_exactly_connections_max_in() {
    let (ca, n1) = node_1_with_slots(3, 3);
    let mut held = Vec::new();
    let mut welcomed = 0;
    for peer in 2..=6 {
        let (ep, conn, answer) = hello_as(&ca, peer, n1.addr).await;
        if answer
            == Ok(Frame::Welcome {
                node: 1,
                cluster: None,
            })
        {
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
    let (ca, n1) = node_1_with_slots(6, 2);
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..6 {
        let (ep, conn, answer) = hello_as(&ca, 2, n1.addr).await;
        answers.push(answer);
        held.push((ep, conn));
    }
    let welcomed = answers
        .iter()
        .filter(|a| {
            **a == Ok(Frame::Welcome {
                node: 1,
                cluster: None,
            })
        })
        .count();
    assert_eq!(welcomed, 2, "answers: {answers:?}");
    assert!(
        answers
            .iter()
            .any(|a| matches!(a, Err(e) if e.contains(&format!("code {}", close_code::TOO_MANY_CONNECTIONS)))),
        "answers: {answers:?}"
    );
    let (_ep, _conn, answer) = hello_as(&ca, 3, n1.addr).await;
    assert_eq!(
        answer,
        Ok(Frame::Welcome {
            node: 1,
            cluster: None
        })
    );
    n1.transport.shutdown().await;
}

/// A raw snapshot stream as node 2 to node 1: sends `frames`, returns the
/// first answer frame (after `hold` more time with the stream open).
async fn raw_snapshot_answer(
    ca: &DevCa,
    addr: SocketAddr,
    frames: Vec<Frame>,
) -> (quinn::Endpoint, quinn::Connection, Option<Frame>) {
    raw_snapshot_answer_as(ca, 2, addr, frames).await
}

/// [`raw_snapshot_answer`] as node `from`.
async fn raw_snapshot_answer_as(
    ca: &DevCa,
    from: NodeId,
    addr: SocketAddr,
    frames: Vec<Frame>,
) -> (quinn::Endpoint, quinn::Connection, Option<Frame>) {
    let (endpoint, conn, send, mut recv) = raw_snapshot_stream(ca, from, (1, addr), &frames).await;
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
        let cfg = QuicConfig {
            snapshot_bytes_max: limit,
            ..test_config()
        };
        let (receiver, _inbound, _completed) = start_snapshot_receiver(&ca, 1, cfg, &incoming, 2);
        let addr = receiver.local_addr().unwrap();
        let (_ep, _conn, answer) = raw_snapshot_answer(&ca, addr, vec![offer(total)]).await;
        match answer {
            Some(Frame::SnapshotResult { error: Some(e) }) => {
                assert!(
                    e.detail.contains(want),
                    "refusal {e:?} does not mention {want}"
                )
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
    let (ca, dir) = ca_and_dir();
    let incoming = dir.path().join("incoming");
    let (receiver, _inbound, _completed) =
        start_snapshot_receiver(&ca, 1, test_config(), &incoming, 2);
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
    assert!(delivered(&n2.transport, &mut n1.inbound, 2, 1, DELIVERY_WAIT).await);
    assert!(delivered(&n3.transport, &mut n1.inbound, 3, 1, DELIVERY_WAIT).await);

    n1.transport.set_allowed_peers(Some(HashSet::from([2])));
    assert!(
        refused(&n3.transport, &mut n1.inbound, 3, 1, Duration::from_secs(2)).await,
        "node 3 still reaches node 1"
    );
    assert!(delivered(&n2.transport, &mut n1.inbound, 2, 1, DELIVERY_WAIT).await);

    n1.transport.set_allowed_peers(Some(HashSet::from([2, 3])));
    assert!(delivered(&n3.transport, &mut n1.inbound, 3, 1, DELIVERY_WAIT).await);
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
    let (ca, dir) = ca_and_dir();
    let crl = empty_crl_file(&ca, dir.path());
    let cert2 = ca.issue_node(2, &[]).unwrap();
    let tls2 = tls_from_cert(&ca, 2, &cert2);
    let cfg = crl_test_config();
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
    assert!(delivered(&t2, &mut in1, 2, 1, DELIVERY_WAIT).await);
    assert!(delivered(&n3.transport, &mut in1, 3, 1, DELIVERY_WAIT).await);

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
    assert!(delivered(&n3.transport, &mut in1, 3, 1, DELIVERY_WAIT).await);
    assert!(delivered(&t1, &mut n3.inbound, 1, 3, DELIVERY_WAIT).await);

    // A node whose own certificate the list revokes does not start.
    let own = tls_from_cert(&ca, 2, &cert2);
    let err = QuicTransport::builder(2, own)
        .crl_file(&crl)
        .bind(any_addr())
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    t1.shutdown().await;
    t2.shutdown().await;
    n3.transport.shutdown().await;
}

/// Finding c: two offers that each fit the free space alone are not both
/// accepted when together they do not: the first one reserves what it
/// still has to write, and the second is refused (`no_space`) while the
/// first is in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_offers_reserve_their_space() {
    let (ca, dir) = ca_and_dir();
    let incoming = dir.path().join("incoming");
    let cfg = QuicConfig {
        snapshot_bytes_max: u64::MAX,
        ..test_config()
    };
    let (receiver, _inbound, _completed) = start_snapshot_receiver(&ca, 1, cfg, &incoming, 2);
    let addr = receiver.local_addr().unwrap();
    let st = rustix::fs::statvfs(&incoming).unwrap();
    let free = st.f_bavail * st.f_frsize;
    // Each fits alone (with room for the margin and other writers on this
    // disk); the two do not.
    let size = free / 10 * 6;
    let (_ep2, _conn2, first) = raw_snapshot_answer_as(&ca, 2, addr, vec![offer(size)]).await;
    assert_eq!(
        first,
        Some(Frame::SnapshotResume { offset: 0 }),
        "an offer of {size} bytes of {free} free"
    );
    let (_ep3, _conn3, second) = raw_snapshot_answer_as(&ca, 3, addr, vec![offer(size)]).await;
    match second {
        Some(Frame::SnapshotResult { error: Some(e) }) => {
            assert_eq!(e.reason, RefusalReason::NoSpace, "{e:?}");
            assert!(e.detail.contains("reserved"), "{e:?}");
        }
        other => {
            panic!("the second offer of {size} bytes ({free} free) was answered with {other:?}")
        }
    }
    receiver.shutdown().await;
}

/// Finding b: an offer above `snapshot_bytes_max` is refused with a typed
/// reason the sender sees, and the sender stops at once (another attempt
/// cannot change the limit) instead of retrying `snapshot_attempts_max`
/// times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_too_large_for_the_receiver_fails_at_once_with_the_reason() {
    let (ca, dir) = ca_and_dir();
    let pair = snapshot_limit_pair(&ca, dir.path(), 1000);
    let (sender, receiver) = (&pair.sender, &pair.receiver);
    let data: Arc<dyn raft_net_quic::SnapshotSource> = Arc::new(Bytes::from(vec![5u8; 4096]));
    let started = Instant::now();
    let err = sender
        .transport
        .stream_snapshot(2, 9, Bytes::new(), data)
        .await
        .unwrap_err();
    match &err {
        raft_net_quic::SnapshotError::Refused { peer: 2, refusal } => {
            assert_eq!(refusal.reason, RefusalReason::TooLarge);
            assert!(
                refusal.detail.contains("4096") && refusal.detail.contains("1000"),
                "{refusal:?}"
            );
            assert!(
                refusal.detail.contains("--max-snapshot-receive-mib"),
                "{refusal:?}"
            );
        }
        other => panic!("expected a typed refusal, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up only after {:?}",
        started.elapsed()
    );
    sender.transport.shutdown().await;
    receiver.shutdown().await;
}

/// PEM text padded with trailing newlines (outside any block) to `len`.
fn padded(pem: &str, len: usize) -> Vec<u8> {
    let mut b = pem.as_bytes().to_vec();
    assert!(b.len() <= len);
    b.resize(len, b'\n');
    b
}

/// Finding d: a revocation list rewritten with the same length and the
/// same modification time is still noticed (by content); a half-written
/// file keeps the lists in force; a list that revokes this node's own
/// certificate is used for the peers it revokes, and this node keeps
/// talking to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_reloads_follow_the_content_and_survive_bad_files() {
    let (ca, dir) = ca_and_dir();
    let crl = dir.path().join("cluster.crl");
    let cert1 = ca.issue_node(1, &[]).unwrap();
    let cert2 = ca.issue_node(2, &[]).unwrap();
    let cert9 = ca.issue_node(9, &[]).unwrap();
    let revoking_9 = ca.revocation_list(&[&cert9.cert_pem]).unwrap();
    let revoking_2 = ca.revocation_list(&[&cert2.cert_pem]).unwrap();
    let len = revoking_9.len().max(revoking_2.len()) + 16;
    std::fs::write(&crl, padded(&revoking_9, len)).unwrap();
    let mtime = std::fs::metadata(&crl).unwrap().modified().unwrap();
    let tls_of = |id, c: &raft_net_quic::certs::NodeCert| tls_from_cert(&ca, id, c);
    let cfg = crl_test_config();
    let (t1, mut in1) = QuicTransport::builder(1, tls_of(1, &cert1))
        .config(cfg.clone())
        .crl_file(&crl)
        .bind(any_addr())
        .unwrap();
    let (t2, _in2) = QuicTransport::builder(2, tls_of(2, &cert2))
        .config(cfg.clone())
        .bind(any_addr())
        .unwrap();
    let n3 = start_node(&ca, 3, any_addr(), cfg.clone());
    let a1 = t1.local_addr().unwrap();
    t1.add_peer(2, t2.local_addr().unwrap());
    t1.add_peer(3, n3.addr);
    t2.add_peer(1, a1);
    n3.transport.add_peer(1, a1);
    assert!(delivered(&t2, &mut in1, 2, 1, DELIVERY_WAIT).await);

    // Same length, same modification time, other content: node 2 revoked.
    let f = std::fs::OpenOptions::new().write(true).open(&crl).unwrap();
    std::io::Write::write_all(&mut &f, &padded(&revoking_2, len)).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&crl).unwrap().len(), len as u64);
    assert_eq!(std::fs::metadata(&crl).unwrap().modified().unwrap(), mtime);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        refused(&t2, &mut in1, 2, 1, Duration::from_secs(2)).await,
        "a list rewritten with the same length and time was not reloaded"
    );

    // Half of a list that revokes nothing: not loaded, node 2 stays out.
    let revoking_none = ca.revocation_list(&[]).unwrap();
    std::fs::write(&crl, &revoking_none.as_bytes()[..revoking_none.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        refused(&t2, &mut in1, 2, 1, Duration::from_secs(2)).await,
        "a half-written list replaced the lists in force"
    );
    assert!(t1.reload_crl().is_err(), "a half-written list loaded");

    // A list revoking node 1 itself and node 2: in force for node 2, node 1
    // keeps running and talking to node 3.
    std::fs::write(
        &crl,
        ca.revocation_list(&[&cert1.cert_pem, &cert2.cert_pem])
            .unwrap(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    t1.reload_crl()
        .expect("a list revoking this node's own certificate is still installed");
    assert!(refused(&t2, &mut in1, 2, 1, Duration::from_secs(2)).await);
    assert!(delivered(&n3.transport, &mut in1, 3, 1, DELIVERY_WAIT).await);
    t1.shutdown().await;
    t2.shutdown().await;
    n3.transport.shutdown().await;
}
