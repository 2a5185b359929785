//! Compiles etcd's v3 API (`proto/etcd/*.proto`) into Rust with `protox`
//! (a protobuf compiler in pure Rust: no `protoc` needed) and
//! `tonic-prost-build` (server stubs only; raft-node is no etcd client).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcd/kv.proto",
        "proto/etcd/rpc.proto",
        "proto/etcd/auth.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Methods not written out answer `Unimplemented` (Watch, Lease).
        .generate_default_stubs(true)
        // The .proto comments are etcd's docs, not rustdoc (no doctests).
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
