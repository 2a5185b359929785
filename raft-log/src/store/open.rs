//! Opening a store: the checks on the directory before RocksDB opens it,
//! the column families and their options, the recovery read that verifies
//! every record and builds the cache, and the writer thread's start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options,
    WriteOptions, DB,
};
use tokio::sync::mpsc;

use super::writer::Writer;
use super::{
    RocksLog, FORMAT, KEY_FORMAT, KEY_HARD_STATE, KEY_PURGED, KEY_SNAPSHOT, LOG_CF, META_CF,
};
use crate::cache::Cache;
use crate::error::OpenError;
use crate::options::{Compression, RocksLogOptions, SyncPolicy};
use crate::record;

impl RocksLog {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// Opening reads the whole log once to verify every record and to build
    /// the cache behind [`term`](Self::term) and friends.
    ///
    /// # Errors
    ///
    /// An [`OpenError`] naming the path: not a directory, missing, holding
    /// something else or another format version, a corrupted record, or an
    /// I/O or RocksDB failure.
    pub fn open(path: impl AsRef<Path>, options: RocksLogOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        check_options(&options)?;
        let existed = prepare_directory(&path, &options)?;
        // WAL recovery stays RocksDB's default, point-in-time: replay up to
        // the first bad record. A crash tears the unsynced tail of the WAL
        // in any shape (cut short, zeroed pages of a preallocated file,
        // pages written out of order), and that must never stop a node from
        // starting. `TolerateCorruptedTailRecords` would refuse most of those
        // shapes (tests/storage_faults.rs opens each one). A damaged record
        // before a synced write (bit rot in synced data) would also end the
        // replay, silently: `wal_check` refuses such a store first.
        if existed {
            crate::wal_check::check(&path)?;
        }
        let db = open_database(&path, &options, existed)?;
        let state = load(&db, &path, existed)?;
        if options.sync == SyncPolicy::UnsafeNoSync {
            tracing::warn!(
                path = %path.display(),
                "raft log opened WITHOUT fsync: acknowledged entries can be lost on power failure"
            );
        }
        Self::start(path, Arc::new(db), state, &options)
    }

    /// Starts the writer thread on the opened database and its cache.
    fn start(
        path: PathBuf,
        db: Arc<DB>,
        state: Cache,
        options: &RocksLogOptions,
    ) -> Result<Self, OpenError> {
        let cache = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::channel(options.write_queue_capacity);
        let writer = Writer {
            db: db.clone(),
            path: path.clone(),
            cache: cache.clone(),
            sync: options.sync,
            max_requests: options.max_group_commit_requests,
        };
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| OpenError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            db,
            sync: options.sync,
            cache,
            writer: Some(tx),
            thread: Some(thread),
        })
    }
}

