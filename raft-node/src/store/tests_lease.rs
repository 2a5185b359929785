//! Leases on RocksDB: grants (chosen and given ids, limits), keys attached
//! by puts and transactions, detached by overwrites and deletes, revokes
//! deleting every attached key at one revision, and snapshots carrying
//! leases to another replica.

use raft_core::{EntryPayload, StateMachine};
use raft_log::RocksLog;

use super::test_support::snapshotting;
use super::*;
use crate::command::{Command, Op, Precondition};
use crate::lease::{LeaseGrant, LeaseInfo, LeaseRefusal, LeaseRevoke};
use crate::txn::codec::TxnCommand;
use crate::txn::{PutRequest, RequestOp, TxnRequest};

/// A store with snapshots, applying one entry at a time.
struct Store {
    _log: RocksLog,
    sm: KvStateMachine,
    next: u64,
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
            _dir: dir,
        }
    }

    async fn apply_at(&mut self, term: u64, payload: Bytes) -> Outcome {
        let e = Entry {
            term,
            index: self.next,
            payload: EntryPayload::Normal(payload),
        };
        self.next += 1;
        self.sm.apply(&[e]).await.unwrap().remove(0)
    }

    async fn apply(&mut self, payload: Bytes) -> Outcome {
        self.apply_at(1, payload).await
    }

    async fn grant(&mut self, id: u64, ttl_secs: u64, max_leases: u64) -> Outcome {
        let g = LeaseGrant {
            id,
            ttl_secs,
            max_leases,
        };
        self.apply(g.encode()).await
    }

    async fn revoke(&mut self, id: u64) -> Outcome {
        self.apply(LeaseRevoke { id, expiry_term: 0 }.encode())
            .await
    }

    async fn put(&mut self, key: &str, lease: u64, max_keys: u32) -> Outcome {
        let value = Bytes::from_static(b"v");
        let op = if lease == 0 {
            Op::Put(value)
        } else {
            Op::PutLeased {
                value,
                lease,
                max_keys,
            }
        };
        let cmd = Command {
            op,
            key: Bytes::from(key.to_owned()),
            precondition: Precondition::None,
            idempotency_key: None,
            principal: None,
        };
        self.apply(cmd.encode()).await
    }

    async fn delete(&mut self, key: &str) -> Outcome {
        let cmd = Command {
            op: Op::Delete,
            key: Bytes::from(key.to_owned()),
            precondition: Precondition::None,
            idempotency_key: None,
            principal: None,
        };
        self.apply(cmd.encode()).await
    }

    async fn txn_puts(&mut self, puts: &[(&str, u64)], max_keys: u32) -> Outcome {
        let success = puts
            .iter()
            .map(|(k, lease)| {
                RequestOp::Put(PutRequest {
                    key: Bytes::from((*k).to_owned()),
                    value: Bytes::from_static(b"t"),
                    lease: *lease,
                    ..PutRequest::default()
                })
            })
            .collect();
        let cmd = TxnCommand {
            max_range_keys: 100,
            max_read_bytes: 1 << 20,
            max_keys_per_lease: max_keys,
            request: TxnRequest {
                success,
                ..TxnRequest::default()
            },
        };
        self.apply(cmd.encode()).await
    }

    fn lease_of(&self, key: &str) -> Option<u64> {
        self.sm
            .reader()
            .get(key.as_bytes())
            .unwrap()
            .map(|v| v.lease)
    }

    fn lease(&self, id: u64) -> Option<LeaseInfo> {
        self.sm.reader().lease(id).unwrap()
    }

    fn keys(&self, id: u64) -> Vec<Bytes> {
        self.sm.reader().lease_keys(id, 100).unwrap()
    }
}

fn granted(id: u64, ttl_secs: u64) -> Outcome {
    Outcome::LeaseGranted { id, ttl_secs }
}

