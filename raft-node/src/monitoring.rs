//! The Prometheus exporter of a node and the metrics only the node knows:
//! build information, process figures (read from `/proc` at each scrape),
//! and what a background sampler measures every
//! [`crate::config::NodeConfig::metrics_sample_interval`]: the data directory's size and
//! its filesystem's free space, the followers' lag and the requests
//! waiting on Raft; and, once at start, the expiry of the certificates the
//! node loaded.
//!
//! Every series carries a `node` label naming the node (a global label of
//! the exporter), every metric has a `# HELP` line (the `describe_metrics`
//! of each crate, and [`describe_node_metrics`]) and every histogram has
//! explicit buckets: nothing comes out as a summary, whose quantiles
//! cannot be aggregated across nodes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use raft_core::{NodeId, RaftHandle, Role};
use tokio::task::JoinHandle;

/// Buckets of durations, in seconds (`*_seconds` histograms): 100 µs to
/// 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of batch sizes, in entries (`*_entries` histograms): 1 to 4096
/// by powers of two, the range the driver's group commit and apply batches
/// span.
pub const ENTRIES_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Buckets of any other histogram (none today): powers of ten, so that a
/// histogram added later without buckets of its own still comes out as a
/// histogram, never as a summary.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0,
];

/// A Prometheus exporter for node `node`: explicit buckets for every
/// histogram, the label `node="<node>"` on every series. Not installed.
///
/// # Errors
///
/// When the exporter refuses a bucket list (never for the constants here).
pub fn exporter(node: NodeId) -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets(DEFAULT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_entries".into()), ENTRIES_BUCKETS)
        .map(|b| b.add_global_label("node", node.to_string()))
}

/// Installs [`exporter`] as the process's recorder, describes every metric
/// of the node and its crates, and sets `raft_node_build_info`.
///
/// # Errors
///
/// When a recorder is already installed.
pub fn install(node: NodeId) -> anyhow::Result<PrometheusHandle> {
    use anyhow::Context;
    let handle = exporter(node)
        .context("configuring the metrics exporter")?
        .install_recorder()
        .context("installing the metrics exporter")?;
    describe_all();
    Ok(handle)
}

/// Describes the metrics of every crate the node runs, and of the node.
pub fn describe_all() {
    raft_core::describe_metrics();
    raft_log::describe_metrics();
    raft_net_quic::describe_metrics();
    describe_node_metrics();
}

