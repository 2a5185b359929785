//! Unit tests of the in-memory log.

use super::*;
use crate::types::EntryPayload;

fn e(term: Term, index: Index) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Blank,
    }
}

fn log_with(terms: &[Term]) -> RaftLog {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, t)| e(*t, i as u64 + 1))
        .collect();
    RaftLog::restore(LogId::default(), entries, 0)
}

#[test]
fn conflicting_suffix_is_replaced_and_reported_for_truncation() {
    let mut log = log_with(&[1, 1, 2, 2]);
    let last = log.try_append(LogId::new(1, 2), vec![e(3, 3)]).unwrap();
    assert_eq!(last, 3);
    assert_eq!(log.last_log_id(), LogId::new(3, 3));
    assert_eq!(log.persisted(), 2);
    let (truncate, entries) = log.take_unpersisted();
    assert_eq!(truncate, Some(3));
    assert_eq!(entries, vec![e(3, 3)]);
}

#[test]
fn present_entries_are_not_rewritten() {
    let mut log = log_with(&[1, 1, 2]);
    assert_eq!(log.try_append(LogId::new(1, 1), vec![e(1, 2)]), Ok(2));
    assert_eq!(
        log.last_index(),
        3,
        "a stale request must not truncate matching entries"
    );
    assert!(!log.has_unpersisted());
}

#[test]
fn hint_skips_a_whole_term() {
    let log = log_with(&[1, 1, 4, 4, 4]);
    // Leader's prev is (index 6, term 5): follower is shorter.
    assert_eq!(log.find_conflict_by_term(6, 5), LogId::new(4, 5));
    // Leader's prev is (index 5, term 3): skip all of term 4.
    assert_eq!(log.find_conflict_by_term(5, 3), LogId::new(1, 2));
}

#[test]
fn stale_persist_notifications_are_ignored() {
    let mut log = log_with(&[1]);
    log.append_own(e(1, 2));
    let (_, out) = log.take_unpersisted();
    assert_eq!(out.len(), 1);
    let w1 = log.register_write();
    log.try_append(LogId::new(1, 1), vec![e(2, 2)]).unwrap();
    let (truncate, out) = log.take_unpersisted();
    assert_eq!((truncate, out), (Some(2), vec![e(2, 2)]));
    let w2 = log.register_write();
    // The same entry as write 1 again, from a third leader: the log now
    // looks as after write 1, but write 2 (which deleted it) is pending.
    log.try_append(LogId::new(1, 1), vec![e(3, 2)]).unwrap();
    log.try_append(LogId::new(1, 1), vec![e(1, 2)]).unwrap_or(0);
    let _ = log.take_unpersisted();
    let w3 = log.register_write();
    assert!(
        !log.on_persisted(w1),
        "write 1's entry 2 was overwritten since"
    );
    assert_eq!(log.persisted(), 1);
    assert!(
        !log.on_persisted(w2),
        "write 2's entry 2 was overwritten too"
    );
    assert!(log.on_persisted(w3));
    assert_eq!(log.persisted(), 2);
    assert!(!log.on_persisted(w3), "a repeated notice changes nothing");
}

/// Recomputes what `cached_bytes` and `uncommitted_bytes` must be.
fn recount(log: &RaftLog) -> (u64, u64) {
    let cached = log
        .entries
        .iter()
        .filter(|e| e.index > log.evicted_to)
        .map(cached_size)
        .sum();
    let uncommitted = log
        .entries
        .iter()
        .filter(|e| e.index > log.committed)
        .map(Entry::size_bytes)
        .sum();
    (cached, uncommitted)
}

