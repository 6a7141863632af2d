//! The fuzz tier: each decoder's cargo-fuzz target (`agent/fuzz`) for a short run.
//!
//! libFuzzer needs nightly; `cargo xtask setup` installs `cargo-fuzz`. Without a sanitizer
//! (`-s none`): the decoders are safe Rust, so what a run looks for is a panic (which libFuzzer
//! reports as a crash, with the input saved under `agent/fuzz/artifacts/`).

use std::process::Command;

use crate::cmd;

/// The targets, one per decoder: PostgreSQL, its framed capture records, MySQL, the SQL lexers
/// and the argv redactor.
pub const TARGETS: &[&str] = &["postgres", "framed", "mysql", "sql", "argv"];

/// Runs every target for `seconds`; fails at the first crash.
pub fn run(seconds: u32) -> anyhow::Result<()> {
    let dir = cmd::workspace_root().join("agent/fuzz");
    for target in TARGETS {
        println!("fuzz: {target}, {seconds} s");
        cmd::run(
            Command::new("rustup")
                .args([
                    "run", "nightly", "cargo", "fuzz", "run", "-s", "none", target,
                ])
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                // The decoders need no kernel programs: the agent's build script skips the BPF
                // build (a minute of the tier) and embeds an empty object.
                .env("AYA_BUILD_SKIP", "1")
                .current_dir(&dir),
        )?;
    }
    Ok(())
}
