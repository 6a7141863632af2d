//! Labels on protected inodes under BPF LSM (`INODE_LABELS`): what `file_open` and the
//! metadata hooks decide on, whatever name or depth reached the inode.
//!
//! The agent labels every inode of a protected tree when a policy set is installed (the walk
//! the fanotify layer labels with). From then on the kernel keeps the labels: a file or
//! directory that appears in a labelled directory takes the directory's `rule_below` in
//! `d_instantiate` (creation, and a first lookup from disk), a hard link or rename keeps the
//! label because it is on the inode, and an inode first opened by a path inside a protected
//! tree that has none (moved in by an exempt process) is labelled by `file_open`. A creation
//! outside any labelled directory clears a stale label its inode number may carry (a deleted
//! labelled file's number reused).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use phiguard_common::{
    maps::InodeKey,
    policy::{WatchValue, NO_RULE},
    program::Program,
};

use crate::{
    error::{finish, or_skip, ProbeError, ProbeResult},
    kernel::{inode_ino, Dentry},
    maps::{CREATING, INODE_LABELS, WATCHED_DEVS},
};

/// The label of inode `ino` on `dev` in policy `slot`.
#[inline(always)]
pub fn label_of(dev: u32, slot: u32, ino: u64) -> Option<WatchValue> {
    let key = InodeKey { dev, slot, ino };
    // SAFETY: the value is plain integers, copied out at once.
    unsafe { INODE_LABELS.get(key) }.copied()
}

/// Gives inode `ino` on `dev` the label its new directory's label `dir` passes down, in
/// `slot`, unless it has one and `replace` is false.
#[inline(always)]
pub fn inherit(dev: u32, slot: u32, ino: u64, dir: &WatchValue, replace: bool) {
    if dir.rule_below == NO_RULE {
        return;
    }
    let key = InodeKey { dev, slot, ino };
    let value = WatchValue {
        watch_id: dir.watch_id,
        rule_here: dir.rule_below,
        rule_below: dir.rule_below,
        observed: 0,
    };
    // BPF_NOEXIST keeps an existing label (a hard link made before from another tree).
    let flags = if replace { 0 } else { 1 };
    let _ = INODE_LABELS.insert(key, value, flags); // full: the path fallback still decides
}

/// Whether `dev` holds a protected inode (else nothing on it is labelled).
#[inline(always)]
pub fn on_protected_fs(dev: u32) -> bool {
    // SAFETY: value not used.
    unsafe { WATCHED_DEVS.get(dev) }.is_some()
}

/// `void d_instantiate(struct dentry *dentry, struct inode *inode)` (BPF LSM, Linux 5.7+):
/// a dentry gets its inode, at creation (`create`, `mkdir`, `mknod`, `symlink`, `link`) and at
/// a lookup from disk. A void hook: the return value is ignored.
#[lsm(hook = "d_instantiate")]
pub fn enforce_d_instantiate(ctx: LsmContext) -> i32 {
    let result = try_instantiate(
        Dentry::from_raw(ctx.arg::<u64>(0) as usize),
        ctx.arg::<u64>(1) as usize,
    );
    finish(Program::EnforceDInstantiate, result);
    0
}

#[inline(always)]
fn try_instantiate(dentry: Dentry, inode: usize) -> ProbeResult {
    if inode == 0 {
        return Err(ProbeError::Skip);
    }
    let dev = dentry.dev()?;
    if !on_protected_fs(dev) {
        return Err(ProbeError::Skip);
    }
    let key = dentry.addr() as u64;
    // SAFETY: value not used.
    let created = unsafe { CREATING.get(key) }.is_some();
    if created {
        let _ = CREATING.remove(key);
    }
    let ino = inode_ino(inode)?;
    let parent = dentry.parent()?;
    if parent == dentry {
        return Err(ProbeError::Skip);
    }
    let parent_ino = parent.ino()?;
    for slot in 0..2u32 {
        match label_of(dev, slot, parent_ino) {
            Some(dir) if dir.rule_below != NO_RULE => inherit(dev, slot, ino, &dir, created),
            _ if created => {
                let _ = INODE_LABELS.remove(InodeKey { dev, slot, ino });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Notes that `dentry` is being created (from a creation hook), so `d_instantiate` knows the
/// inode it gets is new.
#[inline(always)]
pub fn note_creation(dentry: Dentry) {
    let _ = CREATING.insert(dentry.addr() as u64, 1, 0);
}

/// The label of the inode behind `dentry` in `slot`, with the inode's identity; a skip when
/// it has none (or is negative).
#[inline(always)]
pub fn label_at(dentry: Dentry, dev: u32, slot: u32) -> ProbeResult<(u64, WatchValue)> {
    let ino = dentry.ino()?;
    if ino == 0 {
        return Err(ProbeError::Skip);
    }
    Ok((ino, or_skip(label_of(dev, slot, ino))?))
}
