//! The answers a restarted agent gives before its layer runs (`[policy] while_restarting =
//! "wait"`): the group systemd kept holds every open on the marked filesystems, the agent's own
//! included, and the agent opens files there on its way up (its policies, the trees it labels,
//! the binaries a policy pins by sha256). Taken first thing, before the configuration is read,
//! the kept group is served at once by a thread that lets this agent's own opens go on and
//! holds every other one until the layer decides it — so a start can no longer wait for
//! itself, and no one else's open passes undecided.
//!
//! A start that fails after taking the group refuses the opens it held (`EPERM`): they were
//! read from the group, so no later agent can answer them, and passing them undecided would
//! hand the data to whoever waited. Opens still queued in the group wait for the next start
//! (or [`crate::fdstore::WAIT_BOUND_SECS`]).

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex, PoisonError},
};

use super::{
    descriptor_limit,
    group::{Group, PermissionEvent},
    opener,
    worker::{OnStop, Worker},
};

/// Opens read from the kept group and not answered yet, oldest first. Whatever is still here
/// when it is dropped is refused.
pub(super) struct Held {
    group: Arc<Group>,
    events: Vec<PermissionEvent>,
}

impl Held {
    /// Takes the held opens, oldest first, to decide them.
    pub(super) fn take(&mut self) -> Vec<PermissionEvent> {
        std::mem::take(&mut self.events)
    }

    /// Answers every held open with `allow`; returns how many.
    fn answer_all(&mut self, allow: bool) -> usize {
        let events = self.take();
        for event in &events {
            if let Err(e) = self.group.respond(event.fd.as_raw_fd(), allow) {
                tracing::debug!("answering an open held while the agent started: {e}");
            }
        }
        events.len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let refused = self.answer_all(false);
        if refused > 0 {
            tracing::warn!(
                refused,
                "refused the opens this agent held while it started (EPERM): the start did not finish, so nothing decided them"
            );
        }
    }
}

/// The kept group, served until the layer takes it over (or the agent lets it go).
pub struct Interim {
    group: Arc<Group>,
    held: Arc<Mutex<Held>>,
    /// The serving thread (`None` once stopped).
    worker: Option<Worker>,
    /// Opens of this agent's own threads let through.
    own: Arc<Mutex<u64>>,
    /// Opens the dead agent had read but not answered, refused on adoption.
    refused_in_flight: usize,
}

impl Interim {
    /// The group systemd kept for this process, adopted and served, if there is one (see
    /// [`crate::fdstore::take_stored`]). Call before this process opens any file it can
    /// avoid opening earlier.
    pub fn take() -> Option<Interim> {
        let fd = crate::fdstore::take_stored()?;
        match Interim::adopt(fd) {
            Ok(interim) => Some(interim),
            Err(e) => {
                // The group is closed here; systemd's copy keeps the opens waiting until the
                // next start or the bound.
                tracing::error!("serving the fanotify group systemd kept: {e}; this start leaves it to the next");
                None
            }
        }
    }

    /// Adopts `fd` (a group a previous agent made): refuses the opens that agent had read but
    /// not answered, then lets this agent's own opens go on and holds all others.
    pub fn adopt(fd: OwnedFd) -> std::io::Result<Interim> {
        let group = Arc::new(Group::adopt(fd));
        // Before this agent reads any event (the dead agent's descriptor numbers could
        // otherwise name events read here).
        let refused_in_flight = group.deny_unanswered(descriptor_limit());
        let held = Arc::new(Mutex::new(Held {
            group: Arc::clone(&group),
            events: Vec::new(),
        }));
        let own = Arc::new(Mutex::new(0u64));
        let worker = {
            let (group, held, own) = (Arc::clone(&group), Arc::clone(&held), Arc::clone(&own));
            let me = std::process::id();
            Worker::spawn("phiguard-fanotify-start", move |stop| {
                stop.serve(
                    group.as_fd(),
                    OnStop::Leave,
                    "the kept fanotify group",
                    |buf| group.read(buf),
                    |event| {
                        if opener::read_opener(event.tid).is_some_and(|o| o.tgid == me) {
                            if let Err(e) = group.respond(event.fd.as_raw_fd(), true) {
                                tracing::debug!("letting this agent's own open go on: {e}");
                            }
                            *own.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                        } else {
                            held.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .events
                                .push(event);
                        }
                    },
                );
            })?
        };
        Ok(Interim {
            group,
            held,
            worker: Some(worker),
            own,
            refused_in_flight,
        })
    }

