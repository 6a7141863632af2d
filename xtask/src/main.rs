//! `cargo xtask`: what cargo alone cannot do for phiguard — set up the eBPF toolchain and
//! test packages, run the agent as root, and run every test tier.

mod bench;
mod cmd;
mod run;
mod setup;
mod test;

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
    /// Set up, then run every test tier: fmt, clippy, unit, host (root needed).
    Test(test::TestArgs),
    /// Measure the agent's overhead and throughput against a baseline in the same run.
    Bench(bench::BenchArgs),
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
    }
}
