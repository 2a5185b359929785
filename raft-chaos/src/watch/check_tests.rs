//! Hand-made histories: each wrong watch must fail the check, with the
//! key, revision and watcher named; each right one must pass.

use super::*;

fn put(client: u64, key: &str, value: &str, outcome: WriteOutcome) -> WriteRecord {
    WriteRecord {
        client,
        key: key.as_bytes().to_vec(),
        change: Change::Put(value.as_bytes().to_vec()),
        outcome,
    }
}

fn del(client: u64, key: &str, outcome: WriteOutcome) -> WriteRecord {
    WriteRecord {
        client,
        key: key.as_bytes().to_vec(),
        change: Change::Delete,
        outcome,
    }
}

fn ev(key: &str, value: Option<&str>) -> WatchedEvent {
    WatchedEvent {
        key: key.as_bytes().to_vec(),
        change: value.map_or(Change::Delete, |v| Change::Put(v.as_bytes().to_vec())),
    }
}

/// A watch of `range` from revision 1 that delivered `(revision, key,
/// value or None for a delete)` and got to `reached`.
fn watch(range: KeyRange, got: &[(u64, &str, Option<&str>)], reached: u64) -> WatchLog {
    WatchLog {
        watcher: 7,
        range: Some(range),
        start_revision: 1,
        deliveries: got
            .iter()
            .enumerate()
            .map(|(i, &(revision, k, v))| Delivery {
                revision,
                events: vec![ev(k, v)],
                node: "n1".into(),
                // No progress event: as far as the deliveries before it.
                reached_before: got[..i].iter().map(|g| g.0).max().unwrap_or(0),
            })
            .collect(),
        reached,
        ..WatchLog::default()
    }
}

/// Three acknowledged writes of `a` and one of `b`, at revisions 2, 3, 5, 6
/// (4 is a membership change: no revision).
fn writes() -> Vec<WriteRecord> {
    vec![
        put(1, "a", "v1", WriteOutcome::Acked(2)),
        put(2, "b", "v2", WriteOutcome::Acked(3)),
        del(1, "a", WriteOutcome::Acked(5)),
        put(3, "a", "v3", WriteOutcome::Acked(6)),
    ]
}

fn run(writes: &[WriteRecord], log: &WatchLog, target: u64) -> Vec<WatchFinding> {
    let ix = WriteIndex::new(writes);
    check_watch(&ix, log, target, false)
}

/// The one finding of a check, which must name the key and revision.
fn only(findings: &[WatchFinding], key: &str, rev: u64, says: &str) {
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.key.as_deref(), Some(key.as_bytes()), "{f:?}");
    assert_eq!(f.revision, Some(rev), "{f:?}");
    assert_eq!(f.watcher, 7, "{f:?}");
    assert!(f.detail.contains(says), "{f:?} should say {says:?}");
    assert!(f.detail.contains("watcher 7"), "{f:?}");
}

#[test]
fn a_watch_that_delivers_every_write_once_in_order_passes() {
    let log = watch(
        KeyRange::all(),
        &[
            (2, "a", Some("v1")),
            (3, "b", Some("v2")),
            (5, "a", None),
            (6, "a", Some("v3")),
        ],
        6,
    );
    assert_eq!(run(&writes(), &log, 6), vec![]);
}

#[test]
fn a_prefix_watch_needs_only_its_own_keys() {
    let log = watch(
        KeyRange::prefix("a"),
        &[(2, "a", Some("v1")), (5, "a", None), (6, "a", Some("v3"))],
        6,
    );
    assert_eq!(run(&writes(), &log, 6), vec![]);
}

#[test]
fn a_missing_acknowledged_write_fails() {
    let log = watch(
        KeyRange::all(),
        &[(2, "a", Some("v1")), (5, "a", None), (6, "a", Some("v3"))],
        6,
    );
    only(&run(&writes(), &log, 6), "b", 3, "is missing");
}

#[test]
fn a_missing_delete_fails() {
    let log = watch(
        KeyRange::prefix("a"),
        &[(2, "a", Some("v1")), (6, "a", Some("v3"))],
        6,
    );
    only(
        &run(&writes(), &log, 6),
        "a",
        5,
        "delete a by client 1, acknowledged at revision 5, is missing",
    );
}

#[test]
fn a_write_delivered_twice_fails() {
    let log = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (5, "a", None),
            (6, "a", Some("v3")),
            (6, "a", Some("v3")),
        ],
        6,
    );
    let f = run(&writes(), &log, 6);
    assert!(
        f.iter()
            .any(|f| f.revision == Some(6) && f.detail.contains("strictly increase")),
        "{f:#?}"
    );
    assert!(
        f.iter()
            .any(|f| f.revision == Some(6) && f.detail.contains("delivered twice")),
        "{f:#?}"
    );
}

