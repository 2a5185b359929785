//! The rules of applying, with no RocksDB in them: preconditions,
//! revisions, idempotency records and their window, member address
//! records. [`apply`] reads the state before a batch through a
//! [`StoreView`] and answers the outcomes and the [`Write`]s that one
//! atomic batch must make; `rocks.rs` writes them.
//!
//! The result is a function of the entries and the state alone, never of
//! how entries were split into batches: every replica stores and answers
//! the same (the `replicas_are_a_function_of_the_log...` test checks it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Membership};

use super::mvcc::{Collector, Revisions};
use super::records::{
    decode_order_key, decode_token_record, decode_u64, encode_token_record, member_key, order_key,
    token_key, Remembered, TokenRecord, APPLIED_KEY, APPLIED_MEMBERS_KEY, ORDER_PREFIX,
    SCOPED_SINCE_KEY,
};
use super::{StoreError, Versioned};
use crate::command::{Command, Fingerprint, Op, Outcome, Precondition, COMPACT_TAG, MEMBER_TAG};
use crate::lease::{LEASE_GRANT_TAG, LEASE_REVOKE_TAG};
use crate::txn::codec::TXN_TAG;

/// The column family a write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Cf {
    /// The data (`kv`).
    Kv,
    /// The applied index and the replicated bookkeeping (`kv_meta`).
    Meta,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Write {
    /// Sets `key` to the value.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Deletes `key`.
    Delete(Cf, Vec<u8>),
}

/// The state before a batch, as the rules read it.
pub(super) trait StoreView {
    /// The stored value of `key`.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The keys of `cf` from `start` (inclusive) to `end` (exclusive), in
    /// order.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    fn keys_between(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.keys_in(cf, start, Some(end), usize::MAX)
    }

    /// At most `limit` keys of `cf` from `start` (inclusive) to `end`
    /// (exclusive; `None`: to the last key), in order.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    fn keys_in(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// What a batch of entries does.
#[derive(Debug)]
pub(super) struct Applied {
    /// One outcome per entry, in order.
    pub(super) outcomes: Vec<Outcome>,
    /// The writes, to make in one atomic batch, in order.
    pub(super) writes: Vec<Write>,
    /// Whether the replicated member addresses may have changed.
    pub(super) members_changed: bool,
    /// The key changes, in apply order, for watchers (published once the
    /// writes are in the store).
    pub(super) events: Vec<crate::watch::Event>,
}

/// Applies `entries` to the state `view` shows; idempotency records are
/// remembered for `window` entries, history for `retention` entries
/// (0: until compacted by command); after each entry at most
/// `collect_per_entry` compacted history records are deleted (see
/// `mvcc.rs`).
///
/// # Errors
///
/// The store cannot be read, or a record in it is corrupted.
pub(super) fn apply(
    view: &impl StoreView,
    window: u64,
    retention: u64,
    collect_per_entry: usize,
    entries: &[Entry],
) -> Result<Applied, StoreError> {
    let mut batch = Batch {
        view,
        window,
        retention,
        writes: Vec::new(),
        keys: BTreeMap::new(),
        revisions: None,
        collector: Collector::new(collect_per_entry),
        tokens: HashMap::new(),
        applied_members: None,
        scoped_since: None,
        members_changed: false,
        events: Vec::new(),
        leases: super::lease::LeaseOverlay::default(),
    };
    let mut outcomes = Vec::with_capacity(entries.len());
    for e in entries {
        let outcome = match &e.payload {
            EntryPayload::Normal(data) if data.first() == Some(&MEMBER_TAG) => {
                batch.member_record(data)?
            }
            EntryPayload::Normal(data) if data.first() == Some(&COMPACT_TAG) => {
                batch.compact_command(e.index, data)?
            }
            EntryPayload::Normal(data) if data.first() == Some(&TXN_TAG) => {
                batch.txn_command(e.index, data)?
            }
            EntryPayload::Normal(data) if data.first() == Some(&LEASE_GRANT_TAG) => {
                batch.lease_grant(e.index, data)?
            }
            EntryPayload::Normal(data) if data.first() == Some(&LEASE_REVOKE_TAG) => {
                batch.lease_revoke(e.index, e.term, data)?
            }
            EntryPayload::Normal(data) => match Command::decode(data.clone()) {
                Ok(cmd) => batch.command(e.index, &cmd)?,
                Err(err) => Outcome::Malformed(err.to_string()),
            },
            EntryPayload::Membership(m) => batch.configuration(m)?,
            _ => Outcome::Noop,
        };
        outcomes.push(outcome);
        batch.after_entry(e.index)?;
    }
    if let Some(last) = entries.last() {
        batch.forget_expired_tokens(last.index)?;
        batch.finish_revisions(last.index)?;
        batch.put(
            Cf::Meta,
            APPLIED_KEY.to_vec(),
            last.index.to_be_bytes().to_vec(),
        );
    }
    Ok(Applied {
        outcomes,
        writes: batch.writes,
        members_changed: batch.members_changed,
        events: batch.events,
    })
}

