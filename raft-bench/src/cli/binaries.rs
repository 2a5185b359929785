//! Where the server binaries come from: the path given, next to this
//! executable, `PATH`, or (etcd) Debian's package.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::System;

/// Finds the server binary: the given path, else (for raft-node) next to
/// this executable, else on `PATH`.
///
/// # Errors
///
/// When it is nowhere, with the command that builds or installs it.
pub fn find_binary(system: System, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if p.exists() {
            return Ok(p.to_owned());
        }
        bail!("{} does not exist", p.display());
    }
    let name = match system {
        System::Raft => "raft-node",
        System::Etcd => "etcd",
    };
    if system == System::Raft {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
        {
            let p = dir.join(name);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    match system {
        System::Raft => bail!(
            "raft-node not found next to raft-bench or on PATH; build both with \
             `cargo build --release -p raftkv-node -p raftkv-bench` or pass --raft-node PATH"
        ),
        System::Etcd => bail!(
            "etcd not found on PATH; install Debian's etcd-server \
             (`apt-get install -y etcd-server`, or run with --install) or pass --etcd PATH"
        ),
    }
}

/// Installs Debian's etcd-server and stops the system service the package
/// starts (the benchmark runs its own members).
///
/// # Errors
///
/// When apt-get fails.
pub fn install_etcd() -> anyhow::Result<()> {
    eprintln!("installing etcd-server with apt-get ...");
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (install etcd-server yourself, or pass --etcd PATH)")?;
        if !st.success() {
            bail!("apt-get {} failed ({st})", args.join(" "));
        }
        Ok(())
    };
    run(&["install", "-y", "etcd-server"]).or_else(|_| {
        run(&["update"])?;
        run(&["install", "-y", "etcd-server"])
    })?;
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "etcd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(())
}
