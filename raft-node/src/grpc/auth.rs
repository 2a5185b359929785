//! Logging in the way etcd clients do: `Auth.Authenticate` with the name
//! `user` and the `--auth-token-file` token as the password (or `admin` and
//! the `--admin-token-file` token) answers that token, which the client
//! then sends with every call (etcd's `token` or `authorization` metadata;
//! `authorization: Bearer <token>` works too). There are no other users:
//! the tokens are the credentials.

use axum::http::{HeaderMap, HeaderValue};
use tonic::{Request, Response, Status};

use super::pb::etcdserverpb::auth_server::Auth;
use super::pb::etcdserverpb::{AuthenticateRequest, AuthenticateResponse};
use super::Ctx;

/// etcd's answer to a wrong name or password.
pub const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";

#[tonic::async_trait]
impl Auth for Ctx {
    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let cfg = &self.state.cfg;
        if cfg.auth_token.is_none() && cfg.admin_token.is_none() {
            return Err(Status::failed_precondition(
                "etcdserver: authentication is not enabled",
            ));
        }
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", r.password)) {
            h.insert("authorization", v);
        }
        match crate::http::principal(cfg, &h) {
            Some(p) if p == r.name => Ok(Response::new(AuthenticateResponse {
                header: Some(self.header(None).await),
                token: r.password,
            })),
            _ => Err(Status::invalid_argument(AUTH_FAILED)),
        }
    }
}
