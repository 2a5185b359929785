//! Log replication: log matching, conflict resolution, the commitment rule
//! (Figure 8), stale leaders, retransmission and flow control.

use raft_core::engine::Role;
use raft_core::{AppendResult, Entry, LogId, Message, MessageBody};

use crate::network::{data, msg, Network};

fn entries_of(m: &Message) -> Option<&[Entry]> {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => Some(entries),
        _ => None,
    }
}

fn carries_index(m: &Message, index: u64) -> bool {
    entries_of(m).is_some_and(|es| es.iter().any(|e| e.index == index))
}

/// Paper §5.3 (log matching; "the leader handles inconsistencies by forcing
/// the followers' logs to duplicate its own") and its backtracking
/// optimisation: a former leader holding 30 uncommitted entries of term 1
/// rejoins a cluster whose leader's log runs 40 entries further in later
/// terms. Its conflicting entries are replaced by the leader's, and thanks
/// to the conflict hint (skip a whole term per rejection) the leader finds
/// the divergence point with one or two rejections instead of one per entry.
#[test]
fn conflicting_uncommitted_entries_are_overwritten_with_few_rejections() {
    let mut net = Network::new(3);
    net.elect(1);
    for i in 0..3 {
        net.propose(1, &format!("c{i}")).unwrap();
    }
    net.tick_all(3);
    assert_eq!(net.engine(1).commit_index(), 4);

    // The leader is cut off and takes 30 proposals that can never commit.
    net.isolate(1);
    for i in 0..30 {
        net.propose(1, &format!("lost{i}")).unwrap();
    }
    assert_eq!(net.engine(1).last_log_id(), LogId::new(1, 34));
    net.tick_all_until(200, |n| n.leader().is_some_and(|l| l != 1));
    let first = net.leader().unwrap();
    for i in 0..40 {
        net.propose(first, &format!("new{i}")).unwrap();
    }
    net.tick_all(3);
    // Hand leadership to the other node: its nextIndex for node 1 starts
    // past the end of its own long log, far from the divergence at 5.
    let second = 5 - first;
    net.transfer_leader(first, second).unwrap();
    net.deliver_all();
    assert_eq!(net.leader(), Some(second));
    let leader_last = net.engine(second).last_log_id();
    assert_eq!(
        leader_last.index, 46,
        "4 shared entries, 2 blanks and 40 proposals"
    );

    net.recover();
    net.clear_sent();
    net.tick_all_until(50, |n| n.engine(1).last_log_id() == leader_last);
    net.tick_all(3);
    let rejections = net
        .sent_between(1, second)
        .iter()
        .filter(|s| {
            matches!(
                s.msg.body,
                MessageBody::AppendEntriesResponse {
                    result: AppendResult::Conflict { .. },
                    ..
                }
            )
        })
        .count();
    assert!(
        rejections <= 2,
        "{rejections} rejections to find a divergence 42 entries back"
    );
    let appends = net
        .sent_between(second, 1)
        .iter()
        .filter(|s| entries_of(&s.msg).is_some_and(|es| !es.is_empty()))
        .count();
    assert!(
        appends <= 4,
        "{appends} AppendEntries with entries to repair node 1"
    );
    let leader_log = net.node(second).log_ids();
    for id in net.ids() {
        assert_eq!(
            net.node(id).log_ids(),
            leader_log,
            "node {id}: logs match (§5.3)"
        );
        let applied = net.node(id).applied_data();
        assert!(
            !applied.iter().any(|d| d.starts_with(b"lost")),
            "node {id} applied a lost entry"
        );
        assert_eq!(applied.len(), 43, "node {id}: c0..c2 and new0..new39");
    }
}

/// Paper §5.3 ("the leader retries AppendEntries RPCs indefinitely until all
/// followers eventually store all log entries"): an AppendEntries lost on
/// the way to a follower is sent again even if no new proposal arrives, so
/// the follower catches up from heartbeats alone.
#[test]
fn lost_append_is_retransmitted_without_new_proposals() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    net.drop_link(1, 3);
    let id = net.propose(1, "x").unwrap();
    net.deliver_all();
    assert_eq!(
        net.engine(1).commit_index(),
        id.index,
        "committed through 2"
    );
    net.recover();
    net.tick_all(60);
    assert_eq!(
        net.engine(3).last_log_id(),
        id,
        "3 never received the lost entry"
    );
    assert_eq!(net.node(3).applied_data(), vec![data("x")]);
}

