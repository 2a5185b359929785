//! `GET /v1/kv?prefix=&limit=&cursor=&keys_only=&revision=`: a page of
//! keys in key order (as of `revision`, now by default), built on a
//! blocking thread under the memory budget and the listing slots, with a
//! cursor to go on from and the revision read (pass it back as
//! `revision` to page through one revision).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use tokio::sync::OwnedSemaphorePermit;

use super::kv::{consistency, read_params, ready_to_read, show_key, ReadParams};
use super::limits::{overloaded, ChunksBody, HttpLimits};
use super::revisions::{revision_param, with_revision};
use super::{Answer, Shared};
use crate::problem::Problem;
use crate::store::{KvReader, StoreError, Versioned};

/// One item of a listing, as JSON.
#[derive(serde::Serialize)]
struct ListItem<'a> {
    key: String,
    /// `mod_revision` (the `ETag`), under its original name.
    rev: u64,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    /// The key's lease, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

/// A listing page encoded as JSON chunks, built on a blocking thread, and
/// the memory budget it holds until sent.
struct ListPage {
    chunks: Vec<Bytes>,
    budget: Option<OwnedSemaphorePermit>,
    /// The revision the page was read at.
    revision: u64,
}

/// Why a listing page could not be built.
enum ListFailure {
    Store(StoreError),
    /// Not even one item fits the memory budget.
    NoMemory,
    /// The request went away.
    Cancelled,
}

impl From<ListFailure> for Problem {
    fn from(f: ListFailure) -> Self {
        match f {
            ListFailure::Store(e) => e.into(),
            ListFailure::NoMemory => {
                overloaded("memory for answers being sent (--http-buffer-mib)")
            }
            ListFailure::Cancelled => {
                Problem::unavailable("cancelled", "Cancelled", "the request was cancelled")
            }
        }
    }
}

/// What a page holds: from after `after` (the start when `None`), at most
/// `limit` items, and about `max_bytes`.
struct PageRequest {
    prefix: String,
    after: Option<Vec<u8>>,
    limit: usize,
    max_bytes: usize,
    keys_only: bool,
    /// As of this revision (`None`: the current one).
    at: Option<u64>,
}

/// What examining a key that has no value at a past revision counts
/// toward `--max-list-bytes` besides the key: its history records read.
const EXAMINED_KEY_COST: usize = 64;

/// One item encoded, with a leading comma when it is not the first.
fn encode_item(key: &[u8], v: &Versioned, keys_only: bool, first: bool) -> Vec<u8> {
    let value = &v.value[..];
    let text = if keys_only {
        None
    } else {
        std::str::from_utf8(value).ok()
    };
    let item = ListItem {
        key: show_key(key),
        rev: v.rev,
        create_revision: v.create_rev,
        mod_revision: v.rev,
        version: v.version,
        lease: (v.lease != 0).then_some(v.lease),
        value: text,
        value_base64: (!keys_only && text.is_none())
            .then(|| base64::engine::general_purpose::STANDARD.encode(value)),
    };
    let mut out = Vec::with_capacity(64 + if keys_only { 0 } else { value.len() + 2 });
    if !first {
        out.push(b',');
    }
    // Serializing plain strings and numbers cannot fail.
    let _ = serde_json::to_writer(&mut out, &item);
    out
}

