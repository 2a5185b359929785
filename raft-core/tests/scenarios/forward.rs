//! Requests a follower forwards to its leader over the peer transport:
//! `ForwardPropose` (the leader appends the command as its own proposal)
//! and `ReadIndexRequest` (the leader runs its ReadIndex, thesis §6.4).

use raft_core::engine::{ForwardResponse, ForwardResult, ProposalRefused, ReadRefused, Role};
use raft_core::{
    AppendResult, EntryPayload, ForwardProposeResult, ForwardReadResult, ForwardRefusal,
    MessageBody,
};

use crate::network::{data, msg, Network};

/// The answers node `id` received, taken.
fn answers(net: &mut Network, id: u64) -> Vec<ForwardResponse> {
    std::mem::take(&mut net.node_mut(id).forward_responses)
}

/// A follower's forwarded command is appended by the leader in its term,
/// answered with its log position, and applied on the follower at that
/// position: the follower can answer its client from its own apply.
#[test]
fn a_forwarded_proposal_is_appended_by_the_leader_and_answered_with_its_position() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    net.node_mut(2)
        .engine
        .forward_propose(7, data("x=1"))
        .expect("the follower knows its leader");
    net.process(2);
    net.deliver_all();
    let got = answers(&mut net, 2);
    assert_eq!(got.len(), 1, "one answer: {got:?}");
    let ForwardResult::Propose(ForwardProposeResult::Appended(id)) = got[0].result else {
        panic!("not appended: {got:?}");
    };
    assert_eq!((got[0].from, got[0].request_id), (1, 7));
    assert_eq!(id.term, net.term(1), "appended in the leader's term");
    net.tick_all(3);
    let applied = net
        .node(2)
        .applied
        .iter()
        .find(|e| e.index == id.index)
        .expect("applied on the follower")
        .clone();
    assert_eq!(applied.term, id.term);
    assert_eq!(applied.payload, EntryPayload::Normal(data("x=1")));
}

/// A node that is not the leader refuses a forwarded command with the
/// leader it knows of and appends nothing; forwarding changes no term.
#[test]
fn a_forwarded_proposal_to_a_follower_is_refused_with_the_leader_hint() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    let last = net.engine(2).last_log_id();
    let term = net.term(2);
    net.step(msg::new(
        3,
        2,
        term + 5,
        MessageBody::ForwardPropose {
            request_id: 4,
            command: data("x=1"),
        },
    ));
    assert_eq!(net.engine(2).last_log_id(), last, "nothing appended");
    assert_eq!(net.term(2), term, "a forwarded request changes no term");
    let refusal = net
        .links
        .iter()
        .find_map(|m| match m.body {
            MessageBody::ForwardProposeResponse {
                request_id: 4,
                result,
            } if m.to == 3 => Some(result),
            _ => None,
        })
        .expect("answered");
    assert_eq!(
        refusal,
        ForwardProposeResult::Refused(ForwardRefusal::NotLeader { leader: Some(1) })
    );
}

/// The leader applies its admission limits to forwarded commands as to
/// its own: beyond `max_uncommitted_entries` it refuses as overloaded.
#[test]
fn a_forwarded_proposal_beyond_the_leaders_limits_is_refused_as_overloaded() {
    let mut net = Network::with_config(3, |c| c.max_uncommitted_entries = 1);
    net.elect(1);
    net.tick_all(3);
    // Nothing commits while the followers do not answer.
    net.isolate(1);
    net.propose(1, "a")
        .expect("one uncommitted entry is allowed");
    let term = net.term(1);
    net.step(msg::new(
        2,
        1,
        term,
        MessageBody::ForwardPropose {
            request_id: 9,
            command: data("b"),
        },
    ));
    let answer = net.node(1).engine.last_log_id();
    assert_eq!(
        answer.index,
        net.engine(1).commit_index() + 1,
        "b not appended"
    );
    assert!(net.sent.iter().any(|s| s.msg.body
        == MessageBody::ForwardProposeResponse {
            request_id: 9,
            result: ForwardProposeResult::Refused(ForwardRefusal::Overloaded),
        }));
}

/// A node without a known leader (or the leader itself) cannot forward.
#[test]
fn forwarding_needs_a_known_leader_other_than_this_node() {
    let mut net = Network::new(3);
    assert_eq!(
        net.node_mut(2).engine.forward_propose(1, data("x")),
        Err(ProposalRefused::NotLeader { leader: None })
    );
    net.elect(1);
    assert_eq!(
        net.node_mut(1).engine.forward_read_index(1),
        Err(ReadRefused::NotLeader { leader: Some(1) })
    );
}

