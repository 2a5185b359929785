//! Compiles raft-node's copy of etcd's v3 API (`../raft-node/proto/etcd`)
//! into the gRPC client the gRPC watchers use, as raft-bench's build script
//! does: `protox` (a protobuf compiler in pure Rust: no `protoc` needed)
//! and `tonic-prost-build` (client stubs only, no transport: a watcher
//! opens its own HTTP/2 connection to each member it follows).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../raft-node/proto/etcd";
    let files = [
        "../raft-node/proto/etcd/kv.proto",
        "../raft-node/proto/etcd/rpc.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, [dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        // The .proto comments are etcd's docs, not rustdoc (no doctests).
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
