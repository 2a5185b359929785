//! `raft-bench`: replication throughput and election latency of real
//! raft-node clusters, side by side with etcd. See `raft-bench --help` and
//! raft-bench's README.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = raft_bench::cli::Cli::parse();
    if let Err(e) = raft_bench::cli::main(cli).await {
        eprintln!("raft-bench: error: {e:#}");
        std::process::exit(1);
    }
}
