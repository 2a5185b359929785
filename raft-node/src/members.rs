//! [`MemberDirectory`]: the addresses of the cluster's members as this node
//! knows them, in one place. Three sources feed it: the addresses this node
//! started with (`--initial-cluster`, or what it stored before), the
//! records replicated through the log (`POST /v1/cluster/learners`; they
//! win), and the member list a `--join` answer carries. It is saved in the
//! node's own metadata, so a restart starts from it; the transport dials
//! what it holds and the API forwards to the leader's client address in it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use raft_core::NodeId;

use crate::config::Member;
use crate::node::meta;
use crate::store::KvReader;

/// The member addresses this node knows, shared by the node's tasks and the
/// HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct MemberDirectory {
    /// By id: the addresses this node started with, updated from the log.
    known: Arc<RwLock<HashMap<NodeId, Member>>>,
    /// The replicated address records.
    reader: KvReader,
    /// Where the directory is saved (`node_meta`).
    db: Arc<rocksdb::DB>,
    /// The invalid client addresses already warned about, by member.
    warned: Arc<Mutex<HashSet<(NodeId, String)>>>,
}

impl std::fmt::Debug for MemberDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberDirectory")
            .field("members", &self.all())
            .finish_non_exhaustive()
    }
}

fn sorted(map: &HashMap<NodeId, Member>) -> Vec<Member> {
    let mut all: Vec<Member> = map.values().cloned().collect();
    all.sort_by_key(|m| m.id);
    all
}

impl MemberDirectory {
    /// The directory of `start` (the addresses this node starts with), with
    /// the records replicated through the log over them.
    ///
    /// # Errors
    ///
    /// The replicated records cannot be read.
    pub fn new(db: Arc<rocksdb::DB>, reader: KvReader, start: Vec<Member>) -> anyhow::Result<Self> {
        let mut known: HashMap<NodeId, Member> = start.into_iter().map(|m| (m.id, m)).collect();
        for m in reader
            .members()
            .context("reading the replicated member addresses")?
        {
            known.insert(m.id, m);
        }
        Ok(Self {
            known: Arc::new(RwLock::new(known)),
            reader,
            db,
            warned: Arc::default(),
        })
    }

    /// The addresses this node saved, if it saved any.
    ///
    /// # Errors
    ///
    /// The store cannot be read or the record is corrupted.
    pub fn load_saved(db: &rocksdb::DB) -> anyhow::Result<Option<Vec<Member>>> {
        meta::load(db, meta::MEMBERS_KEY, "member addresses")
    }

    /// Saves `members` as the addresses a restart starts from.
    ///
    /// # Errors
    ///
    /// The store cannot be written.
    pub fn save_initial(db: &rocksdb::DB, members: &[Member]) -> anyhow::Result<()> {
        meta::save(db, meta::MEMBERS_KEY, members)
    }

    /// The addresses of member `id`.
    pub fn get(&self, id: NodeId) -> Option<Member> {
        self.known.read().ok()?.get(&id).cloned()
    }

    /// The client (HTTP) address of member `id`: where requests for it go.
    pub fn client_addr(&self, id: NodeId) -> Option<String> {
        self.get(id).map(|m| m.client_addr)
    }

    /// Logs, once per member and reason, that member `id`'s recorded client
    /// address is invalid (`why`), so requests are not forwarded to it.
    pub fn warn_invalid_client_addr(&self, id: NodeId, why: &str) {
        let first = self
            .warned
            .lock()
            .is_ok_and(|mut w| w.insert((id, why.to_owned())));
        if first {
            tracing::warn!(
                member = id,
                "the recorded client address of node {id} is invalid ({why}); requests are not \
                 forwarded to it. Record a valid one: `raft-node ctl update-member {id} \
                 --peer-addr PEER_ADDR --client-addr HOST:PORT`"
            );
        }
    }

    /// The ids in the directory.
    pub fn ids(&self) -> Vec<NodeId> {
        self.known
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every member in the directory, by id.
    pub fn all(&self) -> Vec<Member> {
        self.known.read().map(|m| sorted(&m)).unwrap_or_default()
    }

    /// Every member in the directory and every one the log recorded since
    /// (replicated records over the directory's), by id: what a join
    /// answer and a membership change's answer list.
    pub fn with_replicated(&self) -> Vec<Member> {
        let mut all: HashMap<NodeId, Member> =
            self.known.read().map(|m| m.clone()).unwrap_or_default();
        if let Ok(replicated) = self.reader.members() {
            for m in replicated {
                all.insert(m.id, m);
            }
        }
        sorted(&all)
    }

    /// Takes `members` in (their addresses win) and saves the directory;
    /// answers the ones that were new or had other addresses. A poisoned
    /// directory takes nothing.
    ///
    /// # Errors
    ///
    /// The directory cannot be saved (it is updated in memory all the same).
    pub fn learn(&self, members: impl IntoIterator<Item = Member>) -> anyhow::Result<Vec<Member>> {
        let (changed, all) = {
            let Ok(mut map) = self.known.write() else {
                anyhow::bail!("the member directory is poisoned");
            };
            let mut changed = Vec::new();
            for m in members {
                if map.get(&m.id) != Some(&m) {
                    changed.push(m.clone());
                }
                map.insert(m.id, m);
            }
            (changed, sorted(&map))
        };
        Self::save_initial(&self.db, &all)?;
        Ok(changed)
    }

    /// Removes `ids` and, when one was there, saves the directory.
    ///
    /// # Errors
    ///
    /// The directory cannot be saved.
    pub fn forget(&self, ids: &[NodeId]) -> anyhow::Result<()> {
        let all = {
            let Ok(mut map) = self.known.write() else {
                return Ok(());
            };
            let before = map.len();
            map.retain(|id, _| !ids.contains(id));
            if map.len() == before {
                return Ok(());
            }
            sorted(&map)
        };
        Self::save_initial(&self.db, &all)
    }
}