/// Thesis §6.4 through a follower: the leader answers a forwarded read
/// only after a quorum answered a heartbeat round started after the
/// request arrived, with an index at or above every commit acknowledged
/// before the read started.
#[test]
fn a_forwarded_read_waits_for_a_heartbeat_round_and_covers_earlier_commits() {
    let mut net = Network::new(3);
    net.elect(1);
    let acked = net.propose(1, "x=1").unwrap();
    net.deliver_all();
    assert!(net.engine(1).commit_index() >= acked.index, "acknowledged");
    net.node_mut(3).engine.forward_read_index(11).unwrap();
    net.process(3);
    // Deliver the request only: the leader starts a round, answers nothing.
    assert!(net.deliver_one());
    assert!(
        !net.links
            .iter()
            .any(|m| matches!(m.body, MessageBody::ReadIndexResponse { .. })),
        "answered before a quorum confirmed the leader"
    );
    net.deliver_all();
    let got = answers(&mut net, 3);
    let [ForwardResponse {
        from: 1,
        request_id: 11,
        result: ForwardResult::Read(ForwardReadResult::Index(index)),
        ..
    }] = got[..]
    else {
        panic!("unexpected answers {got:?}");
    };
    assert!(
        index >= acked.index,
        "read index {index} below the acknowledged write {acked:?}"
    );
    assert!(
        net.node(1).read_states.is_empty(),
        "the driver sees only its own reads"
    );
}

/// A leader deposed while a forwarded read waits for its round answers
/// the follower with a refusal: no read index from a deposed leader.
#[test]
fn a_leader_deposed_before_confirming_refuses_the_forwarded_read() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    net.node_mut(2).engine.forward_read_index(5).unwrap();
    net.process(2);
    assert!(net.deliver_one(), "the request reaches the leader");
    let _ = net.links.drain().count();
    let term = net.term(1);
    // A newer term reaches the leader before any heartbeat answer.
    net.step(msg::new(
        3,
        1,
        term + 1,
        MessageBody::AppendEntriesResponse {
            round: 0,
            result: AppendResult::Installing,
        },
    ));
    assert_ne!(net.role(1), Role::Leader);
    let refusal = net.links.iter().find_map(|m| match m.body {
        MessageBody::ReadIndexResponse {
            request_id: 5,
            result,
        } if m.to == 2 => Some(result),
        _ => None,
    });
    assert!(
        matches!(
            refusal,
            Some(ForwardReadResult::Refused(ForwardRefusal::NotLeader { .. }))
        ),
        "{refusal:?}"
    );
}

/// An answer from an older term still reaches the driver (which matches
/// it to its request, or ignores it) and changes nothing in the engine.
#[test]
fn an_answer_from_an_older_term_changes_no_state() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    let (term, role, leader) = (net.term(2), net.role(2), net.engine(2).leader());
    net.step(msg::new(
        3,
        2,
        term.saturating_sub(1),
        MessageBody::ReadIndexResponse {
            request_id: 99,
            result: ForwardReadResult::Index(1),
        },
    ));
    assert_eq!(
        (net.term(2), net.role(2), net.engine(2).leader()),
        (term, role, leader)
    );
    let got = answers(&mut net, 2);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].term, term.saturating_sub(1), "{got:?}");
}

/// Randomized: under random delivery and loss, with leaders changing, a
/// follower's forwarded read never returns an index below a write whose
/// commit was acknowledged (applied on its leader) before the read was
/// sent. Replay with `RAFT_FORWARD_SEED=<seed>`.
#[test]
fn forwarded_read_indexes_never_miss_an_acknowledged_write() {
    let seed = raft_core::testing::seed_from_env("RAFT_FORWARD_SEED");
    println!("RAFT_FORWARD_SEED={seed}");
    let mut net = Network::new(3);
    net.elect(1);
    net.random_delivery(seed, 0.1);
    let mut served = 0;
    let mut acked_before = std::collections::BTreeMap::new();
    for round in 0..60u64 {
        let Some(leader) = net.leader() else {
            net.tick_all(5);
            continue;
        };
        if net.propose(leader, &format!("w{round}")).is_ok() {
            net.tick_all(2);
        }
        // The highest index applied anywhere: acknowledged to some client.
        let acked = net
            .ids()
            .iter()
            .map(|&n| net.node(n).applied_index)
            .max()
            .unwrap_or(0);
        let follower = net
            .ids()
            .into_iter()
            .find(|&n| net.role(n) == Role::Follower && net.engine(n).leader().is_some());
        let Some(f) = follower else {
            net.tick_all(5);
            continue;
        };
        if net.node_mut(f).engine.forward_read_index(round).is_err() {
            continue;
        }
        acked_before.insert((f, round), acked);
        net.process(f);
        net.tick_all(6);
        if round % 17 == 16 {
            // Depose the leader now and then.
            net.isolate(leader);
            net.tick_all(40);
            net.recover();
        }
        for n in net.ids() {
            for r in answers(&mut net, n) {
                if let ForwardResult::Read(ForwardReadResult::Index(i)) = r.result {
                    let acked = acked_before[&(n, r.request_id)];
                    let id = r.request_id;
                    assert!(
                        i >= acked,
                        "seed {seed}: read {id} got {i} < acknowledged {acked}"
                    );
                    served += 1;
                }
            }
        }
    }
    assert!(served > 5, "seed {seed}: only {served} reads answered");
}
