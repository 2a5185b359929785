//! The on-disk encoding of log entries and metadata records.
//!
//! Every record starts with a format version byte and a CRC-32C of
//! everything after the checksum, and entry records repeat their own index,
//! so a flipped bit, a torn value or a record stored under the wrong key is
//! detected when read back. Integers are little-endian.
//!
//! ```text
//! entry:      [version u8][crc32c u32][index u64][term u64][tag u8][payload...]
//! hard state: [version u8][crc32c u32][term u64][has vote u8][vote u64][commit u64]
//! log id:     [version u8][crc32c u32][index u64][term u64]
//! snapshot:   [version u8][crc32c u32][index u64][term u64][membership]
//! membership: [n u32][voter u64 * n][joint u8][m u32][outgoing u64 * m][k u32][learner u64 * k]
//! ```

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, LogId, Membership, SnapshotMeta};

/// The record format version this build writes and reads.
pub const RECORD_VERSION: u8 = 1;

const TAG_BLANK: u8 = 0;
const TAG_NORMAL: u8 = 1;
const TAG_MEMBERSHIP: u8 = 2;
const HEADER_LEN: usize = 5;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Big-endian key of the entry at `index`: keys sort in index order.
pub fn entry_key(index: Index) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index stored in an entry key.
pub fn key_index(key: &[u8]) -> Result<Index, DecodeError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| DecodeError(format!("entry key of {} bytes, expected 8", key.len())))?;
    Ok(Index::from_be_bytes(bytes))
}

fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body[HEADER_LEN..]);
    body[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    body
}

fn header() -> Vec<u8> {
    vec![RECORD_VERSION, 0, 0, 0, 0]
}

/// Checks version and checksum; returns the body after the header.
fn open(record: &[u8]) -> Result<&[u8], DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError(format!(
            "record of {} bytes is shorter than its header",
            record.len()
        )));
    }
    if record[0] != RECORD_VERSION {
        return Err(DecodeError(format!(
            "record format version {} (this build reads {RECORD_VERSION})",
            record[0]
        )));
    }
    let stored = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    let actual = crc32c::crc32c(&record[HEADER_LEN..]);
    if stored != actual {
        return Err(DecodeError(format!(
            "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    Ok(&record[HEADER_LEN..])
}

/// A cursor over a record body that never panics on short input.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(format!(
                "record truncated: needed {n} more bytes, had {}",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn ids(&mut self) -> Result<Vec<u64>, DecodeError> {
        let n = self.u32()? as usize;
        // Bound the allocation by what the record can actually hold.
        if n > self.buf.len() / 8 {
            return Err(DecodeError(format!(
                "id list of {n} does not fit the record"
            )));
        }
        (0..n).map(|_| self.u64()).collect()
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{} unexpected trailing bytes",
                self.buf.len()
            )))
        }
    }
}

fn put_ids(out: &mut Vec<u8>, ids: impl ExactSizeIterator<Item = u64>) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

fn encode_membership(out: &mut Vec<u8>, m: &Membership) {
    put_ids(out, m.voters().iter().copied());
    match m.voters_outgoing() {
        Some(old) => {
            out.push(1);
            put_ids(out, old.iter().copied());
        }
        None => out.push(0),
    }
    put_ids(out, m.learners().iter().copied());
}

fn decode_membership(r: &mut Reader<'_>) -> Result<Membership, DecodeError> {
    let voters = r.ids()?;
    let outgoing = match r.u8()? {
        0 => None,
        1 => Some(r.ids()?),
        x => return Err(DecodeError(format!("invalid joint flag {x}"))),
    };
    let learners = r.ids()?;
    Ok(match outgoing {
        Some(old) => Membership::joint(old, voters, learners),
        None => Membership::with_learners(voters, learners),
    })
}

/// Encodes a log entry.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = header();
    out.extend_from_slice(&e.index.to_le_bytes());
    out.extend_from_slice(&e.term.to_le_bytes());
    match &e.payload {
        EntryPayload::Blank => out.push(TAG_BLANK),
        EntryPayload::Normal(data) => {
            out.push(TAG_NORMAL);
            out.extend_from_slice(data);
        }
        EntryPayload::Membership(m) => {
            out.push(TAG_MEMBERSHIP);
            encode_membership(&mut out, m);
        }
    }
    seal(out)
}

/// Decodes a log entry, checking it is the entry at `expected_index`.
pub fn decode_entry(record: &[u8], expected_index: Index) -> Result<Entry, DecodeError> {
    let mut r = Reader { buf: open(record)? };
    let index = r.u64()?;
    if index != expected_index {
        return Err(DecodeError(format!(
            "record holds index {index}, stored under {expected_index}"
        )));
    }
    let term = r.u64()?;
    let payload = match r.u8()? {
        TAG_BLANK => {
            r.finish()?;
            EntryPayload::Blank
        }
        TAG_NORMAL => EntryPayload::Normal(Bytes::copy_from_slice(r.buf)),
        TAG_MEMBERSHIP => {
            let m = decode_membership(&mut r)?;
            r.finish()?;
            EntryPayload::Membership(Box::new(m))
        }
        tag => return Err(DecodeError(format!("unknown payload tag {tag}"))),
    };
    Ok(Entry {
        term,
        index,
        payload,
    })
}

