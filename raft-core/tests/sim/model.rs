//! Client commands, their encoding in log entries, and the replicated
//! key-value state machine each simulated node applies them to.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index};
use raft_linearizability::{Op, Outcome};

/// Stands for "absent" in the expected value of an encoded compare-and-set.
/// Client values never contain it (nor the separator `|`).
const ABSENT: &[u8] = b"~";

/// Encodes a mutating operation as a log command:
/// `P|key|value`, `D|key` or `C|key|expected|new` (`~` for an absent expected value).
pub fn encode(key: &[u8], op: &Op) -> Bytes {
    let mut out = Vec::with_capacity(32);
    let mut field = |tag: &[u8]| {
        if !out.is_empty() {
            out.push(b'|');
        }
        out.extend_from_slice(tag);
    };
    match op {
        Op::Write(value) => {
            field(b"P");
            field(key);
            field(value);
        }
        Op::Delete => {
            field(b"D");
            field(key);
        }
        Op::Cas { expected, new } => {
            field(b"C");
            field(key);
            field(expected.as_deref().unwrap_or(ABSENT));
            field(new);
        }
        Op::Read => unreachable!("reads are not proposed"),
    }
    Bytes::from(out)
}

/// Decodes a command written by [`encode`].
pub fn decode(data: &[u8]) -> Result<(Vec<u8>, Op), String> {
    let parts: Vec<&[u8]> = data.split(|b| *b == b'|').collect();
    let bad = || format!("undecodable command {:?}", String::from_utf8_lossy(data));
    match parts.as_slice() {
        [b"P", key, value] => Ok((key.to_vec(), Op::Write(value.to_vec()))),
        [b"D", key] => Ok((key.to_vec(), Op::Delete)),
        [b"C", key, expected, new] => {
            let expected = (*expected != ABSENT).then(|| expected.to_vec());
            Ok((
                key.to_vec(),
                Op::Cas {
                    expected,
                    new: new.to_vec(),
                },
            ))
        }
        _ => Err(bad()),
    }
}

/// The replicated application: a map from keys to values, with the index of
/// the last entry applied. The simulation keeps it *durable*: it survives a
/// crash together with its applied index, and the node restarts with
/// `InitialState::applied` set to that index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    /// The data.
    pub data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The index of the last entry applied.
    pub applied: Index,
}

impl Kv {
    /// Applies one committed entry, which must directly follow the applied
    /// index (the `StateMachine` contract: "consecutive, starting right
    /// after the applied index", exactly once across restarts). Returns the
    /// outcome for a client command, `None` for blank and membership entries.
    pub fn apply(&mut self, entry: &Entry) -> Result<Option<Outcome>, String> {
        if entry.index != self.applied + 1 {
            return Err(format!(
                "state machine asked to apply entry {} but its applied index is {} \
                 (entries must be applied exactly once, in order)",
                entry.log_id(),
                self.applied
            ));
        }
        self.applied = entry.index;
        let EntryPayload::Normal(data) = &entry.payload else {
            return Ok(None);
        };
        let (key, op) = decode(data)?;
        let outcome = match op {
            Op::Write(value) => {
                self.data.insert(key, value);
                Outcome::WriteOk
            }
            Op::Delete => {
                self.data.remove(&key);
                Outcome::DeleteOk
            }
            Op::Cas { expected, new } => {
                if self.data.get(&key) == expected.as_ref() {
                    self.data.insert(key, new);
                    Outcome::CasOk
                } else {
                    Outcome::CasFailed
                }
            }
            Op::Read => return Err("a read was encoded in the log".into()),
        };
        Ok(Some(outcome))
    }

    /// The current value of `key`.
    pub fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.data.get(key).cloned()
    }

    /// A digest of the data (not the applied index), to compare a replica's
    /// state with the reference state at the same index cheaply.
    pub fn digest(&self) -> u64 {
        // `DefaultHasher::new` uses fixed keys: equal data, equal digests.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.data.hash(&mut h);
        h.finish()
    }
}

/// The state every replica must reach at each index: the committed entries
/// applied in order, advanced by whichever node applies an index first. A
/// snapshot built or installed at index `i`, and any state machine that
/// applied through `i`, must hold the data it recorded for `i`.
#[derive(Debug, Default)]
pub struct Reference {
    kv: Kv,
    /// `digests[i]`: the digest of the data after applying index `i`.
    digests: Vec<u64>,
}

impl Reference {
    /// A reference at index 0 (no data).
    pub fn new() -> Self {
        Self {
            kv: Kv::default(),
            digests: vec![Kv::default().digest()],
        }
    }

    /// Some replica applied `entry`: extends the reference when it is the
    /// next index. An index beyond the next one means a replica applied an
    /// entry whose predecessor no replica ever applied.
    pub fn advance(&mut self, entry: &Entry) -> Result<(), String> {
        if entry.index <= self.kv.applied {
            return Ok(());
        }
        self.kv.apply(entry).map_err(|e| {
            format!("STATE MACHINE SAFETY: the reference state machine cannot follow: {e}")
        })?;
        self.digests.push(self.kv.digest());
        Ok(())
    }

    /// Checks that `kv` holds the reference data at its applied index.
    pub fn check(&self, kv: &Kv, what: &str) -> Result<(), String> {
        match self.digests.get(kv.applied as usize) {
            Some(d) if *d == kv.digest() => Ok(()),
            Some(_) => Err(format!(
                "STATE MACHINE SAFETY: {what} at index {} differs from the data every replica \
                 must hold at that index: {:?}",
                kv.applied, kv.data
            )),
            None => Err(format!(
                "STATE MACHINE SAFETY: {what} is at index {}, beyond anything any replica \
                 applied ({})",
                kv.applied, self.kv.applied
            )),
        }
    }
}

#[test]
fn commands_round_trip() {
    let ops = [
        Op::Write(b"c1.2".to_vec()),
        Op::Delete,
        Op::Cas {
            expected: None,
            new: b"c0.1".to_vec(),
        },
        Op::Cas {
            expected: Some(b"c0.1".to_vec()),
            new: b"c0.2".to_vec(),
        },
    ];
    for op in ops {
        let data = encode(b"k1", &op);
        assert_eq!(decode(&data).unwrap(), (b"k1".to_vec(), op));
    }
}
