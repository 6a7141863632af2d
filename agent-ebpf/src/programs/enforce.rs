//! BPF LSM enforcement (where the kernel has BPF LSM: `CONFIG_BPF_LSM` and `bpf` in the active
//! LSM list). A refused call fails with `EPERM` before anything happens; these programs report
//! the refusals. Allowed and would-deny accesses are reported by the observing programs, as
//! without LSM — except received descriptors, which only `file_receive` sees: it reports every
//! decision on one. Every hook first honours an earlier LSM's refusal (the `ret` argument).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};
use phiguard_common::{
    event::{open_syscall, ConnectEvent, ExecEvent, Kind, FLAG_EXEC_REFUSED, FLAG_TRUNCATED},
    limits::PATH_LEN,
    maps::InodeKey,
    policy::{access, layer, verdict, Decision},
    program::Program,
};

use crate::{
    emit::{count_lost, fill_header, submit},
    error::{count_fault, or_skip, ProbeError, ProbeResult},
    kernel::{find_watch, Binprm, File, Sock},
    maps::{EVENTS, RECEIVES_REPORTED, REFUSED_OPENS, UNIX_SOCKETS},
    policy::{current_slot, decide, decide_exec, exec_rule},
    programs::{
        file::{
            copy_names, mode_access, read_path, requested_access, scratch, send, start_record,
            OpenCall, MAX_NAMES_WALK,
        },
        handover::sender_of,
        label::{inherit, label_of, on_protected_fs},
    },
    syscall::SyscallArgs,
};

/// `-EPERM`.
const EPERM: i32 = -1;
/// `AF_UNIX`, `SOCK_STREAM`.
const AF_UNIX: u16 = 1;
const SOCK_STREAM: u32 = 1;

/// `int file_open(struct file *file)` (Linux 5.7+ for BPF LSM).
#[lsm(hook = "file_open")]
pub fn enforce_file_open(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    let call = OpenCall::current().unwrap_or(OpenCall::UNKNOWN);
    verdict_of(
        Program::EnforceFileOpen,
        try_open(File::from_raw(ctx.arg::<u64>(0) as usize), call),
    )
}

/// `int file_receive(struct file *file)` (BPF LSM): a descriptor arriving in the current
/// process from another — `pidfd_getfd` or `SCM_RIGHTS`. A protected file's descriptor is
/// decided like an open of it with the descriptor's mode: a refused process cannot take the
/// allowed service's descriptor, nor be handed one. Every such decision is reported here
/// (allowed, would-deny or refused): no other program sees an `SCM_RIGHTS` receive.
#[lsm(hook = "file_receive")]
pub fn enforce_file_receive(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    let call = OpenCall {
        syscall: open_syscall::RECEIVE,
        ..OpenCall::UNKNOWN
    };
    verdict_of(
        Program::EnforceFileReceive,
        try_open(File::from_raw(ctx.arg::<u64>(0) as usize), call),
    )
}

/// The hook's return value for a `try_*` result: its own, or 0 (allow) when it stopped early
/// (a fault counted against `program`).
#[inline(always)]
pub(crate) fn verdict_of(program: Program, result: ProbeResult<i32>) -> i32 {
    match result {
        Ok(ret) => ret,
        Err(error) => {
            if error == ProbeError::Fault {
                count_fault(program);
            }
            0
        }
    }
}