/// Encodes the hard state.
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = header();
    out.extend_from_slice(&hs.term.to_le_bytes());
    out.push(u8::from(hs.vote.is_some()));
    out.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&hs.commit.to_le_bytes());
    seal(out)
}

/// Decodes the hard state.
pub fn decode_hard_state(record: &[u8]) -> Result<HardState, DecodeError> {
    let mut r = Reader { buf: open(record)? };
    let term = r.u64()?;
    let has_vote = r.u8()?;
    let vote = r.u64()?;
    let commit = r.u64()?;
    r.finish()?;
    let vote = match has_vote {
        0 => None,
        1 => Some(vote),
        x => return Err(DecodeError(format!("invalid vote flag {x}"))),
    };
    Ok(HardState { term, vote, commit })
}

/// Encodes a log id (the purged prefix's last entry).
pub fn encode_log_id(id: LogId) -> Vec<u8> {
    let mut out = header();
    out.extend_from_slice(&id.index.to_le_bytes());
    out.extend_from_slice(&id.term.to_le_bytes());
    seal(out)
}

/// Decodes a log id.
pub fn decode_log_id(record: &[u8]) -> Result<LogId, DecodeError> {
    let mut r = Reader { buf: open(record)? };
    let index = r.u64()?;
    let term = r.u64()?;
    r.finish()?;
    Ok(LogId::new(term, index))
}

/// Encodes snapshot metadata.
pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let mut out = header();
    out.extend_from_slice(&meta.last_log_id.index.to_le_bytes());
    out.extend_from_slice(&meta.last_log_id.term.to_le_bytes());
    encode_membership(&mut out, &meta.membership);
    seal(out)
}

/// Decodes snapshot metadata.
pub fn decode_snapshot_meta(record: &[u8]) -> Result<SnapshotMeta, DecodeError> {
    let mut r = Reader { buf: open(record)? };
    let index = r.u64()?;
    let term = r.u64()?;
    let membership = decode_membership(&mut r)?;
    r.finish()?;
    Ok(SnapshotMeta {
        last_log_id: LogId::new(term, index),
        membership,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                term: 1,
                index: 1,
                payload: EntryPayload::Blank,
            },
            Entry {
                term: 2,
                index: 7,
                payload: EntryPayload::Normal(Bytes::from_static(b"hello")),
            },
            Entry {
                term: 3,
                index: 9,
                payload: EntryPayload::Membership(Box::new(Membership::joint(
                    [1, 2, 3],
                    [2, 3, 4],
                    [5],
                ))),
            },
        ]
    }

    #[test]
    fn entries_round_trip() {
        for e in entries() {
            let rec = encode_entry(&e);
            assert_eq!(decode_entry(&rec, e.index), Ok(e));
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        for e in entries() {
            let rec = encode_entry(&e);
            for byte in 0..rec.len() {
                for bit in 0..8 {
                    let mut bad = rec.clone();
                    bad[byte] ^= 1 << bit;
                    assert!(
                        decode_entry(&bad, e.index).is_err(),
                        "flip of byte {byte} bit {bit} of {e:?} went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn truncated_records_are_refused_without_panic() {
        for e in entries() {
            let rec = encode_entry(&e);
            for len in 0..rec.len() {
                assert!(
                    decode_entry(&rec[..len], e.index).is_err(),
                    "prefix of {len} bytes accepted"
                );
            }
        }
        let hs = encode_hard_state(&HardState {
            term: 4,
            vote: Some(2),
            commit: 9,
        });
        for len in 0..hs.len() {
            assert!(decode_hard_state(&hs[..len]).is_err());
        }
    }

    #[test]
    fn a_record_under_the_wrong_key_is_refused() {
        let e = &entries()[1];
        let err = decode_entry(&encode_entry(e), 8).unwrap_err();
        assert!(err.0.contains("stored under 8"), "{err:?}");
    }

    #[test]
    fn another_version_is_refused() {
        let mut rec = encode_entry(&entries()[0]);
        rec[0] = 2;
        assert!(decode_entry(&rec, 1).unwrap_err().0.contains("version 2"));
    }

    #[test]
    fn metadata_round_trips() {
        let hs = HardState {
            term: 7,
            vote: None,
            commit: 3,
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)), Ok(hs));
        let id = LogId::new(5, 100);
        assert_eq!(decode_log_id(&encode_log_id(id)), Ok(id));
        let meta = SnapshotMeta {
            last_log_id: id,
            membership: Membership::with_learners([1, 2], [3]),
        };
        assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&meta)), Ok(meta));
    }
}
