//! Durability before promises: the driver contract's persistence ordering.

use raft_core::engine::{ProposalRefused, Role};
use raft_core::{AppendResult, LogId, MessageBody};

use crate::network::{data, Network};

/// Paper §5.3/Figure 2 with a single voter: the node elects itself, and a
/// proposal commits only once the leader's own append is durable (the
/// leader counts itself towards the quorum only for what it has persisted).
#[test]
fn single_voter_commits_only_after_its_own_durable_append() {
    let mut net = Network::new(1);
    net.hold_persist(1);
    // Its own vote wins the election, but it takes office only once that
    // vote (and the term's first entry, written with it) is durable:
    // otherwise a crash could let it lead term 1 twice.
    for _ in 0..100 {
        net.tick(1, 1);
        if net.role(1) == Role::Candidate {
            break;
        }
    }
    assert_eq!(net.role(1), Role::Candidate);
    assert_eq!(net.term(1), 1);
    assert!(
        matches!(
            net.propose(1, "early"),
            Err(ProposalRefused::NotLeader { .. })
        ),
        "no proposals before the election is durable"
    );
    net.tick(1, 10);
    assert_eq!(
        net.engine(1).commit_index(),
        0,
        "nothing commits before it is durable"
    );
    assert!(net.node(1).disk.log.is_empty());

    // The first write (vote + blank entry) lands: it leads and the blank commits.
    assert!(net.persist_next(1));
    assert_eq!(net.role(1), Role::Leader);
    assert_eq!(net.engine(1).commit_index(), 1);
    assert!(net.node(1).applied_data().is_empty());

    let id = net.propose(1, "x").expect("the leader accepts proposals");
    assert_eq!(id, LogId::new(1, 2), "after the leader's blank entry");
    net.tick(1, 10);
    assert_eq!(
        net.engine(1).commit_index(),
        1,
        "the proposal waits for its write"
    );
    assert!(
        net.node(1).applied_data().is_empty(),
        "nothing applied before it is durable"
    );

    // Then the proposal's write.
    net.release_persist(1);
    assert_eq!(net.engine(1).commit_index(), 2);
    assert_eq!(net.node(1).applied_data(), vec![data("x")]);
}

/// Paper Figure 2 ("persistent state on all servers, updated on stable
/// storage before responding to RPCs") and thesis §3.8: vote grants, a
/// candidate's own vote requests and append acknowledgements leave a node
/// only through `persisted_messages`, i.e. after the write they promise.
#[test]
fn promises_are_only_sent_after_persisting() {
    let mut net = Network::new(3);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, &format!("v{i}")).unwrap();
        net.deliver_all();
    }
    // A second election too (leadership transfer), for more grants.
    net.transfer_leader(1, 3).unwrap();
    net.deliver_all();
    assert_eq!(net.leader(), Some(3));
    net.propose(3, "w").unwrap();
    net.tick_all(5);

    let mut grants = 0;
    let mut acks = 0;
    let mut requests = 0;
    for s in &net.sent {
        match s.msg.body {
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } => {
                grants += 1;
                assert!(
                    s.after_persist,
                    "vote grant sent before persisting: {:?}",
                    s.msg
                );
            }
            MessageBody::RequestVote {
                pre_vote: false, ..
            } => {
                requests += 1;
                assert!(
                    s.after_persist,
                    "vote request sent before own vote persisted: {:?}",
                    s.msg
                );
            }
            MessageBody::AppendEntriesResponse {
                result: AppendResult::Success { .. },
                ..
            } => {
                acks += 1;
                assert!(
                    s.after_persist,
                    "append ack sent before persisting: {:?}",
                    s.msg
                );
            }
            _ => {}
        }
    }
    assert!(
        grants >= 3 && requests >= 3 && acks >= 10,
        "{grants} grants, {requests} requests, {acks} acks"
    );
}

/// Thesis §3.8: a voter whose write of its vote is still in progress must
/// not let the candidate count that vote; a candidate whose own vote is not
/// yet durable does not ask for votes. With both followers' storage stalled
/// the candidate cannot win; the first durable grant elects it.
#[test]
fn vote_grants_wait_for_the_voters_write() {
    let mut net = Network::new(3);
    // The candidate's own vote must be durable before it asks others.
    net.hold_persist(1);
    for _ in 0..1_000 {
        if net.role(1) == Role::Candidate {
            break;
        }
        net.tick(1, 1);
        net.deliver_all(); // pre-votes are promises about nothing: they flow
    }
    assert_eq!(
        net.role(1),
        Role::Candidate,
        "node 1 after up to 1,000 ticks, its own vote not durable (a leader took office on \
         a vote it could still forget)"
    );
    assert!(
        !net.sent.iter().any(|s| matches!(
            s.msg.body,
            MessageBody::RequestVote {
                pre_vote: false,
                ..
            }
        )),
        "vote requests left before the candidate's vote was durable"
    );
    net.hold_persist(2);
    net.hold_persist(3);
    net.release_persist(1);
    net.deliver_all();
    assert_eq!(net.role(1), Role::Candidate, "no durable grant yet");
    assert_eq!(
        net.engine(2).status().vote,
        Some(1),
        "2 decided to vote for 1..."
    );
    assert_eq!(
        net.node(2).disk.hard_state.vote,
        None,
        "...but has not persisted it"
    );
    assert!(
        !net.sent.iter().any(|s| matches!(
            s.msg.body,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true
            }
        )),
        "a grant left before it was durable"
    );
    net.release_persist(2);
    assert_eq!(net.node(2).disk.hard_state.vote, Some(1));
    net.deliver_all();
    assert_eq!(net.role(1), Role::Leader);
}

