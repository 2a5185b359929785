//! Transactions on RocksDB: every compare target and result, branches,
//! one revision for all changes, range reads and deletes, `prev_kv`,
//! duplicate keys, the limits (decided alike whatever the batches), empty
//! keys, nested transactions, and snapshots carrying a transaction's
//! effects.

use raft_core::{EntryPayload, StateMachine};
use raft_log::RocksLog;

use super::test_support::snapshotting;
use super::*;
use crate::txn::codec::TxnCommand;
use crate::txn::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest,
    RequestOp, ResponseOp, TxnRequest, TxnResponse,
};

/// A store with snapshots, and its transaction entries' limits.
struct Store {
    _log: RocksLog,
    sm: KvStateMachine,
    next: u64,
    max_range_keys: u32,
    max_read_bytes: u64,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = snapshotting(dir.path(), 100);
        Self {
            _log: log,
            sm,
            next: 1,
            max_range_keys: 100,
            max_read_bytes: 1 << 20,
            _dir: dir,
        }
    }

    fn entry(&mut self, request: TxnRequest) -> Entry {
        let cmd = TxnCommand {
            max_range_keys: self.max_range_keys,
            max_read_bytes: self.max_read_bytes,
            max_keys_per_lease: 10,
            request,
        };
        let e = Entry {
            term: 1,
            index: self.next,
            payload: EntryPayload::Normal(cmd.encode()),
        };
        self.next += 1;
        e
    }

    async fn apply(&mut self, entries: &[Entry]) -> Vec<Outcome> {
        self.sm.apply(entries).await.unwrap()
    }

    /// Runs `req` as the next entry.
    async fn run(&mut self, req: TxnRequest) -> Outcome {
        let e = self.entry(req);
        self.apply(&[e]).await.remove(0)
    }

    /// Runs `req`, which must run.
    async fn txn(&mut self, req: TxnRequest) -> TxnResponse {
        match self.run(req).await {
            Outcome::Txn(r) => *r,
            other => panic!("the transaction did not run: {other:?}"),
        }
    }

    async fn put(&mut self, key: &str, value: &str) -> u64 {
        self.txn(ops(vec![put(key, value)])).await.revision
    }

    fn get(&self, key: &str) -> Option<Versioned> {
        self.sm.reader().get(key.as_bytes()).unwrap()
    }

    fn revision(&self) -> u64 {
        self.sm.reader().revisions().unwrap().current
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

fn ops(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success,
        failure: Vec::new(),
    }
}

fn put(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    })
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(end),
        ..RangeRequest::default()
    }
}

fn delete(key: &str, end: &str, prev_kv: bool) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: b(key),
        range_end: b(end),
        prev_kv,
    })
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare {
        key: b(key),
        range_end: Bytes::new(),
        target,
        result,
    }
}

fn kv(key: &str, value: &str, create: u64, m: u64, version: u64) -> KeyValue {
    KeyValue {
        key: b(key),
        create_revision: create,
        mod_revision: m,
        version,
        value: b(value),
        lease: 0,
    }
}

fn range_of(r: &ResponseOp) -> &crate::txn::RangeResponse {
    match r {
        ResponseOp::Range(r) => r,
        other => panic!("not a range response: {other:?}"),
    }
}

#[tokio::test]
async fn each_compare_target_and_result_on_present_and_absent_keys() {
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{CreateRevision, ModRevision, Value, Version};
    let mut s = Store::new();
    s.put("a", "m").await; // 1: created
    s.put("a", "m").await; // 2: version 2
    let cases = [
        (cmp("a", Version(2), Equal), true),
        (cmp("a", Version(2), NotEqual), false),
        (cmp("a", Version(1), Greater), true),
        (cmp("a", Version(3), Less), true),
        (cmp("a", Version(2), Less), false),
        (cmp("a", CreateRevision(1), Equal), true),
        (cmp("a", CreateRevision(1), Greater), false),
        (cmp("a", ModRevision(2), Equal), true),
        (cmp("a", ModRevision(3), Less), true),
        (cmp("a", Value(b("m")), Equal), true),
        (cmp("a", Value(b("l")), Greater), true),
        (cmp("a", Value(b("n")), Less), true),
        (cmp("a", Value(b("m")), NotEqual), false),
        // An absent key: version and revisions 0, a value compare false.
        (cmp("zz", Version(0), Equal), true),
        (cmp("zz", CreateRevision(0), Equal), true),
        (cmp("zz", ModRevision(1), Less), true),
        (cmp("zz", Value(b("")), Equal), false),
        (cmp("zz", Value(b("x")), NotEqual), false),
    ];
    for (c, want) in cases {
        let req = TxnRequest {
            compare: vec![c.clone()],
            ..TxnRequest::default()
        };
        assert_eq!(s.txn(req).await.succeeded, want, "{c:?}");
    }
    // A compare over a range holds only if it holds for every key.
    s.put("a2", "m").await;
    let over = |v: i64| Compare {
        range_end: b("b"),
        ..cmp("a", Version(v), Greater)
    };
    let all = TxnRequest {
        compare: vec![over(0)],
        ..TxnRequest::default()
    };
    assert!(s.txn(all).await.succeeded);
    let not_all = TxnRequest {
        compare: vec![over(1)],
        ..TxnRequest::default()
    };
    assert!(!s.txn(not_all).await.succeeded);
}