fn sized(term: Term, index: Index, len: usize) -> Entry {
    Entry {
        term,
        index,
        payload: crate::types::EntryPayload::Normal(bytes::Bytes::from(vec![7u8; len])),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever happens to the log (leader appends, follower appends
    /// that truncate a conflicting suffix, commits, writes made durable,
    /// applies, evictions, compactions, installs), its byte counters
    /// match a recount, evicted payloads are never handed out, and
    /// after an eviction no more than the budget of applied, durable
    /// payloads is held.
    #[test]
    fn byte_counters_match_a_recount(
        ops in proptest::collection::vec((0u8..9, 0u64..6, 0usize..500), 1..200),
        budget in 0u64..3_000,
    ) {
        let mut log = log_with(&[]);
        let mut term = 1;
        for (op, n, len) in ops {
            match op {
                0 | 1 => {
                    let index = log.last_index() + 1;
                    log.append_own(sized(term, index, len));
                }
                2 => {
                    // A follower append from a newer leader, at or after
                    // the commit index.
                    term += 1;
                    let base = log.committed().max(log.offset().index);
                    let prev_index = (base + n).min(log.last_index());
                    let prev = LogId::new(log.term(prev_index).unwrap(), prev_index);
                    let entries: Vec<Entry> = (1..=n + 1)
                        .map(|k| sized(term, prev_index + k, len / (k as usize + 1)))
                        .collect();
                    let _ = log.try_append(prev, entries.clone());
                }
                3 => {
                    let to = log.committed() + n + 1;
                    log.commit_to(to);
                }
                4 => {
                    let (_, _) = log.take_unpersisted();
                    let w = log.register_write();
                    log.on_persisted(w);
                }
                5 => {
                    for e in log.take_committed(n as usize + 1) {
                        proptest::prop_assert!(
                            e.index > log.evicted_to(),
                            "an evicted entry was handed out"
                        );
                    }
                }
                6 => {
                    log.evict(budget);
                    let limit = log.apply_emitted().min(log.persisted());
                    let pinned: u64 = log
                        .entries
                        .iter()
                        .filter(|e| e.index > limit)
                        .map(cached_size)
                        .sum();
                    proptest::prop_assert!(log.cached_bytes() <= budget + pinned);
                }
                7 => {
                    let to = log.offset().index + n;
                    log.compact(to);
                }
                _ => {
                    if n == 0 && log.writes.is_empty() {
                        let id = LogId::new(term, log.last_index() + 2);
                        log.install(id);
                    }
                }
            }
            let (cached, uncommitted) = recount(&log);
            proptest::prop_assert_eq!(log.cached_bytes(), cached, "cached bytes after op {}", op);
            proptest::prop_assert_eq!(
                log.uncommitted_bytes(), uncommitted, "uncommitted bytes after op {}", op
            );
        }
    }
}

#[test]
fn only_durable_committed_entries_are_applied() {
    let mut log = log_with(&[1]);
    log.append_own(e(1, 2));
    log.commit_to(2);
    assert_eq!(log.take_committed(100), vec![e(1, 1)]);
    let _ = log.take_unpersisted();
    let w = log.register_write();
    log.on_persisted(w);
    assert_eq!(log.take_committed(100), vec![e(1, 2)]);
    assert!(!log.has_committed());
}

mod slices {
    use super::*;
    use proptest::prelude::*;

    fn normal(index: Index, len: usize) -> Entry {
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(bytes::Bytes::from(vec![0u8; len])),
        }
    }

    proptest! {
        /// A slice holds the entries of its range in order, at most
        /// `max_entries` and `max_bytes` of them but at least one, also
        /// when the log's entries wrap around the end of its buffer.
        #[test]
        fn a_slice_is_the_longest_prefix_of_its_range_within_the_limits(
            sizes in proptest::collection::vec(0usize..40, 1..24),
            compacted in 0usize..24,
            start in 0u64..30,
            end in 0u64..30,
            max_entries in 0usize..30,
            max_bytes in prop_oneof![0u64..400, Just(u64::MAX)],
        ) {
            let n = sizes.len();
            let compacted = compacted.min(n);
            // Room for every entry, so those appended after the compaction
            // go into the front of the buffer that it freed.
            let mut initial = Vec::with_capacity(n);
            initial.extend((0..n).map(|i| normal(i as Index + 1, sizes[i])));
            let mut log = RaftLog::restore(LogId::default(), initial, n as Index);
            log.set_applied(n as Index);
            log.compact(compacted as Index);
            let mut model: Vec<Entry> = (compacted..n)
                .map(|i| normal(i as Index + 1, sizes[i]))
                .collect();
            for (i, &size) in sizes.iter().enumerate().take(compacted.saturating_sub(1)) {
                let e = normal((n + i) as Index + 1, size);
                log.append_own(e.clone());
                model.push(e);
            }
            let got = log.slice_to(start, end, max_entries, max_bytes);
            let mut want = Vec::new();
            let mut bytes = 0;
            for e in model.iter().filter(|e| e.index >= start && e.index <= end) {
                if want.len() == max_entries.max(1) {
                    break;
                }
                if !want.is_empty() && bytes + e.size_bytes() > max_bytes {
                    break;
                }
                bytes += e.size_bytes();
                want.push(e.clone());
            }
            prop_assert_eq!(got, want);
        }
    }
}
