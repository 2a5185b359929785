//! Transactions and leases on RocksDB: `LEASE` compares (on a key with a
//! lease, without one, absent, over a range) and puts that keep the key's
//! value or lease (`ignore_value`, `ignore_lease`), decided from the state
//! the entry finds, so every replica decides alike.

use raft_core::{EntryPayload, StateMachine};
use raft_log::RocksLog;

use super::*;
use crate::lease::{LeaseGrant, LeaseRefusal};
use crate::txn::codec::TxnCommand;
use crate::txn::{
    Compare, CompareResult, CompareTarget, PutRequest, PutResponse, RequestOp, ResponseOp,
    TxnRequest, TxnResponse,
};

/// A store applying one entry at a time.
struct Store {
    _log: RocksLog,
    sm: KvStateMachine,
    next: u64,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = super::test_support::store(dir.path(), 100);
        Self {
            _log: log,
            sm,
            next: 1,
            _dir: dir,
        }
    }

    async fn apply(&mut self, payload: Bytes) -> Outcome {
        let e = Entry {
            term: 1,
            index: self.next,
            payload: EntryPayload::Normal(payload),
        };
        self.next += 1;
        self.sm.apply(&[e]).await.unwrap().remove(0)
    }

    async fn grant(&mut self, id: u64) {
        let g = LeaseGrant {
            id,
            ttl_secs: 60,
            max_leases: 100,
        };
        assert!(matches!(
            self.apply(g.encode()).await,
            Outcome::LeaseGranted { .. }
        ));
    }

    async fn run(&mut self, request: TxnRequest) -> Outcome {
        let cmd = TxnCommand {
            max_range_keys: 100,
            max_read_bytes: 1 << 20,
            max_keys_per_lease: 100,
            request,
        };
        self.apply(cmd.encode()).await
    }

    async fn txn(&mut self, request: TxnRequest) -> TxnResponse {
        match self.run(request).await {
            Outcome::Txn(r) => *r,
            other => panic!("the transaction did not run: {other:?}"),
        }
    }

    async fn put(&mut self, key: &str, value: &str, lease: u64) -> u64 {
        let p = PutRequest {
            key: b(key),
            value: b(value),
            lease,
            ..PutRequest::default()
        };
        self.txn(ops(vec![RequestOp::Put(p)])).await.revision
    }

    fn get(&self, key: &str) -> Option<Versioned> {
        self.sm.reader().get(key.as_bytes()).unwrap()
    }

    fn revision(&self) -> u64 {
        self.sm.reader().revisions().unwrap().current
    }

    fn keys_of(&self, lease: u64) -> Vec<Bytes> {
        self.sm.reader().lease_keys(lease, 100).unwrap()
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

fn ops(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        success,
        ..TxnRequest::default()
    }
}

fn lease_cmp(key: &str, end: &str, lease: i64, result: CompareResult) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: b(key),
            range_end: b(end),
            target: CompareTarget::Lease(lease),
            result,
        }],
        ..TxnRequest::default()
    }
}

/// A put keeping the value (`iv`) and/or the lease (`il`) of `key`.
fn keeping(key: &str, value: &str, lease: u64, iv: bool, il: bool) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: b(key),
        value: b(value),
        prev_kv: true,
        lease,
        ignore_value: iv,
        ignore_lease: il,
    })
}

fn put_response(r: &TxnResponse) -> &PutResponse {
    match &r.responses[0] {
        ResponseOp::Put(p) => p,
        other => panic!("not a put response: {other:?}"),
    }
}