#[tokio::test]
async fn the_branch_that_runs_is_decided_by_all_compares() {
    let mut s = Store::new();
    s.put("x", "1").await;
    let cas = |expect: &str, new: &str| TxnRequest {
        compare: vec![
            cmp("x", CompareTarget::Value(b(expect)), CompareResult::Equal),
            cmp("x", CompareTarget::Version(0), CompareResult::Greater),
        ],
        success: vec![put("x", new)],
        failure: vec![RequestOp::Range(range("x", ""))],
    };
    let won = s.txn(cas("1", "2")).await;
    assert!(won.succeeded);
    assert_eq!(won.responses.len(), 1);
    assert!(matches!(won.responses[0], ResponseOp::Put(_)));
    let lost = s.txn(cas("1", "3")).await;
    assert!(!lost.succeeded);
    assert_eq!(
        range_of(&lost.responses[0]).kvs,
        vec![kv("x", "2", 1, 2, 2)]
    );
    assert_eq!(s.get("x").unwrap().value, b("2"));
}

#[tokio::test]
async fn every_change_of_a_transaction_has_its_one_revision_and_none_without_changes() {
    let mut s = Store::new();
    s.put("old", "o").await; // 1
    let r = s
        .txn(ops(vec![
            put("a", "1"),
            put("b", "1"),
            delete("old", "", false),
        ]))
        .await;
    assert_eq!(r.revision, 2);
    for k in ["a", "b"] {
        let v = s.get(k).unwrap();
        assert_eq!((v.rev, v.create_rev, v.version), (2, 2, 1), "{k}");
    }
    assert_eq!(s.get("old"), None);
    assert_eq!(s.revision(), 2);
    // Reads, and a delete of nothing, make no revision.
    let r = s
        .txn(ops(vec![
            RequestOp::Range(range("a", "")),
            delete("none", "", false),
        ]))
        .await;
    assert_eq!(r.revision, 2);
    assert_eq!(s.revision(), 2);
    // The history has both values of "old" at their revisions.
    let reader = s.sm.reader();
    assert_eq!(
        reader.get_at(b"old", Some(1)).unwrap().0.unwrap().value,
        b("o")
    );
    assert_eq!(reader.get_at(b"old", Some(2)).unwrap().0, None);
}

