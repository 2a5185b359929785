//! A 3-node cluster serving etcd's gRPC API, for the `etcd-client` tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use etcd_client::{Client, ConnectOptions};

use super::{cluster_with_env, free_tcp, leader, Proc};

pub const USER: &str = "user-token-0123456789abcdef";
pub const ADMIN: &str = "admin-token-0123456789abcdef";

/// A cluster whose node `i` serves gRPC at `grpc[i]`.
pub struct Cluster {
    pub procs: Vec<Proc>,
    pub grpc: Vec<SocketAddr>,
    pub leader: u64,
}

impl Cluster {
    pub async fn start(dir: &Path, extra: &[String]) -> Self {
        let grpc: Vec<SocketAddr> = (0..3).map(|_| free_tcp()).collect();
        let listen = grpc.clone();
        let procs = cluster_with_env(dir, 3, extra, &[], "http", move |id| {
            let addr = listen[usize::try_from(id - 1).unwrap()];
            vec![("RAFT_GRPC_LISTEN".into(), PathBuf::from(addr.to_string()))]
        });
        let mut http = super::builder_of(&procs);
        if extra.iter().any(|a| a.starts_with("--admin-token-file")) {
            http = http.token(ADMIN);
        }
        let leader = leader(&http.build().unwrap(), &procs, None).await;
        Self {
            procs,
            grpc,
            leader,
        }
    }

    /// The gRPC address of node `id`.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.grpc[usize::try_from(id - 1).unwrap()]
    }

    /// A follower's id.
    pub fn follower(&self) -> u64 {
        (1..=3).find(|id| *id != self.leader).unwrap()
    }

    pub async fn client(&self, id: u64, opts: Option<ConnectOptions>) -> Client {
        let url = format!("http://{}", self.addr(id));
        Client::connect([url], opts)
            .await
            .expect("etcd-client connects")
    }
}
