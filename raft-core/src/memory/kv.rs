//! [`MemKv`]: a key-value [`StateMachine`] in memory, and its reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};

use super::command::{key_str, KvInvalid, KvOp};
use super::lock;
use crate::snapshot::SnapshotData;
use crate::state_machine::{SnapshotBuild, StateMachine, StateMachineError};
use crate::types::{Entry, EntryPayload, Index, LogId, SnapshotMeta};

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
    /// The entry's payload is not a valid [`KvCommand`](super::KvCommand). It is skipped
    /// rather than failing the node: every replica decodes it the same way,
    /// so every replica skips it. Costs no allocation: the reason is a
    /// [`KvInvalid`], formatted only when displayed.
    Invalid(KvInvalid),
}

/// The state shared between a [`MemKv`] and its [`MemKvReader`]s.
#[derive(Debug, Default)]
struct KvState {
    /// Key to (value, revision: the index of the entry that wrote it). A
    /// hash map (foldhash: fast, and no denial-of-service to fear from a
    /// test double's keys): a write looks its key up at every entry, while
    /// only snapshots and [`MemKvReader::dump`] need the keys in order.
    data: KvData,
    /// The index of the last applied entry.
    applied: Index,
    /// The latest snapshot built or installed.
    snapshot: Option<(SnapshotMeta, Bytes)>,
}

/// Key (UTF-8, checked when written; a copy, as is the value)
/// to (value, revision). A value is a vector of its own, not `Bytes`: an
/// overwrite copies the new value into the old one's buffer in place
/// (taking a `Bytes` buffer back for reuse, and sharing it again, cost
/// more than the rest of the write); reads copy it out.
type KvData = HashMap<Bytes, (Vec<u8>, Index), foldhash::fast::RandomState>;

/// Magic bytes that start a [`MemKv`] snapshot.
const SNAPSHOT_MAGIC: &[u8; 4] = b"MKV1";

impl KvState {
    /// Encodes the data: magic, applied index, key count, then each key,
    /// value (u32-length-prefixed) and revision (u64), little-endian, in
    /// key order (so equal states encode to equal bytes).
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_slice(SNAPSHOT_MAGIC);
        b.put_u64_le(self.applied);
        b.put_u64_le(self.data.len() as u64);
        let mut keys: Vec<_> = self.data.iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, (v, rev)) in keys {
            b.put_u32_le(k.len() as u32);
            b.put_slice(k);
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
        let mut data = KvData::default();
        for _ in 0..count {
            need(&b, 4)?;
            let kl = b.get_u32_le() as usize;
            need(&b, kl)?;
            let key = b.split_to(kl);
            key_str(&key).map_err(|_| "snapshot key is not UTF-8".to_string())?;
            need(&b, 4)?;
            let vl = b.get_u32_le() as usize;
            need(&b, vl + 8)?;
            let value = b.split_to(vl).to_vec();
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
/// Commands are [`KvCommand`](super::KvCommand)s encoded in [`EntryPayload::Normal`] entries.
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
        lock(&self.state)
            .data
            .get(key.as_bytes())
            .map(|(v, r)| (Bytes::copy_from_slice(v), *r))
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
        let mut all: Vec<_> = lock(&self.state)
            .data
            .iter()
            // Keys were checked when written: never lossy.
            .map(|(k, (v, r))| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    Bytes::copy_from_slice(v),
                    *r,
                )
            })
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Writes a copy of `value` under `key` as the entry at `index`, reusing
/// the key already in the map when there is one; a new key must be UTF-8
/// and is copied. Copies, not slices of the entry's payload: a payload may
/// be a slice of a much larger buffer (a transport's frame of many
/// entries), which the map would otherwise keep whole for as long as the
/// key or value lives.
fn write(data: &mut KvData, key: &[u8], value: &[u8], index: Index) -> Result<(), KvInvalid> {
    match data.get_mut(key) {
        Some(slot) => {
            overwrite(&mut slot.0, value);
            slot.1 = index;
        }
        None => {
            key_str(key)?;
            data.insert(Bytes::copy_from_slice(key), (value.to_vec(), index));
        }
    }
    Ok(())
}

/// Replaces `old` by a copy of `value`: in `old`'s buffer when it has room
/// without much to spare (a key keeps no large buffer after a small
/// write), else in a new buffer.
fn overwrite(old: &mut Vec<u8>, value: &[u8]) {
    if (value.len()..=2 * value.len() + 64).contains(&old.capacity()) {
        old.clear();
        old.extend_from_slice(value);
    } else {
        *old = value.to_vec();
    }
}

/// Applies one decoded command to `data` as the entry at `index`.
fn apply_command(data: &mut KvData, index: Index, op: KvOp<'_>) -> KvResponse {
    let result = match op {
        KvOp::Put { key, value } => {
            write(data, key, value, index).map(|()| KvResponse::Written { revision: index })
        }
        KvOp::Delete { key } => match data.remove(key) {
            Some(_) => Ok(KvResponse::Deleted { existed: true }),
            None => key_str(key).map(|_| KvResponse::Deleted { existed: false }),
        },
        KvOp::CompareAndSet {
            key,
            expected,
            value,
        } => {
            let current = data.get(key).map(|(v, _)| &v[..]);
            if current.is_none() {
                if let Err(e) = key_str(key) {
                    return KvResponse::Invalid(e);
                }
            }
            if current == expected {
                write(data, key, value, index).map(|()| KvResponse::Written { revision: index })
            } else {
                Ok(KvResponse::CasFailed {
                    current: current.map(Bytes::copy_from_slice),
                })
            }
        }
    };
    result.unwrap_or_else(KvResponse::Invalid)
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
                StateMachineError::Invalid("apply: index overflow past u64::MAX".to_owned())
            })?;
            if entry.index != expected {
                return Err(StateMachineError::Invalid(format!(
                    "apply: got entry {}, expected {expected} (applied index {})",
                    entry.index, state.applied
                )));
            }
        }
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank | EntryPayload::Membership(_) => KvResponse::Done,
                EntryPayload::Normal(bytes) => match KvOp::decode(bytes) {
                    Ok(op) => apply_command(&mut state.data, entry.index, op),
                    Err(reason) => KvResponse::Invalid(reason),
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
            return Err(StateMachineError::Invalid(format!(
                "snapshot asked at {} but the applied index is {}",
                meta.last_log_id, state.applied
            )));
        }
        let data = state.encode();
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(Arc::new(data))
    }

    /// Copies the data (the view: keys shared, values copied) and encodes
    /// the copy off the apply task.
    async fn begin_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotBuild, StateMachineError> {
        let view = {
            let state = lock(&self.state);
            if state.applied != meta.last_log_id.index {
                return Err(StateMachineError::Invalid(format!(
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
            .map_err(|e| StateMachineError::Invalid(format!("reading the snapshot: {e}")))?;
        let (applied, map) = KvState::decode(bytes.clone()).map_err(StateMachineError::Invalid)?;
        if applied != meta.last_log_id.index {
            return Err(StateMachineError::Invalid(format!(
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
