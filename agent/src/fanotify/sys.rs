//! The fanotify system calls both groups make (the permission group and the change group):
//! creating a group, marking a whole filesystem, reading a group's queue, and walking the
//! events of a read buffer (fanotify(7)). Nothing here knows what the events mean.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// Creates a group with `flags` (`FAN_CLASS_*`, `FAN_REPORT_*`…); the descriptors of its
/// events are `O_RDONLY | O_LARGEFILE | O_CLOEXEC`.
pub(super) fn init(flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe {
        libc::fanotify_init(
            flags,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks (or, with `add` false, unmarks) the whole filesystem holding `path` in `group` for
/// the events of `mask`.
pub(super) fn mark_filesystem(
    group: BorrowedFd<'_>,
    path: &Path,
    mask: u64,
    add: bool,
) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = if add {
        libc::FAN_MARK_ADD
    } else {
        libc::FAN_MARK_REMOVE
    } | libc::FAN_MARK_FILESYSTEM;
    // SAFETY: `c` is a valid NUL-terminated path; the group descriptor is open.
    let rc =
        unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads what `group`'s queue holds into `buf`: the bytes read, 0 when nothing is pending
/// (a non-blocking group's `EAGAIN`, or an interrupted read).
pub(super) fn read(group: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(group.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
}

/// The events of a read buffer, each as its metadata and its whole record (metadata first,
/// then any information records); the walk ends at a record that claims less than its
/// metadata or more than the buffer holds.
pub(super) fn events(
    mut bytes: &[u8],
) -> impl Iterator<Item = (libc::fanotify_event_metadata, &[u8])> {
    let header = std::mem::size_of::<libc::fanotify_event_metadata>();
    std::iter::from_fn(move || {
        if bytes.len() < header {
            return None;
        }
        // SAFETY: at least `header` bytes remain; read unaligned (the buffer is a byte slice).
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let len = meta.event_len as usize;
        if len < header || len > bytes.len() {
            return None;
        }
        let (event, rest) = bytes.split_at(len);
        bytes = rest;
        Some((meta, event))
    })
}
