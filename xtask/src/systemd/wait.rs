//! The systemd tier's check of `[policy] while_restarting = "wait"` (policies.md, "While the
//! agent is down or restarting"). The protected files sit on a tmpfs of their own, mounted in
//! the container before the agent starts, so the deadlock guard lets the agent keep its
//! fanotify group in systemd's descriptor store (with the tier's /srv/ephi, on the container's
//! root filesystem, it falls back to "pass"). Under the packaged unit, unchanged:
//!
//! 1. After `kill -9` an open by a refused program waits, then fails with `EPERM` once the
//!    restarted agent answers it; an open by the allowed program waits, then reads. Both
//!    decisions reach the event log. The waits and the restarted agent's start are measured.
//!    The policy also pins a program kept on the protected filesystem by its sha256, so the
//!    restarted agent reads a file there before its layer runs: it must not wait for itself.
//! 2. A crash loop (an invalid policy: every start fails after taking the kept group): the
//!    opens wait for a start, which refuses them when it fails (it had read them from the
//!    group, so no later agent can answer them): measured.
//! 3. `systemctl stop` closes the store: opens do not wait (refused ones are still killed by
//!    the pinned open-exit programs).
//!
//! The tmpfs is unmounted and the tier's policy restored afterwards, pass or fail.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _};

use super::{
    container::Container, ensure_active, journal, property, refused_read_leaks, state, wait_for,
    KillOnDrop, POLICY, SECRET,
};

/// The protected files' own filesystem (a tmpfs) inside the container.
const VOLUME: &str = "/srv/volume";
/// The protected file on it.
const FILE: &str = "/srv/volume/rec.txt";
/// The tier's policy file, pointed at [`VOLUME`] for this step.
const POLICY_FILE: &str = "/etc/phiguard/policies/records.yaml";
/// A program on the protected filesystem that the policy pins by its sha256 (every start of
/// the agent reads it to check the pin, before its fanotify layer runs).
const PINNED: &str = "/srv/volume/tool";
/// An invalid policy that makes every start of the agent fail (the crash loop).
const BROKEN_FILE: &str = "/etc/phiguard/policies/zz-broken.yaml";
/// Where the opener script is written inside the container.
const OPENER: &str = "/root/opener.sh";
/// The agent's event log inside the container.
const EVENTS: &str = "/var/log/phiguard/events.jsonl";
/// How long one opener may take before `timeout` ends it (longer than any documented wait).
const OPENER_LIMIT: Duration = Duration::from_secs(150);

/// `opener.sh refused|allowed FILE [PID]`: waits until PID (the killed agent) is gone, then
/// times one open of FILE — by bash as `nobody` (refused by the policy) or by root's cat
/// (allowed) — and prints `RC START END OUTPUT` (seconds, `$EPOCHREALTIME`).
const OPENER_SCRIPT: &str = r#"#!/bin/bash
who=$1 file=$2 pid=$3
if [ -n "$pid" ]; then while [ -e "/proc/$pid" ]; do sleep 0.01; done; fi
s=$EPOCHREALTIME
if [ "$who" = refused ]; then
    out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups \
        bash -c 'IFS= read -r line < "$1" && printf "%s\n" "$line"' _ "$file" 2>&1)
else
    out=$(cat "$file" 2>&1)
fi
rc=$?
e=$EPOCHREALTIME
echo "$rc $s $e $out"
"#;

/// The tier's policy, protecting [`VOLUME`] instead of /srv/ephi.
fn volume_policy() -> String {
    POLICY.replace("/srv/ephi/**", &format!("{VOLUME}/**"))
}

/// What one timed open returned.
struct Opened {
    /// The exit status of the opening program (137: killed).
    rc: i32,
    /// Seconds from the open's start to its return.
    waited: f64,
    /// What it printed (the data, or the error).
    out: String,
}

