//! One chaos run from a seed: start the cluster, run the clients while the
//! nemesis injects faults, heal, wait for convergence, check, and write what
//! was found. [`run_seed`] is what the CLI and the tests call.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft_linearizability::{History, Outcome};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::check::{self, Violation};
use crate::client::{final_read, ClientConfig, Recorder, SharedUrls, Worker};
use crate::cluster::{Cluster, NodeSettings};
use crate::error::ChaosError;
use crate::nemesis::{self, Fault, FaultEvent, NemesisConfig};
use crate::probe::Probe;
use crate::report;

/// Lines of one violation's explanation printed in the summary (the whole
/// of it is in `summary.json`).
const SUMMARY_LINES_MAX: usize = 16;

/// Everything a run depends on. Two runs with the same config make the same
/// random choices (timing still differs).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Number of nodes (3 or 5 are the documented ones).
    pub nodes: u64,
    /// The seed of the nemesis schedule and the clients' choices.
    pub seed: u64,
    /// How long the clients and the nemesis run.
    pub duration: Duration,
    /// Where this run's directory (`seed-<seed>`) is made.
    pub out: PathBuf,
    /// The `raft-node` binary.
    pub raft_node: PathBuf,
    /// Client settings.
    pub clients: ClientConfig,
    /// Nemesis settings.
    pub nemesis: NemesisConfig,
    /// Node settings.
    pub node: NodeSettings,
    /// Keep node logs and data even when the run passes.
    pub keep: bool,
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The seed.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: u64,
    /// Wall time of the whole run (setup to checks).
    pub wall: Duration,
    /// Operations by outcome (`ok`, `failed`, `indeterminate`, ...).
    pub ops: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// HTTP results outside the contract, by description.
    pub unexpected: BTreeMap<String, u64>,
    /// What the checks found.
    pub violations: Vec<Violation>,
    /// Notes on the checks that passed (convergence).
    pub notes: Vec<String>,
    /// The run's output directory.
    pub dir: PathBuf,
}

impl RunSummary {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A readable multi-line summary.
    pub fn render(&self) -> String {
        let total: u64 = self.ops.values().sum();
        let ops: Vec<String> = self.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let mut s = format!(
            "seed {} ({} nodes, {:.1} s): {} — {total} ops ({}); faults: {}",
            self.seed,
            self.nodes,
            self.wall.as_secs_f64(),
            if self.passed() { "PASS" } else { "FAIL" },
            ops.join(", "),
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(", ")
            },
        );
        if !self.unexpected.is_empty() {
            s += &format!("\n  unexpected HTTP results: {:?}", self.unexpected);
        }
        for n in &self.notes {
            s += &format!("\n  {n}");
        }
        for v in &self.violations {
            let lines: Vec<&str> = v.detail.lines().collect();
            s += &format!("\n  VIOLATION [{}]: ", v.check);
            if lines.len() > SUMMARY_LINES_MAX {
                s += &lines[..SUMMARY_LINES_MAX / 2].join("\n    ");
                s += &format!(
                    "\n    ... ({} more lines in summary.json) ...\n    ",
                    lines.len() - SUMMARY_LINES_MAX
                );
                s += &lines[lines.len() - SUMMARY_LINES_MAX / 2..].join("\n    ");
            } else {
                s += &lines.join("\n    ");
            }
        }
        s += &format!("\n  output: {}", self.dir.display());
        s
    }
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::ReadOk(_) => "read-ok",
        Outcome::WriteOk | Outcome::DeleteOk | Outcome::CasOk => "write-ok",
        Outcome::CasFailed => "cas-failed",
        Outcome::Failed => "failed",
        Outcome::Indeterminate => "indeterminate",
    }
}

