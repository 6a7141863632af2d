//! Who a process is: the executable the kernel executed for it, recorded at exec in
//! `EXEC_IDENTITY`, copied to children at fork and removed when the process ends. Decisions
//! read it from there and never from `mm->exe_file`, which a process may point at another
//! file (`prctl(PR_SET_MM_MAP)` needs only `CAP_SYS_ADMIN` in a user namespace of its own).
//!
//! A process that may run code it was not executed with is *tainted* (see [`taint`]) until
//! its next exec: it then has no executable as far as decisions go. So has a process with no
//! record (the map was full, or it started before the programs and the agent's start-up
//! seeding missed it): no `exe` subject matches it.

use phiguard_common::maps::{identity_flags::TAINTED, ExecIdentity, NS_PER_TICK};

use crate::{
    error::{ProbeError, ProbeResult},
    kernel::{FileId, Task},
    maps::EXEC_IDENTITY,
};

/// Records that the current process now runs `exe` (called at exec, before the new image
/// runs). A process traced across its exec is tainted from the start: its tracer can change
/// the new image.
#[inline(always)]
pub fn record_exec(task: Task, exe: FileId) -> ProbeResult {
    let value = ExecIdentity {
        dev: exe.dev,
        flags: if task.is_traced()? { TAINTED } else { 0 },
        ino: exe.ino,
        start_ticks: task.leader_start_boot_ns()? / NS_PER_TICK,
    };
    EXEC_IDENTITY
        .insert(task.tgid()?, value, 0)
        .map_err(|_| ProbeError::Fault)
}

/// A new process `child` (forked by `parent`) runs its parent's executable, and carries its
/// taint, until it execs. A parent without a record (it predates the programs) passes on its
/// mapping's executable.
#[inline(always)]
pub fn inherit(parent: Task, child: Task, child_tgid: u32) -> ProbeResult {
    // SAFETY: the value is copied out at once.
    let recorded = parent
        .tgid()
        .ok()
        .and_then(|tgid| unsafe { EXEC_IDENTITY.get(tgid) }.copied());
    let (exe, flags) = match (recorded, exe_of(parent)) {
        (Some(r), Some(exe)) => (exe, r.flags),
        // Tainted: the child is too (the identity it copies does not matter then).
        (Some(r), None) if r.flags & TAINTED != 0 => (parent.exe_dentry()?.id()?, TAINTED),
        _ => (parent.exe_dentry()?.id()?, 0),
    };
    let value = ExecIdentity {
        dev: exe.dev,
        flags,
        ino: exe.ino,
        start_ticks: child.start_boot_ns()? / NS_PER_TICK,
    };
    EXEC_IDENTITY
        .insert(child_tgid, value, 0)
        .map_err(|_| ProbeError::Fault)
}

/// Forgets the record of `task`'s process once its last thread exits.
#[inline(always)]
pub fn forget_if_last(task: Task) -> ProbeResult {
    if task.live_threads()? != 0 {
        return Ok(());
    }
    let tgid = task.tgid()?;
    let _ = EXEC_IDENTITY.remove(tgid);
    crate::script::forget(tgid);
    Ok(())
}

/// Marks process `tgid` (a global pid) as running code it was not executed with. A process
/// without a record is left alone: it matches no `exe` subject anyway.
#[inline(always)]
pub fn taint(tgid: u32) {
    crate::script::forget(tgid); // a script identity vouches for the script's code alone
    if let Some(recorded) = EXEC_IDENTITY.get_ptr_mut(tgid) {
        // SAFETY: a map value pointer, valid for this program run; one word written.
        unsafe { (*recorded).flags |= TAINTED };
    }
}

/// The executable `task`'s process runs, as recorded; `None` without a record, when the
/// record belongs to an earlier process with the same pid, or when the process is tainted.
#[inline(always)]
pub fn exe_of(task: Task) -> Option<FileId> {
    let tgid = task.tgid().ok()?;
    // SAFETY: the value is copied out at once.
    let recorded = unsafe { EXEC_IDENTITY.get(tgid) }.copied()?;
    if recorded.flags & TAINTED != 0
        || recorded.start_ticks != task.leader_start_boot_ns().ok()? / NS_PER_TICK
    {
        return None;
    }
    Some(FileId {
        dev: recorded.dev,
        ino: recorded.ino,
    })
}

/// The recorded executable of the current process, tainted or not (for telling its own
/// executable's mappings from others).
#[inline(always)]
pub fn recorded_exe(tgid: u32) -> Option<FileId> {
    // SAFETY: the value is copied out at once.
    let recorded = unsafe { EXEC_IDENTITY.get(tgid) }.copied()?;
    Some(FileId {
        dev: recorded.dev,
        ino: recorded.ino,
    })
}
