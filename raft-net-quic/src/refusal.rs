//! Why a receiver refused a snapshot: a typed reason that crosses the wire
//! (in [`Frame::SnapshotResult`](crate::codec::Frame::SnapshotResult)), is
//! counted on both sides and names the setting to change.

/// The kind of a snapshot refusal. Its [`as_str`](Self::as_str) form is
/// the `reason` label of `raft_snapshot_offers_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// No reason code: a peer from before typed reasons, or a failure that
    /// fits none of the others.
    Other,
    /// The offer is larger than the receiver's `snapshot_bytes_max`.
    TooLarge,
    /// The receiver's disk cannot hold it (free space minus what transfers
    /// in progress have reserved).
    NoSpace,
    /// The sender is not a member of the receiver's configuration.
    NotAllowed,
    /// The receiver takes no snapshots (no sink).
    NotAccepting,
    /// The data failed verification (a chunk out of order, a checksum, a
    /// length that does not match the offer).
    Invalid,
    /// The receiver could not store the data (an I/O error).
    Storage,
    /// A reason code this version does not know: one a newer peer added
    /// within protocol version 1. The refusal's text is kept; it is not
    /// treated as permanent (the sender retries with backoff).
    Unknown(u8),
}

impl RefusalReason {
    /// Every known reason, for tests and for registering metrics
    /// ([`Unknown`](Self::Unknown) codes are counted under `unknown`).
    pub const ALL: [RefusalReason; 7] = [
        Self::Other,
        Self::TooLarge,
        Self::NoSpace,
        Self::NotAllowed,
        Self::NotAccepting,
        Self::Invalid,
        Self::Storage,
    ];

    /// The stable name (metric label, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::TooLarge => "too_large",
            Self::NoSpace => "no_space",
            Self::NotAllowed => "not_allowed",
            Self::NotAccepting => "not_accepting",
            Self::Invalid => "invalid",
            Self::Storage => "storage",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Whether sending the same snapshot again can succeed without anyone
    /// changing a setting or the configuration (a sender stops retrying
    /// after a permanent refusal).
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::TooLarge | Self::NotAllowed | Self::NotAccepting)
    }

    /// The wire code (`Other` has none: it travels as the untyped form).
    pub(crate) fn code(self) -> Option<u8> {
        match self {
            Self::Other => None,
            Self::TooLarge => Some(1),
            Self::NoSpace => Some(2),
            Self::NotAllowed => Some(3),
            Self::NotAccepting => Some(4),
            Self::Invalid => Some(5),
            Self::Storage => Some(6),
            Self::Unknown(code) => Some(code),
        }
    }

    /// The reason of a wire code: [`Unknown`](Self::Unknown) for a code this
    /// version does not know (the refusal still decodes with its text).
    pub(crate) fn from_code(code: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.code() == Some(code))
            .unwrap_or(Self::Unknown(code))
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(code) => write!(f, "unknown ({code})"),
            _ => f.write_str(self.as_str()),
        }
    }
}

/// A refused snapshot: the reason and a human-readable detail (sizes,
/// limits, the setting to change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} ({reason})")]
pub struct SnapshotRefusal {
    /// The kind of refusal.
    pub reason: RefusalReason,
    /// What happened, for people.
    pub detail: String,
}

impl SnapshotRefusal {
    /// A refusal of kind `reason`.
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in RefusalReason::ALL {
            match r.code() {
                Some(c) => {
                    assert!(seen.insert(c), "code {c} used twice");
                    assert_eq!(RefusalReason::from_code(c), r);
                }
                None => assert_eq!(r, RefusalReason::Other),
            }
        }
        for c in [0, 7, 200] {
            let r = RefusalReason::from_code(c);
            assert_eq!(r, RefusalReason::Unknown(c));
            assert_eq!(r.code(), Some(c), "an unknown code is sent on as it came");
            assert!(!r.is_permanent());
            assert_eq!(r.as_str(), "unknown");
        }
    }
}
