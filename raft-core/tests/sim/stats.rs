//! Counters of one run and of many: faults injected, snapshot work and
//! membership changes. They are printed in the summary line of each test,
//! so a run that stops exercising something shows it.

/// Fault counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Node crashes.
    pub crashes: u64,
    /// Partition changes (each a new set of cut links).
    pub partitions: u64,
    /// Messages dropped at random.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Messages given a long delay.
    pub delayed: u64,
    /// Leadership transfers requested.
    pub transfers: u64,
    /// Failed disk flushes (the node stops; the write landed or not).
    pub disk_failures: u64,
    /// Restarts that failed to read the disk (the node stays down longer).
    pub read_errors: u64,
    /// Nodes stalled (no input at all for a while, then resumed).
    pub stalls: u64,
}

impl Faults {
    /// Total faults injected.
    pub fn total(&self) -> u64 {
        self.crashes
            + self.partitions
            + self.dropped
            + self.duplicated
            + self.delayed
            + self.transfers
            + self.disk_failures
            + self.read_errors
            + self.stalls
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Faults) {
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.delayed += other.delayed;
        self.transfers += other.transfers;
        self.disk_failures += other.disk_failures;
        self.read_errors += other.read_errors;
        self.stalls += other.stalls;
    }
}

/// Snapshot and compaction counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct SnapshotStats {
    /// Snapshots the state machines built (`Ready::build_snapshot`).
    pub built: u64,
    /// Builds made to fail on purpose (`on_snapshot_build_failed`).
    pub build_failed: u64,
    /// Snapshots asked for with `Engine::request_snapshot` and accepted.
    pub requested: u64,
    /// Log compactions made durable (`Ready::compact_log`).
    pub compactions: u64,
    /// Snapshot transfers started by leaders.
    pub sent: u64,
    /// Transfers lost (cut link, recipient down, random drop).
    pub lost: u64,
    /// Snapshots installed completely (state machine, then log).
    pub installed: u64,
    /// Crashes in the middle of an install.
    pub interrupted: u64,
    /// Restarts that completed an interrupted install (the log replaced by
    /// the state machine's snapshot, as `Raft::start` does).
    pub repaired: u64,
    /// Entries leaders read back from disk for followers, their payloads
    /// dropped from memory (`Ready::fetch_entries`).
    pub read_back: u64,
}

impl SnapshotStats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, o: &SnapshotStats) {
        self.built += o.built;
        self.build_failed += o.build_failed;
        self.requested += o.requested;
        self.compactions += o.compactions;
        self.sent += o.sent;
        self.lost += o.lost;
        self.installed += o.installed;
        self.interrupted += o.interrupted;
        self.repaired += o.repaired;
        self.read_back += o.read_back;
    }

    /// One readable line.
    pub fn line(&self) -> String {
        format!(
            "snapshots: {} built ({} builds failed on purpose, {} on request), {} compactions, \
             {} sent, {} lost in transit, {} installed, {} installs interrupted by a crash, {} \
             completed at restart; {} entries read back from disk for followers",
            self.built,
            self.build_failed,
            self.requested,
            self.compactions,
            self.sent,
            self.lost,
            self.installed,
            self.interrupted,
            self.repaired,
            self.read_back
        )
    }
}

/// Membership change counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChangeStats {
    /// Changes asked of a leader.
    pub requested: u64,
    /// Changes accepted (a configuration entry appended).
    pub started: u64,
    /// Configuration entries committed (joint and final ones).
    pub committed: u64,
    /// Refused: another change in progress.
    pub in_progress: u64,
    /// Refused: the leader had not committed an entry of its term yet.
    pub not_ready: u64,
    /// Refused: the learner to promote lags behind.
    pub lagging: u64,
    /// Refused: the change would leave no voter.
    pub no_voters: u64,
    /// Refused for another reason (unknown node, already a member, ...).
    pub other_refusals: u64,
    /// Leaders that stepped down because the configuration they committed
    /// left them out (thesis §4.2.2).
    pub leaders_removed: u64,
    /// Vote requests and other messages from removed nodes that reached a
    /// member (they must change nothing there).
    pub removed_messages: u64,
}

impl ChangeStats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, o: &ChangeStats) {
        self.requested += o.requested;
        self.started += o.started;
        self.committed += o.committed;
        self.in_progress += o.in_progress;
        self.not_ready += o.not_ready;
        self.lagging += o.lagging;
        self.no_voters += o.no_voters;
        self.other_refusals += o.other_refusals;
        self.leaders_removed += o.leaders_removed;
        self.removed_messages += o.removed_messages;
    }

    /// Refusals of any kind.
    pub fn refused(&self) -> u64 {
        self.in_progress + self.not_ready + self.lagging + self.no_voters + self.other_refusals
    }

    /// One readable line.
    pub fn line(&self) -> String {
        format!(
            "membership: {} changes asked, {} started, {} configurations committed, {} refused \
             ({} in progress, {} leader not ready, {} lagging, {} no voters left, {} other); {} \
             leaders stepped down after removing themselves; {} messages from removed nodes",
            self.requested,
            self.started,
            self.committed,
            self.refused(),
            self.in_progress,
            self.not_ready,
            self.lagging,
            self.no_voters,
            self.other_refusals,
            self.leaders_removed,
            self.removed_messages
        )
    }
}
