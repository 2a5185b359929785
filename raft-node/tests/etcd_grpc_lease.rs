//! etcd's Lease service on a real 3-node cluster, through the
//! `etcd-client` crate: grant, put with a lease (and its errors), a
//! keep-alive stream that keeps a key past its TTL, expiry once it stops
//! (seen by a watch), revoke deleting every attached key at one revision,
//! time-to-live with keys, the lease list, keep-alives through a follower;
//! and a lease that survives `kill -9` of the leader (its TTL starts over
//! on the new leader) and still expires there.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Cluster;
use etcd_client::{
    Client, Error, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tonic::Code;

fn status(e: &Error) -> (Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_owned()),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

const NOT_FOUND: &str = "etcdserver: requested lease not found";

async fn exists(c: &mut Client, key: &str) -> bool {
    !c.get(key, None).await.unwrap().kvs().is_empty()
}

/// Polls until `key` is gone, for at most `secs` seconds.
async fn gone_within(c: &mut Client, key: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while exists(c, key).await {
        assert!(
            Instant::now() < deadline,
            "{key} still there after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_through_etcd_client() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &[]).await;
    let mut c = cluster.client(cluster.leader, None).await;
    let mut f = cluster.client(cluster.follower(), None).await;

    // Grant; a put with the lease shows it on the key.
    let g = c.lease_grant(3, None).await.unwrap();
    let id = g.id();
    assert!(id > 0 && g.ttl() == 3, "{g:?}");
    let lease = PutOptions::new().with_lease(id);
    c.put("ka/key", "v", Some(lease.clone())).await.unwrap();
    let r = c.get("ka/key", None).await.unwrap();
    assert_eq!(r.kvs()[0].lease(), id);
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(
        (ttl.granted_ttl(), ttl.keys()),
        (3, &[b"ka/key".to_vec()][..])
    );
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 3, "{ttl:?}");
    let listed: Vec<i64> = f
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(listed.contains(&id), "{listed:?}");

    // A lease that does not exist: etcd's error, nothing written (a put,
    // a put with prev_kv, a put inside a transaction).
    let missing = PutOptions::new().with_lease(id + 1000);
    let e = c.put("nope", "v", Some(missing.clone())).await.unwrap_err();
    assert_eq!(status(&e), (Code::NotFound, NOT_FOUND.into()));
    let e = c
        .put("nope", "v", Some(missing.clone().with_prev_key()))
        .await
        .unwrap_err();
    assert_eq!(status(&e), (Code::NotFound, NOT_FOUND.into()));
    let txn = Txn::new().and_then([
        TxnOp::put("nope2", "v", None),
        TxnOp::put("nope", "v", Some(missing)),
    ]);
    let e = c.txn(txn).await.unwrap_err();
    assert_eq!(status(&e), (Code::NotFound, NOT_FOUND.into()));
    assert!(!exists(&mut c, "nope").await && !exists(&mut c, "nope2").await);

    // A watch on the prefix sees the expiry's delete.
    let mut events = f
        .watch(
            "ka/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();

    // Keep-alives (through a follower) keep the key past twice its TTL.
    let (mut keeper, mut answers) = f.lease_keep_alive(id).await.unwrap();
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        let a = answers.message().await.unwrap().expect("an answer");
        assert_eq!((a.id(), a.ttl()), (id, 3));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        exists(&mut c, "ka/key").await,
        "expired despite keep-alives"
    );
    drop(keeper);
    drop(answers);

    // Without them, it expires: the key goes, and the watch sees it.
    gone_within(&mut c, "ka/key", 30).await;
    let deleted = loop {
        let r = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("the watch goes on");
        if let Some(e) = r
            .events()
            .iter()
            .find(|e| e.event_type() == EventType::Delete)
        {
            let prev_lease = e.prev_kv().map(|p| p.lease());
            break (e.kv().unwrap().key().to_vec(), prev_lease);
        }
    };
    // The deleted version names the lease it was attached to.
    assert_eq!(deleted, (b"ka/key".to_vec(), Some(id)));
    let ttl = c.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    // A keep-alive of a lease that is gone answers TTL 0, which the
    // client reports as "lease not found".
    let e = c.lease_keep_alive(id).await.unwrap_err();
    assert!(matches!(e, Error::LeaseKeepAliveError(_)), "{e:?}");

    // Revoke deletes every attached key at one revision.
    let id2 = c.lease_grant(60, None).await.unwrap().id();
    for k in ["r/a", "r/b", "r/c"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id2)))
            .await
            .unwrap();
    }
    c.put("r/kept", "v", None).await.unwrap();
    let before = c
        .get("r/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let rev = c
        .lease_revoke(id2)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(rev > before);
    let left = c
        .get("r/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = left.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"r/kept"[..]]);
    // All three were there one revision before, none at it.
    let at = |r: i64| GetOptions::new().with_prefix().with_revision(r);
    assert_eq!(c.get("r/", Some(at(rev - 1))).await.unwrap().kvs().len(), 4);
    assert_eq!(c.get("r/", Some(at(rev))).await.unwrap().kvs().len(), 1);
    let e = c.lease_revoke(id2).await.unwrap_err();
    assert_eq!(status(&e), (Code::NotFound, NOT_FOUND.into()));

    // A chosen id; the same again is refused as etcd does.
    let opts = || Some(etcd_client::LeaseGrantOptions::new().with_id(4242));
    assert_eq!(c.lease_grant(30, opts()).await.unwrap().id(), 4242);
    let e = c.lease_grant(30, opts()).await.unwrap_err();
    assert_eq!(
        status(&e),
        (
            Code::FailedPrecondition,
            "etcdserver: lease already exists".into()
        )
    );
    let e = c.lease_grant(9_000_000_001, None).await.unwrap_err();
    assert_eq!(
        status(&e),
        (Code::OutOfRange, "etcdserver: too large lease TTL".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_the_leaders_kill_and_still_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let old = cluster.leader;
    let mut c = cluster.client(old, None).await;
    let id = c.lease_grant(8, None).await.unwrap().id();
    c.put("held", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    drop(c);
    cluster.procs[usize::try_from(old - 1).unwrap()].kill9();
    let http = common::client_of(&cluster.procs);
    let new = common::leader(&http, &cluster.procs, Some(old)).await;
    let mut c = cluster.client(new, None).await;
    // The new leader gave the lease its full TTL again: still there.
    let ttl = c.lease_time_to_live(id, None).await.unwrap();
    assert!(ttl.ttl() > 0, "{ttl:?}");
    assert_eq!(ttl.granted_ttl(), 8);
    assert!(exists(&mut c, "held").await);
    // And without keep-alives it expires there.
    gone_within(&mut c, "held", 60).await;
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
}
