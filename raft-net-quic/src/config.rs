//! Transport settings: every limit, queue and timeout in one place.

use std::time::Duration;

/// Settings of a [`QuicTransport`](crate::QuicTransport). The defaults suit
/// the driver's default election timeout of one second (20 ticks of 50 ms).
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// Largest frame accepted or sent (length field value). An outgoing
    /// message above it is dropped and counted; an incoming one closes the
    /// connection. Must exceed the engine's `max_message_bytes` plus
    /// framing. Default 16 MiB.
    pub max_frame_bytes: u32,
    /// Messages queued per peer for the control stream (votes, heartbeats,
    /// responses). When full, the newest message is dropped and `send`
    /// returns `QueueFull`; Raft retries on its own. Default 1024.
    pub control_queue_messages_max: usize,
    /// Messages queued per peer for the replication stream. Default 256.
    pub replication_queue_messages_max: usize,
    /// Bytes (of entries) queued per peer for the replication stream; over
    /// it, new AppendEntries are dropped like on a full queue. Default 64 MiB.
    pub replication_queue_bytes_max: u64,
    /// Messages written to a stream in one go (one encode buffer, one write).
    /// Default 64.
    pub write_batch_messages_max: usize,
    /// QUIC keep-alive interval: a quiet connection still proves liveness.
    /// Default 250 ms.
    pub keep_alive_interval: Duration,
    /// A connection with no packets from the peer for this long is dead.
    /// Keep it at or below the election timeout so a dead peer is noticed
    /// before an election. Default 1 s.
    pub idle_timeout: Duration,
    /// Time allowed for the QUIC/TLS handshake plus the `Hello`/`Welcome`
    /// exchange. Default 5 s.
    pub handshake_timeout: Duration,
    /// First reconnect delay after a failed attempt; doubles per failure.
    /// Default 50 ms.
    pub reconnect_backoff_min: Duration,
    /// Ceiling of the reconnect delay. Default 2 s.
    pub reconnect_backoff_max: Duration,
    /// Incoming connections allowed at once (all peers together), counted
    /// from the first packet: connections still in their handshake hold a
    /// slot. More are refused. Default 256.
    pub connections_max: usize,
    /// Unidirectional streams a peer may open on one connection at once
    /// (two are used: control and replication). Default 8.
    pub inbound_uni_streams_max: u32,
    /// Bidirectional streams a peer may open on one connection at once (the
    /// handshake and one per snapshot transfer). Default 4.
    pub inbound_bidi_streams_max: u32,
    /// Bytes of snapshot data per chunk frame. Default 256 KiB.
    pub snapshot_chunk_bytes: usize,
    /// Attempts for one snapshot transfer (each resumes where the last one
    /// stopped) before a snapshot transfer (`stream_snapshot`, `Transport::send_snapshot`) gives up. Default 10.
    pub snapshot_attempts_max: u32,
    /// Refuse inbound connections from nodes that are not in the peer table
    /// ([`QuicTransport::add_peer`](crate::QuicTransport::add_peer)), even
    /// with a valid certificate from the cluster CA: a removed or foreign
    /// node cannot feed messages in. Default true.
    pub refuse_unknown_peers: bool,
    /// Messages buffered between the network and the application's inbound
    /// receiver; when full, stream readers wait (QUIC flow control then
    /// slows the peer). Default 4096.
    pub inbound_queue_messages_max: usize,

    // Hardening against hostile peers (issue 16 items 8 to 10).
    /// Inbound connections one authenticated peer may hold at once; more
    /// are refused (close code 8), so one peer cannot take every slot of
    /// `connections_max`. A restarting peer briefly holds two (the old one
    /// until it times out). Default 4.
    pub connections_per_peer_max: usize,
    /// Inbound handshakes in progress beyond which a new connection from an
    /// address not yet validated is answered with a QUIC Retry (the client
    /// must echo a token, proving it owns its address, before this node
    /// keeps any state for it). Real peers pass the Retry transparently;
    /// floods of spoofed or one-shot Initial packets stop consuming slots.
    /// 0 sends a Retry to every new connection. Default 32.
    pub retry_handshakes_threshold: usize,
    /// Largest snapshot accepted from a peer (its announced `total_bytes`);
    /// a larger offer is refused before anything is written. The
    /// [`FileSnapshotSink`](crate::FileSnapshotSink) also refuses offers that
    /// do not fit the free space of its directory. Default 4 GiB.
    pub snapshot_bytes_max: u64,
    /// How often the certificate revocation list file given to
    /// [`QuicTransportBuilder::crl_file`](crate::QuicTransportBuilder::crl_file)
    /// is checked for changes (its modification time and length). Default 5 s.
    pub crl_poll_interval: Duration,
    /// Inbound handshakes in progress from one IP address (sources that
    /// are not the address of an allowed peer in the peer table); more are
    /// refused. IPv6 sources count per /64 prefix (one host usually has a
    /// whole /64); an IPv4-mapped IPv6 address counts as its IPv4 address. With QUIC Retry a flood must come from real addresses that
    /// answer; this keeps one such address from holding every slot.
    /// Default 8.
    pub handshakes_per_ip_max: usize,
    /// Slots of `connections_max` that only connections from the address
    /// of an allowed peer in the peer table (a member or a learner being
    /// added) may take, once their address is validated (a QUIC Retry is
    /// sent first when needed): a flood from elsewhere, however many
    /// addresses it uses, cannot stop a member from reconnecting. Must be
    /// below `connections_max`. Default 16.
    pub connections_reserved_for_peers: usize,
    /// After a peer refuses a snapshot for good (too large, not allowed,
    /// not accepting: [`RefusalReason::is_permanent`](crate::RefusalReason::is_permanent)),
    /// the same snapshot is not offered to it again before this delay,
    /// doubled at each further refusal up to `snapshot_refused_backoff_max`
    /// (the transfer waits; the engine does not start another one to that
    /// peer meanwhile). A new snapshot, a change of the allowed set or of
    /// the peer's address ends the wait. Default 10 s.
    pub snapshot_refused_backoff_min: Duration,
    /// The longest wait before offering a refused snapshot again. Default
    /// 5 minutes.
    pub snapshot_refused_backoff_max: Duration,
    /// Whether this node offers the forwarding messages (a follower's
    /// proposals and read-index requests to its leader, and their
    /// answers). Offered as the ALPN protocol [`ALPN_FORWARD`](crate::tls::ALPN_FORWARD)
    /// ahead of the base one: a connection where both ends offer it
    /// carries them; with a node from before them (or one with this off)
    /// the base protocol is chosen, the forwarding messages are never sent
    /// on it, and [`Transport::can_forward`](raft_core::Transport::can_forward)
    /// says no, so followers fall back to whatever the application does
    /// without it. Default on.
    pub forwarding: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            control_queue_messages_max: 1024,
            replication_queue_messages_max: 256,
            replication_queue_bytes_max: 64 << 20,
            write_batch_messages_max: 64,
            keep_alive_interval: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            connections_max: 256,
            inbound_uni_streams_max: 8,
            inbound_bidi_streams_max: 4,
            snapshot_chunk_bytes: 256 << 10,
            snapshot_attempts_max: 10,
            refuse_unknown_peers: true,
            inbound_queue_messages_max: 4096,
            connections_per_peer_max: 4,
            retry_handshakes_threshold: 32,
            snapshot_bytes_max: 4 << 30,
            crl_poll_interval: Duration::from_secs(5),
            handshakes_per_ip_max: 8,
            connections_reserved_for_peers: 16,
            snapshot_refused_backoff_min: Duration::from_secs(10),
            snapshot_refused_backoff_max: Duration::from_secs(300),
            forwarding: true,
        }
    }
}

