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

use std::{
    collections::HashMap,
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use phiguard_common::{
    event::{matched_by, open_syscall},
    limits::{COMM_LEN, NAMES_LEN, PATH_LEN},
    policy::{access, layer, verdict, Decision},
};
use tokio::sync::mpsc;

use super::{
    decide::{self, Label, Protected, Subject},
    group::Group,
    opener, Counters, Record,
};
use crate::{
    event::{
        decode::{text, DecodedEvent},
        file::FileOpen,
        header::Header,
    },
    kernel::identity::ExecIdentities,
    paths::{self, kernel_dev, FileId},
    process::procfs,
};

/// The events asked for on a filesystem holding protected inodes.
pub const CHANGE_MASK: u64 = libc::FAN_ATTRIB
    | libc::FAN_MODIFY
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_RENAME
    | libc::FAN_ONDIR;

/// Most inodes whose `stat` is remembered to name attribute changes; past it, the memory is
/// dropped and rebuilt from later changes (about 64 bytes each).
pub const MAX_ATTRS: usize = 262_144;
/// Reports remembered to fold repeats within [`FOLD`].
const MAX_FOLDED: usize = 4096;
/// Repeats of one (process, inode, operation) within this are one report.
const FOLD: Duration = Duration::from_secs(1);

/// `FILEID_INO32_GEN` and `FILEID_INO32_GEN_PARENT`: on ext2/3/4 (the kernel's generic
/// encoder) handles that start with the 32-bit inode number. Other filesystems reuse these
/// type numbers with other layouts (tmpfs puts the generation first).
const FILEID_INO32_GEN: i32 = 1;
const FILEID_INO32_GEN_PARENT: i32 = 2;
/// `statfs.f_type` of ext2/3/4, whose handles [`Handle::ino_hint`] may read.
const EXT_SUPER_MAGIC: u32 = 0xEF53;

/// A file handle as fanotify reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    /// The filesystem id (`__kernel_fsid_t`, as `statfs` gives it).
    pub fsid: [u8; 8],
    /// `file_handle.handle_type`.
    pub handle_type: i32,
    /// `file_handle.f_handle`.
    pub bytes: Vec<u8>,
}

impl Handle {
    /// The inode number the handle names, where its type says it leads with it — on ext2/3/4
    /// only (see [`FILEID_INO32_GEN`]).
    pub fn ino_hint(&self) -> Option<u64> {
        if self.handle_type != FILEID_INO32_GEN && self.handle_type != FILEID_INO32_GEN_PARENT {
            return None;
        }
        let ino: [u8; 4] = self.bytes.get(..4)?.try_into().ok()?;
        Some(u64::from(u32::from_ne_bytes(ino)))
    }
}

/// A directory (by handle) and an entry name in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The directory.
    pub dir: Handle,
    /// The entry's name (`.` for the directory itself).
    pub name: Vec<u8>,
}

/// One notification read from the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A change.
    Change(Box<Change>),
    /// The kernel's queue overflowed: changes were dropped.
    Overflow,
}

/// One change event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `FAN_*` bits.
    pub mask: u64,
    /// The acting process (thread-group id).
    pub pid: u32,
    /// The inode the change concerns (the child of a directory entry event).
    pub object: Option<Handle>,
    /// Its directory and name (`FAN_EVENT_INFO_TYPE_DFID_NAME`).
    pub entry: Option<Named>,
    /// A rename's source.
    pub old: Option<Named>,
    /// A rename's destination.
    pub new: Option<Named>,
}

/// Splits a read buffer into notices (pure: see fanotify(7), "Information records").
pub fn parse(mut bytes: &[u8]) -> Vec<Notice> {
    let mut out = Vec::new();
    let header = std::mem::size_of::<libc::fanotify_event_metadata>();
    while bytes.len() >= header {
        // SAFETY: at least `header` bytes remain; read unaligned.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let len = meta.event_len as usize;
        let meta_len = usize::from(meta.metadata_len);
        if len < header || len > bytes.len() || meta_len > len {
            break;
        }
        if meta.fd >= 0 {
            // Not a FID group's event; close what the kernel gave us.
            // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(meta.fd) });
        }
        if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            out.push(Notice::Overflow);
        } else {
            let mut change = Change {
                mask: meta.mask,
                pid: meta.pid as u32,
                object: None,
                entry: None,
                old: None,
                new: None,
            };
            parse_infos(&bytes[meta_len..len], &mut change);
            out.push(Notice::Change(Box::new(change)));
        }
        bytes = &bytes[len..];
    }
    out
}

