//! Before any benchmark: no other phiguard may have programs in the kernel. A running agent
//! (the systemd service on a server, one left from a test) or enforcement one left pinned
//! would run its hooks in every setting, the baseline included, and every ratio would be off
//! without a sign of it.

use std::{fs, path::Path};

use anyhow::bail;

/// Where an agent pins the links of the enforcement that outlives it
/// (`agent/src/kernel/pins.rs`).
const PINNED_LINKS: &str = "/sys/fs/bpf/phiguard/links";

/// The pids of running `phiguard` processes.
fn running_agents() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "phiguard")
        })
        .collect()
}

/// Fails, saying what to stop, when another phiguard has programs in the kernel.
pub fn no_other_agent() -> anyhow::Result<()> {
    let running = running_agents();
    if !running.is_empty() {
        bail!(
            "phiguard is running (pid {}): its programs would run in every setting, the baseline \
             included; stop it first (`systemctl stop phiguard`, or end the process)",
            running
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let pinned = fs::read_dir(Path::new(PINNED_LINKS))
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0);
    if pinned > 0 {
        bail!(
            "enforcement a phiguard agent left pinned is in the kernel ({pinned} links in \
             {PINNED_LINKS}): its programs would run in every setting; remove it first (`phiguard \
             unload`)"
        );
    }
    Ok(())
}
