//! Adversarial review of the issue 16 peer hardening (commits b3386ce and
//! 7b2330d): each `review_` test shows a finding as a user would observe
//! it; the others cover the rest of the fixes (the dialer's side of the
//! CRL race, what ends the wait for a refused snapshot).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use raft_core::memory::{KvCommand, MemKv, MemLog};
use raft_core::{
    Config, DriverConfig, Membership, MembershipChange, Message, MessageBody, NodeId, Raft, Role,
};
use raft_net_quic::certs::DevCa;
use raft_net_quic::codec::{self, decode_frame, Frame, SnapshotOffer, StreamKind};
use raft_net_quic::{QuicConfig, QuicTransport, RefusalReason, SnapshotRefusal, SnapshotSink};

/// Wire compatibility: a refusal whose reason code this version does not
/// know (one a newer peer added within protocol version 1, as the typed
/// tag itself was) must still decode, with its text, as an untyped
/// refusal. A strict decoder turns the newer peer's refusal into a decode
/// error: the sender loses the reason and the detail (size, limit, flag to
/// change) and logs "invalid refusal reason" instead.
#[test]
fn review_an_unknown_refusal_reason_code_decodes_with_its_text() {
    // length 0x11, version 1, kind 0x24 (SnapshotResult), tag 2 (typed),
    // reason code 99 (unknown here), text "disk full".
    let mut wire = vec![0, 0, 0, 0x11, 1, 0x24, 2, 99, 0, 0, 0, 9];
    wire.extend_from_slice(b"disk full");
    match decode_frame(Bytes::from(wire), 1 << 20) {
        Ok(Frame::SnapshotResult { error: Some(e) }) => assert_eq!(e.detail, "disk full"),
        other => panic!("a refusal with an unknown reason code: {other:?}"),
    }
}

/// CRL reload vs a handshake in flight: a peer whose TLS handshake ended
/// before the reload but who sends its Hello after it is welcomed and
/// served, although the list now in force revokes its certificate. The
/// reload only re-checks connections already in the table, so a holder of
/// a certificate about to be revoked keeps a connection that is past TLS
/// and idles in the Hello phase (up to `handshake_timeout`, renewed as
/// often as it likes) and stays in after the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_handshake_in_flight_at_a_crl_reload_is_not_let_in_with_a_revoked_certificate() {
    let (ca, dir) = ca_and_dir();
    let crl = empty_crl_file(&ca, dir.path());
    let cert1 = ca.issue_node(1, &[]).unwrap();
    let cert2 = ca.issue_node(2, &[]).unwrap();
    let tls_of = |id, c: &raft_net_quic::certs::NodeCert| tls_from_cert(&ca, id, c);
    let cfg = crl_test_config();
    let (t1, mut in1) = QuicTransport::builder(1, tls_of(1, &cert1))
        .config(cfg)
        .crl_file(&crl)
        .bind(any_addr())
        .unwrap();
    let addr1 = t1.local_addr().unwrap();

    // Node 2 (not yet revoked) completes TLS and waits before its Hello.
    let (endpoint, client_cfg) = raw_client_with(tls_of(2, &cert2));
    let conn = raw_connect(&endpoint, &client_cfg, 1, addr1)
        .await
        .expect("TLS with a certificate not (yet) revoked");

    // Node 2's certificate is revoked and the list reloaded.
    std::fs::write(&crl, ca.revocation_list(&[&cert2.cert_pem]).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    t1.reload_crl().expect("the new list loads");

    // The Hello now: a revoked certificate must not be welcomed...
    let answer = raw_hello(&conn, 2, 1, codec::PROTOCOL_VERSION).await;
    // ...and nothing it sends may reach node 1.
    if let Ok(mut send) = conn.open_uni().await {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[StreamKind::Control as u8]);
        let ping = Message {
            from: 2,
            to: 1,
            term: 7,
            body: MessageBody::TimeoutNow,
        };
        codec::encode_frame(&Frame::Message(ping), 1 << 20, &mut buf).unwrap();
        let _ = send.write_all(&buf).await;
        let _ = send.finish();
    }
    let arrived = recv(&mut in1, Duration::from_secs(2)).await;
    assert!(
        arrived.is_none() && !matches!(answer, Ok(Frame::Welcome { .. })),
        "revoked node 2 was let in after the reload: answer {answer:?}, \
         message delivered {arrived:?}"
    );
    endpoint.close(0u32.into(), b"done");
    t1.shutdown().await;
}