/// Starts one opener inside the container (see [`OPENER_SCRIPT`]).
fn spawn_opener(c: &Container, who: &str, dead_pid: Option<&str>) -> anyhow::Result<KillOnDrop> {
    Ok(KillOnDrop(Some(c.spawn_sh(&format!(
        "timeout {} bash {OPENER} {who} {FILE} {}",
        OPENER_LIMIT.as_secs(),
        dead_pid.unwrap_or_default()
    ))?)))
}

/// Waits for an opener and reads its line.
fn finish(mut opener: KillOnDrop, who: &str) -> anyhow::Result<Opened> {
    let out = opener
        .0
        .take()
        .context("the opener is gone")?
        .wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.splitn(4, ' ');
    let (Some(rc), Some(start), Some(end)) = (words.next(), words.next(), words.next()) else {
        bail!(
            "the {who} opener printed {text:?} ({}): it did not return within {OPENER_LIMIT:?}?",
            out.status
        );
    };
    let number = |w: &str| {
        w.trim()
            .parse::<f64>()
            .with_context(|| format!("the {who} opener printed {text:?}"))
    };
    Ok(Opened {
        rc: rc
            .parse()
            .with_context(|| format!("the {who} opener printed {text:?}"))?,
        waited: number(end)? - number(start)?,
        out: words.next().unwrap_or_default().trim().to_owned(),
    })
}

/// Runs both openers at once (after `dead_pid` is gone, if given) and waits for them.
fn open_both(c: &Container, dead_pid: Option<&str>) -> anyhow::Result<(Opened, Opened)> {
    let refused = spawn_opener(c, "refused", dead_pid)?;
    let allowed = spawn_opener(c, "allowed", dead_pid)?;
    Ok((finish(refused, "refused")?, finish(allowed, "allowed")?))
}

/// The number of lines in the event log.
fn event_lines(c: &Container) -> anyhow::Result<usize> {
    Ok(c.ok(&format!("wc -l < {EVENTS}"))?.trim().parse()?)
}

/// Whether the event log, past its first `skip` lines, holds a decision `verdict` on
/// [`FILE`] by `exe`.
fn decided(c: &Container, skip: usize, verdict: &str, exe: &str) -> anyhow::Result<bool> {
    let lines = c.ok(&format!("tail -n +{} {EVENTS}", skip + 1))?;
    Ok(lines
        .lines()
        .any(|l| l.contains(FILE) && l.contains(verdict) && l.contains(exe)))
}

/// The last lines of the agent's journal, with timestamps.
fn journal_tail(c: &Container) -> anyhow::Result<String> {
    c.ok("journalctl -b -u phiguard --no-pager -o short-precise -n 12")
}

/// Seconds from the agent's exec to READY=1 (the unit's monotonic timestamps).
fn start_time(c: &Container) -> anyhow::Result<f64> {
    let exec: f64 = property(c, "phiguard", "ExecMainStartTimestampMonotonic")?.parse()?;
    let ready: f64 = property(c, "phiguard", "ActiveEnterTimestampMonotonic")?.parse()?;
    Ok((ready - exec) / 1e6)
}

/// The step: prepares the volume, runs the three checks, restores the tier's state.
pub fn waits_across_kill(c: &Container) -> anyhow::Result<()> {
    let result = prepare(c)
        .and_then(|()| after_kill(c))
        .and_then(|()| crash_loop(c))
        .and_then(|()| after_stop(c));
    let restored = restore(c);
    match (result, restored) {
        (Err(check), Err(restoring)) => Err(check.context(format!(
            "and restoring the tier's state failed too: {restoring:#}"
        ))),
        (result, restored) => result.and(restored),
    }
}

