//! Compiles `proto/worker.proto` (the served gRPC API) and the first
//! version's schema kept in `tests/proto/` (the compatibility tests' client)
//! with `protox`, a protobuf compiler in pure Rust: building needs no `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut served = protox::Compiler::new(["proto"])?;
    served
        .include_imports(true)
        .include_source_info(true)
        .open_file("worker.proto")?;
    // For server reflection (`grpcurl list`, `describe`).
    std::fs::write(
        out.join("worker_descriptor.bin"),
        served.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(served.file_descriptor_set())?;

    // Same package name, so it goes to a directory of its own.
    let original_dir = out.join("original");
    std::fs::create_dir_all(&original_dir)?;
    let original = protox::compile(["original_worker.proto"], ["tests/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&original_dir)
        .compile_fds(original)?;

    println!("cargo:rerun-if-changed=proto/worker.proto");
    println!("cargo:rerun-if-changed=tests/proto/original_worker.proto");
    Ok(())
}