/// Runs one seed. Harness errors (the cluster could not be set up) are
/// `Err`; findings about the system are in [`RunSummary::violations`].
///
/// # Errors
///
/// When the network, certificates or processes cannot be set up.
pub async fn run_seed(cfg: &RunConfig) -> Result<RunSummary, ChaosError> {
    let started = Instant::now();
    let dir = cfg.out.join(format!("seed-{}", cfg.seed));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ChaosError::io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(ChaosError::io(&dir))?;
    let dir = dir.canonicalize().map_err(ChaosError::io(&dir))?;
    let mut cluster = Cluster::start(&dir, cfg.nodes, &cfg.raft_node, &cfg.node)?;
    let urls = cluster.urls();
    let probe = Probe::new(urls.first().map_or("", |(_, u)| u.as_str()))?;
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    if let Err(e) = probe.wait_for_leader(&urls, Duration::from_secs(60)).await {
        let exits = cluster.unexpected_exits();
        return Err(ChaosError::Cluster(format!(
            "{e}; exited: {exits:?}; logs in {}",
            dir.display()
        )));
    }

    // Clients.
    let rec = Recorder::new(Instant::now());
    let stop = Arc::new(AtomicBool::new(false));
    // Workers stop also when this run ends early (an error, Ctrl-C).
    let _stop_guard = StopOnDrop(stop.clone());
    let node_urls: Vec<String> = urls.iter().map(|(_, u)| u.clone()).collect();
    let shared_urls: SharedUrls = Arc::new(RwLock::new(node_urls));
    let mut workers = Vec::new();
    for w in 1..=cfg.clients.workers {
        let worker = Worker::new(
            w,
            cfg.seed,
            shared_urls.clone(),
            cfg.clients.clone(),
            rec.clone(),
        )?;
        workers.push(tokio::spawn(worker.run(stop.clone())));
    }

    // Nemesis.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut events: Vec<FaultEvent> = Vec::new();
    let mut crashed: BTreeSet<u64> = BTreeSet::new();
    let run_end = Instant::now() + cfg.duration;
    let mut check_exits = |cluster: &mut Cluster, violations: &mut Vec<Violation>| {
        for (id, status) in cluster.unexpected_exits() {
            if crashed.insert(id) {
                violations.push(Violation {
                    check: "node-crashed",
                    detail: match cluster.nodes.get(&id) {
                        Some(n) => format!(
                            "node {id} exited on its own ({status}); last log lines:\n{}",
                            n.log_tail(30)
                        ),
                        // A removed node: the status carries its log tail.
                        None => format!("node {id} exited on its own ({status})"),
                    },
                    key: None,
                    focus: Vec::new(),
                });
            }
        }
    };
    let mut harness_error: Option<ChaosError> = None;
    while Instant::now() < run_end {
        let quiet = nemesis::pick_ms(&mut rng, cfg.nemesis.quiet_ms);
        sleep_watching(
            quiet,
            run_end,
            &mut cluster,
            &mut violations,
            &mut check_exits,
        )
        .await;
        if Instant::now() >= run_end {
            break;
        }
        let faults = nemesis::next_faults(&mut rng, &cfg.nemesis, &probe, &cluster).await;
        // The relay's count when a delay fault started, to see that the
        // nodes' traffic really went through it (a redirect that silently
        // failed would make the fault a partition, or nothing).
        let mut delay_from: Option<(u64, Instant)> = None;
        let hold = nemesis::pick_ms(&mut rng, cfg.nemesis.hold_ms);
        let first = events.len();
        for f in &faults {
            events.push(FaultEvent {
                kind: f.kind().to_owned(),
                detail: f.describe(),
                start_us: rec.now_us(),
                end_us: None,
            });
            if let Fault::Replace { node } = f {
                let what =
                    match nemesis::replace(&mut cluster, &probe, *node, Duration::from_secs(40))
                        .await
                    {
                        Ok(what) => what,
                        Err(e) => {
                            harness_error = Some(e);
                            break;
                        }
                    };
                notes.push(format!("membership: {what}"));
                if let Some(e) = events.last_mut() {
                    e.detail = what;
                }
                let now: Vec<String> = cluster.urls().into_iter().map(|(_, u)| u).collect();
                if let Ok(mut u) = shared_urls.write() {
                    *u = now;
                }
            } else if let Err(e) = nemesis::apply(&mut cluster, f) {
                harness_error = Some(e);
                break;
            } else if matches!(f, Fault::Delay { .. }) {
                delay_from = cluster
                    .relay
                    .as_ref()
                    .map(|r| (r.received(), Instant::now()));
            }
        }
        if harness_error.is_some() {
            break;
        }
        sleep_watching(
            hold,
            run_end,
            &mut cluster,
            &mut violations,
            &mut check_exits,
        )
        .await;
        // (A fault the end of the run cut to less than a second proves
        // little either way: nodes may have sent nothing in that time.)
        if let (Some((from, at)), Some(relay)) = (delay_from, &cluster.relay) {
            let held = at.elapsed();
            if relay.received() == from && held >= Duration::from_secs(1) {
                violations.push(Violation {
                    check: "harness-error",
                    detail: format!(
                        "a delay fault held for {held:?} brought no datagram to the relay: \
                         the redirect did not work, so this run proves nothing about delays"
                    ),
                    key: None,
                    focus: Vec::new(),
                });
            }
        }
        if let Err(e) = nemesis::heal(&mut cluster) {
            harness_error = Some(e);
            break;
        }
        let healed = rec.now_us();
        for e in &mut events[first..] {
            e.end_us = Some(healed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    if let Err(e) = nemesis::heal(&mut cluster) {
        harness_error.get_or_insert(e);
    }
    // Faults still open (a harness error cut their round short) end here.
    let healed = rec.now_us();
    for e in events.iter_mut().filter(|e| e.end_us.is_none()) {
        e.end_us = Some(healed);
    }
    // A harness failure (a rule that cannot be written, a node that cannot
    // be started) makes the run invalid, not the system wrong; the checks
    // still run and the history and logs are kept to look at.
    if let Some(e) = harness_error {
        violations.push(Violation {
            check: "harness-error",
            detail: format!("the harness failed, so this run proves nothing: {e}"),
            key: None,
            focus: Vec::new(),
        });
    }
    check_exits(&mut cluster, &mut violations);
    if let Some(relay) = &cluster.relay {
        notes.push(format!(
            "delay relay: {} node-to-node datagrams delayed, {} dropped for a full queue",
            relay.relayed(),
            relay.dropped()
        ));
    }

    // Convergence: a leader, then a final read of every key, then identical
    // replicas (of the nodes there are now: replaced ones are gone, and a
    // node whose removal the harness gave up on but which committed later
    // is no replica either).
    let mut urls = cluster.urls();
    if let Some(members) = committed_members(&probe, &urls, Duration::from_secs(30)).await {
        let gone: Vec<u64> = urls
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !members.contains(id))
            .collect();
        if !gone.is_empty() {
            notes.push(format!(
                "nodes {gone:?} are no longer members: left out of the convergence checks"
            ));
            urls.retain(|(id, _)| members.contains(id));
        }
    }
    let node_urls: Vec<String> = urls.iter().map(|(_, u)| u.clone()).collect();
    if let Err(e) = probe.wait_for_leader(&urls, Duration::from_secs(60)).await {
        violations.push(Violation {
            check: "no-convergence",
            detail: format!("after healing: {e}"),
            key: None,
            focus: Vec::new(),
        });
    }
    let history_so_far = rec.history();
    let keys: BTreeSet<Vec<u8>> = history_so_far.ops().iter().map(|o| o.key.clone()).collect();
    let mut finals = BTreeMap::new();
    // One budget for all keys: a cluster that cannot answer fails them all
    // within it, instead of costing 30 s per key.
    let reads_deadline = Instant::now() + FINAL_READS_BUDGET;
    // Its settings are those of the harness's other requests.
    let reader = node_urls
        .first()
        .map(|u| crate::client::node_client(u, Duration::from_secs(5), 4))
        .transpose()?;
    for key in &keys {
        let key_s = String::from_utf8_lossy(key).into_owned();
        let left = reads_deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(30));
        let read = match &reader {
            Some(r) if !left.is_zero() => final_read(r, &rec, &node_urls, &key_s, left).await,
            _ => None,
        };
        match read {
            Some(v) => {
                finals.insert(key.clone(), v);
            }
            None => violations.push(Violation {
                check: "no-convergence",
                detail: format!(
                    "no node answered a read of {key_s} after healing (within {} s for all final reads)",
                    FINAL_READS_BUDGET.as_secs()
                ),
                key: Some(key.clone()),
                focus: Vec::new(),
            }),
        }
    }
    match check::replicas_converge(&probe, &urls, Duration::from_secs(60)).await {
        Ok(note) => notes.push(note),
        Err(v) => violations.push(v),
    }
    check_exits(&mut cluster, &mut violations);

    // Checks of the history.
    let history = rec.history();
    let lin_history = history.clone();
    match tokio::task::spawn_blocking(move || check::linearizable(&lin_history)).await {
        Ok(Some(v)) => violations.push(v),
        Ok(None) => notes.push("history linearizable".into()),
        Err(e) => violations.push(Violation {
            check: "undecided",
            detail: format!("the checker panicked: {e}"),
            key: None,
            focus: Vec::new(),
        }),
    }
    let lw_history = history.clone();
    match tokio::task::spawn_blocking(move || check::lost_writes(&lw_history, &finals)).await {
        Ok(found) => violations.extend(found),
        Err(e) => violations.push(Violation {
            check: "undecided",
            detail: format!("the lost-write check panicked: {e}"),
            key: None,
            focus: Vec::new(),
        }),
    }

    if cfg.clients.idempotency_window.is_some() {
        let repeats = rec.repeats();
        notes.push(format!(
            "writes sent again with their token: {} recognised, {} applied again past the window",
            repeats.get("recognised").copied().unwrap_or(0),
            repeats.get("applied again").copied().unwrap_or(0)
        ));
        for detail in rec.repeat_violations() {
            violations.push(Violation {
                check: "idempotency",
                detail,
                key: None,
                focus: Vec::new(),
            });
        }
    }

    // Stop the nodes before writing: their logs are complete then.
    let logs = cluster.logs();
    drop(cluster);
    // A panic is a bug even when the process survived it (or an older
    // binary without the abort hook ran).
    for (id, log) in logs {
        let text = crate::cluster::read_log(&log);
        let lines: Vec<&str> = text.lines().collect();
        if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
            violations.push(Violation {
                check: "node-panicked",
                detail: format!(
                    "node {id} panicked ({}):\n{}",
                    log.display(),
                    lines[at.saturating_sub(5)..(at + 15).min(lines.len())].join("\n")
                ),
                key: None,
                focus: Vec::new(),
            });
        }
    }
    let summary = summarize(
        cfg, started, &history, &events, &rec, violations, notes, dir,
    );
    write_outputs(&summary, &history, &events, cfg)?;
    Ok(summary)
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sleeps for `d` (not past `end`), checking every 200 ms for nodes that
/// exited on their own.
async fn sleep_watching(
    d: Duration,
    end: Instant,
    cluster: &mut Cluster,
    violations: &mut Vec<Violation>,
    check_exits: &mut impl FnMut(&mut Cluster, &mut Vec<Violation>),
) {
    let until = (Instant::now() + d).min(end);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200).min(until - Instant::now())).await;
        check_exits(cluster, violations);
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    cfg: &RunConfig,
    started: Instant,
    history: &History,
    events: &[FaultEvent],
    rec: &Recorder,
    violations: Vec<Violation>,
    notes: Vec<String>,
    dir: PathBuf,
) -> RunSummary {
    let mut ops = BTreeMap::new();
    for o in history.ops().iter().filter(|o| o.client != 0) {
        *ops.entry(outcome_name(&o.outcome).to_owned()).or_default() += 1;
    }
    let mut faults = BTreeMap::new();
    for e in events {
        *faults.entry(e.kind.clone()).or_default() += 1;
    }
    RunSummary {
        seed: cfg.seed,
        nodes: cfg.nodes,
        wall: started.elapsed(),
        ops,
        faults,
        unexpected: rec.unexpected_results(),
        violations,
        notes,
        dir,
    }
}

