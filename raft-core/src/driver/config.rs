//! The driver's settings: every queue and backlog bound.

use std::time::Duration;

use crate::config::ConfigError;

/// The longest [`DriverConfig::request_timeout`] [`DriverConfig::validate`]
/// accepts: one day. Every request's deadline is computed from it (and a
/// snapshot's wait is twelve times it), so it must stay far from what a
/// clock instant or a duration can hold.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Settings of the driver around the engine. Every queue is bounded here.
///
/// Build it from [`DriverConfig::default`] and set the fields to change
/// (the struct is `#[non_exhaustive]`: new settings come with defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverConfig {
    /// Wall-clock length of one engine tick.
    pub tick_interval: Duration,
    /// How long `propose` and `read` wait before answering `Timeout`:
    /// positive and at most [`MAX_REQUEST_TIMEOUT`] (one day).
    pub request_timeout: Duration,
    /// Capacity of the queue of client requests into the engine task.
    pub request_queue_capacity: usize,
    /// Capacity of the queue of inbound peer messages (full: dropped).
    pub inbound_queue_capacity: usize,
    /// Capacity of the queue of outbound message batches (full: dropped).
    pub outbound_queue_capacity: usize,
    /// Writes queued for the storage task at most (full: the engine task waits).
    pub storage_queue_capacity: usize,
    /// Apply batches queued for the state machine task at most. Batches
    /// beyond it wait in the engine task's own backlog: the engine task
    /// never waits for the state machine, so it keeps ticking, answering
    /// heartbeats and sending them while applies are slow or a snapshot is
    /// built or installed.
    pub apply_queue_capacity: usize,
    /// Committed entries not yet applied at most. Beyond it a leader
    /// refuses new proposals with [`ProposeError::Overloaded`](super::ProposeError::Overloaded) and a
    /// follower takes no new entries (heartbeats still), so what waits for
    /// a lagging state machine stays bounded on every node.
    pub max_unapplied_entries: u64,
    /// Bytes ([`Entry::size_bytes`](crate::Entry::size_bytes)) of entries
    /// handed out for applying and not yet applied at most: beyond it, as
    /// beyond `max_unapplied_entries`, a leader refuses new proposals with
    /// [`ProposeError::Overloaded`](super::ProposeError::Overloaded) and a follower takes no new entries.
    /// Default: 64 MiB.
    pub max_unapplied_bytes: u64,
    /// Requests or messages taken per loop turn before producing output, so
    /// proposals that arrive together share one append.
    pub max_batch_inputs: usize,
    /// Whether a follower forwards proposals and linearizable reads to its
    /// leader over the peer transport (`ForwardPropose`, `ReadIndexRequest`)
    /// when the transport can carry them to it
    /// ([`Transport::can_forward`](crate::Transport::can_forward)).
    /// Off, or when it cannot, a follower answers `NotLeader` as before.
    pub forward_to_leader: bool,
    /// Forwarded proposals and reads waiting for the leader's answer at
    /// most; beyond it a follower answers [`ProposeError::Overloaded`](super::ProposeError::Overloaded)
    /// / [`ReadError::Overloaded`](super::ReadError::Overloaded) without forwarding.
    pub max_pending_forwards: usize,
    /// Bytes of the commands of forwarded proposals waiting for the
    /// leader's answer at most (one is always taken when none waits):
    /// beyond it a follower answers [`ProposeError::Overloaded`](super::ProposeError::Overloaded)
    /// without forwarding. This bounds what a follower puts in flight to
    /// its leader, and so what a leader receives from each follower.
    /// Default: 64 MiB.
    pub max_pending_forward_bytes: u64,
    /// How long a follower waits for the leader's answer to a forwarded
    /// request before it gives up on it: a proposal then answers
    /// [`ProposeError::Timeout`](super::ProposeError::Timeout) (it may
    /// still be applied), a read [`ReadError::Timeout`](super::ReadError::Timeout).
    /// The follower's engine task looks for expired requests on its clock
    /// (every tick, at most every eighth of this timeout), so a request
    /// with no answer is counted in `raft_forward_timeouts_total`, and the
    /// outputs kept for it are dropped, at most that much after it expired,
    /// whether or not more requests are forwarded.
    pub forward_timeout: Duration,
    /// Outputs of applied entries the state machine task keeps, while
    /// forwarded proposals wait for their answer, for an answer that
    /// arrives after its entry was applied here. Beyond it the oldest go;
    /// a forwarded proposal whose output went answers
    /// [`ProposeError::OutcomeUnknown`](super::ProposeError::OutcomeUnknown).
    pub max_retained_outputs: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
            request_queue_capacity: 8192,
            inbound_queue_capacity: 8192,
            outbound_queue_capacity: 4096,
            storage_queue_capacity: 64,
            apply_queue_capacity: 64,
            max_unapplied_entries: 50_000,
            max_unapplied_bytes: 64 * 1024 * 1024,
            max_batch_inputs: 4096,
            forward_to_leader: true,
            max_pending_forwards: 8192,
            max_pending_forward_bytes: 64 * 1024 * 1024,
            forward_timeout: Duration::from_secs(5),
            max_retained_outputs: 65_536,
        }
    }
}

