//! Compiles `phiguard/v1/*.proto` with the pure-Rust `protox` (no system `protoc`), then
//! generates prost types and their canonical proto3 JSON (serde) implementations.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["phiguard/v1/event.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.extern_path(".google.protobuf.Timestamp", "::pbjson_types::Timestamp");
    config.compile_fds(descriptors.clone())?;
    let descriptor_bytes = prost::Message::encode_to_vec(&descriptors);
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .out_dir(&out_dir)
        .build(&[".phiguard"])?;
    Ok(())
}
