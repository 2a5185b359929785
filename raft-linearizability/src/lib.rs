//! # raft-linearizability
//!
//! A linearizability checker for client histories against a key-value model.
//! It depends on nothing but `std`.
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
//! use raft_linearizability::{check, CheckLimits, History, Op, Outcome};
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

mod check;
mod history;
mod search;
#[cfg(test)]
mod tests;

pub use check::{check, CheckLimits, CheckResult};
pub use history::{ClientId, History, Op, OpId, Operation, Outcome};
