//! A linearizability checker for client histories against a key-value model.
//!
//! # What it checks
//!
//! A [`History`] is a list of client [`Operation`]s, each with an
//! invocation time, an (optional) completion time and an [`Outcome`]. The
//! model is a map from keys to independent registers: every key starts
//! absent and supports [`Op::Read`], [`Op::Write`], [`Op::Delete`] and
//! compare-and-set ([`Op::Cas`]). [`check`] decides whether the history is
//! *linearizable* (Herlihy & Wing 1990): whether every operation can be given
//! a single instant, between its invocation and its completion, at which it
//! took effect atomically, such that the resulting sequential run of the
//! model returns exactly the outcomes the clients saw.
//!
//! Times are logical, monotonic `u64`s taken from one clock (the simulation's
//! or the test harness's). Operation `A` precedes `B` in real time iff
//! `A.complete < B.invoke`; overlapping operations may be ordered either way.
//!
//! Outcomes that are not plain successes:
//! - [`Outcome::Failed`]: the operation definitely did not take effect. It is
//!   dropped before checking.
//! - [`Outcome::Indeterminate`] (a timeout, a lost connection, a client that
//!   never got its answer): the operation may have taken effect at any point
//!   after its invocation, or never. Its completion time is ignored (treated
//!   as +infinity) and the search may finish without placing it. An
//!   indeterminate read carries no information and is dropped; an
//!   indeterminate compare-and-set either succeeded (at some point) or had no
//!   effect.
//! - [`Outcome::CasFailed`]: a compare-and-set that took effect as a read
//!   which saw a value different from `expected`.
//!
//! # Algorithm
//!
//! The history is first partitioned by key: linearizability is *local*
//! (P-compositional), so a history is linearizable iff the sub-history of
//! every key is, and each key is checked on its own.
//!
//! For one key, the checker runs the depth-first search of Wing & Gong
//! (1993), in the form Lowe (2017) describes: at every point it tries to
//! linearize next each operation that is *minimal* (no other not yet
//! linearized, completed operation finished before it was invoked) and whose
//! effect on the current register value matches its outcome; it backtracks
//! when none fits. A configuration is the pair (set of linearized operations,
//! register value), and configurations already explored are memoized in a
//! hash set (the key optimization of Lowe's paper, also used by Knossos and
//! Porcupine), so each is expanded at most once. Register values are interned
//! to small integers and the set of linearized operations is a bitset.
//!
//! One more pruning: when a minimal, read-only operation (a read, a failed
//! compare-and-set) fits the current value, it is linearized immediately and
//! no alternative is tried. This is complete: it does not change the value,
//! and any successful continuation can be rearranged to start with it.
//! And a blind write (write, delete) is never tried right after an
//! indeterminate operation: that operation would have had no effect, and a
//! linearization without it exists. This keeps operations that timed out
//! from multiplying the configurations.
//!
//! The search succeeds once every operation with a definite outcome has been
//! linearized (indeterminate ones left over are taken never to have happened).
//! It is exponential in the worst case (the problem is NP-complete), so it
//! counts steps and returns [`CheckResult::Unknown`] once
//! [`CheckLimits::max_steps_per_key`] is exceeded, rather than running
//! forever. With a handful of concurrent clients a few hundred operations per
//! key take milliseconds.
//!
//! On a violation, [`CheckResult::Violation`] carries a readable explanation:
//! the longest linearizable prefix the search found (by number of operations
//! with a definite outcome), the register value after it, and the operations
//! that could have come next but do not fit that value.
//!
//! # References
//!
//! - J. M. Wing and C. Gong, "Testing and verifying concurrent objects",
//!   Journal of Parallel and Distributed Computing 17(1-2), 1993.
//! - G. Lowe, "Testing for linearizability", Concurrency and Computation:
//!   Practice and Experience 29(4), 2017.
//! - M. P. Herlihy and J. M. Wing, "Linearizability: a correctness condition
//!   for concurrent objects", ACM TOPLAS 12(3), 1990.
//!
//! # Example
//!
//! ```
//! use raft_core::testing::linearizability::{check, CheckLimits, History, Op, Outcome};
//!
//! let mut h = History::new();
//! let w = h.invoke(1, "x", Op::Write(b"a".to_vec()), 0);
//! let r = h.invoke(2, "x", Op::Read, 1); // overlaps the write
//! h.complete(w, 2, Outcome::WriteOk);
//! h.complete(r, 3, Outcome::ReadOk(Some(b"a".to_vec())));
//! assert!(check(&h, CheckLimits::default()).is_ok());
//!
//! // A read that starts after the write completed cannot see the old value.
//! let r = h.invoke(3, "x", Op::Read, 4);
//! h.complete(r, 5, Outcome::ReadOk(None));
//! assert!(!check(&h, CheckLimits::default()).is_ok());
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Identifies the client (process, session) that issued an operation. Only
/// used for reporting: a client's operations are ordered by their times like
/// everyone else's.
pub type ClientId = u64;

