//! File-open records: the absolute path an open concerns, its flags and its outcome.

use std::{fs, path::PathBuf};

use phiguard_common::event::{matched_by, Sender, FLAG_COMPAT_SYSCALL, FLAG_TRUNCATED};
use phiguard_proto::v1::{self, event::Body};

use crate::{
    event::{file::FileOpen, header::Header},
    paths,
    watch::WatchSet,
};

/// `AT_FDCWD`.
pub const AT_FDCWD: i32 = -100;

/// Where a file-open record points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedOpen {
    /// Absolute, normalised path (the requested path when it could not be resolved).
    pub path: PathBuf,
    /// Whether `path` is resolved.
    pub resolved: bool,
    /// The watched path that covers it, if any.
    pub watch: Option<PathBuf>,
}

/// Resolves a record's path. `base_dir` supplies the directory a relative path is relative
/// to (the process's cwd or the dirfd's path) when the kernel could not.
/// Returns `None` when the open turns out not to concern any watch.
pub fn resolve_open(
    event: &FileOpen,
    watches: &WatchSet,
    base_dir: impl FnOnce(i32) -> Option<PathBuf>,
) -> Option<ResolvedOpen> {
    let requested = PathBuf::from(&event.requested);
    let names: Vec<&str> = event.names.iter().map(String::as_str).collect();
    let watched_base = || {
        watches
            .get(event.watch_id)
            .map(|w| paths::join_names(&w.path, &names))
    };
    if event.matched_by == matched_by::LABEL {
        // The fanotify layer: the inode is protected whatever its name; `names` holds the
        // descriptor's path as the kernel names it (a hard link's own path, say).
        let opened = names.first().map(PathBuf::from);
        return Some(ResolvedOpen {
            resolved: opened.is_some(),
            path: opened.unwrap_or(requested),
            watch: watches.get(event.watch_id).map(|w| w.path.clone()),
        });
    }
    if event.matched_by == matched_by::LSM_LABEL {
        // A BPF LSM label: the inode is protected whatever its name; `names` runs up to the
        // root of its filesystem (`/` last) unless cut short.
        let complete = names.last() == Some(&"/");
        let names: Vec<&str> = names.into_iter().filter(|n| *n != "/").collect();
        let mount = complete
            .then(|| fs::read_to_string("/proc/self/mountinfo").ok())
            .flatten()
            .and_then(|info| crate::kernel::mounts::mount_point_of_dev(&info, event.file.dev));
        let resolved = mount.is_some();
        let base = mount.unwrap_or_else(|| PathBuf::from("..."));
        return Some(ResolvedOpen {
            path: paths::join_names(&base, &names),
            resolved,
            watch: watches.get(event.watch_id).map(|w| w.path.clone()),
        });
    }
    let path = match event.matched_by {
        matched_by::INODE => watched_base()?,
        matched_by::BASE_DIR => paths::resolve(&requested, watched_base().as_deref())?,
        matched_by::PREFIX => paths::normalize(&requested),
        _ => match base_dir(event.dirfd).and_then(|base| paths::resolve(&requested, Some(&base))) {
            Some(path) => path,
            None => {
                return Some(ResolvedOpen {
                    path: requested,
                    resolved: false,
                    watch: None,
                })
            }
        },
    };
    // INODE matches are exact; every other kind is re-checked here.
    let watch = match event.matched_by {
        matched_by::INODE => watches.get(event.watch_id).map(|w| w.path.clone()),
        _ => watches.covering(&path).map(|w| w.path.clone()),
    };
    watch.as_ref()?;
    Some(ResolvedOpen {
        path,
        resolved: true,
        watch,
    })
}

/// The kernel's `O_LARGEFILE` (asm-generic); glibc defines it as 0 on 64-bit targets.
const O_LARGEFILE_KERNEL: i32 = 0o100000;

