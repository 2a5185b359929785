//! Test support shared by raft-client's integration tests: scripted HTTP
//! servers read requests with [`read_head`].

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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
