//! Leadership transfer (thesis §3.10).

use raft_core::engine::{ProposalRefused, Role};
use raft_core::MessageBody;

use crate::network::{data, Network};

fn timeout_now_sent(net: &Network, to: u64) -> bool {
    net.sent
        .iter()
        .any(|s| s.msg.to == to && s.msg.body == MessageBody::TimeoutNow)
}

/// Thesis §3.10: to an up-to-date follower the leader sends `TimeoutNow` at
/// once; the target campaigns without waiting for its timeout (and despite
/// the other voters' leader lease) and becomes leader in the next term.
#[test]
fn transfer_to_an_up_to_date_follower() {
    let mut net = Network::new(3);
    net.elect(1);
    net.propose(1, "a").unwrap();
    net.tick_all(3);
    net.clear_sent();
    net.transfer_leader(1, 2).unwrap();
    assert!(timeout_now_sent(&net, 2), "TimeoutNow is sent at once");
    net.deliver_all();
    assert_eq!(net.leader(), Some(2));
    assert_eq!(net.term(2), 2, "the target leads the next term");
    for id in net.ids() {
        assert_eq!(net.engine(id).leader(), Some(2), "node {id}");
        assert_eq!(net.term(id), 2);
    }
    assert_eq!(net.role(1), Role::Follower);
    net.propose(2, "b").unwrap();
    net.tick_all(3);
    for id in net.ids() {
        assert_eq!(
            net.node(id).applied_data(),
            vec![data("a"), data("b")],
            "node {id}"
        );
    }
}

/// Thesis §3.10 step 1: a lagging target is first caught up by normal
/// replication, and only then told to time out; meanwhile the leader
/// refuses proposals (`TransferInProgress`) so the target can catch up.
#[test]
fn transfer_to_a_lagging_follower_catches_it_up_first() {
    let mut net = Network::new(3);
    net.cut(1, 3);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, &format!("v{i}")).unwrap();
    }
    net.deliver_all();
    assert_eq!(net.engine(1).commit_index(), 6, "committed through 2");
    assert!(net.node(3).disk.log.is_empty(), "3 lags behind");

    net.recover();
    net.clear_sent();
    net.transfer_leader(1, 3).unwrap();
    assert!(
        !timeout_now_sent(&net, 3),
        "TimeoutNow before the target caught up"
    );
    assert_eq!(
        net.propose(1, "refused"),
        Err(ProposalRefused::TransferInProgress(3))
    );
    assert!(net
        .node(1)
        .soft_states
        .last()
        .is_some_and(|s| s.transferee == Some(3)));

    net.tick_all_until(20, |n| n.leader() == Some(3));
    assert_eq!(net.term(3), 2);
    net.tick_all(3);
    for id in net.ids() {
        assert_eq!(net.engine(id).leader(), Some(3), "node {id}");
        assert_eq!(
            net.node(id).applied_data().len(),
            5,
            "node {id} applied v0..v4"
        );
        assert!(!net.node(id).applied_data().contains(&data("refused")));
    }
}

/// Thesis §3.10: "if the transfer does not complete within an election
/// timeout, the prior leader aborts the transfer and resumes accepting
/// client requests". The target here is unreachable.
#[test]
fn transfer_to_an_unreachable_target_aborts_after_an_election_timeout() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    net.isolate(3);
    net.propose(1, "a").unwrap();
    net.deliver_all();
    net.transfer_leader(1, 3).unwrap();
    assert_eq!(
        net.propose(1, "b"),
        Err(ProposalRefused::TransferInProgress(3))
    );
    let timeout = net.engine(1).config().election_timeout_ticks;
    net.tick_all(timeout - 1);
    assert_eq!(
        net.propose(1, "c"),
        Err(ProposalRefused::TransferInProgress(3)),
        "aborted early"
    );
    net.tick_all(1);
    assert_eq!(net.role(1), Role::Leader, "the leader kept its leadership");
    assert_eq!(net.term(1), 1);
    assert!(net
        .node(1)
        .soft_states
        .last()
        .is_some_and(|s| s.transferee.is_none()));
    let d = net.propose(1, "d").expect("proposals are accepted again");
    net.deliver_all();
    assert_eq!(net.engine(1).commit_index(), d.index);
    assert_eq!(net.node(2).applied_data(), vec![data("a"), data("d")]);
}
