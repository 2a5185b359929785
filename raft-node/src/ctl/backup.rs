//! `raft-node ctl snapshot save FILE`: downloads a backup
//! (`GET /v1/cluster/backup`) to `FILE.part` beside `FILE`, syncs it,
//! checks it whole ([`crate::backup::verify`]) and only then renames it to
//! `FILE`: a file at `FILE` is always a complete, verified backup.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use raft_client::{Backup, BackupConsistency, Client};
use serde_json::json;

use super::{CtlArgs, Format};

/// Creates `path` afresh, readable and writable by its owner only,
/// whatever the umask: a backup holds every key and value of the store.
/// Whatever is at `path` already is removed first, never opened: a
/// symbolic link planted there would have the backup written through it,
/// and another user's file would stay theirs to read. (`O_EXCL` and
/// `O_NOFOLLOW`: one planted between the removal and the creation makes
/// it fail.)
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old {}", path.display()))
        }
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // The mode given is masked by the umask: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(file)
}

/// The backup's bytes into `part` (created afresh, private), then synced.
async fn download(backup: &mut Backup, part: &Path) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, create_private(part)?);
    while let Some(chunk) = backup.chunk().await? {
        out.write_all(&chunk)
            .with_context(|| format!("writing {}", part.display()))?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("syncing {}", part.display()))
}

/// `ctl snapshot save FILE [--stale]`: the download goes through
/// [`Client::backup`] (a follower's 421 leads to the leader; the request
/// is retried until the backup's headers come, never once its bytes
/// flow).
///
/// # Errors
///
/// No node served a backup, or the download was cut off, or the file
/// cannot be written, or the download does not verify. `FILE.part` is
/// removed then: nothing is left but a whole, verified `FILE`.
pub(super) async fn save(a: &CtlArgs, c: &Client, file: &Path, stale: bool) -> anyhow::Result<()> {
    let consistency = if stale {
        BackupConsistency::Stale
    } else {
        BackupConsistency::Linearizable
    };
    let mut backup = c
        .backup(consistency)
        .await
        .map_err(|e| super::reach(e, c))
        .context("no node served a backup")?;
    let part = PathBuf::from(format!("{}.part", file.display()));
    if let Err(e) = download(&mut backup, &part).await {
        let _ = std::fs::remove_file(&part);
        return Err(e.context(format!(
            "the backup from {} failed, nothing saved",
            backup.endpoint
        )));
    }
    let checked = crate::backup::verify(&part)
        .map_err(|e| anyhow::anyhow!("the downloaded backup does not verify, nothing saved: {e}"))
        .and_then(|v| {
            let said = (backup.index, backup.term, backup.node);
            let holds = (v.header.index, v.header.term, v.header.node);
            if said != holds {
                bail!(
                    "{} announced the backup of index {}, term {}, node {} but sent one of \
                     index {}, term {}, node {}; nothing saved",
                    backup.endpoint,
                    said.0,
                    said.1,
                    said.2,
                    holds.0,
                    holds.1,
                    holds.2
                );
            }
            Ok(v)
        });
    match checked {
        Ok(v) => finish(a, &part, file, &v),
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn finish(
    a: &CtlArgs,
    part: &Path,
    file: &Path,
    v: &crate::backup::VerifiedBackup,
) -> anyhow::Result<()> {
    std::fs::rename(part, file)
        .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    crate::snapshot::sync_directory(dir).with_context(|| format!("syncing {}", dir.display()))?;
    let h = &v.header;
    if a.write_out == Some(Format::Table) {
        println!("FILE\tINDEX\tTERM\tBYTES\tRECORDS\tSHA256");
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            file.display(),
            h.index,
            h.term,
            v.bytes,
            v.records,
            v.sha256
        );
        return Ok(());
    }
    println!(
        "{}",
        json!({
            "file": file.display().to_string(),
            "index": h.index,
            "term": h.term,
            "bytes": v.bytes,
            "records": v.records,
            "sha256": v.sha256,
            "consistency": h.consistency,
            "read_index": h.read_index,
            "node": h.node,
            "voters": h.voters,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A `FILE.part` planted before the download (a symbolic link to a file
    /// the operator can write, in a backup directory others can write to)
    /// is replaced, never written through: the file it points to keeps its
    /// bytes, and the backup goes into a new file of its own.
    #[test]
    fn a_planted_part_file_link_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let part = dir.path().join("raft.bak.part");
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        let mut f = create_private(&part).unwrap();
        f.write_all(b"backup bytes").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&part).unwrap().is_symlink());
        assert_eq!(std::fs::read(&part).unwrap(), b"backup bytes");
    }

    /// A `FILE.part` left by someone else (another user's file, which it
    /// could go on reading through a descriptor it holds, or as its
    /// owner) is not reused: the backup goes into a new file owned by the
    /// user saving it.
    #[test]
    fn a_planted_part_file_of_another_owner_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("raft.bak.part");
        let planted = std::fs::File::create(&part).unwrap();
        let planted_inode = planted.metadata().unwrap().ino();
        let mut f = create_private(&part).unwrap();
        f.write_all(b"backup bytes").unwrap();
        let now = std::fs::metadata(&part).unwrap();
        assert_ne!(now.ino(), planted_inode, "the planted file was reused");
        assert_eq!(planted.metadata().unwrap().len(), 0, "written into it");
    }
}
