//! Running many seeds: the per-cluster-size parameters, environment
//! overrides, worker threads, failure reports and the summary line.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::clients::ClientStats;
use super::stats::{ChangeStats, Faults, SnapshotStats};
use super::world::{Params, Report, World};

/// Reads a numeric environment variable.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

/// The size of a run for a cluster of `nodes` (`SIM_STEPS` overrides the
/// number of steps of the fault phase).
pub fn params_for(nodes: usize) -> Params {
    // Sized so the default suite takes about a minute in debug on 2 cores:
    // a 3-node run covers ~550 ticks (~50 election timeouts), a 5-node
    // run (more messages per tick) ~250.
    let (clean_steps, chaos_steps) = match nodes {
        1 => (300, 1500),
        2..=3 => (800, 4000),
        _ => (1000, 6000),
    };
    // `SIM_CHURN=0`: no spare nodes and no membership changes;
    // `SIM_SNAPSHOTS=0`: no snapshots (to tell which feature a failure needs).
    let churn = env_u64("SIM_CHURN") != Some(0);
    let snapshots = env_u64("SIM_SNAPSHOTS") != Some(0);
    Params {
        nodes,
        // `SIM_DRIFT_PERMILLE`: clock rates spread over this share of the
        // drift bound (1000: up to the bound; more is a negative control
        // that must fail); `SIM_STALL_REPLAY=0`: a node resuming from a
        // stall loses the ticks it missed (the bug the driver's tick replay
        // fixed; a negative control).
        drift_permille: env_u64("SIM_DRIFT_PERMILLE").unwrap_or(1000),
        replay_missed_ticks: env_u64("SIM_STALL_REPLAY") != Some(0),
        spares: (!churn).then_some(0),
        snapshot_policy: (!snapshots).then_some((0, 0)),
        churn,
        clean_steps,
        chaos_steps: env_u64("SIM_STEPS").unwrap_or(chaos_steps),
        converge_steps: 20_000,
    }
}

/// The command that replays one run, with its trace printed.
pub fn replay_command(seed: u64, nodes: usize) -> String {
    let steps: String = [
        "SIM_STEPS",
        "SIM_CHURN",
        "SIM_SNAPSHOTS",
        "SIM_DRIFT_PERMILLE",
        "SIM_STALL_REPLAY",
    ]
    .iter()
    .filter_map(|var| std::env::var(var).ok().map(|v| format!(" {var}={v}")))
    .collect();
    format!(
        "SIM_SEED={seed} SIM_NODES={nodes}{steps} cargo test -p raftkv-core --test simulation \
         replay -- --nocapture"
    )
}

