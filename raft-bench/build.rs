//! Compiles raft-node's copy of etcd's v3 API (`../raft-node/proto/etcd`)
//! into a gRPC client for the load generator's `--protocol grpc`, with the
//! crates raft-node's own build script uses: `protox` (a protobuf compiler
//! in pure Rust: no `protoc` needed) and `tonic-prost-build` (client stubs
//! only, no transport: the load generator brings its own HTTP/2
//! connection).

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
        // Keys and values as `Bytes`: a client's value is shared by every
        // request it sends, not copied into each.
        .bytes(".")
        // The .proto comments are etcd's docs, not rustdoc (no doctests).
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
