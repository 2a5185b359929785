//! Revisions in the HTTP API: the headers that carry them, the
//! `?revision=` of reads, and `POST /v1/cluster/compact`, which compacts
//! the history through the log.
//!
//! Every key-value answer carries `Raft-Revision`, the store's revision
//! the answer reflects (for a write, the revision it made). A `GET` of a
//! key adds `Raft-Create-Revision`, `Raft-Mod-Revision` (also its `ETag`)
//! and `Raft-Version`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft_core::ProposeError;
use serde::Deserialize;
use serde_json::json;

use super::forwarding::{forward, unexpected, Relay};
use super::{Answer, Shared};
use crate::command::{encode_compact, Outcome};
use crate::problem::Problem;
use crate::store::Versioned;

/// The store's revision an answer reflects.
pub(super) const REVISION: HeaderName = HeaderName::from_static("raft-revision");
/// A key's `create_revision`.
pub(super) const CREATE_REVISION: HeaderName = HeaderName::from_static("raft-create-revision");
/// A key's `mod_revision` (its `ETag`, unquoted).
pub(super) const MOD_REVISION: HeaderName = HeaderName::from_static("raft-mod-revision");
/// A key's `version`.
pub(super) const VERSION: HeaderName = HeaderName::from_static("raft-version");
/// The lease a key is attached to (absent: none).
pub(super) const LEASE: HeaderName = HeaderName::from_static("raft-lease");

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// The revision a read asks for with `?revision=`: a number from 1 on.
pub(super) fn revision_param(raw: Option<&str>) -> Result<Option<u64>, Problem> {
    match raw {
        None => Ok(None),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Problem::bad_request(format!(
                "revision must be a revision number from 1 on, got {s:?}"
            ))),
        },
    }
}

/// Adds `Raft-Revision: rev` to an answer.
pub(super) fn with_revision(resp: &mut Response, rev: u64) {
    resp.headers_mut().insert(REVISION, number(rev));
}

/// Adds `Raft-Revision: rev` to a problem.
pub(super) fn problem_at(p: Problem, rev: Option<u64>) -> Problem {
    match rev {
        Some(r) => p.header(REVISION, number(r)),
        None => p,
    }
}

/// Adds a key's revisions to the answer of its `GET`.
pub(super) fn with_key_revisions(resp: &mut Response, v: &Versioned) {
    let h = resp.headers_mut();
    h.insert(CREATE_REVISION, number(v.create_rev));
    h.insert(MOD_REVISION, number(v.rev));
    h.insert(VERSION, number(v.version));
    if v.lease != 0 {
        h.insert(LEASE, number(v.lease));
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactBody {
    revision: u64,
}

/// `POST /v1/cluster/compact` with `{"revision": N}`: forgets the history
/// before revision `N` on every replica (a command through the log).
/// 200 `{"compacted": N}`; 410 when `N` is already compacted, 400 when
/// it is above the current revision.
pub(super) async fn compact(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let req: CompactBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(format!("body must be {{\"revision\": <number>}}: {e}"))
    })?;
    match state.raft.propose(encode_compact(req.revision)).await {
        Ok(Outcome::Compacted { revision }) => {
            let current = state.reader.revisions().map(|r| r.current).ok();
            let mut resp = Json(json!({ "compacted": revision })).into_response();
            if let Some(c) = current {
                with_revision(&mut resp, c);
            }
            Ok(resp)
        }
        Ok(Outcome::CompactRefused {
            compacted: c,
            current,
        }) => Err(problem_at(
            if req.revision <= c {
                Problem::compacted(req.revision, c)
            } else {
                Problem::future_revision(req.revision, current)
            },
            Some(current),
        )),
        Ok(other) => Err(unexpected(&other)),
        Err(ProposeError::NotLeader { leader }) => {
            let relay = Relay::write(Method::POST, &uri, &headers, body);
            forward(&state, leader, relay).await
        }
        Err(e) => Err(e.into()),
    }
}
