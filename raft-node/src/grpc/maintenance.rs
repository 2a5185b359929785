//! The `Maintenance` service: Status from the Raft driver, Alarm (none
//! are raised), Defragment (a no-op: RocksDB compacts by itself),
//! Snapshot (the node's own backup, `GET /v1/cluster/backup?consistency=stale`,
//! streamed in chunks, in etcd's envelope: zeros up to a multiple of 512
//! bytes, then the SHA-256 of everything before it, so that `etcdctl
//! snapshot save` takes it; `raft-node restore` reads such a file as it
//! is) and MoveLeader (the leadership transfer). A client that takes no
//! snapshot chunk for `--grpc-snapshot-send-timeout-ms` gets the stream
//! ended with an error, and the backup it held is released.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Method;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::pb::etcdserverpb::alarm_request::AlarmAction;
use super::pb::etcdserverpb::maintenance_server::Maintenance;
use super::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use super::{unimplemented, Ctx, TIMED_OUT};

/// The etcd API level raft-node answers as (`version` of Status).
pub const ETCD_API_VERSION: &str = "3.4.0";

/// Chunks of a Snapshot stream waiting for the client.
const SNAPSHOT_QUEUE: usize = 4;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for Ctx {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        if req.get_ref().action != AlarmAction::Get as i32 {
            self.check_admin(req.metadata())?;
            return Err(Status::invalid_argument(
                "raft-node raises no alarms; only listing them (GET) is supported",
            ));
        }
        Ok(Response::new(AlarmResponse {
            header: Some(self.header(None).await),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = tokio::time::timeout(Duration::from_secs(2), self.state.raft.status())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| Status::unavailable(TIMED_OUT))?;
        let learner = s.engine.membership.learners().contains(&self.state.id);
        let size = super::to_i64(self.state.reader.disk_size());
        Ok(Response::new(StatusResponse {
            header: Some(self.header(None).await),
            version: ETCD_API_VERSION.to_owned(),
            db_size: size,
            leader: s.engine.leader.unwrap_or(0),
            raft_index: s.engine.commit,
            raft_term: s.engine.term,
            raft_applied_index: s.applied,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: learner,
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.check_admin(req.metadata())?;
        // etcd answers Defragment with an empty header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let answer = self
            .call_http(
                Method::GET,
                "/v1/cluster/backup?consistency=stale",
                req.metadata(),
                Bytes::new(),
            )
            .await?;
        let total: Option<u64> = answer
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let header = self.header(None).await;
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE);
        let (abort_tx, abort_rx) = tokio::sync::oneshot::channel();
        let out = Sender {
            tx,
            abort: Some(abort_tx),
            limit: self.state.cfg.grpc_snapshot_send_timeout,
        };
        tokio::spawn(send_snapshot(answer.body, total, header, out));
        Ok(Response::new(abortable(rx, abort_rx)))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.get_ref().target_id;
        let body = serde_json::json!({ "target": target }).to_string();
        self.call_json(
            Method::POST,
            "/v1/cluster/transfer-leader",
            req.metadata(),
            Bytes::from(body),
        )
        .await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.header(None).await),
        }))
    }

    async fn hash(
        &self,
        _req: Request<super::pb::etcdserverpb::HashRequest>,
    ) -> Result<Response<super::pb::etcdserverpb::HashResponse>, Status> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(
        &self,
        _req: Request<super::pb::etcdserverpb::HashKvRequest>,
    ) -> Result<Response<super::pb::etcdserverpb::HashKvResponse>, Status> {
        Err(unimplemented("HashKV"))
    }
}

/// The zeros that pad `len` bytes to a multiple of etcd's envelope
/// alignment ([`crate::backup::ENVELOPE_ALIGN`]).
fn padding(len: u64) -> usize {
    let align = crate::backup::ENVELOPE_ALIGN;
    usize::try_from((align - len % align) % align).unwrap_or(0)
}