/// `EPERM` when a rule denies the current process this open (made by `call`), else 0. The
/// inode's label decides (any depth, any name); an unlabelled inode is looked for below a
/// protected directory by its dentries (bounded walk) and labelled when found there.
#[inline(always)]
fn try_open(file: File, call: OpenCall) -> ProbeResult<i32> {
    let dentry = file.dentry()?;
    let dev = dentry.dev()?;
    if !on_protected_fs(dev) {
        return Err(ProbeError::Skip);
    }
    let slot = current_slot();
    let ino = dentry.ino()?;
    let (rule, watch_id, depth) = match label_of(dev, slot, ino) {
        Some(label) => (label.rule_here, label.watch_id, None),
        None => {
            let hit = or_skip(find_watch(dentry, dev, slot))?;
            if hit.depth > 0 {
                // Moved into the tree by an exempt process, or created before the labels:
                // from now on the label goes wherever the inode goes.
                inherit(dev, slot, ino, &hit.value, false);
            }
            (hit.rule(), hit.value.watch_id, Some(hit.depth))
        }
    };
    if rule == phiguard_common::policy::NO_RULE {
        return Err(ProbeError::Skip);
    }
    // An open through open/openat/openat2/creat (either ABI) has its flags (O_TRUNC included,
    // which `f_flags` no longer holds after the open); any other (exec, io_uring, a received
    // descriptor…) has the file's mode. (No `Option<OpenCall>` is kept: its unset payload
    // would reach the verifier as an uninitialised register.)
    let in_open_call = matches!(
        call.syscall,
        open_syscall::OPEN | open_syscall::OPENAT | open_syscall::OPENAT2 | open_syscall::CREAT
    );
    // The call's flags as read from its registers or its `open_how` — which, for `openat2`,
    // is the caller's memory: another thread may have rewritten it since the kernel copied
    // it. So the kernel's own copy counts too: the file's `f_flags` (O_TRUNC and O_CREAT
    // included while this hook runs) and its mode. A forged reading can only add access.
    let requested = if in_open_call {
        requested_access(call.flags)
            | requested_access(file.flags().unwrap_or(0))
            | mode_access(file.mode().unwrap_or(0))
    } else {
        mode_access(file.mode().unwrap_or(0))
    };
    let decision = decide(rule, requested, layer::LSM);
    let received = call.syscall == open_syscall::RECEIVE;
    if decision.verdict == verdict::NONE || (decision.verdict != verdict::DENY && !received) {
        // Not governed (another access only, or the agent itself), or an open the call's exit
        // program reports.
        return Ok(0);
    }
    let ret = if decision.verdict == verdict::DENY {
        EPERM
    } else {
        0 // the descriptor's number is not chosen yet
    };
    if in_open_call && call.compat == 0 && call.syscall != open_syscall::CREAT {
        // The call's exit program must not report it a second time (`creat` and the 32-bit
        // entry have none).
        let _ = REFUSED_OPENS.insert(bpf_get_current_pid_tgid(), 1, 0);
    }
    // `pidfd_getfd` (not `SCM_RIGHTS`): its exit program must not report it a second time,
    // and the descriptor was taken, not handed over, so no sender recorded for the same
    // `struct file` concerns it.
    let taken = received && SyscallArgs::current().nr() == NR_PIDFD_GETFD;
    if taken {
        let _ = RECEIVES_REPORTED.insert(bpf_get_current_pid_tgid(), 1, 0);
    }
    // The decision stands whether or not its record goes out.
    match scratch() {
        Some(scratch) => {
            read_path(&mut scratch.event, &call);
            start_record(scratch, &call, i64::from(ret));
            if call.compat != 0 {
                scratch.event.header.flags |= phiguard_common::event::FLAG_COMPAT_SYSCALL;
            }
            scratch.event.decision = decision;
            scratch.event.watch_id = watch_id;
            scratch.event.dev = dev;
            scratch.event.ino = ino;
            if received {
                // The descriptor's access mode, as `open_flags` (the received file's
                // `O_ACCMODE`).
                scratch.event.open_flags = mode_flags(file.mode().unwrap_or(0));
                if !taken {
                    // Handed over on a unix socket: who sent it, if `socket_sendmsg` saw it.
                    scratch.event.sender = sender_of(file);
                }
            }
            match depth {
                // Names up to the watch, as the observing programs report them.
                Some(depth) => {
                    scratch.event.matched_by = phiguard_common::event::matched_by::INODE;
                    copy_names(scratch, dentry, depth);
                }
                // Names up to the root of the filesystem: the label holds at any depth and
                // outside the tree.
                None => {
                    scratch.event.matched_by = phiguard_common::event::matched_by::LSM_LABEL;
                    copy_names(scratch, dentry, MAX_NAMES_WALK);
                }
            }
            let _ = send(scratch); // a loss is counted in `LOST`
        }
        None => count_fault(Program::EnforceFileOpen),
    }
    Ok(ret)
}