/// Describes the node's own metrics, registers its counters without labels
/// at zero and sets `raft_node_build_info{version}` to 1.
pub fn describe_node_metrics() {
    describe_gauge!(
        "raft_node_build_info",
        Unit::Count,
        "Always 1; the version label names the raft-node release."
    );
    metrics::gauge!("raft_node_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!(
        "raft_node_http_requests_total",
        Unit::Count,
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        "raft_node_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration, by route and method, in seconds."
    );
    describe_gauge!(
        "raft_node_http_connections_open",
        Unit::Count,
        "Open HTTP connections."
    );
    describe_gauge!(
        "raft_node_leases",
        Unit::Count,
        "Leases live, as the leader's expiry task last read them."
    );
    describe_counter!(
        "raft_node_leases_expired_total",
        Unit::Count,
        "Expired leases this node revoked as leader."
    );
    describe_counter!(
        "raft_node_leases_revoked_total",
        Unit::Count,
        "Leases revoked by a client through this node."
    );
    metrics::counter!("raft_node_leases_expired_total").increment(0);
    metrics::counter!("raft_node_leases_revoked_total").increment(0);
    describe_counter!(
        "raft_node_http_connections_closed_total",
        Unit::Count,
        "HTTP connections the server closed, by reason."
    );
    for (name, help) in [
        (
            "raft_node_http_connections_refused_total",
            "HTTP connections refused at the connection cap.",
        ),
        (
            "raft_node_http_requests_shed_total",
            "HTTP requests answered 503 because every request slot was taken.",
        ),
        (
            "raft_node_http_deadline_exceeded_total",
            "HTTP requests that ran past their deadline.",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
        metrics::counter!(name).increment(0);
    }
    describe_counter!(
        "raft_node_http_forwarded_total",
        Unit::Count,
        "Requests this node relayed to the leader over HTTP (the transport could not carry them), by kind (write, read)."
    );
    for kind in ["write", "read"] {
        metrics::counter!("raft_node_http_forwarded_total", "kind" => kind).increment(0);
    }
    describe_counter!(
        "raft_node_http_bodies_refused_total",
        Unit::Count,
        "HTTP request bodies refused, by reason (too_large, timeout)."
    );
    describe_gauge!(
        "raft_storage_busy_seconds",
        Unit::Seconds,
        "How long the log write in progress has run (0 when none), in seconds."
    );
    describe_sampled();
    describe_process();
    describe_watches();
}

/// The metrics of watches (`GET /v1/watch`).
fn describe_watches() {
    describe_gauge!(
        "raft_node_watchers",
        Unit::Count,
        "Watches open on this node."
    );
    metrics::gauge!("raft_node_watchers").increment(0.0);
    describe_counter!(
        "raft_node_watch_events_sent_total",
        Unit::Count,
        "Key changes sent to watches."
    );
    metrics::counter!("raft_node_watch_events_sent_total").increment(0);
    describe_counter!(
        "raft_node_watchers_canceled_total",
        Unit::Count,
        "Watches the node canceled, by reason (compacted, store_error, shutdown)."
    );
    describe_counter!(
        "raft_node_watch_catchups_total",
        Unit::Count,
        "Times a watch read changes it missed back from the history, by reason \
         (lagged: it fell --watch-buffer-batches behind; snapshot: its node installed one)."
    );
}

fn describe_sampled() {
    describe_gauge!(
        "raft_node_data_dir_bytes",
        Unit::Bytes,
        "Bytes of the files under the data directory (store, snapshots)."
    );
    describe_gauge!(
        "raft_node_data_fs_size_bytes",
        Unit::Bytes,
        "Size of the data directory's filesystem, in bytes."
    );
    describe_gauge!(
        "raft_node_data_fs_available_bytes",
        Unit::Bytes,
        "Bytes of the data directory's filesystem available to the node."
    );
    describe_gauge!(
        "raft_tls_cert_expiry_timestamp_seconds",
        Unit::Seconds,
        "End of validity (notAfter) of the node's certificate (file=cert) and of the CA's \
         (file=ca) as loaded at the node's start, in seconds since the Unix epoch."
    );
    describe_gauge!(
        "raft_follower_lag_entries",
        Unit::Count,
        "On the leader: entries of its log a follower has not confirmed, by peer (NaN for a follower that has not answered since this node became leader; 0 elsewhere)."
    );
    describe_gauge!(
        "raft_reads_pending",
        Unit::Count,
        "Linearizable reads waiting for the leader's confirmation."
    );
}

fn describe_process() {
    describe_counter!(
        "process_cpu_seconds_total",
        Unit::Seconds,
        "User and system CPU time of the process, in whole seconds."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the process, in bytes."
    );
    describe_gauge!(
        "process_virtual_memory_bytes",
        Unit::Bytes,
        "Virtual memory of the process, in bytes."
    );
    describe_gauge!(
        "process_open_fds",
        Unit::Count,
        "Open file descriptors of the process."
    );
    describe_gauge!(
        "process_max_fds",
        Unit::Count,
        "Limit of open file descriptors of the process (soft RLIMIT_NOFILE)."
    );
    describe_gauge!("process_threads", Unit::Count, "Threads of the process.");
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "Start of the process, in seconds since the Unix epoch."
    );
    update_process_metrics();
}

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual size, bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Parses `/proc/self/stat` (`stat`) with the system's boot time (`btime`
/// of `/proc/stat`), clock ticks per second and page size. `None` when the
/// text is not what Linux writes.
pub fn parse_proc_stat(stat: &str, boot_time: u64, hz: u64, page: u64) -> Option<ProcessSample> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // start after its last ')', at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let hz = hz.max(1);
    Some(ProcessSample {
        cpu_seconds: (field(14)? + field(15)?) as f64 / hz as f64,
        threads: field(20)?,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / hz as f64,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page),
    })
}

/// The `btime` line of `/proc/stat`.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Sets the `process_*` metrics from `/proc/self` (Linux; elsewhere they
/// stay unset). Cheap: three small reads and one directory listing; the
/// `/metrics` route calls it at each scrape.
pub fn update_process_metrics() {
    let hz = rustix::param::clock_ticks_per_second();
    let page = rustix::param::page_size() as u64;
    let sample = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_proc_stat(&stat, boot_time()?, hz, page));
    if let Some(s) = sample {
        // Counters are integers: whole seconds (a rate over minutes is
        // what dashboards show).
        metrics::counter!("process_cpu_seconds_total").absolute(s.cpu_seconds as u64);
        metrics::gauge!("process_resident_memory_bytes").set(s.resident_bytes as f64);
        metrics::gauge!("process_virtual_memory_bytes").set(s.virtual_bytes as f64);
        metrics::gauge!("process_threads").set(s.threads as f64);
        metrics::gauge!("process_start_time_seconds").set(s.start_time_seconds);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The listing's own descriptor is among them.
        metrics::gauge!("process_open_fds").set(fds.count().saturating_sub(1) as f64);
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = limit.current {
        metrics::gauge!("process_max_fds").set(max as f64);
    }
}

