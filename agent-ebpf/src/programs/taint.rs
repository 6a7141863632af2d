//! Code a process was not executed with: executable mappings of files that are neither its
//! executable nor root's alone (a library preloaded or `dlopen`ed from a user's file, a memfd),
//! and other processes tracing or writing into it. Each taints the process (see
//! `crate::identity`): it matches no `exe` subject until its next exec. The 64-bit system call
//! entry only (the syscall tracepoints do not see the 32-bit one; the dynamic loader of a
//! 64-bit program uses the 64-bit entry).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use phiguard_common::program::Program;

use crate::{
    error::{finish, ProbeError, ProbeResult},
    identity::{recorded_exe, taint},
    kernel::current_file,
};

/// `PROT_EXEC`.
const PROT_EXEC: u64 = 4;
/// `MAP_ANONYMOUS`.
const MAP_ANONYMOUS: u64 = 0x20;
/// Group- and other-write mode bits.
const WRITABLE_BY_OTHERS: u16 = 0o022;
/// `PTRACE_TRACEME`, `PTRACE_ATTACH`, `PTRACE_SEIZE`.
const PTRACE_TRACEME: u64 = 0;
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;

/// `syscalls/sys_enter_mmap`: `prot` at 32, `flags` 40, `fd` 48.
#[tracepoint]
pub fn taint_sys_enter_mmap(ctx: TracePointContext) -> i32 {
    finish(Program::TaintSysEnterMmap, try_mmap(&ctx));
    0
}

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> ProbeResult<u64> {
    // SAFETY: every caller's offset is a 64-bit field of the tracepoint's format.
    unsafe { ctx.read_at::<u64>(offset) }.map_err(|_| ProbeError::Fault)
}

fn try_mmap(ctx: &TracePointContext) -> ProbeResult {
    let (prot, flags) = (arg(ctx, 32)?, arg(ctx, 40)?);
    if prot & PROT_EXEC == 0 || flags & MAP_ANONYMOUS != 0 {
        return Err(ProbeError::Skip);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(exe) = recorded_exe(tgid) else {
        return Err(ProbeError::Skip); // no record: no `exe` subject matches it anyway
    };
    let fd = arg(ctx, 48)? as u32;
    let dentry = current_file(fd)?.dentry()?;
    let (uid, mode) = dentry.owner_and_mode()?;
    let id = dentry.id()?;
    let own_executable = id.dev == exe.dev && id.ino == exe.ino;
    if own_executable || (uid == 0 && mode & WRITABLE_BY_OTHERS == 0) {
        return Err(ProbeError::Skip); // root's alone: code installed by the administrator
    }
    taint(tgid);
    Ok(())
}

/// `syscalls/sys_enter_ptrace`: `request` at 16, `pid` 24. Tracing lets the tracer change
/// what the traced process runs.
#[tracepoint]
pub fn taint_sys_enter_ptrace(ctx: TracePointContext) -> i32 {
    finish(Program::TaintSysEnterPtrace, try_ptrace(&ctx));
    0
}

fn try_ptrace(ctx: &TracePointContext) -> ProbeResult {
    match arg(ctx, 16)? {
        PTRACE_TRACEME => taint((bpf_get_current_pid_tgid() >> 32) as u32),
        PTRACE_ATTACH | PTRACE_SEIZE => taint(arg(ctx, 24)? as u32),
        _ => return Err(ProbeError::Skip),
    }
    Ok(())
}

/// `syscalls/sys_enter_process_vm_writev`: `pid` at 16. Writing another process's memory
/// changes what it runs.
#[tracepoint]
pub fn taint_sys_enter_process_vm_writev(ctx: TracePointContext) -> i32 {
    finish(Program::TaintSysEnterProcessVmWritev, try_vm_writev(&ctx));
    0
}

fn try_vm_writev(ctx: &TracePointContext) -> ProbeResult {
    taint(arg(ctx, 16)? as u32);
    Ok(())
}