/// `O_*` flag names of an open, access mode first.
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    let flags = flags as i32;
    let mut names = vec![match flags & libc::O_ACCMODE {
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_RDONLY",
    }];
    const NAMED: &[(i32, &str)] = &[
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_NOCTTY, "O_NOCTTY"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DSYNC, "O_DSYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (O_LARGEFILE_KERNEL, "O_LARGEFILE"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_TMPFILE & !libc::O_DIRECTORY, "O_TMPFILE"),
    ];
    names.extend(
        NAMED
            .iter()
            .filter(|(bit, _)| *bit != 0 && flags & bit == *bit)
            .map(|(_, name)| *name),
    );
    names
}

impl super::Enricher {
    /// An open under a watch: `None` when it turns out not to concern one.
    pub(super) fn file_open(&mut self, e: &FileOpen) -> Option<Body> {
        let pid = e.header.pid;
        self.processes.refresh_cwd(pid, e.header.start_boot_ns);
        let cwd = self
            .processes
            .get(pid, e.header.start_boot_ns)
            .and_then(|p| p.cwd.clone());
        let resolved = resolve_open(e, &self.watches, |dirfd| {
            if dirfd == AT_FDCWD {
                fs::read_link(format!("/proc/{pid}/cwd"))
                    .ok()
                    .or(cwd.map(PathBuf::from))
            } else {
                fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()
            }
        })?;
        let ret = e.ret;
        let flags = e.open_flags as i32;
        // A change without an open (truncate, unlink, rename…, BPF LSM only): no flags.
        let operation = e.syscall >= phiguard_common::event::open_syscall::TRUNCATE;
        let access = match flags & libc::O_ACCMODE {
            _ if operation => v1::Access::Write,
            libc::O_WRONLY => v1::Access::Write,
            libc::O_RDWR => v1::Access::ReadWrite,
            _ => v1::Access::Read,
        };
        Some(Body::FileOpen(v1::FileOpen {
            path: resolved.path.display().to_string(),
            requested_path: e.requested.clone(),
            path_resolved: resolved.resolved,
            syscall: if e.header.flags & FLAG_COMPAT_SYSCALL != 0 {
                format!("{} (32-bit entry)", open_syscall_name(e.syscall))
            } else {
                open_syscall_name(e.syscall).to_owned()
            },
            result: Some(ret),
            error: if ret < 0 {
                errno_name(-ret)
            } else {
                String::new()
            },
            flags: if operation {
                Vec::new()
            } else {
                flag_names(e.open_flags)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            },
            access: access as i32,
            mode: e.mode,
            created: flags & libc::O_CREAT != 0,
            watch: resolved
                .watch
                .map(|w| w.display().to_string())
                .unwrap_or_default(),
            device: u64::from(e.file.dev),
            inode: e.file.ino,
            truncated: e.header.flags & FLAG_TRUNCATED != 0,
            sender: e.sender.map(|s| self.sender(s)),
        }))
    }

    /// The process that handed a descriptor over, from the process table by its pid and
    /// start time (the kernel recorded no more): no thread id, and no user when the table
    /// does not know it.
    fn sender(&mut self, s: Sender) -> v1::Process {
        let mut process = self.process(Header {
            flags: 0,
            boot_ns: 0,
            tid: 0,
            pid: s.tgid,
            ppid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
            loginuid: None,
            sessionid: None,
            cgroup_id: 0,
            start_boot_ns: s.start_boot_ns,
            comm: String::new(),
        });
        if process.user.as_ref().and_then(|u| u.id) == Some(u32::MAX) {
            process.user = None;
            process.group = None;
        }
        process
    }
}

fn open_syscall_name(code: u32) -> &'static str {
    use phiguard_common::event::open_syscall::*;
    match code {
        OPEN => "open",
        OPENAT => "openat",
        OPENAT2 => "openat2",
        CREAT => "creat",
        OPEN_BY_HANDLE_AT => "open_by_handle_at",
        EXEC => "execve",
        OTHER => "other (io_uring or a kernel worker)",
        RECEIVE => "pidfd_getfd or SCM_RIGHTS (a descriptor received)",
        TRUNCATE => "truncate",
        CHMOD => "chmod",
        CHOWN => "chown",
        UTIMES => "utimes",
        UNLINK => "unlink",
        RMDIR => "rmdir",
        RENAME => "rename",
        LINK => "link",
        SETXATTR => "setxattr",
        REMOVEXATTR => "removexattr",
        CREATE => "create",
        ATTRIB => "attrib",
        WRITE => "write",
        _ => "unknown",
    }
}

