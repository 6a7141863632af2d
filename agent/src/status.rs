//! What a running agent is doing, for `phiguard status`: the agent writes a [`Status`] as
//! JSON to a file (atomically: a temporary file renamed over it, mode 0644) at start and on
//! every tick, and removes it when it stops. `phiguard status` reads the file, checks that
//! the process that wrote it is alive and the file fresh, and adds the pins it finds in
//! bpffs, which exist with or without an agent.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// Where the agent writes its status unless told otherwise (systemd's `RuntimeDirectory`).
pub const DEFAULT_STATUS_FILE: &str = "/run/phiguard/status.json";
/// A status file older than this is stale: the agent is hung or gone.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Why the status file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Writing failed.
    #[error("writing status file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading failed (other than: it does not exist).
    #[error("reading status file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a status document.
    #[error("status file {} is not valid: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// One kernel program as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramState {
    /// Program name.
    pub name: String,
    /// Where it attaches.
    pub hook: String,
    /// Whether it is attached.
    pub attached: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last policy load or reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadState {
    /// Whether it succeeded.
    pub ok: bool,
    /// Unix time, seconds.
    pub at: u64,
    /// What triggered it.
    pub trigger: String,
    /// Why it was refused, when it was.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Settings of agent.toml that changed but take effect only at the next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
}

/// One change to the agent's kernel state made by something else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TamperState {
    /// Unix time it was found, seconds.
    pub at: u64,
    /// `program_detached`, `pin_removed` or `map_modified`.
    pub kind: String,
    /// The program or map.
    pub object: String,
    /// What differed.
    pub detail: String,
    /// Whether the agent put its state back.
    pub repaired: bool,
}

/// A break-glass grant in force, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantState {
    /// The grant's id (`bg-…`).
    pub id: String,
    /// Whom it covers (`user NAME (uid N)` or `program PATH`).
    pub who: String,
    /// Unix time it expires, seconds.
    pub expires_at: u64,
    /// Why it was granted.
    pub reason: String,
}

/// What the agent writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's pid.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// Unix time it started, seconds.
    pub started_at: u64,
    /// Unix time of this snapshot, seconds.
    pub updated_at: u64,
    /// Every program in the registry.
    pub programs: Vec<ProgramState>,
    /// Whether the programs are pinned (enforcement outlives the agent).
    pub pinned: bool,
    /// How each kind of resource is enforced (`file`, `exec`, `tcp`, `unix` → layer).
    pub enforcement: BTreeMap<String, String>,
    /// What protected opens on the fanotify layer do while the agent is down or restarting
    /// (`[policy] while_restarting` and whether it applies); `None` without the fanotify
    /// layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub while_restarting: Option<String>,
    /// Policy directory (`None`: observe only).
    pub policy_dir: Option<PathBuf>,
    /// Policy generation in force.
    pub policy_generation: u64,
    /// The last load or reload.
    pub last_reload: Option<ReloadState>,
    /// Reloads asked for since start (SIGHUP, a policy file change), finished or refused:
    /// `phiguard reload` waits for this to move.
    #[serde(default)]
    pub reloads: u64,
    /// Records lost in the kernel, by kind (totals since the programs loaded).
    pub kernel_lost: BTreeMap<String, u64>,
    /// Kernel program runs that stopped on a fault, by program (totals since the programs
    /// loaded).
    #[serde(default)]
    pub kernel_faults: BTreeMap<String, u64>,
    /// Events written since start.
    pub events: u64,
    /// Metrics endpoint, when on.
    pub metrics: Option<String>,
    /// The collector link, when `[collector]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<crate::link::LinkState>,
    /// Changes to its kernel state the agent found since it started (the latest
    /// [`MAX_TAMPER_SHOWN`]), and how many in all.
    #[serde(default)]
    pub tamper: Vec<TamperState>,
    /// Every change found since start.
    #[serde(default)]
    pub tamper_total: u64,
    /// Break-glass grants in force, by id.
    #[serde(default)]
    pub break_glass: Vec<GrantState>,
}

/// How many tamper findings the status keeps.
pub const MAX_TAMPER_SHOWN: usize = 8;

/// Unix time now, seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Status {
    /// Writes the status to `path` atomically (mode 0644), creating its directory.
    pub fn write(&self, path: &Path) -> Result<(), StatusError> {
        let fail = |source| StatusError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(fail)?;
        }
        let temporary = path.with_extension("json.tmp");
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| fail(e.into()))?;
        text.push(b'\n');
        let mut file = fs::File::create(&temporary).map_err(fail)?;
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(fail)?;
        file.write_all(&text).map_err(fail)?;
        drop(file);
        fs::rename(&temporary, path).map_err(fail)
    }

    /// Reads the status at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Status>, StatusError> {
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StatusError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| StatusError::Parse {
                path: path.to_owned(),
                source,
            })
    }

    /// Removes the status file (the agent stopped).
    pub fn remove(path: &Path) {
        let _ = fs::remove_file(path);
    }
}

