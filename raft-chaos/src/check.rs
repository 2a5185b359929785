//! The checks after a run, once the cluster is healed and has converged:
//! linearizability of the history per key, no acknowledged write lost, and
//! identical replicas.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raft_client::ClusterStatus;
use raft_linearizability::{CheckLimits, CheckResult, History, Op, Outcome};

use crate::probe::Probe;

/// A finding about the system under test.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which check: `linearizability`, `lost-write`, `replicas-differ`,
    /// `node-crashed`, `no-convergence`, `undecided`, `idempotency`.
    pub check: &'static str,
    /// What was found, readable.
    pub detail: String,
    /// The key, when the finding is about one.
    pub key: Option<Vec<u8>>,
    /// Operations of that key to show in the timeline (history indices).
    pub focus: Vec<usize>,
}

/// Runs the linearizability checker on `history`.
pub fn linearizable(history: &History) -> Option<Violation> {
    let limits = CheckLimits {
        max_steps_per_key: 5_000_000,
    };
    match raft_linearizability::check(history, limits) {
        CheckResult::Ok => None,
        CheckResult::Violation {
            key,
            explanation,
            ops,
        } => {
            // `#i` in the explanation is the i-th checked operation of the
            // key. Focus on the operations that could not come next and the
            // last three of the linearizable prefix before them; map those
            // back to positions in the whole history.
            let focus = focus_of(&explanation)
                .into_iter()
                .filter_map(|i| ops.get(i))
                .filter_map(|op| history.ops().iter().position(|o| o == op))
                .collect();
            Some(Violation {
                check: "linearizability",
                detail: explanation,
                key: Some(key),
                focus,
            })
        }
        CheckResult::Unknown { key, reason } => Some(Violation {
            check: "undecided",
            detail: format!("the checker gave up: {reason}"),
            key: Some(key),
            focus: Vec::new(),
        }),
        CheckResult::Invalid { index, reason } => Some(Violation {
            check: "invalid-history",
            detail: format!("harness bug: operation {index}: {reason}"),
            key: None,
            focus: vec![index],
        }),
    }
}

