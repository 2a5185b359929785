//! The harness's typed error: what went wrong while setting up, driving or
//! tearing down a chaos run (as opposed to a *violation*, which is a finding
//! about the system under test and is reported in the run summary).

use std::path::PathBuf;

/// An error of the harness itself.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The machine cannot run the harness: not root, no network namespaces,
    /// a tool missing and not installable.
    #[error("environment not supported: {0}")]
    Unsupported(String),
    /// A system command (`ip`, `nft`, `tc`, ...) failed.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the reader.
        command: String,
        /// Its exit status, or how it could not be started.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Development certificates could not be created.
    #[error("creating certificates: {0}")]
    Certs(#[from] raft_net_quic::certs::CertError),
    /// The cluster did not get to a state the harness waits for (a leader,
    /// convergence) in time, or a node process could not be started.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A JSON document could not be written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl ChaosError {
    /// An [`ChaosError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ChaosError::Io { path, source }
    }
}
