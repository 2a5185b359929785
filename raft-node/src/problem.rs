//! Error responses as `application/problem+json` (RFC 9457), each with a
//! stable `type`. The status tells a client whether a write may have
//! happened: 503 (with `Retry-After`) = definitely not applied, 504 = the
//! outcome is unknown, 4xx = refused, nothing applied.
//!
//! Handlers return `Result<_, Problem>`; the errors they meet (a proposal's,
//! a read's, the store's, a membership change's...) convert with `From`, so
//! each error has its one response, defined here.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raft_core::driver::{MembershipError, SnapshotError};
use raft_core::{ChangeError, ProposeError, ReadError, TransferError};
use serde_json::json;

use crate::store::StoreError;

/// Prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:raft-node:problem:";

/// One error response. Boxed: handlers return it in `Err`, and the
/// happy path stays small.
#[derive(Debug)]
pub struct Problem(Box<Parts>);

/// What a problem response holds.
#[derive(Debug)]
struct Parts {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    retry_after_s: Option<u64>,
    extra: serde_json::Map<String, serde_json::Value>,
    /// Headers beyond `Content-Type` and `Retry-After`.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem of `kind` (the last part of its `type`).
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Parts {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after_s: None,
            extra: serde_json::Map::new(),
            headers: Vec::new(),
        }))
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after_s = Some(seconds);
        self
    }

    /// Adds a member to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.0.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a header to the response.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    /// Adds `Connection: close`: the request's body was not read, so the
    /// connection cannot carry another request.
    pub fn close_connection(self) -> Self {
        self.header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// Its kind: the last part of its `type` (`revision-compacted`, …).
    pub fn kind(&self) -> &'static str {
        self.0.kind
    }

    /// What went wrong, for people.
    pub fn detail(&self) -> &str {
        &self.0.detail
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
        let p = *self.0;
        let mut body = json!({
            "type": format!("{TYPE_PREFIX}{}", p.kind),
            "title": p.title,
            "status": p.status.as_u16(),
            "detail": p.detail,
        });
        if let Some(obj) = body.as_object_mut() {
            obj.extend(p.extra);
        }
        let mut resp = (p.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = p.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        for (name, value) in p.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

/// A failed proposal: 503 when it was definitely not applied, 504 when it
/// may have been.
impl From<ProposeError> for Problem {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { .. } => {
                Problem::unavailable("no-leader", "No leader", e.to_string())
            }
            ProposeError::TransferInProgress => Problem::unavailable(
                "transfer-in-progress",
                "Leadership transfer in progress",
                e.to_string(),
            ),
            ProposeError::Overloaded => {
                Problem::unavailable("overloaded", "Too many pending writes", e.to_string())
            }
            ProposeError::Superseded { .. } => {
                Problem::unavailable("superseded", "Write lost to a leader change", e.to_string())
            }
            ProposeError::ShuttingDown { appended: false } => {
                Problem::unavailable("shutting-down", "Node shutting down", e.to_string())
            }
            _ => Problem::outcome_unknown(e.to_string()),
        }
    }
}

/// A read that could not be served (it observed nothing): 503.
impl From<ReadError> for Problem {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NotLeader { .. } => {
                Problem::unavailable("no-leader", "No leader", e.to_string())
            }
            ReadError::Overloaded => {
                Problem::unavailable("overloaded", "Too many pending reads", e.to_string())
            }
            ReadError::Timeout => Problem::unavailable(
                "read-timeout",
                "Leadership not confirmed in time",
                e.to_string(),
            ),
            ReadError::ShuttingDown => {
                Problem::unavailable("shutting-down", "Node shutting down", e.to_string())
            }
            // A failed read observed nothing: retrying is safe.
            _ => Problem::unavailable("read-failed", "Read failed", e.to_string()),
        }
    }
}

