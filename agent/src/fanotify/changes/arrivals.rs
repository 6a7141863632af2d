//! Arrivals: an inode created, moved or linked into a protected directory is protected from
//! then on, as the directory's entries are.

use std::{
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use super::{
    super::{
        decide::{self, Label, Protected},
        group::Group,
    },
    mounts::Opened,
};
use crate::paths::{self, kernel_dev, FileId};

/// An inode created, moved or linked into a protected directory takes the directory's
/// `label` (as BPF LSM's hooks give it), and the permission group asks about it again: an
/// ignore mark from when it was unprotected is dropped. A directory brings everything
/// below it on its filesystem. Between the move and this (the change queue's latency) an
/// open by the new name of a formerly unprotected file may still be answered by its mark.
pub(super) fn arrived(group: &Group, state: &Mutex<Protected>, object: &Opened, label: Label) {
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", object.fd.as_raw_fd()));
    let is_dir = object.attrs.mode & libc::S_IFMT == libc::S_IFDIR;
    let mut arrivals = vec![(object.id, proc_path.clone(), is_dir)];
    if is_dir {
        // Not under the labels' lock: listing directories opens them.
        walk_below(&proc_path, &mut arrivals);
    }
    {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, _, _) in &arrivals {
            state.label_arrival(*id, label);
        }
    }
    for (_, path, is_dir) in &arrivals {
        if let Err(e) = group.ask_again_at(path, *is_dir) {
            tracing::warn!("dropping the ignore mark of {}: {e}", path.display());
        }
    }
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
