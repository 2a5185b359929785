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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::NodeId;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

use crate::codec::SnapshotOffer;
use crate::refusal::{RefusalReason, SnapshotRefusal};

pub use raft_core::{FileSource, SnapshotSource};

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
    /// Refuses the transfer; the sender sees the reason and the detail.
    async fn begin(&self, from: NodeId, offer: &SnapshotOffer) -> Result<u64, SnapshotRefusal>;

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
    ) -> Result<(), SnapshotRefusal>;

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
    ) -> Result<(), SnapshotRefusal>;
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
    /// Last `begin` or `write`: an idle partial stops reserving space.
    touched: Instant,
}

impl Partial {
    /// Bytes this transfer still has to write.
    fn remaining(&self) -> u64 {
        self.offer.total_bytes.saturating_sub(self.written)
    }
}

/// Free space kept beyond every accepted snapshot by default: 64 MiB.
pub const FREE_SPACE_MARGIN_BYTES_DEFAULT: u64 = 64 << 20;

/// How long a partial transfer with no activity keeps its space reserved
/// by default: 60 s.
pub const RESERVATION_IDLE_DEFAULT: Duration = Duration::from_secs(60);

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
/// earlier run, which the leader sends again). An offer is accepted only if
/// the free space of the directory's filesystem, minus what the other
/// transfers in progress still have to write (their reservations), holds it
/// plus a margin ([`FREE_SPACE_MARGIN_BYTES_DEFAULT`]): two offers that each
/// fit alone are not both accepted when together they do not. A partial
/// transfer idle for [`RESERVATION_IDLE_DEFAULT`] stops reserving (its
/// sender vanished; its bytes on disk still count, as used space). A
/// delivered snapshot's file is deleted by [`forward_snapshots`] once the
/// node is done with it (installed, refused or dropped).
pub struct FileSnapshotSink {
    dir: PathBuf,
    /// Makes every completed file name unique.
    completed_seq: std::sync::atomic::AtomicU64,
    partials: Mutex<HashMap<(NodeId, u64), Partial>>,
    completed: mpsc::Sender<ReceivedSnapshot>,
    free_space_margin_bytes: u64,
    reservation_idle: Duration,
}

