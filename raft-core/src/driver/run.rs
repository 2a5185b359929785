//! The engine task's loop: its clock, its inputs (requests, messages,
//! ticks, reports of the storage and apply tasks) and background events.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::handle::Request;
use super::tasks::{Event, StorageJob};
use super::wake::{Inputs, Wake, Watches};
use super::{Driver, ProposeError, SnapshotError};
use crate::engine::{ProposalRefused, Role, WriteId};
use crate::message::{Message, MessageBody};
use crate::transport::Transport;
use crate::types::LogId;

/// Batches of a single input in a row after which the engine task stops
/// yielding before it takes a batch (see `Driver::run`).
const CALM: u32 = 4;

/// Engine ticks from the monotonic clock: how many tick intervals passed
/// since the ones already given to the engine.
#[derive(Debug)]
struct TickClock {
    /// When tick 0 was due.
    start: tokio::time::Instant,
    /// Length of one tick.
    interval: Duration,
    /// Ticks accounted for so far (given to the engine or skipped).
    done: u64,
    /// Most ticks replayed at once; the rest of a longer stall is skipped.
    max_replay_ticks: u64,
}

impl TickClock {
    fn new(interval: Duration, max_replay_ticks: u64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            interval,
            done: 0,
            max_replay_ticks,
        }
    }

    /// The ticks due at `now` and not given yet, as (ticks to give, ticks
    /// skipped beyond `max_replay_ticks`). Both are accounted for.
    fn due(&mut self, now: tokio::time::Instant) -> (u64, u64) {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let total = u64::try_from(elapsed / self.interval.as_nanos().max(1)).unwrap_or(u64::MAX);
        let missing = total.saturating_sub(self.done);
        self.done = self.done.max(total);
        let ticks = missing.min(self.max_replay_ticks);
        (ticks, missing - ticks)
    }
}

/// How many batches of requests, and of messages, in a row held a single
/// input (counted up to [`CALM`]): the loop yields before taking a batch
/// unless the last [`CALM`] of its kind were single.
#[derive(Debug, Clone, Copy)]
struct Calm {
    requests: u32,
    inbound: u32,
}

impl Default for Calm {
    fn default() -> Self {
        Self {
            requests: CALM,
            inbound: CALM,
        }
    }
}

impl Calm {
    /// Under load, lets the tasks already woken run first (the proposers
    /// just answered, the network task) so that what they queue is taken in
    /// this turn's batch: the first of them woke this task, and tokio runs a
    /// task woken that way next, which would otherwise make one append, one
    /// write and one message per follower for each proposal. Not when the
    /// last batches were single inputs: a lone proposer would only wait
    /// longer.
    async fn settle<S, Q>(&self, wake: &Wake<S, Q>) {
        let busy = match wake {
            Wake::Request(_) => self.requests < CALM,
            Wake::Inbound(_) => self.inbound < CALM,
            _ => false,
        };
        if busy {
            tokio::task::yield_now().await;
        }
    }

    /// Counts a batch of `taken` inputs into `singles`.
    fn count(singles: &mut u32, taken: usize) {
        *singles = if taken > 1 {
            0
        } else {
            (*singles + 1).min(CALM)
        };
    }
}

