//! The gRPC front end of the watch checker: etcd's v3 `Watch.Watch`
//! stream, through a client generated from raft-node's own protos
//! (`build.rs`) on an HTTP/2 connection (no TLS) the watcher opens to each
//! member it follows, as raft-bench's `--protocol grpc` does.
//!
//! One stream carries the watcher's one watch: a `WatchCreateRequest` of
//! its range (`key` / `range_end` with etcd's conventions, as the SSE
//! watchers send them), `start_revision` the last revision seen + 1 (the
//! watch's start the first time), `progress_notify`. [`observe`] turns each
//! response into what the checker records: the `created` response (no
//! events), changes (one response may carry several events, of one or more
//! revisions: one [`Delivery`](super::check::Delivery) per revision, by the
//! events' `mod_revision`), progress (no events: every change up to the
//! header's revision was sent) and `canceled` (with `compact_revision` set
//! when the history the watch needs is compacted).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::combinators::MapErr;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::{http, Service};
use tonic::Code;

use super::check::{Change, WatchedEvent};

/// The code generated from raft-node's `proto/etcd/*.proto` (lints are not
/// ours to fix).
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    rustdoc::all
)]
pub mod pb {
    /// etcd's `mvccpb` (key-values and events).
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's `etcdserverpb` (the services).
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::watch_client::WatchClient;
use pb::etcdserverpb::watch_request::RequestUnion;
use pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use pb::mvccpb::event::EventType;

/// The `cancel_reason` of a watch canceled because its node is stopping
/// (raft-node's; the watcher moves on as after a dropped connection).
pub const SHUTDOWN_REASON: &str = "the node is stopping";

/// What one response of the watch stream tells the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The watch opened, with this id.
    Created {
        /// The id the node gave it.
        watch_id: i64,
    },
    /// Changes: per revision, in the order they came, its events.
    Changes(Vec<(u64, Vec<WatchedEvent>)>),
    /// Every change up to this revision was sent.
    Progress(u64),
    /// The node ended (or refused) the watch.
    Canceled {
        /// The first revision a watch can start from now, when the
        /// history the watch needs is compacted (else 0).
        compact_revision: u64,
        /// The node's `cancel_reason`.
        reason: String,
    },
}

/// What `resp` tells a watcher whose watch the node created with id
/// `watch_id` (`None`: not yet created, so `resp` must be the `created`
/// response).
///
/// # Errors
///
/// What the response gets wrong: a response before `created` or a second
/// `created`, another watch's id, events in the `created` response, an
/// event without key-value, revision or a known type, events above the
/// header's revision, a fragment (never asked for), a progress response
/// without header.
pub fn observe(resp: &WatchResponse, watch_id: Option<i64>) -> Result<Observation, String> {
    let header_rev = resp.header.as_ref().map(|h| h.revision);
    let Some(id) = watch_id else {
        if !resp.created {
            return Err(format!(
                "a response before the watch was created (watch_id {}, {} events)",
                resp.watch_id,
                resp.events.len()
            ));
        }
        if !resp.events.is_empty() {
            return Err(format!(
                "the created response carries {} events",
                resp.events.len()
            ));
        }
        if resp.canceled {
            return Ok(canceled(resp));
        }
        return Ok(Observation::Created {
            watch_id: resp.watch_id,
        });
    };
    if resp.created {
        return Err(format!(
            "a second created response (watch_id {}) for watch {id}",
            resp.watch_id
        ));
    }
    if resp.fragment {
        return Err("a fragment, which the watch did not ask for".into());
    }
    // A progress response to a `WatchProgressRequest` has id -1 (etcd
    // 3.4); the watcher sends none, but the node may answer so.
    let progress_any = resp.watch_id == -1 && resp.events.is_empty() && !resp.canceled;
    if resp.watch_id != id && !progress_any {
        return Err(format!(
            "a response for watch {}, not this stream's watch {id}",
            resp.watch_id
        ));
    }
    if resp.canceled {
        return Ok(canceled(resp));
    }
    if resp.events.is_empty() {
        return match header_rev {
            Some(r) if r >= 0 => Ok(Observation::Progress(r.unsigned_abs())),
            Some(r) => Err(format!("a progress response of revision {r}")),
            None => Err("a progress response without header".into()),
        };
    }
    let mut out: Vec<(u64, Vec<WatchedEvent>)> = Vec::new();
    for e in &resp.events {
        let kv =
            e.kv.as_ref()
                .ok_or_else(|| "an event without kv".to_string())?;
        let rev = u64::try_from(kv.mod_revision)
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| {
                format!(
                    "an event of {:?} with mod_revision {}",
                    String::from_utf8_lossy(&kv.key),
                    kv.mod_revision
                )
            })?;
        if header_rev.is_some_and(|h| h < kv.mod_revision) {
            return Err(format!(
                "an event at revision {rev} in a response whose header has revision {}",
                header_rev.unwrap_or_default()
            ));
        }
        let change = match EventType::try_from(e.r#type) {
            Ok(EventType::Put) => Change::Put(kv.value.clone()),
            Ok(EventType::Delete) => Change::Delete,
            Err(_) => return Err(format!("an event of unknown type {}", e.r#type)),
        };
        let event = WatchedEvent {
            key: kv.key.clone(),
            change,
        };
        match out.last_mut() {
            Some((r, events)) if *r == rev => events.push(event),
            _ => out.push((rev, vec![event])),
        }
    }
    Ok(Observation::Changes(out))
}

fn canceled(resp: &WatchResponse) -> Observation {
    Observation::Canceled {
        compact_revision: u64::try_from(resp.compact_revision).unwrap_or(0),
        reason: resp.cancel_reason.clone(),
    }
}

/// The `start_revision` of a watch that starts at `start` and has seen
/// every change up to `last` (0: nothing yet): one past `last`, as
/// `Last-Event-ID` resumes over SSE; with `past_last` (the negative
/// control) one further, so the resume loses a revision.
pub fn start_revision(start: u64, last: u64, past_last: bool) -> u64 {
    if last == 0 {
        start
    } else {
        last + 1 + u64::from(past_last)
    }
}

/// The request that opens the watch of `[key, range_end)` from `start`.
pub fn create_request(key: &[u8], range_end: &[u8], start: u64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start_revision: i64::try_from(start).unwrap_or(i64::MAX),
            progress_notify: true,
            ..WatchCreateRequest::default()
        })),
    }
}