/// Paper §5.3 (efficiency): a new leader does not resend entries a follower
/// already holds. After a leadership change in a cluster with a long
/// common log, only the new leader's blank entry (and what follows it)
/// travels.
#[test]
fn new_leader_does_not_resend_the_whole_log() {
    let mut net = Network::new(3);
    net.elect(1);
    for i in 0..50 {
        net.propose(1, &format!("v{i}")).unwrap();
    }
    net.tick_all(3);
    assert!(net
        .ids()
        .iter()
        .all(|id| net.node(*id).disk.log.len() == 51));
    net.clear_sent();
    net.transfer_leader(1, 2).unwrap();
    net.deliver_all();
    net.tick_all(3);
    assert_eq!(net.leader(), Some(2));
    let resent: usize = net
        .sent
        .iter()
        .filter(|s| s.msg.from == 2)
        .filter_map(|s| entries_of(&s.msg))
        .map(|es| es.iter().filter(|e| e.index <= 51).count())
        .sum();
    assert_eq!(
        resent, 0,
        "the new leader resent {resent} entries its followers already had"
    );
}

/// Builds Figure 8 of the paper up to its step (c), with five nodes, no
/// pre-vote and no check-quorum (neither changes the commitment rule), and
/// one entry per AppendEntries so that 2@1 and 3@3 travel separately:
/// - (a) S1 leads term 1 and replicates entry 2@1 to S2 only;
/// - (b) S5 is elected in term 2 by S3, S4, S5 and appends 2@2 but sends it
///   to no one, then crashes;
/// - (c) S1 restarts and is elected in term 3; it replicates 2@1 to S3 and
///   S4 (a majority now holds 2@1) while its own entry 3@3 is lost.
fn figure8_step_c() -> Network {
    let mut net = Network::with_config(5, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
        c.max_message_entries = 1;
    });
    net.elect(1);
    net.tick_all(2);
    assert_eq!(net.engine(1).commit_index(), 1);

    // (a)
    for other in [3, 4, 5] {
        net.cut(1, other);
    }
    let a = net.propose(1, "a").unwrap();
    assert_eq!(a, LogId::new(1, 2));
    net.deliver_all();
    assert_eq!(net.node(2).log_ids().last(), Some(&a));
    assert_eq!(net.engine(1).commit_index(), 1, "2 of 5 is no majority");

    // (b) S1 crashes; S5 wins term 2 with S3 and S4; its entries go nowhere.
    net.isolate(1);
    net.drop_if(|m| m.from == 5 && matches!(m.body, MessageBody::AppendEntries { .. }));
    net.elect(5);
    assert_eq!(net.term(5), 2);
    assert_eq!(
        net.node(5).log_ids(),
        vec![LogId::new(1, 1), LogId::new(2, 2)]
    );
    net.recover();
    net.isolate(5); // S5 crashes

    // (c) S1 restarts and wins term 3 (S2, S3, S4 vote for it) without
    // replicating anything yet.
    net.restart(1);
    net.drop_if(|m| {
        m.from == 1
            && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
    });
    net.elect(1);
    assert_eq!(net.term(1), 3);
    net.recover();
    net.isolate(5);
    // Then it replicates, but its own entry 3@3 only ever reaches a node
    // that lacks index 2 and so refuses it: 2@1 spreads, 3@3 does not.
    for _ in 0..5 {
        net.tick(1, 2);
        net.deliver_all_except(|n, m| carries_index(m, 3) && n.node(m.to).disk.log.len() >= 2);
    }
    assert_eq!(net.engine(1).last_log_id(), LogId::new(3, 3));
    for id in [2, 3, 4] {
        assert_eq!(
            net.node(id).log_ids(),
            vec![LogId::new(1, 1), a],
            "S{id} holds 2@1 but not 3@3"
        );
    }
    net
}

