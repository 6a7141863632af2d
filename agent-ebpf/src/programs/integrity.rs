//! BPF LSM guards on what changes a protected file without opening it: truncate, chmod,
//! chown, utimes (`inode_setattr`), unlink, rmdir, rename (of, into and over), link, xattrs,
//! and creating anything in a protected directory. Each needs the `write` access on the
//! inode's label (`rule_here`), or on its directory's for what lands in it (`rule_below`); a
//! subject without it gets `EPERM` before anything changes. Every governed decision — allow,
//! deny or would-deny — is reported as a `FileOpen` record whose `syscall` names the operation,
//! so no change to a protected file is silent (root included: root is a subject like any
//! other). The `inode_*` hooks run after the kernel's own permission checks, so a change the
//! file's permissions already refuse is not reported.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use phiguard_common::{
    event::{matched_by, open_syscall},
    policy::{access, layer, verdict, WatchValue, NO_RULE},
    program::Program,
};

use crate::{
    error::{count_fault, ProbeError, ProbeResult},
    kernel::{read, Dentry},
    policy::{current_slot, decide},
    programs::{
        enforce::verdict_of,
        file::{copy_names, scratch, send, start_record, OpenCall, MAX_NAMES_WALK},
        label::{inherit, label_at, label_of, note_creation, on_protected_fs},
    },
};

/// `-EPERM`.
const EPERM: i32 = -1;

/// `struct iattr.ia_valid` bits (`include/linux/fs.h`).
const ATTR_MODE: u32 = 1;
const ATTR_UID: u32 = 2;
const ATTR_GID: u32 = 4;
const ATTR_SIZE: u32 = 8;
const ATTR_ATIME: u32 = 16;
const ATTR_MTIME: u32 = 32;

/// Which label of an inode governs a change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The inode itself changes (`rule_here`).
    Itself,
    /// Something is added to or removed from the directory (`rule_below`).
    Contents,
}

/// Decides a `write` by the current process on the inode behind `dentry` (`scope` picks the
/// label's rule), reports it as operation `op`, and returns `EPERM` for a denial. A skip when
/// the inode is not labelled.
#[inline(always)]
fn guard(dentry: Dentry, scope: Scope, op: u32, program: Program) -> ProbeResult<i32> {
    let dev = dentry.dev()?;
    if !on_protected_fs(dev) {
        return Err(ProbeError::Skip);
    }
    let (ino, label) = label_at(dentry, dev, current_slot())?;
    decide_and_report(dentry, dev, ino, &label, scope, op, program)
}

#[inline(always)]
fn decide_and_report(
    dentry: Dentry,
    dev: u32,
    ino: u64,
    label: &WatchValue,
    scope: Scope,
    op: u32,
    program: Program,
) -> ProbeResult<i32> {
    let rule = if scope == Scope::Itself {
        label.rule_here
    } else {
        label.rule_below
    };
    if rule == NO_RULE {
        return Err(ProbeError::Skip);
    }
    let decision = decide(rule, access::WRITE, layer::LSM);
    if decision.verdict == verdict::NONE {
        return Err(ProbeError::Skip);
    }
    let ret = if decision.verdict == verdict::DENY {
        EPERM
    } else {
        0
    };
    // The decision stands whether or not its record goes out.
    match scratch() {
        Some(scratch) => {
            scratch.event.path_len = 0;
            let call = OpenCall {
                syscall: op,
                ..OpenCall::UNKNOWN
            };
            start_record(scratch, &call, i64::from(ret));
            scratch.event.decision = decision;
            scratch.event.matched_by = matched_by::LSM_LABEL;
            scratch.event.watch_id = label.watch_id;
            scratch.event.dev = dev;
            scratch.event.ino = ino;
            copy_names(scratch, dentry, MAX_NAMES_WALK);
            let _ = send(scratch); // a loss is counted in `LOST`
        }
        None => count_fault(program),
    }
    Ok(ret)
}

/// Refuses (or allows and reports) a creation of `dentry` in a protected directory, and notes
/// the creation for `d_instantiate`.
#[inline(always)]
fn try_create(dentry: Dentry, program: Program) -> ProbeResult<i32> {
    let dev = dentry.dev()?;
    if !on_protected_fs(dev) {
        return Err(ProbeError::Skip);
    }
    note_creation(dentry);
    guard(
        dentry.parent()?,
        Scope::Contents,
        open_syscall::CREATE,
        program,
    )
}

