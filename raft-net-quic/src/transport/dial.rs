//! Dialing a peer, its handshake, and settling duplicate connections.

use super::handshake::{check_cluster, HelloRefusal};
use super::*;

/// Exponential backoff with full jitter: a random delay in
/// `[min, min * 2^failures]`, capped at `max`.
pub(super) fn backoff(cfg: &QuicConfig, failures: u32) -> Duration {
    let ceiling = cfg
        .reconnect_backoff_min
        .saturating_mul(1u32 << failures.min(16))
        .min(cfg.reconnect_backoff_max);
    let lo = cfg.reconnect_backoff_min.as_micros() as u64;
    let hi = (ceiling.as_micros() as u64).max(lo);
    Duration::from_micros(rand::thread_rng().gen_range(lo..=hi))
}

/// The live connection to `peer`, dialing (after any backoff) if there is none.
pub(super) async fn connection(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
) -> Result<Connection, ConnectError> {
    if let Some(c) = peer.live() {
        return Ok(c);
    }
    let mut dial = peer.dial.lock().await;
    if let Some(c) = peer.live() {
        return Ok(c);
    }
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return Err(ConnectError::Closed);
    }
    if let Some(at) = dial.next_attempt {
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = shutdown.wait_for(|s| *s) => return Err(ConnectError::Closed),
        }
        // An inbound connection may have arrived while we waited.
        if let Some(c) = peer.live() {
            return Ok(c);
        }
    }
    let result = tokio::select! {
        r = dial_peer(shared, peer) => r,
        _ = shutdown.wait_for(|s| *s) => return Err(ConnectError::Closed),
    };
    match result {
        Ok(conn) => {
            dial.failures = 0;
            dial.next_attempt = None;
            let kept = install(shared, peer, conn.clone(), shared.id);
            tokio::spawn(serve_connection(shared.clone(), peer.id, conn, false));
            Ok(kept)
        }
        Err(e) => {
            dial.failures += 1;
            dial.next_attempt = Some(Instant::now() + backoff(&shared.cfg, dial.failures));
            peer.connect_failures.increment(1);
            if dial.failures == 1 || dial.failures.is_power_of_two() {
                tracing::warn!(peer = peer.id, failures = dial.failures, error = %e, "cannot connect to peer");
            }
            Err(e)
        }
    }
}

/// Addresses of one name tried per connection attempt, in the resolver's
/// order (a stale record among them does not make the peer unreachable).
pub(super) const DIAL_ADDRESSES_MAX: usize = 3;

/// Dials `peer` and runs the handshake: at its address, or for a name at
/// each address it resolves to now (up to [`DIAL_ADDRESSES_MAX`]) until one
/// answers. A peer that refuses is not tried at its other addresses.
pub(super) async fn dial_peer(
    shared: &Arc<Shared>,
    peer: &Peer,
) -> Result<Connection, ConnectError> {
    let addr = lock(&peer.addr).clone();
    let timeout = shared.cfg.handshake_timeout;
    let targets =
        resolve(shared, &addr, timeout)
            .await
            .map_err(|detail| ConnectError::Connect {
                peer: peer.id,
                addr: addr.clone(),
                detail,
            })?;
    let mut last = None;
    for target in targets {
        match dial_at(shared, peer, &addr, target).await {
            Ok(conn) => {
                if addr.ip().is_none() {
                    let mut known = lock(&peer.resolved);
                    if *known != [target] {
                        tracing::info!(peer = peer.id, name = %addr.host(), address = %target, "peer name resolved");
                        *known = vec![target];
                    }
                }
                return Ok(conn);
            }
            Err(e @ (ConnectError::Refused { .. } | ConnectError::Closed)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("resolve returns at least one address"))
}

/// Dials `peer` at `target` (what `addr` resolved to) and runs the
/// handshake, with this node's cluster id if it has one. A peer of the
/// previous release refuses a `Hello` with one (trailing bytes): it is
/// dialed again without.
async fn dial_at(
    shared: &Arc<Shared>,
    peer: &Peer,
    addr: &PeerAddr,
    target: SocketAddr,
) -> Result<Connection, ConnectError> {
    let cluster = *lock(&shared.cluster);
    match dial_at_with(shared, peer, addr, target, cluster).await {
        Err(ConnectError::Refused { reason, .. })
            if cluster.is_some() && is_old_hello_refusal(&reason) =>
        {
            tracing::info!(
                peer = peer.id,
                "the peer speaks the previous handshake (no cluster id): connecting without it"
            );
            dial_at_with(shared, peer, addr, target, None).await
        }
        other => other,
    }
}

/// Whether `reason` is the previous release's refusal of a `Hello` that
/// carries a cluster id: its strict decoder calls the id trailing bytes.
fn is_old_hello_refusal(reason: &str) -> bool {
    reason.starts_with("bad Hello") && reason.contains("unexpected bytes after the frame body")
}

/// Why a handshake failed.
enum HandshakeError {
    /// The acceptor's `Welcome` names another cluster.
    WrongCluster(HelloRefusal),
    /// Anything else, as text.
    Other(String),
}

impl From<String> for HandshakeError {
    fn from(e: String) -> Self {
        Self::Other(e)
    }
}

/// The dialer's side of the handshake on `conn`: its `Hello` (with
/// `cluster`, if any), the acceptor's `Welcome` checked.
async fn handshake(
    shared: &Shared,
    peer: NodeId,
    conn: &Connection,
    cluster: Option<u128>,
) -> Result<(), HandshakeError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[StreamKind::Handshake as u8]);
    let hello = Frame::Hello(Hello {
        from: shared.id,
        to: peer,
        cluster,
    });
    encode_frame(&hello, shared.cfg.max_frame_bytes, &mut buf).map_err(|e| e.to_string())?;
    send.write_all(&buf).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    match read_frame(&mut recv, HANDSHAKE_FRAME_BYTES_MAX).await {
        Ok(Some(Frame::Welcome {
            node,
            cluster: theirs,
        })) if node == peer => {
            check_cluster(peer, theirs, shared.id, cluster).map_err(HandshakeError::WrongCluster)
        }
        Ok(Some(Frame::Welcome { node, .. })) => Err(format!("answered as node {node}").into()),
        Ok(other) => Err(format!("unexpected handshake answer {other:?}").into()),
        Err(e) => Err(e.to_string().into()),
    }
}