/// A failure of the connection itself (not an answer from the node).
#[derive(Debug)]
pub(super) struct Transport(hyper::Error);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 connection: {}", self.0)
    }
}

impl std::error::Error for Transport {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

type ResponseBody = MapErr<Incoming, fn(hyper::Error) -> Transport>;

/// One HTTP/2 connection, as the service the generated client calls.
#[derive(Clone)]
pub(super) struct H2(SendRequest<tonic::body::Body>);

impl Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<ResponseBody>;
    type Error = Transport;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Transport>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Transport>> {
        self.0.poll_ready(cx).map_err(Transport)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let sent = self.0.send_request(req);
        Box::pin(async move {
            let resp = sent.await.map_err(Transport)?;
            Ok(resp.map(|b| b.map_err(Transport as fn(hyper::Error) -> Transport)))
        })
    }
}

/// An open watch stream. Dropping it ends the request stream and closes
/// the connection.
pub(super) struct Opened {
    /// The responses.
    pub(super) responses: tonic::Streaming<WatchResponse>,
    /// Dropping it ends the request stream.
    _close: tokio::sync::oneshot::Sender<()>,
    /// The connection's task, aborted on drop.
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Why a stream could not be opened.
pub(super) enum OpenError {
    /// No connection (refused, unreachable, not in `connect_timeout`).
    Connect(String),
    /// The node answered the call with an error.
    Status(tonic::Status),
}

/// Opens a connection to `url` (`http://host:port`) and a watch stream on
/// it whose only request is `create`; the request stream stays open until
/// the [`Opened`] is dropped.
pub(super) async fn open(
    url: &str,
    create: WatchRequest,
    connect_timeout: Duration,
) -> Result<Opened, OpenError> {
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| OpenError::Connect(format!("{url} is not an http:// URL")))?;
    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(host))
        .await
        .map_err(|_| OpenError::Connect(format!("no connection in {connect_timeout:?}")))?
        .map_err(|e| OpenError::Connect(format!("connecting: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| OpenError::Connect(format!("HTTP/2 handshake: {e}")))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let origin: http::Uri = url
        .parse()
        .map_err(|e| OpenError::Connect(format!("{url}: {e}")))?;
    let mut client = WatchClient::with_origin(H2(sender), origin);
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    let requests = futures::stream::iter([create]).chain(
        futures::stream::once(closed).filter_map(|_| futures::future::ready(None::<WatchRequest>)),
    );
    match client.watch(requests).await {
        Ok(r) => Ok(Opened {
            responses: r.into_inner(),
            _close: close,
            conn,
        }),
        Err(s) => {
            conn.abort();
            Err(OpenError::Status(s))
        }
    }
}

/// What the generated client answers when the connection is not ready
/// for a call (it died after the HTTP/2 handshake: a member killed just
/// after it accepted, a connection over `--grpc-max-connections` closed at
/// once): `Unknown` with this message and no source.
const NOT_READY: &str = "Service was not ready";

/// Whether a failed call failed on the connection rather than in the
/// node.
pub(super) fn is_transport(status: &tonic::Status) -> bool {
    if status.code() == Code::Unknown && status.message().starts_with(NOT_READY) {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<Transport>() || e.is::<hyper::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether an error answer says the request itself is wrong, or that the
/// node failed serving it (`Internal`, `Unknown`: what a 500 is over SSE),
/// a bug of the harness or the node, recorded, rather than the node or the
/// connection being unable to serve it now (a kill, a pause, a partition,
/// a node without leader: the watcher moves on). A lost connection, which
/// tonic reports as `Unknown` or `Internal` too, is told apart by its
/// source ([`is_transport`]).
pub(super) fn is_refusal(status: &tonic::Status) -> bool {
    !is_transport(status)
        && matches!(
            status.code(),
            Code::Internal
                | Code::Unknown
                | Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::DataLoss
        )
}

#[cfg(test)]
mod tests {
    use super::pb::etcdserverpb::ResponseHeader;
    use super::pb::mvccpb::{Event, KeyValue};
    use super::*;

    fn header(revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        })
    }

    fn event(kind: EventType, key: &str, value: &str, rev: i64) -> Event {
        Event {
            r#type: kind as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                mod_revision: rev,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    fn put(key: &str, value: &str) -> WatchedEvent {
        WatchedEvent {
            key: key.as_bytes().to_vec(),
            change: Change::Put(value.as_bytes().to_vec()),
        }
    }

    fn del(key: &str) -> WatchedEvent {
        WatchedEvent {
            key: key.as_bytes().to_vec(),
            change: Change::Delete,
        }
    }

    #[test]
    fn the_created_response_opens_the_watch_and_carries_no_change() {
        let created = WatchResponse {
            header: header(40),
            watch_id: 3,
            created: true,
            ..WatchResponse::default()
        };
        // The header's revision is the store's, not how far the watch got:
        // it is no progress.
        assert_eq!(
            observe(&created, None),
            Ok(Observation::Created { watch_id: 3 })
        );
        assert!(observe(&created, Some(3)).unwrap_err().contains("second"));
        let with_events = WatchResponse {
            events: vec![event(EventType::Put, "a", "1", 5)],
            ..created
        };
        assert!(observe(&with_events, None)
            .unwrap_err()
            .contains("created response carries 1 events"));
        let early = WatchResponse {
            header: header(5),
            watch_id: 3,
            events: vec![event(EventType::Put, "a", "1", 5)],
            ..WatchResponse::default()
        };
        assert!(observe(&early, None).unwrap_err().contains("before"));
    }

    #[test]
    fn several_events_in_one_response_become_one_delivery_per_revision() {
        let resp = WatchResponse {
            header: header(9),
            watch_id: 0,
            events: vec![
                event(EventType::Put, "a", "1", 7),
                event(EventType::Delete, "b", "", 7),
                event(EventType::Put, "c", "2", 9),
            ],
            ..WatchResponse::default()
        };
        assert_eq!(
            observe(&resp, Some(0)),
            Ok(Observation::Changes(vec![
                (7, vec![put("a", "1"), del("b")]),
                (9, vec![put("c", "2")]),
            ]))
        );
        // Out of order, each revision keeps its place, for the checker to
        // find.
        let back = WatchResponse {
            events: vec![
                event(EventType::Put, "a", "1", 9),
                event(EventType::Put, "b", "1", 7),
            ],
            ..resp.clone()
        };
        assert_eq!(
            observe(&back, Some(0)),
            Ok(Observation::Changes(vec![
                (9, vec![put("a", "1")]),
                (7, vec![put("b", "1")]),
            ]))
        );
        let above_header = WatchResponse {
            header: header(8),
            ..resp.clone()
        };
        assert!(observe(&above_header, Some(0))
            .unwrap_err()
            .contains("revision 9 in a response whose header has revision 8"));
        let other_watch = WatchResponse {
            watch_id: 4,
            ..resp.clone()
        };
        assert!(observe(&other_watch, Some(0))
            .unwrap_err()
            .contains("watch 4"));
        let no_revision = WatchResponse {
            events: vec![event(EventType::Put, "a", "1", 0)],
            ..resp.clone()
        };
        assert!(observe(&no_revision, Some(0))
            .unwrap_err()
            .contains("mod_revision 0"));
        let unknown_type = WatchResponse {
            events: vec![Event {
                r#type: 7,
                ..event(EventType::Put, "a", "1", 9)
            }],
            ..resp
        };
        assert!(observe(&unknown_type, Some(0))
            .unwrap_err()
            .contains("unknown type 7"));
    }

    #[test]
    fn a_response_without_events_is_progress_to_its_header_revision() {
        let progress = WatchResponse {
            header: header(12),
            watch_id: 2,
            ..WatchResponse::default()
        };
        assert_eq!(observe(&progress, Some(2)), Ok(Observation::Progress(12)));
        // As etcd answers a `WatchProgressRequest`.
        let any = WatchResponse {
            watch_id: -1,
            ..progress.clone()
        };
        assert_eq!(observe(&any, Some(2)), Ok(Observation::Progress(12)));
        let bare = WatchResponse {
            header: None,
            ..progress
        };
        assert!(observe(&bare, Some(2)).unwrap_err().contains("header"));
    }

    #[test]
    fn a_cancel_reports_its_compact_revision_and_reason() {
        let compacted = WatchResponse {
            header: header(50),
            watch_id: 1,
            canceled: true,
            compact_revision: 31,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            ..WatchResponse::default()
        };
        let want = Observation::Canceled {
            compact_revision: 31,
            reason: "etcdserver: mvcc: required revision has been compacted".into(),
        };
        assert_eq!(observe(&compacted, Some(1)), Ok(want.clone()));
        // raft-node answers `created`, then `canceled`; a refusal is both
        // at once.
        let refused = WatchResponse {
            created: true,
            ..compacted.clone()
        };
        assert_eq!(observe(&refused, None), Ok(want));
        let stopping = WatchResponse {
            compact_revision: 0,
            cancel_reason: SHUTDOWN_REASON.into(),
            ..compacted
        };
        assert_eq!(
            observe(&stopping, Some(1)),
            Ok(Observation::Canceled {
                compact_revision: 0,
                reason: SHUTDOWN_REASON.into()
            })
        );
    }

    /// An `Internal` or `Unknown` answer of a member (a failure inside
    /// the node, as a 500 over SSE) is recorded, as a refusal is; the
    /// member being unable to serve now, and a lost connection (which
    /// tonic also reports as `Unknown` or `Internal`, with the connection
    /// error as its source), are not.
    #[tokio::test]
    async fn an_internal_or_unknown_answer_is_recorded_a_lost_connection_is_not() {
        for recorded in [
            tonic::Status::internal("the range task failed"),
            tonic::Status::unknown("a panic in the handler"),
            tonic::Status::invalid_argument("bad range"),
        ] {
            assert!(is_refusal(&recorded), "{recorded:?}");
        }
        for passing in [
            // Review finding (MEDIUM): the connection died before the call
            // (the generated client's readiness check), no source.
            tonic::Status::unknown(format!("{NOT_READY}: transport error: connection closed")),
            tonic::Status::unavailable("etcdserver: no leader"),
            tonic::Status::deadline_exceeded("etcdserver: request timed out"),
            tonic::Status::cancelled("the node is stopping"),
        ] {
            assert!(!is_refusal(&passing), "{passing:?}");
        }
        // A connection the member dropped: its HTTP/2 connection fails,
        // and the stream's status is made from that error as tonic makes
        // it for a response body that fails.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { drop(listener.accept().await) });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        accept.await.unwrap();
        let lost = match hyper::client::conn::http2::handshake::<_, _, tonic::body::Body>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        {
            Err(e) => e,
            Ok((_sender, conn)) => conn.await.unwrap_err(),
        };
        let status = tonic::Status::from_error(Box::new(Transport(lost)));
        assert!(
            matches!(
                status.code(),
                Code::Unknown | Code::Internal | Code::Unavailable
            ),
            "{status:?}"
        );
        assert!(is_transport(&status), "{status:?}");
        assert!(!is_refusal(&status), "{status:?}");
    }

    #[test]
    fn a_watch_resumes_one_past_the_last_revision_seen() {
        assert_eq!(start_revision(1, 0, false), 1);
        assert_eq!(start_revision(1, 41, false), 42);
        // The negative control skips a revision on every resume.
        assert_eq!(start_revision(1, 41, true), 43);
        assert_eq!(start_revision(1, 0, true), 1);
    }

    #[test]
    fn the_create_request_asks_for_the_range_from_the_revision_with_progress() {
        let r = create_request(b"e1", b"e2", 17);
        let Some(RequestUnion::CreateRequest(c)) = r.request_union else {
            panic!("not a create request: {r:?}");
        };
        assert_eq!(
            (c.key, c.range_end, c.start_revision, c.progress_notify),
            (b"e1".to_vec(), b"e2".to_vec(), 17, true)
        );
        assert_eq!((c.watch_id, c.prev_kv, c.filters.len()), (0, false, 0));
    }
}
