//! Backup files: a consistent snapshot of the store at one applied index,
//! self-describing and checksummed, written by `GET /v1/cluster/backup`
//! (`raft-node ctl snapshot save FILE`) and read by `raft-node restore`.
//!
//! Format (integers big-endian):
//!
//! ```text
//! magic     b"RKVBKUP1"
//! header    len:u32 | JSON of BackupHeader (at most 1 MiB) | crc32c:u32 of the JSON
//! snapshot  the snapshot stream of crate::snapshot (b"RKVSNAP1", records
//!           each with its CRC-32C, trailer with the record count)
//! footer    b"RKVBKEND" | SHA-256 of every byte before the footer (32 bytes)
//! ```
//!
//! The same bytes in etcd's snapshot envelope (zeros up to a multiple of
//! [`ENVELOPE_ALIGN`] bytes, then the SHA-256 of all before it: what
//! `etcdctl snapshot save` writes) are read as well.
//!
//! A file whose footer is missing (a download cut short), whose SHA-256,
//! header or any record fails its check, is refused by [`verify`] before
//! anything is written anywhere.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use raft_core::{Index, NodeId, Term};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Member;
use crate::snapshot::SnapshotFileError;

/// First bytes of a backup file.
pub const MAGIC: &[u8; 8] = b"RKVBKUP1";
/// First bytes of the footer.
const FOOTER_MAGIC: &[u8; 8] = b"RKVBKEND";
/// Footer length: its magic and the SHA-256.
pub const FOOTER_BYTES: u64 = 8 + 32;
/// etcd's snapshot envelope, which a backup saved through etcd's gRPC
/// `Maintenance.Snapshot` (`etcdctl snapshot save`) comes in: after the
/// backup, zeros up to a multiple of this many bytes, then the SHA-256 of
/// everything before it (etcd's data is a bbolt file of whole pages;
/// etcdctl 3.4 refuses a download whose size is not such a multiple plus
/// 32). [`verify`] reads a backup in it as well as a bare one.
pub const ENVELOPE_ALIGN: u64 = 512;
/// Largest header accepted.
const HEADER_MAX: u32 = 1 << 20;
/// Largest index or term a header may name: a restored log counts up from
/// them.
const POSITION_MAX: u64 = i64::MAX as u64;
/// The format version written: 2 since revisions (its snapshot holds the
/// revision history and the compacted revision).
pub const FORMAT: u32 = 2;
/// The format of releases before revisions, still restored: the restored
/// store's history starts at the backup's index (reads below it answer
/// 410 Gone), as a store of those releases gets when it is upgraded.
pub const FORMAT_V1: u32 = 1;

/// What a backup holds, at the start of the file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The format version ([`FORMAT`]).
    pub format: u32,
    /// The applied index the data is exactly at.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The voters of the configuration in force at `index`.
    pub voters: Vec<NodeId>,
    /// Its learners.
    pub learners: Vec<NodeId>,
    /// The member addresses replicated at `index`.
    pub members: Vec<Member>,
    /// The node that served it.
    pub node: NodeId,
    /// `linearizable` (every write acknowledged before the request is in
    /// it) or `stale` (the serving node's applied state).
    pub consistency: String,
    /// The read index confirmed with a quorum before the snapshot was
    /// taken (linearizable backups); `index` is at least this.
    pub read_index: Option<Index>,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The raft-node version that wrote it.
    pub version: String,
}

/// Why a backup file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing failed.
    #[error("backup {path}: {source}")]
    Io {
        /// The file (or stream).
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a valid, complete backup.
    #[error("backup {path} is corrupted or incomplete: {detail}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The embedded snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotFileError),
}

