//! `# HELP` text and units of the metrics the log store records.

use metrics::{describe_counter, describe_histogram, Unit};

/// Describes every metric the log store records (name, unit, meaning), so
/// an exporter can print them (Prometheus: `# HELP`), and registers its
/// counters at zero. Idempotent.
pub fn describe_metrics() {
    describe_histogram!(
        "raft_log_write_seconds",
        Unit::Seconds,
        "Duration of each RocksDB write batch of the log (with its fsync), in seconds."
    );
    describe_counter!(
        "raft_log_write_bytes_total",
        Unit::Bytes,
        "Bytes of log records written."
    );
    describe_counter!(
        "raft_log_corruptions_total",
        Unit::Count,
        "Corruptions RocksDB reported in the log store."
    );
    metrics::counter!("raft_log_write_bytes_total").increment(0);
    metrics::counter!("raft_log_corruptions_total").increment(0);
}
