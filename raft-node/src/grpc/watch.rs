//! The `Watch` service: etcd's bidirectional `Watch.Watch` stream over the
//! node's watches ([`crate::watch::Watches`]).
//!
//! One client stream carries many watches, their responses multiplexed on
//! the one response stream, each tagged with its `watch_id`:
//!
//! - `WatchCreateRequest` opens a watch (`key`, `range_end`,
//!   `start_revision`, `prev_kv`, the `NOPUT` / `NODELETE` filters,
//!   `progress_notify`; `watch_id` chosen by the client, or by the server
//!   when 0; `fragment` is ignored) and answers `created` with its id, then
//!   the watch's events, one response per revision. A watch that cannot
//!   open (a bad range, a client-chosen id in use or negative: with
//!   `watch_id` -1, as etcd; the stream's
//!   `--grpc-max-watches-per-stream` or the node's `--watch-max-watchers`
//!   reached) answers `created` and `canceled` at once with a
//!   `cancel_reason`; a compacted start revision answers `created`, then
//!   `canceled` with `compact_revision` set to the first revision a watch
//!   can start from (as etcd does).
//! - `WatchCancelRequest` ends a watch and answers `canceled`.
//! - `WatchProgressRequest` answers a progress response (`watch_id` -1, as
//!   etcd 3.4 does): every watch of the stream sent its changes up to the
//!   header's revision (the lowest any watch of the stream has looked at;
//!   a watch on keys nobody writes moves on with the store).
//!
//! Responses wait in a queue of `--watch-queue` entries for the client; a
//! client that does not read holds the stream's watches at their own
//! bounded queues (a watcher that falls behind catches up from the
//! history later), so memory stays bounded.

use std::collections::HashMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use tonic::{Request, Response, Status, Streaming};

use super::pb::etcdserverpb::watch_create_request::FilterType;
use super::pb::etcdserverpb::watch_request::RequestUnion;
use super::pb::etcdserverpb::watch_server::Watch;
use super::pb::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest as PbRequest, WatchResponse as PbResponse,
};
use super::pb::mvccpb;
use super::{to_i64, Ctx};
use crate::watch::{
    CancelReason, Event, EventKind, KeyValue, WatchError, WatchRequest, WatchResponse, WatchStream,
};

/// The id etcd 3.4 gives progress responses to a `WatchProgressRequest`.
const PROGRESS_ID: i64 = -1;