/// Whether the agent behind a status file is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Running, status fresh.
    Running,
    /// The process lives but has not refreshed its status: hung, or stopped.
    Stale,
    /// No status file, or its process is gone (killed or crashed).
    NotRunning,
}

/// What `phiguard status` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Whether an agent runs.
    pub agent: Liveness,
    /// The status file read.
    pub status_file: PathBuf,
    /// Seconds since the status was written, when there is one.
    pub age_seconds: Option<u64>,
    /// The last status the agent wrote (also when it is gone: what it was doing).
    pub status: Option<Status>,
    /// Programs pinned in bpffs: they enforce whether or not an agent runs.
    pub pinned_programs: Vec<String>,
    /// Why the pins could not be listed (then `pinned_programs` says nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pins_unreadable: Option<String>,
    /// The bpffs directory looked at.
    pub pin_dir: PathBuf,
}

fn process_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists() && {
        // A pid reused by another program is not the agent.
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "phiguard")
    }
}

impl Report {
    /// Reads the status file and the pins.
    pub fn gather(status_file: &Path, pin_dir: &Path) -> Result<Report, StatusError> {
        let status = Status::read(status_file)?;
        let pins = crate::kernel::pins::read_pinned_programs(pin_dir);
        let now = now();
        let age_seconds = status.as_ref().map(|s| now.saturating_sub(s.updated_at));
        let agent = match (&status, age_seconds) {
            (Some(s), Some(age)) if process_alive(s.pid) => {
                if age > STALE_AFTER.as_secs() {
                    Liveness::Stale
                } else {
                    Liveness::Running
                }
            }
            _ => Liveness::NotRunning,
        };
        Ok(Report {
            agent,
            status_file: status_file.to_owned(),
            age_seconds,
            status,
            pinned_programs: pins.as_ref().cloned().unwrap_or_default(),
            pins_unreadable: pins.err().map(|e| e.to_string()),
            pin_dir: pin_dir.to_owned(),
        })
    }

    /// The report for a person.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let age = self.age_seconds.unwrap_or(0);
        let _ = match (&self.agent, &self.status) {
            (Liveness::Running, Some(s)) => writeln!(
                out,
                "agent: running (pid {}, version {}, up {}s, status {}s old)",
                s.pid,
                s.version,
                s.updated_at.saturating_sub(s.started_at),
                age
            ),
            (Liveness::Stale, Some(s)) => writeln!(
                out,
                "agent: NOT RESPONDING (pid {} lives but last wrote its status {age}s ago; more than {}s means hung or stopped)",
                s.pid,
                STALE_AFTER.as_secs()
            ),
            (_, Some(s)) => writeln!(
                out,
                "agent: NOT RUNNING (pid {} is gone; it was killed or crashed; its last status, {age}s old, follows)",
                s.pid
            ),
            (_, None) => writeln!(
                out,
                "agent: NOT RUNNING (no status file at {})",
                self.status_file.display()
            ),
        };
        if let Some(s) = &self.status {
            let attached = s.programs.iter().filter(|p| p.attached).count();
            let _ = writeln!(
                out,
                "programs: {attached}/{} attached{}",
                s.programs.len(),
                if s.pinned {
                    ", pinned (enforcement outlives the agent)"
                } else {
                    ""
                }
            );
            for p in &s.programs {
                let _ = match &p.error {
                    None => writeln!(out, "  attached      {:<32} {}", p.name, p.hook),
                    Some(e) => writeln!(out, "  NOT attached  {:<32} {}: {e}", p.name, p.hook),
                };
            }
            let _ = writeln!(out, "enforcement layers:");
            for (resource, layer) in &s.enforcement {
                let _ = writeln!(out, "  {resource:<6} {layer}");
            }
            if let Some(restarting) = &s.while_restarting {
                let _ = writeln!(out, "while the agent restarts: {restarting}");
            }
            let _ = match &s.policy_dir {
                Some(dir) => writeln!(
                    out,
                    "policies: {} generation {}",
                    dir.display(),
                    s.policy_generation
                ),
                None => writeln!(out, "policies: none (observe only)"),
            };
            if let Some(r) = &s.last_reload {
                let _ = writeln!(
                    out,
                    "last policy load: {} ({}s ago, trigger {}){}",
                    if r.ok { "ok" } else { "REFUSED" },
                    now().saturating_sub(r.at),
                    r.trigger,
                    if r.error.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.error)
                    }
                );
            }
            let lost: u64 = s.kernel_lost.values().sum();
            if lost == 0 {
                let _ = writeln!(out, "kernel losses: none");
            } else {
                let by_kind: Vec<String> = s
                    .kernel_lost
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                let _ = writeln!(out, "kernel losses: {lost} ({})", by_kind.join(", "));
            }
            let faults: u64 = s.kernel_faults.values().sum();
            if faults == 0 {
                let _ = writeln!(out, "kernel faults: none");
            } else {
                let by_program: Vec<String> = s
                    .kernel_faults
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(p, n)| format!("{p} {n}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "kernel faults: {faults} ({}): program runs that stopped on a failed read",
                    by_program.join(", ")
                );
            }
            if s.tamper_total == 0 {
                let _ = writeln!(
                    out,
                    "tamper: none found (kernel state checked every few seconds)"
                );
            } else {
                let _ = writeln!(
                    out,
                    "tamper: {} change(s) to the agent's kernel state made by something else; latest:",
                    s.tamper_total
                );
                for t in &s.tamper {
                    let _ = writeln!(
                        out,
                        "{:>9}  {:<16} {}: {} ({})",
                        format!("{}s ago", now().saturating_sub(t.at)),
                        t.kind,
                        t.object,
                        t.detail,
                        if t.repaired {
                            "repaired"
                        } else {
                            "NOT repaired"
                        }
                    );
                }
            }
            if s.break_glass.is_empty() {
                let _ = writeln!(out, "break-glass grants in force: none");
            } else {
                let _ = writeln!(
                    out,
                    "BREAK-GLASS grants in force: {} (the allow-lists do not refuse these until they expire)",
                    s.break_glass.len()
                );
                for g in &s.break_glass {
                    let _ = writeln!(
                        out,
                        "  {}  {}  expires in {}s  reason: {}",
                        g.id,
                        g.who,
                        g.expires_at.saturating_sub(now()),
                        g.reason
                    );
                }
            }
            let _ = writeln!(out, "events written: {}", s.events);
            if let Some(link) = &s.link {
                link_text(&mut out, link);
            }
            if let Some(m) = &s.metrics {
                let _ = writeln!(out, "metrics: http://{m}/metrics");
            }
        }
        let _ = if let Some(error) = &self.pins_unreadable {
            writeln!(
                out,
                "pinned: cannot tell ({}: {error}; as root it can)",
                self.pin_dir.display()
            )
        } else if self.pinned_programs.is_empty() {
            writeln!(out, "pinned: nothing under {}", self.pin_dir.display())
        } else {
            writeln!(
                out,
                "pinned under {} ({}; they enforce whether or not an agent runs): {}",
                self.pin_dir.display(),
                self.pinned_programs.len(),
                self.pinned_programs.join(", ")
            )
        };
        out
    }
}

