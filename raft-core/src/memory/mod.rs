//! In-memory implementations of the traits, for tests and examples.
//!
//! - [`MemLog`] is a [`LogStorage`] that keeps the log and the hard state in
//!   memory. Every write is "durable" as soon as it returns, which makes it
//!   the reference implementation the [`conformance`](crate::conformance)
//!   suite is run against; nothing survives the process.
//! - [`MemNetwork`] connects in-process nodes, with switches to cut links.
//! - [`MemKv`] is a tiny key-value [`StateMachine`] whose commands
//!   ([`KvCommand`]) travel in [`EntryPayload::Normal`] entries. A
//!   [`MemKvReader`] handle reads its data while the driver owns the machine.

mod network;
pub use network::{MemNetwork, MemTransport};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};

use crate::snapshot::SnapshotData;
use crate::state_machine::{SnapshotBuild, StateMachine, StateMachineError};
use crate::storage::{LogStorage, LogWrite, StorageError, StoredState};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, SnapshotMeta, Term};

/// Locks `mutex`, recovering the guard if a previous holder panicked.
///
/// Recovering is sound here because every method of this module validates its
/// input before it mutates anything and performs no fallible step while
/// mutating, so a poisoned lock still guards a consistent state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state behind [`MemLog`]'s lock.
#[derive(Debug, Default)]
struct LogState {
    /// The last saved hard state.
    hard_state: HardState,
    /// The entries still in the log. When non-empty, the first one has index
    /// `purged.index + 1` and the rest follow consecutively.
    entries: VecDeque<Entry>,
    /// Id of the last purged entry; index 0 when nothing was purged. Kept
    /// after the entries themselves are gone so that the log still knows
    /// where it resumes (the next append must start at `purged.index + 1`).
    purged: LogId,
    /// The snapshot reported by `stored_state`, set by [`MemLog::set_snapshot`].
    snapshot: Option<SnapshotMeta>,
}

impl LogState {
    /// The first index that may still be in the log.
    fn first_index(&self) -> Index {
        self.purged.index.saturating_add(1)
    }

    /// The index of the last entry, or of the last purged one when the log
    /// is empty (0 for a new log).
    fn last_index(&self) -> Index {
        self.entries.back().map_or(self.purged.index, |e| e.index)
    }

    /// The position of `index` in `entries`. `index` must be at least
    /// [`first_index`](Self::first_index); the result may be past the end.
    fn position(&self, index: Index) -> usize {
        let offset = index.saturating_sub(self.first_index());
        // An offset that does not fit in usize is past the end of any VecDeque.
        usize::try_from(offset).unwrap_or(usize::MAX)
    }

    /// The term of the entry at `index`, if the log still holds it.
    fn term_at(&self, index: Index) -> Option<Term> {
        if index < self.first_index() {
            return None;
        }
        self.entries.get(self.position(index)).map(|e| e.term)
    }

    /// Checks a truncation from `from` and returns the last index that
    /// remains after it.
    fn check_truncate(&self, from: Index, commit: Index) -> Result<Index, StorageError> {
        if from <= commit && from <= self.last_index() {
            return Err(StorageError::Invalid(format!(
                "truncate from {from} would remove committed entries (commit index {commit})"
            )));
        }
        if from < self.first_index() {
            return Err(StorageError::Invalid(format!(
                "truncate from {from}: at or below the purged prefix (first index {})",
                self.first_index()
            )));
        }
        Ok(self.last_index().min(from - 1))
    }

    /// Checks that `entries` are consecutive and may follow a log whose last
    /// index is `last_index`.
    fn check_append(
        &self,
        entries: &[Entry],
        last_index: Index,
        commit: Index,
    ) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= commit && first.index <= last_index {
            return Err(StorageError::Invalid(format!(
                "append at {} would replace committed entries (commit index {commit})",
                first.index
            )));
        }
        if first.index > last_index.saturating_add(1) {
            return Err(StorageError::Invalid(format!(
                "append at {}: gap after last index {last_index}",
                first.index
            )));
        }
        if first.index < self.first_index() {
            // Replacing entries a snapshot covers would fork the log from
            // the state the snapshot captured.
            return Err(StorageError::Invalid(format!(
                "append at {}: at or below the purged prefix (first index {})",
                first.index,
                self.first_index()
            )));
        }
        for pair in entries.windows(2) {
            if pair[0].index.checked_add(1) != Some(pair[1].index) {
                return Err(StorageError::Invalid(format!(
                    "append: entry {} follows entry {}, entries must be consecutive",
                    pair[1].index, pair[0].index
                )));
            }
        }
        Ok(())
    }

    /// Deletes every entry at or above `from`. Unchecked: call
    /// [`check_truncate`](Self::check_truncate) first.
    fn truncate(&mut self, from: Index) {
        let keep = self.position(from);
        self.entries.truncate(keep);
    }

    /// Appends `entries`, replacing every entry at or above the first one's
    /// index. Unchecked: call [`check_append`](Self::check_append) first.
    fn append(&mut self, entries: Vec<Entry>) {
        if let Some(first) = entries.first() {
            self.truncate(first.index);
            self.entries.extend(entries);
        }
    }
}