/// `int inode_create(struct inode *dir, struct dentry *dentry, umode_t mode)` (5.7+).
#[lsm(hook = "inode_create")]
pub fn enforce_inode_create(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeCreate;
    verdict_of(
        program,
        try_create(Dentry::from_raw(ctx.arg::<u64>(1) as usize), program),
    )
}

/// `int inode_mkdir(struct inode *dir, struct dentry *dentry, umode_t mode)` (5.7+).
#[lsm(hook = "inode_mkdir")]
pub fn enforce_inode_mkdir(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeMkdir;
    verdict_of(
        program,
        try_create(Dentry::from_raw(ctx.arg::<u64>(1) as usize), program),
    )
}

/// `int inode_mknod(struct inode *dir, struct dentry *dentry, umode_t mode, dev_t dev)` (5.7+).
#[lsm(hook = "inode_mknod")]
pub fn enforce_inode_mknod(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(4);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeMknod;
    verdict_of(
        program,
        try_create(Dentry::from_raw(ctx.arg::<u64>(1) as usize), program),
    )
}

/// `int inode_symlink(struct inode *dir, struct dentry *dentry, const char *old_name)` (5.7+).
#[lsm(hook = "inode_symlink")]
pub fn enforce_inode_symlink(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeSymlink;
    verdict_of(
        program,
        try_create(Dentry::from_raw(ctx.arg::<u64>(1) as usize), program),
    )
}

/// 1: `inode_setattr` takes `(struct mnt_idmap *, struct dentry *, struct iattr *)` (6.12);
/// 0: `(struct dentry *, struct iattr *)` (Debian 12's 6.1). Set at load from the hook's BTF
/// prototype (`phiguard_common::maps::INODE_SETATTR_IDMAP_GLOBAL`). The verifier sees the
/// value (read-only data) and drops the other layout's branch, whose context reads past the
/// hook's arguments would be refused.
#[unsafe(no_mangle)]
static INODE_SETATTR_IDMAP: u32 = 1;

/// `int inode_setattr(struct mnt_idmap *idmap, struct dentry *dentry, struct iattr *attr)`
/// on 6.12, `int inode_setattr(struct dentry *dentry, struct iattr *attr)` on 6.1 (see
/// [`INODE_SETATTR_IDMAP`]; the dentry and `iattr` are what this reads): truncate (also
/// `O_TRUNC` and `ftruncate`), chmod, chown, utimes.
#[lsm(hook = "inode_setattr")]
pub fn enforce_inode_setattr(ctx: LsmContext) -> i32 {
    // SAFETY: a plain static; volatile keeps the read in the program (the loader rewrites it).
    let idmap = unsafe { core::ptr::read_volatile(&raw const INODE_SETATTR_IDMAP) };
    if idmap != 0 {
        setattr_with(ctx.arg(3), ctx.arg(1), ctx.arg(2))
    } else {
        setattr_with(ctx.arg(2), ctx.arg(0), ctx.arg(1))
    }
}

/// The body of [`enforce_inode_setattr`], given the earlier LSM's verdict, the dentry and the
/// `iattr` read from the hook's context.
#[inline(always)]
fn setattr_with(earlier: i32, dentry: u64, attr: u64) -> i32 {
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeSetattr;
    verdict_of(
        program,
        try_setattr(Dentry::from_raw(dentry as usize), attr as usize, program),
    )
}

#[inline(always)]
fn try_setattr(dentry: Dentry, attr: usize, program: Program) -> ProbeResult<i32> {
    // `ia_valid` is the first field of `struct iattr`.
    let valid: u32 = read(attr, 0)?;
    let op = if valid & ATTR_SIZE != 0 {
        open_syscall::TRUNCATE
    } else if valid & ATTR_MODE != 0 {
        open_syscall::CHMOD
    } else if valid & (ATTR_UID | ATTR_GID) != 0 {
        open_syscall::CHOWN
    } else if valid & (ATTR_ATIME | ATTR_MTIME) != 0 {
        open_syscall::UTIMES
    } else {
        return Err(ProbeError::Skip); // only the kernel's own bits (clearing setuid on write)
    };
    guard(dentry, Scope::Itself, op, program)
}

/// `int inode_unlink(struct inode *dir, struct dentry *dentry)` (5.7+).
#[lsm(hook = "inode_unlink")]
pub fn enforce_inode_unlink(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(2);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeUnlink;
    verdict_of(
        program,
        guard(
            Dentry::from_raw(ctx.arg::<u64>(1) as usize),
            Scope::Itself,
            open_syscall::UNLINK,
            program,
        ),
    )
}

