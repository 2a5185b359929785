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
use crate::lease::check::{self as lease, LeaseRecord, Leftover, Plan};
use crate::watch::check::{
    check_watch, KeyRange, WatchFinding, WatchLog, WriteIndex, WriteOutcome,
};
use crate::watch::WatchOutcome;

/// Findings of the watch checker shown per watcher; the rest are counted.
const WATCH_FINDINGS_MAX: usize = 20;

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

/// The watch checker (see [`crate::watch`]): every watcher's deliveries
/// against the clients' writes, as `watch` violations, or a note of what
/// the watchers saw.
pub(super) fn check_watches(
    cfg: &RunConfig,
    rec: &Recorder,
    watched: &WatchOutcome,
    found: &mut Findings,
) {
    if watched.logs.is_empty() {
        return;
    }
    let writes = rec.writes();
    let ix = WriteIndex::new(&writes);
    let acked = writes
        .iter()
        .filter(|w| matches!(w.outcome, WriteOutcome::Acked(_)));
    let max_acked = acked.filter_map(|w| match w.outcome {
        WriteOutcome::Acked(r) => Some(r),
        _ => None,
    });
    let target = watched
        .target
        .unwrap_or_else(|| max_acked.max().unwrap_or(0));
    let mut findings: Vec<WatchFinding> = ix.conflicts().to_vec();
    for log in &watched.logs {
        let log = without_lease_keys(log);
        let mut f = check_watch(&ix, &log, target, false);
        if f.len() > WATCH_FINDINGS_MAX {
            let more = f.len() - WATCH_FINDINGS_MAX;
            f.truncate(WATCH_FINDINGS_MAX);
            f.push(WatchFinding {
                watcher: log.watcher,
                key: None,
                revision: None,
                detail: format!("watcher {}: {more} more findings", log.watcher),
            });
        }
        findings.extend(f);
    }
    for f in findings {
        // The detail names the watcher and the revision.
        found.violations.push(Violation {
            check: "watch",
            detail: format!("{}; watches.json has every watcher's deliveries", f.detail),
            key: f.key,
            focus: Vec::new(),
        });
    }
    let events: usize = watched
        .logs
        .iter()
        .map(|l| l.deliveries.iter().map(|d| d.events.len()).sum::<usize>())
        .sum();
    let connections: usize = watched.logs.iter().map(|l| l.connections.len()).sum();
    let ranges: Vec<String> = watched
        .logs
        .iter()
        .map(|l| {
            let range = l.range.as_ref().map(KeyRange::describe).unwrap_or_default();
            format!("{range} via {}", l.front.name())
        })
        .collect();
    found.notes.push(format!(
        "watches: {} watchers ({}) got {events} changes over {connections} connections, up to revision {target}{}",
        cfg.watch.watchers,
        ranges.join("; "),
        match watched.target {
            Some(_) => "",
            None => " (the highest acknowledged: no node told the store's)",
        }
    ));
}

/// `log` without the lease clients' keys (expiry deletes them, which no
/// client's write explains).
fn without_lease_keys(log: &WatchLog) -> WatchLog {
    let mut log = log.clone();
    for d in &mut log.deliveries {
        d.events
            .retain(|e| !e.key.starts_with(crate::lease::KEY_PREFIX.as_bytes()));
    }
    log.deliveries.retain(|d| !d.events.is_empty());
    log
}

/// The lease checker (see [`crate::lease`]): safety and revokes per
/// lease, liveness from what was left after convergence, as `lease`
/// violations, or a note of what the lease clients did.
pub(super) fn check_leases(
    cfg: &RunConfig,
    leases: &[LeaseRecord],
    leftovers: &[Leftover],
    watched: &WatchOutcome,
    found: &mut Findings,
) {
    if cfg.lease.clients == 0 {
        return;
    }
    let all = watched
        .logs
        .iter()
        .find(|l| l.range.as_ref().is_some_and(|r| *r == KeyRange::all()));
    let mut details = Vec::new();
    for l in leases {
        details.extend(lease::check_safety(l));
        if let Some(log) = all {
            details.extend(lease::check_revoke(l, log));
        }
    }
    details.extend(lease::check_liveness(leftovers, cfg.lease.bound_s));
    let count = |p: Plan| leases.iter().filter(|l| l.plan == p).count();
    let keepalives: usize = leases.iter().map(|l| l.promises.len() - 1).sum();
    let reads: usize = leases.iter().map(|l| l.reads.len()).sum();
    found.notes.push(format!(
        "leases: {} granted ({} kept alive, {} never, {} revoked, {} revokes acknowledged), {keepalives} keep-alives acknowledged, {reads} key reads",
        leases.len(),
        count(Plan::KeepAlive),
        count(Plan::Never),
        count(Plan::Revoke),
        leases.iter().filter(|l| l.revoked.is_some()).count(),
    ));
    let more = details.len().saturating_sub(WATCH_FINDINGS_MAX);
    details.truncate(WATCH_FINDINGS_MAX);
    if more > 0 {
        details.push(format!("{more} more lease findings"));
    }
    for d in details {
        found.violation("lease", d);
    }
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
