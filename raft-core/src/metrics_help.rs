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

/// The counters: name and help text (all counted in `Unit::Count`).
const COUNTER_HELP: &[(&str, &str)] = &[
    (
        "raft_elections_started_total",
        "Campaigns started, by kind (pre_candidate or candidate).",
    ),
    (
        "raft_leader_changes_total",
        "New leaders (another node, or the same one in a later term) this node learned of since \
         it started; the first leader after the start does not count.",
    ),
    (
        "raft_proposals_total",
        "Proposals appended to the log.",
    ),
    (
        "raft_proposals_rejected_total",
        "Proposals refused (not the leader, overloaded, too large).",
    ),
    (
        "raft_forwarded_total",
        "Client requests this follower forwarded to its leader over the transport, by kind (propose, read).",
    ),
    (
        "raft_forward_refused_total",
        "Client requests not forwarded: too many forwarded requests (or bytes of commands) waiting, by kind.",
    ),
    (
        "raft_forward_ignored_total",
        "Leader answers to forwarded requests no longer waited for (answered, timed out, or from another node).",
    ),
    (
        "raft_forward_timeouts_total",
        "Forwarded requests given up after the forward timeout without the leader's answer.",
    ),
    (
        "raft_membership_changes_total",
        "Membership changes started on this leader.",
    ),
    (
        "raft_messages_sent_total",
        "Messages handed to the transport.",
    ),
    (
        "raft_send_failures_total",
        "Messages the transport refused.",
    ),
    (
        "raft_outbound_dropped_total",
        "Outbound messages dropped on a full queue.",
    ),
    (
        "raft_inbound_dropped_total",
        "Inbound messages dropped on a full queue.",
    ),
    (
        "raft_messages_invalid_term_total",
        "Peer messages refused for their term.",
    ),
    (
        "raft_appends_deferred_total",
        "Entries from the leader left for later because applying lags behind.",
    ),
    (
        "raft_ticks_late_total",
        "Ticks the engine got late because its task was held up.",
    ),
    (
        "raft_entries_read_back_total",
        "Entries a leader read back from storage for followers.",
    ),
    (
        "raft_snapshots_built_total",
        "Snapshots taken.",
    ),
    (
        "raft_snapshots_installed_total",
        "Snapshots installed from a leader.",
    ),
    (
        "raft_snapshots_sent_total",
        "Snapshots streamed to followers.",
    ),
    (
        "raft_snapshot_failures_total",
        "Snapshot failures, by op (build or send).",
    ),
];

fn describe_counters() {
    for &(name, help) in COUNTER_HELP {
        describe_counter!(name, Unit::Count, help);
    }
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
