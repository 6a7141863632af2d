//! The systemd tier of `cargo xtask test`: both Debian packages installed with `dpkg -i` in a
//! booted Debian 12 (systemd 252, see [`container`]) and run as the services an operator
//! runs. What it proves, in order:
//!
//! 1. `systemctl enable --now phiguard` reaches active (READY=1 once the programs are
//!    attached); its exposure under `systemd-analyze security` is at most [`MAX_EXPOSURE`].
//! 2. A policy in /etc/phiguard/policies is enforced by the packaged unit, unchanged: a
//!    refused read fails, the allowed program reads, the decision is in the event log, the
//!    policy generation is 1 in the status and the metrics.
//! 3. Enforcement holds while the agent restarts, is killed with SIGKILL and is upgraded to a
//!    newer package: a reader refused by the policy tries all the while, and not one read
//!    gets the data.
//! 4. With the protected files on a filesystem of their own, opens wait across a SIGKILL for
//!    the restarted agent, which answers them (`while_restarting = "wait"`, see [`wait`]); a
//!    crash loop holds them only for a bounded time; a stop releases them.
//! 5. After a SIGKILL and a stop, `phiguard status` still shows the last status.
//! 6. The watchdog restarts an agent that stopped answering (SIGSTOP).
//! 7. `systemctl reload` returns once the new policies are in force, and fails, leaving the
//!    old ones in force, on an invalid one.
//! 8. The collector refuses to start without its certificates (a clear error, no colour codes
//!    in the journal), starts with them, stores the agent's events and survives a restart.
//! 9. `apt-get remove` stops the agent and unloads its programs (the refused read now
//!    succeeds); purge removes the configuration and keeps the local audit trail.

mod container;
mod wait;

