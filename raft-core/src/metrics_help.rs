//! `# HELP` text and units of the metrics the driver records, for any
//! `metrics` recorder: call [`describe_metrics`] once after installing one.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use crate::engine::Role;

/// Describes every metric the driver records (name, unit, meaning), so an
/// exporter can print them (Prometheus: `# HELP`), and registers its
/// counters at zero (those with labels for each label value they can
/// take). Idempotent.
pub fn describe_metrics() {
    for name in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for op in ["build", "send"] {
        metrics::counter!("raft_snapshot_failures_total", "op" => op).increment(0);
    }
    for kind in [Role::PreCandidate, Role::Candidate] {
        metrics::counter!("raft_elections_started_total", "kind" => kind.as_str()).increment(0);
    }
    for kind in ["propose", "read"] {
        metrics::counter!("raft_forwarded_total", "kind" => kind).increment(0);
        metrics::counter!("raft_forward_refused_total", "kind" => kind).increment(0);
    }
    describe_gauges();
    describe_counters();
    describe_histograms();
}

fn describe_gauges() {
    describe_gauge!("raft_term", Unit::Count, "Current Raft term of this node.");
    describe_gauge!(
        "raft_role",
        Unit::Count,
        "Raft role: 0 follower, 1 pre-candidate, 2 candidate, 3 leader."
    );
    describe_gauge!(
        "raft_is_leader",
        Unit::Count,
        "1 while this node is the leader, else 0."
    );
    describe_gauge!(
        "raft_has_leader",
        Unit::Count,
        "1 while this node knows a leader of its current term (itself included), else 0."
    );
    describe_gauge!(
        "raft_commit_index",
        Unit::Count,
        "Highest log index known committed."
    );
    describe_gauge!(
        "raft_applied_index",
        Unit::Count,
        "Highest log index applied to the state machine."
    );
    describe_gauge!(
        "raft_last_log_index",
        Unit::Count,
        "Index of the last entry in the log."
    );
    describe_gauge!(
        "raft_log_first_index",
        Unit::Count,
        "First index left in the log after compaction."
    );
    describe_gauge!(
        "raft_apply_backlog_jobs",
        Unit::Count,
        "Committed batches waiting for room in the apply queue."
    );
    describe_gauge!(
        "raft_proposals_pending",
        Unit::Count,
        "Proposals appended on this leader and not yet committed."
    );
    describe_gauge!(
        "raft_snapshot_bytes",
        Unit::Bytes,
        "Size of the latest snapshot built, in bytes."
    );
}

fn describe_counters() {
    describe_counter!(
        "raft_elections_started_total",
        Unit::Count,
        "Campaigns started, by kind (pre_candidate or candidate)."
    );
    describe_counter!(
        "raft_leader_changes_total",
        Unit::Count,
        "New leaders (another node, or the same one in a later term) this node learned of since \
         it started; the first leader after the start does not count."
    );
    describe_counter!(
        "raft_proposals_total",
        Unit::Count,
        "Proposals appended to the log."
    );
    describe_counter!(
        "raft_proposals_rejected_total",
        Unit::Count,
        "Proposals refused (not the leader, overloaded, too large)."
    );
    describe_counter!(
        "raft_forwarded_total",
        Unit::Count,
        "Client requests this follower forwarded to its leader over the transport, by kind (propose, read)."
    );
    describe_counter!(
        "raft_forward_refused_total",
        Unit::Count,
        "Client requests not forwarded: too many forwarded requests (or bytes of commands) waiting, by kind."
    );
    describe_counter!(
        "raft_forward_ignored_total",
        Unit::Count,
        "Leader answers to forwarded requests no longer waited for (answered, timed out, or from another node)."
    );
    describe_counter!(
        "raft_forward_timeouts_total",
        Unit::Count,
        "Forwarded requests given up after the forward timeout without the leader's answer."
    );
    describe_counter!(
        "raft_membership_changes_total",
        Unit::Count,
        "Membership changes started on this leader."
    );
    describe_counter!(
        "raft_messages_sent_total",
        Unit::Count,
        "Messages handed to the transport."
    );
    describe_counter!(
        "raft_send_failures_total",
        Unit::Count,
        "Messages the transport refused."
    );
    describe_counter!(
        "raft_outbound_dropped_total",
        Unit::Count,
        "Outbound messages dropped on a full queue."
    );
    describe_counter!(
        "raft_inbound_dropped_total",
        Unit::Count,
        "Inbound messages dropped on a full queue."
    );
    describe_counter!(
        "raft_messages_invalid_term_total",
        Unit::Count,
        "Peer messages refused for their term."
    );
    describe_counter!(
        "raft_appends_deferred_total",
        Unit::Count,
        "Entries from the leader left for later because applying lags behind."
    );
    describe_counter!(
        "raft_ticks_late_total",
        Unit::Count,
        "Ticks the engine got late because its task was held up."
    );
    describe_counter!(
        "raft_entries_read_back_total",
        Unit::Count,
        "Entries a leader read back from storage for followers."
    );
    describe_counter!(
        "raft_snapshots_built_total",
        Unit::Count,
        "Snapshots taken."
    );
    describe_counter!(
        "raft_snapshots_installed_total",
        Unit::Count,
        "Snapshots installed from a leader."
    );
    describe_counter!(
        "raft_snapshots_sent_total",
        Unit::Count,
        "Snapshots streamed to followers."
    );
    describe_counter!(
        "raft_snapshot_failures_total",
        Unit::Count,
        "Snapshot failures, by op (build or send)."
    );
}

fn describe_histograms() {
    describe_histogram!(
        "raft_append_seconds",
        Unit::Seconds,
        "Duration of each durable log write, in seconds."
    );
    describe_histogram!(
        "raft_append_batch_entries",
        Unit::Count,
        "Entries per durable log write (group commit)."
    );
    describe_histogram!(
        "raft_apply_batch_entries",
        Unit::Count,
        "Entries per state-machine apply."
    );
    describe_histogram!(
        "raft_proposal_commit_seconds",
        Unit::Seconds,
        "Time from a proposal reaching this node's driver (the leader's, or the follower's that forwarded it) to its commit, in seconds."
    );
    describe_histogram!(
        "raft_forward_seconds",
        Unit::Seconds,
        "Time from forwarding a request to the leader to its answer, by kind, in seconds."
    );
    describe_histogram!(
        "raft_snapshot_build_seconds",
        Unit::Seconds,
        "Time to build a snapshot, in seconds."
    );
}

/// Counters without labels, registered at zero by [`describe_metrics`]:
/// every series is there from the start (a `rate()` over a series that
/// appears only at its first event misses that event).
const COUNTERS: &[&str] = &[
    "raft_leader_changes_total",
    "raft_proposals_total",
    "raft_proposals_rejected_total",
    "raft_membership_changes_total",
    "raft_messages_sent_total",
    "raft_send_failures_total",
    "raft_outbound_dropped_total",
    "raft_inbound_dropped_total",
    "raft_messages_invalid_term_total",
    "raft_appends_deferred_total",
    "raft_ticks_late_total",
    "raft_entries_read_back_total",
    "raft_snapshots_built_total",
    "raft_snapshots_installed_total",
    "raft_snapshots_sent_total",
    "raft_forward_ignored_total",
    "raft_forward_timeouts_total",
];
