//! What `stat` says of an inode (and how many extended attribute names it has), and the last
//! one remembered of each inode below the protected roots, to name what a change did.

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
    sync::{Mutex, PoisonError},
};

use crate::paths::{self, kernel_dev, FileId};

/// Most inodes whose `stat` is remembered to name attribute changes; past it, the memory is
/// dropped and rebuilt from later changes (about 64 bytes each).
pub const MAX_ATTRS: usize = 262_144;
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

/// The `stat` last seen of each inode: taken below the protected roots when a policy set
/// loads, then after every change; at most [`MAX_ATTRS`] (past it, the memory is dropped and
/// rebuilt).
#[derive(Debug, Default)]
pub(super) struct Remembered(Mutex<HashMap<FileId, Attrs>>);

impl Remembered {
    /// Adds the `stat` of what lies below `roots` (the memory is dropped first where it would
    /// not fit).
    pub(super) fn below<'a>(&self, roots: impl Iterator<Item = &'a Path>) {
        let baseline = baseline(roots);
        let mut attrs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if attrs.len() + baseline.len() > MAX_ATTRS {
            attrs.clear();
        }
        attrs.extend(baseline);
    }

    /// Remembers `after` for inode `id` (with the extended attribute count remembered before
    /// where `after` has none), and returns what was remembered before.
    pub(super) fn replace(&self, id: FileId, after: Attrs) -> Option<Attrs> {
        let mut attrs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if attrs.len() >= MAX_ATTRS {
            attrs.clear();
        }
        let mut kept = after;
        if kept.xattrs.is_none() {
            kept.xattrs = attrs.get(&id).and_then(|a| a.xattrs);
        }
        attrs.insert(id, kept)
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
pub(super) fn xattr_count(path: &Path, follow: bool) -> Option<usize> {
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