    /// The kept group (to mark it for this agent's policies while it is still served).
    pub(super) fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// Stops serving; the opens held, for the layer, which decides them before any other.
    pub(super) fn hand_over(mut self) -> Held {
        self.worker = None;
        let events = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.take()
        };
        tracing::info!(
            refused_in_flight = self.refused_in_flight,
            own_opens = *self.own.lock().unwrap_or_else(PoisonError::into_inner),
            held = events.len(),
            "adopted the fanotify group systemd kept across the restart: opens that waited while no agent ran are decided now (those the previous agent had read but not answered were refused)"
        );
        Held {
            group: Arc::clone(&self.group),
            events,
        }
    }

    /// Lets every held open go on and closes this agent's copy of the group (the caller has
    /// systemd close its own): for `while_restarting = "pass"`, and once the bound is past.
    pub fn release(mut self) -> usize {
        self.worker = None;
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .answer_all(true)
    }
}

impl Drop for Interim {
    /// Stops the thread first, so nothing is read after the held opens are refused (by
    /// [`Held`]'s drop, with the last reference).
    fn drop(&mut self) {
        self.worker = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        process::{Child, Command, Stdio},
        time::Duration,
    };

    use super::*;
    use crate::fanotify::group::FILE_MASK;

    /// A tmpfs mounted on a temporary directory, unmounted when dropped.
    struct Tmpfs(tempfile::TempDir);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    /// A private tmpfs holding `secret` in `rec.txt`, and a group marking it as the layer does
    /// (never the root filesystem: its opens would wait for this test). `None` without
    /// CAP_SYS_ADMIN.
    fn marked_tmpfs() -> Option<(Tmpfs, Group)> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "phiguard-test"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            return None;
        }
        let tmpfs = Tmpfs(dir);
        std::fs::write(tmpfs.0.path().join("rec.txt"), "secret\n").unwrap();
        let group = Group::new().ok()?;
        group
            .mark_filesystem(tmpfs.0.path(), FILE_MASK, true)
            .unwrap();
        Some((tmpfs, group))
    }

    /// Another process opening the file (it waits for an answer).
    fn other_process_reads(dir: &Path) -> Child {
        Command::new("cat")
            .arg(dir.join("rec.txt"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Whether `child` is still waiting after a while.
    fn still_waiting(child: &mut Child) -> bool {
        std::thread::sleep(Duration::from_millis(300));
        child.try_wait().unwrap().is_none()
    }

    /// What `child` printed, and whether it succeeded.
    fn outcome(child: Child) -> (bool, String) {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// Reads the file on a thread of this process, within a few seconds.
    fn own_read(dir: &Path) -> Option<String> {
        let path = dir.join("rec.txt");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(std::fs::read_to_string(path).unwrap()));
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    #[test]
    fn own_opens_go_on_others_wait_for_the_layer_or_are_refused_if_the_start_fails() {
        let Some((tmpfs, group)) = marked_tmpfs() else {
            eprintln!("skipped: no tmpfs or fanotify group here (CAP_SYS_ADMIN needed)");
            return;
        };
        let dir = tmpfs.0.path();
        // The copy systemd would keep: the group lives on while either is open.
        let kept = || group.as_fd().try_clone_to_owned().unwrap();

        // A start that finishes: this agent reads at once, another process waits for the
        // layer, which decides it.
        let interim = Interim::adopt(kept()).unwrap();
        let mut other = other_process_reads(dir);
        let own = own_read(dir);
        let waiting = still_waiting(&mut other);
        let adopted = Arc::clone(interim.group());
        let mut held = interim.hand_over();
        let events = held.take();
        for event in &events {
            adopted.respond(event.fd.as_raw_fd(), false).unwrap();
        }
        let (succeeded, text) = outcome(other);
        assert_eq!(
            own.as_deref(),
            Some("secret\n"),
            "this agent's own open waited"
        );
        assert!(
            waiting,
            "another process's open went on before the layer ran"
        );
        assert_eq!(events.len(), 1, "one open held for the layer");
        assert!(
            !succeeded && text.contains("Operation not permitted"),
            "{text}"
        );

        // A start that fails: what it held is refused, not passed.
        let interim = Interim::adopt(kept()).unwrap();
        let mut other = other_process_reads(dir);
        assert!(still_waiting(&mut other));
        drop(interim);
        let (succeeded, text) = outcome(other);
        assert!(!succeeded && !text.contains("secret"), "{text}");

        // `pass`: what it held goes on.
        let interim = Interim::adopt(kept()).unwrap();
        let mut other = other_process_reads(dir);
        assert!(still_waiting(&mut other));
        assert_eq!(interim.release(), 1);
        let (succeeded, text) = outcome(other);
        assert!(succeeded && text == "secret\n", "{text}");
        drop(adopted);
    }
}
