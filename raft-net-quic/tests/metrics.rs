//! The per-peer metrics the transport reports through the `metrics` facade:
//! messages and bytes sent and received, connects, drops, RTT and snapshot
//! bytes. Runs in its own test binary because it installs a global recorder.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use raft_core::Transport;
use raft_net_quic::certs::DevCa;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shows_up_in_per_peer_metrics() {
    init_tracing();
    let snapshotter = install_debug_recorder();

    let ca = DevCa::generate("cluster").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (b, mut inbound, mut completed) =
        start_snapshot_receiver(&ca, 2, test_config(), dir.path(), 1);
    let a = start_node(&ca, 1, any_addr(), test_config());
    a.transport.add_peer(2, b.local_addr().unwrap());
    let msgs = every_message(1, 2);
    let n = msgs.len();
    a.transport.send(2, msgs).await.unwrap();
    for _ in 0..n {
        recv(&mut inbound, Duration::from_secs(10))
            .await
            .expect("message");
    }
    a.transport
        .stream_snapshot(
            2,
            5,
            Bytes::new(),
            Arc::new(Bytes::from(vec![1u8; 100_000])),
        )
        .await
        .unwrap();
    completed.recv().await.unwrap();
    // A peer that never answers: its messages are dropped once its queue is full.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    a.transport.add_peer(3, silent.local_addr().unwrap());
    for _ in 0..2000 {
        let _ = a.transport.send(3, every_message(1, 3)[..1].to_vec()).await;
    }
    // The RTT gauge is sampled once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let v = metric_values(&snapshotter);
    let get = |k: &str| {
        *v.get(k)
            .unwrap_or_else(|| panic!("metric {k} missing; have {:#?}", v.keys()))
    };
    // 8 control messages and 1 replication message (see `every_message`).
    assert_eq!(
        get("raft_net_messages_sent_total{peer=2,stream=control}"),
        8.0
    );
    assert_eq!(
        get("raft_net_messages_sent_total{peer=2,stream=replication}"),
        1.0
    );
    assert_eq!(
        get("raft_net_messages_received_total{peer=1,stream=control}"),
        8.0
    );
    assert_eq!(
        get("raft_net_messages_received_total{peer=1,stream=replication}"),
        1.0
    );
    let sent = get("raft_net_bytes_sent_total{peer=2,stream=control}")
        + get("raft_net_bytes_sent_total{peer=2,stream=replication}");
    let received = get("raft_net_bytes_received_total{peer=1,stream=control}")
        + get("raft_net_bytes_received_total{peer=1,stream=replication}");
    assert!(
        sent > 0.0 && sent == received,
        "sent {sent} received {received}"
    );
    assert_eq!(get("raft_net_connects_total{peer=2}"), 1.0);
    assert_eq!(get("raft_net_peer_connected{peer=2}"), 1.0);
    assert!(get("raft_net_peer_rtt_seconds{peer=2}") > 0.0);
    assert_eq!(get("raft_net_snapshot_bytes_sent_total{peer=2}"), 100_000.0);
    assert_eq!(
        get("raft_net_snapshot_bytes_received_total{peer=1}"),
        100_000.0
    );
    assert!(get("raft_net_send_dropped_total{peer=3,stream=control}") > 0.0);
    assert_eq!(get("raft_net_peer_connected{peer=3}"), 0.0);
    a.transport.shutdown().await;
    b.shutdown().await;
}