/// Streams the backup's bytes as `SnapshotResponse`s in etcd's envelope
/// (padding and SHA-256 after the last byte), one chunk behind so that the
/// last carries `remaining_bytes` 0 (earlier ones: the bytes left when the
/// size is known, else 1).
async fn send_snapshot(
    body: axum::body::Body,
    total: Option<u64>,
    header: super::pb::etcdserverpb::ResponseHeader,
    mut tx: Sender,
) {
    let mut frames = body.into_data_stream();
    let mut sent = 0u64;
    let mut hash = Sha256::new();
    let mut pending: Option<Vec<u8>> = None;
    let mut first = true;
    loop {
        let chunk = match frames.next().await {
            Some(Ok(b)) if b.is_empty() => continue,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                tx.fail(Status::aborted(format!("the backup failed: {e}")))
                    .await;
                return;
            }
            None => None,
        };
        if let Some(mut blob) = pending.take() {
            sent += blob.len() as u64;
            let remaining = match (&chunk, total) {
                (None, _) => 0,
                (Some(_), Some(t)) => t.saturating_sub(sent).max(1),
                (Some(_), None) => 1,
            };
            if chunk.is_none() {
                // The envelope's padding and checksum end the last chunk.
                blob.resize(blob.len() + padding(sent), 0);
                hash.update(&blob);
                blob.extend_from_slice(&std::mem::take(&mut hash).finalize());
            } else {
                hash.update(&blob);
            }
            let msg = SnapshotResponse {
                header: first.then_some(header),
                remaining_bytes: remaining,
                blob,
            };
            first = false;
            if !tx.send(msg).await {
                return;
            }
        }
        match chunk {
            Some(c) => pending = Some(c.to_vec()),
            None => return,
        }
    }
}

/// Where [`send_snapshot`] sends: the stream's queue, and the switch that
/// ends the stream with an error at once when the client takes nothing
/// for `--grpc-snapshot-send-timeout-ms`.
struct Sender {
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
    abort: Option<tokio::sync::oneshot::Sender<Status>>,
    limit: Duration,
}

impl Sender {
    /// Queues `msg`; `false` when the client went away or took nothing
    /// within the limit (the stream then ends with `UNAVAILABLE`).
    async fn send(&mut self, msg: SnapshotResponse) -> bool {
        match tokio::time::timeout(self.limit, self.tx.send(Ok(msg))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                let why = format!(
                    "raft-node: the client took no snapshot data for {} ms \
                     (--grpc-snapshot-send-timeout-ms)",
                    self.limit.as_millis()
                );
                self.abort(Status::unavailable(why));
                false
            }
        }
    }

    /// Ends the stream with `status` (after the chunks already queued when
    /// there is room for it, else at once).
    async fn fail(&mut self, status: Status) {
        if let Ok(Ok(())) =
            tokio::time::timeout(self.limit, self.tx.send(Err(status.clone()))).await
        {
            return;
        }
        self.abort(status);
    }

    fn abort(&mut self, status: Status) {
        if let Some(a) = self.abort.take() {
            let _ = a.send(status);
        }
    }
}

/// The response stream of a Snapshot: the queued chunks, unless the sender
/// gave up (then its error comes next, before any queued chunk, and ends
/// the stream: a client never takes a cut snapshot for a whole one).
fn abortable(
    rx: tokio::sync::mpsc::Receiver<Result<SnapshotResponse, Status>>,
    abort: tokio::sync::oneshot::Receiver<Status>,
) -> SnapshotStream {
    let state = (rx, Some(abort), false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut rx, mut abort, done)| async move {
            if done {
                return None;
            }
            if let Some(a) = abort.as_mut() {
                tokio::select! {
                    biased;
                    // An error: the sender finished without giving up.
                    r = a => if let Ok(status) = r {
                        return Some((Err(status), (rx, None, true)));
                    },
                    m = rx.recv() => return m.map(|m| (m, (rx, abort, false))),
                }
            }
            rx.recv().await.map(|m| (m, (rx, None, false)))
        },
    ))
}
