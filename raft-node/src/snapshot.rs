//! Snapshots of the key-value store: a file written from a consistent
//! RocksDB view of the `kv` and `kv_meta` column families, streamed record
//! by record (never loaded into memory whole), and installed the same way.
//!
//! File format (all integers big-endian):
//!
//! ```text
//! magic     b"RKVSNAP2" (b"RKVSNAP1" before revisions: still read)
//! record*   tag:u8 (1 = kv, 2 = kv_meta) | klen:u32 | vlen:u32 | key | value | crc32c:u32
//! trailer   0xFF | records:u64 | crc32c:u32
//! ```
//!
//! Each record's CRC-32C covers its tag, lengths, key and value; the
//! trailer's covers its tag and count. A file that fails any check, ends
//! early or has bytes after the trailer is refused before anything is
//! written to the store.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

/// The magic written: format 2, whose records hold revisions and history.
const MAGIC: &[u8; 8] = b"RKVSNAP2";
/// The magic of format 1 (releases before revisions). Its records are
/// read as they are: key-value records of version 1 stay readable, and
/// the install gives the store revisions at the snapshot's index.
const MAGIC_V1: &[u8; 8] = b"RKVSNAP1";
const TAG_KV: u8 = 1;
const TAG_META: u8 = 2;
const TAG_END: u8 = 0xFF;
/// Keys and values larger than this are refused when reading a file
/// (the node's own limits are far below).
const FIELD_MAX: u32 = 64 * 1024 * 1024;
/// Bytes a field's buffer starts with while reading; it grows as its
/// bytes arrive.
const FIRST_READ_BYTES: usize = 64 * 1024;
/// Bytes of a snapshot file written between two syncs while writing it.
const SYNC_EVERY_BYTES: u64 = 8 << 20;
/// Bytes of records per write batch while installing.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Why a snapshot file could not be written, read or installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Reading or writing the file failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a valid snapshot.
    #[error("snapshot file {path} is corrupted: {detail}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A column family is missing.
    #[error("column family {0} missing")]
    MissingColumnFamily(&'static str),
    /// The write was stopped before it finished (the node is stopping).
    #[error("snapshot file {0}: cancelled")]
    Cancelled(PathBuf),
}

type Cf<'a> = &'a rocksdb::ColumnFamily;

fn column_families<'a>(
    db: &'a DB,
    kv_cf: &'static str,
    meta_cf: &'static str,
) -> Result<(Cf<'a>, Cf<'a>), SnapshotFileError> {
    let kv = db
        .cf_handle(kv_cf)
        .ok_or(SnapshotFileError::MissingColumnFamily(kv_cf))?;
    let meta = db
        .cf_handle(meta_cf)
        .ok_or(SnapshotFileError::MissingColumnFamily(meta_cf))?;
    Ok((kv, meta))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotFileError + '_ {
    move |source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn record_crc(tag: u8, key: &[u8], value: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&[tag]);
    crc = crc32c::crc32c_append(crc, &(key.len() as u32).to_be_bytes());
    crc = crc32c::crc32c_append(crc, &(value.len() as u32).to_be_bytes());
    crc = crc32c::crc32c_append(crc, key);
    crc32c::crc32c_append(crc, value)
}

/// What a written snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenSnapshot {
    /// Records written.
    pub records: u64,
    /// File size.
    pub bytes: u64,
}

