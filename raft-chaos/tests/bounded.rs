//! The bounded chaos configuration CI runs: 3 seeds of 30 s each on a
//! 3-node cluster of real `raft-node` processes in network namespaces, with
//! every fault the nemesis has and 3 watchers following `GET /v1/watch`
//! or, one of them (which rotates with the seed), etcd's gRPC `Watch.Watch`
//! (the watch check) and 2 lease clients (the lease check, each seed must
//! get some lease granted); it passes only when no run finds a violation. A shorter run with only delay faults shows the delay relay
//! carries the nodes' traffic, and a run with an idempotency window of 50
//! entries shows repeated writes recognised inside it and applied again
//! past it, with equal replicas.
//!
//! It needs root and network namespaces. Without them it prints why and
//! passes, unless `CI_REQUIRE_NETNS=1` (set by `scripts/test`), where it
//! fails instead. `RAFT_CHAOS_SEEDS` / `RAFT_CHAOS_DURATION_S` /
//! `RAFT_CHAOS_FIRST_SEED` override the configuration for local runs.
//!
//! The `raft-node` binary: cargo builds only the binaries of the package
//! under test for its integration tests, so this test uses the binary beside
//! the test executable's `deps` directory (`target/<profile>/raft-node`).
//! `cargo test --workspace` has just built it for raft-node's own tests;
//! when it is missing or older than the sources of raft-node and the crates
//! it links (as after `cargo test -p raftkv-chaos` following an edit), the
//! test runs `$CARGO build -p raftkv-node --bin raft-node` in the same profile
//! first, so it never tests a stale binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use raft_chaos::client::ClientConfig;
use raft_chaos::cluster::NodeSettings;
use raft_chaos::lease::LeaseConfig;
use raft_chaos::nemesis::NemesisConfig;
use raft_chaos::netns;
use raft_chaos::run::{replay_command, run_seed, RunConfig, RunSummary};
use raft_chaos::watch::WatchConfig;

/// The variable `name` as a number, or `default` when it is not set; a
/// value that does not parse is a mistake in the command, not a default.
fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            self::newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Returns the `raft-node` binary of this profile, building it first when
/// it is missing or older than the sources it is built from.
fn raft_node() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/bounded-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join("raft-node");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = ["raft-core", "raft-log", "raft-net-quic", "raft-node"]
        .iter()
        .filter_map(|c| newest(&workspace.join(c)))
        .chain(newest_file(&workspace.join("Cargo.lock")))
        .max();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_none() || built < sources {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "raftkv-node", "--bin", "raft-node"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        eprintln!("building raft-node: {build:?}");
        let status = build.status().expect("running cargo build for raft-node");
        assert!(
            status.success(),
            "cargo build -p raftkv-node failed: {status}"
        );
    }
    assert!(
        bin.exists(),
        "raft-node not found at {} after building it",
        bin.display()
    );
    bin
}

