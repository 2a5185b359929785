//! `GET /v1/cluster/backup`: a consistent snapshot of the store, streamed
//! as a backup file ([`crate::backup`]). Admin token.
//!
//! By default the backup is linearizable: the leader confirms with a
//! quorum that it still leads (ReadIndex), waits until it applied that
//! index, then takes one RocksDB view of the store, so the file holds
//! every write acknowledged before the request arrived. A follower relays
//! the leader's backup, streamed as it arrives (it takes one of its own
//! backup slots meanwhile), so any node's address serves, including one
//! whose clients cannot reach the leader's advertised address (a published
//! container port, a load-balanced Service). A request that was already
//! relayed once, or one that finds no leader, gets 421 `not-leader` naming
//! the leader's client address when it is known (`ctl snapshot save`
//! follows it). `?consistency=stale` backs up any node's applied state
//! without asking the leader.
//!
//! The file is written from the view while it is sent, in chunks of
//! [`CHUNK_BYTES`], at most [`CHUNKS_QUEUED`] of them waiting for the
//! client: memory stays bounded whatever the store's size, and there is no
//! size limit. At most `--max-concurrent-backups` backups run on a node at
//! once (503 `overloaded` beyond). A client that stops reading for
//! `--http-send-timeout-ms` is disconnected, and one still reading after
//! `--backup-max-duration-ms` is cut off: either stops the backup and lets
//! go of the RocksDB view it holds.

use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use raft_core::{NodeId, ReadConsistency, ReadError, Role};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::forwarding::{leader_address, leader_url, no_leader, FORWARDED_HEADER};
use super::limits::overloaded;
use super::{Answer, AppState, Shared};
use crate::backup::BackupHeader;
use crate::problem::Problem;
use crate::store::ExportRequest;

/// Bytes of one chunk of the answer.
pub const CHUNK_BYTES: usize = 256 << 10;
/// Chunks written and not yet taken by the connection.
pub const CHUNKS_QUEUED: usize = 8;

#[derive(Debug, Deserialize, Default)]
pub(super) struct BackupParams {
    consistency: Option<String>,
}

/// 421: a linearizable backup is the leader's to serve.
fn not_leader(state: &AppState, leader: Option<NodeId>) -> Problem {
    let addr = leader.and_then(|l| state.members.client_addr(l));
    let detail = match (leader, &addr) {
        (Some(l), Some(a)) => format!(
            "a linearizable backup is served by the leader: ask node {l} at {a} \
             (or ask this node with ?consistency=stale for its own applied state)"
        ),
        _ => "no leader is known right now; retry shortly".to_owned(),
    };
    let mut p = Problem::new(
        StatusCode::MISDIRECTED_REQUEST,
        "not-leader",
        "Not the leader",
        detail,
    );
    if let (Some(l), Some(a)) = (leader, addr) {
        p = p.with("leader", l).with("leader_client_addr", a.clone());
        if let Ok(v) = HeaderValue::from_str(&l.to_string()) {
            p = p.header(header::HeaderName::from_static("x-raft-leader"), v);
        }
    }
    p
}

/// Sends what is written in chunks down a bounded channel; the send blocks
/// while the connection is behind, and fails once it is gone or once the
/// deadline (`None`: none) has passed.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    deadline: Option<Instant>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the backup took longer than --backup-max-duration-ms",
            ));
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The answer's body: the chunks as the channel delivers them; an error
/// sent down it aborts the answer (the client sees a cut-off stream).
struct ChannelBody(mpsc::Receiver<io::Result<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|r| r.map(http_body::Frame::data)))
    }
}

fn consistency(params: Result<Query<BackupParams>, QueryRejection>) -> Result<bool, Problem> {
    let p = params
        .map_err(|e| Problem::bad_request(format!("bad query: {e}")))?
        .0;
    match p.consistency.as_deref() {
        None | Some("linearizable") => Ok(true),
        Some("stale") => Ok(false),
        Some(other) => Err(Problem::bad_request(format!(
            "consistency must be linearizable or stale; got {other:?}"
        ))),
    }
}

/// The response head: what the backup is, before its bytes.
fn head(h: &BackupHeader, body: ChannelBody) -> Response {
    let mut resp = Response::new(axum::body::Body::new(body));
    let hs = resp.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            hs.insert(header::HeaderName::from_static(name), v);
        }
    };
    set("content-type", "application/octet-stream".into());
    set("cache-control", "no-store".into());
    set(
        "content-disposition",
        format!("attachment; filename=\"raft-backup-{}.bak\"", h.index),
    );
    set("x-raft-backup-index", h.index.to_string());
    set("x-raft-backup-term", h.term.to_string());
    set("x-raft-backup-node", h.node.to_string());
    set("x-raft-backup-consistency", h.consistency.clone());
    if let Some(r) = h.read_index {
        set("x-raft-backup-read-index", r.to_string());
    }
    resp
}

