//! `cargo xtask build` and `cargo xtask run`.

use std::os::unix::process::CommandExt as _;

use anyhow::bail;

use crate::{cmd, setup};

/// Builds the agent (and, through its build script, the eBPF programs) in release mode.
pub fn build() -> anyhow::Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "phiguard-agent"]))
}

/// Sets up, builds and replaces this process with `phiguard run --config agent.toml ARGS`, so
/// Ctrl-C and SIGTERM reach the agent directly.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("phiguard loads eBPF programs: run as root (sudo -E env \"PATH=$PATH\" cargo xtask run)");
    }
    setup::setup()?;
    build()?;
    let root = cmd::workspace_root();
    let error = std::process::Command::new(cmd::target_dir().join("release/phiguard"))
        .arg("run")
        .arg("--config")
        .arg(root.join("agent.toml"))
        .args(args)
        .exec();
    bail!("starting target/release/phiguard: {error}")
}
