//! The totals over many seeds of a soak: what `raft-chaos summarize DIR`
//! prints from the `seed-N/summary.json` files that runs wrote into `DIR`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::ChaosError;

/// Totals over the seeds found in one output directory.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Totals {
    /// Seeds found, in order.
    pub seeds: Vec<u64>,
    /// Seeds with at least one violation, and the checks that failed
    /// (`no-summary` for a seed directory without its summary: still
    /// running, or the harness failed before any check).
    pub failed: BTreeMap<u64, Vec<String>>,
    /// Node counts seen (seeds per count).
    pub nodes: BTreeMap<u64, u64>,
    /// Seconds of clients and faults, summed.
    pub fault_s: f64,
    /// Wall seconds of the runs (setup to checks), summed.
    pub wall_s: f64,
    /// Operations by outcome.
    pub ops: BTreeMap<String, u64>,
    /// Faults by kind.
    pub faults: BTreeMap<String, u64>,
    /// Membership replacements that ended with the new node a voter.
    pub replacements_completed: u64,
    /// Datagrams the delay relay carried.
    pub relayed_datagrams: u64,
    /// HTTP results outside the contract, by description.
    pub unexpected_http: BTreeMap<String, u64>,
    /// Key changes the watchers received, all watchers together.
    pub watch_changes: u64,
    /// Watch connections the watchers made (each resume is one more).
    pub watch_connections: u64,
}

impl Totals {
    /// All operations.
    pub fn ops_total(&self) -> u64 {
        self.ops.values().sum()
    }

