//! Peers by DNS name: a name is looked up again at every connection
//! attempt, so a peer that comes back under the same name at another IP
//! address is found again; a name that does not resolve is a connection
//! error that names it, retried like any other.
//!
//! Moving a name needs a private `/etc/hosts`: the test runs itself again
//! under `unshare --mount` with a copy of the file bound over `/etc/hosts`
//! (root only; skipped otherwise, failed instead when `CI_REQUIRE_NETNS` is
//! set, as CI does).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use raft_core::Transport;
use raft_net_quic::certs::DevCa;
use raft_net_quic::{ConnectError, PeerAddr};

/// Set in the child that runs inside the private mount namespace.
const CHILD_ENV: &str = "RAFT_NAMES_TEST_CHILD";
const NAME: &str = "moving-peer.raftkv.test";

/// Runs test `name` again in a private mount namespace where `/etc/hosts`
/// is a writable copy; whether it ran (false: skipped, not root).
fn run_in_private_hosts(name: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            std::env::var_os("CI_REQUIRE_NETNS").is_none(),
            "this test needs root (unshare --mount); CI_REQUIRE_NETNS is set"
        );
        eprintln!("skipped: needs root for a private /etc/hosts");
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::copy("/etc/hosts", &hosts).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
        .arg("sh")
        .arg(&hosts)
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run unshare (util-linux)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the test in its own mount namespace failed:\n{text}"
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    true
}

/// Points `NAME` at `ips`, in this order, in the (private) `/etc/hosts`,
/// rewriting the file in place (a bind mount follows the inode, not the
/// path).
fn map_name_to(ips: &[&str]) {
    let original = std::fs::read_to_string("/etc/hosts").unwrap();
    let mut text: String = original
        .lines()
        .filter(|l| !l.contains(NAME))
        .map(|l| format!("{l}\n"))
        .collect();
    for ip in ips {
        text.push_str(&format!("{ip} {NAME}\n"));
    }
    std::fs::write("/etc/hosts", text).unwrap();
}

fn map_name(ip: &str) {
    map_name_to(&[ip]);
}

/// Runs `body` with node 1 (on 127.0.0.1) and node 2 (on 127.0.0.2, any
/// port) in test `test`'s own mount namespace (see
/// [`run_in_private_hosts`]); in the parent, runs the test there.
fn with_two_nodes<F, Fut>(test: &str, body: F)
where
    F: FnOnce(DevCa, Node, Node) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if std::env::var_os(CHILD_ENV).is_none() {
        run_in_private_hosts(test);
        return;
    }
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = DevCa::generate("test").unwrap();
        let a = start_node(&ca, 1, any_addr(), test_config());
        let b = start_node(&ca, 2, "127.0.0.2:0".parse().unwrap(), test_config());
        body(ca, a, b).await;
    });
}

#[test]
fn a_peer_that_moves_to_another_address_is_found_again_under_its_name() {
    let test = "a_peer_that_moves_to_another_address_is_found_again_under_its_name";
    with_two_nodes(test, |ca, a, mut b| async move {
        let port = b.addr.port();
        map_name("127.0.0.2");
        let by_name: PeerAddr = format!("{NAME}:{port}").parse().unwrap();
        a.transport.add_peer(2, by_name.clone());
        assert_eq!(a.transport.peers(), vec![(2, by_name)]);
        assert!(
            delivered(&a.transport, &mut b.inbound, 1, 2, DELIVERY_WAIT).await,
            "node 1 reaches node 2 by name at 127.0.0.2"
        );

        // Node 2 comes back at another IP address under the same name; node
        // 1 is told nothing but what the name now resolves to.
        b.transport.shutdown().await;
        drop(b);
        let mut moved = restart_node(
            &ca,
            2,
            format!("127.0.0.3:{port}").parse().unwrap(),
            test_config(),
        )
        .await;
        map_name("127.0.0.3");
        assert!(
            delivered(&a.transport, &mut moved.inbound, 1, 2, DELIVERY_WAIT).await,
            "node 1 reaches node 2 again at its new address 127.0.0.3"
        );
        a.transport.shutdown().await;
        moved.transport.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_an_error_that_names_it() {
    init_tracing();
    let ca = DevCa::generate("test").unwrap();
    let a = start_node(&ca, 1, any_addr(), test_config());
    // `.invalid` never resolves (RFC 6761).
    a.transport
        .add_peer(2, "nowhere.invalid:7000".parse::<PeerAddr>().unwrap());
    let e = a.transport.connect(2).await.unwrap_err();
    match &e {
        ConnectError::Connect { peer, addr, detail } => {
            assert_eq!(*peer, 2);
            assert_eq!(addr.to_string(), "nowhere.invalid:7000");
            assert!(
                detail.contains("cannot resolve nowhere.invalid"),
                "{detail}"
            );
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
    // Sending does not block or fail the caller: the message waits in the
    // peer's queue while the transport keeps retrying the lookup.
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        a.transport.send(2, every_message(1, 2)),
    )
    .await
    .expect("send does not hang on a name that does not resolve");
    assert!(sent.is_ok(), "{sent:?}");
    a.transport.shutdown().await;
}

#[test]
fn a_name_with_a_dead_address_first_is_reached_at_the_next_one() {
    let test = "a_name_with_a_dead_address_first_is_reached_at_the_next_one";
    with_two_nodes(test, |_ca, a, mut b| async move {
        let port = b.addr.port();
        // A stale record first: nothing listens at 127.0.0.3 (as close to
        // the source address as 127.0.0.2, so the resolver keeps the order).
        map_name_to(&["127.0.0.3", "127.0.0.2"]);
        a.transport
            .add_peer(2, format!("{NAME}:{port}").parse::<PeerAddr>().unwrap());
        a.transport
            .connect(2)
            .await
            .expect("node 2 is reached at the name's second address");
        assert!(delivered(&a.transport, &mut b.inbound, 1, 2, DELIVERY_WAIT).await);
        a.transport.shutdown().await;
        b.transport.shutdown().await;
    });
}