/// An operation a client invokes on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read the current value. Expects [`Outcome::ReadOk`].
    Read,
    /// Set the value. Expects [`Outcome::WriteOk`].
    Write(Vec<u8>),
    /// Remove the key (the value becomes absent). Expects [`Outcome::DeleteOk`].
    Delete,
    /// Compare-and-set: if the current value equals `expected`, set it to
    /// `new`. Expects [`Outcome::CasOk`] or [`Outcome::CasFailed`].
    Cas {
        /// The value the key must hold for the swap to happen; `None` means
        /// "the key is absent".
        expected: Option<Vec<u8>>,
        /// The value written when the comparison succeeds.
        new: Vec<u8>,
    },
}

/// What the client learnt about its operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A [`Op::Read`] returned this value (`None`: the key was absent).
    ReadOk(Option<Vec<u8>>),
    /// A [`Op::Write`] was acknowledged.
    WriteOk,
    /// A [`Op::Delete`] was acknowledged.
    DeleteOk,
    /// An [`Op::Cas`] found `expected` and wrote `new`.
    CasOk,
    /// An [`Op::Cas`] took effect without writing: the value it saw was not
    /// `expected`.
    CasFailed,
    /// The operation definitely did not take effect (e.g. rejected before
    /// being proposed). Failed operations are ignored by the checker.
    Failed,
    /// Unknown whether the operation took effect (timeout, crash, lost
    /// reply). It may take effect at any point after its invocation, or
    /// never. Also the state of an operation invoked through
    /// [`History::invoke`] and never completed.
    Indeterminate,
}

/// One client operation: what was asked, when, and what came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued the operation.
    pub client: ClientId,
    /// The key the operation is on.
    pub key: Vec<u8>,
    /// What was asked.
    pub op: Op,
    /// When the client sent the request.
    pub invoke: u64,
    /// When the client received the response; must be `>= invoke`. Required
    /// for every outcome except [`Outcome::Indeterminate`], for which it is
    /// ignored (conventionally `None`, or the time the client gave up).
    pub complete: Option<u64>,
    /// What came back.
    pub outcome: Outcome,
}

impl Operation {
    /// Whether `self` precedes `other` in real time: `self` completed (with a
    /// known outcome) before `other` was invoked. An indeterminate operation
    /// precedes nothing.
    pub fn precedes(&self, other: &Operation) -> bool {
        if self.outcome == Outcome::Indeterminate {
            return false;
        }
        self.complete.is_some_and(|c| c < other.invoke)
    }

    /// Checks that the outcome fits the operation and that the times are
    /// consistent; returns why not.
    fn validate(&self) -> Result<(), String> {
        let fits = matches!(
            (&self.op, &self.outcome),
            (_, Outcome::Failed | Outcome::Indeterminate)
                | (Op::Read, Outcome::ReadOk(_))
                | (Op::Write(_), Outcome::WriteOk)
                | (Op::Delete, Outcome::DeleteOk)
                | (Op::Cas { .. }, Outcome::CasOk | Outcome::CasFailed)
        );
        if !fits {
            return Err(format!(
                "outcome {:?} does not fit operation {:?}",
                self.outcome, self.op
            ));
        }
        if self.outcome == Outcome::Indeterminate {
            return Ok(());
        }
        match self.complete {
            None => Err(format!(
                "outcome {:?} without a completion time",
                self.outcome
            )),
            Some(c) if c < self.invoke => Err(format!(
                "completed at {c}, before it was invoked at {}",
                self.invoke
            )),
            Some(_) => Ok(()),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}, key {}: ", self.client, Val(Some(&self.key)))?;
        match &self.op {
            Op::Read => write!(f, "read")?,
            Op::Write(v) => write!(f, "write {}", Val(Some(v)))?,
            Op::Delete => write!(f, "delete")?,
            Op::Cas { expected, new } => {
                write!(f, "cas {} => {}", Val(expected.as_deref()), Val(Some(new)))?
            }
        }
        match &self.outcome {
            Outcome::ReadOk(v) => write!(f, " -> {}", Val(v.as_deref()))?,
            Outcome::WriteOk | Outcome::DeleteOk | Outcome::CasOk => write!(f, " -> ok")?,
            Outcome::CasFailed => write!(f, " -> cas failed")?,
            Outcome::Failed => write!(f, " -> failed")?,
            Outcome::Indeterminate => write!(f, " -> indeterminate")?,
        }
        match (&self.outcome, self.complete) {
            (Outcome::Indeterminate, _) | (_, None) => write!(f, ", t=[{}, ?]", self.invoke),
            (_, Some(c)) => write!(f, ", t=[{}, {c}]", self.invoke),
        }
    }
}

/// Handle to an operation recorded in a [`History`], returned by
/// [`History::invoke`] and [`History::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

