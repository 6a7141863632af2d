//! The settings every overhead benchmark compares: no agent, the hook floor, the agent
//! observing, the agent enforcing, and auditd with rules equivalent to the agent's watches.

use std::{
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;

use super::{
    auditd::{AuditRules, Auditd},
    cleanup::Undo,
};
use crate::cmd;

/// What runs while a workload is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// Nothing: the baseline.
    Baseline,
    /// Empty programs at exactly the agent's hooks (`phiguard bench-floor`).
    Floor,
    /// The agent watching the workload's resource.
    Observing,
    /// The agent watching it and enforcing a policy that covers it and allows the workload.
    Enforcing,
    /// Debian's auditd with rules equivalent to the agent's watches.
    Auditd,
}

impl Setting {
    /// All settings, in the order of the first round.
    pub const ALL: [Setting; 5] = [
        Setting::Baseline,
        Setting::Floor,
        Setting::Observing,
        Setting::Enforcing,
        Setting::Auditd,
    ];

    /// Its name in tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Setting::Baseline => "baseline",
            Setting::Floor => "hook floor",
            Setting::Observing => "observing",
            Setting::Enforcing => "enforcing",
            Setting::Auditd => "auditd",
        }
    }
}

/// The agent's arguments for one workload: `run` and `bench-floor` get the same ones, so the
/// floor has the hooks the observing agent has; enforcing adds `--policies`.
pub struct AgentArgs {
    /// `--config`, `--watch`, `--watch-port`, `--status-file`.
    pub args: Vec<OsString>,
    /// A policy directory covering the workload's resource and allowing the workload.
    pub policies: PathBuf,
}

/// The agent's counters from its shutdown line.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentCounters {
    /// Records read from the ring buffer.
    pub records: u64,
    /// Events emitted.
    pub events: u64,
    /// Records that did not decode.
    pub decode_errors: u64,
    /// Records lost in the kernel (ring buffer full).
    pub kernel_lost: u64,
    /// Database capture records, and their bytes.
    pub db_records: u64,
    /// See [`AgentCounters::db_records`].
    pub db_bytes: u64,
}

impl std::ops::AddAssign for AgentCounters {
    fn add_assign(&mut self, other: AgentCounters) {
        self.records += other.records;
        self.events += other.events;
        self.kernel_lost += other.kernel_lost;
        self.decode_errors += other.decode_errors;
        self.db_records += other.db_records;
        self.db_bytes += other.db_bytes;
    }
}

fn phiguard() -> PathBuf {
    cmd::target_dir().join("release/phiguard")
}

/// The `Nice=` of the packaged unit (`packaging/phiguard.service`): the agent is measured at
/// the priority it is deployed with.
pub fn unit_nice() -> Option<i32> {
    let unit = fs::read_to_string(cmd::workspace_root().join("packaging/phiguard.service")).ok()?;
    unit.lines()
        .find_map(|l| l.trim().strip_prefix("Nice="))
        .and_then(|v| v.trim().parse().ok())
}

/// The `CPUWeight=` of the packaged unit: the benchmarks that run the agent in a cgroup of its
/// own give that cgroup this weight, as systemd does.
pub fn unit_cpu_weight() -> Option<u64> {
    let unit = fs::read_to_string(cmd::workspace_root().join("packaging/phiguard.service")).ok()?;
    unit.lines()
        .find_map(|l| l.trim().strip_prefix("CPUWeight="))
        .and_then(|v| v.trim().parse().ok())
}

/// Sets the nice value of every thread of `pid` (as systemd's `Nice=` does from the start).
fn set_nice(pid: u32, nice: i32) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.filter_map(Result::ok) {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        {
            // SAFETY: a plain system call on a thread id.
            unsafe {
                nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, nice);
            }
        }
    }
}

/// A release `phiguard` (`run` or `bench-floor`) with JSON logs, its events discarded.
pub struct Agent {
    child: Child,
    /// Reads its log until it exits and returns the counters of its shutdown line.
    log: Option<JoinHandle<AgentCounters>>,
    /// Kills it (and unloads pinned enforcement) if the benchmark ends early.
    undo: Option<Undo>,
    enforcing: bool,
}

