//! The `KV` service: Range straight from the store (linearizable through
//! ReadIndex as the HTTP API reads, `serializable` from this node's applied
//! state), Put and DeleteRange of one key through the HTTP API's write
//! path, Txn (and Put with `prev_kv`, DeleteRange of a range or with
//! `prev_kv`) as a transaction entry (`txn.rs`), Compact through the
//! HTTP API's compaction.

use axum::body::Bytes;
use axum::http::Method;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use raft_core::{ReadConsistency, ReadError};
use tonic::{Request, Response, Status};

use super::pb::etcdserverpb::kv_server::Kv;
use super::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use super::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use super::pb::mvccpb::KeyValue;
use super::{status_of, store_status, to_i64, txn, Ctx, NO_KEY, NO_LEADER};
use crate::keys::{prefix_end, successor};
use crate::store::{KvReader, Versioned};

/// Largest Range answer, whatever `--max-list-bytes` says: clients take
/// messages of at most 4 MiB by default.
const MAX_ANSWER_BYTES: usize = (4 << 20) - (64 << 10);
/// What counting a key beyond the answer costs toward the byte bound,
/// besides the key (as a listing counts a key examined).
const COUNT_KEY_COST: usize = 64;

/// The keys a Range covers: `[start, end)`, with `end` `None` for "every
/// key from `start` on", and the longest prefix they all share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyRange {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    prefix: Vec<u8>,
}

impl KeyRange {
    /// etcd's `key` / `range_end`: no end is one key, `"\0"` every key
    /// from `key` on, otherwise `[key, range_end)`.
    pub(super) fn new(key: &[u8], range_end: &[u8]) -> Self {
        let (end, prefix) = match range_end {
            [] => (Some(successor(key)), key.to_vec()),
            [0] => (None, Vec::new()),
            // A prefix range: `end` is `key` with its last byte plus one.
            end if prefix_end(key).as_deref() == Some(end) => (Some(end.to_vec()), key.to_vec()),
            end => {
                let shared = key.iter().zip(end).take_while(|(a, b)| a == b).count();
                (Some(end.to_vec()), key[..shared].to_vec())
            }
        };
        Self {
            start: key.to_vec(),
            end,
            prefix,
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        k >= &self.start[..] && self.end.as_deref().is_none_or(|e| k < e)
    }

    /// Past the range (keys come in order).
    fn beyond(&self, k: &[u8]) -> bool {
        self.end.as_deref().is_some_and(|e| k >= e)
    }
}

/// What a Range asks for, checked.
#[derive(Debug)]
pub(super) struct RangeQuery {
    pub(super) range: KeyRange,
    pub(super) limit: usize,
    pub(super) at: Option<u64>,
    pub(super) keys_only: bool,
    pub(super) count_only: bool,
    pub(super) max_bytes: usize,
}

/// A Range's answer before its header.
#[derive(Debug, Default)]
pub(super) struct RangeResult {
    pub(super) kvs: Vec<KeyValue>,
    pub(super) more: bool,
    pub(super) count: u64,
    pub(super) revision: u64,
}

fn key_value(k: &[u8], v: Versioned, keys_only: bool) -> KeyValue {
    KeyValue {
        key: k.to_vec(),
        create_revision: to_i64(v.create_rev),
        mod_revision: to_i64(v.rev),
        version: to_i64(v.version),
        value: if keys_only {
            Vec::new()
        } else {
            v.value.to_vec()
        },
        lease: to_i64(v.lease),
    }
}

/// A Range being read: what it found and how many bytes it read.
struct Acc<'q> {
    q: &'q RangeQuery,
    out: RangeResult,
    read: usize,
    cut: bool,
}

impl Acc<'_> {
    /// Takes one key the scan visits; `false` stops the scan.
    fn visit(&mut self, k: &[u8], v: Option<Versioned>) -> bool {
        let q = self.q;
        if q.range.beyond(k) {
            return false;
        }
        match v {
            Some(v) if q.range.contains(k) => {
                self.out.count += 1;
                if q.count_only || self.out.kvs.len() >= q.limit {
                    self.read += k.len() + COUNT_KEY_COST;
                } else {
                    self.read += k.len() + v.value.len();
                    self.out.kvs.push(key_value(k, v, q.keys_only));
                }
            }
            Some(_) => return true,
            // No value at the revision: its history was read.
            None => self.read += k.len() + COUNT_KEY_COST,
        }
        self.cut = self.read >= q.max_bytes;
        !self.cut
    }

    fn finish(mut self) -> Result<RangeResult, Status> {
        let q = self.q;
        if self.cut && q.count_only {
            return Err(Status::resource_exhausted(format!(
                "raft-node: counting this range reads more than {} bytes (--max-list-bytes); \
                 count a smaller range",
                q.max_bytes
            )));
        }
        self.out.more = self.cut || (!q.count_only && self.out.count > self.out.kvs.len() as u64);
        Ok(self.out)
    }
}

