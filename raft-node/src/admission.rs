//! How long a node's recorded address admits it before it is a member.
//!
//! A join records the joiner's addresses (a replicated record) and then
//! adds it as a learner. Between the two, the record alone lets the joiner
//! connect. If the add never happens (the join failed or was abandoned),
//! the record must not admit the node forever: each node gives a record
//! that is not in the configuration `--join-admission-secs` from when it
//! first saw it so, then stops admitting it (the record stays, so a later
//! join of the same node with the same addresses works).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use raft_core::NodeId;

/// The recorded ids this node still admits, with when each was first seen
/// outside the configuration.
#[derive(Debug)]
pub(crate) struct JoinAdmission {
    window: Duration,
    first_seen: HashMap<NodeId, Instant>,
}

impl JoinAdmission {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            first_seen: HashMap::new(),
        }
    }

    /// The recorded ids that are outside `config` and whose admission ran
    /// out at `now`. An id in the configuration forgets its clock, so a
    /// node removed and recorded again later gets a new window.
    pub(crate) fn expired(
        &mut self,
        config: &BTreeSet<NodeId>,
        recorded: impl IntoIterator<Item = NodeId>,
        now: Instant,
    ) -> BTreeSet<NodeId> {
        let pending: BTreeSet<NodeId> = recorded
            .into_iter()
            .filter(|id| !config.contains(id))
            .collect();
        self.first_seen.retain(|id, _| pending.contains(id));
        pending
            .into_iter()
            .filter(|id| {
                let since = *self.first_seen.entry(*id).or_insert(now);
                now.saturating_duration_since(since) >= self.window
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_outside_the_configuration_admits_only_for_the_window() {
        let mut a = JoinAdmission::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let config = BTreeSet::from([1, 2, 3]);
        // Node 4's addresses are recorded; the add has not happened.
        assert!(a.expired(&config, [1, 2, 3, 4], t0).is_empty());
        assert!(a
            .expired(&config, [1, 2, 3, 4], t0 + Duration::from_secs(9))
            .is_empty());
        // The add never came: node 4 is no longer admitted.
        assert_eq!(
            a.expired(&config, [1, 2, 3, 4], t0 + Duration::from_secs(10)),
            BTreeSet::from([4])
        );
        // Members are never expired, however old.
        assert!(!a
            .expired(&config, [1, 2, 3, 4], t0 + Duration::from_secs(1000))
            .contains(&1));
    }

    #[test]
    fn a_join_that_completes_in_time_is_never_cut_off_and_a_new_record_starts_anew() {
        let mut a = JoinAdmission::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(a.expired(&BTreeSet::from([1]), [1, 4], t0).is_empty());
        // Node 4 became a learner within the window.
        let with_4 = BTreeSet::from([1, 4]);
        assert!(a
            .expired(&with_4, [1, 4], t0 + Duration::from_secs(60))
            .is_empty());
        // Later removed, and its addresses recorded again for a new join:
        // a new window from then.
        let t1 = t0 + Duration::from_secs(100);
        assert!(a.expired(&BTreeSet::from([1]), [1, 4], t1).is_empty());
        assert!(a
            .expired(&BTreeSet::from([1]), [1, 4], t1 + Duration::from_secs(9))
            .is_empty());
        assert_eq!(
            a.expired(&BTreeSet::from([1]), [1, 4], t1 + Duration::from_secs(10)),
            BTreeSet::from([4])
        );
    }
}
