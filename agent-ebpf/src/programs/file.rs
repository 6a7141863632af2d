//! File opens under watched paths: `open`, `openat`, `openat2`, seen once, at their exit, so
//! the record carries the result. The call's arguments are read back from the registers the
//! kernel saved at entry ([`SyscallArgs`]): no entry program, no map between the halves.
//!
//! The filter runs at exit. A successful open is matched by inode: from the returned fd to
//! its dentry, then up the dentry tree to a watched directory — so relative paths, `..`,
//! symlinks and dirfds cannot hide an open. A failed open has no dentry: an absolute path is
//! matched by prefix; a relative one by its base directory (cwd or dirfd), and when that is
//! not under a watch the record still goes out as `UNRESOLVED` for user space to decide (the
//! path may climb into a watch with `..`). Every other open stays in the kernel.

use core::mem::offset_of;

use aya_ebpf::{
    cty::{c_long, c_void},
    helpers::{
        bpf_get_current_pid_tgid, bpf_loop, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use phiguard_common::{
    event::{matched_by, open_syscall, FileOpenEvent, Kind, FLAG_TRUNCATED},
    limits::{NAMES_LEN, NAME_MAX, PATH_LEN},
    maps::NO_WATCH,
    policy::{access, layer, verdict, Decision},
    program::Program,
};

use crate::{
    emit::{fill_header, output},
    error::{finish, or_fault, or_skip, ProbeError, ProbeResult},
    kernel::{current_file, current_in_compat_syscall, find_watch, Dentry, Task},
    maps::{
        FileOpenScratch, FILE_OPEN_SCRATCH, PREFIX_KEY_SCRATCH, RECEIVES_REPORTED, REFUSED_OPENS,
        WATCHED_DEVS, WATCHED_PREFIXES,
    },
    policy::{current_slot, decide, enforce_by_signal},
    programs::label::label_of,
    syscall::SyscallArgs,
};

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;

/// 1: the agent's fanotify layer decides opens of protected files before a descriptor exists
/// and reports every decision; these programs then report only what they enforce themselves —
/// a refused open that succeeded anyway, which means the fanotify layer did not answer it (the
/// agent is down: its group closed and let the open through), and which they still kill.
/// 0: these programs decide and report every open of a protected file. Set at load
/// (`phiguard_common::maps::FANOTIFY_DECIDES_GLOBAL`).
#[unsafe(no_mangle)]
static FANOTIFY_DECIDES: u32 = 0;

/// Whether the fanotify layer decides and reports opens (see [`FANOTIFY_DECIDES`]).
#[inline(always)]
fn fanotify_decides() -> bool {
    // SAFETY: a plain static; volatile keeps the read in the program (the loader rewrites it).
    let decides = unsafe { core::ptr::read_volatile(&raw const FANOTIFY_DECIDES) };
    decides != 0
}

/// `-EPERM`: what an open the LSM program refused returns.
const EPERM: i64 = -1;

/// `syscalls/sys_exit_open`, `sys_exit_openat` and `sys_exit_openat2` (Linux 5.6+), one
/// program attached at all three: `__syscall_nr` at 8 says which call, `ret` at 16; the
/// arguments (`filename, flags, mode`; `dfd, filename, flags, mode`; `dfd, filename, struct
/// open_how *how, size`) are read back from the saved registers. One program instead of
/// three: the verifier checks it once per agent start, as long as one of the three took.
#[tracepoint]
pub fn file_sys_exit_opens(ctx: TracePointContext) -> i32 {
    // SAFETY: offset 8 of every sys_exit_* record is `int __syscall_nr`; a tracepoint program
    // may load its record directly (the verifier checks the bounds).
    let nr = unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(8) as *const i32) };
    let syscall = match nr as u64 {
        NR_OPEN => open_syscall::OPEN,
        NR_OPENAT => open_syscall::OPENAT,
        NR_OPENAT2 => open_syscall::OPENAT2,
        _ => return 0, // attached only at those three
    };
    finish(Program::FileSysExitOpens, try_exit(&ctx, syscall));
    0
}