/// `pidfd_getfd` (the same number in both x86 entries).
const NR_PIDFD_GETFD: u64 = 438;

/// `O_ACCMODE` of a descriptor of mode `mode` (`file.f_mode`): `O_RDONLY` 0, `O_WRONLY` 1,
/// `O_RDWR` 2.
#[inline(always)]
fn mode_flags(mode: u32) -> u32 {
    match mode & 3 {
        2 => 1,
        3 => 2,
        _ => 0,
    }
}

/// `int bprm_check_security(struct linux_binprm *bprm)`: once per stage of an exec (a script,
/// then its interpreter), before the new image replaces the old.
#[lsm(hook = "bprm_check_security")]
pub fn enforce_bprm_check_security(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    verdict_of(
        Program::EnforceBprmCheckSecurity,
        try_exec(Binprm::from_raw(ctx.arg::<u64>(0) as usize)),
    )
}

/// `EPERM` when the exec allow-list refuses the program being exec'd, else 0.
#[inline(always)]
fn try_exec(bprm: Binprm) -> ProbeResult<i32> {
    let rule = exec_rule(current_slot());
    if rule == phiguard_common::policy::NO_RULE {
        return Err(ProbeError::Skip);
    }
    let dentry = bprm.file()?.dentry()?;
    let decision = decide_exec(rule, dentry, layer::LSM);
    if decision.verdict != verdict::DENY {
        return Ok(0);
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(Kind::Exec);
        return Ok(EPERM);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::Exec);
        (*event).header.flags |= FLAG_EXEC_REFUSED;
        (*event).old_pid = (*event).header.pid;
        (*event).decision = decision;
        (*event).filename_len = 0;
        (*event).cwd_len = 0;
        (*event).cwd_mnt_id = 0;
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
    }
    submit(entry);
    Ok(EPERM)
}

/// `int unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)`: the
/// listening socket is already found, so its bound path is matched by inode (relative paths and
/// symlinks to the socket reach the same rule). Every connect to a protected socket is
/// reported here: no other program sees unix connects.
#[lsm(hook = "unix_stream_connect")]
pub fn enforce_unix_stream_connect(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    verdict_of(
        Program::EnforceUnixStreamConnect,
        try_unix_connect(Sock::from_raw(ctx.arg::<u64>(1) as usize)),
    )
}

/// `EPERM` when a rule denies the current process a connect to the listening socket `other`,
/// else 0.
#[inline(always)]
fn try_unix_connect(other: Sock) -> ProbeResult<i32> {
    let dentry = other.unix_dentry()?;
    if dentry.is_null() {
        return Err(ProbeError::Skip); // an abstract socket: no file to protect
    }
    let file = dentry.id()?;
    let key = InodeKey {
        dev: file.dev,
        slot: current_slot(),
        ino: file.ino,
    };
    // SAFETY: the value is a plain u32 copied out at once.
    let rule = or_skip(unsafe { UNIX_SOCKETS.get(key) }.copied())?;
    let decision: Decision = decide(rule, access::CONNECT, layer::LSM);
    let ret = if decision.verdict == verdict::DENY {
        EPERM
    } else {
        0
    };
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost(Kind::Connect);
        return Ok(ret);
    };
    // The socket file's identity travels in `addr`; user space turns it back into the path.
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&file.dev.to_ne_bytes());
    addr[8..].copy_from_slice(&file.ino.to_ne_bytes());
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size, written field by field.
    unsafe {
        fill_header(&mut (*event).header, Kind::Connect);
        (*event).family = AF_UNIX;
        (*event).port = 0;
        (*event).sock_type = SOCK_STREAM;
        (*event).addr = addr;
        (*event).decision = decision;
    }
    submit(entry);
    Ok(ret)
}
