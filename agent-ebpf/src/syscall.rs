//! Syscall arguments at `sys_exit_*`.
//!
//! A `syscalls/sys_exit_*` tracepoint record holds only the return value. The arguments are
//! still in the user registers the kernel saved on entry (`struct pt_regs` at the top of the
//! task's kernel stack): nothing between entry and the exit tracepoint rewrites them for the
//! calls read here. Reading them at exit lets a hook skip the `sys_enter_*` tracepoint and the
//! per-thread map that carried the arguments from entry to exit: one program run per call
//! instead of two.
//!
//! Needs `bpf_get_current_task_btf` (5.11) and `bpf_task_pt_regs` (5.15), both offered to
//! tracepoint programs. The register layout is x86_64's (the only architecture the agent is
//! built for): arguments 0–5 in di, si, dx, r10, r8, r9.

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};

/// Offsets of the argument registers in x86_64 `struct pt_regs`, by argument index.
const ARG_OFFSETS: [usize; 6] = [112, 104, 96, 56, 72, 64];

/// The saved user registers of the current task.
#[derive(Clone, Copy)]
pub struct SyscallArgs(usize);

/// The registers could not be found or read.
#[derive(Clone, Copy)]
pub struct ArgsError;

impl SyscallArgs {
    /// The registers of the syscall the current task is in.
    #[inline(always)]
    pub fn current() -> Result<SyscallArgs, ArgsError> {
        // SAFETY: both helpers take and return kernel pointers the verifier tracks; the result
        // is only used as an address for checked reads.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize;
        if regs == 0 {
            return Err(ArgsError);
        }
        Ok(SyscallArgs(regs))
    }

    /// Argument `N` (0-based) as the raw register value.
    #[inline(always)]
    pub fn arg<const N: usize>(self) -> Result<u64, ArgsError> {
        const { assert!(N < 6) };
        // SAFETY: a checked kernel read inside `struct pt_regs`.
        unsafe { bpf_probe_read_kernel((self.0 + ARG_OFFSETS[N]) as *const u64) }
            .map_err(|_| ArgsError)
    }
}