/// An `open*` call as its caller made it.
#[derive(Clone, Copy)]
pub(crate) struct OpenCall {
    /// User-space address of the path argument.
    pub path: u64,
    /// `O_*` flags.
    pub flags: u32,
    /// Creation mode.
    pub mode: u32,
    /// `dirfd` argument (`AT_FDCWD` for `open`).
    pub dirfd: i32,
    /// `open_syscall` code (0: not an `open*` call).
    pub syscall: u32,
    /// 1 for a call through the 32-bit entry (`int 0x80`), else 0.
    pub compat: u32,
}

/// `struct open_how`'s first two fields.
#[repr(C)]
#[derive(Clone, Copy)]
struct OpenHow {
    flags: u64,
    mode: u64,
}

// x86_64 system call numbers of the `open*` family.
const NR_OPEN: u64 = 2;
const NR_OPENAT: u64 = 257;
const NR_OPENAT2: u64 = 437;
const NR_CREAT: u64 = 85;
// The same calls through the 32-bit entry (`int 0x80`).
const NR32_OPEN: u64 = 5;
const NR32_CREAT: u64 = 8;
const NR32_OPENAT: u64 = 295;
const NR32_OPENAT2: u64 = 437;
/// The flags `creat(2)` opens with: `O_CREAT | O_WRONLY | O_TRUNC`.
const CREAT_FLAGS: u32 = 0o1101;

impl OpenCall {
    /// An open that did not come through an `open*` call (exec, io_uring…): nothing known.
    pub(crate) const UNKNOWN: OpenCall = OpenCall {
        path: 0,
        flags: 0,
        mode: 0,
        dirfd: 0,
        syscall: 0,
        compat: 0,
    };

    /// The current task's `open*` call of kind `syscall` (an `open_syscall` code), read back
    /// from its saved registers.
    #[inline(always)]
    pub(crate) fn read(syscall: u32) -> OpenCall {
        let args = SyscallArgs::current();
        match syscall {
            open_syscall::OPEN => OpenCall {
                path: args.arg(0),
                flags: args.arg(1) as u32,
                mode: args.arg(2) as u32,
                dirfd: AT_FDCWD,
                syscall,
                compat: 0,
            },
            open_syscall::OPENAT => OpenCall {
                path: args.arg(1),
                flags: args.arg(2) as u32,
                mode: args.arg(3) as u32,
                dirfd: args.arg(0) as i32,
                syscall,
                compat: 0,
            },
            open_syscall::CREAT => OpenCall {
                path: args.arg(0),
                flags: CREAT_FLAGS,
                mode: args.arg(1) as u32,
                dirfd: AT_FDCWD,
                syscall,
                compat: 0,
            },
            _ => {
                // SAFETY: `how` is a user pointer, read with the checked helper.
                let how = unsafe { bpf_probe_read_user(args.arg(2) as *const OpenHow) }
                    .unwrap_or(OpenHow { flags: 0, mode: 0 });
                OpenCall {
                    path: args.arg(1),
                    flags: how.flags as u32,
                    mode: how.mode as u32,
                    dirfd: args.arg(0) as i32,
                    syscall,
                    compat: 0,
                }
            }
        }
    }

