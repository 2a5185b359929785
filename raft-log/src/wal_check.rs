//! A torn-write check over RocksDB's write-ahead log, run before the
//! database is opened.
//!
//! RocksDB replays its WAL "point in time": up to the first record that
//! fails its checksum, and nothing after it. That is right for a tail torn
//! by a crash (the write in flight was never acknowledged, and the unsynced
//! writes of other column families may be damaged anywhere after the last
//! sync), and wrong for a record damaged *before* a synced write: bit rot or
//! a misdirected write in data that was already on disk. Then every later
//! write, acknowledged ones included, would be dropped without a word, and
//! a node would forget entries and votes it promised to keep.
//!
//! The two are told apart the way etcd tells a torn write from corruption:
//! by what follows the damage. Every synced write of the log carries a
//! marker key ([`SYNCED_MARK_KEY`]); `fsync` makes the whole file durable
//! up to the synced record, so a damaged or missing region followed, in the
//! same WAL file, by an intact record carrying the marker cannot be a torn
//! write. Such a store is refused with [`OpenError::Corruption`], naming
//! the file and the offset.
//!
//! The WAL format read here is RocksDB's: 32 KiB blocks; records of a
//! 7-byte header (masked CRC-32C of type and payload, little-endian u32;
//! payload length, u16; type, u8: 1 full, 2 first, 3 middle, 4 last) and a
//! payload, a write batch split into fragments across blocks; a block tail
//! shorter than a header is padding. A write batch is a sequence number
//! (u64), a count (u32) and tagged records (put, delete, and so on).

use std::path::{Path, PathBuf};

use crate::error::OpenError;

/// The key (in the meta column family) every synced write of the log puts,
/// so that the check can see which WAL records were synced.
pub const SYNCED_MARK_KEY: &[u8] = b"\x00synced-write";

const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;
const MASK_DELTA: u32 = 0xa282_ead8;

fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(MASK_DELTA);
    rot.rotate_left(15)
}

