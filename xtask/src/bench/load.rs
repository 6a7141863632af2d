//! `throughput` (the highest event rate the agent takes without loss, and where loss begins)
//! and `cost` (the agent's CPU and memory at a steady rate, and each kernel program's time
//! per run from the kernel's BPF statistics).

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{json, Value};

use super::{
    cleanup::Undo,
    setting::{Agent, AgentArgs},
    workloads::Scratch,
};
use crate::cmd;

/// Opens `path` at `rate` per second for `seconds`, in paced batches; (opens, seconds taken).
fn paced_opens(path: &Path, rate: u64, seconds: f64) -> anyhow::Result<(u64, f64)> {
    let batch = (rate / 1000).max(1);
    let total = (rate as f64 * seconds) as u64;
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        let n = batch.min(total - done);
        for _ in 0..n {
            drop(File::open(path).with_context(|| format!("opening {}", path.display()))?);
        }
        done += n;
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok((done, start.elapsed().as_secs_f64()))
}

fn observing(scratch: &Scratch, name: &str) -> anyhow::Result<AgentArgs> {
    scratch.agent_args(
        name,
        None,
        &["--watch".into(), scratch.watched_dir().into()],
        "",
    )
}

/// `throughput`: paced opens of a watched file (one event each) at rising rates, a fresh
/// agent per rate; stops after two rates with loss.
pub fn throughput(scratch: &Scratch, quick: bool) -> anyhow::Result<Value> {
    let (rates, seconds): (&[u64], f64) = if quick {
        (&[20_000, 100_000], 0.5)
    } else {
        (
            &[
                25_000, 50_000, 100_000, 200_000, 300_000, 400_000, 600_000, 1_000_000,
            ],
            3.0,
        )
    };
    let args = observing(scratch, "throughput")?;
    println!(
        "\nthroughput: paced opens of a watched file (one event each) for {seconds} s per rate; \
         agent writes JSON to /dev/null; {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:>12} {:>12} {:>10} {:>12} {:>10} {:>9}",
        "target ev/s", "sent ev/s", "lost", "records", "agent CPU", "RSS MiB"
    );
    let mut steps = Vec::new();
    let mut best_lossless = 0.0f64;
    let mut loss_begins = None;
    let mut lossy_steps = 0;
    for &rate in rates {
        let agent = Agent::run(&args, false)?;
        let cpu_before = agent.cpu_time();
        let (sent, elapsed) = paced_opens(&scratch.watched_file(), rate, seconds)?;
        // Let the agent drain what is queued before reading its counters.
        std::thread::sleep(Duration::from_millis(1000));
        let cpu = (agent.cpu_time() - cpu_before).as_secs_f64() / elapsed;
        let rss = agent.memory_kib("VmRSS");
        let counters = agent.stop()?;
        let achieved = sent as f64 / elapsed;
        if counters.kernel_lost == 0 {
            best_lossless = best_lossless.max(achieved);
        } else {
            loss_begins.get_or_insert(achieved);
            lossy_steps += 1;
        }
        println!(
            "{rate:>12} {achieved:>12.0} {:>10} {:>12} {:>9.1}% {:>9.1}",
            counters.kernel_lost,
            counters.records,
            cpu * 100.0,
            rss as f64 / 1024.0
        );
        steps.push(json!({
            "target_per_s": rate, "sent_per_s": achieved, "kernel_lost": counters.kernel_lost,
            "records": counters.records, "events": counters.events,
            "agent_cpu_percent_of_one_core": cpu * 100.0, "rss_kib": rss,
        }));
        if lossy_steps >= 2 {
            break;
        }
    }
    match loss_begins {
        Some(rate) => println!(
            "highest rate with zero loss: {best_lossless:.0} events/s; loss begins at {rate:.0} events/s"
        ),
        None => println!(
            "highest rate with zero loss: {best_lossless:.0} events/s (the highest this loop reached; no loss seen)"
        ),
    }
    Ok(json!({
        "seconds_per_step": seconds, "steps": steps,
        "highest_lossless_per_s": best_lossless, "loss_begins_per_s": loss_begins,
        "spool": "not used (no collector link): the kernel drop counter is the loss measure",
    }))
}