/// `int inode_rmdir(struct inode *dir, struct dentry *dentry)` (5.7+).
#[lsm(hook = "inode_rmdir")]
pub fn enforce_inode_rmdir(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(2);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeRmdir;
    verdict_of(
        program,
        guard(
            Dentry::from_raw(ctx.arg::<u64>(1) as usize),
            Scope::Itself,
            open_syscall::RMDIR,
            program,
        ),
    )
}

/// `int inode_rename(struct inode *old_dir, struct dentry *old_dentry, struct inode *new_dir,
/// struct dentry *new_dentry)` (5.7+; `RENAME_EXCHANGE` calls it both ways).
#[lsm(hook = "inode_rename")]
pub fn enforce_inode_rename(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(4);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeRename;
    verdict_of(
        program,
        try_move(
            Dentry::from_raw(ctx.arg::<u64>(1) as usize),
            Dentry::from_raw(ctx.arg::<u64>(3) as usize),
            open_syscall::RENAME,
            program,
        ),
    )
}

/// `int inode_link(struct dentry *old_dentry, struct inode *dir, struct dentry *new_dentry)`
/// (5.7+).
#[lsm(hook = "inode_link")]
pub fn enforce_inode_link(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeLink;
    verdict_of(
        program,
        try_move(
            Dentry::from_raw(ctx.arg::<u64>(0) as usize),
            Dentry::from_raw(ctx.arg::<u64>(2) as usize),
            open_syscall::LINK,
            program,
        ),
    )
}

/// A rename or link of `old` to `new`, decided on one label, the first that applies: the
/// protected file itself (moved out of its tree or within it), the protected file it would
/// replace, or the protected directory it would land in. (One decision per call keeps the
/// verifier's work at one `decide`: a rename of a file protected by one rule into a
/// directory protected by another is decided on the file's rule.) Allowed into a protected
/// directory, an unlabelled inode takes the directory's label (before the call: if it then
/// fails the inode stays protected, the safe side).
#[inline(always)]
fn try_move(old: Dentry, new: Dentry, op: u32, program: Program) -> ProbeResult<i32> {
    let dev = old.dev()?;
    if !on_protected_fs(dev) {
        return Err(ProbeError::Skip);
    }
    let slot = current_slot();
    let old_ino = old.ino()?;
    let new_ino = new.ino()?;
    let dir = new.parent()?;
    let dir_ino = dir.ino()?;
    let dir_label = label_of(dev, slot, dir_ino);
    let (dentry, ino, label, scope) = if let Some(label) = label_of(dev, slot, old_ino) {
        (old, old_ino, label, Scope::Itself)
    } else if let Some(label) = label_of(dev, slot, new_ino).filter(|_| new_ino != 0) {
        (new, new_ino, label, Scope::Itself)
    } else if let Some(label) = dir_label {
        (new, dir_ino, label, Scope::Contents)
    } else {
        return Err(ProbeError::Skip);
    };
    let ret = decide_and_report(dentry, dev, ino, &label, scope, op, program)?;
    if ret == 0 {
        if let Some(dir_label) = dir_label {
            if old_ino != 0 && label_of(dev, slot, old_ino).is_none() {
                inherit(dev, slot, old_ino, &dir_label, false);
            }
        }
    }
    Ok(ret)
}

/// `int inode_setxattr(struct mnt_idmap *idmap, struct dentry *dentry, const char *name,
/// const void *value, size_t size, int flags)` (6.3+ with `mnt_idmap`).
#[lsm(hook = "inode_setxattr")]
pub fn enforce_inode_setxattr(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(6);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeSetxattr;
    verdict_of(
        program,
        guard(
            Dentry::from_raw(ctx.arg::<u64>(1) as usize),
            Scope::Itself,
            open_syscall::SETXATTR,
            program,
        ),
    )
}

/// `int inode_removexattr(struct mnt_idmap *idmap, struct dentry *dentry, const char *name)`
/// (6.3+ with `mnt_idmap`).
#[lsm(hook = "inode_removexattr")]
pub fn enforce_inode_removexattr(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    let program = Program::EnforceInodeRemovexattr;
    verdict_of(
        program,
        guard(
            Dentry::from_raw(ctx.arg::<u64>(1) as usize),
            Scope::Itself,
            open_syscall::REMOVEXATTR,
            program,
        ),
    )
}