    /// The `open*` call the current task is in, if it is in one (for LSM hooks and other
    /// programs that run inside a system call). The number and the arguments are read in the
    /// convention of the entry the call came through: a 64-bit program may make a 32-bit call
    /// (`int 0x80`), where the kernel takes only the low halves of the argument registers —
    /// their upper halves, and the 64-bit convention's registers, are the caller's to forge.
    #[inline(always)]
    pub(crate) fn current() -> Option<OpenCall> {
        let args = SyscallArgs::current();
        if !current_in_compat_syscall() {
            let syscall = match args.nr() {
                NR_OPEN => open_syscall::OPEN,
                NR_OPENAT => open_syscall::OPENAT,
                NR_OPENAT2 => open_syscall::OPENAT2,
                NR_CREAT => open_syscall::CREAT,
                _ => return None,
            };
            return Some(OpenCall::read(syscall));
        }
        let (path, flags, mode, dirfd, syscall) = match args.nr() {
            NR32_OPEN => (
                args.compat_arg(0),
                args.compat_arg(1) as u32,
                args.compat_arg(2) as u32,
                AT_FDCWD,
                open_syscall::OPEN,
            ),
            NR32_CREAT => (
                args.compat_arg(0),
                CREAT_FLAGS,
                args.compat_arg(1) as u32,
                AT_FDCWD,
                open_syscall::CREAT,
            ),
            NR32_OPENAT => (
                args.compat_arg(1),
                args.compat_arg(2) as u32,
                args.compat_arg(3) as u32,
                args.compat_arg(0) as i32,
                open_syscall::OPENAT,
            ),
            NR32_OPENAT2 => {
                // SAFETY: `how` is a user pointer, read with the checked helper.
                let how = unsafe { bpf_probe_read_user(args.compat_arg(2) as *const OpenHow) }
                    .unwrap_or(OpenHow { flags: 0, mode: 0 });
                (
                    args.compat_arg(1),
                    how.flags as u32,
                    how.mode as u32,
                    args.compat_arg(0) as i32,
                    open_syscall::OPENAT2,
                )
            }
            _ => return None,
        };
        Some(OpenCall {
            path,
            flags,
            mode,
            dirfd,
            syscall,
            compat: 1,
        })
    }
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext, syscall: u32) -> ProbeResult {
    // SAFETY: offset 16 of every sys_exit_* record is `long ret`; a tracepoint program may
    // load its record directly (the verifier checks the bounds), no helper call needed.
    let ret = unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(16) as *const i64) };
    if ret >= 0 {
        opened(syscall, ret)
    } else {
        failed(syscall, ret)
    }
}

/// A successful open: match the opened file's dentry against the watched inodes. The common
/// case, a file on a device without watches, costs the descriptor lookup and one map lookup.
/// (A descriptor another thread closed before this exit reads as a fault.)
#[inline(always)]
fn opened(syscall: u32, ret: i64) -> ProbeResult {
    let file = current_file(ret as u32)?;
    let dentry = file.dentry()?;
    let dev = dentry.dev()?;
    // SAFETY: value not used.
    if unsafe { WATCHED_DEVS.get(dev) }.is_none() {
        return Err(ProbeError::Skip);
    }
    let found = match_inode(dentry, dev)?;
    let call = OpenCall::read(syscall);
    // The flags of an `openat2` are read from the caller's `open_how`, which another thread
    // may have rewritten since the kernel copied it (and the fanotify layer decided on that
    // rewritten copy too): the opened file's mode, the kernel's own, counts as well, so a
    // descriptor opened for writing is decided as a write and its refused opener killed here.
    let requested = requested_access(call.flags) | mode_access(file.mode().unwrap_or(0));
    let mut decision = decide(found.rule, requested, layer::SIGNAL);
    if decision.verdict == verdict::DENY {
        decision = enforce_by_signal(decision);
    } else if fanotify_decides() {
        decision = Decision::NONE; // decided and reported by the fanotify layer
    }
    if found.observed == 0 && decision.verdict == verdict::NONE {
        // protected for another kind of access only (or reported elsewhere), not watched
        return Err(ProbeError::Skip);
    }
    send_inode_record(&call, ret, decision, &found, dentry, dev)
}

/// `syscalls/sys_exit_pidfd_getfd` (Linux 5.6+): `ret` at 16, a descriptor taken from another
/// process. A protected file's descriptor is decided like an open of it with the descriptor's
/// mode, so a refused process cannot take the allowed service's; the SIGKILL layer kills it
/// before the call returns. Under BPF LSM `file_receive` decided (refused with `EPERM`) and
/// reported it already (`RECEIVES_REPORTED`): silent here.
#[tracepoint]
pub fn file_sys_exit_pidfd_getfd(ctx: TracePointContext) -> i32 {
    finish(Program::FileSysExitPidfdGetfd, try_getfd(&ctx));
    0
}

