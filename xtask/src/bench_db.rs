//! `cargo xtask bench db`: what the database capture hooks cost.
//!
//! The hooks are `sys_exit_*` tracepoints on `read`, `write`, `sendto`, `recvfrom`, `readv`,
//! `writev`, `sendmsg` and `recvmsg`, so they run for every such call on the host, not only on
//! database sockets. This measures what they cost everything else: `write(2)` then `read(2)`
//! of 4 KiB on a plain file, with no agent, with the agent without a `[database]` endpoint,
//! and with one (hooks attached; this process holds no database socket, so each call costs
//! the hooks' one lookup), as ratios to the baseline taken in the same invocation. What they
//! cost the database itself is the `pgbench` benchmark (`pgbench -S` with the agent capturing
//! every statement on both ends, against no agent, the hook floor and auditd).

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    net::TcpListener,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

use crate::cmd;

/// A PostgreSQL cluster in a scratch directory, stopped and removed on drop.
pub(crate) struct Cluster {
    /// The server's bin directory.
    pub(crate) bin: PathBuf,
    /// Its scratch directory (the data directory and the unix socket are in it).
    pub(crate) dir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub(crate) port: u16,
    uid: u32,
    gid: u32,
}

/// How long a `pgbench` run lasts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Length {
    /// Transactions per client (`-t`).
    Transactions(u32),
    /// Seconds (`-T`).
    Seconds(u32),
}

impl std::fmt::Display for Length {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Length::Transactions(t) => write!(f, "-t {t}"),
            Length::Seconds(s) => write!(f, "-T {s}"),
        }
    }
}

impl Cluster {
    /// `initdb` and start a cluster.
    pub(crate) fn start() -> anyhow::Result<Cluster> {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL not installed (cargo xtask setup installs it)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .context("no initdb under /usr/lib/postgresql")?;
        let user = nix::unistd::User::from_name("postgres")?.context("user postgres")?;
        let dir = std::env::temp_dir().join(format!("phiguard-bench-pg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cluster = Cluster {
            bin,
            dir,
            port,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        };
        let data = cluster.dir.join("data").display().to_string();
        cluster.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            cluster.dir.display()
        );
        let log = cluster.dir.join("log").display().to_string();
        cluster.run(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        )?;
        Ok(cluster)
    }

    /// Runs one of the server's programs as `postgres`; its stdout.
    pub(crate) fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join(program))
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `pgbench -S -n -M simple` with `clients` clients on `threads` threads for `length`
    /// (transactions per client, or seconds), over `host` (127.0.0.1 or the socket
    /// directory), in cgroup `group` when given: transactions per second and the transactions
    /// it processed.
    pub(crate) fn pgbench_clients(
        &self,
        host: &str,
        clients: u32,
        threads: u32,
        length: Length,
        group: Option<&Path>,
    ) -> anyhow::Result<(f64, u64)> {
        let port = self.port.to_string();
        let (c, j) = (clients.to_string(), threads.to_string());
        let (flag, n) = match length {
            Length::Transactions(t) => ("-t", t.to_string()),
            Length::Seconds(s) => ("-T", s.to_string()),
        };
        let child = Command::new(self.bin.join("pgbench"))
            .args([
                "-S", "-n", "-M", "simple", "-c", &c, "-j", &j, flag, &n, "-h", host, "-p", &port,
                "-U", "postgres", "postgres",
            ])
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running pgbench")?;
        if let Some(group) = group {
            crate::bench::ServiceGroups::put(group, child.id())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let out = String::from_utf8_lossy(&out.stdout);
        let tps = out
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .context("no tps in pgbench output")?;
        // "number of transactions actually processed: 40000/40000" (with -T: "…: 40000")
        let processed = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|l| l.split('/').next()?.trim().parse().ok())
            .context("no transaction count in pgbench output")?;
        Ok((tps, processed))
    }

    /// The postmaster's process id (the first line of `postmaster.pid`).
    pub(crate) fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let file = self.dir.join("data/postmaster.pid");
        fs::read_to_string(&file)?
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no process id in {}", file.display()))
    }

    /// `pgbench -S` for `seconds`: transactions per second.
    pub(crate) fn pgbench_select(&self, seconds: u32) -> anyhow::Result<f64> {
        let port = self.port.to_string();
        let out = self.run(
            "pgbench",
            &[
                "-S",
                "-n",
                "-c",
                "1",
                "-T",
                &seconds.to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "postgres",
            ],
        )?;
        out.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .context("no tps in pgbench output")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The release agent with a `[database]` section, its events discarded.
struct DbAgent {
    child: Child,
    config: PathBuf,
}

impl DbAgent {
    /// Starts the agent; with `endpoint` (port, unix socket) the database hooks are attached,
    /// without it they are not (everything else is the same).
    fn start(endpoint: Option<(u16, &Path)>) -> anyhow::Result<DbAgent> {
        let config =
            std::env::temp_dir().join(format!("phiguard-bench-db-{}.toml", std::process::id()));
        let text = match endpoint {
            Some((port, socket)) => format!(
                "[database]\nports = [{port}]\nunix_sockets = [\"{}\"]\n",
                socket.display()
            ),
            None => String::new(),
        };
        fs::write(&config, text)?;
        let binary = cmd::target_dir().join("release/phiguard");
        let mut child = Command::new(&binary)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
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
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in stderr.lines() {});
        Ok(DbAgent { child, config })
    }
}

