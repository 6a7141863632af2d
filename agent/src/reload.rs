//! `phiguard reload`: asks the running agent to reload (SIGHUP) and waits until the reload has
//! finished, so `systemctl reload phiguard` (its `ExecReload=`) returns once the new policies
//! are in force — or fails, saying why, when they were refused or agent.toml changed
//! settings that only a restart applies.
//!
//! The agent counts every reload in its status file (`reloads`) and writes the file as soon as
//! one finishes; this waits for the count to move and then reads `last_reload`.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};

use crate::status::{ReloadState, Status, StatusError};

/// How often the status file is read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Why a reload could not be asked for or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The status file could not be read.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// No agent runs (no status file).
    #[error("no agent runs: no status file at {}", .0.display())]
    NotRunning(PathBuf),
    /// The signal could not be sent.
    #[error("sending SIGHUP to pid {pid}: {source}")]
    Signal {
        /// The agent's pid.
        pid: u32,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The agent did not finish the reload in time.
    #[error("the agent (pid {pid}) did not finish the reload within {timeout:?}")]
    Timeout {
        /// The agent's pid.
        pid: u32,
        /// How long we waited.
        timeout: Duration,
    },
}

/// How a finished reload went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The reload as the agent recorded it.
    pub reload: ReloadState,
    /// The policy generation in force afterwards.
    pub generation: u64,
}

impl Outcome {
    /// Whether everything asked for is in force: the reload was accepted and no changed
    /// setting waits for a restart.
    pub fn in_force(&self) -> bool {
        self.reload.ok && self.reload.restart_needed.is_empty()
    }

    /// One line for a person (and the journal).
    pub fn text(&self) -> String {
        if !self.reload.ok {
            format!(
                "reload refused; what was in force stays (policy generation {}): {}",
                self.generation, self.reload.error
            )
        } else if !self.reload.restart_needed.is_empty() {
            format!(
                "reloaded (policy generation {}), but these changed settings take effect only after `systemctl restart phiguard`: {}",
                self.generation,
                self.reload.restart_needed.join(", ")
            )
        } else {
            format!("reloaded: policy generation {} in force", self.generation)
        }
    }
}

/// Sends SIGHUP to the agent (`pid`, else the one in the status file) and waits up to
/// `timeout` for it to record the reload's outcome in `status_file`.
pub fn request(
    status_file: &Path,
    pid: Option<u32>,
    timeout: Duration,
) -> Result<Outcome, ReloadError> {
    let before = Status::read(status_file)?
        .ok_or_else(|| ReloadError::NotRunning(status_file.to_owned()))?;
    let pid = pid.unwrap_or(before.pid);
    let pid_value = i32::try_from(pid).map_err(|_| ReloadError::Signal {
        pid,
        source: nix::Error::EINVAL,
    })?;
    signal::kill(Pid::from_raw(pid_value), signal::Signal::SIGHUP)
        .map_err(|source| ReloadError::Signal { pid, source })?;
    // Reloads counted before the signal, by the agent signalled.
    let counted = if before.pid == pid { before.reloads } else { 0 };
    let started = Instant::now();
    loop {
        if let Some(now) = Status::read(status_file)? {
            if now.pid == pid && now.reloads > counted {
                if let Some(reload) = now.last_reload {
                    return Ok(Outcome {
                        reload,
                        generation: now.policy_generation,
                    });
                }
            }
        }
        if started.elapsed() > timeout {
            return Err(ReloadError::Timeout { pid, timeout });
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: bool, restart_needed: &[&str]) -> Outcome {
        Outcome {
            reload: ReloadState {
                ok,
                at: 1,
                trigger: "SIGHUP".into(),
                error: if ok {
                    String::new()
                } else {
                    "p.yaml:3:5: rules: bad".into()
                },
                restart_needed: restart_needed.iter().map(|s| (*s).to_owned()).collect(),
            },
            generation: 4,
        }
    }

    #[test]
    fn only_an_accepted_reload_without_pending_settings_is_in_force() {
        assert!(outcome(true, &[]).in_force());
        assert!(outcome(true, &[]).text().contains("generation 4 in force"));
        let refused = outcome(false, &[]);
        assert!(!refused.in_force());
        assert!(refused.text().contains("p.yaml:3:5: rules: bad"));
        let pending = outcome(true, &["watch.paths"]);
        assert!(!pending.in_force());
        assert!(pending.text().contains("restart phiguard`: watch.paths"));
    }

    #[test]
    fn no_status_file_means_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let error = request(&dir.path().join("status.json"), None, Duration::ZERO).unwrap_err();
        assert!(matches!(error, ReloadError::NotRunning(_)), "{error}");
    }
}
