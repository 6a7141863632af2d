//! Finding what a change is about: the protected inode it concerns (by its handle, or the
//! protected directory whose entries change), the operation, and the names involved.

use std::{
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use phiguard_common::event::open_syscall;

use super::{
    super::{
        decide::{Label, Protected},
        group::Group,
    },
    arrivals,
    attrs::{self, Attrs, Remembered},
    classify::{classify_attrib, classify_entry, classify_modify},
    mounts::Mounts,
    parse::{Change, Handle, Named},
};
use crate::paths::FileId;

/// What a change is about, once found relevant.
pub(super) struct Found {
    /// The operation (`open_syscall::*`).
    pub(super) op: u32,
    /// The label that governs it: the inode's, or its directory's.
    pub(super) label: Label,
    /// The inode (zero where it could not be opened).
    pub(super) file: FileId,
    /// The name changed (a rename's side in a protected directory).
    pub(super) path: Option<PathBuf>,
    /// A rename's other name.
    pub(super) other: Option<PathBuf>,
}

/// What the finder reads: the marked filesystems, the `stat` remembered, the labels, and the
/// permission group (to ask again about inodes that arrive in a protected directory).
pub(super) struct Finder {
    /// The permission group.
    pub(super) group: Arc<Group>,
    /// The marked filesystems.
    pub(super) mounts: Arc<Mounts>,
    /// The `stat` last seen of each inode.
    pub(super) attrs: Arc<Remembered>,
    /// The permission group's labels.
    pub(super) state: Arc<Mutex<Protected>>,
}

impl Finder {
    /// The path of directory `named.dir` joined with `named.name`, and the directory's label.
    fn entry(&self, named: &Named) -> (Option<PathBuf>, Option<Label>) {
        let Some(dir) = self.mounts.open(&named.dir) else {
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
        let (_, dev, ext) = self.mounts.of(handle)?;
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
    pub(super) fn find(&self, change: &Change) -> Vec<Found> {
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
        let object = self.mounts.open(handle)?;
        let label = if dir {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.label_of_dir(object.id, object.path.as_deref())?
        } else {
            self.label_of(object.id)?
        };
        let xattrs = if change.mask & libc::FAN_ATTRIB != 0 {
            attrs::xattr_count(
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
        let before = self.attrs.replace(object.id, after);
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
        let object = change.object.as_ref().and_then(|h| self.mounts.open(h));
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
                arrivals::arrived(&self.group, &self.state, object, label);
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
                arrivals::arrived(&self.group, &self.state, object, label);
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
}
