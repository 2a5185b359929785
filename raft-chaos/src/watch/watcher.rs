//! One watcher's task: follows `GET /v1/watch` (or etcd's gRPC
//! `Watch.Watch`) on a member, records what it delivers, and moves to the
//! next member with `Last-Event-ID` (over gRPC: `start_revision` one past
//! the last revision seen) when the connection ends, stalls or its time on
//! that member is up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::time::Instant;

use super::check::{Delivery, WatchFront, WatchLog, WatchedEvent};
use super::grpc::{self, Observation, OpenError};
use super::sse::{changes_of, SseEvent, SseParser};
use super::WatchConfig;
use crate::client::SharedUrls;
use crate::cluster::grpc_url_of;

/// The longest event-stream line accepted (a change event holds one
/// key and value, at most a few MiB on a node's defaults).
const MAX_LINE: usize = 16 << 20;

/// How long a watcher waits for a TCP connection to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How a connection ended.
enum Ended {
    /// Go on with another member: why.
    Next(String),
    /// The watch cannot go on (its history is compacted): why.
    Fatal(String),
    /// The run is over.
    Stop,
}

/// A watcher (see the module documentation of `watch`).
pub(super) struct Watcher {
    /// Its number, from 1.
    pub(super) n: u64,
    pub(super) cfg: WatchConfig,
    /// Its choices (time on a member).
    pub(super) rng: ChaCha8Rng,
    /// The members (replacements change them).
    pub(super) urls: SharedUrls,
    /// What it saw, shared with the run.
    pub(super) log: Arc<Mutex<WatchLog>>,
    /// Becomes `true` at the end of the run.
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
}

