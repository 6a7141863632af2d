//! `e2e`: the collector link — ingest rate over loopback mutual TLS and latency from a kernel
//! event to a live subscriber, and the fleet layout against the single collector — measured
//! by `tests/src/bin/e2e_bench.rs`.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::cmd;

/// The collector link: ingest rate with one and eight agents over loopback mutual TLS, and
/// latency from a kernel event to a live subscriber (see `tests/src/bin/e2e_bench.rs`).
pub fn e2e(quick: bool) -> anyhow::Result<Value> {
    let release = cmd::target_dir().join("release");
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
            "  {key:<16} {:>7} events of {} bytes in {:>6.2} s = {:>7} events/s stored (fsync'd) and acknowledged; collector CPU {:.2} s = {} events per CPU-second",
            r["events"],
            r["event_bytes"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["events_per_s"],
            r["collector_cpu_seconds"].as_f64().unwrap_or(0.0),
            r["events_per_collector_cpu_second"]
        );
    }
    for key in ["latency", "latency_fsync_every_batch"] {
        let l = &result[key];
        println!(
            "  latency kernel -> subscriber ({} of {} opens at a steady {:.0}/s arrived, agent spool fsync every {} ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l["received"],
            l["samples"],
            l["rate_per_s"].as_f64().unwrap_or(0.0),
            l["spool_sync_interval_ms"],
            l["p50_ms"].as_f64().unwrap_or(0.0),
            l["p99_ms"].as_f64().unwrap_or(0.0),
            l["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    print_fleet(&result["fleet"]);
    Ok(result)
}

/// The fleet layout's lines: stored events/s, latency and CPU per event against the single
/// collector measured in the same run.
fn print_fleet(fleet: &Value) {
    println!("\nfleet: agents -> collector(s) -> JetStream (3 nats-server nodes, R3) -> store writer, against one collector alone");
    for key in [
        "single_collector",
        "fleet_1_collector",
        "fleet_2_collectors",
    ] {
        let r = &fleet[key];
        println!(
            "  {key:<20} {} collector(s), {} agents: {:>6} events in {:>6.2} s = {:>6} events/s stored; CPU of every process {:.0} us/event",
            r["collectors"],
            r["agents"],
            r["events"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["events_per_s"],
            r["cpu_us_per_event"].as_f64().unwrap_or(0.0)
        );
    }
    for key in [
        "single_collector_latency",
        "fleet_1_collector_latency",
        "fleet_2_collectors_latency",
    ] {
        let l = &fleet[key];
        println!(
            "  {key:<28} agent spool -> store at {}/s ({} of {} arrived): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l["rate_per_s"],
            l["received"],
            l["sent"],
            l["p50_ms"].as_f64().unwrap_or(0.0),
            l["p99_ms"].as_f64().unwrap_or(0.0),
            l["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "  the JetStream hop costs {:.0} us of CPU per event (fleet with one collector minus the collector alone)",
        fleet["jetstream_hop_cpu_us_per_event"]
            .as_f64()
            .unwrap_or(0.0)
    );
}