#[test]
fn a_write_delivered_again_at_a_later_revision_is_a_duplicate() {
    let log = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (5, "a", None),
            (6, "a", Some("v3")),
            (8, "a", Some("v1")),
        ],
        8,
    );
    only(
        &run(&writes(), &log, 8),
        "a",
        8,
        "was delivered already (a duplicate)",
    );
}

#[test]
fn revisions_out_of_order_fail() {
    let log = watch(
        KeyRange::all(),
        &[
            (3, "b", Some("v2")),
            (2, "a", Some("v1")),
            (5, "a", None),
            (6, "a", Some("v3")),
        ],
        6,
    );
    only(
        &run(&writes(), &log, 6),
        "a",
        2,
        "revision 2 (from n1) after revision 3",
    );
}

#[test]
fn a_change_below_a_progress_report_already_received_fails() {
    // A progress event to revision 5 arrived after revision 3: the watch
    // had every change up to 5, yet the delete at 5 came after it.
    let mut log = watch(
        KeyRange::all(),
        &[
            (2, "a", Some("v1")),
            (3, "b", Some("v2")),
            (5, "a", None),
            (6, "a", Some("v3")),
        ],
        6,
    );
    assert_eq!(run(&writes(), &log, 6), vec![]);
    log.deliveries[2].reached_before = 5;
    only(
        &run(&writes(), &log, 6),
        "a",
        5,
        "after the watch was told it had every change up to revision 5",
    );
}

#[test]
fn a_write_at_another_revision_than_acknowledged_fails() {
    // v1 shown at 4 instead of 2: missing at 2, wrong at 4.
    let log = watch(
        KeyRange::prefix("a"),
        &[(4, "a", Some("v1")), (5, "a", None), (6, "a", Some("v3"))],
        6,
    );
    let f = run(&writes(), &log, 6);
    assert_eq!(f.len(), 2, "{f:#?}");
    assert!(
        f[0].detail.contains("acknowledged at revision 2, not 4"),
        "{f:#?}"
    );
    assert!(
        f[1].detail.contains("is missing") && f[1].revision == Some(2),
        "{f:#?}"
    );
}

#[test]
fn a_phantom_event_fails() {
    let log = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (4, "a", Some("nobody")),
            (5, "a", None),
            (6, "a", Some("v3")),
        ],
        6,
    );
    only(
        &run(&writes(), &log, 6),
        "a",
        4,
        "no client wrote it (a phantom)",
    );
}

#[test]
fn an_event_at_an_acknowledged_revision_with_another_value_fails() {
    let log = watch(
        KeyRange::prefix("a"),
        &[(2, "a", Some("v9")), (5, "a", None), (6, "a", Some("v3"))],
        6,
    );
    let f = run(&writes(), &log, 6);
    assert!(
        f.iter().any(|f| f
            .detail
            .contains("but the write acknowledged at 2 was put a=v1")),
        "{f:#?}"
    );
}

#[test]
fn a_definitely_failed_write_must_not_appear() {
    let mut w = writes();
    w.push(put(4, "a", "failed", WriteOutcome::Failed));
    let log = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (4, "a", Some("failed")),
            (5, "a", None),
            (6, "a", Some("v3")),
        ],
        6,
    );
    only(&run(&w, &log, 6), "a", 4, "definitely failed");
}

#[test]
fn an_unknown_outcome_write_may_appear_once_or_not_at_all() {
    let mut w = writes();
    w.push(put(4, "a", "maybe", WriteOutcome::Unknown));
    w.push(del(5, "a", WriteOutcome::Unknown));
    let once = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (4, "a", Some("maybe")),
            (5, "a", None),
            (6, "a", Some("v3")),
            (7, "a", None),
        ],
        7,
    );
    assert_eq!(run(&w, &once, 7), vec![]);
    let never = watch(
        KeyRange::prefix("a"),
        &[(2, "a", Some("v1")), (5, "a", None), (6, "a", Some("v3"))],
        7,
    );
    assert_eq!(run(&w, &never, 7), vec![]);
}

#[test]
fn an_unknown_outcome_write_that_appears_twice_fails() {
    let mut w = writes();
    w.push(put(4, "a", "maybe", WriteOutcome::Unknown));
    let log = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (4, "a", Some("maybe")),
            (5, "a", None),
            (6, "a", Some("v3")),
            (7, "a", Some("maybe")),
        ],
        7,
    );
    only(&run(&w, &log, 7), "a", 7, "delivered already at 4 (twice)");
}