/// Reads an event's information records into `change`.
fn parse_infos(mut infos: &[u8], change: &mut Change) {
    while infos.len() >= 4 {
        let info_type = infos[0];
        let len = usize::from(u16::from_ne_bytes([infos[2], infos[3]]));
        if len < 4 || len > infos.len() {
            return;
        }
        let body = &infos[4..len];
        match info_type {
            libc::FAN_EVENT_INFO_TYPE_FID => change.object = parse_handle(body).map(|(h, _)| h),
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_DFID
            | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => {
                if let Some((dir, rest)) = parse_handle(body) {
                    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                    let named = Named {
                        dir,
                        name: rest[..end].to_vec(),
                    };
                    match info_type {
                        libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => change.old = Some(named),
                        libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => change.new = Some(named),
                        _ => change.entry = Some(named),
                    }
                }
            }
            _ => {}
        }
        infos = &infos[len..];
    }
}

/// A `fsid` and `struct file_handle`, and what follows it.
fn parse_handle(body: &[u8]) -> Option<(Handle, &[u8])> {
    let fsid: [u8; 8] = body.get(..8)?.try_into().ok()?;
    let bytes_len = u32::from_ne_bytes(body.get(8..12)?.try_into().ok()?) as usize;
    let handle_type = i32::from_ne_bytes(body.get(12..16)?.try_into().ok()?);
    let end = 16usize.checked_add(bytes_len)?;
    let bytes = body.get(16..end)?.to_vec();
    Some((
        Handle {
            fsid,
            handle_type,
            bytes,
        },
        &body[end..],
    ))
}

/// What `stat` says of an inode, to name its attribute changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// `st_mode` (type and permissions).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links.
    pub nlink: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Access time, ns since the epoch.
    pub atime_ns: i128,
    /// Change time, ns since the epoch.
    pub ctime_ns: i128,
    /// Number of extended attribute names (`None`: not read).
    pub xattrs: Option<usize>,
}