fn write_outputs(
    s: &RunSummary,
    history: &History,
    events: &[FaultEvent],
    cfg: &RunConfig,
) -> Result<(), ChaosError> {
    report::write_history(&s.dir.join("history.json"), history, events)?;
    let violations: Vec<serde_json::Value> = s
        .violations
        .iter()
        .map(|v| json!({ "check": v.check, "detail": v.detail, "focus": v.focus }))
        .collect();
    report::write_json(
        &s.dir.join("summary.json"),
        &json!({
            "seed": s.seed,
            "nodes": s.nodes,
            "duration_s": cfg.duration.as_secs_f64(),
            "wall_s": s.wall.as_secs_f64(),
            "ops": s.ops,
            "faults": s.faults,
            "unexpected_http": s.unexpected,
            "violations": violations,
            "notes": s.notes,
            "replay": replay_command(cfg),
        }),
    )?;
    for (i, v) in s.violations.iter().enumerate() {
        if v.key.is_some() || !v.focus.is_empty() {
            report::write_timeline(
                &s.dir.join(format!("timeline-{i}-{}.html", v.check)),
                history,
                events,
                v,
            )?;
        }
    }
    // Data directories, logs and the history are large and only useful to
    // debug a failure; `summary.json` stays.
    if s.passed() && !cfg.keep {
        let _ = std::fs::remove_file(s.dir.join("history.json"));
        remove_quietly(&s.dir.join("data"));
        remove_quietly(&s.dir.join("certs"));
        if let Ok(entries) = std::fs::read_dir(&s.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(())
}

fn remove_quietly(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

/// The members (voters and learners) of the configuration the leader
/// reports as committed, once a majority of the nodes follow that leader.
async fn committed_members(
    probe: &Probe,
    urls: &[(u64, String)],
    timeout: Duration,
) -> Option<BTreeSet<u64>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut statuses = Vec::new();
        for (_, url) in urls {
            statuses.extend(probe.status(url).await);
        }
        // The leader of the highest term, and only once most nodes follow
        // it: a leader that was just unpaused may not know it was deposed.
        let leader = statuses
            .iter()
            .filter(|s| s.role == "leader" && s.membership.committed == Some(true))
            .max_by_key(|s| s.term);
        if let Some(l) = leader {
            let following = statuses
                .iter()
                .filter(|s| s.leader == Some(l.id) && s.term == l.term)
                .count();
            if following * 2 > urls.len() {
                let m = &l.membership;
                return Some(
                    m.voters
                        .iter()
                        .chain(&m.learners)
                        .chain(&m.outgoing_voters)
                        .copied()
                        .collect(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Time for the final reads of every key after healing, all keys together.
const FINAL_READS_BUDGET: Duration = Duration::from_secs(60);

/// The command that replays `cfg`'s seed.
pub fn replay_command(cfg: &RunConfig) -> String {
    let faults = cfg
        .nemesis
        .kinds
        .as_ref()
        .map(|k| {
            format!(
                " --faults {}",
                k.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .unwrap_or_default();
    let window = cfg
        .clients
        .idempotency_window
        .map(|w| format!(" --idempotency-window {w}"))
        .unwrap_or_default();
    format!(
        "raft-chaos run --nodes {} --seed {} --seeds 1 --duration-s {} --workers {} --keys {} --read-consistency {} --replace-p {}{faults}{window} --out {} --raft-node {}",
        cfg.nodes,
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.clients.workers,
        cfg.clients.keys,
        cfg.clients.read_consistency,
        cfg.nemesis.replace_p,
        cfg.out.display(),
        cfg.raft_node.display()
    )
}