/// Refuses queue settings the writer cannot run with.
fn check_options(options: &RocksLogOptions) -> Result<(), OpenError> {
    if options.max_group_commit_requests == 0 || options.write_queue_capacity == 0 {
        return Err(OpenError::InvalidOption(
            "max_group_commit_requests and write_queue_capacity must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Checks that `path` is a directory (creating it when missing and
/// allowed) holding a RocksDB database or nothing (but the files
/// `new_store_beside` names); returns whether a database was there.
fn prepare_directory(path: &Path, options: &RocksLogOptions) -> Result<bool, OpenError> {
    let io = |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => {
            return Err(OpenError::NotADirectory {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !options.create_if_missing {
                return Err(OpenError::Missing {
                    path: path.to_path_buf(),
                });
            }
            std::fs::create_dir_all(path).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    let existed = path.join("CURRENT").exists();
    let foreign = |e: &std::fs::DirEntry| {
        !e.file_type().is_ok_and(|t| t.is_file())
            || !options
                .new_store_beside
                .iter()
                .any(|n| e.file_name() == n.as_str())
    };
    if !existed
        && std::fs::read_dir(path)
            .map_err(io)?
            .any(|e| e.map_or(true, |e| foreign(&e)))
    {
        return Err(OpenError::NotAStore {
            path: path.to_path_buf(),
            reason: "the directory is not empty and holds no RocksDB database".into(),
        });
    }
    Ok(existed)
}

/// Opens RocksDB with the log's, the metadata's, any existing and any
/// extra column families, all with the options' table settings.
fn open_database(path: &Path, options: &RocksLogOptions, existed: bool) -> Result<DB, OpenError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    let cf_names = column_families(path, &db_opts, options, existed)?;
    let cf_opts = column_family_options(options);
    let descriptors = cf_names
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()))
        .collect::<Vec<_>>();
    DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|source| OpenError::Rocks {
        path: path.to_path_buf(),
        source,
    })
}

/// The column families to open: the log's and the metadata's, then those
/// an existing database has (which must include both), then the extra ones
/// asked for.
fn column_families(
    path: &Path,
    db_opts: &Options,
    options: &RocksLogOptions,
    existed: bool,
) -> Result<Vec<String>, OpenError> {
    let mut cf_names: Vec<String> = vec![LOG_CF.into(), META_CF.into()];
    if existed {
        let existing = DB::list_cf(db_opts, path).map_err(|source| OpenError::Rocks {
            path: path.to_path_buf(),
            source,
        })?;
        if !existing.iter().any(|c| c == META_CF) || !existing.iter().any(|c| c == LOG_CF) {
            return Err(OpenError::NotAStore {
                path: path.to_path_buf(),
                reason: format!("a RocksDB database with column families {existing:?}"),
            });
        }
        for c in existing {
            if !cf_names.contains(&c) && c != "default" {
                cf_names.push(c);
            }
        }
    }
    for c in &options.extra_column_families {
        if !cf_names.contains(c) {
            cf_names.push(c.clone());
        }
    }
    Ok(cf_names)
}

/// Every column family's options: the block cache, memtable size and
/// compression asked for.
fn column_family_options(options: &RocksLogOptions) -> Options {
    let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    let mut cf_opts = Options::default();
    cf_opts.set_block_based_table_factory(&table);
    cf_opts.set_write_buffer_size(options.write_buffer_bytes);
    cf_opts.set_compression_type(match options.compression {
        Compression::None => DBCompressionType::None,
        Compression::Lz4 => DBCompressionType::Lz4,
    });
    cf_opts
}

/// Reads and verifies the metadata and every entry.
fn load(db: &DB, path: &Path, existed: bool) -> Result<Cache, OpenError> {
    let corrupt = |index, reason: String| OpenError::Corruption {
        path: path.to_path_buf(),
        index,
        reason,
    };
    let rocks = |source| OpenError::Rocks {
        path: path.to_path_buf(),
        source,
    };
    let meta = db
        .cf_handle(META_CF)
        .ok_or_else(|| corrupt(0, "meta column family missing".into()))?;
    let log = db
        .cf_handle(LOG_CF)
        .ok_or_else(|| corrupt(0, "log column family missing".into()))?;
    match db.get_cf(meta, KEY_FORMAT).map_err(rocks)? {
        Some(v) if v == FORMAT.as_bytes() => {}
        Some(v) => {
            return Err(OpenError::Format {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&v).into_owned(),
                expected: FORMAT.into(),
            })
        }
        None if existed => {
            return Err(OpenError::NotAStore {
                path: path.to_path_buf(),
                reason: "the database has no raft-log format marker".into(),
            })
        }
        None => {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(meta, KEY_FORMAT, FORMAT.as_bytes(), &wo)
                .map_err(rocks)?;
        }
    }
    let mut cache = Cache::default();
    if let Some(v) = db.get_cf(meta, KEY_HARD_STATE).map_err(rocks)? {
        cache.hard_state = record::decode_hard_state(&v)
            .map_err(|e| corrupt(0, format!("hard state: {}", e.0)))?;
    }
    if let Some(v) = db.get_cf(meta, KEY_PURGED).map_err(rocks)? {
        cache.purged =
            record::decode_log_id(&v).map_err(|e| corrupt(0, format!("purge point: {}", e.0)))?;
    }
    if let Some(v) = db.get_cf(meta, KEY_SNAPSHOT).map_err(rocks)? {
        cache.snapshot = Some(
            record::decode_snapshot_meta(&v)
                .map_err(|e| corrupt(0, format!("snapshot metadata: {}", e.0)))?,
        );
    }
    cache.last = cache.purged;
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (key, value) = item.map_err(rocks)?;
        let index = record::key_index(&key).map_err(|e| corrupt(0, e.0))?;
        let expected = cache.last.index + 1;
        if index != expected {
            return Err(corrupt(
                expected,
                format!("entry missing: the next stored entry is {index}"),
            ));
        }
        let entry = record::decode_entry(&value, index).map_err(|e| corrupt(index, e.0))?;
        if entry.term < cache.last.term {
            return Err(corrupt(
                index,
                format!("term {} after term {}", entry.term, cache.last.term),
            ));
        }
        cache.push(&entry);
    }
    let end = cache.last.index.max(cache.purged.index);
    if cache.hard_state.commit > end {
        return Err(corrupt(
            cache.hard_state.commit,
            format!(
                "hard state commits index {} but the log ends at {end}",
                cache.hard_state.commit
            ),
        ));
    }
    Ok(cache)
}
