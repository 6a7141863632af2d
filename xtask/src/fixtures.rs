//! Test fixtures built ahead of time on the host, so the tests that use them run the same way
//! on the host tier and in the VM (whose initramfs has no compiler).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::cmd;

/// The environment variable naming the opener for `tests/tests/attacks.rs`.
pub const OPENER_ENV: &str = "PHIGUARD_OPENER";

/// The environment variable naming the directory of the subject tests' fixtures
/// (`tests/tests/subjects.rs`).
pub const SUBJECTS_ENV: &str = "PHIGUARD_FIXTURES";

/// The subject tests' fixtures as (file name, source in `tests/fixtures/`, `gcc` arguments):
/// the same list `tests/tests/subjects.rs` builds from when [`SUBJECTS_ENV`] is unset.
const SUBJECT_FIXTURES: &[(&str, &str, &[&str])] = &[
    (
        "forge",
        "forge.c",
        &["-static", "-fno-stack-protector", "-fcf-protection=none"],
    ),
    ("preload.so", "preload.c", &["-shared", "-fPIC"]),
    ("plugin.so", "preload.c", &["-shared", "-fPIC"]),
    ("plugin_host", "plugin_host.c", &["-ldl"]),
    ("holder", "holder.c", &[]),
    ("thief", "thief.c", &[]),
    ("receiver", "receiver.c", &[]),
    ("ptracer", "ptracer.c", &[]),
    ("service", "service.c", &[]),
    ("peek", "peek.c", &[]),
];

/// Builds `tests/fixtures/opener.c` (static, without PIE: see its header) into
/// `target/fixtures/opener` when the source is newer, and returns the binary's path.
pub fn opener() -> anyhow::Result<PathBuf> {
    let dir = cmd::target_dir().join("fixtures");
    build(
        &dir,
        "opener",
        "opener.c",
        &["-O1", "-no-pie", "-static", "-pthread"],
    )
}

/// Builds the subject tests' fixtures into `target/fixtures/subjects/` (each when its source is
/// newer) and returns that directory.
pub fn subjects() -> anyhow::Result<PathBuf> {
    let dir = cmd::target_dir().join("fixtures/subjects");
    for (name, source, args) in SUBJECT_FIXTURES {
        let mut all = vec!["-O2"];
        all.extend_from_slice(args);
        build(&dir, name, source, &all)?;
    }
    Ok(dir)
}

/// Builds `tests/fixtures/SOURCE` into `dir/NAME` with `gcc ARGS` unless it is newer than the
/// source; returns its path.
fn build(dir: &Path, name: &str, source: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let source = cmd::workspace_root().join("tests/fixtures").join(source);
    let binary = dir.join(name);
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(written)) = (modified(&binary), modified(&source)) {
        if built >= written {
            return Ok(binary);
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Arguments after the source, where libraries (`-ldl`) must come.
    let out = Command::new("gcc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .args(args)
        .output()
        .context("running gcc (package gcc, with libc6-dev for the static C library)")?;
    if !out.status.success() {
        bail!(
            "building {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(binary)
}