/// Mounts the volume, points the policy at it and starts the agent on it.
fn prepare(c: &Container) -> anyhow::Result<()> {
    c.ok("systemctl stop phiguard")?;
    c.ok(&format!(
        "mkdir -p {VOLUME} && mount -t tmpfs -o size=4m,mode=0755 phiguard-volume {VOLUME} && \
         printf '%s\\n' {SECRET} > {FILE} && chmod 0644 {FILE}"
    ))?;
    c.write(OPENER, OPENER_SCRIPT)?;
    let pin = c.ok(&format!("cp /usr/bin/true {PINNED} && sha256sum {PINNED}"))?;
    let pin = pin
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?;
    c.write(
        POLICY_FILE,
        &format!(
            "{}      - exe: {PINNED}\n        sha256: {pin}\n",
            volume_policy()
        ),
    )?;
    c.ok("systemctl start phiguard")?;
    ensure_active(c, "phiguard")?;
    let status = c.ok("phiguard status")?;
    ensure!(
        status.contains("while the agent restarts: wait ("),
        "with the protected files on their own filesystem the group should be kept; phiguard status says:\n{status}"
    );
    // With the agent running, neither open waits: the refused one is refused at once.
    let (refused, allowed) = open_both(c, None)?;
    ensure!(
        refused.rc != 0 && !refused.out.contains(SECRET),
        "the policy on {VOLUME} is not enforced: {:?}",
        refused.out
    );
    ensure!(
        allowed.rc == 0 && allowed.out.contains(SECRET),
        "the allowed program could not read {FILE}: {:?}",
        allowed.out
    );
    Ok(())
}

/// Check 1: opens wait across `kill -9`, then are answered by the restarted agent.
fn after_kill(c: &Container) -> anyhow::Result<()> {
    let pid = property(c, "phiguard", "MainPID")?;
    let skip = event_lines(c)?;
    c.ok("systemctl kill -s KILL --kill-whom=main phiguard")?;
    let (refused, allowed) = open_both(c, Some(&pid))?;
    wait_for(Duration::from_secs(30), "the agent active again", || {
        Ok(state(c, "phiguard")? == "active" && property(c, "phiguard", "MainPID")? != pid)
    })?;
    let started = start_time(c)?;
    let restarts = property(c, "phiguard", "NRestarts")?;
    println!(
        "systemd:     after kill -9: the refused open waited {:.2} s, the allowed one {:.2} s; the agent active again took {started:.2} s from exec to READY ({restarts} restart(s) so far)",
        refused.waited, allowed.waited
    );
    // RestartSec=2s plus a start of a few seconds: far longer means the restarted agent hung
    // (TimeoutStartSec=90s) and the opens waited for its timeout.
    ensure!(
        refused.waited < 30.0 && allowed.waited < 30.0,
        "the opens waited {:.1} s: the agent that adopted the kept group did not answer them; its journal:\n{}",
        refused.waited.max(allowed.waited),
        journal_tail(c)?
    );
    // RestartSec=2s: an open that did not wait returns in milliseconds.
    ensure!(
        refused.waited > 1.0 && allowed.waited > 1.0,
        "the opens did not wait for the restarted agent (refused {:.3} s, allowed {:.3} s): the group was not kept",
        refused.waited,
        allowed.waited
    );
    ensure!(
        refused.rc != 0
            && refused.out.contains("Operation not permitted")
            && !refused.out.contains(SECRET),
        "the refused open that waited should fail with EPERM; it returned {} with {:?}",
        refused.rc,
        refused.out
    );
    ensure!(
        allowed.rc == 0 && allowed.out.contains(SECRET),
        "the allowed open that waited should read the data; it returned {} with {:?}",
        allowed.rc,
        allowed.out
    );
    ensure!(
        journal(c, "phiguard")?.contains("adopted the fanotify group systemd kept"),
        "the restarted agent did not say it adopted the kept group"
    );
    wait_for(
        Duration::from_secs(10),
        "both decisions in the event log",
        || {
            Ok(decided(c, skip, "VERDICT_DENY", "/usr/bin/bash")?
                && decided(c, skip, "VERDICT_ALLOW", "/usr/bin/cat")?)
        },
    )
}

