//! The `Maintenance` service: Status from the Raft driver, Alarm (none
//! are raised), Defragment (a no-op: RocksDB compacts by itself),
//! Snapshot (the node's own backup, `GET /v1/cluster/backup?consistency=stale`,
//! streamed in chunks) and MoveLeader (the leadership transfer).

use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Method;
use futures::{Stream, StreamExt};
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
        Ok(Response::new(StatusResponse {
            header: Some(self.header(None).await),
            version: ETCD_API_VERSION.to_owned(),
            db_size: 0,
            leader: s.engine.leader.unwrap_or(0),
            raft_index: s.engine.commit,
            raft_term: s.engine.term,
            raft_applied_index: s.applied,
            errors: Vec::new(),
            db_size_in_use: 0,
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
        tokio::spawn(send_snapshot(answer.body, total, header, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream) as SnapshotStream))
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

/// Streams the backup's bytes as `SnapshotResponse`s, one chunk behind so
/// that the last carries `remaining_bytes` 0 (earlier ones: the bytes left
/// when the size is known, else 1).
async fn send_snapshot(
    body: axum::body::Body,
    total: Option<u64>,
    header: super::pb::etcdserverpb::ResponseHeader,
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let mut frames = body.into_data_stream();
    let mut sent = 0u64;
    let mut pending: Option<Bytes> = None;
    let mut first = true;
    loop {
        let next = frames.next().await;
        let chunk = match next {
            Some(Ok(b)) if b.is_empty() => continue,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(Status::aborted(format!("the backup failed: {e}"))))
                    .await;
                return;
            }
            None => None,
        };
        if let Some(blob) = pending.take() {
            sent += blob.len() as u64;
            let remaining = match (&chunk, total) {
                (None, _) => 0,
                (Some(_), Some(t)) => t.saturating_sub(sent).max(1),
                (Some(_), None) => 1,
            };
            let msg = SnapshotResponse {
                header: first.then_some(header),
                remaining_bytes: remaining,
                blob: blob.to_vec(),
            };
            first = false;
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        match chunk {
            Some(c) => pending = Some(c),
            None => return,
        }
    }
}
