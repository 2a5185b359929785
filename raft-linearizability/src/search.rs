//! The search of one key's sub-history (Wing & Gong, with Lowe's memo).

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::check::{CheckLimits, CheckResult};
use crate::history::{Op, Operation, Outcome};

/// Displays an optional byte string: `absent`, a quoted string when it is
/// printable UTF-8, hex otherwise.
pub(crate) struct Val<'a>(pub(crate) Option<&'a [u8]>);

impl fmt::Display for Val<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(bytes) = self.0 else {
            return write!(f, "absent");
        };
        match std::str::from_utf8(bytes) {
            Ok(s) if !s.chars().any(char::is_control) => write!(f, "{s:?}"),
            _ => {
                write!(f, "0x")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// An interned register value; [`ABSENT`] is the initial one.
type ValueId = u32;

const ABSENT: ValueId = 0;

/// Operations a violation's explanation lists at most, per list.
const SHOWN: usize = 30;

/// An operation's effect on the register, given its outcome.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Sees exactly this value.
    Read(ValueId),
    /// Sets the value (writes and deletes).
    Write(ValueId),
    /// Sees `expected` and sets `new`.
    Cas { expected: ValueId, new: ValueId },
    /// Sees a value other than `expected`.
    CasFailed { expected: ValueId },
}

impl Kind {
    /// The value after applying the operation to `state`, or `None` if its
    /// outcome is impossible from `state`.
    fn apply(self, state: ValueId) -> Option<ValueId> {
        match self {
            Kind::Read(v) => (state == v).then_some(state),
            Kind::Write(v) => Some(v),
            Kind::Cas { expected, new } => (state == expected).then_some(new),
            Kind::CasFailed { expected } => (state != expected).then_some(state),
        }
    }

    fn is_read_only(self) -> bool {
        matches!(self, Kind::Read(_) | Kind::CasFailed { .. })
    }
}

/// An operation prepared for the search.
#[derive(Debug)]
struct Entry {
    invoke: u64,
    /// `u64::MAX` for indeterminate operations.
    complete: u64,
    /// Whether the operation must be linearized (its outcome is known).
    definite: bool,
    kind: Kind,
    /// Position in [`KeyChecker::ops`].
    op: usize,
}

/// The result of the search on one key.
enum Search {
    Linearizable,
    /// The longest prefix found (by number of definite operations), as
    /// indices into [`KeyChecker::entries`].
    NotLinearizable {
        best_path: Vec<usize>,
    },
    Exhausted {
        steps: u64,
        best_definite: usize,
    },
}

/// A search frame: the operation linearized to reach it (with the value
/// before it) and the alternatives to try next.
struct Frame {
    via: Option<(usize, ValueId)>,
    children: Vec<usize>,
    next: usize,
}

/// Checks the operations of one key.
#[derive(Debug)]
pub(crate) struct KeyChecker<'a> {
    key: &'a [u8],
    /// The operations checked, in history order (reported back).
    ops: Vec<Operation>,
    /// Interned values; `values[ABSENT]` is `None`.
    values: Vec<Option<Vec<u8>>>,
    /// Sorted by invocation time.
    entries: Vec<Entry>,
    /// The definite entries, sorted by completion time.
    by_complete: Vec<usize>,
    /// Number of definite entries.
    definite: usize,
    /// Length of the bitset of linearized entries, in words.
    words: usize,
}