/// `kernel.bpf_stats_enabled` set to 1 until dropped, then put back as it was.
struct BpfStats {
    _undo: Undo,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let before = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        let undo = Undo::register(move || {
            let _ = fs::write(BPF_STATS, before.trim());
        });
        fs::write(BPF_STATS, "1").context("setting kernel.bpf_stats_enabled")?;
        Ok(BpfStats { _undo: undo })
    }
}

/// One program's cumulative statistics.
#[derive(Clone, Debug)]
struct ProgStats {
    name: String,
    kind: String,
    run_time_ns: u64,
    run_cnt: u64,
}

/// The kernel programs process `pid` holds (from its descriptors' `prog_id`), by id.
fn programs_of(pid: u32) -> anyhow::Result<BTreeMap<u64, ProgStats>> {
    let mut ids: Vec<u64> = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    let mut programs = BTreeMap::new();
    for id in ids {
        let out = cmd::output(Command::new("bpftool").args([
            "prog",
            "show",
            "id",
            &id.to_string(),
            "--json",
        ]))
        .with_context(|| {
            format!("bpftool prog show id {id}: `cargo xtask setup` installs bpftool")
        })?;
        let info: Value = serde_json::from_str(&out).context("bpftool output")?;
        programs.insert(
            id,
            ProgStats {
                name: info["name"].as_str().unwrap_or("?").to_owned(),
                kind: info["type"].as_str().unwrap_or("?").to_owned(),
                run_time_ns: info["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: info["run_cnt"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(programs)
}

/// `cost`: the agent at a steady 5,000 watched opens per second: its CPU (percent of one core)
/// and memory, and per program the kernel's run count and mean time per run over the period.
pub fn cost(scratch: &Scratch, quick: bool) -> anyhow::Result<Value> {
    const RATE: u64 = 5_000;
    let seconds = if quick { 3.0 } else { 60.0 };
    let args = observing(scratch, "cost")?;
    let stats = BpfStats::enable()?;
    let agent = Agent::run(&args, false)?;
    let before = programs_of(agent.pid())?;
    let cpu_before = agent.cpu_time();
    let (sent, elapsed) = paced_opens(&scratch.watched_file(), RATE, seconds)?;
    let cpu = (agent.cpu_time() - cpu_before).as_secs_f64() / elapsed * 100.0;
    let after = programs_of(agent.pid())?;
    let (rss, peak) = (agent.memory_kib("VmRSS"), agent.memory_kib("VmHWM"));
    let counters = agent.stop()?;
    drop(stats);
    println!(
        "\ncost: agent observing {sent} watched opens at {:.0}/s for {elapsed:.1} s",
        sent as f64 / elapsed
    );
    println!(
        "agent CPU {cpu:.2} % of one core; resident {:.1} MiB (peak {:.1} MiB); {} records, {} lost in the kernel",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        counters.records,
        counters.kernel_lost
    );
    println!(
        "{:<32} {:<16} {:>12} {:>10}",
        "program", "type", "runs", "ns/run"
    );
    let mut programs = Vec::new();
    for (id, end) in &after {
        let start = before.get(id);
        let runs = end.run_cnt - start.map_or(0, |s| s.run_cnt);
        let ns = end.run_time_ns - start.map_or(0, |s| s.run_time_ns);
        let per_run = if runs == 0 {
            None
        } else {
            Some(ns as f64 / runs as f64)
        };
        println!(
            "{:<32} {:<16} {runs:>12} {:>10}",
            end.name,
            end.kind,
            per_run.map_or("-".to_owned(), |v| format!("{v:.0}"))
        );
        programs.push(json!({
            "name": end.name, "type": end.kind, "runs": runs, "run_time_ns": ns, "ns_per_run": per_run,
        }));
    }
    Ok(json!({
        "rate_per_s": RATE, "seconds": elapsed, "sent": sent,
        "agent_cpu_percent_of_one_core": cpu, "rss_kib": rss, "rss_peak_kib": peak,
        "records": counters.records, "kernel_lost": counters.kernel_lost,
        "programs": programs,
    }))
}
