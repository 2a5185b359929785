//! Helpers shared by the tests of the tokio driver (`driver.rs`,
//! `membership.rs`, `driver_chaos.rs`): waiting for a leader or an applied
//! index, writes to the `MemKv` state machine, and a `MemLog` whose writes
//! pass a gate first (to fail, hang or take a while).
#![allow(dead_code)] // Not every test binary uses every helper.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::memory::{KvCommand, KvResponse, MemKv, MemKvReader, MemLog, MemNetwork};
use raft_core::{
    Config, DriverConfig, Entry, HardState, LogStorage, LogWrite, Membership, NodeId, Raft,
    RaftHandle, Role, SnapshotMeta, StorageError, StoredState,
};

/// A handle to a node over `MemKv`.
pub type Handle = RaftHandle<KvResponse>;

/// A running node: its handle, its log and a reader of its state machine.
pub struct Node {
    pub handle: Handle,
    pub log: Arc<MemLog>,
    pub reader: MemKvReader,
}

impl Node {
    /// Starts node `cfg.id` on `log` and `kv`, reachable on `net`.
    pub async fn start(
        net: &MemNetwork,
        cfg: Config,
        driver: DriverConfig,
        bootstrap: Membership,
        log: Arc<MemLog>,
        kv: MemKv,
    ) -> Self {
        let reader = kv.reader();
        let id = cfg.id;
        let handle = Raft::start(cfg, driver, bootstrap, log.clone(), kv, net.transport(id))
            .await
            .expect("node starts");
        net.register(&handle);
        Self {
            handle,
            log,
            reader,
        }
    }
}

/// A `Put` command.
pub fn put(key: &str, value: &str) -> Bytes {
    KvCommand::Put {
        key: key.into(),
        value: Bytes::from(value.to_owned()),
    }
    .encode()
}

/// The id of the first of `handles` that reports itself leader, polling
/// every 50 ms.
///
/// # Panics
///
/// When none does within 20 s (of virtual time, on paused tokio time).
pub async fn wait_leader(handles: &[&Handle]) -> NodeId {
    for _ in 0..400 {
        for handle in handles {
            if let Some(s) = handle.status().await {
                if s.engine.role == Role::Leader {
                    return s.engine.id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader elected within 20 s of virtual time");
}

/// The leader of `nodes` (node `i + 1` at index `i`) once one is elected,
/// and its handle, after a first write (`k` = `v`) through it was
/// answered.
///
/// # Panics
///
/// When no leader is elected (see [`wait_leader`]) or the write fails.
pub async fn leader_after_first_write(nodes: &[Node]) -> (NodeId, Handle) {
    let handles: Vec<_> = nodes.iter().map(|n| &n.handle).collect();
    let leader = wait_leader(&handles).await;
    let handle = nodes[(leader - 1) as usize].handle.clone();
    handle.propose(put("k", "v")).await.expect("first write");
    (leader, handle)
}

/// Waits until node `id` (`handle`) has applied `index`, polling every
/// 20 ms.
///
/// # Panics
///
/// With the node's status when it has not after `polls` polls.
pub async fn wait_applied(handle: &Handle, id: NodeId, index: u64, polls: u32) {
    for _ in 0..polls {
        if handle.applied_index() >= index {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = handle.status().await;
    panic!("node {id} did not apply index {index}: {s:#?}");
}

/// The storage operation a [`WriteGate`] is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOp {
    Append,
    Truncate,
    Purge,
    SaveHardState,
    Write,
    SaveSnapshot,
    InstallSnapshot,
}

/// What happens before each change of a [`GatedLog`]: waiting (a slow or
/// hanging disk), or an error that fails the change (a failing disk).
#[async_trait]
pub trait WriteGate: Send + Sync + 'static {
    async fn before(&self, op: LogOp) -> Result<(), StorageError>;
}

/// A [`MemLog`] whose every change passes `gate` first; reads go straight
/// to the log.
pub struct GatedLog<G> {
    pub inner: Arc<MemLog>,
    pub gate: G,
}

impl<G> GatedLog<G> {
    /// A new empty log behind `gate`.
    pub fn new(gate: G) -> Self {
        Self {
            inner: Arc::new(MemLog::new()),
            gate,
        }
    }
}

#[async_trait]
impl<G: WriteGate> LogStorage for GatedLog<G> {
    async fn stored_state(&self) -> Result<StoredState, StorageError> {
        self.inner.stored_state().await
    }
    async fn append(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        self.gate.before(LogOp::Append).await?;
        self.inner.append(entries).await
    }
    async fn truncate(&self, from: u64) -> Result<(), StorageError> {
        self.gate.before(LogOp::Truncate).await?;
        self.inner.truncate(from).await
    }
    async fn purge(&self, up_to: u64) -> Result<(), StorageError> {
        self.gate.before(LogOp::Purge).await?;
        self.inner.purge(up_to).await
    }
    async fn entries(
        &self,
        start: u64,
        end: u64,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(start, end, max_bytes).await
    }
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        self.gate.before(LogOp::SaveHardState).await?;
        self.inner.save_hard_state(hard_state).await
    }
    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        self.gate.before(LogOp::Write).await?;
        self.inner.write(write).await
    }
    async fn save_snapshot(&self, meta: SnapshotMeta, purge_to: u64) -> Result<(), StorageError> {
        self.gate.before(LogOp::SaveSnapshot).await?;
        self.inner.save_snapshot(meta, purge_to).await
    }
    async fn install_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.gate.before(LogOp::InstallSnapshot).await?;
        self.inner.install_snapshot(meta).await
    }
}