#[inline(always)]
fn try_getfd(ctx: &TracePointContext) -> ProbeResult {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: value not used.
    if unsafe { RECEIVES_REPORTED.get(id) }.is_some() {
        let _ = RECEIVES_REPORTED.remove(id);
        return Err(ProbeError::Skip); // BPF LSM `file_receive` decided and reported it
    }
    // SAFETY: `ret` is the long at 16 of every syscall exit record.
    let ret = unsafe { ctx.read_at::<i64>(16) }.map_err(|_| ProbeError::Fault)?;
    if ret < 0 {
        return Err(ProbeError::Skip);
    }
    let file = current_file(ret as u32)?;
    let dentry = file.dentry()?;
    let dev = dentry.dev()?;
    // SAFETY: value not used.
    if unsafe { WATCHED_DEVS.get(dev) }.is_none() {
        return Err(ProbeError::Skip);
    }
    let found = match_inode(dentry, dev)?;
    let requested = mode_access(file.mode().unwrap_or(0));
    // No other layer sees a taken descriptor: decided here even with fanotify deciding opens.
    let decision = enforce_by_signal(decide(found.rule, requested, layer::SIGNAL));
    if found.observed == 0 && decision.verdict == verdict::NONE {
        return Err(ProbeError::Skip);
    }
    let call = OpenCall {
        syscall: open_syscall::RECEIVE,
        ..OpenCall::UNKNOWN
    };
    send_inode_record(&call, ret, decision, &found, dentry, dev)
}

/// What protects a watched inode, and how it was found.
struct InodeMatch {
    ino: u64,
    rule: u32,
    watch_id: u32,
    observed: u32,
    /// Names to copy up to the watch.
    depth: u32,
    /// `matched_by` value.
    matched: u32,
}

/// The watch over inode `dentry` of device `dev`: its BPF LSM label (any depth, any name)
/// first; else the bounded walk to a watch. Without BPF LSM the label map is empty.
#[inline(always)]
fn match_inode(dentry: Dentry, dev: u32) -> ProbeResult<InodeMatch> {
    let slot = current_slot();
    let ino = dentry.ino().unwrap_or(0);
    if let Some(label) = label_of(dev, slot, ino) {
        return Ok(InodeMatch {
            ino,
            rule: label.rule_here,
            watch_id: label.watch_id,
            observed: label.observed,
            depth: MAX_NAMES_WALK,
            matched: matched_by::LSM_LABEL,
        });
    }
    let hit = or_skip(find_watch(dentry, dev, slot))?;
    Ok(InodeMatch {
        ino,
        rule: hit.rule(),
        watch_id: hit.value.watch_id,
        observed: hit.value.observed,
        depth: hit.depth,
        matched: matched_by::INODE,
    })
}

/// The record of a decision on watched inode `dentry` (of device `dev`, found as `found`),
/// reached by `call` with result `ret`.
#[inline(always)]
fn send_inode_record(
    call: &OpenCall,
    ret: i64,
    decision: Decision,
    found: &InodeMatch,
    dentry: Dentry,
    dev: u32,
) -> ProbeResult {
    let scratch = or_fault(scratch())?;
    read_path(&mut scratch.event, call);
    start_record(scratch, call, ret);
    scratch.event.decision = decision;
    scratch.event.matched_by = found.matched;
    scratch.event.watch_id = found.watch_id;
    scratch.event.dev = dev;
    scratch.event.ino = found.ino;
    copy_names(scratch, dentry, found.depth);
    send(scratch)
}

/// `FMODE_READ`, `FMODE_WRITE`.
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;

/// What a descriptor of mode `mode` (`file.f_mode`) can do to the file's content: `access`
/// bits.
#[inline(always)]
pub(crate) fn mode_access(mode: u32) -> u32 {
    let mut bits = 0;
    if mode & FMODE_READ != 0 {
        bits |= access::READ;
    }
    if mode & FMODE_WRITE != 0 {
        bits |= access::WRITE;
    }
    bits
}

