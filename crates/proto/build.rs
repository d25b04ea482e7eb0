//! Compiles `proto/*.proto` with protox (pure Rust), so building imcloud never
//! needs a `protoc` binary on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [proto_dir.join("cloud.proto"), proto_dir.join("logic.proto")];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&proto_dir])?;
    // No generated `XxxClient::connect` constructors: logic's `Connect` RPC
    // would collide with one. Callers build a `Channel` and use `new`.
    // Every `bytes` field is a `bytes::Bytes`: a push body travels from the
    // HTTP request to the cloud node's socket without being copied.
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
