//! The event trace of a run: every event is hashed into a digest (to assert
//! that a seed always produces the same run), the latest ones are kept for
//! failure reports, and all of them are printed when replaying verbosely.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

use raft_core::engine::Role;
use raft_core::{AppendResult, Message, MessageBody, NodeId};

/// A fast, deterministic hasher for the trace digest (the Fx hash of
/// rustc): SipHash costs a tenth of a debug run.
#[derive(Debug, Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How many recent events a failure report shows.
const RECENT: usize = 60;

/// The gist of a message, small enough to copy into every trace event.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsgInfo {
    from: NodeId,
    to: NodeId,
    term: u64,
    kind: &'static str,
    /// Kind-specific numbers (see the `Display` impl).
    detail: [u64; 4],
}

impl MsgInfo {
    /// Summarizes `msg`.
    pub fn of(msg: &Message) -> Self {
        let detail = match &msg.body {
            MessageBody::RequestVote {
                last_log_id,
                leadership_transfer,
                ..
            } => [
                last_log_id.index,
                last_log_id.term,
                u64::from(*leadership_transfer),
                0,
            ],
            MessageBody::RequestVoteResponse { granted, .. } => [u64::from(*granted), 0, 0, 0],
            MessageBody::AppendEntries {
                prev_log_id,
                entries,
                leader_commit,
                round,
                ..
            } => [
                prev_log_id.index,
                prev_log_id.term,
                entries.len() as u64 * 1_000_000 + *leader_commit,
                *round,
            ],
            MessageBody::AppendEntriesResponse { round, result } => match result {
                AppendResult::Success { last_index } => [1, *last_index, 0, *round],
                AppendResult::Installing => [2, 0, 0, *round],
                AppendResult::Conflict {
                    rejected_prev,
                    hint,
                } => [
                    0,
                    *rejected_prev,
                    hint.index * 1_000_000 + hint.term,
                    *round,
                ],
            },
            MessageBody::TimeoutNow => [0; 4],
            MessageBody::InstallSnapshot { meta } => {
                [meta.last_log_id.index, meta.last_log_id.term, 0, 0]
            }
            // The simulation's clients do not forward.
            MessageBody::ForwardPropose { request_id, .. }
            | MessageBody::ForwardProposeResponse { request_id, .. }
            | MessageBody::ReadIndexRequest { request_id }
            | MessageBody::ReadIndexResponse { request_id, .. } => [*request_id, 0, 0, 0],
        };
        Self {
            from: msg.from,
            to: msg.to,
            term: msg.term,
            kind: msg.body.kind(),
            detail,
        }
    }
}

impl fmt::Debug for MsgInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.detail;
        write!(f, "{}->{} {} t{}", self.from, self.to, self.kind, self.term)?;
        match self.kind {
            "pre_vote" | "request_vote" => {
                write!(
                    f,
                    " last={}@{}{}",
                    d[0],
                    d[1],
                    if d[2] == 1 { " transfer" } else { "" }
                )
            }
            "pre_vote_response" | "request_vote_response" => {
                write!(f, " {}", if d[0] == 1 { "granted" } else { "refused" })
            }
            "append_entries" | "heartbeat" => write!(
                f,
                " prev={}@{} n={} commit={} round={}",
                d[0],
                d[1],
                d[2] / 1_000_000,
                d[2] % 1_000_000,
                d[3]
            ),
            "append_entries_response" if d[0] == 1 => {
                write!(f, " ok last={} round={}", d[1], d[3])
            }
            "append_entries_response" => write!(
                f,
                " conflict prev={} hint={}@{} round={}",
                d[1],
                d[2] / 1_000_000,
                d[2] % 1_000_000,
                d[3]
            ),
            "install_snapshot" => write!(f, " last={}@{}", d[0], d[1]),
            _ => Ok(()),
        }
    }
}

