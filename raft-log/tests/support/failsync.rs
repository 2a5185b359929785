//! Builds `failsync.c`, a preload library that makes a process's flushes
//! (`fsync`, `fdatasync`, `syncfs`, `sync_file_range`) fail with EIO while a
//! trigger file exists: a disk that reports an I/O error, for the tests of
//! what a failed fsync does to the log and to a node.
//!
//! Shared by raft-log's and raft-node's tests (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The library's C source.
const SOURCE: &str = include_str!("failsync.c");

/// A built library.
pub struct FailSync {
    /// The shared library to put in `LD_PRELOAD`.
    pub library: PathBuf,
}

impl FailSync {
    /// Compiles the library into `dir` with the system's C compiler (`cc`,
    /// else `clang` or `gcc`). Panics, saying why, when none works: the
    /// test that needs it must not pass without it.
    pub fn build(dir: &Path) -> Self {
        let src = dir.join("failsync.c");
        let library = dir.join("libfailsync.so");
        std::fs::write(&src, SOURCE).expect("writing failsync.c");
        let mut errors = Vec::new();
        for cc in ["cc", "clang", "gcc"] {
            match Command::new(cc)
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&library)
                .arg(&src)
                .arg("-ldl")
                .output()
            {
                Ok(out) if out.status.success() => return Self { library },
                Ok(out) => errors.push(format!(
                    "{cc}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => errors.push(format!("{cc}: {e}")),
            }
        }
        panic!(
            "no C compiler could build the fsync-failure library (scripts/deps.sh installs \
             clang): {errors:?}"
        );
    }

    /// The environment of a child process whose flushes fail while
    /// `trigger` exists.
    pub fn env(&self, trigger: &Path) -> Vec<(String, PathBuf)> {
        vec![
            ("LD_PRELOAD".to_string(), self.library.clone()),
            ("FAILSYNC_TRIGGER".to_string(), trigger.to_path_buf()),
        ]
    }

    /// The environment of a child process whose flushes block while
    /// `trigger` exists (a disk that hangs), and go on once it is removed.
    #[allow(dead_code)] // raft-log's tests use only `env`
    pub fn env_hang(&self, trigger: &Path) -> Vec<(String, PathBuf)> {
        let mut env = self.env(trigger);
        env.push(("FAILSYNC_MODE".to_string(), PathBuf::from("hang")));
        env
    }
}
