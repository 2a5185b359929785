//! Floods of handshakes from real addresses (issue 16, peer finding a): a
//! client that answers QUIC Retry (so address validation does not stop it)
//! and then never completes its handshakes holds a slot per handshake until
//! the handshake timeout. A per-source-IP cap on handshakes in progress and
//! slots reserved for the addresses of known peers keep members able to
//! reconnect, on real sockets on loopback (127.0.0.0/8 gives us many
//! source addresses).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use raft_net_quic::certs::DevCa;
use raft_net_quic::QuicConfig;

/// Whether a QUIC v1 long-header datagram is a Retry packet.
fn is_retry(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xf0 == 0xf0)
}

/// From a UDP socket bound at `from_ip`, opens `per_second` new handshakes
/// to `target`, answers each one's QUIC Retry (the one thing a real
/// address can do that a spoofed one cannot) and then nothing else: every
/// handshake stalls on the server until its timeout. Counts the Retry
/// packets answered in `retried`.
fn flood_from(
    from_ip: &'static str,
    target: SocketAddr,
    per_second: u64,
    stop: Arc<AtomicBool>,
    retried: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut endpoint, client) = unvalidated_quic_client();
        let socket = UdpSocket::bind((from_ip, 0)).unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut conns: HashMap<quinn_proto::ConnectionHandle, (quinn_proto::Connection, bool)> =
            HashMap::new();
        let start = Instant::now();
        let mut n = 0u64;
        let mut buf = Vec::new();
        let mut rbuf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now.duration_since(start) >= Duration::from_micros(n * 1_000_000 / per_second) {
                let (h, mut conn) = endpoint
                    .connect(now, client.clone(), target, "node-1.raft")
                    .unwrap();
                buf.clear();
                if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                    let _ = socket.send_to(&buf[..t.size], target);
                }
                conns.insert(h, (conn, false));
                n += 1;
            }
            while let Ok((len, from)) = socket.recv_from(&mut rbuf) {
                if !is_retry(&rbuf[..len]) {
                    continue; // the server's handshake: never answered
                }
                let data = BytesMut::from(&rbuf[..len]);
                let mut resp = Vec::new();
                let now = Instant::now();
                if let Some(quinn_proto::DatagramEvent::ConnectionEvent(h, ev)) =
                    endpoint.handle(now, from, None, None, data, &mut resp)
                {
                    if let Some((conn, answered)) = conns.get_mut(&h) {
                        if !*answered {
                            *answered = true;
                            conn.handle_event(ev);
                            buf.clear();
                            while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                                let _ = socket.send_to(&buf[..t.size], target);
                                buf.clear();
                            }
                            retried.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Node 1 with a small connection table, node 2 a member that restarts
/// (on the same address) while `flood_ips` flood node 1; whether node 2's
/// messages reach node 1 again within 3 s.
async fn member_reconnects_during_flood(cfg: QuicConfig, flood_ips: &[&'static str]) -> bool {
    init_tracing();
    let ca = DevCa::generate("cluster").unwrap();
    let (mut n1, n2) = connected_pair(&ca, &cfg).await;

    let stop = Arc::new(AtomicBool::new(false));
    let retried = Arc::new(AtomicU64::new(0));
    let floods: Vec<_> = flood_ips
        .iter()
        .map(|ip| flood_from(ip, n1.addr, 200, stop.clone(), retried.clone()))
        .collect();
    // Let the flood fill whatever it can fill.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let n2 = restart_knowing(&ca, n2, &cfg, 1, n1.addr).await;
    let ok = delivered(&n2.transport, &mut n1.inbound, 2, 1, Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    let retried = retried.load(Ordering::Relaxed);
    eprintln!(
        "flood from {flood_ips:?}: {retried} Retry packets answered; member reconnected: {ok}"
    );
    assert!(retried > 0, "the flood never got (or answered) a Retry");
    n1.transport.shutdown().await;
    n2.transport.shutdown().await;
    ok
}

fn flood_config() -> QuicConfig {
    QuicConfig {
        refuse_unknown_peers: true,
        connections_max: 16,
        connections_reserved_for_peers: 4,
        handshakes_per_ip_max: 4,
        retry_handshakes_threshold: 2,
        ..test_config()
    }
}

/// One real address that answers Retry floods node 1 with handshakes it
/// never completes; a member at another address restarts and gets back in
/// (the flood holds at most `handshakes_per_ip_max` handshakes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_does_not_keep_a_member_out() {
    assert!(
        member_reconnects_during_flood(flood_config(), &["127.0.0.2"]).await,
        "the restarted member could not reach node 1 during the flood"
    );
}

/// Floods from four addresses, each within the per-address cap, fill every
/// slot that is not reserved; the member gets in on a reserved one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_addresses_leaves_the_reserved_slots_to_members() {
    assert!(
        member_reconnects_during_flood(
            flood_config(),
            &["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        )
        .await,
        "the restarted member could not reach node 1 during the flood"
    );
}
