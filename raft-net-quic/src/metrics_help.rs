//! `# HELP` text and units of the metrics the transport records.

use metrics::{describe_counter, describe_gauge, Unit};

/// Describes every metric the transport records (name, unit, meaning), so
/// an exporter can print them (Prometheus: `# HELP`), and registers its
/// counters without labels at zero. Idempotent.
pub fn describe_metrics() {
    for (name, help) in [
        ("raft_net_messages_sent_total", "Messages written to a stream, by peer and stream."),
        ("raft_net_messages_received_total", "Messages delivered to Raft, by peer and stream."),
        (
            "raft_net_send_dropped_total",
            "Messages dropped (full queue, no connection, oversized, failed write), by peer and stream.",
        ),
        ("raft_net_connects_total", "Connections established with a peer (either direction)."),
        ("raft_net_connect_failures_total", "Failed dial attempts, by peer."),
        ("raft_net_protocol_errors_total", "Connections closed for protocol violations."),
        (
            "raft_net_connections_refused_total",
            "Inbound connections refused (limit, TLS, identity, version, not allowed, revoked).",
        ),
        ("raft_net_retries_sent_total", "QUIC Retry packets sent to unvalidated addresses."),
        (
            "raft_net_crl_reload_failures_total",
            "Revocation list reloads that failed (the lists in force stay).",
        ),
        ("raft_snapshot_offers_refused_total", "Snapshots this node refused, by reason."),
        (
            "raft_snapshot_offers_refused_by_peer_total",
            "Snapshots a peer refused from this node, by peer and reason.",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    for (name, help) in [
        (
            "raft_net_bytes_sent_total",
            "Frame bytes written, by peer and stream.",
        ),
        (
            "raft_net_bytes_received_total",
            "Frame bytes read, by peer and stream.",
        ),
        (
            "raft_net_snapshot_bytes_sent_total",
            "Snapshot bytes sent, by peer.",
        ),
        (
            "raft_net_snapshot_bytes_received_total",
            "Snapshot bytes received, by peer.",
        ),
    ] {
        describe_counter!(name, Unit::Bytes, help);
    }
    describe_gauge!(
        "raft_net_peer_connected",
        Unit::Count,
        "1 while a connection with the peer is up, else 0."
    );
    describe_gauge!(
        "raft_net_peer_rtt_seconds",
        Unit::Seconds,
        "QUIC's round-trip time estimate to the peer, sampled every second, in seconds."
    );
    describe_gauge!(
        "raft_net_crl_own_certificate_revoked",
        Unit::Count,
        "1 when the revocation lists last loaded revoke this node's own certificate."
    );
    for name in [
        "raft_net_protocol_errors_total",
        "raft_net_connections_refused_total",
        "raft_net_retries_sent_total",
        "raft_net_crl_reload_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}
