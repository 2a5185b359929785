//! A replicated bank account on three nodes in one process, built from the library crates the
//! way an application embeds them: raft-core's driver, a RocksDB log per node (raft-log), QUIC
//! with mutual TLS between the nodes (raft-net-quic) and a state machine of its own. It writes,
//! refuses an overdraft, reads linearizably, stops the leader, writes through the new one and
//! checks that the survivors agree. Run it with `cargo run -p raftkv-node --example embedded`.

use std::{error::Error, path::Path, sync::Arc, sync::Mutex, time::Duration};

use async_trait::async_trait;
use raft_core::{Config, DriverConfig, Entry, EntryPayload, Index, Membership, NodeId};
use raft_core::{ProposeError, Raft, RaftHandle, ReadConsistency::Linearizable, Role};
use raft_core::{StateMachine, StateMachineError};
use raft_log::{RocksLog, RocksLogOptions};
use raft_net_quic::{certs::DevCa, QuicTransport};
use tokio::time::sleep;

/// The new balance, or why the command was refused (a refusal is replicated like any outcome).
pub type Reply = Result<u64, String>;

/// Applies a command (`deposit N` or `withdraw N`) to `balance`. Deterministic, as it must be.
fn execute(balance: u64, command: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(command);
    let (verb, amount) = text.split_once(' ').unwrap_or_default();
    match (verb, amount.parse::<u64>()) {
        ("deposit", Ok(n)) => balance.checked_add(n).ok_or_else(|| "overflow".into()),
        ("withdraw", Ok(n)) if n > balance => Err(format!("overdraft: balance {balance}")),
        ("withdraw", Ok(n)) => Ok(balance - n),
        _ => Err(format!("not a ledger command: {text}")),
    }
}

/// The state machine: the balance and the last applied index, shared to let `run` look at it.
#[derive(Debug, Clone, Default)]
struct Ledger(Arc<Mutex<(u64, Index)>>);

#[async_trait]
impl StateMachine for Ledger {
    type Response = Reply;

    // In memory: 0 after a restart, and the driver re-applies the log. A state machine with data
    // on disk must persist the applied index atomically with it (raft-node/src/store.rs
    // writes both in one RocksDB batch), or a restart would apply entries twice or skip some.
    async fn applied_index(&mut self) -> Result<Index, StateMachineError> {
        Ok(self.0.lock().expect("ledger lock").1)
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Reply>, StateMachineError> {
        let mut state = self.0.lock().expect("ledger lock");
        let replies = entries.iter().map(|entry| {
            let reply = match &entry.payload {
                EntryPayload::Normal(command) => execute(state.0, command),
                _ => Ok(state.0), // a new leader's blank entry, or a membership change
            };
            *state = (*reply.as_ref().unwrap_or(&state.0), entry.index);
            reply
        });
        Ok(replies.collect())
    }
}

/// What happened, for a caller or a test to check.
#[derive(Debug, Default)]
pub struct Summary {
    /// The leader that was shut down, then the one the two survivors elected.
    pub leaders: (NodeId, NodeId),
    /// Every command proposed, with the ledger's reply, in order.
    pub outcomes: Vec<(&'static str, Reply)>,
    /// The balance a linearizable read on the first leader saw.
    pub read_balance: u64,
    /// The final balance on each node still running.
    pub balances: Vec<(NodeId, u64)>,
}

struct Node {
    handle: RaftHandle<Reply>,
    transport: QuicTransport,
    ledger: Ledger,
}

/// Starts nodes 1 to 3: certificates from a dev CA, QUIC on 127.0.0.1, RocksDB logs under `dir`.
async fn start_cluster(dir: &Path) -> Result<Vec<Node>, Box<dyn Error>> {
    let ca = DevCa::generate("embedded example")?;
    let mut nodes: Vec<Node> = Vec::new();
    for id in 1..=3 {
        let tls = ca.node_tls(id)?;
        let (transport, mut inbound) =
            QuicTransport::builder(id, tls).bind(([127, 0, 0, 1], 0).into())?;
        let addr = transport.local_addr()?;
        println!("node {id}: QUIC on {addr}");
        for peer in &nodes {
            transport.add_peer(peer.handle.id(), peer.transport.local_addr()?);
            peer.transport.add_peer(id, addr);
        }
        let log = RocksLog::open(dir.join(format!("node-{id}")), RocksLogOptions::default())?;
        let (ledger, members) = (Ledger::default(), Membership::new([1, 2, 3]));
        let (cfg, driver, t) = (Config::new(id), DriverConfig::default(), transport.clone());
        let handle = Raft::start(cfg, driver, members, log, ledger.clone(), t).await?;
        let h = handle.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                let _ = h.receive(msg); // a full inbox drops it; Raft retransmits
            }
        });
        nodes.push(Node {
            handle,
            transport,
            ledger,
        });
    }
    Ok(nodes)
}

