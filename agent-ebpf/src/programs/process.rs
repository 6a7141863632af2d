//! Process life cycle: fork, exec (with argv), exit.

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use phiguard_common::{
    event::{
        EventHeader, ExecArgsScratch, ExecEvent, ExitEvent, ForkEvent, Kind, FLAG_CWD_COMPLETE,
        FLAG_TRUNCATED,
    },
    limits::{ARGS_LEN, MAX_ARGS, PATH_LEN},
    policy::{layer, Decision, NO_RULE},
    program::Program,
};

use crate::{
    emit::{count_lost, fill_header, output, submit},
    error::{finish, or_fault, ProbeError, ProbeResult},
    identity,
    kernel::{copy_path_names, Binprm, PathNames, Task},
    maps::{EVENTS, EXEC_ARGS_SCRATCH},
    policy::{current_slot, decide_exec, enforce_by_signal, exec_rule},
    script,
};

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`, raw
/// tracepoint (Linux 4.17+). Reports new processes only, not new threads.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn process_sched_process_fork(ctx: RawTracePointContext) -> i32 {
    finish(Program::ProcessSchedProcessFork, try_fork(&ctx));
    0
}

fn try_fork(ctx: &RawTracePointContext) -> ProbeResult {
    let parent = Task(ctx.arg::<u64>(0) as usize);
    let child = Task(ctx.arg::<u64>(1) as usize);
    let child_pid = child.pid()?;
    let child_tgid = child.tgid()?;
    if child_pid != child_tgid {
        return Err(ProbeError::Skip); // a thread
    }
    if parent.is_kernel_thread()? {
        // kthreadd starting a kernel thread, or a kworker a user-mode helper: the child runs
        // kernel code only until an exec, which records its identity. The parent has no
        // executable to pass on (reading it failed, and counted as a fault, before).
        return Err(ProbeError::Skip);
    }
    let child_start = child.start_boot_ns().unwrap_or(0);
    // Before the child can run: it must never be seen without its identity.
    identity::inherit(parent, child, child_tgid)?;
    script::inherit(parent, child, child_tgid)?;
    // A child inherits its parent's database sockets (PostgreSQL forks a backend per
    // accepted connection): the capture hooks must look at it too.
    crate::programs::db::inherit(child_tgid);
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        count_lost(Kind::Fork);
        return Err(ProbeError::Lost);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::Fork);
        (*event).child_tgid = child_tgid;
        (*event)._pad = 0;
        (*event).child_start_boot_ns = child_start;
    }
    submit(entry);
    Ok(())
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`, raw
/// tracepoint (Linux 4.17+). `current` is the process with its new image.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_sched_process_exec(ctx: RawTracePointContext) -> i32 {
    finish(Program::ProcessSchedProcessExec, try_exec(&ctx));
    0
}

fn try_exec(ctx: &RawTracePointContext) -> ProbeResult {
    let old_pid = ctx.arg::<u64>(1) as u32;
    let bprm = Binprm::from_raw(ctx.arg::<u64>(2) as usize);
    let exe = bprm.file()?.dentry()?.id()?;
    identity::record_exec(Task::current(), exe)?;
    // A fault here leaves the process without a script (refused as one), not unreported.
    let script_recorded = script::record_exec(Task::current(), bprm);
    let decision = enforce_by_signal(exec_decision());
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(Kind::Exec);
        return Err(ProbeError::Lost);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::Exec);
        (*event).old_pid = old_pid;
        (*event).decision = decision;
        (*event).exe_dev = exe.dev;
        (*event)._pad = 0;
        (*event).exe_ino = exe.ino;
        (*event).filename_len = 0;
        if let Ok(name) = bprm.filename() {
            if let Ok(bytes) =
                bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*event).filename)
            {
                (*event).filename_len = bytes.len() as u32;
                if bytes.len() + 1 >= PATH_LEN {
                    (*event).header.flags |= FLAG_TRUNCATED;
                }
            }
        }
        let cwd = Task::current().cwd();
        let names = match cwd {
            Ok((dentry, vfsmount)) => copy_path_names(&mut (*event).cwd, dentry, vfsmount),
            Err(_) => PathNames {
                len: 0,
                mnt_id: 0,
                complete: false,
            },
        };
        (*event).cwd_len = names.len;
        (*event).cwd_mnt_id = names.mnt_id;
        if names.complete {
            (*event).header.flags |= FLAG_CWD_COMPLETE;
        }
    }
    submit(entry);
    script_recorded
}

