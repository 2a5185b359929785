//! Bad bytes from an authenticated peer: malformed, truncated and oversized
//! frames, unknown stream kinds, frames of the wrong kind and messages that
//! lie about their sender close that peer's connection with a protocol
//! error and a reason. The node keeps serving everyone else.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use raft_core::Transport;
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, Frame, StreamKind};
use raft_net_quic::{close_code, QuicConfig};

/// Connects as node 2 to node 1 (handshake done), writes `bytes` on a new
/// unidirectional stream, optionally finishes it, and returns how the server
/// closed the connection.
async fn send_raw(server: &Node, ca: &DevCa, bytes: Vec<u8>, finish: bool) -> String {
    let (endpoint, cfg) = raw_client(ca, 2);
    let conn = raw_connect(&endpoint, &cfg, 1, server.addr).await.unwrap();
    assert_eq!(
        raw_hello(&conn, 2, 1, 1).await.unwrap(),
        Frame::Welcome {
            node: 1,
            cluster: None
        }
    );
    let mut s = conn.open_uni().await.unwrap();
    let _ = s.write_all(&bytes).await;
    if finish {
        let _ = s.finish();
    }
    closed_reason(&conn).await
}

fn frame(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::encode_frame(f, 1 << 24, &mut b).unwrap();
    b.to_vec()
}

fn with_kind(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(rest);
    v
}

/// The server still works: a well-behaved node exchanges messages with it.
async fn still_serves(ca: &DevCa, server: &mut Node) {
    let other = start_node(ca, 3, any_addr(), test_config());
    other.transport.add_peer(1, server.addr);
    let msgs = every_message(3, 1);
    other.transport.send(1, msgs.clone()).await.unwrap();
    for _ in 0..msgs.len() {
        let m = recv(&mut server.inbound, Duration::from_secs(10))
            .await
            .expect("server stopped serving");
        assert_eq!(m.from, 3);
    }
    other.transport.shutdown().await;
}

fn protocol_error(reason: &str) -> bool {
    reason.starts_with(&format!("code {}:", close_code::PROTOCOL))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_oversized_frames_close_the_connection() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let cfg = QuicConfig {
        max_frame_bytes: 1 << 20,
        ..test_config()
    };
    let mut server = start_node(&ca, 1, any_addr(), cfg);
    let control = StreamKind::Control as u8;
    let valid = frame(&Frame::Message(every_message(2, 1).remove(0)));

    // Unknown frame kind.
    let mut unknown = valid.clone();
    unknown[5] = 0x7f;
    let r = send_raw(&server, &ca, with_kind(control, &unknown), false).await;
    assert!(
        protocol_error(&r) && r.contains("unknown frame kind 0x7f"),
        "{r}"
    );

    // A body cut short, then the stream ends.
    let r = send_raw(
        &server,
        &ca,
        with_kind(control, &valid[..valid.len() - 3]),
        true,
    )
    .await;
    assert!(protocol_error(&r) && r.contains("truncated"), "{r}");

    // A length prefix cut short.
    let r = send_raw(&server, &ca, with_kind(control, &valid[..2]), true).await;
    assert!(protocol_error(&r) && r.contains("truncated"), "{r}");

    // A length over the limit: refused before anything is allocated.
    let r = send_raw(
        &server,
        &ca,
        with_kind(control, &[0xff, 0xff, 0xff, 0xff, 1, 0x10]),
        false,
    )
    .await;
    assert!(protocol_error(&r) && r.contains("exceeds the limit"), "{r}");

    // Garbage inside a well-framed body.
    let mut garbage = vec![0, 0, 0, 12, 1, 0x10];
    garbage.extend_from_slice(&[0xab; 10]);
    let r = send_raw(&server, &ca, with_kind(control, &garbage), false).await;
    assert!(protocol_error(&r), "{r}");

    // An unknown stream kind.
    let r = send_raw(&server, &ca, with_kind(b'Z', &valid), false).await;
    assert!(protocol_error(&r) && r.contains("stream kind"), "{r}");

    // A snapshot frame on a message stream.
    let done = frame(&Frame::SnapshotDone {
        total_bytes: 1,
        crc32c: 2,
    });
    let r = send_raw(
        &server,
        &ca,
        with_kind(StreamKind::Replication as u8, &done),
        false,
    )
    .await;
    assert!(protocol_error(&r) && r.contains("unexpected frame"), "{r}");

    // A message that claims another sender than the authenticated peer.
    let forged = frame(&Frame::Message(every_message(3, 1).remove(0)));
    let r = send_raw(&server, &ca, with_kind(control, &forged), false).await;
    assert!(protocol_error(&r) && r.contains("message from 3"), "{r}");

    // An InstallSnapshot without its data (only a snapshot offer carries one).
    let bare = frame(&Frame::Message(raft_core::Message {
        from: 2,
        to: 1,
        term: 3,
        body: raft_core::MessageBody::InstallSnapshot {
            meta: raft_core::SnapshotMeta {
                last_log_id: raft_core::LogId::new(3, 100),
                membership: raft_core::Membership::new([1, 2]),
            },
        },
    }));
    let r = send_raw(&server, &ca, with_kind(control, &bare), false).await;
    assert!(
        protocol_error(&r) && r.contains("InstallSnapshot travels only with its data"),
        "{r}"
    );

    // None of it reached the application, and the node still serves others.
    assert!(recv(&mut server.inbound, Duration::from_millis(200))
        .await
        .is_none());
    still_serves(&ca, &mut server).await;
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_a_stream_never_take_the_node_down() {
    init_tracing();
    let panics_before = count_panics();
    let ca = DevCa::generate("cluster").unwrap();
    let mut server = start_node(&ca, 1, any_addr(), test_config());
    let seed: u64 = raft_core::testing::env_or("MALFORMED_SEED", 0x5eed);
    println!("MALFORMED_SEED={seed}");
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..20 {
        let kind = [StreamKind::Control as u8, StreamKind::Replication as u8][rng.gen_range(0..2)];
        let len = rng.gen_range(0..300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let r = send_raw(&server, &ca, with_kind(kind, &bytes), true).await;
        // Random bytes are a protocol error, or (for an empty stream) nothing.
        assert!(protocol_error(&r) || r == "still open", "seed {seed}: {r}");
    }
    still_serves(&ca, &mut server).await;
    server.transport.shutdown().await;
    assert_no_panic_since(panics_before, seed);
}

/// Panics anywhere in this test process since [`count_panics`] was first
/// called. A panic in one of the transport's tasks would end only that
/// task (tokio catches it) and could leave the connection open, so a test
/// that watches connections alone would not see it. The count is
/// process-wide: a sibling test failing at the same time counts too.
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Starts counting panics (once per process); returns the count so far.
fn count_panics() -> usize {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default(info);
        }));
    });
    PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Fails when anything panicked since [`count_panics`] returned `before`.
