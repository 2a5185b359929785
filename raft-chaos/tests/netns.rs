//! The network harness on its own: a partition really cuts node-to-node
//! TCP while the clients in the root namespace still reach every node,
//! partial loss drops some datagrams and a bandwidth limit slows a
//! transfer, and both heal; a delay fault holds and reorders
//! node-to-node UDP and heals, and dropping the network leaves no
//! namespace or link behind.
//!
//! A listener runs inside a node namespace as this test binary itself
//! (`ip netns exec NS <this exe> helper_listen`, with `RC_HELPER_LISTEN`
//! set); connections are made with bash's `/dev/tcp` from another
//! namespace. Needs root; skips otherwise unless `CI_REQUIRE_NETNS=1`.

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_chaos::netns::{self, Net, NodeFaults, Redirect};
use raft_chaos::relay::Relay;

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

/// Whether a TCP connection from namespace `ns` to `addr` succeeds in 5 s
/// (generous: the time includes starting bash on a loaded machine; a
/// dropped connection attempt takes the whole 5 s, so tests that expect
/// one keep few such checks).
fn connects_from(ns: &str, addr: SocketAddr) -> bool {
    let script = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "5", "bash", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn connects_from_root(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok()
}

fn names_with(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (program, args) in [
        ("ip", &["netns", "list"][..]),
        ("ip", &["-o", "link", "show"][..]),
        // The rule that admits a run's bridge traffic (where iptables is).
        ("iptables", &["-w", "10", "-S", "FORWARD"][..]),
    ] {
        let text = Command::new(program)
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
    if !netns::available_for_tests(
        "partitions_cut_node_traffic_but_not_clients_and_teardown_is_complete",
    ) {
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
    if !netns::available_for_tests("stale_namespaces_and_links_of_dead_runs_are_removed") {
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
    let iptables = Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if iptables {
        let rule = [
            "-w", "10", "-I", "FORWARD", "1", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ];
        let s = Command::new("iptables")
            .args(rule)
            .status()
            .expect("iptables");
        assert!(s.success(), "iptables {rule:?}");
    }
    let made = 2 + usize::from(iptables);
    assert_eq!(names_with(&prefix).len(), made, "{:?}", names_with(&prefix));
    let removed = netns::cleanup_stale();
    assert!(
        removed.iter().any(|r| r.contains(&ns)) && removed.iter().any(|r| r.contains(&bridge)),
        "{removed:?}"
    );
    assert_eq!(
        removed.iter().filter(|r| r.contains("iptables")).count(),
        usize::from(iptables),
        "{removed:?}"
    );
    assert!(names_with(&prefix).is_empty(), "{:?}", names_with(&prefix));
}

/// Runs `f` on a thread that joined namespace `ns`. Sockets it makes stay
/// in that namespace wherever they are used afterwards.
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A UDP socket bound to `addr` inside namespace `ns`.
fn udp_socket_in(ns: &str, addr: SocketAddr) -> UdpSocket {
    in_namespace(ns, move || {
        let s = UdpSocket::bind(addr).expect("bind in the namespace");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    })
}

/// Sends `msgs` from `sock` to `to`, all at once, and returns the replies in
/// the order they came: (reply, where it came from), and the time until the
/// last one.
fn exchange(
    sock: &UdpSocket,
    to: SocketAddr,
    msgs: &[String],
) -> (Vec<(String, SocketAddr)>, Duration) {
    let start = Instant::now();
    for m in msgs {
        sock.send_to(m.as_bytes(), to).expect("send");
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while out.len() < msgs.len() {
        let (n, from) = sock.recv_from(&mut buf).expect("a reply within 5 s");
        out.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
    }
    (out, start.elapsed())
}

#[test]
fn a_delay_fault_holds_and_reorders_node_to_node_udp_and_heals() {
    if !netns::available_for_tests("a_delay_fault_holds_and_reorders_node_to_node_udp_and_heals") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_rt = rt.enter();
    let net = Net::create(&[1, 2]).expect("network");
    let prefix = net.prefix().to_owned();
    let peer = SocketAddr::new(net.node_ip(2).into(), 7000);
    // Node 2 echoes each datagram with the source address it saw.
    let echo = udp_socket_in(&net.namespace(2), peer);
    let from2 = echo.try_clone().expect("clone");
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            if &buf[..n] == b"stop" {
                break;
            }
            let reply = format!("{} {}", String::from_utf8_lossy(&buf[..n]), from.ip());
            let _ = echo.send_to(reply.as_bytes(), from);
        }
    });
    // Node 1 sends from the port it also receives on, as QUIC endpoints do.
    let node1 = udp_socket_in(
        &net.namespace(1),
        SocketAddr::new(net.node_ip(1).into(), 7000),
    );
    let from_node1 = net.node_ip(1).to_string();
    let via_relay = net.client_ip().to_string();
    let ping = |n: usize| -> Vec<String> { (0..n).map(|i| i.to_string()).collect() };

    // Direct: node 2 sees node 1.
    let (replies, _) = exchange(&node1, peer, &ping(3));
    for (r, from) in &replies {
        assert_eq!(*from, peer);
        assert!(r.ends_with(&from_node1), "{r}");
    }

    // A 40 ms delay each way: the round trip takes at least 80 ms, node 2
    // sees the relay, and node 1 still sees replies from node 2's address.
    let mut relay = Relay::new(net.client_ip());
    let dest = SocketAddrV4::new(net.node_ip(2), 7000);
    let via_port = relay.port_for(1, 2, dest).expect("relay port");
    relay.set_delay(Duration::from_millis(40), Duration::ZERO, 1);
    let redirect = NodeFaults {
        redirect: vec![Redirect {
            to: 2,
            port: 7000,
            via_port,
        }],
        ..NodeFaults::default()
    };
    net.set_faults(1, &redirect).expect("redirect rules");
    // Node 2 (not redirected) sends to node 1 first, between the same two
    // ports: that must not exempt node 1's packets to node 2 from the
    // redirect.
    from2
        .send_to(b"hello", SocketAddr::new(net.node_ip(1).into(), 7000))
        .expect("send");
    let mut buf = [0u8; 64];
    let (_, seen) = node1.recv_from(&mut buf).expect("node 2's datagram");
    assert_eq!(seen.ip(), std::net::IpAddr::from(net.node_ip(2)));
    for i in 0..3 {
        let (replies, rtt) = exchange(&node1, peer, &[format!("d{i}")]);
        let (r, from) = &replies[0];
        assert_eq!(*from, peer, "replies come from the peer's address");
        assert!(r.ends_with(&via_relay), "node 2 saw {r}, not the relay");
        assert!(
            rtt >= Duration::from_millis(80),
            "round trip {rtt:?} < 2 x 40 ms"
        );
    }
    // Every datagram of the three round trips reached the relay before
    // the reply it carried reached node 1, so the receive count is already
    // final. The relay counts a datagram as forwarded only after its
    // `send_to` returns, which may be after node 1 has the reply: wait for
    // that count instead of reading it once.
    assert!(relay.received() >= 6, "received {}", relay.received());
    let relayed_by = Instant::now() + Duration::from_secs(5);
    while relay.relayed() < 6 && Instant::now() < relayed_by {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(relay.relayed() >= 6, "relayed {}", relay.relayed());

    // Jitter of up to 30 ms on each of 40 datagrams sent at once: all
    // arrive, not in the order sent.
    relay.set_delay(Duration::ZERO, Duration::from_millis(30), 7);
    let msgs = ping(40);
    let (replies, _) = exchange(&node1, peer, &msgs);
    let order: Vec<usize> = replies
        .iter()
        .map(|(r, _)| {
            r.split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("number")
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..40).collect::<Vec<_>>(),
        "every datagram arrives once"
    );
    assert_ne!(order, sorted, "jitter reorders datagrams");

    // Healed: direct again, and the rules set again on a node still apply.
    net.heal_all().expect("heal");
    let (replies, _) = exchange(&node1, peer, &ping(3));
    for (r, from) in &replies {
        assert_eq!(*from, peer);
        assert!(r.ends_with(&from_node1), "after healing node 2 saw {r}");
    }
    net.set_faults(1, &redirect).expect("redirect again");
    let (replies, _) = exchange(&node1, peer, &ping(1));
    assert!(replies[0].0.ends_with(&via_relay), "{:?}", replies[0]);
    net.heal_all().expect("heal");

    // Stop the echo (a datagram straight to it) and tear down.
    let _ = node1.send_to(b"stop", peer);
    echo_thread.join().expect("echo thread");
    drop(relay);
    drop(net);
    let left = names_with(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn partial_loss_drops_some_packets_and_a_bandwidth_limit_slows_transfers() {
    if !netns::available_for_tests(
        "partial_loss_drops_some_packets_and_a_bandwidth_limit_slows_transfers",
    ) {
        return;
    }
    let net = Net::create(&[1, 2]).expect("network");
    let prefix = net.prefix().to_owned();

    // 50% loss on node 2's input from node 1: of 400 datagrams, some but
    // far from all arrive (binomial: outside 100..=300 has odds < 1e-20);
    // without the rule, all do. A thread receives while they are sent, at
    // a pace the receive buffer keeps up with.
    let at2 = SocketAddr::new(net.node_ip(2).into(), 7100);
    let rx = udp_socket_in(&net.namespace(2), at2);
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // Room for the whole burst even if the receiving thread waits for a
    // core the whole time (the kernel may cap it at rmem_max; the pacing
    // below covers that case).
    rustix::net::sockopt::set_socket_recv_buffer_size(&rx, 4 << 20).expect("SO_RCVBUF");
    let tx = udp_socket_in(&net.namespace(1), "0.0.0.0:0".parse().expect("addr"));
    let burst = |rx: UdpSocket| -> (UdpSocket, usize) {
        // The receiver stops only once the sender is done and nothing came
        // for 200 ms, so a sender or receiver that the scheduler holds back
        // ends no count early; it counts distinct sequence numbers.
        let sent_all = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&sent_all);
        let receiver = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut buf = [0u8; 16];
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((4, _)) => {
                        seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    }
                    Ok(_) => {}
                    Err(_) if done.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            (rx, seen.len())
        });
        for i in 0..400u32 {
            tx.send_to(&i.to_be_bytes(), at2).expect("send");
            // A pace the default receive buffer keeps up with even when
            // the receiving thread waits for a core.
            if i % 5 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sent_all.store(true, Ordering::SeqCst);
        receiver.join().expect("receiver")
    };
    let (rx, control) = burst(rx);
    assert!(control >= 390, "only {control} of 400 arrived without loss");
    net.set_faults(
        2,
        &NodeFaults {
            loss_pct: 50,
            ..NodeFaults::default()
        },
    )
    .expect("loss rule");
    let (_, got) = burst(rx);
    assert!(
        (100..=300).contains(&got),
        "{got} of 400 arrived at 50% loss"
    );

    // 1 Mbit/s egress on node 1: 256 KiB over TCP takes at least ~2 s.
    net.heal_all().expect("heal");
    net.set_faults(
        1,
        &NodeFaults {
            rate_kbit: Some(1024),
            ..NodeFaults::default()
        },
    )
    .expect("tbf");
    let sink = SocketAddr::new(net.node_ip(2).into(), 7200);
    let listener = in_namespace(&net.namespace(2), move || {
        TcpListener::bind(sink).expect("bind sink")
    });
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut all).expect("read");
        all.len()
    });
    let start = Instant::now();
    in_namespace(&net.namespace(1), move || {
        let mut s = TcpStream::connect_timeout(&sink, Duration::from_secs(5)).expect("connect");
        std::io::Write::write_all(&mut s, &vec![7u8; 256 * 1024]).expect("write");
    });
    assert_eq!(reader.join().expect("reader"), 256 * 1024);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "256 KiB at 1 Mbit/s took only {took:?}"
    );
    net.heal_all().expect("heal");
    drop(net);
    assert!(names_with(&prefix).is_empty());
}