/// Runs one seed. An engine panic is turned into an error with the seed.
pub fn run_one(seed: u64, nodes: usize, verbose: bool) -> Result<Report, String> {
    let params = params_for(nodes);
    match catch_unwind(AssertUnwindSafe(|| World::new(seed, params, verbose))) {
        Ok(world) => world.run(),
        Err(panic) => Err(format!(
            "simulation failed: seed {seed}, {nodes} nodes: panic while building the cluster: \
             {}\nreplay: {}",
            panic_message(&*panic),
            replay_command(seed, nodes)
        )),
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

/// Totals over many runs.
#[derive(Debug, Default)]
pub struct Summary {
    /// Runs completed.
    pub seeds: u64,
    /// Steps over all runs.
    pub steps: u64,
    /// Ticks over all runs.
    pub ticks: u64,
    /// Terms with a leader over all runs.
    pub elections: u64,
    /// Client counters over all runs.
    pub clients: ClientStats,
    /// Fault counters over all runs.
    pub faults: Faults,
    /// Snapshot counters over all runs.
    pub snapshots: SnapshotStats,
    /// Membership change counters over all runs.
    pub changes: ChangeStats,
    /// Runs whose linearizability check ran out of budget.
    pub lin_unknown: u64,
    /// The smallest number of writes acknowledged in a fault-free phase.
    pub min_clean_writes: u64,
    /// The sum of the final commit indexes.
    pub commits: u64,
}

impl Summary {
    fn add(&mut self, r: &Report) {
        if self.seeds == 0 || r.clean_writes_ok < self.min_clean_writes {
            self.min_clean_writes = r.clean_writes_ok;
        }
        self.seeds += 1;
        self.steps += r.steps;
        self.ticks += r.ticks;
        self.elections += r.elections;
        self.commits += r.commit;
        let c = &mut self.clients;
        c.invoked += r.clients.invoked;
        c.writes_ok += r.clients.writes_ok;
        c.reads_ok += r.clients.reads_ok;
        c.lease_reads += r.clients.lease_reads;
        c.failed += r.clients.failed;
        c.indeterminate += r.clients.indeterminate;
        self.faults.add(&r.faults);
        self.snapshots.add(&r.snapshots);
        self.changes.add(&r.changes);
        self.lin_unknown += u64::from(r.lin_unknown);
    }

    /// The one-line summary.
    pub fn line(&self, name: &str, nodes: usize, secs: f64) -> String {
        let f = &self.faults;
        let c = &self.clients;
        format!(
            "{name}: {} seeds x {nodes} nodes in {secs:.1}s: {} steps, {} ticks; ops: {} \
             invoked, {} writes + {} reads ({} by lease) acknowledged, {} failed, {} indeterminate \
             (min {} writes acked per fault-free phase); {} elections; {} entries committed; \
             faults injected: {} ({} crashes, {} failed flushes, {} failed restarts, {} \
             stalls, {} partitions, {} drops, {} duplicates, {} delays, {} transfers); \
             linearizability undecided: {}\n  {}\n  {}",
            self.seeds,
            self.steps,
            self.ticks,
            c.invoked,
            c.writes_ok,
            c.reads_ok,
            c.lease_reads,
            c.failed,
            c.indeterminate,
            self.min_clean_writes,
            self.elections,
            self.commits,
            f.total(),
            f.crashes,
            f.disk_failures,
            f.read_errors,
            f.stalls,
            f.partitions,
            f.dropped,
            f.duplicated,
            f.delayed,
            f.transfers,
            self.lin_unknown,
            self.snapshots.line(),
            self.changes.line()
        )
    }
}

/// Runs `default_count` seeds (or `SIM_SEEDS`, from `SIM_SEED_START`) of a
/// `nodes`-voter cluster on worker threads; panics with the report of the
/// lowest failing seed. Returns the totals.
pub fn run_seeds(name: &str, nodes: usize, default_count: u64) -> Summary {
    let start = env_u64("SIM_SEED_START").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(default_count);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    // Soak runs can keep going past failures to list every failing seed.
    let keep_going = env_u64("SIM_KEEP_GOING").is_some_and(|v| v != 0);
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let summary = Mutex::new(Summary::default());
    let began = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + count {
                    return;
                }
                match run_one(seed, nodes, false) {
                    Ok(report) => summary.lock().unwrap().add(&report),
                    Err(text) => {
                        stop.store(!keep_going, Ordering::Relaxed);
                        failures.lock().unwrap().push((seed, text));
                    }
                }
            });
        }
    });
    let summary = summary.into_inner().unwrap();
    let line = summary.line(name, nodes, began.elapsed().as_secs_f64());
    println!("{line}");
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(seed, _)| *seed);
    if keep_going {
        for (seed, text) in &failures {
            let what = text.lines().nth(1).unwrap_or_default();
            println!("{name}: seed {seed} failed: {what}");
        }
    }
    if let Some((_, text)) = failures.first() {
        let others: Vec<u64> = failures[1..].iter().map(|(s, _)| *s).collect();
        panic!("{text}\n(other failing seeds seen: {others:?})\n{line}");
    }
    // Progress: every run already required a write acknowledged in its
    // fault-free phase; across the runs there must be real traffic too.
    assert!(
        summary.clients.writes_ok >= 5 * summary.seeds && summary.elections >= summary.seeds,
        "too little progress across the runs: {line}"
    );
    // Coverage: enough runs must exercise snapshots and membership changes,
    // or a change to the simulation (or the engine) silently stopped doing so.
    if summary.seeds >= 100 {
        let params = params_for(nodes);
        let (s, c) = (&summary.snapshots, &summary.changes);
        let snapshots = params.snapshot_policy.is_none();
        // A lone voter without spares has nobody to send a snapshot to.
        let installs = snapshots && (nodes > 1 || params.churn);
        let missing: Vec<&str> = [
            (snapshots, s.built, "snapshots built"),
            (installs, s.installed, "snapshots installed"),
            (installs, s.interrupted, "installs interrupted by a crash"),
            (params.churn, c.started, "membership changes started"),
            (params.churn, c.committed, "configurations committed"),
            (params.churn, c.lagging, "promotions refused as lagging"),
            (
                params.churn,
                c.no_voters,
                "changes refused for leaving no voter",
            ),
            (
                params.churn,
                c.leaders_removed,
                "leaders that removed themselves",
            ),
        ]
        .into_iter()
        .filter(|(on, n, _)| *on && *n == 0)
        .map(|(_, _, what)| what)
        .collect();
        assert!(missing.is_empty(), "no {missing:?} across the runs: {line}");
    }
    summary
}