type Out = Result<PbResponse, Status>;
type Responses = Pin<Box<dyn Stream<Item = Out> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for Ctx {
    async fn watch(
        &self,
        req: Request<Streaming<PbRequest>>,
    ) -> Result<Response<Responses>, Status> {
        self.check_user(req.metadata())?;
        let (tx, rx) = mpsc::channel(self.state.cfg.watch.queue.max(1));
        let session = Session {
            ctx: self.clone(),
            tx,
            watches: StreamMap::new(),
            sent: HashMap::new(),
            next_id: 0,
            term: 0,
        };
        tokio::spawn(session.run(req.into_inner()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One client stream: its watches and where their responses go.
struct Session {
    ctx: Ctx,
    tx: mpsc::Sender<Out>,
    /// The open watches by id.
    watches: StreamMap<i64, WatchStream>,
    /// Per open watch, the revision up to which it sent every change.
    sent: HashMap<i64, u64>,
    /// The next id the server may assign.
    next_id: i64,
    /// The Raft term for headers, refreshed on each request.
    term: u64,
}

/// What the session loop woke for.
enum Next {
    Request(Option<PbRequest>),
    Failed(Status),
    Response(i64, WatchResponse),
    Gone,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<PbRequest>) {
        loop {
            let next = tokio::select! {
                m = inbound.message() => match m {
                    Ok(m) => Next::Request(m),
                    Err(s) => Next::Failed(s),
                },
                Some((id, r)) = self.watches.next(), if !self.watches.is_empty() => {
                    Next::Response(id, r)
                }
                () = self.tx.closed() => Next::Gone,
            };
            let sent = match next {
                Next::Request(Some(req)) => self.request(req).await,
                // The client closed its side: no more requests, but the
                // watches go on until it drops the response stream.
                Next::Request(None) => {
                    return self.drain().await;
                }
                Next::Failed(s) => {
                    tracing::debug!(status = %s, "a gRPC watch stream failed");
                    return;
                }
                Next::Response(id, r) => self.response(id, r).await,
                Next::Gone => return,
            };
            if !sent {
                return;
            }
        }
    }

    /// Serves the open watches until they end or the client goes away.
    async fn drain(mut self) {
        loop {
            tokio::select! {
                r = self.watches.next() => match r {
                    Some((id, r)) => if !self.response(id, r).await { return },
                    None => return,
                },
                () = self.tx.closed() => return,
            }
        }
    }

    /// Sends `r`; `false` when the client went away.
    async fn send(&self, r: PbResponse) -> bool {
        self.tx.send(Ok(r)).await.is_ok()
    }

    fn header(&self, revision: u64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.ctx.cluster_id(),
            member_id: self.ctx.state.id,
            revision: to_i64(revision),
            raft_term: self.term,
        }
    }

    fn current(&self) -> u64 {
        self.ctx
            .state
            .reader
            .revisions()
            .map(|r| r.current)
            .unwrap_or(0)
    }

    async fn refresh_term(&mut self) {
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.ctx.state.raft.status(),
        )
        .await;
        if let Ok(Some(s)) = status {
            self.term = s.engine.term;
        }
    }

    /// Serves one client request; `false` when the client went away.
    async fn request(&mut self, req: PbRequest) -> bool {
        self.refresh_term().await;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                let open = self.watches.remove(&c.watch_id).is_some();
                self.sent.remove(&c.watch_id);
                if !open {
                    return true;
                }
                let r = PbResponse {
                    header: Some(self.header(self.current())),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..PbResponse::default()
                };
                self.send(r).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let now = self.current();
                if !self.catch_up().await {
                    return false;
                }
                // Watches that ended on their own are no longer held back.
                let open = &self.watches;
                self.sent.retain(|id, _| open.contains_key(id));
                let revision = self.sent.values().copied().min().unwrap_or(now).min(now);
                let r = PbResponse {
                    header: Some(self.header(revision)),
                    watch_id: PROGRESS_ID,
                    ..PbResponse::default()
                };
                self.send(r).await
            }
            None => true,
        }
    }

    /// Before a progress response: sends what every watch has waiting and
    /// counts, for each, every revision through which it had looked at the
    /// changes as sent (a watch on keys nobody writes still moves on).
    /// `false` when the client went away.
    async fn catch_up(&mut self) -> bool {
        let queue = self.ctx.state.cfg.watch.queue.max(1);
        let mut waiting = Vec::with_capacity(self.watches.len());
        for (id, stream) in self.watches.iter_mut() {
            // Read before taking: every change through `mark` is among the
            // first `queue` responses waiting (the stream holds no more).
            let mark = stream.sent_through();
            let taken: Vec<_> = std::iter::from_fn(|| stream.try_next())
                .take(queue)
                .collect();
            waiting.push((*id, mark, taken));
        }
        for (id, mark, taken) in waiting {
            for r in taken {
                if !self.response(id, r).await {
                    return false;
                }
            }
            if let Some(sent) = self.sent.get_mut(&id) {
                *sent = (*sent).max(mark);
            }
        }
        true
    }

    /// The id of a new watch: the client's, or the next free one.
    fn id_for(&mut self, asked: i64) -> Result<i64, String> {
        if asked < 0 {
            return Err(format!("watch_id {asked} is negative"));
        }
        if asked > 0 {
            if self.watches.contains_key(&asked) {
                return Err(format!("watch_id {asked} is in use on this stream"));
            }
            return Ok(asked);
        }
        while self.watches.contains_key(&self.next_id) {
            self.next_id = self.next_id.wrapping_add(1).max(0);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(0);
        Ok(id)
    }

    /// Opens a watch; `false` when the client went away.
    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let now = self.current();
        let id = match self.id_for(c.watch_id) {
            Ok(id) => id,
            // etcd answers -1 (no watch): answering the id asked for would
            // tell the client that its live watch of that id ended.
            Err(reason) => return self.refuse(-1, now, reason, 0).await,
        };
        let limit = self.ctx.state.cfg.grpc_max_watches_per_stream;
        if self.watches.len() >= limit {
            let reason = format!(
                "this stream holds its limit of {limit} watches (--grpc-max-watches-per-stream)"
            );
            return self.refuse(id, now, reason, 0).await;
        }
        let start = u64::try_from(c.start_revision).unwrap_or(0);
        let req = WatchRequest {
            key: c.key.into(),
            range_end: c.range_end.into(),
            start_revision: start,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
        };
        match self.ctx.state.watches.watch(req) {
            Ok(stream) => {
                self.watches.insert(id, stream);
                self.sent
                    .insert(id, if start == 0 { now } else { start - 1 });
                let r = PbResponse {
                    header: Some(self.header(now)),
                    watch_id: id,
                    created: true,
                    ..PbResponse::default()
                };
                self.send(r).await
            }
            Err(WatchError::Compacted { compacted, .. }) => {
                let created = PbResponse {
                    header: Some(self.header(now)),
                    watch_id: id,
                    created: true,
                    ..PbResponse::default()
                };
                if !self.send(created).await {
                    return false;
                }
                let r = self.canceled(id, now, &CancelReason::Compacted { compacted });
                self.send(r).await
            }
            Err(e) => self.refuse(id, now, e.to_string(), 0).await,
        }
    }

    /// A watch that did not open: `created` and `canceled` at once.
    async fn refuse(&self, id: i64, now: u64, reason: String, compact: i64) -> bool {
        let r = PbResponse {
            header: Some(self.header(now)),
            watch_id: id,
            created: true,
            canceled: true,
            compact_revision: compact,
            cancel_reason: reason,
            ..PbResponse::default()
        };
        self.send(r).await
    }

    /// The response that ends watch `id` for `reason`.
    fn canceled(&self, id: i64, now: u64, reason: &CancelReason) -> PbResponse {
        let (compact, why) = match reason {
            CancelReason::Compacted { compacted } => (
                to_i64(compacted.saturating_add(1)),
                "etcdserver: mvcc: required revision has been compacted".to_owned(),
            ),
            CancelReason::Store(e) => (0, format!("the store could not be read: {e}")),
            CancelReason::Shutdown => (0, "the node is stopping".to_owned()),
        };
        PbResponse {
            header: Some(self.header(now)),
            watch_id: id,
            canceled: true,
            compact_revision: compact,
            cancel_reason: why,
            ..PbResponse::default()
        }
    }

    /// Sends a watch's response; `false` when the client went away.
    async fn response(&mut self, id: i64, r: WatchResponse) -> bool {
        let out = match r {
            WatchResponse::Changes { revision, events } => {
                self.sent.insert(id, revision);
                PbResponse {
                    header: Some(self.header(revision)),
                    watch_id: id,
                    events: events.iter().map(event_of).collect(),
                    ..PbResponse::default()
                }
            }
            WatchResponse::Progress { revision } => {
                self.sent.insert(id, revision);
                PbResponse {
                    header: Some(self.header(revision)),
                    watch_id: id,
                    ..PbResponse::default()
                }
            }
            WatchResponse::Canceled(reason) => {
                self.watches.remove(&id);
                self.sent.remove(&id);
                self.canceled(id, self.current(), &reason)
            }
        };
        self.send(out).await
    }
}

fn kv_of(kv: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: to_i64(kv.create_revision),
        mod_revision: to_i64(kv.mod_revision),
        version: to_i64(kv.version),
        value: kv.value.to_vec(),
        lease: to_i64(kv.lease),
    }
}

fn event_of(e: &Event) -> mvccpb::Event {
    let kind = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_of(&e.kv)),
        prev_kv: e.prev_kv.as_ref().map(kv_of),
    }
}