/// An in-memory [`LogStorage`].
///
/// Holds the hard state, the entries, the id of the last purged entry and an
/// optional snapshot description behind one [`Mutex`], so every method takes
/// `&self` and each call is atomic with respect to the others.
///
/// Beyond the [`LogStorage`] contract, appending at or below the purged
/// prefix is rejected with [`StorageError::Invalid`], as is any operation on
/// index 0 (which holds no entry).
#[derive(Debug, Default)]
pub struct MemLog {
    state: Mutex<LogState>,
}

impl MemLog {
    /// A new, empty log with a zero hard state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the snapshot that [`LogStorage::stored_state`] reports.
    ///
    /// This only sets the description; call [`LogStorage::purge`] to drop
    /// the entries the snapshot covers.
    pub fn set_snapshot(&self, meta: SnapshotMeta) {
        lock(&self.state).snapshot = Some(meta);
    }

    /// Id of the last purged entry, or `None` when nothing was purged.
    ///
    /// When a purge went past the last entry, the index is the purge bound
    /// and the term is the snapshot's (if [`set_snapshot`](Self::set_snapshot)
    /// recorded one for that index) or else the last removed entry's.
    pub fn last_purged_log_id(&self) -> Option<LogId> {
        let state = lock(&self.state);
        (state.purged.index > 0).then_some(state.purged)
    }

    /// Every entry currently in the log, in order (for tests).
    pub fn snapshot_entries(&self) -> Vec<Entry> {
        lock(&self.state).entries.iter().cloned().collect()
    }
}

#[async_trait]
impl LogStorage for MemLog {
    async fn stored_state(&self) -> Result<StoredState, StorageError> {
        let state = lock(&self.state);
        // Scanning backwards is fine for an in-memory log used in tests; a
        // persistent store would index membership entries instead.
        let membership = state.entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some((e.index, (**m).clone())),
            _ => None,
        });
        Ok(StoredState {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            purged: state.purged,
            first_log_id: state.entries.front().map(Entry::log_id),
            last_log_id: state.entries.back().map(Entry::log_id),
            membership,
        })
    }

    async fn append(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let last_index = state.last_index();
        let commit = state.hard_state.commit;
        state.check_append(&entries, last_index, commit)?;
        state.append(entries);
        Ok(())
    }

    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let commit = state.hard_state.commit;
        state.check_truncate(from, commit)?;
        state.truncate(from);
        Ok(())
    }

    async fn purge(&self, up_to: Index) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        if up_to <= state.purged.index {
            return Ok(());
        }
        // The term of the new purge point: the entry's own when the log holds
        // it, else the snapshot's when it describes that index, else the last
        // entry removed (the best the log knows when purging past its end).
        let snapshot_term = state
            .snapshot
            .as_ref()
            .filter(|s| s.last_log_id.index == up_to)
            .map(|s| s.last_log_id.term);
        let last_removed_term = state.entries.back().map_or(state.purged.term, |e| e.term);
        let term = state
            .term_at(up_to)
            .or(snapshot_term)
            .unwrap_or(last_removed_term);
        let removed = state
            .position(up_to.saturating_add(1))
            .min(state.entries.len());
        state.entries.drain(..removed);
        state.purged = LogId::new(term, up_to);
        Ok(())
    }

    async fn entries(
        &self,
        start: Index,
        end: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let state = lock(&self.state);
        if start == 0 {
            return Err(StorageError::Invalid(
                "entries from index 0, which holds no entry".into(),
            ));
        }
        if start > end {
            return Err(StorageError::Invalid(format!(
                "entries [{start}, {end}): start after end"
            )));
        }
        let last_index = state.last_index();
        if end > last_index.saturating_add(1) {
            return Err(StorageError::Invalid(format!(
                "entries [{start}, {end}): end past last index {last_index} + 1"
            )));
        }
        let first_index = state.first_index();
        if start < first_index {
            return Err(StorageError::Compacted { first_index });
        }
        let range = state.position(start)..state.position(end);
        let mut out = Vec::new();
        let mut total: u64 = 0;
        for entry in state.entries.range(range) {
            total = total.saturating_add(entry.size_bytes());
            // The first entry is returned whatever its size so that a caller
            // with a small budget still makes progress.
            if total > max_bytes && !out.is_empty() {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        lock(&self.state).hard_state = hard_state;
        Ok(())
    }

    async fn save_snapshot(&self, meta: SnapshotMeta, purge_to: Index) -> Result<(), StorageError> {
        if purge_to > meta.last_log_id.index {
            return Err(StorageError::Invalid(format!(
                "purge to {purge_to} past the snapshot's last index {}",
                meta.last_log_id.index
            )));
        }
        lock(&self.state).snapshot = Some(meta);
        self.purge(purge_to).await
    }

    async fn install_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        state.entries.clear();
        state.purged = meta.last_log_id;
        if state.hard_state.commit < meta.last_log_id.index {
            state.hard_state.commit = meta.last_log_id.index;
        }
        state.snapshot = Some(meta);
        Ok(())
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        // Validate the truncation and the append against the log as it will
        // be after the truncation, so that an invalid write changes nothing.
        // Committed entries are protected by the commit index saved before
        // this write: the write's own hard state may commit the very entries
        // it appends after a truncation.
        let commit = state.hard_state.commit;
        let last_index = match write.truncate_from {
            Some(from) => state.check_truncate(from, commit)?,
            None => state.last_index(),
        };
        state.check_append(&write.entries, last_index, commit)?;
        if let Some(hard_state) = write.hard_state {
            state.hard_state = hard_state;
        }
        if let Some(from) = write.truncate_from {
            state.truncate(from);
        }
        state.append(write.entries);
        Ok(())
    }
}

