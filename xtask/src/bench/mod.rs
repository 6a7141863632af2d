//! `cargo xtask bench`: what the agent costs, measured against a baseline, the hook floor and
//! auditd in the same invocation; how many events per second it takes without loss; what it
//! uses at a steady rate; and the collector link's ingest rate and latency. Results print as
//! tables and are saved as JSON under `target/bench/` with the kernel, CPU count, commit and
//! load average, so two runs can be compared.

mod auditd;
mod cleanup;
mod compare;
mod e2e;
mod load;
mod preflight;
mod services;
mod setting;
mod worker;
mod workloads;

pub use services::ServiceGroups;
pub use worker::{bench_loop, LoopArgs};

use std::{fs, process::Command};

use anyhow::bail;
use serde_json::json;

use crate::{cmd, setup};

/// Every benchmark, in the order a full run takes them.
const ALL: &[&str] = &[
    "open",
    "exec",
    "connect",
    "pgbench",
    "throughput",
    "cost",
    "e2e",
    "db",
];

/// Which benchmarks.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `open`, `exec`, `connect`, `pgbench`, `throughput`, `cost`, `e2e` (agent → collector →
    /// subscriber), `db` (the database hooks on a file read/write loop), or all when omitted;
    /// `pgbench-clients`: only the 8-client part of `pgbench`.
    name: Option<String>,
    /// Fewer, shorter rounds (for CI: proves the benchmarks run, not what they measure).
    #[arg(long)]
    quick: bool,
}

impl BenchArgs {
    /// Every benchmark, in quick mode.
    pub fn quick() -> BenchArgs {
        BenchArgs {
            name: None,
            quick: true,
        }
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn commit() -> String {
    let root = cmd::workspace_root();
    let hash = cmd::output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(&root),
    )
    .unwrap_or_default();
    let dirty = cmd::output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&root),
    )
    .is_some_and(|s| !s.trim().is_empty());
    format!("{}{}", hash.trim(), if dirty { "-dirty" } else { "" })
}

/// Builds the release agent and, for `e2e`, the collector and `e2e-bench`, before the clock
/// starts: in one cargo invocation, which builds what they share once and the rest in parallel
/// (from a cold target directory 4.6 min here, against 6 min as two invocations).
fn build(e2e: bool) -> anyhow::Result<()> {
    let mut cargo = cmd::cargo();
    // `bench-floor`: the empty programs of the hook floor, an object the product leaves out.
    cargo.args([
        "build",
        "--release",
        "-p",
        "phiguard-agent",
        "--bin",
        "phiguard",
        "--features",
        "phiguard-agent/bench-floor",
    ]);
    if e2e {
        cargo.args([
            "-p",
            "phiguard-collector",
            "--bin",
            "phiguard-collector",
            "-p",
            "phiguard-tests",
            "--bin",
            "e2e-bench",
        ]);
    }
    cmd::run(&mut cargo)
}

/// Runs the selected benchmarks and saves the results.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("benchmarks load the agent's eBPF programs: run as root (sudo -E env \"PATH=$PATH\" cargo xtask bench)");
    }
    let names: Vec<&str> = match args.name.as_deref() {
        None => ALL.to_vec(),
        Some(name) if ALL.contains(&name) || name == "pgbench-clients" => vec![name],
        Some(other) => bail!("unknown benchmark {other}: one of {}", ALL.join(", ")),
    };
    preflight::no_other_agent()?;
    setup::setup()?;
    build(names.contains(&"e2e"))?;
    // From here on, Ctrl-C restores the machine (auditd, rules, sysctls, pins) before exiting.
    cleanup::on_signals_undo_all();
    let started = std::time::Instant::now();
    let load_at_start = load_average();
    let scratch = workloads::Scratch::new()?;
    let rules = auditd::AuditRules::equivalent_to_watches(&scratch.watched_dir());
    let mut results = serde_json::Map::new();
    let mut took = Vec::new();
    for name in names {
        let began = std::time::Instant::now();
        let mut result = match name {
            "open" => workloads::open(&scratch, &rules, args.quick)?,
            "exec" => workloads::exec(&scratch, &rules, args.quick)?,
            "connect" => workloads::connect(&scratch, &rules, args.quick)?,
            "pgbench" => workloads::pgbench(&scratch, &rules, args.quick)?,
            "pgbench-clients" => workloads::pgbench_clients_only(&scratch, args.quick)?,
            "throughput" => load::throughput(&scratch, args.quick)?,
            "cost" => load::cost(&scratch, args.quick)?,
            "e2e" => e2e::e2e(args.quick)?,
            _ => crate::bench_db::bench_db(&scratch.root, args.quick)?,
        };
        let seconds = began.elapsed().as_secs_f64();
        result["wall_seconds"] = json!(seconds);
        took.push(format!("{name} {seconds:.0} s"));
        results.insert(name.to_owned(), result);
    }
    let report = json!({
        "kernel": cmd::output(Command::new("uname").arg("-r")).unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "commit": commit(),
        "quick": args.quick,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "seconds": started.elapsed().as_secs_f64(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "benchmarks": results,
    });
    let dir = cmd::target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let file = dir.join(format!("bench-{}.json", report["unix_time"]));
    fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    println!(
        "\nload average (1/5/15 min) at start {load_at_start}, at end {}; {:.0} s ({})",
        report["load_average_at_end"].as_str().unwrap_or(""),
        started.elapsed().as_secs_f64(),
        took.join(", ")
    );
    println!("results: {}", file.display());
    Ok(())
}
