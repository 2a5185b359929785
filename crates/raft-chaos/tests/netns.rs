//! The network harness on its own: a partition really cuts node-to-node
//! TCP while the clients in the root namespace still reach every node, loss
//! and bandwidth rules apply and heal, and dropping the network leaves no
//! namespace or link behind.
//!
//! A listener runs inside a node namespace as this test binary itself
//! (`ip netns exec NS <this exe> helper_listen`, with `RC_HELPER_LISTEN`
//! set); connections are made with bash's `/dev/tcp` from another
//! namespace. Needs root; skips otherwise unless `CI_REQUIRE_NETNS=1`.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_chaos::netns::{self, Net, NodeFaults};

/// Not a test on its own: the listener the other test starts in a
/// namespace. Without `RC_HELPER_LISTEN` it does nothing.
#[test]
fn helper_listen() {
    let Ok(addr) = std::env::var("RC_HELPER_LISTEN") else {
        return;
    };
    let listener = TcpListener::bind(addr.as_str()).expect("bind helper listener");
    let deadline = Instant::now() + Duration::from_secs(60);
    listener.set_nonblocking(true).expect("nonblocking");
    while Instant::now() < deadline {
        match listener.accept() {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TCP connection from namespace `ns` to `addr` succeeds in 1 s.
fn connects_from(ns: &str, addr: SocketAddr) -> bool {
    let script = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "1", "bash", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn connects_from_root(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn names_with(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        let text = Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.extend(
            text.lines()
                .filter(|l| l.contains(prefix))
                .map(str::to_owned),
        );
    }
    out
}

#[test]
fn partitions_cut_node_traffic_but_not_clients_and_teardown_is_complete() {
    if let Err(e) = netns::preflight() {
        assert!(
            std::env::var("CI_REQUIRE_NETNS").as_deref() != Ok("1"),
            "CI_REQUIRE_NETNS=1 but the chaos harness cannot run here: {e}"
        );
        eprintln!("SKIPPED: {e}");
        return;
    }
    let net = Net::create(&[1, 2, 3]).expect("network");
    let prefix = net.prefix().to_owned();
    let target = SocketAddr::new(net.node_ip(2).into(), 9000);
    let exe = std::env::current_exe().expect("test exe");
    let _helper = Helper(
        Command::new("ip")
            .args(["netns", "exec", &net.namespace(2)])
            .arg(&exe)
            .args(["helper_listen", "--exact", "--nocapture"])
            .env("RC_HELPER_LISTEN", target.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start helper"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connects_from_root(target) {
        assert!(Instant::now() < deadline, "helper never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ns1 = net.namespace(1);
    let ns3 = net.namespace(3);
    assert!(connects_from(&ns1, target), "node 1 reaches node 2");

    // {1} | {2, 3}: 1 cannot reach 2, 3 can, the client can.
    let cut_from_2 = NodeFaults {
        drop_from: BTreeSet::from([2]),
        drop_to: BTreeSet::from([2]),
        ..NodeFaults::default()
    };
    let cut_from_1 = NodeFaults {
        drop_from: BTreeSet::from([1]),
        drop_to: BTreeSet::from([1]),
        ..NodeFaults::default()
    };
    net.set_faults(1, &cut_from_2).expect("rules on 1");
    net.set_faults(2, &cut_from_1).expect("rules on 2");
    assert!(!connects_from(&ns1, target), "partitioned node 1 reaches 2");
    assert!(connects_from(&ns3, target), "node 3 is on 2's side");
    assert!(connects_from_root(target), "clients reach every node");

    // One way: 2 drops what 3 sends; 3 cannot connect (its SYN is lost).
    net.heal_all().expect("heal");
    net.set_faults(
        2,
        &NodeFaults {
            drop_from: BTreeSet::from([3]),
            ..NodeFaults::default()
        },
    )
    .expect("one-way");
    assert!(!connects_from(&ns3, target));
    assert!(connects_from(&ns1, target));

    // Total loss and a bandwidth limit are accepted and healed.
    net.heal_all().expect("heal");
    net.set_faults(
        2,
        &NodeFaults {
            loss_pct: 100,
            rate_kbit: Some(256),
            ..NodeFaults::default()
        },
    )
    .expect("loss and tbf");
    assert!(!connects_from(&ns1, target), "100% loss drops node traffic");
    assert!(connects_from_root(target), "loss is between nodes only");
    net.heal_all().expect("heal");
    assert!(connects_from(&ns1, target), "healed");
    assert!(connects_from(&ns3, target), "healed");

    drop(_helper);
    drop(net);
    let left = names_with(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn stale_namespaces_and_links_of_dead_runs_are_removed() {
    if let Err(e) = netns::preflight() {
        assert!(
            std::env::var("CI_REQUIRE_NETNS").as_deref() != Ok("1"),
            "CI_REQUIRE_NETNS=1 but the chaos harness cannot run here: {e}"
        );
        eprintln!("SKIPPED: {e}");
        return;
    }
    // A pid no process has: what a run killed with SIGKILL leaves.
    let dead = (3_000_000u32..4_000_000)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    let prefix = format!("rc{dead}q");
    let ns = format!("{prefix}-n1");
    let bridge = format!("{prefix}br");
    let run = |args: &[&str]| {
        let s = Command::new("ip").args(args).status().expect("ip");
        assert!(s.success(), "ip {args:?}");
    };
    run(&["netns", "add", &ns]);
    run(&["link", "add", &bridge, "type", "bridge"]);
    assert_eq!(names_with(&prefix).len(), 2, "{:?}", names_with(&prefix));
    let removed = netns::cleanup_stale();
    assert!(
        removed.iter().any(|r| r.contains(&ns)) && removed.iter().any(|r| r.contains(&bridge)),
        "{removed:?}"
    );
    assert!(names_with(&prefix).is_empty(), "{:?}", names_with(&prefix));
}
