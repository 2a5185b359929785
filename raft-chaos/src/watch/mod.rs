//! The watch checker: watchers follow the store's changes over
//! `GET /v1/watch` (server-sent events) or etcd's gRPC `Watch.Watch`
//! stream ([`grpc`]) for the whole run, and [`check`] decides whether what
//! they saw matches the writes the clients made.
//!
//! [`WatchConfig::grpc_watchers`] of the watchers follow gRPC, the others
//! SSE; which ones rotates with the seed ([`front_of`]), so across seeds
//! every range is watched through both front ends.
//!
//! Watcher `w` (from 1) watches every key, the prefix `e1` (the keys of
//! epoch 1, and 10–19, …) or the range `[e0-k3, e1-k2)` (part of epoch 0's
//! keys and part of epoch 1's), in turn ([`range_of`]), from revision 1.
//! They start on different members, staggered over the first half of the
//! run (a later one replays the history first), with `progress_notify`.
//! A watcher reconnects with `Last-Event-ID` (the last `id` it got, of a
//! change or a progress event) to the next member when its connection
//! drops, when nothing, not even a keep-alive, comes for
//! [`WatchConfig::idle_timeout`] (a paused node), when the node cancels the
//! watch (shutting down), and on its own after a random 1 to
//! [`WatchConfig::switch_s_max`] seconds, so resuming is exercised even
//! between faults. A gRPC watcher resumes the same way: a new stream on
//! the next member whose `WatchCreateRequest` starts one past the last
//! revision it saw (of a change or a progress response), after a stream
//! error, a silent stream or a `canceled` response. After the run has healed and converged,
//! [`Watchers::finish`] waits until every watcher got to the store's
//! revision, and stops them.

pub mod check;
pub mod grpc;
pub mod sse;
mod watcher;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::client::SharedUrls;
use check::{Change, KeyRange, WatchFront, WatchLog};

/// Settings of the watchers.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Number of watchers (0: no watch check).
    pub watchers: u64,
    /// How many of them follow etcd's gRPC `Watch.Watch` instead of
    /// `GET /v1/watch` (all of them when at least `watchers`).
    pub grpc_watchers: u64,
    /// A connection silent this long (no event, no keep-alive) is given up
    /// for another member.
    pub idle_timeout: Duration,
    /// A watcher moves to another member on its own after a random 1 to
    /// this many seconds (0: only when its connection fails).
    pub switch_s_max: u64,
    /// A negative control: resume one revision past the last `id` seen,
    /// so each resume loses a revision; such runs must fail.
    pub resume_past_last: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            watchers: 3,
            grpc_watchers: 1,
            idle_timeout: Duration::from_secs(5),
            switch_s_max: 8,
            resume_past_last: false,
        }
    }
}

/// The keys of watcher `w` (from 1): see the module documentation.
pub fn range_of(w: u64) -> KeyRange {
    match w.saturating_sub(1) % 3 {
        0 => KeyRange::all(),
        1 => KeyRange::prefix("e1"),
        _ => KeyRange::between("e0-k3", "e1-k2"),
    }
}

/// The front end watcher `w` (from 1) of `watchers` follows in the run of
/// `seed` when `grpc` of them follow gRPC: those whose turn, rotated by
/// the seed, comes first.
pub fn front_of(w: u64, watchers: u64, grpc: u64, seed: u64) -> WatchFront {
    if watchers == 0 || w == 0 {
        return WatchFront::Sse;
    }
    let turn = (w - 1 + seed % watchers) % watchers;
    if turn < grpc.min(watchers) {
        WatchFront::Grpc
    } else {
        WatchFront::Sse
    }
}

