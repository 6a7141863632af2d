//! Change reports: where fanotify cannot refuse a change to a protected file, it is reported.
//!
//! Truncate, unlink, rename, link, chmod, chown, utimes and xattr changes open nothing, so the
//! permission group never hears of them, and the kernel offers no permission event for them.
//! A second group, of the notification class, reports each of them after the fact from the
//! VFS (any system call ABI, io_uring, any thread): `FAN_ATTRIB`, `FAN_MODIFY`, `FAN_CREATE`,
//! `FAN_DELETE` and `FAN_RENAME` on every filesystem holding protected inodes, with the object
//! and its directory named by file handle (`FAN_REPORT_DFID_NAME_TARGET`) and the acting
//! process by id (its thread-group id: an io_uring worker's change names the process that
//! submitted it, even once the worker is gone). A change is relevant when its inode is labelled, or when
//! the directory whose entries change is protected; it is then decided for the acting process
//! with the `write` access, as BPF LSM's `inode_*` hooks decide it, and handed to the agent's
//! event path as the same `FileOpen` record with the operation in `syscall`. A refusal
//! cannot be enforced: its verdict is `would_deny` (layer fanotify), and the change happened.
//!
//! Naming the operation: `FAN_ATTRIB` does not say what changed, so the inode's `stat` is
//! compared with the last one known (taken when the policy loads, then after every change):
//! owner or group → `chown`, mode → `chmod`, more links → `link`, times → `utimes`, more
//! extended attribute names → `setxattr`, fewer → `removexattr`; anything else (a value
//! replaced, an ACL, a chown or chmod to what it was) or nothing to compare with → `attrib`. `FAN_MODIFY` is a write or a truncation: a smaller (or empty) file
//! is `truncate`; otherwise it is a `write`, reported only when the writer would be refused
//! (its descriptor was not one this layer let it open) — a listed program's writes were
//! decided at their open. Reports of one (process, inode, operation) are folded within a
//! second. Fewer links (`unlink` of one name) is left to the `FAN_DELETE` report.
//!
//! The loop runs on a thread of its own and only reads the permission group's labels under
//! their lock (never across a system call), so it cannot hold up an open waiting for its
//! answer. The kernel queue is bounded (16384 events): an overflow is counted as lost records
//! and reported as such, never silent. The agent's own changes are ignored.
//!
//! Jobs: [`parse`](parse()) reads the group's buffer; `classify` names the operation from the
//! `stat` before and after (`attrs` remembers it); `mounts` opens the handles the events name;
//! `find` finds the protected inode or directory a change concerns, and `arrivals` labels what
//! moves into a protected directory; `report` decides each change, folds repeats (`fold`) and
//! queues its record; this module creates the group and keeps its marks.

mod arrivals;
mod attrs;
mod classify;
mod find;
mod fold;
mod mounts;
mod parse;
mod report;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::mpsc;

use self::{attrs::Remembered, find::Finder, fold::Folded, mounts::Mounts, report::Reporter};
pub use self::{
    attrs::{Attrs, MAX_ATTRS},
    classify::{classify_attrib, classify_entry, classify_modify},
    parse::{parse, Change, Handle, Named, Notice},
    report::reported,
};
use super::{decide::Protected, group::Group, sys, worker::Worker, Counters, Record};
use crate::{kernel::identity::ExecIdentities, process::procfs};

/// The events asked for on a filesystem holding protected inodes.
pub const CHANGE_MASK: u64 = libc::FAN_ATTRIB
    | libc::FAN_MODIFY
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_RENAME
    | libc::FAN_ONDIR;

