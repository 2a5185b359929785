//! The clients: concurrent workers doing reads, writes, deletes and
//! compare-and-sets on a small key set through different nodes, recording
//! every operation (invocation and completion times from one monotonic
//! clock, arguments, outcome) into a linearizability [`History`].
//!
//! Requests go through [`raft_client`], one attempt each (the workers
//! choose the node; a retry inside the client would hide what the node
//! answered), no generated idempotency keys. How its results map to
//! outcomes (the API contract in docs/architecture.md):
//!
//! | result | outcome |
//! |---|---|
//! | success | success (a read's value) |
//! | 404 on a read | absent |
//! | 404 on a delete | recorded as a read that saw the key absent |
//! | 412 on a conditional write ([`CasResult::Mismatch`]) | [`Outcome::CasFailed`] |
//! | [`Error::Unavailable`] (503) | [`Outcome::Failed`]: definitely not applied |
//! | [`Error::Connect`] (nothing sent) | [`Outcome::Failed`] |
//! | [`Error::OutcomeUnknown`] (504, a timeout, a lost connection), any other error | [`Outcome::Indeterminate`] |
//!
//! A compare-and-set is a read followed by `PUT` with `If-Match: "<rev>"`
//! (or `If-None-Match: *` when the read found the key absent). Every write
//! writes a value no other write writes, so a revision names exactly one
//! value and the HTTP revision check is the checker's value comparison.
//!
//! With [`ClientConfig::idempotency_window`] set, every write carries an
//! `Idempotency-Key`, and some successful writes are sent again, token and
//! body unchanged: two key epochs later, when no operation on their keys
//! can still be in flight (so a value written twice cannot confuse a
//! compare-and-set's check); and, on keys of a worker's own outside the
//! checked history, at once (well inside the window: the node must answer
//! with the first revision). The answer tells which way the node went: the first write's
//! revision means it recognised the retry, and nothing is recorded; a new
//! revision means it applied the write again, which is recorded as a write
//! of that value and is allowed only when the two revisions are more than
//! the window apart; anything else is recorded as a write whose outcome is
//! unknown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use raft_client::{
    CasResult, Client, Error, IdempotencyKeys, ReadConsistency, RetryPolicy, WriteOptions,
};
use raft_linearizability::{History, Op, Operation, Outcome};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::ChaosError;
use crate::watch::check::{Change, WriteOutcome, WriteRecord};

/// The node URLs the workers pick from, updated when nodes are replaced.
pub type SharedUrls = Arc<RwLock<Vec<String>>>;

/// Settings of the client workers.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Number of concurrent workers.
    pub workers: u64,
    /// Keys per epoch.
    pub keys: u64,
    /// Every this many seconds the workers move to a fresh set of keys,
    /// which bounds the operations per key the checker must order.
    pub key_epoch_s: u64,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Pause between one worker's operations, at most.
    pub think_ms_max: u64,
    /// `consistency` of the workers' reads: `mixed` (each read is
    /// `linearizable` or `lease` at random: both are linearizable by
    /// contract, the lease within its clock-drift bound), `linearizable`
    /// or `lease` alone, or `stale` to check that the checker catches what
    /// stale reads are allowed to return.
    pub read_consistency: String,
    /// The nodes' `--idempotency-window`: when set, writes carry tokens and
    /// are sent again later (see the module docs).
    pub idempotency_window: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            workers: 5,
            keys: 5,
            key_epoch_s: 10,
            request_timeout: Duration::from_secs(5),
            think_ms_max: 20,
            read_consistency: "mixed".into(),
            idempotency_window: None,
        }
    }
}

