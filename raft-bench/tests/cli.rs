//! The `raft-bench` command line as a user runs it: against a real
//! three-node raft-node cluster (the debug build), reading back the JSON
//! report and the files it writes. Short runs: these check that the
//! measurements happen and are reported, not how fast anything is.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The raft-node binary of this build (`target/<profile>/raft-node`), built
/// first when this test runs without it (`cargo test -p raftkv-bench`).
fn raft_node() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/cli-HASH → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join("raft-node");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "raftkv-node", "--bin", "raft-node"])
            .status()
            .expect("running cargo build -p raftkv-node");
        assert!(st.success(), "building raft-node failed");
    }
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// A `--base-port` whose ports (clients at `base..`, peers at
/// `base + 100..`, gRPC at `base + 400..`) are free now, from below the
/// kernel's ephemeral range (nothing takes those without asking for them),
/// and different in each test process, so two test runs at once do not
/// collide. `slot` (0 to 3) keeps this file's tests apart; four members
/// (three and a learner) fit.
fn base_port(slot: u16) -> u16 {
    let free = |base: u16| {
        (0..4).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", base + 100 + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + 400 + i)).is_ok()
        })
    };
    let start = u16::try_from(std::process::id() % 11).expect("below 11");
    (0..11u16)
        .map(|k| 10_000 + ((start + k) % 11) * 2000 + slot * 500)
        .find(|&b| free(b))
        .expect("a free range of ports below 32768")
}

fn run_json(args: &[&str], out: &Path, base_port: u16) -> Value {
    let bin = raft_node();
    let o = Command::new(env!("CARGO_BIN_EXE_raft-bench"))
        .args(args)
        .args(["--json", "--raft-node"])
        .arg(&bin)
        .arg("--out")
        .arg(out)
        .args(["--base-port", &base_port.to_string()])
        // Debug builds on a loaded 2-core machine, with both tests of this
        // file running at once: an election timeout a stall cannot reach
        // (raft-node's own default), so a healthy cluster keeps its leader.
        .args(["--heartbeat-ms", "100", "--election-ms", "1500"])
        .output()
        .expect("running raft-bench");
    assert!(
        o.status.success(),
        "raft-bench {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the JSON report ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

#[test]
fn throughput_reports_writes_latency_and_per_node_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = run_json(
        &[
            "throughput",
            "--clients",
            "1,8",
            "--warmup-s",
            "1",
            "--duration-s",
            "2",
            "--read-percent",
            "20",
        ],
        dir.path(),
        base_port(0),
    );
    let t = r["throughput"].as_array().expect("throughput array");
    assert_eq!(t.len(), 2, "one measurement per client count: {r:#}");
    for (m, clients) in t.iter().zip([1, 8]) {
        assert_eq!(m["system"], "raft");
        assert_eq!(m["protocol"], "http", "the default protocol: {m:#}");
        assert_eq!(m["clients"], clients);
        let ops = m["ops"].as_u64().expect("ops");
        assert!(ops > 0, "no successful operations: {m:#}");
        let rate = m["ops_per_s"].as_f64().expect("ops_per_s");
        assert!(
            (rate - ops as f64 / 2.0).abs() < 1e-6,
            "ops/s is ops over the 2 s window"
        );
        assert!(
            m["errors"].as_object().expect("errors").is_empty(),
            "a healthy cluster gave errors: {m:#}"
        );
        let lat = &m["latency_ms"];
        let (p50, p99, max) = (
            lat["p50"].as_f64().unwrap(),
            lat["p99"].as_f64().unwrap(),
            lat["max"].as_f64().unwrap(),
        );
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= max,
            "percentiles out of order: {lat}"
        );
        let nodes = m["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3, "usage of every member: {m:#}");
        assert_eq!(
            nodes.iter().filter(|n| n["leader"] == true).count(),
            1,
            "exactly one leader: {m:#}"
        );
        for n in nodes {
            assert!(
                n["cpu_s"].as_f64().unwrap() > 0.0,
                "a member used no CPU: {n}"
            );
            assert!(
                n["peak_rss_mib"].as_f64().unwrap() > 1.0,
                "no RSS read: {n}"
            );
        }
    }
    assert_eq!(r["settings"]["nodes"], 3);
    assert!(r["settings"]["versions"]["raft"]
        .as_str()
        .unwrap()
        .starts_with("raft-node"));
    for f in ["report.json", "throughput.svg", "latency-cdf.svg"] {
        let body = std::fs::read_to_string(dir.path().join(f))
            .unwrap_or_else(|e| panic!("{f} not written: {e}"));
        if f.ends_with(".svg") {
            assert!(body.contains("<svg"), "{f} is not an SVG");
            assert!(body.contains("raft"), "{f} has no raft series");
        }
    }
}

/// `--protocol grpc` drives raft-node through etcd's v3 gRPC API (the
/// members get `--grpc-listen`): writes and linearizable reads succeed,
/// none fails, and the report says which protocol was used. (etcd is not
/// installed for the tests; the same client code drives it.)
#[test]
fn grpc_throughput_drives_raft_node_through_the_etcd_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = run_json(
        &[
            "throughput",
            "--protocol",
            "grpc",
            "--nodes",
            "1",
            "--clients",
            "1,4",
            "--warmup-s",
            "1",
            "--duration-s",
            "2",
            "--read-percent",
            "50",
        ],
        dir.path(),
        base_port(2),
    );
    let t = r["throughput"].as_array().expect("throughput array");
    assert_eq!(t.len(), 2, "one measurement per client count: {r:#}");
    for (m, clients) in t.iter().zip([1, 4]) {
        assert_eq!(m["system"], "raft");
        assert_eq!(m["protocol"], "grpc");
        assert_eq!(m["clients"], clients);
        assert!(
            m["ops"].as_u64().expect("ops") > 0,
            "no successful calls: {m:#}"
        );
        assert!(
            m["errors"].as_object().expect("errors").is_empty(),
            "a healthy member gave errors: {m:#}"
        );
        assert_eq!(m["nodes"].as_array().expect("nodes").len(), 1);
    }
}

#[test]
fn election_trials_measure_a_new_leader_after_each_fault() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = run_json(
        &[
            "election",
            "--faults",
            "transfer,kill,pause",
            "--trials",
            "2",
        ],
        dir.path(),
        base_port(1),
    );
    let e = r["elections"].as_array().expect("elections array");
    assert_eq!(e.len(), 3, "one result per fault: {r:#}");
    for (res, fault) in e.iter().zip(["transfer", "kill", "pause"]) {
        assert_eq!(res["fault"], fault);
        assert!(
            res["failures"].as_array().unwrap().is_empty(),
            "failed trials: {res:#}"
        );
        let trials = res["trials"].as_array().unwrap();
        assert_eq!(trials.len(), 2, "{res:#}");
        for t in trials {
            assert_ne!(t["old_leader"], t["new_leader"], "leadership moved: {t}");
            assert!(t["elected_ms"].as_f64().unwrap() > 0.0);
            assert!(t["write_ms"].as_f64().unwrap() > 0.0);
        }
    }
    assert!(dir.path().join("election-cdf.svg").exists());
}