/// Paper Figure 2 / thesis §3.8: a follower acknowledges entries only once
/// they are durable, so while its storage is stalled the leader's view of
/// it does not advance and the entry commits only through the other
/// follower.
#[test]
fn append_acks_wait_for_the_followers_write() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(2);
    net.hold_persist(2);
    net.cut(1, 3);
    let id = net.propose(1, "x").unwrap();
    net.deliver_all();
    assert_eq!(net.engine(2).last_log_id(), id, "2 received the entry");
    let peer2 = net
        .engine(1)
        .status()
        .peers
        .into_iter()
        .find(|p| p.id == 2)
        .unwrap();
    assert!(
        peer2.matched < id.index,
        "the leader counted an unpersisted entry on 2"
    );
    assert_eq!(
        net.engine(1).commit_index(),
        id.index - 1,
        "not committed: 3 is cut, 2 not durable"
    );
    net.release_persist(2);
    net.deliver_all();
    assert_eq!(
        net.engine(1).commit_index(),
        id.index,
        "committed once 2's write is durable"
    );
}

/// Thesis §10.2.1: the leader sends AppendEntries to followers while its own
/// append is still being written, in parallel; but it counts itself towards
/// the quorum only once that write is durable. With one follower cut off, a
/// single follower's ack is not enough until the leader itself persists.
#[test]
fn leader_replicates_before_persisting_but_counts_itself_only_after() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(2);
    net.cut(1, 3);
    net.hold_persist(1);
    net.clear_sent();
    let id = net.propose(1, "x").unwrap();
    assert!(
        net.node(1).pending_writes() > 0,
        "the leader's append is not durable yet"
    );
    assert!(
        net.sent_between(1, 2).iter().any(|s| matches!(
            &s.msg.body,
            MessageBody::AppendEntries { entries, .. } if entries.iter().any(|e| e.log_id() == id)
        ) && !s.after_persist),
        "the leader did not replicate before persisting"
    );
    net.deliver_all();
    net.tick_all(4);
    let peer2 = net
        .engine(1)
        .status()
        .peers
        .into_iter()
        .find(|p| p.id == 2)
        .unwrap();
    assert_eq!(peer2.matched, id.index, "2 acknowledged the entry");
    assert_eq!(
        net.engine(1).commit_index(),
        id.index - 1,
        "leader not durable: 1 of 3 is no quorum"
    );
    assert!(net.node(1).applied_data().is_empty());
    net.release_persist(1);
    assert_eq!(
        net.engine(1).commit_index(),
        id.index,
        "durable on 1 and 2: committed"
    );
    assert_eq!(net.node(1).applied_data(), vec![data("x")]);
}

/// Restart after a crash (paper Figure 2: only the persistent state
/// survives; `InitialState::applied` is "the state machine's durable applied
/// index; applying resumes after it"). A driver that pipelines, as the
/// contract allows ("steps 2–5 may overlap"), can apply an entry before
/// the write carrying the new commit index is durable. After a crash at
/// that point the restarted engine must resume applying after the state
/// machine's index, not hand the same entry out a second time.
#[test]
fn restart_resumes_applying_after_the_state_machine_index() {
    let mut net = Network::new(3);
    net.apply_before_persist = true;
    net.elect(1);
    net.tick_all(3);
    let id = net.propose(1, "x").unwrap();
    // Deliver until the leader has committed x: 2 has stored it durably.
    while net.engine(1).commit_index() < id.index {
        assert!(net.deliver_one(), "x did not commit");
    }
    assert_eq!(net.node(2).disk.log.last().map(|e| e.log_id()), Some(id));
    // 2 learns the commit, applies x, and its hard-state write stalls.
    net.hold_persist(2);
    net.deliver_all();
    net.tick_all(3);
    assert_eq!(net.node(2).applied_data(), vec![data("x")]);
    assert!(
        net.node(2).disk.hard_state.commit < id.index,
        "the commit index is not durable yet"
    );

    net.restart(2);
    net.tick_all(5);
    assert_eq!(
        net.node(2).applied_data(),
        vec![data("x")],
        "x applied exactly once"
    );
}
