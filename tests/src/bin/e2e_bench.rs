//! `e2e-bench`: the collector link's numbers, run by `cargo xtask bench e2e` (root, release
//! binaries in `PHIGUARD_BIN` and `PHIGUARD_COLLECTOR_BIN`). Prints one JSON object:
//!
//! - `ingest_1_agent`, `ingest_8_agents`: events/s the collector stores and acknowledges
//!   (fsync'd) over loopback mutual TLS, fed by the agent's own spool and publisher with
//!   events already spooled, and per second of the collector's own CPU time (all its threads,
//!   from `/proc/PID/task/*/schedstat`: the load generator shares the machine);
//! - `latency`: from the kernel's timestamp of a file open to its arrival at a live
//!   subscriber, through the real agent (`phiguard run` with `[collector]`, the default spool
//!   fsync interval, and again fsync'ing every batch), the collector's store and
//!   its fan-out, for every event of a steady 10,000 opens per second (10 s; 1 s in quick
//!   mode): p50, p99, max in milliseconds, and how many of the events arrived;
//! - `fleet`: the fleet layout (`[jetstream]`, a three-node `nats-server` cluster on
//!   loopback) against a single collector in the same run, with four synthetic agents (their
//!   own spool and publisher): events/s until every pre-spooled event is in the store (seen
//!   by the writer's live subscriber) with one and with two collectors, spool → store p50/p99
//!   at a steady rate, CPU time per event of every process involved (collectors and NATS
//!   nodes), and the difference per event: the JetStream hop's cost.
//!   `--fleet-only` measures just this (no root, no kernel).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use phiguard::{
    config::collector::DEFAULT_SYNC_INTERVAL_MS,
    sink::{
        publish::{Publisher, PublisherConfig},
        spool::{FullPolicy, Spool, SpoolConfig},
    },
};
use phiguard_proto::v1;
use phiguard_tests::e2e::{event, CollectorProc, Pki};
use prost::Message as _;
use serde_json::json;