impl std::fmt::Debug for FileSnapshotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSnapshotSink")
            .field("dir", &self.dir)
            .field("free_space_margin_bytes", &self.free_space_margin_bytes)
            .field("reservation_idle", &self.reservation_idle)
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
                free_space_margin_bytes: FREE_SPACE_MARGIN_BYTES_DEFAULT,
                reservation_idle: RESERVATION_IDLE_DEFAULT,
            },
            rx,
        ))
    }

    /// Free space that must remain after an accepted snapshot (default
    /// [`FREE_SPACE_MARGIN_BYTES_DEFAULT`]).
    pub fn with_free_space_margin(mut self, bytes: u64) -> Self {
        self.free_space_margin_bytes = bytes;
        self
    }

    /// How long an idle partial transfer keeps its space reserved (default
    /// [`RESERVATION_IDLE_DEFAULT`]).
    pub fn with_reservation_idle(mut self, idle: Duration) -> Self {
        self.reservation_idle = idle;
        self
    }

    /// Refuses `needed` bytes that the filesystem cannot hold beyond the
    /// reservations of other transfers and the margin.
    fn check_space(&self, needed: u64, reserved: u64) -> Result<(), SnapshotRefusal> {
        let available = free_bytes(&self.dir).map_err(|e| {
            SnapshotRefusal::new(
                RefusalReason::Storage,
                format!("cannot read the free space of {}: {e}", self.dir.display()),
            )
        })?;
        let usable = available
            .saturating_sub(reserved)
            .saturating_sub(self.free_space_margin_bytes);
        if needed > usable {
            return Err(SnapshotRefusal::new(
                RefusalReason::NoSpace,
                format!(
                    "snapshot needs {needed} bytes but {} has {available} bytes free, \
                     {reserved} of them reserved by transfers in progress and {} kept as a margin",
                    self.dir.display(),
                    self.free_space_margin_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn storage(detail: String) -> SnapshotRefusal {
    SnapshotRefusal::new(RefusalReason::Storage, detail)
}

fn invalid(detail: String) -> SnapshotRefusal {
    SnapshotRefusal::new(RefusalReason::Invalid, detail)
}

#[async_trait]
impl SnapshotSink for FileSnapshotSink {
    async fn begin(&self, from: NodeId, offer: &SnapshotOffer) -> Result<u64, SnapshotRefusal> {
        let mut partials = self.partials.lock().await;
        let key = (from, offer.transfer_id);
        // What the other senders' live transfers still have to write.
        let reserved: u64 = partials
            .iter()
            .filter(|((f, _), p)| *f != from && p.touched.elapsed() < self.reservation_idle)
            .map(|(_, p)| p.remaining())
            .sum();
        if let Some(p) = partials.get(&key).filter(|p| p.offer == *offer) {
            self.check_space(p.remaining(), reserved)?;
            let p = partials
                .get_mut(&key)
                .ok_or_else(|| invalid("no such transfer".into()))?;
            p.resumes += 1;
            p.touched = Instant::now();
            return Ok(p.written);
        }
        // Before anything is written (this sender's older partials count
        // as free: they are deleted below).
        let stale_bytes: u64 = partials
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|(_, p)| p.written)
            .sum();
        self.check_space(offer.total_bytes.saturating_sub(stale_bytes), reserved)?;
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
            .map_err(|e| storage(format!("cannot create {}: {e}", path.display())))?;
        partials.insert(
            key,
            Partial {
                offer: offer.clone(),
                file,
                path,
                written: 0,
                crc: 0,
                resumes: 0,
                touched: Instant::now(),
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
    ) -> Result<(), SnapshotRefusal> {
        let mut partials = self.partials.lock().await;
        let p = partials
            .get_mut(&(from, transfer_id))
            .ok_or_else(|| invalid("no such transfer".into()))?;
        if offset != p.written {
            return Err(invalid(format!(
                "chunk at {offset}, expected {}",
                p.written
            )));
        }
        p.touched = Instant::now();
        if let Err(e) = write_at(&mut p.file, offset, &data).await {
            // Keep what is known to be written; the next attempt resumes there.
            return Err(storage(format!("write to {}: {e}", p.path.display())));
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
    ) -> Result<(), SnapshotRefusal> {
        let mut partials = self.partials.lock().await;
        let key = (from, transfer_id);
        let p = partials
            .remove(&key)
            .ok_or_else(|| invalid("no such transfer".into()))?;
        let fail = |refusal: SnapshotRefusal| {
            let path = p.path.clone();
            async move {
                let _ = tokio::fs::remove_file(&path).await;
                Err(refusal)
            }
        };
        if p.written != total_bytes || total_bytes != p.offer.total_bytes {
            return fail(invalid(format!(
                "received {} bytes, sender says {total_bytes}, offer said {}",
                p.written, p.offer.total_bytes
            )))
            .await;
        }
        if p.crc != crc32c {
            return fail(invalid(format!(
                "snapshot checksum mismatch: computed {:#010x}, sender says {crc32c:#010x}",
                p.crc
            )))
            .await;
        }
        if let Err(e) = p.file.sync_all().await {
            return fail(storage(format!("sync {}: {e}", p.path.display()))).await;
        }
        let seq = self
            .completed_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done = self.dir.join(format!("{from}-{transfer_id}-{seq}.snap"));
        if let Err(e) = tokio::fs::rename(&p.path, &done).await {
            return fail(storage(format!("rename to {}: {e}", done.display()))).await;
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
            .map_err(|_| SnapshotRefusal::new(RefusalReason::Other, "snapshot receiver closed"))
    }
}

/// Bytes available to unprivileged users on the filesystem of `dir`
/// (`f_bavail`).
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