impl<R: Send + 'static, T: Transport> Driver<R, T> {
    pub(super) async fn run(
        &mut self,
        mut requests: mpsc::Receiver<Request<R>>,
        mut inbound: mpsc::Receiver<Message>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut persisted: watch::Receiver<Option<WriteId>>,
        mut fatal: watch::Receiver<Option<String>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut clock = TickClock::new(
            self.cfg.tick_interval,
            3 * self.engine.config().election_timeout_ticks,
        );
        // The timer only wakes the task, in phase with the clock's ticks.
        let mut ticker =
            tokio::time::interval_at(clock.start + self.cfg.tick_interval, self.cfg.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut applied = self.applied.clone();
        let apply_tx = self.apply_tx.clone();
        self.publish_metrics();
        let mut calm = Calm::default();
        let mut watches = Watches::default();
        loop {
            let inputs = Inputs {
                watches: &mut watches,
                shutdown: &mut shutdown,
                fatal: &mut fatal,
                persisted: &mut persisted,
                applied: &mut applied,
                ticker: &mut ticker,
                events: &mut events,
                inbound: &mut inbound,
                requests: &mut requests,
            };
            let apply_slot = (!self.apply_backlog.is_empty()).then(|| apply_tx.reserve());
            let wake = inputs.next(apply_slot).await;
            calm.settle(&wake).await;
            match wake {
                Wake::Shutdown => break,
                Wake::Fatal => {
                    let reason = fatal.borrow().clone().unwrap_or_default();
                    tracing::error!(%reason, "raft node failed; stopping");
                    self.fail_all(ProposeError::Fatal(reason));
                    break;
                }
                Wake::Persisted => {
                    if let Some(write) = *persisted.borrow_and_update() {
                        self.engine.on_persisted(write);
                    }
                }
                Wake::Applied => {
                    let index = *applied.borrow_and_update();
                    self.engine.on_applied(index);
                    metrics::gauge!("raft_applied_index").set(index as f64);
                }
                Wake::Tick => {
                    self.catch_up(&mut clock);
                    // Forwards the leader never answers expire on the
                    // clock, not only at the next forward or answer.
                    self.expire_forwards();
                }
                Wake::ApplySlot(permit) => {
                    let Ok(permit) = permit else { break };
                    if let Some(job) = self.apply_backlog.pop_front() {
                        permit.send(job);
                    }
                    if !self.flush_apply_backlog() {
                        break;
                    }
                }
                Wake::Event(event) => {
                    if !self.handle_event(event).await {
                        break;
                    }
                }
                Wake::Inbound(msg) => {
                    let taken =
                        self.take_batch(msg, &mut inbound, &mut clock, Self::step_inbound, |_| {
                            true
                        });
                    Calm::count(&mut calm.inbound, taken);
                }
                Wake::Request(req) => {
                    let taken = self.take_batch(
                        req,
                        &mut requests,
                        &mut clock,
                        Self::handle_request,
                        Request::judges_time,
                    );
                    Calm::count(&mut calm.requests, taken);
                }
            }
            if !self.process_ready().await {
                break;
            }
        }
        self.fail_all(ProposeError::ShuttingDown { appended: true });
    }

    /// Handles `first`, then up to `max_batch_inputs - 1` more inputs
    /// already queued in `queue`; returns how many it handled.
    ///
    /// Time is caught up before the batch, and again before every input of
    /// it for which `fresh` says so: the task may have been held up
    /// (SIGSTOP, a starved CPU) between two inputs, and a lease read or a
    /// heartbeat (which starts a follower's promise) must be judged at the
    /// time it is handled. A proposal judges no time, so a batch of
    /// proposals reads the clock once, not once per proposal (a clock read
    /// is a measurable share of a proposal's cost); the proposals it holds
    /// count their commit latency from that reading.
    fn take_batch<I>(
        &mut self,
        first: I,
        queue: &mut mpsc::Receiver<I>,
        clock: &mut TickClock,
        handle: fn(&mut Self, I),
        fresh: fn(&I) -> bool,
    ) -> usize {
        self.catch_up(clock);
        handle(self, first);
        let mut taken = 1;
        while taken < self.cfg.max_batch_inputs {
            let Ok(input) = queue.try_recv() else { break };
            if fresh(&input) {
                self.catch_up(clock);
            }
            handle(self, input);
            taken += 1;
        }
        self.end_batch();
        taken
    }

    /// Ticks the engine for every tick interval that passed since the last
    /// one it was given (see the module docs on time).
    fn catch_up(&mut self, clock: &mut TickClock) {
        let now = tokio::time::Instant::now();
        self.now = now;
        let (ticks, skipped) = clock.due(now);
        if ticks > 1 {
            metrics::counter!("raft_ticks_late_total").increment(ticks - 1);
        }
        if skipped > 0 || ticks > self.engine.config().election_timeout_ticks {
            tracing::warn!(
                ticks = ticks + skipped,
                "the engine task was held up for more than an election timeout"
            );
        }
        for _ in 0..ticks {
            self.engine.tick();
        }
    }

    /// Proposes `data` unless the state machine lags too far behind
    /// (`Err(None)`: [`DriverConfig::max_unapplied_entries`]).
    pub(super) fn propose(&mut self, data: bytes::Bytes) -> Result<LogId, Option<ProposalRefused>> {
        // A follower answers NotLeader, so the caller goes to the leader.
        if self.engine.role() == Role::Leader && self.apply_lags() {
            return Err(None);
        }
        self.engine.propose(data).map_err(Some)
    }

    /// Whether more than [`DriverConfig::max_unapplied_entries`] committed
    /// entries, or more than [`DriverConfig::max_unapplied_bytes`] bytes of
    /// entries handed out for applying, wait for the state machine.
    pub(super) fn apply_lags(&mut self) -> bool {
        let applied = *self.applied.borrow();
        while let Some(&(last, bytes)) = self.unapplied.front() {
            if last > applied {
                break;
            }
            self.unapplied.pop_front();
            self.unapplied_bytes -= bytes;
        }
        self.engine.commit_index().saturating_sub(applied) > self.cfg.max_unapplied_entries
            || self.unapplied_bytes > self.cfg.max_unapplied_bytes
    }

    /// Steps an inbound message, except new entries while the state
    /// machine lags too far behind: a follower then takes heartbeats (so it
    /// neither campaigns nor looks gone) but not entries, which the leader
    /// sends again later, as after a loss. That bounds what it holds for
    /// the state machine, as the leader's refusal of proposals does.
    pub(super) fn step_inbound(&mut self, msg: Message) {
        if self.engine.refuses_term(&msg) {
            // The engine refuses it (and logs); count it for operators.
            metrics::counter!("raft_messages_invalid_term_total").increment(1);
        }
        if self.refuse_forwarded(&msg) {
            return;
        }
        if let MessageBody::AppendEntries { entries, .. } = &msg.body {
            if !entries.is_empty() && self.engine.role() != Role::Leader && self.apply_lags() {
                metrics::counter!("raft_appends_deferred_total").increment(1);
                return;
            }
        }
        self.engine.step(msg);
    }

    /// Acts on a background task's report. Returns false when the node must stop.
    pub(super) async fn handle_event(&mut self, event: Event) -> bool {
        match event {
            Event::Built(Ok((meta, data))) => {
                self.engine.on_snapshot_built(meta.clone());
                self.snapshot = Some((meta.clone(), data));
                for w in self.snapshot_waiters.drain(..) {
                    let _ = w.send(Ok(meta.clone()));
                }
            }
            Event::Built(Err(e)) => {
                self.engine.on_snapshot_build_failed();
                for w in self.snapshot_waiters.drain(..) {
                    let _ = w.send(Err(SnapshotError::Failed(e.clone())));
                }
            }
            Event::StateMachineInstalled(meta, data) => {
                if self
                    .persist_tx
                    .send(StorageJob::Install(meta, data))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Event::LogInstalled(meta, data) => {
                tracing::info!(last = %meta.last_log_id, "snapshot installed");
                self.engine.on_snapshot_installed(meta.clone());
                // The snapshot replaced the whole log: no proposal can be
                // answered from it any more. Those below the snapshot may
                // or may not be in it; those above may still be committed
                // by a leader that holds their entries (nothing here would
                // answer them on an idle cluster).
                for (index, p) in self.proposals.take_all() {
                    let _ = p.reply.send(Err(ProposeError::OutcomeUnknown { index }));
                }
                self.report_pending_proposals();
                self.snapshot = Some((meta, data));
                self.publish_metrics();
            }
            Event::SnapshotSent { to, delivered } => {
                self.sending.remove(&to);
                self.engine.report_snapshot(to, delivered);
            }
            Event::Fetched(fetch, entries) => {
                metrics::counter!("raft_entries_read_back_total").increment(entries.len() as u64);
                self.engine.on_entries_fetched(fetch, entries);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::TickClock;
    use std::time::Duration;

    #[test]
    fn the_tick_clock_counts_every_interval_and_caps_a_long_stall() {
        let mut c = TickClock::new(Duration::from_millis(50), 60);
        let t0 = c.start;
        assert_eq!(c.due(t0), (0, 0));
        assert_eq!(c.due(t0 + Duration::from_millis(49)), (0, 0));
        assert_eq!(c.due(t0 + Duration::from_millis(50)), (1, 0));
        assert_eq!(
            c.due(t0 + Duration::from_millis(60)),
            (0, 0),
            "counted once"
        );
        // A stall of 1 s: 19 more ticks, all replayed.
        assert_eq!(c.due(t0 + Duration::from_millis(1000)), (19, 0));
        // A stall of 10 s: 200 ticks due, 60 replayed, 140 skipped.
        assert_eq!(c.due(t0 + Duration::from_millis(11_000)), (60, 140));
        assert_eq!(c.due(t0 + Duration::from_millis(11_049)), (0, 0));
        // Time that runs backwards (it cannot, but) gives nothing.
        assert_eq!(c.due(t0), (0, 0));
    }
}