/// The shared recording state of a run.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Zero of the clock all times are taken from.
    start: Instant,
    /// The history being recorded.
    history: Arc<Mutex<History>>,
    /// HTTP results that the contract does not name, by description.
    unexpected: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Repeated writes by what the node did: `recognised`, `applied again`.
    repeats: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// Repeated writes applied again inside the idempotency window.
    repeat_violations: Arc<Mutex<Vec<String>>>,
    /// Every write with its outcome and revision, private keys too (for
    /// the watch checker).
    writes: Arc<Mutex<Vec<WriteRecord>>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            history: Arc::default(),
            unexpected: Arc::default(),
            repeats: Arc::default(),
            repeat_violations: Arc::default(),
            writes: Arc::default(),
        }
    }

    /// Records a write for the watch checker: acknowledged at `rev`, or
    /// the outcome of a failure.
    pub fn push_write(&self, client: u64, key: &str, change: Change, rev: Result<u64, &Outcome>) {
        let outcome = match rev {
            Ok(r) => WriteOutcome::Acked(r),
            Err(Outcome::Failed) => WriteOutcome::Failed,
            Err(_) => WriteOutcome::Unknown,
        };
        if let Ok(mut w) = self.writes.lock() {
            w.push(WriteRecord {
                client,
                key: key.as_bytes().to_vec(),
                change,
                outcome,
            });
        }
    }

    /// Every write recorded so far.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.writes.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// The zero of the recorder's clock.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records a finished operation.
    pub fn push(&self, op: Operation) {
        if let Ok(mut h) = self.history.lock() {
            h.push(op);
        }
    }

    fn unexpected(&self, what: String) {
        if let Ok(mut u) = self.unexpected.lock() {
            *u.entry(what).or_default() += 1;
        }
    }

    fn repeat(&self, what: &'static str) {
        if let Ok(mut r) = self.repeats.lock() {
            *r.entry(what).or_default() += 1;
        }
    }

    /// Records a violation when a repeat applied again at `rev` was within
    /// `window` entries of its first application at `first`.
    #[allow(clippy::too_many_arguments)]
    fn repeat_violation(
        &self,
        key: &str,
        token: &str,
        value: &[u8],
        first: u64,
        rev: u64,
        window: u64,
        client: u64,
    ) {
        if rev.saturating_sub(first) > window {
            return;
        }
        if let Ok(mut v) = self.repeat_violations.lock() {
            v.push(format!(
                "client {client} sent {key}={} again with token {token}: applied at {rev}, \
                 although its first application at {first} is within the window of \
                 {window} entries",
                String::from_utf8_lossy(value)
            ));
        }
    }

    /// Repeated writes (same token and body) by what the node did with them.
    pub fn repeats(&self) -> BTreeMap<&'static str, u64> {
        self.repeats.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Repeated writes that a node applied again although their first
    /// application was within the idempotency window.
    pub fn repeat_violations(&self) -> Vec<String> {
        self.repeat_violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// A copy of the history recorded so far.
    pub fn history(&self) -> History {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Unexpected results seen so far.
    pub fn unexpected_results(&self) -> BTreeMap<String, u64> {
        self.unexpected
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }
}

/// The key `index` of epoch `epoch`.
pub fn key_name(epoch: u64, index: u64) -> String {
    format!("e{epoch}-k{index}")
}

/// A client of the node at `url`: one attempt per request, no generated
/// idempotency keys.
///
/// # Errors
///
/// When the URL is malformed.
pub fn node_client(
    url: &str,
    request_timeout: Duration,
    idle_per_host: usize,
) -> Result<Client, ChaosError> {
    Client::builder([url])
        .request_timeout(request_timeout)
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(idle_per_host)
        .retry(RetryPolicy::none())
        .idempotency_keys(IdempotencyKeys::Off)
        .build()
        .map_err(|e| ChaosError::Cluster(format!("client of {url}: {e}")))
}

/// The outcome of a failed request; `what` names it for the unexpected
/// results, which are counted.
fn failure_outcome(rec: &Recorder, what: &str, e: &Error) -> Outcome {
    match e {
        Error::Unavailable { .. } | Error::Connect { .. } => Outcome::Failed,
        Error::OutcomeUnknown { .. } => Outcome::Indeterminate,
        other => {
            let text: String = other.to_string().chars().take(200).collect();
            rec.unexpected(format!("{what} {text}"));
            Outcome::Indeterminate
        }
    }
}

/// One client worker.
#[derive(Debug)]
pub struct Worker {
    /// The worker's id (client id in the history; 0 is the harness).
    pub id: u64,
    /// The nodes' base URLs (the nemesis replaces nodes).
    pub urls: SharedUrls,
    /// Its settings.
    pub cfg: ClientConfig,
    /// Its random choices.
    pub rng: ChaCha8Rng,
    /// A client per node URL, made when first used.
    clients: BTreeMap<String, Client>,
    /// Where operations are recorded.
    pub rec: Recorder,
    /// Counter for unique values.
    seq: u64,
    /// Successful writes with a token, to send again: (epoch, key, value,
    /// token, revision), oldest first.
    sent: std::collections::VecDeque<(u64, String, Vec<u8>, String, u64)>,
}

impl Worker {
    /// A worker whose choices follow from `seed`.
    ///
    /// # Errors
    ///
    /// None today; kept for clients that need building.
    pub fn new(
        id: u64,
        seed: u64,
        urls: SharedUrls,
        cfg: ClientConfig,
        rec: Recorder,
    ) -> Result<Self, ChaosError> {
        Ok(Self {
            id,
            urls,
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed ^ (id.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
            clients: BTreeMap::new(),
            rec,
            seq: 0,
            sent: std::collections::VecDeque::new(),
        })
    }

    fn value(&mut self) -> Vec<u8> {
        self.seq += 1;
        format!("c{}-{}", self.id, self.seq).into_bytes()
    }

    /// The client of `url`; `None` (counted as unexpected) when the URL is
    /// malformed.
    fn client(&mut self, url: &str) -> Option<Client> {
        if let Some(c) = self.clients.get(url) {
            return Some(c.clone());
        }
        match node_client(url, self.cfg.request_timeout, 4) {
            Ok(c) => {
                self.clients.insert(url.to_owned(), c.clone());
                Some(c)
            }
            Err(e) => {
                self.rec.unexpected(e.to_string());
                None
            }
        }
    }

    /// Runs until `stop` is set.
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let urls = self.urls.read().map(|u| u.clone()).unwrap_or_default();
            let url = (!urls.is_empty()).then(|| urls[self.rng.gen_range(0..urls.len())].clone());
            let Some(c) = url.and_then(|u| self.client(&u)) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let epoch = self.rec.now_us() / 1_000_000 / self.cfg.key_epoch_s.max(1);
            let key = key_name(epoch, self.rng.gen_range(0..self.cfg.keys.max(1)));
            let old = self
                .sent
                .iter()
                // Two epochs on: no operation on those keys is in flight.
                .position(|(e, ..)| *e + 2 < epoch)
                .filter(|_| self.rng.gen_bool(0.1));
            if let Some(i) = old {
                if let Some(earlier) = self.sent.remove(i) {
                    self.repeat(&c, earlier).await;
                }
            } else {
                match self.rng.gen_range(0..100) {
                    0..=39 => {
                        self.read(&c, &key).await;
                    }
                    40..=69 => self.write(&c, &key, epoch).await,
                    70..=77 => self.delete(&c, &key).await,
                    _ => {
                        if let Some(seen) = self.read(&c, &key).await {
                            self.cas(&c, &key, seen).await;
                        }
                    }
                }
            }
            let think = self.rng.gen_range(0..=self.cfg.think_ms_max);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
    }

    fn record(&self, key: &str, op: Op, invoke: u64, outcome: Outcome) {
        let complete = self.rec.now_us();
        self.rec.push(Operation {
            client: self.id,
            key: key.as_bytes().to_vec(),
            op,
            invoke,
            complete: Some(complete.max(invoke)),
            outcome,
        });
    }

    /// A linearizable read; returns what it saw (value and revision) when it
    /// got a definite answer.
    async fn read(&mut self, c: &Client, key: &str) -> Option<Option<(Vec<u8>, u64)>> {
        let consistency = match self.cfg.read_consistency.as_str() {
            "mixed" if self.rng.gen_bool(0.5) => ReadConsistency::Lease,
            "mixed" => ReadConsistency::Linearizable,
            other => other.parse().unwrap_or_default(),
        };
        let invoke = self.rec.now_us();
        let (outcome, seen) = match c.get_with(key, consistency).await {
            Ok(Some(e)) => {
                let v = e.value.to_vec();
                (Outcome::ReadOk(Some(v.clone())), Some(Some((v, e.rev))))
            }
            Ok(None) => (Outcome::ReadOk(None), Some(None)),
            Err(e) => (failure_outcome(&self.rec, "read", &e), None),
        };
        self.record(key, Op::Read, invoke, outcome);
        seen
    }

    async fn write(&mut self, c: &Client, key: &str, epoch: u64) {
        let value = self.value();
        let token = self
            .cfg
            .idempotency_window
            .map(|_| format!("w{}-{}", self.id, self.seq));
        let mut opts = WriteOptions::default();
        if let Some(t) = &token {
            opts = opts.idempotency_key(t.clone());
        }
        let invoke = self.rec.now_us();
        let result = c.put_with(key, value.clone(), &opts).await;
        let outcome = match &result {
            Ok(_) => Outcome::WriteOk,
            Err(e) => failure_outcome(&self.rec, "write", e),
        };
        let put = Change::Put(value.clone());
        let rev = result.as_ref().map(|r| *r).map_err(|_| &outcome);
        self.rec.push_write(self.id, key, put, rev);
        self.record(key, Op::Write(value.clone()), invoke, outcome);
        if let (Some(t), Ok(rev)) = (token, result) {
            self.sent.push_back((epoch, key.to_owned(), value, t, rev));
            if self.sent.len() > 256 {
                self.sent.pop_front();
            }
            if self.rng.gen_bool(0.1) {
                self.private_repeat(c).await;
            }
        }
    }

    /// Writes a key of this worker's own (no other operation touches it,
    /// and it is not part of the checked history) with a token and sends
    /// the same write again at once: well inside the window, the node must
    /// recognise it.
    async fn private_repeat(&mut self, c: &Client) {
        let Some(window) = self.cfg.idempotency_window else {
            return;
        };
        let value = self.value();
        let key = format!("r{}-{}", self.id, self.seq);
        let token = format!("p{}-{}", self.id, self.seq);
        let opts = WriteOptions::default().idempotency_key(token.clone());
        let put = || Change::Put(value.clone());
        let first = match c.put_with(&key, value.clone(), &opts).await {
            Ok(first) => first,
            Err(e) => {
                let outcome = failure_outcome(&self.rec, "write", &e);
                self.rec.push_write(self.id, &key, put(), Err(&outcome));
                return;
            }
        };
        self.rec.push_write(self.id, &key, put(), Ok(first));
        match c.put_with(&key, value.clone(), &opts).await {
            Ok(rev) if rev == first => self.rec.repeat("recognised"),
            Ok(rev) => {
                self.rec.repeat("applied again");
                self.rec.push_write(self.id, &key, put(), Ok(rev));
                self.rec
                    .repeat_violation(&key, &token, &value, first, rev, window, self.id);
            }
            Err(e) => {
                let outcome = failure_outcome(&self.rec, "write", &e);
                self.rec.push_write(self.id, &key, put(), Err(&outcome));
            }
        }
    }

    /// Sends an earlier successful write again, token and body unchanged
    /// (see the module docs).
    async fn repeat(&mut self, c: &Client, earlier: (u64, String, Vec<u8>, String, u64)) {
        let (_, key, value, token, first_rev) = earlier;
        let Some(window) = self.cfg.idempotency_window else {
            return;
        };
        let invoke = self.rec.now_us();
        let opts = WriteOptions::default().idempotency_key(token.clone());
        let outcome = match c.put_with(&key, value.clone(), &opts).await {
            Ok(rev) if rev == first_rev => {
                // Recognised: the first write's answer, no new effect.
                self.rec.repeat("recognised");
                return;
            }
            Ok(rev) => {
                self.rec.repeat("applied again");
                self.rec
                    .repeat_violation(&key, &token, &value, first_rev, rev, window, self.id);
                let put = Change::Put(value.clone());
                self.rec.push_write(self.id, &key, put, Ok(rev));
                Outcome::WriteOk
            }
            Err(e) => {
                let outcome = failure_outcome(&self.rec, "write", &e);
                let put = Change::Put(value.clone());
                self.rec.push_write(self.id, &key, put, Err(&outcome));
                outcome
            }
        };
        self.record(&key, Op::Write(value), invoke, outcome);
    }

    async fn delete(&mut self, c: &Client, key: &str) {
        let invoke = self.rec.now_us();
        let outcome = match c.delete(key).await {
            // Deleting an absent key changes nothing: it is a read that saw
            // the key absent.
            Ok(None) => {
                self.record(key, Op::Read, invoke, Outcome::ReadOk(None));
                return;
            }
            Ok(Some(rev)) => {
                self.rec.push_write(self.id, key, Change::Delete, Ok(rev));
                Outcome::DeleteOk
            }
            Err(e) => {
                let outcome = failure_outcome(&self.rec, "write", &e);
                self.rec
                    .push_write(self.id, key, Change::Delete, Err(&outcome));
                outcome
            }
        };
        self.record(key, Op::Delete, invoke, outcome);
    }

    async fn cas(&mut self, c: &Client, key: &str, seen: Option<(Vec<u8>, u64)>) {
        let new = self.value();
        let (expected, rev) = match seen {
            Some((value, rev)) => (Some(value), Some(rev)),
            None => (None, None),
        };
        let invoke = self.rec.now_us();
        let put = Change::Put(new.clone());
        let outcome = match c.compare_and_set(key, rev, new.clone()).await {
            Ok(CasResult::Swapped(r)) => {
                self.rec.push_write(self.id, key, put, Ok(r));
                Outcome::CasOk
            }
            Ok(CasResult::Mismatch(_)) => Outcome::CasFailed,
            Err(e) => {
                let outcome = failure_outcome(&self.rec, "write", &e);
                self.rec.push_write(self.id, key, put, Err(&outcome));
                outcome
            }
        };
        self.record(key, Op::Cas { expected, new }, invoke, outcome);
    }
}

/// A linearizable read by the harness (client 0) through `urls` in turn
/// (clients of `base`'s settings), recorded in the history; retried until
/// it gets a definite answer or `timeout`. Returns the value seen.
pub async fn final_read(
    base: &Client,
    rec: &Recorder,
    urls: &[String],
    key: &str,
    timeout: Duration,
) -> Option<Option<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut i = 0usize;
    while Instant::now() < deadline {
        let url = &urls[i % urls.len().max(1)];
        i += 1;
        let invoke = rec.now_us();
        let seen = match base.at(url) {
            Ok(c) => match c.get(key).await {
                Ok(v) => Some(v.map(|e| e.value.to_vec())),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if let Some(v) = seen {
            rec.push(Operation {
                client: 0,
                key: key.as_bytes().to_vec(),
                op: Op::Read,
                invoke,
                complete: Some(rec.now_us().max(invoke)),
                outcome: Outcome::ReadOk(v.clone()),
            });
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
