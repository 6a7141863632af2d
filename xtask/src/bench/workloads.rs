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
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    auditd::AuditRules,
    cleanup::Undo,
    compare::{compare, Case, Plan},
    setting::AgentArgs,
    worker::spawn_loop,
};
use crate::bench_db::Cluster;

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
    let mut cases = [Case {
        name: "select-only transaction",
        run: Box::new(|| Ok(1e6 / cluster.pgbench_select(seconds)?)),
    }];
    compare(
        &Plan {
            name: "pgbench",
            what: format!("pgbench -S -c 1 over TCP for {seconds} s per round"),
            unit: "µs",
            rounds,
            agent: &agent,
            rules,
        },
        &mut cases,
    )
}