fn corrupted(path: &Path, detail: impl Into<String>) -> BackupError {
    BackupError::Corrupted {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A writer that hashes and counts what goes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What [`finish`] wrote in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupWritten {
    /// Bytes, footer included.
    pub bytes: u64,
    /// SHA-256 of the file before its footer, hex.
    pub sha256: String,
}

/// Writes the magic and the header to a fresh [`HashingWriter`].
///
/// # Errors
///
/// [`BackupError::Io`].
pub fn start<W: Write>(
    out: W,
    header: &BackupHeader,
    label: &Path,
) -> Result<HashingWriter<W>, BackupError> {
    let json = serde_json::to_vec(header).map_err(|e| BackupError::Io {
        path: label.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let mut w = HashingWriter::new(out);
    w.write_all(MAGIC).map_err(io_err(label))?;
    w.write_all(&(json.len() as u32).to_be_bytes())
        .map_err(io_err(label))?;
    w.write_all(&json).map_err(io_err(label))?;
    w.write_all(&crc32c::crc32c(&json).to_be_bytes())
        .map_err(io_err(label))?;
    Ok(w)
}

/// Writes the footer after the snapshot stream and flushes.
///
/// # Errors
///
/// [`BackupError::Io`].
pub fn finish<W: Write>(w: HashingWriter<W>, label: &Path) -> Result<BackupWritten, BackupError> {
    let HashingWriter {
        mut inner,
        hash,
        bytes,
    } = w;
    let digest = hash.finalize();
    inner.write_all(FOOTER_MAGIC).map_err(io_err(label))?;
    inner.write_all(&digest).map_err(io_err(label))?;
    inner.flush().map_err(io_err(label))?;
    Ok(BackupWritten {
        bytes: bytes + FOOTER_BYTES,
        sha256: hex(&digest),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A reader that hashes what goes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// A verified backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBackup {
    /// Its header.
    pub header: BackupHeader,
    /// Records in its snapshot.
    pub records: u64,
    /// File size.
    pub bytes: u64,
    /// SHA-256 before the footer, hex (what `ctl snapshot save` printed).
    pub sha256: String,
    /// Where the snapshot stream starts in the file.
    snapshot_offset: u64,
}

impl VerifiedBackup {
    /// Length of the embedded snapshot stream.
    fn snapshot_len(&self) -> u64 {
        self.bytes - FOOTER_BYTES - self.snapshot_offset
    }
}

/// Reads the header after the magic.
fn read_header(r: &mut impl Read, path: &Path) -> Result<(BackupHeader, u64), BackupError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| corrupted(path, "shorter than its header"))?;
    if &magic != MAGIC {
        return Err(corrupted(path, "not a raft-node backup (bad magic)"));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| corrupted(path, "ends inside its header"))?;
    let len = u32::from_be_bytes(len);
    if len > HEADER_MAX {
        return Err(corrupted(
            path,
            format!("header of {len} bytes (at most {HEADER_MAX})"),
        ));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json)
        .map_err(|_| corrupted(path, "ends inside its header"))?;
    let mut crc = [0u8; 4];
    r.read_exact(&mut crc)
        .map_err(|_| corrupted(path, "ends inside its header"))?;
    if crc32c::crc32c(&json) != u32::from_be_bytes(crc) {
        return Err(corrupted(path, "header checksum mismatch"));
    }
    let header: BackupHeader = serde_json::from_slice(&json)
        .map_err(|e| corrupted(path, format!("unreadable header: {e}")))?;
    if header.format != FORMAT && header.format != FORMAT_V1 {
        return Err(corrupted(
            path,
            format!(
                "format {} (this raft-node reads {FORMAT_V1} and {FORMAT})",
                header.format
            ),
        ));
    }
    if header.index > POSITION_MAX
        || header.term > POSITION_MAX
        || (header.index > 0 && header.term == 0)
    {
        return Err(corrupted(
            path,
            format!(
                "index {} at term {}: no log holds that position",
                header.index, header.term
            ),
        ));
    }
    Ok((header, 8 + 4 + u64::from(len) + 4))
}

/// Checks the whole file: footer, header, every record of the snapshot and
/// its trailer, and the SHA-256. Nothing is written.
///
/// # Errors
///
/// [`BackupError`], naming what is wrong.
pub fn verify(path: &Path) -> Result<VerifiedBackup, BackupError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let min = 8 + 4 + 4 + FOOTER_BYTES;
    if size < min {
        return Err(corrupted(path, format!("only {size} bytes: truncated")));
    }
    let (bytes, footer) =
        match find_footer(&mut file, size, path)? {
            Some(found) => found,
            None => return Err(corrupted(
                path,
                "no end marker: the file is truncated (an interrupted download?) or not a backup",
            )),
        };
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut r = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file).take(bytes - FOOTER_BYTES),
        hash: Sha256::new(),
    };
    let (header, snapshot_offset) = read_header(&mut r, path)?;
    let records = crate::snapshot::verify_stream(&mut r, path)?;
    let digest = r.hash.finalize();
    if digest.as_slice() != &footer[8..] {
        return Err(corrupted(path, "SHA-256 mismatch"));
    }
    if bytes != size {
        check_envelope(path, bytes, size)?;
    }
    Ok(VerifiedBackup {
        header,
        records,
        bytes,
        sha256: hex(&digest),
        snapshot_offset,
    })
}

/// Where the backup in `file` ends, and its footer: at the end of the
/// file, or inside etcd's snapshot envelope (what etcd's
/// `Maintenance.Snapshot` sends, so `etcdctl snapshot save` writes): the
/// backup, zeros up to a multiple of 512 bytes, the SHA-256 of everything
/// before it. `None` when neither holds a footer.
fn find_footer(
    file: &mut File,
    size: u64,
    path: &Path,
) -> Result<Option<(u64, [u8; FOOTER_BYTES as usize])>, BackupError> {
    let align = ENVELOPE_ALIGN;
    let tail_len = size.min(FOOTER_BYTES + align - 1 + 32);
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    file.seek(SeekFrom::Start(size - tail_len))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(io_err(path))?;
    let footer_at = |end: usize| -> Option<[u8; FOOTER_BYTES as usize]> {
        let start = end.checked_sub(FOOTER_BYTES as usize)?;
        let f = &tail[start..end];
        (&f[..8] == FOOTER_MAGIC).then(|| f.try_into().ok())?
    };
    if let Some(f) = footer_at(tail.len()) {
        return Ok(Some((size, f)));
    }
    if size % align != 32 {
        return Ok(None);
    }
    // The backup ends where the zeros before the checksum start.
    let body = &tail[..tail.len() - 32];
    let zeros = body.iter().rev().take_while(|b| **b == 0).count();
    for pad in 0..=zeros.min(usize::try_from(align).unwrap_or(0) - 1) {
        let end = body.len() - pad;
        if let Some(f) = footer_at(end) {
            return Ok(Some((size - 32 - pad as u64, f)));
        }
    }
    Ok(None)
}

/// Checks etcd's envelope around a backup of `bytes` bytes: the SHA-256 of
/// the file's first `size - 32` bytes ends it.
fn check_envelope(path: &Path, bytes: u64, size: u64) -> Result<(), BackupError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut hash = Sha256::new();
    let copied = io::copy(&mut (&mut r).take(size - 32), &mut HashWriter(&mut hash))
        .map_err(io_err(path))?;
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).map_err(io_err(path))?;
    if copied != size - 32 || hash.finalize().as_slice() != sum {
        return Err(corrupted(
            path,
            format!("etcd snapshot checksum mismatch after the backup's {bytes} bytes"),
        ));
    }
    Ok(())
}