/// The position in `nodes` of a leader, waiting up to 30 s for one.
async fn wait_for_leader(nodes: &[Node]) -> Result<usize, Box<dyn Error>> {
    for _ in 0..600 {
        for (i, node) in nodes.iter().enumerate() {
            if (node.handle.status().await).is_some_and(|s| s.engine.role == Role::Leader) {
                println!("node {} is the leader", node.handle.id());
                return Ok(i);
            }
        }
        sleep(Duration::from_millis(50)).await;
    }
    Err("no leader within 30 s".into())
}

/// Proposes `cmds` one by one through `node` (the leader) and records the replies.
async fn submit(node: &Node, cmds: &[&'static str], s: &mut Summary) -> Result<(), ProposeError> {
    for &cmd in cmds {
        let reply = node.handle.propose(cmd.into()).await?;
        println!("  {cmd:<12} -> {reply:?}");
        s.outcomes.push((cmd, reply));
    }
    Ok(())
}

/// Runs the whole scenario (see the top of the file) and reports what happened.
pub async fn run() -> Result<Summary, Box<dyn Error>> {
    let dir = tempfile::tempdir()?; // the three RocksDB logs; removed when `run` returns
    let mut nodes = start_cluster(dir.path()).await?;
    let mut s = Summary::default();
    let balance = |node: &Node| node.ledger.0.lock().expect("ledger lock").0;
    let first = wait_for_leader(&nodes).await?;
    let cmds = ["deposit 100", "withdraw 30", "withdraw 500", "deposit 25"];
    submit(&nodes[first], &cmds, &mut s).await?;
    let index = nodes[first].handle.read(Linearizable).await?;
    let read = balance(&nodes[first]);
    println!("linearizable read at log index {index}: balance {read}");
    s.read_balance = read;

    let old = nodes.remove(first);
    s.leaders.0 = old.handle.id();
    old.handle.shutdown().await; // returns once the driver has closed its RocksLog
    old.transport.shutdown().await;
    println!("node {} shut down", s.leaders.0);
    let second = wait_for_leader(&nodes).await?;
    s.leaders.1 = nodes[second].handle.id();
    let cmds = ["withdraw 45", "deposit 10", "withdraw 100"];
    submit(&nodes[second], &cmds, &mut s).await?;

    // Every write so far is at or below `index`: wait until both survivors applied it.
    let index = nodes[second].handle.read(Linearizable).await?;
    let caught_up = async {
        while nodes.iter().any(|n| n.handle.applied_index() < index) {
            sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), caught_up).await?; // or "deadline has elapsed"
    for node in nodes {
        s.balances.push((node.handle.id(), balance(&node)));
        node.handle.shutdown().await;
        node.transport.shutdown().await;
    }
    println!("balances at log index {index}: {:?}", s.balances);
    if s.balances.iter().any(|&(_, b)| b != s.balances[0].1) {
        return Err(format!("replicas diverged: {:?}", s.balances).into());
    }
    println!("the replicas agree; all nodes stopped");
    Ok(s)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let s = run().await?;
    println!("leaders {:?}, final balances {:?}", s.leaders, s.balances);
    Ok(())
}
