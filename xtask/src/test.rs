//! `cargo xtask test`: every test tier, in order, stopping at the first failure.

use std::time::Instant;

use anyhow::bail;

use crate::{bench, cmd, fixtures, fuzz, package, setup, systemd, vm};

/// Seconds each fuzz target runs in the fuzz tier.
const FUZZ_SECONDS: u32 = 20;

/// Which tiers to run.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Only formatting, clippy and unit tests (no root needed).
    #[arg(long, conflicts_with_all = ["host", "vm"])]
    unit: bool,
    /// Only the host tier (root needed).
    #[arg(long, conflicts_with = "vm")]
    host: bool,
    /// Only the VM tier: the privileged tests again, in QEMU on Debian's 6.12 kernel (and the
    /// attack and subject tests on Debian 12's own 6.1).
    #[arg(long)]
    vm: bool,
}

/// Runs the selected tiers and prints a summary line: each tier's outcome and seconds.
pub fn test(args: &TestArgs) -> anyhow::Result<()> {
    let mut summary = Summary::default();
    summary.run("setup", |_| setup::setup())?;
    let mut tiers: Vec<(&str, Vec<&str>)> = Vec::new();
    if !args.host && !args.vm {
        tiers.push(("fmt", vec!["fmt", "--all", "--", "--check"]));
        tiers.push((
            "clippy",
            vec![
                "clippy",
                "--workspace",
                "--exclude",
                "phiguard-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ));
        // The kernel programs build only for the BPF target, with nightly's `build-std`.
        tiers.push((
            "clippy-ebpf",
            vec![
                "clippy",
                "-p",
                "phiguard-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ],
        ));
        tiers.push((
            "unit",
            vec![
                "test",
                "--workspace",
                "--exclude",
                "phiguard-ebpf",
                "--exclude",
                "phiguard-tests",
            ],
        ));
    }
    if !args.unit && !args.vm {
        tiers.push((
            "host",
            vec!["test", "-p", "phiguard-tests", "--", "--test-threads=1"],
        ));
    }
    for (name, cargo_args) in tiers {
        println!("== tier {name}: cargo {}", cargo_args.join(" "));
        summary.run(name, |counts| cargo_tier(name, &cargo_args, counts))?;
    }
    if !args.host && !args.vm {
        // Each decoder's fuzz target, briefly: a panic on some input fails the run.
        println!("== tier fuzz: cargo +nightly fuzz run (agent/fuzz), {FUZZ_SECONDS} s per target");
        summary.run("fuzz", |_| fuzz::run(FUZZ_SECONDS))?;
    }
    if !args.unit && !args.vm {
        // The Debian package: installed into a fresh root, units verified, removed.
        println!("== tier package: cargo xtask package, dpkg -i/-r --root, systemd-analyze");
        summary.run("package", |_| package::test())?;
        // Both packages as services under a real systemd (Debian 12 in systemd-nspawn).
        println!("== tier systemd: both packages installed and run under systemd 252 (nspawn)");
        summary.run("systemd", systemd::test)?;
    }
    if !args.unit && !args.host {
        // The same privileged tests on a second kernel, with BPF LSM (see vm.rs).
        println!("== tier vm: cargo xtask vm (QEMU/TCG, Debian's 6.12 kernel)");
        summary.run("vm", |counts| vm::run_tier(&vm::VmArgs::all(), counts))?;
    }
    if !args.unit && !args.vm {
        // The benchmarks must keep running (their numbers are not checked here).
        println!("== tier bench: cargo xtask bench --quick");
        summary.run("bench", |_| bench::bench(&bench::BenchArgs::quick()))?;
    }
    summary.print(false);
    Ok(())
}

/// Runs one cargo tier (`fmt`, `clippy`, `clippy-ebpf`, `unit`, `host`), counting the tests
/// of a `cargo test`.
fn cargo_tier(name: &str, cargo_args: &[&str], counts: &mut cmd::Counts) -> anyhow::Result<()> {
    if name == "host" && !cmd::is_root() {
        bail!("host-tier tests load eBPF programs into the kernel and need root: sudo -E env \"PATH=$PATH\" cargo xtask test");
    }
    let mut command = if name == "clippy-ebpf" {
        let mut nightly = std::process::Command::new("rustup");
        nightly
            .args(["run", "nightly", "cargo"])
            .current_dir(cmd::workspace_root().join("agent-ebpf"))
            // The stable toolchain's, set by the cargo that runs xtask.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTUP_TOOLCHAIN");
        nightly
    } else {
        cmd::cargo()
    };
    command.args(cargo_args).env("RUST_BACKTRACE", "1");
    if name == "clippy" {
        // Linting the user-space crates needs no kernel programs (clippy-ebpf lints those):
        // the agent's build script skips the BPF build and embeds an empty object.
        command.env("AYA_BUILD_SKIP", "1");
    }
    if name == "host" {
        // The binary and e2e tests run target/debug/phiguard and phiguard-collector.
        cmd::run(cmd::cargo().args([
            "build",
            "-p",
            "phiguard-agent",
            "--bin",
            "phiguard",
            "-p",
            "phiguard-collector",
            "--bin",
            "phiguard-collector",
        ]))?;
        command.env("PHIGUARD_BIN", cmd::target_dir().join("debug/phiguard"));
        command.env(fixtures::OPENER_ENV, fixtures::opener()?);
        command.env(fixtures::SUBJECTS_ENV, fixtures::subjects()?);
        command.env(
            "PHIGUARD_COLLECTOR_BIN",
            cmd::target_dir().join("debug/phiguard-collector"),
        );
    }
    if cargo_args[0] == "test" {
        cmd::run_counting(&mut command, counts)
    } else {
        cmd::run(&mut command)
    }
}

/// Each tier run so far: its outcome and how long it took, and the tests counted.
#[derive(Default)]
struct Summary {
    tiers: Vec<String>,
    started: Option<Instant>,
    counts: cmd::Counts,
}

impl Summary {
    /// Runs `tier`, recording its outcome and time; on failure prints the summary and returns
    /// the error.
    fn run(
        &mut self,
        name: &str,
        tier: impl FnOnce(&mut cmd::Counts) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.started.get_or_insert_with(Instant::now);
        let started = Instant::now();
        let result = tier(&mut self.counts);
        let outcome = if result.is_ok() { "ok" } else { "FAILED" };
        self.tiers.push(format!(
            "{name} {outcome} ({} s)",
            started.elapsed().as_secs()
        ));
        if result.is_err() {
            self.print(true);
        }
        result
    }

    /// Prints the tiers' outcomes and times, and the test counts (a failure counts at least
    /// one failed test).
    fn print(&self, failed: bool) {
        let counts = &self.counts;
        let total = self.started.map_or(0, |s| s.elapsed().as_secs());
        println!("test summary: {} — {total} s", self.tiers.join(", "));
        let failed_tests = if failed {
            counts.failed.max(1)
        } else {
            counts.failed
        };
        println!("tests: {} passed, {failed_tests} failed", counts.passed);
    }
}
