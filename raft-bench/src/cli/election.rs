//! Election trials: a fault on the current leader (kill -9, SIGSTOP, or a
//! graceful leadership transfer), then two clocks from the moment of the
//! fault: until a surviving member names a new leader, and until a write
//! sent through a survivor succeeds.
//!
//! Write attempts start every 5 ms through the survivors in turn (each with
//! a 1 s timeout, at most 200 outstanding), so the second clock is not
//! quantized by one request's timeout: an attempt stuck behind a dead or
//! paused leader does not hide a later one that succeeds.
//!
//! raft-node's probe writes go through [`raft_client`], one client per
//! survivor, each attempt sent once: `RetryPolicy::none()`, no idempotency
//! key, the 1 s attempt timeout as the request timeout. The client's
//! retries would send an attempt again (after a backoff, or to the member
//! it learns is the leader) inside what the second clock counts as one
//! attempt, and its leader tracking would stop the attempts alternating
//! over the survivors: the clock would then measure the client's retry
//! policy rather than the time to the first write a survivor accepts.
//! etcd's probe writes stay plain requests to its v3 JSON gateway.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::cluster::LocalCluster;
use super::System;

/// The fault a trial injects on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// SIGKILL, then restart on the same data after the measurement.
    Kill,
    /// SIGSTOP, then SIGCONT after the measurement.
    Pause,
    /// The system's leadership transfer request.
    Transfer,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill -9",
            Fault::Pause => "SIGSTOP",
            Fault::Transfer => "transfer",
        })
    }
}

/// One trial's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Member index of the leader that was attacked (1-based).
    pub old_leader: usize,
    /// The member first named as the new leader (1-based).
    pub new_leader: usize,
    /// Fault to a new leader being named by a survivor, ms.
    pub elected_ms: f64,
    /// Fault to the first successful write through a survivor, ms.
    pub write_ms: f64,
}

const ATTEMPT_EVERY: Duration = Duration::from_millis(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const ATTEMPTS_MAX: usize = 200;
const TRIAL_LIMIT: Duration = Duration::from_secs(20);

/// Runs one trial and brings the cluster back to a stable state.
///
/// # Errors
///
/// When the fault cannot be injected, no new leader or write succeeds in
/// 20 s, or the cluster does not recover.
pub async fn trial(cluster: &mut LocalCluster, fault: Fault, seq: u64) -> anyhow::Result<Trial> {
    cluster.wait_stable(Duration::from_secs(30)).await?;
    let old = cluster.leader().await?;
    let survivors: Vec<usize> = (0..cluster.members()).filter(|&i| i != old).collect();
    let urls = cluster.urls();
    let targets = probe_targets(cluster.system(), &urls, &survivors)?;
    // Warm the probe's connections so the first attempts after the fault
    // do not pay for TCP setup.
    for t in &targets {
        let _ = write(t, seq, 0).await;
    }
    let t0 = Instant::now();
    match fault {
        Fault::Kill => cluster.kill(old)?,
        Fault::Pause => cluster.pause(old)?,
        Fault::Transfer => {}
    }
    let c: &LocalCluster = cluster;
    let transfer = async {
        if fault == Fault::Transfer {
            c.transfer(old).await
        } else {
            Ok(())
        }
    };
    let elected = async {
        loop {
            if t0.elapsed() > TRIAL_LIMIT {
                return None;
            }
            let views = futures::future::join_all(
                survivors
                    .iter()
                    .map(|&s| c.leader_seen_by(s, Duration::from_millis(200))),
            )
            .await;
            if let Some(l) = views.into_iter().flatten().find(|&l| l != old) {
                return Some((l, t0.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let wrote = async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(ATTEMPTS_MAX);
        let outstanding = std::sync::Arc::new(tokio::sync::Semaphore::new(ATTEMPTS_MAX));
        let mut n = 0u64;
        let mut tick = tokio::time::interval(ATTEMPT_EVERY);
        loop {
            tokio::select! {
                Some(at) = rx.recv() => return Some(at - t0),
                _ = tick.tick() => {
                    if t0.elapsed() > TRIAL_LIMIT {
                        return None;
                    }
                    let Ok(permit) = outstanding.clone().try_acquire_owned() else { continue };
                    n += 1;
                    let target = targets[(n as usize) % targets.len()].clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if write(&target, seq, n).await {
                            let _ = tx.try_send(Instant::now());
                        }
                        drop(permit);
                    });
                }
            }
        }
    };
    let (transferred, elected, wrote) = tokio::join!(transfer, elected, wrote);
    // Recover before judging, so a failed trial leaves a usable cluster.
    match fault {
        Fault::Kill | Fault::Pause => cluster
            .recover(old)
            .await
            .with_context(|| format!("bringing member {} back", old + 1))?,
        Fault::Transfer => {}
    }
    transferred?;
    let Some((new, elected)) = elected else {
        bail!("no survivor named a new leader within {TRIAL_LIMIT:?} of the fault");
    };
    let Some(wrote) = wrote else {
        bail!("no write through a survivor succeeded within {TRIAL_LIMIT:?} of the fault");
    };
    Ok(Trial {
        old_leader: old + 1,
        new_leader: new + 1,
        elected_ms: elected.as_secs_f64() * 1e3,
        write_ms: wrote.as_secs_f64() * 1e3,
    })
}

/// Where the probe writes: one survivor, with the client that sends each
/// attempt once.
#[derive(Debug, Clone)]
enum Target {
    /// A raft-node member, through [`raft_client`] (one attempt, no
    /// idempotency key).
    Raft(raft_client::Client),
    /// An etcd member's v3 JSON gateway.
    Etcd {
        /// The probe's HTTP client (1 s timeout).
        http: reqwest::Client,
        /// The member's client URL.
        url: String,
    },
}

/// A probe target for each survivor, in `survivors`' order; the clients
/// share one connection pool.
fn probe_targets(
    system: System,
    urls: &[String],
    survivors: &[usize],
) -> anyhow::Result<Vec<Target>> {
    let survivor_urls = survivors.iter().map(|&s| urls[s].clone());
    match system {
        System::Raft => {
            let all = raft_client::Client::builder(survivor_urls.clone())
                .request_timeout(ATTEMPT_TIMEOUT)
                .retry(raft_client::RetryPolicy::none())
                .idempotency_keys(raft_client::IdempotencyKeys::Off)
                .pool_max_idle_per_host(64)
                .build()?;
            survivor_urls
                .map(|u| Ok(Target::Raft(all.at(&u)?)))
                .collect()
        }
        System::Etcd => {
            let http = reqwest::Client::builder()
                .timeout(ATTEMPT_TIMEOUT)
                .pool_max_idle_per_host(64)
                .build()?;
            Ok(survivor_urls
                .map(|url| Target::Etcd {
                    http: http.clone(),
                    url,
                })
                .collect())
        }
    }
}

/// One write through `target`, sent once; true when it succeeded.
async fn write(target: &Target, seq: u64, n: u64) -> bool {
    let value = format!("trial {seq} attempt {n}");
    match target {
        Target::Raft(node) => node.put("election-probe", value).await.is_ok(),
        Target::Etcd { http, url } => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            let r = http
                .post(format!("{url}/v3/kv/put"))
                .body(format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    b64.encode("election-probe"),
                    b64.encode(value)
                ))
                .send()
                .await;
            matches!(r, Ok(r) if r.status().is_success())
        }
    }
}
