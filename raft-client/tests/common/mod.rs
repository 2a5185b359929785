//! Test support shared by raft-client's integration tests: scripted HTTP
//! servers ([`bind`], [`serve`]) that answer one request per connection
//! and record each request's head ([`read_head`]).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request heads a server received, lowercased, in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A listener on a free loopback port and its URL, bound before its script
/// is known (a 421 names another server's address).
pub async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// Serves `script` in order, one connection per request: reads the
/// request's head, records it, then hands the connection and the script's
/// next reply to `answer` on a task of its own (a stalled answer holds no
/// other). Returns what the server received.
pub fn serve<R, F, Fut>(listener: TcpListener, script: Vec<R>, answer: F) -> Seen
where
    R: Send + 'static,
    F: Fn(TcpStream, R) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        for reply in script {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let head = read_head(&mut sock).await;
            log.lock().unwrap().push(head);
            tokio::spawn(answer(sock, reply));
        }
    });
    seen
}

/// Writes a whole answer: `status`, the extra header lines `headers`
/// (each ending in CRLF) and `body`, closing the connection after it.
/// A client that hung up already is no error of the server's.
pub async fn write_answer(sock: &mut TcpStream, status: u16, headers: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(text.as_bytes()).await;
}

/// Reads a request's head (up to the blank line, or until the peer stops
/// sending) and returns it lowercased.
pub async fn read_head(sock: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).to_lowercase()
}