/// Tag byte of an encoded [`KvCommand::Put`].
const TAG_PUT: u8 = 1;
/// Tag byte of an encoded [`KvCommand::Delete`].
const TAG_DELETE: u8 = 2;
/// Tag byte of an encoded [`KvCommand::CompareAndSet`].
const TAG_CAS: u8 = 3;

/// A command of the [`MemKv`] state machine, carried in an
/// [`EntryPayload::Normal`] entry.
///
/// Encoding: a tag byte, then each field in order. Strings and byte strings
/// are a `u32` little-endian length followed by the bytes; the optional
/// `expected` of a compare-and-set is a byte 0 (absent) or 1 (present,
/// followed by the byte string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// The key to write.
        key: String,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key to remove.
        key: String,
    },
    /// Sets `key` to `value` if its current value is `expected` (`None`:
    /// the key must be absent).
    CompareAndSet {
        /// The key to write.
        key: String,
        /// The value the key must have for the write to happen.
        expected: Option<Bytes>,
        /// The new value.
        value: Bytes,
    },
}

impl KvCommand {
    /// Encodes the command for an [`EntryPayload::Normal`] entry.
    ///
    /// # Panics
    ///
    /// If a key or value is longer than `u32::MAX` bytes, which the format
    /// cannot express.
    pub fn encode(&self) -> Bytes {
        /// Writes a length-prefixed byte string.
        fn put_field(buf: &mut BytesMut, field: &[u8]) {
            let len = u32::try_from(field.len())
                .expect("KvCommand field longer than u32::MAX bytes cannot be encoded");
            buf.put_u32_le(len);
            buf.put_slice(field);
        }

        let mut buf = BytesMut::new();
        match self {
            KvCommand::Put { key, value } => {
                buf.reserve(1 + 8 + key.len() + value.len());
                buf.put_u8(TAG_PUT);
                put_field(&mut buf, key.as_bytes());
                put_field(&mut buf, value);
            }
            KvCommand::Delete { key } => {
                buf.reserve(1 + 4 + key.len());
                buf.put_u8(TAG_DELETE);
                put_field(&mut buf, key.as_bytes());
            }
            KvCommand::CompareAndSet {
                key,
                expected,
                value,
            } => {
                let expected_len = expected.as_ref().map_or(0, |e| 4 + e.len());
                buf.reserve(1 + 8 + 1 + key.len() + expected_len + value.len());
                buf.put_u8(TAG_CAS);
                put_field(&mut buf, key.as_bytes());
                match expected {
                    Some(expected) => {
                        buf.put_u8(1);
                        put_field(&mut buf, expected);
                    }
                    None => buf.put_u8(0),
                }
                put_field(&mut buf, value);
            }
        }
        buf.freeze()
    }

