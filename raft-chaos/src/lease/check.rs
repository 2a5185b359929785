//! The lease checker's verdicts on what the lease clients recorded: pure
//! functions, so hand-made histories test them.
//!
//! Times are microseconds since the run started, from the harness's one
//! monotonic clock. A promise is a grant or an acknowledged keep-alive:
//! the lease lives at least until the request's **send** time plus the
//! TTL the node returned (the leader resets its deadline after the request
//! was sent, so that is the earliest the promise can run out).

use std::collections::BTreeMap;

use crate::watch::check::{Change, WatchLog};

/// What a lease client does with a lease after attaching its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Keeps it alive for a while, then lets it expire.
    KeepAlive,
    /// Never keeps it alive: it expires after its TTL.
    Never,
    /// Revokes it.
    Revoke,
}

/// A promise the client holds: the lease lives until `send_us + ttl_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promise {
    /// When the grant or keep-alive was sent.
    pub send_us: u64,
    /// The TTL the node returned, in seconds.
    pub ttl_s: u64,
}

impl Promise {
    /// When the promise runs out.
    pub fn end_us(&self) -> u64 {
        self.send_us + self.ttl_s * 1_000_000
    }
}

/// A linearizable read of one of the lease's keys, after its attaching put
/// was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadObs {
    /// The key.
    pub key: String,
    /// When the read was sent.
    pub send_us: u64,
    /// When the answer came.
    pub recv_us: u64,
    /// Whether the key was there.
    pub present: bool,
}

/// Everything one lease client learned about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The lease client.
    pub client: u64,
    /// The lease id.
    pub id: u64,
    /// What the client did with it.
    pub plan: Plan,
    /// Keys attached (the put with `?lease=` acknowledged).
    pub keys: Vec<String>,
    /// Keys whose attaching put had an unknown outcome: they must be gone
    /// in the end too.
    pub maybe_keys: Vec<String>,
    /// The grant and every acknowledged keep-alive.
    pub promises: Vec<Promise>,
    /// Linearizable reads of the attached keys.
    pub reads: Vec<ReadObs>,
    /// Keep-alives answered 404 (the lease is gone): (send, receive).
    pub keepalive_gone: Vec<(u64, u64)>,
    /// The revoke, when acknowledged: (send time, revision).
    pub revoked: Option<(u64, u64)>,
    /// Puts with this lease acknowledged after the client learned the
    /// lease was gone (revoked, a keep-alive 404, a key read absent).
    pub late_puts: Vec<String>,
    /// When the client last got an acknowledgement of this lease.
    pub last_ack_us: u64,
}

impl LeaseRecord {
    /// The latest end of the promises sent before `t_us`, if any.
    fn promised_until(&self, before_us: u64) -> Option<u64> {
        self.promises
            .iter()
            .filter(|p| p.send_us <= before_us)
            .map(Promise::end_us)
            .max()
    }
}

/// Safety: no key of the lease observed deleted (a linearizable read
/// absent, before a revoke was sent) that completed while a promise sent
/// earlier still held; no keep-alive answered "gone" while such a promise
/// held; no put with the lease acknowledged after the client learned the
/// lease was gone. Returns one line per finding.
pub fn check_safety(l: &LeaseRecord) -> Vec<String> {
    let mut out = Vec::new();
    let revoke_sent = l.revoked.map_or(u64::MAX, |(s, _)| s);
    for r in l
        .reads
        .iter()
        .filter(|r| !r.present && r.send_us < revoke_sent)
    {
        // Any promise sent before the read completed: one sent after the
        // read started and acknowledged means the leader kept alive a
        // lease whose key was already deleted, also a violation.
        if let Some(end) = l.promised_until(r.recv_us) {
            if r.recv_us < end {
                out.push(format!(
                    "lease {} (client {}): key {} read absent at {} µs (sent {}), but a keep-alive promised the lease until {end} µs",
                    l.id, l.client, r.key, r.recv_us, r.send_us
                ));
            }
        }
    }
    for &(send, recv) in &l.keepalive_gone {
        if send >= revoke_sent {
            continue;
        }
        if let Some(end) = l.promised_until(send) {
            if recv < end {
                out.push(format!(
                    "lease {} (client {}): keep-alive sent at {send} µs answered 'gone' at {recv} µs, but a keep-alive promised the lease until {end} µs",
                    l.id, l.client
                ));
            }
        }
    }
    for k in &l.late_puts {
        out.push(format!(
            "lease {} (client {}): a put of {k} with the lease was acknowledged after the lease was gone",
            l.id, l.client
        ));
    }
    out
}

/// Every attached key deleted at one revision, as the watch `log` (which
/// must cover the keys) saw it: a revoked lease's at the revoke's
/// revision, when the watch got that far; any other (expired) lease's at
/// the first revision the watch saw one of them deleted.
pub fn check_revoke(l: &LeaseRecord, log: &WatchLog) -> Vec<String> {
    let mut deleted: BTreeMap<&[u8], Vec<u64>> = BTreeMap::new();
    for d in &log.deliveries {
        for e in &d.events {
            if e.change == Change::Delete {
                deleted.entry(&e.key[..]).or_default().push(d.revision);
            }
        }
    }
    let rev = match l.revoked {
        Some((_, rev)) if log.reached < rev || log.start_revision > rev => return Vec::new(),
        Some((_, rev)) => rev,
        None => {
            // Only the lease deletes its keys, each put once.
            let first = l
                .keys
                .iter()
                .filter_map(|k| deleted.get(k.as_bytes())?.iter().min().copied())
                .min();
            match first {
                Some(rev) => rev,
                None => return Vec::new(),
            }
        }
    };
    let what = if l.revoked.is_some() {
        "revoked"
    } else {
        "expired (a key deleted)"
    };
    let mut out = Vec::new();
    for k in &l.keys {
        let revs = deleted.get(k.as_bytes()).cloned().unwrap_or_default();
        if !revs.contains(&rev) {
            out.push(format!(
                "lease {} (client {}) {what} at revision {rev}, but watcher {} saw key {k} deleted at {revs:?}",
                l.id, l.client, log.watcher
            ));
        }
    }
    out
}

/// What the liveness check found of one lease after convergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The lease id.
    pub id: u64,
    /// Its keys still present at the deadline.
    pub keys: Vec<String>,
    /// Whether `GET /v1/leases/{id}` still found it.
    pub lease_found: bool,
}

/// Liveness: every lease left over at the deadline is a finding.
pub fn check_liveness(leftovers: &[Leftover], bound_s: u64) -> Vec<String> {
    leftovers
        .iter()
        .map(|o| {
            format!(
                "lease {} not gone within its TTL + {bound_s} s after convergence: keys still present {:?}, lease still found: {}",
                o.id, o.keys, o.lease_found
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
