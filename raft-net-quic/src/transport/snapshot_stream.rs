//! Snapshot streams: the sender's attempts and the receiver's side, the
//! I/O around the pure state machines of `transfer.rs`.

use super::transfer::{
    check_offer, on_offer_answer, on_result, OfferPolicy, ReceiverStep, Receiving, SenderError,
    Sending,
};
use super::*;

impl QuicTransport {
    /// Streams a snapshot to `to` on its own low-priority stream, resuming
    /// after broken connections, up to `snapshot_attempts_max` attempts.
    /// `transfer_id` names the transfer; the receiver resumes a partial
    /// transfer with the same sender and id.
    ///
    /// # Errors
    ///
    /// [`SnapshotError`] when the peer is unknown, the source fails, or every
    /// attempt failed.
    pub async fn stream_snapshot(
        &self,
        to: NodeId,
        transfer_id: u64,
        meta: Bytes,
        source: Arc<dyn SnapshotSource>,
    ) -> Result<SnapshotSent, SnapshotError> {
        let peer = self.peer(to).ok_or(SnapshotError::UnknownPeer(to))?;
        let shared = &self.shared;
        wait_out_refusal(shared, &peer, transfer_id).await?;
        // The peer may have been removed while we waited.
        let peer = self.peer(to).ok_or(SnapshotError::UnknownPeer(to))?;
        let offer = SnapshotOffer {
            transfer_id,
            total_bytes: source.len(),
            meta,
        };
        let mut stats = SnapshotSent {
            total_bytes: offer.total_bytes,
            bytes_sent: 0,
            attempts: 0,
            start_offsets: Vec::new(),
        };
        let mut last = String::new();
        while stats.attempts < shared.cfg.snapshot_attempts_max {
            if *shared.shutdown.borrow() {
                return Err(SnapshotError::Closed);
            }
            stats.attempts += 1;
            let conn = match connection(shared, &peer).await {
                Ok(c) => c,
                Err(ConnectError::Closed) => return Err(SnapshotError::Closed),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match snapshot_attempt(shared, &peer, &conn, &offer, source.as_ref(), &mut stats).await
            {
                Ok(()) => return Ok(stats),
                Err(AttemptError::Source(e)) => return Err(SnapshotError::Source(e)),
                Err(AttemptError::Refused(e)) => {
                    metrics::counter!("raft_snapshot_offers_refused_by_peer_total",
                        "peer" => to.to_string(), "reason" => e.reason.as_str())
                    .increment(1);
                    if e.reason.is_permanent() {
                        let (refusals, wait) = peer.remember_refusal(&shared.cfg, transfer_id);
                        tracing::warn!(peer = to, transfer_id, refusals, reason = %e.reason, detail = %e.detail,
                            next_offer_in = ?wait, "the peer refused the snapshot for good; not offering it again before the delay");
                        return Err(SnapshotError::Refused {
                            peer: to,
                            refusal: e,
                        });
                    }
                    tracing::warn!(peer = to, transfer_id, attempt = stats.attempts, reason = %e.reason, detail = %e.detail, "the peer refused the snapshot; retrying");
                    last = format!("refused: {e}");
                    tokio::time::sleep(backoff(&shared.cfg, stats.attempts)).await;
                }
                Err(AttemptError::Failed(e)) => {
                    tracing::info!(peer = to, transfer_id, attempt = stats.attempts, error = %e, "snapshot attempt failed; retrying");
                    last = e;
                    let delay = backoff(&shared.cfg, stats.attempts);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Err(SnapshotError::GaveUp {
            peer: to,
            attempts: stats.attempts,
            last,
        })
    }
}

/// A permanent refusal of a snapshot by a peer, remembered so that the
/// same snapshot is not offered again before `until`.
#[derive(Debug)]
pub(super) struct RefusedSnapshot {
    transfer_id: u64,
    refusals: u32,
    until: Instant,
}

/// The wait before offering a snapshot refused `refusals` times in a row:
/// `snapshot_refused_backoff_min` doubled per further refusal, capped.
pub(super) fn refused_backoff(cfg: &QuicConfig, refusals: u32) -> Duration {
    cfg.snapshot_refused_backoff_min
        .saturating_mul(1u32 << refusals.saturating_sub(1).min(20))
        .min(cfg.snapshot_refused_backoff_max)
}

impl Peer {
    /// Remembers a permanent refusal of `transfer_id`; returns how many in
    /// a row (the same snapshot) and the wait before it is offered again.
    fn remember_refusal(&self, cfg: &QuicConfig, transfer_id: u64) -> (u32, Duration) {
        let mut slot = lock(&self.snapshot_refused);
        let refusals = match slot.as_ref() {
            Some(r) if r.transfer_id == transfer_id => r.refusals.saturating_add(1),
            _ => 1,
        };
        let wait = refused_backoff(cfg, refusals);
        *slot = Some(RefusedSnapshot {
            transfer_id,
            refusals,
            until: Instant::now() + wait,
        });
        (refusals, wait)
    }

    /// Forgets a remembered refusal (the membership or the peer's address
    /// changed) and ends a transfer's wait for it.
    pub(super) fn forget_refusal(&self) {
        *lock(&self.snapshot_refused) = None;
        self.snapshot_reset.notify_waiters();
    }
}

/// Waits until the same snapshot (`transfer_id`) may be offered to `peer`
/// again after a permanent refusal; returns at once for another snapshot.
async fn wait_out_refusal(
    shared: &Shared,
    peer: &Peer,
    transfer_id: u64,
) -> Result<(), SnapshotError> {
    let reset = peer.snapshot_reset.notified();
    tokio::pin!(reset);
    reset.as_mut().enable();
    let until = match lock(&peer.snapshot_refused).as_ref() {
        Some(r) if r.transfer_id == transfer_id && r.until > Instant::now() => r.until,
        _ => return Ok(()),
    };
    tracing::debug!(
        peer = peer.id,
        transfer_id,
        "holding back a snapshot the peer refused"
    );
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        _ = tokio::time::sleep_until(until.into()) => Ok(()),
        _ = &mut reset => Ok(()),
        _ = shutdown.wait_for(|s| *s) => Err(SnapshotError::Closed),
    }
}

/// The receiving side of a snapshot stream the peer opened.
pub(super) async fn receive_snapshot(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let max = shared.cfg.max_frame_bytes;
    let offer = match read_frame(&mut recv, max).await {
        Ok(Some(Frame::SnapshotOffer(o))) => o,
        Ok(None) | Err(FrameError::Stream(_)) => return,
        Ok(Some(other)) => {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("snapshot stream: expected an offer, got {other:?}"),
            )
        }
        Err(e) => return protocol_error(&shared, peer, &conn, format!("snapshot stream: {e}")),
    };
    let policy = OfferPolicy {
        this: shared.id,
        allowed: shared.peer_allowed(peer),
        limit: shared.cfg.snapshot_bytes_max,
        has_sink: shared.sink.is_some(),
    };
    let sink = match (check_offer(peer, &offer, &policy), shared.sink.clone()) {
        (Ok(()), Some(sink)) => sink,
        (Err(e), _) => return refuse(&shared, peer, &offer, &mut send, e).await,
        (Ok(()), None) => return,
    };
    let begun = sink.begin(peer, &offer).await;
    let rx = match begun.and_then(|offset| Receiving::resume(offer.total_bytes, offset)) {
        Ok(rx) => rx,
        Err(e) => return refuse(&shared, peer, &offer, &mut send, e).await,
    };
    tracing::info!(
        peer,
        transfer_id = offer.transfer_id,
        total_bytes = offer.total_bytes,
        from_offset = rx.offset(),
        "receiving snapshot"
    );
    let resume = Frame::SnapshotResume {
        offset: rx.offset(),
    };
    if write_frame(&mut send, &resume, max).await.is_err() {
        return;
    }
    let Some(verdict) =
        receive_chunks(&shared, peer, &conn, &offer, sink.as_ref(), rx, &mut recv).await
    else {
        return; // the stream broke (kept for a resume) or the peer broke the protocol
    };
    match &verdict {
        Some(e) => shared.note_refusal(peer, offer.transfer_id, offer.total_bytes, e),
        None => tracing::info!(
            peer,
            transfer_id = offer.transfer_id,
            bytes = offer.total_bytes,
            "snapshot received"
        ),
    }
    let _ = write_frame(&mut send, &Frame::SnapshotResult { error: verdict }, max).await;
    finish(&shared, &mut send).await;
}

/// Reads chunks into the sink until the sender is done: the verdict, or
/// `None` when the stream broke or the peer broke the protocol (the
/// connection is then closed here).
async fn receive_chunks(
    shared: &Shared,
    peer: NodeId,
    conn: &Connection,
    offer: &SnapshotOffer,
    sink: &dyn SnapshotSink,
    mut rx: Receiving,
    recv: &mut RecvStream,
) -> Option<Option<SnapshotRefusal>> {
    let received =
        metrics::counter!("raft_net_snapshot_bytes_received_total", "peer" => peer.to_string());
    let id = offer.transfer_id;
    loop {
        let frame = match read_frame(recv, shared.cfg.max_frame_bytes).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(FrameError::Stream(_)) => return None,
            Err(e) => {
                protocol_error(shared, peer, conn, format!("snapshot stream: {e}"));
                return None;
            }
        };
        match rx.on_frame(frame) {
            ReceiverStep::Write { offset, data } => {
                let len = data.len() as u64;
                if let Err(e) = sink.write(peer, id, offset, data).await {
                    return Some(Some(e));
                }
                rx.wrote(len);
                received.increment(len);
            }
            ReceiverStep::Finish {
                total_bytes,
                crc32c,
            } => return Some(sink.finish(peer, id, total_bytes, crc32c).await.err()),
            ReceiverStep::Refuse(e) => return Some(Some(e)),
            ReceiverStep::Protocol(detail) => {
                protocol_error(shared, peer, conn, detail);
                return None;
            }
        }
    }
}

/// Counts and answers a refusal, then ends the stream.
async fn refuse(
    shared: &Shared,
    peer: NodeId,
    offer: &SnapshotOffer,
    send: &mut SendStream,
    e: SnapshotRefusal,
) {
    shared.note_refusal(peer, offer.transfer_id, offer.total_bytes, &e);
    let answer = Frame::SnapshotResult { error: Some(e) };
    let _ = write_frame(send, &answer, shared.cfg.max_frame_bytes).await;
    finish(shared, send).await;
}

/// Ends the answer stream and waits (at most the handshake timeout) for
/// the peer to have read it.
async fn finish(shared: &Shared, send: &mut SendStream) {
    let _ = send.finish();
    let _ = tokio::time::timeout(shared.cfg.handshake_timeout, send.stopped()).await;
}

pub(super) enum AttemptError {
    Source(std::io::Error),
    Failed(String),
    Refused(SnapshotRefusal),
}

impl From<SenderError> for AttemptError {
    fn from(e: SenderError) -> Self {
        match e {
            SenderError::Refused(r) => Self::Refused(r),
            SenderError::Failed(d) => Self::Failed(d),
        }
    }
}

async fn read_answer(recv: &mut RecvStream, max: u32) -> Result<Option<Frame>, AttemptError> {
    read_frame(recv, max)
        .await
        .map_err(|e| AttemptError::Failed(e.to_string()))
}

/// One attempt: offer, resume where the receiver is, chunks, done, verdict.
pub(super) async fn snapshot_attempt(
    shared: &Shared,
    peer: &Peer,
    conn: &Connection,
    offer: &SnapshotOffer,
    source: &dyn SnapshotSource,
    stats: &mut SnapshotSent,
) -> Result<(), AttemptError> {
    let max = shared.cfg.max_frame_bytes;
    let failed = |e: String| AttemptError::Failed(e);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
    let _ = send.set_priority(PRIORITY_SNAPSHOT);
    send.write_all(&[StreamKind::Snapshot as u8])
        .await
        .map_err(|e| failed(e.to_string()))?;
    write_frame(&mut send, &Frame::SnapshotOffer(offer.clone()), max)
        .await
        .map_err(failed)?;
    let start = on_offer_answer(read_answer(&mut recv, max).await?, offer.total_bytes)?;
    stats.start_offsets.push(start);
    let mut tx = Sending::new(offer.total_bytes, shared.cfg.snapshot_chunk_bytes, start);
    let mut buf = BytesMut::new();
    while let Some((offset, len)) = tx.next_read() {
        let data = source
            .read_at(offset, len)
            .await
            .map_err(AttemptError::Source)?;
        let Some(frame) = tx.on_data(data).map_err(AttemptError::Source)? else {
            continue; // before the resume point: checksummed only
        };
        let sent = match &frame {
            Frame::SnapshotChunk(c) => c.data.len() as u64,
            _ => 0,
        };
        buf.clear();
        encode_frame(&frame, max, &mut buf).map_err(|e| failed(e.to_string()))?;
        send.write_all(&buf)
            .await
            .map_err(|e| failed(e.to_string()))?;
        stats.bytes_sent += sent;
        peer.snapshot_bytes_sent.increment(sent);
    }
    write_frame(&mut send, &tx.done(), max)
        .await
        .map_err(failed)?;
    let _ = send.finish();
    on_result(read_answer(&mut recv, max).await?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_snapshot_waits_longer_each_time_up_to_the_cap() {
        let cfg = QuicConfig {
            snapshot_refused_backoff_min: Duration::from_secs(10),
            snapshot_refused_backoff_max: Duration::from_secs(300),
            ..QuicConfig::default()
        };
        let waits: Vec<u64> = (1..=8)
            .map(|n| refused_backoff(&cfg, n).as_secs())
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(refused_backoff(&cfg, u32::MAX).as_secs(), 300);
    }
}
