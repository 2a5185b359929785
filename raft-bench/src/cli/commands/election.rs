//! `raft-bench election`: repeated election trials of each fault on one
//! cluster.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::{finish, new_report, start};
use crate::cli::args::ElectionArgs;
use crate::cli::cluster::LocalCluster;
use crate::cli::election::{self, Fault};
use crate::cli::report::{self, ElectionResult};

/// Runs `raft-bench election`.
pub(in crate::cli) async fn run(a: ElectionArgs, command: String) -> anyhow::Result<()> {
    let mut r = new_report(command, &a.common, &[a.target])?;
    let mut c = start(&a.common, a.target).await?;
    for &f in &a.faults.faults {
        r.elections
            .push(trials(&mut c, f, a.faults.trials, 0).await?);
    }
    c.shutdown();
    finish(&r, &a.common)
}

/// `trials` trials of `fault` on one cluster.
pub(super) async fn trials(
    c: &mut LocalCluster,
    fault: Fault,
    trials: u32,
    round: u32,
) -> anyhow::Result<ElectionResult> {
    let bar = ProgressBar::new(u64::from(trials)).with_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}, {fault}", c.system()));
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for i in 0..trials {
        // A pause between trials lets the restarted member settle, as an
        // operator's would between incidents.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match election::trial(c, fault, u64::from(round) * 1_000_000 + u64::from(i)).await {
            Ok(t) => {
                bar.set_message(format!(
                    "last: leader {:.0} ms, write {:.0} ms",
                    t.elected_ms, t.write_ms
                ));
                ok.push(t);
            }
            Err(e) => {
                bar.println(format!("{} {fault} trial {i} failed: {e:#}", c.system()));
                failures.push(format!("{e:#}"));
                // The trial already tried to recover; stop if it could not.
                c.wait_stable(Duration::from_secs(30)).await?;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let r = ElectionResult::new(c.system(), fault, ok, failures);
    eprint!("{}", report::election_table(std::slice::from_ref(&r)));
    Ok(r)
}