/// Writes the `kv` column family and the `kv_meta` records `keep_meta`
/// accepts, as seen by one RocksDB snapshot, to `path` (through a temporary
/// file, synced and renamed). `on_view` runs as soon as that snapshot is
/// taken: writes to the store after it do not change the file. Setting
/// `cancel` stops the write (the temporary file is removed).
///
/// # Errors
///
/// [`SnapshotFileError`].
pub fn write(
    db: &DB,
    kv_cf: &'static str,
    meta_cf: &'static str,
    keep_meta: impl Fn(&[u8]) -> bool,
    path: &Path,
    on_view: impl FnOnce(),
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<WrittenSnapshot, SnapshotFileError> {
    let view = db.snapshot();
    // From here on, writes to the store do not change what is written.
    on_view();
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut out = SyncEvery {
        out: BufWriter::with_capacity(1 << 20, file),
        since_sync: 0,
    };
    let source = RecordSource {
        db,
        view: &view,
        kv_cf,
        meta_cf,
    };
    let records = match write_records(&source, keep_meta, &mut out, &tmp, cancel) {
        Ok(n) => n,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Err(match e {
                SnapshotFileError::Cancelled(_) => SnapshotFileError::Cancelled(path.to_path_buf()),
                e => e,
            });
        }
    };
    let file = out.out.into_inner().map_err(|e| SnapshotFileError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(&tmp))?;
    let bytes = file.metadata().map_err(io_err(&tmp))?.len();
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(path)?;
    Ok(WrittenSnapshot { records, bytes })
}

/// A file writer that writes back every [`SYNC_EVERY_BYTES`]: one sync of a
/// whole large file at the end would queue the log's own fsyncs behind it
/// for seconds (and the leader's heartbeats behind those).
struct SyncEvery {
    out: BufWriter<File>,
    since_sync: u64,
}

