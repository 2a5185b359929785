//! One lease client: grants short leases, attaches unique keys to them,
//! and keeps them alive for a while, never, or revokes them, reading its
//! keys (linearizable) throughout; everything it learns goes into a
//! [`LeaseRecord`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::check::{LeaseRecord, Plan, Promise, ReadObs};
use super::LeaseConfig;
use crate::client::SharedUrls;

/// Keys attached to each lease.
const KEYS_PER_LEASE: usize = 2;

/// How often the client reads its keys.
const READ_EVERY: Duration = Duration::from_millis(300);

/// What one request got.
enum Answer {
    /// 2xx with its JSON body (`Null` when there is none).
    Ok(Value),
    /// 404: no such lease (or key).
    NotFound,
    /// Anything else: refused, timed out, another status.
    Other,
}

/// One lease client.
pub(super) struct LeaseClient {
    pub(super) n: u64,
    pub(super) cfg: LeaseConfig,
    pub(super) rng: ChaCha8Rng,
    pub(super) urls: SharedUrls,
    pub(super) start: Instant,
    pub(super) out: Arc<Mutex<Vec<LeaseRecord>>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) http: reqwest::Client,
}

impl LeaseClient {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn url(&mut self) -> String {
        let urls = self.urls.read().map(|u| u.clone()).unwrap_or_default();
        if urls.is_empty() {
            return String::new();
        }
        urls[self.rng.gen_range(0..urls.len())].clone()
    }

    async fn call(&mut self, method: reqwest::Method, path: &str, body: Option<String>) -> Answer {
        let url = format!("{}{path}", self.url());
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            if path == "/v1/leases" {
                // A grant's body is JSON, and the node requires it said so.
                req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            req = req.body(b);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Answer::Ok(r.json().await.unwrap_or(Value::Null)),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Answer::NotFound,
            _ => Answer::Other,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Runs leases one after another until stopped.
    pub(super) async fn run(mut self) {
        let mut l = 0;
        while !self.stopped() {
            l += 1;
            if let Some(rec) = self.one_lease(l).await {
                if let Ok(mut out) = self.out.lock() {
                    out.push(rec);
                }
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Grants lease number `l`, attaches its keys and follows its plan.
    /// `None` when the grant failed.
    async fn one_lease(&mut self, l: u64) -> Option<LeaseRecord> {
        let send = self.now_us();
        let body = format!("{{\"ttl\":{}}}", self.cfg.ttl_s);
        let Answer::Ok(v) = self
            .call(reqwest::Method::POST, "/v1/leases", Some(body))
            .await
        else {
            return None;
        };
        let id = v.get("id").and_then(Value::as_u64)?;
        let ttl_s = v.get("ttl").and_then(Value::as_u64)? + self.cfg.believe_extra_s;
        let plan = match self.rng.gen_range(0..4) {
            0 | 1 => Plan::KeepAlive,
            2 => Plan::Never,
            _ => Plan::Revoke,
        };
        let mut rec = LeaseRecord {
            client: self.n,
            id,
            plan,
            keys: Vec::new(),
            maybe_keys: Vec::new(),
            promises: vec![Promise {
                send_us: send,
                ttl_s,
            }],
            reads: Vec::new(),
            keepalive_gone: Vec::new(),
            revoked: None,
            late_puts: Vec::new(),
            last_ack_us: self.now_us(),
        };
        for k in 0..KEYS_PER_LEASE {
            let key = format!("{}c{}-l{l}-k{k}", super::KEY_PREFIX, self.n);
            let path = format!("/v1/kv/{key}?lease={id}");
            match self
                .call(reqwest::Method::PUT, &path, Some(key.clone()))
                .await
            {
                Answer::Ok(_) => rec.keys.push(key),
                Answer::NotFound => {}
                Answer::Other => rec.maybe_keys.push(key),
            }
        }
        self.follow(&mut rec, ttl_s).await;
        Some(rec)
    }

    /// Follows the plan for a while, reading the keys; keep-alives every
    /// third of the TTL believed (`ttl_s`).
    async fn follow(&mut self, rec: &mut LeaseRecord, ttl_s: u64) {
        let hold = Duration::from_millis(match rec.plan {
            Plan::KeepAlive => self.rng.gen_range(2 * ttl_s * 1000..=4 * ttl_s * 1000),
            _ => self.rng.gen_range(ttl_s * 300..=ttl_s * 1500),
        });
        let keepalive_every = Duration::from_millis(ttl_s * 1000 / 3);
        let t0 = Instant::now();
        let mut next_keepalive = t0 + keepalive_every;
        let mut gone = false;
        while t0.elapsed() < hold && !self.stopped() && !gone {
            if rec.plan == Plan::KeepAlive && Instant::now() >= next_keepalive {
                next_keepalive = Instant::now() + keepalive_every;
                gone |= self.keepalive(rec).await;
            }
            gone |= self.read_keys(rec).await;
            tokio::time::sleep(READ_EVERY).await;
        }
        if rec.plan == Plan::Revoke && !gone {
            let send = self.now_us();
            let path = format!("/v1/leases/{}", rec.id);
            if let Answer::Ok(v) = self.call(reqwest::Method::DELETE, &path, None).await {
                if let Some(r) = v.get("rev").and_then(Value::as_u64) {
                    rec.revoked = Some((send, r));
                    gone = true;
                }
            }
        }
        if gone {
            self.late_put(rec).await;
        }
    }

    /// One keep-alive; true when the node says the lease is gone.
    async fn keepalive(&mut self, rec: &mut LeaseRecord) -> bool {
        let send = self.now_us();
        let path = format!("/v1/leases/{}/keepalive", rec.id);
        match self.call(reqwest::Method::POST, &path, None).await {
            Answer::Ok(v) => {
                if let Some(ttl) = v.get("ttl").and_then(Value::as_u64) {
                    let ttl_s = ttl + self.cfg.believe_extra_s;
                    rec.promises.push(Promise {
                        send_us: send,
                        ttl_s,
                    });
                    rec.last_ack_us = self.now_us();
                }
                false
            }
            Answer::NotFound => {
                rec.keepalive_gone.push((send, self.now_us()));
                true
            }
            Answer::Other => false,
        }
    }

    /// Reads every attached key; true when one was absent.
    async fn read_keys(&mut self, rec: &mut LeaseRecord) -> bool {
        let mut absent = false;
        for key in rec.keys.clone() {
            let send_us = self.now_us();
            let path = format!("/v1/kv/{key}?consistency=linearizable");
            let present = match self.call(reqwest::Method::GET, &path, None).await {
                Answer::Ok(_) => true,
                Answer::NotFound => false,
                Answer::Other => continue,
            };
            absent |= !present;
            let recv_us = self.now_us();
            rec.reads.push(ReadObs {
                key,
                send_us,
                recv_us,
                present,
            });
        }
        absent
    }

    /// The lease is known gone: a put with it must be refused.
    async fn late_put(&mut self, rec: &mut LeaseRecord) {
        let key = format!("{}c{}-late-{}", super::KEY_PREFIX, self.n, rec.id);
        let path = format!("/v1/kv/{key}?lease={}", rec.id);
        match self
            .call(reqwest::Method::PUT, &path, Some(key.clone()))
            .await
        {
            Answer::Ok(_) => rec.late_puts.push(key),
            Answer::Other => rec.maybe_keys.push(key),
            Answer::NotFound => {}
        }
    }
}
