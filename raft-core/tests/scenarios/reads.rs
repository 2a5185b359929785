//! Linearizable reads: ReadIndex and lease reads.

use raft_core::engine::{ReadRefused, ReadState, Role};
use raft_core::MessageBody;

use crate::network::{msg, Network};

/// Thesis §6.4 (ReadIndex), step 3: the leader records its commit index
/// and releases the read only after a heartbeat round answered by a quorum
/// confirms it is still leader. Answers from a minority are not enough.
#[test]
fn read_index_waits_for_a_quorum_heartbeat_round() {
    let mut net = Network::new(5);
    net.elect(1);
    net.tick_all(3);
    let commit = net.engine(1).commit_index();
    // Only 2 can answer the leader: leader + 1 of 5 is no quorum.
    for id in [3, 4, 5] {
        net.drop_link(id, 1);
    }
    net.read_index(1, 7).unwrap();
    assert!(
        net.node(1).read_states.is_empty(),
        "released before any heartbeat answer"
    );
    assert!(
        net.links
            .iter()
            .any(|m| m.from == 1 && matches!(m.body, MessageBody::AppendEntries { .. })),
        "the read starts a heartbeat round at once"
    );
    net.deliver_all();
    net.tick(1, 6);
    net.deliver_all();
    assert!(
        net.node(1).read_states.is_empty(),
        "released on a minority's answers"
    );

    // A third voter answers the next round: the read is released.
    net.recover();
    for id in [4, 5] {
        net.drop_link(id, 1);
    }
    net.tick_all_until(5, |n| !n.node(1).read_states.is_empty());
    assert_eq!(
        net.node(1).read_states,
        vec![ReadState {
            id: 7,
            index: commit
        }]
    );
    assert!(net.node(1).failed_reads.is_empty());
}

/// Thesis §6.4 (and §6.4.1, §6.2): a leader deposed by a partition must not
/// serve a read from its stale state. While it still believes it leads it
/// may accept a ReadIndex read, but no quorum confirms it, so the read is
/// never released and fails once the node steps down (by check-quorum or on
/// learning the new term); its lease has expired by the time another
/// leader can be elected. Once it has stepped down it refuses reads.
#[test]
fn read_index_on_a_deposed_leader_is_never_served() {
    for check_quorum in [false, true] {
        let mut net = Network::with_config(3, |c| c.check_quorum = check_quorum);
        net.elect(1);
        net.propose(1, "x=1").unwrap();
        net.tick_all(3);
        net.isolate(1);
        net.tick_all_until(300, |n| n.leader().is_some_and(|l| l != 1));
        let leader = net.leader().unwrap();
        net.propose(leader, "x=2").unwrap();
        net.tick_all(3);

        if net.role(1) == Role::Leader {
            assert_eq!(
                net.read_lease(1, 41),
                Err(ReadRefused::LeaseNotHeld),
                "a deposed leader still held its lease after a new leader was elected"
            );
            assert_eq!(net.read_index(1, 42), Ok(()), "it still thinks it leads");
            net.tick(1, 20);
            assert!(net.node(1).read_states.is_empty(), "served a stale read");
            net.recover();
            net.tick_all(5);
            assert_eq!(net.role(1), Role::Follower);
            assert!(
                matches!(
                    net.node(1).failed_reads.as_slice(),
                    [(42, ReadRefused::NotLeader { .. })]
                ),
                "the read fails when the node steps down: {:?}",
                net.node(1).failed_reads
            );
        } else {
            assert!(check_quorum, "only check-quorum deposes an isolated leader");
            assert_eq!(
                net.read_index(1, 42),
                Err(ReadRefused::NotLeader { leader: None })
            );
            assert_eq!(
                net.read_lease(1, 43),
                Err(ReadRefused::NotLeader { leader: None })
            );
        }
        assert!(
            net.node(1).read_states.is_empty(),
            "served a stale read (cq={check_quorum})"
        );
    }
}