/// Bytes of the regular files under `dir`, recursively (symbolic links are
/// not followed; files that vanish while it walks are skipped).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// What the sampler looks at.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// This node.
    pub id: NodeId,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// The node's certificate file and the CA's.
    pub tls_cert: PathBuf,
    /// The CA certificate file.
    pub tls_ca: PathBuf,
    /// How often it samples.
    pub interval: Duration,
}

/// Sets the certificates' expiry once ([`publish_cert_expiry`]: the
/// certificates the node loaded at its start), and samples, every
/// `cfg.interval`: the data directory's size and its filesystem's space,
/// and from the driver's status the followers' lag and the reads waiting.
/// The certificates' read, the directory walk and the file reads run on
/// blocking threads of their own, which the sampling does not wait for: a
/// hung filesystem freezes the file gauges only, and one walk at most is
/// in flight.
pub fn spawn_sampler<R: Send + 'static>(cfg: SamplerConfig, raft: RaftHandle<R>) -> JoinHandle<()> {
    spawn_sampler_with(
        cfg,
        raft,
        Arc::new(sample_files),
        Arc::new(publish_cert_expiry),
    )
}

/// How the sampler reads the files (a test replaces it by a walk that
/// hangs).
pub(crate) type FileSampler = Arc<dyn Fn(&SamplerConfig) + Send + Sync>;

/// [`spawn_sampler`] with `files` as the file sampling and `certs` as the
/// read of the certificates' expiry.
pub(crate) fn spawn_sampler_with<R: Send + 'static>(
    cfg: SamplerConfig,
    raft: RaftHandle<R>,
    files: FileSampler,
    certs: FileSampler,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Read once, on a blocking thread of its own that nothing waits
        // for: a hung read leaves the expiry gauges unset, nothing else.
        let certs_cfg = cfg.clone();
        drop(tokio::task::spawn_blocking(move || certs(&certs_cfg)));
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lagging: BTreeSet<NodeId> = BTreeSet::new();
        let mut walk = Walk::default();
        loop {
            tick.tick().await;
            walk.next(&cfg, &files);
            // A driver that does not answer within the interval leaves the
            // Raft gauges as they were; the file ones go on.
            let status = tokio::time::timeout(cfg.interval, raft.status()).await;
            if let Ok(Some(status)) = status {
                metrics::gauge!("raft_reads_pending").set(status.pending_reads as f64);
                lagging = publish_lag(&cfg, &status.engine, lagging);
            }
        }
    })
}

/// The file sampling in flight, on a blocking thread of its own.
#[derive(Default)]
struct Walk {
    task: Option<JoinHandle<()>>,
    /// Whether the log said it is stuck since it started.
    warned: bool,
}

impl Walk {
    /// Starts a file sampling unless the last one still runs (a hung
    /// filesystem: it is waited for, not piled up, and logged once).
    fn next(&mut self, cfg: &SamplerConfig, files: &FileSampler) {
        if self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            if !std::mem::replace(&mut self.warned, true) {
                tracing::warn!(
                    dir = %cfg.data_dir.display(),
                    "the data directory's size is still being read since the last sample; \
                     its gauges are stale until it returns"
                );
            }
            return;
        }
        let (cfg, files) = (cfg.clone(), files.clone());
        self.task = Some(tokio::task::spawn_blocking(move || files(&cfg)));
        self.warned = false;
    }
}

/// Sets `raft_follower_lag_entries` of the peers this node leads, and 0
/// for those it led at the last sample and no longer does. Returns the
/// peers it leads.
fn publish_lag(
    cfg: &SamplerConfig,
    e: &raft_core::engine::Status,
    lagging: BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let mut now = BTreeSet::new();
    if e.role == Role::Leader {
        for p in e.peers.iter().filter(|p| p.id != cfg.id) {
            metrics::gauge!("raft_follower_lag_entries", "peer" => p.id.to_string())
                .set(follower_lag(e.last_index, p));
            now.insert(p.id);
        }
    }
    // Peers this node no longer leads (or that left): 0, not a stale lag.
    for gone in lagging.difference(&now) {
        metrics::gauge!("raft_follower_lag_entries", "peer" => gone.to_string()).set(0.0);
    }
    now
}

/// A follower's lag in entries, as its leader knows it; NaN (unknown) for
/// one that has not answered since this node became leader: a new leader
/// starts with nothing known of its followers (matched 0), and reporting
/// the whole log as their lag would be a made-up number.
fn follower_lag(last_index: u64, p: &raft_core::engine::PeerStatus) -> f64 {
    if p.matched == 0 && !p.recent_active {
        f64::NAN
    } else {
        last_index.saturating_sub(p.matched) as f64
    }
}

