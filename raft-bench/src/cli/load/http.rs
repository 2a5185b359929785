//! The HTTP/1.1 protocol of the load generator: each client on its own
//! keep-alive connection (hyper). The same code drives both systems; only
//! the request shape differs: raft-node takes `PUT /v1/kv/{key}` with the
//! raw value and `GET /v1/kv/{key}` (linearizable); etcd takes `POST
//! /v3/kv/put` and `POST /v3/kv/range` (linearizable) on its v3 JSON
//! gateway, with base64 in JSON.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use super::Tally;
use crate::cli::System;

/// `host:port` of an `http://host:port` URL.
pub(crate) fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// endpoints are supported: {url}"))?;
    Ok(rest.trim_end_matches('/').to_owned())
}

/// One request to send, built for the target system.
pub(crate) fn build_request(
    system: System,
    host: &str,
    key: &str,
    write: Option<&Bytes>,
    etcd_value_b64: &str,
) -> Request<Full<Bytes>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let req = Request::builder().header(hyper::header::HOST, host);
    let built = match (system, write) {
        (System::Raft, Some(v)) => req
            .method(Method::PUT)
            .uri(format!("/v1/kv/{key}"))
            .body(Full::new(v.clone())),
        (System::Raft, None) => req
            .method(Method::GET)
            .uri(format!("/v1/kv/{key}"))
            .body(Full::new(Bytes::new())),
        (System::Etcd, Some(_)) => req
            .method(Method::POST)
            .uri("/v3/kv/put")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(format!(
                "{{\"key\":\"{}\",\"value\":\"{etcd_value_b64}\"}}",
                b64.encode(key)
            )))),
        (System::Etcd, None) => req
            .method(Method::POST)
            .uri("/v3/kv/range")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(format!(
                "{{\"key\":\"{}\"}}",
                b64.encode(key)
            )))),
    };
    built.expect("a request from valid parts")
}

pub(crate) async fn connect(host: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One client's closed loop until the run ends: one request outstanding,
/// each sent once; a connection that fails or times out is replaced.
pub(super) async fn client(
    system: System,
    host: &str,
    val: Bytes,
    timeout: Duration,
    tally: &mut Tally,
) {
    let val_b64 = base64::engine::general_purpose::STANDARD.encode(&val);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while !tally.over() {
        let s = match &mut sender {
            Some(s) => s,
            None => match tokio::time::timeout(timeout, connect(host)).await {
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(_)) | Err(_) => {
                    tally.error("connect", Instant::now());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (key, write) = tally.next_op();
        let req = build_request(system, host, &key, write.then_some(&val), &val_b64);
        let sent = Instant::now();
        let result = tokio::time::timeout(timeout, async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        let done = Instant::now();
        match result {
            Ok(Ok(status)) => {
                let ok = status.is_success()
                    || (system == System::Raft && !write && status == hyper::StatusCode::NOT_FOUND);
                if ok {
                    tally.success(sent, done);
                } else {
                    tally.error(format!("HTTP {}", status.as_u16()), done);
                }
            }
            Ok(Err(_)) => {
                tally.error("connection", done);
                sender = None;
            }
            Err(_) => {
                tally.error("timeout", done);
                sender = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_each_api() {
        let v = Bytes::from_static(b"value");
        let r = build_request(System::Raft, "h:1", "k00000001", Some(&v), "");
        assert_eq!(
            (r.method(), r.uri().path()),
            (&Method::PUT, "/v1/kv/k00000001")
        );
        let r = build_request(System::Raft, "h:1", "k1", None, "");
        assert_eq!((r.method(), r.uri().path()), (&Method::GET, "/v1/kv/k1"));
        let r = build_request(System::Etcd, "h:1", "k1", Some(&v), "dmFsdWU=");
        assert_eq!((r.method(), r.uri().path()), (&Method::POST, "/v3/kv/put"));
        let body = futures::executor::block_on(r.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], br#"{"key":"azE=","value":"dmFsdWU="}"#);
        let r = build_request(System::Etcd, "h:1", "k1", None, "");
        assert_eq!(r.uri().path(), "/v3/kv/range");
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert_eq!(
            authority("http://127.0.0.1:2379/").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(authority("https://x:1").is_err());
    }
}