impl Agent {
    /// `phiguard run` observing, or enforcing `policies`.
    pub fn run(args: &AgentArgs, enforce: bool) -> anyhow::Result<Agent> {
        let mut all: Vec<OsString> = vec!["run".into()];
        all.extend(args.args.iter().cloned());
        if enforce {
            all.push("--policies".into());
            all.push(args.policies.clone().into());
        }
        Agent::spawn(&all, "events are flowing", enforce, Stdio::null())
    }

    /// `phiguard bench-floor`: empty programs at the hooks `run` would use.
    pub fn floor(args: &AgentArgs) -> anyhow::Result<Agent> {
        let mut all: Vec<OsString> = vec!["bench-floor".into()];
        all.extend(args.args.iter().cloned());
        Agent::spawn(&all, "hook floor attached", false, Stdio::null())
    }

    fn spawn(
        args: &[OsString],
        ready: &str,
        enforcing: bool,
        stdout: Stdio,
    ) -> anyhow::Result<Agent> {
        let binary = phiguard();
        let mut child = Command::new(&binary)
            .args(["--log-format", "json"])
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        if let Some(nice) = unit_nice() {
            set_nice(pid, nice);
        }
        let undo = Undo::register(move || {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
            if enforcing {
                let _ = Command::new(phiguard()).arg("unload").output();
            }
        });
        let mut stderr = BufReader::new(child.stderr.take().context("agent stderr")?);
        let mut line = String::new();
        let mut seen = Vec::new();
        while !line.contains(ready) {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!(
                    "phiguard {:?} exited before it was ready:\n{}",
                    args.first(),
                    seen.join("")
                );
            }
            seen.push(line.clone());
        }
        // Drain the log so the agent never blocks on a full pipe; keep its shutdown counters.
        let log = std::thread::spawn(move || {
            let mut counters = AgentCounters::default();
            for line in stderr.lines().map_while(Result::ok) {
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
                    counters.decode_errors = fields["decode_errors"].as_u64().unwrap_or(0);
                    counters.db_records = fields["db_records"].as_u64().unwrap_or(0);
                    counters.db_bytes = fields["db_bytes"].as_u64().unwrap_or(0);
                }
            }
            counters
        });
        Ok(Agent {
            child,
            log: Some(log),
            undo: Some(undo),
            enforcing,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) it has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name; utime and stime are the 14th and 15th of the line.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ticks = field(11) + field(12);
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100)
            .max(1) as u64;
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }

    /// A `VmRSS`/`VmHWM`-style field of `/proc/PID/status`, in KiB.
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, wait, unload pinned enforcement; its counters.
    pub fn stop(mut self) -> anyhow::Result<AgentCounters> {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM)?;
        let status = self.child.wait()?;
        let counters = self
            .log
            .take()
            .map(|log| log.join().unwrap_or_default())
            .unwrap_or_default();
        if self.enforcing {
            // Enforcement outlives the agent by design: remove it.
            cmd::run(Command::new(phiguard()).arg("unload").stdout(Stdio::null()))?;
        }
        if let Some(undo) = self.undo.take() {
            undo.disarm();
        }
        if !status.success() {
            bail!("phiguard exited with {status}");
        }
        Ok(counters)
    }
}

/// One setting in force for one round of a workload.
pub enum Session {
    /// Nothing runs.
    Nothing,
    /// The floor or the agent.
    Agent(Agent),
    /// auditd with the rules.
    Auditd(Auditd),
}

impl Session {
    /// Puts `setting` in force.
    pub fn start(
        setting: Setting,
        agent: &AgentArgs,
        rules: &AuditRules,
    ) -> anyhow::Result<Session> {
        Ok(match setting {
            Setting::Baseline => Session::Nothing,
            Setting::Floor => Session::Agent(Agent::floor(agent)?),
            Setting::Observing => Session::Agent(Agent::run(agent, false)?),
            Setting::Enforcing => Session::Agent(Agent::run(agent, true)?),
            Setting::Auditd => Session::Auditd(Auditd::start(rules)?),
        })
    }

    /// Whether the floor or the agent runs (which [`super::compare`] lets settle).
    pub fn runs_agent(&self) -> bool {
        matches!(self, Session::Agent(_))
    }

    /// Ends it; the agent's counters when an agent ran.
    pub fn stop(self) -> anyhow::Result<AgentCounters> {
        match self {
            Session::Nothing => Ok(AgentCounters::default()),
            Session::Agent(agent) => agent.stop(),
            Session::Auditd(auditd) => {
                auditd.stop()?;
                Ok(AgentCounters::default())
            }
        }
    }
}