/// A batch being decided: the writes so far, and the effects of its
/// earlier entries, which the view does not show yet.
pub(super) struct Batch<'v, V> {
    pub(super) view: &'v V,
    window: u64,
    /// History is compacted to this many entries below the last applied.
    pub(super) retention: u64,
    writes: Vec<Write>,
    /// Records set (or deleted: `None`) by this batch, by key, in key
    /// order (a transaction's range reads the part it covers).
    pub(super) keys: BTreeMap<Bytes, Option<Versioned>>,
    /// The store's revisions, as this batch changed them; `None` until read.
    pub(super) revisions: Option<Revisions>,
    /// Deletes the history records compaction released, a bounded number
    /// per entry.
    pub(super) collector: Collector,
    /// Idempotency records written by this batch, by slot.
    tokens: HashMap<Vec<u8>, TokenRecord>,
    /// The members of the configuration last applied (this batch's own
    /// entries first, then the stored record); `None` until read.
    applied_members: Option<Option<BTreeSet<u64>>>,
    /// The index of the first scoped token; `None` until read.
    scoped_since: Option<Option<u64>>,
    members_changed: bool,
    /// Every key change, in apply order (see `mvcc.rs`).
    pub(super) events: Vec<crate::watch::Event>,
    /// This batch's changes to the leases (see `lease.rs`).
    pub(super) leases: super::lease::LeaseOverlay,
}

