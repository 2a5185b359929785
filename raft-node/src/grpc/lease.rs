//! The `Lease` service over the HTTP API's lease routes
//! ([`crate::http`]'s `/v1/leases`), called in-process: the same token
//! rules and limits, grants and revokes through the log, and keep-alives
//! and time-to-live answered by the leader only (a follower forwards them
//! to it over HTTP, once). A KeepAlive stream answers each request in
//! order, TTL 0 for a lease that does not exist (any more), as etcd does.

use std::pin::Pin;

use axum::body::Bytes;
use axum::http::Method;
use percent_encoding::percent_decode_str;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::pb::etcdserverpb::lease_server::Lease;
use super::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use super::{to_i64, Ctx, LEASE_NOT_FOUND};
use crate::lease::LeaseRefusal;

/// Responses a KeepAlive stream queues for a client that reads slowly.
const KEEPALIVE_QUEUE: usize = 16;

type KeepAlives = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// The gRPC status of a refusal, with etcd's codes and messages.
pub(super) fn lease_status(r: &LeaseRefusal) -> Status {
    match r {
        LeaseRefusal::NotFound => Status::not_found(LEASE_NOT_FOUND),
        LeaseRefusal::Exists => Status::failed_precondition("etcdserver: lease already exists"),
        LeaseRefusal::TtlTooLarge => Status::out_of_range("etcdserver: too large lease TTL"),
        r => Status::resource_exhausted(format!("raft-node: {r}")),
    }
}

/// A lease id from etcd's `int64`: a negative one names no lease.
fn id_of(id: i64) -> Result<u64, Status> {
    u64::try_from(id).map_err(|_| Status::not_found(LEASE_NOT_FOUND))
}

fn number(v: &serde_json::Value, field: &str) -> i64 {
    v[field].as_u64().map_or(0, to_i64)
}

impl Ctx {
    /// One keep-alive through the HTTP route: the TTL (0 when the lease
    /// does not exist).
    async fn keep_alive_once(
        &self,
        meta: &tonic::metadata::MetadataMap,
        id: i64,
    ) -> Result<i64, Status> {
        let Ok(id) = u64::try_from(id) else {
            return Ok(0);
        };
        let path = format!("/v1/leases/{id}/keepalive");
        match self
            .call_json(Method::POST, &path, meta, Bytes::new())
            .await
        {
            Ok((_, v)) => Ok(number(&v, "ttl")),
            Err(s) if s.code() == Code::NotFound => Ok(0),
            Err(s) => Err(s),
        }
    }
}

#[tonic::async_trait]
impl Lease for Ctx {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let meta = req.metadata().clone();
        let r = req.into_inner();
        let id = u64::try_from(r.id)
            .map_err(|_| Status::invalid_argument("raft-node: a lease id must not be negative"))?;
        // etcd grants a TTL of 0 or less the minimum TTL too.
        let ttl = u64::try_from(r.ttl).unwrap_or(0);
        let body = serde_json::json!({ "ttl": ttl, "id": id }).to_string();
        let (_, v) = self
            .call_json(Method::POST, "/v1/leases", &meta, Bytes::from(body))
            .await?;
        Ok(Response::new(LeaseGrantResponse {
            header: Some(self.header(None).await),
            id: number(&v, "id"),
            ttl: number(&v, "ttl"),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let meta = req.metadata().clone();
        let id = id_of(req.into_inner().id)?;
        let path = format!("/v1/leases/{id}");
        let (_, v) = self
            .call_json(Method::DELETE, &path, &meta, Bytes::new())
            .await?;
        let rev = v["rev"].as_u64();
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(self.header(rev).await),
        }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAlives>, Status> {
        self.check_user(req.metadata())?;
        let meta = req.metadata().clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let ctx = self.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(r)) => r,
                        Ok(None) | Err(_) => return,
                    },
                    () = tx.closed() => return,
                };
                let answer = match ctx.keep_alive_once(&meta, r.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: Some(ctx.header(None).await),
                        id: r.id,
                        ttl,
                    }),
                    Err(s) => Err(s),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let meta = req.metadata().clone();
        let r = req.into_inner();
        let header = Some(self.header(None).await);
        let Ok(id) = u64::try_from(r.id) else {
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let path = format!("/v1/leases/{id}?keys={}", r.keys);
        match self
            .call_json(Method::GET, &path, &meta, Bytes::new())
            .await
        {
            Ok((_, v)) => {
                let keys = v["keys"]
                    .as_array()
                    .map(|ks| {
                        ks.iter()
                            .filter_map(|k| k.as_str())
                            .map(|k| percent_decode_str(k).collect::<Vec<u8>>())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Response::new(LeaseTimeToLiveResponse {
                    header,
                    id: r.id,
                    ttl: number(&v, "ttl"),
                    granted_ttl: number(&v, "granted_ttl"),
                    keys,
                }))
            }
            // etcd answers TTL -1 for a lease that does not exist.
            Err(s) if s.code() == Code::NotFound => Ok(Response::new(LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(s) => Err(s),
        }
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let meta = req.metadata().clone();
        let (_, v) = self
            .call_json(Method::GET, "/v1/leases", &meta, Bytes::new())
            .await?;
        let leases = v["leases"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .map(|l| LeaseStatus {
                        id: number(l, "id"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.header(None).await),
            leases,
        }))
    }
}