impl Watcher {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut WatchLog) -> T) -> T {
        let mut guard = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Follows the watch after `delay`, from member to member, until the
    /// run stops it or the watch cannot go on.
    pub(super) async fn run(mut self, delay: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let front = self.with_log(|l| l.front);
        let http = match reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
        {
            Ok(h) => h,
            Err(e) => {
                self.with_log(|l| l.errors.push(format!("no HTTP client: {e}")));
                return;
            }
        };
        let mut turn = (self.n - 1) as usize;
        while !self.stopped() {
            let urls = self.urls.read().map(|u| u.clone()).unwrap_or_default();
            if urls.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let url = urls[turn % urls.len()].clone();
            turn += 1;
            let from = self.with_log(|l| l.reached);
            let (url, ended) = match front {
                WatchFront::Sse => {
                    let ended = self.follow(&http, &url).await;
                    (url, ended)
                }
                WatchFront::Grpc => match grpc_url_of(&url) {
                    Some(g) => {
                        let ended = self.follow_grpc(&g).await;
                        (g, ended)
                    }
                    None => {
                        let why = format!("no gRPC URL for {url}");
                        self.with_log(|l| l.errors.push(why.clone()));
                        (url, Ended::Fatal(why))
                    }
                },
            };
            let why = match &ended {
                Ended::Next(w) | Ended::Fatal(w) => w.clone(),
                Ended::Stop => "the run ended".into(),
            };
            self.with_log(|l| l.connections.push((url.clone(), from, why)));
            match ended {
                Ended::Next(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ended::Fatal(_) | Ended::Stop => return,
            }
        }
    }

    /// One connection to `url`, until it ends.
    async fn follow(&mut self, http: &reqwest::Client, url: &str) -> Ended {
        let (range, start, last) =
            self.with_log(|l| (l.range.clone(), l.start_revision, l.reached));
        let Some(range) = range else {
            return Ended::Fatal("no range".into());
        };
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut query = vec![
            ("key_base64", b64(&range.key)),
            ("start_revision", start.to_string()),
            ("progress_notify", "true".into()),
        ];
        if !range.range_end.is_empty() {
            query.push(("range_end_base64", b64(&range.range_end)));
        }
        let mut req = http.get(format!("{url}/v1/watch")).query(&query);
        if last > 0 {
            let resume = last + u64::from(self.cfg.resume_past_last);
            req = req.header("Last-Event-ID", resume.to_string());
        }
        let mut stop = self.stop.clone();
        let resp = tokio::select! {
            r = tokio::time::timeout(self.cfg.idle_timeout, req.send()) => r,
            _ = stop.wait_for(|s| *s) => return Ended::Stop,
        };
        let mut resp = match resp {
            Err(_) => return Ended::Next("no answer in time".into()),
            Ok(Err(e)) => return Ended::Next(format!("request failed: {e}")),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.text().await.unwrap_or_default();
            if status == 410 {
                let why = format!("410 on resuming after {last}: {body}");
                self.with_log(|l| l.cancels.push((url.to_owned(), why.clone(), true)));
                return Ended::Fatal(why);
            }
            if status != 503 {
                self.with_log(|l| l.errors.push(format!("{url} answered {status}: {body}")));
            }
            return Ended::Next(format!("status {status}"));
        }
        let switch = self.switch_at();
        let mut parser = SseParser::new(MAX_LINE);
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(self.cfg.idle_timeout, resp.chunk()) => c,
                () = until(switch) => return Ended::Next("time to move on".into()),
                _ = stop.wait_for(|s| *s) => return Ended::Stop,
            };
            let bytes = match chunk {
                Err(_) => return Ended::Next(format!("silent for {:?}", self.cfg.idle_timeout)),
                Ok(Err(e)) => return Ended::Next(format!("connection lost: {e}")),
                Ok(Ok(None)) => return Ended::Next("the stream ended".into()),
                Ok(Ok(Some(b))) => b,
            };
            let events = match parser.feed(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    self.with_log(|l| l.errors.push(format!("{url}: {e}")));
                    return Ended::Next(e);
                }
            };
            for e in events {
                if let Some(end) = self.event(url, e) {
                    return end;
                }
            }
        }
    }

    /// Records one event from `url`; `Some` when the connection ends.
    fn event(&self, url: &str, e: SseEvent) -> Option<Ended> {
        let id = e.id.as_deref().and_then(|i| i.trim().parse::<u64>().ok());
        match e.event.as_str() {
            "" | "message" => {
                let (rev, events) = match changes_of(&e.data) {
                    Ok(c) => c,
                    Err(m) => return self.bad(url, m),
                };
                if id != Some(rev) {
                    return self.bad(
                        url,
                        format!("a change event with id {:?} of revision {rev}", e.id),
                    );
                }
                self.delivered(url, rev, events);
                None
            }
            "progress" => {
                let Some(p) = id else {
                    return self.bad(
                        url,
                        format!("a progress event without a revision id: {:?}", e.id),
                    );
                };
                self.progressed(url, p);
                None
            }
            "canceled" => {
                let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                let reason = v.get("reason").and_then(Value::as_str).unwrap_or("");
                match reason {
                    "shutdown" => Some(Ended::Next("canceled: the node is stopping".into())),
                    "compacted" => {
                        let why = format!("canceled: {}", e.data);
                        self.with_log(|l| l.cancels.push((url.to_owned(), why.clone(), true)));
                        Some(Ended::Fatal(why))
                    }
                    _ => {
                        let why = format!("canceled: {}", e.data);
                        self.with_log(|l| l.cancels.push((url.to_owned(), why.clone(), false)));
                        Some(Ended::Next(why))
                    }
                }
            }
            other => self.bad(url, format!("an event of unknown type {other:?}")),
        }
    }

    /// Records the changes of revision `rev` from `url`.
    fn delivered(&self, url: &str, rev: u64, events: Vec<WatchedEvent>) {
        self.with_log(|l| {
            let reached_before = l.reached;
            l.reached = l.reached.max(rev);
            l.deliveries.push(Delivery {
                revision: rev,
                events,
                node: url.to_owned(),
                reached_before,
            });
        });
    }

    /// Records `url`'s report that every change up to `p` was sent.
    fn progressed(&self, url: &str, p: u64) {
        self.with_log(|l| {
            if p < l.reached {
                l.errors.push(format!(
                    "{url} reported progress to revision {p}, below revision {} the watch had got to",
                    l.reached
                ));
            }
            l.reached = l.reached.max(p);
        });
    }

    /// When the watcher moves on from the member it just connected to on
    /// its own (`None`: never).
    fn switch_at(&mut self) -> Option<Instant> {
        (self.cfg.switch_s_max > 0).then(|| {
            Instant::now() + Duration::from_secs(self.rng.gen_range(1..=self.cfg.switch_s_max))
        })
    }

    /// One gRPC watch stream on `url` (a member's gRPC URL), until it
    /// ends: the watch resumes one past the last revision seen (one more
    /// with `resume_past_last`), as `Last-Event-ID` does over SSE.
    async fn follow_grpc(&mut self, url: &str) -> Ended {
        let (range, start, last) =
            self.with_log(|l| (l.range.clone(), l.start_revision, l.reached));
        let Some(range) = range else {
            return Ended::Fatal("no range".into());
        };
        let from = grpc::start_revision(start, last, self.cfg.resume_past_last);
        let create = grpc::create_request(&range.key, &range.range_end, from);
        let mut stop = self.stop.clone();
        let opened = tokio::select! {
            r = tokio::time::timeout(self.cfg.idle_timeout, grpc::open(url, create, CONNECT_TIMEOUT)) => r,
            _ = stop.wait_for(|s| *s) => return Ended::Stop,
        };
        let mut opened = match opened {
            Err(_) => return Ended::Next("no answer in time".into()),
            Ok(Err(OpenError::Connect(e))) => return Ended::Next(e),
            Ok(Err(OpenError::Status(s))) => return self.failed(url, &s, from),
            Ok(Ok(o)) => o,
        };
        let switch = self.switch_at();
        let mut watch_id = None;
        loop {
            let message = tokio::select! {
                m = tokio::time::timeout(self.cfg.idle_timeout, opened.responses.message()) => m,
                () = until(switch) => return Ended::Next("time to move on".into()),
                _ = stop.wait_for(|s| *s) => return Ended::Stop,
            };
            let resp = match message {
                Err(_) => return Ended::Next(format!("silent for {:?}", self.cfg.idle_timeout)),
                Ok(Err(s)) => return self.failed(url, &s, from),
                Ok(Ok(None)) => return Ended::Next("the stream ended".into()),
                Ok(Ok(Some(r))) => r,
            };
            let observed = match grpc::observe(&resp, watch_id) {
                Ok(o) => o,
                Err(m) => return self.protocol_error(url, m),
            };
            match observed {
                Observation::Created { watch_id: id } => watch_id = Some(id),
                Observation::Changes(revisions) => {
                    for (rev, events) in revisions {
                        self.delivered(url, rev, events);
                    }
                }
                Observation::Progress(p) => self.progressed(url, p),
                Observation::Canceled {
                    compact_revision,
                    reason,
                } => {
                    let why = format!(
                        "canceled (compact_revision {compact_revision}) on starting at {from}: {reason}"
                    );
                    if compact_revision > 0 {
                        self.with_log(|l| l.cancels.push((url.to_owned(), why.clone(), true)));
                        return Ended::Fatal(why);
                    }
                    if reason != grpc::SHUTDOWN_REASON {
                        self.with_log(|l| l.cancels.push((url.to_owned(), why.clone(), false)));
                    }
                    return Ended::Next(why);
                }
            }
        }
    }

    /// A gRPC call or stream of `url` that failed with `s`: a refusal is
    /// recorded (a compaction as a cancel, as over SSE), and the watcher
    /// moves on unless the history is compacted.
    fn failed(&self, url: &str, s: &tonic::Status, from: u64) -> Ended {
        let why = format!("gRPC {:?}: {}", s.code(), s.message());
        if !grpc::is_transport(s) && s.message().contains("compacted") {
            let why = format!("{why} on starting at {from}");
            self.with_log(|l| l.cancels.push((url.to_owned(), why.clone(), true)));
            return Ended::Fatal(why);
        }
        if grpc::is_refusal(s) {
            self.with_log(|l| l.errors.push(format!("{url} answered {why}")));
        }
        Ended::Next(why)
    }

    /// Records a protocol error of `url` and moves on.
    fn bad(&self, url: &str, what: String) -> Option<Ended> {
        Some(self.protocol_error(url, what))
    }

    /// Records a protocol error of `url`; the watcher moves on.
    fn protocol_error(&self, url: &str, what: String) -> Ended {
        let what = format!("{url}: {what}");
        self.with_log(|l| l.errors.push(what.clone()));
        Ended::Next(what)
    }
}

/// Waits until `t` (forever when `None`).
async fn until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
