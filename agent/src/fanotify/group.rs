//! The fanotify group: created once, marked per filesystem, read and answered. Nothing here
//! decides; it only speaks the kernel's protocol (fanotify(7)).
//!
//! The group is `FAN_CLASS_CONTENT` with `FAN_REPORT_TID` (the event names the opening
//! thread, whose `/proc/<tid>/syscall` shows the call it is blocked in) and an unlimited
//! queue (a permission event is never dropped: the opener waits for an answer). Event
//! descriptors are `O_RDONLY | O_LARGEFILE | O_CLOEXEC`; each one is closed once answered.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::sys;

/// The events asked for on a filesystem holding protected files: every open of its files and
/// directories waits for the agent's answer (an exec's open of the program is an open too; a
/// directory walker opening a protected directory gets `EPERM` like any other refused open).
pub const FILE_MASK: u64 = libc::FAN_OPEN_PERM | libc::FAN_ONDIR;
/// The events asked for on every filesystem while an exec allow-list is in force: each open of
/// a program (and of a script's interpreter) for `execve` waits for the agent's answer.
pub const EXEC_MASK: u64 = libc::FAN_OPEN_EXEC_PERM;

/// Failure of a fanotify call.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// `fanotify_init` failed.
    #[error("fanotify_init (permission events need CONFIG_FANOTIFY_ACCESS_PERMISSIONS and CAP_SYS_ADMIN): {0}")]
    Init(#[source] io::Error),
    /// `fanotify_mark` failed.
    #[error("fanotify_mark of the filesystem holding {path}: {source}")]
    Mark {
        /// The path whose filesystem was (un)marked.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// One fanotify group for permission events.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

/// One permission event read from the group: its descriptor (closed on drop) and the thread
/// that is waiting in its open.
#[derive(Debug)]
pub struct PermissionEvent {
    /// The opened file, as the kernel opened it for the agent.
    pub fd: OwnedFd,
    /// The opening thread (`FAN_REPORT_TID`).
    pub tid: u32,
    /// `FAN_*` bits of the event.
    pub mask: u64,
}

impl Group {
    /// Creates the group (non-blocking reads: the response loop polls).
    pub fn new() -> Result<Group, GroupError> {
        let fd = sys::init(
            libc::FAN_CLASS_CONTENT
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                | libc::FAN_REPORT_TID
                | libc::FAN_UNLIMITED_QUEUE,
        )
        .map_err(GroupError::Init)?;
        Ok(Group { fd })
    }

    /// Takes a group kept across a restart (systemd's file descriptor store,
    /// [`crate::fdstore`]): created by a previous agent with the flags of [`Group::new`], its
    /// marks and its queue of waiting opens are kept. Its inode and mount marks (this agent
    /// makes none) are flushed; filesystem marks are reset by the caller
    /// ([`Group::unmark_stale`]) once the new ones are in place.
    pub fn adopt(fd: OwnedFd) -> Group {
        let group = Group { fd };
        for flags in [
            libc::FAN_MARK_FLUSH,
            libc::FAN_MARK_FLUSH | libc::FAN_MARK_MOUNT,
        ] {
            // SAFETY: FAN_MARK_FLUSH takes no path; the group descriptor is open.
            let rc = unsafe {
                libc::fanotify_mark(
                    group.fd.as_raw_fd(),
                    flags,
                    0,
                    libc::AT_FDCWD,
                    std::ptr::null(),
                )
            };
            if rc < 0 {
                tracing::debug!(
                    "flushing the kept group's marks: {}",
                    io::Error::last_os_error()
                );
            }
        }
        group
    }

    /// After adoption: removes the kept group's filesystem marks this agent's policies no
    /// longer need. `mounted` is one path per mounted filesystem; the open mark is removed
    /// from those not in `needed` (paths on the filesystems marked now), the exec mark from
    /// all of them unless `exec`. Marks that do not exist are no error.
    pub fn unmark_stale(&self, needed: &[&Path], exec: bool, mounted: &[PathBuf]) {
        use std::os::unix::fs::MetadataExt as _;
        let keep: Vec<u64> = needed
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.dev())
            .collect();
        for path in mounted {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            if !keep.contains(&meta.dev()) {
                let _ = self.mark_filesystem(path, FILE_MASK, false);
            }
            if !exec {
                let _ = self.mark_filesystem(path, EXEC_MASK, false);
            }
        }
    }

    /// After adoption: refuses the opens the previous agent had read but not answered when it
    /// died (they wait on the group's list of read events, answered by their descriptor
    /// number in the dead agent, which no one knows now): every number below `limit` is
    /// tried; the kernel takes only those of such events. Must run before this agent reads
    /// any event. Returns how many were refused.
    pub fn deny_unanswered(&self, limit: RawFd) -> usize {
        (0..limit)
            .filter(|&fd| self.respond(fd, false).is_ok())
            .count()
    }

    /// Marks (or, with `add` false, unmarks) the whole filesystem holding `path` for the events
    /// of `mask`: every such open of any of its files, by any name, any link, from any mount,
    /// raises a permission event.
    pub fn mark_filesystem(&self, path: &Path, mask: u64, add: bool) -> Result<(), GroupError> {
        sys::mark_filesystem(self.fd.as_fd(), path, mask, add).map_err(|source| GroupError::Mark {
            path: path.display().to_string(),
            source,
        })
    }

    /// Stops asking about opens of `file`'s inode (an unprotected one): an evictable ignore
    /// mark, so the kernel answers its later opens itself and the inode cache may still drop
    /// it (memory stays bounded; an evicted inode is asked about again at its next open). The
    /// mark is cleared when the file is modified and by [`Group::forget_ignored`]; exec
    /// events are still asked (the ignore covers opens only).
    pub fn ignore_opens(&self, file: BorrowedFd<'_>, is_dir: bool) -> io::Result<()> {
        let mask = libc::FAN_OPEN_PERM | if is_dir { libc::FAN_ONDIR } else { 0 };
        self.mark_inode(
            file,
            libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE | libc::FAN_MARK_EVICTABLE,
            mask,
        )
    }

    /// Asks again about opens of `file`'s inode (removes its ignore mark, if any).
    pub fn ask_again(&self, file: BorrowedFd<'_>, is_dir: bool) -> io::Result<()> {
        self.ask_again_at(
            Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())),
            is_dir,
        )
    }

    /// Asks again about opens of the inode at `path` (followed if a symbolic link, so a
    /// `/proc/self/fd/N` of an `O_PATH` descriptor works): removes its ignore mark, if any.
    pub fn ask_again_at(&self, path: &Path, is_dir: bool) -> io::Result<()> {
        let mask = libc::FAN_OPEN_PERM | if is_dir { libc::FAN_ONDIR } else { 0 };
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a valid NUL-terminated path; the group descriptor is open.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_REMOVE | libc::FAN_MARK_IGNORE,
                mask,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // ENOENT: it had no mark.
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(())
            } else {
                Err(e)
            };
        }
        Ok(())
    }

    /// Drops every ignore mark (the group's only inode marks; its filesystem marks stay).
    pub fn forget_ignored(&self) -> io::Result<()> {
        // SAFETY: plain system call; with FAN_MARK_FLUSH the path is not read.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_FLUSH,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One inode mark change on the inode `file` refers to.
    fn mark_inode(&self, file: BorrowedFd<'_>, flags: libc::c_uint, mask: u64) -> io::Result<()> {
        // SAFETY: with a null path the mark is placed on `file`'s inode; both are open.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                flags,
                mask,
                file.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The group's descriptor (to poll).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads the pending events (none when the queue is empty).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Vec<PermissionEvent>> {
        let n = sys::read(self.fd.as_fd(), buf)?;
        Ok(parse(&buf[..n]))
    }

    /// Answers a permission event: `allow` lets the open go on, else it fails with `EPERM`.
    pub fn respond(&self, event_fd: RawFd, allow: bool) -> io::Result<()> {
        let response = libc::fanotify_response {
            fd: event_fd,
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        let size = std::mem::size_of::<libc::fanotify_response>();
        // SAFETY: `response` is a plain struct of `size` bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const response).cast(), size) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Splits a read buffer into events. Events without a descriptor (queue overflow, which an
/// unlimited queue does not have) are skipped.
fn parse(bytes: &[u8]) -> Vec<PermissionEvent> {
    sys::events(bytes)
        .filter(|(meta, _)| meta.fd >= 0)
        .map(|(meta, _)| PermissionEvent {
            // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
            fd: unsafe { OwnedFd::from_raw_fd(meta.fd) },
            tid: meta.pid as u32,
            mask: meta.mask,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::mpsc,
        time::{Duration, Instant},
    };

    /// Reads events until one comes (or a few seconds pass).
    fn next_event(group: &Group) -> PermissionEvent {
        let mut buf = vec![0u8; 4096];
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Some(event) = group.read(&mut buf).unwrap().into_iter().next() {
                return event;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no permission event");
    }

    /// A restart with the group kept (what systemd's store does): an open the dead agent read
    /// but never answered is refused by the adopting one, an open queued meanwhile waits and
    /// is then answered by it. On a private tmpfs (its own mount namespace), so no other
    /// process's opens are marked; skipped without the privileges for it.
    #[test]
    fn an_adopted_group_answers_what_waited_and_refuses_what_the_dead_agent_read() {
        use nix::mount;
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: plain system call; it affects this thread (and those it spawns) only.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0
            || mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                mount::MsFlags::MS_REC | mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .is_err()
            || mount::mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                mount::MsFlags::empty(),
                None::<&str>,
            )
            .is_err()
        {
            eprintln!("skipped: no private mount namespace here");
            return;
        }
        let file = dir.path().join("rec.txt");
        std::fs::write(&file, "secret").unwrap();
        let Ok(first) = Group::new() else {
            eprintln!("skipped: no fanotify permission events here");
            return;
        };
        first.mark_filesystem(dir.path(), FILE_MASK, true).unwrap();
        // systemd's copy.
        let kept = first.as_fd().try_clone_to_owned().unwrap();
        let open = |tx: mpsc::Sender<io::Result<String>>, path: PathBuf| {
            // Threads share this thread's mount namespace (CLONE_FS).
            std::thread::spawn(move || {
                let _ = tx.send(std::fs::read_to_string(path));
            })
        };
        let (tx1, rx1) = mpsc::channel();
        let read_then_lost = open(tx1, file.clone());
        let event = next_event(&first);
        // The agent dies: its event descriptor and its copy of the group close unanswered.
        drop(event);
        drop(first);
        let (tx2, rx2) = mpsc::channel();
        let queued = open(tx2, file.clone());
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx1.try_recv().is_err(), "an open passed while no agent ran");
        assert!(rx2.try_recv().is_err(), "an open passed while no agent ran");
        // The new agent adopts the kept group.
        let adopted = Group::adopt(kept);
        adopted
            .mark_filesystem(dir.path(), FILE_MASK, true)
            .unwrap();
        assert_eq!(adopted.deny_unanswered(1024), 1);
        let refused = rx1.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert!(
            rx2.try_recv().is_err(),
            "the queued open was answered too early"
        );
        let event = next_event(&adopted);
        adopted.respond(event.fd.as_raw_fd(), true).unwrap();
        assert_eq!(
            rx2.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(),
            "secret"
        );
        read_then_lost.join().unwrap();
        queued.join().unwrap();
        drop(adopted);
        let _ = mount::umount(dir.path());
    }
}