impl OpId {
    /// The operation's position in [`History::ops`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// A client history: the operations of all clients on all keys, in any order.
///
/// Either [`push`](Self::push) complete [`Operation`]s, or record them as
/// they happen with [`invoke`](Self::invoke) and
/// [`complete`](Self::complete); an operation invoked and never completed is
/// [`Outcome::Indeterminate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a finished (or indeterminate) operation.
    pub fn push(&mut self, op: Operation) -> OpId {
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    /// Records that `client` invoked `op` on `key` at `time`. Until
    /// [`complete`](Self::complete)d, the operation is
    /// [`Outcome::Indeterminate`].
    pub fn invoke(&mut self, client: ClientId, key: impl Into<Vec<u8>>, op: Op, time: u64) -> OpId {
        self.push(Operation {
            client,
            key: key.into(),
            op,
            invoke: time,
            complete: None,
            outcome: Outcome::Indeterminate,
        })
    }

    /// Records the response to an invoked operation, received at `time`.
    /// Completing with [`Outcome::Indeterminate`] (the client gave up) is
    /// allowed; the time is then kept for reporting only.
    ///
    /// # Panics
    ///
    /// If `id` is not from this history or the operation was already
    /// completed.
    pub fn complete(&mut self, id: OpId, time: u64, outcome: Outcome) {
        let op = self.ops.get_mut(id.0).expect("OpId from another history");
        assert!(
            op.complete.is_none() && op.outcome == Outcome::Indeterminate,
            "operation {} completed twice: {op}",
            id.0
        );
        op.complete = Some(time);
        op.outcome = outcome;
    }

    /// The recorded operations, in the order they were recorded.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// The operation `id` refers to.
    pub fn get(&self, id: OpId) -> Option<&Operation> {
        self.ops.get(id.0)
    }

    /// The number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl From<Vec<Operation>> for History {
    fn from(ops: Vec<Operation>) -> Self {
        Self { ops }
    }
}

impl FromIterator<Operation> for History {
    fn from_iter<I: IntoIterator<Item = Operation>>(iter: I) -> Self {
        Self {
            ops: iter.into_iter().collect(),
        }
    }
}

impl Extend<Operation> for History {
    fn extend<I: IntoIterator<Item = Operation>>(&mut self, iter: I) {
        self.ops.extend(iter);
    }
}

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
/// every key initially absent. See the [module documentation](self) for the
/// semantics and the algorithm.
///
/// Keys are checked independently, in ascending order. A violation on any key
/// is reported in preference to an exhausted budget on another.
pub fn check(history: &History, limits: CheckLimits) -> CheckResult {
    for (index, op) in history.ops.iter().enumerate() {
        if let Err(reason) = op.validate() {
            return CheckResult::Invalid { index, reason };
        }
    }
    let mut by_key: BTreeMap<&[u8], Vec<Operation>> = BTreeMap::new();
    for op in &history.ops {
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

/// Displays an optional byte string: `absent`, a quoted string when it is
/// printable UTF-8, hex otherwise.
struct Val<'a>(Option<&'a [u8]>);

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
struct KeyChecker<'a> {
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
    fn new(key: &'a [u8], ops: Vec<Operation>) -> Self {
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

    fn run(self, limits: CheckLimits) -> CheckResult {
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
        const SHOWN: usize = 30;
        let mut out = String::new();
        let indeterminate = self.entries.len() - self.definite;
        let _ = writeln!(
            out,
            "history for key {} is not linearizable ({} operations checked, {indeterminate} of \
             them indeterminate; #i below is the i-th of them).",
            Val(Some(self.key)),
            self.entries.len(),
        );
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
        let min_complete = self.min_complete(&bits);
        let _ = writeln!(out, "None of the operations that could come next fits it:");
        let mut blocked = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if Self::is_set(&bits, i) || !e.definite {
                continue;
            }
            if e.invoke > min_complete {
                blocked.push(e.op);
                continue;
            }
            let why = match e.kind {
                _ if e.kind.apply(state).is_some() => {
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
            };
            let _ = writeln!(out, "  #{} {}: {why}", e.op, self.ops[e.op]);
        }
        if indeterminate > 0 {
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn op(
        client: ClientId,
        op: Op,
        invoke: u64,
        complete: Option<u64>,
        outcome: Outcome,
    ) -> Operation {
        Operation {
            client,
            key: v("x"),
            op,
            invoke,
            complete,
            outcome,
        }
    }

    fn w(client: ClientId, val: &str, invoke: u64, complete: u64) -> Operation {
        op(
            client,
            Op::Write(v(val)),
            invoke,
            Some(complete),
            Outcome::WriteOk,
        )
    }

    fn w_indet(client: ClientId, val: &str, invoke: u64) -> Operation {
        op(
            client,
            Op::Write(v(val)),
            invoke,
            None,
            Outcome::Indeterminate,
        )
    }

    fn r(client: ClientId, val: Option<&str>, invoke: u64, complete: u64) -> Operation {
        op(
            client,
            Op::Read,
            invoke,
            Some(complete),
            Outcome::ReadOk(val.map(v)),
        )
    }

    fn del(client: ClientId, invoke: u64, complete: u64) -> Operation {
        op(
            client,
            Op::Delete,
            invoke,
            Some(complete),
            Outcome::DeleteOk,
        )
    }

    fn cas(
        client: ClientId,
        expected: Option<&str>,
        new: &str,
        invoke: u64,
        complete: u64,
        ok: bool,
    ) -> Operation {
        let outcome = if ok {
            Outcome::CasOk
        } else {
            Outcome::CasFailed
        };
        op(
            client,
            Op::Cas {
                expected: expected.map(v),
                new: v(new),
            },
            invoke,
            Some(complete),
            outcome,
        )
    }

    fn on_key(mut o: Operation, key: &str) -> Operation {
        o.key = v(key);
        o
    }

    fn run(ops: Vec<Operation>) -> CheckResult {
        check(&History::from(ops), CheckLimits::default())
    }

    #[track_caller]
    fn assert_ok(ops: Vec<Operation>) {
        let result = run(ops);
        assert!(result.is_ok(), "expected linearizable, got: {result}");
    }

    #[track_caller]
    fn assert_violation(ops: Vec<Operation>) -> String {
        match run(ops) {
            CheckResult::Violation { explanation, .. } => explanation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_passes() {
        assert_ok(vec![]);
    }

    #[test]
    fn sequential_writes_and_reads_pass() {
        assert_ok(vec![
            r(1, None, 0, 1),
            w(1, "a", 2, 3),
            r(2, Some("a"), 4, 5),
            w(2, "b", 6, 7),
            r(1, Some("b"), 8, 9),
            r(3, Some("b"), 10, 11),
            del(3, 12, 13),
            r(1, None, 14, 15),
        ]);
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        for seen in [None, Some("a")] {
            assert_ok(vec![w(1, "a", 0, 10), r(2, seen, 2, 5)]);
        }
        for seen in [Some("a"), Some("b")] {
            assert_ok(vec![w(1, "a", 0, 1), w(1, "b", 2, 10), r(2, seen, 3, 12)]);
        }
        // Two reads during one write may see new then old only if they
        // overlap each other.
        assert_ok(vec![
            w(1, "a", 0, 20),
            r(2, Some("a"), 2, 10),
            r(3, None, 5, 12),
        ]);
        assert_violation(vec![
            w(1, "a", 0, 20),
            r(2, Some("a"), 2, 4),
            r(3, None, 5, 12),
        ]);
    }

    #[test]
    fn stale_read_fails() {
        let explanation = assert_violation(vec![
            w(1, "a", 0, 1),
            w(1, "b", 2, 3),
            r(2, Some("a"), 4, 5),
        ]);
        assert!(
            explanation.contains("Longest linearizable prefix"),
            "{explanation}"
        );
        assert!(
            explanation.contains("read \"a\", but the value is \"b\""),
            "{explanation}"
        );
    }

    #[test]
    fn lost_write_fails() {
        // "b" is acknowledged at 4, but a read starting at 7 still sees the
        // older "a" (the earlier read overlapping the write may).
        assert_violation(vec![
            w(1, "a", 0, 1),
            w(2, "b", 2, 4),
            r(3, Some("a"), 3, 6),
            r(3, Some("a"), 7, 8),
        ]);
    }

    #[test]
    fn read_before_write_invoked_fails() {
        assert_violation(vec![r(1, Some("a"), 0, 1), w(2, "a", 2, 3)]);
        // Overlapping is fine.
        assert_ok(vec![r(1, Some("a"), 0, 2), w(2, "a", 2, 3)]);
    }

    #[test]
    fn indeterminate_writes_do_not_excuse_stale_lost_or_early_values() {
        // A stale read: an indeterminate write of some other value does not
        // bring the old one back.
        assert_violation(vec![
            w(1, "a", 0, 1),
            w(1, "b", 2, 3),
            w_indet(2, "c", 2),
            r(3, Some("a"), 4, 5),
        ]);
        // A lost write: acknowledged "b", then a compare-and-set that still
        // finds "a", with an indeterminate delete in between.
        assert_violation(vec![
            w(1, "a", 0, 1),
            w(1, "b", 2, 3),
            op(2, Op::Delete, 2, None, Outcome::Indeterminate),
            cas(3, Some("a"), "c", 4, 5, true),
        ]);
        // A value visible before its write was invoked, also when that write
        // timed out: an indeterminate operation takes effect after its
        // invocation or never.
        assert_violation(vec![r(1, Some("a"), 0, 1), w_indet(2, "a", 2)]);
        assert_violation(vec![
            cas(1, None, "b", 0, 1, true),
            cas(2, Some("a"), "c", 2, 3, true),
            w_indet(3, "a", 4),
        ]);
        // Overlapping, the timed-out write may explain the read.
        assert_ok(vec![r(1, Some("a"), 2, 5), w_indet(2, "a", 3)]);
    }

    #[test]
    fn read_of_value_nobody_wrote_fails() {
        let explanation = assert_violation(vec![w(1, "a", 0, 1), r(2, Some("zz"), 0, 5)]);
        assert!(
            explanation.contains("no operation on this key writes"),
            "{explanation}"
        );
        // A failed write does not count as writing it.
        assert_violation(vec![
            op(1, Op::Write(v("zz")), 0, Some(1), Outcome::Failed),
            r(2, Some("zz"), 0, 5),
        ]);
        // Nor does a write to another key.
        assert_violation(vec![on_key(w(1, "zz", 0, 1), "y"), r(2, Some("zz"), 2, 5)]);
    }

    #[test]
    fn failed_operations_are_ignored() {
        assert_ok(vec![
            w(1, "a", 0, 1),
            op(2, Op::Write(v("b")), 2, Some(3), Outcome::Failed),
            op(2, Op::Read, 2, Some(3), Outcome::Failed),
            r(3, Some("a"), 4, 5),
        ]);
    }

    #[test]
    fn indeterminate_write_later_read_passes() {
        assert_ok(vec![
            w(1, "a", 0, 1),
            w_indet(2, "b", 2),
            r(3, Some("a"), 5, 6),
            r(3, Some("b"), 10, 11),
            r(1, Some("b"), 12, 13),
        ]);
        // It takes effect once: after "b" is seen, "a" cannot come back.
        assert_violation(vec![
            w(1, "a", 0, 1),
            w_indet(2, "b", 2),
            r(3, Some("b"), 5, 6),
            r(3, Some("a"), 10, 11),
        ]);
        // Not before it was invoked.
        assert_violation(vec![
            w(1, "a", 0, 1),
            r(3, Some("b"), 2, 3),
            w_indet(2, "b", 4),
        ]);
    }

    #[test]
    fn indeterminate_write_never_observed_passes() {
        assert_ok(vec![
            w(1, "a", 0, 1),
            w_indet(2, "b", 2),
            r(3, Some("a"), 5, 6),
            r(3, Some("a"), 7, 8),
        ]);
        // Its recorded timeout time does not bound it.
        let mut timed_out = w_indet(2, "b", 2);
        timed_out.complete = Some(3);
        assert_ok(vec![
            w(1, "a", 0, 1),
            timed_out,
            r(3, Some("a"), 5, 6),
            r(3, Some("b"), 7, 8),
        ]);
        // An indeterminate read carries no information.
        assert_ok(vec![
            w(1, "a", 0, 1),
            op(2, Op::Read, 2, None, Outcome::Indeterminate),
            r(3, Some("a"), 5, 6),
        ]);
    }

    #[test]
    fn delete_semantics() {
        assert_ok(vec![w(1, "a", 0, 1), del(2, 2, 3), r(1, None, 4, 5)]);
        assert_violation(vec![w(1, "a", 0, 1), del(2, 2, 3), r(1, Some("a"), 4, 5)]);
        assert_ok(vec![
            w(1, "a", 0, 1),
            del(2, 2, 6),
            r(1, Some("a"), 3, 4),
            r(1, None, 7, 8),
        ]);
    }

    #[test]
    fn cas_semantics() {
        // Success from absent, then from a value; failure on mismatch.
        assert_ok(vec![
            cas(1, None, "a", 0, 1, true),
            cas(2, Some("a"), "b", 2, 3, true),
            cas(1, Some("a"), "c", 4, 5, false),
            cas(1, None, "c", 6, 7, false),
            r(3, Some("b"), 8, 9),
        ]);
        // Success although the value was not the expected one.
        assert_violation(vec![w(1, "a", 0, 1), cas(2, Some("b"), "c", 2, 3, true)]);
        assert_violation(vec![w(1, "a", 0, 1), cas(2, None, "c", 2, 3, true)]);
        // Failure although the value was the expected one.
        let explanation =
            assert_violation(vec![w(1, "a", 0, 1), cas(2, Some("a"), "c", 2, 3, false)]);
        assert!(explanation.contains("cas failed"), "{explanation}");
        // The new value is what later reads see.
        assert_violation(vec![cas(1, None, "a", 0, 1, true), r(2, None, 2, 3)]);
    }

    #[test]
    fn concurrent_cas_from_same_value() {
        // Both cannot succeed from "a"...
        assert_violation(vec![
            w(1, "a", 0, 1),
            cas(2, Some("a"), "b", 2, 5, true),
            cas(3, Some("a"), "c", 2, 5, true),
        ]);
        // ... but one can, the other failing in either order.
        assert_ok(vec![
            w(1, "a", 0, 1),
            cas(2, Some("a"), "b", 2, 5, true),
            cas(3, Some("a"), "c", 2, 5, false),
            r(1, Some("b"), 6, 7),
        ]);
        assert_violation(vec![
            w(1, "a", 0, 1),
            cas(2, Some("a"), "b", 2, 5, true),
            cas(3, Some("a"), "c", 2, 5, false),
            r(1, Some("c"), 6, 7),
        ]);
        // Unless one of them wrote back the expected value.
        assert_ok(vec![
            w(1, "a", 0, 1),
            cas(2, Some("a"), "a", 2, 5, true),
            cas(3, Some("a"), "c", 2, 5, true),
        ]);
    }

    #[test]
    fn indeterminate_cas_may_or_may_not_apply() {
        let c = |ok| {
            op(
                2,
                Op::Cas {
                    expected: Some(v("a")),
                    new: v("b"),
                },
                2,
                None,
                ok,
            )
        };
        assert_ok(vec![
            w(1, "a", 0, 1),
            c(Outcome::Indeterminate),
            r(3, Some("b"), 5, 6),
        ]);
        assert_ok(vec![
            w(1, "a", 0, 1),
            c(Outcome::Indeterminate),
            r(3, Some("a"), 5, 6),
        ]);
        // It cannot apply when the expected value never held.
        assert_violation(vec![
            w(1, "z", 0, 1),
            c(Outcome::Indeterminate),
            r(3, Some("b"), 5, 6),
        ]);
    }

    #[test]
    fn keys_are_independent() {
        // Interleaved on two keys, each linearizable on its own.
        assert_ok(vec![
            on_key(w(1, "a", 0, 1), "x"),
            on_key(w(1, "b", 2, 3), "y"),
            on_key(r(2, Some("a"), 4, 5), "x"),
            on_key(r(2, None, 4, 5), "z"),
            on_key(r(2, Some("b"), 6, 7), "y"),
        ]);
        let result = run(vec![
            on_key(w(1, "a", 0, 1), "x"),
            on_key(w(1, "b", 2, 3), "y"),
            on_key(r(2, None, 4, 5), "y"),
            on_key(r(2, Some("a"), 6, 7), "x"),
        ]);
        match result {
            CheckResult::Violation { key, ops, .. } => {
                assert_eq!(key, v("y"));
                assert_eq!(ops.len(), 2);
                assert!(ops.iter().all(|o| o.key == v("y")));
            }
            other => panic!("expected a violation on y, got {other:?}"),
        }
    }

    #[test]
    fn malformed_histories_are_invalid() {
        let bad = [
            op(1, Op::Write(v("a")), 0, Some(1), Outcome::ReadOk(None)),
            op(1, Op::Read, 0, Some(1), Outcome::CasOk),
            op(1, Op::Delete, 0, Some(1), Outcome::WriteOk),
            op(1, Op::Read, 5, Some(4), Outcome::ReadOk(None)),
            op(1, Op::Read, 5, None, Outcome::ReadOk(None)),
        ];
        for o in bad {
            let result = run(vec![w(1, "a", 0, 1), o.clone()]);
            assert!(
                matches!(result, CheckResult::Invalid { index: 1, .. }),
                "{o:?}: {result:?}"
            );
        }
        // invoke == complete is allowed.
        assert_ok(vec![w(1, "a", 3, 3), r(1, Some("a"), 3, 3)]);
    }

    #[test]
    fn history_helpers_record_operations() {
        let mut h = History::new();
        assert!(h.is_empty());
        let a = h.invoke(1, "k", Op::Write(v("a")), 0);
        let b = h.invoke(2, "k", Op::Write(v("b")), 1);
        let rd = h.invoke(3, "k", Op::Read, 2);
        h.complete(a, 3, Outcome::WriteOk);
        h.complete(rd, 4, Outcome::ReadOk(Some(v("b"))));
        // `b` is never completed: indeterminate, and may explain the read.
        assert_eq!(h.len(), 3);
        assert_eq!(h.get(b).unwrap().outcome, Outcome::Indeterminate);
        assert!(h.get(a).unwrap().precedes(&Operation {
            invoke: 4,
            ..h.ops()[2].clone()
        }));
        assert!(check(&h, CheckLimits::default()).is_ok());
        let rd = h.invoke(3, "k", Op::Read, 5);
        // Linearizable as b, read, a, read: "a" may be seen again, but not absent.
        h.complete(rd, 6, Outcome::ReadOk(Some(v("a"))));
        assert!(check(&h, CheckLimits::default()).is_ok());
        let rd = h.invoke(3, "k", Op::Read, 7);
        h.complete(rd, 8, Outcome::ReadOk(None));
        assert!(!check(&h, CheckLimits::default()).is_ok());
    }

    #[test]
    #[should_panic(expected = "completed twice")]
    fn completing_twice_panics() {
        let mut h = History::new();
        let a = h.invoke(1, "k", Op::Read, 0);
        h.complete(a, 1, Outcome::ReadOk(None));
        h.complete(a, 2, Outcome::ReadOk(None));
    }

    #[test]
    fn display_is_readable() {
        let o = cas(7, None, "n", 3, 9, false);
        assert_eq!(
            o.to_string(),
            "client 7, key \"x\": cas absent => \"n\" -> cas failed, t=[3, 9]"
        );
        let o = op(1, Op::Write(vec![0, 255]), 3, None, Outcome::Indeterminate);
        assert_eq!(
            o.to_string(),
            "client 1, key \"x\": write 0x00ff -> indeterminate, t=[3, ?]"
        );
    }

    #[test]
    fn budget_exhaustion_is_unknown() {
        // Many concurrent writes and a read of a value that can't be last.
        let mut ops: Vec<_> = (0..12).map(|i| w(i, &format!("v{i}"), 0, 100)).collect();
        ops.push(r(99, None, 101, 102));
        let limits = CheckLimits {
            max_steps_per_key: 50,
        };
        match check(&History::from(ops.clone()), limits) {
            CheckResult::Unknown { key, reason } => {
                assert_eq!(key, v("x"));
                assert!(reason.contains("50 steps"), "{reason}");
            }
            other => panic!("expected Unknown, got {other:?}"),
        }
        // A violation on another key wins over an unknown.
        ops.push(on_key(r(1, Some("q"), 0, 1), "a"));
        ops.push(on_key(w(1, "q", 2, 3), "a"));
        let result = check(&History::from(ops), limits);
        assert!(
            matches!(&result, CheckResult::Violation { key, .. } if key == b"a"),
            "{result:?}"
        );
    }

    #[test]
    fn failure_explanation_names_the_blocked_operations() {
        let explanation = assert_violation(vec![
            w(1, "a", 0, 1),
            w(2, "b", 2, 3),
            r(3, Some("a"), 4, 5),
            r(1, Some("b"), 6, 7),
        ]);
        assert!(explanation.contains("#2 client 3"), "{explanation}");
        assert!(
            explanation.contains("Value after this prefix: \"b\""),
            "{explanation}"
        );
        assert!(
            explanation.contains("1 more definite operations"),
            "{explanation}"
        );
    }

    /// Exhaustive reference checker: tries every order of the operations
    /// (leaving out any indeterminate ones), no memo, no pruning.
    fn brute_force(ops: &[Operation]) -> bool {
        let ops: Vec<&Operation> = ops
            .iter()
            .filter(|o| o.outcome != Outcome::Failed)
            .filter(|o| !(o.op == Op::Read && o.outcome == Outcome::Indeterminate))
            .collect();
        fn go(ops: &[&Operation], used: &mut Vec<bool>, state: Option<Vec<u8>>) -> bool {
            let pending =
                |used: &[bool], j: usize| !used[j] && ops[j].outcome != Outcome::Indeterminate;
            if !(0..ops.len()).any(|j| pending(used, j)) {
                return true;
            }
            for i in 0..ops.len() {
                let blocked = (0..ops.len()).any(|j| pending(used, j) && ops[j].precedes(ops[i]));
                if used[i] || blocked {
                    continue;
                }
                let next = match (&ops[i].op, &ops[i].outcome) {
                    (Op::Read, Outcome::ReadOk(v)) if *v == state => Some(state.clone()),
                    (Op::Read, _) => None,
                    (Op::Write(v), _) => Some(Some(v.clone())),
                    (Op::Delete, _) => Some(None),
                    (Op::Cas { expected, .. }, Outcome::CasFailed) if *expected != state => {
                        Some(state.clone())
                    }
                    (Op::Cas { expected, new }, Outcome::CasOk | Outcome::Indeterminate)
                        if *expected == state =>
                    {
                        Some(Some(new.clone()))
                    }
                    (Op::Cas { .. }, _) => None,
                };
                if let Some(next) = next {
                    used[i] = true;
                    let found = go(ops, used, next);
                    used[i] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        go(&ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut counts = [0; 2];
        for case in 0..4000 {
            let n = 1 + rng.below(7) as usize;
            let val = |rng: &mut Rng| ["a", "b", "c"][rng.below(3) as usize];
            let ops: Vec<Operation> = (0..n)
                .map(|i| {
                    let invoke = rng.below(12);
                    let complete = invoke + rng.below(6);
                    let (o, outcome) = match rng.below(5) {
                        0 | 1 => {
                            let seen = (rng.below(4) > 0).then(|| v(val(&mut rng)));
                            (Op::Read, Outcome::ReadOk(seen))
                        }
                        2 => (Op::Write(v(val(&mut rng))), Outcome::WriteOk),
                        3 => (Op::Delete, Outcome::DeleteOk),
                        _ => {
                            let expected = (rng.below(4) > 0).then(|| v(val(&mut rng)));
                            let new = v(val(&mut rng));
                            let outcome = if rng.below(2) == 0 {
                                Outcome::CasOk
                            } else {
                                Outcome::CasFailed
                            };
                            (Op::Cas { expected, new }, outcome)
                        }
                    };
                    let outcome = match rng.below(10) {
                        0 | 1 => Outcome::Indeterminate,
                        2 => Outcome::Failed,
                        _ => outcome,
                    };
                    op(i as ClientId, o, invoke, Some(complete), outcome)
                })
                .collect();
            let expected = brute_force(&ops);
            let result = run(ops.clone());
            assert!(
                matches!(result, CheckResult::Ok | CheckResult::Violation { .. }),
                "case {case}: {result:?}"
            );
            assert_eq!(result.is_ok(), expected, "case {case}: {ops:#?}\n{result}");
            counts[usize::from(expected)] += 1;
        }
        // Both verdicts are well exercised.
        assert!(counts.iter().all(|&c| c > 500), "{counts:?}");
    }

    #[test]
    fn indeterminate_ops_around_blind_writes() {
        // Takes effect after a later write.
        assert_ok(vec![
            w_indet(1, "b", 0),
            w(2, "c", 1, 2),
            r(3, Some("b"), 3, 4),
        ]);
        // Overwritten right away, as if it never happened.
        assert_ok(vec![
            w_indet(1, "b", 0),
            w(2, "c", 1, 2),
            r(3, Some("c"), 3, 4),
        ]);
        // Needed to explain a failed cas.
        assert_ok(vec![
            w(1, "a", 0, 1),
            w_indet(2, "b", 2),
            cas(3, Some("a"), "x", 3, 4, false),
            w(1, "c", 5, 6),
            r(3, Some("c"), 7, 8),
        ]);
        assert_violation(vec![
            w(1, "a", 0, 1),
            w_indet(2, "b", 2),
            cas(3, Some("a"), "x", 3, 4, false),
            r(3, Some("a"), 5, 6),
        ]);
    }

    /// Deterministic xorshift64* generator, to keep tests free of seeds'
    /// dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Client state in the generator.
    enum Phase {
        Idle,
        Invoked(OpId, Op, Vec<u8>),
        Applied(OpId, Outcome),
    }

    /// A linearizable history made by a sequential simulation: every step
    /// one random client either invokes an operation, has its pending one
    /// take effect on the real map (its linearization point), or receives
    /// the response; so windows overlap. Some operations time out
    /// (indeterminate, applied or not) and some fail without effect.
    fn generate(
        seed: u64,
        clients: u64,
        ops: usize,
        keys: &[&str],
        distinct_values: u64,
    ) -> History {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut phases: Vec<Phase> = (0..clients).map(|_| Phase::Idle).collect();
        let mut h = History::new();
        let mut time = 0;
        let mut invoked = 0;
        let mut counter = 0;
        let mut value = |rng: &mut Rng| {
            counter += 1;
            if distinct_values == 0 {
                v(&format!("v{counter}"))
            } else {
                v(&format!("v{}", rng.below(distinct_values)))
            }
        };
        while invoked < ops || phases.iter().any(|p| !matches!(p, Phase::Idle)) {
            time += 1;
            let c = rng.below(clients) as usize;
            phases[c] = match std::mem::replace(&mut phases[c], Phase::Idle) {
                Phase::Idle if invoked < ops => {
                    invoked += 1;
                    let key = v(keys[rng.below(keys.len() as u64) as usize]);
                    let op = match rng.below(100) {
                        0..40 => Op::Read,
                        40..70 => Op::Write(value(&mut rng)),
                        70..75 => Op::Delete,
                        _ => {
                            let expected = if rng.below(2) == 0 {
                                map.get(&key).cloned()
                            } else {
                                Some(value(&mut rng))
                            };
                            Op::Cas {
                                expected,
                                new: value(&mut rng),
                            }
                        }
                    };
                    let id = h.invoke(c as ClientId, key.clone(), op.clone(), time);
                    Phase::Invoked(id, op, key)
                }
                Phase::Idle => Phase::Idle,
                Phase::Invoked(id, op, key) => match rng.below(100) {
                    0..3 => Phase::Idle, // times out before taking effect
                    3..5 => {
                        h.complete(id, time, Outcome::Failed);
                        Phase::Idle
                    }
                    _ => {
                        let outcome = match op {
                            Op::Read => Outcome::ReadOk(map.get(&key).cloned()),
                            Op::Write(val) => {
                                map.insert(key, val);
                                Outcome::WriteOk
                            }
                            Op::Delete => {
                                map.remove(&key);
                                Outcome::DeleteOk
                            }
                            Op::Cas { expected, new } => {
                                if map.get(&key) == expected.as_ref() {
                                    map.insert(key, new);
                                    Outcome::CasOk
                                } else {
                                    Outcome::CasFailed
                                }
                            }
                        };
                        Phase::Applied(id, outcome)
                    }
                },
                Phase::Applied(id, outcome) => {
                    // Took effect, but the reply may be lost.
                    let outcome = if rng.below(100) < 4 {
                        Outcome::Indeterminate
                    } else {
                        outcome
                    };
                    h.complete(id, time, outcome);
                    Phase::Idle
                }
            };
        }
        h
    }

    #[track_caller]
    /// Checks `h` within the default search budget: a verdict of `Ok`
    /// (not `Unknown`) shows the search stays within its bound, which no
    /// wall-clock limit on a loaded machine could show reliably.
    fn assert_generated_ok(h: &History) {
        let result = check(h, CheckLimits::default());
        assert_eq!(result, CheckResult::Ok, "{result}");
    }

    #[test]
    fn generated_history_of_150_ops_and_5_clients_passes() {
        for seed in 0..20 {
            let h = generate(seed, 5, 150, &["k"], 0);
            assert_eq!(h.len(), 150);
            assert_generated_ok(&h);
        }
    }

    #[test]
    fn generated_histories_with_repeated_values_and_keys_pass() {
        for seed in 0..20 {
            assert_generated_ok(&generate(seed, 5, 200, &["k"], 3));
            assert_generated_ok(&generate(seed, 8, 300, &["a", "b", "c"], 4));
        }
    }

    #[test]
    fn corrupted_generated_history_fails() {
        for seed in 0..10 {
            let h = generate(seed, 5, 150, &["k"], 0);
            let mut ops = h.ops().to_vec();
            // Make a late read observe the initial, long-overwritten state.
            let target = ops
                .iter()
                .rposition(|o| o.op == Op::Read && matches!(&o.outcome, Outcome::ReadOk(Some(_))))
                .expect("some read saw a value");
            // Only a violation if a write was acknowledged before the read.
            let acked_before = ops.iter().any(|o| {
                matches!(o.outcome, Outcome::WriteOk | Outcome::CasOk) && o.precedes(&ops[target])
            });
            let deleted = ops
                .iter()
                .any(|o| matches!(o.op, Op::Delete) && o.outcome != Outcome::Failed);
            ops[target].outcome = Outcome::ReadOk(Some(v("never-written")));
            let result = check(&History::from(ops.clone()), CheckLimits::default());
            assert!(
                matches!(result, CheckResult::Violation { .. }),
                "seed {seed}: {result:?}"
            );
            if acked_before && !deleted {
                ops[target].outcome = Outcome::ReadOk(None);
                let result = check(&History::from(ops), CheckLimits::default());
                assert!(
                    matches!(result, CheckResult::Violation { .. }),
                    "seed {seed}: {result:?}"
                );
            }
        }
    }
}