#[test]
fn an_unknown_delete_appears_at_most_once_per_unknown_delete() {
    let mut w = writes();
    w.push(del(5, "a", WriteOutcome::Unknown));
    let log = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (5, "a", None),
            (6, "a", Some("v3")),
            (7, "a", None),
            (8, "a", None),
        ],
        8,
    );
    only(&run(&w, &log, 8), "a", 8, "delete a at revision 8");
}

#[test]
fn a_key_outside_the_range_fails() {
    let log = watch(
        KeyRange::prefix("a"),
        &[
            (2, "a", Some("v1")),
            (3, "b", Some("v2")),
            (5, "a", None),
            (6, "a", Some("v3")),
        ],
        6,
    );
    only(&run(&writes(), &log, 6), "b", 3, "outside the watch's keys");
}

#[test]
fn writes_past_where_the_watch_got_are_not_missing_but_a_watch_short_of_the_target_fails() {
    let log = watch(
        KeyRange::all(),
        &[(2, "a", Some("v1")), (3, "b", Some("v2"))],
        3,
    );
    let f = run(&writes(), &log, 6);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].detail.contains("got only to revision 3 of 6"),
        "{f:#?}"
    );
    assert!(f[0].detail.contains("2 acknowledged writes"), "{f:#?}");
}

#[test]
fn a_watch_from_a_later_start_needs_no_earlier_write_and_must_not_show_one() {
    let mut log = watch(KeyRange::all(), &[(5, "a", None), (6, "a", Some("v3"))], 6);
    log.start_revision = 4;
    assert_eq!(run(&writes(), &log, 6), vec![]);
    log.deliveries.insert(
        0,
        Delivery {
            revision: 3,
            events: vec![ev("b", Some("v2"))],
            node: "n2".into(),
            reached_before: 0,
        },
    );
    only(
        &run(&writes(), &log, 6),
        "b",
        3,
        "below the watch's start revision 4",
    );
}

#[test]
fn a_compacted_watch_fails_unless_the_run_compacts_on_purpose() {
    let mut log = watch(
        KeyRange::all(),
        &[
            (2, "a", Some("v1")),
            (3, "b", Some("v2")),
            (5, "a", None),
            (6, "a", Some("v3")),
        ],
        6,
    );
    log.cancels
        .push(("n2".into(), "compacted at 4".into(), true));
    let w = writes();
    let ix = WriteIndex::new(&w);
    let f = check_watch(&ix, &log, 6, false);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].detail
            .contains("n2 canceled the watch: compacted at 4"),
        "{f:#?}"
    );
    assert_eq!(check_watch(&ix, &log, 6, true), vec![]);
    log.cancels.push(("n3".into(), "store_error".into(), false));
    assert_eq!(check_watch(&ix, &log, 6, true).len(), 1);
}

#[test]
fn two_writes_acknowledged_at_one_revision_are_a_finding() {
    let mut w = writes();
    w.push(put(4, "c", "v4", WriteOutcome::Acked(3)));
    let ix = WriteIndex::new(&w);
    assert_eq!(ix.conflicts().len(), 1, "{:?}", ix.conflicts());
    assert!(ix.conflicts()[0]
        .detail
        .contains("two writes acknowledged at revision 3"));
}

#[test]
fn key_ranges_follow_etcd_conventions() {
    let p = KeyRange::prefix("e1");
    assert!(p.covers(b"e1") && p.covers(b"e1-k0") && p.covers(b"e10-k3"));
    assert!(!p.covers(b"e2-k0") && !p.covers(b"e0-k1"));
    let b = KeyRange::between("e0-k3", "e1-k2");
    assert!(b.covers(b"e0-k3") && b.covers(b"e0-k4") && b.covers(b"e1-k1"));
    assert!(!b.covers(b"e1-k2") && !b.covers(b"e0-k2"));
    assert!(KeyRange::all().covers(b"anything"));
    let one = KeyRange {
        key: b"k".to_vec(),
        range_end: Vec::new(),
    };
    assert!(one.covers(b"k") && !one.covers(b"k1"));
    assert_eq!(KeyRange::prefix("a\u{7f}").range_end, b"a\x80".to_vec());
    assert_eq!(KeyRange::all().describe(), "every key");
    assert_eq!(p.describe(), r#"keys ["e1", "e2")"#);
    assert_eq!(one.describe(), r#"key "k""#);
}