    /// All faults.
    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }

    /// A readable report.
    pub fn render(&self) -> String {
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let nodes = if self.nodes.len() == 1 {
            self.nodes
                .keys()
                .map(|n| format!("{n} nodes"))
                .collect::<String>()
        } else {
            self.nodes
                .iter()
                .map(|(n, c)| format!("{n} nodes ({c} seeds)"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "{} seeds ({}) on {nodes}: {:.1} min of faults, {:.1} min wall\n",
            self.seeds.len(),
            seed_ranges(&self.seeds),
            self.fault_s / 60.0,
            self.wall_s / 60.0,
        );
        s += &format!("operations: {} ({})\n", self.ops_total(), list(&self.ops));
        s += &format!(
            "faults: {} ({}); membership replacements completed: {} of {}; datagrams through the delay relay: {}\n",
            self.faults_total(),
            list(&self.faults),
            self.replacements_completed,
            self.faults.get("replace").copied().unwrap_or(0),
            self.relayed_datagrams,
        );
        s += &format!(
            "watches: {} changes received over {} connections\n",
            self.watch_changes, self.watch_connections
        );
        if !self.unexpected_http.is_empty() {
            s += &format!(
                "HTTP results outside the contract: {}\n",
                list(&self.unexpected_http)
            );
        }
        if self.failed.is_empty() {
            s += "violations: 0";
        } else {
            s += &format!("FAILED seeds: {}", self.failed.len());
            for (seed, checks) in &self.failed {
                s += &format!("\n  seed {seed}: {}", checks.join(", "));
            }
        }
        s
    }
}

/// `1000-1011, 2000` for a sorted list of seeds.
fn seed_ranges(seeds: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seeds.len() {
        let mut j = i;
        while j + 1 < seeds.len() && seeds[j + 1] == seeds[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seeds[i].to_string()
        } else {
            format!("{}-{}", seeds[i], seeds[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// The changes and connections of a run's `watches: …` note.
fn watch_counts(note: &str) -> Option<(u64, u64)> {
    let rest = note.strip_prefix("watches: ")?;
    let number_after = |word: &str| {
        let at = rest.rfind(word)? + word.len();
        rest[at..].split(' ').next()?.parse::<u64>().ok()
    };
    Some((number_after(" got ")?, number_after(" over ")?))
}

fn add_counts(into: &mut BTreeMap<String, u64>, v: &Value) {
    if let Some(m) = v.as_object() {
        for (k, n) in m {
            *into.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
}

/// Adds up every `seed-*/summary.json` under `dir`.
///
/// # Errors
///
/// When `dir` cannot be read, or a summary is not the JSON a run writes.
pub fn summarize(dir: &Path) -> Result<Totals, ChaosError> {
    summarize_seeds(dir, |_| true)
}

/// Like [`summarize`], for the seeds `keep` accepts only (one run's seeds
/// in a directory that holds earlier ones too).
///
/// # Errors
///
/// As [`summarize`].
pub fn summarize_seeds(dir: &Path, keep: impl Fn(u64) -> bool) -> Result<Totals, ChaosError> {
    let mut files: Vec<(u64, std::path::PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ChaosError::io(dir))? {
        let entry = entry.map_err(ChaosError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(seed) = name
            .strip_prefix("seed-")
            .and_then(|n| n.parse().ok())
            .filter(|s| keep(*s))
        else {
            continue;
        };
        files.push((seed, entry.path().join("summary.json")));
    }
    files.sort();
    let mut t = Totals::default();
    for (seed, file) in files {
        if !file.exists() {
            // Still running, or the harness failed before any check (no
            // cluster, no first leader): not a pass either way.
            t.seeds.push(seed);
            t.failed.insert(seed, vec!["no-summary".to_owned()]);
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(ChaosError::io(&file))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            ChaosError::Cluster(format!("{} is not a run summary: {e}", file.display()))
        })?;
        t.seeds.push(seed);
        *t.nodes.entry(v["nodes"].as_u64().unwrap_or(0)).or_default() += 1;
        t.fault_s += v["duration_s"].as_f64().unwrap_or(0.0);
        t.wall_s += v["wall_s"].as_f64().unwrap_or(0.0);
        add_counts(&mut t.ops, &v["ops"]);
        add_counts(&mut t.faults, &v["faults"]);
        add_counts(&mut t.unexpected_http, &v["unexpected_http"]);
        for note in v["notes"].as_array().into_iter().flatten() {
            let note = note.as_str().unwrap_or_default();
            if note.starts_with("membership: replaced node") {
                t.replacements_completed += 1;
            }
            if let Some(n) = note
                .strip_prefix("delay relay: ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
            {
                t.relayed_datagrams += n;
            }
            if let Some((changes, connections)) = watch_counts(note) {
                t.watch_changes += changes;
                t.watch_connections += connections;
            }
        }
        let checks: Vec<String> = v["violations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x["check"].as_str().unwrap_or("?").to_owned())
            .collect();
        if !checks.is_empty() {
            t.failed.insert(seed, checks);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, seed: u64, v: &Value) {
        let d = dir.join(format!("seed-{seed}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("summary.json"), v.to_string()).unwrap();
    }

    #[test]
    fn totals_add_up_the_seeds_and_name_the_failed_ones() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            7,
            &serde_json::json!({
                "seed": 7, "nodes": 5, "duration_s": 60.0, "wall_s": 62.5,
                "ops": {"read-ok": 10, "write-ok": 5},
                "faults": {"kill": 2, "replace": 2, "delay": 1},
                "notes": ["membership: replaced node 1 by node 6",
                          "membership: node 2 could not be removed in 40s; left as it was",
                          "delay relay: 1200 node-to-node datagrams delayed, 0 dropped for a full queue",
                          "watches: 3 watchers (every key; keys [\"e1\", \"e2\")) got 2173 changes over 14 connections, up to revision 1303"],
                "unexpected_http": {}, "violations": []
            }),
        );
        write(
            dir.path(),
            8,
            &serde_json::json!({
                "seed": 8, "nodes": 5, "duration_s": 60.0, "wall_s": 61.5,
                "ops": {"read-ok": 1, "indeterminate": 2},
                "faults": {"kill": 1},
                "notes": [], "unexpected_http": {"status 500": 1},
                "violations": [{"check": "lost-write", "detail": "x", "focus": []}]
            }),
        );
        std::fs::create_dir_all(dir.path().join("not-a-seed")).unwrap();
        std::fs::create_dir_all(dir.path().join("seed-9")).unwrap();
        let t = summarize(dir.path()).unwrap();
        assert_eq!(t.seeds, vec![7, 8, 9]);
        assert_eq!(t.failed[&9], vec!["no-summary".to_string()]);
        assert_eq!(t.ops_total(), 18);
        assert_eq!(t.faults["kill"], 3);
        assert_eq!(t.faults_total(), 6);
        assert_eq!(t.replacements_completed, 1);
        assert_eq!(t.relayed_datagrams, 1200);
        assert_eq!((t.watch_changes, t.watch_connections), (2173, 14));
        assert_eq!(t.failed[&8], vec!["lost-write".to_string()]);
        assert!((t.fault_s - 120.0).abs() < 1e-9);
        let only_7 = summarize_seeds(dir.path(), |s| s == 7).unwrap();
        assert_eq!(only_7.seeds, vec![7]);
        assert!(only_7.failed.is_empty());
        let r = t.render();
        assert!(r.contains("3 seeds (7-9) on 5 nodes"), "{r}");
        assert!(r.contains("completed: 1 of 2"), "{r}");
        assert!(r.contains("seed 8: lost-write"), "{r}");
    }

    #[test]
    fn seed_ranges_compress_runs() {
        assert_eq!(seed_ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(seed_ranges(&[]), "");
    }

    #[test]
    fn a_directory_that_is_not_there_is_a_clear_error() {
        let e = summarize(Path::new("/nonexistent/raft-chaos-out")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/raft-chaos-out"), "{e}");
    }
}