#[tokio::test]
async fn lease_compares_see_the_lease_of_each_key_and_zero_without_one() {
    use CompareResult::{Equal, Greater, Less, NotEqual};
    let mut s = Store::new();
    s.grant(5).await;
    s.grant(7).await;
    s.put("a", "1", 5).await;
    s.put("b", "1", 7).await;
    s.put("c", "1", 0).await;
    let cases = [
        // A key with lease 5.
        (lease_cmp("a", "", 5, Equal), true),
        (lease_cmp("a", "", 7, Equal), false),
        (lease_cmp("a", "", 5, NotEqual), false),
        (lease_cmp("a", "", 4, Greater), true),
        (lease_cmp("a", "", 5, Greater), false),
        (lease_cmp("a", "", 6, Less), true),
        (lease_cmp("a", "", 5, Less), false),
        (lease_cmp("a", "", 0, Equal), false),
        // A key without a lease: 0.
        (lease_cmp("c", "", 0, Equal), true),
        (lease_cmp("c", "", 5, Less), true),
        (lease_cmp("c", "", 0, Greater), false),
        // An absent key: 0 too (unlike a value compare, it can hold).
        (lease_cmp("zz", "", 0, Equal), true),
        (lease_cmp("zz", "", 5, NotEqual), true),
        (lease_cmp("zz", "", 0, Greater), false),
        // A range: every key must hold (a: 5, b: 7, c: 0).
        (lease_cmp("a", "c", 4, Greater), true),
        (lease_cmp("a", "c", 5, Greater), false),
        (lease_cmp("a", "d", 8, Less), true),
        (lease_cmp("a", "d", 0, Greater), false),
        (lease_cmp("a", "\0", 9, Less), true),
        // An empty range compares as an absent key.
        (lease_cmp("x", "y", 0, Equal), true),
        (lease_cmp("x", "y", 1, Equal), false),
    ];
    for (req, want) in cases {
        assert_eq!(s.txn(req.clone()).await.succeeded, want, "{req:?}");
    }
    // The compare decides the branch: put only while "a" holds lease 5.
    let mut cas = lease_cmp("a", "", 5, Equal);
    cas.success = vec![keeping("a", "2", 0, false, true)];
    assert!(s.txn(cas.clone()).await.succeeded);
    assert_eq!(s.get("a").unwrap().value, b("2"));
    // Revoking lease 5 deletes "a", whose lease is then 0: it fails.
    let revoke = crate::lease::LeaseRevoke {
        id: 5,
        expiry_term: 0,
    };
    s.apply(revoke.encode()).await;
    assert!(!s.txn(cas).await.succeeded);
}

#[tokio::test]
async fn a_put_keeping_the_value_or_lease_takes_them_from_the_key_when_applied() {
    let mut s = Store::new();
    s.grant(5).await;
    s.grant(6).await;
    let created = s.put("k", "old", 5).await;
    // Keep the value, attach another lease.
    let r = s.txn(ops(vec![keeping("k", "", 6, true, false)])).await;
    let v = s.get("k").unwrap();
    assert_eq!((v.value.clone(), v.lease, v.version), (b("old"), 6, 2));
    assert_eq!((v.rev, v.create_rev), (r.revision, created));
    let prev = put_response(&r).prev_kv.as_ref().unwrap();
    assert_eq!((prev.value.clone(), prev.lease), (b("old"), 5));
    assert_eq!(s.keys_of(5), Vec::<Bytes>::new());
    assert_eq!(s.keys_of(6), vec![b("k")]);
    // Keep the lease, set a value.
    s.txn(ops(vec![keeping("k", "new", 0, false, true)])).await;
    let v = s.get("k").unwrap();
    assert_eq!((v.value.clone(), v.lease, v.version), (b("new"), 6, 3));
    // Keep both: only the revision and version move.
    let r = s.txn(ops(vec![keeping("k", "", 0, true, true)])).await;
    let v = s.get("k").unwrap();
    assert_eq!(
        (v.value.clone(), v.lease, v.version, v.rev),
        (b("new"), 6, 4, r.revision)
    );
    // A plain put (no ignore_lease) without a lease detaches the key.
    s.put("k", "plain", 0).await;
    assert_eq!(s.get("k").unwrap().lease, 0);
    assert!(s.keys_of(6).is_empty());
    // Keeping "no lease" keeps none.
    s.txn(ops(vec![keeping("k", "x", 0, false, true)])).await;
    assert_eq!(s.get("k").unwrap().lease, 0);
}

