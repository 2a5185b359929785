//! `GET /v1/watch`: the store's changes as server-sent events, from this
//! node's own applied state (any member serves it, followers too).
//!
//! Query: `key` (or `key_base64`), then `prefix=true` (every key starting
//! with `key`) or `range_end` / `range_end_base64` (etcd's conventions:
//! absent for `key` alone, `\0` for every key from `key` on), and
//! `start_revision` (first revision reported; absent or 0: from now),
//! `prev_kv=true`, `no_put=true`, `no_delete=true`,
//! `progress_notify=true`. A `Last-Event-ID: N` header (what an
//! `EventSource` sends when it reconnects) resumes after revision `N` and
//! takes precedence over `start_revision`.
//!
//! Events:
//! - unnamed (`message`), `id: <revision>`: every change of one revision
//!   the watch covers, together, as `{"revision": R, "events": [...]}`. A
//!   revision is never split across events, so resuming after the last id
//!   seen loses and repeats nothing.
//! - `progress`, `id: <revision>`: every change up to it was sent.
//! - `canceled`: `{"reason": "compacted", "compact_revision": C}` (the
//!   history the watch needed is gone; start again from `C + 1` at the
//!   earliest) or another reason; the stream then ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::limits::overloaded;
use super::{Answer, Shared};
use crate::keys::prefix_end;
use crate::problem::Problem;
use crate::watch::{
    CancelReason, Event, EventKind, KeyValue, WatchError, WatchRequest, WatchResponse,
};

/// The query of `GET /v1/watch`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WatchParams {
    key: Option<String>,
    key_base64: Option<String>,
    range_end: Option<String>,
    range_end_base64: Option<String>,
    prefix: Option<bool>,
    start_revision: Option<u64>,
    prev_kv: Option<bool>,
    no_put: Option<bool>,
    no_delete: Option<bool>,
    progress_notify: Option<bool>,
}

fn bytes_param(
    name: &str,
    text: Option<String>,
    b64: Option<String>,
) -> Result<Option<Bytes>, Problem> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(Problem::bad_request(format!(
            "give {name} or {name}_base64, not both"
        ))),
        (Some(t), None) => Ok(Some(Bytes::from(t))),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map(|v| Some(Bytes::from(v)))
            .map_err(|_| Problem::bad_request(format!("{name}_base64 is not base64"))),
        (None, None) => Ok(None),
    }
}

/// The watch a request asks for.
fn request_of(
    p: WatchParams,
    headers: &HeaderMap,
    max_key: usize,
) -> Result<WatchRequest, Problem> {
    let key = bytes_param("key", p.key, p.key_base64)?
        .ok_or_else(|| Problem::bad_request("key (or key_base64) is required"))?;
    let end = bytes_param("range_end", p.range_end, p.range_end_base64)?;
    if key.len() > max_key || end.as_ref().is_some_and(|e| e.len() > max_key) {
        return Err(Problem::bad_request(format!(
            "key and range_end are limited to {max_key} bytes"
        )));
    }
    let range_end = match (p.prefix.unwrap_or(false), end) {
        (true, Some(_)) => return Err(Problem::bad_request("give prefix or range_end, not both")),
        (true, None) => Bytes::from(prefix_end(&key).unwrap_or_else(|| vec![0])),
        (false, end) => end.unwrap_or_default(),
    };
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Problem::bad_request("Last-Event-ID must be a revision number"))?,
        ),
    };
    let start_revision = match resume {
        Some(last) => last.saturating_add(1),
        None => p.start_revision.unwrap_or(0),
    };
    Ok(WatchRequest {
        key,
        range_end,
        start_revision,
        prev_kv: p.prev_kv.unwrap_or(false),
        no_put: p.no_put.unwrap_or(false),
        no_delete: p.no_delete.unwrap_or(false),
        progress_notify: p.progress_notify.unwrap_or(false),
    })
}

impl From<WatchError> for Problem {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::TooManyWatchers { .. } => overloaded("watches (--watch-max-watchers)"),
            WatchError::InvalidRange => Problem::bad_request(e.to_string()),
            WatchError::Compacted {
                requested,
                compacted,
            } => Problem::new(
                StatusCode::GONE,
                "revision-compacted",
                "Revision compacted",
                e.to_string(),
            )
            .with("requested_revision", requested)
            .with("compacted_revision", compacted),
            WatchError::Store(s) => s.into(),
        }
    }
}

/// Bytes as JSON: `name` when UTF-8, else `name_base64`.
fn put_bytes(obj: &mut serde_json::Map<String, Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(name.to_owned(), json!(s)),
        Err(_) => obj.insert(
            format!("{name}_base64"),
            json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    };
}

