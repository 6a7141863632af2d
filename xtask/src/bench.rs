//! `cargo xtask bench`: what the agent costs, as ratios against a baseline measured in the same
//! invocation, how many events per second it sustains without loss, and the collector link's
//! ingest rate and latency. Results print as a table and are saved as JSON under
//! `target/bench/`.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

use crate::{cmd, run, setup};

/// Which benchmarks.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `open`, `throughput`, `e2e` (agent → collector → subscriber), `db`, or all when omitted.
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

/// A scratch tree: `watched/rec.txt` under the agent's watch, `plain/file.txt` outside it.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let root = std::env::temp_dir().join(format!("phiguard-bench-{}", std::process::id()));
        fs::create_dir_all(root.join("watched"))?;
        fs::create_dir_all(root.join("plain"))?;
        fs::create_dir_all(root.join("protected"))?;
        fs::create_dir_all(root.join("policies"))?;
        fs::write(root.join("watched/rec.txt"), "x")?;
        fs::write(root.join("plain/file.txt"), "x")?;
        fs::write(root.join("protected/rec.txt"), "x")?;
        // This process may read the protected file: the loop measures an allowed, audited open.
        let me = std::env::current_exe()?;
        fs::write(
            root.join("policies/bench.yaml"),
            format!(
                "name: bench\nmode: enforce\nrules:\n  - name: records\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n      - exe: {}\n",
                root.join("protected").display(),
                me.display()
            ),
        )?;
        Ok(Scratch { root })
    }
    fn policies(&self) -> PathBuf {
        self.root.join("policies")
    }
    fn protected_file(&self) -> PathBuf {
        self.root.join("protected/rec.txt")
    }
    fn watched_dir(&self) -> PathBuf {
        self.root.join("watched")
    }
    fn watched_file(&self) -> PathBuf {
        self.root.join("watched/rec.txt")
    }
    fn plain_file(&self) -> PathBuf {
        self.root.join("plain/file.txt")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The release agent running with JSON logs, its events discarded.
struct Agent {
    child: Child,
    stderr: BufReader<ChildStderr>,
    /// Enforcing: its programs are pinned and must be unloaded after it stops.
    enforcing: bool,
}

impl Drop for Agent {
    /// A benchmark that failed half-way leaves no agent and no enforcement behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.enforcing {
            let binary = cmd::workspace_root().join("target/release/phiguard");
            let _ = Command::new(binary).arg("unload").output();
        }
    }
}

/// The agent's own counters from its shutdown log line.
#[derive(Debug, Default)]
struct AgentCounters {
    records: u64,
    events: u64,
    kernel_lost: u64,
}

impl Agent {
    fn start(watch: &Path) -> anyhow::Result<Agent> {
        Agent::start_with(watch, None)
    }

    /// Starts the agent; with `policies`, enforcing them.
    fn start_with(watch: &Path, policies: Option<&Path>) -> anyhow::Result<Agent> {
        let binary = cmd::workspace_root().join("target/release/phiguard");
        let mut command = Command::new(&binary);
        command
            .args(["--log-format", "json", "run", "--watch"])
            .arg(watch);
        if let Some(dir) = policies {
            command.arg("--policies").arg(dir);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut stderr = BufReader::new(child.stderr.take().context("agent stderr")?);
        let mut line = String::new();
        while !line.contains("events are flowing") {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("the agent exited before it was ready");
            }
        }
        Ok(Agent {
            child,
            stderr,
            enforcing: policies.is_some(),
        })
    }

    /// CPU time (user + system) the agent has used so far.
    fn cpu_time(&self) -> Duration {
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
            + fields
                .get(12)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }

    fn resident_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn stop(mut self) -> anyhow::Result<AgentCounters> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        let mut counters = AgentCounters::default();
        for line in (&mut self.stderr).lines() {
            let line = line?;
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let fields = &entry["fields"];
            if fields["message"]
                .as_str()
                .is_some_and(|m| m.contains("stopped"))
            {
                counters.records = fields["records"].as_u64().unwrap_or(0);
                counters.events = fields["events"].as_u64().unwrap_or(0);
                counters.kernel_lost = fields["kernel_lost"].as_u64().unwrap_or(0);
            }
        }
        let status = self.child.wait()?;
        if self.enforcing {
            // Enforcement outlives the agent by design: remove it.
            let binary = cmd::workspace_root().join("target/release/phiguard");
            cmd::run(Command::new(binary).arg("unload"))?;
            self.enforcing = false;
        }
        if !status.success() {
            bail!("agent exited with {status}");
        }
        Ok(counters)
    }
}

