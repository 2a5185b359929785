//! Closed-loop clients (one operation outstanding each) and the history of
//! what they asked and learnt, for the linearizability checker.
//!
//! A write (put, delete, compare-and-set) is proposed at one node and
//! succeeds when *that node* applies an entry with the exact log id the
//! proposal returned; it fails definitely when that node applies a different
//! entry at that index; otherwise (the node crashed, the client timed out)
//! it stays indeterminate. A read waits for a `ReadState` from the node it
//! asked, then for that node's state machine to reach the read's index.

use std::collections::BTreeMap;

use raft_core::engine::ReadId;
use raft_core::{Index, LogId};
use raft_linearizability::{History, Op, OpId, Outcome};

/// What an outstanding operation waits for.
#[derive(Debug, Clone)]
pub enum Waiting {
    /// The proposal's entry to be applied at the node.
    Write(LogId),
    /// A `ReadState`, then the state machine.
    Read(ReadId),
}

/// A client's outstanding operation.
#[derive(Debug, Clone)]
pub struct Outstanding {
    /// Its record in the history.
    pub op: OpId,
    /// Index (0-based) of the node it was sent to.
    pub node: usize,
    /// The tick it was sent at.
    pub since: u64,
    /// What it waits for.
    pub waiting: Waiting,
}

/// One client.
#[derive(Debug, Default)]
pub struct Client {
    /// Operations issued so far (makes written values unique).
    pub seq: u64,
    /// The operation in flight.
    pub outstanding: Option<Outstanding>,
}

/// Client counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientStats {
    /// Operations invoked.
    pub invoked: u64,
    /// Writes (put/delete/CAS) acknowledged with a result.
    pub writes_ok: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Reads started from the leader lease.
    pub lease_reads: u64,
    /// Definite failures.
    pub failed: u64,
    /// Operations left indeterminate.
    pub indeterminate: u64,
}

/// All clients and their history.
#[derive(Debug)]
pub struct Clients {
    /// The clients.
    pub list: Vec<Client>,
    /// Everything they did.
    pub history: History,
    /// The keys they use.
    pub keys: Vec<Vec<u8>>,
    /// The latest value proposed for each key (a likely CAS expectation).
    pub last_proposed: Vec<Option<Vec<u8>>>,
    /// Proposals awaiting their entry: (node, index) -> (log id, client).
    writes: BTreeMap<(usize, Index), Vec<(LogId, usize)>>,
    /// Reads awaiting a `ReadState`: (node, read id) -> client.
    reads: BTreeMap<(usize, ReadId), usize>,
    /// Counters.
    pub stats: ClientStats,
}

impl Clients {
    /// `clients` clients using `keys` keys.
    pub fn new(clients: usize, keys: usize) -> Self {
        Self {
            list: (0..clients).map(|_| Client::default()).collect(),
            history: History::new(),
            keys: (0..keys).map(|k| format!("k{k}").into_bytes()).collect(),
            last_proposed: vec![None; keys],
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            stats: ClientStats::default(),
        }
    }

    /// Indexes of the clients with nothing outstanding.
    pub fn idle(&self) -> Vec<usize> {
        (0..self.list.len())
            .filter(|c| self.list[*c].outstanding.is_none())
            .collect()
    }

    /// Records an invocation.
    pub fn invoke(&mut self, client: usize, key: usize, op: Op, time: u64) -> OpId {
        self.stats.invoked += 1;
        let key = self.keys[key].clone();
        self.history.invoke(client as u64, key, op, time)
    }

    /// Marks `client` as waiting.
    pub fn wait(&mut self, client: usize, outstanding: Outstanding) {
        match outstanding.waiting {
            Waiting::Write(id) => self
                .writes
                .entry((outstanding.node, id.index))
                .or_default()
                .push((id, client)),
            Waiting::Read(id) => {
                self.reads.insert((outstanding.node, id), client);
            }
        }
        self.list[client].outstanding = Some(outstanding);
    }