/// The running watchers of a run. Dropping it stops them.
#[derive(Debug)]
pub struct Watchers {
    logs: Vec<Arc<Mutex<WatchLog>>>,
    tasks: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// What the watchers saw, for the checks.
#[derive(Debug, Clone)]
pub struct WatchOutcome {
    /// One log per watcher.
    pub logs: Vec<WatchLog>,
    /// The store's revision after the run, which every watcher had to get
    /// to (`None`: no node told it).
    pub target: Option<u64>,
}

impl Watchers {
    /// Starts `cfg.watchers` watchers on the nodes of `urls` (HTTP URLs; a
    /// gRPC watcher follows the same node's gRPC URL), staggered over the
    /// first half of `duration`; their choices follow from `seed`.
    pub fn start(cfg: &WatchConfig, seed: u64, duration: Duration, urls: &SharedUrls) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut w = Watchers {
            logs: Vec::new(),
            tasks: Vec::new(),
            stop,
        };
        let n = cfg.watchers;
        for i in 1..=n {
            let log = Arc::new(Mutex::new(WatchLog {
                watcher: i,
                front: front_of(i, n, cfg.grpc_watchers, seed),
                range: Some(range_of(i)),
                start_revision: 1,
                ..WatchLog::default()
            }));
            let task = watcher::Watcher {
                n: i,
                cfg: cfg.clone(),
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5741_5443_4800_0000 ^ i),
                urls: urls.clone(),
                log: log.clone(),
                stop: stopped.clone(),
            };
            let delay = duration / 2 * (i - 1) as u32 / n as u32;
            w.tasks.push(tokio::spawn(task.run(delay)));
            w.logs.push(log);
        }
        w
    }

    /// Waits (at most `budget`) until every watcher got to the store's
    /// revision, read from a node of `urls`, then stops them and returns
    /// what they saw.
    pub async fn finish(mut self, urls: &[String], budget: Duration) -> WatchOutcome {
        let deadline = Instant::now() + budget;
        let target = if self.logs.is_empty() {
            None
        } else {
            current_revision(urls, deadline).await
        };
        while let Some(t) = target {
            let behind = self
                .logs
                .iter()
                .any(|l| l.lock().map_or(true, |l| l.reached < t));
            if !behind || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let logs = self
            .logs
            .iter()
            .map(|l| l.lock().map(|l| l.clone()).unwrap_or_default())
            .collect();
        WatchOutcome { logs, target }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The store's current revision (`revision` of a one-item listing), from
/// the first node of `urls` that answers before `deadline`.
async fn current_revision(urls: &[String], deadline: Instant) -> Option<u64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let mut i = 0;
    while Instant::now() < deadline && !urls.is_empty() {
        let url = format!("{}/v1/kv?limit=1&keys_only=true", urls[i % urls.len()]);
        i += 1;
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                if let Ok(v) = r.json::<Value>().await {
                    if let Some(rev) = v.get("revision").and_then(Value::as_u64) {
                        return Some(rev);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// A watch log as JSON (`watches.json` of a failing run): keys and
/// values as text.
pub fn log_json(log: &WatchLog) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let deliveries: Vec<Value> = log
        .deliveries
        .iter()
        .map(|d| {
            let events: Vec<Value> = d
                .events
                .iter()
                .map(|e| match &e.change {
                    Change::Put(v) => json!({"put": text(&e.key), "value": text(v)}),
                    Change::Delete => json!({"delete": text(&e.key)}),
                })
                .collect();
            json!({"revision": d.revision, "node": d.node, "reached_before": d.reached_before, "events": events})
        })
        .collect();
    json!({
        "watcher": log.watcher,
        "front": log.front.name(),
        "range": log.range.as_ref().map(KeyRange::describe),
        "start_revision": log.start_revision,
        "reached": log.reached,
        "connections": log.connections.iter().map(|(n, from, end)| json!({"node": n, "last_event_id": from, "ended": end})).collect::<Vec<_>>(),
        "cancels": log.cancels.iter().map(|(n, r, _)| json!({"node": n, "reason": r})).collect::<Vec<_>>(),
        "errors": log.errors,
        "deliveries": deliveries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_watchers_rotate_with_the_seed_and_are_as_many_as_asked() {
        let grpc_of = |watchers: u64, grpc: u64, seed: u64| -> Vec<u64> {
            (1..=watchers)
                .filter(|&w| front_of(w, watchers, grpc, seed) == WatchFront::Grpc)
                .collect()
        };
        // Seeds 1, 2, 3 of the bounded run: each range once over gRPC.
        assert_eq!(grpc_of(3, 1, 1), [3]);
        assert_eq!(grpc_of(3, 1, 2), [2]);
        assert_eq!(grpc_of(3, 1, 3), [1]);
        assert_eq!(grpc_of(3, 2, 1).len(), 2);
        assert_eq!(grpc_of(3, 0, 7), Vec::<u64>::new());
        assert_eq!(grpc_of(3, 9, 7), [1, 2, 3]);
        assert_eq!(grpc_of(1, 1, 4), [1]);
        assert_eq!(front_of(1, 0, 1, 1), WatchFront::Sse);
    }
}
