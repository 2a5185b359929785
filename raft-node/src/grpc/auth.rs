//! Logging in the way etcd clients do: `Auth.Authenticate` with the name
//! `user` and the `--auth-token-file` token as the password (or `admin` and
//! the `--admin-token-file` token) answers that token, which the client
//! then sends with every call (etcd's `token` or `authorization` metadata;
//! `authorization: Bearer <token>` works too). There are no other users:
//! the tokens are the credentials.
//!
//! Guessing is slowed: each attempt takes a slot of a bucket refilled at
//! `--grpc-auth-failures-per-sec` (a success gives its slot back), and an
//! attempt finding the bucket empty fails at once with
//! `RESOURCE_EXHAUSTED`, before the token is looked at.

use std::sync::Mutex;
use std::time::Instant;

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
        if !self.auth_attempts.take() {
            return Err(Status::resource_exhausted(
                "raft-node: too many failed logins; try again later \
                 (--grpc-auth-failures-per-sec)",
            ));
        }
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", r.password)) {
            h.insert("authorization", v);
        }
        match crate::http::principal(cfg, &h) {
            Some(p) if p == r.name => {
                self.auth_attempts.give_back();
                Ok(Response::new(AuthenticateResponse {
                    header: Some(self.header(None).await),
                    token: r.password,
                }))
            }
            _ => Err(Status::invalid_argument(AUTH_FAILED)),
        }
    }
}

/// A token bucket of login attempts: `rate` slots a second, at most `rate`
/// held.
#[derive(Debug)]
pub(super) struct AttemptBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl AttemptBucket {
    /// A full bucket of `rate` slots refilled at `rate` a second.
    pub(super) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes a slot; `false` when none is left.
    fn take(&self) -> bool {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
        *s = ((s.0 + refill).min(self.rate), now);
        if s.0 < 1.0 {
            return false;
        }
        s.0 -= 1.0;
        true
    }

    /// Returns the slot of a successful attempt.
    fn give_back(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.0 = (s.0 + 1.0).min(self.rate);
    }
}

#[cfg(test)]
mod tests {
    use super::AttemptBucket;

    #[test]
    fn the_bucket_refuses_past_its_burst_and_successes_give_back() {
        let b = AttemptBucket::new(3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take(), "a fourth attempt at once is refused");
        b.give_back();
        assert!(b.take(), "a success's slot is free again");
    }
}
