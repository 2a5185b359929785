//! `Client::backup` against scripted HTTP servers: a follower's 421 sends
//! the request to the leader it names, the token travels, a 401 is typed,
//! and a body cut off or stalled mid-way is an error saying so, never
//! retried; a slow body that keeps coming is not cut by the request
//! timeout.

mod common;

use std::time::{Duration, Instant};

use raft_client::{BackupConsistency, Client, Error, RetryPolicy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use common::{bind, Seen};

const TOKEN: &str = "admin-token-0123456789abcdef";

/// One scripted answer.
#[derive(Clone)]
enum Reply {
    /// Status, extra header lines, body.
    Answer(u16, String, String),
    /// A backup of index 42: `chunks` pieces of `size` bytes (byte `i` is
    /// `i % 251`), one every `every`, under a `content-length` of
    /// `declared` (more than sent: the connection closes early).
    Backup {
        chunks: usize,
        size: usize,
        every: Duration,
        declared: usize,
    },
}

impl Reply {
    fn backup(chunks: usize, size: usize) -> Self {
        Reply::Backup {
            chunks,
            size,
            every: Duration::ZERO,
            declared: chunks * size,
        }
    }
}

/// The bytes of a scripted backup body.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Serves `script` in order, one connection per request.
fn serve(listener: TcpListener, script: Vec<Reply>) -> Seen {
    common::serve(listener, script, answer)
}

async fn answer(mut sock: tokio::net::TcpStream, reply: Reply) {
    match reply {
        Reply::Answer(status, headers, body) => {
            common::write_answer(&mut sock, status, &headers, &body).await;
        }
        Reply::Backup {
            chunks,
            size,
            every,
            declared,
        } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {declared}\r\nconnection: close\r\n\
                 x-raft-backup-index: 42\r\nx-raft-backup-term: 3\r\nx-raft-backup-node: 2\r\n\
                 x-raft-backup-consistency: linearizable\r\nx-raft-backup-read-index: 40\r\n\r\n"
            );
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let all = body(chunks * size);
            for piece in all.chunks(size.max(1)) {
                tokio::time::sleep(every).await;
                if sock.write_all(piece).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn not_leader(leader_addr: Option<&str>) -> Reply {
    let (header, body) = match leader_addr {
        Some(addr) => (
            "x-raft-leader: 2\r\n".to_owned(),
            format!(
                r#"{{"type":"urn:raft-node:problem:not-leader","title":"Not the leader","status":421,"detail":"ask node 2","leader":2,"leader_client_addr":"{addr}"}}"#
            ),
        ),
        None => (
            String::new(),
            r#"{"type":"urn:raft-node:problem:not-leader","title":"Not the leader","status":421,"detail":"no leader is known right now; retry shortly"}"#.to_owned(),
        ),
    };
    Reply::Answer(
        421,
        format!("content-type: application/problem+json\r\n{header}"),
        body,
    )
}

fn client(endpoints: Vec<String>) -> Client {
    Client::builder(endpoints)
        .token(TOKEN)
        .retry(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .build()
        .unwrap()
}

/// Every chunk of a backup, or the error that ended it.
async fn download(b: &mut raft_client::Backup) -> Result<Vec<u8>, Error> {
    let mut all = Vec::new();
    while let Some(c) = b.chunk().await? {
        all.extend_from_slice(&c);
    }
    Ok(all)
}

#[tokio::test]
async fn a_follower_sends_the_backup_to_the_leader_it_names() {
    let (follower, follower_url) = bind().await;
    let (leader, leader_url) = bind().await;
    let addr = leader_url.strip_prefix("http://").unwrap().to_owned();
    let to_follower = serve(follower, vec![not_leader(Some(&addr))]);
    let to_leader = serve(leader, vec![Reply::backup(5, 1000)]);
    // The leader is not one of the client's endpoints.
    let c = client(vec![follower_url]);
    let mut b = c.backup(BackupConsistency::Linearizable).await.unwrap();
    assert_eq!(b.endpoint, leader_url);
    assert_eq!((b.index, b.term, b.node), (42, 3, 2));
    assert_eq!(
        (b.consistency, b.read_index),
        (BackupConsistency::Linearizable, Some(40))
    );
    assert_eq!(download(&mut b).await.unwrap(), body(5000));
    assert_eq!(b.received(), 5000);
    assert_eq!(
        b.chunk().await.unwrap(),
        None,
        "a finished body stays finished"
    );
    let heads = to_leader.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].starts_with("get /v1/cluster/backup http/1.1"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0].contains(&format!("authorization: bearer {TOKEN}")),
        "{}",
        heads[0]
    );
    assert_eq!(to_follower.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_leader_among_the_endpoints_is_remembered_after_a_421() {
    let (follower, follower_url) = bind().await;
    let (leader, leader_url) = bind().await;
    let addr = leader_url.strip_prefix("http://").unwrap().to_owned();
    let to_follower = serve(follower, vec![not_leader(Some(&addr))]);
    let to_leader = serve(leader, vec![Reply::backup(1, 10), Reply::backup(1, 10)]);
    let c = client(vec![follower_url, leader_url.clone()]);
    for _ in 0..2 {
        let mut b = c.backup(BackupConsistency::Linearizable).await.unwrap();
        assert_eq!(b.endpoint, leader_url);
        assert_eq!(download(&mut b).await.unwrap(), body(10));
    }
    // The second backup went to the leader directly.
    assert_eq!(to_follower.lock().unwrap().len(), 1);
    assert_eq!(to_leader.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_421_without_a_leader_is_retried_and_a_stale_backup_says_so() {
    let (node, url) = bind().await;
    let seen = serve(node, vec![not_leader(None), Reply::backup(2, 100)]);
    let c = client(vec![url]);
    let mut b = c.backup(BackupConsistency::Stale).await.unwrap();
    assert_eq!(download(&mut b).await.unwrap(), body(200));
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    assert!(
        heads[1].starts_with("get /v1/cluster/backup?consistency=stale "),
        "{}",
        heads[1]
    );
}

#[tokio::test]
async fn no_token_is_a_typed_401_and_not_retried() {
    let (node, url) = bind().await;
    let problem = r#"{"type":"urn:raft-node:problem:unauthorized","title":"Unauthorized","status":401,"detail":"a bearer token is required"}"#;
    let seen = serve(
        node,
        vec![
            Reply::Answer(401, String::new(), problem.to_owned()),
            Reply::backup(1, 10),
        ],
    );
    let c = Client::builder([url]).build().unwrap();
    let err = c.backup(BackupConsistency::Linearizable).await.unwrap_err();
    match &err {
        Error::Api { problem } => {
            assert_eq!(
                (problem.status, problem.kind.as_str()),
                (401, "unauthorized")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.status(), Some(401));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_body_cut_off_mid_way_is_an_error_saying_so_and_not_retried() {
    let (node, url) = bind().await;
    let cut = Reply::Backup {
        chunks: 3,
        size: 100,
        every: Duration::ZERO,
        declared: 1000,
    };
    let seen = serve(node, vec![cut, Reply::backup(10, 100)]);
    let c = client(vec![url]);
    let mut b = c.backup(BackupConsistency::Linearizable).await.unwrap();
    let err = download(&mut b).await.unwrap_err();
    match &err {
        Error::Interrupted { received, .. } => assert_eq!(*received, 300),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("cut off after 300 bytes"), "{err}");
    // It stays cut off: no later chunk, no second request.
    assert!(matches!(b.chunk().await, Err(Error::Interrupted { .. })));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn each_wait_for_bytes_is_bounded_by_the_request_timeout_and_the_whole_is_not() {
    let (node, url) = bind().await;
    // 12 chunks 100 ms apart: 1.2 s in all, 4 times the timeout.
    let slow = Reply::Backup {
        chunks: 12,
        size: 10,
        every: Duration::from_millis(100),
        declared: 120,
    };
    let stall = Reply::Backup {
        chunks: 2,
        size: 10,
        every: Duration::from_secs(5),
        declared: 20,
    };
    serve(node, vec![slow, stall]);
    let c = Client::builder([url])
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut b = c.backup(BackupConsistency::Linearizable).await.unwrap();
    assert_eq!(download(&mut b).await.unwrap(), body(120));
    let started = Instant::now();
    let mut b = c.backup(BackupConsistency::Linearizable).await.unwrap();
    let err = download(&mut b).await.unwrap_err();
    assert!(err.to_string().contains("no bytes for 300 ms"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
