//! Snapshot streaming: what a sender reads from ([`SnapshotSource`]), what a
//! receiver writes to ([`SnapshotSink`]), and a file-backed sink.
//!
//! A transfer runs on its own QUIC stream at a lower priority than the
//! control and replication streams, so votes and heartbeats keep flowing. The
//! sender offers `(transfer_id, total_bytes, meta)`; the receiver answers with
//! the offset it already holds for that transfer (0 for a new one); the
//! sender streams CRC-32C-checked chunks from there, then the total length
//! and the CRC-32C of the whole snapshot; the receiver verifies both before
//! it publishes the snapshot. When the connection breaks, the sender retries
//! with the same `transfer_id` and the receiver resumes.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::NodeId;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

use crate::codec::SnapshotOffer;

pub use raft_core::snapshot::{FileSource, SnapshotSource};

/// Why a [`SnapshotSink`] refused a transfer or a chunk. The transport
/// sends its text to the sender, which retries or starts over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotSinkError {
    /// The transfer does not fit what the sink holds or allows (an unknown
    /// transfer, a chunk at the wrong offset, a length or checksum that
    /// does not match, not enough free space); says why.
    #[error("{0}")]
    Refused(String),
    /// Reading or writing the sink's files failed.
    #[error("{context}: {source}")]
    Io {
        /// What the sink was doing, and on which file.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Whoever takes completed snapshots stopped taking them.
    #[error("snapshot receiver closed")]
    Closed,
}

impl SnapshotSinkError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Where a receiver stores incoming snapshots.
///
/// The transport calls `begin` once per attempt, then `write` for each chunk
/// in order (already checked against its CRC and the expected offset), then
/// `finish` with the sender's total length and whole-snapshot CRC.
#[async_trait]
pub trait SnapshotSink: Send + Sync + 'static {
    /// A transfer starts or resumes. Returns how many bytes of it are already
    /// stored (0 for a new transfer), where the sender will continue.
    ///
    /// # Errors
    ///
    /// Refuses the transfer; the sender sees the message.
    async fn begin(&self, from: NodeId, offer: &SnapshotOffer) -> Result<u64, SnapshotSinkError>;

    /// Stores `data` at `offset` of transfer `transfer_id` from `from`.
    ///
    /// # Errors
    ///
    /// Aborts this attempt; the sender retries.
    async fn write(
        &self,
        from: NodeId,
        transfer_id: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<(), SnapshotSinkError>;

    /// All data arrived: verify length and checksum, then publish.
    ///
    /// # Errors
    ///
    /// The snapshot is discarded (the sender restarts it from zero).
    async fn finish(
        &self,
        from: NodeId,
        transfer_id: u64,
        total_bytes: u64,
        crc32c: u32,
    ) -> Result<(), SnapshotSinkError>;
}

/// A snapshot that arrived complete and verified.
#[derive(Debug, Clone)]
pub struct ReceivedSnapshot {
    /// The sender.
    pub from: NodeId,
    /// The sender's transfer id.
    pub transfer_id: u64,
    /// The sender's metadata.
    pub meta: Bytes,
    /// The file holding the data; the receiver owns it now.
    pub path: PathBuf,
    /// Its length.
    pub bytes: u64,
    /// How many attempts resumed a partial transfer (0 when it arrived in one).
    pub resumes: u32,
}

struct Partial {
    offer: SnapshotOffer,
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
    crc: u32,
    resumes: u32,
}

/// A [`SnapshotSink`] that writes each transfer to a file in a directory and
/// hands completed snapshots to a channel.
///
/// Partial transfers are kept (in memory bookkeeping plus the `.partial`
/// file) so a retry resumes, one per sender; a transfer with the same sender and id but a
/// different size or metadata starts over. Completed files are renamed to
/// `<from>-<transfer_id>-<n>.snap` and synced before they are announced.
///
/// The directory belongs to the sink: everything in it is deleted when the
/// sink is created (partial transfers and undelivered snapshots of an
/// earlier run, which the leader sends again), and an offer larger than the
/// free space of the directory's filesystem is refused before anything is
/// written. A delivered snapshot's file is deleted by
/// [`forward_snapshots`] once the node is done with it (installed, refused
/// or dropped).
pub struct FileSnapshotSink {
    dir: PathBuf,
    /// Makes every completed file name unique.
    completed_seq: std::sync::atomic::AtomicU64,
    partials: Mutex<HashMap<(NodeId, u64), Partial>>,
    completed: mpsc::Sender<ReceivedSnapshot>,
}