impl Drop for DbAgent {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.config);
    }
}

/// `write(2)` then `read(2)` of 4 KiB at offset 0, `count` times: ns per pair.
fn read_write_loop(file: &mut File, count: u32) -> f64 {
    let block = [7u8; 4096];
    let mut back = [0u8; 4096];
    let start = Instant::now();
    for _ in 0..count {
        file.seek(SeekFrom::Start(0)).expect("seek");
        file.write_all(&block).expect("write");
        file.seek(SeekFrom::Start(0)).expect("seek");
        file.read_exact(&mut back).expect("read");
    }
    start.elapsed().as_nanos() as f64 / f64::from(count)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The 1-minute load average, for the record (the machine is shared).
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// Runs the file read/write loop with no agent (before and after, so drift shows in the
/// spread), the agent without its database hooks, and with them (against a live cluster's
/// port and socket).
pub fn bench_db(scratch: &Path, quick: bool) -> anyhow::Result<Value> {
    let (rounds, count): (u32, u32) = if quick { (3, 20_000) } else { (7, 200_000) };
    let load_before = load_average();
    let path = scratch.join("db-rw.bin");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let cluster = Cluster::start()?;
    let socket = cluster.dir.join(format!(".s.PGSQL.{}", cluster.port));
    let mut base_rw = Vec::new();
    let mut plain_rw = Vec::new();
    let mut agent_rw = Vec::new();
    for _ in 0..rounds.div_ceil(2) {
        base_rw.push(read_write_loop(&mut file, count));
    }
    let agent = DbAgent::start(None)?;
    for _ in 0..rounds {
        plain_rw.push(read_write_loop(&mut file, count));
    }
    drop(agent);
    let agent = DbAgent::start(Some((cluster.port, socket.as_path())))?;
    for _ in 0..rounds {
        agent_rw.push(read_write_loop(&mut file, count));
    }
    drop(agent);
    for _ in 0..rounds / 2 {
        base_rw.push(read_write_loop(&mut file, count));
    }
    let (base, plain, with_db) = (
        median(&mut base_rw),
        median(&mut plain_rw),
        median(&mut agent_rw),
    );
    let _ = fs::remove_file(&path);
    let load_after = load_average();

    println!("\ndb: capture hooks on the read/write syscall family (load average {load_before} before, {load_after} after)");
    println!(
        "file: lseek+write+lseek+read of 4 KiB, {rounds} rounds of {count}, median ns per pair"
    );
    println!("{:<40} {:>10} {:>8}", "setting", "ns", "ratio");
    for (name, ns) in [
        ("no agent", base),
        ("agent without database hooks", plain),
        ("agent with database hooks", with_db),
    ] {
        println!("{name:<40} {ns:>10.0} {:>7.3}x", ns / base);
    }
    Ok(json!({
        "load_average": { "before": load_before, "after": load_after },
        "file_rw_ns": {
            "no_agent": base, "agent_without_db_hooks": plain, "agent_with_db_hooks": with_db,
            "ratio_db_hooks_vs_no_agent": with_db / base, "ratio_db_hooks_vs_agent": with_db / plain,
        },
    }))
}