#[tokio::test]
async fn grants_choose_ids_refuse_duplicates_and_respect_the_limits() {
    let mut s = Store::new();
    // Id 0: chosen from the entry's index.
    assert_eq!(s.grant(0, 10, 5).await, granted(1, 10));
    assert_eq!(s.grant(7, 20, 5).await, granted(7, 20));
    assert_eq!(
        s.grant(7, 20, 5).await,
        Outcome::LeaseRefused(LeaseRefusal::Exists)
    );
    // Index 4 is free; index 7's id is taken, so the next one is chosen.
    assert_eq!(s.grant(0, 5, 5).await, granted(4, 5));
    s.next = 7;
    assert_eq!(s.grant(0, 5, 5).await, granted(8, 5));
    assert_eq!(
        s.grant(0, crate::lease::MAX_TTL_SECS + 1, 5).await,
        Outcome::LeaseRefused(LeaseRefusal::TtlTooLarge)
    );
    // Four leases exist: a limit of four refuses a fifth.
    assert_eq!(
        s.grant(0, 5, 4).await,
        Outcome::LeaseRefused(LeaseRefusal::TooManyLeases { limit: 4 })
    );
    let ids: Vec<u64> =
        s.sm.reader()
            .leases()
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
    assert_eq!(ids, vec![1, 4, 7, 8]);
    // A revoke frees a place.
    assert!(matches!(s.revoke(4).await, Outcome::LeaseRevoked { .. }));
    assert_eq!(s.grant(0, 5, 4).await, granted(11, 5));
    assert_eq!(
        s.revoke(4).await,
        Outcome::LeaseRefused(LeaseRefusal::NotFound)
    );
}

#[tokio::test]
async fn puts_attach_keys_and_overwrites_or_deletes_detach_them() {
    let mut s = Store::new();
    s.grant(5, 10, 100).await;
    s.grant(6, 10, 100).await;
    // A lease that does not exist: refused, nothing written.
    let rev = s.sm.reader().revisions().unwrap().current;
    assert_eq!(
        s.put("a", 9, 10).await,
        Outcome::LeaseRefused(LeaseRefusal::NotFound)
    );
    assert_eq!(s.lease_of("a"), None);
    assert_eq!(s.sm.reader().revisions().unwrap().current, rev);
    assert!(matches!(s.put("a", 5, 10).await, Outcome::Applied { .. }));
    assert!(matches!(s.put("b", 5, 10).await, Outcome::Applied { .. }));
    assert_eq!(s.lease_of("a"), Some(5));
    assert_eq!(s.keys(5), vec![Bytes::from("a"), Bytes::from("b")]);
    assert_eq!(s.lease(5).unwrap().keys, 2);
    // Moved to another lease, then a put without one, then a delete.
    s.put("a", 6, 10).await;
    assert_eq!(
        (s.lease_of("a"), s.keys(5), s.keys(6)),
        (Some(6), vec![Bytes::from("b")], vec![Bytes::from("a")])
    );
    s.put("a", 0, 10).await;
    assert_eq!((s.lease_of("a"), s.lease(6).unwrap().keys), (Some(0), 0));
    assert!(s.keys(6).is_empty());
    s.delete("b").await;
    assert!(s.keys(5).is_empty());
    assert_eq!(s.lease(5).unwrap().keys, 0);
    // The key limit: two keys at most; the same key again is no new one.
    s.put("x", 5, 2).await;
    s.put("y", 5, 2).await;
    assert!(matches!(s.put("y", 5, 2).await, Outcome::Applied { .. }));
    assert_eq!(
        s.put("z", 5, 2).await,
        Outcome::LeaseRefused(LeaseRefusal::TooManyKeys { limit: 2 })
    );
    assert_eq!(s.lease_of("z"), None);
}

#[tokio::test]
async fn a_transaction_with_a_missing_lease_or_too_many_keys_changes_nothing() {
    let mut s = Store::new();
    s.grant(5, 10, 100).await;
    let out = s.txn_puts(&[("a", 0), ("b", 9)], 10).await;
    assert_eq!(out, Outcome::LeaseRefused(LeaseRefusal::NotFound));
    assert_eq!(s.lease_of("a"), None);
    let out = s.txn_puts(&[("a", 5), ("b", 5), ("c", 5)], 2).await;
    assert_eq!(
        out,
        Outcome::LeaseRefused(LeaseRefusal::TooManyKeys { limit: 2 })
    );
    assert_eq!(s.lease_of("a"), None);
    let Outcome::Txn(resp) = s.txn_puts(&[("a", 5), ("b", 5)], 2).await else {
        panic!("the transaction did not run");
    };
    assert_eq!((s.lease_of("a"), s.lease_of("b")), (Some(5), Some(5)));
    assert_eq!(s.lease(5).unwrap().keys, 2);
    assert!(resp.revision > 0);
}