/// The data directory's size and its filesystem's space.
fn sample_files(cfg: &SamplerConfig) {
    metrics::gauge!("raft_node_data_dir_bytes").set(dir_bytes(&cfg.data_dir) as f64);
    if let Ok(st) = rustix::fs::statvfs(&cfg.data_dir) {
        let size = st.f_blocks.saturating_mul(st.f_frsize);
        let available = st.f_bavail.saturating_mul(st.f_frsize);
        metrics::gauge!("raft_node_data_fs_size_bytes").set(size as f64);
        metrics::gauge!("raft_node_data_fs_available_bytes").set(available as f64);
    }
}

/// Sets `raft_tls_cert_expiry_timestamp_seconds` from the certificate
/// files as they are when the node starts, which is when it loads them:
/// the node serves those certificates until it restarts, so a file
/// renewed on disk later (cert-manager renews before expiry) must not
/// hide the expiry of the one in use. Called once, at start.
pub fn publish_cert_expiry(cfg: &SamplerConfig) {
    for (file, path) in [("cert", &cfg.tls_cert), ("ca", &cfg.tls_ca)] {
        let expiry = std::fs::read(path)
            .ok()
            .and_then(|pem| raft_net_quic::tls::certificate_not_after(&pem).ok());
        if let Some(t) = expiry {
            metrics::gauge!("raft_tls_cert_expiry_timestamp_seconds", "file" => file).set(t as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn proc_stat_parses_fields_after_the_command_name() {
        // Field 2 holds spaces and a ')'; then state (3) ... utime (14),
        // stime (15), threads (20), starttime (22), vsize (23), rss (24).
        let stat = "42 (raft) node) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 7 0 \
                    1000 123456789 300 18446744073709551615";
        let s = parse_proc_stat(stat, 1_700_000_000, 100, 4096).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(s.virtual_bytes, 123_456_789);
        assert_eq!(s.resident_bytes, 300 * 4096);
        assert_eq!(parse_proc_stat("garbage", 0, 100, 4096), None);
        assert_eq!(parse_proc_stat("1 (x) S 1 2", 0, 100, 4096), None);
    }

    #[test]
    fn the_process_own_stat_parses() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let s = parse_proc_stat(&stat, boot_time().unwrap(), 100, 4096).unwrap();
        assert!(s.threads >= 1 && s.resident_bytes > 0, "{s:?}");
    }

    #[test]
    fn dir_bytes_sums_files_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 28]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 128);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }

    /// A self-signed certificate valid until the start of `year`.
    fn cert_until(year: i32) -> (String, f64) {
        let mut params = rcgen::CertificateParams::new(vec!["node".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let not_after = raft_net_quic::tls::certificate_not_after(pem.as_bytes()).unwrap();
        (pem, not_after as f64)
    }

    /// The expiry gauges by `file` label, from one snapshot (taking a
    /// snapshot resets the debugging recorder's values).
    fn cert_expiry_gauges(
        snapshotter: &metrics_util::debugging::Snapshotter,
    ) -> BTreeMap<String, f64> {
        use metrics_util::debugging::DebugValue;
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "raft_tls_cert_expiry_timestamp_seconds")
            .map(|(key, _, _, value)| {
                let file = key.key().labels().find(|l| l.key() == "file").unwrap();
                let DebugValue::Gauge(g) = value else {
                    panic!("not a gauge: {value:?}")
                };
                (file.value().to_string(), g.into_inner())
            })
            .collect()
    }

    /// The node loads its certificate at start and serves it until it
    /// restarts: a file renewed on disk (cert-manager renews 15 days
    /// before expiry, the alert warns at 14) must not hide the expiry of
    /// the certificate in use.
    #[test]
    fn the_cert_expiry_is_the_loaded_certificates_not_the_renewed_files() {
        let dir = tempfile::tempdir().unwrap();
        let (loaded, loaded_expiry) = cert_until(2031);
        let (renewed, renewed_expiry) = cert_until(2040);
        assert_ne!(loaded_expiry, renewed_expiry);
        let cfg = SamplerConfig {
            id: 1,
            data_dir: dir.path().to_owned(),
            tls_cert: dir.path().join("node.pem"),
            tls_ca: dir.path().join("ca.pem"),
            interval: Duration::from_secs(5),
        };
        std::fs::write(&cfg.tls_cert, &loaded).unwrap();
        std::fs::write(&cfg.tls_ca, &loaded).unwrap();
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            // The node starts with `loaded`, then the files are renewed
            // and the sampler goes on.
            publish_cert_expiry(&cfg);
            sample_files(&cfg);
            std::fs::write(&cfg.tls_cert, &renewed).unwrap();
            std::fs::write(&cfg.tls_ca, &renewed).unwrap();
            sample_files(&cfg);
        });
        let want = BTreeMap::from([
            ("ca".to_string(), loaded_expiry),
            ("cert".to_string(), loaded_expiry),
        ]);
        assert_eq!(cert_expiry_gauges(&snapshotter), want);
    }
}

#[cfg(test)]
#[path = "monitoring_sampler_tests.rs"]
mod sampler_tests;
