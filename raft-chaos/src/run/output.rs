//! What a run leaves: its [`RunSummary`] (printed by the CLI and the
//! tests), `summary.json`, and for a failing run the history, the
//! timelines and the node logs, with the command that replays the seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raft_linearizability::{History, Outcome};
use serde_json::json;

use super::verdict::Findings;
use super::RunConfig;
use crate::check::Violation;
use crate::client::Recorder;
use crate::error::ChaosError;
use crate::nemesis::FaultEvent;
use crate::report;
use crate::watch::{log_json, WatchOutcome};

/// Lines of one violation's explanation printed in the summary (the whole
/// of it is in `summary.json`).
const SUMMARY_LINES_MAX: usize = 16;

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

/// The summary of a run that started at `started`.
pub(super) fn summarize(
    cfg: &RunConfig,
    started: Instant,
    history: &History,
    events: &[FaultEvent],
    rec: &Recorder,
    found: Findings,
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
        violations: found.violations,
        notes: found.notes,
        dir,
    }
}

/// Writes `summary.json`, `history.json` and a timeline per violation
/// that names a key or operations; of a passing run (unless `cfg.keep`)
/// only the summary stays.
pub(super) fn write_outputs(
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

/// Writes `watches.json`: what every watcher saw (deliveries, connections,
/// cancels) and the revision they had to get to.
pub(super) fn write_watches(dir: &Path, watched: &WatchOutcome) -> Result<(), ChaosError> {
    if watched.logs.is_empty() {
        return Ok(());
    }
    let logs: Vec<serde_json::Value> = watched.logs.iter().map(log_json).collect();
    report::write_json(
        &dir.join("watches.json"),
        &json!({ "target_revision": watched.target, "watchers": logs }),
    )
}

fn remove_quietly(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

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
    let resume = if cfg.watch.resume_past_last {
        " --watch-resume-past-last"
    } else {
        ""
    };
    format!(
        "raft-chaos run --nodes {} --seed {} --seeds 1 --duration-s {} --workers {} --keys {} --read-consistency {} --replace-p {}{faults}{window} --watchers {} --grpc-watchers {} --watch-idle-ms {} --watch-switch-s {}{resume} --lease-clients {} --lease-ttl-s {} --lease-bound-s {} --lease-believe-extra-s {} --out {} --raft-node {}",
        cfg.nodes,
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.clients.workers,
        cfg.clients.keys,
        cfg.clients.read_consistency,
        cfg.nemesis.replace_p,
        cfg.watch.watchers,
        cfg.watch.grpc_watchers,
        cfg.watch.idle_timeout.as_millis(),
        cfg.watch.switch_s_max,
        cfg.lease.clients,
        cfg.lease.ttl_s,
        cfg.lease.bound_s,
        cfg.lease.believe_extra_s,
        cfg.out.display(),
        cfg.raft_node.display()
    )
}
