//! BPF LSM enforcement (where the kernel has BPF LSM: `CONFIG_BPF_LSM` and `bpf` in the active
//! LSM list). A refused call fails with `EPERM` before anything happens; these programs report
//! the refusals. Allowed and would-deny accesses are reported by the observing programs, as
//! without LSM. Every hook first honours an earlier LSM's refusal (the `ret` argument).

use agent_common::{
    event::{ConnectEvent, ExecEvent, Kind, FLAG_EXEC_REFUSED, FLAG_TRUNCATED},
    limits::PATH_LEN,
    maps::InodeKey,
    policy::{access, layer, verdict, Decision},
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    emit::{count_lost, fill_header, submit},
    kernel::{
        binprm_file, binprm_filename, dentry_dev, dentry_id, dentry_ino, file_dentry, file_mode,
        find_watch, unix_sock_dentry,
    },
    maps::{EVENTS, REFUSED_OPENS, UNIX_SOCKETS, WATCHED_DEVS},
    policy::{current_slot, decide, decide_exec, exec_rule},
    programs::file::{
        copy_names, read_path, requested_access, scratch, send, start_record, OpenCall,
    },
};

/// `-EPERM`.
const EPERM: i32 = -1;
/// `FMODE_READ`, `FMODE_WRITE`.
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;
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
    check_open(ctx.arg::<u64>(0) as usize)
}

#[inline(always)]
fn check_open(file: usize) -> i32 {
    let Ok(dentry) = file_dentry(file) else {
        return 0;
    };
    let Ok(dev) = dentry_dev(dentry) else {
        return 0;
    };
    // SAFETY: value not used.
    if unsafe { WATCHED_DEVS.get(&dev) }.is_none() {
        return 0;
    }
    let Some(hit) = find_watch(dentry, dev, current_slot()) else {
        return 0;
    };
    // An open through open/openat/openat2 has its flags (O_TRUNC included, which `f_flags`
    // no longer holds after the open); any other (exec, io_uring…) has the file's mode. (No
    // `Option<OpenCall>` is kept: its unset payload would reach the verifier as an
    // uninitialised register.)
    let call = OpenCall::current().unwrap_or(OpenCall::UNKNOWN);
    let in_open_call = call.syscall != 0;
    let requested = if in_open_call {
        requested_access(call.flags)
    } else {
        let mode = file_mode(file).unwrap_or(0);
        let mut bits = 0;
        if mode & FMODE_READ != 0 {
            bits |= access::READ;
        }
        if mode & FMODE_WRITE != 0 {
            bits |= access::WRITE;
        }
        bits
    };
    let decision = decide(hit.rule(), requested, layer::LSM);
    if decision.verdict != verdict::DENY {
        return 0;
    }
    if in_open_call {
        // The call's exit program must not report it a second time.
        let _ = REFUSED_OPENS.insert(&bpf_get_current_pid_tgid(), &1, 0);
    }
    if let Some(scratch) = scratch() {
        read_path(&mut scratch.event, &call);
        start_record(scratch, &call, i64::from(EPERM));
        scratch.event.decision = decision;
        scratch.event.matched_by = agent_common::event::matched_by::INODE;
        scratch.event.watch_id = hit.value.watch_id;
        scratch.event.dev = dev;
        scratch.event.ino = dentry_ino(dentry).unwrap_or(0);
        copy_names(scratch, dentry, hit.depth);
        send(scratch);
    }
    EPERM
}

/// `int bprm_check_security(struct linux_binprm *bprm)`: once per stage of an exec (a script,
/// then its interpreter), before the new image replaces the old.
#[lsm(hook = "bprm_check_security")]
pub fn enforce_bprm_check_security(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    check_exec(ctx.arg::<u64>(0) as usize)
}

#[inline(always)]
fn check_exec(bprm: usize) -> i32 {
    let rule = exec_rule(current_slot());
    if rule == agent_common::policy::NO_RULE {
        return 0;
    }
    let Ok(dentry) = binprm_file(bprm).and_then(file_dentry) else {
        return 0;
    };
    let decision = decide_exec(rule, dentry, layer::LSM);
    if decision.verdict != verdict::DENY {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(Kind::Exec);
        return EPERM;
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
        if let Ok(name) = binprm_filename(bprm) {
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
    EPERM
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
    check_unix_connect(ctx.arg::<u64>(1) as usize)
}

#[inline(always)]
fn check_unix_connect(other: usize) -> i32 {
    let Ok(dentry) = unix_sock_dentry(other) else {
        return 0;
    };
    let Ok(file) = dentry_id(dentry) else {
        return 0;
    };
    let key = InodeKey {
        dev: file.dev,
        slot: current_slot(),
        ino: file.ino,
    };
    // SAFETY: the value is a plain u32 copied out at once.
    let Some(rule) = (unsafe { UNIX_SOCKETS.get(&key) }).copied() else {
        return 0;
    };
    let decision: Decision = decide(rule, access::CONNECT, layer::LSM);
    let ret = if decision.verdict == verdict::DENY {
        EPERM
    } else {
        0
    };
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost(Kind::Connect);
        return ret;
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
    ret
}
