//! The lease checker: lease clients grant short leases, attach unique keys
//! (`lease-c<client>-l<n>-k<i>`) and keep them alive for a while then stop,
//! never keep them alive, or revoke them, reading their keys
//! (linearizable) throughout; [`check`] decides whether a key was deleted
//! while a keep-alive promised its lease (safety), whether a revoke
//! deleted every key at one revision, whether a lease already gone took a
//! key, and [`liveness`] whether every lease is gone, with its keys,
//! within its TTL + [`LeaseConfig::bound_s`] after the run converged.

pub mod check;
mod client;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;

use crate::client::SharedUrls;
use check::{LeaseRecord, Leftover};

/// The prefix of every key of the lease clients (the watch checker leaves
/// these keys out: expiry deletes them, no client does).
pub const KEY_PREFIX: &str = "lease-";

/// Settings of the lease clients.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Number of lease clients (0: no lease check).
    pub clients: u64,
    /// The TTL asked for, in seconds (the node clamps it up to three
    /// election timeouts; the client uses the TTL returned).
    pub ttl_s: u64,
    /// After convergence, every lease must be gone with its keys within
    /// its TTL + this many seconds.
    pub bound_s: u64,
    /// A negative control: the clients believe every TTL the node returns
    /// is this many seconds longer (and keep alive at a third of that),
    /// so their runs must fail the safety check.
    pub believe_extra_s: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            clients: 2,
            ttl_s: 3,
            bound_s: 10,
            believe_extra_s: 0,
        }
    }
}

/// The running lease clients of a run. Dropping it stops them.
#[derive(Debug)]
pub struct LeaseClients {
    out: Arc<Mutex<Vec<LeaseRecord>>>,
    tasks: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl LeaseClients {
    /// Starts `cfg.clients` lease clients on the nodes of `urls`; their
    /// choices follow from `seed`, their times count from `start`.
    pub fn start(cfg: &LeaseConfig, seed: u64, start: Instant, urls: &SharedUrls) -> Self {
        let mut c = LeaseClients {
            out: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let Ok(http) = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .build()
        else {
            return c;
        };
        for n in 1..=cfg.clients {
            let task = client::LeaseClient {
                n,
                cfg: cfg.clone(),
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0x4c45_4153_4500_0000 ^ n),
                urls: urls.clone(),
                start,
                out: c.out.clone(),
                stop: c.stop.clone(),
                http: http.clone(),
            };
            c.tasks.push(tokio::spawn(task.run()));
        }
        c
    }

    /// Stops the clients (each finishes its lease's current request) and
    /// returns what they recorded.
    pub async fn stop(mut self) -> Vec<LeaseRecord> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.out.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Drop for LeaseClients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until every lease of `leases` is gone (`GET /v1/leases/{id}`
/// 404) with its keys (linearizable reads 404), through the nodes of
/// `urls`, for at most the longest TTL + `bound_s`; returns what is left.
pub async fn liveness(leases: &[LeaseRecord], urls: &[String], bound_s: u64) -> Vec<Leftover> {
    let ttl = leases
        .iter()
        .flat_map(|l| l.promises.iter().map(|p| p.ttl_s))
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(ttl + bound_s);
    let mut left: Vec<Leftover> = leases
        .iter()
        .map(|l| Leftover {
            id: l.id,
            keys: l.keys.iter().chain(&l.maybe_keys).cloned().collect(),
            lease_found: true,
        })
        .collect();
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(h) if !urls.is_empty() => h,
        _ => return left,
    };
    let mut i = 0;
    loop {
        for o in &mut left {
            i += 1;
            let url = &urls[i % urls.len()];
            o.lease_found = !gone(&http, &format!("{url}/v1/leases/{}", o.id)).await;
            let mut keys = Vec::new();
            for k in std::mem::take(&mut o.keys) {
                let u = format!("{url}/v1/kv/{k}?consistency=linearizable");
                if !gone(&http, &u).await {
                    keys.push(k);
                }
            }
            o.keys = keys;
        }
        left.retain(|o| o.lease_found || !o.keys.is_empty());
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether `url` answers 404.
async fn gone(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND)
}
