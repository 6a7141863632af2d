//! Test fixtures built ahead of time on the host, so the tests that use them run the same way
//! on the host tier and in the VM (whose initramfs has no compiler).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::cmd;

/// The environment variable naming the opener for `tests/tests/attacks.rs`.
pub const OPENER_ENV: &str = "PHIGUARD_OPENER";

/// Builds `tests/fixtures/opener.c` (static, without PIE: see its header) into
/// `target/fixtures/opener` when the source is newer, and returns the binary's path.
pub fn opener() -> anyhow::Result<PathBuf> {
    let source = cmd::workspace_root().join("tests/fixtures/opener.c");
    let dir = cmd::target_dir().join("fixtures");
    let binary = dir.join("opener");
    let modified = |p: &PathBuf| fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(written)) = (modified(&binary), modified(&source)) {
        if built >= written {
            return Ok(binary);
        }
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = Command::new("gcc")
        .args(["-O1", "-no-pie", "-static", "-o"])
        .arg(&binary)
        .arg(&source)
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