impl Attrs {
    /// From a `stat` (extended attributes not read).
    pub fn of(meta: &fs::Metadata) -> Attrs {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Attrs {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            nlink: meta.nlink(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            atime_ns: ns(meta.atime(), meta.atime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            xattrs: None,
        }
    }
}

/// The operation an attribute change (`FAN_ATTRIB`) was, from the inode's `stat` before and
/// after; `None` when it is one the `FAN_DELETE`/`FAN_RENAME` report covers (fewer links).
pub fn classify_attrib(before: Option<&Attrs>, after: &Attrs) -> Option<u32> {
    if after.nlink == 0 {
        return None; // unlinked: the `FAN_DELETE` report names it
    }
    let Some(before) = before else {
        // utimes/touch set the modification time to the change time; nothing else does.
        return Some(if after.mtime_ns == after.ctime_ns {
            open_syscall::UTIMES
        } else {
            open_syscall::ATTRIB
        });
    };
    Some(if before.uid != after.uid || before.gid != after.gid {
        open_syscall::CHOWN
    } else if before.mode != after.mode {
        open_syscall::CHMOD
    } else if after.nlink > before.nlink {
        open_syscall::LINK
    } else if after.nlink < before.nlink {
        return None;
    } else if before.mtime_ns != after.mtime_ns || before.atime_ns != after.atime_ns {
        open_syscall::UTIMES
    } else {
        match (before.xattrs, after.xattrs) {
            (Some(b), Some(a)) if a > b => open_syscall::SETXATTR,
            (Some(b), Some(a)) if a < b => open_syscall::REMOVEXATTR,
            // An attribute value replaced, an ACL set, a chmod or chown to what it was.
            _ => open_syscall::ATTRIB,
        }
    })
}

/// The operation a `FAN_MODIFY` was: `truncate` when the file shrank (or, with nothing to
/// compare with, is empty), else `write`.
pub fn classify_modify(before: Option<&Attrs>, after: &Attrs) -> u32 {
    match before {
        Some(before) if after.size < before.size => open_syscall::TRUNCATE,
        None if after.size == 0 => open_syscall::TRUNCATE,
        _ => open_syscall::WRITE,
    }
}

/// The operation of a directory entry event (`linked`: the entry is a further name of a
/// protected inode).
pub fn classify_entry(mask: u64, linked: bool) -> Option<u32> {
    let dir = mask & libc::FAN_ONDIR != 0;
    Some(if mask & libc::FAN_RENAME != 0 {
        open_syscall::RENAME
    } else if mask & libc::FAN_DELETE != 0 {
        if dir {
            open_syscall::RMDIR
        } else {
            open_syscall::UNLINK
        }
    } else if mask & libc::FAN_CREATE != 0 {
        // A new name for an inode already protected is a link to it.
        if linked && !dir {
            open_syscall::LINK
        } else {
            open_syscall::CREATE
        }
    } else {
        return None;
    })
}

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

/// One marked filesystem: a descriptor to open handles against, and its device.
#[derive(Debug)]
struct Mount {
    fd: OwnedFd,
    dev: u32,
    /// ext2/3/4: a handle's leading bytes are its inode number.
    ext: bool,
}

/// The change reporter: its group, marks and thread.
#[derive(Debug)]
pub struct ChangeWatcher {
    fd: Arc<OwnedFd>,
    mounts: Arc<Mutex<HashMap<[u8; 8], Mount>>>,
    marked: Mutex<HashMap<u32, PathBuf>>,
    attrs: Arc<Mutex<HashMap<FileId, Attrs>>>,
    stop: Arc<AtomicBool>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
    /// Queue overflows of the change group.
    pub overflows: Arc<AtomicU64>,
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
        // SAFETY: plain system call with constant arguments.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF
                    | libc::FAN_CLOEXEC
                    | libc::FAN_NONBLOCK
                    // No FAN_REPORT_TID: the process id names the process even when the
                    // change ran on an io_uring worker thread that is gone by now.
                    | libc::FAN_REPORT_DFID_NAME_TARGET,
                (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(ChangeError::Init(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned to us and is owned by nobody else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (wake_read, wake) = nix::unistd::pipe().map_err(|e| ChangeError::Thread(e.into()))?;
        let mut watcher = ChangeWatcher {
            fd: Arc::clone(&fd),
            mounts: Arc::new(Mutex::new(HashMap::new())),
            marked: Mutex::new(HashMap::new()),
            attrs: Arc::new(Mutex::new(HashMap::new())),
            stop: Arc::new(AtomicBool::new(false)),
            wake,
            thread: None,
            overflows: Arc::new(AtomicU64::new(0)),
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
        watcher.follow(&filesystems, &roots)?;
        let reporter = Reporter {
            fd,
            group,
            mounts: Arc::clone(&watcher.mounts),
            attrs: Arc::clone(&watcher.attrs),
            state,
            stop: Arc::clone(&watcher.stop),
            wake: wake_read,
            records,
            counters,
            overflows: Arc::clone(&watcher.overflows),
            identities,
            own_pid: std::process::id(),
            ns_per_tick: 1_000_000_000 / procfs::ticks_per_second(),
            folded: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("phiguard-changes".into())
            .spawn(move || reporter.run())
            .map_err(ChangeError::Thread)?;
        watcher.thread = Some(thread);
        Ok(watcher)
    }

    /// Follows a new label set: marks its filesystems (and unmarks those no longer needed),
    /// and remembers the `stat` of what lies below its roots (off the reporting thread).
    pub(super) fn update(&self, protected: &Protected) -> Result<(), ChangeError> {
        let roots: Vec<PathBuf> = protected.roots().map(Path::to_path_buf).collect();
        self.follow(&protected.filesystems, &roots)
    }

    /// Marks `filesystems` (unmarking the others) and remembers what lies below `roots`.
    fn follow(
        &self,
        filesystems: &std::collections::BTreeMap<u32, PathBuf>,
        roots: &[PathBuf],
    ) -> Result<(), ChangeError> {
        let mut marked = self.marked.lock().unwrap_or_else(PoisonError::into_inner);
        for (dev, path) in filesystems {
            if marked.contains_key(dev) {
                continue;
            }
            self.mark(path, true)?;
            let mount = fs::File::open(path)
                .and_then(|f| {
                    let (fsid, ext) = fsid_of(&f)?;
                    Ok((fsid, OwnedFd::from(f), ext))
                })
                .map_err(|source| ChangeError::Mark {
                    path: path.display().to_string(),
                    source,
                })?;
            self.mounts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    mount.0,
                    Mount {
                        fd: mount.1,
                        dev: *dev,
                        ext: mount.2,
                    },
                );
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
            self.mounts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, m| m.dev != dev);
        }
        drop(marked);
        let baseline = baseline(roots.iter().map(PathBuf::as_path));
        let mut attrs = self.attrs.lock().unwrap_or_else(PoisonError::into_inner);
        if attrs.len() + baseline.len() > MAX_ATTRS {
            attrs.clear();
        }
        attrs.extend(baseline);
        Ok(())
    }

    fn mark(&self, path: &Path, add: bool) -> Result<(), ChangeError> {
        let error = |source| ChangeError::Mark {
            path: path.display().to_string(),
            source,
        };
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let flags = if add {
            libc::FAN_MARK_ADD
        } else {
            libc::FAN_MARK_REMOVE
        } | libc::FAN_MARK_FILESYSTEM;
        // SAFETY: `c` is a valid NUL-terminated path; the group descriptor is open.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                flags,
                CHANGE_MASK,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(error(io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for ChangeWatcher {
    /// Stops the reporting thread (changes still queued are reported first).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = nix::unistd::write(&self.wake, &[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `stat` (and extended attribute count) of everything below `roots`, up to [`MAX_ATTRS`].
fn baseline<'a>(roots: impl Iterator<Item = &'a Path>) -> HashMap<FileId, Attrs> {
    let mut out = HashMap::new();
    for root in roots {
        paths::walk_filesystem_tree(root, |path, meta| {
            if out.len() >= MAX_ATTRS {
                return false;
            }
            let mut attrs = Attrs::of(meta);
            attrs.xattrs = xattr_count(path, false);
            out.insert(
                FileId {
                    dev: kernel_dev(meta.dev()),
                    ino: meta.ino(),
                },
                attrs,
            );
            true
        });
    }
    out
}

/// How many extended attribute names `path` has (`follow`: through a final symlink, such as
/// `/proc/self/fd/N`).
fn xattr_count(path: &Path, follow: bool) -> Option<usize> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    let list = if follow {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    // SAFETY: `c` is a valid path; `buf` is valid for writes of its length.
    let n = unsafe { list(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    Some(buf[..n as usize].iter().filter(|b| **b == 0).count())
}

/// The `fsid` of the filesystem holding `file`, as fanotify reports it, and whether it is
/// ext2/3/4.
fn fsid_of(file: &fs::File) -> io::Result<([u8; 8], bool)> {
    // SAFETY: plain old data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open; `st` is valid for writes.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fsid_t` is two `int`s: eight bytes.
    let fsid = unsafe { std::ptr::read_unaligned((&raw const st.f_fsid).cast::<[u8; 8]>()) };
    Ok((
        fsid,
        u32::try_from(st.f_type).is_ok_and(|t| t == EXT_SUPER_MAGIC),
    ))
}

/// Opens the inode a handle names (`O_PATH`: no open event, no access to its data).
fn open_handle(mount: RawFd, handle: &Handle) -> Option<OwnedFd> {
    let mut buf = Vec::with_capacity(8 + handle.bytes.len());
    buf.extend_from_slice(&(handle.bytes.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle.handle_type.to_ne_bytes());
    buf.extend_from_slice(&handle.bytes);
    // SAFETY: `buf` is a valid `struct file_handle` of its length; the call only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount,
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel returned a new descriptor owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Everything below directory `dir` on its filesystem, as (inode, path, is a directory), at
/// most [`decide::MAX_LABELS`] entries.
fn walk_below(dir: &Path, out: &mut Vec<(FileId, PathBuf, bool)>) {
    paths::walk_filesystem_tree(dir, |path, meta| {
        if out.len() >= decide::MAX_LABELS {
            return false;
        }
        let id = FileId {
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
        };
        out.push((id, path.to_owned(), meta.is_dir()));
        true
    });
}

/// An opened handle: its inode, `stat` and path.
struct Opened {
    id: FileId,
    attrs: Attrs,
    path: Option<PathBuf>,
    fd: OwnedFd,
}

/// The reporting loop's state.
struct Reporter {
    fd: Arc<OwnedFd>,
    /// The permission group (to drop the ignore marks of inodes that become protected).
    group: Arc<Group>,
    mounts: Arc<Mutex<HashMap<[u8; 8], Mount>>>,
    attrs: Arc<Mutex<HashMap<FileId, Attrs>>>,
    state: Arc<Mutex<Protected>>,
    stop: Arc<AtomicBool>,
    wake: OwnedFd,
    records: mpsc::Sender<Record>,
    counters: Counters,
    overflows: Arc<AtomicU64>,
    identities: Option<ExecIdentities>,
    own_pid: u32,
    ns_per_tick: u64,
    folded: HashMap<(u32, FileId, u32), Instant>,
}

/// What a change is about, once found relevant.
struct Found {
    op: u32,
    label: Label,
    file: FileId,
    path: Option<PathBuf>,
    other: Option<PathBuf>,
}

impl Reporter {
    fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            let mut fds = [
                libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if !stopping {
                // SAFETY: `fds` is a valid array of two pollfd.
                let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
                if ready <= 0 {
                    continue;
                }
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if stopping || self.stop.load(Ordering::SeqCst) {
                    return;
                }
                let e = io::Error::last_os_error();
                if n < 0
                    && !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    )
                {
                    tracing::error!("reading fanotify change events: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for notice in parse(&buf[..n as usize]) {
                match notice {
                    Notice::Overflow => {
                        self.overflows.fetch_add(1, Ordering::Relaxed);
                        self.counters.lost.inc();
                        tracing::warn!("the fanotify change queue overflowed: changes to protected files went unreported");
                    }
                    Notice::Change(change) => {
                        let handled =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                self.handle(&change)
                            }));
                        if handled.is_err() {
                            self.counters.lost.inc();
                            tracing::error!("reporting a fanotify change panicked: it is lost");
                        }
                    }
                }
            }
        }
    }

    /// The marked filesystem a handle belongs to.
    fn mount_of(&self, handle: &Handle) -> Option<(RawFd, u32, bool)> {
        let mounts = self.mounts.lock().unwrap_or_else(PoisonError::into_inner);
        mounts
            .get(&handle.fsid)
            .map(|m| (m.fd.as_raw_fd(), m.dev, m.ext))
    }

    /// Opens a handle and reads its inode, `stat` and path.
    fn open(&self, handle: &Handle) -> Option<Opened> {
        let (mount, _, _) = self.mount_of(handle)?;
        let fd = open_handle(mount, handle)?;
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let meta = fs::metadata(&proc_path).ok()?;
        let path = fs::read_link(&proc_path).ok();
        Some(Opened {
            id: FileId {
                dev: kernel_dev(meta.dev()),
                ino: meta.ino(),
            },
            attrs: Attrs::of(&meta),
            path,
            fd,
        })
    }

    /// The path of directory `named.dir` joined with `named.name`, and the directory's label.
    fn entry(&self, named: &Named) -> (Option<PathBuf>, Option<Label>) {
        let Some(dir) = self.open(&named.dir) else {
            return (None, None);
        };
        let label = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.label_of_dir(dir.id, dir.path.as_deref())
        };
        let name = std::ffi::OsStr::from_bytes(&named.name);
        let path = dir.path.map(|d| {
            if named.name.is_empty() || named.name == b"." {
                d
            } else {
                d.join(name)
            }
        });
        (path, label)
    }

    /// Whether an inode is labelled (cheaply by the handle's inode number where it has one:
    /// most changes on a marked filesystem are not to protected files).
    fn labelled_hint(&self, handle: &Handle) -> Option<bool> {
        let (_, dev, ext) = self.mount_of(handle)?;
        if !ext {
            return None;
        }
        let ino = handle.ino_hint()?;
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Some(state.label(FileId { dev, ino }).is_some())
    }

    fn label_of(&self, id: FileId) -> Option<Label> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.label(id)
    }

    /// Finds what the change is about, where it concerns a protected inode: an event the kernel
    /// merged (a creation and an attribute change of one file) may be two reports.
    fn find(&self, change: &Change) -> Vec<Found> {
        let mut found = Vec::new();
        if change.mask & (libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_RENAME) != 0 {
            found.extend(self.find_entry(change));
        }
        if change.mask & (libc::FAN_ATTRIB | libc::FAN_MODIFY) != 0 && change.old.is_none() {
            found.extend(self.find_inode(change));
        }
        found
    }

    /// An attribute change or modification of a protected inode.
    fn find_inode(&self, change: &Change) -> Option<Found> {
        let handle = change.object.as_ref()?;
        // A directory may be a protected root, which has no label of its own.
        let dir = change.mask & libc::FAN_ONDIR != 0;
        if !dir && self.labelled_hint(handle) == Some(false) {
            return None;
        }
        let object = self.open(handle)?;
        let label = if dir {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.label_of_dir(object.id, object.path.as_deref())?
        } else {
            self.label_of(object.id)?
        };
        let xattrs = if change.mask & libc::FAN_ATTRIB != 0 {
            xattr_count(
                Path::new(&format!("/proc/self/fd/{}", object.fd.as_raw_fd())),
                true,
            )
        } else {
            None
        };
        let after = Attrs {
            xattrs,
            ..object.attrs
        };
        let before = {
            let mut attrs = self.attrs.lock().unwrap_or_else(PoisonError::into_inner);
            if attrs.len() >= MAX_ATTRS {
                attrs.clear();
            }
            let mut kept = after;
            if kept.xattrs.is_none() {
                kept.xattrs = attrs.get(&object.id).and_then(|a| a.xattrs);
            }
            attrs.insert(object.id, kept)
        };
        let op = if change.mask & libc::FAN_MODIFY != 0 {
            classify_modify(before.as_ref(), &after)
        } else {
            classify_attrib(before.as_ref(), &after)?
        };
        // A modification whose size did not shrink and also an attribute change: the
        // attribute change names it.
        let op = if op == open_syscall::WRITE && change.mask & libc::FAN_ATTRIB != 0 {
            classify_attrib(before.as_ref(), &after)?
        } else {
            op
        };
        Some(Found {
            op,
            label,
            file: object.id,
            path: object.path,
            other: None,
        })
    }

    /// A directory entry created, deleted or renamed, of a protected inode or in a protected
    /// directory.
    fn find_entry(&self, change: &Change) -> Option<Found> {
        let object = change.object.as_ref().and_then(|h| self.open(h));
        let object_label = object.as_ref().and_then(|o| self.label_of(o.id));
        // A new name of a protected inode with other names is a link to it (not a new file
        // that an open labelled since).
        let linked = object_label.is_some() && object.as_ref().is_some_and(|o| o.attrs.nlink > 1);
        let op = classify_entry(change.mask, linked)?;
        let file = object.as_ref().map(|o| o.id);
        if op == open_syscall::RENAME {
            let (old_path, old_label) = change.old.as_ref().map_or((None, None), |n| self.entry(n));
            let (new_path, new_label) = change.new.as_ref().map_or((None, None), |n| self.entry(n));
            // The side named: the one in a protected directory, the old one first (the
            // protected file moved out of or within its tree); else the new one (moved into or
            // over a protected file); neither: the old name (of a protected file's other
            // link). Not by the object's label, which an open of the new name since may have
            // given it.
            if let (Some(label), Some(object)) = (new_label, object.as_ref()) {
                self.arrived(object, label);
            }
            let leaving = old_label.is_some() || new_label.is_none();
            let (path, other, dir_label) = if leaving {
                (old_path, new_path, old_label)
            } else {
                (new_path, old_path, new_label)
            };
            let label = object_label.or(dir_label)?;
            return Some(Found {
                op,
                label,
                file: file.unwrap_or(FileId { dev: 0, ino: 0 }),
                path,
                other,
            });
        }
        let (path, dir_label) = change
            .entry
            .as_ref()
            .map_or((None, None), |n| self.entry(n));
        if change.mask & libc::FAN_CREATE != 0 {
            if let (Some(label), Some(object)) = (dir_label, object.as_ref()) {
                self.arrived(object, label);
            }
        }
        let label = object_label.or(dir_label)?;
        Some(Found {
            op,
            label,
            file: file.unwrap_or(FileId { dev: 0, ino: 0 }),
            path,
            other: None,
        })
    }

    /// An inode created, moved or linked into a protected directory takes the directory's
    /// `label` (as BPF LSM's hooks give it), and the permission group asks about it again: an
    /// ignore mark from when it was unprotected is dropped. A directory brings everything
    /// below it on its filesystem. Between the move and this (the change queue's latency) an
    /// open by the new name of a formerly unprotected file may still be answered by its mark.
    fn arrived(&self, object: &Opened, label: Label) {
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", object.fd.as_raw_fd()));
        let is_dir = object.attrs.mode & libc::S_IFMT == libc::S_IFDIR;
        let mut arrivals = vec![(object.id, proc_path.clone(), is_dir)];
        if is_dir {
            // Not under the labels' lock: listing directories opens them.
            walk_below(&proc_path, &mut arrivals);
        }
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, _, _) in &arrivals {
                state.label_arrival(*id, label);
            }
        }
        for (_, path, is_dir) in &arrivals {
            if let Err(e) = self.group.ask_again_at(path, *is_dir) {
                tracing::warn!("dropping the ignore mark of {}: {e}", path.display());
            }
        }
    }

    /// Decides one change for its process and queues its report.
    fn handle(&mut self, change: &Change) {
        let pid = change.pid;
        // Found first, so the agent's own changes still refresh the `stat` remembered.
        let found = self.find(change);
        if found.is_empty() || pid == self.own_pid {
            return; // nothing protected, or the agent itself
        }
        let actor = opener::read_opener(pid).unwrap_or(opener::Opener {
            tid: pid,
            tgid: pid,
            ppid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        });
        let start_ticks = procfs::start_ticks(actor.tgid);
        let exe = match (&self.identities, start_ticks) {
            (Some(identities), Some(ticks)) => identities.exe_of(actor.tgid, ticks),
            (Some(_), None) => None,
            (None, _) => opener::exe_id(actor.tgid),
        };
        let subject = Subject {
            exe,
            uid: actor.uid,
            gid: actor.gid,
        };
        let mut process = None;
        for found in found {
            self.report(&actor, &subject, start_ticks, &mut process, found);
        }
    }

    /// Decides one change of `actor` and queues its report (`process`: its `/proc` snapshot,
    /// read once per event).
    fn report(
        &mut self,
        actor: &opener::Opener,
        subject: &Subject,
        start_ticks: Option<u64>,
        process: &mut Option<Option<procfs::ProcSnapshot>>,
        found: Found,
    ) {
        let decision = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(rule) = state.rule(found.label) else {
                return;
            };
            let ppid = actor.ppid;
            decide::decide(
                rule,
                found.label.rule,
                state.slot,
                subject,
                || opener::exe_id(ppid),
                access::WRITE,
            )
        };
        if decision.verdict == verdict::NONE {
            return;
        }
        let decision = reported(decision);
        // A listed program's writes were decided (and reported) at their open.
        if found.op == open_syscall::WRITE && decision.verdict == verdict::ALLOW {
            return;
        }
        let now = Instant::now();
        let key = (actor.tgid, found.file, found.op);
        if found.file.ino != 0 {
            if self
                .folded
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < FOLD)
            {
                return;
            }
            if self.folded.len() >= MAX_FOLDED {
                self.folded.retain(|_, at| now.duration_since(*at) < FOLD);
                if self.folded.len() >= MAX_FOLDED {
                    self.folded.clear();
                }
            }
            self.folded.insert(key, now);
        }
        let process = process
            .get_or_insert_with(|| {
                procfs::read_process(actor.tgid)
                    .ok()
                    .filter(|p| Some(p.start_ticks) == start_ticks)
            })
            .clone();
        let record = self.record(actor, process, start_ticks, found, decision);
        if self.records.try_send(record).is_err() {
            self.counters.lost.inc();
        }
    }

    /// The `FileOpen` record of a change, as BPF LSM's `inode_*` programs write it.
    fn record(
        &self,
        actor: &opener::Opener,
        process: Option<procfs::ProcSnapshot>,
        start_ticks: Option<u64>,
        found: Found,
        decision: Decision,
    ) -> Record {
        let comm = process.as_ref().map_or(&b""[..], |p| p.comm.as_bytes());
        let mut header = Header {
            flags: 0,
            boot_ns: boot_ns(),
            tid: actor.tid,
            pid: actor.tgid,
            ppid: actor.ppid,
            uid: actor.uid,
            gid: actor.gid,
            loginuid: process.as_ref().and_then(|p| p.loginuid),
            sessionid: process.as_ref().and_then(|p| p.sessionid),
            cgroup_id: 0,
            // Unknown (the process is gone): the event loop names its latest incarnation.
            start_boot_ns: start_ticks.unwrap_or(0) * self.ns_per_tick,
            comm: text(comm, (COMM_LEN - 1) as u32),
        };
        let mut cut = |path: Option<PathBuf>, limit: usize| match path {
            Some(path) => {
                let bytes = path.as_os_str().as_encoded_bytes();
                if bytes.len() >= limit {
                    header.flags |= phiguard_common::event::FLAG_TRUNCATED;
                }
                text(bytes, (limit - 1) as u32)
            }
            None => String::new(),
        };
        let names: Vec<String> = match found.path {
            Some(path) => vec![cut(Some(path), NAMES_LEN)],
            None => Vec::new(),
        };
        let requested = cut(found.other, PATH_LEN);
        let event = FileOpen {
            header,
            ret: 0,
            open_flags: 0,
            mode: 0,
            dirfd: libc::AT_FDCWD,
            syscall: found.op,
            matched_by: matched_by::LABEL,
            watch_id: found.label.watch_id,
            file: found.file,
            requested,
            names,
            decision,
        };
        Record {
            event: DecodedEvent::FileOpen(event),
            process,
        }
    }
}

/// A decision as a report of a change that already happened: a refusal becomes `would_deny`
/// by the fanotify layer (it could not be enforced).
pub fn reported(decision: Decision) -> Decision {
    if decision.verdict == verdict::DENY {
        Decision {
            verdict: verdict::WOULD_DENY,
            layer: layer::FANOTIFY,
            ..decision
        }
    } else {
        decision
    }
}

/// `CLOCK_BOOTTIME` now, in nanoseconds (the kernel programs' time base).
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Attrs {
        Attrs {
            mode: 0o100_666,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 34,
            mtime_ns: 10,
            atime_ns: 10,
            ctime_ns: 10,
            xattrs: Some(0),
        }
    }

    #[test]
    fn attribute_changes_are_named_from_the_stat_before() {
        let before = attrs();
        let changed = |f: &dyn Fn(&mut Attrs)| {
            let mut a = before;
            a.ctime_ns = 20;
            f(&mut a);
            classify_attrib(Some(&before), &a)
        };
        assert_eq!(changed(&|a| a.uid = 65534), Some(open_syscall::CHOWN));
        assert_eq!(changed(&|a| a.mode = 0o100_777), Some(open_syscall::CHMOD));
        assert_eq!(changed(&|a| a.nlink = 2), Some(open_syscall::LINK));
        assert_eq!(changed(&|a| a.nlink = 0), None);
        assert_eq!(changed(&|a| a.mtime_ns = 20), Some(open_syscall::UTIMES));
        assert_eq!(
            changed(&|a| a.xattrs = Some(1)),
            Some(open_syscall::SETXATTR)
        );
        assert_eq!(changed(&|_| ()), Some(open_syscall::ATTRIB));
        let mut with = before;
        with.xattrs = Some(2);
        let mut fewer = with;
        fewer.xattrs = Some(1);
        assert_eq!(
            classify_attrib(Some(&with), &fewer),
            Some(open_syscall::REMOVEXATTR)
        );
        // Nothing to compare with.
        let mut touched = before;
        (touched.mtime_ns, touched.ctime_ns) = (30, 30);
        assert_eq!(classify_attrib(None, &touched), Some(open_syscall::UTIMES));
        assert_eq!(
            classify_attrib(
                None,
                &Attrs {
                    ctime_ns: 40,
                    ..touched
                }
            ),
            Some(open_syscall::ATTRIB)
        );
    }

    #[test]
    fn a_modification_is_a_truncate_when_the_file_shrank() {
        let before = attrs();
        let shrunk = Attrs { size: 0, ..before };
        let grown = Attrs { size: 50, ..before };
        assert_eq!(
            classify_modify(Some(&before), &shrunk),
            open_syscall::TRUNCATE
        );
        assert_eq!(classify_modify(Some(&before), &grown), open_syscall::WRITE);
        assert_eq!(classify_modify(None, &shrunk), open_syscall::TRUNCATE);
        assert_eq!(classify_modify(None, &grown), open_syscall::WRITE);
    }

    #[test]
    fn directory_entry_events_are_named_by_their_mask() {
        assert_eq!(
            classify_entry(libc::FAN_DELETE, false),
            Some(open_syscall::UNLINK)
        );
        assert_eq!(
            classify_entry(libc::FAN_DELETE | libc::FAN_ONDIR, false),
            Some(open_syscall::RMDIR)
        );
        assert_eq!(
            classify_entry(libc::FAN_RENAME, true),
            Some(open_syscall::RENAME)
        );
        assert_eq!(
            classify_entry(libc::FAN_CREATE, false),
            Some(open_syscall::CREATE)
        );
        assert_eq!(
            classify_entry(libc::FAN_CREATE, true),
            Some(open_syscall::LINK)
        );
        assert_eq!(
            classify_entry(libc::FAN_CREATE | libc::FAN_ONDIR, true),
            Some(open_syscall::CREATE)
        );
        assert_eq!(classify_entry(libc::FAN_ATTRIB, false), None);
    }

    /// One information record: header, fsid, `file_handle`, then `name` (NUL-terminated) when
    /// given, padded to four bytes.
    fn info(info_type: u8, handle: &[u8], handle_type: i32, name: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![7u8; 8];
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&handle_type.to_ne_bytes());
        body.extend_from_slice(handle);
        if let Some(name) = name {
            body.extend_from_slice(name);
            body.push(0);
        }
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let mut out = vec![info_type, 0];
        out.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn event(mask: u64, pid: i32, infos: &[Vec<u8>]) -> Vec<u8> {
        let header = std::mem::size_of::<libc::fanotify_event_metadata>();
        let len = header + infos.iter().map(Vec::len).sum::<usize>();
        let meta = libc::fanotify_event_metadata {
            event_len: len as u32,
            vers: libc::FANOTIFY_METADATA_VERSION,
            reserved: 0,
            metadata_len: header as u16,
            mask,
            fd: libc::FAN_NOFD,
            pid,
        };
        // SAFETY: plain old data of `header` bytes.
        let mut out =
            unsafe { std::slice::from_raw_parts((&raw const meta).cast::<u8>(), header).to_vec() };
        for i in infos {
            out.extend_from_slice(i);
        }
        out
    }

    #[test]
    fn records_with_directory_handles_names_and_targets_are_parsed() {
        let ino = 4242u32.to_ne_bytes();
        let mut handle = ino.to_vec();
        handle.extend_from_slice(&9u32.to_ne_bytes());
        let mut buf = event(
            libc::FAN_DELETE,
            77,
            &[
                info(
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                    &[1, 2, 3, 4, 5, 6, 7, 8],
                    1,
                    Some(b"record.txt"),
                ),
                info(
                    libc::FAN_EVENT_INFO_TYPE_FID,
                    &handle,
                    FILEID_INO32_GEN,
                    None,
                ),
            ],
        );
        buf.extend(event(
            libc::FAN_RENAME,
            78,
            &[
                info(
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    &[1; 8],
                    1,
                    Some(b"a"),
                ),
                info(
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    &[2; 8],
                    1,
                    Some(b"bb"),
                ),
            ],
        ));
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        let notices = parse(&buf);
        assert_eq!(notices.len(), 3);
        let Notice::Change(delete) = &notices[0] else {
            panic!("{notices:?}")
        };
        assert_eq!((delete.mask, delete.pid), (libc::FAN_DELETE, 77));
        let entry = delete.entry.as_ref().unwrap();
        assert_eq!(entry.name, b"record.txt");
        assert_eq!(entry.dir.fsid, [7; 8]);
        assert_eq!(entry.dir.bytes, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(delete.object.as_ref().unwrap().ino_hint(), Some(4242));
        let Notice::Change(rename) = &notices[1] else {
            panic!("{notices:?}")
        };
        assert_eq!(rename.old.as_ref().unwrap().name, b"a");
        assert_eq!(rename.new.as_ref().unwrap().name, b"bb");
        assert_eq!(rename.new.as_ref().unwrap().dir.bytes, [2; 8]);
        assert!(rename.object.is_none() && rename.entry.is_none());
        assert_eq!(notices[2], Notice::Overflow);
    }

    #[test]
    fn a_cut_record_ends_the_parse() {
        let buf = event(
            libc::FAN_ATTRIB,
            5,
            &[info(libc::FAN_EVENT_INFO_TYPE_FID, &[1; 8], 1, None)],
        );
        assert!(parse(&buf[..buf.len() - 1]).is_empty());
        // An information record claiming more than its event holds is skipped.
        let mut bad = buf.clone();
        let at = std::mem::size_of::<libc::fanotify_event_metadata>() + 2;
        bad[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        let notices = parse(&bad);
        assert!(matches!(&notices[..], [Notice::Change(c)] if c.object.is_none()));
    }

    #[test]
    fn a_refusal_is_reported_as_would_deny_by_fanotify() {
        let deny = Decision {
            verdict: verdict::DENY,
            layer: layer::FANOTIFY,
            ..Decision::NONE
        };
        let r = reported(deny);
        assert_eq!((r.verdict, r.layer), (verdict::WOULD_DENY, layer::FANOTIFY));
        let allow = Decision {
            verdict: verdict::ALLOW,
            ..Decision::NONE
        };
        assert_eq!(reported(allow), allow);
    }
}