#[test]
fn impossible_settings_are_refused_before_anything_starts() {
    for (args, msg) in [
        (
            &["throughput", "--clients", "0"][..],
            "--clients values must be between 1",
        ),
        (
            &["throughput", "--keys", "0"][..],
            "--keys must be positive",
        ),
        (&["election", "--trials", "0"][..], "--trials"),
        (
            &["throughput", "--grpc-connections", "2"][..],
            "--grpc-connections needs --protocol grpc",
        ),
        (
            &["scaling", "--value-sizes", "128,0"][..],
            "--value-sizes values must be between 1 and 1048576, got 0",
        ),
        (
            &["scaling", "--value-sizes", "2000000"][..],
            "raft-node takes values up to --max-value-bytes=1048576",
        ),
        (
            &[
                "scaling",
                "--sweep",
                "value-size",
                "--value-sizes",
                "4096",
                "--raft-arg=--max-value-bytes=1024",
            ][..],
            "--value-sizes values must be between 1 and 1024, got 4096",
        ),
        (
            &["scaling", "--member-counts", "3,10"][..],
            "--member-counts values must be between 1 and 9, got 10",
        ),
        (
            &["scaling", "--key-counts", "1000,1000"][..],
            "--key-counts lists a value twice",
        ),
        (
            &["scaling", "--key-counts", "x"][..],
            "invalid value 'x' for '--key-counts",
        ),
        (
            &["scaling", "--sweep", "keys", "--value-bytes", "1000000"][..],
            "too large to fill the store with",
        ),
        (
            &["scaling", "--sweep", "disk"][..],
            "invalid value 'disk' for '--sweep",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_raft-bench"))
            .args(args)
            .output()
            .expect("running raft-bench");
        assert!(!o.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{args:?}: unclear error: {err}");
    }
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = Command::new(env!("CARGO_BIN_EXE_raft-bench"))
        .args([
            "throughput",
            "--raft-node",
            "/nonexistent/raft-node",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("running raft-bench");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/raft-node does not exist"),
        "unclear error: {err}"
    );
}

/// `scaling` with tiny settings: every point of the three sweeps is in the
/// report, with sane numbers, and the plots are written.
#[test]
fn scaling_reports_every_point_of_the_three_sweeps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = run_json(
        &[
            "scaling",
            "--value-sizes",
            "128,4096",
            "--member-counts",
            "3",
            "--key-counts",
            "1000,3000",
            "--clients",
            "4",
            "--warmup-s",
            "1",
            "--duration-s",
            "1",
        ],
        dir.path(),
        base_port(3),
    );
    let bw = r["disk"]["mb_per_s"].as_f64().expect("the fsync bandwidth");
    assert!(bw > 0.0, "{r:#}");
    let v = r["value_size"].as_array().expect("value_size");
    let sizes: Vec<u64> = v
        .iter()
        .map(|p| p["value_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [128, 4096], "{r:#}");
    for p in v {
        let ops = p["ops"].as_u64().expect("ops");
        assert!(ops > 0, "no writes: {p:#}");
        let mb = p["mb_per_s"].as_f64().unwrap();
        let want = p["ops_per_s"].as_f64().unwrap() * p["value_bytes"].as_f64().unwrap() / 1e6;
        assert!(
            (mb - want).abs() < 1e-9,
            "MB/s is ops/s times the value size: {p:#}"
        );
        let frac = p["fsync_bandwidth_fraction"].as_f64().unwrap();
        assert!((frac - mb / bw).abs() < 1e-9, "{p:#}");
        let lat = &p["latency_ms"];
        assert!(0.0 < lat["p50"].as_f64().unwrap());
        assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
        assert_eq!(p["nodes"].as_array().unwrap().len(), 3);
    }
    let m = r["members"].as_array().expect("members");
    assert_eq!(m.len(), 1, "{r:#}");
    assert_eq!(m[0]["members"], 3);
    assert!(m[0]["ops"].as_u64().unwrap() > 0, "{:#}", m[0]);
    let cpu = m[0]["nodes"].as_array().unwrap();
    assert_eq!(cpu.len(), 3);
    assert!(
        cpu.iter()
            .all(|n| n["cpu_us_per_write"].as_f64().unwrap() > 0.0),
        "{cpu:?}"
    );
    let k = r["keys"].as_array().expect("keys");
    let counts: Vec<u64> = k.iter().map(|p| p["keys"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1000, 3000], "{r:#}");
    for p in k {
        assert!(p["write"]["ops"].as_u64().unwrap() > 0, "no writes: {p:#}");
        assert!(p["read"]["ops"].as_u64().unwrap() > 0, "no reads: {p:#}");
        assert!(p["read"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
        assert!(p["disk_bytes_per_key"].as_f64().unwrap() > 0.0, "{p:#}");
        let nodes = p["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        for n in nodes {
            assert!(n["peak_rss_mib"].as_f64().unwrap() > 1.0, "{n}");
            assert!(n["disk_bytes"].as_u64().unwrap() > 0, "{n}");
        }
        assert!(p["snapshot"]["build_s"].as_f64().unwrap() > 0.0, "{p:#}");
        let snap = p["snapshot"]["index"].as_u64().unwrap();
        let l = &p["learner"];
        assert_eq!(l["id"], 4, "the learner is the fourth node: {l}");
        assert!(
            l["applied_index"].as_u64().unwrap() >= l["target_index"].as_u64().unwrap(),
            "the learner caught up: {l}"
        );
        assert!(l["target_index"].as_u64().unwrap() >= snap, "{p:#}");
        assert!(
            l["snapshot_index"].as_u64().is_some(),
            "the learner installed a snapshot: {l}"
        );
        assert!(l["catch_up_s"].as_f64().unwrap() > 0.0, "{l}");
    }
    for f in [
        "scaling.json",
        "scaling-value-size.svg",
        "scaling-members.svg",
        "scaling-keys.svg",
    ] {
        let body = std::fs::read_to_string(dir.path().join(f))
            .unwrap_or_else(|e| panic!("{f} not written: {e}"));
        if f.ends_with(".svg") {
            assert!(body.contains("<svg"), "{f} is not an SVG");
        }
    }
}
