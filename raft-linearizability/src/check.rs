//! The verdict and the entry point: [`check`].

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{History, Op, Operation, Outcome};
use crate::search::{KeyChecker, Val};

/// Bounds on the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckLimits {
    /// How many search steps (attempts to linearize one operation next) may
    /// be spent on one key before giving up with [`CheckResult::Unknown`].
    /// The memo table grows by at most one entry per step.
    pub max_steps_per_key: u64,
}

impl Default for CheckLimits {
    /// 1 000 000 steps per key: well under a few seconds, and far more than
    /// linearizable histories of a few hundred operations per key with a
    /// handful of clients need.
    fn default() -> Self {
        Self {
            max_steps_per_key: 1_000_000,
        }
    }
}

/// The verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// The history is linearizable.
    Ok,
    /// The sub-history of `key` is not linearizable. When several keys are
    /// violated, the smallest one is reported.
    Violation {
        /// The key whose operations cannot be linearized.
        key: Vec<u8>,
        /// A human-readable account: the longest linearizable prefix found,
        /// the value after it, and the operations that could not come next.
        /// `#i` in it refers to `ops[i]`.
        explanation: String,
        /// The operations of `key` that were checked, in history order:
        /// failed operations and indeterminate reads are left out.
        ops: Vec<Operation>,
    },
    /// The search budget was exhausted on `key` before a verdict (and no
    /// other key was found violated).
    Unknown {
        /// The first key whose search was cut short.
        key: Vec<u8>,
        /// Why, with the size of the problem and the progress made.
        reason: String,
    },
    /// The history is malformed: an outcome that does not fit its operation,
    /// a missing completion time, or a completion before the invocation.
    Invalid {
        /// The offending operation's position in [`History::ops`].
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl CheckResult {
    /// Whether the history was found linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Ok => write!(f, "linearizable"),
            CheckResult::Violation { explanation, .. } => write!(f, "{explanation}"),
            CheckResult::Unknown { key, reason } => {
                write!(
                    f,
                    "linearizability of key {} undecided: {reason}",
                    Val(Some(key))
                )
            }
            CheckResult::Invalid { index, reason } => {
                write!(f, "invalid history: operation #{index}: {reason}")
            }
        }
    }
}

/// Checks whether `history` is linearizable with respect to a map of
/// independent registers supporting read, write, delete and compare-and-set,
/// every key initially absent. See the [crate documentation](crate) for the
/// semantics and the algorithm.
///
/// Keys are checked independently, in ascending order. A violation on any key
/// is reported in preference to an exhausted budget on another.
pub fn check(history: &History, limits: CheckLimits) -> CheckResult {
    for (index, op) in history.ops().iter().enumerate() {
        if let Err(reason) = op.validate() {
            return CheckResult::Invalid { index, reason };
        }
    }
    let mut by_key: BTreeMap<&[u8], Vec<Operation>> = BTreeMap::new();
    for op in history.ops() {
        match (&op.op, &op.outcome) {
            (_, Outcome::Failed) | (Op::Read, Outcome::Indeterminate) => {}
            _ => by_key.entry(&op.key).or_default().push(op.clone()),
        }
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match KeyChecker::new(key, ops).run(limits) {
            CheckResult::Ok => {}
            result @ CheckResult::Unknown { .. } => {
                unknown.get_or_insert(result);
            }
            result => return result,
        }
    }
    unknown.unwrap_or(CheckResult::Ok)
}