/// Paper §5.4.2 and Figure 8 (c)→(d): entry 2@1 is stored on a majority,
/// yet leader S1 of term 3 must not commit it by counting replicas, because
/// S5 (whose last entry is 2@2) can still win an election and overwrite it.
/// The scenario then plays (d): S5 wins and replaces 2@1 everywhere, which
/// is safe only because nobody committed it.
#[test]
fn figure8_old_term_entry_on_a_majority_is_not_committed() {
    let mut net = figure8_step_c();
    let matched: Vec<u64> = net
        .engine(1)
        .status()
        .peers
        .iter()
        .map(|p| p.matched)
        .collect();
    assert!(
        matched.iter().filter(|m| **m >= 2).count() >= 2,
        "2@1 is replicated on a majority (S1 + {matched:?})"
    );
    assert_eq!(
        net.engine(1).commit_index(),
        1,
        "S1 committed an old-term entry by counting"
    );
    assert!(net.ids().iter().all(|id| net.node(*id).applied.len() <= 1));

    // (d) S1 crashes; S5 restarts and is elected by S2, S3, S4.
    net.recover();
    net.isolate(1);
    net.restart(5);
    net.elect(5);
    assert!(net.term(5) > 3);
    net.tick_all(3);
    for id in [2, 3, 4, 5] {
        let log = net.node(id).log_ids();
        assert_eq!(
            log[1],
            LogId::new(2, 2),
            "S{id}: 2@1 was overwritten by 2@2"
        );
        assert!(
            !net.node(id).applied_data().contains(&data("a")),
            "S{id} applied 2@1"
        );
    }
    // S1 rejoins and is brought in line; it never applied "a" either.
    net.recover();
    net.tick_all(10);
    assert_eq!(net.node(1).log_ids(), net.node(5).log_ids());
    assert!(!net.node(1).applied_data().contains(&data("a")));
}

/// Paper §5.4.2 and Figure 8 (e): once S1 replicates an entry of its own
/// term on a majority, that entry commits and with it, indirectly, the
/// older 2@1 (Log Matching); S5 can no longer be elected.
#[test]
fn figure8_old_term_entry_commits_with_a_current_term_entry() {
    let mut net = figure8_step_c();
    net.recover();
    net.isolate(5);
    let b = net.propose(1, "b").unwrap();
    net.deliver_all();
    net.tick_all(6);
    assert!(
        net.engine(1).commit_index() >= b.index,
        "the term-3 entries committed"
    );
    for id in [1, 2, 3, 4] {
        assert_eq!(
            net.node(id).applied_data(),
            vec![data("a"), data("b")],
            "S{id} applied 2@1 indirectly, then b"
        );
    }
    // S5 cannot win now: its log (last 2@2) is behind a majority's.
    net.recover();
    net.restart(5);
    let bound = 10 * 2 * net.engine(5).config().election_timeout_ticks;
    for _ in 0..bound {
        net.tick(5, 1);
        net.deliver_all();
        assert_ne!(
            net.role(5),
            Role::Leader,
            "S5 was elected over committed entries"
        );
    }
}

/// Paper §5.4 and §8: a leader cut off from the majority can accept a
/// proposal, but it can never commit it; once healed it learns of the
/// newer term, steps down, and its proposal is discarded everywhere. Checked
/// with and without check-quorum (with it, the leader steps down even
/// before healing).
#[test]
fn stale_leader_cannot_commit() {
    for check_quorum in [false, true] {
        let mut net = Network::with_config(5, |c| c.check_quorum = check_quorum);
        net.elect(1);
        net.propose(1, "before").unwrap();
        net.tick_all(3);
        net.isolate(1);
        let stale = net.propose(1, "stale").unwrap();
        net.tick_all_until(300, |n| n.leader().is_some_and(|l| l != 1));
        let leader = net.leader().unwrap();
        net.propose(leader, "after").unwrap();
        net.tick_all(5);
        assert!(
            net.engine(1).commit_index() < stale.index,
            "the stale leader committed"
        );
        if check_quorum {
            let timeout = net.engine(1).config().election_timeout_ticks;
            net.tick_all_until(2 * timeout, |n| n.role(1) != Role::Leader);
            assert_eq!(
                net.role(1),
                Role::Follower,
                "check-quorum deposed it already"
            );
        } else {
            assert_eq!(net.role(1), Role::Leader, "it still believes it leads");
        }

        net.recover();
        net.tick_all(10);
        assert_eq!(net.role(1), Role::Follower);
        assert_eq!(net.engine(1).leader(), Some(leader));
        assert_eq!(net.term(1), net.term(leader));
        for id in net.ids() {
            let applied = net.node(id).applied_data();
            assert_eq!(
                applied,
                vec![data("before"), data("after")],
                "node {id} (cq={check_quorum})"
            );
        }
    }
}