/// Thesis §6.4 step 1 (and paper §8): a new leader does not know the commit
/// index until an entry of its own term commits, so ReadIndex reads wait for
/// that, even when heartbeat rounds confirm its leadership meanwhile.
#[test]
fn read_index_on_a_new_leader_waits_for_its_first_commit() {
    let mut net = Network::new(3);
    net.elect(1);
    net.propose(1, "x").unwrap();
    net.tick_all(3);
    // Leadership moves to 2, whose entries (its blank) cannot leave it.
    net.drop_if(|m| {
        m.from == 2
            && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
    });
    net.transfer_leader(1, 2).unwrap();
    net.deliver_all();
    assert_eq!(net.leader(), Some(2));
    let blank = net.engine(2).last_log_id();
    assert_eq!(blank.term, 2);
    net.read_index(2, 5).unwrap();
    net.tick_all(10);
    assert_eq!(net.role(2), Role::Leader, "heartbeats keep it leader");
    assert!(net.engine(2).commit_index() < blank.index);
    assert!(
        net.node(2).read_states.is_empty(),
        "released before the term's first commit"
    );

    net.recover();
    net.tick_all_until(10, |n| !n.node(2).read_states.is_empty());
    let rs = net.node(2).read_states[0];
    assert_eq!(rs.id, 5);
    assert!(
        rs.index >= blank.index,
        "read index {} below the new term's blank",
        rs.index
    );
}

/// Ticks the leader alone until it starts a heartbeat round, then delivers
/// everything; returns after the round was answered.
fn heartbeat_round(net: &mut Network, leader: u64) {
    net.clear_sent();
    for _ in 0..1_000 {
        if net.sent.iter().any(|s| s.msg.from == leader) {
            break;
        }
        net.tick(leader, 1);
    }
    assert!(
        net.sent.iter().any(|s| s.msg.from == leader),
        "leader {leader} sent nothing in 1,000 ticks"
    );
    net.deliver_all();
}

/// Thesis §6.4.1 (lease reads): right after a heartbeat round answered by a
/// quorum, the leader serves a read without a round trip; once `lease_ticks`
/// ticks passed since that round started without a newer quorum answer, it
/// refuses with `LeaseNotHeld`. Without check-quorum lease reads are refused.
#[test]
fn lease_read_is_served_only_while_the_lease_holds() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    heartbeat_round(&mut net, 1);
    assert!(net.engine(1).lease_valid());
    net.read_lease(1, 1).unwrap();
    assert_eq!(
        net.node(1).read_states,
        vec![ReadState {
            id: 1,
            index: net.engine(1).commit_index()
        }],
        "served at once"
    );

    net.isolate(1);
    let lease = net.engine(1).config().lease_ticks;
    net.tick(1, lease - 1);
    assert_eq!(net.read_lease(1, 2), Ok(()), "still inside the lease");
    net.tick(1, 1);
    assert_eq!(
        net.role(1),
        Role::Leader,
        "still leader (check-quorum has not fired)"
    );
    assert_eq!(net.read_lease(1, 3), Err(ReadRefused::LeaseNotHeld));
    assert!(!net.engine(1).lease_valid());
    assert!(!net.node(1).read_states.iter().any(|r| r.id == 3));

    // A quorum answering again restores the lease.
    net.recover();
    heartbeat_round(&mut net, 1);
    assert_eq!(net.read_lease(1, 4), Ok(()));

    // Without check-quorum nothing bounds a deposed leader's belief: no lease.
    let mut net = Network::with_config(3, |c| c.check_quorum = false);
    net.elect(1);
    net.tick_all(3);
    heartbeat_round(&mut net, 1);
    assert_eq!(net.read_lease(1, 1), Err(ReadRefused::LeaseNotHeld));
    assert!(net.node(1).read_states.is_empty());
}