/// A failed open: match by path prefix (absolute) or by base directory (relative). The
/// record's header is filled only once the open matched.
#[inline(always)]
fn failed(syscall: u32, ret: i64) -> ProbeResult {
    if ret == EPERM {
        let id = bpf_get_current_pid_tgid();
        // SAFETY: value not used.
        if unsafe { REFUSED_OPENS.get(id) }.is_some() {
            let _ = REFUSED_OPENS.remove(id);
            return Err(ProbeError::Skip); // the LSM program refused it and reported it
        }
    }
    let call = OpenCall::read(syscall);
    let scratch = or_fault(scratch())?;
    read_path(&mut scratch.event, &call);
    if scratch.event.path_len == 0 {
        return Err(ProbeError::Skip); // no readable path: the call failed on it
    }
    if scratch.event.path[0] == b'/' {
        let watch_id = or_skip(prefix_match(&scratch.event))?;
        start_record(scratch, &call, ret);
        scratch.event.matched_by = matched_by::PREFIX;
        scratch.event.watch_id = watch_id;
    } else {
        let task = Task::current();
        let base = if call.dirfd == AT_FDCWD {
            task.cwd_dentry()
        } else {
            current_file(call.dirfd as u32).and_then(|file| file.dentry())
        };
        let hit = base.ok().and_then(|dentry| {
            let dev = dentry.dev().ok()?;
            // SAFETY: value not used.
            unsafe { WATCHED_DEVS.get(dev) }?;
            find_watch(dentry, dev, current_slot()).map(|hit| (dentry, hit))
        });
        start_record(scratch, &call, ret);
        match hit {
            Some((dentry, hit)) => {
                scratch.event.matched_by = matched_by::BASE_DIR;
                scratch.event.watch_id = hit.value.watch_id;
                copy_names(scratch, dentry, hit.depth);
            }
            None => {
                scratch.event.matched_by = matched_by::UNRESOLVED;
                scratch.event.watch_id = NO_WATCH;
            }
        }
    }
    send(scratch)
}

// `O_*` flags the access decision depends on.
const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_APPEND: u32 = 0o2000;
const O_PATH: u32 = 0o10000000;

/// What an open with `flags` does to the file's content: `access` bits (0 for `O_PATH`, which
/// neither reads nor writes).
#[inline(always)]
pub(crate) fn requested_access(flags: u32) -> u32 {
    if flags & O_PATH != 0 {
        return 0;
    }
    let mode = flags & O_ACCMODE;
    let mut requested = 0;
    if mode != O_WRONLY {
        requested |= access::READ;
    }
    if mode != 0 || flags & (O_CREAT | O_TRUNC | O_APPEND) != 0 {
        requested |= access::WRITE;
    }
    requested
}

/// Looks the record's absolute path up in the prefix trie.
#[inline(always)]
fn prefix_match(event: &FileOpenEvent) -> Option<u32> {
    let key = PREFIX_KEY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let key = unsafe { &mut *key };
    key.data = event.path;
    key.prefix_len = (event.path_len & (PATH_LEN as u32 - 1)) * 8;
    WATCHED_PREFIXES.get(&*key).copied()
}

/// This CPU's file-open record.
#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut FileOpenScratch> {
    let scratch = FILE_OPEN_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    Some(unsafe { &mut *scratch })
}

/// Reads the call's path from user memory into the record (`path_len` 0 when unreadable).
#[inline(always)]
pub(crate) fn read_path(event: &mut FileOpenEvent, call: &OpenCall) {
    // SAFETY: user pointer read with the checked helper.
    event.path_len =
        match unsafe { bpf_probe_read_user_str_bytes(call.path as *const u8, &mut event.path) } {
            Ok(bytes) => bytes.len() as u32,
            Err(_) => 0,
        };
}

/// Fills the parts of a record every open shares, after [`read_path`] (the path is kept).
#[inline(always)]
pub(crate) fn start_record(scratch: &mut FileOpenScratch, call: &OpenCall, ret: i64) {
    let event = &mut scratch.event;
    fill_header(&mut event.header, Kind::FileOpen);
    if event.path_len as usize + 1 >= PATH_LEN {
        event.header.flags |= FLAG_TRUNCATED;
    }
    event.ret = ret;
    event.open_flags = call.flags;
    event.mode = call.mode;
    event.dirfd = call.dirfd;
    event.syscall = call.syscall;
    event.matched_by = 0;
    event.watch_id = NO_WATCH;
    event.dev = 0;
    event.ino = 0;
    event.names_len = 0;
    event.names_count = 0;
    event.decision = Decision::NONE;
    event.sender = phiguard_common::event::Sender::default();
}

