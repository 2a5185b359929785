//! Engine configuration: timeouts in ticks, replication limits and the seed
//! of the election-timeout randomness. Every limit is explicit here.

use crate::types::NodeId;

/// Configuration of one [`Engine`](crate::Engine).
///
/// Time is counted in ticks: the driver calls [`Engine::tick`](crate::Engine::tick)
/// at a fixed interval (the [`Raft`](crate::Raft) driver's default is 50 ms, so
/// the defaults below give a 100 ms heartbeat and a 1 s election timeout, as etcd).
///
/// Build it with [`Config::new`] and set the fields to change (the struct
/// is `#[non_exhaustive]`: new settings come with defaults).
///
/// Limits are named `max_*` with the unit last (`max_message_bytes`,
/// `max_uncommitted_entries`), as every limit of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// This node's id; never 0.
    pub id: NodeId,
    /// Minimum election timeout in ticks. Each election waits a random number
    /// of ticks in `[election_timeout_ticks, 2 * election_timeout_ticks)`
    /// (paper §5.2).
    pub election_timeout_ticks: u64,
    /// Ticks between heartbeats from a leader; must be below the election timeout.
    pub heartbeat_interval_ticks: u64,
    /// Probe a campaign with a pre-vote round first (thesis §9.6), so a node
    /// that was partitioned away cannot raise everyone's term on return.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an
    /// election timeout, and followers that heard from a leader within the
    /// minimum election timeout ignore vote requests (thesis §6.2, §9.6).
    pub check_quorum: bool,
    /// How long, in ticks from a heartbeat round's start, a quorum's answer
    /// lets the leader serve lease reads without a round trip (thesis §6.4.1).
    /// Must be at most `election_timeout_ticks - 2`, so that tick granularity
    /// on both sides cannot stretch the lease past the voters' promise;
    /// lower it further to allow for clock drift. Lease reads need `check_quorum`.
    ///
    /// The clock-drift bound: with `lease_ticks` = L and
    /// `election_timeout_ticks` = E, a lease stays inside the promise of the
    /// followers that granted it while any two nodes' clocks run at rates
    /// within a factor (E − 1) / (L + 1) of each other. For the defaults
    /// (E = 20, L = 14) that is 19/15: each clock within about ±11% of true
    /// time. A driver must also give the engine every tick that passed, even
    /// while it was held up ([`Raft`](crate::Raft) replays missed ticks).
    pub lease_ticks: u64,
    /// Entries per AppendEntries message at most.
    pub max_message_entries: usize,
    /// Payload bytes per AppendEntries message at most (one entry is always
    /// sent, however large, so that progress is possible).
    pub max_message_bytes: u64,
    /// AppendEntries messages in flight to one follower at most (pipelining).
    pub max_inflight_messages: usize,
    /// Payload bytes in flight to one follower at most.
    pub max_inflight_bytes: u64,
    /// Proposals accepted but not yet committed at most; more are refused with
    /// [`ProposalRefused::TooManyPending`](crate::engine::ProposalRefused::TooManyPending).
    pub max_uncommitted_entries: usize,
    /// Bytes ([`Entry::size_bytes`](crate::Entry::size_bytes)) of proposals
    /// accepted but not yet committed at most; a proposal that would go
    /// beyond is refused with
    /// [`ProposalRefused::TooManyBytesPending`](crate::engine::ProposalRefused::TooManyBytesPending)
    /// (one proposal is always accepted when nothing is pending, however
    /// large, so progress is possible). Default: 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Payload bytes of applied, durable entries the in-memory log keeps at
    /// most (a cache for followers slightly behind). Beyond it the oldest
    /// payloads are dropped from memory and a leader reads them back from
    /// storage ([`Ready::fetch_entries`](crate::engine::Ready::fetch_entries))
    /// when a follower needs them. Entries not yet applied or not yet
    /// durable are held whatever this says (bounded by
    /// `max_uncommitted_bytes`, the driver's `max_unapplied_bytes` and the
    /// in-flight limits). Default: 64 MiB.
    pub max_log_cache_bytes: u64,
    /// Pending linearizable reads at most.
    pub max_pending_reads: usize,
    /// A learner is promoted to voter only when its log is at most this many
    /// entries behind the leader's, so the new voter does not stall commits
    /// while it catches up (thesis §4.2.1).
    pub max_promotion_lag_entries: u64,
    /// Ask the state machine for a snapshot once this many entries were
    /// applied since the last one (0: never by count).
    pub snapshot_threshold_entries: u64,
    /// Ask the state machine for a snapshot once entries of this many bytes
    /// ([`Entry::size_bytes`](crate::Entry::size_bytes)) were applied since
    /// the last one (0: never by size).
    pub snapshot_threshold_bytes: u64,
    /// Entries kept in the log below a new snapshot, so a follower that is
    /// only slightly behind catches up from the log instead of receiving a
    /// whole snapshot (etcd keeps 5,000).
    pub snapshot_keep_entries: u64,
    /// Seed of the election-timeout randomness. Two engines with the same seed
    /// and the same inputs behave identically; give each node its own seed.
    pub seed: u64,
}

impl Config {
    /// A configuration with the defaults for node `id`, seeded from the id.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            election_timeout_ticks: 20,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_ticks: 14,
            max_message_entries: 1024,
            max_message_bytes: 1024 * 1024,
            max_inflight_messages: 64,
            max_inflight_bytes: 32 * 1024 * 1024,
            max_uncommitted_entries: 65_536,
            max_uncommitted_bytes: 64 * 1024 * 1024,
            max_log_cache_bytes: 64 * 1024 * 1024,
            max_pending_reads: 65_536,
            max_promotion_lag_entries: 1_000,
            snapshot_threshold_entries: 100_000,
            snapshot_threshold_bytes: 256 * 1024 * 1024,
            snapshot_keep_entries: 5_000,
            seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Checks the settings against each other.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |setting: &'static str, reason: String| Err(ConfigError { setting, reason });
        if self.id == 0 {
            return bad("id", "node id 0 is reserved".into());
        }
        if self.heartbeat_interval_ticks == 0 {
            return bad("heartbeat_interval_ticks", "must be at least 1".into());
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return bad(
                "election_timeout_ticks",
                format!(
                    "must exceed heartbeat_interval_ticks ({}), got {}",
                    self.heartbeat_interval_ticks, self.election_timeout_ticks
                ),
            );
        }
        if self.lease_ticks + 2 > self.election_timeout_ticks {
            return bad(
                "lease_ticks",
                format!(
                    "must be at most election_timeout_ticks - 2 = {}, got {} (leases assume \
                     clock rates within a factor (election_timeout_ticks - 1) / (lease_ticks + 1) \
                     of each other)",
                    self.election_timeout_ticks.saturating_sub(2),
                    self.lease_ticks
                ),
            );
        }
        for (setting, value) in [
            ("max_message_entries", self.max_message_entries as u64),
            ("max_message_bytes", self.max_message_bytes),
            ("max_inflight_messages", self.max_inflight_messages as u64),
            ("max_inflight_bytes", self.max_inflight_bytes),
            (
                "max_uncommitted_entries",
                self.max_uncommitted_entries as u64,
            ),
            ("max_pending_reads", self.max_pending_reads as u64),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
        ] {
            if value == 0 {
                return bad(setting, "must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// A configuration setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft configuration: {setting}: {reason}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting's field name.
    pub setting: &'static str,
    /// Why it was refused.
    pub reason: String,
}
