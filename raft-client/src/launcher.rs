//! [`NodeCommand`]: the one builder of `raft-node run` command lines, for
//! everything that starts nodes as processes (`raft-node dev`, the
//! multi-process tests, raft-bench, raft-chaos). Feature `launcher`.
//!
//! ```
//! use raft_client::launcher::{initial_cluster, NodeCommand};
//!
//! let cluster = initial_cluster([(1, "127.0.0.1:7001", "127.0.0.1:8081")]);
//! let args = NodeCommand::new(1, "data/node-1")
//!     .listen("127.0.0.1:8081", "127.0.0.1:7001")
//!     .dev_certs("certs")
//!     .initial_cluster(cluster)
//!     .tick_ms(20)
//!     .to_args();
//! assert_eq!(args[0], "run");
//! assert!(args.contains(&"--tls-cert=certs/node-1.pem".to_string()));
//! assert!(args.contains(&"--initial-cluster=1=127.0.0.1:7001/127.0.0.1:8081".to_string()));
//! ```

use std::ffi::OsStr;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// `ID=PEER_ADDR/CLIENT_ADDR,…`: the value of `--initial-cluster`.
pub fn initial_cluster<P: Display, C: Display>(
    members: impl IntoIterator<Item = (u64, P, C)>,
) -> String {
    members
        .into_iter()
        .map(|(id, peer, client)| format!("{id}={peer}/{client}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How a node finds its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bootstrap {
    /// `--initial-cluster=…`.
    Initial(String),
    /// `--join=URL`.
    Join(String),
}

/// The command line of `raft-node run` for one node. Every flag is written
/// `--name=value`; [`NodeCommand::flag`] and [`NodeCommand::arg`] add any
/// other setting, after the ones this type knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCommand {
    id: u64,
    data_dir: PathBuf,
    listen: Option<(String, String)>,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    bootstrap: Option<Bootstrap>,
    tick_ms: Option<u64>,
    election_ticks: Option<u64>,
    heartbeat_ticks: Option<u64>,
    extra: Vec<String>,
}

impl NodeCommand {
    /// Node `id`, its store in `data_dir`.
    pub fn new(id: u64, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            data_dir: data_dir.into(),
            listen: None,
            tls: None,
            bootstrap: None,
            tick_ms: None,
            election_ticks: None,
            heartbeat_ticks: None,
            extra: Vec::new(),
        }
    }

    /// The node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `--client-listen` (HTTP, `ip:port`) and `--peer-listen` (QUIC).
    pub fn listen(mut self, client: impl Display, peer: impl Display) -> Self {
        self.listen = Some((client.to_string(), peer.to_string()));
        self
    }

    /// `--tls-ca`, `--tls-cert` and `--tls-key`.
    pub fn tls(
        mut self,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls = Some((ca.into(), cert.into(), key.into()));
        self
    }

    /// The TLS files `raft-node certs` (or
    /// `raft_net_quic::certs::write_dev_certs`) writes in `dir`:
    /// `ca.pem`, `node-<id>.pem`, `node-<id>.key`.
    pub fn dev_certs(self, dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        let id = self.id;
        self.tls(
            dir.join("ca.pem"),
            dir.join(format!("node-{id}.pem")),
            dir.join(format!("node-{id}.key")),
        )
    }

    /// `--initial-cluster` (see [`initial_cluster`]); replaces a `join`.
    pub fn initial_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.bootstrap = Some(Bootstrap::Initial(cluster.into()));
        self
    }

    /// `--join=URL`; replaces an `initial_cluster`.
    pub fn join(mut self, url: impl Into<String>) -> Self {
        self.bootstrap = Some(Bootstrap::Join(url.into()));
        self
    }

    /// `--tick-ms`.
    pub fn tick_ms(mut self, ms: u64) -> Self {
        self.tick_ms = Some(ms);
        self
    }

    /// `--election-ticks`.
    pub fn election_ticks(mut self, ticks: u64) -> Self {
        self.election_ticks = Some(ticks);
        self
    }

    /// `--heartbeat-ticks`.
    pub fn heartbeat_ticks(mut self, ticks: u64) -> Self {
        self.heartbeat_ticks = Some(ticks);
        self
    }

    /// Any other flag, as `--name=value` (`name` without the dashes).
    pub fn flag(mut self, name: &str, value: impl Display) -> Self {
        self.extra.push(format!("--{name}={value}"));
        self
    }

    /// Any argument, as it is (`--insecure`, `--max-key-bytes=64`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Arguments, as they are.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// The flags of `raft-node run`, without the `run`.
    pub fn flags(&self) -> Vec<String> {
        let mut a = vec![
            format!("--id={}", self.id),
            format!("--data-dir={}", self.data_dir.display()),
        ];
        if let Some((client, peer)) = &self.listen {
            a.push(format!("--client-listen={client}"));
            a.push(format!("--peer-listen={peer}"));
        }
        match &self.bootstrap {
            Some(Bootstrap::Initial(c)) => a.push(format!("--initial-cluster={c}")),
            Some(Bootstrap::Join(url)) => a.push(format!("--join={url}")),
            None => {}
        }
        if let Some((ca, cert, key)) = &self.tls {
            a.push(format!("--tls-ca={}", ca.display()));
            a.push(format!("--tls-cert={}", cert.display()));
            a.push(format!("--tls-key={}", key.display()));
        }
        let numbers = [
            ("tick-ms", self.tick_ms),
            ("election-ticks", self.election_ticks),
            ("heartbeat-ticks", self.heartbeat_ticks),
        ];
        for (name, v) in numbers {
            if let Some(v) = v {
                a.push(format!("--{name}={v}"));
            }
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// The whole argument list: `run` and [`NodeCommand::flags`].
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["run".to_string()];
        a.extend(self.flags());
        a
    }

    /// A [`std::process::Command`] running `program` (the `raft-node`
    /// binary) with these arguments; stdio, environment and the like are
    /// the caller's to set.
    pub fn command(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.args(self.to_args());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_becomes_one_flag_in_a_fixed_order() {
        let args = NodeCommand::new(2, "/d/node-2")
            .listen("127.0.0.1:8082", "127.0.0.1:7002")
            .tls("/c/ca.pem", "/c/n.pem", "/c/n.key")
            .join("http://127.0.0.1:8081")
            .tick_ms(10)
            .election_ticks(15)
            .heartbeat_ticks(3)
            .flag("snapshot-entries", 64)
            .arg("--insecure")
            .to_args();
        assert_eq!(
            args,
            [
                "run",
                "--id=2",
                "--data-dir=/d/node-2",
                "--client-listen=127.0.0.1:8082",
                "--peer-listen=127.0.0.1:7002",
                "--join=http://127.0.0.1:8081",
                "--tls-ca=/c/ca.pem",
                "--tls-cert=/c/n.pem",
                "--tls-key=/c/n.key",
                "--tick-ms=10",
                "--election-ticks=15",
                "--heartbeat-ticks=3",
                "--snapshot-entries=64",
                "--insecure",
            ]
        );
    }

    #[test]
    fn the_initial_cluster_lists_every_member() {
        let c = initial_cluster([(1, "a:1", "b:1"), (2, "a:2", "b:2")]);
        assert_eq!(c, "1=a:1/b:1,2=a:2/b:2");
        let args = NodeCommand::new(1, "d").initial_cluster(c.clone()).flags();
        assert!(args.contains(&format!("--initial-cluster={c}")));
        assert!(!args.iter().any(|a| a.starts_with("--join")));
    }
}