/// CPU time used so far by every thread of process `pid` (`/proc/PID/task/*/schedstat`).
fn cpu_time(pid: u32) -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("collector's threads") {
        let path = task.expect("a thread").path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn ingest(
    pki: &Pki,
    collector: &CollectorProc,
    hosts: &[String],
    per_agent: u64,
) -> serde_json::Value {
    let addr = &collector.addr;
    let pid = collector.pid().expect("the collector runs");
    let mut links = Vec::new();
    for host in hosts {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 32,
            full: FullPolicy::KeepOldest,
            sync_interval: Duration::from_millis(200),
        })
        .unwrap();
        for seq in 1..=per_agent {
            spool.append(&realistic(host, seq)).unwrap();
        }
        spool.flush(true).unwrap();
        links.push((dir, spool));
    }
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let publishers: Vec<Publisher> = links
        .iter()
        .zip(hosts)
        .map(|((_, spool), host)| {
            let mut config = PublisherConfig::new(addr.to_owned(), pki.agent(host));
            config.server_name = Some("localhost".into());
            Publisher::spawn(spool.clone(), config).unwrap()
        })
        .collect();
    let deadline = started + Duration::from_secs(600);
    while links.iter().any(|(_, s)| s.stats().acked < per_agent) {
        assert!(Instant::now() < deadline, "ingest did not finish in 600 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    let collector_cpu = (cpu_time(pid) - cpu_before).as_secs_f64();
    drop(publishers);
    let total = per_agent * hosts.len() as u64;
    json!({
        "agents": hosts.len(),
        "events": total,
        "seconds": seconds,
        "collector_cpu_seconds": collector_cpu,
        "events_per_collector_cpu_second": (total as f64 / collector_cpu).round() as u64,
        "event_bytes": realistic(&hosts[0], 1).encoded_len(),
        "events_per_s": (total as f64 / seconds).round() as u64,
    })
}

/// An event the size of a real file open (process, argv, ancestry: about 700 bytes).
fn realistic(host: &str, seq: u64) -> v1::Event {
    let mut e = event(host, seq);
    e.id = "01a21020-65dc-74a1-afc6-794aae1e3c50".into();
    e.host.as_mut().unwrap().machine_id = "3d1219c7c4c5404aaa1f6d2a48adfda4".into();
    e.process = Some(v1::Process {
        pid: 27791,
        tid: 27791,
        ppid: 27790,
        comm: "cat".into(),
        exe: "/usr/bin/cat".into(),
        argv: vec!["cat".into(), "./p1.txt".into()],
        cwd: "/srv/ephi/records".into(),
        user: Some(v1::User {
            id: Some(0),
            name: "root".into(),
        }),
        group: Some(v1::Group {
            id: Some(0),
            name: "root".into(),
        }),
        cgroup: "/system.slice/ehr.service".into(),
        start_time: e.time,
        binary_sha256: "008f819498fe591f3cc920d543709347d8d14a139bb3482bc2cd8635c1b3162e".into(),
        ..Default::default()
    });
    e.ancestry = (0..4)
        .map(|i| v1::Ancestor {
            pid: 27790 - i,
            exe: "/usr/bin/bash".into(),
            comm: "bash".into(),
        })
        .collect();
    if let Some(v1::event::Body::FileOpen(open)) = &mut e.body {
        open.requested_path = "./p1.txt".into();
        open.syscall = "openat".into();
        open.flags = vec!["O_RDONLY".into()];
        open.watch = "/srv/ephi".into();
        open.inode = 843_779;
        open.device = 266_338_304;
    }
    e
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Opens of the watched file per second in the latency run.
const LATENCY_RATE: u64 = 10_000;

/// Opens `file` `total` times at `rate` per second, paced in 1 ms batches; the seconds taken.
fn paced_opens(file: &std::path::Path, rate: u64, total: u64) -> f64 {
    let batch = (rate / 1000).max(1);
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        let n = batch.min(total - done);
        for _ in 0..n {
            drop(std::fs::File::open(file).unwrap());
        }
        done += n;
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    start.elapsed().as_secs_f64()
}

fn latency(pki: &Pki, addr: &str, name: &str, seconds: u64, sync_ms: u64) -> serde_json::Value {
    let work = tempfile::tempdir().unwrap();
    let watched = work.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    let file = watched.join("rec.txt");
    std::fs::write(&file, "x").unwrap();
    let files = pki.agent(name);
    let config = work.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[watch]\npaths = [\"{}\"]\n[output]\nstdout = false\n[agent]\nhostname = \"{name}\"\n\
             [collector]\naddress = \"{addr}\"\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\n\
             key = \"{}\"\nspool_dir = \"{}\"\nsync_interval_ms = {sync_ms}\n",
            watched.display(),
            files.ca.display(),
            files.cert.display(),
            files.key.display(),
            work.path().join("spool").display()
        ),
    )
    .unwrap();
    let agent_bin = std::env::var("PHIGUARD_BIN").expect("PHIGUARD_BIN");
    let mut agent = Command::new(agent_bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(agent.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "agent exited");
        if line.contains("events are flowing") {
            break;
        }
    }
    std::thread::spawn(move || for _ in stderr.lines() {});
    let rt = phiguard_tests::e2e::runtime();
    let mut live = rt
        .block_on(phiguard_collector::tail::subscribe(
            addr,
            Some("localhost"),
            &pki.subscriber(),
            v1::SubscribeRequest {
                filter: Some(v1::EventFilter {
                    kinds: vec!["fileOpen".into()],
                    path_prefixes: vec![watched.display().to_string()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            1 << 20,
        ))
        .expect("subscribe");
    let samples = (LATENCY_RATE * seconds) as usize;
    let opener = {
        let file = file.clone();
        std::thread::spawn(move || paced_opens(&file, LATENCY_RATE, samples as u64))
    };
    let mut latencies = Vec::with_capacity(samples);
    rt.block_on(async {
        while latencies.len() < samples {
            let next = tokio::time::timeout(Duration::from_secs(30), live.message()).await;
            let Ok(Ok(Some(e))) = next else {
                // Reported, not hidden: the percentiles are over what arrived.
                eprintln!(
                    "e2e-bench: {} of {samples} events arrived; none for 30 s",
                    latencies.len()
                );
                break;
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let t = e.time.unwrap();
            let at = Duration::new(t.seconds as u64, t.nanos as u32);
            latencies.push(now.saturating_sub(at).as_secs_f64() * 1000.0);
        }
    });
    let sending_seconds = opener.join().unwrap();
    let _ = kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM);
    let _ = agent.wait();
    assert!(!latencies.is_empty(), "no event reached the subscriber");
    latencies.sort_by(f64::total_cmp);
    json!({
        "samples": samples,
        "received": latencies.len(),
        "rate_per_s": samples as f64 / sending_seconds,
        "spool_sync_interval_ms": sync_ms,
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
    })
}

/// Starts one publisher per host, host `i` to `collectors[i % n]` first and the others as
/// its failover list.
fn publishers(
    pki: &Pki,
    collectors: &[&CollectorProc],
    hosts: &[String],
    spools: &[std::sync::Arc<Spool>],
) -> Vec<Publisher> {
    hosts
        .iter()
        .zip(spools)
        .enumerate()
        .map(|(i, (host, spool))| {
            let first = collectors[i % collectors.len()];
            let mut config = PublisherConfig::new(first.addr.clone(), pki.agent(host));
            config.failover = collectors
                .iter()
                .filter(|c| c.addr != first.addr)
                .map(|c| c.addr.clone())
                .collect();
            config.server_name = Some("localhost".into());
            Publisher::spawn(spool.clone(), config).unwrap()
        })
        .collect()
}

fn open_spool(dir: &std::path::Path) -> std::sync::Arc<Spool> {
    Spool::open(SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 1 << 32,
        full: FullPolicy::KeepOldest,
        sync_interval: Duration::from_millis(200),
    })
    .unwrap()
}

/// A live subscription to file opens on `collector`, counting them and recording each one's
/// age (now − its `time`, ms) on arrival.
fn watch_stored(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    collector: &CollectorProc,
) -> std::sync::Arc<std::sync::Mutex<Vec<f64>>> {
    let mut live = rt
        .block_on(phiguard_collector::tail::subscribe(
            &collector.addr,
            Some("localhost"),
            &pki.subscriber(),
            v1::SubscribeRequest {
                filter: Some(v1::EventFilter {
                    kinds: vec!["fileOpen".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            1 << 20,
        ))
        .expect("subscribe");
    let ages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = ages.clone();
    rt.spawn(async move {
        while let Ok(Some(e)) = live.message().await {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let t = e.time.unwrap_or_default();
            let at = Duration::new(t.seconds as u64, t.nanos as u32);
            sink.lock()
                .unwrap()
                .push(now.saturating_sub(at).as_secs_f64() * 1000.0);
        }
    });
    ages
}

/// Events/s until every event of `per_agent` pre-spooled ones per host is in the store of
/// `writer` (seen by its live subscriber), and the CPU time of the processes `pids` per event.
fn stored_rate(
    pki: &Pki,
    collectors: &[&CollectorProc],
    writer: &CollectorProc,
    hosts: &[String],
    per_agent: u64,
    pids: &[u32],
) -> serde_json::Value {
    let rt = phiguard_tests::e2e::runtime();
    let seen = watch_stored(&rt, pki, writer);
    let dirs: Vec<tempfile::TempDir> = hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let spools: Vec<_> = dirs.iter().map(|d| open_spool(d.path())).collect();
    for (host, spool) in hosts.iter().zip(&spools) {
        for seq in 1..=per_agent {
            spool.append(&realistic(host, seq)).unwrap();
        }
        spool.flush(true).unwrap();
    }
    let total = per_agent * hosts.len() as u64;
    let cpu_before: Duration = pids.iter().map(|p| cpu_time(*p)).sum();
    let started = Instant::now();
    let running = publishers(pki, collectors, hosts, &spools);
    let deadline = started + Duration::from_secs(600);
    while (seen.lock().unwrap().len() as u64) < total {
        assert!(Instant::now() < deadline, "not all stored within 600 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (pids.iter().map(|p| cpu_time(*p)).sum::<Duration>() - cpu_before).as_secs_f64();
    drop(running);
    json!({
        "collectors": collectors.len(),
        "agents": hosts.len(),
        "events": total,
        "seconds": seconds,
        "events_per_s": (total as f64 / seconds).round() as u64,
        "cpu_seconds": cpu,
        "cpu_us_per_event": cpu / total as f64 * 1e6,
    })
}

/// Agent spool → store (the writer's live subscriber) latency at a steady `rate` events/s
/// spread over `hosts`, for `seconds`: p50, p99, max in ms.
fn stored_latency(
    pki: &Pki,
    collectors: &[&CollectorProc],
    writer: &CollectorProc,
    hosts: &[String],
    rate: u64,
    seconds: u64,
) -> serde_json::Value {
    let rt = phiguard_tests::e2e::runtime();
    let ages = watch_stored(&rt, pki, writer);
    let dirs: Vec<tempfile::TempDir> = hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let spools: Vec<_> = dirs.iter().map(|d| open_spool(d.path())).collect();
    let running = publishers(pki, collectors, hosts, &spools);
    let total = rate * seconds;
    // Every 10 ms each host spools its share, stamped now, and makes it durable.
    let per_tick = (rate / 100 / hosts.len() as u64).max(1);
    let start = Instant::now();
    let mut seq = 0;
    let mut sent = 0;
    while sent < total {
        for (host, spool) in hosts.iter().zip(&spools) {
            for i in 1..=per_tick {
                spool.append(&event(host, seq + i)).unwrap();
            }
            spool.flush(true).unwrap();
        }
        seq += per_tick;
        sent += per_tick * hosts.len() as u64;
        let due = Duration::from_millis(10 * seq / per_tick);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (ages.lock().unwrap().len() as u64) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(running);
    let mut latencies = ages.lock().unwrap().clone();
    latencies.sort_by(f64::total_cmp);
    assert!(!latencies.is_empty(), "nothing reached the store");
    json!({
        "sent": sent,
        "received": latencies.len(),
        "rate_per_s": rate,
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
    })
}

/// The fleet layout against the single collector, in the same run: stored events/s with one
/// and two collectors over a three-node JetStream cluster, agent → store latency, and the CPU
/// per event of every process involved (collectors and NATS nodes).
fn fleet(pki: &Pki, quick: bool) -> serde_json::Value {
    let hosts = |tag: &str| -> Vec<String> { (1..=4).map(|i| format!("{tag}-{i}")).collect() };
    let events = if quick { 2_000 } else { 25_000 };
    let (rate, seconds) = if quick { (1_000, 1) } else { (2_000, 5) };
    let single_work = tempfile::tempdir().unwrap();
    let single = CollectorProc::start_with_defaults(single_work.path(), pki);
    let single_pid = single.pid().unwrap();
    let alone = stored_rate(
        pki,
        &[&single],
        &single,
        &hosts("single"),
        events,
        &[single_pid],
    );
    let alone_latency = stored_latency(
        pki,
        &[&single],
        &single,
        &hosts("single-lat"),
        rate,
        seconds,
    );
    drop(single);
    let cluster = phiguard_tests::fleet::NatsCluster::start(3);
    let section = |writer: bool| {
        format!(
            "[jetstream]
servers = [{}]
replicas = 3
store_writer = {writer}
",
            cluster.servers_toml()
        )
    };
    let w_work = tempfile::tempdir().unwrap();
    let f_work = tempfile::tempdir().unwrap();
    let writer = CollectorProc::start_with_sections(w_work.path(), pki, "", "", &section(true));
    let front = CollectorProc::start_with_sections(f_work.path(), pki, "", "", &section(false));
    assert!(writer.wait_log("store writer consuming JetStream", Duration::from_secs(30)));
    let mut pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    pids.push(writer.pid().unwrap());
    pids.push(front.pid().unwrap());
    let one = stored_rate(pki, &[&writer], &writer, &hosts("fleet1"), events, &pids);
    let two = stored_rate(
        pki,
        &[&writer, &front],
        &writer,
        &hosts("fleet2"),
        events,
        &pids,
    );
    let one_latency = stored_latency(
        pki,
        &[&writer],
        &writer,
        &hosts("fleet1-lat"),
        rate,
        seconds,
    );
    let two_latency = stored_latency(
        pki,
        &[&writer, &front],
        &writer,
        &hosts("fleet2-lat"),
        rate,
        seconds,
    );
    let hop = one["cpu_us_per_event"].as_f64().unwrap_or(0.0)
        - alone["cpu_us_per_event"].as_f64().unwrap_or(0.0);
    json!({
        "single_collector": alone,
        "single_collector_latency": alone_latency,
        "fleet_1_collector": one,
        "fleet_2_collectors": two,
        "fleet_1_collector_latency": one_latency,
        "fleet_2_collectors_latency": two_latency,
        "jetstream_hop_cpu_us_per_event": hop,
    })
}

/// The synthetic agents of [`fleet`]: four per measurement, each on a chain of its own.
fn fleet_hosts() -> Vec<String> {
    [
        "single",
        "single-lat",
        "fleet1",
        "fleet2",
        "fleet1-lat",
        "fleet2-lat",
    ]
    .iter()
    .flat_map(|tag| (1..=4).map(move |i| format!("{tag}-{i}")))
    .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--fleet-only") {
        let names: Vec<String> = [
            "single",
            "single-lat",
            "fleet1",
            "fleet2",
            "fleet1-lat",
            "fleet2-lat",
        ]
        .iter()
        .flat_map(|tag| (1..=4).map(move |i| format!("{tag}-{i}")))
        .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let pki = Pki::new(&names);
        let quick = std::env::args().any(|a| a == "--quick");
        println!("{}", json!({ "fleet": fleet(&pki, quick) }));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let eight: Vec<String> = (1..=8).map(|i| format!("bench-{i}")).collect();
    let solo = vec!["bench-solo".to_owned()];
    let mut names: Vec<&str> = eight.iter().map(String::as_str).collect();
    names.extend(["bench-solo", "bench-agent", "bench-agent-fsync"]);
    let fleet_names = fleet_hosts();
    names.extend(fleet_names.iter().map(String::as_str));
    let pki = Pki::new(&names);
    let work = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_with_defaults(work.path(), &pki);
    let events = if quick { 5_000 } else { 100_000 };
    let one = ingest(&pki, &collector, &solo, events);
    let many = ingest(&pki, &collector, &eight, events / 8);
    let seconds = if quick { 1 } else { 10 };
    let lat = latency(
        &pki,
        &collector.addr,
        "bench-agent",
        seconds,
        DEFAULT_SYNC_INTERVAL_MS,
    );
    let lat0 = latency(&pki, &collector.addr, "bench-agent-fsync", seconds, 0);
    drop(collector);
    let fleet = fleet(&pki, quick);
    println!(
        "{}",
        json!({
            "ingest_1_agent": one,
            "ingest_8_agents": many,
            "latency": lat,
            "latency_fsync_every_batch": lat0,
            "fleet": fleet,
        })
    );
}
