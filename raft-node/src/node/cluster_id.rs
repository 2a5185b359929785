//! The cluster id: 128 bits that every member of one cluster holds in its
//! `node_meta` and sends in the peer handshake, so that a node of another
//! cluster signed by the same CA (or restored from another backup, or
//! bootstrapped with another `--initial-cluster`) is refused as a peer
//! (close code 10, "wrong cluster") instead of mixing two states.
//!
//! - Bootstrap (`run --initial-cluster`): derived from the sorted members'
//!   ids and peer addresses and `--initial-cluster-token`, so every member
//!   computes the same id without talking.
//! - `restore`: derived from the backup's SHA-256, the new cluster's
//!   members and the token: nodes restored from different files differ.
//! - `--join`: learned from the join answer, stored before the node dials
//!   any peer.
//! - `recover --force-new-cluster`: a new one, derived from the old one,
//!   this node and the configuration entry's index and term and time (the
//!   members added back join and learn it). A survivor started on its old
//!   data still counts the lost members as voters: once new members take
//!   their ids, the configuration alone does not refuse it; the old id
//!   does.
//! - A data directory written before cluster ids has none: it checks
//!   nothing, as before, until it is restored from a backup.

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::meta;
use crate::config::Member;

/// `--initial-cluster-token` when not given.
pub const DEFAULT_TOKEN: &str = "raftkv-cluster";

/// Key of the id in `node_meta` (32 hex digits, JSON string).
const KEY: &[u8] = b"cluster_id";

/// Hashes `parts` (each ended by a newline) to 128 bits.
fn derive(kind: &str, parts: impl IntoIterator<Item = String>) -> u128 {
    let mut h = Sha256::new();
    h.update(format!("raftkv {kind} cluster id v1\n"));
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// `id=peer_addr` of each member, sorted by id.
fn member_lines(members: &[Member]) -> Vec<String> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    sorted
        .iter()
        .map(|m| format!("{}={}", m.id, m.peer_addr))
        .collect()
}

/// The id of a cluster bootstrapped with `members` and `token`: the same
/// on every member, whatever the order of `--initial-cluster`.
pub fn for_bootstrap(members: &[Member], token: &str) -> u128 {
    let mut parts = vec![format!("token={token}")];
    parts.extend(member_lines(members));
    derive("bootstrap", parts)
}

/// The id of a cluster restored from the backup whose SHA-256 is
/// `backup_sha256` (hex) with `members` and `token`.
pub fn for_restore(backup_sha256: &str, members: &[Member], token: &str) -> u128 {
    let mut parts = vec![format!("backup={backup_sha256}"), format!("token={token}")];
    parts.extend(member_lines(members));
    derive("restore", parts)
}

/// The id of a cluster that node `node` forced anew (`recover
/// --force-new-cluster`) from the cluster `previous` (none for a store
/// written before cluster ids) with its configuration entry at `index`,
/// `term`, at `at_unix_ms`: another id at every recovery.
pub fn for_recover(
    previous: Option<u128>,
    node: u64,
    index: u64,
    term: u64,
    at_unix_ms: u64,
) -> u128 {
    derive(
        "recover",
        [
            format!(
                "previous={}",
                previous.map_or_else(|| "none".into(), to_hex)
            ),
            format!("node={node}"),
            format!("index={index}"),
            format!("term={term}"),
            format!("at_unix_ms={at_unix_ms}"),
        ],
    )
}

/// The id as shown and stored: 32 lowercase hex digits.
pub fn to_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// An id from its 32 hex digits.
pub fn parse(hex: &str) -> Option<u128> {
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The stored id, if any.
///
/// # Errors
///
/// The store cannot be read, or the record is not 32 hex digits.
pub fn load(db: &rocksdb::DB) -> anyhow::Result<Option<u128>> {
    let Some(hex) = meta::load::<String>(db, KEY, "cluster id")? else {
        return Ok(None);
    };
    let id = parse(&hex)
        .with_context(|| format!("the stored cluster id {hex:?} is not 32 hex digits"))?;
    Ok(Some(id))
}

/// The stored id at a start, logged; a store without one (written before
/// cluster ids) is said so once, unless the node is joining (it learns
/// the id from the join answer).
///
/// # Errors
///
/// As [`load`].
pub fn load_at_start(db: &rocksdb::DB, joining: bool) -> anyhow::Result<Option<u128>> {
    let id = load(db)?;
    match id {
        Some(c) => tracing::info!(cluster_id = %to_hex(c), "cluster id"),
        None if joining => {}
        None => tracing::warn!(
            "this data directory has no cluster id (written before cluster ids): peers of any \
             cluster signed by the CA are accepted, as before; restoring the cluster from a \
             backup gives it one"
        ),
    }
    Ok(id)
}

/// Stores `id`, synced.
///
/// # Errors
///
/// The store cannot be written.
pub fn save(db: &rocksdb::DB, id: u128) -> anyhow::Result<()> {
    meta::save(db, KEY, &to_hex(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &str) -> Vec<Member> {
        crate::config::parse_initial_cluster(spec).unwrap()
    }

    #[test]
    fn the_same_members_give_the_same_id_and_anything_else_another() {
        let a = members("1=10.0.0.1:7000/10.0.0.1:8080,2=10.0.0.2:7000/10.0.0.2:8080");
        let reordered = members("2=10.0.0.2:7000/10.0.0.2:8080,1=10.0.0.1:7000/10.0.0.1:8080");
        let id = for_bootstrap(&a, DEFAULT_TOKEN);
        assert_eq!(for_bootstrap(&reordered, DEFAULT_TOKEN), id);
        // Client addresses are not part of it.
        let other_client = members("1=10.0.0.1:7000/10.0.0.9:8080,2=10.0.0.2:7000/10.0.0.2:8080");
        assert_eq!(for_bootstrap(&other_client, DEFAULT_TOKEN), id);
        let other_peer = members("1=10.0.0.1:7000/10.0.0.1:8080,2=10.0.0.3:7000/10.0.0.2:8080");
        assert_ne!(for_bootstrap(&other_peer, DEFAULT_TOKEN), id);
        assert_ne!(for_bootstrap(&a, "staging"), id);
        let r1 = for_restore("aa", &a, DEFAULT_TOKEN);
        assert_ne!(r1, id);
        assert_ne!(for_restore("bb", &a, DEFAULT_TOKEN), r1);
        assert_eq!(for_restore("aa", &reordered, DEFAULT_TOKEN), r1);
        assert_eq!(to_hex(0xab).len(), 32);
    }
}
