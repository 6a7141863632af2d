//! Compiles `agent-ebpf` for the BPF target with the nightly toolchain (through aya-build) so
//! that `cargo build` embeds the kernel programs in the `phiguard` binary.
//!
//! `AYA_BUILD_SKIP=1` skips the BPF build for tooling that must not need bpf-linker (clippy,
//! unit tests of pure modules); the binary then refuses to load with a clear error.
//!
//! The benchmark's empty programs are an object of their own (`phiguard-floor`), built only
//! with the `bench-floor` feature; without it an empty placeholder is embedded and
//! `phiguard bench-floor` says how to get them.

use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

/// The nightly the project builds BPF with (see TOOLCHAIN in the README).
const BPF_TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("phiguard");
    let floor = out_dir.join("phiguard-floor");
    let with_floor = env::var_os("CARGO_FEATURE_BENCH_FLOOR").is_some();
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip || !with_floor {
        // Replaced by the real floor object below when the feature is on.
        fs::write(&floor, b"").context("writing the empty floor placeholder")?;
    }
    if skip {
        // An empty object: `kernel::loader` reports "built with AYA_BUILD_SKIP" instead of
        // failing obscurely.
        fs::write(&object, b"").context("writing the empty eBPF placeholder")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let metadata = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = PathBuf::from(metadata)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path to agent-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "phiguard-ebpf",
            root_dir: root,
            features: if with_floor { &["floor"] } else { &[] },
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(BPF_TOOLCHAIN),
    )
    .context("building the eBPF programs; run `cargo xtask setup` first if bpf-linker or rust-src is missing")
}
