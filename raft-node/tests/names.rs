//! Members by DNS name: a cluster whose `--initial-cluster` names every
//! member by host name works (elections, replication, forwarding), shows
//! the names as written, and takes new addresses for a member through `PUT
//! /v1/cluster/members/{id}` without removing it. (That a name is looked up
//! again at each connection, so a member that moves is found again, is
//! `raft-net-quic/tests/names.rs`.)

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_tcp, free_udp, has_root_for, node_command, proc_for, start_in_namespace, Proc};
use raft_client::launcher::initial_cluster;
use raft_client::{Client, Error, ReadConsistency, RetryPolicy};

/// Starts node `id` of `initial`, listening on `peer` / `client`.
fn start(
    dir: &std::path::Path,
    id: u64,
    initial: &str,
    peer: SocketAddr,
    client: SocketAddr,
) -> Proc {
    let cmd = node_command(dir, id, peer, client).initial_cluster(initial);
    let mut p = proc_for(dir, &cmd, format!("http://{client}"));
    p.start();
    p
}

fn client_of(p: &Proc) -> Client {
    Client::builder([p.http.as_str()])
        .retry(RetryPolicy::default())
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The leader's id, once every node agrees on one.
async fn agreed_leader(procs: &[Proc]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for p in procs {
            seen.push(client_of(p).status().await.ok().and_then(|s| s.leader));
        }
        if let Some(Some(l)) = seen.first().copied() {
            if seen.iter().all(|s| *s == Some(l)) {
                return l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader agreed within 30 s: {seen:?}; logs:\n{}",
            procs
                .iter()
                .map(Proc::log_text)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `p` serves `key` = `value` from its own store.
async fn replicated(p: &Proc, key: &str, value: &str) {
    let c = client_of(p);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = c.get_with(key, ReadConsistency::Stale).await;
        if let Ok(Some(e)) = &got {
            if e.value == value.as_bytes() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not apply {key}={value} within 20 s (last {got:?}); log:\n{}",
            p.id,
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_named_by_host_names_replicates_and_takes_new_addresses() {
    let dir = tempfile::tempdir().unwrap();
    raft_net_quic::certs::write_dev_certs(&dir.path().join("certs"), &[1, 2, 3], &[]).unwrap();
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_udp(), free_tcp())).collect();
    // Every member by name: `localhost`, which the system resolver maps to
    // loopback (the peer transport dials its IPv4 address).
    let initial = initial_cluster(addrs.iter().enumerate().map(|(i, (p, c))| {
        (
            i as u64 + 1,
            format!("localhost:{}", p.port()),
            format!("localhost:{}", c.port()),
        )
    }));
    let mut procs: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, (p, c))| start(dir.path(), i as u64 + 1, &initial, *p, *c))
        .collect();
    let leader = agreed_leader(&procs).await;
    let follower = procs.iter().find(|p| p.id != leader).unwrap();

    // A write through a follower is forwarded to the leader's client
    // address, a name too.
    client_of(follower).put("named", "yes").await.unwrap();
    for p in &procs {
        replicated(p, "named", "yes").await;
    }
    let status = client_of(follower).status().await.unwrap();
    let peers: Vec<String> = status
        .members
        .iter()
        .map(|m| m.addresses.as_ref().unwrap().peer.clone())
        .collect();
    let expected: Vec<String> = addrs
        .iter()
        .map(|(p, _)| format!("localhost:{}", p.port()))
        .collect();
    assert_eq!(peers, expected, "the names as written: {:#}", status.raw);

    // Node 3 moves (same machine, its addresses now written as IPs): the
    // new addresses are recorded through the log, node 3 stays a member,
    // and every node dials it there.
    let (peer3, client3) = addrs[2];
    let any = client_of(follower);
    // The leader checks the new peer address first: nothing answers at a
    // name that does not resolve, and node 2 answers at its own address
    // (its certificate names node 2). Neither is recorded.
    let nowhere = format!("node-3.invalid:{}", peer3.port());
    for wrong in [nowhere.clone(), addrs[1].0.to_string()] {
        let e = any
            .update_member(3, &wrong, &client3.to_string(), false)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Api { problem } if problem.status == 422 && problem.kind == "peer-unreachable"),
            "{wrong}: {e:?}"
        );
    }
    // The leader's own new address is checked too (it dials itself there).
    let leader_client = addrs[leader as usize - 1].1.to_string();
    let e = any
        .update_member(leader, "node-x.invalid:7000", &leader_client, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Api { problem } if problem.status == 422),
        "the leader's own address: {e:?}"
    );
    let s = any.status().await.unwrap();
    let m3 = s.members.iter().find(|m| m.id == 3).unwrap();
    assert_eq!(
        m3.addresses.as_ref().unwrap().peer,
        format!("localhost:{}", peer3.port()),
        "nothing recorded: {:#}",
        s.raw
    );
    // The leader's own address where it does answer (written as an IP).
    let leader_peer = addrs[leader as usize - 1].0.to_string();
    any.update_member(leader, &leader_peer, &leader_client, false)
        .await
        .expect("the leader answers at its own address");
    // `force` records an address nobody answers at (a node that will
    // start there later) ...
    any.update_member(3, &nowhere, &client3.to_string(), true)
        .await
        .unwrap();
    // ... and the right address, where node 3 answers, puts it back.
    let changed = any
        .update_member(3, &peer3.to_string(), &client3.to_string(), false)
        .await
        .unwrap();
    assert!(changed.membership.voters.contains(&3), "{:#}", changed.raw);
    procs[2].kill9();
    procs[2].start();
    client_of(&procs[0]).put("after-move", "1").await.unwrap();
    for p in &procs {
        replicated(p, "after-move", "1").await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = client_of(&procs[0]).status().await.unwrap();
        let m3 = s
            .members
            .iter()
            .find(|m| m.id == 3)
            .and_then(|m| m.addresses.clone());
        if m3
            .as_ref()
            .is_some_and(|a| a.peer == peer3.to_string() && a.client == client3.to_string())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 does not show node 3's new addresses: {:#}",
            s.raw
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Asking again with the same addresses succeeds.
    any.update_member(3, &peer3.to_string(), &client3.to_string(), false)
        .await
        .unwrap();

    // Refusals a user sees: not a member, a malformed address.
    let e = any
        .update_member(9, "localhost:1", "localhost:2", false)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Api { problem } if problem.status == 404 && problem.kind == "not-a-member"),
        "{e:?}"
    );
    for bad in ["no_underscores:7000", "localhost", "0.0.0.0:7000"] {
        let e = any
            .update_member(3, bad, "localhost:2", false)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Api { problem } if problem.status == 400),
            "{bad}: {e:?}"
        );
    }
    // A client address goes into the URLs followers forward to (with the
    // caller's token): one without a port, or that a URL would read as
    // another host, is refused too.
    let peer3 = peer3.to_string();
    for bad in [
        "localhost",
        "localhost:0",
        "attacker.example@localhost:2",
        "localhost:2@attacker.example",
        "attacker.example:80#",
        "attacker.example:80?",
        "local host:2",
    ] {
        let e = any.update_member(3, &peer3, bad, false).await.unwrap_err();
        assert!(
            matches!(&e, Error::Api { problem } if problem.status == 400),
            "client address {bad:?}: {e:?}"
        );
    }
}

