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
//!   a watch on keys nobody writes moves on with the store). It never goes
//!   below a revision the stream's progress responses reported, nor is 0
//!   once the store has revisions: it waits while a snapshot install
//!   replaces the data or a watch opened since from an older revision
//!   catches up (etcd answers once every watch is synced).
//!
//! Responses wait in a queue of `--watch-queue` entries for the client; a
//! client that does not read holds the stream's watches at their own
//! bounded queues (a watcher that falls behind catches up from the
//! history later), so memory stays bounded.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
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
use crate::store::KvReader;
use crate::watch::{
    CancelReason, Event, EventKind, KeyValue, WatchError, WatchRequest, WatchResponse, WatchStream,
};

/// The id etcd 3.4 gives progress responses to a `WatchProgressRequest`.
const PROGRESS_ID: i64 = -1;

/// How long a `WatchProgressRequest` that cannot be answered yet waits
/// before it is tried again.
const PROGRESS_RETRY: Duration = Duration::from_millis(50);

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
            progress: Progress::default(),
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
    /// The stream's answers to `WatchProgressRequest`s.
    progress: Progress,
}

/// The answers of one stream to its `WatchProgressRequest`s.
#[derive(Debug, Default)]
struct Progress {
    /// When a request that could not be answered yet is tried again
    /// (`None`: no request waits).
    retry_at: Option<Instant>,
    /// The highest revision a progress response of the stream reported.
    reported: u64,
}

impl Progress {
    /// The revision a progress response answers now, when the store is at
    /// `now` (`None`: unknown, a snapshot install is replacing the data)
    /// and the stream's open watches sent every change up to the
    /// revisions `sent`: the lowest of them (at most `now`).
    ///
    /// `None`, and the request waits ([`PROGRESS_RETRY`], then again),
    /// while `now` is unknown, while the answer would be below a revision
    /// the stream reported (a watch opened since from an older revision
    /// has not caught up), or 0 while the store has revisions (a watch
    /// has sent nothing yet): as etcd, which answers only once every
    /// watch of the stream is synced. Requests made while one waits get
    /// that one answer.
    fn answer(&mut self, now: Option<u64>, sent: impl Iterator<Item = u64>) -> Option<u64> {
        let revision = now.map(|now| (sent.min().unwrap_or(now).min(now), now));
        match revision {
            Some((revision, now)) if revision >= self.reported && (revision > 0 || now == 0) => {
                self.retry_at = None;
                self.reported = revision;
                Some(revision)
            }
            _ => {
                self.retry_at = Some(Instant::now() + PROGRESS_RETRY);
                None
            }
        }
    }
}

/// The store's current revision (`None`: it cannot be read now, as while
/// a snapshot install replaces the data).
fn store_revision(reader: &KvReader) -> Option<u64> {
    reader.revisions().ok().map(|r| r.current)
}

/// Waits until `at` (forever when `None`).
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the session loop woke for.
enum Next {
    Request(Option<PbRequest>),
    Failed(Status),
    Response(i64, WatchResponse),
    /// Time to try a waiting `WatchProgressRequest` again.
    Progress,
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
                () = until(self.progress.retry_at) => Next::Progress,
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
                Next::Progress => self.answer_progress().await,
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
                () = until(self.progress.retry_at) => if !self.answer_progress().await { return },
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
        store_revision(&self.ctx.state.reader).unwrap_or(0)
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
            Some(RequestUnion::ProgressRequest(_)) => self.answer_progress().await,
            None => true,
        }
    }

    /// Answers a `WatchProgressRequest` if it can be answered now (else it
    /// waits, see [`Progress::answer`]); `false` when the client went
    /// away.
    async fn answer_progress(&mut self) -> bool {
        let now = store_revision(&self.ctx.state.reader);
        if !self.catch_up().await {
            return false;
        }
        // Watches that ended on their own are no longer held back.
        let open = &self.watches;
        self.sent.retain(|id, _| open.contains_key(id));
        let Some(revision) = self.progress.answer(now, self.sent.values().copied()) else {
            return true;
        };
        let r = PbResponse {
            header: Some(self.header(revision)),
            watch_id: PROGRESS_ID,
            ..PbResponse::default()
        };
        self.send(r).await
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

#[cfg(test)]
mod tests {
    use raft_core::StateMachine;

    use super::*;
    use crate::store::test_support::{self, put};

    /// Takes what `w` sends until it sent every change through `rev`.
    async fn through(w: &mut WatchStream, rev: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while w.sent_through() < rev {
                let _ = tokio::time::timeout(Duration::from_millis(20), w.next()).await;
            }
        })
        .await
        .expect("the watch got there");
    }

    /// While a snapshot install replaces the data the store's revision
    /// cannot be read: a `WatchProgressRequest` then waits (as etcd's
    /// waits for its watches to be synced) and is answered once the
    /// install is over, never with revision 0 or below a revision the
    /// stream reported. A watch opened from an older revision holds the
    /// answer back until it caught up.
    #[tokio::test]
    async fn progress_during_a_snapshot_install_waits_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = test_support::store(dir.path(), 100);
        sm.apply(&[put(1, "a"), put(2, "b"), put(3, "a")])
            .await
            .unwrap();
        let reader = sm.reader();
        let mut watch = crate::watch::WatchRequest::key("a");
        watch.start_revision = 1;
        let mut w = sm.watches().watch(watch.clone()).unwrap();
        through(&mut w, 3).await;
        let mut p = Progress::default();
        assert_eq!(
            p.answer(store_revision(&reader), [w.sent_through()].into_iter()),
            Some(3)
        );

        let saved = sm.begin_install_halfway();
        assert_eq!(store_revision(&reader), None);
        let during = p.answer(store_revision(&reader), [w.sent_through()].into_iter());
        assert_eq!(during, None, "answered {during:?} while installing");
        assert!(p.retry_at.is_some(), "the request waits");
        sm.end_install_halfway(saved);
        assert_eq!(p.answer(store_revision(&reader), [3].into_iter()), Some(3));
        assert_eq!(p.retry_at, None);

        // A watch opened from revision 2 has sent nothing yet: the answer
        // waits until it got to the revision reported.
        watch.start_revision = 2;
        let mut late = sm.watches().watch(watch).unwrap();
        let behind = p.answer(store_revision(&reader), [3, 1].into_iter());
        assert_eq!(behind, None, "answered {behind:?} after reporting 3");
        through(&mut late, 3).await;
        assert_eq!(
            p.answer(
                store_revision(&reader),
                [3, late.sent_through()].into_iter()
            ),
            Some(3)
        );
        // Nor 0 when the store has revisions: a watch from revision 1 that
        // sent nothing yet holds a first answer back too.
        let mut fresh = Progress::default();
        assert_eq!(fresh.answer(Some(3), [0].into_iter()), None);
        assert_eq!(fresh.answer(Some(3), [2].into_iter()), Some(2));
        // An empty store answers 0; a stream without watches, the store's.
        assert_eq!(
            Progress::default().answer(Some(0), [0].into_iter()),
            Some(0)
        );
        assert_eq!(
            Progress::default().answer(Some(3), std::iter::empty()),
            Some(3)
        );
    }
}
