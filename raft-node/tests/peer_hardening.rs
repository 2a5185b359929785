//! Hostile peers against real `raft-node` processes (issue 16 item 8): a
//! removed node that keeps its certificate is refused by every member and
//! its address record is gone, while the cluster keeps serving; a member
//! sending a term no election could follow (`u64::MAX`) changes nothing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw_peer::{handshake, raw_peer};
use common::*;
use raft_core::{LogId, Message, MessageBody};
use raft_net_quic::codec::{self, Frame, StreamKind};

fn peer_addr(p: &Proc) -> SocketAddr {
    p.args
        .iter()
        .find_map(|a| a.strip_prefix("--peer-listen="))
        .expect("--peer-listen")
        .parse()
        .unwrap()
}

/// Item 8: a follower is removed but keeps running with its certificate.
/// Every remaining member refuses its connections (as soon as the removal
/// is committed), its address record disappears, and the cluster keeps
/// serving reads and writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_that_keeps_its_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster(dir.path(), 3);
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    let at_leader = via(&client, procs.iter().find(|p| p.id == l).unwrap());
    let removed = procs.iter().find(|p| p.id != l).unwrap().id;
    // It keeps running (and holding its certificate) to the end.
    let idx = procs.iter().position(|p| p.id == removed).unwrap();
    let _removed_proc = procs.remove(idx);
    at_leader.remove(removed).await.unwrap();

    let (endpoint, cfg) = raw_peer(&dir.path().join("certs"), removed);
    for p in &procs {
        let deadline = Instant::now() + Duration::from_secs(20);
        let refusal = loop {
            match handshake(&endpoint, &cfg, removed, p.id, peer_addr(p)).await {
                Ok(conn) => {
                    conn.close(0u32.into(), b"probe");
                    assert!(
                        Instant::now() < deadline,
                        "node {} still welcomes removed node {removed}",
                        p.id
                    );
                }
                Err(e) => break e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            refusal.contains("not a member") || refusal.contains("not a peer"),
            "node {} refused removed node {removed} for another reason: {refusal}",
            p.id
        );
    }

    // The cluster keeps serving, with the removed node still running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let l = leader(&client, &procs, None).await;
    let writer = procs.iter().find(|p| p.id == l).unwrap();
    put(&client, writer, "after-removal", "ok").await.unwrap();
    let reader = procs.iter().find(|p| p.id != l).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = via(&client, reader).get("after-removal").await.unwrap() {
            assert_eq!(&v.value[..], b"ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write never reached node {}",
            reader.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Its address record is gone: the members listed with the next change
    // do not include it.
    let change = via(&client, writer)
        .add_learner(5, "127.0.0.1:9", "127.0.0.1:9")
        .await
        .unwrap();
    let ids: Vec<u64> = change.members.iter().map(|m| m.id).collect();
    assert!(
        !ids.contains(&removed),
        "the address record of removed node {removed} is still listed: {ids:?}"
    );
}

/// Item 8: a member (node 4, a learner that never runs, whose certificate
/// the test holds) sends vote requests and heartbeats at term `u64::MAX`
/// to every node: no node adopts the term, and the cluster keeps electing
/// and serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_term_from_a_member_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let procs = cluster(dir.path(), 3);
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    via(&client, procs.iter().find(|p| p.id == l).unwrap())
        .add_learner(4, "127.0.0.1:9", "127.0.0.1:9")
        .await
        .unwrap();
    let (endpoint, cfg) = raw_peer(&dir.path().join("certs"), 4);
    let mut conns = Vec::new();
    for p in &procs {
        let deadline = Instant::now() + Duration::from_secs(20);
        let conn = loop {
            match handshake(&endpoint, &cfg, 4, p.id, peer_addr(p)).await {
                Ok(c) => break c,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "node {} never accepted node 4: {e}",
                    p.id
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut bytes = vec![StreamKind::Control as u8];
        for body in [
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_id: LogId::new(u64::MAX, u64::MAX),
                leadership_transfer: true,
            },
            MessageBody::AppendEntries {
                prev_log_id: LogId::default(),
                entries: Vec::new(),
                leader_commit: 0,
                round: 1,
                heartbeat: true,
            },
            MessageBody::TimeoutNow,
        ] {
            let m = Message {
                from: 4,
                to: p.id,
                term: u64::MAX,
                body,
            };
            bytes.extend_from_slice(&codec::encode_to_bytes(&Frame::Message(m), 1 << 20).unwrap());
        }
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let _ = s.finish();
        conns.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in &procs {
        let term = status_of(&client, p).await.term;
        assert!(term < 1 << 62, "node {} adopted term {term}", p.id);
    }
    let l = leader(&client, &procs, None).await;
    let writer = procs.iter().find(|p| p.id == l).unwrap();
    put(&client, writer, "after-absurd-term", "ok")
        .await
        .unwrap();
    drop(conns);
}

/// Item 8: `--tls-crl`. The cluster starts with an empty revocation list;
/// the list is then rewritten to revoke a follower's certificate. After
/// the reload (the file is polled every 5 s) the other members refuse that
/// certificate, and the two of them keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_through_tls_crl_is_refused_after_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let files = raft_net_quic::certs::write_dev_certs(&certs, &[], &[]).unwrap();
    let ca = raft_net_quic::certs::DevCa::from_pem(
        &std::fs::read_to_string(&files.ca_cert).unwrap(),
        &std::fs::read_to_string(&files.ca_key).unwrap(),
    )
    .unwrap();
    let crl = dir.path().join("cluster.crl");
    std::fs::write(&crl, ca.revocation_list(&[]).unwrap()).unwrap();
    let extra = vec![
        "--max-key-bytes=64".to_string(),
        format!("--tls-crl={}", crl.display()),
    ];
    let procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = client_of(&procs);
    let l = leader(&client, &procs, None).await;
    let revoked = procs.iter().find(|p| p.id != l).unwrap().id;
    let cert = std::fs::read_to_string(certs.join(format!("node-{revoked}.pem"))).unwrap();
    let (endpoint, cfg) = raw_peer(&certs, revoked);
    let target = procs.iter().find(|p| p.id == l).unwrap();
    let conn = handshake(&endpoint, &cfg, revoked, l, peer_addr(target))
        .await
        .expect("welcomed before the revocation");
    conn.close(0u32.into(), b"probe");

    std::fs::write(&crl, ca.revocation_list(&[&cert]).unwrap()).unwrap();
    for p in procs.iter().filter(|p| p.id != revoked) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match handshake(&endpoint, &cfg, revoked, p.id, peer_addr(p)).await {
                Ok(conn) => {
                    conn.close(0u32.into(), b"probe");
                    assert!(
                        Instant::now() < deadline,
                        "node {} still welcomes revoked node {revoked}",
                        p.id
                    );
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let writer = procs.iter().find(|p| p.id == l).unwrap();
    put(&client, writer, "after-revocation", "ok")
        .await
        .unwrap();
}