#[tokio::test]
async fn a_revoke_deletes_every_attached_key_at_one_revision() {
    let mut s = Store::new();
    s.grant(5, 10, 100).await;
    s.put("a", 5, 10).await;
    s.put("b", 5, 10).await;
    s.put("c", 0, 10).await;
    let before = s.sm.reader().revisions().unwrap().current;
    let Outcome::LeaseRevoked { rev } = s.revoke(5).await else {
        panic!("not revoked");
    };
    assert!(rev > before);
    let r = s.sm.reader();
    assert_eq!(r.revisions().unwrap().current, rev);
    for k in ["a", "b"] {
        assert_eq!(r.get(k.as_bytes()).unwrap(), None, "{k}");
        assert!(
            r.get_at(k.as_bytes(), Some(rev - 1)).unwrap().0.is_some(),
            "{k}"
        );
    }
    assert!(r.get(b"c").unwrap().is_some());
    assert_eq!(r.lease(5).unwrap(), None);
    assert!(s.keys(5).is_empty());
    // A revoke of a lease without keys makes no revision.
    s.grant(6, 10, 100).await;
    assert_eq!(s.revoke(6).await, Outcome::LeaseRevoked { rev });
}

#[tokio::test]
async fn an_expiry_decided_in_another_term_changes_nothing() {
    let mut s = Store::new();
    s.grant(5, 10, 100).await;
    s.put("a", 5, 10).await;
    let stale = LeaseRevoke {
        id: 5,
        expiry_term: 1,
    };
    assert_eq!(s.apply_at(2, stale.encode()).await, Outcome::Noop);
    assert_eq!(s.lease_of("a"), Some(5));
    let current = LeaseRevoke {
        id: 5,
        expiry_term: 2,
    };
    assert!(matches!(
        s.apply_at(2, current.encode()).await,
        Outcome::LeaseRevoked { .. }
    ));
    assert_eq!(s.lease_of("a"), None);
}

#[tokio::test]
async fn a_snapshot_carries_the_leases_and_their_keys() {
    let mut a = Store::new();
    a.grant(5, 10, 100).await;
    a.put("a", 5, 10).await;
    a.put("b", 5, 10).await;
    let last = a.next - 1;
    let meta = SnapshotMeta {
        last_log_id: raft_core::LogId::new(1, last),
        membership: raft_core::Membership::new([1, 2, 3]),
    };
    let data = a.sm.build_snapshot(&meta).await.unwrap();
    let mut b = Store::new();
    b.sm.install_snapshot(&meta, data).await.unwrap();
    b.next = last + 1;
    assert_eq!(b.lease(5), a.lease(5));
    assert_eq!(b.keys(5), a.keys(5));
    assert_eq!(b.lease_of("a"), Some(5));
    assert_eq!(
        b.sm.reader().digest().unwrap(),
        a.sm.reader().digest().unwrap()
    );
    // The replica goes on alike: a revoke deletes the keys there too.
    assert_eq!(a.revoke(5).await, b.revoke(5).await);
    assert_eq!((b.lease_of("a"), b.lease_of("b")), (None, None));
    assert_eq!(
        b.sm.reader().digest().unwrap(),
        a.sm.reader().digest().unwrap()
    );
}

/// Past versions keep the lease they were written with: a read at a past
/// revision and the change history (what watches replay) show it, as the
/// current record does; a key written without a lease shows 0.
#[tokio::test]
async fn past_versions_and_changes_keep_their_lease() {
    let mut s = Store::new();
    s.grant(5, 10, 100).await;
    s.put("a", 5, 10).await;
    let leased = s.sm.reader().revisions().unwrap().current;
    s.put("a", 0, 10).await;
    let unleased = s.sm.reader().revisions().unwrap().current;
    s.put("a", 5, 10).await;
    s.revoke(5).await;
    let r = s.sm.reader();
    let at = |rev| r.get_at(b"a", Some(rev)).unwrap().0.map(|v| v.lease);
    assert_eq!(at(leased), Some(5), "the version written with lease 5");
    assert_eq!(at(unleased), Some(0), "the version written without one");
    let all = crate::watch::KeyRange::prefix(Bytes::new());
    let limit = PageLimit {
        events: 100,
        bytes: 1 << 20,
    };
    let page = r.changes(&all, leased - 1, s.next - 1, limit).unwrap();
    let seen: Vec<_> = page
        .events
        .iter()
        .map(|e| (e.kv.lease, e.prev_kv.as_ref().map(|p| p.lease)))
        .collect();
    // Put with 5, put without (over 5), put with 5 (over 0), the revoke's
    // delete (over 5).
    assert_eq!(
        seen,
        vec![(5, None), (0, Some(5)), (5, Some(0)), (0, Some(5))],
        "{:?}",
        page.events
    );
}