/// Reads a Range (on a blocking thread): the items up to `limit` and the
/// byte bound, and the count of the keys in range while the bound allows.
/// Beyond the bound the count is a lower bound and `more` is set; a
/// `count_only` Range that reaches it fails.
pub(super) fn read_range(reader: &KvReader, q: &RangeQuery) -> Result<RangeResult, Status> {
    let mut acc = Acc {
        q,
        out: RangeResult::default(),
        read: 0,
        cut: false,
    };
    let starts_at_prefix = q.range.start == q.range.prefix;
    let after = (!starts_at_prefix).then_some(&q.range.start[..]);
    let mut at = q.at;
    // `after` is exclusive: the start key itself is read first, at the
    // revision the scan then reads too.
    if let Some(start) = after {
        let (v, n) = reader.get_at(start, at).map_err(store_status)?;
        at = Some(n);
        acc.out.revision = n;
        if !acc.visit(start, v) {
            return acc.finish();
        }
    }
    let (_, n) = reader
        .scan_at_examining(&q.range.prefix, after, at, |k, v| acc.visit(k, v))
        .map_err(store_status)?;
    acc.out.revision = n;
    acc.finish()
}

impl Ctx {
    /// The checked query of a Range, or `InvalidArgument`.
    fn range_query(&self, r: &RangeRequest) -> Result<RangeQuery, Status> {
        if r.key.is_empty() {
            return Err(Status::invalid_argument(NO_KEY));
        }
        let ascending_by_key = r.sort_target == SortTarget::Key as i32
            && (r.sort_order == SortOrder::None as i32 || r.sort_order == SortOrder::Ascend as i32);
        if !ascending_by_key {
            return Err(Status::invalid_argument(
                "raft-node: only ascending order by key is supported (sort_order NONE or ASCEND, \
                 sort_target KEY)",
            ));
        }
        if r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0
        {
            return Err(Status::invalid_argument(
                "raft-node: min/max mod/create revision filters are not supported",
            ));
        }
        if r.limit < 0 {
            return Err(Status::invalid_argument(
                "raft-node: limit must not be negative",
            ));
        }
        let limit = match usize::try_from(r.limit).unwrap_or(usize::MAX) {
            0 => usize::MAX,
            n => n,
        };
        Ok(RangeQuery {
            range: KeyRange::new(&r.key, &r.range_end),
            limit,
            at: u64::try_from(r.revision).ok().filter(|n| *n > 0),
            keys_only: r.keys_only,
            count_only: r.count_only,
            max_bytes: self.state.cfg.max_list_bytes.min(MAX_ANSWER_BYTES),
        })
    }

    /// Waits until this node may serve a read: now for `serializable`,
    /// else after a ReadIndex (the leader's, asked over the peer transport
    /// on a follower).
    async fn ready_to_read(&self, serializable: bool) -> Result<(), Status> {
        let c = if serializable {
            ReadConsistency::Stale
        } else {
            ReadConsistency::Linearizable
        };
        match self.state.raft.read(c).await {
            Ok(_) => Ok(()),
            Err(ReadError::NotLeader { .. }) => Err(Status::unavailable(NO_LEADER)),
            Err(e) => Err(status_of(&e.into())),
        }
    }

    /// A write through the HTTP API's route for `key` (a put attaching
    /// the key to `lease` when not 0); answers the revision it made.
    async fn write_key(
        &self,
        method: Method,
        key: &[u8],
        meta: &tonic::metadata::MetadataMap,
        value: Vec<u8>,
        lease: u64,
    ) -> Result<u64, Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument(NO_KEY));
        }
        let mut path = format!("/v1/kv/{}", encode_key(key));
        if lease != 0 {
            path.push_str(&format!("?lease={lease}"));
        }
        let (headers, _) = self
            .call_json(method, &path, meta, Bytes::from(value))
            .await?;
        Ok(headers
            .get("raft-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

/// A key as a path segment of the HTTP API: every byte but letters and
/// digits percent-encoded (the route decodes it back to the same bytes).
fn encode_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => utf8_percent_encode(s, NON_ALPHANUMERIC).to_string(),
        Err(_) => percent_encoding::percent_encode(key, NON_ALPHANUMERIC).to_string(),
    }
}

