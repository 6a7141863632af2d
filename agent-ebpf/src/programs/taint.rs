//! Code a process was not executed with: executable mappings of files that are neither its
//! executable nor root's alone (a library preloaded or `dlopen`ed from a user's file, a memfd),
//! and other processes tracing or writing into it. Each taints the process (see
//! `crate::identity`): it matches no `exe` subject until its next exec. The syscall
//! tracepoints see the 64-bit system call entry only (the dynamic loader of a 64-bit program
//! uses the 64-bit entry); the kernel's ptrace access check (below) sees every entry.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, lsm, tracepoint},
    programs::{FExitContext, LsmContext, TracePointContext},
};
use phiguard_common::program::Program;

use crate::{
    error::{finish, ProbeError, ProbeResult},
    identity::{recorded_exe, taint},
    kernel::{current_file, current_in_compat_syscall, Task},
    policy::current_is_agent,
    programs::file::OpenCall,
    syscall::SyscallArgs,
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

/// `PTRACE_MODE_ATTACH`: the access check's mode for ptrace itself, `/proc/PID/mem`,
/// `process_vm_readv`/`writev`, `pidfd_getfd`, `perf_event_open` of another process and a few
/// `/proc/PID` files (`stack`, `syscall`, `personality`).
const PTRACE_MODE_ATTACH: u64 = 0x02;
/// `O_ACCMODE`, and its read-only value.
const O_ACCMODE: u32 = 3;
const O_RDONLY: u32 = 0;
/// x86_64 numbers of the calls whose `PTRACE_MODE_ATTACH` access leaves the target's memory
/// unchanged: `process_vm_readv` reads it, `pidfd_getfd` copies a descriptor out of it (the
/// receiving side is decided by `file_receive` or `sys_exit_pidfd_getfd`), and the read
/// family, under which `/proc/PID/{syscall,stack,personality}` make their check (at read, not
/// at open: the agent's fanotify layer reads `/proc/PID/syscall` of every process it decides).
const READ_ONLY_CALLS: [u64; 7] = [
    0,   // read
    17,  // pread64
    19,  // readv
    295, // preadv
    327, // preadv2
    310, // process_vm_readv
    438, // pidfd_getfd
];
/// The same calls' numbers through the 32-bit entry (i386 numbering: 295 there is `openat`,
/// not `preadv`).
const READ_ONLY_CALLS_32: [u64; 7] = [
    3,   // read
    180, // pread64
    145, // readv
    333, // preadv
    378, // preadv2
    347, // process_vm_readv
    438, // pidfd_getfd
];

/// `int ptrace_access_check(struct task_struct *child, unsigned int mode)` (BPF LSM, Linux
/// 5.7+): the last step of `__ptrace_may_access`, after the same-thread-group shortcut, the
/// uid/capability and dumpable checks, and the LSMs listed before `bpf` (Yama). It runs
/// before the decision is final — an LSM listed after `bpf`, or a caller's later check, may
/// still refuse — so an attempt refused after this point taints too: a tainted process is
/// only refused data, while a write that went through untainted would keep the allow-list
/// identity. Never refuses anything itself (returns the earlier verdict).
#[lsm(hook = "ptrace_access_check")]
pub fn taint_ptrace_access_check(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(2);
    if earlier != 0 {
        return earlier;
    }
    let (child, mode): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    finish(
        Program::TaintPtraceAccessCheck,
        try_access(Task(child as usize), mode),
    );
    0
}

/// `bool ptrace_may_access(struct task_struct *task, unsigned int mode)` at its return (fexit,
/// Linux 5.5+; where BPF LSM is not active): the check `mm_access` (`/proc/PID/mem`,
/// `process_vm_readv`/`writev`), `pidfd_getfd` and `perf_event_open` make. The return value
/// follows the two arguments in the context (read there rather than with `bpf_get_func_ret`,
/// Linux 5.17). Only a granted access taints. `ptrace(PTRACE_ATTACH)` calls
/// `__ptrace_may_access` directly: `taint_sys_enter_ptrace` covers it.
#[fexit(function = "ptrace_may_access")]
pub fn taint_ptrace_may_access(ctx: FExitContext) -> i32 {
    let (task, mode, granted): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if granted & 0xff != 0 {
        finish(
            Program::TaintPtraceMayAccess,
            try_access(Task(task as usize), mode),
        );
    }
    0
}

/// Taints `target`'s process for a `PTRACE_MODE_ATTACH` access that can change its memory:
/// every one except those made by the agent, under [`READ_ONLY_CALLS`] (through the 32-bit
/// entry: [`READ_ONLY_CALLS_32`]), or by a read-only
/// `open` (of `/proc/PID/mem` or another `/proc/PID` file). An access in `PTRACE_MODE_READ`
/// (`/proc/PID/status`, `environ`, `maps`…) taints nothing.
#[inline(always)]
fn try_access(target: Task, mode: u64) -> ProbeResult {
    if mode & PTRACE_MODE_ATTACH == 0 || current_is_agent() {
        return Err(ProbeError::Skip);
    }
    let nr = SyscallArgs::current().nr();
    let read_only = if current_in_compat_syscall() {
        READ_ONLY_CALLS_32.contains(&nr)
    } else {
        READ_ONLY_CALLS.contains(&nr)
    };
    if read_only {
        return Err(ProbeError::Skip);
    }
    if let Some(call) = OpenCall::current() {
        if call.flags & O_ACCMODE == O_RDONLY {
            return Err(ProbeError::Skip);
        }
    }
    taint(target.tgid()?);
    Ok(())
}