/// The exec allow-list's decision on the program the current process now runs. At this point
/// the new image is in place but has not run an instruction: a SIGKILL now means it never does.
#[inline(always)]
fn exec_decision() -> Decision {
    let rule = exec_rule(current_slot());
    if rule == NO_RULE {
        return Decision::NONE;
    }
    match Task::current().exe_dentry() {
        Ok(exe) => decide_exec(rule, exe, layer::SIGNAL),
        Err(_) => Decision::NONE,
    }
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)`, raw tracepoint (Linux
/// 4.17+). Reports the thread-group leader's exit.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    finish(Program::ProcessSchedProcessExit, try_exit());
    0
}

fn try_exit() -> ProbeResult {
    let task = Task::current();
    identity::forget_if_last(task)?;
    if task.pid()? != task.tgid()? {
        return Err(ProbeError::Skip); // a thread
    }
    let exit_code = task.exit_code().unwrap_or(0);
    crate::programs::db::forget(task.tgid()?);
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count_lost(Kind::Exit);
        return Err(ProbeError::Lost);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::Exit);
        (*event).exit_code = exit_code;
        (*event)._pad = 0;
    }
    submit(entry);
    Ok(())
}

/// `syscalls/sys_enter_execve`: `filename` at 16, `argv` at 24 (Linux 4.7+).
#[tracepoint]
pub fn process_sys_enter_execve(ctx: TracePointContext) -> i32 {
    finish(Program::ProcessSysEnterExecve, try_argv(&ctx, 24));
    0
}

/// `syscalls/sys_enter_execveat`: `argv` at 32 (Linux 4.7+).
#[tracepoint]
pub fn process_sys_enter_execveat(ctx: TracePointContext) -> i32 {
    finish(Program::ProcessSysEnterExecveat, try_argv(&ctx, 32));
    0
}

/// Sends the argv whose user address is at `offset` of the tracepoint record.
#[inline(always)]
fn try_argv(ctx: &TracePointContext, offset: usize) -> ProbeResult {
    // SAFETY: `offset` is that of `const char *const *argv` in the record.
    let argv = unsafe { ctx.read_at::<u64>(offset) }.map_err(|_| ProbeError::Fault)?;
    send_argv(argv)
}

/// Copies up to `MAX_ARGS` arguments (`ARGS_LEN` bytes) from the user `argv` array into an
/// [`ExecArgsEvent`] record sized to what was copied.
#[inline(always)]
fn send_argv(argv: u64) -> ProbeResult {
    let scratch = or_fault(EXEC_ARGS_SCRATCH.get_ptr_mut(0))?;
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let scratch: &mut ExecArgsScratch = unsafe { &mut *scratch };
    let header: &mut EventHeader = &mut scratch.event.header;
    fill_header(header, Kind::ExecArgs);
    let mut used: usize = 0;
    let mut argc: u32 = 0;
    for i in 0..MAX_ARGS {
        // SAFETY: reading a user pointer through the checked helper.
        let arg: u64 =
            match unsafe { bpf_probe_read_user((argv as *const u64).wrapping_add(i as usize)) } {
                Ok(ptr) => ptr,
                Err(_) => break,
            };
        if arg == 0 {
            break;
        }
        if used >= ARGS_LEN {
            scratch.event.header.flags |= FLAG_TRUNCATED;
            break;
        }
        let start = used & (ARGS_LEN - 1);
        let room = ARGS_LEN - start;
        // SAFETY: `start < ARGS_LEN` and the slice is ARGS_LEN long, inside the 2*ARGS_LEN array.
        let copied = match unsafe {
            bpf_probe_read_user_str_bytes(
                arg as *const u8,
                &mut scratch.args[start..start + ARGS_LEN],
            )
        } {
            Ok(bytes) => bytes.len(),
            Err(_) => break,
        };
        argc += 1;
        if copied + 1 > room {
            used = ARGS_LEN;
            scratch.event.header.flags |= FLAG_TRUNCATED;
            break;
        }
        used = start + copied + 1;
        if i + 1 == MAX_ARGS {
            // More arguments may follow: say so if there are.
            // SAFETY: reading a user pointer through the checked helper.
            let next = unsafe {
                bpf_probe_read_user((argv as *const u64).wrapping_add(MAX_ARGS as usize))
            };
            if matches!(next, Ok(p) if p != 0) {
                scratch.event.header.flags |= FLAG_TRUNCATED;
            }
        }
    }
    scratch.event.argc = argc;
    scratch.event.args_len = used as u32;
    let len = offset_of!(ExecArgsScratch, args) + (used & (2 * ARGS_LEN - 1));
    if len > size_of::<ExecArgsScratch>() {
        return Err(ProbeError::Fault);
    }
    // SAFETY: `len` is within the scratch value.
    let bytes = unsafe {
        core::slice::from_raw_parts((scratch as *const ExecArgsScratch).cast::<u8>(), len)
    };
    output(Kind::ExecArgs, bytes)
}
