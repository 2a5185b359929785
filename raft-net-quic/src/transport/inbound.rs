//! Streams a peer opens: Raft messages and snapshot transfers.

use super::*;

pub(super) fn protocol_error(shared: &Shared, peer: NodeId, conn: &Connection, detail: String) {
    tracing::warn!(peer, error = %detail, "peer protocol error; closing the connection");
    shared.protocol_errors.increment(1);
    conn.close(VarInt::from_u32(close_code::PROTOCOL), detail.as_bytes());
}

/// Reads Raft messages from a control or replication stream and hands them
/// to the application.
pub(super) async fn read_messages(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: Connection,
    mut recv: RecvStream,
) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    let stream = match StreamKind::from_byte(kind[0]) {
        Some(StreamKind::Control) => "control",
        Some(StreamKind::Replication) => "replication",
        _ => {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("unexpected unidirectional stream kind {:#04x}", kind[0]),
            );
        }
    };
    let p = peer.to_string();
    let messages = metrics::counter!("raft_net_messages_received_total", "peer" => p.clone(), "stream" => stream);
    let bytes = metrics::counter!("raft_net_bytes_received_total", "peer" => p, "stream" => stream);
    let mut reader = FrameReader::new(shared.cfg.max_frame_bytes);
    loop {
        let frame = match reader.next(&mut recv).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(FrameError::Stream(_)) => return, // the connection or stream went away
            Err(e) => return protocol_error(&shared, peer, &conn, format!("{stream} stream: {e}")),
        };
        let (frame, size) = frame;
        let Frame::Message(m) = frame else {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("{stream} stream: unexpected frame {frame:?}"),
            );
        };
        if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!("{stream} stream: InstallSnapshot travels only with its data"),
            );
        }
        if m.from != peer || m.to != shared.id {
            return protocol_error(
                &shared,
                peer,
                &conn,
                format!(
                    "message from {} to {} on the connection of peer {peer} to node {}",
                    m.from, m.to, shared.id
                ),
            );
        }
        if !shared.peer_allowed(peer) {
            tracing::warn!(
                peer,
                "message from a node outside the configuration; closing"
            );
            shared.refused_connections.increment(1);
            conn.close(
                VarInt::from_u32(close_code::UNKNOWN_PEER),
                b"not a member of the configuration",
            );
            return;
        }
        messages.increment(1);
        bytes.increment(size as u64);
        if shared.inbound.send(m).await.is_err() {
            return; // the application stopped listening
        }
    }
}

/// A bidirectional stream opened by the peer: a snapshot transfer.
pub(super) async fn serve_bi(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: Connection,
    send: SendStream,
    mut recv: RecvStream,
) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    if StreamKind::from_byte(kind[0]) != Some(StreamKind::Snapshot) {
        return protocol_error(
            &shared,
            peer,
            &conn,
            format!("unexpected bidirectional stream kind {:#04x}", kind[0]),
        );
    }
    receive_snapshot(shared, peer, conn, send, recv).await;
}
