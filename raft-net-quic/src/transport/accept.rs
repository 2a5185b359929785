//! Accepting peers: slots, QUIC Retry, the handshake, serving streams.

use super::handshake::{verify_hello, HelloContext, HelloRefusal};
use super::*;

pub(super) async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(incoming) = incoming else { return };
        admit(&shared, incoming);
    }
}

/// Decides on a new inbound connection without waiting: a Retry, a
/// refusal, or a slot and a task that runs its handshake.
pub(super) fn admit(shared: &Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let validated = incoming.remote_address_validated();
    let known = shared.is_peer_address(remote);
    let max = shared.cfg.connections_max;
    let general = max - shared.cfg.connections_reserved_for_peers;
    // Address validation under load: past the threshold, a client must
    // prove it receives at its address before it costs any state. A
    // member's address must be proven too before it takes a reserved slot
    // (a spoofed packet cannot take the member's place).
    let busy = shared.handshaking.load(Ordering::SeqCst) >= shared.cfg.retry_handshakes_threshold;
    let general_full = shared.inbound_slots.load(Ordering::SeqCst) >= general;
    if !validated && incoming.may_retry() && (busy || (known && general_full)) {
        shared.retries.increment(1);
        if let Err(e) = incoming.retry() {
            e.into_incoming().ignore();
        }
        return;
    }
    // A slot is taken from the first packet on (handshaking connections
    // count), and never beyond the limit; the reserved ones only by the
    // validated address of a peer.
    let limit = if known && validated { max } else { general };
    if shared
        .inbound_slots
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_err()
    {
        tracing::warn!(%remote, limit, known, "connection limit reached; refusing");
        shared.refused_connections.increment(1);
        incoming.refuse();
        return;
    }
    let slot = CountGuard(shared.inbound_slots.clone());
    // Handshakes per source IP, for sources that are not a peer's address.
    let per_ip = if known {
        None
    } else {
        match IpSlot::acquire(shared, remote.ip()) {
            Some(s) => Some(s),
            None => {
                tracing::warn!(%remote, limit = shared.cfg.handshakes_per_ip_max, "too many handshakes from one address; refusing");
                shared.refused_connections.increment(1);
                incoming.refuse();
                return;
            }
        }
    };
    shared.handshaking.fetch_add(1, Ordering::SeqCst);
    let handshaking = Handshaking {
        _count: CountGuard(shared.handshaking.clone()),
        _per_ip: per_ip,
    };
    tokio::spawn(accept_one(shared.clone(), incoming, slot, handshaking));
}

/// Completes an inbound connection: TLS (the client certificate is checked
/// against the CA by rustls), then the `Hello`, whose claimed node id must be
/// named by that certificate.
pub(super) async fn accept_one(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    _slot: CountGuard,
    handshaking: Handshaking,
) {
    let remote = incoming.remote_address();
    let timeout = shared.cfg.handshake_timeout;
    let conn = match tokio::time::timeout(timeout, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "inbound connection failed");
            shared.refused_connections.increment(1);
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "inbound handshake timed out");
            return;
        }
    };
    let refuse = |code: u32, reason: String| {
        tracing::warn!(%remote, reason = %reason, "refusing peer connection");
        shared.refused_connections.increment(1);
        conn.close(VarInt::from_u32(code), reason.as_bytes());
    };
    let (mut send, hello) = match tokio::time::timeout(timeout, read_hello(&shared, &conn)).await {
        Ok(Ok(x)) => x,
        Ok(Err((code, reason))) => return refuse(code, reason),
        Err(_) => {
            return refuse(
                close_code::PROTOCOL,
                "no Hello within the handshake timeout".into(),
            )
        }
    };
    let chain = peer_chain(&conn);
    let leaf = chain.first();
    let ctx = HelloContext {
        this: shared.id,
        leaf,
        refuse_unknown_peers: shared.cfg.refuse_unknown_peers,
        in_peer_table: lock(&shared.peers).contains_key(&hello.from),
        allowed: shared.peer_allowed(hello.from),
        cluster: *lock(&shared.cluster),
    };
    if let Err(e) = verify_hello(&hello, &ctx) {
        return refuse(e.close_code(), e.to_string());
    }
    // The lists may have been reloaded since TLS checked the certificate.
    if let Err(e) = recheck_connection(&shared, &conn, hello.from, true) {
        return refuse(close_code::REVOKED, format!("certificate refused: {e}"));
    }
    let Some(_peer_slot) = PeerSlot::acquire(&shared, hello.from) else {
        let e = HelloRefusal::TooManyConnections {
            peer: hello.from,
            this: shared.id,
            max: shared.cfg.connections_per_peer_max,
        };
        return refuse(e.close_code(), e.to_string());
    };
    let mut buf = BytesMut::new();
    // The previous release refuses a Welcome with trailing bytes: a dialer
    // that sent no cluster id gets none.
    let welcome = Frame::Welcome {
        node: shared.id,
        cluster: hello.cluster.and(ctx.cluster),
    };
    if encode_frame(&welcome, shared.cfg.max_frame_bytes, &mut buf).is_err() {
        return;
    }
    if send.write_all(&buf).await.is_err() {
        return;
    }
    let _ = send.finish();
    drop(handshaking);
    let peer = lock(&shared.peers).get(&hello.from).cloned();
    if let Some(peer) = &peer {
        let _ = install(&shared, peer, conn.clone(), hello.from);
    } else {
        tracing::debug!(
            peer = hello.from,
            "inbound connection from a peer not (yet) configured"
        );
    }
    serve_connection(shared, hello.from, conn, true).await;
}

