//! `cargo xtask`: what cargo alone cannot do for phiguard — set up the eBPF toolchain and
//! test packages, run the agent as root, run every test tier, run the tests again on a
//! second kernel (with BPF LSM) in a VM, and make development certificates.

mod bench;
mod bench_db;
mod certs;
mod cmd;
mod fixtures;
mod fuzz;
mod initramfs;
mod package;
mod package_collector;
mod run;
mod setup;
mod systemd;
mod test;
mod vm;
mod vm_kernel;

use clap::{Parser, Subcommand};

/// phiguard developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: rust-src for nightly, bpf-linker, Debian packages.
    Setup,
    /// Set up, then build the agent (with its embedded eBPF programs) in release mode.
    Build,
    /// Set up, build, and run the agent with the repository's agent.toml (root needed).
    Run {
        /// Extra arguments for `phiguard run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test tier: fmt, clippy, unit, host (root needed), vm, bench.
    Test(test::TestArgs),
    /// Run the privileged tests inside QEMU on Debian's 6.12 kernel (BPF LSM).
    Vm(vm::VmArgs),
    /// Build the agent's and the collector's Debian packages (target/package/*.deb).
    Package {
        /// Then install both into a fresh root, check their layout, verify the systemd units
        /// and remove them again (the package tier of `cargo xtask test`; root needed).
        #[arg(long)]
        check: bool,
    },
    /// Install both packages in a booted Debian 12 (systemd-nspawn) and run them as services:
    /// the systemd tier of `cargo xtask test` (root needed).
    Systemd,
    /// Measure the agent's overhead and throughput against a baseline in the same run.
    Bench(bench::BenchArgs),
    /// One benchmark loop in a fresh process (run by `bench`; prints ns per operation).
    #[command(hide = true)]
    BenchLoop(bench::LoopArgs),
    /// Make a development CA, a collector certificate and agent certificates in DIR.
    Certs(certs::CertsArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::setup(),
        Task::Build => {
            setup::setup()?;
            run::build()
        }
        Task::Run { args } => run::run(&args),
        Task::Test(args) => test::test(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::BenchLoop(args) => bench::bench_loop(&args),
        Task::Package { check } => {
            setup::setup()?;
            if check {
                package::test()
            } else {
                package::package()?;
                package_collector::package().map(|_| ())
            }
        }
        Task::Vm(args) => vm::vm(&args),
        Task::Systemd => {
            setup::setup()?;
            let mut counts = cmd::Counts::default();
            let result = systemd::test(&mut counts);
            println!("tests: {} passed, {} failed", counts.passed, counts.failed);
            result
        }
        Task::Certs(args) => certs::certs(&args),
    }
}
