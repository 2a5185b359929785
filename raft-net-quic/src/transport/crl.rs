//! Certificate revocation lists: polled, reloaded by content, and
//! applied to the connections already established.

use super::*;

/// What the revocation list file held when last looked at: a hash of its
/// content, or why it could not be read. A change of either is a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CrlSeen {
    Content(u64),
    Unreadable(String),
}

pub(super) fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Reloads the revocation list file when its content changes (by content
/// hash: a rewrite within the same second and of the same length counts).
/// A file that cannot be read or parsed keeps the lists in force, warns
/// once per distinct content and counts `raft_net_crl_reload_failures_total`.
/// `seen` is the content loaded at `bind`.
pub(super) async fn crl_poller(shared: Arc<Shared>, mut seen: Option<CrlSeen>) {
    let Some(path) = shared.crl_path.clone() else {
        return;
    };
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.cfg.crl_poll_interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let read = std::fs::read(&path);
        let now = match &read {
            Ok(b) => CrlSeen::Content(content_hash(b)),
            Err(e) => CrlSeen::Unreadable(e.to_string()),
        };
        if seen.as_ref() == Some(&now) {
            continue;
        }
        seen = Some(now);
        let result = match read {
            Ok(pem) => install_crl(&shared, &pem),
            Err(e) => Err(BindError::Tls(TlsError::Load {
                what: "the certificate revocation list",
                path: path.clone(),
                detail: e.to_string(),
            })),
        };
        if let Err(e) = result {
            crl_reload_failed(&path, &e);
        }
    }
}

pub(super) fn crl_reload_failed(path: &std::path::Path, e: &BindError) {
    metrics::counter!("raft_net_crl_reload_failures_total").increment(1);
    tracing::warn!(path = %path.display(), error = %e, "reloading the certificate revocation list failed (half written or not a CRL from the cluster CA?); keeping the lists in force");
}

/// Loads the revocation list file again (see [`install_crl`]).
pub(super) fn reload_crl(shared: &Shared) -> Result<(), BindError> {
    let Some(path) = &shared.crl_path else {
        return Ok(());
    };
    let pem = std::fs::read(path).map_err(|e| {
        BindError::Tls(TlsError::Load {
            what: "the certificate revocation list",
            path: path.clone(),
            detail: e.to_string(),
        })
    });
    let result = pem.and_then(|pem| install_crl(shared, &pem));
    if let Err(e) = &result {
        crl_reload_failed(path, e);
    }
    result
}

/// Installs the revocation lists in `pem` for new handshakes and closes
/// connections whose peer they revoke. Lists that revoke this node's own
/// certificate are installed too (they still say which peers are revoked),
/// with a loud warning and `raft_net_crl_own_certificate_revoked` at 1:
/// peers that load them refuse this node until it gets a new certificate.
pub(super) fn install_crl(shared: &Shared, pem: &[u8]) -> Result<(), BindError> {
    let current = lock(&shared.tls).clone();
    let (tls, own_revoked) = current.with_crl_pem_for_reload(pem)?;
    let tls = Arc::new(tls);
    let (server_config, client_config) =
        endpoint_configs(&tls, &shared.transport_config, shared.cfg.forwarding)?;
    shared.endpoint.set_server_config(Some(server_config));
    *lock(&shared.client_config) = client_config;
    *lock(&shared.tls) = tls.clone();
    metrics::gauge!("raft_net_crl_own_certificate_revoked").set(if own_revoked {
        1.0
    } else {
        0.0
    });
    if own_revoked {
        tracing::error!(
            node = shared.id,
            "THE NEW REVOCATION LIST REVOKES THIS NODE'S OWN CERTIFICATE: peers that load it \
             refuse this node; issue it a new certificate and restart it (the list is in force \
             for checking peers)"
        );
    }
    tracing::info!(
        lists = tls.crl_count(),
        own_revoked,
        "certificate revocation list reloaded"
    );
    // The lists are in force (above) before the table is read: a connection
    // that enters the table after this read re-checks itself against them
    // (`serve_connection`), one already in it is re-checked here.
    let conns: Vec<(NodeId, Connection, bool)> = lock(&shared.conns)
        .values()
        .map(|e| (e.peer, e.conn.clone(), e.inbound))
        .collect();
    for (peer, conn, inbound) in conns {
        if let Err(e) = recheck_with(&tls, &conn, peer, inbound) {
            close_revoked(shared, &conn, peer, &e);
        }
    }
    Ok(())
}

/// The peer's certificate chain on `conn` (leaf first; empty without one).
pub(super) fn peer_chain(conn: &Connection) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|c| *c)
        .unwrap_or_default()
}

fn recheck_with(
    tls: &NodeTls,
    conn: &Connection,
    peer: NodeId,
    inbound: bool,
) -> Result<(), String> {
    tls.recheck_peer(&peer_chain(conn), peer, inbound)
}

/// Checks the peer's certificate on `conn` against the revocation lists in
/// force now. TLS checked it against the lists of when the handshake
/// began; a reload since (while the `Hello` was awaited, or before the
/// connection entered the table) must not let a revoked peer in. Without
/// lists there is nothing new to check.
pub(super) fn recheck_connection(
    shared: &Shared,
    conn: &Connection,
    peer: NodeId,
    inbound: bool,
) -> Result<(), String> {
    let tls = lock(&shared.tls).clone();
    if tls.crl_count() == 0 {
        return Ok(());
    }
    recheck_with(&tls, conn, peer, inbound)
}

/// Closes `conn` because its peer's certificate no longer passes.
pub(super) fn close_revoked(shared: &Shared, conn: &Connection, peer: NodeId, error: &str) {
    tracing::warn!(
        peer,
        error,
        "closing the connection of a peer whose certificate no longer passes"
    );
    shared.refused_connections.increment(1);
    conn.close(
        VarInt::from_u32(close_code::REVOKED),
        format!("certificate refused: {error}").as_bytes(),
    );
}
