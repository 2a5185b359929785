//! Per-peer writers: bounded queues drained into the peer's streams.

use super::*;

/// Drains one queue of `peer` into its stream, reconnecting as needed.
pub(super) async fn writer(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    kind: StreamKind,
    mut rx: mpsc::Receiver<Message>,
) {
    let (priority, metrics) = match kind {
        StreamKind::Control => (PRIORITY_CONTROL, &peer.control_metrics),
        _ => (PRIORITY_REPLICATION, &peer.replication_metrics),
    };
    let mut shutdown = shared.shutdown.subscribe();
    let mut stream: Option<(usize, SendStream)> = None;
    let mut buf = BytesMut::new();
    let mut batch = Vec::with_capacity(shared.cfg.write_batch_messages_max);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(first) = first else { return };
        batch.clear();
        batch.push(first);
        while batch.len() < shared.cfg.write_batch_messages_max {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if kind == StreamKind::Replication {
            let bytes: u64 = batch.iter().map(entry_bytes).sum();
            peer.replication_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        let conn = match connection(&shared, &peer).await {
            Ok(c) => c,
            Err(ConnectError::Closed) => return,
            Err(_) => {
                metrics.dropped.increment(batch.len() as u64);
                continue;
            }
        };
        if !speaks_forwarding(&conn) {
            // Queued while the peer spoke forwarding, but the connection was
            // replaced by one that does not (the peer restarted as an older
            // release, or with forwarding off): such a peer would refuse the
            // frame and close the connection, so these are dropped here.
            let before = batch.len();
            batch.retain(|m| !is_forwarding(&m.body));
            metrics.dropped.increment((before - batch.len()) as u64);
            if batch.is_empty() {
                continue;
            }
        }
        if stream.as_ref().map(|(id, _)| *id) != Some(conn.stable_id()) {
            stream = None;
            match conn.open_uni().await {
                Ok(mut s) => {
                    let _ = s.set_priority(priority);
                    if s.write_all(&[kind as u8]).await.is_ok() {
                        stream = Some((conn.stable_id(), s));
                    }
                }
                Err(e) => tracing::debug!(peer = peer.id, error = %e, "cannot open stream"),
            }
        }
        let Some((_, s)) = stream.as_mut() else {
            metrics.dropped.increment(batch.len() as u64);
            continue;
        };
        buf.clear();
        let mut count = 0u64;
        for m in batch.drain(..) {
            let kind_name = m.body.kind();
            match encode_frame(&Frame::Message(m), shared.cfg.max_frame_bytes, &mut buf) {
                Ok(()) => count += 1,
                Err(e) => {
                    tracing::error!(peer = peer.id, kind = kind_name, error = %e, "message not sent");
                    metrics.dropped.increment(1);
                }
            }
        }
        match s.write_all(&buf).await {
            Ok(()) => {
                metrics.messages.increment(count);
                metrics.bytes.increment(buf.len() as u64);
            }
            Err(e) => {
                tracing::debug!(peer = peer.id, error = %e, "stream write failed; will reopen");
                metrics.dropped.increment(count);
                stream = None;
            }
        }
    }
}
