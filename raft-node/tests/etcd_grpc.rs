//! etcd's v3 gRPC API (`--grpc-listen`) on a real 3-node cluster, through
//! the `etcd-client` crate (a client written for etcd, not for raft-node):
//! put/get, prefixes, limits, past revisions and compaction errors, delete,
//! count_only/keys_only, serializable reads on a follower, writes through a
//! follower, Put with prev_kv, prefix deletes, transactions (compare-and-swap
//! races through every member), member list, status, snapshot; tokens; and hostile input
//! (watches: `etcd_grpc_watch.rs`)
//! (an oversized request, an empty key, a huge limit, garbage bytes).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::etcd::{Cluster, ADMIN, USER};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, Error, GetOptions, PutOptions, Txn,
    TxnOp, TxnOpResponse,
};
use sha2::Digest;
use tonic::Code;

fn code(e: &Error) -> Code {
    match e {
        Error::GRpcStatus(s) => s.code(),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

fn message(e: &Error) -> String {
    match e {
        Error::GRpcStatus(s) => s.message().to_owned(),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

async fn values(c: &mut Client, key: &str, opts: GetOptions) -> Vec<(String, String)> {
    let r = c.get(key, Some(opts)).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_through_etcd_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let mut c = cluster.client(cluster.leader, None).await;

    // Put and get, with etcd's revisions.
    let r1 = c.put("fruit/apple", "red", None).await.unwrap();
    let rev1 = r1.header().unwrap().revision();
    assert!(rev1 > 0);
    let r = c.get("fruit/apple", None).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!(kv.value(), b"red");
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (rev1, rev1, 1)
    );
    assert_eq!(r.header().unwrap().member_id(), cluster.leader);
    c.put("fruit/banana", "yellow", None).await.unwrap();
    c.put("fruit/cherry", "dark", None).await.unwrap();
    c.put("fruits", "not in the prefix", None).await.unwrap();
    let rev2 = c
        .put("fruit/apple", "green", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // Prefix, limit with `more` and `count`, keys_only, count_only.
    let all = values(&mut c, "fruit/", GetOptions::new().with_prefix()).await;
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["fruit/apple", "fruit/banana", "fruit/cherry"]);
    let page = c
        .get(
            "fruit/",
            Some(GetOptions::new().with_prefix().with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(page.kvs().len(), 2);
    assert!(page.more());
    assert_eq!(page.count(), 3);
    let keys_only = c
        .get(
            "fruit/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(keys_only.kvs().len(), 3);
    let counted = c
        .get(
            "fruit/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((counted.count(), counted.kvs().len()), (3, 0));
    let from = values(&mut c, "fruit/b", GetOptions::new().with_from_key()).await;
    assert_eq!(
        from.len(),
        3,
        "fruit/banana, fruit/cherry, fruits: {from:?}"
    );
    let huge = c
        .get(
            "fruit/",
            Some(GetOptions::new().with_prefix().with_limit(i64::MAX)),
        )
        .await
        .unwrap();
    assert_eq!((huge.kvs().len(), huge.more()), (3, false));

    // A past revision; a future one and a compacted one fail as on etcd.
    let old = values(&mut c, "fruit/apple", GetOptions::new().with_revision(rev1)).await;
    assert_eq!(old, [("fruit/apple".to_owned(), "red".to_owned())]);
    let e = c
        .get(
            "fruit/apple",
            Some(GetOptions::new().with_revision(rev2 + 1000)),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Code::OutOfRange);
    assert_eq!(
        message(&e),
        "etcdserver: mvcc: required revision is a future revision"
    );
    c.compact(rev2, None).await.unwrap();
    let e = c
        .get("fruit/apple", Some(GetOptions::new().with_revision(rev1)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Code::OutOfRange);
    assert_eq!(
        message(&e),
        "etcdserver: mvcc: required revision has been compacted"
    );

    // Delete: one key, then none.
    assert_eq!(c.delete("fruit/cherry", None).await.unwrap().deleted(), 1);
    assert_eq!(c.delete("fruit/cherry", None).await.unwrap().deleted(), 0);
    // Put with prev_kv answers the value it replaced.
    let put = c
        .put(
            "fruit/apple",
            "gold",
            Some(PutOptions::new().with_prev_key()),
        )
        .await
        .unwrap();
    let prev = put.prev_key().expect("the previous value");
    assert_eq!((prev.value(), prev.version()), (&b"green"[..], 2));
    // A prefix delete is one revision, and answers the values it deleted.
    let del = c
        .delete(
            "fruit/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), 2);
    let mut gone: Vec<&[u8]> = del.prev_kvs().iter().map(|kv| kv.key()).collect();
    gone.sort_unstable();
    assert_eq!(gone, [&b"fruit/apple"[..], b"fruit/banana"]);
    let after = values(&mut c, "fruit", GetOptions::new().with_prefix()).await;
    assert_eq!(
        after,
        [("fruits".to_owned(), "not in the prefix".to_owned())]
    );

    // A write through a follower, read there at once, serializable too.
    let follower = cluster.follower();
    let mut f = cluster.client(follower, None).await;
    f.put("via/follower", "yes", None).await.unwrap();
    let stale = values(
        &mut f,
        "via/follower",
        GetOptions::new().with_serializable(),
    )
    .await;
    assert_eq!(stale, [("via/follower".to_owned(), "yes".to_owned())]);
    let linear = values(&mut f, "via/follower", GetOptions::new()).await;
    assert_eq!(linear.len(), 1);

    // Hostile input: an empty key, a request above the 1.5 MiB limit.
    let e = c.get("", None).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    assert_eq!(message(&e), "etcdserver: key is not provided");
    let e = c.put("big", vec![b'x'; 2 << 20], None).await.unwrap_err();
    assert!(
        matches!(code(&e), Code::ResourceExhausted | Code::OutOfRange)
            && message(&e).contains("too large"),
        "{e:?}"
    );
    assert_eq!(values(&mut c, "fruits", GetOptions::new()).await.len(), 1);
    common::assert_running_without_panic(&mut cluster.procs, "kv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_cluster_through_etcd_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let follower = cluster.follower();
    let mut c = cluster.client(follower, None).await;
    c.put("k", "v", None).await.unwrap();

    let members = c.member_list().await.unwrap();
    let mut ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
    assert!(members.members().iter().all(|m| !m.is_learner()));

    let s = c.status().await.unwrap();
    assert_eq!(s.leader(), cluster.leader);
    assert!(s.raft_term() > 0 && s.raft_index() > 0 && !s.is_learner());
    assert!(s.version().starts_with("3."), "{}", s.version());
    assert!(s.db_size() > 0, "dbSize is the store's RocksDB size");
    assert!(c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None
        )
        .await
        .unwrap()
        .alarms()
        .is_empty());
    c.defragment().await.unwrap();

    // The snapshot is the node's backup file, whole.
    let mut stream = c.snapshot().await.unwrap();
    let mut bytes = Vec::new();
    let mut last_remaining = u64::MAX;
    while let Some(m) = stream.message().await.unwrap() {
        bytes.extend_from_slice(m.blob());
        last_remaining = m.remaining_bytes();
    }
    assert!(bytes.starts_with(b"RKVBKUP1"), "a raft-node backup");
    assert_eq!(last_remaining, 0);
    // In etcd's envelope: padded to 512 bytes, then the SHA-256 of the rest.
    assert_eq!(bytes.len() % 512, 32);
    let (data, sum) = bytes.split_at(bytes.len() - 32);
    assert_eq!(sha2::Sha256::digest(data).as_slice(), sum);
    let file = dir.path().join("snap.bak");
    std::fs::write(&file, &bytes).unwrap();
    let info = raft_node::backup::verify(&file);
    assert!(info.is_ok(), "the snapshot verifies as a backup: {info:?}");

    // Not implemented: Maintenance.Hash (leases: `etcd_grpc_lease.rs`).
    let e = c.hash().await.unwrap_err();
    assert_eq!(code(&e), Code::Unimplemented);

    // Garbage on the gRPC port: the connection is closed, the node serves on.
    let mut raw = std::net::TcpStream::connect(cluster.addr(follower)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage \x16\x03\x01")
        .unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    assert_eq!(values(&mut c, "k", GetOptions::new()).await.len(), 1);
    common::assert_running_without_panic(&mut cluster.procs, "maintenance");
}

/// Writes a token file readable by its owner only.
fn token_file(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).unwrap();
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(path, perms).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_grpc_port() {
    let dir = tempfile::tempdir().unwrap();
    let (user, admin) = (
        dir.path().join("user.token"),
        dir.path().join("admin.token"),
    );
    token_file(&user, USER);
    token_file(&admin, ADMIN);
    let extra = [
        format!("--auth-token-file={}", user.display()),
        format!("--admin-token-file={}", admin.display()),
    ];
    let mut extra = extra.to_vec();
    extra.push("--grpc-auth-failures-per-sec=2".into());
    let cluster = Cluster::start(dir.path(), &extra).await;
    let id = cluster.leader;

    // No token: refused.
    let mut anon = cluster.client(id, None).await;
    let e = anon.get("k", None).await.unwrap_err();
    assert_eq!(code(&e), Code::Unauthenticated);
    let e = anon.put("k", "v", None).await.unwrap_err();
    assert_eq!(code(&e), Code::Unauthenticated);
    let e = anon.watch("k", None).await.unwrap_err();
    assert_eq!(code(&e), Code::Unauthenticated);

    // A wrong password: etcd's answer.
    let wrong = Client::connect(
        [format!("http://{}", cluster.addr(id))],
        Some(ConnectOptions::new().with_user("user", "not-the-token-at-all")),
    )
    .await;
    let e = wrong.err().expect("a wrong password is refused");
    assert_eq!(
        message(&e),
        "etcdserver: authentication failed, invalid user ID or password"
    );

    // The user token: data, but no admin calls.
    let mut u = cluster
        .client(id, Some(ConnectOptions::new().with_user("user", USER)))
        .await;
    u.put("k", "v", None).await.unwrap();
    let mut w = u.watch("k", None).await.unwrap();
    assert!(w.message().await.unwrap().unwrap().created());
    assert_eq!(values(&mut u, "k", GetOptions::new()).await.len(), 1);
    let rev = u.status().await.unwrap().header().unwrap().revision();
    let e = u.compact(rev, None).await.unwrap_err();
    assert_eq!(code(&e), Code::PermissionDenied);
    let Err(e) = u.snapshot().await else {
        panic!("no snapshot for the user token");
    };
    assert_eq!(code(&e), Code::PermissionDenied);

    // The admin token: admin calls too.
    let mut a = cluster
        .client(id, Some(ConnectOptions::new().with_user("admin", ADMIN)))
        .await;
    a.compact(rev, None).await.unwrap();
    a.defragment().await.unwrap();

    // Guessing passwords is slowed down: past --grpc-auth-failures-per-sec
    // (2 here), attempts fail at once without being looked at.
    let mut limited = None;
    for _ in 0..30 {
        let r = Client::connect(
            [format!("http://{}", cluster.addr(id))],
            Some(ConnectOptions::new().with_user("admin", "a-guess-0123456789")),
        )
        .await;
        let e = r.err().expect("a guess is refused");
        if code(&e) == Code::ResourceExhausted {
            limited = Some(message(&e));
            break;
        }
        assert_eq!(code(&e), Code::InvalidArgument, "{e:?}");
    }
    let limited = limited.expect("guesses are limited");
    assert!(
        limited.contains("--grpc-auth-failures-per-sec"),
        "{limited}"
    );
}

/// A Snapshot client that stops reading: after
/// --grpc-snapshot-send-timeout-ms without taking a chunk, the stream ends
/// with an error (never a clean end of a cut snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_reader_that_stalls_gets_an_error_not_a_cut_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--grpc-snapshot-send-timeout-ms=300".to_owned()];
    let cluster = Cluster::start(dir.path(), &extra).await;
    let mut c = cluster.client(cluster.leader, None).await;
    // Far more than the HTTP/2 windows and queues hold.
    let value = "x".repeat(512 << 10);
    for i in 0..32 {
        c.put(format!("big/{i}"), value.clone(), None)
            .await
            .unwrap();
    }
    let mut stream = c.snapshot().await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let e = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stalled stream ended as if whole"),
            Err(e) => break e,
        }
    };
    assert_eq!(code(&e), Code::Unavailable, "{e:?}");
    assert!(
        message(&e).contains("--grpc-snapshot-send-timeout-ms"),
        "{e:?}"
    );
}

/// etcd's Txn: compares on value and revisions, both branches, nested
/// reads, and a compare-and-swap race through every member with exactly one
/// winner; etcd's errors for a duplicate key and an empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_through_etcd_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let mut c = cluster.client(cluster.follower(), None).await;
    let created = c.put("lock", "free", None).await.unwrap();
    let rev = created.header().unwrap().revision();

    // The compare holds: both puts at one revision, the read sees them.
    let txn = Txn::new()
        .when([
            Compare::value("lock", CompareOp::Equal, "free"),
            Compare::mod_revision("lock", CompareOp::Equal, rev),
        ])
        .and_then([
            TxnOp::put("lock", "held", None),
            TxnOp::put("owner", "me", None),
            TxnOp::get("owner", None),
        ])
        .or_else([TxnOp::get("lock", None)]);
    let r = c.txn(txn).await.unwrap();
    assert!(r.succeeded());
    let txn_rev = r.header().unwrap().revision();
    assert!(txn_rev > rev);
    match &r.op_responses()[2] {
        TxnOpResponse::Get(g) => {
            assert_eq!(g.kvs()[0].value(), b"me");
            assert_eq!(g.kvs()[0].mod_revision(), txn_rev);
        }
        other => panic!("a get's response, not {other:?}"),
    }
    let owner = c.get("owner", None).await.unwrap();
    assert_eq!(
        owner.kvs()[0].mod_revision(),
        txn_rev,
        "one revision for both"
    );

    // The compare fails now: the failure branch runs, nothing changes.
    let again = Txn::new()
        .when([Compare::value("lock", CompareOp::Equal, "free")])
        .and_then([TxnOp::put("lock", "stolen", None)])
        .or_else([TxnOp::get("lock", None)]);
    let r = c.txn(again).await.unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"held"),
        other => panic!("a get's response, not {other:?}"),
    }

    // A compare-and-swap race from every member: exactly one wins.
    let current = c.get("lock", None).await.unwrap().kvs()[0].mod_revision();
    let mut racers = Vec::new();
    for (i, id) in [1u64, 2, 3, 1, 2, 3].into_iter().enumerate() {
        let mut client = cluster.client(id, None).await;
        racers.push(tokio::spawn(async move {
            let cas = Txn::new()
                .when([Compare::mod_revision("lock", CompareOp::Equal, current)])
                .and_then([TxnOp::put("lock", format!("racer {i}"), None)]);
            client.txn(cas).await.map(|r| r.succeeded())
        }));
    }
    let mut wins = 0;
    for r in racers {
        if r.await.unwrap().expect("every racer gets an answer") {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "exactly one compare-and-swap wins");

    // etcd's errors.
    let dup = Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]);
    let e = c.txn(dup).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    assert_eq!(
        message(&e),
        "etcdserver: duplicate key given in txn request"
    );
    let empty = Txn::new().and_then([TxnOp::put("", "1", None)]);
    let e = c.txn(empty).await.unwrap_err();
    assert_eq!(message(&e), "etcdserver: key is not provided");
    common::assert_running_without_panic(&mut cluster.procs, "txn");
}

/// Reads from `s` until the server closes it; `true` when it did within
/// `guard` (a client that sends nothing must not keep its slot forever).
async fn closed_by_server(mut s: tokio::net::TcpStream, guard: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(guard, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_hold_the_grpc_port() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--grpc-max-connections=2".to_owned(),
        "--http-tls-handshake-timeout-ms=300".to_owned(),
        "--grpc-keepalive-ms=300".to_owned(),
    ];
    let cluster = Cluster::start(dir.path(), &extra).await;
    let addr = cluster.addr(cluster.leader);
    // Two connections that never send a byte, and one that sends the
    // HTTP/2 preface and then nothing (never answering a ping): each takes
    // one of the two connection slots until the server drops it.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut preface = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut preface,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .await
    .unwrap();
    // The guard only turns a hang into a failure; the server's deadlines
    // are a fraction of it.
    let guard = Duration::from_secs(60);
    assert!(
        closed_by_server(silent, guard).await,
        "a connection that never sent a byte was kept"
    );
    assert!(
        closed_by_server(preface, guard).await,
        "a connection that went silent after the preface was kept"
    );
    // The slots are free again: a real client is served.
    let mut c = cluster.client(cluster.leader, None).await;
    c.put("k", "v", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_header_revision_is_the_revision_read() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &[]).await;
    let mut writer = cluster.client(cluster.leader, None).await;
    let mut reader = cluster.client(cluster.leader, None).await;
    writer.put("hot", "0", None).await.unwrap();
    // Only `hot` is ever written, so the revision a read is at is `hot`'s
    // mod_revision; a header above it would make a client that watches
    // from `header.revision + 1` (etcd's Get-then-Watch) miss writes.
    let writes = tokio::spawn(async move {
        for i in 1..=300 {
            writer.put("hot", i.to_string(), None).await.unwrap();
        }
    });
    let mut reads = 0;
    while !writes.is_finished() || reads < 50 {
        let r = reader.get("hot", None).await.unwrap();
        let header = r.header().unwrap().revision();
        let kv_rev = r.kvs()[0].mod_revision();
        assert_eq!(
            header, kv_rev,
            "read {reads}: the header's revision is not the revision read"
        );
        reads += 1;
    }
    writes.await.unwrap();
}