/// The leader's answer headers a relayed backup carries on.
const RELAYED_BACKUP_HEADERS: [&str; 9] = [
    "content-type",
    "content-disposition",
    "cache-control",
    "retry-after",
    "x-raft-backup-index",
    "x-raft-backup-term",
    "x-raft-backup-node",
    "x-raft-backup-consistency",
    "x-raft-backup-read-index",
];

/// A follower's answer to a linearizable backup: the leader's, relayed as
/// it arrives through a queue of [`CHUNKS_QUEUED`] chunks (the connection
/// to the leader waits while this node's client is behind). `slot` is this
/// node's backup slot, held until the relay ends. A request already
/// relayed once, or with no leader known, gets the 421 naming the leader.
async fn relay_from_leader<T: Send + 'static>(
    state: &AppState,
    leader: Option<NodeId>,
    uri: &Uri,
    headers: &HeaderMap,
    slot: T,
) -> Answer {
    if leader.is_none() || headers.contains_key(FORWARDED_HEADER) {
        return Err(not_leader(state, leader));
    }
    let (leader, addr) = leader_address(state, leader, headers)?;
    let mut req = state
        .client
        .get(leader_url(state, &addr, uri))
        .header(FORWARDED_HEADER, state.id.to_string())
        .timeout(state.cfg.backup_max_duration + state.cfg.request_timeout);
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, v);
    }
    let mut resp = req.send().await.map_err(|e| {
        no_leader(format!(
            "cannot get the backup from the leader (node {leader} at {addr}): {e}"
        ))
    })?;
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if RELAYED_BACKUP_HEADERS.contains(&name.as_str()) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            let next = match resp.chunk().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => break,
                Err(e) => Err(io::Error::other(format!(
                    "the leader's backup was cut off: {e}"
                ))),
            };
            let failed = next.is_err();
            // The client went away: dropping `resp` ends the leader's backup.
            if tx.send(next).await.is_err() || failed {
                break;
            }
        }
    });
    out.body(axum::body::Body::new(ChannelBody(rx)))
        .map_err(|e| Problem::unavailable("backup-failed", "Backup failed", e.to_string()))
}

/// `GET /v1/cluster/backup[?consistency=stale]`.
pub(super) async fn backup(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<BackupParams>, QueryRejection>,
) -> Answer {
    let linearizable = consistency(params)?;
    let permit = state
        .limits
        .backup_slot()
        .ok_or_else(|| overloaded("backups at once (--max-concurrent-backups)"))?;
    let deadline = Instant::now().checked_add(state.cfg.backup_max_duration);
    let read_index = if linearizable {
        // The leader's backup, relayed over HTTP: a stream of its store is
        // not something the peer transport carries (a follower's
        // linearizable reads of single keys go through it).
        let status = state.raft.status().await;
        if let Some(s) = status.filter(|s| s.engine.role != Role::Leader) {
            return relay_from_leader(&state, s.engine.leader, &uri, &headers, permit).await;
        }
        match state.raft.read(ReadConsistency::Linearizable).await {
            Ok(index) => Some(index),
            Err(ReadError::NotLeader { leader }) => {
                return relay_from_leader(&state, leader, &uri, &headers, permit).await
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let req = ExportRequest {
        node: state.id,
        consistency: if linearizable {
            "linearizable"
        } else {
            "stale"
        }
        .to_owned(),
        read_index,
    };
    let reader = state.reader.clone();
    let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
    let (head_tx, head_rx) = oneshot::channel::<BackupHeader>();
    let task = tokio::task::spawn_blocking(move || {
        let label = Path::new("(answer to GET /v1/cluster/backup)");
        let errors = tx.clone();
        let begin = |h: &BackupHeader| {
            head_tx.send(h.clone()).ok()?;
            Some(ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK_BYTES),
                deadline,
            })
        };
        let result = reader.export(&req, label, begin, &AtomicBool::new(false));
        // The view is gone: another backup may start.
        drop(permit);
        match &result {
            Ok(Some(w)) => {
                tracing::info!(bytes = w.bytes, sha256 = %w.sha256, "backup sent");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "backup failed");
                let _ = errors.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
        result
    });
    match head_rx.await {
        Ok(h) => {
            tracing::info!(index = h.index, term = h.term, consistency = %h.consistency, "sending a backup");
            Ok(head(&h, ChannelBody(rx)))
        }
        Err(_) => {
            let why = match task.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "the backup stopped before it started".to_owned(),
                Err(e) => format!("the backup task failed: {e}"),
            };
            Err(Problem::unavailable("backup-failed", "Backup failed", why))
        }
    }
}
