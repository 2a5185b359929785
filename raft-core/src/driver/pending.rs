//! [`ByIndex`]: the proposals waiting for their entries, in index order.
//!
//! A leader appends its proposals at increasing indexes and they commit
//! from the lowest up, so the map is a queue: a proposal joins at the back
//! and a commit takes a prefix from the front, each in constant time (a
//! tree map paid a search and node allocations for every proposal). A
//! forwarded proposal's index may come out of order; it is inserted in its
//! place by binary search.

use std::collections::VecDeque;

use crate::types::Index;

/// Values by index, in increasing index order, one per index.
#[derive(Debug)]
pub(super) struct ByIndex<P> {
    items: VecDeque<(Index, P)>,
}

impl<P> Default for ByIndex<P> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
        }
    }
}

impl<P> ByIndex<P> {
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// The lowest index held.
    pub(super) fn lowest(&self) -> Option<Index> {
        self.items.front().map(|(i, _)| *i)
    }

    /// Puts `value` at `index`; returns the value it replaced there.
    pub(super) fn insert(&mut self, index: Index, value: P) -> Option<P> {
        if self.items.back().is_none_or(|(last, _)| *last < index) {
            self.items.push_back((index, value));
            return None;
        }
        match self.items.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => Some(std::mem::replace(&mut self.items[at].1, value)),
            Err(at) => {
                self.items.insert(at, (index, value));
                None
            }
        }
    }

    /// Takes out every value at or below `last`, in index order.
    pub(super) fn take_upto(&mut self, last: Index) -> impl Iterator<Item = (Index, P)> + '_ {
        let end = self.items.partition_point(|(i, _)| *i <= last);
        self.items.drain(..end)
    }

    /// Takes out every value at or above `from`, in index order.
    pub(super) fn take_from(&mut self, from: Index) -> VecDeque<(Index, P)> {
        let start = self.items.partition_point(|(i, _)| *i < from);
        self.items.split_off(start)
    }

    /// Takes out every value, in index order.
    pub(super) fn take_all(&mut self) -> VecDeque<(Index, P)> {
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::ByIndex;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        TakeUpto(u64),
        TakeFrom(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..64).prop_map(Op::Insert),
            1 => (0u64..64).prop_map(Op::TakeUpto),
            1 => (0u64..64).prop_map(Op::TakeFrom),
        ]
    }

    proptest! {
        /// Behaves as a map ordered by index would, whatever the order of
        /// the inserts.
        #[test]
        fn acts_as_an_ordered_map(ops in proptest::collection::vec(op(), 1..200)) {
            let mut ours = ByIndex::default();
            let mut model = BTreeMap::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(i) => prop_assert_eq!(ours.insert(i, n), model.insert(i, n)),
                    Op::TakeUpto(last) => {
                        let above = model.split_off(&(last + 1));
                        let taken: Vec<_> = std::mem::replace(&mut model, above).into_iter().collect();
                        prop_assert_eq!(ours.take_upto(last).collect::<Vec<_>>(), taken);
                    }
                    Op::TakeFrom(from) => {
                        let taken: Vec<_> = model.split_off(&from).into_iter().collect();
                        prop_assert_eq!(ours.take_from(from).into_iter().collect::<Vec<_>>(), taken);
                    }
                }
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(ours.lowest(), model.keys().next().copied());
            }
            let all: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(ours.take_all().into_iter().collect::<Vec<_>>(), all);
            prop_assert_eq!(ours.len(), 0);
        }
    }
}
