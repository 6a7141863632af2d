//! The marked filesystems, by the `fsid` their events name, and opening the inodes that file
//! handles name on them (`O_PATH`: no open event, no access to the data).

use std::{
    collections::HashMap,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use super::{attrs::Attrs, parse::Handle};
use crate::paths::{kernel_dev, FileId};

/// `statfs.f_type` of ext2/3/4, whose handles [`Handle::ino_hint`](super::parse::Handle::ino_hint) may read.
const EXT_SUPER_MAGIC: u32 = 0xEF53;

/// One marked filesystem: a descriptor to open handles against, and its device.
#[derive(Debug)]
struct Mount {
    fd: OwnedFd,
    dev: u32,
    /// ext2/3/4: a handle's leading bytes are its inode number.
    ext: bool,
}

/// The marked filesystems, by `fsid`.
#[derive(Debug, Default)]
pub(super) struct Mounts(Mutex<HashMap<[u8; 8], Mount>>);

impl Mounts {
    /// Adds the filesystem holding `path` (kernel device `dev`): opens `path` to open its
    /// handles against.
    pub(super) fn add(&self, dev: u32, path: &Path) -> io::Result<()> {
        let file = fs::File::open(path)?;
        let (fsid, ext) = fsid_of(&file)?;
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                fsid,
                Mount {
                    fd: OwnedFd::from(file),
                    dev,
                    ext,
                },
            );
        Ok(())
    }

    /// Forgets the filesystem of kernel device `dev`.
    pub(super) fn remove(&self, dev: u32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, m| m.dev != dev);
    }

    /// The marked filesystem a handle belongs to: a descriptor on it, its device, and whether
    /// it is ext2/3/4.
    pub(super) fn of(&self, handle: &Handle) -> Option<(RawFd, u32, bool)> {
        let mounts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        mounts
            .get(&handle.fsid)
            .map(|m| (m.fd.as_raw_fd(), m.dev, m.ext))
    }

    /// Opens a handle and reads its inode, `stat` and path.
    pub(super) fn open(&self, handle: &Handle) -> Option<Opened> {
        let (mount, _, _) = self.of(handle)?;
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
}

/// An opened handle: its inode, `stat` and path.
pub(super) struct Opened {
    /// The inode.
    pub(super) id: FileId,
    /// Its `stat` (extended attributes not read).
    pub(super) attrs: Attrs,
    /// Its path, as `/proc/self/fd` shows it (`None`: unreadable).
    pub(super) path: Option<PathBuf>,
    /// The `O_PATH` descriptor.
    pub(super) fd: OwnedFd,
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