fn kv_json(kv: &KeyValue) -> Value {
    let mut o = serde_json::Map::new();
    put_bytes(&mut o, "key", &kv.key);
    o.insert("create_revision".into(), json!(kv.create_revision));
    o.insert("mod_revision".into(), json!(kv.mod_revision));
    o.insert("version".into(), json!(kv.version));
    put_bytes(&mut o, "value", &kv.value);
    if kv.lease != 0 {
        o.insert("lease".into(), json!(kv.lease));
    }
    Value::Object(o)
}

fn event_json(e: &Event) -> Value {
    let mut o = json!({
        "type": match e.kind { EventKind::Put => "put", EventKind::Delete => "delete" },
        "kv": kv_json(&e.kv),
    });
    if let Some(p) = &e.prev_kv {
        o["prev_kv"] = kv_json(p);
    }
    o
}

/// A watch response as a server-sent event.
fn sse_of(r: &WatchResponse) -> SseEvent {
    match r {
        WatchResponse::Changes { revision, events } => {
            let events: Vec<Value> = events.iter().map(event_json).collect();
            SseEvent::default()
                .id(revision.to_string())
                .data(json!({"revision": revision, "events": events}).to_string())
        }
        WatchResponse::Progress { revision } => SseEvent::default()
            .event("progress")
            .id(revision.to_string())
            .data(json!({"revision": revision}).to_string()),
        WatchResponse::Canceled(reason) => {
            let data = match reason {
                CancelReason::Compacted { compacted } => {
                    json!({"reason": "compacted", "compact_revision": compacted})
                }
                CancelReason::Store(detail) => json!({"reason": "store_error", "detail": detail}),
                CancelReason::Shutdown => json!({"reason": "shutdown"}),
            };
            SseEvent::default().event("canceled").data(data.to_string())
        }
    }
}

/// `GET /v1/watch`: see the module's documentation.
pub(super) async fn watch(
    State(state): State<Shared>,
    headers: HeaderMap,
    params: Result<Query<WatchParams>, QueryRejection>,
) -> Answer {
    let params = params
        .map(|Query(p)| p)
        .map_err(|e| Problem::bad_request(format!("malformed query string: {e}")))?;
    let req = request_of(params, &headers, state.cfg.max_key_bytes)?;
    let stream = state.watches.watch(req)?;
    let events = stream.map(|r| Ok::<_, Infallible>(sse_of(&r)));
    // Comments often enough that the connection's send timeout never
    // takes a quiet watch for a stalled client.
    let keep = (state.cfg.http_send_timeout / 3)
        .clamp(Duration::from_millis(100), Duration::from_secs(10));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> WatchParams {
        let uri: axum::http::Uri = format!("/v1/watch?{q}").parse().unwrap();
        Query::try_from_uri(&uri).unwrap().0
    }

    #[test]
    fn queries_map_to_etcd_ranges_and_last_event_id_resumes_after_it() {
        let none = HeaderMap::new();
        let r = request_of(params("key=a&prefix=true&start_revision=5"), &none, 16).unwrap();
        assert_eq!(
            (&r.key[..], &r.range_end[..], r.start_revision),
            (&b"a"[..], &b"b"[..], 5)
        );
        let r = request_of(params("key=a&range_end=%00"), &none, 16).unwrap();
        assert_eq!(&r.range_end[..], b"\0");
        let r = request_of(params("key_base64=AP8%3D&prev_kv=true"), &none, 16).unwrap();
        assert_eq!((&r.key[..], r.prev_kv), (&[0u8, 0xFF][..], true));
        let mut resume = HeaderMap::new();
        resume.insert("last-event-id", "41".parse().unwrap());
        let r = request_of(params("key=a&start_revision=5"), &resume, 16).unwrap();
        assert_eq!(r.start_revision, 42);
        for bad in [
            "prefix=true",
            "key=a&prefix=true&range_end=b",
            "key=aaaaaaaaaaaaaaaaa",
            "key=a&key_base64=YQ%3D%3D",
        ] {
            assert!(request_of(params(bad), &none, 16).is_err(), "{bad}");
        }
        resume.insert("last-event-id", "x".parse().unwrap());
        assert!(request_of(params("key=a"), &resume, 16).is_err());
    }

    #[test]
    fn binary_keys_and_values_are_shown_in_base64() {
        let kv = KeyValue {
            key: Bytes::from_static(b"\xff"),
            create_revision: 1,
            mod_revision: 2,
            version: 2,
            value: Bytes::from_static(b"text"),
            lease: 0,
        };
        let j = kv_json(&kv);
        assert_eq!(j["key_base64"], "/w==");
        assert_eq!(j["value"], "text");
        assert!(j.get("key").is_none());
    }
}
