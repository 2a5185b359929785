//! etcd's Lease service on a real 3-node cluster, through the
//! `etcd-client` crate: grant, put with a lease (and its errors), a
//! keep-alive stream that keeps a key past its TTL, expiry once it stops
//! (seen by a watch), revoke deleting every attached key at one revision,
//! time-to-live with keys, the lease list, keep-alives through a follower;
//! a lease that survives `kill -9` of the leader (its TTL starts over
//! on the new leader) and still expires there; `LEASE` compares in a Txn
//! and puts with `ignore_value` / `ignore_lease`, with etcd's errors.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Cluster;
use etcd_client::{
    Client, Compare, CompareOp, Error, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
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

/// The value and lease of `key` (which must exist).
async fn value_and_lease(c: &mut Client, key: &str) -> (String, i64) {
    let r = c.get(key, None).await.unwrap();
    let kv = &r.kvs()[0];
    (kv.value_str().unwrap().to_owned(), kv.lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_compares_and_puts_keeping_the_value_or_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let mut c = cluster.client(cluster.follower(), None).await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    let id2 = c.lease_grant(60, None).await.unwrap().id();
    c.put("tl/a", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    c.put("tl/b", "v", None).await.unwrap();

    // LEASE compares: the key's lease id, 0 without one or when absent;
    // with a range, every key must hold.
    let holds = |cmp: Compare| Txn::new().when([cmp]);
    let prefix = |cmp: Compare| cmp.with_prefix();
    for (cmp, want) in [
        (Compare::lease("tl/a", CompareOp::Equal, id), true),
        (Compare::lease("tl/a", CompareOp::Equal, id2), false),
        (Compare::lease("tl/a", CompareOp::Greater, id - 1), true),
        (Compare::lease("tl/a", CompareOp::Less, id), false),
        (Compare::lease("tl/a", CompareOp::NotEqual, 0), true),
        (Compare::lease("tl/b", CompareOp::Equal, 0), true),
        (Compare::lease("tl/missing", CompareOp::Equal, 0), true),
        (Compare::lease("tl/missing", CompareOp::Greater, 0), false),
        (prefix(Compare::lease("tl/", CompareOp::Less, id + 1)), true),
        (prefix(Compare::lease("tl/", CompareOp::Greater, 0)), false),
    ] {
        let r = c.txn(holds(cmp.clone())).await.unwrap();
        assert_eq!(r.succeeded(), want, "{cmp:?}");
    }
    // A compare-and-swap on the lease: the put runs only while it holds.
    let cas = |lease: i64| {
        Txn::new()
            .when([Compare::lease("tl/a", CompareOp::Equal, lease)])
            .and_then([TxnOp::put("tl/owner", format!("{lease}"), None)])
    };
    assert!(!c.txn(cas(id2)).await.unwrap().succeeded());
    assert!(c.txn(cas(id)).await.unwrap().succeeded());
    assert_eq!(value_and_lease(&mut c, "tl/owner").await.0, id.to_string());

    // ignore_value keeps the value (here moving the key to lease id2);
    // ignore_lease keeps the lease; both keep both. Each is a new
    // revision of the key.
    let keep_value = PutOptions::new().with_ignore_value();
    let r = c
        .put(
            "tl/a",
            "",
            Some(keep_value.clone().with_lease(id2).with_prev_key()),
        )
        .await
        .unwrap();
    let prev = r.prev_key().expect("prev_kv");
    assert_eq!((prev.value(), prev.lease()), (&b"v"[..], id));
    assert_eq!(value_and_lease(&mut c, "tl/a").await, ("v".into(), id2));
    let keep_lease = PutOptions::new().with_ignore_lease();
    c.put("tl/a", "w", Some(keep_lease.clone())).await.unwrap();
    assert_eq!(value_and_lease(&mut c, "tl/a").await, ("w".into(), id2));
    let both = keep_value.clone().with_ignore_lease();
    let before = c.get("tl/a", None).await.unwrap().kvs()[0].version();
    let r = c.put("tl/a", "", Some(both)).await.unwrap();
    let got = c.get("tl/a", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!((kv.value(), kv.lease()), (&b"w"[..], id2));
    assert_eq!(kv.version(), before + 1);
    assert_eq!(kv.mod_revision(), r.header().unwrap().revision());
    // Without ignore_lease a put detaches the key, as etcd.
    c.put("tl/a", "", Some(keep_value.clone())).await.unwrap();
    assert_eq!(value_and_lease(&mut c, "tl/a").await, ("w".into(), 0));

    // Inside a Txn too.
    let txn = Txn::new().and_then([
        TxnOp::put("tl/a", "", Some(keep_value.clone().with_lease(id))),
        TxnOp::get("tl/a", None),
    ]);
    let r = c.txn(txn).await.unwrap();
    match &r.op_responses()[1] {
        TxnOpResponse::Get(g) => {
            assert_eq!((g.kvs()[0].value(), g.kvs()[0].lease()), (&b"w"[..], id));
        }
        other => panic!("a get's response, not {other:?}"),
    }

    // etcd's errors: a value or lease given with the flag that keeps it,
    // a key that does not exist (nothing applied, also the other puts of
    // a transaction).
    let invalid = |m: &str| (Code::InvalidArgument, m.to_owned());
    let e = c
        .put("tl/a", "x", Some(keep_value.clone()))
        .await
        .unwrap_err();
    assert_eq!(status(&e), invalid("etcdserver: value is provided"));
    let e = c
        .put("tl/a", "x", Some(keep_lease.clone().with_lease(id)))
        .await
        .unwrap_err();
    assert_eq!(status(&e), invalid("etcdserver: lease is provided"));
    let e = c
        .put("tl/none", "", Some(keep_value.clone()))
        .await
        .unwrap_err();
    assert_eq!(status(&e), invalid("etcdserver: key not found"));
    let e = c
        .put("tl/none", "x", Some(keep_lease.clone()))
        .await
        .unwrap_err();
    assert_eq!(status(&e), invalid("etcdserver: key not found"));
    let txn = Txn::new().and_then([
        TxnOp::put("tl/c", "new", None),
        TxnOp::put("tl/none", "x", Some(keep_lease.clone())),
    ]);
    let e = c.txn(txn).await.unwrap_err();
    assert_eq!(status(&e), invalid("etcdserver: key not found"));
    let txn = Txn::new().and_then([TxnOp::put("tl/a", "x", Some(keep_value))]);
    let e = c.txn(txn).await.unwrap_err();
    assert_eq!(status(&e), invalid("etcdserver: value is provided"));
    assert!(!exists(&mut c, "tl/none").await && !exists(&mut c, "tl/c").await);
    assert_eq!(value_and_lease(&mut c, "tl/a").await, ("w".into(), id));
    common::assert_running_without_panic(&mut cluster.procs, "txn lease");
}
