//! Membership changes (thesis chapter 4): configurations in force when
//! appended, joint consensus, removing the leader, removed servers, one
//! change at a time, and the changes the leader refuses.
//!
//! Spare nodes join as a real new server would: with an empty bootstrap
//! configuration, so they neither campaign nor count until a configuration
//! entry names them. (These clusters are built by replacing the harness's
//! engines before anything ran; none of these tests restarts a node, which
//! would bootstrap it with the harness's all-voter configuration.)

use std::collections::BTreeSet;

use raft_core::engine::{ChangeError, Engine, InitialState, MembershipChange, Role};
use raft_core::{Config, EntryPayload, LogId, Membership, MessageBody, NodeId};

use crate::network::{data, Network};

/// `voters` voters (ids `1..=voters`) and `spares` spare nodes (the next
/// ids) outside the configuration; `tweak` adjusts every node's config.
fn cluster(voters: u64, spares: u64, tweak: impl Fn(&mut Config)) -> Network {
    let mut net = Network::with_config(voters + spares, &tweak);
    for id in net.ids() {
        let bootstrap = if id <= voters {
            Membership::new(1..=voters)
        } else {
            Membership::default()
        };
        let mut cfg = Config::new(id);
        tweak(&mut cfg);
        net.node_mut(id).engine =
            Engine::new(cfg, InitialState::bootstrap(bootstrap)).expect("valid configuration");
    }
    net
}

/// Asks `leader` for `change` and handles its output (delivers nothing).
fn change(
    net: &mut Network,
    leader: NodeId,
    change: MembershipChange,
) -> Result<LogId, ChangeError> {
    let r = net.node_mut(leader).engine.change_membership(change);
    net.process(leader);
    r
}

/// Asks `leader` for `c`, delivers everything and checks the change is done
/// (committed, not joint).
fn change_and_commit(net: &mut Network, leader: NodeId, c: MembershipChange) -> Membership {
    let id = change(net, leader, c.clone()).unwrap_or_else(|e| panic!("{c:?} refused: {e}"));
    net.deliver_all();
    let e = net.engine(leader);
    assert!(
        e.commit_index() >= id.index && e.membership_committed() && !e.membership().is_joint(),
        "{c:?} did not complete: {:?}",
        e.status()
    );
    e.membership().clone()
}

fn voters(ids: impl IntoIterator<Item = NodeId>) -> BTreeSet<NodeId> {
    ids.into_iter().collect()
}

/// Thesis §4.1: "a server always uses the latest configuration in its log,
/// regardless of whether that entry is committed". The leader uses a new
/// configuration from the moment it appends it, each follower from the
/// moment it appends it, long before it commits; the new learner then
/// receives the whole log without being counted in any quorum.
#[test]
fn configuration_takes_effect_when_appended() {
    let mut net = cluster(3, 1, |_| {});
    net.elect(1);
    net.propose(1, "a").unwrap();
    net.deliver_all();

    // Followers append but cannot acknowledge: nothing commits.
    net.hold_persist(2);
    net.hold_persist(3);
    let id = change(&mut net, 1, MembershipChange::AddLearner(4)).unwrap();
    let with_learner = Membership::with_learners([1, 2, 3], [4]);
    assert_eq!(net.engine(1).membership(), &with_learner, "leader: at once");
    assert!(!net.engine(1).membership_committed());
    net.deliver_all();
    for f in [2, 3] {
        let e = net.engine(f);
        assert_eq!(e.membership(), &with_learner, "follower {f}: when appended");
        assert!(
            e.commit_index() < id.index,
            "follower {f}: not committed yet"
        );
    }
    assert!(net.engine(1).commit_index() < id.index);

    net.release_persist(2);
    net.release_persist(3);
    net.deliver_all();
    net.tick_all(5);
    assert!(net.engine(1).membership_committed());
    assert_eq!(net.engine(4).membership(), &with_learner);
    assert_eq!(
        net.node(4).applied_data(),
        vec![data("a")],
        "the learner applies the log"
    );
    assert_eq!(net.role(4), Role::Follower);
}

