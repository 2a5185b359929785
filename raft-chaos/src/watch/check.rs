//! The watch checker's verdict on one watch, from the writes the clients
//! made (every one with its outcome, and its revision when acknowledged)
//! and what the watch delivered: pure functions, so hand-made histories
//! test them.
//!
//! A watch that covers a key must show every acknowledged write of it at
//! or after its start, up to the revision the watch got to, exactly once
//! and at the revision the write was acknowledged with; a write whose
//! outcome is unknown at most once; and nothing else: no write that
//! definitely failed, nothing no client wrote, no key outside its range.
//! Revisions strictly increase along a watch, a progress report never
//! goes back below a revision already delivered, and no change at or
//! below a progress report's revision comes after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a write does to its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// Sets the value.
    Put(Vec<u8>),
    /// Deletes the key.
    Delete,
}

/// What the client learned of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied, at this revision.
    Acked(u64),
    /// Maybe applied (a timeout, a lost connection, 504).
    Unknown,
    /// Definitely not applied (503, nothing sent).
    Failed,
}

/// One write of a client, whatever its outcome. A compare-and-set that
/// found another revision (412) and a delete of an absent key (404)
/// change nothing and are not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    /// The client (worker) that made it.
    pub client: u64,
    /// The key.
    pub key: Vec<u8>,
    /// What it does.
    pub change: Change,
    /// What the client learned.
    pub outcome: WriteOutcome,
}

/// The keys a watch covers, with etcd's conventions: an empty `range_end`
/// is `key` alone, `"\0"` every key from `key` on, else `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The first key.
    pub key: Vec<u8>,
    /// The end (see the type's documentation).
    pub range_end: Vec<u8>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self {
            key: vec![0],
            range_end: vec![0],
        }
    }

    /// Every key starting with `prefix` (not empty).
    pub fn prefix(prefix: &str) -> Self {
        let mut end = prefix.as_bytes().to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                break;
            }
        }
        if end.is_empty() {
            end.push(0);
        }
        Self {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
        }
    }

    /// `[key, end)`.
    pub fn between(key: &str, end: &str) -> Self {
        Self {
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    /// Whether the range holds `k`.
    pub fn covers(&self, k: &[u8]) -> bool {
        match &self.range_end[..] {
            [] => k == self.key,
            [0] => k >= &self.key[..],
            end => k >= &self.key[..] && k < end,
        }
    }

    /// The range as the watch's query shows it.
    pub fn describe(&self) -> String {
        let show = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
        match &self.range_end[..] {
            [] => format!("key {}", show(&self.key)),
            [0] if self.key == [0] => "every key".into(),
            [0] => format!("keys from {}", show(&self.key)),
            end => format!("keys [{}, {})", show(&self.key), show(end)),
        }
    }
}

/// One key change a watch delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedEvent {
    /// The key.
    pub key: Vec<u8>,
    /// Its change.
    pub change: Change,
}

/// The changes of one revision, as a watch delivered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The revision (the event's `id`).
    pub revision: u64,
    /// Its changes.
    pub events: Vec<WatchedEvent>,
    /// The node that sent it (its URL).
    pub node: String,
    /// How far the watch was told it had got (`WatchLog::reached`, by a
    /// change or a progress event) when this arrived.
    pub reached_before: u64,
}

/// The watch API a watcher follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchFront {
    /// `GET /v1/watch`, server-sent events.
    #[default]
    Sse,
    /// etcd's v3 gRPC `Watch.Watch` stream.
    Grpc,
}

impl WatchFront {
    /// Its name in notes and `watches.json`.
    pub fn name(self) -> &'static str {
        match self {
            WatchFront::Sse => "SSE",
            WatchFront::Grpc => "gRPC",
        }
    }
}

/// What one watcher saw during a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchLog {
    /// The watcher's number (from 1).
    pub watcher: u64,
    /// The API it follows.
    pub front: WatchFront,
    /// Its keys.
    pub range: Option<KeyRange>,
    /// The first revision it asked for.
    pub start_revision: u64,
    /// The change events, in the order they arrived.
    pub deliveries: Vec<Delivery>,
    /// The last revision it was told it has every change up to (the last
    /// `id`, of a change or a progress event; over gRPC the last event's
    /// `mod_revision` or a progress response's header revision).
    pub reached: u64,
    /// The connections it made: (node URL, `Last-Event-ID` sent, how it
    /// ended); over gRPC the node's gRPC URL and the last revision seen
    /// (the watch started one past it).
    pub connections: Vec<(String, u64, String)>,
    /// Cancels it got that were not a node shutting down, and answers
    /// refusing it (410 `revision-compacted`): (node, reason,
    /// whether it was a compaction).
    pub cancels: Vec<(String, String, bool)>,
    /// What the protocol got wrong (a progress event below a revision
    /// already delivered, an event without a revision, bad JSON).
    pub errors: Vec<String>,
}

