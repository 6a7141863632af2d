//! auditd, the incumbent: started by the benchmark (unless it already runs) with audit rules
//! equivalent to the agent's watches, and everything put back afterwards — rules deleted by
//! their key, the kernel's audit `enabled` flag and backlog limit restored, the daemon stopped
//! if the benchmark started it — on every exit path (see [`super::cleanup`]).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::cleanup::Undo;

/// The key on every rule the benchmark adds: `auditctl -D -k` removes exactly those.
const KEY: &str = "phiguard-bench";
/// Debian's default backlog (`/etc/audit/rules.d/audit.rules`), so events are not dropped
/// for want of queue space as they would not be on a configured server.
const BACKLOG: &str = "8192";

/// Audit rules as `auditctl` arguments (without the key).
#[derive(Clone, Debug)]
pub struct AuditRules(pub Vec<Vec<String>>);

impl AuditRules {
    /// What matches the agent's watches: a file watch on `dir` for read, write and attribute
    /// changes, every `execve`, and every `connect` (audit cannot filter syscalls on the port
    /// inside the socket address, so this rule is broader than the agent's port watch).
    pub fn equivalent_to_watches(dir: &Path) -> AuditRules {
        let rule = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect();
        AuditRules(vec![
            rule(&["-w", &dir.display().to_string(), "-p", "rwa"]),
            rule(&["-a", "always,exit", "-F", "arch=b64", "-S", "execve"]),
            rule(&["-a", "always,exit", "-F", "arch=b64", "-S", "connect"]),
        ])
    }

    /// As one line for the report.
    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|r| r.join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `auditctl -s` fields the benchmark changes.
struct AuditStatus {
    enabled: String,
    backlog_limit: String,
    pid: u32,
}

fn auditctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("auditctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("auditctl not found: `cargo xtask setup` installs auditd")?;
    if !out.status.success() {
        bail!(
            "auditctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status() -> anyhow::Result<AuditStatus> {
    let text = auditctl(&["-s"])?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .with_context(|| format!("no {name} in auditctl -s"))
    };
    Ok(AuditStatus {
        enabled: field("enabled")?,
        backlog_limit: field("backlog_limit")?,
        pid: field("pid")?.parse().context("auditctl -s pid")?,
    })
}

/// auditd running with the rules; [`Auditd::stop`] or dropping it restores the machine.
pub struct Auditd {
    undo: Undo,
}

impl Auditd {
    /// Starts auditd (`auditd -n`, a child of this process) unless one runs, enables auditing,
    /// and adds `rules`.
    pub fn start(rules: &AuditRules) -> anyhow::Result<Auditd> {
        let before = status()?;
        let mut ours = None;
        if before.pid == 0 {
            std::fs::create_dir_all("/var/log/audit")?;
            // Keep the enabled flag as it is when auditd exits; the undo action restores it.
            let child = Command::new("auditd")
                .args(["-n", "-s", "nochange"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting auditd: `cargo xtask setup` installs it")?;
            ours = Some(child.id());
        }
        let (enabled, backlog) = (before.enabled.clone(), before.backlog_limit.clone());
        let undo = Undo::register(move || {
            let _ = auditctl(&["-D", "-k", KEY]);
            let _ = auditctl(&["-e", &enabled]);
            let _ = auditctl(&["-b", &backlog]);
            if let Some(pid) = ours {
                let pid = Pid::from_raw(pid as i32);
                let _ = kill(pid, Signal::SIGTERM);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        });
        if let Some(pid) = ours {
            let start = Instant::now();
            while status()?.pid != pid {
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("auditd (pid {pid}) did not register with the kernel within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            auditctl(&["-b", BACKLOG])?;
        }
        auditctl(&["-e", "1"])?;
        for rule in &rules.0 {
            let mut args: Vec<&str> = rule.iter().map(String::as_str).collect();
            args.extend(["-k", KEY]);
            auditctl(&args)?;
        }
        Ok(Auditd { undo })
    }

    /// Deletes the rules, restores the audit flags and stops auditd if it was started here.
    pub fn stop(self) -> anyhow::Result<()> {
        drop(self.undo);
        let listed = auditctl(&["-l", "-k", KEY]).unwrap_or_default();
        if listed.contains(KEY) {
            bail!("audit rules with key {KEY} are still loaded: {listed}");
        }
        Ok(())
    }
}