impl Write for SyncEvery {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.since_sync += n as u64;
        if self.since_sync >= SYNC_EVERY_BYTES {
            self.since_sync = 0;
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Where [`write_records`] reads: two column families of `db` as one
/// RocksDB snapshot (`view`) sees them.
#[allow(missing_debug_implementations)]
pub struct RecordSource<'a> {
    /// The database.
    pub db: &'a DB,
    /// The consistent view to read.
    pub view: &'a rocksdb::SnapshotWithThreadMode<'a, DB>,
    /// The data's column family.
    pub kv_cf: &'static str,
    /// The bookkeeping's column family.
    pub meta_cf: &'static str,
}

/// Writes a whole snapshot stream (magic, records, trailer) of `source` to
/// `out`: every `kv` record and the `kv_meta` records `keep_meta` accepts.
/// `label` names the destination in errors. Returns the number of records.
/// Setting `cancel` stops it with [`SnapshotFileError::Cancelled`].
///
/// # Errors
///
/// [`SnapshotFileError`].
pub fn write_records(
    source: &RecordSource<'_>,
    keep_meta: impl Fn(&[u8]) -> bool,
    out: &mut impl Write,
    label: &Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<u64, SnapshotFileError> {
    let db = source.db;
    let (kv, meta) = column_families(db, source.kv_cf, source.meta_cf)?;
    out.write_all(MAGIC).map_err(io_err(label))?;
    let mut records = 0u64;
    for (tag, cf) in [(TAG_KV, &kv), (TAG_META, &meta)] {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(source.view);
        opts.fill_cache(false);
        for item in db.iterator_cf_opt(cf, opts, IteratorMode::Start) {
            let (k, v) = item?;
            if records % 1024 == 0 && cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(SnapshotFileError::Cancelled(label.to_path_buf()));
            }
            if tag == TAG_META && !keep_meta(&k) {
                continue;
            }
            let crc = record_crc(tag, &k, &v);
            let mut head = [0u8; 9];
            head[0] = tag;
            head[1..5].copy_from_slice(&(k.len() as u32).to_be_bytes());
            head[5..9].copy_from_slice(&(v.len() as u32).to_be_bytes());
            out.write_all(&head).map_err(io_err(label))?;
            out.write_all(&k).map_err(io_err(label))?;
            out.write_all(&v).map_err(io_err(label))?;
            out.write_all(&crc.to_be_bytes()).map_err(io_err(label))?;
            records += 1;
        }
    }
    let mut trailer = vec![TAG_END];
    trailer.extend_from_slice(&records.to_be_bytes());
    let crc = crc32c::crc32c(&trailer);
    trailer.extend_from_slice(&crc.to_be_bytes());
    out.write_all(&trailer).map_err(io_err(label))?;
    Ok(records)
}

fn sync_dir(path: &Path) -> Result<(), SnapshotFileError> {
    if let Some(dir) = path.parent() {
        sync_directory(dir).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Makes the entries of `dir` durable (fsync of the directory itself): a
/// rename, creation or removal in it survives a power loss only once its
/// directory is synced. Every rename that matters (a snapshot file taking
/// its final name, a received snapshot moved into place) is followed by
/// this, on the directory of each name.
///
/// # Errors
///
/// When the directory cannot be opened or synced.
pub fn sync_directory(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    synced::record(dir);
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700: a node's data,
/// snapshots and received snapshots are for the node's own user only,
/// whatever the umask. An existing directory is left as it is; one that
/// others can read or enter gets a warning in the log.
///
/// # Errors
///
/// When the directory cannot be created.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = %format!("{mode:04o}"),
                "this node's directory is accessible to other users; `chmod 700` it"
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // The mode given is masked by the umask; make it exactly 0700.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(parent) = dir.parent() {
        let _ = sync_directory(parent);
    }
    Ok(())
}

/// One record: tag, key, value.
type Record = (u8, Vec<u8>, Vec<u8>);

/// Reads the records of a snapshot file in order, checking each.
struct RecordReader<R> {
    path: PathBuf,
    input: R,
    records: u64,
    done: bool,
}

impl RecordReader<BufReader<File>> {
    fn open(path: &Path) -> Result<Self, SnapshotFileError> {
        let file = File::open(path).map_err(io_err(path))?;
        Self::new(BufReader::with_capacity(1 << 20, file), path)
    }
}

impl<R: Read> RecordReader<R> {
    /// Reads the stream `input` (named `path` in errors) from its magic.
    fn new(mut input: R, path: &Path) -> Result<Self, SnapshotFileError> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| corrupted(path, "shorter than its header"))?;
        if &magic != MAGIC && &magic != MAGIC_V1 {
            return Err(corrupted(path, "not a raft-node snapshot (bad magic)"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            input,
            records: 0,
            done: false,
        })
    }

    /// The next `n` bytes. The buffer grows with the bytes read, not to the
    /// length a record declares: a file of a few bytes declaring a field
    /// of 64 MiB must not make the reader allocate 64 MiB.
    fn exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>, SnapshotFileError> {
        let mut buf = Vec::with_capacity(n.min(FIRST_READ_BYTES));
        let got = (&mut self.input)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|_| corrupted(&self.path, &format!("ends inside {what}")))?;
        if got != n {
            return Err(corrupted(&self.path, &format!("ends inside {what}")));
        }
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, SnapshotFileError> {
        let b = self.exact(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next record, or `None` after a valid trailer.
    fn next_record(&mut self) -> Result<Option<Record>, SnapshotFileError> {
        if self.done {
            return Ok(None);
        }
        let tag = self.exact(1, "a record tag")?[0];
        match tag {
            TAG_END => {
                let count = self.exact(8, "the trailer")?;
                let crc = self.u32("the trailer")?;
                let mut t = vec![TAG_END];
                t.extend_from_slice(&count);
                if crc32c::crc32c(&t) != crc {
                    return Err(corrupted(&self.path, "trailer checksum mismatch"));
                }
                let count = u64::from_be_bytes(count.try_into().unwrap_or([0; 8]));
                if count != self.records {
                    return Err(corrupted(
                        &self.path,
                        &format!("trailer says {count} records, found {}", self.records),
                    ));
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest).map_err(io_err(&self.path))? != 0 {
                    return Err(corrupted(&self.path, "bytes after the trailer"));
                }
                self.done = true;
                Ok(None)
            }
            TAG_KV | TAG_META => {
                let klen = self.u32("a key length")?;
                let vlen = self.u32("a value length")?;
                if klen > FIELD_MAX || vlen > FIELD_MAX {
                    return Err(corrupted(
                        &self.path,
                        "record larger than any the node writes",
                    ));
                }
                let key = self.exact(klen as usize, "a key")?;
                let value = self.exact(vlen as usize, "a value")?;
                let crc = self.u32("a record checksum")?;
                if record_crc(tag, &key, &value) != crc {
                    return Err(corrupted(
                        &self.path,
                        &format!("checksum mismatch in record {}", self.records + 1),
                    ));
                }
                self.records += 1;
                Ok(Some((tag, key, value)))
            }
            t => Err(corrupted(&self.path, &format!("unknown record tag {t}"))),
        }
    }
}

fn corrupted(path: &Path, detail: &str) -> SnapshotFileError {
    SnapshotFileError::Corrupted {
        path: path.to_path_buf(),
        detail: detail.to_owned(),
    }
}

/// Reads the whole file and checks every record and the trailer, without
/// touching the store. Returns the number of records.
///
/// # Errors
///
/// [`SnapshotFileError`].
pub fn verify(path: &Path) -> Result<u64, SnapshotFileError> {
    let mut r = RecordReader::open(path)?;
    while r.next_record()?.is_some() {}
    Ok(r.records)
}

/// [`verify`] of a stream: reads `input` to its end (a snapshot stream and
/// nothing after it), checking every record and the trailer; `label` names
/// it in errors. Returns the number of records.
///
/// # Errors
///
/// [`SnapshotFileError`].
pub fn verify_stream(input: impl Read, label: &Path) -> Result<u64, SnapshotFileError> {
    let mut r = RecordReader::new(input, label)?;
    while r.next_record()?.is_some() {}
    Ok(r.records)
}

/// Replaces the contents of the two column families by the file's: deletes
/// every `kv` record and every `kv_meta` record `replace_meta` accepts, then
/// writes the file's records in batches. Not atomic by itself: the caller
/// marks the install in progress first and redoes it after a crash.
///
/// # Errors
///
/// [`SnapshotFileError`]; verify the file first, so that a corrupted file is
/// refused before anything is deleted.
pub fn load(
    db: &DB,
    kv_cf: &'static str,
    meta_cf: &'static str,
    replace_meta: impl Fn(&[u8]) -> bool,
    path: &Path,
) -> Result<u64, SnapshotFileError> {
    let (kv, meta) = column_families(db, kv_cf, meta_cf)?;
    let mut opts = WriteOptions::default();
    opts.set_sync(false);
    // Clear what the snapshot replaces.
    for (cf, all) in [(&kv, true), (&meta, false)] {
        let mut batch = WriteBatch::default();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item?;
            if all || replace_meta(&k) {
                batch.delete_cf(cf, &k);
            }
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                db.write_opt(std::mem::take(&mut batch), &opts)?;
            }
        }
        db.write_opt(batch, &opts)?;
    }
    let mut r = RecordReader::open(path)?;
    let mut batch = WriteBatch::default();
    while let Some((tag, k, v)) = r.next_record()? {
        let cf = if tag == TAG_KV { &kv } else { &meta };
        if tag == TAG_META && !replace_meta(&k) {
            continue;
        }
        batch.put_cf(cf, &k, &v);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write_opt(std::mem::take(&mut batch), &opts)?;
        }
    }
    db.write_opt(batch, &opts)?;
    Ok(r.records)
}

/// Test hook: the directories [`sync_directory`] synced, so tests can check
/// that a rename was followed by a sync of its directory.
#[cfg(test)]
pub(crate) mod synced {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn record(dir: &Path) {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        SYNCED.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
    }

    /// How many times `dir` was synced so far.
    pub(crate) fn count(dir: &Path) -> usize {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        SYNCED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|d| **d == dir)
            .count()
    }
}
