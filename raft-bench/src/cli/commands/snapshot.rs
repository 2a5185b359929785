//! `raft-bench snapshot`: starts a raft-node cluster with automatic
//! snapshots off, runs the snapshot benchmark on it and writes
//! `snapshot.json`.

use std::time::Duration;

use anyhow::Context;

use super::start;
use crate::cli::args::SnapshotArgs;
use crate::cli::report::Machine;
use crate::cli::{snapshot, System};

/// Runs `raft-bench snapshot`.
pub(in crate::cli) async fn run(a: SnapshotArgs, command: String) -> anyhow::Result<()> {
    let mut common = a.common.clone();
    // Snapshots only when asked, so the baseline has none.
    common.raft_arg.extend([
        "--snapshot-entries=0".to_owned(),
        "--snapshot-mib=0".to_owned(),
    ]);
    let mut c = start(&common, System::Raft).await?;
    let b = snapshot::SnapshotBench {
        store_bytes: a.store_mib << 20,
        value_bytes: a.value_bytes as usize,
        fill_clients: a.fill_clients as usize,
        clients: a.clients as usize,
        baseline: Duration::from_secs(a.baseline_s),
        snapshot_timeout: Duration::from_secs(a.snapshot_timeout_s),
        leader_only: a.leader_only,
        seed: a.common.seed,
    };
    let r = snapshot::run(&c, &b).await;
    c.shutdown();
    let r = r?;
    let text = snapshot::table(&r);
    std::fs::create_dir_all(&a.common.out)
        .with_context(|| format!("creating {}", a.common.out.display()))?;
    let json = serde_json::json!({
        "command": command,
        "machine": Machine::read(),
        "snapshot": r,
    });
    let path = a.common.out.join("snapshot.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if a.common.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{text}");
    }
    eprintln!("report: {}", path.display());
    Ok(())
}