impl DriverConfig {
    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that is out of range:
    /// a capacity or bound of 0, a zero tick interval, or a request
    /// timeout of zero or above [`MAX_REQUEST_TIMEOUT`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (setting, value) in [
            ("request_queue_capacity", self.request_queue_capacity),
            ("inbound_queue_capacity", self.inbound_queue_capacity),
            ("outbound_queue_capacity", self.outbound_queue_capacity),
            ("storage_queue_capacity", self.storage_queue_capacity),
            ("apply_queue_capacity", self.apply_queue_capacity),
            ("max_batch_inputs", self.max_batch_inputs),
            ("max_pending_forwards", self.max_pending_forwards),
            ("max_retained_outputs", self.max_retained_outputs),
            (
                "max_pending_forward_bytes",
                usize::try_from(self.max_pending_forward_bytes).unwrap_or(usize::MAX),
            ),
            (
                "max_unapplied_bytes",
                usize::try_from(self.max_unapplied_bytes).unwrap_or(usize::MAX),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError {
                    setting,
                    reason: "must be at least 1".into(),
                });
            }
        }
        for (setting, d) in [
            ("tick_interval", self.tick_interval),
            ("forward_timeout", self.forward_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError {
                    setting,
                    reason: "must be positive".into(),
                });
            }
        }
        if self.request_timeout.is_zero() || self.request_timeout > MAX_REQUEST_TIMEOUT {
            return Err(ConfigError {
                setting: "request_timeout",
                reason: format!("must be positive and at most {MAX_REQUEST_TIMEOUT:?}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_accepts_the_defaults_and_names_a_setting_out_of_range() {
        assert_eq!(DriverConfig::default().validate(), Ok(()));
        let zero_queue = DriverConfig {
            storage_queue_capacity: 0,
            ..DriverConfig::default()
        };
        let err = zero_queue.validate().unwrap_err();
        assert_eq!(err.setting, "storage_queue_capacity");
        let no_tick = DriverConfig {
            tick_interval: Duration::ZERO,
            ..DriverConfig::default()
        };
        assert_eq!(no_tick.validate().unwrap_err().setting, "tick_interval");
    }

    /// A request timeout of zero (every proposal would fail) or one no
    /// deadline can hold (a proposal would panic computing it) is refused.
    #[test]
    fn validate_refuses_a_request_timeout_out_of_range() {
        let with = |request_timeout| DriverConfig {
            request_timeout,
            ..DriverConfig::default()
        };
        for bad in [
            Duration::ZERO,
            MAX_REQUEST_TIMEOUT + Duration::from_nanos(1),
            Duration::MAX,
        ] {
            let err = with(bad).validate().unwrap_err();
            assert_eq!(err.setting, "request_timeout", "{bad:?}");
        }
        assert_eq!(with(MAX_REQUEST_TIMEOUT).validate(), Ok(()));
        assert_eq!(with(Duration::from_nanos(1)).validate(), Ok(()));
    }
}