/// Check 2: every start fails after taking the kept group. The opens wait for a start, which
/// had read them from the group and refuses them when it fails (no later agent could answer
/// them; passing them undecided would hand the data over).
fn crash_loop(c: &Container) -> anyhow::Result<()> {
    let broken = volume_policy()
        .replace("tier-records", "tier-broken")
        .replace("access: [read, write]", "access: [read, wrte]");
    c.write(BROKEN_FILE, &broken)?;
    let pid = property(c, "phiguard", "MainPID")?;
    c.ok("systemctl kill -s KILL --kill-whom=main phiguard")?;
    let (refused, allowed) = open_both(c, Some(&pid))?;
    println!(
        "systemd:     crash loop: the allowed open waited {:.2} s (exit {}), the refused one {:.2} s (exit {})",
        allowed.waited, allowed.rc, refused.waited, refused.rc
    );
    ensure!(
        allowed.waited > 1.0 && refused.waited > 1.0,
        "in a crash loop the opens should wait for a start; they returned after {:.3} s and {:.3} s",
        allowed.waited,
        refused.waited
    );
    ensure!(
        allowed.waited < 30.0 && refused.waited < 30.0,
        "the failed start should refuse the opens it held at once; they waited {:.1} s and {:.1} s; journal:\n{}",
        allowed.waited,
        refused.waited,
        journal_tail(c)?
    );
    for (who, opened) in [("allowed", &allowed), ("refused", &refused)] {
        ensure!(
            opened.rc != 0
                && opened.out.contains("Operation not permitted")
                && !opened.out.contains(SECRET),
            "the {who} open held by a start that failed should get EPERM; it returned {} with {:?}",
            opened.rc,
            opened.out
        );
    }
    ensure!(
        journal(c, "phiguard")?.contains("refused the opens this agent held while it started"),
        "the failed start did not say it refused the opens it held; journal:\n{}",
        journal_tail(c)?
    );
    c.ok(&format!(
        "rm -f {BROKEN_FILE} && systemctl reset-failed phiguard; systemctl restart phiguard"
    ))?;
    ensure_active(c, "phiguard")
}

/// Check 3: a clean stop releases the group: opens go on at once.
fn after_stop(c: &Container) -> anyhow::Result<()> {
    c.ok("systemctl stop phiguard")?;
    let (refused, allowed) = open_both(c, None)?;
    println!(
        "systemd:     stopped: the refused open returned in {:.3} s (exit {}, {}), the allowed one in {:.3} s",
        refused.waited,
        refused.rc,
        if refused.out.contains(SECRET) {
            "read the data"
        } else {
            "no data"
        },
        allowed.waited
    );
    ensure!(
        refused.waited < 2.0 && allowed.waited < 2.0,
        "after systemctl stop opens should not wait (refused {:.3} s, allowed {:.3} s)",
        refused.waited,
        allowed.waited
    );
    ensure!(
        allowed.rc == 0 && allowed.out.contains(SECRET),
        "after systemctl stop the allowed open should read; it returned {} with {:?}",
        allowed.rc,
        allowed.out
    );
    // Not waiting is not passing: the pinned open-exit programs still kill refused openers.
    ensure!(
        !refused.out.contains(SECRET),
        "after systemctl stop the refused open got the data"
    );
    Ok(())
}

/// Unmounts the volume, restores the tier's policy and starts the agent on it again.
fn restore(c: &Container) -> anyhow::Result<()> {
    c.ok("systemctl stop phiguard")?;
    c.write(POLICY_FILE, POLICY)?;
    c.ok(&format!(
        "rm -f {BROKEN_FILE} {OPENER} {PINNED} && umount {VOLUME} && rmdir {VOLUME}"
    ))?;
    c.ok("systemctl reset-failed phiguard; systemctl start phiguard")?;
    ensure_active(c, "phiguard")?;
    ensure!(
        !refused_read_leaks(c)?,
        "the tier's policy on /srv/ephi is not in force again"
    );
    Ok(())
}