/// Thesis §6.4.1: the lease is sound only if it expires before another
/// leader can be elected. A leader cut off from the majority is watched
/// tick by tick (all clocks running at the same rate) while the others
/// elect a new leader: at no moment do both a new leader exist and the old
/// one still hold its lease.
#[test]
fn deposed_leader_lease_expires_before_a_new_leader_is_elected() {
    let mut net = Network::new(5);
    net.elect(1);
    net.tick_all(3);
    heartbeat_round(&mut net, 1);
    // 1 keeps 2 (a minority) and loses 3, 4, 5.
    for id in [3, 4, 5] {
        net.cut(1, id);
    }
    for _ in 0..300 {
        net.tick_all(1);
        let other = net
            .ids()
            .into_iter()
            .find(|id| *id != 1 && net.role(*id) == Role::Leader);
        if let Some(other) = other {
            assert!(
                !net.engine(1).lease_valid(),
                "1 holds a lease while {other} leads"
            );
            assert!(
                net.engine(1).role() != Role::Leader || net.read_lease(1, 9).is_err(),
                "lease read served by a deposed leader"
            );
            return;
        }
    }
    panic!("no new leader was elected");
}

/// Thesis §3.10 with §6.4.1: voters ignore their leader lease for a
/// transfer's election, so the transferring leader must give up its own
/// lease as soon as it starts the transfer: the target may lead within one
/// round trip.
#[test]
fn lease_is_given_up_during_a_leadership_transfer() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    heartbeat_round(&mut net, 1);
    assert!(net.engine(1).lease_valid());
    // 1 will not hear about the outcome.
    net.drop_link(2, 1);
    net.drop_link(3, 1);
    net.transfer_leader(1, 2).unwrap();
    net.deliver_all();
    assert_eq!(net.role(2), Role::Leader, "the target won at once");
    assert_eq!(net.role(1), Role::Leader, "1 has not heard of it");
    assert_eq!(net.read_lease(1, 1), Err(ReadRefused::LeaseNotHeld));
}

/// Thesis §6.4.1 with §4.2.3: the leader's lease rests on its followers'
/// promise that, for an election timeout after they acknowledged it, they
/// help elect nobody else. No message at a higher term ends that promise.
/// Here a follower acknowledges leader 1, then receives two late messages
/// of another node's candidacy at term T+1 (delivered out of order by the
/// network): the refusal of a pre-vote it had sent, which moves it to T+1
/// and clears its leader, and that candidate's vote request. While leader
/// 1 still holds its lease the follower must not grant the vote: with 3's
/// own vote it would elect 3, which could commit newer writes while 1
/// still serves lease reads. Once its election timeout has passed without
/// a leader, the promise has ended and the same request is granted.
#[test]
fn a_followers_lease_promise_survives_a_term_change() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    heartbeat_round(&mut net, 1);
    assert!(net.engine(1).lease_valid());
    let t = net.term(2);
    for id in [1, 2, 3] {
        net.isolate(id);
    }
    let last = net.engine(3).last_log_id();
    net.clear_sent();
    // The late refusal at T+1 moves node 2 to T+1 without a leader.
    net.step(msg::new(
        3,
        2,
        t + 1,
        MessageBody::RequestVoteResponse {
            pre_vote: true,
            granted: false,
        },
    ));
    assert_eq!(net.term(2), t + 1);
    net.step(msg::vote(3, 2, t + 1, last));
    let granted = |net: &Network| {
        net.sent_between(2, 3).iter().any(|s| {
            matches!(
                s.msg.body,
                MessageBody::RequestVoteResponse {
                    pre_vote: false,
                    granted: true
                }
            )
        })
    };
    assert!(net.engine(1).lease_valid(), "1 still holds its lease");
    assert!(
        !granted(&net),
        "node 2 voted for 3 while leader 1 counts on its acknowledgement"
    );
    // The promise protects leader 1's lease from others, not from leader
    // 1's own new campaign (it campaigns only after stepping down, which
    // ends its lease): node 2 votes for it at once.
    let last1 = net.engine(1).last_log_id();
    net.clear_sent();
    net.step(msg::vote(1, 2, t + 2, last1));
    assert!(
        net.sent_between(2, 1).iter().any(|s| matches!(
            s.msg.body,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true
            }
        )),
        "node 2 refused the leader it promised to"
    );
    // Another candidate, an election timeout later: the promise has ended.
    let timeout = net.engine(2).config().election_timeout_ticks;
    net.tick(2, timeout);
    net.clear_sent();
    net.step(msg::vote(3, 2, t + 3, last));
    assert!(granted(&net), "the promise outlived its election timeout");
}
