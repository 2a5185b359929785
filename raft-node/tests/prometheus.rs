//! A real Prometheus scrapes a three-node `raft-node` cluster: its own
//! `prometheus` process on a free port, and the query API shows `raft_term`,
//! `raft_node_http_requests_total` and `up` for every node, and the
//! recording rules of `deploy/prometheus/rules.yml`, which it loads,
//! computed from them (one leader, every node's free-space ratio).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client_of, cluster, free_tcp, leader, put, skip_unless_required};
use serde_json::Value;

/// A `prometheus` process, killed when dropped (also when the test panics).
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `bin` with its own configuration and data directory under
    /// `dir`, listening on a free loopback port, scraping `targets` every
    /// second and evaluating deploy/prometheus/rules.yml every second.
    fn start(bin: &Path, dir: &Path, targets: &[String]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: raft-node\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{}]\n",
                rules.display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let listen = free_tcp();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .current_dir(dir)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://{listen}"),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> Option<Value> {
        let r = client
            .get(format!("{}{path}", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The instant vector of `query`: `instance` label → value.
    async fn query(&self, client: &reqwest::Client, query: &str) -> Vec<(String, f64)> {
        self.query_by(client, query, "instance").await
    }

    /// The instant vector of `query`: `label` → value.
    async fn query_by(
        &self,
        client: &reqwest::Client,
        query: &str,
        label: &str,
    ) -> Vec<(String, f64)> {
        let Some(v) = self
            .get(client, &format!("/api/v1/query?query={query}"))
            .await
        else {
            return Vec::new();
        };
        v["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| {
                        let instance = r["metric"][label].as_str()?.to_owned();
                        let value = r["value"][1].as_str()?.parse().ok()?;
                        Some((instance, value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `prometheus` binary on `PATH`, if any.
fn find_prometheus() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_node_of_a_three_node_cluster() {
    let Some(bin) = find_prometheus() else {
        skip_unless_required(
            "CI_REQUIRE_PROMETHEUS",
            "needs prometheus on PATH (scripts/deps.sh installs Debian's prometheus package)",
        );
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let procs = cluster(dir.path(), 3);
    let nodes = client_of(&procs);
    leader(&nodes, &procs, None).await;
    for (i, p) in procs.iter().enumerate() {
        put(&nodes, p, &format!("scrape/{i}"), "v").await.unwrap();
    }
    // Prometheus's own HTTP API.
    let client = reqwest::Client::new();

    let instances: BTreeSet<String> = procs
        .iter()
        .map(|p| p.http.trim_start_matches("http://").to_owned())
        .collect();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let targets: Vec<String> = instances.iter().cloned().collect();
    let mut prom = Prometheus::start(&bin, &prom_dir, &targets);

    let deadline = Instant::now() + Duration::from_secs(60);
    let (up, term, requests) = loop {
        let up = prom.query(&client, "up").await;
        let term = prom.query(&client, "raft_term").await;
        let requests = prom.query(&client, "raft_node_http_requests_total").await;
        let all = |v: &[(String, f64)]| {
            let seen: BTreeSet<String> = v.iter().map(|(i, _)| i.clone()).collect();
            seen == instances
        };
        if all(&up) && up.iter().all(|(_, v)| *v == 1.0) && all(&term) && all(&requests) {
            break (up, term, requests);
        }
        if let Some(s) = prom.child.try_wait().unwrap() {
            panic!(
                "prometheus exited with {s}; its stderr:\n{}",
                prom.log_text()
            );
        }
        if Instant::now() > deadline {
            let targets = match prom.get(&client, "/api/v1/targets").await {
                Some(v) => v["data"]["activeTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        format!(
                            "  {} health={} lastError={}\n",
                            t["scrapeUrl"], t["health"], t["lastError"]
                        )
                    })
                    .collect::<String>(),
                None => "  (no answer from /api/v1/targets)\n".to_owned(),
            };
            panic!(
                "prometheus did not scrape all of {instances:?} within 60 s\n\
                 up: {up:?}\nraft_term: {term:?}\nraft_node_http_requests_total: {requests:?}\n\
                 targets:\n{targets}--- prometheus stderr\n{}",
                prom.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (instance, t) in &term {
        assert!(*t >= 1.0, "raft_term of {instance} is {t}: {term:?}");
    }
    // The shipped recording rules, evaluated over what the nodes export:
    // one leader in the job, a free-space ratio for each node (`node` is
    // the label the nodes set themselves).
    let nodes: BTreeSet<String> = procs.iter().map(|p| p.id.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders = prom.query_by(&client, "job:raft_leaders:sum", "job").await;
        let ratio = prom
            .query_by(
                &client,
                "job_node:raft_node_data_fs_available:ratio",
                "node",
            )
            .await;
        let seen: BTreeSet<String> = ratio.iter().map(|(n, _)| n.clone()).collect();
        if leaders == [("raft-node".to_owned(), 1.0)]
            && seen == nodes
            && ratio.iter().all(|(_, r)| *r > 0.0 && *r <= 1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recording rules gave job:raft_leaders:sum {leaders:?} and free-space ratios \
             {ratio:?} (nodes {nodes:?}) within 30 s; prometheus stderr:\n{}",
            prom.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "prometheus scraped {} nodes after {:.1} s: up {up:?}, raft_term {term:?}, \
         {} raft_node_http_requests_total series",
        instances.len(),
        started.elapsed().as_secs_f64(),
        requests.len()
    );
    drop(prom);
}