    /// Decodes a command encoded by [`encode`](Self::encode).
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] naming the problem when `bytes` is truncated,
    /// has an unknown tag, a key that is not UTF-8 or trailing bytes. Never
    /// panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<KvCommand, StateMachineError> {
        let mut input = Decoder { rest: bytes };
        let command = match input.u8("tag")? {
            TAG_PUT => KvCommand::Put {
                key: input.string("key")?,
                value: input.bytes("value")?,
            },
            TAG_DELETE => KvCommand::Delete {
                key: input.string("key")?,
            },
            TAG_CAS => {
                let key = input.string("key")?;
                let expected = match input.u8("expected flag")? {
                    0 => None,
                    1 => Some(input.bytes("expected value")?),
                    other => {
                        return Err(StateMachineError(format!(
                            "kv command: expected flag {other}, want 0 or 1"
                        )))
                    }
                };
                KvCommand::CompareAndSet {
                    key,
                    expected,
                    value: input.bytes("value")?,
                }
            }
            other => {
                return Err(StateMachineError(format!(
                    "kv command: unknown tag {other}"
                )))
            }
        };
        if !input.rest.is_empty() {
            return Err(StateMachineError(format!(
                "kv command: {} trailing bytes",
                input.rest.len()
            )));
        }
        Ok(command)
    }
}

/// A bounds-checked reader over an encoded [`KvCommand`].
struct Decoder<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// The error for input that ends inside `what`.
    fn truncated(what: &str) -> StateMachineError {
        StateMachineError(format!("kv command: truncated {what}"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, StateMachineError> {
        let (&byte, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| Self::truncated(what))?;
        self.rest = rest;
        Ok(byte)
    }

    /// Reads a length-prefixed byte string, borrowed from the input.
    fn field(&mut self, what: &str) -> Result<&'a [u8], StateMachineError> {
        let (len, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Self::truncated(what))?;
        let len = usize::try_from(u32::from_le_bytes(*len))
            .map_err(|_| StateMachineError(format!("kv command: {what} too long")))?;
        let (field, rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| Self::truncated(what))?;
        self.rest = rest;
        Ok(field)
    }

    fn bytes(&mut self, what: &str) -> Result<Bytes, StateMachineError> {
        self.field(what).map(Bytes::copy_from_slice)
    }

    fn string(&mut self, what: &str) -> Result<String, StateMachineError> {
        let field = self.field(what)?;
        std::str::from_utf8(field)
            .map(str::to_owned)
            .map_err(|e| StateMachineError(format!("kv command: {what} is not UTF-8: {e}")))
    }
}

/// What applying one entry to [`MemKv`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvResponse {
    /// A blank or membership entry: nothing to do.
    Done,
    /// A put, or a compare-and-set that matched, wrote the key.
    Written {
        /// The index of the entry that wrote it, the key's new revision.
        revision: Index,
    },
    /// A delete ran.
    Deleted {
        /// Whether the key was present.
        existed: bool,
    },
    /// A compare-and-set did not match; nothing was written.
    CasFailed {
        /// The key's value at the time (`None`: absent).
        current: Option<Bytes>,
    },
    /// The entry's payload is not a valid [`KvCommand`]. It is skipped
    /// rather than failing the node: every replica decodes it the same way,
    /// so every replica skips it.
    Invalid(String),
}

/// The state shared between a [`MemKv`] and its [`MemKvReader`]s.
#[derive(Debug, Default)]
struct KvState {
    /// Key to (value, revision: the index of the entry that wrote it).
    data: BTreeMap<String, (Bytes, Index)>,
    /// The index of the last applied entry.
    applied: Index,
    /// The latest snapshot built or installed.
    snapshot: Option<(SnapshotMeta, Bytes)>,
}

/// Key to (value, revision).
type KvData = BTreeMap<String, (Bytes, Index)>;

/// Magic bytes that start a [`MemKv`] snapshot.
const SNAPSHOT_MAGIC: &[u8; 4] = b"MKV1";