/// A finding of the watch checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFinding {
    /// The watcher (0: all of them, a finding about the writes).
    pub watcher: u64,
    /// The key, when the finding is about one.
    pub key: Option<Vec<u8>>,
    /// The revision, when the finding is about one.
    pub revision: Option<u64>,
    /// What is wrong, readable.
    pub detail: String,
}

/// The writes, indexed for the checks.
#[derive(Debug, Default)]
pub struct WriteIndex<'a> {
    writes: &'a [WriteRecord],
    /// Acknowledged writes by revision.
    acked: BTreeMap<u64, usize>,
    /// Writes of unknown outcome by key and change.
    unknown: HashMap<(&'a [u8], &'a Change), Vec<usize>>,
    /// Every write by key and change (for what a mismatch resembles).
    all: HashMap<(&'a [u8], &'a Change), Vec<usize>>,
    /// Two writes acknowledged at one revision.
    conflicts: Vec<WatchFinding>,
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show_change(key: &[u8], c: &Change) -> String {
    match c {
        Change::Put(v) => format!("put {}={}", show(key), show(v)),
        Change::Delete => format!("delete {}", show(key)),
    }
}

impl<'a> WriteIndex<'a> {
    /// Indexes `writes`.
    pub fn new(writes: &'a [WriteRecord]) -> Self {
        let mut ix = Self {
            writes,
            ..Self::default()
        };
        for (i, w) in writes.iter().enumerate() {
            let k = (&w.key[..], &w.change);
            ix.all.entry(k).or_default().push(i);
            match w.outcome {
                WriteOutcome::Acked(rev) => {
                    if let Some(&j) = ix.acked.get(&rev) {
                        ix.conflicts.push(WatchFinding {
                            watcher: 0,
                            key: Some(w.key.clone()),
                            revision: Some(rev),
                            detail: format!(
                                "two writes acknowledged at revision {rev}: {} by client {} and {} by client {}",
                                show_change(&writes[j].key, &writes[j].change),
                                writes[j].client,
                                show_change(&w.key, &w.change),
                                w.client
                            ),
                        });
                    } else {
                        ix.acked.insert(rev, i);
                    }
                }
                WriteOutcome::Unknown => ix.unknown.entry(k).or_default().push(i),
                WriteOutcome::Failed => {}
            }
        }
        ix
    }

    /// Findings about the writes themselves (two acknowledged at one
    /// revision).
    pub fn conflicts(&self) -> &[WatchFinding] {
        &self.conflicts
    }
}

/// The state of checking one watch.
struct Pass<'a, 'w> {
    ix: &'a WriteIndex<'w>,
    log: &'a WatchLog,
    /// Acknowledged revisions delivered.
    seen: BTreeSet<u64>,
    /// Unknown-outcome writes delivered, with the revision.
    used: HashMap<usize, u64>,
    findings: Vec<WatchFinding>,
}

impl Pass<'_, '_> {
    fn find(&mut self, key: &[u8], revision: u64, detail: String) {
        self.findings.push(WatchFinding {
            watcher: self.log.watcher,
            key: Some(key.to_vec()),
            revision: Some(revision),
            detail: format!("watcher {}: {detail}", self.log.watcher),
        });
    }

    /// Checks one delivered event of `d`.
    fn event(&mut self, d: &Delivery, e: &WatchedEvent) {
        let rev = d.revision;
        let what = show_change(&e.key, &e.change);
        let range = self.log.range.as_ref();
        if range.is_some_and(|r| !r.covers(&e.key)) {
            let r = range.map(KeyRange::describe).unwrap_or_default();
            self.find(
                &e.key,
                rev,
                format!(
                    "{what} at revision {rev} (from {}) is outside the watch's {r}",
                    d.node
                ),
            );
        }
        if let Some(&i) = self.ix.acked.get(&rev) {
            let w = &self.ix.writes[i];
            if w.key == e.key && w.change == e.change {
                if !self.seen.insert(rev) {
                    self.find(
                        &e.key,
                        rev,
                        format!("{what} at revision {rev} delivered twice (from {})", d.node),
                    );
                }
            } else {
                let acked = show_change(&w.key, &w.change);
                self.find(&e.key, rev, format!(
                    "{what} at revision {rev} (from {}), but the write acknowledged at {rev} was {acked} by client {}",
                    d.node, w.client
                ));
            }
            return;
        }
        let key = (&e.key[..], &e.change);
        let free = self
            .ix
            .unknown
            .get(&key)
            .and_then(|c| c.iter().find(|i| !self.used.contains_key(i)).copied());
        if let Some(i) = free {
            self.used.insert(i, rev);
            return;
        }
        let detail = self.explain(&e.key, &e.change, rev);
        self.find(
            &e.key,
            rev,
            format!("{what} at revision {rev} (from {}): {detail}", d.node),
        );
    }