/// Failure to start the change group.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// `fanotify_init` failed (FID reporting needs 5.1, `FAN_RENAME` 5.17).
    #[error("fanotify_init of the change group: {0}")]
    Init(#[source] io::Error),
    /// `fanotify_mark` failed.
    #[error("fanotify_mark of the filesystem holding {path} for changes: {source}")]
    Mark {
        /// The path whose filesystem was (un)marked.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The thread could not start.
    #[error("starting the change report thread: {0}")]
    Thread(#[source] io::Error),
}

/// The change reporter: its group, marks and thread.
#[derive(Debug)]
pub struct ChangeWatcher {
    /// The reporting thread (dropped first: it stops once what is queued is reported).
    #[expect(dead_code, reason = "held for its drop, which stops the thread")]
    reporter: Worker,
    /// The group and its marks.
    marks: Marks,
}

/// The change group, the filesystems it marks, and the `stat` remembered below the
/// protected roots.
#[derive(Debug)]
struct Marks {
    fd: Arc<OwnedFd>,
    mounts: Arc<Mounts>,
    /// One path on each marked filesystem, by kernel device.
    marked: Mutex<HashMap<u32, PathBuf>>,
    attrs: Arc<Remembered>,
}

impl ChangeWatcher {
    /// Creates the group, marks the filesystems of `protected`, remembers the `stat` of what
    /// lies below its roots, and starts reporting to `records`; inodes arriving in a protected
    /// directory are labelled and the permission group `group` asks about them again.
    pub(super) fn start(
        group: Arc<Group>,
        state: Arc<Mutex<Protected>>,
        records: mpsc::Sender<Record>,
        counters: Counters,
        identities: Option<ExecIdentities>,
    ) -> Result<ChangeWatcher, ChangeError> {
        let fd = sys::init(
            libc::FAN_CLASS_NOTIF
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                // No FAN_REPORT_TID: the process id names the process even when the
                // change ran on an io_uring worker thread that is gone by now.
                | libc::FAN_REPORT_DFID_NAME_TARGET,
        )
        .map_err(ChangeError::Init)?;
        let marks = Marks {
            fd: Arc::new(fd),
            mounts: Arc::default(),
            marked: Mutex::new(HashMap::new()),
            attrs: Arc::default(),
        };
        // Not under the labels' lock: walking the trees opens directories, which the
        // permission group's loop answers (and it takes that lock to decide).
        let (filesystems, roots) = {
            let protected = state.lock().unwrap_or_else(PoisonError::into_inner);
            (
                protected.filesystems.clone(),
                protected.roots().map(Path::to_path_buf).collect::<Vec<_>>(),
            )
        };
        marks.follow(&filesystems, &roots)?;
        let reporter = Reporter {
            fd: Arc::clone(&marks.fd),
            finder: Finder {
                group,
                mounts: Arc::clone(&marks.mounts),
                attrs: Arc::clone(&marks.attrs),
                state,
            },
            records,
            counters,
            identities,
            own_pid: std::process::id(),
            ns_per_tick: 1_000_000_000 / procfs::ticks_per_second(),
            folded: Folded::default(),
        };
        let reporter = Worker::spawn("phiguard-changes", move |stop| reporter.run(&stop))
            .map_err(ChangeError::Thread)?;
        Ok(ChangeWatcher { reporter, marks })
    }

    /// Follows a new label set: marks its filesystems (and unmarks those no longer needed),
    /// and remembers the `stat` of what lies below its roots (off the reporting thread).
    pub(super) fn update(&self, protected: &Protected) -> Result<(), ChangeError> {
        let roots: Vec<PathBuf> = protected.roots().map(Path::to_path_buf).collect();
        self.marks.follow(&protected.filesystems, &roots)
    }
}

impl Marks {
    /// Marks `filesystems` (unmarking the others) and remembers what lies below `roots`.
    fn follow(
        &self,
        filesystems: &BTreeMap<u32, PathBuf>,
        roots: &[PathBuf],
    ) -> Result<(), ChangeError> {
        let mut marked = self.marked.lock().unwrap_or_else(PoisonError::into_inner);
        for (dev, path) in filesystems {
            if marked.contains_key(dev) {
                continue;
            }
            self.mark(path, true)?;
            self.mounts
                .add(*dev, path)
                .map_err(|source| ChangeError::Mark {
                    path: path.display().to_string(),
                    source,
                })?;
            marked.insert(*dev, path.clone());
        }
        let gone: Vec<u32> = marked
            .keys()
            .filter(|dev| !filesystems.contains_key(dev))
            .copied()
            .collect();
        for dev in gone {
            if let Some(path) = marked.remove(&dev) {
                let _ = self.mark(&path, false);
            }
            self.mounts.remove(dev);
        }
        drop(marked);
        self.attrs.below(roots.iter().map(PathBuf::as_path));
        Ok(())
    }

    /// Marks (or unmarks) the filesystem holding `path` for [`CHANGE_MASK`].
    fn mark(&self, path: &Path, add: bool) -> Result<(), ChangeError> {
        sys::mark_filesystem(self.fd.as_fd(), path, CHANGE_MASK, add).map_err(|source| {
            ChangeError::Mark {
                path: path.display().to_string(),
                source,
            }
        })
    }
}
