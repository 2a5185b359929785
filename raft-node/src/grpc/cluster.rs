//! The `Cluster` service: members are Raft node ids. MemberList from this
//! node's configuration and addresses; MemberAdd (as a learner),
//! MemberPromote, MemberRemove and MemberUpdate through the HTTP API's
//! admin routes (forwarded to the leader, admin token).
//!
//! etcd's member calls carry only peer URLs; raft-node also needs each
//! member's HTTP client address, so MemberAdd and MemberUpdate take two
//! URLs: the peer (QUIC) address first, the HTTP client address second,
//! e.g. `etcdctl member add node-4 --learner
//! --peer-urls=https://10.0.0.4:7000,http://10.0.0.4:8080`. MemberAdd gives
//! the new member the id one above every id the cluster knows; start the
//! node with that `--id` and `--join`.

use axum::body::Bytes;
use axum::http::Method;
use raft_core::NodeId;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::pb::etcdserverpb::cluster_server::Cluster;
use super::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use super::{Ctx, TIMED_OUT};

/// `host:port` of a URL (`http://host:port/` → `host:port`).
fn address(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.trim_end_matches('/')
}

/// The peer and client addresses two URLs name, or `InvalidArgument`.
fn two_addresses(urls: &[String]) -> Result<(String, String), Status> {
    match urls {
        [peer, client] => Ok((address(peer).to_owned(), address(client).to_owned())),
        _ => Err(Status::invalid_argument(
            "raft-node: give two URLs: the peer (QUIC) address, then the HTTP client address \
             (e.g. --peer-urls=https://10.0.0.4:7000,http://10.0.0.4:8080)",
        )),
    }
}

impl Ctx {
    /// Every member of the configuration, with the addresses known here.
    async fn members(&self) -> Result<Vec<Member>, Status> {
        let s = tokio::time::timeout(std::time::Duration::from_secs(2), self.state.raft.status())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| Status::unavailable(TIMED_OUT))?;
        let m = &s.engine.membership;
        let known = self.state.members.with_replicated();
        let mut ids: Vec<NodeId> = m
            .voters()
            .iter()
            .chain(m.learners().iter())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids
            .into_iter()
            .map(|id| {
                let addrs = known.iter().find(|k| k.id == id);
                Member {
                    id,
                    name: format!("node-{id}"),
                    peer_ur_ls: addrs
                        .map(|a| vec![format!("https://{}", a.peer_addr)])
                        .unwrap_or_default(),
                    // Each member records its own gRPC URL through the log;
                    // one that has not (an earlier release, or no gRPC
                    // API) lists none.
                    client_ur_ls: if id == self.state.id {
                        vec![self.grpc_url.clone()]
                    } else {
                        addrs.and_then(|a| a.grpc_url.clone()).into_iter().collect()
                    },
                    is_learner: m.learners().contains(&id),
                }
            })
            .collect())
    }

    /// A member change through the HTTP API, answered with the members.
    async fn change(
        &self,
        method: Method,
        path: &str,
        meta: &MetadataMap,
        body: serde_json::Value,
    ) -> Result<Vec<Member>, Status> {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        self.call_json(method, path, meta, body).await?;
        self.members().await
    }
}

#[tonic::async_trait]
impl Cluster for Ctx {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let r = req.get_ref();
        if !r.is_learner {
            return Err(Status::failed_precondition(
                "raft-node adds members as learners: add it with --learner, then promote it \
                 (MemberPromote) once it has caught up",
            ));
        }
        let (peer, client) = two_addresses(&r.peer_ur_ls)?;
        let known = self.members().await?;
        let id = known.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let body = serde_json::json!({ "id": id, "peer_addr": peer, "client_addr": client });
        let members = self
            .change(Method::POST, "/v1/cluster/learners", req.metadata(), body)
            .await?;
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(MemberAddResponse {
            header: Some(self.header(None).await),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let path = format!("/v1/cluster/members/{}", req.get_ref().id);
        let members = self
            .change(
                Method::DELETE,
                &path,
                req.metadata(),
                serde_json::Value::Null,
            )
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.header(None).await),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let r = req.get_ref();
        let (peer, client) = two_addresses(&r.peer_ur_ls)?;
        let path = format!("/v1/cluster/members/{}", r.id);
        let body = serde_json::json!({ "peer_addr": peer, "client_addr": client });
        let members = self
            .change(Method::PUT, &path, req.metadata(), body)
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.header(None).await),
            members,
        }))
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self.members().await?;
        Ok(Response::new(MemberListResponse {
            header: Some(self.header(None).await),
            members,
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let path = format!("/v1/cluster/voters/{}", req.get_ref().id);
        let members = self
            .change(Method::POST, &path, req.metadata(), serde_json::Value::Null)
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.header(None).await),
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn urls_become_addresses() {
        assert_eq!(address("https://10.0.0.4:7000"), "10.0.0.4:7000");
        assert_eq!(address("http://node-4:8080/"), "node-4:8080");
        assert_eq!(address("node-4:8080"), "node-4:8080");
    }
}
