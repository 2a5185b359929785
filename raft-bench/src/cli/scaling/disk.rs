//! The disk's side: its sequential fsync bandwidth, and the bytes a data
//! directory holds.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// Bytes written before each `fdatasync`.
const CHUNK_BYTES: usize = 1 << 20;
/// How long the probe writes.
const PROBE: Duration = Duration::from_secs(1);

/// What the probe measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct FsyncBandwidth {
    /// Bytes written before each `fdatasync`.
    pub(super) chunk_bytes: usize,
    /// Chunks written.
    pub(super) chunks: u64,
    /// Seconds the probe took.
    pub(super) seconds: f64,
    /// MB/s (10^6 bytes) written and synced.
    pub(super) mb_per_s: f64,
}

/// Writes 1 MiB chunks to a new file in `dir`, each followed by
/// `fdatasync`, for about a second (at least four chunks), and removes it.
///
/// # Errors
///
/// When the file cannot be made, written or synced.
pub(super) fn fsync_bandwidth(dir: &Path) -> anyhow::Result<FsyncBandwidth> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut f = tempfile::Builder::new()
        .prefix("raft-bench-fsync-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    // Incompressible enough: a counter in every 8 bytes.
    let chunk: Vec<u8> = (0..CHUNK_BYTES / 8)
        .flat_map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes())
        .collect();
    let start = Instant::now();
    let mut chunks = 0u64;
    while chunks < 4 || start.elapsed() < PROBE {
        f.write_all(&chunk).context("writing the fsync probe")?;
        f.as_file().sync_data().context("fdatasync of the probe")?;
        chunks += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(FsyncBandwidth {
        chunk_bytes: CHUNK_BYTES,
        chunks,
        seconds,
        mb_per_s: (chunks * CHUNK_BYTES as u64) as f64 / 1e6 / seconds,
    })
}

/// Bytes of the files under `dir` (their lengths); files that vanish
/// while it walks (a compaction) count nothing.
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_bytes_adds_up_nested_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(d.path()), 123);
        assert_eq!(dir_bytes(&d.path().join("missing")), 0);
    }

    #[test]
    fn the_probe_writes_and_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let bw = fsync_bandwidth(d.path()).unwrap();
        assert!(bw.chunks >= 4 && bw.mb_per_s > 0.0, "{bw:?}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