impl QuicConfig {
    /// Defaults with the liveness settings derived from an election timeout:
    /// idle timeout = `election_timeout`, keep-alive a quarter of it.
    pub fn for_election_timeout(election_timeout: Duration) -> Self {
        Self {
            idle_timeout: election_timeout,
            keep_alive_interval: election_timeout / 4,
            ..Self::default()
        }
    }

    /// Checks the settings for values that cannot work.
    ///
    /// # Errors
    ///
    /// A message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes < 1024 {
            return Err("max_frame_bytes must be at least 1024".into());
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes as u64 + 64 > u64::from(self.max_frame_bytes)
        {
            return Err("snapshot_chunk_bytes must be positive and fit in max_frame_bytes".into());
        }
        if self.control_queue_messages_max == 0
            || self.replication_queue_messages_max == 0
            || self.inbound_queue_messages_max == 0
            || self.write_batch_messages_max == 0
        {
            return Err("queue and batch sizes must be positive".into());
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return Err("keep_alive_interval must be positive and below idle_timeout".into());
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return Err(
                "reconnect_backoff_min must be positive and at most reconnect_backoff_max".into(),
            );
        }
        if self.inbound_uni_streams_max < 2 || self.inbound_bidi_streams_max < 1 {
            return Err(
                "inbound_uni_streams_max must be >= 2 and inbound_bidi_streams_max >= 1".into(),
            );
        }
        if self.connections_max == 0 || self.snapshot_attempts_max == 0 {
            return Err("connections_max and snapshot_attempts_max must be positive".into());
        }
        if self.connections_per_peer_max == 0
            || self.connections_per_peer_max > self.connections_max
        {
            return Err(
                "connections_per_peer_max must be positive and at most connections_max".into(),
            );
        }
        if self.handshakes_per_ip_max == 0 {
            return Err("handshakes_per_ip_max must be positive".into());
        }
        if self.connections_reserved_for_peers >= self.connections_max {
            return Err("connections_reserved_for_peers must be below connections_max".into());
        }
        if self.crl_poll_interval.is_zero() {
            return Err("crl_poll_interval must be positive".into());
        }
        if self.snapshot_refused_backoff_min.is_zero()
            || self.snapshot_refused_backoff_min > self.snapshot_refused_backoff_max
        {
            return Err("snapshot_refused_backoff_min must be positive and at most \
                 snapshot_refused_backoff_max"
                .into());
        }
        Ok(())
    }
}
