//! The fanotify decision layer: where the kernel has no BPF LSM, every open of a protected
//! file waits in the kernel for the agent's answer and a refused one fails with `EPERM` before
//! a descriptor exists — whatever route reached the inode (any system call ABI, io_uring, a
//! hard link, a file handle, any depth).
//!
//! Jobs: [`group`] speaks fanotify; [`decide`] holds the labels and decides, purely;
//! [`opener`] reads who is asking from `/proc`; `respond` runs the response loop on a thread of
//! its own and hands each decision to the agent's event path as the same `FileOpen` (or
//! refused `Exec`) record the kernel programs write, so decisions are enriched, numbered and
//! sunk like any other; this module starts and stops the layer and manages its marks (a
//! filesystem mark per filesystem holding protected files; exec marks on every filesystem while
//! an exec allow-list is in force). [`changes`] reports what fanotify cannot refuse (truncate,
//! unlink, rename, link, chmod, chown, utimes, xattrs, entries made in a protected directory)
//! from a second, notification-class group, after the fact. Both groups share `sys` (the
//! fanotify system calls: init, filesystem marks, reads, the events of a buffer) and `worker`
//! (the thread that polls a group until it is stopped).
//!
//! The loop decides from memory and `/proc` only and answers before it does anything else for
//! the event (the event record is completed after the answer). The agent's own opens are
//! allowed at once (its other threads open files on marked filesystems; the loop's thread
//! opens none). If the agent dies, the kernel closes the group and releases every waiting open:
//! this layer fails open (see docs/policies.md).

pub mod changes;
pub mod decide;
pub mod group;
pub mod interim;
pub mod opener;
mod respond;
mod sys;
mod worker;

