//! The retry rules against a scripted HTTP server: what is sent again,
//! where, after how long, and what is never sent twice.

mod common;

use std::time::{Duration, Instant};

use raft_client::{Client, Error, IdempotencyKeys, Outcome, RetryPolicy, WriteOptions};
use tokio::net::TcpStream;

use common::Seen;

/// One scripted answer.
#[derive(Clone)]
enum Reply {
    /// Status, extra header lines, body.
    Answer(u16, &'static str, &'static str),
    /// Close the connection without answering, after reading the request.
    Hangup,
}

/// Serves `script` in order, one connection per request (answers close the
/// connection); returns its URL and what it received.
async fn server(script: Vec<Reply>) -> (String, Seen) {
    let (listener, url) = common::bind().await;
    (url, common::serve(listener, script, answer))
}

async fn answer(mut sock: TcpStream, reply: Reply) {
    match reply {
        Reply::Hangup => drop(sock),
        Reply::Answer(status, headers, body) => {
            common::write_answer(&mut sock, status, headers, body).await;
        }
    }
}

fn idempotency_key(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("idempotency-key: "))
        .map(|s| s.trim().to_owned())
}

const NO_LEADER: &str = r#"{"type":"urn:raft-node:problem:no-leader","title":"No leader","status":503,"detail":"no leader"}"#;
const UNKNOWN: &str =
    r#"{"type":"urn:raft-node:problem:outcome-unknown","title":"t","status":504,"detail":"lost"}"#;

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(5)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

/// A client of `endpoints` that generates no idempotency keys.
fn keyless<I: IntoIterator<Item = String>>(endpoints: I) -> Client {
    Client::builder(endpoints)
        .retry(policy())
        .idempotency_keys(IdempotencyKeys::Off)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after() {
    let (url, seen) = server(vec![
        Reply::Answer(503, "retry-after: 1\r\n", NO_LEADER),
        Reply::Answer(200, "etag: \"7\"\r\n", r#"{"rev":7}"#),
    ])
    .await;
    let c = Client::builder([url]).retry(policy()).build().unwrap();
    let started = Instant::now();
    assert_eq!(c.put("k", "v").await.unwrap(), 7);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry came before Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_503_past_the_budget_is_returned_as_not_applied() {
    let (url, _) = server(vec![Reply::Answer(503, "retry-after: 30\r\n", NO_LEADER)]).await;
    let c = Client::builder([url])
        .retry(policy().budget(Duration::from_secs(2)))
        .build()
        .unwrap();
    let err = c.put("k", "v").await.unwrap_err();
    match &err {
        Error::Unavailable { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(30)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.outcome(), Outcome::NotApplied);
}

#[tokio::test]
async fn a_write_without_a_key_is_never_sent_twice_after_a_504() {
    let (url, seen) = server(vec![
        Reply::Answer(504, "", UNKNOWN),
        Reply::Answer(200, "etag: \"1\"\r\n", r#"{"rev":1}"#),
    ])
    .await;
    let c = keyless([url]);
    let err = c.put("k", "v").await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(err.status(), Some(504));
    assert_eq!(seen.lock().unwrap().len(), 1, "the write was sent again");
}

#[tokio::test]
async fn a_write_without_a_key_whose_answer_is_lost_is_not_sent_again() {
    let (url, seen) = server(vec![
        Reply::Hangup,
        Reply::Answer(200, "etag: \"1\"\r\n", r#"{"rev":1}"#),
    ])
    .await;
    let c = keyless([url]);
    let err = c.delete("k").await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_keyed_write_is_sent_again_with_the_same_key() {
    let (url, seen) = server(vec![
        Reply::Answer(504, "", UNKNOWN),
        Reply::Hangup,
        Reply::Answer(200, "etag: \"9\"\r\n", r#"{"rev":9}"#),
    ])
    .await;
    // The default generates a key.
    let c = Client::builder([url]).retry(policy()).build().unwrap();
    assert_eq!(c.put("k", "v").await.unwrap(), 9);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let keys: Vec<_> = seen.iter().map(|h| idempotency_key(h)).collect();
    assert!(keys[0].is_some(), "no generated key: {}", seen[0]);
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn a_key_of_the_callers_is_sent_as_given() {
    let (url, seen) = server(vec![Reply::Answer(200, "etag: \"2\"\r\n", r#"{"rev":2}"#)]).await;
    let c = Client::builder([url]).build().unwrap();
    let opts = WriteOptions::default().idempotency_key("order-17");
    c.put_with("k", "v", &opts).await.unwrap();
    assert_eq!(
        idempotency_key(&seen.lock().unwrap()[0]).as_deref(),
        Some("order-17")
    );
}

#[tokio::test]
async fn a_refused_endpoint_passes_the_request_to_the_next() {
    // A port nothing listens on: bound, then closed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (url, seen) = server(vec![Reply::Answer(404, "", "{}")]).await;
    let c = keyless([dead, url]);
    // A refused connection sent nothing: even a write without a key moves on.
    assert_eq!(c.delete("k").await.unwrap(), None);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_read_whose_answer_is_lost_is_read_again_and_a_4xx_is_final() {
    let (url, seen) = server(vec![
        Reply::Hangup,
        Reply::Answer(200, "etag: \"3\"\r\n", "\u{0}bin"),
        Reply::Answer(400, "content-type: application/problem+json\r\n", r#"{"type":"urn:raft-node:problem:bad-request","title":"t","status":400,"detail":"no"}"#),
        Reply::Answer(200, "", ""),
    ])
    .await;
    let c = Client::builder([url]).retry(policy()).build().unwrap();
    let e = c.get([0xffu8, 0]).await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.rev), (&b"\0bin"[..], 3));
    assert!(seen.lock().unwrap()[0].starts_with("get /v1/kv/%ff%00 "));
    let err = c.get("x").await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.kind.as_str()), Some("bad-request"));
    assert_eq!(seen.lock().unwrap().len(), 3, "a 400 was retried");
}

#[tokio::test]
async fn an_answer_above_the_limit_is_refused() {
    let (url, _) = server(vec![Reply::Answer(200, "etag: \"1\"\r\n", "0123456789")]).await;
    let c = Client::builder([url]).max_answer_bytes(4).build().unwrap();
    let err = c.get("k").await.unwrap_err();
    assert!(matches!(err, Error::InvalidAnswer(_)), "{err:?}");
}

#[tokio::test]
async fn a_shorter_request_timeout_ends_a_silent_attempt_early() {
    // The kernel accepts the connection; nobody ever answers.
    let (silent, url) = common::bind().await;
    let c = Client::builder([url.clone()])
        .request_timeout(Duration::from_secs(60))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let quick = c.with_request_timeout(Duration::from_millis(300));
    // The setting carries over to a client of one chosen endpoint.
    for client in [quick.clone(), quick.at(&url).unwrap()] {
        let started = Instant::now();
        let err = client.get("k").await.unwrap_err();
        assert!(
            matches!(err, Error::OutcomeUnknown { .. }),
            "a timed-out read: {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the attempt waited {:?}",
            started.elapsed()
        );
    }
    drop(silent);
}