/// A store read error: 503 while a snapshot is installed, 500 otherwise.
impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Installing => Problem::unavailable(
                "installing-snapshot",
                "Installing a snapshot",
                e.to_string(),
            )
            .retry_after(1),
            StoreError::Compacted {
                requested,
                compacted,
            } => Problem::compacted(requested, compacted),
            StoreError::FutureRevision { requested, current } => {
                Problem::future_revision(requested, current)
            }
            _ => Problem::storage(e.to_string()),
        }
    }
}

impl Problem {
    /// 410 Gone, `revision-compacted`: a read (or compaction) at a revision
    /// whose history is compacted. Names the oldest revision still kept.
    pub fn compacted(requested: u64, compacted: u64) -> Self {
        Problem::new(
            StatusCode::GONE,
            "revision-compacted",
            "Revision compacted",
            format!("revision {requested} is compacted: history is kept from revision {compacted}"),
        )
        .with("requested_revision", requested)
        .with("compacted_revision", compacted)
    }

    /// 400, `future-revision`: a read (or compaction) above the store's
    /// current revision.
    pub fn future_revision(requested: u64, current: u64) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "future-revision",
            "Future revision",
            format!("revision {requested} is in the future: the current revision is {current}"),
        )
        .with("requested_revision", requested)
        .with("current_revision", current)
    }
}

/// A failed membership change: 409 for a conflict with the configuration,
/// 404 for an unknown member, 504 when it may still complete.
impl From<MembershipError> for Problem {
    fn from(err: MembershipError) -> Self {
        let conflict = |kind: &'static str, title: &'static str, detail: String| {
            Problem::new(StatusCode::CONFLICT, kind, title, detail)
        };
        match err {
            MembershipError::Rejected(e @ ChangeError::NotLeader { .. }) => {
                Problem::unavailable("no-leader", "No leader", e.to_string())
            }
            MembershipError::Rejected(
                e @ (ChangeError::InProgress { .. }
                | ChangeError::LeaderNotReady
                | ChangeError::TransferInProgress(_)),
            ) => conflict(
                "change-in-progress",
                "Another change is in progress",
                e.to_string(),
            )
            .retry_after(1),
            MembershipError::Rejected(e @ ChangeError::UnknownNode(_)) => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-member",
                "Not a member",
                e.to_string(),
            ),
            MembershipError::Rejected(e @ ChangeError::Lagging { lag, max, .. }) => {
                conflict("learner-lagging", "Learner not caught up", e.to_string())
                    .with("lag", lag)
                    .with("max_lag", max)
                    .retry_after(1)
            }
            MembershipError::Rejected(e @ ChangeError::NoVoters) => {
                conflict("last-voter", "Would remove the last voter", e.to_string())
            }
            MembershipError::Rejected(e @ ChangeError::InvalidId) => {
                Problem::bad_request(e.to_string())
            }
            MembershipError::Rejected(e) => {
                conflict("membership-conflict", "Membership conflict", e.to_string())
            }
            MembershipError::Timeout | MembershipError::LeadershipLost => {
                Problem::outcome_unknown(format!("{err}; check GET /v1/cluster before retrying"))
            }
            MembershipError::ShuttingDown => {
                Problem::unavailable("shutting-down", "Shutting down", err.to_string())
            }
            // A failure the driver may add later: assume the worst.
            _ => Problem::outcome_unknown(format!("{err}; check GET /v1/cluster before retrying")),
        }
    }
}

/// A failed leadership transfer: 400 for a bad target, 503 otherwise.
impl From<TransferError> for Problem {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::NoTarget(_) => Problem::bad_request(e.to_string()),
            _ => Problem::unavailable(
                "transfer-failed",
                "Leadership transfer failed",
                e.to_string(),
            ),
        }
    }
}

/// A snapshot this node was asked to take: 503 when it is busy, 500 when
/// it failed.
impl From<SnapshotError> for Problem {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Installing | SnapshotError::Timeout => {
                Problem::unavailable("snapshot-busy", "Snapshot not taken", e.to_string())
                    .retry_after(1)
            }
            _ => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "snapshot-failed",
                "Snapshot failed",
                e.to_string(),
            ),
        }
    }
}
