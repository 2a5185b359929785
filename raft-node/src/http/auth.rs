//! Bearer tokens: which principal a request is (`user` or `admin`), and the
//! check in front of every `/v1/` route. Secrets are compared in constant
//! time.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;

use super::{Answer, Shared};
use crate::config::NodeConfig;
use crate::problem::Problem;

/// Compares two secrets in constant time without revealing their lengths:
/// the SHA-256 digests of both (32 bytes whatever the inputs) are compared
/// with `subtle`, so neither where they differ nor how long the expected
/// token is shows in the time taken.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The token of `Authorization: Bearer <token>`, when present.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The principal a request authenticated as, by the bearer token it
/// presents: `user` (`--auth-token-file`) or `admin`
/// (`--admin-token-file`); `None` without a valid token. It scopes
/// idempotency keys (carried in the proposed command).
pub(crate) fn principal(cfg: &NodeConfig, headers: &HeaderMap) -> Option<String> {
    let presented = bearer(headers)?;
    let matches = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| same_secret(t.as_bytes(), presented.as_bytes()))
    };
    if matches(&cfg.auth_token) {
        Some("user".to_owned())
    } else if matches(&cfg.admin_token) {
        Some("admin".to_owned())
    } else {
        None
    }
}

/// Admin routes: they change the cluster rather than the data, or (the
/// backup) read all of it at once.
fn is_admin(method: &Method, path: &str) -> bool {
    path.starts_with("/v1/cluster/") && (method != Method::GET || path == "/v1/cluster/backup")
}

/// The tokens a route accepts: an admin route the admin token (the user
/// token when no admin token is set), any other route the user token and,
/// when a user token is set, the admin token too. None: the route is open.
fn accepted_tokens(cfg: &NodeConfig, admin: bool) -> Vec<&str> {
    if admin {
        match (&cfg.admin_token, &cfg.auth_token) {
            (Some(a), _) => vec![a.as_str()],
            (None, Some(t)) => vec![t.as_str()],
            (None, None) => vec![],
        }
    } else {
        cfg.auth_token
            .iter()
            .chain(cfg.admin_token.iter().filter(|_| cfg.auth_token.is_some()))
            .map(String::as_str)
            .collect()
    }
}

/// Bearer-token check of `/v1/` routes (when tokens are configured). A
/// request without valid credentials gets 401 and reaches no handler.
pub(super) async fn authorize(State(state): State<Shared>, req: Request, next: Next) -> Answer {
    let path = req.uri().path();
    if !path.starts_with("/v1/") && path != "/v1" {
        return Ok(next.run(req).await);
    }
    let admin = is_admin(req.method(), path);
    check_bearer(&state.cfg, req.headers(), admin)?;
    Ok(next.run(req).await)
}

/// The token check of a request (of an admin route when `admin`): `Ok`
/// when no token is configured for it or it presents an accepted one;
/// 401 without a valid token, 403 for the user token on an admin route.
/// The HTTP routes and the etcd gRPC API share it.
pub(crate) fn check_bearer(
    cfg: &NodeConfig,
    headers: &HeaderMap,
    admin: bool,
) -> Result<(), Problem> {
    let accepted = accepted_tokens(cfg, admin);
    if accepted.is_empty() {
        return Ok(());
    }
    let Some(presented) = bearer(headers) else {
        return Err(unauthorized(
            "this API needs `Authorization: Bearer <token>`",
        ));
    };
    if accepted
        .iter()
        .any(|t| same_secret(t.as_bytes(), presented.as_bytes()))
    {
        return Ok(());
    }
    let is_user_token = cfg
        .auth_token
        .as_deref()
        .is_some_and(|t| same_secret(t.as_bytes(), presented.as_bytes()));
    if admin && is_user_token {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "admin-token-required",
            "Admin token required",
            "this route needs the admin token",
        ));
    }
    Err(unauthorized("the bearer token is not valid"))
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
    .header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"raft-node\""),
    )
}