/// Why a message was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loss {
    /// The link was cut when it was sent or delivered.
    Partition,
    /// The recipient was down.
    Down,
    /// Randomly dropped.
    Random,
}

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    /// Virtual time advanced; every live node ticked.
    Tick(u64),
    /// A node sent a message (`persisted`: after its write was durable).
    Send { msg: MsgInfo, persisted: bool },
    /// A message was delivered (`dup`: a copy stays in flight).
    Deliver { msg: MsgInfo, dup: bool },
    /// A message was lost.
    Lost { msg: MsgInfo, why: Loss },
    /// A node reported a new role, leader or term.
    Role {
        node: NodeId,
        role: Role,
        term: u64,
        leader: Option<NodeId>,
    },
    /// A node's pending write became durable.
    WriteDone {
        node: NodeId,
        hard_state: Option<(u64, Option<NodeId>, u64)>,
        truncate_from: Option<u64>,
        entries: (u64, u64),
        messages: usize,
    },
    /// A node applied entries `first..=last`.
    Apply { node: NodeId, first: u64, last: u64 },
    /// A node crashed, losing `writes` pending writes.
    Crash { node: NodeId, writes: usize },
    /// A flush of a node's disk failed and the node stopped; `landed`:
    /// the failed write reached the disk anyway.
    DiskFailed { node: NodeId, landed: bool },
    /// A restart failed to read the node's disk; it stays down.
    RestartFailed { node: NodeId },
    /// A node stalls: no input for `ticks` ticks of true time.
    Stall { node: NodeId, ticks: u64 },
    /// A stalled node resumes; its clock counted `missed` ticks meanwhile,
    /// of which `replayed` are given to it first.
    Resume {
        node: NodeId,
        missed: u64,
        replayed: u64,
    },
    /// A node restarted from its durable state.
    Restart {
        node: NodeId,
        term: u64,
        commit: u64,
        last: (u64, u64),
        applied: u64,
    },
    /// The set of cut links changed.
    Partition { kind: &'static str, cuts: u64 },
    /// Every link restored.
    Heal,
    /// A leadership transfer was requested.
    Transfer { from: NodeId, to: NodeId, ok: bool },
    /// A client invoked an operation at a node (`result`: the proposal's log
    /// id, or why it was refused).
    Invoke {
        client: u64,
        node: NodeId,
        op: &'static str,
        key: u8,
        result: Result<(u64, u64), &'static str>,
    },
    /// A client got a definite answer.
    Complete { client: u64, outcome: String },
    /// A client gave up on its operation (indeterminate).
    GiveUp { client: u64, why: &'static str },
    /// A phase of the run started.
    Phase(&'static str),
    /// Snapshot work on a node: `what` happened at snapshot index `index`.
    Snapshot {
        node: NodeId,
        what: &'static str,
        index: u64,
    },
    /// A leader was told how a snapshot transfer to `to` ended.
    SnapshotReport {
        node: NodeId,
        to: NodeId,
        delivered: bool,
    },
    /// A membership change was asked of a leader (`result`: the log id of
    /// the configuration entry appended, or why it was refused).
    Change {
        leader: NodeId,
        change: String,
        result: Result<(u64, u64), String>,
    },
}

/// The digest, recent events and (optionally) the printed trace of a run.
#[derive(Debug)]
pub struct Trace {
    hasher: FxHasher,
    recent: VecDeque<(u64, u64, Event)>,
    verbose: bool,
    /// Events recorded.
    pub count: u64,
}

impl Trace {
    /// A new trace; `verbose` prints every event as it happens.
    pub fn new(verbose: bool) -> Self {
        Self {
            hasher: FxHasher::default(),
            recent: VecDeque::new(),
            verbose,
            count: 0,
        }
    }

    /// Records `event`, which happened at `step`/`tick`.
    pub fn record(&mut self, step: u64, tick: u64, event: Event) {
        self.count += 1;
        step.hash(&mut self.hasher);
        event.hash(&mut self.hasher);
        if self.verbose {
            println!("[step {step:>5} tick {tick:>4}] {event:?}");
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((step, tick, event));
    }

    /// Mixes extra state into the digest.
    pub fn mix(&mut self, value: impl Hash) {
        value.hash(&mut self.hasher);
    }

    /// The digest of everything recorded so far.
    pub fn digest(&self) -> u64 {
        self.hasher.finish()
    }

    /// Whether events are printed.
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// The latest events, one per line.
    pub fn recent(&self) -> String {
        let mut out = String::new();
        for (step, tick, event) in &self.recent {
            out.push_str(&format!("  [step {step:>5} tick {tick:>4}] {event:?}\n"));
        }
        out
    }
}