/// Reads and encodes one page: at most `limit` items, stopping after the
/// item that brings the answer, or the bytes read from the store (values
/// included, with `keys_only` too), to `max_bytes`, and before an item the
/// memory budget cannot hold.
fn list_page(
    reader: &KvReader,
    limits: &HttpLimits,
    cancel: &AtomicBool,
    page: &PageRequest,
) -> Result<ListPage, ListFailure> {
    let mut chunks = vec![Bytes::from_static(b"{\"items\":[")];
    let mut budget = None;
    let (mut encoded, mut read, mut count) = (0usize, 0usize, 0usize);
    let mut last: Option<Vec<u8>> = None;
    let mut failure = None;
    let mut cut_short = false;
    let (more, revision) = reader
        .scan_at_examining(
            page.prefix.as_bytes(),
            page.after.as_deref(),
            page.at,
            |k, v| {
                if cancel.load(Ordering::Relaxed) {
                    failure = Some(ListFailure::Cancelled);
                    return false;
                }
                // A key with no value at a past revision: its history was
                // read; that counts, and the next page goes on after it.
                let Some(v) = v else {
                    read += k.len() + EXAMINED_KEY_COST;
                    last = Some(k.to_vec());
                    cut_short = read >= page.max_bytes;
                    return !cut_short;
                };
                let out = encode_item(k, &v, page.keys_only, count == 0);
                if !limits.reserve_more(&mut budget, out.len()) {
                    if count == 0 {
                        failure = Some(ListFailure::NoMemory);
                    }
                    cut_short = true;
                    return false;
                }
                encoded += out.len();
                read += k.len() + v.value.len();
                count += 1;
                chunks.push(Bytes::from(out));
                last = Some(k.to_vec());
                count < page.limit && encoded < page.max_bytes && read < page.max_bytes
            },
        )
        .map_err(ListFailure::Store)?;
    if let Some(f) = failure {
        return Err(f);
    }
    let more = more || cut_short;
    let mut tail = format!("],\"revision\":{revision},\"more\":{more}");
    if let (true, Some(last)) = (more, last) {
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last);
        tail.push_str(&format!(",\"next\":\"{cursor}\""));
    }
    tail.push('}');
    chunks.push(Bytes::from(tail));
    Ok(ListPage {
        chunks,
        budget,
        revision,
    })
}

/// Sets its flag when dropped: tells a blocking task its request is gone.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The page a listing's query asks for, or 400/414 for a bad one.
fn page_request(state: &Shared, params: ReadParams) -> Result<PageRequest, Problem> {
    let limit = params.limit.unwrap_or(100);
    let max_key_bytes = state.cfg.max_key_bytes;
    if limit == 0 || limit > state.cfg.max_list_limit {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {}",
            state.cfg.max_list_limit
        )));
    }
    let prefix = params.prefix.unwrap_or_default();
    if prefix.len() > max_key_bytes {
        return Err(Problem::new(
            StatusCode::URI_TOO_LONG,
            "key-too-long",
            "Prefix too long",
            "the prefix is longer than the key limit",
        ));
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(c) => match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c) {
            Ok(k) if k.len() <= max_key_bytes => Some(k),
            _ => {
                return Err(Problem::bad_request(
                    "cursor must be the `next` of a previous listing",
                ))
            }
        },
    };
    Ok(PageRequest {
        at: revision_param(params.revision.as_deref())?,
        prefix,
        after,
        limit,
        max_bytes: state.cfg.max_list_bytes,
        keys_only: params.keys_only.unwrap_or(false),
    })
}

/// `GET /v1/kv`: one page of the keys with a prefix.
pub(super) async fn list(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Answer {
    let params = read_params(params)?;
    let c = consistency(&params)?;
    let page = page_request(&state, params)?;
    if let Some(leaders_answer) = ready_to_read(&state, c, &uri, &headers).await? {
        return Ok(leaders_answer);
    }
    let slot = state
        .limits
        .listing_slot()
        .ok_or_else(|| overloaded("listings read at once (--max-concurrent-listings)"))?;
    let reader = state.reader.clone();
    let limits = state.limits.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let built = tokio::task::spawn_blocking(move || {
        let built = list_page(&reader, &limits, &cancel, &page);
        drop(slot);
        built
    })
    .await
    .map_err(|e| Problem::storage(format!("the listing task failed: {e}")))??;
    let revision = built.revision;
    let body = ChunksBody::new(built.chunks, built.budget);
    let mut resp = axum::body::Body::new(body).into_response();
    with_revision(&mut resp, revision);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