impl KvState {
    /// Encodes the data: magic, applied index, key count, then each key,
    /// value (u32-length-prefixed) and revision (u64), little-endian.
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_slice(SNAPSHOT_MAGIC);
        b.put_u64_le(self.applied);
        b.put_u64_le(self.data.len() as u64);
        for (k, (v, rev)) in &self.data {
            b.put_u32_le(k.len() as u32);
            b.put_slice(k.as_bytes());
            b.put_u32_le(v.len() as u32);
            b.put_slice(v);
            b.put_u64_le(*rev);
        }
        b.freeze()
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    fn decode(mut b: Bytes) -> Result<(Index, KvData), String> {
        use bytes::Buf;
        fn need(b: &Bytes, n: usize) -> Result<(), String> {
            if b.remaining() < n {
                return Err("snapshot truncated".into());
            }
            Ok(())
        }
        need(&b, 20)?;
        if &b[..4] != SNAPSHOT_MAGIC {
            return Err("not a MemKv snapshot (bad magic)".into());
        }
        b.advance(4);
        let applied = b.get_u64_le();
        let count = b.get_u64_le();
        let mut data = BTreeMap::new();
        for _ in 0..count {
            need(&b, 4)?;
            let kl = b.get_u32_le() as usize;
            need(&b, kl)?;
            let key = String::from_utf8(b.split_to(kl).to_vec())
                .map_err(|_| "snapshot key is not UTF-8".to_string())?;
            need(&b, 4)?;
            let vl = b.get_u32_le() as usize;
            need(&b, vl + 8)?;
            let value = b.split_to(vl);
            let rev = b.get_u64_le();
            data.insert(key, (value, rev));
        }
        if b.has_remaining() {
            return Err("trailing bytes after the snapshot".into());
        }
        Ok((applied, data))
    }
}

/// A key-value [`StateMachine`] held in memory, for examples and driver tests.
///
/// Commands are [`KvCommand`]s encoded in [`EntryPayload::Normal`] entries.
/// The data and the applied index sit behind one shared lock, so a
/// [`MemKvReader`] sees them consistently while the driver owns the machine.
/// Nothing survives the process: a new `MemKv` starts at applied index 0.
#[derive(Debug, Default)]
pub struct MemKv {
    state: Arc<Mutex<KvState>>,
}

impl MemKv {
    /// A new, empty state machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that reads this machine's data.
    pub fn reader(&self) -> MemKvReader {
        MemKvReader {
            state: Arc::clone(&self.state),
        }
    }

    /// The machine behind `reader`, as if reopened after a restart: it keeps
    /// its data, applied index and snapshot (a stand-in for a durable state
    /// machine in tests that restart nodes).
    pub fn reopen(reader: &MemKvReader) -> Self {
        Self {
            state: Arc::clone(&reader.state),
        }
    }
}

/// A cloneable read handle on a [`MemKv`].
#[derive(Debug, Clone)]
pub struct MemKvReader {
    state: Arc<Mutex<KvState>>,
}

impl MemKvReader {
    /// The value of `key` and its revision (the index that wrote it).
    pub fn get(&self, key: &str) -> Option<(Bytes, Index)> {
        lock(&self.state).data.get(key).cloned()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        lock(&self.state).data.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        lock(&self.state).data.is_empty()
    }

    /// The index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> Index {
        lock(&self.state).applied
    }

    /// The last entry the latest snapshot covers, if one was built or installed.
    pub fn snapshot(&self) -> Option<LogId> {
        lock(&self.state)
            .snapshot
            .as_ref()
            .map(|(m, _)| m.last_log_id)
    }

    /// Every key with its value and revision, in key order.
    pub fn dump(&self) -> Vec<(String, Bytes, Index)> {
        lock(&self.state)
            .data
            .iter()
            .map(|(k, (v, r))| (k.clone(), v.clone(), *r))
            .collect()
    }
}

/// Applies one command to `data` as the entry at `index`.
fn apply_command(
    data: &mut BTreeMap<String, (Bytes, Index)>,
    index: Index,
    command: KvCommand,
) -> KvResponse {
    match command {
        KvCommand::Put { key, value } => {
            data.insert(key, (value, index));
            KvResponse::Written { revision: index }
        }
        KvCommand::Delete { key } => KvResponse::Deleted {
            existed: data.remove(&key).is_some(),
        },
        KvCommand::CompareAndSet {
            key,
            expected,
            value,
        } => {
            let current = data.get(&key).map(|(v, _)| v);
            if current == expected.as_ref() {
                data.insert(key, (value, index));
                KvResponse::Written { revision: index }
            } else {
                KvResponse::CasFailed {
                    current: current.cloned(),
                }
            }
        }
    }
}