fn newest_file(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The two tests of this file run one after the other: six debug nodes,
/// their clients and a relay at once on two cores would stall nodes past
/// their election timeouts and test the machine instead of the cluster.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one seed; panics with its replay command unless it passes.
fn run_passing(cfg: &RunConfig) -> RunSummary {
    let seed = cfg.seed;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let s = runtime.block_on(run_seed(cfg)).unwrap_or_else(|e| {
        panic!(
            "seed {seed}: harness error: {e}\n  replay: {}",
            replay_command(cfg)
        )
    });
    eprintln!("{}", s.render());
    assert!(
        s.passed(),
        "seed {seed}: {}\n  replay: {}",
        s.render(),
        replay_command(cfg)
    );
    s
}

/// The leases the lease clients were granted, from the run's `leases:`
/// note.
fn leases_granted(s: &RunSummary) -> u64 {
    s.notes
        .iter()
        .find_map(|n| n.strip_prefix("leases: "))
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The key changes the watchers got, from the run's `watches:` note.
fn watched_changes(s: &RunSummary) -> u64 {
    s.notes
        .iter()
        .find_map(|n| n.strip_prefix("watches: "))
        .and_then(|n| n.rsplit(" got ").next())
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bounded_chaos_runs_find_no_violation() {
    if !netns::available_for_tests("bounded_chaos_runs_find_no_violation") {
        return;
    }
    let _serial = one_at_a_time();
    for r in netns::cleanup_stale() {
        eprintln!("removed stale {r}");
    }
    let raft_node = raft_node();
    let seeds = env_u64("RAFT_CHAOS_SEEDS", 3);
    let first = env_u64("RAFT_CHAOS_FIRST_SEED", 1);
    let duration = Duration::from_secs(env_u64("RAFT_CHAOS_DURATION_S", 30));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("raft-chaos-bounded");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in first..first + seeds {
        let cfg = RunConfig {
            nodes: 3,
            seed,
            duration,
            out: out.clone(),
            raft_node: raft_node.clone(),
            clients: ClientConfig::default(),
            nemesis: NemesisConfig::default(),
            node: NodeSettings::default(),
            watch: WatchConfig::default(),
            lease: LeaseConfig::default(),
            keep: false,
        };
        match runtime.block_on(run_seed(&cfg)) {
            Ok(s) => {
                eprintln!("{}", s.render());
                let total: u64 = s.ops.values().sum();
                let acked = s.ops.get("write-ok").copied().unwrap_or(0);
                assert!(
                    total > 0 && acked > 0,
                    "seed {seed}: no operation succeeded: {}",
                    s.render()
                );
                assert!(
                    watched_changes(&s) > 0,
                    "seed {seed}: the watchers got no change: {}",
                    s.render()
                );
                assert!(
                    leases_granted(&s) > 0,
                    "seed {seed}: no lease was granted: {}",
                    s.render()
                );
                if !s.passed() {
                    failures.push(format!(
                        "seed {seed}: {}\n  replay: {}\n  or: RAFT_CHAOS_FIRST_SEED={seed} RAFT_CHAOS_SEEDS=1 \
                         RAFT_CHAOS_DURATION_S={} cargo test -p raftkv-chaos --test bounded -- --nocapture",
                        s.render(),
                        replay_command(&cfg),
                        duration.as_secs()
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "seed {seed}: harness error: {e}\n  replay: {}",
                replay_command(&cfg)
            )),
        }
    }
    eprintln!(
        "bounded chaos: {seeds} seeds in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_run_with_only_delay_faults_relays_node_traffic_and_finds_no_violation() {
    if !netns::available_for_tests(
        "a_run_with_only_delay_faults_relays_node_traffic_and_finds_no_violation",
    ) {
        return;
    }
    let _serial = one_at_a_time();
    let raft_node = raft_node();
    let seed = env_u64("RAFT_CHAOS_DELAY_SEED", 11);
    let cfg = RunConfig {
        nodes: 3,
        seed,
        duration: Duration::from_secs(15),
        out: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("raft-chaos-delay"),
        raft_node,
        clients: ClientConfig::default(),
        nemesis: NemesisConfig {
            kinds: Some(["delay".to_string()].into()),
            ..NemesisConfig::default()
        },
        node: NodeSettings::default(),
        watch: WatchConfig::default(),
        lease: LeaseConfig::default(),
        keep: false,
    };
    let s = run_passing(&cfg);
    assert!(
        s.faults.get("delay").copied().unwrap_or(0) > 0,
        "{}",
        s.render()
    );
    // The nodes' traffic really went through the relay.
    let relayed: u64 = s
        .notes
        .iter()
        .find_map(|n| n.strip_prefix("delay relay: "))
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        relayed > 100,
        "seed {seed}: relayed {relayed}: {}",
        s.render()
    );
    assert!(
        s.ops.get("write-ok").copied().unwrap_or(0) > 0,
        "{}",
        s.render()
    );
}

#[test]
fn a_run_whose_writes_outlive_a_small_idempotency_window_keeps_replicas_equal() {
    if !netns::available_for_tests(
        "a_run_whose_writes_outlive_a_small_idempotency_window_keeps_replicas_equal",
    ) {
        return;
    }
    let _serial = one_at_a_time();
    let raft_node = raft_node();
    let seed = env_u64("RAFT_CHAOS_IDEMPOTENCY_SEED", 21);
    let window = 50;
    let cfg = RunConfig {
        nodes: 3,
        seed,
        // Writes are sent again two key epochs (10 s each) after theirs:
        // from 30 s on, the fourth epoch repeats the first's.
        duration: Duration::from_secs(40),
        out: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("raft-chaos-idempotency"),
        raft_node,
        clients: ClientConfig {
            idempotency_window: Some(window),
            ..ClientConfig::default()
        },
        nemesis: NemesisConfig::default(),
        node: NodeSettings {
            idempotency_window: Some(window),
            ..NodeSettings::default()
        },
        watch: WatchConfig::default(),
        lease: LeaseConfig::default(),
        keep: false,
    };
    let s = run_passing(&cfg);
    // Both ways were taken: repeats recognised inside the window, and
    // repeats applied again past it (the digests, which cover the
    // idempotency records, agreed all the same).
    let counts: Vec<u64> = s
        .notes
        .iter()
        .find_map(|n| n.strip_prefix("writes sent again with their token: "))
        .map(|n| n.split(' ').filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        counts.len() == 2 && counts[0] > 0 && counts[1] > 0,
        "seed {seed}: repeats {counts:?}: {}",
        s.render()
    );
}
