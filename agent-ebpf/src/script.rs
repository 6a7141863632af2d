//! Which script a process runs, where it has one a policy can name: recorded at exec in
//! `SCRIPT_IDENTITY`, copied to children at fork, removed at the next exec, at exit and by
//! taint. The interpreter stays the process's executable (`crate::identity`); the script is a
//! second, narrower identity that `script:` subjects match.
//!
//! A process gets one only when all of these hold at `sched_process_exec` (the new image is in
//! place and has not run an instruction):
//! - the exec went through an interpreter (`linux_binprm.interp` is not `filename`: the
//!   kernel read a `#!` line), so running `python3 /path` or `sh /path` directly never does;
//! - the path the caller executed (`linux_binprm.filename`, a kernel copy) is, byte for byte,
//!   one of `SCRIPT_PATHS` — paths user space checked to pass only through root's
//!   directories and links, so no other user can make the interpreter's own reopen of that
//!   path reach another file, nor reach another file at the kernel's open: a copy, a link or
//!   a path through a directory the caller controls is not listed;
//! - the process is in the initial user namespace (elsewhere an unprivileged user can mount
//!   another file over a listed path);
//! - the new environment holds no variable of `CODE_INJECTING_ENV`;
//! - the process is not traced.

use aya_ebpf::{
    cty::{c_long, c_void},
    helpers::{bpf_loop, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_str_bytes},
};
use phiguard_common::{
    limits::{CODE_INJECTING_ENV, ENV_NAME_LEN, MAX_ENV_CHUNKS, PATH_LEN},
    maps::{ExecIdentity, NS_PER_TICK},
};

use crate::{
    error::{or_fault, ProbeError, ProbeResult},
    kernel::{Binprm, FileId, Task},
    maps::{SCRIPT_IDENTITY, SCRIPT_PATHS, SCRIPT_SCRATCH},
};

/// Records the script the current process now runs, or that it runs none (called at exec).
#[inline(always)]
pub fn record_exec(task: Task, bprm: Binprm) -> ProbeResult {
    let tgid = task.tgid()?;
    let _ = SCRIPT_IDENTITY.remove(tgid);
    let filename = bprm.filename()?;
    if bprm.interp()? == filename {
        return Ok(()); // no interpreter took over: not a script
    }
    let Some(script) = listed_script(filename)? else {
        return Ok(());
    };
    if task.user_ns_level()? != 0 || task.is_traced()? || env_injects_code(task)? {
        return Ok(());
    }
    let value = ExecIdentity {
        dev: script.dev,
        flags: 0,
        ino: script.ino,
        start_ticks: task.leader_start_boot_ns()? / NS_PER_TICK,
    };
    SCRIPT_IDENTITY
        .insert(tgid, value, 0)
        .map_err(|_| ProbeError::Fault)
}

/// The script listed under the kernel string at `filename`, if any.
#[inline(always)]
fn listed_script(filename: usize) -> ProbeResult<Option<FileId>> {
    let key = or_fault(SCRIPT_SCRATCH.get_ptr_mut(0))?;
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let key = unsafe { &mut *key };
    key.fill(0);
    // SAFETY: reading a kernel string through the checked helper.
    if unsafe { bpf_probe_read_kernel_str_bytes(filename as *const u8, key) }.is_err() {
        return Err(ProbeError::Fault);
    }
    // SAFETY: the value is plain integers, copied out at once.
    Ok(unsafe { SCRIPT_PATHS.get(*key) }.map(|k| FileId {
        dev: k.dev,
        ino: k.ino,
    }))
}

/// The state of a scan of the environment strings.
struct EnvScan {
    /// User address of the next byte to read.
    next: u64,
    /// End of the environment strings.
    end: u64,
    /// 1 when `next` is the start of a string.
    at_start: u32,
    /// 1 when a code-injecting variable was seen, or the scan failed.
    found: u32,
}

/// Whether the task's environment holds a variable of `CODE_INJECTING_ENV`, or cannot be
/// scanned to its end within `MAX_ENV_CHUNKS` reads (then it counts as holding one).
#[inline(always)]
fn env_injects_code(task: Task) -> ProbeResult<bool> {
    let (start, end) = task.env_range()?;
    let mut scan = EnvScan {
        next: start,
        end,
        at_start: 1,
        found: 0,
    };
    // SAFETY: the callback is a static function; the context is this frame's `scan`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_ENV_CHUNKS,
            scan_env_chunk as *mut c_void,
            (&raw mut scan).cast(),
            0,
        )
    };
    Ok(scan.found != 0 || scan.next < scan.end)
}

/// Reads one chunk of the environment: 1 ends the scan.
extern "C" fn scan_env_chunk(_index: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: `bpf_loop` passes the `EnvScan` that `env_injects_code` gave it.
    let scan = unsafe { &mut *ctx.cast::<EnvScan>() };
    if scan.next >= scan.end {
        return 1;
    }
    let Some(chunk) = SCRIPT_SCRATCH.get_ptr_mut(0) else {
        scan.found = 1;
        return 1;
    };
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let chunk: &mut [u8; PATH_LEN] = unsafe { &mut *chunk };
    // SAFETY: reading user memory of the new image through the checked helper.
    let len = match unsafe { bpf_probe_read_user_str_bytes(scan.next as *const u8, chunk) } {
        Ok(bytes) => bytes.len(),
        Err(_) => {
            scan.found = 1;
            return 1;
        }
    };
    if scan.at_start != 0 && names_injecting_variable(chunk) {
        scan.found = 1;
        return 1;
    }
    if len + 1 < PATH_LEN {
        scan.next += len as u64 + 1; // the string ended in this chunk
        scan.at_start = 1;
    } else {
        // The chunk is full: the string goes on (or ends exactly here: the next read is then
        // empty and moves past its NUL).
        scan.next += len as u64;
        scan.at_start = 0;
    }
    0
}

/// Whether the string at the start of `chunk` begins with one of `CODE_INJECTING_ENV`.
#[inline(always)]
fn names_injecting_variable(chunk: &[u8; PATH_LEN]) -> bool {
    let head = &chunk[..ENV_NAME_LEN];
    CODE_INJECTING_ENV.iter().any(|name| {
        let name: &[u8] = name;
        name.len() <= ENV_NAME_LEN && head[..name.len()] == *name
    })
}

/// A new process `child` (forked by `parent`) runs its parent's script, if it has one.
#[inline(always)]
pub fn inherit(parent: Task, child: Task, child_tgid: u32) -> ProbeResult {
    let Some(script) = script_of(parent) else {
        return Ok(());
    };
    let value = ExecIdentity {
        dev: script.dev,
        flags: 0,
        ino: script.ino,
        start_ticks: child.start_boot_ns()? / NS_PER_TICK,
    };
    SCRIPT_IDENTITY
        .insert(child_tgid, value, 0)
        .map_err(|_| ProbeError::Fault)
}

/// Forgets process `tgid`'s script: it ended, or it may run code it was not executed with.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = SCRIPT_IDENTITY.remove(tgid);
}

/// The script `task`'s process runs, as recorded; `None` without a record or when the record
/// belongs to an earlier process with the same pid.
#[inline(always)]
pub fn script_of(task: Task) -> Option<FileId> {
    let tgid = task.tgid().ok()?;
    // SAFETY: the value is copied out at once.
    let recorded = unsafe { SCRIPT_IDENTITY.get(tgid) }.copied()?;
    if recorded.start_ticks != task.leader_start_boot_ns().ok()? / NS_PER_TICK {
        return None;
    }
    Some(FileId {
        dev: recorded.dev,
        ino: recorded.ino,
    })
}
