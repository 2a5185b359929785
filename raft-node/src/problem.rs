//! Error responses as `application/problem+json` (RFC 9457), each with a
//! stable `type`. The status tells a client whether a write may have
//! happened: 503 (with `Retry-After`) = definitely not applied, 504 = the
//! outcome is unknown, 4xx = refused, nothing applied.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:raft-node:problem:";

/// One error response.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    retry_after_s: Option<u64>,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem of `kind` (the last part of its `type`).
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after_s: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// Adds a member to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 503: no leader is known or reachable; nothing was applied.
    pub fn unavailable(kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, title, detail).retry_after(1)
    }

    /// 504: the write may or may not have been applied.
    pub fn outcome_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "outcome-unknown",
            "The write may or may not have been applied",
            detail,
        )
    }

    /// 500: this node's storage failed.
    pub fn storage(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage-error",
            "Storage error",
            detail,
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("{TYPE_PREFIX}{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(obj) = body.as_object_mut() {
            obj.extend(self.extra);
        }
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