/// The WAL files in `dir` (`<number>.log`), oldest first.
fn wal_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<(u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(num) = name.strip_suffix(".log") {
            if let Ok(n) = num.parse::<u64>() {
                out.push((n, path));
            }
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Checks every WAL file of the database in `dir`.
///
/// # Errors
///
/// [`OpenError::Corruption`] when a damaged region precedes a synced
/// write in the same file; [`OpenError::Io`] when a file cannot be read.
pub(crate) fn check(dir: &Path) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for file in wal_files(dir).map_err(io)? {
        let bytes = std::fs::read(&file).map_err(|source| OpenError::Io {
            path: file.clone(),
            source,
        })?;
        if let Some((damaged_at, synced_at)) = damage_before_a_synced_write(&bytes) {
            return Err(OpenError::Corruption {
                path: file,
                index: 0,
                reason: format!(
                    "the write-ahead log is damaged at byte {damaged_at}, before a synced \
                     write at byte {synced_at}: this is not a write torn by a crash, and \
                     replaying up to the damage would drop acknowledged writes"
                ),
            });
        }
    }
    Ok(())
}

/// Scans one WAL file. Returns (offset of the first damage, offset of an
/// intact synced record after it) when there is such a pair.
pub(crate) fn damage_before_a_synced_write(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut damaged: Option<usize> = None;
    // The fragments of the record being reassembled, and where it started.
    let mut pending: Option<(usize, Vec<u8>)> = None;
    let mut block_start = 0;
    while block_start < bytes.len() {
        let block_end = (block_start + BLOCK).min(bytes.len());
        let mut at = block_start;
        while at + HEADER <= block_end {
            let h = &bytes[at..at + HEADER];
            let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let len = usize::from(u16::from_le_bytes([h[4], h[5]]));
            let kind = h[6];
            if kind == 0 && len == 0 && crc == 0 {
                // Zeros where a record should start: preallocated space at
                // the end of the file, or pages a crash never wrote. Only
                // a synced record after it makes it damage.
                damaged.get_or_insert(at);
                pending = None;
                break;
            }
            if matches!(kind, 5..=8 | 11 | 131) {
                // Recyclable-log records have another header: not checked.
                return None;
            }
            let end = at + HEADER + len;
            let intact = end <= block_end
                && unmask(crc)
                    == crc32c::crc32c_append(crc32c::crc32c(&[kind]), &bytes[at + HEADER..end]);
            if !intact {
                damaged.get_or_insert(at);
                pending = None;
                if (1..=4).contains(&kind) && end <= block_end {
                    // Damage in the payload: the header still says where
                    // the next record starts (it counts only if intact).
                    at = end;
                    continue;
                }
                // A damaged header ends what this block can say; the next
                // block starts afresh.
                break;
            }
            if !(1..=4).contains(&kind) {
                // Metadata records (compression, timestamp sizes, ...).
                at = end;
                continue;
            }
            let payload = &bytes[at + HEADER..end];
            let complete = match kind {
                1 => {
                    pending = None;
                    Some((at, payload.to_vec()))
                }
                2 => {
                    pending = Some((at, payload.to_vec()));
                    None
                }
                3 => {
                    if let Some((_, buf)) = pending.as_mut() {
                        buf.extend_from_slice(payload);
                    }
                    None
                }
                _ => pending.take().map(|(start, mut buf)| {
                    buf.extend_from_slice(payload);
                    (start, buf)
                }),
            };
            if let Some((start, record)) = complete {
                if let Some(d) = damaged {
                    if d < start && batch_has_synced_mark(&record) {
                        return Some((d, start));
                    }
                }
            }
            at = end;
        }
        block_start += BLOCK;
    }
    None
}

/// Reads a varint32 at `*at`.
fn varint(b: &[u8], at: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A varint32-length-prefixed slice at `*at`.
fn slice<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = varint(b, at)? as usize;
    let s = b.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(s)
}

/// Whether a write batch puts [`SYNCED_MARK_KEY`] (in any column family).
/// Record kinds this does not know end the search: a batch that cannot be
/// read through counts as unsynced, which can only make the check accept
/// a store, never refuse one.
fn batch_has_synced_mark(batch: &[u8]) -> bool {
    let mut at = 12; // sequence number and count
    while at < batch.len() {
        let tag = batch[at];
        at += 1;
        let ok = match tag {
            // put, merge: key and value
            0x1 | 0x2 => slice(batch, &mut at)
                .map(|k| (k, slice(batch, &mut at)))
                .map(|(k, v)| (k == SYNCED_MARK_KEY && tag == 0x1, v.is_some())),
            // put, merge in a column family
            0x5 | 0x6 => varint(batch, &mut at)
                .and_then(|_| slice(batch, &mut at))
                .map(|k| (k, slice(batch, &mut at)))
                .map(|(k, v)| (k == SYNCED_MARK_KEY && tag == 0x5, v.is_some())),
            // delete, single delete: key
            0x0 | 0x7 => slice(batch, &mut at).map(|_| (false, true)),
            // delete, single delete in a column family
            0x4 | 0x8 => varint(batch, &mut at)
                .and_then(|_| slice(batch, &mut at))
                .map(|_| (false, true)),
            // range deletion: begin and end keys
            0xF => slice(batch, &mut at)
                .and_then(|_| slice(batch, &mut at))
                .map(|_| (false, true)),
            0xE => varint(batch, &mut at)
                .and_then(|_| slice(batch, &mut at))
                .and_then(|_| slice(batch, &mut at))
                .map(|_| (false, true)),
            // log data: a blob
            0x3 => slice(batch, &mut at).map(|_| (false, true)),
            _ => None,
        };
        match ok {
            Some((true, true)) => return true,
            Some((false, true)) => {}
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(crc: u32) -> u32 {
        crc.rotate_right(15).wrapping_add(MASK_DELTA)
    }

    /// One full record holding `payload`.
    fn record(payload: &[u8]) -> Vec<u8> {
        let crc = mask(crc32c::crc32c_append(crc32c::crc32c(&[1]), payload));
        let mut out = crc.to_le_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.push(1);
        out.extend_from_slice(payload);
        out
    }

    fn batch(cf: u32, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 12];
        b.push(0x5);
        b.push(cf as u8);
        b.push(key.len() as u8);
        b.extend_from_slice(key);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn masking_round_trips() {
        for crc in [0, 1, 0xdead_beef, u32::MAX] {
            assert_eq!(unmask(mask(crc)), crc);
        }
    }

    #[test]
    fn damage_before_a_synced_write_is_found_and_a_torn_tail_is_not() {
        let synced = record(&batch(2, SYNCED_MARK_KEY, b""));
        let unsynced = record(&batch(3, b"k", b"v"));
        let mut wal = [synced.clone(), unsynced.clone(), synced.clone()].concat();
        assert_eq!(damage_before_a_synced_write(&wal), None, "intact");
        // The middle (unsynced) record damaged, a synced one after it.
        let at = synced.len() + 9;
        wal[at] ^= 0x40;
        assert_eq!(
            damage_before_a_synced_write(&wal),
            Some((synced.len(), synced.len() + unsynced.len()))
        );
        // Damage followed only by unsynced writes: a torn tail.
        let mut tail = [synced.clone(), unsynced.clone(), unsynced.clone()].concat();
        let at = synced.len() + 9;
        tail[at] ^= 0x40;
        assert_eq!(damage_before_a_synced_write(&tail), None);
        // Zeros where records should be (pages never written): a torn tail
        // when nothing follows, damage when a synced record does.
        let mut zeroed = [synced.clone(), vec![0; 100]].concat();
        zeroed.resize(BLOCK, 0);
        assert_eq!(
            damage_before_a_synced_write(&zeroed),
            None,
            "zeros to the end"
        );
        zeroed.extend_from_slice(&synced);
        assert_eq!(
            damage_before_a_synced_write(&zeroed),
            Some((synced.len(), BLOCK))
        );
    }

    #[test]
    fn a_user_value_holding_the_marker_is_not_a_synced_write() {
        // The marker as a value, not a key, never counts.
        let b = batch(3, b"user-key", SYNCED_MARK_KEY);
        assert!(!batch_has_synced_mark(&b));
        assert!(batch_has_synced_mark(&batch(2, SYNCED_MARK_KEY, b"")));
        // Garbage after the header reads as unsynced.
        assert!(!batch_has_synced_mark(
            &[0u8; 12]
                .into_iter()
                .chain([0x5, 0xff, 0xff])
                .collect::<Vec<_>>()
        ));
    }

    #[test]
    fn random_and_mangled_files_never_panic() {
        // Bad input from a file: garbage, and real-shaped WALs with random
        // bytes changed, truncated or extended, get an answer, never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let synced = record(&batch(2, SYNCED_MARK_KEY, b""));
        let unsynced = record(&batch(3, b"k", b"v"));
        for round in 0..2_000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                (0..next() % 70_000).map(|_| next() as u8).collect()
            } else {
                let mut w = Vec::new();
                for _ in 0..next() % 3_000 {
                    w.extend_from_slice(if next() % 2 == 0 { &synced } else { &unsynced });
                }
                w
            };
            for _ in 0..next() % 8 {
                if !bytes.is_empty() {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            bytes.truncate(cut);
            let _ = damage_before_a_synced_write(&bytes);
            let _ = batch_has_synced_mark(&bytes);
        }
    }
}
