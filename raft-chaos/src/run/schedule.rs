//! The nemesis rounds of a run: a quiet time, faults held for a while,
//! healing; again until the run's duration is up. Nodes that exit on their
//! own are looked for every 200 ms throughout. Then [`heal`] ends every
//! fault for the checks.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::verdict::Findings;
use super::RunConfig;
use crate::client::{Recorder, SharedUrls};
use crate::cluster::Cluster;
use crate::error::ChaosError;
use crate::nemesis::{self, Fault, FaultEvent};
use crate::probe::Probe;

/// Time a membership replacement has for all its steps.
const REPLACE_BUDGET: Duration = Duration::from_secs(40);

/// How often a sleeping schedule looks for nodes that exited.
const EXIT_POLL: Duration = Duration::from_millis(200);

/// A delay fault held this long without a datagram through the relay is a
/// harness error (one cut shorter by the end of the run proves little
/// either way: nodes may have sent nothing in that time).
const DELAY_PROOF_HOLD: Duration = Duration::from_secs(1);

/// The state of the rounds.
struct Schedule<'a> {
    cfg: &'a RunConfig,
    cluster: &'a mut Cluster,
    probe: &'a Probe,
    rec: &'a Recorder,
    /// The workers' node URLs, updated after a replacement.
    urls: &'a SharedUrls,
    found: &'a mut Findings,
    /// The schedule's choices, from the seed.
    rng: ChaCha8Rng,
    /// The end of the run.
    end: Instant,
    /// The faults so far.
    events: Vec<FaultEvent>,
}

/// Runs the nemesis rounds for `cfg.duration`, or until the harness fails
/// (the error is returned: the run proves nothing then). Returns the faults
/// injected; those of a round the harness cut short are not healed yet
/// (see [`heal`]).
pub(super) async fn run(
    cfg: &RunConfig,
    cluster: &mut Cluster,
    probe: &Probe,
    rec: &Recorder,
    urls: &SharedUrls,
    found: &mut Findings,
) -> (Vec<FaultEvent>, Option<ChaosError>) {
    let mut s = Schedule {
        cfg,
        cluster,
        probe,
        rec,
        urls,
        found,
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        end: Instant::now() + cfg.duration,
        events: Vec::new(),
    };
    let mut error = None;
    while Instant::now() < s.end {
        match s.round().await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    (s.events, error)
}

impl Schedule<'_> {
    /// A quiet time, then (unless the run is over by then) faults, held for
    /// a while and healed. `Ok(false)`: the run is over.
    async fn round(&mut self) -> Result<bool, ChaosError> {
        let quiet = nemesis::pick_ms(&mut self.rng, self.cfg.nemesis.quiet_ms);
        self.sleep_watching(quiet).await;
        if Instant::now() >= self.end {
            return Ok(false);
        }
        let faults =
            nemesis::next_faults(&mut self.rng, &self.cfg.nemesis, self.probe, self.cluster).await;
        let hold = nemesis::pick_ms(&mut self.rng, self.cfg.nemesis.hold_ms);
        let first = self.events.len();
        let delay_from = self.inject(&faults).await?;
        self.sleep_watching(hold).await;
        self.check_relay(delay_from);
        nemesis::heal(self.cluster)?;
        let healed = self.rec.now_us();
        for e in &mut self.events[first..] {
            e.end_us = Some(healed);
        }
        Ok(true)
    }

    /// Applies `faults`, recording each. Returns, when one is a delay, the
    /// relay's count and the time when it started, to see that the nodes'
    /// traffic really went through the relay (a redirect that silently
    /// failed would make the fault a partition, or nothing).
    async fn inject(&mut self, faults: &[Fault]) -> Result<Option<(u64, Instant)>, ChaosError> {
        let mut delay_from = None;
        for f in faults {
            self.events.push(FaultEvent {
                kind: f.kind().to_owned(),
                detail: f.describe(),
                start_us: self.rec.now_us(),
                end_us: None,
            });
            if let Fault::Replace { node } = f {
                self.replace(*node).await?;
                continue;
            }
            nemesis::apply(self.cluster, f)?;
            if matches!(f, Fault::Delay { .. }) {
                delay_from = self
                    .cluster
                    .relay
                    .as_ref()
                    .map(|r| (r.received(), Instant::now()));
            }
        }
        Ok(delay_from)
    }

    /// Replaces `node` by a fresh one; the workers use the nodes there are
    /// after it.
    async fn replace(&mut self, node: u64) -> Result<(), ChaosError> {
        let what = nemesis::replace(self.cluster, self.probe, node, REPLACE_BUDGET).await?;
        self.found.notes.push(format!("membership: {what}"));
        if let Some(e) = self.events.last_mut() {
            e.detail = what;
        }
        let now: Vec<String> = self.cluster.urls().into_iter().map(|(_, u)| u).collect();
        if let Ok(mut u) = self.urls.write() {
            *u = now;
        }
        Ok(())
    }

    /// A harness error when a delay fault held long enough brought no
    /// datagram to the relay.
    fn check_relay(&mut self, delay_from: Option<(u64, Instant)>) {
        if let (Some((from, at)), Some(relay)) = (delay_from, &self.cluster.relay) {
            let held = at.elapsed();
            if relay.received() == from && held >= DELAY_PROOF_HOLD {
                self.found.violation(
                    "harness-error",
                    format!(
                        "a delay fault held for {held:?} brought no datagram to the relay: \
                         the redirect did not work, so this run proves nothing about delays"
                    ),
                );
            }
        }
    }

    /// Sleeps for `d` (not past the end of the run), looking for nodes that
    /// exited on their own every [`EXIT_POLL`].
    async fn sleep_watching(&mut self, d: Duration) {
        let until = (Instant::now() + d).min(self.end);
        while Instant::now() < until {
            tokio::time::sleep(EXIT_POLL.min(until - Instant::now())).await;
            self.found.check_exits(self.cluster);
        }
    }
}

/// Ends every fault after the rounds: heals the network and the nodes,
/// closes the faults still open, and records a harness failure (`error`,
/// or one healing hits) and the relay's totals.
pub(super) fn heal(
    cluster: &mut Cluster,
    rec: &Recorder,
    events: &mut [FaultEvent],
    mut error: Option<ChaosError>,
    found: &mut Findings,
) {
    if let Err(e) = nemesis::heal(cluster) {
        error.get_or_insert(e);
    }
    // Faults still open (a harness error cut their round short) end here.
    let healed = rec.now_us();
    for e in events.iter_mut().filter(|e| e.end_us.is_none()) {
        e.end_us = Some(healed);
    }
    // A harness failure (a rule that cannot be written, a node that cannot
    // be started) makes the run invalid, not the system wrong; the checks
    // still run and the history and logs are kept to look at.
    if let Some(e) = error {
        found.violation(
            "harness-error",
            format!("the harness failed, so this run proves nothing: {e}"),
        );
    }
    found.check_exits(cluster);
    if let Some(relay) = &cluster.relay {
        found.notes.push(format!(
            "delay relay: {} node-to-node datagrams delayed, {} dropped for a full queue",
            relay.relayed(),
            relay.dropped()
        ));
    }
}