#[async_trait]
impl StateMachine for MemKv {
    type Response = KvResponse;

    async fn applied_index(&mut self) -> Result<Index, StateMachineError> {
        Ok(lock(&self.state).applied)
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<KvResponse>, StateMachineError> {
        let mut state = lock(&self.state);
        // Check the whole batch first: entries out of order are a driver bug,
        // and applying none of them keeps the machine consistent.
        let mut expected = state.applied;
        for entry in entries {
            expected = expected.checked_add(1).ok_or_else(|| {
                StateMachineError("apply: index overflow past u64::MAX".to_owned())
            })?;
            if entry.index != expected {
                return Err(StateMachineError(format!(
                    "apply: got entry {}, expected {expected} (applied index {})",
                    entry.index, state.applied
                )));
            }
        }
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank | EntryPayload::Membership(_) => KvResponse::Done,
                EntryPayload::Normal(bytes) => match KvCommand::decode(bytes) {
                    Ok(command) => apply_command(&mut state.data, entry.index, command),
                    Err(e) => KvResponse::Invalid(e.0),
                },
            };
            responses.push(response);
            state.applied = entry.index;
        }
        Ok(responses)
    }

    async fn build_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotData, StateMachineError> {
        let mut state = lock(&self.state);
        if state.applied != meta.last_log_id.index {
            return Err(StateMachineError(format!(
                "snapshot asked at {} but the applied index is {}",
                meta.last_log_id, state.applied
            )));
        }
        let data = state.encode();
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(Arc::new(data))
    }

    /// Copies the data (the view) and encodes the copy off the apply task.
    async fn begin_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotBuild, StateMachineError> {
        let view = {
            let state = lock(&self.state);
            if state.applied != meta.last_log_id.index {
                return Err(StateMachineError(format!(
                    "snapshot asked at {} but the applied index is {}",
                    meta.last_log_id, state.applied
                )));
            }
            KvState {
                data: state.data.clone(),
                applied: state.applied,
                snapshot: None,
            }
        };
        let shared = Arc::clone(&self.state);
        let meta = meta.clone();
        Ok(Box::pin(async move {
            // Applies go on first; the encoding sees only the copy.
            tokio::task::yield_now().await;
            let data = view.encode();
            lock(&shared).snapshot = Some((meta, data.clone()));
            Ok(Arc::new(data) as SnapshotData)
        }))
    }

    async fn latest_snapshot(
        &mut self,
    ) -> Result<Option<(SnapshotMeta, SnapshotData)>, StateMachineError> {
        Ok(lock(&self.state)
            .snapshot
            .clone()
            .map(|(m, d)| (m, Arc::new(d) as SnapshotData)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), StateMachineError> {
        let bytes = crate::snapshot::read_all(data.as_ref(), 1 << 30)
            .await
            .map_err(|e| StateMachineError(format!("reading the snapshot: {e}")))?;
        let (applied, map) = KvState::decode(bytes.clone()).map_err(StateMachineError)?;
        if applied != meta.last_log_id.index {
            return Err(StateMachineError(format!(
                "snapshot data is at index {applied} but its metadata says {}",
                meta.last_log_id
            )));
        }
        let mut state = lock(&self.state);
        state.data = map;
        state.applied = applied;
        state.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::membership::Membership;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn membership(voters: &[u64]) -> Membership {
        Membership::new(voters.iter().copied())
    }

    fn entry(term: Term, index: Index) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Normal(Bytes::from(format!("{term}/{index}"))),
        }
    }

    fn run(entries: impl IntoIterator<Item = (Term, Index)>) -> Vec<Entry> {
        entries.into_iter().map(|(t, i)| entry(t, i)).collect()
    }

    fn normal(index: Index, command: &KvCommand) -> Entry {
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Normal(command.encode()),
        }
    }

    fn put(key: &str, value: &'static [u8]) -> KvCommand {
        KvCommand::Put {
            key: key.to_owned(),
            value: Bytes::from_static(value),
        }
    }

    #[tokio::test]
    async fn append_below_purged_prefix_is_invalid() {
        let log = MemLog::new();
        log.append(run((1..=5).map(|i| (1, i)))).await.unwrap();
        log.purge(3).await.unwrap();
        let err = log.append(run([(2, 3), (2, 4)])).await.unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err}");
        assert_eq!(log.snapshot_entries(), run([(1, 4), (1, 5)]));
        assert_eq!(log.last_purged_log_id(), Some(LogId::new(1, 3)));
    }

    #[tokio::test]
    async fn purge_past_end_keeps_the_resume_point() {
        let log = MemLog::new();
        assert_eq!(log.last_purged_log_id(), None);
        log.append(run([(1, 1), (2, 2)])).await.unwrap();
        log.set_snapshot(SnapshotMeta {
            last_log_id: LogId::new(3, 7),
            membership: membership(&[1, 2, 3]),
        });
        log.purge(7).await.unwrap();
        assert_eq!(log.last_purged_log_id(), Some(LogId::new(3, 7)));
        let state = log.stored_state().await.unwrap();
        assert_eq!(state.first_log_id, None);
        assert_eq!(state.last_log_id, None);
        assert_eq!(
            state.snapshot.map(|s| s.last_log_id),
            Some(LogId::new(3, 7))
        );
        // The log resumes right after the purge point, not at index 1.
        assert!(matches!(
            log.append(run([(3, 2)])).await,
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            log.append(run([(3, 9)])).await,
            Err(StorageError::Invalid(_))
        ));
        log.append(run([(3, 8)])).await.unwrap();
        assert!(matches!(
            log.entries(7, 9, u64::MAX).await,
            Err(StorageError::Compacted { first_index: 8 })
        ));
        assert_eq!(log.entries(8, 9, u64::MAX).await.unwrap(), run([(3, 8)]));
        // Without a snapshot for the bound, the last removed entry's term is kept.
        log.purge(20).await.unwrap();
        assert_eq!(log.last_purged_log_id(), Some(LogId::new(3, 20)));
    }

    #[tokio::test]
    async fn reappending_a_matching_prefix_drops_the_rest() {
        let log = MemLog::new();
        log.append(run((1..=4).map(|i| (1, i)))).await.unwrap();
        log.append(run([(1, 2)])).await.unwrap();
        assert_eq!(log.snapshot_entries(), run([(1, 1), (1, 2)]));
    }

    #[tokio::test]
    async fn invalid_write_changes_nothing() {
        let log = MemLog::new();
        log.append(run((1..=4).map(|i| (1, i)))).await.unwrap();
        let hs = HardState {
            term: 9,
            vote: Some(1),
            commit: 2,
        };
        // Truncating from 3 leaves index 2 last, so an append at 4 is a gap.
        let write = LogWrite {
            hard_state: Some(hs),
            truncate_from: Some(3),
            entries: run([(2, 4)]),
        };
        assert!(matches!(
            log.write(write).await,
            Err(StorageError::Invalid(_))
        ));
        let state = log.stored_state().await.unwrap();
        assert_eq!(state.hard_state, HardState::default());
        assert_eq!(log.snapshot_entries(), run((1..=4).map(|i| (1, i))));
    }

    #[tokio::test]
    async fn index_zero_is_rejected() {
        let log = MemLog::new();
        assert!(matches!(
            log.append(run([(1, 0)])).await,
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            log.truncate(0).await,
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            log.entries(0, 1, 10).await,
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            log.entries(2, 1, 10).await,
            Err(StorageError::Invalid(_))
        ));
    }

    #[test]
    fn commands_round_trip() {
        let commands = [
            put("a", b"1"),
            put("", b""),
            KvCommand::Delete {
                key: "ключ".to_owned(),
            },
            KvCommand::CompareAndSet {
                key: "k".to_owned(),
                expected: None,
                value: Bytes::from_static(b"v"),
            },
            KvCommand::CompareAndSet {
                key: "k".to_owned(),
                expected: Some(Bytes::from(vec![0u8; 300])),
                value: Bytes::new(),
            },
        ];
        for command in commands {
            assert_eq!(KvCommand::decode(&command.encode()).unwrap(), command);
        }
    }

    #[test]
    fn decode_rejects_truncated_and_garbage_input_without_panicking() {
        let valid = KvCommand::CompareAndSet {
            key: "key".to_owned(),
            expected: Some(Bytes::from_static(b"old")),
            value: Bytes::from_static(b"new"),
        }
        .encode();
        for len in 0..valid.len() {
            assert!(
                KvCommand::decode(&valid[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        let mut trailing = valid.to_vec();
        trailing.push(0);
        assert!(KvCommand::decode(&trailing).is_err());
        // A length prefix far larger than the input.
        assert!(KvCommand::decode(&[TAG_PUT, 0xff, 0xff, 0xff, 0xff, b'k']).is_err());
        // A key that is not UTF-8.
        assert!(KvCommand::decode(&[TAG_DELETE, 1, 0, 0, 0, 0xff]).is_err());
        assert!(KvCommand::decode(&[TAG_CAS, 0, 0, 0, 0, 2]).is_err());
        assert!(KvCommand::decode(&[0]).is_err());

        let mut rng = ChaCha8Rng::seed_from_u64(0x6b76);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..24);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            // Bias towards well-formed headers so decoding gets past the tag.
            if let Some(tag) = bytes.first_mut() {
                *tag = rng.gen_range(0..5);
            }
            if let Ok(command) = KvCommand::decode(&bytes) {
                assert_eq!(command.encode(), bytes);
            }
        }
    }

    #[tokio::test]
    async fn kv_applies_commands_and_reader_sees_them() {
        let mut kv = MemKv::new();
        let reader = kv.reader();
        assert_eq!(kv.applied_index().await.unwrap(), 0);
        assert!(reader.is_empty());

        let entries = vec![
            Entry {
                term: 1,
                index: 1,
                payload: EntryPayload::Blank,
            },
            normal(2, &put("a", b"1")),
            normal(3, &put("b", b"2")),
            Entry {
                term: 1,
                index: 4,
                payload: EntryPayload::Membership(Box::new(membership(&[1, 2]))),
            },
            normal(
                5,
                &KvCommand::CompareAndSet {
                    key: "a".to_owned(),
                    expected: Some(Bytes::from_static(b"0")),
                    value: Bytes::from_static(b"x"),
                },
            ),
            normal(
                6,
                &KvCommand::CompareAndSet {
                    key: "a".to_owned(),
                    expected: Some(Bytes::from_static(b"1")),
                    value: Bytes::from_static(b"x"),
                },
            ),
            normal(
                7,
                &KvCommand::CompareAndSet {
                    key: "c".to_owned(),
                    expected: None,
                    value: Bytes::from_static(b"new"),
                },
            ),
            normal(
                8,
                &KvCommand::Delete {
                    key: "b".to_owned(),
                },
            ),
            normal(
                9,
                &KvCommand::Delete {
                    key: "b".to_owned(),
                },
            ),
            Entry {
                term: 1,
                index: 10,
                payload: EntryPayload::Normal(Bytes::from_static(b"?")),
            },
        ];
        let responses = kv.apply(&entries).await.unwrap();
        assert_eq!(responses.len(), entries.len());
        assert_eq!(responses[0], KvResponse::Done);
        assert_eq!(responses[1], KvResponse::Written { revision: 2 });
        assert_eq!(responses[2], KvResponse::Written { revision: 3 });
        assert_eq!(responses[3], KvResponse::Done);
        assert_eq!(
            responses[4],
            KvResponse::CasFailed {
                current: Some(Bytes::from_static(b"1"))
            }
        );
        assert_eq!(responses[5], KvResponse::Written { revision: 6 });
        assert_eq!(responses[6], KvResponse::Written { revision: 7 });
        assert_eq!(responses[7], KvResponse::Deleted { existed: true });
        assert_eq!(responses[8], KvResponse::Deleted { existed: false });
        assert!(
            matches!(&responses[9], KvResponse::Invalid(_)),
            "{:?}",
            responses[9]
        );

        assert_eq!(kv.applied_index().await.unwrap(), 10);
        assert_eq!(reader.applied_index(), 10);
        assert_eq!(reader.len(), 2);
        assert_eq!(reader.get("a"), Some((Bytes::from_static(b"x"), 6)));
        assert_eq!(reader.get("c"), Some((Bytes::from_static(b"new"), 7)));
        assert_eq!(reader.get("b"), None);
        assert_eq!(reader.clone().get("a").map(|(_, rev)| rev), Some(6));
    }

    #[tokio::test]
    async fn kv_rejects_out_of_order_entries_and_applies_none() {
        let mut kv = MemKv::new();
        kv.apply(&[normal(1, &put("a", b"1"))]).await.unwrap();
        let batch = [normal(2, &put("b", b"2")), normal(4, &put("c", b"3"))];
        assert!(kv.apply(&batch).await.is_err());
        assert!(kv.apply(&[normal(1, &put("a", b"2"))]).await.is_err());
        assert_eq!(kv.applied_index().await.unwrap(), 1);
        let reader = kv.reader();
        assert_eq!(reader.len(), 1);
        assert_eq!(reader.get("a"), Some((Bytes::from_static(b"1"), 1)));
        assert!(kv.apply(&[]).await.unwrap().is_empty());
    }
}