#[tokio::test]
async fn ranges_see_earlier_operations_and_deletes_answer_prev_kvs() {
    let mut s = Store::new();
    s.txn(ops(vec![put("p1", "1"), put("p2", "2"), put("p3", "3")]))
        .await; // 1
    let limited = RangeRequest {
        limit: 1,
        ..range("p", "q")
    };
    let counted = RangeRequest {
        count_only: true,
        ..range("p", "q")
    };
    let keys = RangeRequest {
        keys_only: true,
        ..range("p", "q")
    };
    let r = s
        .txn(ops(vec![
            RequestOp::Range(limited),
            RequestOp::Range(counted),
            RequestOp::Range(keys),
            delete("p", "q", true),
            RequestOp::Range(range("p", "q")),
            put("q", "new"),
            RequestOp::Range(range("q", "")),
        ]))
        .await;
    let first = range_of(&r.responses[0]);
    assert_eq!((first.count, first.more), (3, true));
    assert_eq!(first.kvs, vec![kv("p1", "1", 1, 1, 1)]);
    let second = range_of(&r.responses[1]);
    assert_eq!((second.count, second.more, second.kvs.len()), (3, false, 0));
    let third = range_of(&r.responses[2]);
    assert_eq!(third.kvs[2], kv("p3", "", 1, 1, 1));
    match &r.responses[3] {
        ResponseOp::DeleteRange(d) => {
            assert_eq!(d.deleted, 3);
            assert_eq!(d.prev_kvs[1], kv("p2", "2", 1, 1, 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(range_of(&r.responses[4]).count, 0);
    assert_eq!(range_of(&r.responses[6]).kvs, vec![kv("q", "new", 2, 2, 1)]);
    // `\0` as range end: every key from the key on.
    let all = s.txn(ops(vec![RequestOp::Range(range("a", "\0"))])).await;
    assert_eq!(range_of(&all.responses[0]).count, 1);
}

#[tokio::test]
async fn put_answers_the_previous_value_when_asked() {
    let mut s = Store::new();
    s.put("k", "v1").await;
    let r = s
        .txn(ops(vec![RequestOp::Put(PutRequest {
            key: b("k"),
            value: b("v2"),
            prev_kv: true,
            ..PutRequest::default()
        })]))
        .await;
    match &r.responses[0] {
        ResponseOp::Put(p) => assert_eq!(p.prev_kv, Some(kv("k", "v1", 1, 1, 1))),
        other => panic!("{other:?}"),
    }
    let v = s.get("k").unwrap();
    assert_eq!((v.version, v.create_rev, v.rev), (2, 1, 2));
}

#[tokio::test]
async fn nested_transactions_compare_the_state_before_the_outer_one() {
    let mut s = Store::new();
    let nested = TxnRequest {
        compare: vec![cmp("a", CompareTarget::Version(0), CompareResult::Equal)],
        success: vec![put("b", "inner-saw-no-a")],
        failure: vec![put("b", "inner-saw-a")],
    };
    let r = s
        .txn(ops(vec![put("a", "1"), RequestOp::Txn(nested)]))
        .await;
    match &r.responses[1] {
        ResponseOp::Txn(t) => assert!(t.succeeded && t.revision == 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("b").unwrap().value, b("inner-saw-no-a"));
}

#[tokio::test]
async fn a_key_written_twice_or_an_empty_key_is_refused_and_changes_nothing() {
    let mut s = Store::new();
    for req in [
        ops(vec![put("a", "1"), put("a", "2")]),
        ops(vec![delete("a", "b", false), put("a1", "2")]),
        ops(vec![put("", "1")]),
        ops(vec![RequestOp::Range(range("", "\0"))]),
        // A put both giving and keeping the value.
        ops(vec![RequestOp::Put(PutRequest {
            key: b("a"),
            value: b("1"),
            ignore_value: true,
            ..PutRequest::default()
        })]),
    ] {
        assert!(
            matches!(s.run(req.clone()).await, Outcome::TxnRefused(_)),
            "{req:?}"
        );
    }
    assert_eq!(s.revision(), 0);
    // A put in both branches of a nested transaction is fine: one runs.
    let both = TxnRequest {
        success: vec![put("a", "then")],
        failure: vec![put("a", "else")],
        ..TxnRequest::default()
    };
    s.txn(ops(vec![RequestOp::Txn(both)])).await;
    assert_eq!(s.get("a").unwrap().value, b("then"));
}

#[tokio::test]
async fn a_range_over_the_limit_is_refused_whatever_the_batch_changed_before() {
    let mut s = Store::new();
    s.max_range_keys = 3;
    s.txn(ops(vec![
        put("k1", "v"),
        put("k2", "v"),
        put("k3", "v"),
        put("k4", "v"),
    ]))
    .await;
    let wide = || ops(vec![delete("k", "l", true)]);
    assert!(matches!(s.run(wide()).await, Outcome::TxnRefused(_)));
    assert_eq!(s.get("k1").unwrap().value, b("v"));
    assert_eq!(s.revision(), 1);
    // In one batch with a delete of k4 before it, the range holds 3 keys
    // (the store's view still shows 4): it runs, as it would alone.
    let first = s.entry(ops(vec![delete("k4", "", false)]));
    let second = s.entry(wide());
    let out = s.apply(&[first, second]).await;
    match &out[1] {
        Outcome::Txn(t) => assert_eq!(t.revision, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("k1"), None);
    // The bytes a transaction reads are bounded too.
    s.max_read_bytes = 10;
    s.put("big", "0123456789").await;
    let read = ops(vec![RequestOp::Range(range("big", ""))]);
    assert!(matches!(s.run(read).await, Outcome::TxnRefused(_)));
    let keys_only = ops(vec![RequestOp::Range(RangeRequest {
        keys_only: true,
        ..range("big", "")
    })]);
    assert_eq!(range_of(&s.txn(keys_only).await.responses[0]).count, 1);
}

/// The limit on keys bounds every range of a transaction together (ranges,
/// range deletes and range compares): an entry of many ranges, nested past
/// `--max-txn-ops` per level, must not make every replica's apply read
/// ops × `--max-txn-range-keys` records.
#[tokio::test]
async fn the_ranges_of_one_transaction_share_one_budget_of_keys() {
    let mut s = Store::new();
    s.max_range_keys = 4;
    s.txn(ops(vec![put("k1", "v"), put("k2", "v"), put("k3", "v")]))
        .await;
    let count = || {
        RequestOp::Range(RangeRequest {
            count_only: true,
            ..range("k", "l")
        })
    };
    let one = s.txn(ops(vec![count()])).await;
    assert_eq!(range_of(&one.responses[0]).count, 3);
    // Two ranges of 3 keys visit 6 > 4 keys.
    assert!(matches!(
        s.run(ops(vec![count(), count()])).await,
        Outcome::TxnRefused(_)
    ));
    let nested = ops(vec![count(), RequestOp::Txn(ops(vec![count()]))]);
    assert!(matches!(s.run(nested).await, Outcome::TxnRefused(_)));
    // Compares over ranges visit keys too.
    let over_range = Compare {
        range_end: b("l"),
        ..cmp("k", CompareTarget::Version(0), CompareResult::Greater)
    };
    let compares = TxnRequest {
        compare: vec![over_range.clone(), over_range],
        ..TxnRequest::default()
    };
    assert!(matches!(s.run(compares).await, Outcome::TxnRefused(_)));
    // Single keys and empty ranges (an end before the key) cost nothing.
    let cheap = ops(vec![
        count(),
        RequestOp::Range(range("k1", "")),
        RequestOp::Range(range("k3", "k1")),
        put("k2", "w"),
    ]);
    let r = s.txn(cheap).await;
    assert_eq!(range_of(&r.responses[2]).count, 0);
    assert_eq!(s.revision(), 6);
}

/// etcd (3.4) takes a put in one nested transaction and a delete of the
/// same key in a later one: the key ends deleted at the transaction's
/// revision, and reads at earlier revisions still see what was before.
#[tokio::test]
async fn a_key_put_then_deleted_in_one_transaction_ends_deleted_with_its_history() {
    let mut s = Store::new();
    s.put("k", "old").await; // 1
    let nested = |op| RequestOp::Txn(ops(vec![op]));
    let r = s
        .txn(ops(vec![
            nested(put("k", "mid")),
            nested(delete("k", "", true)),
            nested(put("n", "new")),
            nested(delete("n", "", false)),
        ]))
        .await; // 2
    assert_eq!(r.revision, 2);
    match &r.responses[1] {
        ResponseOp::Txn(t) => match &t.responses[0] {
            ResponseOp::DeleteRange(d) => assert_eq!(d.prev_kvs, vec![kv("k", "mid", 1, 2, 2)]),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!((s.get("k"), s.get("n")), (None, None));
    let reader = s.sm.reader();
    let at = |key: &str, rev| reader.get_at(key.as_bytes(), Some(rev)).unwrap().0;
    assert_eq!(at("k", 1).unwrap().value, b("old"));
    assert_eq!((at("k", 2), at("n", 1), at("n", 2)), (None, None, None));
    // Put again: a new life of the key, created at its revision.
    s.put("k", "again").await; // 3
    let k = s.get("k").unwrap();
    assert_eq!((k.create_rev, k.version), (3, 1));
    // The same in a snapshot, and after compacting past it.
    let meta = SnapshotMeta {
        last_log_id: raft_core::LogId::new(1, 3),
        membership: raft_core::Membership::new([1, 2, 3]),
    };
    let data = s.sm.build_snapshot(&meta).await.unwrap();
    let mut other = Store::new();
    other.sm.install_snapshot(&meta, data).await.unwrap();
    assert_eq!(
        other.sm.reader().digest().unwrap(),
        s.sm.reader().digest().unwrap()
    );
    let compact = Entry {
        term: 1,
        index: 4,
        payload: EntryPayload::Normal(crate::command::encode_compact(3)),
    };
    for store in [&mut s, &mut other] {
        let out = store.apply(std::slice::from_ref(&compact)).await;
        assert_eq!(out, vec![Outcome::Compacted { revision: 3 }]);
    }
    assert_eq!(
        other.sm.reader().digest().unwrap(),
        s.sm.reader().digest().unwrap()
    );
    assert_eq!(s.sm.reader().get_at(b"k", Some(3)).unwrap().0, Some(k));
}

#[tokio::test]
async fn a_snapshot_carries_the_effects_of_transactions() {
    let mut s = Store::new();
    s.txn(ops(vec![put("a", "1"), put("b", "2")])).await;
    s.txn(ops(vec![delete("a", "", false), put("c", "3")]))
        .await;
    let meta = SnapshotMeta {
        last_log_id: raft_core::LogId::new(1, 2),
        membership: raft_core::Membership::new([1, 2, 3]),
    };
    let data = s.sm.build_snapshot(&meta).await.unwrap();
    let mut other = Store::new();
    other.sm.install_snapshot(&meta, data).await.unwrap();
    assert_eq!(
        other.sm.reader().digest().unwrap(),
        s.sm.reader().digest().unwrap()
    );
    assert_eq!(other.get("c").unwrap().rev, 2);
    assert_eq!(other.get("a"), None);
    let past = other.sm.reader().get_at(b"a", Some(1)).unwrap().0;
    assert_eq!(past.unwrap().value, b("1"));
}

/// A random transaction over keys `k0`..`k3`, for the replay property:
/// compares of every kind, puts, range reads and deletes, nested
/// transactions, duplicate keys sometimes, and limits small enough that
/// some are refused when applied.
pub(super) fn random_txn(rng: &mut rand_chacha::ChaCha8Rng, index: u64) -> Bytes {
    use rand::Rng;
    fn key(rng: &mut rand_chacha::ChaCha8Rng) -> Bytes {
        Bytes::from(format!("k{}", rng.gen_range(0..4)))
    }
    fn end(rng: &mut rand_chacha::ChaCha8Rng) -> Bytes {
        match rng.gen_range(0..4) {
            0 | 1 => Bytes::new(),
            2 => Bytes::from_static(b"\0"),
            _ => Bytes::from(format!("k{}", rng.gen_range(1..=4))),
        }
    }
    fn ops(rng: &mut rand_chacha::ChaCha8Rng, index: u64, depth: u32) -> Vec<RequestOp> {
        (0..rng.gen_range(0..4))
            .map(|_| match rng.gen_range(0..10) {
                0..=3 => {
                    // Sometimes keeping the key's value or lease (as the
                    // entry finds it: absent keys fail the transaction).
                    let ignore_value = rng.gen_bool(0.15);
                    let ignore_lease = rng.gen_bool(0.15);
                    RequestOp::Put(PutRequest {
                        key: key(rng),
                        value: if ignore_value {
                            Bytes::new()
                        } else {
                            Bytes::from(format!("t{index}"))
                        },
                        prev_kv: rng.gen_bool(0.5),
                        lease: if !ignore_lease && rng.gen_bool(0.2) {
                            rng.gen_range(1..=3)
                        } else {
                            0
                        },
                        ignore_value,
                        ignore_lease,
                    })
                }
                4..=5 => RequestOp::DeleteRange(DeleteRangeRequest {
                    key: key(rng),
                    range_end: end(rng),
                    prev_kv: rng.gen_bool(0.5),
                }),
                6 if depth < 2 => RequestOp::Txn(txn(rng, index, depth + 1)),
                _ => RequestOp::Range(RangeRequest {
                    key: key(rng),
                    range_end: end(rng),
                    limit: rng.gen_range(0..3),
                    keys_only: rng.gen_bool(0.3),
                    count_only: rng.gen_bool(0.2),
                }),
            })
            .collect()
    }
    fn txn(rng: &mut rand_chacha::ChaCha8Rng, index: u64, depth: u32) -> TxnRequest {
        let compare = (0..rng.gen_range(0..3))
            .map(|_| {
                let n = rng.gen_range(0..=index as i64 + 1);
                let target = match rng.gen_range(0..5) {
                    0 => CompareTarget::Version(rng.gen_range(0..4)),
                    1 => CompareTarget::CreateRevision(n),
                    2 => CompareTarget::ModRevision(n),
                    3 => CompareTarget::Lease(rng.gen_range(0..=3)),
                    _ => CompareTarget::Value(Bytes::from(format!("t{n}"))),
                };
                let result = [
                    CompareResult::Equal,
                    CompareResult::NotEqual,
                    CompareResult::Greater,
                    CompareResult::Less,
                ][rng.gen_range(0..4)];
                Compare {
                    key: key(rng),
                    range_end: end(rng),
                    target,
                    result,
                }
            })
            .collect();
        TxnRequest {
            compare,
            success: ops(rng, index, depth),
            failure: ops(rng, index, depth),
        }
    }
    let cmd = TxnCommand {
        max_range_keys: rng.gen_range(1..=5),
        max_read_bytes: rng.gen_range(0..40),
        max_keys_per_lease: rng.gen_range(1..=3),
        request: txn(rng, index, 0),
    };
    cmd.encode()
}
