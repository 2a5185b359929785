//! Snapshot data: what a state machine produces and installs, and what a
//! transport streams. A snapshot's bytes are read by offset, so a transfer
//! that broke can resume where it stopped, and a large snapshot never has to
//! sit in memory whole ([`FileSource`] reads from a file).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// A snapshot's data, readable at any offset. Reads must be repeatable: a
/// resumed transfer reads again from an earlier offset.
#[async_trait]
pub trait SnapshotSource: Send + Sync + 'static {
    /// Total bytes.
    fn len(&self) -> u64;

    /// Whether the snapshot is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `max` bytes at `offset` (fewer only at the end).
    ///
    /// # Errors
    ///
    /// An I/O error; the transfer or install fails with it.
    async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes>;

    /// The file holding the data, when it is one (lets a receiver move it
    /// instead of copying).
    fn path(&self) -> Option<&Path> {
        None
    }
}

impl std::fmt::Debug for dyn SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSource")
            .field("len", &self.len())
            .field("path", &self.path())
            .finish()
    }
}

/// A shared handle on snapshot data.
pub type SnapshotData = Arc<dyn SnapshotSource>;

#[async_trait]
impl SnapshotSource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }

    async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let start = usize::try_from(offset)
            .ok()
            .filter(|s| *s <= Bytes::len(self))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset past the end"))?;
        let end = start.saturating_add(max).min(Bytes::len(self));
        Ok(self.slice(start..end))
    }
}

/// A snapshot stored in a file, read through the descriptor opened by
/// [`open`](Self::open): a newer snapshot that replaces (deletes) the
/// file does not cut short a transfer of this one.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    file: std::sync::Arc<std::fs::File>,
    len: u64,
}

impl FileSource {
    /// Opens `path` for reading.
    ///
    /// # Errors
    ///
    /// The I/O error of opening it or reading its metadata.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path,
            file: std::sync::Arc::new(file),
            len,
        })
    }
}

#[async_trait]
impl SnapshotSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        if offset > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past the end",
            ));
        }
        let want = max.min((self.len - offset) as usize);
        let file = std::sync::Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// Reads the whole of `source` into memory (for small snapshots and tests).
///
/// # Errors
///
/// The source's I/O error, or `InvalidData` when it is larger than `limit`.
pub async fn read_all(source: &dyn SnapshotSource, limit: u64) -> io::Result<Bytes> {
    if source.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot of {} bytes exceeds {limit}", source.len()),
        ));
    }
    let mut out = Vec::with_capacity(source.len() as usize);
    while (out.len() as u64) < source.len() {
        let chunk = source.read_at(out.len() as u64, 1 << 20).await?;
        if chunk.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot source ended early",
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_source_reads_on_after_its_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("raft-core-filesource-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snap");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let source = FileSource::open(&path).unwrap();
        let head = source.read_at(0, 4096).await.unwrap();
        // A newer snapshot takes the name, the old file is deleted.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"newer").unwrap();
        let rest = source.read_at(4096, 1 << 20).await.unwrap();
        assert_eq!([head, rest].concat(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