/// The operations (`#i`) a checker explanation names as blocked, and the
/// last three of its linearizable prefix.
fn focus_of(explanation: &str) -> Vec<usize> {
    let first_ref = |line: &str| {
        let rest = &line[line.find('#')? + 1..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()
    };
    let mut prefix = Vec::new();
    let mut blocked = Vec::new();
    let mut in_blocked = false;
    for line in explanation.lines() {
        if line.contains("could come next") {
            in_blocked = true;
            continue;
        }
        let trimmed = line.trim_start();
        if in_blocked {
            if trimmed.starts_with('#') && line.starts_with("  ") {
                blocked.extend(first_ref(line));
            }
        } else if trimmed
            .split('.')
            .next()
            .is_some_and(|n| n.parse::<usize>().is_ok())
            && trimmed.contains(". #")
        {
            prefix.extend(first_ref(line));
        }
    }
    let keep = prefix.len().saturating_sub(3);
    prefix.drain(..keep);
    prefix.extend(blocked);
    prefix
}

/// The value an operation leaves in the register when it took effect, if it
/// writes.
fn written(op: &Op) -> Option<Option<&[u8]>> {
    match op {
        Op::Write(v) => Some(Some(v)),
        Op::Cas { new, .. } => Some(Some(new)),
        Op::Delete => Some(None),
        Op::Read => None,
    }
}

/// Every acknowledged write whose value is not the key's final value must
/// have been superseded by a later (acknowledged or indeterminate) write:
/// one that did not complete before it was invoked.
pub fn lost_writes(
    history: &History,
    finals: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Vec<Violation> {
    let ops = history.ops();
    // The writes of each key (a run has many keys: scanning only the key's
    // own writes keeps this linear in the history per write).
    let mut writes_of: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (j, o) in ops.iter().enumerate() {
        if written(&o.op).is_some() {
            writes_of.entry(o.key.as_slice()).or_default().push(j);
        }
    }
    let mut out = Vec::new();
    for (i, w) in ops.iter().enumerate() {
        let acked = matches!(
            w.outcome,
            Outcome::WriteOk | Outcome::DeleteOk | Outcome::CasOk
        );
        let Some(value) = written(&w.op).filter(|_| acked) else {
            continue;
        };
        let Some(fin) = finals.get(&w.key) else {
            continue;
        };
        if fin.as_deref() == value {
            continue;
        }
        let same_key = writes_of
            .get(w.key.as_slice())
            .map_or(&[][..], Vec::as_slice);
        let superseded = same_key.iter().map(|j| (*j, &ops[*j])).any(|(j, o)| {
            j != i
                && matches!(
                    o.outcome,
                    Outcome::WriteOk | Outcome::DeleteOk | Outcome::CasOk | Outcome::Indeterminate
                )
                && !o.precedes(w)
        });
        if !superseded {
            out.push(Violation {
                check: "lost-write",
                detail: format!(
                    "acknowledged {w} is not the final value ({}) and no later write superseded it",
                    fin.as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_else(|| "absent".into())
                ),
                key: Some(w.key.clone()),
                focus: vec![i],
            });
        }
    }
    out
}

/// Waits until every node reports the same applied index and the same
/// key-value digest; a violation when they do not within `timeout`.
pub async fn replicas_converge(
    probe: &Probe,
    urls: &[(u64, String)],
    timeout: Duration,
) -> Result<String, Violation> {
    let deadline = Instant::now() + timeout;
    let mut last: Vec<(u64, Option<ClusterStatus>)> = Vec::new();
    loop {
        last.clear();
        for (id, url) in urls {
            last.push((*id, probe.status_with_digest(url).await));
        }
        let summary: Vec<(u64, Option<u64>, Option<String>)> = last
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    s.as_ref().map(|s| s.applied),
                    s.as_ref()
                        .and_then(|s| s.kv.as_ref().map(|kv| kv.digest.clone())),
                )
            })
            .collect();
        let first = &summary[0];
        let same = first.1.is_some()
            && first.2.is_some()
            && summary.iter().all(|s| s.1 == first.1 && s.2 == first.2);
        if same {
            return Ok(format!(
                "all {} replicas at applied index {} with digest {}",
                summary.len(),
                first.1.unwrap_or_default(),
                first.2.clone().unwrap_or_default()
            ));
        }
        if Instant::now() > deadline {
            let lines: Vec<String> = last
                .iter()
                .map(|(id, s)| replica_line(*id, s.as_ref()))
                .collect();
            let same_applied = summary.iter().all(|s| s.1.is_some() && s.1 == first.1);
            return Err(Violation {
                check: if same_applied {
                    "replicas-differ"
                } else {
                    "no-convergence"
                },
                detail: format!(
                    "replicas did not converge within {timeout:?}:\n  {}",
                    lines.join("\n  ")
                ),
                key: None,
                focus: Vec::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One node's status in a convergence failure: `null` for what it does not
/// know (a leader) or did not send (a digest).
fn replica_line(id: u64, status: Option<&ClusterStatus>) -> String {
    let Some(s) = status else {
        return format!("node {id}: no answer");
    };
    let leader = s
        .leader
        .map_or_else(|| "null".to_owned(), |l| l.to_string());
    let kv = s.kv.as_ref().map_or_else(
        || "null".to_owned(),
        |kv| format!("{} keys, digest {}", kv.keys, kv.digest),
    );
    format!(
        "node {id}: leader {leader} term {} commit {} applied {} kv {kv}",
        s.term, s.commit, s.applied
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_linearizability::Operation;

    fn op(client: u64, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: b"k".to_vec(),
            op,
            invoke,
            complete: Some(complete),
            outcome,
        }
    }

    #[test]
    fn an_acknowledged_write_not_final_and_not_superseded_is_lost() {
        let h = History::from(vec![
            op(1, Op::Write(b"a".to_vec()), 0, 1, Outcome::WriteOk),
            op(1, Op::Write(b"b".to_vec()), 2, 3, Outcome::WriteOk),
        ]);
        let finals = BTreeMap::from([(b"k".to_vec(), Some(b"a".to_vec()))]);
        let lost = lost_writes(&h, &finals);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].focus, vec![1]);
        // "b" final: "a" was superseded by it.
        let finals = BTreeMap::from([(b"k".to_vec(), Some(b"b".to_vec()))]);
        assert!(lost_writes(&h, &finals).is_empty());
    }

    #[test]
    fn an_indeterminate_overlapping_write_may_supersede() {
        let h = History::from(vec![
            op(1, Op::Write(b"a".to_vec()), 0, 5, Outcome::WriteOk),
            op(2, Op::Delete, 1, 2, Outcome::Indeterminate),
        ]);
        let finals = BTreeMap::from([(b"k".to_vec(), None)]);
        assert!(lost_writes(&h, &finals).is_empty());
        // A failed one may not.
        let h = History::from(vec![
            op(1, Op::Write(b"a".to_vec()), 0, 5, Outcome::WriteOk),
            op(2, Op::Delete, 1, 2, Outcome::Failed),
        ]);
        assert_eq!(lost_writes(&h, &finals).len(), 1);
    }

    #[test]
    fn focus_is_the_blocked_operations_and_the_end_of_the_prefix() {
        let explanation = "history for key \"k\" is not linearizable (9 operations checked).\n\
            Longest linearizable prefix found (4 operations, 4 of 8 definite ones):\n\
            \x20   1. #0 client 1: write \"a\" -> ok   => \"a\"\n\
            \x20   2. #1 client 1: write \"b\" -> ok   => \"b\"\n\
            \x20   3. #3 client 2: read -> \"b\"   => \"b\"\n\
            \x20   4. #2 client 1: write \"c\" -> ok   => \"c\"\n\
            Value after this prefix: \"c\".\n\
            None of the operations that could come next fits it:\n\
            \x20 #5 client 3: read -> \"a\": read \"a\", but the value is \"c\"\n\
            3 more definite operations were invoked after one of these completed: #6 #7 #8\n";
        assert_eq!(focus_of(explanation), vec![1, 3, 2, 5]);
    }

    #[test]
    fn a_stale_read_is_reported_with_its_operations() {
        let h = History::from(vec![
            op(1, Op::Write(b"a".to_vec()), 0, 1, Outcome::WriteOk),
            op(1, Op::Write(b"b".to_vec()), 2, 3, Outcome::WriteOk),
            op(2, Op::Read, 4, 5, Outcome::ReadOk(Some(b"a".to_vec()))),
        ]);
        let v = linearizable(&h).expect("a violation");
        assert_eq!(v.check, "linearizability");
        assert!(v.focus.contains(&2), "{v:?}");
    }
}