/// Thesis §10.2.2 (pipelining with bounded in-flight messages): a follower
/// whose acknowledgements are withheld receives at most
/// `max_inflight_messages` AppendEntries however many proposals arrive; the
/// rest flows once it answers.
#[test]
fn inflight_window_limits_appends_to_a_slow_follower() {
    let mut net = Network::with_config(3, |c| c.max_inflight_messages = 2);
    net.elect(1);
    net.tick_all(3);
    net.hold_persist(2);
    net.clear_sent();
    for i in 0..10 {
        net.propose(1, &format!("v{i}")).unwrap();
        net.deliver_all();
    }
    let to2 = net
        .sent_between(1, 2)
        .iter()
        .filter(|s| entries_of(&s.msg).is_some_and(|es| !es.is_empty()))
        .count();
    assert_eq!(to2, 2, "appends in flight to the silent follower");
    let to3 = net
        .sent_between(1, 3)
        .iter()
        .filter(|s| entries_of(&s.msg).is_some_and(|es| !es.is_empty()))
        .count();
    assert_eq!(
        to3, 10,
        "the answering follower gets one append per proposal"
    );
    assert_eq!(net.engine(1).commit_index(), 11, "committed through 3");

    net.release_persist(2);
    net.deliver_all();
    net.tick_all(3);
    assert_eq!(
        net.node(2).applied_data().len(),
        10,
        "the slow follower caught up"
    );
}

/// Batching (paper §5.3 lets one AppendEntries carry several entries;
/// `max_message_entries` bounds it): 10 entries proposed at once go to a
/// follower as 3 + 3 + 3 + 1.
#[test]
fn entries_are_batched_by_max_entries_per_message() {
    let mut net = Network::with_config(3, |c| c.max_message_entries = 3);
    net.elect(1);
    net.tick_all(3);
    net.clear_sent();
    for i in 0..10 {
        net.node_mut(1)
            .engine
            .propose(data(&format!("v{i}")))
            .unwrap();
    }
    net.process(1);
    let sizes: Vec<usize> = net
        .sent_between(1, 2)
        .iter()
        .filter_map(|s| entries_of(&s.msg))
        .filter(|es| !es.is_empty())
        .map(<[Entry]>::len)
        .collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    net.deliver_all();
    net.tick_all(2);
    for id in net.ids() {
        assert_eq!(net.node(id).applied_data().len(), 10, "node {id}");
    }
}

/// Paper §7 with thesis §6.2 (check-quorum) and §6.4 (ReadIndex): a
/// follower that is installing a snapshot appends nothing, but it still
/// answers the leader's heartbeats. Otherwise, while its install runs, it
/// looks dead to the leader: here it is the leader's only partner in a
/// quorum, so the leader would step down at its next check-quorum and no
/// read could be confirmed.
#[test]
fn a_follower_installing_a_snapshot_answers_heartbeats() {
    let mut net = Network::new(3);
    net.elect(1);
    net.tick_all(3);
    // Node 2 falls behind while 1 and 3 commit more entries.
    net.cut(1, 2);
    for i in 0..5 {
        net.propose(1, &format!("x{i}")).unwrap();
    }
    net.tick_all(3);
    let term = net.term(1);
    let last = net.engine(1).last_log_id();
    assert_eq!(net.engine(1).commit_index(), last.index);
    // The leader's snapshot of everything reaches node 2, whose install
    // then takes a long time; meanwhile node 3 is cut off.
    net.recover();
    net.cut(1, 3);
    net.step(msg::new(
        1,
        2,
        term,
        MessageBody::InstallSnapshot {
            meta: raft_core::SnapshotMeta {
                last_log_id: last,
                membership: net.engine(1).membership().clone(),
            },
        },
    ));
    assert!(net.node(2).installing.is_some(), "node 2 is installing");
    net.read_index(1, 1).unwrap();
    let timeout = net.engine(1).config().election_timeout_ticks;
    for _ in 0..3 * timeout {
        net.tick(1, 1);
        net.tick(2, 1);
        net.deliver_all();
    }
    assert_eq!(net.role(1), Role::Leader, "1 kept its quorum with node 2");
    assert_eq!(net.term(1), term, "in the same term");
    assert!(
        net.node(1).read_states.iter().any(|r| r.id == 1),
        "the read was confirmed by node 2's answers"
    );
    assert!(net.node(2).installing.is_some(), "still installing");
    assert_eq!(net.term(2), term, "node 2 did not campaign");
}