/// The collector link's lines of the report.
fn link_text(out: &mut String, link: &crate::link::LinkState) {
    let _ = writeln!(
        out,
        "collector: {} {} ({} connections since start, heartbeat every {} ms)",
        link.address,
        if link.connected {
            "connected"
        } else {
            "NOT CONNECTED"
        },
        link.connections,
        link.heartbeat_interval_ms
    );
    let _ = writeln!(
        out,
        "  spool: {} events unacknowledged ({} bytes; seq {} spooled, {} acknowledged); {} dropped",
        link.spool_events, link.spool_bytes, link.last_seq, link.acked_seq, link.spool_dropped
    );
    if !link.instance_id.is_empty() {
        let _ = writeln!(out, "  instance: {}", link.instance_id);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let _ = match link.last_ack_ms {
        Some(ms) => writeln!(
            out,
            "  last acknowledged by the collector: {:.1}s ago",
            now_ms.saturating_sub(u128::from(ms)) as f64 / 1000.0
        ),
        None => writeln!(
            out,
            "  last acknowledged by the collector: never since start"
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/status.json");
        let status = Status {
            pid: 7,
            version: "0.1.0".into(),
            policy_generation: 2,
            ..Status::default()
        };
        status.write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(Status::read(&path).unwrap(), Some(status));
        Status::remove(&path);
        assert_eq!(Status::read(&path).unwrap(), None);
    }

    #[test]
    fn unreadable_pins_are_reported_as_unknown_never_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the links directory should be: listing it fails, as it does for a user
        // without access to bpffs (mode 0700), which a test run as root cannot reproduce.
        fs::write(dir.path().join("links"), "").unwrap();
        let report = Report::gather(&dir.path().join("status.json"), dir.path()).unwrap();
        let text = report.text();
        assert!(text.contains("pinned: cannot tell ("), "{text}");
        assert!(!text.contains("pinned: nothing"), "{text}");
        assert!(report.pins_unreadable.is_some());
        let empty = tempfile::tempdir().unwrap();
        let report = Report::gather(&empty.path().join("status.json"), empty.path()).unwrap();
        assert!(report.text().contains("pinned: nothing under"));
    }

    #[test]
    fn a_dead_pid_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let report = Report::gather(&path, dir.path()).unwrap();
        assert_eq!(report.agent, Liveness::NotRunning);
        assert!(report.text().contains("NOT RUNNING (no status file"));
        Status {
            pid: u32::MAX,
            updated_at: now(),
            ..Status::default()
        }
        .write(&path)
        .unwrap();
        let report = Report::gather(&path, dir.path()).unwrap();
        assert_eq!(report.agent, Liveness::NotRunning);
        assert!(report.text().contains("is gone"), "{}", report.text());
    }
}
