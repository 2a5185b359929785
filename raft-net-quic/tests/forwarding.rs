//! The forwarding messages and mixed versions: two nodes that both offer
//! the ALPN protocol `raft-net/forward` carry `ForwardPropose` and its
//! answer; with a node that does not (a previous release, or
//! `QuicConfig::forwarding` off) they connect on the base protocol,
//! `can_forward` says no, and no forwarding frame is ever sent (which the
//! peer would refuse with the whole connection).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use raft_core::{Message, MessageBody, Transport};
use raft_net_quic::certs::DevCa;
use raft_net_quic::QuicConfig;

fn forward_propose(from: u64, to: u64) -> Message {
    Message {
        from,
        to,
        term: 3,
        body: MessageBody::ForwardPropose {
            request_id: 1,
            command: Bytes::from_static(b"cmd"),
        },
    }
}

fn heartbeat(from: u64, to: u64) -> Message {
    Message {
        from,
        to,
        term: 3,
        body: MessageBody::TimeoutNow,
    }
}

/// Two nodes with `cfg_a` / `cfg_b`, connected (a dialed b).
async fn pair(cfg_a: QuicConfig, cfg_b: QuicConfig) -> (Node, Node) {
    let ca = DevCa::generate("test").unwrap();
    let a = start_node(&ca, 1, any_addr(), cfg_a);
    let b = start_node(&ca, 2, any_addr(), cfg_b);
    a.transport.add_peer(2, b.addr);
    b.transport.add_peer(1, a.addr);
    a.transport.connect(2).await.expect("connects");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_that_speak_forwarding_carry_it() {
    init_tracing();
    let (a, mut b) = pair(test_config(), test_config()).await;
    assert!(a.transport.can_forward(2));
    a.transport
        .send(2, vec![forward_propose(1, 2)])
        .await
        .unwrap();
    let got = recv(&mut b.inbound, Duration::from_secs(10)).await;
    assert_eq!(got, Some(forward_propose(1, 2)));
    assert!(
        b.transport.can_forward(1),
        "the acceptor sees the same protocol"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_node_without_forwarding_nothing_forwarding_is_sent_and_the_link_survives() {
    init_tracing();
    let old = QuicConfig {
        forwarding: false,
        ..test_config()
    };
    for (cfg_a, cfg_b) in [(test_config(), old.clone()), (old.clone(), test_config())] {
        let (a, mut b) = pair(cfg_a, cfg_b).await;
        assert!(!a.transport.can_forward(2), "the dialer must not forward");
        assert!(!b.transport.can_forward(1), "the acceptor must not forward");
        let sent = a
            .transport
            .send(2, vec![forward_propose(1, 2), heartbeat(1, 2)])
            .await;
        assert!(
            sent.is_err(),
            "the forwarding message was dropped and said so"
        );
        // The connection is intact: the other message arrives, alone.
        let got = recv(&mut b.inbound, Duration::from_secs(10)).await;
        assert_eq!(got, Some(heartbeat(1, 2)));
        assert!(a.transport.is_connected(2));
    }
}