pub(super) fn errno_name(errno: i64) -> String {
    let errno = nix::errno::Errno::from_raw(errno as i32);
    format!("{errno:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Watch;

    fn watches() -> WatchSet {
        WatchSet {
            paths: vec![Watch {
                id: 0,
                path: "/srv/ephi".into(),
                canonical: "/data/ephi".into(),
                dev: 1,
                ino: 2,
                is_dir: true,
                observed: true,
            }],
            ports: vec![],
        }
    }

    fn event(matched: u32, path: &str, names: &[u8], count: u32) -> FileOpen {
        // SAFETY: all-zero is a valid record (plain integers).
        let mut e: phiguard_common::event::FileOpenEvent = unsafe { std::mem::zeroed() };
        e.matched_by = matched;
        e.watch_id = 0;
        e.dirfd = AT_FDCWD;
        e.path[..path.len()].copy_from_slice(path.as_bytes());
        e.path_len = path.len() as u32;
        e.names[..names.len()].copy_from_slice(names);
        e.names_len = names.len() as u32;
        e.names_count = count;
        FileOpen::decode(&e)
    }

    #[test]
    fn inode_match_uses_dentry_names_not_the_requested_path() {
        // `cat ./rec.txt` from /srv/ephi/sub, or through a symlink elsewhere.
        let e = event(matched_by::INODE, "../../tmp/link", b"rec.txt\0sub\0", 2);
        let r = resolve_open(&e, &watches(), |_| None).unwrap();
        assert_eq!(r.path, PathBuf::from("/srv/ephi/sub/rec.txt"));
        assert!(r.resolved);
    }

    #[test]
    fn base_dir_match_joins_relative_path() {
        let e = event(matched_by::BASE_DIR, "./missing.txt", b"sub\0", 1);
        let r = resolve_open(&e, &watches(), |_| None).unwrap();
        assert_eq!(r.path, PathBuf::from("/srv/ephi/sub/missing.txt"));
        // `..` climbing out of the watch is not reported.
        let e = event(matched_by::BASE_DIR, "../../etc/x", b"sub\0", 1);
        assert!(resolve_open(&e, &watches(), |_| None).is_none());
    }

    #[test]
    fn prefix_match_is_rechecked_exactly() {
        let e = event(matched_by::PREFIX, "/srv/ephi//a/../b.txt", b"", 0);
        assert_eq!(
            resolve_open(&e, &watches(), |_| None).unwrap().path,
            PathBuf::from("/srv/ephi/b.txt")
        );
        let e = event(matched_by::PREFIX, "/srv/ephiX/b.txt", b"", 0);
        assert!(resolve_open(&e, &watches(), |_| None).is_none());
    }

    #[test]
    fn unresolved_uses_the_base_dir_or_says_unresolved() {
        let e = event(matched_by::UNRESOLVED, "../ephi/x", b"", 0);
        let r = resolve_open(&e, &watches(), |_| Some("/srv/other".into())).unwrap();
        assert_eq!(r.path, PathBuf::from("/srv/ephi/x"));
        assert!(resolve_open(&e, &watches(), |_| Some("/tmp/a".into())).is_none());
        let r = resolve_open(&e, &watches(), |_| None).unwrap();
        assert!(!r.resolved);
        assert_eq!(r.path, PathBuf::from("../ephi/x"));
    }

    #[test]
    fn flags() {
        assert_eq!(
            flag_names((libc::O_RDONLY | libc::O_CLOEXEC) as u32),
            ["O_RDONLY", "O_CLOEXEC"]
        );
        assert_eq!(
            flag_names((libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32),
            ["O_WRONLY", "O_CREAT", "O_TRUNC"]
        );
    }
}