/// Thesis §4.3 (joint consensus): while the cluster is in C_old,new, an
/// entry commits only once a majority of C_old *and* a majority of C_new
/// hold it. `cut_old` cuts the old voters (2, 3) off, otherwise the new
/// ones (4, 5); either way the joint entry and what follows stay
/// uncommitted until the links come back.
fn joint_entry_waits_for_both_majorities(cut_old: bool) {
    // Without check-quorum the leader keeps its office while cut off from
    // one half, which keeps the test to the commit rule.
    let mut net = cluster(3, 2, |c| c.check_quorum = false);
    net.elect(1);
    change_and_commit(&mut net, 1, MembershipChange::AddLearner(4));
    change_and_commit(&mut net, 1, MembershipChange::AddLearner(5));

    let cut = if cut_old { [2, 3] } else { [4, 5] };
    for id in cut {
        net.isolate(id);
    }
    let joint = change(
        &mut net,
        1,
        MembershipChange::SetVoters {
            voters: voters([1, 4, 5]),
            keep_as_learners: false,
        },
    )
    .unwrap();
    assert_eq!(
        net.engine(1).membership(),
        &Membership::joint([1, 2, 3], [1, 4, 5], []),
        "C_old,new is in force"
    );
    let p = net.propose(1, "p").unwrap();
    net.tick_all(30);
    let (old, new) = if cut_old {
        ("{1}", "{1, 4, 5}")
    } else {
        ("{1, 2, 3}", "{1}")
    };
    assert!(
        net.engine(1).commit_index() < joint.index,
        "C_old,new committed with acknowledgements from old voters {old} and new voters {new}"
    );
    assert_eq!(net.leader(), Some(1));

    net.recover();
    net.tick_all(30);
    let e = net.engine(1);
    assert!(e.commit_index() >= p.index, "both majorities now hold it");
    assert_eq!(e.membership(), &Membership::new([1, 4, 5]), "C_new follows");
    assert!(e.membership_committed());
}

/// Thesis §4.3: the new voters alone cannot commit in C_old,new.
#[test]
fn joint_consensus_needs_the_old_majority() {
    joint_entry_waits_for_both_majorities(true);
}

/// Thesis §4.3: the old voters alone cannot commit in C_old,new.
#[test]
fn joint_consensus_needs_the_new_majority() {
    joint_entry_waits_for_both_majorities(false);
}

/// Thesis §4.2.2: a leader that removes itself keeps managing the cluster
/// (without counting itself) until C_new is committed, then steps down and
/// hands over to a voter of C_new, which leads from then on; the old leader
/// never campaigns again.
#[test]
fn leader_not_in_c_new_steps_down_once_c_new_commits() {
    let mut net = cluster(3, 0, |_| {});
    net.elect(1);
    net.propose(1, "a").unwrap();
    net.deliver_all();

    // C_old,new reaches the followers; their acknowledgements wait.
    net.hold_persist(2);
    net.hold_persist(3);
    change(&mut net, 1, MembershipChange::Remove(1)).unwrap();
    net.deliver_all();
    net.release_persist(2);
    net.release_persist(3);
    // The acknowledgements arrive: C_old,new commits and the leader
    // appends C_new at once (what it sends about it is lost for now).
    net.deliver_all_except(|_, m| m.from == 1);
    let c_new = Membership::new([2, 3]);
    let e = net.engine(1);
    assert_eq!(e.membership(), &c_new, "C_new appended");
    assert!(!e.membership_committed());
    assert_eq!(e.role(), Role::Leader, "still managing the cluster");

    net.clear_sent();
    net.tick_all_until(50, |n| n.role(1) != Role::Leader);
    assert!(
        net.engine(1).membership_committed(),
        "stepped down once C_new committed"
    );
    assert!(
        net.sent
            .iter()
            .any(|s| s.msg.from == 1 && s.msg.body == MessageBody::TimeoutNow),
        "handed leadership over"
    );
    let new_leader = net.leader().expect("a voter of C_new leads");
    assert!(new_leader == 2 || new_leader == 3);
    let term = net.term(new_leader);

    net.tick_all(200);
    assert_eq!(net.leader(), Some(new_leader));
    assert_eq!(net.term(new_leader), term);
    assert_eq!(
        net.role(1),
        Role::Follower,
        "the removed node never campaigns"
    );
    net.propose(new_leader, "b").unwrap();
    net.tick_all(5);
    assert_eq!(
        net.node(new_leader).applied_data(),
        vec![data("a"), data("b")]
    );
}

/// Thesis §4.2.3: a removed server that never learnt of its removal times
/// out and campaigns, but the remaining servers, hearing from their leader,
/// disregard it (pre-vote and check-quorum): the leader and the term stay.
/// With `pre_vote` off the removed server raises its own term, still
/// without effect.
fn removed_server_cannot_disrupt(pre_vote: bool) {
    let mut net = cluster(3, 0, |c| c.pre_vote = pre_vote);
    net.elect(1);
    net.propose(1, "a").unwrap();
    net.deliver_all();
    // Node 3 gets C_old,new but not C_new.
    net.drop_if(|m| {
        m.to == 3
            && matches!(&m.body, MessageBody::AppendEntries { entries, .. }
                if entries.iter().any(|e| matches!(&e.payload,
                    EntryPayload::Membership(c) if !c.is_joint())))
    });
    change_and_commit(&mut net, 1, MembershipChange::Remove(3));
    assert_eq!(net.engine(1).membership(), &Membership::new([1, 2]));
    assert!(
        net.engine(3).membership().is_joint(),
        "3 missed its removal"
    );
    net.recover();

    let term = net.term(1);
    net.clear_sent();
    net.tick_all(300);
    assert!(
        net.sent
            .iter()
            .any(|s| s.msg.from == 3 && matches!(s.msg.body, MessageBody::RequestVote { .. })),
        "the removed server campaigned"
    );
    assert_eq!(net.leader(), Some(1), "leader undisturbed");
    assert_eq!(net.term(1), term, "term undisturbed");
    assert_eq!(net.term(2), term);
    net.propose(1, "b").unwrap();
    net.tick_all(3);
    assert_eq!(net.node(2).applied_data(), vec![data("a"), data("b")]);
}