/// A node process that sees `hosts` as its `/etc/hosts` (a private mount
/// namespace: `unshare --mount`, then a bind mount).
fn start_with_hosts(p: &mut Proc, hosts: &std::path::Path) {
    start_with_mounts(p, &[(hosts, "/etc/hosts")]);
}

/// A node process that sees each file `from` at path `to` (a private mount
/// namespace: `unshare --mount`, then bind mounts).
fn start_with_mounts(p: &mut Proc, mounts: &[(&std::path::Path, &str)]) {
    let setup = mounts
        .iter()
        .enumerate()
        .map(|(i, (_, to))| format!("mount --bind \"${}\" {to}", i + 1))
        .collect::<Vec<_>>()
        .join(" && ");
    let from: Vec<&std::ffi::OsStr> = mounts.iter().map(|(from, _)| from.as_os_str()).collect();
    start_in_namespace(p, &["--mount", "--propagation", "private"], &setup, &from);
}

/// Writes `hosts` in place (the bind mounts follow the inode): `name` of
/// each member at its IP address.
fn write_hosts(hosts: &std::path::Path, names: &[(String, String)]) {
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for (ip, name) in names {
        text.push_str(&format!("\n{ip} {name}"));
    }
    text.push('\n');
    std::fs::write(hosts, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_comes_back_at_another_ip_under_its_name_rejoins_without_an_api_call() {
    if !has_root_for("a private /etc/hosts per node") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    raft_net_quic::certs::write_dev_certs(&dir.path().join("certs"), &[1, 2, 3], &[]).unwrap();
    let hosts = dir.path().join("hosts");
    let name = |id: u64| format!("node-{id}.raftkv.test");
    // Peers at 127.0.0.1{id}, found by name; clients on 127.0.0.1.
    let ports: Vec<(u16, SocketAddr)> = (0..3).map(|_| (free_udp().port(), free_tcp())).collect();
    let ip = |id: u64, gen: u64| format!("127.0.{gen}.1{id}");
    let mut mapping: Vec<(String, String)> = (1..=3).map(|id| (ip(id, 0), name(id))).collect();
    write_hosts(&hosts, &mapping);
    let initial = initial_cluster((1..=3u64).map(|id| {
        (
            id,
            format!("{}:{}", name(id), ports[id as usize - 1].0),
            ports[id as usize - 1].1,
        )
    }));
    let command = |id: u64, gen: u64| {
        let (peer_port, client) = ports[id as usize - 1];
        let peer: SocketAddr = format!("{}:{peer_port}", ip(id, gen)).parse().unwrap();
        node_command(dir.path(), id, peer, client).initial_cluster(initial.clone())
    };
    let mut procs: Vec<Proc> = (1..=3u64)
        .map(|id| {
            let http = format!("http://{}", ports[id as usize - 1].1);
            let mut p = proc_for(dir.path(), &command(id, 0), http);
            start_with_hosts(&mut p, &hosts);
            p
        })
        .collect();
    let leader = agreed_leader(&procs).await;
    client_of(&procs[0]).put("before", "1").await.unwrap();
    for p in &procs {
        replicated(p, "before", "1").await;
    }

    // A follower stops, and comes back at another IP address under the
    // same name: only the name's record changes, no API call is made.
    let moved = (1..=3u64).find(|id| *id != leader).unwrap();
    let i = moved as usize - 1;
    procs[i].kill9();
    mapping[i].0 = ip(moved, 1);
    write_hosts(&hosts, &mapping);
    procs[i].args = command(moved, 1).to_args();
    start_with_hosts(&mut procs[i], &hosts);
    let writer = procs.iter().find(|p| p.id == leader).unwrap();
    client_of(writer).put("after", "2").await.unwrap();
    for p in &procs {
        replicated(p, "after", "2").await;
    }
}

/// A peer named by a host name whose lookup hangs (a name server that
/// takes the query and never answers) does not keep a node from stopping:
/// SIGTERM ends the process in seconds, not when the lookup gives up
/// (here 5 attempts of 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_on_sigterm_while_a_peer_name_lookup_hangs() {
    if !has_root_for("a private /etc/resolv.conf") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    raft_net_quic::certs::write_dev_certs(&dir.path().join("certs"), &[1, 2], &[]).unwrap();
    // The name server: takes queries, never answers.
    let server = std::net::UdpSocket::bind("127.0.0.77:53").expect("bind 127.0.0.77:53");
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:30 attempts:5\n",
    )
    .unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, &[]);
    let (peer, client) = (free_udp(), free_tcp());
    let initial = initial_cluster([
        (1, peer.to_string(), client),
        (2, "hangs.raftkv.test:7000".to_string(), free_tcp()),
    ]);
    let cmd = node_command(dir.path(), 1, peer, client).initial_cluster(initial);
    let mut p = proc_for(dir.path(), &cmd, format!("http://{client}"));
    start_with_mounts(
        &mut p,
        &[(&hosts, "/etc/hosts"), (&resolv, "/etc/resolv.conf")],
    );
    // The node asks for node 2's address: the lookup is under way.
    let mut buf = [0u8; 512];
    let asked = server.recv_from(&mut buf);
    assert!(
        asked.is_ok(),
        "the node never looked node 2's name up: {asked:?}; log:\n{}",
        p.log_text()
    );
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = p.sigterm();
        (status, p.log_text())
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the node took {took:?} to stop after SIGTERM; log:\n{}",
        status.1
    );
    assert!(
        status.0.success(),
        "exit: {:?}; log:\n{}",
        status.0,
        status.1
    );
}
