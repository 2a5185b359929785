//! What a run found ([`Findings`]), and the checks after convergence: the
//! history (linearizable, no acknowledged write lost, repeated writes
//! recognised inside the idempotency window) and the node logs (no panic).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use raft_linearizability::History;

use super::RunConfig;
use crate::check::{self, Violation};
use crate::client::Recorder;
use crate::cluster::Cluster;

/// Violations and notes so far.
#[derive(Debug, Default)]
pub(super) struct Findings {
    /// What the checks found wrong.
    pub(super) violations: Vec<Violation>,
    /// Notes on what passed or was left out.
    pub(super) notes: Vec<String>,
    /// Nodes already reported as crashed.
    crashed: BTreeSet<u64>,
}

impl Findings {
    /// Records a violation of the run as a whole (no key, no operations).
    pub(super) fn violation(&mut self, check: &'static str, detail: String) {
        self.violations.push(Violation {
            check,
            detail,
            key: None,
            focus: Vec::new(),
        });
    }

    /// Records a `node-crashed` violation for each node that exited without
    /// the harness killing it, once per node.
    pub(super) fn check_exits(&mut self, cluster: &mut Cluster) {
        for (id, status) in cluster.unexpected_exits() {
            if !self.crashed.insert(id) {
                continue;
            }
            let detail = match cluster.nodes.get(&id) {
                Some(n) => format!(
                    "node {id} exited on its own ({status}); last log lines:\n{}",
                    n.log_tail(30)
                ),
                // A removed node: the status carries its log tail.
                None => format!("node {id} exited on its own ({status})"),
            };
            self.violation("node-crashed", detail);
        }
    }
}

/// Checks the whole history: linearizable per key, no acknowledged write
/// lost given the `finals` read after healing, and (with an idempotency
/// window) the repeated writes. Returns the history.
pub(super) async fn check_history(
    cfg: &RunConfig,
    rec: &Recorder,
    finals: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    found: &mut Findings,
) -> History {
    let history = rec.history();
    let lin_history = history.clone();
    match tokio::task::spawn_blocking(move || check::linearizable(&lin_history)).await {
        Ok(Some(v)) => found.violations.push(v),
        Ok(None) => found.notes.push("history linearizable".into()),
        Err(e) => found.violation("undecided", format!("the checker panicked: {e}")),
    }
    let lw_history = history.clone();
    match tokio::task::spawn_blocking(move || check::lost_writes(&lw_history, &finals)).await {
        Ok(lost) => found.violations.extend(lost),
        Err(e) => found.violation("undecided", format!("the lost-write check panicked: {e}")),
    }
    if cfg.clients.idempotency_window.is_some() {
        let repeats = rec.repeats();
        found.notes.push(format!(
            "writes sent again with their token: {} recognised, {} applied again past the window",
            repeats.get("recognised").copied().unwrap_or(0),
            repeats.get("applied again").copied().unwrap_or(0)
        ));
        for detail in rec.repeat_violations() {
            found.violation("idempotency", detail);
        }
    }
    history
}

/// A `node-panicked` violation for each log (by node id) that shows a
/// panic: a bug even when the process survived it (or an older binary
/// without the abort hook ran).
pub(super) fn check_logs(logs: &[(u64, PathBuf)], found: &mut Findings) {
    for (id, log) in logs {
        let text = crate::cluster::read_log(log);
        let lines: Vec<&str> = text.lines().collect();
        if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
            found.violation(
                "node-panicked",
                format!(
                    "node {id} panicked ({}):\n{}",
                    log.display(),
                    lines[at.saturating_sub(5)..(at + 15).min(lines.len())].join("\n")
                ),
            );
        }
    }
}
