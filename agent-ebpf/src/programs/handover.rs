//! Who handed a descriptor over (BPF LSM). `file_receive` runs in the receiver and knows
//! nothing of the sender; `socket_sendmsg` runs in the sender for every send, after
//! `____sys_sendmsg` copied the control messages into kernel memory and before the unix
//! socket takes the files. This program walks the `SCM_RIGHTS` messages there (bounded),
//! looks each descriptor up in the sender's table and, for a labelled (protected) file,
//! records its `struct file` address → the sender in `SCM_SENDERS`; `file_receive` names the
//! sender in its record for the same address. It never refuses anything.

use aya_ebpf::{
    cty::{c_long, c_void},
    helpers::bpf_loop,
    macros::lsm,
    programs::LsmContext,
};
use phiguard_common::{event::Sender, policy::NO_RULE, program::Program};

use crate::{
    error::{count_fault, finish, ProbeError, ProbeResult},
    identity::exe_of,
    kernel::{read, File, Msghdr, Task},
    maps::SCM_SENDERS,
    policy::current_slot,
    programs::label::{label_of, on_protected_fs},
};

/// `SOL_SOCKET`, `SCM_RIGHTS`.
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
/// `sizeof(struct cmsghdr)` on 64-bit kernels (`size_t cmsg_len; int cmsg_level, cmsg_type`).
const CMSG_HDR: usize = 16;
/// Steps of the walk: each reads one control-message header or one descriptor. One
/// `SCM_RIGHTS` message of up to 15 descriptors fits; descriptors past the bound go unnamed.
const MAX_STEPS: u32 = 16;

/// `int socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)` (BPF LSM, Linux
/// 5.7+): records the sender of every protected file's descriptor in the message. Returns
/// the earlier LSM's verdict, else 0.
#[lsm(hook = "socket_sendmsg")]
pub fn enforce_socket_sendmsg(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    finish(
        Program::EnforceSocketSendmsg,
        try_sendmsg(Msghdr::from_raw(ctx.arg::<u64>(1) as usize)),
    );
    0
}

/// A `struct cmsghdr` (the descriptors follow it).
#[repr(C)]
#[derive(Clone, Copy)]
struct CmsgHdr {
    len: u64,
    level: i32,
    kind: i32,
}

/// State of the walk over a message's control part, shared with its [`walk_step`] callback.
#[repr(C)]
struct Walk {
    /// Kernel address of the control messages.
    control: usize,
    /// Their length in bytes.
    len: usize,
    /// Offset of the next header.
    next: usize,
    /// Offset of the next descriptor of the current `SCM_RIGHTS` message.
    fd_at: usize,
    /// Descriptors of it left.
    left: usize,
    /// The sender.
    task: Task,
    /// The policy slot in force.
    slot: u32,
}

/// Walks the control messages of `msg` and records the sender of each protected descriptor.
/// The steps run in `bpf_loop`, so the verifier checks one step once.
#[inline(always)]
fn try_sendmsg(msg: Msghdr) -> ProbeResult {
    let (control, len) = msg.control()?;
    if control == 0 || len < CMSG_HDR {
        return Err(ProbeError::Skip); // no control messages: almost every send
    }
    // Zero at run time (the kernel caps `msg_controllen` at `INT_MAX`), but not a constant to
    // the verifier. Before 6.7 the verifier checked a `bpf_loop` callback once, with the state
    // of the call: a `left` written as the constant 0 made the descriptor branch of
    // `walk_step` dead code, which it removed, and Debian 12's 6.1 never named a sender.
    let zero = len >> 62;
    let mut walk = Walk {
        control,
        len,
        next: zero,
        fd_at: zero,
        left: zero,
        task: Task::current(),
        slot: current_slot(),
    };
    // SAFETY: the callback is a static function; the context is this frame's `walk`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_STEPS,
            walk_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    Ok(())
}

/// One step of [`try_sendmsg`]'s walk: reads the next header, or the next descriptor and
/// records its sender. 1 ends the walk.
extern "C" fn walk_step(_step: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: `bpf_loop` passes the `Walk` that `try_sendmsg` gave it.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    if walk.left == 0 {
        if walk.next + CMSG_HDR > walk.len {
            return 1;
        }
        let Ok(hdr) = read::<CmsgHdr>(walk.control, walk.next) else {
            count_fault(Program::EnforceSocketSendmsg);
            return 1;
        };
        let size = hdr.len as usize;
        if size < CMSG_HDR || size > walk.len - walk.next {
            return 1;
        }
        if hdr.level == SOL_SOCKET && hdr.kind == SCM_RIGHTS {
            walk.fd_at = walk.next + CMSG_HDR;
            walk.left = (size - CMSG_HDR) / 4;
        }
        walk.next += (size + 7) & !7;
        return 0;
    }
    let Ok(fd) = read::<i32>(walk.control, walk.fd_at) else {
        count_fault(Program::EnforceSocketSendmsg);
        return 1;
    };
    walk.fd_at += 4;
    walk.left -= 1;
    if let Ok(file) = walk.task.file(fd as u32) {
        record_if_protected(walk.task, walk.slot, file);
    }
    0
}

/// Records `task`'s process as the sender of `file` when the file is labelled protected.
#[inline(always)]
fn record_if_protected(task: Task, slot: u32, file: File) {
    let Ok(dentry) = file.dentry() else { return };
    let Ok(dev) = dentry.dev() else { return };
    if !on_protected_fs(dev) {
        return;
    }
    let Ok(ino) = dentry.ino() else { return };
    match label_of(dev, slot, ino) {
        Some(label) if label.rule_here != NO_RULE => {}
        _ => return,
    }
    let exe = exe_of(task);
    let sender = Sender {
        tgid: task.tgid().unwrap_or(0),
        exe_dev: exe.map_or(0, |e| e.dev),
        start_boot_ns: task.leader_start_boot_ns().unwrap_or(0),
        exe_ino: exe.map_or(0, |e| e.ino),
    };
    let _ = SCM_SENDERS.insert(file.addr() as u64, sender, 0); // LRU: never full
}

/// The sender recorded for `file`, or none.
#[inline(always)]
pub fn sender_of(file: File) -> Sender {
    // SAFETY: the value is plain integers, copied out at once.
    unsafe { SCM_SENDERS.get(file.addr() as u64) }
        .copied()
        .unwrap_or_default()
}
