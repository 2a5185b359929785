use super::*;
use crate::watch::check::{Delivery, WatchedEvent};

fn record() -> LeaseRecord {
    LeaseRecord {
        client: 1,
        id: 7,
        plan: Plan::KeepAlive,
        keys: vec!["lease-c1-l1-k0".into(), "lease-c1-l1-k1".into()],
        maybe_keys: Vec::new(),
        // Granted at 0 for 3 s, kept alive at 2 s for 3 s: until 5 s.
        promises: vec![
            Promise {
                send_us: 0,
                ttl_s: 3,
            },
            Promise {
                send_us: 2_000_000,
                ttl_s: 3,
            },
        ],
        reads: vec![ReadObs {
            key: "lease-c1-l1-k0".into(),
            send_us: 4_000_000,
            recv_us: 4_100_000,
            present: true,
        }],
        keepalive_gone: Vec::new(),
        revoked: None,
        late_puts: Vec::new(),
        last_ack_us: 2_100_000,
    }
}

#[test]
fn a_clean_lease_history_passes() {
    let mut l = record();
    // Absent after the last promise ran out: expired as it may.
    l.reads.push(ReadObs {
        key: "lease-c1-l1-k0".into(),
        send_us: 5_000_000,
        recv_us: 5_200_000,
        present: false,
    });
    l.keepalive_gone.push((5_300_000, 5_400_000));
    assert_eq!(check_safety(&l), Vec::<String>::new());
}

#[test]
fn a_key_read_absent_while_a_keepalive_promise_held_is_a_violation() {
    let mut l = record();
    l.reads.push(ReadObs {
        key: "lease-c1-l1-k1".into(),
        send_us: 4_500_000,
        recv_us: 4_600_000,
        present: false,
    });
    let f = check_safety(&l);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("lease-c1-l1-k1") && f[0].contains("5000000"),
        "{f:?}"
    );
}

#[test]
fn a_keepalive_acked_after_the_key_was_read_absent_is_a_violation() {
    let mut l = record();
    l.reads.push(ReadObs {
        key: "lease-c1-l1-k0".into(),
        send_us: 5_500_000,
        recv_us: 5_600_000,
        present: false,
    });
    assert!(check_safety(&l).is_empty());
    // The leader then acknowledges a keep-alive sent at 5.5 s.
    l.promises.push(Promise {
        send_us: 5_500_000,
        ttl_s: 3,
    });
    assert_eq!(check_safety(&l).len(), 1);
}

#[test]
fn a_keepalive_gone_while_promised_is_a_violation() {
    let mut l = record();
    l.keepalive_gone.push((4_000_000, 4_200_000));
    assert_eq!(check_safety(&l).len(), 1);
}

#[test]
fn reads_after_the_revoke_and_late_puts() {
    let mut l = record();
    l.plan = Plan::Revoke;
    l.revoked = Some((4_200_000, 40));
    l.reads.push(ReadObs {
        key: "lease-c1-l1-k0".into(),
        send_us: 4_300_000,
        recv_us: 4_400_000,
        present: false,
    });
    assert!(check_safety(&l).is_empty());
    l.late_puts.push("lease-c1-l1-k0".into());
    assert_eq!(check_safety(&l).len(), 1);
}

fn log_with_deletes(deletes: &[(&str, u64)]) -> WatchLog {
    let deliveries = deletes
        .iter()
        .map(|(k, r)| Delivery {
            revision: *r,
            node: "n1".into(),
            reached_before: 0,
            events: vec![WatchedEvent {
                key: k.as_bytes().to_vec(),
                change: Change::Delete,
            }],
        })
        .collect();
    WatchLog {
        watcher: 1,
        start_revision: 1,
        reached: 100,
        deliveries,
        ..WatchLog::default()
    }
}

#[test]
fn revoked_keys_must_all_be_deleted_at_the_revoke_revision() {
    let mut l = record();
    l.revoked = Some((4_200_000, 40));
    let good = log_with_deletes(&[("lease-c1-l1-k0", 40), ("lease-c1-l1-k1", 40)]);
    assert!(check_revoke(&l, &good).is_empty());
    let split = log_with_deletes(&[("lease-c1-l1-k0", 40), ("lease-c1-l1-k1", 41)]);
    let f = check_revoke(&l, &split);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("lease-c1-l1-k1"), "{f:?}");
    // A watch that did not get to the revision decides nothing.
    let mut short = split.clone();
    short.reached = 39;
    assert!(check_revoke(&l, &short).is_empty());
}

#[test]
fn an_expired_leases_keys_must_all_be_deleted_at_one_revision() {
    // No revoke: the leader's expiry deletes the keys, at a revision the
    // client never learns.
    let l = record();
    let good = log_with_deletes(&[("lease-c1-l1-k0", 40), ("lease-c1-l1-k1", 40)]);
    assert!(check_revoke(&l, &good).is_empty());
    assert!(check_revoke(&l, &log_with_deletes(&[])).is_empty());
    let split = log_with_deletes(&[("lease-c1-l1-k0", 40), ("lease-c1-l1-k1", 41)]);
    let f = check_revoke(&l, &split);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("lease-c1-l1-k1") && f[0].contains("40"),
        "{f:?}"
    );
    // One key deleted, the other never (the watch got past the delete).
    let half = log_with_deletes(&[("lease-c1-l1-k1", 40)]);
    let f = check_revoke(&l, &half);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("lease-c1-l1-k0"), "{f:?}");
}

#[test]
fn leftover_leases_fail_liveness() {
    assert!(check_liveness(&[], 10).is_empty());
    let f = check_liveness(
        &[Leftover {
            id: 7,
            keys: vec!["lease-c1-l1-k0".into()],
            lease_found: true,
        }],
        10,
    );
    assert_eq!(f.len(), 1);
    assert!(f[0].contains("lease 7"), "{f:?}");
}