/// State of a [`copy_names`] walk, shared with its [`copy_name`] callback.
#[repr(C)]
struct NamesCopy {
    /// The record's `names` and the slack after it (`NAMES_LEN + NAME_MAX` bytes).
    names: *mut u8,
    /// The dentry whose name comes next.
    dentry: Dentry,
    /// Bytes written so far (may pass `NAMES_LEN` by one name: the slack holds it).
    used: u64,
    /// Names written.
    count: u32,
    /// Names to write.
    depth: u32,
    /// 1 when `names` filled up before `depth` names.
    truncated: u32,
}

/// Copies the names of `depth` dentries, from `dentry` upward, NUL-terminated. The levels run
/// in `bpf_loop`, so the verifier checks one copy once.
#[inline(always)]
pub(crate) fn copy_names(scratch: &mut FileOpenScratch, dentry: Dentry, depth: u32) {
    let base = offset_of!(FileOpenScratch, event) + offset_of!(FileOpenEvent, names);
    let mut copy = NamesCopy {
        // SAFETY: `base` is inside the scratch value, which holds `NAME_MAX` bytes of slack
        // after `names`.
        names: unsafe { (scratch as *mut FileOpenScratch).cast::<u8>().add(base) },
        dentry,
        used: 0,
        count: 0,
        depth,
        truncated: 0,
    };
    // SAFETY: the callback is a static function; the context is this frame's `copy`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_NAMES_WALK,
            copy_name as *mut c_void,
            (&raw mut copy).cast(),
            0,
        )
    };
    let mut used = copy.used as usize;
    if used > NAMES_LEN {
        used = NAMES_LEN;
        copy.truncated = 1;
    }
    if copy.truncated != 0 {
        scratch.event.header.flags |= FLAG_TRUNCATED;
    }
    scratch.event.names_len = used as u32;
    scratch.event.names_count = copy.count;
}

/// Most names [`copy_names`] copies (`NAMES_LEN` bytes usually end it first).
pub(crate) const MAX_NAMES_WALK: u32 = 64;

/// One name of [`copy_names`], `level` levels above the start: 1 ends the walk.
extern "C" fn copy_name(level: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: `bpf_loop` passes the `NamesCopy` that `copy_names` gave it.
    let copy = unsafe { &mut *ctx.cast::<NamesCopy>() };
    if level >= u64::from(copy.depth) {
        return 1;
    }
    if copy.used >= NAMES_LEN as u64 {
        copy.truncated = 1;
        return 1;
    }
    let Ok(name) = copy.dentry.name() else {
        return 1;
    };
    let start = copy.used as usize & (NAMES_LEN - 1);
    // SAFETY: `names` holds `NAMES_LEN + NAME_MAX` bytes and `start < NAMES_LEN`.
    let dest = unsafe { core::slice::from_raw_parts_mut(copy.names.add(start), NAME_MAX) };
    // SAFETY: kernel pointer read with the checked helper.
    let copied = match unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, dest) } {
        Ok(bytes) => bytes.len(),
        Err(_) => return 1,
    };
    copy.used = (start + copied + 1) as u64;
    copy.count += 1;
    match copy.dentry.parent() {
        // The root of the filesystem is its own parent: its name (`/`) was the last one.
        Ok(parent) if parent == copy.dentry => 1,
        Ok(parent) => {
            copy.dentry = parent;
            0
        }
        Err(_) => 1,
    }
}

/// Sends the scratch's record.
#[inline(always)]
pub(crate) fn send(scratch: &FileOpenScratch) -> ProbeResult {
    // SAFETY: the record is the first field of the scratch value.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (&scratch.event as *const FileOpenEvent).cast::<u8>(),
            core::mem::size_of::<FileOpenEvent>(),
        )
    };
    output(Kind::FileOpen, bytes)
}