impl<'a> KeyChecker<'a> {
    pub(crate) fn new(key: &'a [u8], ops: Vec<Operation>) -> Self {
        let mut values: Vec<Option<Vec<u8>>> = vec![None];
        let mut ids: HashMap<Option<Vec<u8>>, ValueId> = HashMap::from([(None, ABSENT)]);
        let mut intern = |v: Option<&Vec<u8>>| -> ValueId {
            *ids.entry(v.cloned()).or_insert_with(|| {
                values.push(v.cloned());
                ValueId::try_from(values.len() - 1).expect("too many distinct values")
            })
        };
        let mut entries: Vec<Entry> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let kind = match (&op.op, &op.outcome) {
                    (Op::Read, Outcome::ReadOk(v)) => Kind::Read(intern(v.as_ref())),
                    (Op::Write(v), _) => Kind::Write(intern(Some(v))),
                    (Op::Delete, _) => Kind::Write(ABSENT),
                    (Op::Cas { expected, .. }, Outcome::CasFailed) => Kind::CasFailed {
                        expected: intern(expected.as_ref()),
                    },
                    (Op::Cas { expected, new }, _) => Kind::Cas {
                        expected: intern(expected.as_ref()),
                        new: intern(Some(new)),
                    },
                    (Op::Read, _) => unreachable!("validated, indeterminate reads dropped"),
                };
                let definite = op.outcome != Outcome::Indeterminate;
                let complete = if definite {
                    op.complete.expect("validated")
                } else {
                    u64::MAX
                };
                Entry {
                    invoke: op.invoke,
                    complete,
                    definite,
                    kind,
                    op: i,
                }
            })
            .collect();
        entries.sort_by_key(|e| (e.invoke, e.op));
        let mut by_complete: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].definite)
            .collect();
        by_complete.sort_by_key(|&i| (entries[i].complete, i));
        let definite = by_complete.len();
        let words = entries.len().div_ceil(64);
        Self {
            key,
            ops,
            values,
            entries,
            by_complete,
            definite,
            words,
        }
    }

    pub(crate) fn run(self, limits: CheckLimits) -> CheckResult {
        if let Some(explanation) = self.unwritten_value() {
            return self.violation(explanation);
        }
        match self.search(limits.max_steps_per_key) {
            Search::Linearizable => CheckResult::Ok,
            Search::NotLinearizable { best_path } => {
                let explanation = self.explain(&best_path);
                self.violation(explanation)
            }
            Search::Exhausted { steps, best_definite } => CheckResult::Unknown {
                key: self.key.to_vec(),
                reason: format!(
                    "search budget of {steps} steps exhausted on {} operations ({} with a \
                     definite outcome); the longest linearizable prefix found placed {best_definite} \
                     of them",
                    self.entries.len(),
                    self.definite
                ),
            },
        }
    }

    fn violation(self, explanation: String) -> CheckResult {
        CheckResult::Violation {
            key: self.key.to_vec(),
            explanation,
            ops: self.ops,
        }
    }

    /// A quick check with a clearer message than the search's: a definite
    /// operation that observed a value no operation on this key writes.
    fn unwritten_value(&self) -> Option<String> {
        let mut written = vec![false; self.values.len()];
        written[ABSENT as usize] = true;
        for e in &self.entries {
            match e.kind {
                Kind::Write(v) | Kind::Cas { new: v, .. } => written[v as usize] = true,
                Kind::Read(_) | Kind::CasFailed { .. } => {}
            }
        }
        let e = self.entries.iter().find(|e| match e.kind {
            Kind::Read(v) => !written[v as usize],
            Kind::Cas { expected, .. } => e.definite && !written[expected as usize],
            _ => false,
        })?;
        let seen = match e.kind {
            Kind::Read(v) | Kind::Cas { expected: v, .. } => v,
            _ => unreachable!(),
        };
        Some(format!(
            "history for key {} is not linearizable: operation #{} ({}) observed the value {}, \
             which no operation on this key writes",
            Val(Some(self.key)),
            e.op,
            self.ops[e.op],
            self.value(seen)
        ))
    }

    fn value(&self, v: ValueId) -> Val<'_> {
        Val(self.values[v as usize].as_deref())
    }

    fn is_set(bits: &[u64], i: usize) -> bool {
        bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// The earliest completion among the definite entries not yet linearized:
    /// an entry is minimal (may be linearized next) iff invoked no later.
    fn min_complete(&self, bits: &[u64]) -> u64 {
        self.by_complete
            .iter()
            .find(|&&i| !Self::is_set(bits, i))
            .map_or(u64::MAX, |&i| self.entries[i].complete)
    }

    /// The entries to try linearizing next from (`bits`, `state`): the
    /// minimal ones whose outcome fits `state`, or just one read-only such
    /// entry if there is any. Right after an indeterminate entry, blind
    /// writes are left out: they would make it pointless (see [`Self::search`]).
    fn children(&self, bits: &[u64], state: ValueId, after_indeterminate: bool) -> Vec<usize> {
        let min_complete = self.min_complete(bits);
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.invoke > min_complete {
                break;
            }
            if Self::is_set(bits, i)
                || e.kind.apply(state).is_none()
                || (after_indeterminate && matches!(e.kind, Kind::Write(_)))
            {
                continue;
            }
            if e.kind.is_read_only() {
                return vec![i];
            }
            out.push(i);
        }
        out
    }

    /// Iterative depth-first search over configurations, memoized.
    ///
    /// Besides the greedy linearization of read-only entries (see
    /// [`Self::children`]), one more pruning keeps indeterminate entries from
    /// blowing the search up: an indeterminate entry immediately followed by
    /// a blind write (write or delete) has no observable effect, so any
    /// linearization can drop it, and the search never tries a blind write
    /// right after an indeterminate entry. The configuration therefore
    /// includes whether the last entry linearized is indeterminate.
    fn search(&self, max_steps: u64) -> Search {
        if self.definite == 0 {
            return Search::Linearizable;
        }
        // The bitset of linearized entries, followed by a word holding the
        // register value and whether the last entry linearized is
        // indeterminate: a configuration, and the memo key. The last word is
        // written before each memo lookup, so backtracking leaves it alone.
        let tail = |state: ValueId, after_indeterminate: bool| {
            u64::from(state) | u64::from(after_indeterminate) << 32
        };
        let words = self.words;
        let mut bits = vec![0u64; words + 1];
        let mut state = ABSENT;
        let mut remaining = self.definite;
        let mut memo: HashSet<Vec<u64>> = HashSet::new();
        memo.insert(bits.clone());
        let mut stack = vec![Frame {
            via: None,
            children: self.children(&bits, state, false),
            next: 0,
        }];
        let mut steps = 0u64;
        let mut best_definite = 0;
        let mut best_path = Vec::new();
        while let Some(top) = stack.last_mut() {
            let Some(&e) = top.children.get(top.next) else {
                let frame = stack.pop().expect("non-empty");
                if let Some((e, prev)) = frame.via {
                    bits[e / 64] &= !(1 << (e % 64));
                    state = prev;
                    remaining += usize::from(self.entries[e].definite);
                }
                continue;
            };
            top.next += 1;
            steps += 1;
            if steps > max_steps {
                return Search::Exhausted {
                    steps: max_steps,
                    best_definite,
                };
            }
            let entry = &self.entries[e];
            let next = entry.kind.apply(state).expect("children fit the state");
            bits[e / 64] |= 1 << (e % 64);
            bits[words] = tail(next, !entry.definite);
            if !memo.insert(bits.clone()) {
                bits[e / 64] &= !(1 << (e % 64));
                continue;
            }
            remaining -= usize::from(entry.definite);
            if remaining == 0 {
                return Search::Linearizable;
            }
            if self.definite - remaining > best_definite {
                best_definite = self.definite - remaining;
                best_path = stack.iter().filter_map(|f| f.via.map(|(e, _)| e)).collect();
                best_path.push(e);
            }
            let children = self.children(&bits, next, !entry.definite);
            stack.push(Frame {
                via: Some((e, state)),
                children,
                next: 0,
            });
            state = next;
        }
        Search::NotLinearizable { best_path }
    }

    /// Explains a violation from the longest linearizable prefix found.
    fn explain(&self, best_path: &[usize]) -> String {
        use fmt::Write as _;
        let mut out = String::new();
        let indeterminate = self.entries.len() - self.definite;
        let _ = writeln!(
            out,
            "history for key {} is not linearizable ({} operations checked, {indeterminate} of \
             them indeterminate; #i below is the i-th of them).",
            Val(Some(self.key)),
            self.entries.len(),
        );
        let (bits, state) = self.explain_prefix(best_path, &mut out);
        self.explain_next(&bits, state, &mut out);
        out
    }

    /// Lists the longest linearizable prefix (its last [`SHOWN`]
    /// operations) and the value after it; returns the prefix's entries
    /// (as search bits) and that value.
    fn explain_prefix(&self, best_path: &[usize], out: &mut String) -> (Vec<u64>, ValueId) {
        use fmt::Write as _;
        let mut bits = vec![0u64; self.words + 1];
        let mut state = ABSENT;
        let placed = best_path
            .iter()
            .filter(|&&e| self.entries[e].definite)
            .count();
        let _ = writeln!(
            out,
            "Longest linearizable prefix found ({} operations, {placed} of {} definite ones):",
            best_path.len(),
            self.definite
        );
        if best_path.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        if best_path.len() > SHOWN {
            let _ = writeln!(out, "  ... {} earlier operations", best_path.len() - SHOWN);
        }
        for (n, &e) in best_path.iter().enumerate() {
            let entry = &self.entries[e];
            state = entry.kind.apply(state).expect("the path is linearizable");
            bits[e / 64] |= 1 << (e % 64);
            if n + SHOWN >= best_path.len() {
                let _ = writeln!(
                    out,
                    "  {:>3}. #{} {}   => {}",
                    n + 1,
                    entry.op,
                    self.ops[entry.op],
                    self.value(state)
                );
            }
        }
        let _ = writeln!(out, "Value after this prefix: {}.", self.value(state));
        (bits, state)
    }

    /// Why each definite operation outside the prefix cannot come next
    /// after it (value `state`), and which could not because they were
    /// invoked after another completed.
    fn explain_next(&self, bits: &[u64], state: ValueId, out: &mut String) {
        use fmt::Write as _;
        let min_complete = self.min_complete(bits);
        let _ = writeln!(out, "None of the operations that could come next fits it:");
        let mut blocked = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if Self::is_set(bits, i) || !e.definite {
                continue;
            }
            if e.invoke > min_complete {
                blocked.push(e.op);
                continue;
            }
            let why = self.why_not_next(e.kind, state);
            let _ = writeln!(out, "  #{} {}: {why}", e.op, self.ops[e.op]);
        }
        if self.entries.len() > self.definite {
            let _ = writeln!(
                out,
                "(Indeterminate operations were tried at every point, and left out.)"
            );
        }
        if !blocked.is_empty() {
            blocked.sort_unstable();
            let _ = write!(
                out,
                "{} more definite operations were invoked after one of these completed:",
                blocked.len()
            );
            for op in blocked.iter().take(SHOWN) {
                let _ = write!(out, " #{op}");
            }
            if blocked.len() > SHOWN {
                let _ = write!(out, " ...");
            }
            let _ = writeln!(out);
        }
    }

    /// Why an operation of `kind` cannot follow a prefix that leaves the
    /// value `state`.
    fn why_not_next(&self, kind: Kind, state: ValueId) -> String {
        match kind {
            _ if kind.apply(state).is_some() => {
                "fits, but no linearization continues from there".to_string()
            }
            Kind::Read(v) => format!(
                "read {}, but the value is {}",
                self.value(v),
                self.value(state)
            ),
            Kind::Cas { expected, .. } => format!(
                "cas succeeded expecting {}, but the value is {}",
                self.value(expected),
                self.value(state)
            ),
            Kind::CasFailed { expected } => format!(
                "cas failed, but the value is {}, the expected one",
                self.value(expected)
            ),
            Kind::Write(_) => unreachable!("writes always fit"),
        }
    }
}
