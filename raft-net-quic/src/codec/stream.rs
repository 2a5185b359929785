//! The role byte that starts every QUIC stream.

/// The role of a stream, sent as its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// The dialer's handshake (bidirectional).
    Handshake = b'H',
    /// Latency-critical messages (unidirectional).
    Control = b'C',
    /// AppendEntries with entries, in order (unidirectional).
    Replication = b'R',
    /// One snapshot transfer (bidirectional).
    Snapshot = b'S',
}

impl StreamKind {
    /// Parses a stream's first byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'H' => Some(Self::Handshake),
            b'C' => Some(Self::Control),
            b'R' => Some(Self::Replication),
            b'S' => Some(Self::Snapshot),
            _ => None,
        }
    }
}