impl<V: StoreView> Batch<'_, V> {
    pub(super) fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push(Write::Put(cf, key, value));
    }

    pub(super) fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.writes.push(Write::Delete(cf, key));
    }

    /// A member's address record (`POST /v1/cluster/learners`, and
    /// `PUT /v1/cluster/members/{id}`, which only applies to a member).
    fn member_record(&mut self, data: &Bytes) -> Result<Outcome, StoreError> {
        let rec = match crate::command::decode_member(data) {
            Ok(crate::command::MemberEntry::Addresses(rec)) => rec,
            Ok(crate::command::MemberEntry::GrpcUrl(rec)) => return self.grpc_url_record(rec),
            Ok(crate::command::MemberEntry::AddressesKeepingUrl(rec)) => {
                return self.address_record(rec)
            }
            Err(err) => return Ok(Outcome::Malformed(err.to_string())),
        };
        if rec.only_if_member {
            let members = self.applied_members()?;
            // No configuration applied yet means none removed anyone: every
            // removal is a configuration entry, which records its members.
            if members.is_some_and(|m| !m.contains(&rec.member.id)) {
                return Ok(Outcome::NotFound);
            }
        }
        let record = serde_json::to_vec(&rec.member).unwrap_or_default();
        self.put(Cf::Meta, member_key(rec.member.id), record);
        self.members_changed = true;
        Ok(Outcome::Noop)
    }

    /// A member's gRPC URL alone (version 2): the other fields of its
    /// record stay as they are; the addresses the entry carries are only
    /// recorded for a member without a record. `NotFound` for a node not
    /// in the configuration last applied, or one with neither a record nor
    /// addresses.
    fn grpc_url_record(
        &mut self,
        rec: crate::command::GrpcUrlRecord,
    ) -> Result<Outcome, StoreError> {
        let members = self.applied_members()?;
        if members.is_some_and(|m| !m.contains(&rec.id)) {
            return Ok(Outcome::NotFound);
        }
        let key = member_key(rec.id);
        let recorded: Option<crate::config::Member> = self
            .meta_value(&key)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        let member = match (recorded, rec.peer_addr, rec.client_addr) {
            (Some(m), _, _) => crate::config::Member {
                grpc_url: rec.grpc_url,
                ..m
            },
            (None, Some(peer_addr), Some(client_addr)) => crate::config::Member {
                id: rec.id,
                peer_addr,
                client_addr,
                grpc_url: rec.grpc_url,
            },
            (None, _, _) => return Ok(Outcome::NotFound),
        };
        let record = serde_json::to_vec(&member).unwrap_or_default();
        self.put(Cf::Meta, key, record);
        self.members_changed = true;
        Ok(Outcome::Noop)
    }

    /// A member's addresses keeping its recorded gRPC URL (version 3):
    /// the URL of the record as it is when the entry applies stays (for a
    /// learner's record, only when the recorded addresses are the same).
    /// `NotFound` for an update of a node not in the configuration last
    /// applied.
    fn address_record(
        &mut self,
        rec: crate::command::AddressRecord,
    ) -> Result<Outcome, StoreError> {
        if rec.only_if_member {
            let members = self.applied_members()?;
            if members.is_some_and(|m| !m.contains(&rec.id)) {
                return Ok(Outcome::NotFound);
            }
        }
        let key = member_key(rec.id);
        let recorded: Option<crate::config::Member> = self
            .meta_value(&key)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        let grpc_url = recorded
            .filter(|m| {
                rec.only_if_member
                    || (m.peer_addr == rec.peer_addr && m.client_addr == rec.client_addr)
            })
            .and_then(|m| m.grpc_url);
        let member = crate::config::Member {
            id: rec.id,
            peer_addr: rec.peer_addr,
            client_addr: rec.client_addr,
            grpc_url,
        };
        let record = serde_json::to_vec(&member).unwrap_or_default();
        self.put(Cf::Meta, key, record);
        self.members_changed = true;
        Ok(Outcome::Noop)
    }

    /// The value of `key` in `Cf::Meta` as this batch leaves it: its own
    /// writes first, then the store.
    fn meta_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        for w in self.writes.iter().rev() {
            match w {
                Write::Put(Cf::Meta, k, v) if k == key => return Ok(Some(v.clone())),
                Write::Delete(Cf::Meta, k) if k == key => return Ok(None),
                _ => {}
            }
        }
        self.view.get(Cf::Meta, key)
    }

    /// The members of the configuration last applied: this batch's own
    /// configuration entries first, then the stored record.
    fn applied_members(&mut self) -> Result<Option<&BTreeSet<u64>>, StoreError> {
        if self.applied_members.is_none() {
            let stored = self
                .view
                .get(Cf::Meta, APPLIED_MEMBERS_KEY)?
                .and_then(|v| serde_json::from_slice(&v).ok());
            self.applied_members = Some(stored);
        }
        Ok(self.applied_members.as_ref().and_then(Option::as_ref))
    }

    /// A configuration entry: a node dropped from the configuration loses
    /// its address record on every replica, at the same index, so no member
    /// dials it or lets it in again.
    fn configuration(&mut self, m: &Membership) -> Result<Outcome, StoreError> {
        let now = m.members();
        let gone: Vec<u64> = match self.applied_members()? {
            Some(prev) => prev.difference(&now).copied().collect(),
            None => Vec::new(),
        };
        for id in gone {
            self.delete(Cf::Meta, member_key(id));
            self.members_changed = true;
        }
        let record = serde_json::to_vec(&now).unwrap_or_default();
        self.put(Cf::Meta, APPLIED_MEMBERS_KEY.to_vec(), record);
        self.applied_members = Some(Some(now));
        Ok(Outcome::Noop)
    }

    /// The idempotency record of `slot`: this batch's, else the stored one.
    fn token(&self, slot: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        if let Some(p) = self.tokens.get(slot) {
            return Ok(Some(p.clone()));
        }
        match self.view.get(Cf::Meta, &token_key(slot))? {
            Some(stored) => decode_token_record(slot, &stored).map(Some),
            None => Ok(None),
        }
    }

    /// Records the index of the first scoped token, once; the index it is.
    fn note_scoped(&mut self, index: u64) -> Result<u64, StoreError> {
        let since = match self.scoped_since {
            Some(s) => s,
            None => self
                .view
                .get(Cf::Meta, SCOPED_SINCE_KEY)?
                .and_then(|v| decode_u64(&v)),
        };
        if since.is_none() {
            self.put(
                Cf::Meta,
                SCOPED_SINCE_KEY.to_vec(),
                index.to_be_bytes().to_vec(),
            );
        }
        let since = since.unwrap_or(index);
        self.scoped_since = Some(Some(since));
        Ok(since)
    }

    /// The outcome remembered for `cmd`'s token at `index`, when its record
    /// is within the window. A record past its window loses its order key:
    /// the token is used anew.
    fn remembered(
        &mut self,
        index: u64,
        cmd: &Command,
        slot: &[u8],
        fingerprint: &Fingerprint,
    ) -> Result<Option<Outcome>, StoreError> {
        let mut prior = self.token(slot)?;
        // A scoped retry of a write made before scoping existed.
        if prior.is_none() && cmd.principal.is_some() {
            if let (Some(raw), Some(Some(since))) = (&cmd.idempotency_key, self.scoped_since) {
                // Only within its window: past it, it is simply forgotten
                // (its own order key removes it).
                let window = self.window;
                prior = self
                    .token(raw.as_bytes())?
                    .filter(|(at, _, _)| *at < since && index.saturating_sub(*at) <= window);
            }
        }
        // Whether a token is remembered depends only on the two indexes,
        // never on how entries were batched: every replica decides the same.
        let Some((at, remembered, outcome)) = prior else {
            return Ok(None);
        };
        if index.saturating_sub(at) <= self.window {
            return Ok(Some(if remembered.matches(cmd, fingerprint) {
                outcome
            } else {
                Outcome::IdempotencyConflict
            }));
        }
        self.delete(Cf::Meta, order_key(at, slot));
        Ok(None)
    }

    /// A key-value command at `index`.
    fn command(&mut self, index: u64, cmd: &Command) -> Result<Outcome, StoreError> {
        let slot = cmd.idempotency_slot();
        let fingerprint = if slot.is_some() {
            cmd.fingerprint()
        } else {
            [0; 16]
        };
        if cmd.principal.is_some() && cmd.idempotency_key.is_some() {
            self.note_scoped(index)?;
        }
        if let Some(slot) = &slot {
            if let Some(outcome) = self.remembered(index, cmd, slot, &fingerprint)? {
                return Ok(outcome);
            }
        }
        let old = self.current(&cmd.key)?;
        let current = old.as_ref().map(|v| v.rev);
        let allowed = match cmd.precondition {
            Precondition::None => true,
            Precondition::IfMatch(rev) => current == Some(rev),
            Precondition::IfNoneMatch => current.is_none(),
        };
        let outcome = if !allowed {
            Outcome::PreconditionFailed { current }
        } else {
            match (&cmd.op, old) {
                (Op::Put(value), old) => {
                    self.put_value(index, &cmd.key, old, value, 0)?;
                    Outcome::Applied { rev: index }
                }
                (
                    Op::PutLeased {
                        value,
                        lease,
                        max_keys,
                    },
                    old,
                ) => match self.may_attach(*lease, old.as_ref(), 0, *max_keys)? {
                    Ok(()) => {
                        self.put_value(index, &cmd.key, old, value, *lease)?;
                        Outcome::Applied { rev: index }
                    }
                    Err(r) => Outcome::LeaseRefused(r),
                },
                (Op::Delete, None) => Outcome::NotFound,
                (Op::Delete, Some(old)) => {
                    self.delete_value(index, &cmd.key, &old)?;
                    Outcome::Applied { rev: index }
                }
            }
        };
        if let Some(slot) = slot {
            let record = encode_token_record(index, &fingerprint, &outcome);
            self.put(Cf::Meta, token_key(&slot), record);
            self.put(Cf::Meta, order_key(index, &slot), Vec::new());
            self.tokens
                .insert(slot, (index, Remembered::Sha(fingerprint), outcome.clone()));
        }
        Ok(outcome)
    }

    /// Forgets the tokens that fell out of the window by `last` (by index,
    /// so deterministically).
    fn forget_expired_tokens(&mut self, last: u64) -> Result<(), StoreError> {
        let Some(horizon) = last.checked_sub(self.window) else {
            return Ok(());
        };
        let end = order_key(horizon, b"");
        for k in self.view.keys_between(Cf::Meta, ORDER_PREFIX, &end)? {
            let (index, slot) = decode_order_key(&k)?;
            // The token's record goes only if it is still the one this
            // order key was written for: a token used again (in this batch
            // or an earlier one) holds a newer record, which must stay
            // whatever the batch boundaries were.
            if self.token(slot)?.map(|(at, _, _)| at) == Some(index) {
                self.delete(Cf::Meta, token_key(slot));
            }
            self.delete(Cf::Meta, k);
        }
        // Tokens recorded by this batch's own entries are not in the view
        // yet; those already out of the window go too, as they would have
        // had their entries come in smaller batches.
        let expired: Vec<(Vec<u8>, u64)> = self
            .tokens
            .iter()
            .filter(|(_, (at, _, _))| *at < horizon)
            .map(|(slot, (at, _, _))| (slot.clone(), *at))
            .collect();
        for (slot, at) in expired {
            self.delete(Cf::Meta, token_key(&slot));
            self.delete(Cf::Meta, order_key(at, &slot));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The rules on an in-memory store: no RocksDB.

    use std::collections::BTreeMap;

    use raft_core::{Entry, EntryPayload, Membership};

    use super::super::mvcc::COLLECT_PER_ENTRY;
    use super::*;

    /// Both column families in memory; a batch's writes go in in order.
    #[derive(Default)]
    struct Memory(BTreeMap<(Cf, Vec<u8>), Vec<u8>>);

    impl StoreView for Memory {
        fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.get(&(cf, key.to_vec())).cloned())
        }

        fn keys_in(
            &self,
            cf: Cf,
            start: &[u8],
            end: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<Vec<u8>>, StoreError> {
            Ok(self
                .0
                .range((cf, start.to_vec())..)
                .map(|((c, k), _)| (*c, k))
                .take_while(|(c, k)| *c == cf && end.is_none_or(|e| k.as_slice() < e))
                .take(limit)
                .map(|(_, k)| k.clone())
                .collect())
        }
    }

    impl Memory {
        /// Applies `entries` as one batch and makes its writes.
        fn apply(&mut self, window: u64, entries: &[Entry]) -> Vec<Outcome> {
            let applied = apply(self, window, 0, COLLECT_PER_ENTRY, entries).expect("in memory");
            for w in applied.writes {
                match w {
                    Write::Put(cf, k, v) => self.0.insert((cf, k), v),
                    Write::Delete(cf, k) => self.0.remove(&(cf, k)),
                };
            }
            applied.outcomes
        }

        fn rev(&self, key: &str) -> Option<u64> {
            let rec = self.get(Cf::Kv, key.as_bytes()).expect("in memory")?;
            Some(
                super::super::records::decode_record(key.as_bytes(), &rec)
                    .expect("a record")
                    .rev,
            )
        }

        fn tokens(&self) -> usize {
            self.0
                .keys()
                .filter(|(cf, k)| *cf == Cf::Meta && k.starts_with(b"i/"))
                .count()
        }
    }

    fn entry(
        index: u64,
        op: Op,
        key: &str,
        precondition: Precondition,
        token: Option<&str>,
    ) -> Entry {
        let cmd = Command {
            op,
            key: Bytes::from(key.to_owned()),
            precondition,
            idempotency_key: token.map(str::to_owned),
            principal: None,
        };
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(cmd.encode()),
        }
    }

    fn put(index: u64, key: &str, pre: Precondition, token: Option<&str>) -> Entry {
        entry(index, Op::Put(Bytes::from_static(b"v")), key, pre, token)
    }

    #[test]
    fn preconditions_see_the_writes_of_the_same_batch() {
        let mut m = Memory::default();
        let out = m.apply(
            100,
            &[
                put(1, "a", Precondition::IfNoneMatch, None),
                put(2, "a", Precondition::IfNoneMatch, None),
                put(3, "a", Precondition::IfMatch(1), None),
                entry(4, Op::Delete, "a", Precondition::IfMatch(1), None),
                entry(5, Op::Delete, "a", Precondition::IfMatch(3), None),
                entry(6, Op::Delete, "a", Precondition::None, None),
            ],
        );
        assert_eq!(
            out,
            vec![
                Outcome::Applied { rev: 1 },
                Outcome::PreconditionFailed { current: Some(1) },
                Outcome::Applied { rev: 3 },
                Outcome::PreconditionFailed { current: Some(3) },
                Outcome::Applied { rev: 5 },
                Outcome::NotFound,
            ]
        );
        assert_eq!(m.rev("a"), None);
        assert_eq!(
            m.get(Cf::Meta, APPLIED_KEY).unwrap(),
            Some(6u64.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn a_retry_gets_the_first_outcome_and_another_request_with_its_key_a_conflict() {
        let mut m = Memory::default();
        let first = m.apply(100, &[put(1, "a", Precondition::IfNoneMatch, Some("t"))]);
        assert_eq!(first, vec![Outcome::Applied { rev: 1 }]);
        // The same request again, in a later batch: the first outcome, and
        // nothing written.
        let again = m.apply(100, &[put(2, "a", Precondition::IfNoneMatch, Some("t"))]);
        assert_eq!(again, vec![Outcome::Applied { rev: 1 }]);
        assert_eq!(m.rev("a"), Some(1));
        let other = m.apply(100, &[put(3, "b", Precondition::None, Some("t"))]);
        assert_eq!(other, vec![Outcome::IdempotencyConflict]);
        assert_eq!(m.rev("b"), None);
    }

    #[test]
    fn tokens_past_the_window_are_forgotten_whatever_the_batches() {
        // One entry per batch, and all in one batch: the same records.
        let log: Vec<Entry> = (1..=6)
            .map(|i| put(i, "k", Precondition::None, Some(&format!("t{i}"))))
            .collect();
        let mut one_by_one = Memory::default();
        for e in &log {
            one_by_one.apply(2, std::slice::from_ref(e));
        }
        let mut together = Memory::default();
        together.apply(2, &log);
        assert_eq!(one_by_one.0, together.0);
        // Tokens at indexes 4 to 6 are within 2 entries of 6; the rest went
        // with their order keys.
        assert_eq!(together.tokens(), 3);
        // A token past its window is used anew.
        let out = together.apply(2, &[put(7, "k", Precondition::IfMatch(6), Some("t1"))]);
        assert_eq!(out, vec![Outcome::Applied { rev: 7 }]);
    }

    #[test]
    fn a_configuration_drops_the_address_records_of_the_nodes_it_removes() {
        let mut m = Memory::default();
        let member = |id: u64| crate::config::Member {
            id,
            peer_addr: "127.0.0.1:7000".parse().unwrap(),
            client_addr: "127.0.0.1:8080".into(),
            grpc_url: None,
        };
        let record = |index: u64, id: u64| Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(crate::command::encode_member(&member(id))),
        };
        let config = |index: u64, voters: Vec<u64>| Entry {
            term: 1,
            index,
            payload: EntryPayload::Membership(Box::new(Membership::new(voters))),
        };
        let applied = apply(&m, 10, 0, COLLECT_PER_ENTRY, &[record(1, 2), record(2, 3)]).unwrap();
        assert!(applied.members_changed);
        m.apply(10, &[record(1, 2), record(2, 3), config(3, vec![1, 2, 3])]);
        assert!(m.get(Cf::Meta, &member_key(3)).unwrap().is_some());
        let applied = apply(&m, 10, 0, COLLECT_PER_ENTRY, &[config(4, vec![1, 2])]).unwrap();
        assert!(applied.members_changed);
        m.apply(10, &[config(4, vec![1, 2])]);
        assert!(m.get(Cf::Meta, &member_key(3)).unwrap().is_none());
        assert!(m.get(Cf::Meta, &member_key(2)).unwrap().is_some());
    }

    #[test]
    fn an_address_update_that_commits_after_the_removal_brings_no_record_back() {
        let mut m = Memory::default();
        let member = |id: u64, port: u16| crate::config::Member {
            id,
            peer_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            client_addr: "127.0.0.1:8080".into(),
            grpc_url: None,
        };
        let entry = |index: u64, payload: Bytes| Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(payload),
        };
        let config = |index: u64, voters: Vec<u64>| Entry {
            term: 1,
            index,
            payload: EntryPayload::Membership(Box::new(Membership::new(voters))),
        };
        let add = |index, id| entry(index, crate::command::encode_member(&member(id, 7000)));
        let update = |index, id, port| {
            entry(
                index,
                crate::command::encode_member_update(&member(id, port)),
            )
        };
        m.apply(10, &[add(1, 2), add(2, 3), config(3, vec![1, 2, 3])]);
        // An update of a member is recorded.
        assert_eq!(m.apply(10, &[update(4, 3, 7001)]), vec![Outcome::Noop]);
        let stored = m.get(Cf::Meta, &member_key(3)).unwrap().unwrap();
        let stored: crate::config::Member = serde_json::from_slice(&stored).unwrap();
        assert_eq!(stored, member(3, 7001));
        // Node 3 is removed, then an update proposed before the removal
        // commits: it is refused and node 3 has no record.
        let out = m.apply(10, &[config(5, vec![1, 2]), update(6, 3, 7002)]);
        assert_eq!(out, vec![Outcome::Noop, Outcome::NotFound]);
        assert!(m.get(Cf::Meta, &member_key(3)).unwrap().is_none());
        // The same in separate batches (the removal read from the store).
        let mut m2 = Memory::default();
        m2.apply(10, &[add(1, 2), add(2, 3), config(3, vec![1, 2, 3])]);
        m2.apply(10, &[config(4, vec![1, 2])]);
        assert_eq!(m2.apply(10, &[update(5, 3, 7002)]), vec![Outcome::NotFound]);
        assert!(m2.get(Cf::Meta, &member_key(3)).unwrap().is_none());
        // A learner's record, added before its configuration, still is.
        assert_eq!(m2.apply(10, &[add(6, 4)]), vec![Outcome::Noop]);
        assert!(m2.get(Cf::Meta, &member_key(4)).unwrap().is_some());
    }

    #[test]
    fn member_records_read_both_ways_across_releases() {
        let member = crate::config::Member {
            id: 3,
            peer_addr: "raft-2.raft:7000".parse().unwrap(),
            client_addr: "raft-2.raft:8080".into(),
            grpc_url: None,
        };
        // A record written by an earlier release (the member alone) is a
        // plain record.
        let mut old = vec![crate::command::MEMBER_TAG];
        old.extend(serde_json::to_vec(&member).unwrap());
        let Ok(crate::command::MemberEntry::Addresses(rec)) = crate::command::decode_member(&old)
        else {
            panic!("an old record decodes as addresses");
        };
        assert_eq!((rec.member, rec.only_if_member), (member.clone(), false));
        // An update reads as the member for a release that knows no
        // updates (it ignores the extra field).
        let new = crate::command::encode_member_update(&member);
        let Ok(crate::command::MemberEntry::Addresses(rec)) = crate::command::decode_member(&new)
        else {
            panic!("an update decodes as addresses");
        };
        assert!(rec.only_if_member);
        let as_old: crate::config::Member = serde_json::from_slice(&new[1..]).unwrap();
        assert_eq!(as_old, member);
    }

    /// Finding B2/B4: a node publishing its gRPC URL sent its peer and
    /// client addresses along, from its own (possibly stale) records, and
    /// reverted an address change it had not applied yet; and a URL could
    /// not be cleared. A version 2 record sets the URL alone; none clears it.
    #[test]
    fn a_published_grpc_url_changes_no_address_and_none_clears_it() {
        use crate::command::{encode_grpc_url, GrpcUrlRecord, GRPC_URL_RECORD_VERSION};
        let mut m = Memory::default();
        let member = |id: u64, port: u16, url: Option<&str>| crate::config::Member {
            id,
            peer_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            client_addr: format!("127.0.0.1:{}", port + 1000),
            grpc_url: url.map(Into::into),
        };
        let entry = |index: u64, payload: Bytes| Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(payload),
        };
        let publish = |index, id, url: Option<&str>, fallback: Option<(u16, u16)>| {
            entry(
                index,
                encode_grpc_url(&GrpcUrlRecord {
                    v: GRPC_URL_RECORD_VERSION,
                    id,
                    grpc_url: url.map(Into::into),
                    peer_addr: fallback.map(|(p, _)| format!("127.0.0.1:{p}").parse().unwrap()),
                    client_addr: fallback.map(|(_, c)| format!("127.0.0.1:{c}")),
                }),
            )
        };
        let stored = |m: &Memory, id| -> Option<crate::config::Member> {
            m.get(Cf::Meta, &member_key(id))
                .unwrap()
                .map(|v| serde_json::from_slice(&v).unwrap())
        };
        let config = Entry {
            term: 1,
            index: 2,
            payload: EntryPayload::Membership(Box::new(Membership::new(vec![1, 2, 3]))),
        };
        // An admin moved node 3 to port 7001 (while it was down); its
        // publish, carrying the addresses it knew (7000, as fallback), sets
        // the URL and keeps the new addresses.
        m.apply(
            10,
            &[
                entry(
                    1,
                    crate::command::encode_member_update(&member(3, 7001, None)),
                ),
                config,
            ],
        );
        let out = m.apply(
            10,
            &[publish(3, 3, Some("http://h:2379"), Some((7000, 8000)))],
        );
        assert_eq!(out, vec![Outcome::Noop]);
        assert_eq!(stored(&m, 3), Some(member(3, 7001, Some("http://h:2379"))));
        // Restarted without a gRPC listener: the URL is cleared, nothing else.
        m.apply(10, &[publish(4, 3, None, None)]);
        assert_eq!(stored(&m, 3), Some(member(3, 7001, None)));
        // An original member without a record: the addresses it carries
        // are recorded with the URL.
        m.apply(
            10,
            &[publish(5, 2, Some("http://h2:2379"), Some((7100, 8100)))],
        );
        assert_eq!(stored(&m, 2), Some(member(2, 7100, Some("http://h2:2379"))));
        // In the same batch as an address update: the update's addresses.
        m.apply(
            10,
            &[
                entry(
                    6,
                    crate::command::encode_member_update(&member(2, 7200, None)),
                ),
                publish(7, 2, Some("http://h2:1"), Some((7100, 8100))),
            ],
        );
        assert_eq!(stored(&m, 2), Some(member(2, 7200, Some("http://h2:1"))));
        // Not a member: refused, nothing recorded.
        assert_eq!(
            m.apply(
                10,
                &[publish(8, 9, Some("http://h9:1"), Some((7900, 8900)))]
            ),
            vec![Outcome::NotFound]
        );
        assert_eq!(stored(&m, 9), None);
        // A member with neither a record nor addresses: refused.
        assert_eq!(
            m.apply(10, &[publish(9, 1, Some("http://h1:1"), None)]),
            vec![Outcome::NotFound]
        );
        assert_eq!(stored(&m, 1), None);
    }

    /// The encoding of a version 2 record, byte for byte, and how each
    /// release reads it.
    #[test]
    fn grpc_url_records_golden_and_across_releases() {
        use crate::command::{decode_member, encode_grpc_url, GrpcUrlRecord, MemberEntry};
        let with_addrs = GrpcUrlRecord {
            v: 2,
            id: 3,
            grpc_url: Some("http://h:2379".into()),
            peer_addr: Some("raft-2.raft:7000".parse().unwrap()),
            client_addr: Some("raft-2.raft:8080".into()),
        };
        let bytes = encode_grpc_url(&with_addrs);
        assert_eq!(
            &bytes[..],
            &b"\x80{\"v\":2,\"id\":3,\"grpc_url\":\"http://h:2379\",\
               \"peer_addr\":\"raft-2.raft:7000\",\"client_addr\":\"raft-2.raft:8080\"}"[..]
        );
        assert_eq!(decode_member(&bytes), Ok(MemberEntry::GrpcUrl(with_addrs)));
        // An earlier release reads one with addresses as a plain record.
        let as_old: crate::config::Member = serde_json::from_slice(&bytes[1..]).unwrap();
        assert_eq!(as_old.grpc_url.as_deref(), Some("http://h:2379"));
        // "No gRPC URL": the URL is absent.
        let clear = encode_grpc_url(&GrpcUrlRecord {
            v: 2,
            id: 3,
            grpc_url: None,
            peer_addr: None,
            client_addr: None,
        });
        assert_eq!(&clear[..], &b"\x80{\"v\":2,\"id\":3}"[..]);
        // Version 1 records (no "v", or "v": 1) still decode as addresses.
        let v1 = b"\x80{\"id\":3,\"peer_addr\":\"raft-2.raft:7000\",\"client_addr\":\"raft-2.raft:8080\",\"only_if_member\":true}";
        assert!(matches!(decode_member(v1), Ok(MemberEntry::Addresses(r)) if r.only_if_member));
        // A later version, or junk in a version 2 record, is malformed.
        assert!(decode_member(b"\x80{\"v\":3,\"id\":3}").is_err());
        assert!(decode_member(b"\x80{\"v\":2,\"id\":3,\"x\":1}").is_err());
        assert!(decode_member(b"\x80{\"v\":2}").is_err());
    }

    /// Review finding (MEDIUM): an address update without `grpc_url`
    /// carried the URL the leader read before its read barrier, as a
    /// version 1 record replacing the whole member: a URL the node
    /// published in between was put back to the old one. A version 3
    /// record keeps the URL recorded when it applies.
    #[test]
    fn an_address_update_without_grpc_url_keeps_the_url_recorded_when_it_applies() {
        use crate::command::{encode_grpc_url, encode_member_addresses, GrpcUrlRecord};
        let mut m = Memory::default();
        let member = |id: u64, port: u16, url: Option<&str>| crate::config::Member {
            id,
            peer_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            client_addr: format!("127.0.0.1:{}", port + 1000),
            grpc_url: url.map(Into::into),
        };
        let entry = |index: u64, payload: Bytes| Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(payload),
        };
        let publish = |index, id, url: &str| {
            entry(
                index,
                encode_grpc_url(&GrpcUrlRecord {
                    v: crate::command::GRPC_URL_RECORD_VERSION,
                    id,
                    grpc_url: Some(url.into()),
                    peer_addr: None,
                    client_addr: None,
                }),
            )
        };
        let stored = |m: &Memory, id| -> Option<crate::config::Member> {
            m.get(Cf::Meta, &member_key(id))
                .unwrap()
                .map(|v| serde_json::from_slice(&v).unwrap())
        };
        let config = |index: u64, voters: Vec<u64>| Entry {
            term: 1,
            index,
            payload: EntryPayload::Membership(Box::new(Membership::new(voters))),
        };
        m.apply(
            10,
            &[
                entry(1, crate::command::encode_member(&member(3, 7000, None))),
                config(2, vec![1, 2, 3]),
                publish(3, 3, "http://old:2379"),
            ],
        );
        // The admin's update (proposed while U_old was recorded) commits
        // after node 3 published U_new: U_new stays, with the new addresses.
        let out = m.apply(
            10,
            &[
                publish(4, 3, "http://new:2379"),
                entry(5, encode_member_addresses(&member(3, 7001, None), true)),
            ],
        );
        assert_eq!(out, vec![Outcome::Noop, Outcome::Noop]);
        assert_eq!(
            stored(&m, 3),
            Some(member(3, 7001, Some("http://new:2379")))
        );
        // The same across batches (the URL read from the store).
        m.apply(10, &[publish(6, 3, "http://newer:2379")]);
        m.apply(
            10,
            &[entry(
                7,
                encode_member_addresses(&member(3, 7002, None), true),
            )],
        );
        assert_eq!(
            stored(&m, 3),
            Some(member(3, 7002, Some("http://newer:2379")))
        );
        // An update of a removed node is refused and records nothing.
        m.apply(10, &[config(8, vec![1, 2])]);
        assert_eq!(
            m.apply(
                10,
                &[entry(
                    9,
                    encode_member_addresses(&member(3, 7003, None), true)
                )]
            ),
            vec![Outcome::NotFound]
        );
        assert_eq!(stored(&m, 3), None);
        // A learner's record keeps the URL only at the same addresses.
        m.apply(
            10,
            &[
                entry(10, encode_member_addresses(&member(4, 7400, None), false)),
                publish(11, 4, "http://h4:1"),
            ],
        );
        // (node 4 is no member yet: the publish is refused.)
        assert_eq!(stored(&m, 4), Some(member(4, 7400, None)));
        m.apply(
            10,
            &[config(12, vec![1, 2, 4]), publish(13, 4, "http://h4:1")],
        );
        m.apply(
            10,
            &[entry(
                14,
                encode_member_addresses(&member(4, 7400, None), false),
            )],
        );
        assert_eq!(stored(&m, 4), Some(member(4, 7400, Some("http://h4:1"))));
        m.apply(
            10,
            &[entry(
                15,
                encode_member_addresses(&member(4, 7401, None), false),
            )],
        );
        assert_eq!(stored(&m, 4), Some(member(4, 7401, None)));
    }

    /// The encoding of a version 3 record, byte for byte; version 1 and 2
    /// records decode as before.
    #[test]
    fn address_records_keeping_the_url_golden() {
        use crate::command::{decode_member, encode_member_addresses, AddressRecord, MemberEntry};
        let member = crate::config::Member {
            id: 3,
            peer_addr: "raft-2.raft:7000".parse().unwrap(),
            client_addr: "raft-2.raft:8080".into(),
            grpc_url: Some("http://ignored:1".into()),
        };
        let update = encode_member_addresses(&member, true);
        assert_eq!(
            &update[..],
            &b"\x80{\"v\":3,\"id\":3,\"peer_addr\":\"raft-2.raft:7000\",\
               \"client_addr\":\"raft-2.raft:8080\",\"only_if_member\":true}"[..]
        );
        assert_eq!(
            decode_member(&update),
            Ok(MemberEntry::AddressesKeepingUrl(AddressRecord {
                v: 3,
                id: 3,
                peer_addr: member.peer_addr.clone(),
                client_addr: member.client_addr.clone(),
                only_if_member: true,
            }))
        );
        let new = encode_member_addresses(&member, false);
        assert_eq!(
            &new[..],
            &b"\x80{\"v\":3,\"id\":3,\"peer_addr\":\"raft-2.raft:7000\",\
               \"client_addr\":\"raft-2.raft:8080\"}"[..]
        );
        // Without its addresses, or with junk: malformed.
        assert!(decode_member(b"\x80{\"v\":3,\"id\":3}").is_err());
        assert!(decode_member(
            b"\x80{\"v\":3,\"id\":3,\"peer_addr\":\"h:1\",\"client_addr\":\"h:2\",\"x\":1}"
        )
        .is_err());
        assert!(decode_member(b"\x80{\"v\":4,\"id\":3}").is_err());
    }

    #[test]
    fn malformed_entries_are_answered_and_change_nothing_but_the_applied_index() {
        let mut m = Memory::default();
        let junk = Entry {
            term: 1,
            index: 1,
            payload: EntryPayload::Normal(Bytes::from_static(b"junk")),
        };
        let out = m.apply(10, &[junk]);
        assert!(matches!(out[..], [Outcome::Malformed(_)]));
        // The applied index, and the revisions recorded unchanged (none).
        let zero = 0u64.to_be_bytes().to_vec();
        assert_eq!(m.0.len(), 3);
        assert_eq!(m.get(Cf::Meta, b"revision").unwrap(), Some(zero.clone()));
        assert_eq!(m.get(Cf::Meta, b"compacted").unwrap(), Some(zero));
    }
}
