//! Refusals an operator must be able to see (issue 16, peer findings b and
//! d): snapshot offers refused, by reason, on the receiver and on the
//! sender; revocation list reloads that failed. Its own test binary
//! because it installs a global metrics recorder.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use raft_net_quic::certs::DevCa;
use raft_net_quic::{QuicConfig, QuicTransport, SnapshotSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_snapshots_and_failed_crl_reloads_are_counted() {
    init_tracing();
    let snapshotter = install_debug_recorder();
    let ca = DevCa::generate("cluster").unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Finding b: an offer over the receiver's limit, twice.
    let pair = snapshot_limit_pair(&ca, dir.path(), 1000);
    let (sender, receiver) = (&pair.sender, &pair.receiver);
    for id in [1, 2] {
        let data: Arc<dyn SnapshotSource> = Arc::new(Bytes::from(vec![1u8; 4096]));
        assert!(sender
            .transport
            .stream_snapshot(2, id, Bytes::new(), data)
            .await
            .is_err());
    }
    let v = metric_values(&snapshotter);
    assert_eq!(
        v.get("raft_snapshot_offers_refused_total{reason=too_large}"),
        Some(&2.0),
        "{v:?}"
    );
    assert_eq!(
        v.get("raft_snapshot_offers_refused_by_peer_total{peer=2,reason=too_large}"),
        Some(&2.0),
        "{v:?}"
    );

    // Finding d: a revocation list file that stops parsing is counted.
    let crl = empty_crl_file(&ca, dir.path());
    let (t3, _in3) = QuicTransport::builder(3, tls(&ca, 3))
        .config(QuicConfig {
            crl_poll_interval: Duration::from_millis(50),
            ..test_config()
        })
        .crl_file(&crl)
        .bind(any_addr())
        .unwrap();
    std::fs::write(&crl, b"-----BEGIN X509 CRL-----\nMIIB").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let failures = loop {
        let v = metric_values(&snapshotter);
        let n = v
            .get("raft_net_crl_reload_failures_total{}")
            .copied()
            .unwrap_or(0.0);
        if n >= 1.0 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failures, 1.0, "one bad content, one failure counted");
    // The same bad content again is not a new failure (the debugging
    // recorder reports counts since the last snapshot).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric_values(&snapshotter)
            .get("raft_net_crl_reload_failures_total{}")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
    t3.shutdown().await;
    sender.transport.shutdown().await;
    receiver.shutdown().await;
}