impl std::fmt::Debug for FileSnapshotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSnapshotSink")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FileSnapshotSink {
    /// A sink writing into `dir` (created if missing, emptied if not: the
    /// directory must be the sink's own); completed snapshots arrive on the
    /// returned receiver, which holds up to `queue` of them.
    ///
    /// # Errors
    ///
    /// The I/O error of creating `dir` or of deleting what it holds.
    pub fn new(
        dir: impl AsRef<Path>,
        queue: usize,
    ) -> io::Result<(Self, mpsc::Receiver<ReceivedSnapshot>)> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let mut removed = 0u64;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "deleted partial and undelivered snapshots of an earlier run");
        }
        let (tx, rx) = mpsc::channel(queue.max(1));
        Ok((
            Self {
                dir,
                completed_seq: std::sync::atomic::AtomicU64::new(0),
                partials: Mutex::new(HashMap::new()),
                completed: tx,
            },
            rx,
        ))
    }
}

#[async_trait]
impl SnapshotSink for FileSnapshotSink {
    async fn begin(&self, from: NodeId, offer: &SnapshotOffer) -> Result<u64, SnapshotSinkError> {
        let mut partials = self.partials.lock().await;
        let key = (from, offer.transfer_id);
        if let Some(p) = partials.get_mut(&key) {
            if p.offer == *offer {
                let remaining = offer.total_bytes.saturating_sub(p.written);
                check_free_space(&self.dir, remaining)?;
                p.resumes += 1;
                return Ok(p.written);
            }
            if let Some(p) = partials.remove(&key) {
                let _ = tokio::fs::remove_file(&p.path).await;
            }
        }
        // Before anything is written (the older partials of this sender
        // count as free: they are deleted below).
        let stale_bytes: u64 = partials
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|(_, p)| p.written)
            .sum();
        check_free_space(&self.dir, offer.total_bytes.saturating_sub(stale_bytes))?;
        // One partial transfer per sender: a new one replaces older ones
        // (their files are deleted), so a peer cannot pile up partials.
        let stale: Vec<(NodeId, u64)> = partials
            .keys()
            .filter(|(f, _)| *f == from)
            .copied()
            .collect();
        for k in stale {
            if let Some(p) = partials.remove(&k) {
                let _ = tokio::fs::remove_file(&p.path).await;
            }
        }
        let path = self
            .dir
            .join(format!("{from}-{}.partial", offer.transfer_id));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(SnapshotSinkError::io(format!(
                "cannot create {}",
                path.display()
            )))?;
        partials.insert(
            key,
            Partial {
                offer: offer.clone(),
                file,
                path,
                written: 0,
                crc: 0,
                resumes: 0,
            },
        );
        Ok(0)
    }

    async fn write(
        &self,
        from: NodeId,
        transfer_id: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<(), SnapshotSinkError> {
        let mut partials = self.partials.lock().await;
        let p = partials
            .get_mut(&(from, transfer_id))
            .ok_or_else(|| SnapshotSinkError::Refused("no such transfer".into()))?;
        if offset != p.written {
            return Err(SnapshotSinkError::Refused(format!(
                "chunk at {offset}, expected {}",
                p.written
            )));
        }
        if let Err(e) = write_at(&mut p.file, offset, &data).await {
            // Keep what is known to be written; the next attempt resumes there.
            return Err(SnapshotSinkError::io(format!(
                "write to {}",
                p.path.display()
            ))(e));
        }
        p.crc = crc32c::crc32c_append(p.crc, &data);
        p.written += data.len() as u64;
        Ok(())
    }

    async fn finish(
        &self,
        from: NodeId,
        transfer_id: u64,
        total_bytes: u64,
        crc32c: u32,
    ) -> Result<(), SnapshotSinkError> {
        let mut partials = self.partials.lock().await;
        let key = (from, transfer_id);
        let p = partials
            .remove(&key)
            .ok_or_else(|| SnapshotSinkError::Refused("no such transfer".into()))?;
        let fail = |detail: SnapshotSinkError| {
            let path = p.path.clone();
            async move {
                let _ = tokio::fs::remove_file(&path).await;
                Err(detail)
            }
        };
        if p.written != total_bytes || total_bytes != p.offer.total_bytes {
            return fail(SnapshotSinkError::Refused(format!(
                "received {} bytes, sender says {total_bytes}, offer said {}",
                p.written, p.offer.total_bytes
            )))
            .await;
        }
        if p.crc != crc32c {
            return fail(SnapshotSinkError::Refused(format!(
                "snapshot checksum mismatch: computed {:#010x}, sender says {crc32c:#010x}",
                p.crc
            )))
            .await;
        }
        if let Err(e) = p.file.sync_all().await {
            return fail(SnapshotSinkError::io(format!("sync {}", p.path.display()))(
                e,
            ))
            .await;
        }
        let seq = self
            .completed_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done = self.dir.join(format!("{from}-{transfer_id}-{seq}.snap"));
        if let Err(e) = tokio::fs::rename(&p.path, &done).await {
            return fail(SnapshotSinkError::io(format!(
                "rename to {}",
                done.display()
            ))(e))
            .await;
        }
        if let Ok(d) = tokio::fs::File::open(&self.dir).await {
            let _ = d.sync_all().await;
        }
        let received = ReceivedSnapshot {
            from,
            transfer_id,
            meta: p.offer.meta.clone(),
            path: done,
            bytes: total_bytes,
            resumes: p.resumes,
        };
        drop(partials);
        self.completed
            .send(received)
            .await
            .map_err(|_| SnapshotSinkError::Closed)
    }
}