#[tonic::async_trait]
impl Kv for Ctx {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.into_inner();
        let q = self.range_query(&r)?;
        self.ready_to_read(r.serializable).await?;
        let slot = self.state.limits.listing_slot().ok_or_else(|| {
            status_of(&crate::http::overloaded(
                "listings read at once (--max-concurrent-listings)",
            ))
        })?;
        let reader = self.state.reader.clone();
        let at = q.at;
        let result = tokio::task::spawn_blocking(move || {
            let r = read_range(&reader, &q);
            drop(slot);
            r
        })
        .await
        .map_err(|e| Status::internal(format!("the range task failed: {e}")))??;
        // A read of the latest state answers the revision it read at, as
        // etcd does (a later write must not show in the header: a client
        // watching from `header.revision + 1` would miss it); a read of a
        // past revision answers the current one.
        let revision = match at {
            None => result.revision,
            Some(_) => self
                .state
                .reader
                .revisions()
                .map_or(result.revision, |r| r.current),
        };
        Ok(Response::new(RangeResponse {
            header: Some(self.header(Some(revision)).await),
            count: to_i64(result.count),
            more: result.more,
            kvs: result.kvs,
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let meta = req.metadata().clone();
        let p = req.into_inner();
        if p.prev_kv || p.ignore_value || p.ignore_lease {
            // The previous value, or keeping the key's value or lease as
            // the entry finds it, comes with a one-put transaction.
            self.check_user(&meta)?;
            let put = txn::put_of(p)?;
            let limits = txn::limits(&self.state.cfg);
            let (resp, rev) = crate::txn::put(&self.state.raft, &limits, put)
                .await
                .map_err(txn::txn_status)?;
            return Ok(Response::new(PutResponse {
                header: Some(self.header(Some(rev)).await),
                prev_kv: resp.prev_kv.map(txn::kv_out),
            }));
        }
        let p = txn::put_of(p)?;
        let rev = self
            .write_key(Method::PUT, &p.key, &meta, p.value.to_vec(), p.lease)
            .await?;
        Ok(Response::new(PutResponse {
            header: Some(self.header(Some(rev)).await),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let meta = req.metadata().clone();
        let d = req.into_inner();
        if !d.range_end.is_empty() || d.prev_kv {
            // A range, or the deleted values: a one-delete transaction
            // (one log entry deleting every key of the range).
            self.check_user(&meta)?;
            if d.key.is_empty() {
                return Err(Status::invalid_argument(NO_KEY));
            }
            let limits = txn::limits(&self.state.cfg);
            let (resp, rev) =
                crate::txn::delete_range(&self.state.raft, &limits, txn::delete_of(d))
                    .await
                    .map_err(txn::txn_status)?;
            return Ok(Response::new(DeleteRangeResponse {
                header: Some(self.header(Some(rev)).await),
                deleted: to_i64(resp.deleted),
                prev_kvs: resp.prev_kvs.into_iter().map(txn::kv_out).collect(),
            }));
        }
        let (deleted, rev) = match self
            .write_key(Method::DELETE, &d.key, &meta, Vec::new(), 0)
            .await
        {
            Ok(rev) => (1, Some(rev)),
            Err(s) if s.code() == tonic::Code::NotFound => (0, None),
            Err(s) => return Err(s),
        };
        Ok(Response::new(DeleteRangeResponse {
            header: Some(self.header(rev).await),
            deleted,
            prev_kvs: Vec::new(),
        }))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let meta = req.metadata().clone();
        self.check_user(&meta)?;
        let request = txn::txn_of(req.into_inner())?;
        let limits = txn::limits(&self.state.cfg);
        let resp = crate::txn::propose(&self.state.raft, &limits, request)
            .await
            .map_err(txn::txn_status)?;
        let header = self.header(Some(resp.revision)).await;
        Ok(Response::new(TxnResponse {
            responses: txn::responses_out(resp.responses, &header),
            header: Some(header),
            succeeded: resp.succeeded,
        }))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let meta = req.metadata().clone();
        let c = req.into_inner();
        // `physical` is ignored: compaction is applied through the log,
        // and answered once this node applied it.
        let body = serde_json::json!({ "revision": c.revision.max(0) }).to_string();
        self.call_json(
            Method::POST,
            "/v1/cluster/compact",
            &meta,
            Bytes::from(body),
        )
        .await?;
        Ok(Response::new(CompactionResponse {
            header: Some(self.header(None).await),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::KeyRange;

    #[test]
    fn one_key_prefix_and_from_key_ranges() {
        let one = KeyRange::new(b"a", b"");
        assert!(one.contains(b"a") && !one.contains(b"a\0") && !one.contains(b"ab"));
        let prefix = KeyRange::new(b"ab", b"ac");
        assert_eq!(prefix.prefix, b"ab");
        assert!(prefix.contains(b"ab") && prefix.contains(b"abz") && !prefix.contains(b"ac"));
        let from = KeyRange::new(b"b", b"\0");
        assert!(from.prefix.is_empty() && from.contains(b"zz") && !from.contains(b"a"));
        let span = KeyRange::new(b"b", b"d");
        assert!(span.prefix.is_empty() && span.contains(b"c") && !span.contains(b"d"));
    }
}