    /// Completes an operation that never got outstanding (refused at once).
    pub fn complete_now(&mut self, op: OpId, time: u64, outcome: Outcome) {
        self.count(&outcome);
        self.history.complete(op, time, outcome);
    }

    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::ReadOk(_) => self.stats.reads_ok += 1,
            Outcome::Failed => self.stats.failed += 1,
            Outcome::Indeterminate => self.stats.indeterminate += 1,
            _ => self.stats.writes_ok += 1,
        }
    }

    /// Completes `client`'s outstanding operation.
    pub fn complete(&mut self, client: usize, time: u64, outcome: Outcome) {
        if let Some(o) = self.list[client].outstanding.take() {
            self.count(&outcome);
            self.history.complete(o.op, time, outcome);
        }
    }

    /// `client` stops waiting: its operation stays indeterminate.
    pub fn give_up(&mut self, client: usize) {
        if self.list[client].outstanding.take().is_some() {
            self.stats.indeterminate += 1;
        }
    }

    /// Node `node` crashed: every operation sent to it is indeterminate.
    /// Returns the clients that gave up.
    pub fn node_crashed(&mut self, node: usize) -> Vec<usize> {
        self.writes.retain(|(n, _), _| *n != node);
        self.reads.retain(|(n, _), _| *n != node);
        let gave_up: Vec<usize> = (0..self.list.len())
            .filter(|c| {
                self.list[*c]
                    .outstanding
                    .as_ref()
                    .is_some_and(|o| o.node == node)
            })
            .collect();
        for c in &gave_up {
            self.give_up(*c);
        }
        gave_up
    }

    /// Node `node` installed a snapshot through `index`: it will not apply
    /// the entries it covers one by one, so writes proposed there for them
    /// stay indeterminate (they may or may not be in the snapshot). Returns
    /// the clients that gave up.
    pub fn skipped(&mut self, node: usize, index: Index) -> Vec<usize> {
        let keys: Vec<(usize, Index)> = self
            .writes
            .range((node, 0)..=(node, index))
            .map(|(k, _)| *k)
            .collect();
        let mut gave_up = Vec::new();
        for key in keys {
            for (id, client) in self.writes.remove(&key).unwrap_or_default() {
                let still_waiting = self.list[client]
                    .outstanding
                    .as_ref()
                    .is_some_and(|o| matches!(o.waiting, Waiting::Write(w) if w == id));
                if still_waiting {
                    self.give_up(client);
                    gave_up.push(client);
                }
            }
        }
        gave_up
    }

    /// Node `node` applied `entry_id` with `outcome` (for a client command):
    /// resolves the proposals made at that node for that index. Returns the
    /// clients answered, with their outcome.
    pub fn applied(
        &mut self,
        node: usize,
        entry_id: LogId,
        outcome: Option<&Outcome>,
        time: u64,
    ) -> Vec<(usize, Outcome)> {
        let Some(waiting) = self.writes.remove(&(node, entry_id.index)) else {
            return Vec::new();
        };
        let mut answered = Vec::new();
        for (id, client) in waiting {
            let still_waiting = self.list[client]
                .outstanding
                .as_ref()
                .is_some_and(|o| matches!(o.waiting, Waiting::Write(w) if w == id));
            if !still_waiting {
                continue;
            }
            let result = if id == entry_id {
                outcome.cloned().unwrap_or(Outcome::Failed)
            } else {
                // Another entry is committed at this index: ours never will be.
                Outcome::Failed
            };
            self.complete(client, time, result.clone());
            answered.push((client, result));
        }
        answered
    }

    /// A `ReadState` or failure for read `id` arrived at `node`: the client
    /// waiting for it, if still waiting.
    pub fn take_read(&mut self, node: usize, id: ReadId) -> Option<usize> {
        let client = self.reads.remove(&(node, id))?;
        let still_waiting = self.list[client]
            .outstanding
            .as_ref()
            .is_some_and(|o| matches!(o.waiting, Waiting::Read(r) if r == id));
        still_waiting.then_some(client)
    }

    /// The operation `client` waits for, and its key.
    pub fn waiting_op(&self, client: usize) -> Option<(OpId, Vec<u8>)> {
        let o = self.list[client].outstanding.as_ref()?;
        self.history.get(o.op).map(|op| (o.op, op.key.clone()))
    }
}