/// [`dial_at`], sending `cluster` in the `Hello`.
async fn dial_at_with(
    shared: &Arc<Shared>,
    peer: &Peer,
    addr: &PeerAddr,
    target: SocketAddr,
    cluster: Option<u128>,
) -> Result<Connection, ConnectError> {
    let timeout = shared.cfg.handshake_timeout;
    let fail = |detail: String| ConnectError::Connect {
        peer: peer.id,
        addr: addr.clone(),
        detail: match addr.ip() {
            Some(_) => detail,
            None => format!("{detail} (resolved to {target})"),
        },
    };
    let connecting = shared
        .endpoint
        .connect_with(
            lock(&shared.client_config).clone(),
            target,
            &node_dns_name(peer.id),
        )
        .map_err(|e| fail(e.to_string()))?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| fail(format!("no handshake within {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let refused = |conn: &Connection, fallback: String| match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => ConnectError::Refused {
            peer: peer.id,
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        _ => fail(fallback),
    };
    let handshake = handshake(shared, peer.id, &conn, cluster);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(())) => match recheck_connection(shared, &conn, peer.id, false) {
            // The lists may have been reloaded since TLS checked the peer.
            Ok(()) => Ok(conn),
            Err(e) => {
                close_revoked(shared, &conn, peer.id, &e);
                Err(ConnectError::Refused {
                    peer: peer.id,
                    reason: format!("its certificate no longer passes: {e}"),
                })
            }
        },
        Ok(Err(HandshakeError::WrongCluster(e))) => {
            tracing::warn!(peer = peer.id, reason = %e, "refusing a peer of another cluster");
            conn.close(VarInt::from_u32(e.close_code()), e.to_string().as_bytes());
            Err(ConnectError::Refused {
                peer: peer.id,
                reason: e.to_string(),
            })
        }
        Ok(Err(HandshakeError::Other(e))) => {
            // Give a close frame from the peer a moment to arrive: it carries
            // the reason (version, identity) we want to report.
            let _ = tokio::time::timeout(Duration::from_millis(200), conn.closed()).await;
            Err(refused(&conn, e))
        }
        Err(_) => {
            conn.close(
                VarInt::from_u32(close_code::PROTOCOL),
                b"handshake timed out",
            );
            Err(fail(format!("no handshake answer within {timeout:?}")))
        }
    }
}

/// Makes `conn` the connection to `peer` unless a preferred one exists.
/// Returns the connection to use.
///
/// The connection that loses is not closed at once: messages already
/// written to it are still in flight, and the peer reads them. It is closed
/// after [`DUPLICATE_GRACE`], when they have landed.
pub(super) fn install(
    shared: &Shared,
    peer: &Peer,
    conn: Connection,
    dialed_by: NodeId,
) -> Connection {
    let preferred = shared.id.min(peer.id);
    let mut cur = lock(&peer.current);
    if let Some(old) = cur.as_ref() {
        let old_alive = old.conn.close_reason().is_none();
        if old_alive && old.conn.stable_id() != conn.stable_id() {
            let race = old.since.elapsed() < DIAL_RACE_WINDOW;
            if race && old.dialed_by == preferred && dialed_by != preferred {
                close_later(conn, "duplicate connection");
                return old.conn.clone();
            }
            close_later(old.conn.clone(), "replaced by a newer connection");
        }
    }
    *cur = Some(Link {
        forwarding: speaks_forwarding(&conn),
        conn: conn.clone(),
        dialed_by,
        since: Instant::now(),
    });
    peer.connects.increment(1);
    peer.connected.set(1.0);
    tracing::debug!(peer = peer.id, dialed_by, "connected");
    conn
}

/// How long a superseded connection stays open so that what was already
/// written to it arrives.
pub(super) const DUPLICATE_GRACE: Duration = Duration::from_secs(2);

pub(super) fn close_later(conn: Connection, reason: &'static str) {
    tokio::spawn(async move {
        tokio::time::sleep(DUPLICATE_GRACE).await;
        conn.close(VarInt::from_u32(close_code::DUPLICATE), reason.as_bytes());
    });
}

/// Looks `addr` up (a name, at every attempt: the peer may have moved) and
/// returns the addresses to dial, in the resolver's order: those of the
/// local socket's family (an IPv4 socket cannot reach an IPv6 address), at
/// most [`DIAL_ADDRESSES_MAX`], at least one.
pub(super) async fn resolve(
    shared: &Arc<Shared>,
    addr: &PeerAddr,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, String> {
    let found = match tokio::time::timeout(timeout, addr.resolve()).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Err(format!("cannot resolve {}: {e}", addr.host())),
        Err(_) => {
            return Err(format!(
                "no answer resolving {} within {timeout:?}",
                addr.host()
            ))
        }
    };
    let v4_only = shared.endpoint.local_addr().is_ok_and(|l| l.is_ipv4());
    let targets: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| !v4_only || a.is_ipv4())
        .take(DIAL_ADDRESSES_MAX)
        .collect();
    if targets.is_empty() {
        return Err(format!(
            "{} resolves only to IPv6 addresses: {found:?}",
            addr.host()
        ));
    }
    Ok(targets)
}