/// Thesis §4.2.3 with pre-vote and check-quorum (the defaults).
#[test]
fn removed_server_cannot_disrupt_the_cluster() {
    removed_server_cannot_disrupt(true);
}

/// Thesis §4.2.3: the leader lease (check-quorum) alone keeps a removed
/// server's rising term away.
#[test]
fn removed_server_cannot_disrupt_even_without_pre_vote() {
    removed_server_cannot_disrupt(false);
}

/// One change at a time: while a configuration is uncommitted (or the
/// cluster is in C_old,new) another change is refused with the index of
/// the one in progress, and nothing is appended. A new leader also refuses
/// until it committed an entry of its own term.
#[test]
fn one_change_at_a_time() {
    let mut net = cluster(3, 2, |_| {});
    // The new leader's first entry is not acknowledged yet.
    net.drop_if(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    net.elect(1);
    assert_eq!(
        change(&mut net, 1, MembershipChange::AddLearner(4)),
        Err(ChangeError::LeaderNotReady),
        "no entry of its term committed yet"
    );
    net.recover();
    net.tick_all(5);

    let first = change(&mut net, 1, MembershipChange::AddLearner(4)).unwrap();
    let last = net.engine(1).last_log_id();
    assert_eq!(
        change(&mut net, 1, MembershipChange::AddLearner(5)),
        Err(ChangeError::InProgress { index: first.index })
    );
    assert_eq!(net.engine(1).last_log_id(), last, "nothing appended");
    net.deliver_all();
    change_and_commit(&mut net, 1, MembershipChange::AddLearner(5));

    let joint = change(&mut net, 1, MembershipChange::Promote(4)).unwrap();
    assert!(net.engine(1).membership().is_joint());
    assert_eq!(
        change(&mut net, 1, MembershipChange::Promote(5)),
        Err(ChangeError::InProgress { index: joint.index })
    );
    net.deliver_all();
    assert_eq!(
        net.engine(1).membership(),
        &Membership::with_learners([1, 2, 3, 4], [5])
    );
    change_and_commit(&mut net, 1, MembershipChange::Promote(5));
    assert_eq!(
        net.engine(1).membership(),
        &Membership::new([1, 2, 3, 4, 5])
    );
}

/// Thesis §4.2.1: a learner becomes a voter only once it caught up (within
/// `max_promotion_lag_entries` entries of the leader), so the new voter does not
/// stall commits; until then the promotion is refused and changes nothing.
#[test]
fn promotion_is_refused_while_the_learner_lags() {
    let mut net = cluster(3, 1, |c| c.max_promotion_lag_entries = 2);
    net.elect(1);
    net.deliver_all();
    change_and_commit(&mut net, 1, MembershipChange::AddLearner(4));
    net.isolate(4);
    for i in 0..5 {
        net.propose(1, &format!("v{i}")).unwrap();
    }
    net.deliver_all();

    let before = (
        net.engine(1).last_log_id(),
        net.engine(1).membership().clone(),
    );
    match change(&mut net, 1, MembershipChange::Promote(4)) {
        Err(ChangeError::Lagging { id: 4, lag, max: 2 }) => assert!(lag >= 5, "lag {lag}"),
        other => panic!("expected Lagging, got {other:?}"),
    }
    assert_eq!(
        (
            net.engine(1).last_log_id(),
            net.engine(1).membership().clone()
        ),
        before,
        "a refused change changes nothing"
    );

    net.recover();
    net.tick_all(10);
    change_and_commit(&mut net, 1, MembershipChange::Promote(4));
    assert_eq!(net.engine(1).membership(), &Membership::new([1, 2, 3, 4]));
}

/// The last voter cannot be removed, demoted or replaced by nobody: the
/// leader refuses with `NoVoters`, a clear message, and changes nothing.
#[test]
fn removing_the_last_voter_is_refused() {
    let mut net = cluster(1, 1, |_| {});
    net.elect(1);
    net.deliver_all();
    change_and_commit(&mut net, 1, MembershipChange::AddLearner(2));
    let before = (
        net.engine(1).last_log_id(),
        net.engine(1).membership().clone(),
    );
    for c in [
        MembershipChange::Remove(1),
        MembershipChange::Demote(1),
        MembershipChange::SetVoters {
            voters: BTreeSet::new(),
            keep_as_learners: true,
        },
    ] {
        let err = change(&mut net, 1, c.clone()).expect_err("must be refused");
        assert_eq!(err, ChangeError::NoVoters, "{c:?}");
        assert_eq!(
            err.to_string(),
            "the change would leave the cluster without voters"
        );
        assert_eq!(
            (
                net.engine(1).last_log_id(),
                net.engine(1).membership().clone()
            ),
            before,
            "{c:?} changed something"
        );
    }
    assert_eq!(net.role(1), Role::Leader);
}
