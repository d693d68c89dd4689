//! Build steps: embeds the migrations (sqlx) and generates the protobuf types of
//! `schemas/proto/` with prost, compiled by protox (pure Rust: no `protoc` needed).

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `sqlx::migrate!` embeds the files at compile time.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=schemas/proto");
    let proto_dir = Path::new("schemas/proto");
    let descriptors = protox::compile([proto_dir.join("user_event.proto")], [proto_dir])?;
    prost_build::Config::new()
        // Deterministic field order for maps in Debug output and tests.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