/// Opens and closes `path` `count` times; returns ns per open+close.
fn open_loop(path: &Path, count: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..count {
        drop(File::open(path).expect("bench file"));
    }
    start.elapsed().as_nanos() as f64 / f64::from(count)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> f64 {
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    max - min
}

fn bench_open(scratch: &Scratch, quick: bool) -> anyhow::Result<Value> {
    let (rounds, count): (u32, u32) = if quick { (3, 20_000) } else { (9, 200_000) };
    let mut baseline = Vec::new();
    let mut unwatched = Vec::new();
    let mut watched = Vec::new();
    // Baseline before and after the agent runs, so drift shows up in the spread.
    for _ in 0..rounds.div_ceil(2) {
        baseline.push(open_loop(&scratch.plain_file(), count));
    }
    let agent = Agent::start(&scratch.watched_dir())?;
    for _ in 0..rounds {
        unwatched.push(open_loop(&scratch.plain_file(), count));
        watched.push(open_loop(&scratch.watched_file(), count));
    }
    let counters = agent.stop()?;
    let mut enforcing_plain = Vec::new();
    let mut enforcing_protected = Vec::new();
    let agent = Agent::start_with(&scratch.watched_dir(), Some(&scratch.policies()))?;
    for _ in 0..rounds {
        enforcing_plain.push(open_loop(&scratch.plain_file(), count));
        enforcing_protected.push(open_loop(&scratch.protected_file(), count));
    }
    let enforcing_counters = agent.stop()?;
    for _ in 0..rounds / 2 {
        baseline.push(open_loop(&scratch.plain_file(), count));
    }
    let base = median(&mut baseline);
    let rows = [
        ("no agent", &mut baseline),
        ("agent, unwatched path", &mut unwatched),
        ("agent, watched path (event)", &mut watched),
        ("enforcing, unprotected path", &mut enforcing_plain),
        ("enforcing, protected (allowed)", &mut enforcing_protected),
    ];
    println!("\nopen: open+close loop, {count} per round, {rounds} rounds, median ns/op");
    println!(
        "{:<32} {:>10} {:>10} {:>8}",
        "setting", "median ns", "spread", "ratio"
    );
    let mut results = Vec::new();
    for (name, values) in rows {
        let m = median(values);
        println!(
            "{name:<32} {m:>10.0} {:>10.0} {:>7.3}x",
            spread(values),
            m / base
        );
        results.push(json!({ "setting": name, "median_ns": m, "spread_ns": spread(values), "ratio": m / base }));
    }
    println!(
        "agent: {} records, {} lost in the kernel; enforcing: {} records, {} lost",
        counters.records,
        counters.kernel_lost,
        enforcing_counters.records,
        enforcing_counters.kernel_lost
    );
    Ok(
        json!({ "rounds": rounds, "per_round": count, "results": results, "kernel_lost": counters.kernel_lost + enforcing_counters.kernel_lost }),
    )
}

/// Opens the watched file at `rate` per second for `seconds`, in paced batches.
fn paced_opens(path: &Path, rate: u64, seconds: f64) -> (u64, f64) {
    const BATCH: u64 = 500;
    let total = (rate as f64 * seconds) as u64;
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        for _ in 0..BATCH.min(total - done) {
            drop(File::open(path).expect("bench file"));
        }
        done += BATCH.min(total - done);
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    (done, start.elapsed().as_secs_f64())
}

/// The collector link: ingest rate with one and eight agents over loopback mutual TLS, and
/// latency from a kernel event to a live subscriber (see `tests/src/bin/e2e_bench.rs`).
fn bench_e2e(quick: bool) -> anyhow::Result<Value> {
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "phiguard-collector",
        "--bin",
        "phiguard-collector",
        "-p",
        "phiguard-tests",
        "--bin",
        "e2e-bench",
    ]))?;
    let release = cmd::workspace_root().join("target/release");
    let mut command = Command::new(release.join("e2e-bench"));
    if quick {
        command.arg("--quick");
    }
    let output = command
        .env("PHIGUARD_BIN", release.join("phiguard"))
        .env("PHIGUARD_COLLECTOR_BIN", release.join("phiguard-collector"))
        .stderr(Stdio::inherit())
        .output()
        .context("running e2e-bench")?;
    if !output.status.success() {
        bail!("e2e-bench failed ({})", output.status);
    }
    let result: Value = serde_json::from_slice(&output.stdout).context("e2e-bench output")?;
    println!(
        "\ne2e: agent spool + publisher -> phiguard-collector (mTLS 1.3, fsync per batch) -> subscriber"
    );
    for key in ["ingest_1_agent", "ingest_8_agents"] {
        let r = &result[key];
        println!(
            "  {key:<16} {:>7} events of {} bytes in {:>6.2} s = {:>7} events/s stored (fsync'd) and acknowledged",
            r["events"],
            r["event_bytes"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["events_per_s"]
        );
    }
    for key in ["latency", "latency_fsync_every_batch"] {
        let l = &result[key];
        println!(
            "  latency kernel -> subscriber ({} opens, agent spool fsync every {} ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l["samples"],
            l["spool_sync_interval_ms"],
            l["p50_ms"].as_f64().unwrap_or(0.0),
            l["p99_ms"].as_f64().unwrap_or(0.0),
            l["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(result)
}

fn bench_throughput(scratch: &Scratch, quick: bool) -> anyhow::Result<Value> {
    let (rates, seconds): (&[u64], f64) = if quick {
        (&[20_000, 100_000], 0.5)
    } else {
        (
            &[
                25_000, 50_000, 100_000, 150_000, 200_000, 300_000, 1_000_000,
            ],
            3.0,
        )
    };
    println!("\nthroughput: paced opens of a watched file (each one event); agent writes JSON to /dev/null");
    println!(
        "{:>12} {:>12} {:>10} {:>12} {:>10} {:>10}",
        "target ev/s", "sent ev/s", "lost", "delivered", "agent CPU", "RSS MiB"
    );
    let mut results = Vec::new();
    let mut best_lossless = 0.0;
    for &rate in rates {
        let agent = Agent::start(&scratch.watched_dir())?;
        let cpu_before = agent.cpu_time();
        let (sent, elapsed) = paced_opens(&scratch.watched_file(), rate, seconds);
        // Let the agent drain what is queued before reading its counters.
        std::thread::sleep(Duration::from_millis(1500));
        let cpu = (agent.cpu_time() - cpu_before).as_secs_f64() / (elapsed + 1.5);
        let rss = agent.resident_kib();
        let counters = agent.stop()?;
        let achieved = sent as f64 / elapsed;
        if counters.kernel_lost == 0 && achieved > best_lossless {
            best_lossless = achieved;
        }
        println!(
            "{rate:>12} {achieved:>12.0} {:>10} {:>12} {:>9.1}% {:>10.1}",
            counters.kernel_lost,
            counters.records,
            cpu * 100.0,
            rss as f64 / 1024.0
        );
        results.push(json!({
            "target_per_s": rate, "sent_per_s": achieved, "kernel_lost": counters.kernel_lost,
            "records": counters.records, "events": counters.events, "agent_cpu_fraction": cpu, "rss_kib": rss,
        }));
    }
    println!("highest rate with zero loss: {best_lossless:.0} events/s");
    Ok(
        json!({ "seconds_per_step": seconds, "steps": results, "highest_lossless_per_s": best_lossless }),
    )
}

/// Runs the selected benchmarks and saves the results.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("benchmarks load the agent's eBPF programs: run as root (sudo -E env \"PATH=$PATH\" cargo xtask bench)");
    }
    setup::setup()?;
    run::build()?;
    let scratch = Scratch::new()?;
    let mut results = serde_json::Map::new();
    let names: Vec<&str> = match args.name.as_deref() {
        None => vec!["open", "throughput", "e2e", "db"],
        Some(name @ ("open" | "throughput" | "e2e" | "db")) => vec![name],
        Some(other) => bail!("unknown benchmark {other}: open, throughput, e2e or db"),
    };
    for name in names {
        let result = match name {
            "open" => bench_open(&scratch, args.quick)?,
            "e2e" => bench_e2e(args.quick)?,
            "db" => crate::bench_db::bench_db(&scratch.root, args.quick)?,
            _ => bench_throughput(&scratch, args.quick)?,
        };
        results.insert(name.to_owned(), result);
    }
    let commit = cmd::output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(cmd::workspace_root()),
    )
    .unwrap_or_default();
    let report = json!({
        "kernel": cmd::output(Command::new("uname").arg("-r")).unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "commit": commit.trim(),
        "quick": args.quick,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "benchmarks": results,
    });
    let dir = cmd::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let file = dir.join(format!("bench-{}.json", report["unix_time"]));
    fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    println!("\nresults: {}", file.display());
    Ok(())
}
