//! File opens under watched paths: `open`, `openat`, `openat2`, each paired with its exit so
//! the record carries the result.
//!
//! The filter runs at exit. A successful open is matched by inode: from the returned fd to
//! its dentry, then up the dentry tree to a watched directory — so relative paths, `..`,
//! symlinks and dirfds cannot hide an open. A failed open has no dentry: an absolute path is
//! matched by prefix; a relative one by its base directory (cwd or dirfd), and when that is
//! not under a watch the record still goes out as `UNRESOLVED` for user space to decide (the
//! path may climb into a watch with `..`). Every other open stays in the kernel.

use core::mem::offset_of;

use agent_common::{
    event::{matched_by, open_syscall, FileOpenEvent, Kind, FLAG_TRUNCATED},
    limits::{MAX_WALK_DEPTH, NAMES_LEN, NAME_MAX, PATH_LEN},
    maps::NO_WATCH,
    policy::{access, layer, verdict, Decision},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    emit::{fill_header, output},
    kernel::{dentry_dev, dentry_ino, dentry_name, dentry_parent, file_dentry, find_watch, Task},
    maps::{
        FileOpenScratch, PendingOpen, FILE_OPEN_SCRATCH, PENDING_OPENS, PREFIX_KEY_SCRATCH,
        WATCHED_DEVS, WATCHED_PREFIXES,
    },
    policy::{current_slot, decide, kill_current},
};

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;

/// `syscalls/sys_enter_open` (x86_64): `filename` at 16, `flags` at 24, `mode` at 32.
#[tracepoint]
pub fn file_sys_enter_open(ctx: TracePointContext) -> i32 {
    // SAFETY: offsets from the tracepoint's format.
    let _ = unsafe { remember(&ctx, open_syscall::OPEN, None, 16, 24, 32) };
    0
}

/// `syscalls/sys_enter_openat`: `dfd` at 16, `filename` at 24, `flags` at 32, `mode` at 40.
#[tracepoint]
pub fn file_sys_enter_openat(ctx: TracePointContext) -> i32 {
    // SAFETY: offsets from the tracepoint's format.
    let _ = unsafe { remember(&ctx, open_syscall::OPENAT, Some(16), 24, 32, 40) };
    0
}

/// `syscalls/sys_enter_openat2`: `dfd` at 16, `filename` at 24, `struct open_how *how` at 32
/// (Linux 5.6+).
#[tracepoint]
pub fn file_sys_enter_openat2(ctx: TracePointContext) -> i32 {
    // SAFETY: offsets from the tracepoint's format; `how` is read from user memory.
    let _ = unsafe { remember_openat2(&ctx) };
    0
}

/// `syscalls/sys_exit_open`: `ret` at 16.
#[tracepoint]
pub fn file_sys_exit_open(ctx: TracePointContext) -> i32 {
    on_exit(&ctx);
    0
}

/// `syscalls/sys_exit_openat`: `ret` at 16.
#[tracepoint]
pub fn file_sys_exit_openat(ctx: TracePointContext) -> i32 {
    on_exit(&ctx);
    0
}

/// `syscalls/sys_exit_openat2`: `ret` at 16.
#[tracepoint]
pub fn file_sys_exit_openat2(ctx: TracePointContext) -> i32 {
    on_exit(&ctx);
    0
}

/// Keeps the arguments until the matching exit.
#[inline(always)]
unsafe fn remember(
    ctx: &TracePointContext,
    syscall: u32,
    dirfd_at: Option<usize>,
    path_at: usize,
    flags_at: usize,
    mode_at: usize,
) -> Result<(), i32> {
    // SAFETY: the caller passes offsets inside the tracepoint record.
    let pending = unsafe {
        PendingOpen {
            path: ctx.read_at::<u64>(path_at)?,
            flags: ctx.read_at::<u64>(flags_at)? as u32,
            mode: ctx.read_at::<u64>(mode_at)? as u32,
            dirfd: match dirfd_at {
                Some(at) => ctx.read_at::<u64>(at)? as i32,
                None => AT_FDCWD,
            },
            syscall,
            refused: 0,
        }
    };
    PENDING_OPENS.insert(&bpf_get_current_pid_tgid(), &pending, 0)
}

/// `struct open_how`'s first two fields.
#[repr(C)]
#[derive(Clone, Copy)]
struct OpenHow {
    flags: u64,
    mode: u64,
}

#[inline(always)]
unsafe fn remember_openat2(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets from the tracepoint's format; `how` is a user pointer read with the
    // checked helper.
    let (dirfd, path, how) = unsafe {
        let how: u64 = ctx.read_at(32)?;
        (
            ctx.read_at::<u64>(16)? as i32,
            ctx.read_at::<u64>(24)?,
            bpf_probe_read_user(how as *const OpenHow)?,
        )
    };
    let pending = PendingOpen {
        path,
        flags: how.flags as u32,
        mode: how.mode as u32,
        dirfd,
        syscall: open_syscall::OPENAT2,
        refused: 0,
    };
    PENDING_OPENS.insert(&bpf_get_current_pid_tgid(), &pending, 0)
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once, then removed.
    let Some(pending) = (unsafe { PENDING_OPENS.get(&id) }).copied() else {
        return;
    };
    let _ = PENDING_OPENS.remove(&id);
    if pending.refused != 0 {
        return; // the LSM program refused it and reported it
    }
    // SAFETY: offset 16 of every sys_exit_* record is `long ret`.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else {
        return;
    };
    if ret >= 0 {
        opened(&pending, ret);
    } else {
        failed(&pending, ret);
    }
}