    /// Why an event at `rev` that matched nothing is wrong.
    fn explain(&self, key: &[u8], change: &Change, rev: u64) -> String {
        let idxs = self
            .ix
            .all
            .get(&(key, change))
            .map_or(&[][..], Vec::as_slice);
        if idxs.is_empty() {
            return "no client wrote it (a phantom)".into();
        }
        let mut parts = Vec::new();
        for &idx in idxs {
            let w = &self.ix.writes[idx];
            parts.push(match w.outcome {
                WriteOutcome::Acked(r) if self.seen.contains(&r) => format!(
                    "client {}'s write, acknowledged at {r}, was delivered already (a duplicate)",
                    w.client
                ),
                WriteOutcome::Acked(r) => format!(
                    "client {}'s write was acknowledged at revision {r}, not {rev}",
                    w.client
                ),
                WriteOutcome::Unknown => match self.used.get(&idx) {
                    Some(r) => format!(
                        "client {}'s write of unknown outcome was delivered already at {r} (twice)",
                        w.client
                    ),
                    None => format!("client {}'s write of unknown outcome", w.client),
                },
                WriteOutcome::Failed => format!(
                    "client {}'s write definitely failed (503 or never sent)",
                    w.client
                ),
            });
        }
        parts.join("; ")
    }
}

/// Checks one watch against the writes: see the module documentation.
/// `target` is the revision the watch should have got to (the store's
/// after the run); `compaction_expected` when the run compacts on purpose
/// (a watch canceled for a compacted start is then no finding).
pub fn check_watch(
    ix: &WriteIndex<'_>,
    log: &WatchLog,
    target: u64,
    compaction_expected: bool,
) -> Vec<WatchFinding> {
    let mut p = Pass {
        ix,
        log,
        seen: BTreeSet::new(),
        used: HashMap::new(),
        findings: Vec::new(),
    };
    let mut last = 0u64;
    for d in &log.deliveries {
        let key = d.events.first().map(|e| e.key.clone()).unwrap_or_default();
        if d.revision <= last {
            p.find(
                &key,
                d.revision,
                format!(
                    "revision {} (from {}) after revision {last}: revisions must strictly increase",
                    d.revision, d.node
                ),
            );
        }
        if d.revision < log.start_revision {
            p.find(
                &key,
                d.revision,
                format!(
                    "revision {} is below the watch's start revision {}",
                    d.revision, log.start_revision
                ),
            );
        }
        if d.revision > last && d.revision <= d.reached_before {
            p.find(
                &key,
                d.revision,
                format!(
                    "revision {} (from {}) after the watch was told it had every change up to revision {} \
                     (by a change or a progress event): nothing at or below such a revision may follow",
                    d.revision, d.node, d.reached_before
                ),
            );
        }
        last = last.max(d.revision);
        for e in &d.events {
            p.event(d, e);
        }
    }
    missing(&mut p, target);
    let w = log.watcher;
    for (node, reason, compacted) in &log.cancels {
        if *compacted && compaction_expected {
            continue;
        }
        p.findings.push(WatchFinding {
            watcher: w,
            key: None,
            revision: None,
            detail: format!("watcher {w}: {node} canceled the watch: {reason}"),
        });
    }
    for e in &log.errors {
        p.findings.push(WatchFinding {
            watcher: w,
            key: None,
            revision: None,
            detail: format!("watcher {w}: {e}"),
        });
    }
    p.findings
}

/// Acknowledged writes the watch covers, from its start up to where it
/// got, that it did not deliver; and a watch that did not get to `target`.
fn missing(p: &mut Pass<'_, '_>, target: u64) {
    let log = p.log;
    let Some(range) = &log.range else { return };
    let upto = log.reached;
    let lost: Vec<(u64, usize)> =
        p.ix.acked
            .range(log.start_revision.max(1)..=upto)
            .filter(|(rev, &i)| range.covers(&p.ix.writes[i].key) && !p.seen.contains(rev))
            .map(|(&rev, &i)| (rev, i))
            .collect();
    for (rev, i) in lost {
        let w = &p.ix.writes[i];
        let what = show_change(&w.key, &w.change);
        p.find(&w.key, rev, format!(
            "{what} by client {}, acknowledged at revision {rev}, is missing (the watch got to revision {upto})",
            w.client
        ));
    }
    if upto < target {
        let behind =
            p.ix.acked
                .range(upto + 1..=target)
                .filter(|(_, &i)| range.covers(&p.ix.writes[i].key))
                .count();
        p.findings.push(WatchFinding {
            watcher: log.watcher,
            key: None,
            revision: Some(upto),
            detail: format!(
                "watcher {}: got only to revision {upto} of {target} after the run \
                 ({behind} acknowledged writes in its range above it not delivered)",
                log.watcher
            ),
        });
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