/// A sink that refuses every offer as too large and counts the offers.
struct RefusingSink(Arc<AtomicU64>);

#[async_trait::async_trait]
impl SnapshotSink for RefusingSink {
    async fn begin(&self, _: NodeId, _: &SnapshotOffer) -> Result<u64, SnapshotRefusal> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(SnapshotRefusal::new(RefusalReason::TooLarge, "too large"))
    }
    async fn write(&self, _: NodeId, _: u64, _: u64, _: Bytes) -> Result<(), SnapshotRefusal> {
        Err(SnapshotRefusal::new(RefusalReason::Invalid, "no transfer"))
    }
    async fn finish(&self, _: NodeId, _: u64, _: u64, _: u32) -> Result<(), SnapshotRefusal> {
        Err(SnapshotRefusal::new(RefusalReason::Invalid, "no transfer"))
    }
}

/// A permanent refusal (too large) makes `send_snapshot` return at once,
/// with no backoff; the engine then offers the same snapshot again at the
/// next heartbeat, forever. Before, the attempts loop backed off between
/// failures; now a learner whose limit is too small gets an offer (and the
/// leader logs two unthrottled warnings) every heartbeat. "A sender stops
/// at once after a permanent refusal" does not hold end to end: over 5 s
/// the leader must not offer more than a few times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_permanently_refused_snapshot_is_not_offered_again_every_heartbeat() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let (t1, mut in1) = QuicTransport::builder(1, tls(&ca, 1))
        .config(test_config())
        .bind(any_addr())
        .unwrap();
    let offers = Arc::new(AtomicU64::new(0));
    let (t4, mut in4) = QuicTransport::builder(4, tls(&ca, 4))
        .config(test_config())
        .snapshot_sink(Arc::new(RefusingSink(offers.clone())))
        .bind(any_addr())
        .unwrap();
    t1.add_peer(4, t4.local_addr().unwrap());
    t4.add_peer(1, t1.local_addr().unwrap());
    let mut config = Config::new(1);
    config.snapshot_threshold_entries = 40;
    config.snapshot_keep_entries = 5;
    let leader = Raft::start(
        config,
        DriverConfig::default(),
        Membership::new([1]),
        MemLog::new(),
        MemKv::new(),
        t1.clone(),
    )
    .await
    .unwrap();
    let h = leader.clone();
    tokio::spawn(async move {
        while let Some(m) = in1.recv().await {
            let _ = h.receive(m);
        }
    });
    // The learner: an empty node that answers the leader's probes.
    let learner = Raft::start(
        Config::new(4),
        DriverConfig::default(),
        Membership::default(),
        MemLog::new(),
        MemKv::new(),
        t4.clone(),
    )
    .await
    .unwrap();
    let h4 = learner.clone();
    tokio::spawn(async move {
        while let Some(m) = in4.recv().await {
            let _ = h4.receive(m);
        }
    });
    tokio::time::timeout(Duration::from_secs(30), async {
        while !leader
            .status()
            .await
            .is_some_and(|s| s.engine.role == Role::Leader)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no leader within 30 s");
    for i in 0..120 {
        let cmd = KvCommand::Put {
            key: format!("k{i}"),
            value: Bytes::from_static(b"v"),
        };
        leader.propose(cmd.encode()).await.unwrap();
    }
    let _ = leader
        .change_membership(MembershipChange::AddLearner(4))
        .await;
    // The first offer and its permanent refusal.
    tokio::time::timeout(Duration::from_secs(10), async {
        while offers.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no snapshot offered to the learner within 10 s");
    let before = offers.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = offers.load(Ordering::SeqCst) - before;
    assert!(
        again <= 5,
        "after a permanent refusal the leader offered the same snapshot {again} more times in 5 s"
    );
    leader.shutdown().await;
    learner.shutdown().await;
    t1.shutdown().await;
    t4.shutdown().await;
}

/// The dialer's side of the same race: node 1 dials node 2, TLS passes,
/// and node 2's certificate is revoked (the list reloaded on node 1)
/// before node 2's `Welcome` arrives. The connection must not be used:
/// `connect` fails and node 2 sees it closed as revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_in_flight_at_a_crl_reload_does_not_keep_a_revoked_peer() {
    let (ca, dir) = ca_and_dir();
    let crl = empty_crl_file(&ca, dir.path());
    let cert2 = ca.issue_node(2, &[]).unwrap();
    let tls2 = tls_from_cert(&ca, 2, &cert2);
    // Node 2 by hand: it reads the Hello, then answers only when told.
    let (server, addr2) = raw_server(&tls2);
    let (hello_tx, hello_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let accepting = server.clone();
    let node2 = tokio::spawn(async move {
        let conn = accepting.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut hello = [0u8; 8];
        recv.read_exact(&mut hello).await.unwrap();
        let _ = hello_tx.send(());
        let _ = go_rx.await;
        let mut buf = BytesMut::new();
        codec::encode_frame(
            &Frame::Welcome {
                node: 2,
                cluster: None,
            },
            1 << 20,
            &mut buf,
        )
        .unwrap();
        let _ = send.write_all(&buf).await;
        let _ = send.finish();
        closed_reason(&conn).await
    });

    let (t1, _in1) = QuicTransport::builder(1, tls(&ca, 1))
        .config(test_config())
        .crl_file(&crl)
        .bind(any_addr())
        .unwrap();
    t1.add_peer(2, addr2);
    let dialing = {
        let t1 = t1.clone();
        tokio::spawn(async move { t1.connect(2).await })
    };
    tokio::time::timeout(Duration::from_secs(10), hello_rx)
        .await
        .expect("node 1 sent no Hello within 10 s")
        .unwrap();
    std::fs::write(&crl, ca.revocation_list(&[&cert2.cert_pem]).unwrap()).unwrap();
    t1.reload_crl().expect("the new list loads");
    go_tx.send(()).unwrap();

    let connected = dialing.await.unwrap();
    assert!(
        connected.is_err(),
        "node 1 kept a connection to node 2 after revoking it: {connected:?}"
    );
    let reason = node2.await.unwrap();
    assert!(
        reason.contains(&format!("code {}", raft_net_quic::close_code::REVOKED)),
        "node 2's connection: {reason}"
    );
    assert!(!t1.is_connected(2));
    server.close(0u32.into(), b"done");
    t1.shutdown().await;
}

/// After a permanent refusal the same snapshot waits
/// (`snapshot_refused_backoff_min`) before it is offered again; another
/// snapshot does not wait, and a change of the allowed set ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_snapshot_waits_unless_the_snapshot_or_the_membership_changes() {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let cfg = QuicConfig {
        snapshot_refused_backoff_min: Duration::from_secs(60),
        snapshot_refused_backoff_max: Duration::from_secs(60),
        ..test_config()
    };
    let (t1, _in1) = QuicTransport::builder(1, tls(&ca, 1))
        .config(cfg)
        .bind(any_addr())
        .unwrap();
    let offers = Arc::new(AtomicU64::new(0));
    let (t4, _in4) = QuicTransport::builder(4, tls(&ca, 4))
        .config(test_config())
        .snapshot_sink(Arc::new(RefusingSink(offers.clone())))
        .bind(any_addr())
        .unwrap();
    t1.add_peer(4, t4.local_addr().unwrap());
    let data = || Arc::new(Bytes::from_static(b"data"));
    let offer = |id: u64| {
        let t1 = t1.clone();
        tokio::spawn(async move { t1.stream_snapshot(4, id, Bytes::new(), data()).await })
    };
    let first = offer(7).await.unwrap().unwrap_err();
    assert!(first.to_string().contains("too large"), "{first}");
    assert_eq!(offers.load(Ordering::SeqCst), 1);
    // The same snapshot again: held back.
    let again = offer(7);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(offers.load(Ordering::SeqCst), 1, "offered again at once");
    assert!(!again.is_finished());
    // A membership change ends the wait: offered (and refused) again.
    t1.set_allowed_peers(Some([4].into_iter().collect()));
    let e = tokio::time::timeout(Duration::from_secs(10), again)
        .await
        .expect("the wait did not end with the membership change")
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    assert_eq!(offers.load(Ordering::SeqCst), 2);
    // Another snapshot is offered at once (and refused by the sink, not
    // held back).
    let e = tokio::time::timeout(Duration::from_secs(10), offer(8))
        .await
        .expect("a new snapshot waited")
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    assert_eq!(offers.load(Ordering::SeqCst), 3);
    t1.shutdown().await;
    t4.shutdown().await;
}