/// Reads the dialer's handshake stream: its kind byte and `Hello`. A
/// refusal is the close code and the reason.
async fn read_hello(
    shared: &Shared,
    conn: &Connection,
) -> Result<(SendStream, Hello), (u32, String)> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| (close_code::PROTOCOL, e.to_string()))?;
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind)
        .await
        .map_err(|e| (close_code::PROTOCOL, format!("reading stream kind: {e}")))?;
    if StreamKind::from_byte(kind[0]) != Some(StreamKind::Handshake) {
        return Err((
            close_code::PROTOCOL,
            format!("expected a handshake stream, got kind {:#04x}", kind[0]),
        ));
    }
    match read_frame(&mut recv, HANDSHAKE_FRAME_BYTES_MAX).await {
        Ok(Some(Frame::Hello(h))) => Ok((send, h)),
        Ok(other) => Err((
            close_code::PROTOCOL,
            format!("expected Hello, got {other:?}"),
        )),
        Err(FrameError::Decode(DecodeError::Version { got })) => Err((
            close_code::VERSION,
            format!(
                "protocol version {got} not supported; node {} speaks version {PROTOCOL_VERSION}",
                shared.id
            ),
        )),
        Err(e) => Err((close_code::PROTOCOL, format!("bad Hello: {e}"))),
    }
}

/// Accepts the streams a peer opens on `conn` until it closes.
pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    peer_id: NodeId,
    conn: Connection,
    inbound: bool,
) {
    lock(&shared.conns).insert(
        conn.stable_id(),
        ConnEntry {
            peer: peer_id,
            conn: conn.clone(),
            inbound,
        },
    );
    // A reload that read the table before this entry was in it did not
    // check this connection: check it against the lists in force now.
    if let Err(e) = recheck_connection(&shared, &conn, peer_id, inbound) {
        close_revoked(&shared, &conn, peer_id, &e);
    }
    // Allowed when the handshake ran; the set may have changed since.
    if !shared.peer_allowed(peer_id) {
        conn.close(
            VarInt::from_u32(close_code::UNKNOWN_PEER),
            b"not a member of the configuration",
        );
    }
    let mut shutdown = shared.shutdown.subscribe();
    let mut rtt_tick = tokio::time::interval(Duration::from_secs(1));
    let rtt = metrics::gauge!("raft_net_peer_rtt_seconds", "peer" => peer_id.to_string());
    loop {
        tokio::select! {
            s = conn.accept_uni() => match s {
                Ok(recv) => { tokio::spawn(read_messages(shared.clone(), peer_id, conn.clone(), recv)); }
                Err(_) => break,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => { tokio::spawn(serve_bi(shared.clone(), peer_id, conn.clone(), send, recv)); }
                Err(_) => break,
            },
            _ = rtt_tick.tick() => rtt.set(conn.rtt().as_secs_f64()),
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    lock(&shared.conns).remove(&conn.stable_id());
    let reason = conn.close_reason();
    tracing::debug!(peer = peer_id, ?reason, "connection closed");
    if let Some(peer) = lock(&shared.peers).get(&peer_id) {
        let mut cur = lock(&peer.current);
        if cur
            .as_ref()
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id())
        {
            *cur = None;
            peer.connected.set(0.0);
        }
    }
}