/// A successful open: match the opened file's dentry against the watched inodes.
#[inline(always)]
fn opened(pending: &PendingOpen, ret: i64) {
    let task = Task::current();
    let Ok(file) = task.file(ret as u32) else {
        return;
    };
    let Ok(dentry) = file_dentry(file) else {
        return;
    };
    let Ok(dev) = dentry_dev(dentry) else {
        return;
    };
    // SAFETY: value not used.
    if unsafe { WATCHED_DEVS.get(&dev) }.is_none() {
        return;
    }
    let Some(hit) = find_watch(dentry, dev, current_slot()) else {
        return;
    };
    let decision = decide(hit.rule(), requested_access(pending.flags), layer::SIGNAL);
    if decision.verdict == verdict::DENY {
        kill_current();
    }
    if hit.value.observed == 0 && decision.verdict == verdict::NONE {
        return; // protected for another kind of access only, and not watched
    }
    let Some(scratch) = start_record(pending, ret) else {
        return;
    };
    scratch.event.decision = decision;
    scratch.event.matched_by = matched_by::INODE;
    scratch.event.watch_id = hit.value.watch_id;
    scratch.event.dev = dev;
    scratch.event.ino = dentry_ino(dentry).unwrap_or(0);
    copy_names(scratch, dentry, hit.depth);
    send(scratch);
}

/// A failed open: match by path prefix (absolute) or by base directory (relative).
#[inline(always)]
fn failed(pending: &PendingOpen, ret: i64) {
    let Some(scratch) = start_record(pending, ret) else {
        return;
    };
    if scratch.event.path_len == 0 {
        return;
    }
    if scratch.event.path[0] == b'/' {
        let Some(watch_id) = prefix_match(&scratch.event) else {
            return;
        };
        scratch.event.matched_by = matched_by::PREFIX;
        scratch.event.watch_id = watch_id;
    } else {
        let task = Task::current();
        let base = if pending.dirfd == AT_FDCWD {
            task.cwd_dentry()
        } else {
            task.file(pending.dirfd as u32).and_then(file_dentry)
        };
        let hit = base.ok().and_then(|dentry| {
            let dev = dentry_dev(dentry).ok()?;
            // SAFETY: value not used.
            unsafe { WATCHED_DEVS.get(&dev) }?;
            find_watch(dentry, dev, current_slot()).map(|hit| (dentry, hit))
        });
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
    send(scratch);
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

/// Fills the parts of a record every open shares; the path is read from user memory.
#[inline(always)]
pub(crate) fn start_record(
    pending: &PendingOpen,
    ret: i64,
) -> Option<&'static mut FileOpenScratch> {
    let scratch = FILE_OPEN_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let scratch = unsafe { &mut *scratch };
    let event = &mut scratch.event;
    fill_header(&mut event.header, Kind::FileOpen);
    event.ret = ret;
    event.open_flags = pending.flags;
    event.mode = pending.mode;
    event.dirfd = pending.dirfd;
    event.syscall = pending.syscall;
    event.matched_by = 0;
    event.watch_id = NO_WATCH;
    event.dev = 0;
    event.ino = 0;
    event.names_len = 0;
    event.names_count = 0;
    event.decision = Decision::NONE;
    // SAFETY: user pointer read with the checked helper.
    event.path_len = match unsafe {
        bpf_probe_read_user_str_bytes(pending.path as *const u8, &mut event.path)
    } {
        Ok(bytes) => {
            if bytes.len() + 1 >= PATH_LEN {
                event.header.flags |= FLAG_TRUNCATED;
            }
            bytes.len() as u32
        }
        Err(_) => 0,
    };
    Some(scratch)
}

/// Copies the names of `depth` dentries, from `dentry` upward, NUL-terminated.
#[inline(always)]
pub(crate) fn copy_names(scratch: &mut FileOpenScratch, mut dentry: usize, depth: u32) {
    let base = offset_of!(FileOpenScratch, event) + offset_of!(FileOpenEvent, names);
    // SAFETY: the view covers `names` and the slack after it, both inside the scratch value.
    let names = unsafe {
        core::slice::from_raw_parts_mut(
            (scratch as *mut FileOpenScratch).cast::<u8>().add(base),
            NAMES_LEN + NAME_MAX,
        )
    };
    let mut used: usize = 0;
    let mut count: u32 = 0;
    for level in 0..MAX_WALK_DEPTH {
        if level >= depth {
            break;
        }
        if used >= NAMES_LEN {
            scratch.event.header.flags |= FLAG_TRUNCATED;
            break;
        }
        let Ok(name) = dentry_name(dentry) else {
            break;
        };
        let start = used & (NAMES_LEN - 1);
        // SAFETY: kernel pointer read with the checked helper; `start + NAME_MAX` is in bounds.
        let copied = match unsafe {
            bpf_probe_read_kernel_str_bytes(name as *const u8, &mut names[start..start + NAME_MAX])
        } {
            Ok(bytes) => bytes.len(),
            Err(_) => break,
        };
        used = start + copied + 1;
        count += 1;
        let Ok(parent) = dentry_parent(dentry) else {
            break;
        };
        dentry = parent;
    }
    if used > NAMES_LEN {
        used = NAMES_LEN;
        scratch.event.header.flags |= FLAG_TRUNCATED;
    }
    scratch.event.names_len = used as u32;
    scratch.event.names_count = count;
}

#[inline(always)]
pub(crate) fn send(scratch: &FileOpenScratch) {
    // SAFETY: the record is the first field of the scratch value.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (&scratch.event as *const FileOpenEvent).cast::<u8>(),
            core::mem::size_of::<FileOpenEvent>(),
        )
    };
    output(Kind::FileOpen, bytes);
}
