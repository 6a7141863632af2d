//! Who a process is: the executable the kernel executed for it, recorded at exec in
//! `EXEC_IDENTITY`, copied to children at fork and removed when the process ends. Decisions
//! read it from there and never from `mm->exe_file`, which a process may point at another
//! file (`prctl(PR_SET_MM_MAP)` needs only `CAP_SYS_ADMIN` in a user namespace of its own).
//!
//! A process with no record (the map was full, or it started before the programs and the
//! agent's start-up seeding missed it) has no executable: no `exe` subject matches it.

use agent_common::maps::{ExecIdentity, NS_PER_TICK};

use crate::{
    error::{ProbeError, ProbeResult},
    kernel::{FileId, Task},
    maps::EXEC_IDENTITY,
};

/// Records that the current process now runs `exe` (called at exec, before the new image runs).
#[inline(always)]
pub fn record_exec(task: Task, exe: FileId) -> ProbeResult {
    let value = ExecIdentity {
        dev: exe.dev,
        _pad: 0,
        ino: exe.ino,
        start_ticks: task.leader_start_boot_ns()? / NS_PER_TICK,
    };
    EXEC_IDENTITY
        .insert(task.tgid()?, value, 0)
        .map_err(|_| ProbeError::Fault)
}

/// A new process `child` (forked by `parent`) runs its parent's executable until it execs. A
/// parent without a record (it predates the programs) passes on its mapping's executable.
#[inline(always)]
pub fn inherit(parent: Task, child: Task, child_tgid: u32) -> ProbeResult {
    let exe = match exe_of(parent) {
        Some(exe) => exe,
        None => parent.exe_dentry()?.id()?,
    };
    let value = ExecIdentity {
        dev: exe.dev,
        _pad: 0,
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
    let _ = EXEC_IDENTITY.remove(task.tgid()?);
    Ok(())
}

/// The executable `task`'s process runs, as recorded; `None` without a record or when the record
/// belongs to an earlier process with the same pid.
#[inline(always)]
pub fn exe_of(task: Task) -> Option<FileId> {
    let tgid = task.tgid().ok()?;
    // SAFETY: the value is copied out at once.
    let recorded = unsafe { EXEC_IDENTITY.get(tgid) }.copied()?;
    if recorded.start_ticks != task.leader_start_boot_ns().ok()? / NS_PER_TICK {
        return None;
    }
    Some(FileId {
        dev: recorded.dev,
        ino: recorded.ino,
    })
}
