//! The "resolve members" phase of a start: which addresses this node starts
//! with (stored, its own when joining, or `--initial-cluster` for a new
//! cluster) and the configuration of a log that holds none yet.

use anyhow::bail;
use raft_core::{Membership, NodeId};
use raft_log::RocksLog;

use super::meta;
use crate::config::{Member, NodeConfig};
use crate::members::MemberDirectory;

/// What a start resolved about the cluster.
#[derive(Debug)]
pub(super) struct Resolved {
    /// The addresses this node starts with (before the replicated ones).
    pub(super) members: Vec<Member>,
    /// The configuration of a log without one.
    pub(super) bootstrap: Membership,
    /// This node was started with `--join` and was not added yet.
    pub(super) joining: bool,
}

/// Refuses a store that has a log but no addresses: raft-node did not
/// create it.
fn refuse_foreign_log(cfg: &NodeConfig, log: &RocksLog) -> anyhow::Result<()> {
    if log.last_index() > 0 {
        bail!(
            "{} has a log but no member addresses: it was not created by raft-node",
            cfg.data_dir.display()
        );
    }
    Ok(())
}

/// The stored addresses of a restarted node (the flags' are ignored).
fn restarted(cfg: &NodeConfig, stored: Vec<Member>) -> Vec<Member> {
    if !cfg.initial_cluster.is_empty() {
        tracing::info!(
            "restarting from {}: --initial-cluster is ignored",
            cfg.data_dir.display()
        );
    }
    if let Some(me) = stored.iter().find(|m| m.id == cfg.id) {
        if *me != cfg.advertise {
            tracing::warn!(
                stored = %format!("{}/{}", me.peer_addr, me.client_addr),
                advertised = %format!("{}/{}", cfg.advertise.peer_addr, cfg.advertise.client_addr),
                "this node's addresses changed since the cluster was formed; peers keep the stored ones"
            );
        }
    }
    stored
}

/// A new cluster from `--initial-cluster`: its voters and addresses are
/// recorded.
fn bootstrap_new(
    cfg: &NodeConfig,
    db: &rocksdb::DB,
    log: &RocksLog,
) -> anyhow::Result<Vec<Member>> {
    if cfg.initial_cluster.is_empty() {
        bail!(
            "{} holds no cluster yet: give --initial-cluster to bootstrap a new one",
            cfg.data_dir.display()
        );
    }
    refuse_foreign_log(cfg, log)?;
    // The voter set first: a crash between the two writes leaves a store
    // without addresses, which the next start bootstraps anew.
    let voters: Vec<NodeId> = cfg.initial_cluster.iter().map(|m| m.id).collect();
    meta::save_initial_voters(db, &voters)?;
    let cluster =
        super::cluster_id::for_bootstrap(&cfg.initial_cluster, &cfg.initial_cluster_token);
    super::cluster_id::save(db, cluster)?;
    MemberDirectory::save_initial(db, &cfg.initial_cluster)?;
    tracing::info!(
        members = cfg.initial_cluster.len(),
        cluster_id = %super::cluster_id::to_hex(cluster),
        "bootstrapping a new cluster"
    );
    Ok(cfg.initial_cluster.clone())
}

/// The configuration of a log without one (an original member whose log
/// holds no configuration entry and no snapshot): the voter set the
/// cluster was created with. Never the address book: it also holds nodes
/// whose addresses arrived before their `AddLearner` entry, and counting
/// those as voters could elect this node with their votes.
fn initial_voters(
    cfg: &NodeConfig,
    db: &rocksdb::DB,
    members: &[Member],
) -> anyhow::Result<Membership> {
    if let Some(voters) = meta::load_initial_voters(db)? {
        return Ok(Membership::new(voters));
    }
    // A store created before the voter set was recorded. The
    // --initial-cluster it is started with, when given, names the voters;
    // otherwise its address book is all there is. Record the set now, so
    // that addresses learned from here on cannot change it.
    let voters: Vec<NodeId> = if cfg.initial_cluster.is_empty() {
        members.iter().map(|m| m.id).collect()
    } else {
        cfg.initial_cluster.iter().map(|m| m.id).collect()
    };
    tracing::warn!(
        ?voters,
        "this store does not record the cluster's initial voters (created by an \
         older raft-node); taking them from its member addresses once"
    );
    meta::save_initial_voters(db, &voters)?;
    Ok(Membership::new(voters))
}

/// Resolves the members this node starts with, and the configuration of a
/// log without one.
pub(super) fn resolve_members(cfg: &NodeConfig, log: &RocksLog) -> anyhow::Result<Resolved> {
    let db = log.db();
    // An original member (its store records the voters it was created
    // with) started with --join, as a deployment template switched to
    // joining starts it, is a member already: it must not join again. A
    // node that crashed half-way through joining has no such record.
    let original = meta::load_initial_voters(db)?.is_some();
    if original && cfg.join.is_some() {
        tracing::info!(
            join = ?cfg.join,
            "this node was created with --initial-cluster: --join is ignored, it restarts as \
             the member it is"
        );
    }
    let joining = !original && !meta::flag(db, meta::JOINED_KEY)? && cfg.join.is_some();
    let members = match MemberDirectory::load_saved(db)? {
        Some(stored) => restarted(cfg, stored),
        None if cfg.join.is_some() => {
            refuse_foreign_log(cfg, log)?;
            tracing::info!(join = ?cfg.join, "new node: joining an existing cluster");
            vec![cfg.advertise.clone()]
        }
        None => bootstrap_new(cfg, db, log)?,
    };
    meta::check_idempotency_window(db, cfg.idempotency_window)?;
    meta::check_history_retention(db, cfg.history_retention)?;
    // A node that joined (or is joining) starts with no configuration: it
    // learns it from the leader and never campaigns on its own.
    let joined = meta::flag(db, meta::JOINED_KEY)?;
    let bootstrap = if joined || joining {
        Membership::default()
    } else {
        initial_voters(cfg, db, &members)?
    };
    Ok(Resolved {
        members,
        bootstrap,
        joining,
    })
}