#[tokio::test]
async fn a_put_keeping_the_value_or_lease_of_an_absent_key_changes_nothing() {
    let mut s = Store::new();
    s.grant(5).await;
    s.put("present", "1", 0).await;
    let before = s.revision();
    for (iv, il) in [(true, false), (false, true), (true, true)] {
        let value = if iv { "" } else { "v" };
        let lease = if il { 0 } else { 5 };
        let req = ops(vec![
            keeping("present", "", 0, true, true),
            keeping("absent", value, lease, iv, il),
        ]);
        assert_eq!(s.run(req).await, Outcome::NotFound, "{iv} {il}");
        assert_eq!(s.revision(), before);
        assert_eq!(s.get("absent"), None);
        assert_eq!(s.get("present").unwrap().version, 1);
    }
    // Only the branch that runs is checked: a failure branch keeping an
    // absent key does not stop a transaction whose compares hold.
    let mut req = lease_cmp("present", "", 0, CompareResult::Equal);
    req.failure = vec![keeping("absent", "", 0, true, true)];
    assert!(s.txn(req.clone()).await.succeeded);
    req.compare[0].result = CompareResult::NotEqual;
    assert_eq!(s.run(req).await, Outcome::NotFound);
    // A deleted key is absent too.
    let del = RequestOp::DeleteRange(crate::txn::DeleteRangeRequest {
        key: b("present"),
        ..Default::default()
    });
    s.txn(ops(vec![del])).await;
    let req = ops(vec![keeping("present", "", 0, true, false)]);
    assert_eq!(s.run(req).await, Outcome::NotFound);
}

#[tokio::test]
async fn an_entry_giving_and_keeping_a_value_or_lease_is_refused_when_applied() {
    let mut s = Store::new();
    s.grant(5).await;
    s.put("k", "1", 0).await;
    let before = s.revision();
    for op in [
        keeping("k", "v", 0, true, false),
        keeping("k", "", 5, false, true),
    ] {
        let out = s.run(ops(vec![op])).await;
        assert!(matches!(out, Outcome::TxnRefused(_)), "{out:?}");
        assert_eq!(s.revision(), before);
    }
    // Keeping the lease of a key whose lease is gone cannot happen (a
    // revoke deletes its keys); attaching a missing lease still fails.
    let out = s.run(ops(vec![keeping("k", "", 9, true, false)])).await;
    assert_eq!(out, Outcome::LeaseRefused(LeaseRefusal::NotFound));
}

/// A put keeping the lease of a key already on it attaches no new key:
/// it is not refused when the lease holds `--max-keys-per-lease` keys,
/// and the lease's key count does not grow; a second key still is.
#[tokio::test]
async fn keeping_the_lease_of_a_lease_at_its_key_limit_counts_no_new_key() {
    let mut s = Store::new();
    s.grant(5).await;
    s.put("k", "v", 5).await;
    let at_limit = |request| TxnCommand {
        max_range_keys: 100,
        max_read_bytes: 1 << 20,
        max_keys_per_lease: 1,
        request,
    };
    let out = s
        .apply(at_limit(ops(vec![keeping("k", "w", 0, false, true)])).encode())
        .await;
    assert!(matches!(out, Outcome::Txn(_)), "{out:?}");
    let v = s.get("k").unwrap();
    assert_eq!((v.value.clone(), v.lease), (b("w"), 5));
    assert_eq!(s.keys_of(5), vec![b("k")]);
    let out = s
        .apply(
            at_limit(ops(vec![RequestOp::Put(PutRequest {
                key: b("k2"),
                lease: 5,
                ..PutRequest::default()
            })]))
            .encode(),
        )
        .await;
    assert!(
        matches!(
            out,
            Outcome::LeaseRefused(LeaseRefusal::TooManyKeys { limit: 1 })
        ),
        "{out:?}"
    );
    assert_eq!(s.keys_of(5), vec![b("k")]);
}
