//! Compiles `phiguard/v1/*.proto` with the pure-Rust `protox` (no system `protoc`), then
//! generates prost types, the tonic client and server for the collector service, and the
//! messages' canonical proto3 JSON (serde) implementations.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["phiguard/v1/event.proto", "phiguard/v1/collector.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .extern_path(".google.protobuf.Timestamp", "::pbjson_types::Timestamp")
        .out_dir(&out_dir)
        .compile_fds(descriptors.clone())?;
    let descriptor_bytes = prost::Message::encode_to_vec(&descriptors);
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .out_dir(&out_dir)
        .build(&[".phiguard"])?;
    Ok(())
}