/// Feeds what is written to a hash.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies the snapshot stream of a verified backup to `dest` (synced);
/// the file is read again, so `dest` is checked once more by whoever loads
/// it.
///
/// # Errors
///
/// [`BackupError::Io`].
pub fn extract_snapshot(
    path: &Path,
    verified: &VerifiedBackup,
    dest: &Path,
) -> Result<(), BackupError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(verified.snapshot_offset))
        .map_err(io_err(path))?;
    let mut out = File::create(dest).map_err(io_err(dest))?;
    let copied =
        io::copy(&mut file.take(verified.snapshot_len()), &mut out).map_err(io_err(dest))?;
    if copied != verified.snapshot_len() {
        return Err(corrupted(path, "changed while it was being restored"));
    }
    out.sync_all().map_err(io_err(dest))
}

/// Writes at `path` a backup of an empty store under `header` (tests).
#[cfg(test)]
pub(crate) fn write_empty_backup(path: &Path, header: &BackupHeader) {
    let mut w = start(File::create(path).unwrap(), header, path).unwrap();
    w.write_all(b"RKVSNAP1").unwrap();
    let mut trailer = vec![0xFF];
    trailer.extend_from_slice(&0u64.to_be_bytes());
    let crc = crc32c::crc32c(&trailer);
    trailer.extend_from_slice(&crc.to_be_bytes());
    w.write_all(&trailer).unwrap();
    finish(w, path).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BackupHeader {
        BackupHeader {
            format: FORMAT,
            index: 42,
            term: 3,
            voters: vec![1, 2, 3],
            learners: vec![],
            members: vec![],
            node: 1,
            consistency: "linearizable".into(),
            read_index: Some(41),
            created_unix_ms: 1,
            version: "test".into(),
        }
    }

    /// A backup of an empty store: header, empty snapshot stream, footer.
    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("b.bak");
        write_empty_backup(&path, &header());
        path
    }

    #[test]
    fn a_written_backup_verifies_and_any_flipped_bit_or_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let v = verify(&path).unwrap();
        assert_eq!(v.header, header());
        assert_eq!(v.records, 0);
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let e = verify(&path).unwrap_err().to_string();
            assert!(e.contains("corrupted"), "byte {i}: {e}");
        }
        for cut in 0..good.len() {
            std::fs::write(&path, &good[..cut]).unwrap();
            let e = verify(&path).unwrap_err().to_string();
            assert!(e.contains("corrupted"), "cut at {cut}: {e}");
        }
    }

    /// `bare` in etcd's snapshot envelope: zeros to a multiple of 512
    /// bytes, then the SHA-256 of all before.
    fn enveloped(bare: &[u8]) -> Vec<u8> {
        let mut out = bare.to_vec();
        out.resize(bare.len().div_ceil(512) * 512, 0);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    #[test]
    fn a_backup_in_etcds_envelope_verifies_and_extracts_and_any_flipped_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let bare = std::fs::read(&path).unwrap();
        let good = enveloped(&bare);
        assert_eq!(good.len() % 512, 32);
        std::fs::write(&path, &good).unwrap();
        let v = verify(&path).unwrap();
        assert_eq!((v.header, v.records), (header(), 0));
        let dest = dir.path().join("snap");
        extract_snapshot(&path, &verify(&path).unwrap(), &dest).unwrap();
        let snap = std::fs::read(&dest).unwrap();
        assert!(bare.windows(snap.len()).any(|w| w == snap.as_slice()));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let e = verify(&path).unwrap_err().to_string();
            assert!(e.contains("corrupted"), "byte {i}: {e}");
        }
    }
}
