//! What clients did: operations, their outcomes and times.

use std::fmt;

use crate::search::Val;

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
    pub(crate) fn validate(&self) -> Result<(), String> {
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
