//! The monitoring pack against live nodes: a three-node cluster takes
//! writes, then each node's `/metrics` is scraped and checked (a `# HELP`
//! for every metric, histograms only, never a summary, the `node` label on
//! every series, the metrics the pack relies on present), and every metric
//! the Grafana dashboard (`deploy/grafana/raft-node.json`) or a rule of
//! `deploy/prometheus/rules.yml` names must be one a node exports (or a
//! recording rule of that file, or Prometheus' own `up`). A dashboard with
//! a name no node exports fails the same check.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{leader, led_cluster, put, Proc};

/// Names PromQL gives meaning to that are not metric names (with
/// [`LABEL_LISTS`]).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Whether `word` is a PromQL keyword (any case).
fn is_keyword(word: &str) -> bool {
    let word = word.to_lowercase();
    KEYWORDS.contains(&word.as_str()) || LABEL_LISTS.contains(&word.as_str())
}

/// Series Prometheus makes itself for each target.
const SYNTHETIC: &[&str] = &["up"];

/// The metric names a PromQL expression reads: identifiers outside label
/// matchers, strings and ranges that are neither a function, an operator
/// nor a keyword.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut braces = 0usize;
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < b.len() {
        let c = b[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => {
                braces += 1;
                i += 1;
            }
            '}' => {
                braces = braces.saturating_sub(1);
                i += 1;
            }
            '[' => {
                while i < b.len() && b[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            // Grafana variables ($job, $__rate_interval) and numbers
            // (0.99, 1e3, 5m).
            '$' | '0'..='9' | '.' => {
                i += 1;
                while i < b.len() && (ident(b[i]) || b[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word: String = b[start..i].iter().collect();
                let mut j = i;
                while j < b.len() && b[j].is_whitespace() {
                    j += 1;
                }
                let call = j < b.len() && b[j] == '(';
                if LABEL_LISTS.contains(&word.as_str()) && call {
                    // Skip the label list.
                    while j < b.len() && b[j] != ')' {
                        j += 1;
                    }
                    i = j + 1;
                } else if braces == 0 && !call && !is_keyword(&word) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The PromQL expressions of a Grafana dashboard: every `expr`, and the
/// metric of every `label_values(metric, label)` variable.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v.as_str()) {
                        ("expr", Some(e)) => out.push(e.to_owned()),
                        ("definition", Some(d)) => {
                            if let Some(rest) = d.trim().strip_prefix("label_values(") {
                                out.push(rest.split(',').next().unwrap_or("").to_owned());
                            }
                        }
                        _ => stack.push(v),
                    }
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

/// The `expr:` and `record:` values of a rules file (one line each, as
/// rules.yml writes them: the check refuses folded expressions rather than
/// skipping them).
fn rules_exprs(rules: &str) -> (Vec<String>, BTreeSet<String>) {
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    for line in rules.lines() {
        let line = line.trim().trim_start_matches("- ");
        if let Some(e) = line.strip_prefix("expr:") {
            let e = e.trim();
            assert!(
                !e.is_empty() && !e.starts_with('|') && !e.starts_with('>'),
                "a multi-line expr in the rules: {line}"
            );
            exprs.push(e.trim_matches('\'').trim_matches('"').to_owned());
        } else if let Some(r) = line.strip_prefix("record:") {
            records.insert(r.trim().to_owned());
        }
    }
    (exprs, records)
}

/// The names `exprs` read that are neither in `exported`, nor recorded by
/// `records`, nor made by Prometheus: expression → missing names.
fn missing(
    exprs: &[String],
    exported: &BTreeSet<String>,
    records: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    exprs
        .iter()
        .filter_map(|e| {
            let gone: BTreeSet<String> = metric_names(e)
                .into_iter()
                .filter(|n| {
                    !exported.contains(n)
                        && !records.contains(n)
                        && !SYNTHETIC.contains(&n.as_str())
                })
                .collect();
            (!gone.is_empty()).then(|| (e.clone(), gone))
        })
        .collect()
}

/// One node's exposition: its sample names, and what is wrong with it.
fn check_exposition(text: &str, node: u64) -> (BTreeSet<String>, Vec<String>) {
    let mut samples = BTreeSet::new();
    let mut problems = Vec::new();
    let mut helped = BTreeSet::new();
    let mut typed = BTreeMap::new();
    let label = format!("node=\"{node}\"");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if help.trim().is_empty() {
                problems.push(format!("empty HELP: {line}"));
            }
            helped.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            typed.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            samples.insert(name.to_owned());
            if line.contains("quantile=") {
                problems.push(format!("a summary quantile: {line}"));
            }
            if !line.contains(&label) {
                problems.push(format!("no {label}: {line}"));
            }
        }
    }
    for (name, kind) in &typed {
        if !helped.contains(name) {
            problems.push(format!("no HELP for {name} ({kind})"));
        }
        if !["counter", "gauge", "histogram"].contains(&kind.as_str()) {
            problems.push(format!("{name} is a {kind}"));
        }
    }
    (samples, problems)
}

/// The value of the first sample of `text` whose line starts with `prefix`.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn deploy_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Checks node `id`'s exposition `text` (scraped at `now`, Unix seconds)
/// and returns its sample names.
fn check_node(text: &str, id: u64, is_leader: bool, now: f64) -> BTreeSet<String> {
    let (samples, problems) = check_exposition(text, id);
    assert!(problems.is_empty(), "node {}: {problems:#?}\n{text}", id);
    let n = format!("{{node=\"{}\"}}", id);
    let version = format!(
        "raft_node_build_info{{node=\"{}\",version=\"{}\"}}",
        id,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(text, &version), Some(1.0), "{version}:\n{text}");
    assert_eq!(value(text, &format!("raft_has_leader{n}")), Some(1.0));
    assert!(value(text, &format!("raft_proposals_pending{n}")).is_some());
    assert!(value(text, &format!("raft_node_data_dir_bytes{n}")).unwrap() > 0.0);
    let fs = value(text, &format!("raft_node_data_fs_size_bytes{n}")).unwrap();
    let free = value(text, &format!("raft_node_data_fs_available_bytes{n}")).unwrap();
    assert!(fs > 0.0 && free <= fs, "filesystem {fs}, available {free}");
    assert!(value(text, &format!("process_resident_memory_bytes{n}")).unwrap() > 1e6);
    assert!(value(text, &format!("process_open_fds{n}")).unwrap() > 3.0);
    let start = value(text, &format!("process_start_time_seconds{n}")).unwrap();
    assert!(
        (now - 600.0..=now).contains(&start),
        "start time {start}, now {now}"
    );
    // Development certificates are valid for years.
    let expiry = format!(
        "raft_tls_cert_expiry_timestamp_seconds{{node=\"{}\",file=\"cert\"}}",
        id
    );
    assert!(value(text, &expiry).unwrap() > now + 86400.0, "{expiry}");
    if is_leader {
        assert!(value(text, &format!("raft_is_leader{n}")) == Some(1.0));
        // Committed proposals recorded their latency (those it took
        // itself; a follower times those it forwarded).
        let count = format!("raft_proposal_commit_seconds_count{n}");
        assert!(value(text, &count).unwrap() >= 1.0, "{count}:\n{text}");
        let lag = format!("raft_follower_lag_entries{{node=\"{}\",peer=", id);
        assert_eq!(text.lines().filter(|l| l.starts_with(&lag)).count(), 2);
    }
    samples
}

async fn scrape(http: &reqwest::Client, p: &Proc) -> String {
    http.get(format!("{}/metrics", p.http))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET /metrics of node {}: {e}", p.id))
        .text()
        .await
        .unwrap()
}

#[test]
fn metric_names_reads_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (job, node, le) (rate(raft_append_seconds_bucket{job="$job",status=~"5.."}[$__rate_interval])))
           / on (node) group_left raft_is_leader offset 5m > bool 0.5 or job:raft_leaders:sum unless up and time() - 14 * 86400 < process_start_time_seconds"#,
    );
    let want: BTreeSet<String> = [
        "raft_append_seconds_bucket",
        "raft_is_leader",
        "job:raft_leaders:sum",
        "up",
        "process_start_time_seconds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
}

/// The negative check: a dashboard or a rule naming a metric no node
/// exports, or a recording rule that does not exist, is caught.
#[test]
fn the_name_check_catches_unknown_metrics() {
    let exported: BTreeSet<String> = ["raft_term", "raft_proposals_total"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let dashboard = serde_json::json!({
        "panels": [{ "targets": [
            { "expr": "max(raft_term{job=\"$job\"})" },
            { "expr": "rate(raft_no_such_metric_total[$__rate_interval])" },
        ]}],
        "templating": { "list": [{ "definition": "label_values(raft_not_exported, job)" }] },
    });
    let exprs = dashboard_exprs(&dashboard);
    let (rule_exprs, records) = rules_exprs(
        "      - record: job:raft_proposals:rate1m\n        expr: sum by (job) (rate(raft_proposals_total[1m]))\n      - alert: X\n        expr: job:raft_not_recorded:sum > 0 or up == 0\n",
    );
    let found = missing(&exprs, &exported, &records);
    let gone: BTreeSet<&String> = found.values().flatten().collect();
    assert_eq!(
        gone.into_iter().cloned().collect::<Vec<_>>(),
        vec!["raft_no_such_metric_total", "raft_not_exported"],
        "{found:?}"
    );
    let found = missing(&rule_exprs, &exported, &records);
    assert_eq!(
        found.values().flatten().cloned().collect::<Vec<_>>(),
        vec!["job:raft_not_recorded:sum"],
        "{found:?}"
    );
    let (_, problems) = check_exposition(
        "# TYPE a summary\na{node=\"1\",quantile=\"0.5\"} 1\n# TYPE b counter\nb 2\n",
        1,
    );
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

/// Scrapes a three-node cluster after writes and checks the expositions
/// and every name the dashboard and the rules use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_exported_metrics() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--metrics-sample-interval-ms=200".to_string(),
        // A snapshot after 20 entries, so the snapshot metrics exist.
        "--snapshot-entries=20".to_string(),
    ];
    let (procs, client, lead) = led_cluster(dir.path(), 3, &extra).await;
    for i in 0..40 {
        let p = &procs[i % procs.len()];
        put(&client, p, &format!("monitoring/{i}"), "v")
            .await
            .unwrap();
    }
    let http = reqwest::Client::new();
    let leader_proc = procs.iter().find(|p| p.id == lead).unwrap();
    // The sampler and the snapshots run in the background: wait for what
    // the leader shows only after them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(&http, leader_proc).await;
        let ready = text.contains("raft_follower_lag_entries{")
            && text.contains("raft_node_data_dir_bytes{")
            && text.contains("raft_snapshot_build_seconds_bucket{");
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's /metrics lacks the sampled or snapshot metrics after 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut exported = BTreeSet::new();
    let mut timed = 0.0;
    for p in &procs {
        let text = scrape(&http, p).await;
        let samples = check_node(&text, p.id, p.id == lead, now);
        exported.extend(samples);
        let count = format!("raft_proposal_commit_seconds_count{{node=\"{}\"}}", p.id);
        timed += value(&text, &count).unwrap_or(0.0);
    }
    // Every write was timed once: on the leader, or on the follower that
    // forwarded it.
    assert!(timed >= 40.0, "{timed} proposals timed for 40 writes");

    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana/raft-node.json")).unwrap();
    let dash_exprs = dashboard_exprs(&dashboard);
    let (rule_exprs, records) = rules_exprs(&deploy_file("prometheus/rules.yml"));
    assert!(dash_exprs.len() >= 30 && rule_exprs.len() >= 15);
    let read: BTreeSet<String> = dash_exprs
        .iter()
        .chain(&rule_exprs)
        .flat_map(|e| metric_names(e))
        .collect();
    for name in [
        "raft_term",
        "raft_follower_lag_entries",
        "raft_proposal_commit_seconds_bucket",
    ] {
        assert!(
            read.contains(name),
            "the name parser missed {name}: {read:?}"
        );
    }
    let gone_dash = missing(&dash_exprs, &exported, &records);
    let gone_rules = missing(&rule_exprs, &exported, &records);
    assert!(
        gone_dash.is_empty() && gone_rules.is_empty(),
        "names no node exports:\ndashboard: {gone_dash:#?}\nrules: {gone_rules:#?}\nexported: {exported:#?}"
    );
    // The same check fails for a name these nodes do not export.
    let bad = vec!["rate(raft_proposals_totl[5m])".to_owned()];
    assert_eq!(missing(&bad, &exported, &records).len(), 1);
    eprintln!(
        "{} names read by {} dashboard and {} rule expressions, all among the {} series names \
         of 3 nodes ({:.1} s)",
        read.len(),
        dash_exprs.len(),
        rule_exprs.len(),
        exported.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Gauges sampled every 100 ms, for tests that wait for them to change.
const FAST_SAMPLES: &str = "--metrics-sample-interval-ms=100";

/// The series of `leader`'s gauge of `peer`'s lag (name and labels).
fn lag_series(leader: u64, peer: u64) -> String {
    format!("raft_follower_lag_entries{{node=\"{leader}\",peer=\"{peer}\"}}")
}

/// Polls node `p`'s `/metrics` until `want` holds for the value of the
/// series `series` (the whole name with its labels), for up to 20 s.
async fn wait_metric(http: &reqwest::Client, p: &Proc, series: &str, want: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(http, p).await;
        if value(&text, &format!("{series} ")).is_some_and(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} of node {} did not reach the expected value within 20 s:\n{text}",
            p.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gauges follow the cluster: a follower that is down lags by the
/// entries written since, on the leader; once the leader has lost its
/// majority it knows no leader, and it reports no lag any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_lag_gauges_follow_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, client, lead) = led_cluster(dir.path(), 3, &[FAST_SAMPLES.into()]).await;
    let l = procs.iter().position(|p| p.id == lead).unwrap();
    let followers: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let http = reqwest::Client::new();
    let lag = |peer| lag_series(lead, peer);
    let (down, up) = (procs[followers[0]].id, procs[followers[1]].id);
    procs[followers[0]].kill9();
    for i in 0..25 {
        put(&client, &procs[l], &format!("lag/{i}"), "v")
            .await
            .unwrap();
    }
    wait_metric(&http, &procs[l], &lag(down), |v| v >= 25.0).await;
    wait_metric(&http, &procs[l], &lag(up), |v| v == 0.0).await;
    let has_leader = format!("raft_has_leader{{node=\"{lead}\"}}");
    wait_metric(&http, &procs[l], &has_leader, |v| v == 1.0).await;
    // Without its majority the leader steps down and knows no leader.
    procs[followers[1]].kill9();
    wait_metric(&http, &procs[l], &has_leader, |v| v == 0.0).await;
    wait_metric(
        &http,
        &procs[l],
        &format!("raft_is_leader{{node=\"{lead}\"}}"),
        |v| v == 0.0,
    )
    .await;
    wait_metric(&http, &procs[l], &lag(down), |v| v == 0.0).await;
}

/// A leader reports the lag of a follower it has not heard from since it
/// took over as unknown (NaN), not as the whole log: a follower that was
/// down during the election (a rolling restart) does not show millions of
/// entries behind and fire the lag alert with a made-up number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_reports_an_unheard_followers_lag_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, client, first) = led_cluster(dir.path(), 5, &[FAST_SAMPLES.into()]).await;
    for i in 0..40 {
        put(&client, &procs[0], &format!("lag/{i}"), "v")
            .await
            .unwrap();
    }
    let down = procs.iter().position(|p| p.id != first).unwrap();
    let down_id = procs[down].id;
    procs[down].kill9();
    let l = procs.iter().position(|p| p.id == first).unwrap();
    procs[l].kill9();
    let new = leader(&client, &procs, Some(first)).await;
    let n = procs.iter().position(|p| p.id == new).unwrap();
    let up = procs
        .iter()
        .find(|p| ![first, down_id, new].contains(&p.id))
        .unwrap()
        .id;
    let http = reqwest::Client::new();
    let lag = |peer| lag_series(new, peer);
    // A follower that answers: its lag is known (and small).
    wait_metric(&http, &procs[n], &lag(up), |v| v < 40.0).await;
    let text = scrape(&http, &procs[n]).await;
    let unheard = value(&text, &format!("{} ", lag(down_id)));
    assert!(
        unheard.is_none_or(f64::is_nan),
        "the new leader reports node {down_id}, down since before the election, {unheard:?} \
         entries behind:\n{text}"
    );
}