use std::{
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use container::Container;

use crate::{cmd, package, package_collector};

/// The highest `systemd-analyze security` exposure either unit may have.
const MAX_EXPOSURE: f64 = 4.0;
/// What the protected file holds: a read that prints it got through.
const SECRET: &str = "PHI-SECRET-7f3a";
/// The hostname the container reports, and the agent's certificate name.
const HOST: &str = "phiguard-systemd-tier";
/// How long each disruption (restart, kill, upgrade) is watched by the refused reader.
const DISRUPTION_WATCH: Duration = Duration::from_secs(8);

/// The policy the tier installs: /srv/ephi readable by root's cat only.
const POLICY: &str = "name: tier-records\nmode: enforce\nrules:\n  - name: records\n    files:\n      - path: /srv/ephi/**\n        access: [read, write]\n    allow:\n      - exe: /usr/bin/cat\n        user: root\n";

/// Runs the tier: builds both packages, boots the container, checks, cleans up. Each step
/// counts as one test in `counts`.
pub fn test(counts: &mut cmd::Counts) -> anyhow::Result<()> {
    ensure!(
        cmd::is_root(),
        "the systemd tier boots a container with systemd-nspawn and needs root"
    );
    let started = Instant::now();
    let agent_deb = package::package()?;
    let collector_deb = package_collector::package()?;
    let rootfs = container::rootfs()?;
    let c = Container::boot(&rootfs)?;
    fs::create_dir_all(c.scratch())?;
    let newer_deb = newer_version(&agent_deb, &c.scratch())?;
    c.copy_in(&agent_deb, "/root/phiguard.deb")?;
    c.copy_in(&collector_deb, "/root/phiguard-collector.deb")?;
    c.copy_in(&newer_deb, "/root/phiguard-newer.deb")?;

    let mut step = Steps { counts, done: 0 };
    step.run("install both packages with dpkg -i", || install(&c))?;
    step.run("enable --now: active, programs attached", || enable(&c))?;
    step.run("systemd-analyze security", || exposure(&c))?;
    step.run("a policy in /etc/phiguard/policies is enforced", || {
        enforce(&c)
    })?;
    step.run("enforcement holds across systemctl restart", || {
        holds_across(&c, "systemctl restart phiguard")
    })?;
    step.run("enforcement holds across kill -9", || {
        holds_across(&c, "systemctl kill -s KILL --kill-whom=main phiguard")
    })?;
    step.run("enforcement holds across an upgrade", || {
        holds_across(&c, "dpkg -i /root/phiguard-newer.deb >/dev/null")?;
        let version = c.ok("dpkg-query -W -f '${Version}' phiguard")?;
        ensure!(
            version.ends_with("+tier"),
            "still version {version} after the upgrade"
        );
        Ok(())
    })?;
    step.run(
        "systemctl reload: in force on return, refused when invalid",
        || reload(&c),
    )?;
    step.run("opens wait across kill -9 (own filesystem)", || {
        wait::waits_across_kill(&c)
    })?;
    step.run("status after kill -9 and stop", || post_mortem(&c))?;
    step.run("the watchdog restarts a stopped agent", || watchdog(&c))?;
    step.run("the collector: certificates, store, restart", || {
        collector(&c)
    })?;
    step.run("apt-get remove unloads", || remove(&c))?;
    step.run("purge keeps the audit trail", || purge(&c))?;
    drop(c);
    println!(
        "systemd: tier passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs and times the tier's steps, one line each, and counts them.
struct Steps<'a> {
    counts: &'a mut cmd::Counts,
    done: usize,
}

impl Steps<'_> {
    fn run(&mut self, what: &str, step: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.done += 1;
        let number = self.done;
        let started = Instant::now();
        let result = step().with_context(|| format!("systemd tier: {what}"));
        if let Err(error) = &result {
            self.counts.failed += 1;
            // Now, before the container is torn down (which takes a while).
            eprintln!("systemd: {error:#}");
        } else {
            self.counts.passed += 1;
        }
        println!(
            "systemd: {number:>2}. {what:<48} {} ({:.1} s)",
            if result.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        result
    }
}

/// The agent's package again with a higher version (`VERSION+tier`): an upgrade to install.
fn newer_version(
    deb: &std::path::Path,
    scratch: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let tree = scratch.join("newer");
    cmd::run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control)?;
    let bumped: String = text
        .lines()
        .map(|line| match line.strip_prefix("Version: ") {
            Some(version) => format!("Version: {version}+tier\n"),
            None => format!("{line}\n"),
        })
        .collect();
    fs::write(&control, bumped)?;
    let out = scratch.join("phiguard-newer.deb");
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out)
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(out)
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
fn wait_for(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the event log holds a deny decision.
fn deny_logged(c: &Container) -> anyhow::Result<bool> {
    let out = c.sh("grep -c VERDICT_DENY /var/log/phiguard/events.jsonl")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u64>()
        .is_ok_and(|n| n > 0))
}

/// The unit's state (`active`, `activating`, `failed`, …).
fn state(c: &Container, unit: &str) -> anyhow::Result<String> {
    let out = c.sh(&format!("systemctl is-active {unit}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A property of a unit (`systemctl show -P`).
fn property(c: &Container, unit: &str, name: &str) -> anyhow::Result<String> {
    Ok(c.ok(&format!("systemctl show -P {name} {unit}"))?
        .trim()
        .to_owned())
}

/// The unit's journal since the container booted.
fn journal(c: &Container, unit: &str) -> anyhow::Result<String> {
    c.ok(&format!("journalctl -b -u {unit} --no-pager -o cat"))
}

/// Fails unless `unit` is active, with its journal's tail.
fn ensure_active(c: &Container, unit: &str) -> anyhow::Result<()> {
    let now = state(c, unit)?;
    if now != "active" {
        let log = journal(c, unit)?;
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "{unit} is {now}, not active; its journal ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

fn install(c: &Container) -> anyhow::Result<()> {
    c.ok("dpkg -i /root/phiguard.deb /root/phiguard-collector.deb")?;
    ensure!(
        state(c, "phiguard")? != "active",
        "installing the package must not start the agent (the operator reviews agent.toml first)"
    );
    Ok(())
}

fn enable(c: &Container) -> anyhow::Result<()> {
    c.ok("systemctl enable --now phiguard")?;
    ensure_active(c, "phiguard")?;
    let log = journal(c, "phiguard")?;
    ensure!(
        log.contains("events are flowing"),
        "active, but the journal has no start line:\n{log}"
    );
    ensure!(
        !log.contains('\u{1b}'),
        "the agent writes terminal colour codes into the journal"
    );
    let status = c.ok("phiguard status --json")?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let programs = status["status"]["programs"]
        .as_array()
        .context("phiguard status --json has no status.programs")?;
    let attached = programs
        .iter()
        .filter(|p| p["attached"].as_bool() == Some(true))
        .count();
    ensure!(attached > 0, "no program attached: {status}");
    println!(
        "systemd:     {attached}/{} programs attached",
        programs.len()
    );
    Ok(())
}

/// The exposure score systemd gives `unit`.
fn score(c: &Container, unit: &str) -> anyhow::Result<f64> {
    let out = c.sh(&format!("systemd-analyze security --no-pager {unit}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("systemd-analyze security {unit} printed no score"))?;
    let value = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no number in {line:?}"))?;
    println!("systemd:     {}", line.trim_start_matches('→').trim());
    Ok(value)
}

fn exposure(c: &Container) -> anyhow::Result<()> {
    for unit in ["phiguard.service", "phiguard-collector.service"] {
        let value = score(c, unit)?;
        ensure!(
            value <= MAX_EXPOSURE,
            "{unit}: exposure {value} is above {MAX_EXPOSURE}"
        );
    }
    Ok(())
}

/// One refused read as `nobody`: whether it printed the protected data.
fn refused_read_leaks(c: &Container) -> anyhow::Result<bool> {
    let out =
        c.sh("setpriv --reuid=nobody --regid=nogroup --clear-groups cat /srv/ephi/rec.txt")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(SECRET))
}

fn enforce(c: &Container) -> anyhow::Result<()> {
    c.ok(&format!(
        "mkdir -p /srv/ephi && printf '%s\\n' {SECRET} > /srv/ephi/rec.txt && chmod 0644 /srv/ephi/rec.txt"
    ))?;
    ensure!(
        refused_read_leaks(c)?,
        "without a policy `nobody` must be able to read /srv/ephi/rec.txt (mode 0644): the test proves nothing otherwise"
    );
    c.write("/etc/phiguard/policies/records.yaml", POLICY)?;
    // What an operator does: switch the policy directory on, and the metrics for the check.
    c.ok(
        "sed -i -e 's|^# dir = \"/etc/phiguard/policies\"|dir = \"/etc/phiguard/policies\"|' \
         -e 's|^# listen = \"127.0.0.1:9464\"|listen = \"127.0.0.1:9464\"|' /etc/phiguard/agent.toml && \
         phiguard policy check /etc/phiguard/policies --config /etc/phiguard/agent.toml",
    )?;
    c.ok("systemctl restart phiguard")?;
    ensure_active(c, "phiguard")?;
    ensure!(
        !refused_read_leaks(c)?,
        "the packaged unit does not enforce: nobody read the protected file"
    );
    let allowed = c.ok("cat /srv/ephi/rec.txt")?;
    ensure!(
        allowed.contains(SECRET),
        "the allowed program could not read"
    );
    wait_for(
        Duration::from_secs(10),
        "a deny decision in the event log",
        || deny_logged(c),
    )?;
    let status: serde_json::Value = serde_json::from_str(&c.ok("phiguard status --json")?)?;
    // The layer the agent says decides file opens is the one its decisions name, and never
    // the SIGKILL fallback where fanotify permission events exist (every kernel CI runs on).
    let layer = status["status"]["enforcement"]["file"]
        .as_str()
        .context("phiguard status --json has no status.enforcement.file")?
        .to_owned();
    println!("systemd:     file opens: {layer}");
    let named = if layer.starts_with("BPF LSM") {
        "ENFORCEMENT_LAYER_LSM"
    } else if layer.starts_with("fanotify") {
        "ENFORCEMENT_LAYER_FANOTIFY"
    } else {
        bail!("the packaged unit fell back to SIGKILL for files although the kernel has fanotify permission events: {layer}")
    };
    let decisions = c.ok("grep VERDICT_DENY /var/log/phiguard/events.jsonl")?;
    ensure!(
        decisions.contains(named),
        "the deny decisions do not name the layer in force ({named}):\n{decisions}"
    );
    ensure!(
        status["status"]["policy_generation"].as_u64() == Some(1),
        "status policy_generation is not 1: {}",
        status["status"]
    );
    let as_user = c.sh("setpriv --reuid=nobody --regid=nogroup --clear-groups phiguard status")?;
    let as_user = String::from_utf8_lossy(&as_user.stdout);
    ensure!(
        as_user.contains("pinned: cannot tell"),
        "phiguard status as a user who cannot read bpffs must not claim to know the pins:\n{as_user}"
    );
    let metrics = c.ok(
        "bash -c \"exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3\"",
    )?;
    ensure!(
        metrics.lines().any(|l| l == "phiguard_policy_generation 1"),
        "metrics do not say generation 1:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("generation"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// A child process killed if it is still running when this is dropped (a step failed).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `action` while a reader refused by the policy keeps trying; fails if any read got the
/// data, or the agent is not active again afterwards.
fn holds_across(c: &Container, action: &str) -> anyhow::Result<()> {
    let pid_before = property(c, "phiguard", "MainPID")?;
    let reader = format!(
        "end=$(( $(date +%s) + {secs} )); tries=0; leaked=0; \
         while [ $(date +%s) -lt $end ]; do \
           out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups cat /srv/ephi/rec.txt 2>/dev/null); \
           tries=$((tries+1)); case \"$out\" in *{SECRET}*) leaked=$((leaked+1));; esac; \
         done; echo $tries $leaked",
        secs = DISRUPTION_WATCH.as_secs()
    );
    let mut reading = KillOnDrop(Some(c.spawn_sh(&reader)?));
    thread::sleep(Duration::from_millis(500));
    c.ok(action)?;
    wait_for(Duration::from_secs(30), "the agent active again", || {
        Ok(state(c, "phiguard")? == "active" && property(c, "phiguard", "MainPID")? != pid_before)
    })?;
    let out = reading
        .0
        .take()
        .context("the reader is gone")?
        .wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(tries)), Some(Ok(leaked))) = (numbers.next(), numbers.next()) else {
        bail!("the refused reader printed {text:?}");
    };
    println!("systemd:     {tries} refused reads during `{action}`, {leaked} got the data");
    ensure!(
        tries >= 20,
        "only {tries} reads were tried: the check proves nothing"
    );
    ensure!(
        leaked == 0,
        "{leaked} of {tries} refused reads got the data"
    );
    Ok(())
}

/// The policy with `head` allowed for everyone as well.
fn policy_with_head() -> String {
    format!("{POLICY}      - exe: /usr/bin/head\n")
}

/// Whether `nobody` reads the protected file with `head`.
fn nobody_head_reads(c: &Container) -> anyhow::Result<bool> {
    let out =
        c.sh("setpriv --reuid=nobody --regid=nogroup --clear-groups head /srv/ephi/rec.txt")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(SECRET))
}

fn reload(c: &Container) -> anyhow::Result<()> {
    ensure!(!nobody_head_reads(c)?, "head is not allowed yet");
    // A valid edit: in force when `systemctl reload` returns.
    c.write("/etc/phiguard/policies/records.yaml", &policy_with_head())?;
    c.ok("systemctl reload phiguard")?;
    ensure!(
        nobody_head_reads(c)?,
        "systemctl reload returned before the new policy was in force"
    );
    // An invalid edit: reload fails, saying where; the policy in force stays.
    c.write(
        "/etc/phiguard/policies/records.yaml",
        &policy_with_head().replace("access: [read, write]", "access: [read, wrte]"),
    )?;
    let refused = c.sh("systemctl reload phiguard")?;
    ensure!(
        !refused.status.success(),
        "systemctl reload succeeded with an invalid policy"
    );
    let log = journal(c, "phiguard")?;
    ensure!(
        log.contains("records.yaml:") && log.contains("reload refused"),
        "the journal does not say why the reload was refused"
    );
    ensure!(
        nobody_head_reads(c)? && !refused_read_leaks(c)?,
        "the policy in force changed after a refused reload"
    );
    c.write("/etc/phiguard/policies/records.yaml", POLICY)?;
    c.ok("systemctl reload phiguard")?;
    ensure!(
        !nobody_head_reads(c)?,
        "the restored policy is not in force"
    );
    // agent.toml settings that need a restart are named, and the reload says so by failing.
    c.ok("cp /etc/phiguard/agent.toml /root/agent.toml.saved && sed -i 's|^ports = \\[5432, 3306\\]|ports = [5432]|' /etc/phiguard/agent.toml")?;
    let pending = c.sh("systemctl reload phiguard")?;
    let said = journal(c, "phiguard")?;
    ensure!(
        !pending.status.success() && said.contains("watch.ports"),
        "a changed [watch] ports was not reported as needing a restart"
    );
    c.ok("cp /root/agent.toml.saved /etc/phiguard/agent.toml && systemctl reload phiguard")?;
    // The event file is reopened on reload (an external logrotate renames it first).
    c.ok("mv /var/log/phiguard/events.jsonl /var/log/phiguard/events.jsonl.rotated && systemctl reload phiguard")?;
    refused_read_leaks(c)?;
    wait_for(
        Duration::from_secs(10),
        "a decision in the reopened event file",
        || deny_logged(c),
    )?;
    ensure_active(c, "phiguard")
}

fn post_mortem(c: &Container) -> anyhow::Result<()> {
    let pid = property(c, "phiguard", "MainPID")?;
    c.ok("systemctl kill -s KILL --kill-whom=main phiguard; systemctl stop phiguard")?;
    let out = c.sh("phiguard status")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(3) && text.contains(&format!("pid {pid} is gone")),
        "after kill -9 and stop, phiguard status should show the last status of pid {pid} (exit 3); it said ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !refused_read_leaks(c)?,
        "with the agent stopped the pinned programs must still enforce"
    );
    c.ok("systemctl start phiguard")?;
    ensure_active(c, "phiguard")
}

fn watchdog(c: &Container) -> anyhow::Result<()> {
    // The unit's 30 s would make this step take a minute: the mechanism is the same.
    c.write(
        "/etc/systemd/system/phiguard.service.d/tier-watchdog.conf",
        "[Service]\nWatchdogSec=3s\n",
    )?;
    c.ok("systemctl daemon-reload && systemctl restart phiguard")?;
    ensure_active(c, "phiguard")?;
    let pid = property(c, "phiguard", "MainPID")?;
    c.ok(&format!("kill -STOP {pid}"))?;
    wait_for(Duration::from_secs(60), "a restart by the watchdog", || {
        Ok(state(c, "phiguard")? == "active" && property(c, "phiguard", "MainPID")? != pid)
    })?;
    ensure!(
        journal(c, "phiguard")?.contains("Watchdog timeout"),
        "the agent restarted, but not by the watchdog"
    );
    fs::remove_dir_all(c.root().join("etc/systemd/system/phiguard.service.d"))?;
    c.ok("systemctl daemon-reload && systemctl restart phiguard")?;
    ensure_active(c, "phiguard")
}

fn collector(c: &Container) -> anyhow::Result<()> {
    let started = c.sh("systemctl start phiguard-collector")?;
    ensure!(
        !started.status.success(),
        "systemctl start phiguard-collector succeeded without certificates"
    );
    ensure!(
        state(c, "phiguard-collector")? == "failed",
        "without certificates the collector should be failed, not restarted: it is {}",
        state(c, "phiguard-collector")?
    );
    c.ok("systemctl reset-failed phiguard-collector")?;
    let log = journal(c, "phiguard-collector")?;
    ensure!(
        log.contains("/etc/phiguard/ca.pem"),
        "the collector's refusal does not name the missing file:\n{log}"
    );
    ensure!(
        !log.contains('\u{1b}'),
        "the collector writes terminal colour codes into the journal:\n{log:?}"
    );
    let pki = c.scratch().join("pki");
    phiguard_devcerts::write_dir(&pki, &[HOST.to_owned()], &[])?;
    for (file, to) in [
        ("ca.pem", "ca.pem"),
        ("collector.pem", "collector.pem"),
        ("collector.key", "collector.key"),
        (&format!("agent-{HOST}.pem") as &str, "agent.pem"),
        (&format!("agent-{HOST}.key"), "agent.key"),
    ] {
        c.copy_in(&pki.join(file), &format!("/etc/phiguard/{to}"))?;
    }
    c.ok(
        "chmod 0644 /etc/phiguard/ca.pem /etc/phiguard/collector.pem /etc/phiguard/agent.pem && \
         chown root:phiguard-collector /etc/phiguard/collector.key && chmod 0640 /etc/phiguard/collector.key && \
         chmod 0600 /etc/phiguard/agent.key",
    )?;
    c.ok("systemctl enable --now phiguard-collector")?;
    ensure_active(c, "phiguard-collector")?;
    c.ok(&format!(
        "sed -i -e 's|^# \\[collector\\]|[collector]|' \
         -e 's|^# address = |address = |' -e 's|^# server_name = |server_name = |' \
         -e 's|^# ca = \"certs/ca.pem\"|ca = \"/etc/phiguard/ca.pem\"|' \
         -e 's|^# cert = \"certs/agent-HOSTNAME.pem\"|cert = \"/etc/phiguard/agent.pem\"|' \
         -e 's|^# key = \"certs/agent-HOSTNAME.key\"|key = \"/etc/phiguard/agent.key\"|' \
         -e 's|^hostname = \"\"|hostname = \"{HOST}\"|' /etc/phiguard/agent.toml && \
         systemctl restart phiguard"
    ))?;
    ensure_active(c, "phiguard")?;
    let stored = |c: &Container| -> anyhow::Result<u64> {
        let out = c.sh(&format!(
            "phiguard-collector verify --config /etc/phiguard/collector.toml --agent {HOST}"
        ))?;
        Ok(records_in(&String::from_utf8_lossy(&out.stdout)))
    };
    wait_for(
        Duration::from_secs(20),
        "the agent's events in the store",
        || Ok(stored(c)? > 0),
    )?;
    let before = stored(c)?;
    c.ok("systemctl restart phiguard-collector")?;
    ensure_active(c, "phiguard-collector")?;
    // A refused read makes a decision event; it reaches the restarted collector.
    refused_read_leaks(c)?;
    wait_for(
        Duration::from_secs(30),
        "more events stored after the collector restarted",
        || Ok(stored(c)? > before),
    )?;
    let out = c.ok(&format!(
        "phiguard-collector verify --config /etc/phiguard/collector.toml --agent {HOST}"
    ))?;
    println!("systemd:     {}", out.lines().next().unwrap_or_default());
    Ok(())
}

/// The record count `phiguard-collector verify` prints for an agent.
fn records_in(verify: &str) -> u64 {
    verify
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find_map(|w| {
            w[1].trim_end_matches([',', ';', ')'])
                .starts_with("record")
                .then(|| w[0].parse::<u64>().ok())
                .flatten()
        })
        .unwrap_or(0)
}

fn remove(c: &Container) -> anyhow::Result<()> {
    c.ok("apt-get remove -y phiguard >/dev/null")?;
    ensure!(
        state(c, "phiguard")? != "active",
        "the agent still runs after apt-get remove"
    );
    let links = c.bpffs().join("phiguard/links");
    let left: Vec<String> = fs::read_dir(&links)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ensure!(left.is_empty(), "pins left after apt-get remove: {left:?}");
    ensure!(
        refused_read_leaks(c)?,
        "after apt-get remove the policy must no longer be enforced (the programs were not unloaded)"
    );
    Ok(())
}

fn purge(c: &Container) -> anyhow::Result<()> {
    c.ok("apt-get purge -y phiguard phiguard-collector >/dev/null 2>&1")?;
    ensure!(
        !c.root().join("etc/phiguard/agent.toml").exists(),
        "purge left /etc/phiguard/agent.toml"
    );
    let trail = c.root().join("var/log/phiguard/events.jsonl");
    ensure!(
        fs::metadata(&trail).is_ok_and(|m| m.len() > 0),
        "purge deleted the local audit trail {}",
        trail.display()
    );
    ensure!(
        c.root().join("var/lib/phiguard-collector").exists()
            || c.root().join("var/lib/private/phiguard-collector").exists(),
        "purge deleted the collector's store"
    );
    Ok(())
}