/// Refuses `needed` bytes that the filesystem of `dir` cannot hold (the
/// space available to unprivileged users, `f_bavail`).
fn check_free_space(dir: &Path, needed: u64) -> Result<(), SnapshotSinkError> {
    let available = free_bytes(dir).map_err(SnapshotSinkError::io(format!(
        "cannot read the free space of {}",
        dir.display()
    )))?;
    if needed > available {
        return Err(SnapshotSinkError::Refused(format!(
            "snapshot needs {needed} bytes but {} has {available} bytes free",
            dir.display()
        )));
    }
    Ok(())
}

/// Bytes available to unprivileged users on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A received snapshot file handed to the node: deleted when the node drops
/// it (after an install moved it away, this finds nothing to delete).
struct ReceivedFile {
    source: FileSource,
    path: PathBuf,
}

#[async_trait]
impl SnapshotSource for ReceivedFile {
    fn len(&self) -> u64 {
        self.source.len()
    }

    async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        self.source.read_at(offset, max).await
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

impl Drop for ReceivedFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::debug!(path = %self.path.display(), "received snapshot file deleted")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot delete a received snapshot file")
            }
        }
    }
}

async fn write_at(file: &mut tokio::fs::File, offset: u64, data: &[u8]) -> io::Result<()> {
    file.seek(io::SeekFrom::Start(offset)).await?;
    file.write_all(data).await?;
    file.flush().await
}

/// Hands every verified snapshot that arrives on `received` to the Raft node
/// behind `handle` (decoding the leader's `InstallSnapshot` header from the
/// offer's metadata), until either side closes. Spawn it next to a
/// transport built with a [`FileSnapshotSink`]. A snapshot whose header does
/// not decode, or that comes from another node than its header says, is
/// deleted and logged; so is one the node is too busy to take. A snapshot
/// handed over is deleted when the node drops it (installed snapshots are
/// moved away by the state machine first).
pub async fn forward_snapshots<R: Send + 'static>(
    mut received: mpsc::Receiver<ReceivedSnapshot>,
    handle: raft_core::RaftHandle<R>,
    max_frame_bytes: u32,
) {
    while let Some(snap) = received.recv().await {
        let header = match crate::codec::decode_snapshot_header(snap.meta.clone(), max_frame_bytes)
        {
            Ok(h) if h.from == snap.from && h.to == handle.id() => h,
            Ok(h) => {
                tracing::warn!(
                    from = snap.from,
                    header_from = h.from,
                    to = h.to,
                    "snapshot header names other nodes; dropped"
                );
                let _ = tokio::fs::remove_file(&snap.path).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(from = snap.from, error = %e, "snapshot header does not decode; dropped");
                let _ = tokio::fs::remove_file(&snap.path).await;
                continue;
            }
        };
        let source = match FileSource::open(&snap.path) {
            Ok(s) => ReceivedFile {
                source: s,
                path: snap.path.clone(),
            },
            Err(e) => {
                tracing::warn!(path = %snap.path.display(), error = %e, "received snapshot unreadable");
                let _ = tokio::fs::remove_file(&snap.path).await;
                continue;
            }
        };
        // Dropped (and its file deleted) if the node refuses it.
        if handle
            .receive_snapshot(header, std::sync::Arc::new(source))
            .is_err()
        {
            tracing::warn!(
                from = snap.from,
                "node busy; snapshot dropped (the leader sends it again)"
            );
        }
        if handle.is_stopped() {
            break;
        }
    }
}