fn assert_no_panic_since(before: usize, seed: u64) {
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "seed {seed}: something panicked while the server read random bytes (see above)"
    );
}

/// Random bytes from a peer with a valid certificate, after a correct
/// handshake: on a control, replication or snapshot stream, or a stream of
/// a random kind, sometimes behind a valid frame. The server must close the
/// connection with a protocol error or keep it (when the bytes happen to
/// form whole frames it accepts), never crash or stop serving others.
/// Seeded: a failure prints the seed; `RAFT_FUZZ_SEED=<seed>` replays it,
/// `RAFT_FUZZ_CASES` sets the count (default 60).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_from_an_authenticated_peer_break_nothing() {
    use rand::{Rng, SeedableRng};
    init_tracing();
    let panics_before = count_panics();
    let seed: u64 = raft_core::testing::seed_from_env("RAFT_FUZZ_SEED");
    let cases: usize = raft_core::testing::env_or("RAFT_FUZZ_CASES", 60);
    eprintln!("random bytes: seed {seed}, {cases} connections (replay: RAFT_FUZZ_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ca = DevCa::generate("cluster").unwrap();
    let cfg = QuicConfig {
        max_frame_bytes: 1 << 20,
        ..test_config()
    };
    let mut server = start_node(&ca, 1, any_addr(), cfg);
    let valid = frame(&Frame::Message(every_message(2, 1).remove(0)));
    let kinds = [
        StreamKind::Control as u8,
        StreamKind::Replication as u8,
        StreamKind::Snapshot as u8,
    ];
    let (mut closed, mut kept) = (0, 0);
    for i in 0..cases {
        let kind = if rng.gen_bool(0.9) {
            kinds[rng.gen_range(0..kinds.len())]
        } else {
            rng.gen()
        };
        let mut bytes = vec![kind];
        if rng.gen_bool(0.3) {
            bytes.extend_from_slice(&valid);
        }
        let n = rng.gen_range(0..4096);
        bytes.extend((0..n).map(|_| rng.gen::<u8>()));
        let (endpoint, client_cfg) = raw_client(&ca, 2);
        let conn = raw_connect(&endpoint, &client_cfg, 1, server.addr)
            .await
            .unwrap_or_else(|e| {
                panic!("seed {seed}, case {i}: the server refused a connection: {e}")
            });
        assert_eq!(
            raw_hello(&conn, 2, 1, 1).await.unwrap(),
            Frame::Welcome {
                node: 1,
                cluster: None
            },
            "seed {seed}, case {i}"
        );
        let mut s = conn.open_uni().await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.finish();
        match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
                assert_eq!(
                    c.error_code,
                    quinn::VarInt::from_u32(close_code::PROTOCOL),
                    "seed {seed}, case {i}: closed with {c:?}"
                );
                closed += 1;
            }
            Ok(other) => panic!("seed {seed}, case {i}: connection ended by {other:?}"),
            Err(_) => {
                kept += 1;
                conn.close(0u32.into(), b"done");
            }
        }
        endpoint.wait_idle().await;
    }
    eprintln!("random bytes: {closed} connections closed with a protocol error, {kept} kept");
    assert!(closed > 0, "seed {seed}: no random input was refused");
    // The valid frames sent before the garbage were delivered; drop them.
    while recv(&mut server.inbound, Duration::from_millis(200))
        .await
        .is_some()
    {}
    still_serves(&ca, &mut server).await;
    server.transport.shutdown().await;
    assert_no_panic_since(panics_before, seed);
}