use std::{
    io,
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use self::{
    decide::Protected,
    group::{Group, GroupError, EXEC_MASK, FILE_MASK},
    interim::Interim,
    respond::Responder,
    worker::Worker,
};
use crate::{
    event::decode::DecodedEvent, kernel::identity::ExecIdentities, policy::compile::Compiled,
    process::procfs::ProcSnapshot,
};

/// Decision records waiting for the event loop; past this, records are counted as lost.
pub const QUEUE: usize = 8192;

/// One decision, for the agent's event path: the record the kernel programs would have written,
/// and the opener as `/proc` showed it while it waited (the process may be gone, or its exec not
/// yet read from the ring buffer, by the time the record is enriched).
#[derive(Debug)]
pub struct Record {
    /// The `FileOpen` record (or, for a refused exec, the `Exec` record), with the decision.
    pub event: DecodedEvent,
    /// The opening process.
    pub process: Option<ProcSnapshot>,
}

/// Failure to start or update the layer.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    /// The group or a mark failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The ignore marks of the previous policy set could not be dropped (the set was not
    /// taken: it could leave newly protected files unasked).
    #[error("dropping the fanotify ignore marks of the previous policy set: {0}")]
    Flush(#[source] io::Error),
    /// The response thread could not start.
    #[error("starting the fanotify response thread: {0}")]
    Thread(#[source] io::Error),
}

/// Counters of the layer, shared with the response thread and exported as metrics (cloning
/// shares them).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Permission events answered.
    pub answered: Counter,
    /// Of them, refused.
    pub denied: Counter,
    /// Decision records dropped because the event loop's queue was full.
    pub lost: Counter,
    /// Answers the kernel did not take (the opener then waits for the group to close).
    pub respond_errors: Counter,
    /// Unprotected inodes the kernel was told to stop asking about (evictable ignore marks).
    pub ignore_marks: Counter,
    /// Ignore marks the kernel refused (those inodes keep being asked about).
    pub ignore_mark_failures: Counter,
    /// Change notifications the change reporter has taken in (each named by comparing the
    /// file's `stat` with the one remembered, then decided and reported or passed over).
    pub changes: Counter,
}

/// Where the layer's decisions go: their records (for the agent's event path) and its counts.
#[derive(Debug)]
pub struct Output {
    /// Decision records, for the event loop.
    pub records: mpsc::Sender<Record>,
    /// The layer's counters (shared with the metrics).
    pub counters: Counters,
}

/// The running layer. Dropping it stops the change reports, then the response loop (fields
/// drop in this order): the change reports handle what is still queued when they stop, and
/// a directory moved into a protected tree is walked by opening it, an open the response
/// loop must still be there to answer. Closing the group then releases any open still
/// waiting (allowed).
pub struct FanotifyLayer {
    group: Arc<Group>,
    state: Arc<Mutex<Protected>>,
    /// The change reports (`None`: this kernel's fanotify cannot give them).
    changes: Option<changes::ChangeWatcher>,
    /// The response loop's thread.
    #[expect(dead_code, reason = "held for its drop, which stops the thread")]
    responder: Worker,
    /// Filesystems marked for exec events (while an exec allow-list is in force).
    exec_marked: Mutex<Vec<PathBuf>>,
    /// Counters.
    pub counters: Counters,
}

impl FanotifyLayer {
    /// Creates the group (or adopts `kept`), labels the protected files of `compiled` (in
    /// `slot`), marks their filesystems and starts answering; decisions go to `output`.
    /// Openers are identified by the kernel's record of their exec (`identities`), or without it
    /// by `/proc/PID/exe`.
    pub fn start(
        compiled: Arc<Compiled>,
        slot: u32,
        output: Output,
        cgroup_root: &Path,
        identities: Option<ExecIdentities>,
        grants: Option<crate::breakglass::GrantMap>,
        kept: Option<Interim>,
    ) -> Result<FanotifyLayer, FanotifyError> {
        let Output { records, counters } = output;
        // A group systemd kept across a restart (`[policy] while_restarting = "wait"`): still
        // served by the interim thread while labelling walks the protected trees (this
        // agent's own directory opens there wait for the group too), until the responder
        // below takes over.
        let group = match &kept {
            Some(interim) => Arc::clone(interim.group()),
            None => Arc::new(Group::new()?),
        };
        let protected = Protected::build(compiled, slot);
        for path in protected.filesystems.values() {
            group.mark_filesystem(path, FILE_MASK, true)?;
        }
        let exec = protected.has_exec_rules();
        if kept.is_some() {
            let needed: Vec<&Path> = protected
                .filesystems
                .values()
                .map(PathBuf::as_path)
                .collect();
            group.unmark_stale(&needed, exec, &filesystems_mounted());
        }
        let state = Arc::new(Mutex::new(protected));
        let change_records = records.clone();
        let change_identities = identities.as_ref().and_then(|i| i.try_clone().ok());
        let responder = Responder::new(
            Arc::clone(&group),
            Arc::clone(&state),
            records,
            counters.clone(),
            cgroup_root,
        )
        .with_identities(identities)
        .with_grants(grants);
        // From here to the responder's first answer this thread opens nothing. The opens held
        // while this agent started are decided first, in the order they came.
        let mut held = kept.map(Interim::hand_over);
        let waited = held.as_mut().map(interim::Held::take).unwrap_or_default();
        let responder = Worker::spawn("phiguard-fanotify", move |stop| {
            let mut responder = responder;
            waited.into_iter().for_each(|event| responder.answer(event));
            responder.run(&stop);
        })
        .map_err(FanotifyError::Thread)?;
        // Once opens are answered: the change group opens the marked filesystems' roots and
        // walks the protected trees.
        let changes = match changes::ChangeWatcher::start(
            Arc::clone(&group),
            Arc::clone(&state),
            change_records,
            counters.clone(),
            change_identities,
        ) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!("changes to protected files that open nothing (truncate, unlink, rename, chmod…) go unreported: {e}");
                None
            }
        };
        let layer = FanotifyLayer {
            group,
            state,
            responder,
            exec_marked: Mutex::new(Vec::new()),
            changes,
            counters,
        };
        layer.mark_exec(exec);
        Ok(layer)
    }

    /// Marks every mounted filesystem for exec events (`on`), or removes those marks. A
    /// filesystem that refuses the mark (some pseudo-filesystems) is skipped: an exec from it is
    /// still checked by the exec tracepoint's SIGKILL.
    fn mark_exec(&self, on: bool) {
        let mut marked = self
            .exec_marked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if on != marked.is_empty() {
            return;
        }
        if !on {
            for path in marked.drain(..) {
                let _ = self.group.mark_filesystem(&path, EXEC_MASK, false);
            }
            return;
        }
        for path in filesystems_mounted() {
            match self.group.mark_filesystem(&path, EXEC_MASK, true) {
                Ok(()) => marked.push(path),
                Err(e) => tracing::debug!("not marked for exec events: {e}"),
            }
        }
    }

    /// Takes a newly installed policy set: labels are rebuilt off the response loop, then
    /// swapped in at once; filesystems no longer needed are unmarked after the swap, new ones
    /// marked before it.
    pub fn update(&self, compiled: Arc<Compiled>, slot: u32) -> Result<(), FanotifyError> {
        let protected = Protected::build(compiled, slot);
        for path in protected.filesystems.values() {
            self.group.mark_filesystem(path, FILE_MASK, true)?;
        }
        let exec = protected.has_exec_rules();
        if exec {
            self.mark_exec(true);
        }
        if let Some(changes) = &self.changes {
            if let Err(e) = changes.update(&protected) {
                tracing::warn!("changes on a newly protected filesystem go unreported: {e}");
            }
        }
        let old = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let old = std::mem::replace(&mut *state, protected);
            // Inodes the old set left unprotected may be protected now: ask about every one
            // again. Under the lock, which the response loop holds while it places a mark.
            if let Err(e) = self.group.forget_ignored() {
                *state = old;
                return Err(FanotifyError::Flush(e));
            }
            old
        };
        let kept = self.filesystems();
        for (dev, path) in &old.filesystems {
            if !kept.contains(dev) {
                if let Err(e) = self.group.mark_filesystem(path, FILE_MASK, false) {
                    tracing::warn!("unmarking a filesystem no policy protects any more: {e}");
                }
            }
        }
        if !exec {
            self.mark_exec(false);
        }
        Ok(())
    }

    /// The group's descriptor (to hand a duplicate to systemd's store).
    pub fn group_fd(&self) -> BorrowedFd<'_> {
        self.group.as_fd()
    }

    /// One path on each filesystem marked for opens now, and whether every filesystem is
    /// marked for execs too.
    pub fn marked(&self) -> (Vec<PathBuf>, bool) {
        let exec = self.exec_marked.lock().is_ok_and(|m| !m.is_empty());
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.filesystems.values().cloned().collect(), exec)
    }

    /// The filesystems (kernel `dev_t`) marked now.
    fn filesystems(&self) -> Vec<u32> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.filesystems.keys().copied().collect()
    }

    /// One line for the log: how much is labelled and marked.
    pub fn summary(&self) -> String {
        let exec = self.exec_marked.lock().map_or(0, |marked| marked.len());
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        format!(
            "{} protected inodes labelled{}, {} filesystem(s) marked for opens, {exec} for execs, changes {}",
            state.labelled(),
            if state.complete {
                ""
            } else {
                " (label limit reached: the rest are looked up by name)"
            },
            state.filesystems.len(),
            if self.changes.is_some() {
                "reported"
            } else {
                "not reported"
            }
        )
    }
}

/// `CLOCK_BOOTTIME` now, in nanoseconds (the kernel programs' time base).
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The descriptor numbers a previous agent in this unit could have used: its soft
/// `RLIMIT_NOFILE` (the same as this one's), at most 65536.
fn descriptor_limit() -> std::os::fd::RawFd {
    let mut limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: `limit` is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur.min(65536) as std::os::fd::RawFd
}

/// One mount point per mounted filesystem (by device), from `/proc/self/mountinfo`.
fn filesystems_mounted() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if seen.insert((*dev).to_owned()) {
            out.push(PathBuf::from(point.replace("\\040", " ")));
        }
    }
    out
}
