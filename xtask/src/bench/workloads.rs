//! The overhead workloads — `open`, `exec`, `connect`, `pgbench` — each run under every
//! setting by [`compare`], with the agent watching the workload's resource and, enforcing, a
//! policy that covers it and allows this process (so the loop measures the decision).

use std::{
    ffi::OsString,
    fs,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::Context as _;
use serde_json::{json, Value};

use super::{
    auditd::AuditRules,
    cleanup::Undo,
    compare::{compare, median, Case, Plan},
    services::ServiceGroups,
    setting::{unit_cpu_weight, Agent, AgentArgs, AgentCounters},
    worker::spawn_loop,
};
use crate::bench_db::{Cluster, Length};

/// A scratch tree under the temporary directory, removed on drop: `watched/rec.txt` (watched
/// and, enforcing, protected), `refused/rec.txt` (enforcing, protected from this process),
/// `plain/file.txt` (neither), an empty agent configuration and one policy directory per
/// workload.
pub struct Scratch {
    /// Its root.
    pub root: PathBuf,
}

impl Scratch {
    /// Makes the tree.
    pub fn new() -> anyhow::Result<Scratch> {
        let root = std::env::temp_dir().join(format!("phiguard-bench-{}", std::process::id()));
        let scratch = Scratch { root };
        fs::create_dir_all(scratch.root.join("watched"))?;
        fs::create_dir_all(scratch.root.join("plain"))?;
        fs::create_dir_all(scratch.root.join("refused"))?;
        fs::write(scratch.watched_file(), "x")?;
        fs::write(scratch.refused_file(), "x")?;
        fs::write(scratch.plain_file(), "x")?;
        fs::write(scratch.root.join("agent.toml"), "")?;
        Ok(scratch)
    }

    /// The watched directory.
    pub fn watched_dir(&self) -> PathBuf {
        self.root.join("watched")
    }

    /// A file in it.
    pub fn watched_file(&self) -> PathBuf {
        self.root.join("watched/rec.txt")
    }

    /// A file the `open` workload's policy protects from this process (only `/usr/bin/false`
    /// may read it).
    pub fn refused_file(&self) -> PathBuf {
        self.root.join("refused/rec.txt")
    }

    /// A file no watch or policy covers.
    pub fn plain_file(&self) -> PathBuf {
        self.root.join("plain/file.txt")
    }

    /// The agent's arguments: `extra` (watches) after an empty configuration (or `config`)
    /// and a status file of its own; `policy` written as the one policy of `name`'s directory.
    pub fn agent_args(
        &self,
        name: &str,
        config: Option<&str>,
        extra: &[OsString],
        policy: &str,
    ) -> anyhow::Result<AgentArgs> {
        let config_file = self.root.join(format!("{name}.toml"));
        fs::write(&config_file, config.unwrap_or(""))?;
        let policies = self.root.join(format!("policies-{name}"));
        fs::create_dir_all(&policies)?;
        fs::write(policies.join("bench.yaml"), policy)?;
        let mut args: Vec<OsString> = vec![
            "--config".into(),
            config_file.into(),
            "--status-file".into(),
            self.root.join("status.json").into(),
        ];
        args.extend(extra.iter().cloned());
        Ok(AgentArgs { args, policies })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn me() -> anyhow::Result<String> {
    Ok(std::env::current_exe()?.display().to_string())
}

/// ns per operation of `count` runs of `op`.
fn per_op(count: u32, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    for _ in 0..count {
        op()?;
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(count))
}

/// `open`: open+close of an unwatched file and of a watched one (each open an event), and an
/// open of a file the policy protects from this process: enforcing, the layer refuses it
/// (`EPERM`: fanotify or BPF LSM; the SIGKILL layer would end the loop, so the refused case
/// fails there rather than measure something else), in the other settings it is a plain open.
pub fn open(scratch: &Scratch, rules: &AuditRules, quick: bool) -> anyhow::Result<Value> {
    let (rounds, count) = if quick { (2, 5_000) } else { (7, 100_000) };
    let policy = format!(
        "name: bench\nmode: enforce\nrules:\n  - name: records\n    files:\n      - path: {}/**\n        access: [read, write]\n    allow:\n      - exe: {}\n  - name: refused\n    files:\n      - path: {}/**\n        access: [read]\n    allow:\n      - exe: /usr/bin/false\n",
        scratch.watched_dir().display(),
        me()?,
        scratch.refused_file().parent().unwrap_or(&scratch.root).display(),
    );
    let agent = scratch.agent_args(
        "open",
        None,
        &["--watch".into(), scratch.watched_dir().into()],
        &policy,
    )?;
    let open = |path: PathBuf| {
        let args = [
            "open".to_owned(),
            path.display().to_string(),
            count.to_string(),
        ];
        move || spawn_loop(&args)
    };
    let mut cases = [
        Case {
            name: "unwatched path",
            run: Box::new(open(scratch.plain_file())),
        },
        Case {
            name: "watched path (allowed)",
            run: Box::new(open(scratch.watched_file())),
        },
        Case {
            name: "protected path (refused)",
            run: Box::new(move || {
                spawn_loop(&[
                    "open-or-refused".to_owned(),
                    scratch.refused_file().display().to_string(),
                    count.to_string(),
                ])
            }),
        },
    ];
    compare(
        &Plan {
            name: "open",
            what: format!("open+close of one file, {count} per round"),
            unit: "ns",
            rounds,
            agent: &agent,
            rules,
        },
        &mut cases,
    )
}

/// This process in a cgroup v2 of its own until dropped, so an exec policy can cover its
/// children and nothing else on the host.
struct OwnCgroup {
    /// Its path relative to the cgroup v2 root (as a policy names it).
    name: String,
    _undo: Undo,
}

impl OwnCgroup {
    fn enter() -> anyhow::Result<OwnCgroup> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        // Field 5 is the mount point; the filesystem type follows the " - " separator.
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                    .flatten()
            })
            .context("no cgroup2 filesystem mounted")?;
        let current = fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            .context("this process has no cgroup v2 entry")?;
        let original = root.join(current.trim_start_matches('/'));
        let name = format!("phiguard-bench-{}", std::process::id());
        let dir = root.join(&name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pid = std::process::id().to_string();
        let undo = {
            let (dir, original, pid) = (dir.clone(), original.clone(), pid.clone());
            Undo::register(move || {
                let _ = fs::write(original.join("cgroup.procs"), &pid);
                let _ = fs::remove_dir(&dir);
            })
        };
        fs::write(dir.join("cgroup.procs"), &pid)
            .with_context(|| format!("moving into {}", dir.display()))?;
        Ok(OwnCgroup {
            name: format!("/{name}"),
            _undo: undo,
        })
    }
}

/// `exec`: fork+exec of `/bin/true`, waited for.
pub fn exec(scratch: &Scratch, rules: &AuditRules, quick: bool) -> anyhow::Result<Value> {
    let (rounds, count) = if quick { (2, 100) } else { (7, 1_000) };
    let cgroup = OwnCgroup::enter()?;
    // Everything this process runs during the benchmark, the agent and auditd included.
    let mut allowed: Vec<PathBuf> = ["/bin", "/sbin", "/usr/bin", "/usr/sbin"]
        .iter()
        .filter_map(|d| fs::canonicalize(d).ok())
        .collect();
    allowed.push(crate::cmd::target_dir().join("release"));
    allowed.sort();
    allowed.dedup();
    let list: String = allowed
        .iter()
        .map(|d| format!("        - {}\n", d.display()))
        .collect();
    let policy = format!(
        "name: bench\nmode: enforce\nrules:\n  - name: binaries\n    exec:\n      allow:\n{list}      cgroup: {}\n",
        cgroup.name
    );
    let agent = scratch.agent_args(
        "exec",
        None,
        &["--watch".into(), scratch.watched_dir().into()],
        &policy,
    )?;
    let mut cases = [Case {
        name: "/bin/true",
        run: Box::new(|| {
            per_op(count, || {
                let status = Command::new("/bin/true")
                    .stdin(Stdio::null())
                    .status()
                    .context("running /bin/true")?;
                anyhow::ensure!(status.success(), "/bin/true: {status}");
                Ok(())
            })
        }),
    }];
    let result = compare(
        &Plan {
            name: "exec",
            what: format!("fork+exec+wait of /bin/true, {count} per round"),
            unit: "ns",
            rounds,
            agent: &agent,
            rules,
        },
        &mut cases,
    );
    drop(cgroup);
    result
}

/// A loopback listener that accepts and closes until dropped.
struct Listener {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> anyhow::Result<Listener> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
                if flag.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        Ok(Listener {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `connect`: TCP connect to a loopback listener on a watched port, which accepts and closes;
/// the client waits for that close, then closes.
pub fn connect(scratch: &Scratch, rules: &AuditRules, quick: bool) -> anyhow::Result<Value> {
    let (rounds, count) = if quick { (2, 300) } else { (7, 3_000) };
    let listener = Listener::start()?;
    let port = listener.port;
    let policy = format!(
        "name: bench\nmode: enforce\nrules:\n  - name: service\n    database:\n      - port: {port}\n    allow:\n      - exe: {}\n",
        me()?
    );
    let agent = scratch.agent_args(
        "connect",
        None,
        &["--watch-port".into(), port.to_string().into()],
        &policy,
    )?;
    let mut cases = [Case {
        name: "watched port (allowed)",
        run: Box::new(move || {
            spawn_loop(&["connect".to_owned(), port.to_string(), count.to_string()])
        }),
    }];
    compare(
        &Plan {
            name: "connect",
            what: format!("TCP connect+close to 127.0.0.1:{port} (watched), {count} per round"),
            unit: "ns",
            rounds,
            agent: &agent,
            rules,
        },
        &mut cases,
    )
}

/// `pgbench`: `pgbench -S` (one client over TCP) against a throwaway PostgreSQL cluster; the
/// agent captures the database sessions on both ends. Reported as µs per transaction.
pub fn pgbench(scratch: &Scratch, rules: &AuditRules, quick: bool) -> anyhow::Result<Value> {
    let (rounds, seconds) = if quick { (1, 1) } else { (5, 3) };
    let (cluster, agent) = pgbench_cluster(scratch)?;
    let mut cases = [Case {
        name: "select-only transaction",
        run: Box::new(|| Ok(1e6 / cluster.pgbench_select(seconds)?)),
    }];
    let mut result = compare(
        &Plan {
            name: "pgbench",
            what: format!("pgbench -S -c 1 over TCP for {seconds} s per round"),
            unit: "µs",
            rounds,
            agent: &agent,
            rules,
        },
        &mut cases,
    )?;
    result["clients_8"] = pgbench_clients(scratch, &cluster, quick)?;
    Ok(result)
}

/// A cluster initialised for `pgbench` (scale 1) and the agent's arguments auditing it.
fn pgbench_cluster(scratch: &Scratch) -> anyhow::Result<(Cluster, AgentArgs)> {
    let cluster = Cluster::start()?;
    let port = cluster.port.to_string();
    cluster.run(
        "pgbench",
        &[
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "postgres",
        ],
    )?;
    let socket = cluster.dir.join(format!(".s.PGSQL.{port}"));
    let config = format!(
        "[database]\nports = [{port}]\nunix_sockets = [\"{}\"]\n",
        socket.display()
    );
    let policy = format!(
        "name: bench\nmode: enforce\nrules:\n  - name: database\n    database:\n      - port: {port}\n    allow:\n      - exe: {}\n",
        cluster.bin.join("pgbench").display()
    );
    let agent = scratch.agent_args("pgbench", Some(&config), &[], &policy)?;
    Ok((cluster, agent))
}

/// Clients, threads and transactions per client of the concurrent `pgbench` run.
const CLIENTS: u32 = 8;
const THREADS: u32 = 2;

/// `dbStatement` events the agent wrote, by end (0 client, 1 server), counted from its
/// output as it runs.
#[derive(Default)]
struct DbEventCounts {
    /// Statements of the benchmark's script (`pgbench_accounts`).
    bench: [AtomicU64; 2],
    /// Of those, reported without a successful outcome.
    bench_not_ok: [AtomicU64; 2],
    /// Any other statement (pgbench's set-up queries).
    other: [AtomicU64; 2],
    /// Session ends marked desynchronised.
    desynchronised: [AtomicU64; 2],
}

impl DbEventCounts {
    /// Counts the agent's JSON lines in `file` and its rotated siblings (`file.N`), then
    /// removes them. A substring test per line, not a parse.
    fn count(file: &std::path::Path) -> anyhow::Result<DbEventCounts> {
        let counts = DbEventCounts::default();
        let dir = file.parent().context("events file directory")?;
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .context("events file name")?;
        for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
            let found = entry.file_name();
            let Some(found) = found.to_str() else {
                continue;
            };
            if found != name && !found.starts_with(&format!("{name}.")) {
                continue;
            }
            let path = entry.path();
            let mut reader = std::io::BufReader::with_capacity(1 << 20, fs::File::open(&path)?);
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut reader, &mut line)? > 0 {
                let end = usize::from(line.contains("\"role\":\"server\""));
                if line.contains("\"dbStatement\"") {
                    if line.contains("pgbench_accounts") {
                        counts.bench[end].fetch_add(1, Ordering::Relaxed);
                        if !line.contains("\"ok\":true") {
                            counts.bench_not_ok[end].fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        counts.other[end].fetch_add(1, Ordering::Relaxed);
                    }
                } else if line.contains("\"dbSessionEnd\"")
                    && line.contains("\"desynchronised\":true")
                {
                    counts.desynchronised[end].fetch_add(1, Ordering::Relaxed);
                }
                line.clear();
            }
            fs::remove_file(&path)?;
        }
        Ok(counts)
    }
}

/// Total size of `file` and its rotated siblings.
fn events_bytes(file: &std::path::Path) -> u64 {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) else {
        return 0;
    };
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|f| f == name || f.starts_with(&format!("{name}.")))
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn loads(counts: &[AtomicU64; 2]) -> [u64; 2] {
    [
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    ]
}

/// One round's figures under the agent.
struct AgentRound {
    tps: f64,
    statements: u64,
    reported: [u64; 2],
    not_ok: [u64; 2],
    other: [u64; 2],
    desynchronised: [u64; 2],
    cpu: std::time::Duration,
    counters: AgentCounters,
}

/// `pgbench -S -c 8 -j 2` over TCP and the unix socket, with no agent and with the agent
/// auditing both ends, alternating round by round: the tps ratio, the agent's CPU time
/// (utime + stime from `/proc`) per 1,000 statements, and the loss check: every transaction
/// of `-S` is one statement, so each end must report exactly the transactions pgbench
/// processed; what it did not, and the agent's kernel-loss and decode-error counters, are
/// printed.
/// Only the 8-client part of `pgbench` (`cargo xtask bench pgbench-clients`).
pub fn pgbench_clients_only(scratch: &Scratch, quick: bool) -> anyhow::Result<Value> {
    let (cluster, _) = pgbench_cluster(scratch)?;
    pgbench_clients(scratch, &cluster, quick)
}

fn pgbench_clients(scratch: &Scratch, cluster: &Cluster, quick: bool) -> anyhow::Result<Value> {
    let (rounds, transactions) = if quick { (1, 200) } else { (5, 20_000) };
    // The agent writes its events to a file, as the packaged configuration does (a pipe's
    // reader would be part of what is measured, and a slow one makes the agent lose records);
    // they are counted after each round.
    let events = scratch.root.join("pgbench-events.jsonl");
    let socket = cluster.dir.join(format!(".s.PGSQL.{}", cluster.port));
    let config = format!(
        "[database]\nports = [{}]\nunix_sockets = [\"{}\"]\n\n[output]\nstdout = false\nfile = \"{}\"\nfile_max_bytes = 17179869184\nfile_keep = 1000\n",
        cluster.port,
        socket.display(),
        events.display()
    );
    let agent = &scratch.agent_args("pgbench-clients", Some(&config), &[], "")?;
    let weight = unit_cpu_weight();
    let groups = match ServiceGroups::create(weight) {
        Ok(groups) => {
            ServiceGroups::put_with_children(&groups.db, cluster.postmaster_pid()?)?;
            Some(groups)
        }
        Err(e) => {
            println!(
                "(database, clients and agent share one cgroup: {e:#}; the agent then gets only its fair share among the database's processes)"
            );
            None
        }
    };
    let clients = groups.as_ref().map(|g| g.clients.as_path());
    let socket_dir = cluster.dir.display().to_string();
    let mut cases = Vec::new();
    let mut loss_seen = false;
    let mut plan = vec![
        (
            "tcp",
            "127.0.0.1",
            Length::Transactions(transactions),
            rounds,
        ),
        (
            "unix",
            socket_dir.as_str(),
            Length::Transactions(transactions),
            rounds,
        ),
    ];
    if !quick {
        // Sustained: long enough for a reader that falls behind to fill the ring buffer many
        // times over (16 MiB is under a second of this load).
        plan.push(("tcp", "127.0.0.1", Length::Seconds(SUSTAINED_SECONDS), 1));
    }
    for (transport, host, length, rounds) in plan {
        let mut baseline = Vec::new();
        let mut runs: Vec<AgentRound> = Vec::new();
        for round in 0..rounds {
            for with_agent in [round % 2 == 1, round % 2 == 0] {
                if !with_agent {
                    let (tps, _) =
                        cluster.pgbench_clients(host, CLIENTS, THREADS, length, clients)?;
                    baseline.push(tps);
                    continue;
                }
                runs.push(agent_round(
                    cluster,
                    agent,
                    groups.as_ref(),
                    &events,
                    host,
                    length,
                )?);
            }
        }
        let (case, lost) = summarize(transport, length, &baseline, &runs, groups.is_some());
        loss_seen |= lost;
        cases.push(case);
    }
    Ok(json!({ "cases": cases, "lost": loss_seen }))
}

/// Seconds of the sustained 8-client run.
const SUSTAINED_SECONDS: u32 = 30;

/// One `pgbench` run with the agent auditing both ends (in its own cgroup), its events counted.
fn agent_round(
    cluster: &Cluster,
    agent: &AgentArgs,
    groups: Option<&ServiceGroups>,
    events: &std::path::Path,
    host: &str,
    length: Length,
) -> anyhow::Result<AgentRound> {
    let running = Agent::run(agent, false)?;
    if let Some(groups) = groups {
        ServiceGroups::put(&groups.agent, running.pid())?;
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let cpu_before = running.cpu_time();
    let (tps, statements) = cluster.pgbench_clients(
        host,
        CLIENTS,
        THREADS,
        length,
        groups.map(|g| g.clients.as_path()),
    )?;
    // Let the agent finish what is in its ring buffer: until its output stops growing for
    // half a second.
    let mut last = u64::MAX;
    let settle = Instant::now();
    while events_bytes(events) != last && settle.elapsed() < std::time::Duration::from_secs(60) {
        last = events_bytes(events);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let cpu = running.cpu_time().saturating_sub(cpu_before);
    let counters = running.stop()?;
    let counts = DbEventCounts::count(events)?;
    Ok(AgentRound {
        tps,
        statements,
        reported: loads(&counts.bench),
        not_ok: loads(&counts.bench_not_ok),
        other: loads(&counts.other),
        desynchronised: loads(&counts.desynchronised),
        cpu,
        counters,
    })
}

/// Prints one case's figures; its JSON, and whether any statement was lost.
fn summarize(
    transport: &str,
    length: Length,
    baseline: &[f64],
    runs: &[AgentRound],
    separated: bool,
) -> (Value, bool) {
    let base = median(&mut baseline.to_vec());
    let with = median(&mut runs.iter().map(|r| r.tps).collect::<Vec<_>>());
    let statements: u64 = runs.iter().map(|r| r.statements).sum();
    let reported = [0, 1].map(|end| runs.iter().map(|r| r.reported[end]).sum::<u64>());
    let not_ok = [0, 1].map(|end| runs.iter().map(|r| r.not_ok[end]).sum::<u64>());
    let other = [0, 1].map(|end| runs.iter().map(|r| r.other[end]).sum::<u64>());
    let desync = [0, 1].map(|end| runs.iter().map(|r| r.desynchronised[end]).sum::<u64>());
    let missing = reported.map(|r| statements.saturating_sub(r));
    let cpu: f64 = runs.iter().map(|r| r.cpu.as_secs_f64()).sum();
    let cpu_ms_per_1000 = cpu * 1e3 / (statements as f64 / 1e3);
    let mut counters = AgentCounters::default();
    for r in runs {
        counters += r.counters;
    }
    let lost = missing.iter().any(|&m| m > 0)
        || not_ok.iter().any(|&m| m > 0)
        || counters.kernel_lost > 0
        || desync.iter().any(|&d| d > 0);
    println!(
        "\npgbench -S -c {CLIENTS} -j {THREADS} {length} over {transport}, {} rounds alternating no agent / agent auditing both ends; database, clients and agent in {}",
        runs.len(),
        if separated {
            "cgroups of their own (the agent's at the unit's CPUWeight=)"
        } else {
            "one cgroup"
        }
    );
    println!(
        "  tps (median): no agent {base:.0}, agent {with:.0}: {:.3}x  (no agent {:?}, agent {:?})",
        with / base,
        baseline.iter().map(|t| t.round()).collect::<Vec<_>>(),
        runs.iter().map(|r| r.tps.round()).collect::<Vec<_>>()
    );
    println!(
        "  agent CPU: {:.3} s for {statements} statements = {cpu_ms_per_1000:.1} ms per 1,000 statements (both ends)",
        cpu
    );
    println!(
        "  statements executed {statements}; dbStatement reported: client {} (missing {}, without outcome {}), server {} (missing {}, without outcome {}); other statements client {} server {}",
        reported[0], missing[0], not_ok[0], reported[1], missing[1], not_ok[1], other[0], other[1]
    );
    println!(
        "  agent: {} records, {} events, {} lost in the kernel, {} decode errors; desynchronised sessions client {} server {}{}",
        counters.records,
        counters.events,
        counters.kernel_lost,
        counters.decode_errors,
        desync[0],
        desync[1],
        if lost { "  <-- STATEMENTS LOST" } else { "  (no loss)" }
    );
    let statements_both_ends = (2 * statements).max(1) as f64;
    println!(
        "  database capture: {} records, {} bytes = {:.0} bytes per statement per end",
        counters.db_records,
        counters.db_bytes,
        counters.db_bytes as f64 / statements_both_ends
    );
    let case = json!({
        "transport": transport,
        "clients": CLIENTS, "threads": THREADS, "length": length.to_string(),
        "service_cgroups": separated,
        "tps_no_agent": baseline, "tps_agent": runs.iter().map(|r| r.tps).collect::<Vec<_>>(),
        "tps_ratio": with / base,
        "agent_cpu_seconds": cpu, "agent_cpu_ms_per_1000_statements": cpu_ms_per_1000,
        "statements": statements,
        "reported": { "client": reported[0], "server": reported[1] },
        "missing": { "client": missing[0], "server": missing[1] },
        "without_outcome": { "client": not_ok[0], "server": not_ok[1] },
        "other_statements": { "client": other[0], "server": other[1] },
        "desynchronised_sessions": { "client": desync[0], "server": desync[1] },
        "agent_records": counters.records, "agent_events": counters.events,
        "agent_kernel_lost": counters.kernel_lost, "agent_decode_errors": counters.decode_errors,
        "db_capture_records": counters.db_records, "db_capture_bytes": counters.db_bytes,
        "lost": lost,
    });
    (case, lost)
}
